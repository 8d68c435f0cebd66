//! Health: an agent's check over its link, the periodic checks each worker's machine policy asks for,
//! on-demand `Health` tasks, and the policy's cleanup of workers that stay Unavailable.
//!
//! Architecture invariant: a check is made once per physical agent (certificate thumbprint) and its
//! result recorded on every worker that names that agent, however many spaces or pools they are in.
//! A check never takes a task-cap slot and never waits behind script tasks.

use crate::comms::LinkEvent;
use crate::kinds::{self, Health, WorkerKind};
use crate::state::App;
use muster_core::resources::{MachinePolicy, Task, Worker};
use muster_core::tasks::TaskKind;
use muster_core::time::{format_timespan, parse_timespan};
use muster_core::{HealthStatus, LogCategory, MachineStatus, TaskState};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

/// How long one machine has to answer a check, unless a task's `MachineTimeout` says otherwise.
const CHECK_TIMEOUT: Duration = muster_core::tasks::DEFAULT_MACHINE_TIMEOUT;

/// How soon after one look at every worker a change may cause the next.
const RESCAN_AT_MOST_EVERY: Duration = Duration::from_millis(250);

/// A check's result: the status and the reason, as `StatusSummary` shows it.
pub type Checked = (HealthStatus, String);

/// Checks a machine now, through its kind, and records the result on every worker that names it.
async fn check_kind(app: &App, kind: &dyn WorkerKind, timeout: Duration) -> Checked {
    let health = kind.check_health(app, timeout).await;
    record(app, kind, &health).await;
    (health.status, health.summary)
}

/// Checks an agent (by thumbprint) now and records the result: the dispatcher does it when the
/// agent links to another node, so that a failure it recorded before it knew of that link does
/// not stand until the next periodic check.
pub async fn check_agent(app: &App, thumbprint: &str) {
    let workers = match app.store.find_by_ext::<Worker>(thumbprint).await {
        Ok(workers) => workers,
        Err(error) => {
            tracing::warn!(%error, "cannot read an agent's workers to check it");
            return;
        }
    };
    if let Some(worker) = workers.first() {
        let kind = kinds::of(Some(worker));
        check_kind(app, kind.as_ref(), CHECK_TIMEOUT).await;
    }
}

/// Records a check's result on every worker of its machine, under the machine's health lock (so
/// a stale failure cannot land after the check of a connection that has just opened).
async fn record(app: &App, kind: &dyn WorkerKind, health: &Health) {
    let key = kind.machine_key();
    let lock = app.comms.health_lock(&key);
    let _held = lock.lock().await;
    if health.unless_reachable && kind.unreachable(app).is_none() {
        return;
    }
    write_health(app, &key, health).await;
}

