//! The durable queue's dispatcher and the built-in worker.
//!
//! Architecture invariant: dispatch is woken by events (a task created or canceled, a task finished,
//! the server started); no poll interval decides how soon a task starts. The only timer is the
//! earliest `QueueTime` of a scheduled task.
//!
//! A task is claimed by a conditional update from Queued to Executing, so it runs at most once; its
//! final state is written only after its last log line is committed, so a follower that sees the
//! final state has the whole log.

use crate::state::App;
use muster_core::resources::{Space, Task, Worker, WorkerPool};
use muster_core::time::{Timestamp, format_date, now};
use muster_core::{LogCategory, ScriptSyntax, ScriptTarget, TaskState, WorkerPoolType};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

pub const BUILTIN_WORKER_NAME: &str = "Built-in worker";

#[derive(Default)]
pub struct Dispatcher {
    wake: Notify,
    running: Mutex<HashMap<String, Running>>,
    /// Signalled each time a running task ends, for shutdown to wait on.
    ended: Notify,
    /// The space that started a task most recently: it goes last in the next pass.
    last_space: Mutex<Option<String>>,
}

#[derive(Clone)]
struct Running {
    cancel: Arc<Notify>,
    shutting_down: Arc<AtomicBool>,
    /// The external worker it runs on (None: the built-in worker, or a health check).
    worker_id: Option<String>,
    /// That worker's agent (certificate thumbprint): one agent may serve workers of several spaces.
    agent: Option<String>,
    /// Whether it takes a task-cap slot (health checks do not).
    capped: bool,
}

impl Running {
    fn new(worker: Option<&Worker>) -> Running {
        Running {
            cancel: Arc::new(Notify::new()),
            shutting_down: Arc::new(AtomicBool::new(false)),
            worker_id: worker.map(|w| w.id.clone()),
            agent: worker.and_then(|w| w.thumbprint.clone()),
            capped: true,
        }
    }
}

impl Dispatcher {
    /// Asks for a dispatch pass. Wakes given while a pass runs are kept, not lost.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// How many running tasks take a task-cap slot.
    fn running_count(&self) -> usize {
        self.running
            .lock()
            .expect("dispatcher lock")
            .values()
            .filter(|r| r.capped)
            .count()
    }

    /// How many tasks run on an agent now, from every space it serves.
    fn load(&self, agent: &str) -> usize {
        self.running
            .lock()
            .expect("dispatcher lock")
            .values()
            .filter(|r| r.agent.as_deref() == Some(agent))
            .count()
    }

    /// How many tasks run through one worker record: one space's tasks on a shared agent.
    fn share_load(&self, worker_id: &str) -> usize {
        self.running
            .lock()
            .expect("dispatcher lock")
            .values()
            .filter(|r| r.worker_id.as_deref() == Some(worker_id))
            .count()
    }

    fn running(&self, task_id: &str) -> Option<Running> {
        self.running
            .lock()
            .expect("dispatcher lock")
            .get(task_id)
            .cloned()
    }
}

/// What one dispatch pass reads of a space, once.
struct SpaceView {
    space: Option<Space>,
    pools: Vec<WorkerPool>,
    workers: Vec<Worker>,
}

/// Who runs a task that starts.
enum Runner {
    Builtin,
    Agent(Box<Worker>),
    /// A health check: it runs on the server, outside the task cap.
    Health,
}

/// What a queued task needs to start.
enum Decision {
    Builtin,
    Agent(Box<Worker>),
    Wait(String),
    Fail(String),
}

/// The settings of an AdHocScript task, read from its `Arguments`.
pub struct ScriptArguments {
    pub body: String,
    pub syntax: ScriptSyntax,
    pub target: ScriptTarget,
    pub pool_ids: Vec<String>,
    pub machine_ids: Vec<String>,
    pub timeout: Option<Duration>,
}

pub(crate) fn string_list(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_str())
            .map(str::to_string)
            .collect(),
        Value::String(text) => text
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

