//! Runs one script on one worker, the built-in worker or an agent, and hands each output line to
//! a sink: the one way both AdHocScript tasks and runbook steps run scripts.

use crate::state::App;
use muster_core::resources::Worker;
use muster_core::{ScriptSyntax, TaskState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Where a script runs.
#[derive(Clone)]
pub enum Place {
    Builtin,
    Agent(Box<Worker>),
}

/// One script to run.
pub struct Invocation {
    /// The agent's ticket: unique per script run (a task id, or a task's step and worker).
    pub ticket: String,
    pub syntax: ScriptSyntax,
    pub body: String,
    pub env: Vec<(String, String)>,
    pub timeout: Option<Duration>,
}

/// A line a script printed; `agent_seq` is the agent's number of it.
pub struct Line {
    pub error: bool,
    pub text: String,
    pub agent_seq: Option<u64>,
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

/// Runs the script to its end and says how it ended. `resume` Some: the agent already runs it, so
/// read on after that line. None: the server is shutting down and leaves an agent's script running.
pub async fn run(
    app: &App,
    place: &Place,
    invocation: Invocation,
    stop: &Stop,
    sink: &mut (dyn FnMut(Line) + Send),
    resume: Option<u64>,
) -> Option<(TaskState, String)> {
    match place {
        Place::Builtin => Some(run_builtin(app, invocation, stop, sink).await),
        Place::Agent(worker) => drive_agent(app, worker, invocation, stop, sink, resume).await,
    }
}

async fn run_builtin(
    app: &App,
    invocation: Invocation,
    stop: &Stop,
    sink: &mut (dyn FnMut(Line) + Send),
) -> (TaskState, String) {
    let script = muster_exec::Script {
        syntax: match invocation.syntax {
            ScriptSyntax::Bash => muster_exec::Syntax::Bash,
            ScriptSyntax::Python => muster_exec::Syntax::Python,
            ScriptSyntax::PowerShell => muster_exec::Syntax::PowerShell,
        },
        body: invocation.body,
        env: invocation.env,
        clean_env: true,
        timeout: invocation.timeout,
        work_root: app.config.work_dir.clone(),
        run_as: app.config.builtin_run_as.clone(),
    };
    let (lines_tx, mut lines_rx) = mpsc::channel::<Vec<muster_exec::Line>>(16);
    let cancel = stop.cancel.clone();
    let exec = muster_exec::run(script, lines_tx, cancel.cancelled_owned());
    let forward = async {
        while let Some(batch) = lines_rx.recv().await {
            for line in batch {
                sink(Line {
                    error: line.stream == muster_exec::Stream::Stderr,
                    text: line.text,
                    agent_seq: None,
                });
            }
            // The script waits (its pipe fills) while the log writer catches up.
            app.logs.wait_for_room().await;
        }
    };
    let (outcome, ()) = tokio::join!(exec, forward);
    match outcome {
        Ok(muster_exec::Outcome::Exited(0)) => (TaskState::Success, String::new()),
        Ok(muster_exec::Outcome::Exited(code)) => (
            TaskState::Failed,
            format!("The script exited with code {code}."),
        ),
        Ok(muster_exec::Outcome::Signaled(signal)) => (
            TaskState::Failed,
            format!("The script was ended by signal {signal}."),
        ),
        Ok(muster_exec::Outcome::Canceled) if stop.is_shutdown() => (
            TaskState::Failed,
            "The Muster server shut down while this task was executing; the script was stopped."
                .into(),
        ),
        Ok(muster_exec::Outcome::Canceled) => {
            (TaskState::Canceled, "The task was canceled.".into())
        }
        Ok(muster_exec::Outcome::TimedOut) => (
            TaskState::TimedOut,
            format!(
                "The task timed out after {}.",
                muster_core::time::format_timespan(invocation.timeout.unwrap_or_default())
            ),
        ),
        Err(error) => (TaskState::Failed, error.to_string()),
    }
}

/// How long a script waits for its agent to come back after the connection drops: the worker's
/// machine policy's `ConnectionConnectTimeout`, at most 60 seconds.
async fn reconnect_grace(app: &App, worker: &Worker) -> Duration {
    let policy = match &worker.machine_policy_id {
        Some(id) => app
            .store
            .get::<muster_core::resources::MachinePolicy>(id)
            .await
            .ok()
            .flatten(),
        None => None,
    };
    policy
        .and_then(|p| muster_core::time::parse_timespan(&p.connection_connect_timeout))
        .unwrap_or(Duration::from_secs(60))
        .min(Duration::from_secs(60))
}

/// Starts the script on the agent (or, `resume` Some, reads on after that line of a script it already
/// runs) and follows it to its end, over a dropped connection if the agent comes back within the grace
/// period. None: the server is shutting down and leaves the script running.
async fn drive_agent(
    app: &App,
    worker: &Worker,
    invocation: Invocation,
    stop: &Stop,
    sink: &mut (dyn FnMut(Line) + Send),
    resume: Option<u64>,
) -> Option<(TaskState, String)> {
    use muster_proto::rpc::{self, Outcome, ScriptState, StatusReply, StatusRequest, Ticket};
    let start = rpc::StartScript {
        ticket: invocation.ticket.clone(),
        syntax: invocation.syntax.as_str().to_string(),
        body: invocation.body,
        env: invocation.env,
        timeout_seconds: invocation.timeout.map(|t| t.as_secs().max(1)),
    };
    let ticket = Ticket {
        ticket: start.ticket.clone(),
    };
    let id = start.ticket.clone();
    let mut after = resume.unwrap_or(0);
    let mut started = resume.is_some();
    let mut cancel_sent = false;
    let mut lost_since: Option<tokio::time::Instant> = None;
    let grace = reconnect_grace(app, worker).await;
    loop {
        if stop.is_shutdown() {
            return None;
        }
        let link = match crate::comms::link_for(app, worker).await {
            Ok(link) => link,
            Err(error) => {
                let since = *lost_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= grace {
                    return Some((
                        TaskState::Failed,
                        format!(
                            "Lost the connection to worker {} and it did not come back within {} seconds: {error:#}",
                            worker.name,
                            grace.as_secs()
                        ),
                    ));
                }
                let changed = app.comms.changed.notified();
                let _ = tokio::time::timeout(Duration::from_secs(1), changed).await;
                continue;
            }
        };
        if !started {
            if let Err(error) = link.call::<_, Ticket>(rpc::PATH_START, &start).await {
                lost_since.get_or_insert_with(tokio::time::Instant::now);
                tracing::warn!(ticket = %id, "cannot start the script on {}: {error:#}", worker.name);
                continue;
            }
            started = true;
        }
        let request = StatusRequest {
            ticket: id.clone(),
            after,
            wait_ms: 15_000,
        };
        let cancel = stop.cancel.clone();
        let reply = tokio::select! {
            reply = link.call::<_, StatusReply>(rpc::PATH_STATUS, &request) => Some(reply),
            _ = cancel.cancelled(), if !cancel_sent => None,
        };
        let reply = match reply {
            None if stop.is_shutdown() => return None,
            None => {
                cancel_sent = true;
                if let Err(error) = link.call::<_, Ticket>(rpc::PATH_CANCEL, &ticket).await {
                    tracing::warn!(ticket = %id, "cannot cancel the script on {}: {error:#}", worker.name);
                }
                continue;
            }
            Some(Err(error)) => {
                let since = *lost_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= grace {
                    return Some((
                        TaskState::Failed,
                        format!("Lost the connection to worker {}: {error:#}", worker.name),
                    ));
                }
                let changed = app.comms.changed.notified();
                let _ = tokio::time::timeout(Duration::from_secs(1), changed).await;
                continue;
            }
            Some(Ok(reply)) => reply,
        };
        lost_since = None;
        for line in reply.lines {
            after = line.seq;
            sink(Line {
                error: line.error,
                text: line.text,
                agent_seq: Some(line.seq),
            });
        }
        app.logs.wait_for_room().await;
        match reply.state {
            ScriptState::Running => {}
            ScriptState::Unknown => {
                return Some((
                    TaskState::Failed,
                    format!(
                        "Worker {} no longer knows this script (the agent restarted).",
                        worker.name
                    ),
                ));
            }
            ScriptState::Complete => {
                // Freeing the ticket is not on the task's path to its end: every line is in.
                tokio::spawn(async move {
                    let _ = link.call::<_, Ticket>(rpc::PATH_COMPLETE, &ticket).await;
                });
                return Some(match (reply.outcome, reply.exit_code) {
                    (Some(Outcome::Exited), Some(0)) => (TaskState::Success, String::new()),
                    (Some(Outcome::Exited), Some(code)) => (TaskState::Failed, format!("The script exited with code {code}.")),
                    (Some(Outcome::Signaled), code) => {
                        (TaskState::Failed, format!("The script was ended by signal {}.", code.unwrap_or_default()))
                    }
                    (Some(Outcome::Canceled), _) if stop.is_shutdown() => {
                        (TaskState::Failed, "The Muster server shut down while this task was executing; the script was stopped.".into())
                    }
                    (Some(Outcome::Canceled), _) => (TaskState::Canceled, "The task was canceled.".into()),
                    (Some(Outcome::TimedOut), _) => (TaskState::TimedOut, "The task timed out.".into()),
                    _ => (TaskState::Failed, format!("The script could not run on worker {}.", worker.name)),
                });
            }
        }
    }
}