/// Follows the agents' links opening and closing: an opened link is checked at once; a closed
/// one marks its agent's workers Unavailable and wakes the loop, which then tries a listening agent
/// every few seconds.
pub async fn watch_links(app: App, mut events: tokio::sync::broadcast::Receiver<LinkEvent>) {
    loop {
        match events.recv().await {
            Ok(LinkEvent::Opened { thumbprint, link }) => {
                let app = app.clone();
                tokio::spawn(async move {
                    let health =
                        kinds::agent::check_link(&app, &thumbprint, &link, CHECK_TIMEOUT).await;
                    let lock = app.comms.health_lock(&thumbprint);
                    let _held = lock.lock().await;
                    write_health(&app, &thumbprint, &health).await;
                });
            }
            Ok(LinkEvent::Closed { thumbprint }) => {
                let lock = app.comms.health_lock(&thumbprint);
                let _held = lock.lock().await;
                // Not if the agent linked to another node meanwhile.
                if !app.comms.reachable(&thumbprint) {
                    let health = Health {
                        status: HealthStatus::Unavailable,
                        summary: kinds::agent::CONNECTION_CLOSED.to_string(),
                        facts: None,
                        unless_reachable: true,
                    };
                    write_health(&app, &thumbprint, &health).await;
                }
                drop(_held);
                app.signals.health.notify_one();
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                // Missed events: look at every worker again.
                tracing::warn!(missed, "the health watcher fell behind the agents' links");
                app.signals.health.notify_one();
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn write_health(app: &App, machine_key: &str, health: &Health) {
    let workers = match app.store.find_by_ext::<Worker>(machine_key).await {
        Ok(workers) => workers,
        Err(error) => {
            tracing::error!(%error, "cannot read workers to record their health");
            return;
        }
    };
    for mut worker in workers {
        worker.health_status = health.status;
        worker.status = if health.status == HealthStatus::Healthy {
            MachineStatus::Online
        } else {
            MachineStatus::Offline
        };
        worker.status_summary = health.summary.clone();
        if let Some(facts) = &health.facts {
            worker.operating_system = Some(facts.operating_system.clone());
            worker.architecture = Some(facts.architecture.clone());
            worker.shell_name = Some(facts.shell_name.clone());
            worker.shell_version = None;
        }
        // A dynamic worker's block is its scaler's (uses, state), written under a lock that only
        // holds within a node: read again at the last moment so a check on another node does not
        // write an older one back.
        if worker.dynamic.is_some()
            && let Ok(Some(fresh)) = app.store.get::<Worker>(&worker.id).await
        {
            worker.dynamic = fresh.dynamic;
        }
        // Only an update: a worker deleted (or a share revoked) since the read stays deleted.
        if let Err(error) = app.store.update(&worker).await {
            tracing::error!(%error, "cannot record a worker's health");
        }
    }
    app.signals.dispatch.notify_one();
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

        // The shortest interval among the workers that name each machine.
        let mut machines: HashMap<String, (Duration, std::sync::Arc<dyn WorkerKind>)> =
            HashMap::new();
        for worker in workers.iter().filter(|w| !w.is_disabled) {
            if worker.machine_key().is_none() {
                continue;
            }
            // A dynamic worker whose agent has not linked yet is its provider's to bring up (the
            // scaler times it out): checked now, it would read Unavailable for no fault.
            if worker
                .dynamic
                .as_ref()
                .is_some_and(|d| d.ready_on.is_none())
            {
                continue;
            }
            let kind = kinds::of(Some(worker));
            let policy = policies.of(worker).map_or(
                Duration::from_secs(3600),
                MachinePolicy::health_check_interval,
            );
            let interval = kind.check_interval(&app, policy);
            let entry = machines
                .entry(kind.machine_key())
                .or_insert((interval, kind));
            entry.0 = entry.0.min(interval);
        }
        for (key, (interval, kind)) in &machines {
            let due = last_check.get(key).map_or(now, |at| *at + *interval);
            if due <= now {
                last_check.insert(key.clone(), now);
                let (app, kind) = (app.clone(), kind.clone());
                tokio::spawn(async move { check_kind(&app, kind.as_ref(), CHECK_TIMEOUT).await });
                next = next.min(now + *interval);
            } else {
                next = next.min(due);
            }
        }
        last_check.retain(|key, _| machines.contains_key(key));

        // Cleanup, as Octopus does it: during health checks, for workers Unavailable long enough.
        let mut present = HashSet::new();
        for worker in &workers {
            present.insert(worker.id.clone());
            // A dynamic worker is its pool's to destroy (a record deleted here would orphan its
            // instance until the next reconciliation).
            if worker.health_status != HealthStatus::Unavailable || worker.dynamic.is_some() {
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
                app.signals.dispatch.notify_one();
            } else {
                next = next.min(since + after);
            }
        }
        unavailable_since.retain(|id, _| present.contains(id));

        tokio::select! {
            _ = tokio::time::sleep_until(next.max(now + Duration::from_secs(1))) => {}
            _ = app.signals.health.notified() => {
                // Each look reads every worker: while thousands register, look at most a few
                // times a second rather than once per registration.
                tokio::time::sleep_until(now + RESCAN_AT_MOST_EVERY).await;
            }
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
    let arguments = match TaskKind::of(task) {
        Ok(TaskKind::Health(arguments)) => arguments,
        Ok(_) => return (TaskState::Failed, "This task is not a health check.".into()),
        Err(error) => return (TaskState::Failed, error),
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

    // One check per machine, however many of the chosen workers name it.
    let mut groups: Vec<(std::sync::Arc<dyn WorkerKind>, Vec<usize>)> = Vec::new();
    let mut group_of_machine: HashMap<String, usize> = HashMap::new();
    for (index, worker) in chosen.iter().enumerate() {
        let kind = kinds::of(Some(worker));
        match group_of_machine.get(&kind.machine_key()) {
            Some(&group) => groups[group].1.push(index),
            None => {
                group_of_machine.insert(kind.machine_key(), groups.len());
                groups.push((kind, vec![index]));
            }
        }
    }
    let mut checks = tokio::task::JoinSet::new();
    for (group, (kind, _)) in groups.iter().enumerate() {
        let (app, kind) = (app.clone(), kind.clone());
        let timeout = arguments.machine_timeout;
        checks.spawn(async move {
            let checked = tokio::time::timeout(timeout, check_kind(&app, kind.as_ref(), timeout));
            let result = match checked.await {
                Ok(result) => result,
                Err(_) => {
                    let health = Health {
                        status: HealthStatus::Unavailable,
                        summary: format!(
                            "The worker did not answer in the task's MachineTimeout of {}.",
                            format_timespan(timeout)
                        ),
                        facts: None,
                        unless_reachable: false,
                    };
                    record(&app, kind.as_ref(), &health).await;
                    (health.status, health.summary)
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
