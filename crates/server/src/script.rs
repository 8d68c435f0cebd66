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
    /// A task's script, which a restarted server resumes: the caller completes the ticket once the
    /// task's end is stored. False (a runbook step): completed here, and canceled on shutdown.
    pub resumable: bool,
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

/// Frees a ticket on its agent, in the background (a ticket left behind is completed when the agent
/// next connects).
pub fn complete_ticket(app: &App, worker: &Worker, ticket: &str) {
    let (app, worker) = (app.clone(), worker.clone());
    let ticket = muster_proto::rpc::Ticket {
        ticket: ticket.to_string(),
    };
    tokio::spawn(async move {
        if let Ok(link) = crate::comms::link_for(&app, &worker).await {
            let _ = link
                .call::<_, muster_proto::rpc::Ticket>(muster_proto::rpc::PATH_COMPLETE, &ticket)
                .await;
        }
    });
}

/// Why a task ended Failed when its agent was out of reach: what this server knows, and what
/// happens to the script.
fn unreachable_message(worker: &Worker, grace: Duration, error: &anyhow::Error) -> String {
    format!(
        "Outcome unknown: worker {} was unreachable for {} seconds ({error:#}). The script may still be running there; the agent stops it when it reconnects, or by itself after {} seconds without word from this server.",
        worker.name,
        grace.as_secs(),
        (grace + muster_proto::rpc::ABANDON_MARGIN).as_secs()
    )
}

