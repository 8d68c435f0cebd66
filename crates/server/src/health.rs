//! Health: an agent's check over its link, the periodic checks each worker's machine policy asks for,
//! on-demand `Health` tasks, and the policy's cleanup of workers that stay Unavailable.
//!
//! Architecture invariant: a check is made once per physical agent (certificate thumbprint) and its
//! result recorded on every worker that names that agent, however many spaces or pools they are in.
//! A check never takes a task-cap slot and never waits behind script tasks.

use crate::comms::{Link, link_for};
use crate::state::App;
use muster_core::resources::{Endpoint, MachinePolicy, Task, Worker};
use muster_core::time::{format_timespan, parse_timespan};
use muster_core::{HealthStatus, LogCategory, MachineStatus, TaskState};
use muster_proto::rpc;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

/// The name of an on-demand health check task.
pub const TASK_NAME: &str = "Health";

/// How long one agent has to answer a check, unless a task's `MachineTimeout` says otherwise.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// How soon a listening agent that could not be reached is tried again.
const UNREACHABLE_RETRY: Duration = Duration::from_secs(5);

/// How soon after one look at every worker a change may cause the next.
const RESCAN_AT_MOST_EVERY: Duration = Duration::from_millis(250);

/// What an agent's workers say once its link has closed.
pub const CONNECTION_CLOSED: &str = "The agent's connection closed.";

/// A check's result: the status and the reason, as `StatusSummary` shows it.
pub type Checked = (HealthStatus, String);

/// Reads an agent's health over its link and records it on every worker that names the agent.
pub async fn check_link(app: &App, thumbprint: &str, link: &Link) -> Checked {
    let reply = tokio::time::timeout(
        CHECK_TIMEOUT,
        link.call::<_, rpc::HealthReply>(rpc::PATH_HEALTH, &()),
    )
    .await;
    let (status, summary, health) = match reply {
        Ok(Ok(health)) => (
            HealthStatus::Healthy,
            "The agent is connected and answered its health check.".to_string(),
            Some(health),
        ),
        // The link closed during the check: its closing records the agent Unavailable, and this
        // answer must not overwrite that clearer reason.
        Ok(Err(_)) if !app.comms.is_current(thumbprint, link) => {
            return (HealthStatus::Unavailable, CONNECTION_CLOSED.to_string());
        }
        // No answer on the link: the agent refused this server or is gone.
        Ok(Err(error)) => (
            HealthStatus::Unavailable,
            format!(
                "The agent did not answer its health check (does it trust this server?): {error:#}"
            ),
            None,
        ),
        Err(_) => (
            HealthStatus::Unavailable,
            format!(
                "The agent did not answer its health check in {} seconds.",
                CHECK_TIMEOUT.as_secs()
            ),
            None,
        ),
    };
    set_health(app, thumbprint, status, &summary, health).await;
    (status, summary)
}

/// Checks one worker's agent now, dialling a listening agent if needed.
pub async fn check_worker(app: &App, worker: &Worker) -> Checked {
    let Some(thumbprint) = worker.thumbprint.clone() else {
        return (
            HealthStatus::Unknown,
            format!(
                "{} has no agent certificate to check (SSH workers are not reached by this server yet).",
                worker.name
            ),
        );
    };
    match link_for(app, worker).await {
        Ok(link) => check_link(app, &thumbprint, &link).await,
        // A polling agent's closed link recorded the clearer reason; a later check keeps it.
        Err(_)
            if !matches!(worker.endpoint, Some(Endpoint::TentaclePassive(_)))
                && app.comms.was_closed(&thumbprint) =>
        {
            set_unreachable(app, &thumbprint, CONNECTION_CLOSED).await;
            (HealthStatus::Unavailable, CONNECTION_CLOSED.to_string())
        }
        Err(error) => {
            let summary = format!("{error:#}");
            set_unreachable(app, &thumbprint, &summary).await;
            (HealthStatus::Unavailable, summary)
        }
    }
}

/// Records that the agent cannot be reached, unless a link to it has opened meanwhile: that link's
/// own check records its health, and a stale failure must not overwrite it.
pub async fn set_unreachable(app: &App, thumbprint: &str, summary: &str) {
    let lock = app.comms.health_lock(thumbprint);
    let _held = lock.lock().await;
    if app.comms.link(thumbprint).is_none() {
        write_health(app, thumbprint, HealthStatus::Unavailable, summary, None).await;
    }
}

