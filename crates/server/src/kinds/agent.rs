//! Agents (polling and listening) as a kind of worker: the restart-safe RPC over the agent's link
//! (`crate::comms`). A script on an agent outlives the server: a restarted server reads on from the
//! agent's line after the last one it stored.

use super::{Ended, Facts, Health, Invocation, Line, Sink, Stop, WorkerKind};
use crate::artifacts::Collection;
use crate::comms::Link;
use crate::state::App;
use futures_util::future::BoxFuture;
use muster_core::resources::{Endpoint, Worker};
use muster_core::{HealthStatus, TaskState};
use muster_proto::rpc;
use std::time::Duration;

/// What an agent's workers say once its link has closed.
pub const CONNECTION_CLOSED: &str = "The agent's connection closed.";

/// How soon a listening agent that could not be reached is tried again.
const UNREACHABLE_RETRY: Duration = Duration::from_secs(5);

pub struct Agent {
    worker: Worker,
    thumbprint: String,
}

impl Agent {
    pub fn new(worker: &Worker) -> Agent {
        Agent {
            thumbprint: worker
                .thumbprint
                .clone()
                .unwrap_or_default()
                .to_ascii_uppercase(),
            worker: worker.clone(),
        }
    }

    fn listening(&self) -> bool {
        matches!(self.worker.endpoint, Some(Endpoint::TentaclePassive(_)))
    }
}

impl WorkerKind for Agent {
    fn describe(&self, _app: &App) -> String {
        format!(
            "worker {} ({})",
            self.worker.name,
            self.worker.uri.clone().unwrap_or_default()
        )
    }

    fn machine_key(&self) -> String {
        self.thumbprint.clone()
    }

    fn unreachable(&self, app: &App) -> Option<String> {
        // Linked to this node or to another (reached through it).
        if app.comms.reachable(&self.thumbprint) {
            None
        } else {
            Some(format!("{} is not connected", self.worker.name))
        }
    }

    fn check_interval(&self, app: &App, policy: Duration) -> Duration {
        // A listening agent without a link is tried every few seconds, so one that restarted is
        // found at once.
        if self.listening() && app.comms.link(&self.thumbprint).is_none() {
            policy.min(UNREACHABLE_RETRY)
        } else {
            policy
        }
    }

    fn check_health<'a>(&'a self, app: &'a App, timeout: Duration) -> BoxFuture<'a, Health> {
        Box::pin(async move {
            match crate::comms::link_for(app, &self.worker).await {
                Ok(link) => check_link(app, &self.thumbprint, &link, timeout).await,
                // A polling agent's closed link recorded the clearer reason; a later check keeps it.
                Err(_) if !self.listening() && app.comms.was_closed(&self.thumbprint) => {
                    unreachable_health(CONNECTION_CLOSED.to_string())
                }
                Err(error) => unreachable_health(format!("{error:#}")),
            }
        })
    }

    fn run<'a>(
        &'a self,
        app: &'a App,
        invocation: Invocation,
        stop: &'a Stop,
        sink: Sink<'a>,
        resume: Option<u64>,
    ) -> BoxFuture<'a, Option<Ended>> {
        Box::pin(drive_agent(
            app,
            &self.worker,
            invocation,
            stop,
            sink,
            resume,
        ))
    }

    fn outlives_restart(&self) -> bool {
        true
    }

    fn hold(&self, app: &App, ticket: &str) -> super::Held {
        Box::new(crate::comms::hold(app, ticket))
    }

    fn collect<'a>(
        &'a self,
        app: &'a App,
        ticket: &'a str,
        files: &'a Collection<'_>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            for file in &files.announced {
                if let Err(why) = fetch(app, &self.worker, ticket, files, file).await {
                    files.refuse(app, file, &why);
                }
            }
        })
    }

    fn release(&self, app: &App, ticket: &str) {
        complete_ticket(app, &self.worker, ticket);
    }
}

