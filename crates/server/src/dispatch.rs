//! The durable queue's dispatcher and the built-in worker.
//!
//! Architecture invariant: dispatch is woken by events (a task created or canceled, a task finished,
//! a worker changed, the server started); no poll interval decides how soon a task starts. The only
//! timer is the earliest `QueueTime` of a scheduled task.
//!
//! A pass reads what each queued task needs (`plan`), and `muster_scheduler::Ledger` decides: start
//! with these worker leases, or wait and why, or fail at once for a deadlock. A task is claimed by a
//! conditional update from Queued to Executing, so it runs at most once; its final state is written
//! only after its last log line is committed, so a follower that sees the final state has the whole
//! log.

use crate::script::{self, Invocation, Place, Stop};
use crate::state::App;
use muster_core::resources::{Space, Task, Worker, WorkerPool};
use muster_core::runbooks::RunbookRun;
use muster_core::time::{Timestamp, format_date, now};
use muster_core::{LogCategory, ScriptSyntax, ScriptTarget, TaskState, WorkerPoolType};
use muster_scheduler::{BUILTIN_AGENT, Decision, Lease, Ledger, Need, Request, Slot};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

pub const BUILTIN_WORKER_NAME: &str = "Built-in worker";
/// The task name of a runbook run.
pub const RUNBOOK_RUN: &str = "RunbookRun";

#[derive(Default)]
pub struct Dispatcher {
    wake: Notify,
    /// How to stop each task running on this node.
    running: Mutex<HashMap<String, Stop>>,
    /// The leases and task-cap slots of the running tasks (health checks take neither).
    ledger: Mutex<Ledger>,
    /// Signalled each time a running task ends, for shutdown to wait on.
    ended: Notify,
    /// The space that started a task most recently: it goes last in the next pass.
    last_space: Mutex<Option<String>>,
    /// What passes read of each space, with the store's workers generation it was read at: a
    /// pass reads a space again only after a space, pool or worker was written.
    views: Mutex<HashMap<String, (u64, std::sync::Arc<SpaceView>)>>,
}

impl Dispatcher {
    /// Asks for a dispatch pass. Wakes given while a pass runs are kept, not lost.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn running(&self, task_id: &str) -> Option<Stop> {
        self.running
            .lock()
            .expect("dispatcher lock")
            .get(task_id)
            .cloned()
    }

    fn running_count(&self) -> usize {
        self.running.lock().expect("dispatcher lock").len()
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().expect("dispatcher lock")
    }

    /// A running task now waits for its child run (Some), or no longer does (None). Set before the
    /// child is queued, so that the child's first pass already sees what its parent lends it.
    pub fn wait_for(&self, parent: &str, child: Option<&str>) {
        self.ledger().wait_for(parent, child);
    }

    pub fn waiting_for(&self, task_id: &str) -> Option<String> {
        self.ledger().waiting_for(task_id).map(str::to_string)
    }
}

/// What one dispatch pass reads of a space, once.
struct SpaceView {
    space: Option<Space>,
    pools: Vec<WorkerPool>,
    workers: Vec<Worker>,
}

