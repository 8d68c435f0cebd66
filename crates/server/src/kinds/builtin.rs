//! The built-in worker: scripts run on the server's own machine through `muster_exec`, as the
//! server's user or `--builtin-worker-user`. A script dies with the server (its watchdog kills it),
//! so nothing here outlives a restart. A finished script's working directory is kept until its
//! ticket is released, so that its artifacts are read from it.

use super::{Ended, Health, Invocation, Line, Sink, Stop, WorkerKind};
use crate::artifacts::Collection;
use crate::state::App;
use futures_util::future::BoxFuture;
use muster_core::{HealthStatus, ScriptSyntax, TaskState};
use std::time::Duration;
use tokio::sync::mpsc;

pub const BUILTIN_WORKER_NAME: &str = "Built-in worker";

/// The key of a need the built-in worker meets (a step or script that runs on the server).
pub const BUILTIN_KEY: &str = "builtin";

#[derive(Default)]
pub struct Builtin {
    /// Finished scripts' working directories, by ticket, until released.
    kept: std::sync::Mutex<std::collections::HashMap<String, muster_exec::WorkDir>>,
}

impl Builtin {
    fn take(&self, ticket: &str) -> Option<muster_exec::WorkDir> {
        self.kept.lock().expect("builtin lock").remove(ticket)
    }
}

/// Removes a working directory off the async threads (it may hold large files).
fn remove(dir: muster_exec::WorkDir) {
    tokio::task::spawn_blocking(move || drop(dir));
}

impl WorkerKind for Builtin {
    fn describe(&self, app: &App) -> String {
        format!("the {BUILTIN_WORKER_NAME} of node {}", app.config.node_name)
    }

    fn machine_key(&self) -> String {
        muster_scheduler::BUILTIN_AGENT.to_string()
    }

    fn unreachable(&self, app: &App) -> Option<String> {
        (!app.config.builtin_worker).then(|| {
            "It needs the built-in worker, which is disabled on this server (--no-builtin-worker); \
             add a worker to the target pool or start the server without that flag"
                .to_string()
        })
    }

    fn check_health<'a>(&'a self, app: &'a App, _timeout: Duration) -> BoxFuture<'a, Health> {
        Box::pin(async move {
            match self.unreachable(app) {
                Some(reason) => Health {
                    status: HealthStatus::Unavailable,
                    summary: reason,
                    facts: None,
                    unless_reachable: false,
                },
                None => Health {
                    status: HealthStatus::Healthy,
                    summary: "The built-in worker runs on the server.".into(),
                    facts: None,
                    unless_reachable: false,
                },
            }
        })
    }

    fn run<'a>(
        &'a self,
        app: &'a App,
        invocation: Invocation,
        stop: &'a Stop,
        sink: Sink<'a>,
        _resume: Option<u64>,
    ) -> BoxFuture<'a, Option<Ended>> {
        Box::pin(async move {
            let ticket = invocation.ticket.clone();
            let (end, dir) = run(app, invocation, stop, sink).await;
            if let Some(dir) = dir
                && let Some(old) = self.kept.lock().expect("builtin lock").insert(ticket, dir)
            {
                remove(old);
            }
            Some(end)
        })
    }

    fn outlives_restart(&self) -> bool {
        false
    }

    fn collect<'a>(
        &'a self,
        app: &'a App,
        ticket: &'a str,
        files: &'a Collection<'_>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(dir) = self.take(ticket) else {
                for file in &files.announced {
                    files.refuse(app, file, "the script left no working directory");
                }
                return;
            };
            for file in &files.announced {
                match dir.open(&file.path) {
                    Ok((opened, length)) => {
                        let chunks = crate::artifacts::file_chunks(
                            tokio::fs::File::from_std(opened),
                            length,
                        );
                        files.store(app, file, length, chunks).await;
                    }
                    Err(error) => files.refuse(app, file, &error.to_string()),
                }
            }
            remove(dir);
        })
    }

    fn release(&self, _app: &App, ticket: &str) {
        if let Some(dir) = self.take(ticket) {
            remove(dir);
        }
    }
}

async fn run(
    app: &App,
    invocation: Invocation,
    stop: &Stop,
    sink: Sink<'_>,
) -> (Ended, Option<muster_exec::WorkDir>) {
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
    let exec = muster_exec::run_keeping(script, lines_tx, cancel.cancelled_owned());
    let forward = async {
        while let Some(batch) = lines_rx.recv().await {
            for line in batch {
                sink(Line {
                    error: line.stream == muster_exec::Stream::Stderr,
                    text: line.text,
                    source_seq: None,
                    occurred_at: None,
                });
            }
            // The script waits (its pipe fills) while the log writer catches up.
            app.logs.wait_for_room().await;
        }
    };
    let (outcome, ()) = tokio::join!(exec, forward);
    let (outcome, dir) = match outcome {
        Ok((outcome, dir)) => (Ok(outcome), Some(dir)),
        Err(error) => (Err(error), None),
    };
    let end = match outcome {
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
    };
    (end, dir)
}