impl ScriptArguments {
    /// Reads and checks the arguments; every problem is returned for a 400.
    pub fn parse(
        arguments: &serde_json::Map<String, Value>,
    ) -> Result<ScriptArguments, Vec<String>> {
        let mut errors = Vec::new();
        let body = match arguments.get("ScriptBody") {
            Some(Value::String(body)) if !body.trim().is_empty() => body.clone(),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                errors.push("Arguments.ScriptBody is required: the script to run.".to_string());
                String::new()
            }
            Some(_) => {
                errors.push("Arguments.ScriptBody must be a string.".to_string());
                String::new()
            }
        };
        let syntax = match arguments.get("Syntax") {
            None | Some(Value::Null) => ScriptSyntax::Bash,
            Some(Value::String(text)) => ScriptSyntax::parse(text).unwrap_or_else(|| {
                errors.push(format!(
                    "Arguments.Syntax must be Bash, Python or PowerShell, got '{text}'."
                ));
                ScriptSyntax::Bash
            }),
            Some(_) => {
                errors.push("Arguments.Syntax must be a string.".to_string());
                ScriptSyntax::Bash
            }
        };
        let pool_ids = arguments
            .get("WorkerPoolIds")
            .map(string_list)
            .unwrap_or_default();
        let machine_ids = arguments
            .get("MachineIds")
            .map(string_list)
            .unwrap_or_default();
        let target = match arguments.get("TargetType") {
            None | Some(Value::Null) => {
                if !machine_ids.is_empty() {
                    ScriptTarget::Workers
                } else {
                    ScriptTarget::WorkerPools
                }
            }
            Some(Value::String(text)) => ScriptTarget::parse(text).unwrap_or_else(|| {
                errors.push(format!(
                    "Arguments.TargetType must be OctopusServer, WorkerPools or Workers, got '{text}'."
                ));
                ScriptTarget::OctopusServer
            }),
            Some(_) => {
                errors.push("Arguments.TargetType must be a string.".to_string());
                ScriptTarget::OctopusServer
            }
        };
        if target == ScriptTarget::Workers && machine_ids.is_empty() {
            errors.push(
                "Arguments.MachineIds must name at least one worker when TargetType is Workers."
                    .into(),
            );
        }
        let timeout = match arguments.get("Timeout") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(secs) if (1..=i32::MAX as u64).contains(&secs) => {
                    Some(Duration::from_secs(secs))
                }
                _ => {
                    errors.push(format!(
                        "Arguments.Timeout must be a whole number of seconds from 1 to {}, or a TimeSpan such as 00:10:00; got {n}.",
                        i32::MAX
                    ));
                    None
                }
            },
            Some(Value::String(text)) => match muster_core::time::parse_timespan(text) {
                Some(d) if !d.is_zero() => Some(d),
                _ => {
                    errors.push(format!(
                        "Arguments.Timeout must be a TimeSpan such as 00:10:00, got '{text}'."
                    ));
                    None
                }
            },
            Some(_) => {
                errors.push("Arguments.Timeout must be a TimeSpan such as 00:10:00.".into());
                None
            }
        };
        if errors.is_empty() {
            Ok(ScriptArguments {
                body,
                syntax,
                target,
                pool_ids,
                machine_ids,
                timeout,
            })
        } else {
            Err(errors)
        }
    }
}

/// Tasks left Executing by a server that stopped: a script on an agent kept running, so the server
/// re-attaches to it and reads on from the last line it stored. A script on the built-in worker died
/// with the server, so its task ends Failed, with a line saying why. No task stays Executing forever:
/// a re-attached agent that does not come back fails its task after the policy's grace.
pub async fn recover(app: &App) -> anyhow::Result<()> {
    for mut task in app
        .store
        .tasks_in_states(&[TaskState::Executing, TaskState::Cancelling])
        .await?
    {
        if let Some(worker_id) = task.worker_id.clone()
            && let Some(worker) = app.store.get::<Worker>(&worker_id).await?
        {
            reattach(app, task, worker).await?;
            continue;
        }
        let from = task.state;
        let worker = task
            .worker_name
            .clone()
            .unwrap_or_else(|| BUILTIN_WORKER_NAME.to_string());
        let message = if from == TaskState::Cancelling {
            task.state = TaskState::Canceled;
            "The task was being canceled when the Muster server stopped.".to_string()
        } else {
            task.state = TaskState::Failed;
            if task.name == crate::health::TASK_NAME {
                "The Muster server stopped during this health check; run it again.".to_string()
            } else if task.worker_id.is_some() {
                format!(
                    "The Muster server stopped while this task was executing on {worker}, and that worker has since been deleted; the script's outcome is unknown."
                )
            } else {
                format!(
                    "The Muster server stopped while this task was executing on {worker}; the script stopped with it."
                )
            }
        };
        let message = message.as_str();
        app.logs
            .open(&task.id, app.store.last_log_seq(&task.id).await?);
        app.logs.append(&task.id, LogCategory::Error, message);
        app.logs.flush().await;
        finish(&mut task, message);
        app.store.transition_task(&task, from).await?;
        app.logs.close(&task.id);
    }
    Ok(())
}