/// Records a health result on every worker that names the agent.
pub async fn set_health(
    app: &App,
    thumbprint: &str,
    status: HealthStatus,
    summary: &str,
    health: Option<rpc::HealthReply>,
) {
    let lock = app.comms.health_lock(thumbprint);
    let _held = lock.lock().await;
    write_health(app, thumbprint, status, summary, health).await;
}

async fn write_health(
    app: &App,
    thumbprint: &str,
    status: HealthStatus,
    summary: &str,
    health: Option<rpc::HealthReply>,
) {
    let workers = match app
        .store
        .find_by_ext::<Worker>(&thumbprint.to_ascii_uppercase())
        .await
    {
        Ok(workers) => workers,
        Err(error) => {
            tracing::error!(%error, "cannot read workers to record their health");
            return;
        }
    };
    for mut worker in workers {
        worker.health_status = status;
        worker.status = if status == HealthStatus::Healthy {
            MachineStatus::Online
        } else {
            MachineStatus::Offline
        };
        worker.status_summary = summary.to_string();
        if let Some(health) = &health {
            worker.operating_system = Some(health.operating_system.clone());
            worker.architecture = Some(health.architecture.clone());
            worker.shell_name = Some(health.shell_name.clone());
            worker.shell_version = None;
        }
        if let Err(error) = app.store.put(&worker).await {
            tracing::error!(%error, "cannot record a worker's health");
        }
    }
    app.dispatcher.wake();
}

/// The machine policy that governs a worker: its own, or its space's default.
struct Policies {
    by_id: HashMap<String, MachinePolicy>,
    default_of_space: HashMap<String, String>,
}

impl Policies {
    async fn load(app: &App) -> Policies {
        let all: Vec<MachinePolicy> = app.store.list_all().await.unwrap_or_default();
        let default_of_space = all
            .iter()
            .filter(|p| p.is_default)
            .map(|p| (p.space_id.clone(), p.id.clone()))
            .collect();
        Policies {
            by_id: all.into_iter().map(|p| (p.id.clone(), p)).collect(),
            default_of_space,
        }
    }

    fn of(&self, worker: &Worker) -> Option<&MachinePolicy> {
        worker
            .machine_policy_id
            .as_ref()
            .and_then(|id| self.by_id.get(id))
            .or_else(|| {
                self.default_of_space
                    .get(&worker.space_id)
                    .and_then(|id| self.by_id.get(id))
            })
    }
}

/// After how long Unavailable the policy deletes a worker, when it does.
fn cleanup_after(policy: &MachinePolicy) -> Option<Duration> {
    let cleanup = &policy.machine_cleanup_policy;
    if cleanup["DeleteMachinesBehavior"].as_str() != Some("DeleteUnavailableMachines") {
        return None;
    }
    cleanup["DeleteMachinesElapsedTimeSpan"]
        .as_str()
        .and_then(parse_timespan)
}