/// What a queued task needs, or why it cannot be planned now.
enum Planned {
    Request(Request),
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
    /// `OctopusBypassDeploymentMutex` False: nothing else runs on its worker meanwhile.
    pub exclusive: bool,
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
        let exclusive = match exclusive_argument(arguments) {
            Ok(exclusive) => exclusive,
            Err(error) => {
                errors.push(error);
                false
            }
        };
        if errors.is_empty() {
            Ok(ScriptArguments {
                exclusive,
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

/// `Arguments.OctopusBypassDeploymentMutex`: False (a string or a boolean) makes the task's worker
/// lease exclusive; True or absent shares the worker.
pub fn exclusive_argument(arguments: &serde_json::Map<String, Value>) -> Result<bool, String> {
    let value = arguments
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(muster_core::runbooks::BYPASS_MUTEX))
        .map(|(_, v)| v);
    match value {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(bypass)) => Ok(!bypass),
        Some(Value::String(text)) => muster_core::runbooks::parse_bool(text)
            .map(|bypass| !bypass)
            .ok_or_else(|| {
                format!(
                    "Arguments.OctopusBypassDeploymentMutex must be True or False, got '{text}'."
                )
            }),
        Some(other) => Err(format!(
            "Arguments.OctopusBypassDeploymentMutex must be True or False, got {other}."
        )),
    }
}

/// Tasks left Executing by a server that stopped: a script on an agent kept running, so the server
/// re-attaches to it and reads on from the last line it stored (or starts it, if the agent never
/// received it). A script on the built-in worker died with the server (its watchdog killed it, and
/// the start-up cleaned what was left), so its task ends Failed, with a line saying why; so does a
/// runbook run, whose steps the server itself drove. No task stays Executing forever: a re-attached
/// agent that does not come back fails its task after the policy's grace.
pub async fn recover(app: &App) -> anyhow::Result<()> {
    for mut task in app
        .store
        .tasks_in_states(&[TaskState::Executing, TaskState::Cancelling])
        .await?
    {
        if task.name != RUNBOOK_RUN
            && let Some(worker_id) = task.worker_id.clone()
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
            if task.worker_id.is_some() {
                format!(
                    "The task was being canceled when the Muster server stopped, and worker {worker} has since been deleted; whether its script stopped is unknown."
                )
            } else {
                "The task was being canceled when the Muster server stopped; its script, if it had started, was stopped with the server.".to_string()
            }
        } else {
            task.state = TaskState::Failed;
            if task.name == crate::health::TASK_NAME {
                "The Muster server stopped during this health check; run it again.".to_string()
            } else if task.name == RUNBOOK_RUN {
                "The Muster server stopped while this runbook run was executing; a run's steps do not outlive the server (a step on the built-in worker was stopped with it, a step on an agent is stopped when the agent reconnects), so its outcome is unknown: run it again.".to_string()
            } else if task.worker_id.is_some() {
                format!(
                    "The Muster server stopped while this task was executing on {worker}, and that worker has since been deleted; the script's outcome is unknown."
                )
            } else {
                format!(
                    "The Muster server stopped while this task was executing on the {worker}; its script, if it had started, was stopped with the server, so the outcome is unknown: run it again."
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
    app.comms.set_recovered();
    Ok(())
}

/// Follows a script an agent kept running while the server was down, from the agent's line after the
/// last one stored. A task that was being canceled is canceled on the agent. It holds its worker's
/// lease again, so nothing exclusive lands beside it.
async fn reattach(app: &App, task: Task, worker: Worker) -> anyhow::Result<()> {
    let after = app.store.last_source_seq(&task.id).await?;
    let stop = Stop::default();
    let exclusive = exclusive_argument(&task.arguments).unwrap_or(false);
    let slot = slot_of(app, &worker);
    let request = Request {
        task_id: task.id.clone(),
        space_id: task.space_id.clone(),
        parent: None,
        exclusive,
        needs: Vec::new(),
    };
    let lease = Lease {
        key: String::new(),
        worker_id: worker.id.clone(),
        worker_name: worker.name.clone(),
        agent: slot.agent,
        exclusive,
        borrowed: false,
    };
    app.dispatcher.ledger().begin(&request, vec![lease], true);
    app.dispatcher
        .running
        .lock()
        .expect("dispatcher lock")
        .insert(task.id.clone(), stop.clone());
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
        stop.cancel.cancel();
    }
    // Held before any agent's tickets are weighed (`Comms::set_recovered`), so a resumed one is
    // never taken for an orphan.
    let hold = crate::comms::hold(app, &task.id);
    let app = app.clone();
    tokio::spawn(async move {
        run_script_task(app, task, Place::Agent(Box::new(worker)), stop, Some(after)).await;
        drop(hold);
    });
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

/// One look at the queue: start what can start, and write down why the rest waits. Children that
/// their parents wait for go first (they run in their parents' slots and unblock them), then the
/// others in fair order. Returns when the next scheduled task becomes due.
async fn pass(app: &App) -> anyhow::Result<Option<Timestamp>> {
    let queued = app.store.tasks_in_states(&[TaskState::Queued]).await?;
    let last_space = app
        .dispatcher
        .last_space
        .lock()
        .expect("dispatcher lock")
        .clone();
    let (children, others): (Vec<Task>, Vec<Task>) = {
        let ledger = app.dispatcher.ledger();
        queued.into_iter().partition(|task| {
            parent_of(task).is_some_and(|p| ledger.waiting_for(&p) == Some(task.id.as_str()))
        })
    };
    // While the cap is full, a task already told so is not planned again: with thousands queued,
    // each pass would otherwise redo every task's plan to reach the same answer.
    let cap_reason = cap_reason(app);
    let cap_full = app.dispatcher.ledger().capped_count() >= app.config.task_cap;
    let children_count = children.len();
    let ordered: Vec<Task> = children
        .into_iter()
        .chain(muster_scheduler::fair_order(
            others,
            |t| t.space_id.as_str(),
            |s| muster_core::parse_id(muster_core::IdKind::Space, s).unwrap_or(0),
            last_space.as_deref(),
        ))
        .collect();
    let mut next_timer: Option<Timestamp> = None;
    let mut spaces: HashMap<String, std::sync::Arc<SpaceView>> = HashMap::new();
    // First what each task needs, so a deadlock can be traced through the other queued tasks.
    let mut plans: Vec<(Task, Planned, bool)> = Vec::new();
    for (index, mut task) in ordered.into_iter().enumerate() {
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
            let view = space_view(app, &task.space_id).await?;
            spaces.insert(task.space_id.clone(), view);
        }
        let view = &spaces[&task.space_id];
        if let Some(space) = view.space.as_ref().filter(|s| s.task_queue_stopped) {
            let reason = format!(
                "The task queue of space '{}' is stopped (TaskQueueStopped).",
                space.name
            );
            set_reason(app, &mut task, reason).await?;
            continue;
        }
        if task.name == crate::health::TASK_NAME {
            start_health(app, task).await?;
            continue;
        }
        if cap_full
            && index >= children_count
            && task.queue_reason.as_deref() == Some(cap_reason.as_str())
        {
            continue;
        }
        let planned = plan(app, &task, view).await;
        plans.push((task, planned, index < children_count));
    }
    let mut pending: HashMap<String, Request> = plans
        .iter()
        .filter_map(|(task, planned, _)| match planned {
            Planned::Request(request) => Some((task.id.clone(), request.clone())),
            _ => None,
        })
        .collect();
    // Counted in the ledger from here on: if the pass fails before their claim, they are
    // forgotten (the guard), never left holding a slot and leases.
    let mut claims = Claims {
        app,
        claims: Vec::new(),
    };
    for (mut task, planned, child) in plans {
        let request = match planned {
            Planned::Fail(message) => {
                fail_queued(app, &mut task, &message).await?;
                continue;
            }
            Planned::Wait(reason) => {
                set_reason(app, &mut task, reason).await?;
                continue;
            }
            Planned::Request(request) => request,
        };
        // Once the cap fills during the pass, a task already told so keeps that answer: deciding
        // it again reaches the same one, at the cost of weighing every worker, for each of
        // thousands of queued tasks, on every pass.
        if !child
            && task.queue_reason.as_deref() == Some(cap_reason.as_str())
            && app.dispatcher.ledger().capped_count() >= app.config.task_cap
        {
            continue;
        }
        let decision = app
            .dispatcher
            .ledger()
            .decide(&request, app.config.task_cap, &pending);
        match decision {
            Decision::Start { leases, capped } => {
                pending.remove(&task.id);
                let workers = spaces
                    .get(&task.space_id)
                    .map(|v| v.workers.as_slice())
                    .unwrap_or_default();
                let claim = prepare_start(app, task, &request, leases, capped, workers);
                claims.claims.push(claim);
            }
            Decision::CapReached { .. } => {
                set_reason(app, &mut task, cap_reason.clone()).await?;
            }
            Decision::Wait(reason) => set_reason(app, &mut task, reason).await?,
            Decision::Deadlock(message) => {
                // Failed, it is no longer a task the others wait through.
                pending.remove(&task.id);
                fail_queued(app, &mut task, &message).await?;
            }
        }
    }
    let claims = std::mem::take(&mut claims.claims);
    claim_and_launch(app, claims).await?;
    Ok(next_timer)
}

/// A space, its pools and its workers: from the last pass when none of them changed since, or
/// read now.
async fn space_view(app: &App, space_id: &str) -> anyhow::Result<std::sync::Arc<SpaceView>> {
    let generation = app.store.workers_generation();
    if let Some((seen, view)) = app
        .dispatcher
        .views
        .lock()
        .expect("dispatcher lock")
        .get(space_id)
        && *seen == generation
    {
        return Ok(view.clone());
    }
    let view = std::sync::Arc::new(SpaceView {
        space: app.store.get::<Space>(space_id).await?,
        pools: app.store.list::<WorkerPool>(space_id).await?,
        workers: app.store.list::<Worker>(space_id).await?,
    });
    let mut views = app.dispatcher.views.lock().expect("dispatcher lock");
    // A view of every space is kept only while it is current; stale ones go.
    views.retain(|_, (seen, _)| *seen == generation);
    views.insert(space_id.to_string(), (generation, view.clone()));
    Ok(view)
}

fn cap_reason(app: &App) -> String {
    format!(
        "The task cap of {} is reached on node {}: {} tasks are executing.",
        app.config.task_cap, app.config.node_name, app.config.task_cap
    )
}

/// The run that started a task through a "Run a runbook" step.
pub fn parent_of(task: &Task) -> Option<String> {
    task.arguments
        .get("ParentTaskId")
        .and_then(Value::as_str)
        .map(str::to_string)
}

async fn fail_queued(app: &App, task: &mut Task, message: &str) -> anyhow::Result<()> {
    task.state = TaskState::Failed;
    task.has_warnings_or_errors = true;
    finish(task, message);
    if app.store.transition_task(task, TaskState::Queued).await? {
        let last_seq = app.store.last_log_seq(&task.id).await.unwrap_or(0);
        app.logs.open(&task.id, last_seq);
        app.logs.append(&task.id, LogCategory::Error, message);
        app.logs.flush().await;
        app.logs.close(&task.id);
    }
    Ok(())
}

async fn set_reason(app: &App, task: &mut Task, reason: String) -> anyhow::Result<()> {
    if task.queue_reason.as_deref() != Some(reason.as_str()) {
        task.queue_reason = Some(reason);
        app.store.transition_task(task, TaskState::Queued).await?;
        app.logs.changed(&task.id);
    }
    Ok(())
}

/// Why a worker cannot take work now, or None when it can. (A share's limit is the ledger's to
/// count.)
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
    match &worker.thumbprint {
        Some(t) if app.comms.link(t).is_some() => None,
        _ => Some(format!("{} is not connected", worker.name)),
    }
}

/// A worker as the scheduler sees it: its machine is its agent (one agent may serve workers of
/// several spaces).
fn slot_of(app: &App, worker: &Worker) -> Slot {
    Slot {
        worker_id: worker.id.clone(),
        name: worker.name.clone(),
        agent: worker
            .thumbprint
            .clone()
            .unwrap_or_else(|| format!("worker:{}", worker.id)),
        order: muster_core::parse_id(muster_core::IdKind::Worker, &worker.id).unwrap_or(0),
        unavailable: unavailable(app, worker),
        share_limit: worker.share_task_limit.map(|l| l.max(0) as usize),
    }
}

pub const BUILTIN_KEY: &str = "builtin";

fn builtin_slot(app: &App) -> Slot {
    Slot {
        worker_id: BUILTIN_AGENT.into(),
        name: BUILTIN_WORKER_NAME.into(),
        agent: BUILTIN_AGENT.into(),
        order: 0,
        unavailable: (!app.config.builtin_worker).then(|| {
            "It needs the built-in worker, which is disabled on this server (--no-builtin-worker); \
             add a worker to the target pool or start the server without that flag"
                .to_string()
        }),
        share_limit: None,
    }
}

fn builtin_need(app: &App, key: &str) -> Need {
    Need {
        key: key.to_string(),
        label: "the built-in worker".into(),
        each: false,
        slots: vec![builtin_slot(app)],
    }
}

/// The need of a step or task on a pool (None: the space's default pool): one worker, or with
/// `each` every worker. Only the default pool falls back to the built-in worker when it is empty
/// (the Workers document's rule); any other empty pool waits, and says so, because a team that made
/// a pool of hardened workers for a job does not expect that job to run on the server.
fn pool_need(
    app: &App,
    view: &SpaceView,
    pool_id: Option<&str>,
    each: bool,
    key: String,
) -> Result<Need, Planned> {
    let pool = match pool_id {
        None => view.pools.iter().find(|p| p.is_default),
        Some(id) => view.pools.iter().find(|p| p.id.eq_ignore_ascii_case(id)),
    };
    let Some(pool) = pool else {
        return Err(Planned::Fail(
            "A worker pool this task targets no longer exists.".into(),
        ));
    };
    if pool.worker_pool_type == WorkerPoolType::DynamicWorkerPool {
        return Err(Planned::Wait(format!(
            "Pool '{}' is dynamic, and this server does not provision dynamic workers yet.",
            pool.name
        )));
    }
    let slots: Vec<Slot> = view
        .workers
        .iter()
        .filter(|w| w.worker_pool_ids.contains(&pool.id))
        .map(|w| slot_of(app, w))
        .collect();
    if slots.is_empty() {
        if pool.is_default {
            return Ok(builtin_need(app, &key));
        }
        return Err(Planned::Wait(format!(
            "Pool '{}' has no workers. Only the space's default pool falls back to the built-in \
             worker; add a worker to '{}'.",
            pool.name, pool.name
        )));
    }
    Ok(Need {
        key,
        label: format!("pool '{}'", pool.name),
        each,
        slots,
    })
}

/// What a queued task needs to start.
async fn plan(app: &App, task: &Task, view: &SpaceView) -> Planned {
    let (exclusive, needs) = if task.name == RUNBOOK_RUN {
        match plan_runbook_run(app, task, view).await {
            Ok(planned) => planned,
            Err(planned) => return planned,
        }
    } else if task.name == "AdHocScript" {
        match plan_script(app, task, view) {
            Ok(planned) => planned,
            Err(planned) => return planned,
        }
    } else {
        return Planned::Fail(format!("Muster does not run tasks named '{}'.", task.name));
    };
    Planned::Request(Request {
        task_id: task.id.clone(),
        space_id: task.space_id.clone(),
        parent: parent_of(task),
        exclusive,
        needs,
    })
}

fn plan_script(app: &App, task: &Task, view: &SpaceView) -> Result<(bool, Vec<Need>), Planned> {
    let arguments = ScriptArguments::parse(&task.arguments)
        .map_err(|errors| Planned::Fail(errors.join(" ")))?;
    let need = match arguments.target {
        ScriptTarget::OctopusServer => builtin_need(app, BUILTIN_KEY),
        ScriptTarget::WorkerPools => {
            let wanted: Vec<&WorkerPool> = if arguments.pool_ids.is_empty() {
                view.pools.iter().filter(|p| p.is_default).collect()
            } else {
                let found: Vec<&WorkerPool> = view
                    .pools
                    .iter()
                    .filter(|p| arguments.pool_ids.contains(&p.id))
                    .collect();
                if found.len() < arguments.pool_ids.len() {
                    return Err(Planned::Fail(
                        "A worker pool this task targets no longer exists.".into(),
                    ));
                }
                found
            };
            if wanted.len() == 1 {
                pool_need(app, view, Some(&wanted[0].id), false, "pool".into())?
            } else {
                // Several pools: any worker of any of them (the built-in worker standing in
                // for an empty default pool).
                let mut slots = Vec::new();
                let mut names = Vec::new();
                let mut waits = Vec::new();
                for pool in &wanted {
                    match pool_need(app, view, Some(&pool.id), false, "pool".into()) {
                        Ok(need) => {
                            names.push(format!("'{}'", pool.name));
                            slots.extend(need.slots);
                        }
                        Err(Planned::Wait(reason)) => waits.push(reason),
                        Err(other) => return Err(other),
                    }
                }
                if slots.is_empty() {
                    return Err(Planned::Wait(waits.join(" ")));
                } else {
                    Need {
                        key: "pool".into(),
                        label: format!("pools {}", names.join(", ")),
                        each: false,
                        slots,
                    }
                }
            }
        }
        ScriptTarget::Workers => {
            let named: Vec<Slot> = view
                .workers
                .iter()
                .filter(|w| arguments.machine_ids.contains(&w.id))
                .map(|w| slot_of(app, w))
                .collect();
            if named.len() < arguments.machine_ids.len() {
                return Err(Planned::Fail(
                    "A worker this task targets no longer exists.".into(),
                ));
            }
            Need {
                key: "workers".into(),
                label: "the workers it names".into(),
                each: false,
                slots: named,
            }
        }
    };
    Ok((arguments.exclusive, vec![need]))
}

/// A runbook run needs, at its start, one worker of each pool its steps use, every worker of a
/// pool a step fans out over, and the built-in worker if a step runs there.
async fn plan_runbook_run(
    app: &App,
    task: &Task,
    view: &SpaceView,
) -> Result<(bool, Vec<Need>), Planned> {
    let run = run_of(app, task)
        .await
        .map_err(|e| Planned::Wait(format!("Cannot read the run: {e:#}")))?
        .ok_or_else(|| Planned::Fail("This runbook run's record no longer exists.".into()))?;
    let variables = crate::runbook::run_variables(&run);
    let exclusive = crate::runbook::is_exclusive(&variables);
    let default_pool = view
        .pools
        .iter()
        .find(|p| p.is_default)
        .map(|p| p.id.as_str());
    let mut needs: Vec<Need> = Vec::new();
    for step in &run.steps {
        if step.is_disabled() {
            continue;
        }
        let Ok(muster_core::runbooks::ActionPlan::Script { location, .. }) = step.plan() else {
            continue;
        };
        let key = crate::runbook::location_key(&location, default_pool);
        if needs.iter().any(|n| n.key == key) {
            continue;
        }
        let need = match &location {
            muster_core::runbooks::Location::BuiltIn => builtin_need(app, &key),
            muster_core::runbooks::Location::Pool(pool) => {
                pool_need(app, view, pool.as_deref(), false, key)?
            }
            muster_core::runbooks::Location::EachWorker(pool) => {
                pool_need(app, view, pool.as_deref(), true, key)?
            }
        };
        needs.push(need);
    }
    Ok((exclusive, needs))
}

/// The run record of a RunbookRun task.
pub async fn run_of(app: &App, task: &Task) -> anyhow::Result<Option<RunbookRun>> {
    Ok(app
        .store
        .find_by_ext::<RunbookRun>(&task.id)
        .await?
        .into_iter()
        .next())
}

/// A task the ledger let start: counted in the ledger, not yet claimed in the store.
struct Claim {
    task: Task,
    stop: Stop,
    leases: Vec<Lease>,
    agent_worker: Option<Worker>,
}

/// The claims of a pass not yet written: dropped unwritten (the pass failed), they are forgotten.
struct Claims<'a> {
    app: &'a App,
    claims: Vec<Claim>,
}

impl Drop for Claims<'_> {
    fn drop(&mut self) {
        for claim in self.claims.drain(..) {
            forget(self.app, &claim.task.id);
        }
    }
}

/// Readies a task for the leases the ledger gave it: counted as running before its claim is
/// written, so no later decision of the pass overshoots the cap or a lease. `workers`: the
/// space's, as the pass read them.
fn prepare_start(
    app: &App,
    mut task: Task,
    request: &Request,
    leases: Vec<Lease>,
    capped: bool,
    workers: &[Worker],
) -> Claim {
    let at = now();
    task.state = TaskState::Executing;
    task.start_time = Some(at);
    task.last_updated_time = at;
    task.server_node = Some(app.config.node_name.clone());
    task.queue_reason = None;
    let mut names: Vec<String> = Vec::new();
    for lease in &leases {
        if !names.contains(&lease.worker_name) {
            names.push(lease.worker_name.clone());
        }
    }
    task.worker_name = Some(names.join(", "));
    // A script task on an agent stores its worker: a restarted server re-attaches to it.
    let agent_worker: Option<Worker> = match leases.as_slice() {
        [lease] if task.name != RUNBOOK_RUN && lease.agent != BUILTIN_AGENT => {
            workers.iter().find(|w| w.id == lease.worker_id).cloned()
        }
        _ => None,
    };
    task.worker_id = agent_worker.as_ref().map(|w| w.id.clone());
    let stop = Stop::default();
    app.dispatcher
        .ledger()
        .begin(request, leases.clone(), capped);
    app.dispatcher
        .running
        .lock()
        .expect("dispatcher lock")
        .insert(task.id.clone(), stop.clone());
    Claim {
        task,
        stop,
        leases,
        agent_worker,
    }
}

/// Claims every task a pass starts in one commit (a task canceled meanwhile is not claimed, and
/// gives its leases back), then starts each.
async fn claim_and_launch(app: &App, claims: Vec<Claim>) -> anyhow::Result<()> {
    if claims.is_empty() {
        return Ok(());
    }
    let claimed = match claims.as_slice() {
        // One claim is one statement: no transaction around it.
        [one] => app
            .store
            .transition_task(&one.task, TaskState::Queued)
            .await
            .map(|moved| vec![moved]),
        _ => {
            let tasks: Vec<Task> = claims.iter().map(|c| c.task.clone()).collect();
            app.store.transition_tasks(&tasks, TaskState::Queued).await
        }
    };
    let claimed = match claimed {
        Ok(claimed) => claimed,
        Err(error) => {
            for claim in &claims {
                forget(app, &claim.task.id);
            }
            return Err(error.into());
        }
    };
    for (claim, claimed) in claims.into_iter().zip(claimed) {
        let Claim {
            task,
            stop,
            leases,
            agent_worker,
        } = claim;
        if !claimed {
            // Its slot and leases were counted against the tasks decided after it: look again.
            forget(app, &task.id);
            app.dispatcher.wake();
            continue;
        }
        *app.dispatcher.last_space.lock().expect("dispatcher lock") = Some(task.space_id.clone());
        // A queued task has no log lines (only a failure logs before a start, and ends it).
        app.logs.open(&task.id, 0);
        app.logs.changed(&task.id);
        if task.name == RUNBOOK_RUN {
            tokio::spawn(crate::runbook::drive(app.clone(), task, stop, leases));
        } else {
            let place = match agent_worker {
                Some(worker) => Place::Agent(Box::new(worker)),
                None => Place::Builtin,
            };
            tokio::spawn(run_script_task(app.clone(), task, place, stop, None));
        }
    }
    Ok(())
}

/// A health check runs on the server, outside the task cap and the leases.
async fn start_health(app: &App, mut task: Task) -> anyhow::Result<()> {
    let at = now();
    task.state = TaskState::Executing;
    task.start_time = Some(at);
    task.last_updated_time = at;
    task.server_node = Some(app.config.node_name.clone());
    task.queue_reason = None;
    let stop = Stop::default();
    app.dispatcher
        .running
        .lock()
        .expect("dispatcher lock")
        .insert(task.id.clone(), stop.clone());
    match app.store.transition_task(&task, TaskState::Queued).await {
        Ok(true) => {
            let last_seq = app.store.last_log_seq(&task.id).await.unwrap_or(0);
            app.logs.open(&task.id, last_seq);
            app.logs.changed(&task.id);
            let app = app.clone();
            tokio::spawn(async move {
                let (state, message) = crate::health::run_task(&app, &task, &stop.cancel).await;
                conclude(&app, task, state, message).await;
            });
            Ok(())
        }
        other => {
            forget(app, &task.id);
            other.map(|_| ()).map_err(Into::into)
        }
    }
}

/// Frees what a task held on this node: its leases, its slot, its stop handle.
fn forget(app: &App, task_id: &str) {
    app.dispatcher.ledger().end(task_id);
    app.dispatcher
        .running
        .lock()
        .expect("dispatcher lock")
        .remove(task_id);
}

/// Runs an AdHocScript task on its worker, or (`resume` Some) follows the script an agent already
/// runs from that line on.
async fn run_script_task(app: App, mut task: Task, place: Place, stop: Stop, resume: Option<u64>) {
    let id = task.id.clone();
    // The agent's ticket is followed until it is completed, after the task's end is stored.
    let _hold = match &place {
        Place::Agent(_) => Some(crate::comms::hold(&app, &id)),
        Place::Builtin => None,
    };
    if resume.is_none() {
        let line = match &place {
            Place::Builtin => format!(
                "Running on the {BUILTIN_WORKER_NAME} of node {}",
                app.config.node_name
            ),
            Place::Agent(worker) => format!(
                "Running on worker {} ({})",
                worker.name,
                worker.uri.clone().unwrap_or_default()
            ),
        };
        app.logs.append(&id, LogCategory::Verbose, line);
    }
    let (final_state, message) = match ScriptArguments::parse(&task.arguments) {
        Err(errors) => (TaskState::Failed, errors.join(" ")),
        Ok(arguments) => {
            let invocation = Invocation {
                ticket: id.clone(),
                syntax: arguments.syntax,
                body: arguments.body,
                env: vec![
                    ("MUSTER_TASK_ID".into(), id.clone()),
                    ("MUSTER_SPACE_ID".into(), task.space_id.clone()),
                ],
                timeout: arguments.timeout,
                resumable: true,
            };
            let mut stderr_seen = false;
            let logs = &app.logs;
            let mut sink = |line: script::Line| {
                stderr_seen |= line.error;
                let category = if line.error {
                    LogCategory::Error
                } else {
                    LogCategory::Info
                };
                match line.agent_seq {
                    Some(seq) => logs.append_from_agent(&id, category, line.text, seq),
                    None => logs.append(&id, category, line.text),
                }
            };
            let end = script::run(&app, &place, invocation, &stop, &mut sink, resume).await;
            task.has_warnings_or_errors |= stderr_seen;
            match end {
                Some(end) => end,
                None => {
                    if let Place::Agent(worker) = &place {
                        detach(&app, &id, worker);
                    }
                    return;
                }
            }
        }
    };
    conclude(&app, task, final_state, message).await;
    if let Place::Agent(worker) = &place {
        script::complete_ticket(&app, worker, &id);
    }
}

/// Ends a task: its last line, its log committed, then its final state, then the followers told.
pub async fn conclude(app: &App, mut task: Task, final_state: TaskState, message: String) {
    let id = task.id.clone();
    if final_state != TaskState::Success {
        app.logs
            .append_final(&id, LogCategory::Error, message.clone());
        task.has_warnings_or_errors = true;
    }
    task.state = final_state;
    finish(&mut task, &message);
    // With its last lines, in one commit. The task may be Cancelling in the store by now; either
    // way this is its end.
    let stored = app.logs.end_task(task).await;
    if !stored {
        tracing::error!(task = %id, "a finished task was no longer Executing in the store");
    }
    app.logs.close(&id);
    forget(app, &id);
    app.dispatcher.ended.notify_waiters();
    app.dispatcher.wake();
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
    forget(app, task_id);
    app.dispatcher.ended.notify_waiters();
}

/// Cancels a task: a queued one at once, a running one by stopping its script (and the child run
/// it waits for, if any).
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
                Some(stop) => {
                    if task.state == TaskState::Executing {
                        task.state = TaskState::Cancelling;
                        task.last_updated_time = now();
                        app.store
                            .transition_task(&task, TaskState::Executing)
                            .await?;
                        app.logs.changed(&task.id);
                    }
                    stop.cancel.cancel();
                    if let Some(child) = app.dispatcher.waiting_for(task_id) {
                        Box::pin(cancel(app, &child)).await?;
                    }
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
    let running: Vec<Stop> = app
        .dispatcher
        .running
        .lock()
        .expect("dispatcher lock")
        .values()
        .cloned()
        .collect();
    for stop in &running {
        stop.shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        stop.cancel.cancel();
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
