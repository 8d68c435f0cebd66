//! The kinds of worker, behind one interface: the built-in worker, agents (polling and listening),
//! and SSH workers. Each kind says what machine the ledger leases, whether it can take work now and
//! why not, checks its health, runs one script (resuming one that outlived a server restart, with
//! cancel and timeout) handing each line to a sink, collects the files the script announced as
//! artifacts, and frees what it kept for a finished script.
//!
//! Architecture invariant: `of` is the only place that picks a kind from a worker's endpoint; the
//! dispatcher, the runbook driver and the health checks see only `dyn WorkerKind`. A kind calls no
//! module above it (dispatch, runbook, health, tasks, api): what it has to tell them (a link opened
//! or closed) goes up as an event (`Comms::events`, `App::signals`).

pub mod agent;
pub mod builtin;
pub mod ssh;

use crate::artifacts::Collection;
use crate::state::App;
use futures_util::future::BoxFuture;
use muster_core::resources::{Endpoint, Worker};
use muster_core::{HealthStatus, ScriptSyntax, TaskState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One script to run.
pub struct Invocation {
    /// The worker's ticket: unique per script run (a task id, or a task's step and worker).
    pub ticket: String,
    pub syntax: ScriptSyntax,
    pub body: String,
    pub env: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    /// A task's script, which a restarted server resumes (where the kind `outlives_restart`).
    /// False (a runbook step): stopped on shutdown. Either way the caller collects the script's
    /// artifacts and then releases the ticket.
    pub resumable: bool,
}

/// A line a script printed; `source_seq` is the worker's number of it, where the worker numbers
/// lines (a resumed script reads on after the last one stored).
pub struct Line {
    pub error: bool,
    pub text: String,
    pub source_seq: Option<u64>,
    /// When the worker read the line, where it says (an agent does): a line printed while the
    /// server was away keeps its time. None: the server stamps it as it stores it.
    pub occurred_at: Option<muster_core::time::Timestamp>,
}

/// How a running task is stopped: canceled by a user, or by the server shutting down.
#[derive(Clone, Default)]
pub struct Stop {
    pub cancel: CancellationToken,
    pub shutting_down: Arc<AtomicBool>,
}

impl Stop {
    pub fn is_shutdown(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// How a script ended: its task's state and the reason shown to users. None from `run`: the server
/// is shutting down and left a resumable script running on a worker that outlives it.
pub type Ended = (TaskState, String);

/// What a health check found: the status, the reason (`StatusSummary`), and what the machine said
/// of itself.
pub struct Health {
    pub status: HealthStatus,
    pub summary: String,
    pub facts: Option<Facts>,
    /// A failure that a connection opened meanwhile supersedes: it is recorded only while the
    /// worker is still unreachable (an agent whose link came back records its own check).
    pub unless_reachable: bool,
}

/// What a healthy machine reports about itself.
pub struct Facts {
    pub operating_system: String,
    pub architecture: String,
    pub shell_name: String,
}

/// What `WorkerKind::hold` returns: the hold ends when it is dropped.
pub type Held = Box<dyn Send + Sync>;

/// A line sink: each line a script prints, in order.
pub type Sink<'a> = &'a mut (dyn FnMut(Line) + Send);

/// One kind of worker.
pub trait WorkerKind: Send + Sync {
    /// Names the worker in log lines ("worker W (ssh://host:22/)", "the Built-in worker of node N").
    fn describe(&self, app: &App) -> String;

    /// The machine the ledger leases and health records name: one physical machine, one key,
    /// however many spaces' workers name it.
    fn machine_key(&self) -> String;

    /// Why it cannot take work now (beyond being disabled or Unavailable, which hold for every
    /// kind), or None when it can.
    fn unreachable(&self, app: &App) -> Option<String>;

    /// How soon the health loop checks it again, given its machine policy's interval.
    fn check_interval(&self, _app: &App, policy: Duration) -> Duration {
        policy
    }

    /// Checks its health now, within `timeout`. It never takes a task slot.
    fn check_health<'a>(&'a self, app: &'a App, timeout: Duration) -> BoxFuture<'a, Health>;

    /// Runs the script to its end and says how it ended; `resume` Some: the worker already runs
    /// it, so read on after that line (where the kind `outlives_restart`). A kind that still holds
    /// the earlier lines may hand them over again first, numbered (an agent does, so that the
    /// artifacts they announced are found): the caller logs only those after `resume`.
    fn run<'a>(
        &'a self,
        app: &'a App,
        invocation: Invocation,
        stop: &'a Stop,
        sink: Sink<'a>,
        resume: Option<u64>,
    ) -> BoxFuture<'a, Option<Ended>>;

    /// Whether a script keeps running on the worker while the server restarts, so that a
    /// restarted server re-attaches to it (`run` with `resume`).
    fn outlives_restart(&self) -> bool;

    /// Keeps the worker from taking the ticket's script for an orphan (one no task follows, which
    /// it stops) while the returned value lives.
    fn hold(&self, _app: &App, _ticket: &str) -> Held {
        Box::new(())
    }

    /// Collects the files a finished script announced (after `run`, before `release`): each goes
    /// to `files.store` as a stream of chunks (never whole in memory), or is refused with a warning
    /// line (`files.refuse`: missing, outside the script's working directory, unreadable). A path
    /// is relative to the script's working directory, or absolute and inside it.
    fn collect<'a>(
        &'a self,
        app: &'a App,
        _ticket: &'a str,
        files: &'a Collection<'_>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            for file in &files.announced {
                files.refuse(app, file, "this kind of worker cannot return artifacts");
            }
        })
    }

    /// Frees what the worker keeps for a finished script (its ticket, its working directory), in
    /// the background.
    fn release(&self, app: &App, ticket: &str);
}