/// Checks each agent as often as its worker's machine policy says (the shortest, when workers under
/// several policies name one agent), and deletes workers that the policy's cleanup says to delete
/// once they have been Unavailable long enough, as observed by this server.
pub async fn health_loop(app: App) {
    let mut last_check: HashMap<String, Instant> = HashMap::new();
    let mut unavailable_since: HashMap<String, Instant> = HashMap::new();
    loop {
        let now = Instant::now();
        let workers: Vec<Worker> = app.store.list_all().await.unwrap_or_default();
        let policies = Policies::load(&app).await;
        let mut next = now + Duration::from_secs(3600);

        // The shortest interval among the workers that name each agent.
        let mut agents: HashMap<&str, (Duration, &Worker)> = HashMap::new();
        for worker in workers.iter().filter(|w| !w.is_disabled) {
            let Some(thumbprint) = worker.thumbprint.as_deref() else {
                continue;
            };
            if matches!(worker.endpoint, Some(Endpoint::Ssh(_)) | None) {
                continue;
            }
            let mut interval = policies.of(worker).map_or(
                Duration::from_secs(3600),
                MachinePolicy::health_check_interval,
            );
            if matches!(worker.endpoint, Some(Endpoint::TentaclePassive(_)))
                && app.comms.link(thumbprint).is_none()
            {
                interval = interval.min(UNREACHABLE_RETRY);
            }
            let entry = agents.entry(thumbprint).or_insert((interval, worker));
            entry.0 = entry.0.min(interval);
        }
        for (thumbprint, (interval, worker)) in &agents {
            let due = last_check
                .get(*thumbprint)
                .map_or(now, |at| *at + *interval);
            if due <= now {
                last_check.insert(thumbprint.to_string(), now);
                let (app, worker) = (app.clone(), (*worker).clone());
                tokio::spawn(async move { check_worker(&app, &worker).await });
                next = next.min(now + *interval);
            } else {
                next = next.min(due);
            }
        }
        last_check.retain(|t, _| agents.contains_key(t.as_str()));

        // Cleanup, as Octopus does it: during health checks, for workers Unavailable long enough.
        let mut present = HashSet::new();
        for worker in &workers {
            present.insert(worker.id.clone());
            if worker.health_status != HealthStatus::Unavailable {
                unavailable_since.remove(&worker.id);
                continue;
            }
            let since = *unavailable_since.entry(worker.id.clone()).or_insert(now);
            let Some(after) = policies.of(worker).and_then(cleanup_after) else {
                continue;
            };
            if now.duration_since(since) >= after {
                match app.store.delete::<Worker>(&worker.id).await {
                    Ok(_) => tracing::info!(
                        worker = %worker.id,
                        space = %worker.space_id,
                        "deleted worker {}: Unavailable for longer than its machine policy's {}",
                        worker.name,
                        format_timespan(after)
                    ),
                    Err(error) => tracing::error!(%error, "cannot delete an unavailable worker"),
                }
                app.dispatcher.wake();
            } else {
                next = next.min(since + after);
            }
        }
        unavailable_since.retain(|id, _| present.contains(id));

        tokio::select! {
            _ = tokio::time::sleep_until(next.max(now + Duration::from_secs(1))) => {}
            _ = app.health_wake.notified() => {
                // Each look reads every worker: while thousands register, look at most a few
                // times a second rather than once per registration.
                tokio::time::sleep_until(now + RESCAN_AT_MOST_EVERY).await;
            }
        }
    }
}

/// The settings of a `Health` task, read from its `Arguments` (Octopus's names).
pub struct HealthArguments {
    pub pool_id: Option<String>,
    pub machine_ids: Vec<String>,
    pub machine_timeout: Duration,
}

impl HealthArguments {
    pub fn parse(arguments: &Map<String, Value>) -> Result<HealthArguments, Vec<String>> {
        let mut errors = Vec::new();
        // Octopus spells it WorkerpoolId; a body's WorkerPoolId (any case) reads the same.
        let given = arguments
            .get("WorkerpoolId")
            .filter(|v| !v.is_null())
            .or_else(|| arguments.get("WorkerPoolId"));
        let pool_id = match given {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if id.trim().is_empty() => None,
            Some(Value::String(id)) => Some(id.trim().to_string()),
            Some(_) => {
                errors.push("Arguments.WorkerpoolId must be a worker pool id.".to_string());
                None
            }
        };
        let machine_ids = match arguments.get("MachineIds") {
            None | Some(Value::Null) => Vec::new(),
            Some(value @ (Value::Array(_) | Value::String(_))) => {
                crate::dispatch::string_list(value)
            }
            Some(_) => {
                errors.push("Arguments.MachineIds must be a list of worker ids.".to_string());
                Vec::new()
            }
        };
        let machine_timeout = match arguments.get("MachineTimeout") {
            None | Some(Value::Null) => CHECK_TIMEOUT,
            Some(Value::String(text)) => match parse_timespan(text) {
                Some(d) if !d.is_zero() => d,
                _ => {
                    errors.push(format!(
                        "Arguments.MachineTimeout must be a TimeSpan longer than zero, such as 00:00:30, got '{text}'."
                    ));
                    CHECK_TIMEOUT
                }
            },
            Some(_) => {
                errors.push("Arguments.MachineTimeout must be a TimeSpan string.".to_string());
                CHECK_TIMEOUT
            }
        };
        if errors.is_empty() {
            Ok(HealthArguments {
                pool_id,
                machine_ids,
                machine_timeout,
            })
        } else {
            Err(errors)
        }
    }
}