/// Streams one file of a finished ticket's working directory from the agent into the store.
async fn fetch(
    app: &App,
    worker: &Worker,
    ticket: &str,
    files: &Collection<'_>,
    file: &muster_core::variables::AnnouncedArtifact,
) -> Result<(), String> {
    use futures_util::TryStreamExt;
    use http_body_util::BodyExt;
    let link = crate::comms::link_for(app, worker)
        .await
        .map_err(|e| format!("worker {} cannot be reached: {e:#}", worker.name))?;
    let request = rpc::ArtifactRequest {
        ticket: ticket.to_string(),
        path: file.path.clone(),
    };
    let (headers, body) = link.open(rpc::PATH_ARTIFACT, &request).await.map_err(|e| {
        match e.downcast_ref::<crate::comms::Refused>() {
            Some(refused) => refused.0.clone(),
            None => format!("worker {} did not send it: {e:#}", worker.name),
        }
    })?;
    let length: u64 = headers
        .get(rpc::ARTIFACT_LENGTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("worker {} did not say how large it is", worker.name))?;
    let chunks = body.into_data_stream().map_err(std::io::Error::other);
    files.store(app, file, length, chunks).await;
    Ok(())
}

fn unreachable_health(summary: String) -> Health {
    Health {
        status: HealthStatus::Unavailable,
        summary,
        facts: None,
        unless_reachable: true,
    }
}

/// Reads an agent's health over its link.
pub async fn check_link(app: &App, thumbprint: &str, link: &Link, timeout: Duration) -> Health {
    let reply = tokio::time::timeout(
        timeout,
        link.call::<_, rpc::HealthReply>(rpc::PATH_HEALTH, &()),
    )
    .await;
    match reply {
        Ok(Ok(health)) => Health {
            status: HealthStatus::Healthy,
            summary: "The agent is connected and answered its health check.".to_string(),
            facts: Some(Facts {
                operating_system: health.operating_system,
                architecture: health.architecture,
                shell_name: health.shell_name,
            }),
            unless_reachable: false,
        },
        // The link closed during the check: its closing records the agent Unavailable, and this
        // answer must not overwrite that clearer reason.
        Ok(Err(_)) if !app.comms.is_current(thumbprint, link) => {
            unreachable_health(CONNECTION_CLOSED.to_string())
        }
        // No answer on the link: the agent refused this server or is gone.
        Ok(Err(error)) => unreachable_health(format!(
            "The agent did not answer its health check (does it trust this server?): {error:#}"
        )),
        Err(_) => unreachable_health(format!(
            "The agent did not answer its health check in {} seconds.",
            timeout.as_secs()
        )),
    }
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

/// Starts the script on the agent (or, `resume` Some, follows a script it already runs: its lines
/// from the first again, which the caller logs only after `resume`, so that the artifacts announced
/// before the restart are found; one it never received is started then) and follows it to its end, over a dropped connection
/// if the agent comes back within the grace period. None: the server is shutting down and leaves the
/// (resumable) script running.
async fn drive_agent(
    app: &App,
    worker: &Worker,
    invocation: Invocation,
    stop: &Stop,
    sink: Sink<'_>,
    resume: Option<u64>,
) -> Option<Ended> {
    use muster_proto::rpc::{self, Outcome, ScriptState, StatusReply, StatusRequest, Ticket};
    let grace = super::connect_grace(app, worker).await;
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
    // The agent keeps every line until the ticket is completed: a resumed script is read from its
    // first line again (the caller skips those it stored).
    let mut after = 0;
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
                source_seq: Some(line.seq),
                occurred_at: line
                    .time_ms
                    .and_then(chrono::DateTime::from_timestamp_millis),
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
                // The caller collects the script's artifacts, then releases the ticket (a task's
                // only once its end is stored, so that a server that crashes before then finds
                // the script's end again, and never starts it twice).
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