/// Follows a script an agent kept running while the server was down, from the agent's line after the
/// last one stored. A task that was being canceled is canceled on the agent.
async fn reattach(app: &App, task: Task, worker: Worker) -> anyhow::Result<()> {
    let after = app.store.last_source_seq(&task.id).await?;
    let running = Running::new(Some(&worker));
    app.dispatcher
        .running
        .lock()
        .expect("dispatcher lock")
        .insert(task.id.clone(), running.clone());
    app.logs
        .open(&task.id, app.store.last_log_seq(&task.id).await?);
    app.logs.append(
        &task.id,
        LogCategory::Verbose,
        format!(
            "The Muster server restarted; re-attaching to the script on worker {} after its line {after}",
            worker.name
        ),
    );
    if task.state == TaskState::Cancelling {
        // notify_one keeps the signal until the driver first waits for it.
        running.cancel.notify_one();
    }
    tokio::spawn(run_agent(app.clone(), task, worker, running, Some(after)));
    Ok(())
}

fn finish(task: &mut Task, error: &str) {
    let at = now();
    task.completed_time = Some(at);
    task.last_updated_time = at;
    task.queue_reason = None;
    if !error.is_empty() {
        task.error_message = Some(error.to_string());
    }
}

pub async fn run(app: App) {
    loop {
        let next_timer = match pass(&app).await {
            Ok(next) => next,
            Err(error) => {
                tracing::error!(%error, "dispatch pass failed; retrying");
                Some(now() + chrono::Duration::seconds(1))
            }
        };
        let sleep = match next_timer {
            Some(at) => (at - now()).to_std().unwrap_or(Duration::ZERO),
            None => Duration::from_secs(24 * 3600),
        };
        tokio::select! {
            _ = app.dispatcher.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// One look at the queue, oldest first: start what can start, and write down why the rest waits.
/// Returns when the next scheduled task becomes due.
async fn pass(app: &App) -> anyhow::Result<Option<Timestamp>> {
    let queued = app.store.tasks_in_states(&[TaskState::Queued]).await?;
    let last_space = app
        .dispatcher
        .last_space
        .lock()
        .expect("dispatcher lock")
        .clone();
    let queued = fair_order(queued, last_space.as_deref());
    let mut next_timer: Option<Timestamp> = None;
    let mut spaces: HashMap<String, SpaceView> = HashMap::new();
    for mut task in queued {
        let at = now();
        if task.queue_time_expiry.is_some_and(|expiry| expiry <= at) {
            task.state = TaskState::Canceled;
            finish(
                &mut task,
                "The task did not start before its QueueTimeExpiry.",
            );
            app.store.transition_task(&task, TaskState::Queued).await?;
            app.logs.changed(&task.id);
            continue;
        }
        if task.queue_time > at {
            next_timer = Some(next_timer.map_or(task.queue_time, |t| t.min(task.queue_time)));
            let reason = format!("Scheduled to start at {}.", format_date(&task.queue_time));
            set_reason(app, &mut task, reason).await?;
            continue;
        }
        if !spaces.contains_key(&task.space_id) {
            let space = app.store.get::<Space>(&task.space_id).await?;
            let pools = app.store.list::<WorkerPool>(&task.space_id).await?;
            let workers = app.store.list::<Worker>(&task.space_id).await?;
            spaces.insert(
                task.space_id.clone(),
                SpaceView {
                    space,
                    pools,
                    workers,
                },
            );
        }
        let SpaceView {
            space,
            pools,
            workers,
        } = &spaces[&task.space_id];
        if let Some(space) = space.as_ref().filter(|s| s.task_queue_stopped) {
            let reason = format!(
                "The task queue of space '{}' is stopped (TaskQueueStopped).",
                space.name
            );
            set_reason(app, &mut task, reason).await?;
            continue;
        }
        if task.name == crate::health::TASK_NAME {
            start(app, task, Runner::Health).await?;
            continue;
        }
        let decision = decide(app, &task, pools, workers);
        match &decision {
            Decision::Fail(message) => {
                task.state = TaskState::Failed;
                finish(&mut task, message);
                app.store.transition_task(&task, TaskState::Queued).await?;
                app.logs.changed(&task.id);
            }
            Decision::Wait(reason) => set_reason(app, &mut task, reason.clone()).await?,
            Decision::Builtin if !app.config.builtin_worker => {
                let reason = "It needs the built-in worker, which is disabled on this server (--no-builtin-worker); \
                              add a worker to the target pool or start the server without that flag.";
                set_reason(app, &mut task, reason.to_string()).await?;
            }
            Decision::Builtin | Decision::Agent(_) => {
                let running = app.dispatcher.running_count();
                if running >= app.config.task_cap {
                    let reason = format!(
                        "The task cap of {} is reached on node {}: {running} tasks are executing.",
                        app.config.task_cap, app.config.node_name
                    );
                    set_reason(app, &mut task, reason).await?;
                } else {
                    match decision {
                        Decision::Agent(worker) => start(app, task, Runner::Agent(worker)).await?,
                        _ => start(app, task, Runner::Builtin).await?,
                    }
                }
            }
        }
    }
    Ok(next_timer)
}

/// Oldest first within each space, the spaces taking turns, and the space that started a task most
/// recently last: a space that floods the queue cannot starve the others of the task cap or of the
/// workers they share.
fn fair_order(queued: Vec<Task>, last_space: Option<&str>) -> Vec<Task> {
    let mut queues: HashMap<String, VecDeque<Task>> = HashMap::new();
    for task in queued {
        queues
            .entry(task.space_id.clone())
            .or_default()
            .push_back(task);
    }
    let mut spaces: Vec<String> = queues.keys().cloned().collect();
    spaces.sort_by_key(|s| muster_core::parse_id(muster_core::IdKind::Space, s).unwrap_or(0));
    if let Some(last) = last_space
        && let Some(at) = spaces.iter().position(|s| s == last)
    {
        spaces.rotate_left(at + 1);
    }
    let mut ordered = Vec::new();
    loop {
        let before = ordered.len();
        for space in &spaces {
            if let Some(task) = queues.get_mut(space).and_then(VecDeque::pop_front) {
                ordered.push(task);
            }
        }
        if ordered.len() == before {
            return ordered;
        }
    }
}

async fn set_reason(app: &App, task: &mut Task, reason: String) -> anyhow::Result<()> {
    if task.queue_reason.as_deref() != Some(reason.as_str()) {
        task.queue_reason = Some(reason);
        app.store.transition_task(task, TaskState::Queued).await?;
        app.logs.changed(&task.id);
    }
    Ok(())
}

/// Why a worker cannot take work now, or None when it can.
fn unavailable(app: &App, worker: &Worker) -> Option<String> {
    if worker.is_disabled {
        return Some(format!("{} is disabled", worker.name));
    }
    if worker.health_status == muster_core::HealthStatus::Unavailable {
        return Some(format!(
            "{} is Unavailable ({})",
            worker.name,
            worker.status_summary.trim_end_matches('.')
        ));
    }
    if let Some(limit) = worker.share_task_limit
        && app.dispatcher.share_load(&worker.id) >= limit.max(0) as usize
    {
        return Some(format!(
            "{} is shared into this space for at most {limit} task(s) at once, and this space's share limit is reached",
            worker.name
        ));
    }
    match &worker.thumbprint {
        Some(t) if app.comms.link(t).is_some() => None,
        _ => Some(format!("{} is not connected", worker.name)),
    }
}

/// Among the workers that can take work, the one with the fewest running tasks (ties: lowest id).
fn choose<'a>(
    app: &App,
    candidates: impl Iterator<Item = &'a Worker>,
) -> Result<Worker, Vec<String>> {
    let mut reasons = Vec::new();
    let mut best: Option<(usize, i64, &Worker)> = None;
    for worker in candidates {
        match unavailable(app, worker) {
            Some(reason) => reasons.push(reason),
            None => {
                let key = (
                    app.dispatcher
                        .load(worker.thumbprint.as_deref().unwrap_or_default()),
                    muster_core::parse_id(muster_core::IdKind::Worker, &worker.id).unwrap_or(0),
                );
                if best.is_none_or(|(load, id, _)| key < (load, id)) {
                    best = Some((key.0, key.1, worker));
                }
            }
        }
    }
    best.map(|(_, _, w)| w.clone()).ok_or(reasons)
}

fn decide(app: &App, task: &Task, pools: &[WorkerPool], workers: &[Worker]) -> Decision {
    if task.name != "AdHocScript" {
        return Decision::Fail(format!("Muster does not run tasks named '{}'.", task.name));
    }
    let arguments = match ScriptArguments::parse(&task.arguments) {
        Ok(arguments) => arguments,
        Err(errors) => return Decision::Fail(errors.join(" ")),
    };
    match arguments.target {
        ScriptTarget::OctopusServer => Decision::Builtin,
        ScriptTarget::WorkerPools => {
            let wanted: Vec<&WorkerPool> = if arguments.pool_ids.is_empty() {
                pools.iter().filter(|p| p.is_default).collect()
            } else {
                let found: Vec<&WorkerPool> = pools
                    .iter()
                    .filter(|p| arguments.pool_ids.contains(&p.id))
                    .collect();
                if found.len() < arguments.pool_ids.len() {
                    return Decision::Fail(
                        "A worker pool this task targets no longer exists.".into(),
                    );
                }
                found
            };
            let mut reasons = Vec::new();
            for pool in wanted {
                let members = workers
                    .iter()
                    .filter(|w| w.worker_pool_ids.contains(&pool.id))
                    .count();
                if pool.worker_pool_type == WorkerPoolType::DynamicWorkerPool {
                    reasons.push(format!(
                        "Pool '{}' is dynamic, and this server does not provision dynamic workers yet.",
                        pool.name
                    ));
                } else if members == 0 {
                    // The docs' rule: while a pool has no workers, the built-in worker runs its steps.
                    return Decision::Builtin;
                } else {
                    match choose(
                        app,
                        workers
                            .iter()
                            .filter(|w| w.worker_pool_ids.contains(&pool.id)),
                    ) {
                        Ok(worker) => return Decision::Agent(Box::new(worker)),
                        Err(why) => reasons.push(format!(
                            "No worker of pool '{}' can take it now: {}.",
                            pool.name,
                            why.join("; ")
                        )),
                    }
                }
            }
            if reasons.is_empty() {
                Decision::Fail("The task targets no worker pool.".into())
            } else {
                Decision::Wait(reasons.join(" "))
            }
        }
        ScriptTarget::Workers => {
            let named: Vec<&Worker> = workers
                .iter()
                .filter(|w| arguments.machine_ids.contains(&w.id))
                .collect();
            if named.len() < arguments.machine_ids.len() {
                return Decision::Fail("A worker this task targets no longer exists.".into());
            }
            match choose(app, named.into_iter()) {
                Ok(worker) => Decision::Agent(Box::new(worker)),
                Err(why) => {
                    Decision::Wait(format!("No named worker can take it: {}.", why.join("; ")))
                }
            }
        }
    }
}

/// Claims a task for its runner, and starts it.
async fn start(app: &App, mut task: Task, runner: Runner) -> anyhow::Result<()> {
    let at = now();
    task.state = TaskState::Executing;
    task.start_time = Some(at);
    task.last_updated_time = at;
    task.server_node = Some(app.config.node_name.clone());
    task.worker_name = match &runner {
        Runner::Builtin => Some(BUILTIN_WORKER_NAME.to_string()),
        Runner::Agent(worker) => Some(worker.name.clone()),
        Runner::Health => None,
    };
    task.queue_reason = None;
    task.worker_id = match &runner {
        Runner::Agent(worker) => Some(worker.id.clone()),
        _ => None,
    };
    let mut running = Running::new(match &runner {
        Runner::Agent(worker) => Some(worker),
        _ => None,
    });
    running.capped = !matches!(runner, Runner::Health);
    // Counted as running before the claim, so a second pass cannot overshoot the cap.
    app.dispatcher
        .running
        .lock()
        .expect("dispatcher lock")
        .insert(task.id.clone(), running.clone());
    match app.store.transition_task(&task, TaskState::Queued).await {
        Ok(true) => {
            *app.dispatcher.last_space.lock().expect("dispatcher lock") =
                Some(task.space_id.clone());
            let last_seq = app.store.last_log_seq(&task.id).await.unwrap_or(0);
            app.logs.open(&task.id, last_seq);
            app.logs.changed(&task.id);
            match runner {
                Runner::Agent(worker) => {
                    tokio::spawn(run_agent(app.clone(), task, *worker, running, None))
                }
                Runner::Builtin => tokio::spawn(run_builtin(app.clone(), task, running)),
                Runner::Health => tokio::spawn(run_health(app.clone(), task, running)),
            };
            Ok(())
        }
        other => {
            app.dispatcher
                .running
                .lock()
                .expect("dispatcher lock")
                .remove(&task.id);
            other.map(|_| ()).map_err(Into::into)
        }
    }
}

async fn run_builtin(app: App, mut task: Task, running: Running) {
    let id = task.id.clone();
    app.logs.append(
        &id,
        LogCategory::Verbose,
        format!(
            "Running on the {BUILTIN_WORKER_NAME} of node {}",
            app.config.node_name
        ),
    );
    let (final_state, message) = match ScriptArguments::parse(&task.arguments) {
        Err(errors) => (TaskState::Failed, errors.join(" ")),
        Ok(arguments) => {
            let script = muster_exec::Script {
                syntax: match arguments.syntax {
                    ScriptSyntax::Bash => muster_exec::Syntax::Bash,
                    ScriptSyntax::Python => muster_exec::Syntax::Python,
                    ScriptSyntax::PowerShell => muster_exec::Syntax::PowerShell,
                },
                body: arguments.body,
                env: vec![
                    ("MUSTER_TASK_ID".into(), id.clone()),
                    ("MUSTER_SPACE_ID".into(), task.space_id.clone()),
                ],
                timeout: arguments.timeout,
                work_root: app.config.work_dir.clone(),
            };
            let (lines_tx, mut lines_rx) = mpsc::channel::<muster_exec::Line>(1024);
            let forward = {
                let app = app.clone();
                let id = id.clone();
                tokio::spawn(async move {
                    let mut stderr_seen = false;
                    while let Some(line) = lines_rx.recv().await {
                        let category = match line.stream {
                            muster_exec::Stream::Stdout => LogCategory::Info,
                            muster_exec::Stream::Stderr => {
                                stderr_seen = true;
                                LogCategory::Error
                            }
                        };
                        app.logs.append(&id, category, line.text);
                    }
                    stderr_seen
                })
            };
            let cancel = running.cancel.clone();
            let outcome =
                muster_exec::run(script, lines_tx, async move { cancel.notified().await }).await;
            task.has_warnings_or_errors |= forward.await.unwrap_or(false);
            match outcome {
                Ok(muster_exec::Outcome::Exited(0)) => (TaskState::Success, String::new()),
                Ok(muster_exec::Outcome::Exited(code)) => {
                    (TaskState::Failed, format!("The script exited with code {code}."))
                }
                Ok(muster_exec::Outcome::Signaled(signal)) => {
                    (TaskState::Failed, format!("The script was ended by signal {signal}."))
                }
                Ok(muster_exec::Outcome::Canceled) if running.shutting_down.load(Ordering::SeqCst) => (
                    TaskState::Failed,
                    "The Muster server shut down while this task was executing; the script was stopped.".into(),
                ),
                Ok(muster_exec::Outcome::Canceled) => (TaskState::Canceled, "The task was canceled.".into()),
                Ok(muster_exec::Outcome::TimedOut) => (
                    TaskState::TimedOut,
                    format!(
                        "The task timed out after {}.",
                        muster_core::time::format_timespan(arguments.timeout.unwrap_or_default())
                    ),
                ),
                Err(error) => (TaskState::Failed, error.to_string()),
            }
        }
    };
    conclude(&app, task, final_state, message).await;
}

async fn run_health(app: App, task: Task, running: Running) {
    let (state, message) = crate::health::run_task(&app, &task, &running.cancel).await;
    conclude(&app, task, state, message).await;
}

/// Ends a task: its last line, its log committed, then its final state, then the followers told.
async fn conclude(app: &App, mut task: Task, final_state: TaskState, message: String) {
    let id = task.id.clone();
    if final_state != TaskState::Success {
        app.logs.append(&id, LogCategory::Error, message.clone());
        task.has_warnings_or_errors = true;
    }
    app.logs.flush().await;
    task.state = final_state;
    finish(&mut task, &message);
    // The task may be Cancelling in the store by now; either way this is its end.
    let mut stored = false;
    for from in [TaskState::Executing, TaskState::Cancelling] {
        match app.store.transition_task(&task, from).await {
            Ok(true) => {
                stored = true;
                break;
            }
            Ok(false) => {}
            Err(error) => tracing::error!(%error, task = %id, "cannot store a task's final state"),
        }
    }
    if !stored {
        tracing::error!(task = %id, "a finished task was no longer Executing in the store");
    }
    app.logs.close(&id);
    app.dispatcher
        .running
        .lock()
        .expect("dispatcher lock")
        .remove(&id);
    app.dispatcher.ended.notify_waiters();
    app.dispatcher.wake();
}

/// How long a task waits for its agent to come back after the connection drops: the worker's machine
/// policy's `ConnectionConnectTimeout`, at most 60 seconds.
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

/// Runs a task on an agent, or (`resume` Some) follows the script it already runs from that line on.
async fn run_agent(app: App, task: Task, worker: Worker, running: Running, resume: Option<u64>) {
    let id = task.id.clone();
    if resume.is_none() {
        let uri = worker.uri.clone().unwrap_or_default();
        app.logs.append(
            &id,
            LogCategory::Verbose,
            format!("Running on worker {} ({uri})", worker.name),
        );
    }
    let mut stderr_seen = false;
    let (final_state, message) = match ScriptArguments::parse(&task.arguments) {
        Err(errors) => (TaskState::Failed, errors.join(" ")),
        Ok(arguments) => {
            let start = muster_proto::rpc::StartScript {
                ticket: id.clone(),
                syntax: arguments.syntax.as_str().to_string(),
                body: arguments.body,
                env: vec![
                    ("MUSTER_TASK_ID".into(), id.clone()),
                    ("MUSTER_SPACE_ID".into(), task.space_id.clone()),
                ],
                timeout_seconds: arguments.timeout.map(|t| t.as_secs().max(1)),
            };
            match drive_agent(&app, &worker, start, &running, &mut stderr_seen, resume).await {
                Some(end) => end,
                None => {
                    detach(&app, &id, &worker);
                    return;
                }
            }
        }
    };
    let mut task = task;
    task.has_warnings_or_errors |= stderr_seen;
    conclude(&app, task, final_state, message).await;
}

/// Leaves a script running on its agent while this server shuts down; the task stays Executing in
/// the store and the next start re-attaches to it.
fn detach(app: &App, task_id: &str, worker: &Worker) {
    app.logs.append(
        task_id,
        LogCategory::Verbose,
        format!(
            "The Muster server is shutting down; the script keeps running on worker {}, and the server re-attaches to it when it starts again",
            worker.name
        ),
    );
    app.dispatcher
        .running
        .lock()
        .expect("dispatcher lock")
        .remove(task_id);
    app.dispatcher.ended.notify_waiters();
}

/// Starts the script on the agent (or, `resume` Some, reads on after that line of a script it already
/// runs) and follows it to its end, over a dropped connection if the agent comes back within the grace
/// period. None: the server is shutting down and leaves the script running.
async fn drive_agent(
    app: &App,
    worker: &Worker,
    start: muster_proto::rpc::StartScript,
    running: &Running,
    stderr_seen: &mut bool,
    resume: Option<u64>,
) -> Option<(TaskState, String)> {
    use muster_proto::rpc::{self, Outcome, ScriptState, StatusReply, StatusRequest, Ticket};
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
        if running.shutting_down.load(Ordering::SeqCst) {
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
                tracing::warn!(task = %id, "cannot start the script on {}: {error:#}", worker.name);
                continue;
            }
            started = true;
        }
        let request = StatusRequest {
            ticket: id.clone(),
            after,
            wait_ms: 15_000,
        };
        let cancel = running.cancel.clone();
        let reply = tokio::select! {
            reply = link.call::<_, StatusReply>(rpc::PATH_STATUS, &request) => Some(reply),
            _ = cancel.notified(), if !cancel_sent => None,
        };
        let reply = match reply {
            None if running.shutting_down.load(Ordering::SeqCst) => return None,
            None => {
                cancel_sent = true;
                if let Err(error) = link.call::<_, Ticket>(rpc::PATH_CANCEL, &ticket).await {
                    tracing::warn!(task = %id, "cannot cancel the script on {}: {error:#}", worker.name);
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
        for line in &reply.lines {
            *stderr_seen |= line.error;
            let category = if line.error {
                LogCategory::Error
            } else {
                LogCategory::Info
            };
            app.logs
                .append_from_agent(&id, category, line.text.clone(), line.seq);
            after = line.seq;
        }
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
                let _ = link.call::<_, Ticket>(rpc::PATH_COMPLETE, &ticket).await;
                return Some(match (reply.outcome, reply.exit_code) {
                    (Some(Outcome::Exited), Some(0)) => (TaskState::Success, String::new()),
                    (Some(Outcome::Exited), Some(code)) => (TaskState::Failed, format!("The script exited with code {code}.")),
                    (Some(Outcome::Signaled), code) => {
                        (TaskState::Failed, format!("The script was ended by signal {}.", code.unwrap_or_default()))
                    }
                    (Some(Outcome::Canceled), _) if running.shutting_down.load(Ordering::SeqCst) => {
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

/// Cancels a task: a queued one at once, a running one by stopping its script.
pub async fn cancel(app: &App, task_id: &str) -> anyhow::Result<Option<Task>> {
    for _ in 0..3 {
        let Some(mut task) = app.store.get_task(task_id).await? else {
            return Ok(None);
        };
        match task.state {
            TaskState::Queued => {
                task.state = TaskState::Canceled;
                finish(&mut task, "The task was canceled before it started.");
                if app.store.transition_task(&task, TaskState::Queued).await? {
                    app.logs.changed(&task.id);
                    app.dispatcher.wake();
                    return Ok(Some(task));
                }
            }
            TaskState::Executing | TaskState::Cancelling => match app.dispatcher.running(task_id) {
                Some(running) => {
                    if task.state == TaskState::Executing {
                        task.state = TaskState::Cancelling;
                        task.last_updated_time = now();
                        app.store
                            .transition_task(&task, TaskState::Executing)
                            .await?;
                        app.logs.changed(&task.id);
                    }
                    running.cancel.notify_one();
                    return Ok(Some(task));
                }
                None => {
                    // Not running on this node: nothing can finish it, so it ends here.
                    let from = task.state;
                    task.state = TaskState::Canceled;
                    finish(&mut task, "The task was canceled.");
                    if app.store.transition_task(&task, from).await? {
                        app.logs.changed(&task.id);
                        return Ok(Some(task));
                    }
                }
            },
            _ => return Ok(Some(task)),
        }
    }
    Ok(app.store.get_task(task_id).await?)
}

/// Stops every running script and waits (bounded) for their tasks to be stored as ended.
pub async fn shutdown(app: &App, limit: Duration) {
    let running: Vec<Running> = app
        .dispatcher
        .running
        .lock()
        .expect("dispatcher lock")
        .values()
        .cloned()
        .collect();
    for r in &running {
        r.shutting_down.store(true, Ordering::SeqCst);
        r.cancel.notify_one();
    }
    let wait = async {
        while app.dispatcher.running_count() > 0 {
            let ended = app.dispatcher.ended.notified();
            if app.dispatcher.running_count() == 0 {
                break;
            }
            ended.await;
        }
    };
    let _ = tokio::time::timeout(limit, wait).await;
}