/// Runs a `Health` task: checks the chosen workers of its space (a pool's, named ones, or all), each
/// agent once and all at the same time, and logs each worker's result. It fails when a checked worker
/// is not Healthy, so a script can rely on its outcome.
pub async fn run_task(
    app: &App,
    task: &Task,
    cancel: &tokio_util::sync::CancellationToken,
) -> (TaskState, String) {
    let arguments = match HealthArguments::parse(&task.arguments) {
        Ok(arguments) => arguments,
        Err(errors) => return (TaskState::Failed, errors.join(" ")),
    };
    let log = |category, text: String| app.logs.append(&task.id, category, text);
    let workers: Vec<Worker> = match app.store.list(&task.space_id).await {
        Ok(workers) => workers,
        Err(error) => {
            return (
                TaskState::Failed,
                format!("Cannot read the workers: {error}"),
            );
        }
    };
    let chosen: Vec<Worker> = workers
        .into_iter()
        .filter(|w| {
            arguments
                .pool_id
                .as_ref()
                .is_none_or(|pool| w.worker_pool_ids.contains(pool))
                && (arguments.machine_ids.is_empty() || arguments.machine_ids.contains(&w.id))
        })
        .collect();
    let (disabled, chosen): (Vec<Worker>, Vec<Worker>) =
        chosen.into_iter().partition(|w| w.is_disabled);
    for worker in &disabled {
        log(
            LogCategory::Info,
            format!("{} is disabled; it is not checked.", worker.name),
        );
    }
    if chosen.is_empty() {
        log(
            LogCategory::Info,
            "There are no enabled workers to check.".into(),
        );
        return (TaskState::Success, String::new());
    }
    log(
        LogCategory::Info,
        format!(
            "Checking the health of {} worker{}",
            chosen.len(),
            if chosen.len() == 1 { "" } else { "s" }
        ),
    );

    // One check per agent; workers without one are checked (and answered) on their own.
    let mut groups: Vec<(Option<String>, Vec<usize>)> = Vec::new();
    let mut group_of_agent: HashMap<&str, usize> = HashMap::new();
    for (index, worker) in chosen.iter().enumerate() {
        match worker
            .thumbprint
            .as_deref()
            .and_then(|t| group_of_agent.get(t))
        {
            Some(&group) => groups[group].1.push(index),
            None => {
                if let Some(t) = worker.thumbprint.as_deref() {
                    group_of_agent.insert(t, groups.len());
                }
                groups.push((worker.thumbprint.clone(), vec![index]));
            }
        }
    }
    let mut checks = tokio::task::JoinSet::new();
    for (group, (_, members)) in groups.iter().enumerate() {
        let (app, worker) = (app.clone(), chosen[members[0]].clone());
        let timeout = arguments.machine_timeout;
        checks.spawn(async move {
            let result = match tokio::time::timeout(timeout, check_worker(&app, &worker)).await {
                Ok(result) => result,
                Err(_) => {
                    let summary = format!(
                        "The agent did not answer in the task's MachineTimeout of {}.",
                        format_timespan(timeout)
                    );
                    if let Some(t) = &worker.thumbprint {
                        set_health(&app, t, HealthStatus::Unavailable, &summary, None).await;
                    }
                    (HealthStatus::Unavailable, summary)
                }
            };
            (group, result)
        });
    }
    let mut results: Vec<Option<Checked>> = vec![None; groups.len()];
    loop {
        tokio::select! {
            next = checks.join_next() => match next {
                Some(Ok((group, result))) => results[group] = Some(result),
                Some(Err(error)) => tracing::error!(%error, "a health check failed to run"),
                None => break,
            },
            _ = cancel.cancelled() => {
                checks.abort_all();
                return (TaskState::Canceled, "The task was canceled.".into());
            }
        }
    }
    let mut not_healthy = Vec::new();
    for ((_, members), result) in groups.iter().zip(results) {
        let (status, summary) = result.unwrap_or((
            HealthStatus::Unknown,
            "The check did not finish.".to_string(),
        ));
        for &index in members {
            let name = &chosen[index].name;
            let category = if status == HealthStatus::Healthy {
                LogCategory::Info
            } else {
                LogCategory::Error
            };
            log(category, format!("{name}: {} — {summary}", status.as_str()));
            if status != HealthStatus::Healthy {
                not_healthy.push(format!("{name} ({})", status.as_str()));
            }
        }
    }
    if not_healthy.is_empty() {
        (TaskState::Success, String::new())
    } else {
        (
            TaskState::Failed,
            format!(
                "{} of {} workers are not healthy: {}.",
                not_healthy.len(),
                chosen.len(),
                not_healthy.join(", ")
            ),
        )
    }
}