/// Starts the script on the agent (or, `resume` Some, reads on after that line of a script it already
/// runs; one it never received is started then) and follows it to its end, over a dropped connection
/// if the agent comes back within the grace period. None: the server is shutting down and leaves the
/// (resumable) script running.
async fn drive_agent(
    app: &App,
    worker: &Worker,
    invocation: Invocation,
    stop: &Stop,
    sink: &mut (dyn FnMut(Line) + Send),
    resume: Option<u64>,
) -> Option<(TaskState, String)> {
    use muster_proto::rpc::{self, Outcome, ScriptState, StatusReply, StatusRequest, Ticket};
    let grace = reconnect_grace(app, worker).await;
    let resumable = invocation.resumable;
    let start = rpc::StartScript {
        ticket: invocation.ticket.clone(),
        syntax: invocation.syntax.as_str().to_string(),
        body: invocation.body,
        env: invocation.env,
        timeout_seconds: invocation.timeout.map(|t| t.as_secs().max(1)),
        server_wait_seconds: Some(grace.as_secs()),
    };
    let ticket = Ticket {
        ticket: start.ticket.clone(),
    };
    let id = start.ticket.clone();
    // While this runs, a reconnecting agent's ticket is not an orphan.
    let _hold = crate::comms::hold(app, &id);
    let mut after = resume.unwrap_or(0);
    // Whether the agent has the script: a resumed one is assumed to, until it says otherwise.
    let mut started = resume.is_some();
    let mut start_sent = false;
    let mut cancel_sent = false;
    let mut lost_since: Option<tokio::time::Instant> = None;
    let gone = |since: tokio::time::Instant, error: &anyhow::Error| {
        (since.elapsed() >= grace)
            .then(|| (TaskState::Failed, unreachable_message(worker, grace, error)))
    };
    loop {
        if stop.is_shutdown() {
            if resumable {
                return None;
            }
            // A step is not resumed by a restarted server: it stops with this one.
            let stopped = match crate::comms::link_for(app, worker).await {
                Ok(link) => link
                    .call::<_, Ticket>(rpc::PATH_COMPLETE, &ticket)
                    .await
                    .is_ok(),
                Err(_) => false,
            };
            return Some((
                TaskState::Failed,
                if stopped {
                    format!(
                        "The Muster server shut down while this step was executing; its script on worker {} was stopped.",
                        worker.name
                    )
                } else {
                    format!(
                        "The Muster server shut down while this step was executing, and worker {} could not be told to stop its script; the agent stops it when it reconnects, or by itself after {} seconds without word from the server.",
                        worker.name,
                        (grace + rpc::ABANDON_MARGIN).as_secs()
                    )
                },
            ));
        }
        let link = match crate::comms::link_for(app, worker).await {
            Ok(link) => link,
            Err(error) => {
                let since = *lost_since.get_or_insert_with(tokio::time::Instant::now);
                if let Some(end) = gone(since, &error) {
                    return Some(end);
                }
                let changed = app.comms.changed.notified();
                let _ = tokio::time::timeout(Duration::from_secs(1), changed).await;
                continue;
            }
        };
        if !started {
            start_sent = true;
            if let Err(error) = link.call::<_, Ticket>(rpc::PATH_START, &start).await {
                if let Some(refused) = error.downcast_ref::<crate::comms::Refused>() {
                    return Some((
                        TaskState::Failed,
                        format!("Worker {} did not start the script: {refused}", worker.name),
                    ));
                }
                let since = *lost_since.get_or_insert_with(tokio::time::Instant::now);
                tracing::warn!(ticket = %id, "cannot start the script on {}: {error:#}", worker.name);
                if let Some(end) = gone(since, &error) {
                    return Some(end);
                }
                // Whether the start arrived is unknown: a repeated start of a ticket is harmless.
                let changed = app.comms.changed.notified();
                let _ = tokio::time::timeout(Duration::from_secs(1), changed).await;
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
            None if stop.is_shutdown() => continue,
            None => {
                cancel_sent = true;
                if let Err(error) = link.call::<_, Ticket>(rpc::PATH_CANCEL, &ticket).await {
                    tracing::warn!(ticket = %id, "cannot cancel the script on {}: {error:#}", worker.name);
                }
                continue;
            }
            Some(Err(error)) => {
                let since = *lost_since.get_or_insert_with(tokio::time::Instant::now);
                if let Some(end) = gone(since, &error) {
                    return Some(end);
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
            ScriptState::Unknown if !start_sent && !cancel_sent => {
                // Claimed, and the server stopped before the agent received it: it never ran.
                app.logs.append(
                    &id,
                    muster_core::LogCategory::Verbose,
                    format!(
                        "Worker {} never received this script (the Muster server stopped before starting it); starting it now",
                        worker.name
                    ),
                );
                started = false;
            }
            ScriptState::Unknown if !start_sent => {
                return Some((
                    TaskState::Canceled,
                    format!(
                        "The task was canceled before worker {} received its script; it never ran.",
                        worker.name
                    ),
                ));
            }
            ScriptState::Unknown => {
                return Some((
                    TaskState::Failed,
                    format!(
                        "Worker {} does not hold this script although it accepted it (was its home reset?); the script's outcome is unknown.",
                        worker.name
                    ),
                ));
            }
            ScriptState::Lost => {
                complete_ticket(app, worker, &id);
                return Some((
                    TaskState::Failed,
                    format!(
                        "The agent of worker {} restarted while it held this script: the script was stopped with it if it was still running, and its outcome and any lines after {after} are lost.",
                        worker.name
                    ),
                ));
            }
            ScriptState::Complete => {
                // Freeing the ticket is not on the task's path to its end: every line is in. A
                // resumable task's ticket is freed only once its end is stored, so that a server
                // that crashes before then finds the script's end again, and never starts it twice.
                if !resumable {
                    complete_ticket(app, worker, &id);
                }
                return Some(match (reply.outcome, reply.exit_code) {
                    (Some(Outcome::Exited), Some(0)) => (TaskState::Success, String::new()),
                    (Some(Outcome::Exited), Some(code)) => (TaskState::Failed, format!("The script exited with code {code}.")),
                    (Some(Outcome::Signaled), code) => {
                        (TaskState::Failed, format!("The script was ended by signal {}.", code.unwrap_or_default()))
                    }
                    (Some(Outcome::Canceled), _) if stop.is_shutdown() => {
                        (TaskState::Failed, "The Muster server shut down while this task was executing; the script was stopped.".into())
                    }
                    (Some(Outcome::Canceled), _) if cancel_sent => (TaskState::Canceled, "The task was canceled.".into()),
                    (Some(Outcome::Canceled), _) => (
                        TaskState::Failed,
                        format!("The script was stopped on worker {} by a cancel this run of the server did not send (one sent before it restarted, or for a ticket it had given up).", worker.name),
                    ),
                    (Some(Outcome::Abandoned), _) => (
                        TaskState::Failed,
                        format!(
                            "Worker {} stopped the script: it heard nothing about it from the Muster server for {} seconds, longer than the server waits for a lost worker.",
                            worker.name,
                            (grace + rpc::ABANDON_MARGIN).as_secs()
                        ),
                    ),
                    (Some(Outcome::TimedOut), _) => (TaskState::TimedOut, "The task timed out.".into()),
                    _ => (TaskState::Failed, format!("The script could not run on worker {}.", worker.name)),
                });
            }
        }
    }
}