/// How long a script waits for its worker to come back after the connection drops: the worker's
/// machine policy's (its own, or its space's default) `ConnectionConnectTimeout`, at most 60
/// seconds.
pub async fn connect_grace(app: &App, worker: &Worker) -> Duration {
    use muster_core::resources::MachinePolicy;
    let policy = match &worker.machine_policy_id {
        Some(id) => app.store.get::<MachinePolicy>(id).await.ok().flatten(),
        None => app
            .store
            .list::<MachinePolicy>(&worker.space_id)
            .await
            .ok()
            .and_then(|all| all.into_iter().find(|p| p.is_default)),
    };
    policy
        .and_then(|p| muster_core::time::parse_timespan(&p.connection_connect_timeout))
        .unwrap_or(Duration::from_secs(60))
        .min(Duration::from_secs(60))
}

/// The kind of a worker, from its endpoint: the one place that chooses. None: the built-in worker.
pub fn of(worker: Option<&Worker>) -> Arc<dyn WorkerKind> {
    match worker {
        None => Arc::new(builtin::Builtin::default()),
        Some(worker) => match &worker.endpoint {
            Some(Endpoint::TentaclePassive(_))
            | Some(Endpoint::TentacleActive(_))
            | Some(Endpoint::KubernetesTentacle(_)) => Arc::new(agent::Agent::new(worker)),
            Some(Endpoint::Ssh(_)) => Arc::new(ssh::Ssh::new(worker)),
            None => Arc::new(Unsupported::new(worker)),
        },
    }
}

/// A worker this server cannot reach (one without an endpoint): it never takes work, and says why.
struct Unsupported {
    name: String,
    key: String,
    style: String,
}

impl Unsupported {
    fn new(worker: &Worker) -> Unsupported {
        Unsupported {
            name: worker.name.clone(),
            key: worker
                .machine_key()
                .map_or_else(|| format!("worker:{}", worker.id), str::to_string),
            style: worker
                .endpoint
                .as_ref()
                .map_or("no endpoint".to_string(), |e| {
                    e.style().as_str().to_string()
                }),
        }
    }

    fn reason(&self) -> String {
        format!(
            "{} cannot be reached: this server does not run workers of this kind ({})",
            self.name, self.style
        )
    }
}

impl WorkerKind for Unsupported {
    fn describe(&self, _app: &App) -> String {
        format!("worker {}", self.name)
    }
    fn machine_key(&self) -> String {
        self.key.clone()
    }
    fn unreachable(&self, _app: &App) -> Option<String> {
        Some(self.reason())
    }
    fn check_health<'a>(&'a self, _app: &'a App, _timeout: Duration) -> BoxFuture<'a, Health> {
        Box::pin(async move {
            Health {
                status: HealthStatus::Unknown,
                summary: self.reason(),
                facts: None,
                unless_reachable: false,
            }
        })
    }
    fn run<'a>(
        &'a self,
        _app: &'a App,
        _invocation: Invocation,
        _stop: &'a Stop,
        _sink: Sink<'a>,
        _resume: Option<u64>,
    ) -> BoxFuture<'a, Option<Ended>> {
        Box::pin(async move { Some((TaskState::Failed, self.reason())) })
    }
    fn outlives_restart(&self) -> bool {
        false
    }
    fn release(&self, _app: &App, _ticket: &str) {}
}
