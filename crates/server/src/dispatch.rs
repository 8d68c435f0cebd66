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

use crate::kinds::builtin::BUILTIN_WORKER_NAME;
use crate::kinds::{self, Invocation, Line, Stop, WorkerKind};
use crate::state::App;
use muster_core::resources::{Space, Task, Worker, WorkerPool};
use muster_core::tasks::{ScriptArguments, TaskKind, parent_of};
use muster_core::time::{Timestamp, format_date, now};
use muster_core::{LogCategory, ScriptTarget, TaskState, WorkerPoolType};
use muster_scheduler::{BUILTIN_AGENT, Decision, Lease, Need, Request, Slot};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Default)]
pub struct Dispatcher {
    /// How to stop each task running on this node.
    running: Mutex<HashMap<String, Stop>>,
    /// Signalled each time a running task ends, for shutdown to wait on.
    ended: Notify,
    /// The space that started a task most recently: it goes last in the next pass.
    last_space: Mutex<Option<String>>,
    /// The queued tasks.
    queue: Mutex<Queue>,
    /// What passes read of each space, with the store's workers generation it was read at: a
    /// pass reads a space again only after a space, pool or worker was written.
    views: Mutex<HashMap<String, (u64, std::sync::Arc<SpaceView>)>>,
}

impl Dispatcher {
    fn running(&self, task_id: &str) -> Option<Stop> {
        self.running
            .lock()
            .expect("dispatcher lock")
            .get(task_id)
            .cloned()
    }

    pub(crate) fn running_count(&self) -> usize {
        self.running.lock().expect("dispatcher lock").len()
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

/// Tasks left Executing by a server that stopped: a script on an agent kept running, so the server
/// re-attaches to it and reads on from the last line it stored (or starts it, if the agent never
/// received it). A script on the built-in worker died with the server (its watchdog killed it, and
/// the start-up cleaned what was left), so its task ends Failed, with a line saying why; so does a
/// runbook run, whose steps the server itself drove. No task stays Executing forever: a re-attached
/// agent that does not come back fails its task after the policy's grace.
///
/// Every node recovers its own tasks when it starts. The dispatcher (`dispatching`) also takes
/// over the tasks of the node that dispatched before it and of every node that is offline, after
/// fencing those nodes (their writes are refused from then on); the tasks of the other live nodes
/// it counts in its ledger, where they run.
pub async fn recover(app: &App, dispatching: bool) -> anyhow::Result<()> {
    let me = app.config.node_name.clone();
    let previous = app.store.previous_dispatcher();
    let nodes = app.store.nodes().await?;
    let at = now();
    let mut fenced: HashMap<String, bool> = HashMap::new();
    for task in app
        .store
        .tasks_in_states(&[TaskState::Executing, TaskState::Cancelling])
        .await?
    {
        let owner = task.server_node.clone().unwrap_or_else(|| me.clone());
        if owner == me {
            // At a takeover, this node's running tasks run on, counted in the ledger now.
            if app.dispatcher.running(&task.id).is_none() {
                recover_task(app, task).await?;
            } else if dispatching {
                adopt(app, &task, &me).await?;
            }
            continue;
        }
        if !dispatching {
            continue;
        }
        let gone = match fenced.get(&owner) {
            Some(gone) => *gone,
            None => {
                let record = nodes.iter().find(|n| n.name == owner);
                let offline = record.is_none_or(|n| crate::nodes::is_offline(n, &at));
                let gone = if record.is_none() {
                    // Deleted, or never registered here: nothing of it can still write.
                    true
                } else if previous.as_deref() == Some(owner.as_str()) {
                    // It lost the lease: dead, or paused past it. Fenced whenever it was seen.
                    fence(app, &owner, &(at + chrono::Duration::days(1)), &at).await?;
                    true
                } else if offline {
                    fence(app, &owner, &crate::nodes::offline_mark(&at), &at).await?
                } else {
                    false
                };
                fenced.insert(owner.clone(), gone);
                gone
            }
        };
        if gone {
            recover_task(app, task).await?;
        } else {
            adopt(app, &task, &owner).await?;
        }
    }
    app.comms.set_recovered();
    // A task of another node that ended while this ran was not yet counted when its note came.
    if dispatching {
        sweep_ended(app).await?;
    }
    Ok(())
}

/// Fences a node last seen before `seen_before` (its writes are refused from then on), and places
/// no task on it until it is seen after `at`; false when it was seen since (it lives).
async fn fence(
    app: &App,
    node: &str,
    seen_before: &Timestamp,
    at: &Timestamp,
) -> anyhow::Result<bool> {
    let fenced = app.store.presume_dead(node, seen_before).await?;
    if fenced {
        app.fenced
            .lock()
            .expect("fenced lock")
            .insert(node.to_string(), *at);
    }
    Ok(fenced)
}

/// Recovers one task whose node stopped (this one, restarted, or another that died), as the store
/// has it now: one that ended meanwhile, or that runs here, is left alone.
async fn recover_task(app: &App, task: Task) -> anyhow::Result<()> {
    let Some(mut task) = app.store.get_task(&task.id).await? else {
        return Ok(());
    };
    if !matches!(task.state, TaskState::Executing | TaskState::Cancelling)
        || app.dispatcher.running(&task.id).is_some()
    {
        return Ok(());
    }
    let kind = TaskKind::of(&task);
    if let Ok(TaskKind::AdHocScript(arguments)) = &kind
        && let Some(worker_id) = task.worker_id.clone()
        && let Some(worker) = app.store.get::<Worker>(&worker_id).await?
        && kinds::of(Some(&worker)).outlives_restart()
    {
        let exclusive = arguments.exclusive;
        reattach(app, task, worker, exclusive).await?;
        return Ok(());
    }
    let from = task.state;
    let worker = task
        .worker_name
        .clone()
        .unwrap_or_else(|| BUILTIN_WORKER_NAME.to_string());
    // Another node's task: that node died (or lost the dispatcher's lease), and is named.
    let server = match task.server_node.as_deref() {
        Some(node) if node != app.config.node_name => format!("Muster server node {node}"),
        _ => "Muster server".to_string(),
    };
    let message = if from == TaskState::Cancelling {
        task.state = TaskState::Canceled;
        if task.worker_id.is_some() {
            format!(
                "The task was being canceled when the {server} stopped, and worker {worker} has since been deleted; whether its script stopped is unknown."
            )
        } else {
            format!(
                "The task was being canceled when the {server} stopped; its script, if it had started, was stopped with the server."
            )
        }
    } else {
        task.state = TaskState::Failed;
        if let Ok(TaskKind::Health(_)) = kind {
            format!("The {server} stopped during this health check; run it again.")
        } else if let Ok(TaskKind::RunbookRun(_)) = kind {
            format!(
                "The {server} stopped while this runbook run was executing; a run's steps do not outlive the server (a step on the built-in worker was stopped with it, a step on an agent is stopped when the agent reconnects), so its outcome is unknown: run it again."
            )
        } else if task.worker_id.is_some() {
            format!(
                "The {server} stopped while this task was executing on {worker}, and that worker has since been deleted; the script's outcome is unknown."
            )
        } else {
            format!(
                "The {server} stopped while this task was executing on the {worker}; its script, if it had started, was stopped with the server, so the outcome is unknown: run it again."
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
    Ok(())
}

/// Counts a task that runs on another live node in the ledger, with its worker's lease, so the
/// dispatcher that took over does not overshoot that node's cap or an exclusive lease.
async fn adopt(app: &App, task: &Task, node: &str) -> anyhow::Result<()> {
    let exclusive = match TaskKind::of(task) {
        Ok(TaskKind::AdHocScript(arguments)) => arguments.exclusive,
        // Runs and health checks are the dispatcher's own: another node does not drive them.
        _ => return Ok(()),
    };
    let lease = match &task.worker_id {
        Some(id) => match app.store.get::<Worker>(id).await? {
            Some(worker) => Lease {
                key: String::new(),
                worker_id: worker.id.clone(),
                worker_name: worker.name.clone(),
                agent: kinds::of(Some(&worker)).machine_key(),
                exclusive,
                borrowed: false,
            },
            None => return Ok(()),
        },
        None => Lease {
            key: String::new(),
            worker_id: BUILTIN_AGENT.into(),
            worker_name: BUILTIN_WORKER_NAME.into(),
            agent: muster_scheduler::builtin_agent(node),
            exclusive,
            borrowed: false,
        },
    };
    let request = Request {
        task_id: task.id.clone(),
        space_id: task.space_id.clone(),
        parent: None,
        exclusive,
        needs: Vec::new(),
    };
    let mut ledger = app.ledger();
    ledger.begin(&request, vec![lease], true);
    ledger.place(&task.id, node);
    Ok(())
}

/// The dispatcher's watch over the other nodes: the tasks of a node that went offline (its
/// heartbeat stopped) are taken over once it is fenced: a script an agent or SSH host kept running
/// is re-attached here, a script on its built-in worker ends Failed, naming it.
pub async fn watch_nodes(app: App) {
    loop {
        tokio::time::sleep(crate::nodes::HEARTBEAT).await;
        if let Err(error) = take_over_offline_nodes(&app).await {
            tracing::warn!("cannot take the tasks of an offline node over: {error:#}");
        }
    }
}

async fn take_over_offline_nodes(app: &App) -> anyhow::Result<()> {
    if app.store.engine_name() != "postgres" {
        return Ok(());
    }
    let at = now();
    let offline: HashSet<String> = app
        .store
        .nodes()
        .await?
        .into_iter()
        .filter(|n| n.name != app.config.node_name && crate::nodes::is_offline(n, &at))
        .map(|n| n.name)
        .collect();
    if offline.is_empty() {
        return Ok(());
    }
    let mut fenced: HashMap<String, bool> = HashMap::new();
    for task in app
        .store
        .tasks_in_states(&[TaskState::Executing, TaskState::Cancelling])
        .await?
    {
        let Some(owner) = task.server_node.clone().filter(|n| offline.contains(n)) else {
            continue;
        };
        let gone = match fenced.get(&owner) {
            Some(gone) => *gone,
            None => {
                let gone = fence(app, &owner, &crate::nodes::offline_mark(&at), &at).await?;
                if gone {
                    tracing::warn!("node {owner} is offline: its tasks are taken over");
                }
                fenced.insert(owner.clone(), gone);
                gone
            }
        };
        if gone {
            app.ledger().end(&task.id);
            recover_task(app, task).await?;
        }
    }
    app.signals.dispatch.notify_one();
    Ok(())
}

/// Follows a script an agent kept running while the server was down, from the agent's line after the
/// last one stored. A task that was being canceled is canceled on the agent. It holds its worker's
/// lease again, so nothing exclusive lands beside it.
async fn reattach(app: &App, task: Task, worker: Worker, exclusive: bool) -> anyhow::Result<()> {
    let after = app.store.last_source_seq(&task.id).await?;
    let stop = Stop::default();
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
    {
        let mut ledger = app.ledger();
        ledger.end(&task.id);
        ledger.begin(&request, vec![lease], true);
        ledger.place(&task.id, &app.config.node_name);
    }
    app.dispatcher
        .running
        .lock()
        .expect("dispatcher lock")
        .insert(task.id.clone(), stop.clone());
    app.logs
        .open(&task.id, app.store.last_log_seq(&task.id).await?);
    let node = &app.config.node_name;
    let mut task = task;
    let why = match task.server_node.clone() {
        // Another node ran it: this one took the dispatcher's role over, and follows it now (its
        // later writes, the end included, name this node).
        Some(old) if old != *node => {
            task.server_node = Some(node.clone());
            if app.store.transition_task(&task, task.state).await? {
                app.logs.changed(&task.id);
            }
            format!("Muster server node {old} stopped; node {node} took over and is")
        }
        _ => "The Muster server restarted;".to_string(),
    };
    app.logs.append(
        &task.id,
        LogCategory::Verbose,
        format!(
            "{why} re-attaching to the script on worker {} after its line {after}",
            worker.name
        ),
    );
    if task.state == TaskState::Cancelling {
        stop.cancel.cancel();
    }
    // Held before any agent's tickets are weighed (`Comms::set_recovered`), so a resumed one is
    // never taken for an orphan.
    let kind = kinds::of(Some(&worker));
    let hold = kind.hold(app, &task.id);
    let app = app.clone();
    tokio::spawn(async move {
        run_script_task(app, task, kind, stop, Some(after)).await;
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
            _ = app.signals.dispatch.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// What the dispatcher last answered a queued task, while that answer stays true without looking
/// again.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Settled {
    /// Told that the task cap is full: true while it stays full.
    Capped,
    /// Told that its space's queue is stopped: true until a space, pool or worker is written.
    Stopped,
}

struct QueuedTask {
    task: Task,
    settled: Option<Settled>,
}

/// The queued tasks, kept in memory: read from the store once, then told of each new task by the
/// store (`take_new_tasks`) and of each task that leaves the queue by the dispatcher. A pass looks
/// only at the tasks whose answer may have changed, so it costs what it starts and what changed,
/// not the length of the queue.
#[derive(Default)]
struct Queue {
    loaded: bool,
    /// The store's workers generation the settled answers were reached at.
    generation: u64,
    tasks: HashMap<String, QueuedTask>,
    /// Each space's queued tasks, oldest first (by the number in their id).
    spaces: HashMap<String, BTreeMap<i64, String>>,
    /// The queued tasks with no settled answer, oldest first: every pass looks at each.
    unsettled: BTreeMap<i64, String>,
    /// The queued tasks with a QueueTimeExpiry: every pass looks at each.
    expiring: BTreeMap<i64, String>,
}

fn task_num(id: &str) -> i64 {
    muster_core::parse_id(muster_core::IdKind::ServerTask, id).unwrap_or(0)
}

impl Queue {
    fn add(&mut self, task: Task) {
        if task.state != TaskState::Queued || self.tasks.contains_key(&task.id) {
            return;
        }
        let num = task_num(&task.id);
        self.spaces
            .entry(task.space_id.clone())
            .or_default()
            .insert(num, task.id.clone());
        self.unsettled.insert(num, task.id.clone());
        if task.queue_time_expiry.is_some() {
            self.expiring.insert(num, task.id.clone());
        }
        self.tasks.insert(
            task.id.clone(),
            QueuedTask {
                task,
                settled: None,
            },
        );
    }

    fn remove(&mut self, id: &str) {
        let Some(queued) = self.tasks.remove(id) else {
            return;
        };
        let num = task_num(id);
        if let Some(space) = self.spaces.get_mut(&queued.task.space_id) {
            space.remove(&num);
            if space.is_empty() {
                self.spaces.remove(&queued.task.space_id);
            }
        }
        self.unsettled.remove(&num);
        self.expiring.remove(&num);
    }

    fn settle(&mut self, task: &Task, settled: Option<Settled>) {
        let Some(queued) = self.tasks.get_mut(&task.id) else {
            return;
        };
        queued.settled = settled;
        queued.task.queue_reason = task.queue_reason.clone();
        let num = task_num(&task.id);
        match settled {
            Some(_) => self.unsettled.remove(&num),
            None => self.unsettled.insert(num, task.id.clone()),
        };
    }

    fn unsettle_all(&mut self) {
        for (id, queued) in &mut self.tasks {
            queued.settled = None;
            self.unsettled.insert(task_num(id), id.clone());
        }
    }
}

/// What one pass has read and decided so far.
struct Pass<'a> {
    app: &'a App,
    spaces: HashMap<String, std::sync::Arc<SpaceView>>,
    /// The requests of the children their parents wait for, and of the tasks looked at: the
    /// ledger traces a cycle of waits through them.
    pending: HashMap<String, Request>,
    looked: HashSet<String>,
    claims: Claims<'a>,
    /// Queue reasons to write, in one commit at the end of the pass.
    reasons: Vec<Task>,
    next_timer: Option<Timestamp>,
    cap_reason: String,
    /// The nodes tasks may be placed on, as this pass found them.
    members: Vec<crate::nodes::Member>,
    /// The dynamic pools each task looked at waits for (a task that starts leaves).
    wants: HashMap<String, Vec<String>>,
}

impl Pass<'_> {
    /// No node may take a new task: each is drained or at its task cap.
    fn cap_full(&self) -> bool {
        let ledger = self.app.ledger();
        self.members
            .iter()
            .all(|m| m.draining || ledger.capped_on(&m.name) >= m.cap)
    }

    /// Every node is drained.
    fn all_draining(&self) -> bool {
        self.members.iter().all(|m| m.draining)
    }

    fn forget_queued(&self, id: &str) {
        self.app
            .dispatcher
            .queue
            .lock()
            .expect("dispatcher lock")
            .remove(id);
    }

    /// Notes a queued task's answer: written at the end of the pass if its reason changed.
    fn answer(&mut self, mut task: Task, reason: String, settled: Option<Settled>) {
        let changed = task.queue_reason.as_deref() != Some(reason.as_str());
        if changed {
            task.queue_reason = Some(reason);
        }
        self.app
            .dispatcher
            .queue
            .lock()
            .expect("dispatcher lock")
            .settle(&task, settled);
        if changed {
            self.reasons.push(task);
        }
    }

    async fn view(&mut self, space_id: &str) -> anyhow::Result<std::sync::Arc<SpaceView>> {
        if let Some(view) = self.spaces.get(space_id) {
            return Ok(view.clone());
        }
        let view = space_view(self.app, space_id).await?;
        self.spaces.insert(space_id.to_string(), view.clone());
        Ok(view)
    }

    /// Looks at a queued task: ends it if it expired, starts a health check, or plans what it
    /// needs. Returns the plan to decide, or None when the task was answered already.
    async fn look(
        &mut self,
        id: &str,
        child: bool,
    ) -> anyhow::Result<Option<(Task, Planned, bool)>> {
        if !self.looked.insert(id.to_string()) {
            return Ok(None);
        }
        let app = self.app;
        let Some((mut task, settled)) = app
            .dispatcher
            .queue
            .lock()
            .expect("dispatcher lock")
            .tasks
            .get(id)
            .map(|q| (q.task.clone(), q.settled))
        else {
            return Ok(None);
        };
        let at = now();
        if task.queue_time_expiry.is_some_and(|expiry| expiry <= at) {
            task.state = TaskState::Canceled;
            finish(
                &mut task,
                "The task did not start before its QueueTimeExpiry.",
            );
            app.store.transition_task(&task, TaskState::Queued).await?;
            self.forget_queued(&task.id);
            app.logs.changed(&task.id);
            return Ok(None);
        }
        if task.queue_time > at {
            self.next_timer = Some(
                self.next_timer
                    .map_or(task.queue_time, |t| t.min(task.queue_time)),
            );
            let reason = format!("Scheduled to start at {}.", format_date(&task.queue_time));
            self.answer(task, reason, None);
            return Ok(None);
        }
        // A drained node starts no new task; a child its running parent waits for is part of a
        // running task, which finishes. The answer holds until the node changes.
        if !child && self.all_draining() {
            let reason = drain_reason(app);
            self.answer(task, reason, Some(Settled::Stopped));
            return Ok(None);
        }
        // While the cap is full, a task already told so is not planned again: with thousands
        // queued, each pass would otherwise redo every task's plan to reach the same answer.
        if !child && settled == Some(Settled::Capped) && self.cap_full() {
            return Ok(None);
        }
        let view = self.view(&task.space_id).await?;
        if let Some(space) = view.space.as_ref().filter(|s| s.task_queue_stopped) {
            let reason = format!(
                "The task queue of space '{}' is stopped (TaskQueueStopped).",
                space.name
            );
            self.answer(task, reason, Some(Settled::Stopped));
            return Ok(None);
        }
        let kind = match TaskKind::of(&task) {
            Ok(kind) => kind,
            Err(error) => {
                fail_queued(app, &mut task, &error).await?;
                self.forget_queued(&task.id);
                return Ok(None);
            }
        };
        if let TaskKind::Health(_) = kind {
            let id = task.id.clone();
            let started = start_health(app, task).await;
            self.forget_queued(&id);
            started?;
            return Ok(None);
        }
        let mut wants = Vec::new();
        let planned = plan(app, &task, &kind, &view, &mut wants).await;
        if !wants.is_empty() {
            self.wants.insert(task.id.clone(), wants);
        }
        if let Planned::Request(request) = &planned {
            self.pending.insert(task.id.clone(), request.clone());
        }
        Ok(Some((
            task,
            planned,
            matches!(kind, TaskKind::RunbookRun(_)),
        )))
    }

    /// Decides a planned task: readies its start, or notes why it waits, or fails it.
    async fn decide(
        &mut self,
        mut task: Task,
        planned: Planned,
        is_run: bool,
    ) -> anyhow::Result<()> {
        let app = self.app;
        let request = match planned {
            Planned::Fail(message) => {
                fail_queued(app, &mut task, &message).await?;
                self.forget_queued(&task.id);
                return Ok(());
            }
            Planned::Wait(reason) => {
                self.answer(task, reason, None);
                return Ok(());
            }
            Planned::Request(request) => request,
        };
        // The cap is each node's: weighed when the task is placed.
        let decision = app.ledger().decide(&request, usize::MAX, &self.pending);
        match decision {
            Decision::Start { leases, capped } => match place(app, &leases, capped, is_run) {
                Placement::On(node) => {
                    self.pending.remove(&task.id);
                    self.wants.remove(&task.id);
                    let workers = self
                        .spaces
                        .get(&task.space_id)
                        .map(|v| v.workers.as_slice())
                        .unwrap_or_default();
                    let start = Start {
                        request: &request,
                        leases,
                        capped,
                        is_run,
                        node,
                    };
                    let claim = prepare_start(app, task, start, workers);
                    self.claims.claims.push(claim);
                }
                Placement::Full => {
                    let reason = self.cap_reason.clone();
                    self.answer(task, reason, Some(Settled::Capped));
                }
                Placement::Wait(reason) => self.answer(task, reason, None),
            },
            Decision::CapReached { .. } => {
                let reason = self.cap_reason.clone();
                self.answer(task, reason, Some(Settled::Capped));
            }
            Decision::Wait(reason) => self.answer(task, reason, None),
            Decision::Deadlock(message) => {
                // Failed, it is no longer a task the others wait through.
                self.pending.remove(&task.id);
                fail_queued(app, &mut task, &message).await?;
                self.forget_queued(&task.id);
            }
        }
        Ok(())
    }
}

/// A child whose running parent waits for it borrows the parent's leases and slot, whichever node
/// created it (that node told only its own ledger; the task says it, in `ParentWaits`).
fn note_waits(app: &App, tasks: &[Task]) {
    let mut ledger = app.ledger();
    for task in tasks {
        if let Some(parent) = muster_core::tasks::waiting_parent_of(task)
            && ledger.is_running(&parent)
        {
            ledger.wait_for(&parent, Some(&task.id));
        }
    }
}

/// Brings the in-memory queue up to date: read whole at the first pass (after a start, so restart
/// recovery sees every task left queued), then the tasks committed since; every answer is looked
/// at again after a space, pool or worker was written.
async fn sync_queue(app: &App) -> anyhow::Result<()> {
    let loaded = app.dispatcher.queue.lock().expect("dispatcher lock").loaded;
    if !loaded {
        app.store.watch_new_tasks();
        let queued = app.store.tasks_in_states(&[TaskState::Queued]).await?;
        note_waits(app, &queued);
        let mut queue = app.dispatcher.queue.lock().expect("dispatcher lock");
        for task in queued {
            queue.add(task);
        }
        queue.loaded = true;
    }
    let new = app.store.take_new_tasks();
    let generation = app.store.workers_generation();
    note_waits(app, &new);
    let mut queue = app.dispatcher.queue.lock().expect("dispatcher lock");
    for task in new {
        queue.add(task);
    }
    if queue.generation != generation {
        queue.generation = generation;
        queue.unsettle_all();
    }
    Ok(())
}

/// One look at the queue: start what can start, and write down why the rest waits. Children that
/// their parents wait for go first (they run in their parents' slots and unblock them), then the
/// others in fair order until the task cap is full, then the tasks whose answer may have changed.
/// Returns when the next scheduled task becomes due.
async fn pass(app: &App) -> anyhow::Result<Option<Timestamp>> {
    let _pass = app.dynamic.pass.lock().await;
    sync_queue(app).await?;
    let last_space = app
        .dispatcher
        .last_space
        .lock()
        .expect("dispatcher lock")
        .clone();
    let mut pass = Pass {
        app,
        spaces: HashMap::new(),
        pending: HashMap::new(),
        looked: HashSet::new(),
        // Counted in the ledger from their decision on: if the pass fails before their claim,
        // they are forgotten (the guard), never left holding a slot and leases.
        claims: Claims {
            app,
            claims: Vec::new(),
        },
        reasons: Vec::new(),
        next_timer: None,
        cap_reason: cap_reason(app),
        members: crate::nodes::members(app),
        wants: HashMap::new(),
    };
    // The children their parents wait for: planned first, so a deadlock can be traced through
    // them, then decided.
    let mut children: Vec<String> = {
        let queue = app.dispatcher.queue.lock().expect("dispatcher lock");
        app.ledger()
            .waited_for()
            .into_iter()
            .filter(|id| queue.tasks.contains_key(id))
            .collect()
    };
    children.sort_by_key(|id| task_num(id));
    let mut planned = Vec::new();
    for id in &children {
        if let Some(plan) = pass.look(id, true).await? {
            planned.push(plan);
        }
    }
    for (task, plan, is_run) in planned {
        pass.decide(task, plan, is_run).await?;
    }
    // Then the others in fair order, the spaces taking turns, while the task cap has room. A
    // stopped space's tasks are left to the settled answer they already have.
    let mut turns: Vec<String> = {
        let queue = app.dispatcher.queue.lock().expect("dispatcher lock");
        queue.spaces.keys().cloned().collect()
    };
    turns.sort_by_key(|s| {
        (
            muster_core::parse_id(muster_core::IdKind::Space, s).unwrap_or(0),
            s.clone(),
        )
    });
    if let Some(last) = last_space.as_deref()
        && let Some(at) = turns.iter().position(|s| s == last)
    {
        turns.rotate_left(at + 1);
    }
    let mut open = Vec::new();
    for space in turns {
        let view = pass.view(&space).await?;
        if !view.space.as_ref().is_some_and(|s| s.task_queue_stopped) {
            open.push((space, i64::MIN));
        }
    }
    // A drained node looks only at the tasks whose answer may have changed (below), to say so.
    while !open.is_empty() && !pass.cap_full() && !pass.all_draining() {
        let mut still = Vec::new();
        for (space, after) in std::mem::take(&mut open) {
            if pass.cap_full() {
                break;
            }
            let next = app
                .dispatcher
                .queue
                .lock()
                .expect("dispatcher lock")
                .spaces
                .get(&space)
                .and_then(|tasks| {
                    tasks
                        .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                        .next()
                        .map(|(num, id)| (*num, id.clone()))
                });
            let Some((num, id)) = next else {
                continue;
            };
            still.push((space, num));
            if let Some((task, plan, is_run)) = pass.look(&id, false).await? {
                pass.decide(task, plan, is_run).await?;
            }
        }
        open = still;
    }
    // Then every task whose answer may have changed: new ones, those that wait for a worker, and
    // those that may expire.
    let rest: Vec<String> = {
        let queue = app.dispatcher.queue.lock().expect("dispatcher lock");
        queue
            .unsettled
            .values()
            .chain(queue.expiring.values())
            .filter(|id| !pass.looked.contains(*id))
            .cloned()
            .collect()
    };
    for id in rest {
        if let Some((task, plan, is_run)) = pass.look(&id, false).await? {
            pass.decide(task, plan, is_run).await?;
        }
    }
    let claims = std::mem::take(&mut pass.claims.claims);
    claim_and_launch(app, claims).await?;
    // What the dynamic pools' scaler provisions for: the tasks still waiting for each pool (a
    // task told that the cap is full is not looked at, and asks for no worker).
    let mut demand: HashMap<String, usize> = HashMap::new();
    for pool in pass.wants.values().flatten() {
        *demand.entry(pool.clone()).or_default() += 1;
    }
    app.dynamic.set_demand(demand);
    write_reasons(app, std::mem::take(&mut pass.reasons)).await?;
    Ok(pass.next_timer)
}

/// Writes the queue reasons of a pass in one commit; a task that left the queue meanwhile (it was
/// canceled) is not written, and leaves the in-memory queue.
async fn write_reasons(app: &App, tasks: Vec<Task>) -> anyhow::Result<()> {
    let written = match tasks.as_slice() {
        [] => return Ok(()),
        [one] => vec![app.store.transition_task(one, TaskState::Queued).await?],
        _ => {
            app.store
                .transition_tasks(&tasks, TaskState::Queued)
                .await?
        }
    };
    for (task, written) in tasks.iter().zip(written) {
        if written {
            app.logs.changed(&task.id);
        } else {
            app.dispatcher
                .queue
                .lock()
                .expect("dispatcher lock")
                .remove(&task.id);
        }
    }
    Ok(())
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
    let members = crate::nodes::members(app);
    if let [me] = members.as_slice() {
        let cap = me.cap;
        return format!(
            "The task cap of {cap} is reached on node {}: {cap} tasks are executing.",
            me.name
        );
    }
    let ledger = app.ledger();
    let each: Vec<String> = members
        .iter()
        .map(|m| match m.draining {
            true => format!("{} draining", m.name),
            false => format!("{} {} of {}", m.name, ledger.capped_on(&m.name), m.cap),
        })
        .collect();
    format!(
        "The task cap is reached on every node ({}).",
        each.join(", ")
    )
}

fn drain_reason(app: &App) -> String {
    if crate::nodes::members(app).len() > 1 {
        return "Every node is draining (maintenance mode): none takes a new task until an administrator ends it.".into();
    }
    format!(
        "Node {} is draining (maintenance mode): it takes no new task until an administrator ends it.",
        app.config.node_name
    )
}

/// Where a task that may start runs.
enum Placement {
    On(String),
    /// No node has room for it.
    Full,
    Wait(String),
}

/// Chooses the node that runs a task the ledger let start: a runbook run, this (the dispatching)
/// node, which drives it; a task on a built-in worker, that worker's node; a task on an agent, the
/// node that holds the agent's link if it has room, else this node, else the node with the most
/// room (it reaches the agent through the relay). A child run in its parent's slot takes no room.
fn place(app: &App, leases: &[Lease], capped: bool, is_run: bool) -> Placement {
    let members = crate::nodes::members(app);
    let ledger = app.ledger();
    let free = |m: &crate::nodes::Member| m.cap.saturating_sub(ledger.capped_on(&m.name));
    // A child in its waiting parent's slot takes no room: it starts even on a drained node.
    let room = |m: &crate::nodes::Member| !capped || (!m.draining && free(m) > 0);
    let none_has_room = || !members.iter().any(|m| !m.draining && free(m) > 0);
    let me = &members[0];
    if is_run {
        if room(me) {
            return Placement::On(me.name.clone());
        }
        if capped && none_has_room() {
            return Placement::Full;
        }
        return Placement::Wait(if me.draining {
            format!(
                "Runbook runs are driven by the dispatching node, {}, which is draining; it hands that role to another node once its running tasks end.",
                me.name
            )
        } else {
            format!(
                "The task cap of {} is reached on node {}, the dispatching node, which drives runbook runs.",
                me.cap, me.name
            )
        });
    }
    if let Some(node) = leases
        .iter()
        .find_map(|l| muster_scheduler::builtin_node(&l.agent))
    {
        return match members.iter().find(|m| m.name == node) {
            Some(m) if room(m) => Placement::On(node.to_string()),
            _ if capped && none_has_room() => Placement::Full,
            _ => Placement::Wait(format!(
                "Node {node}, whose built-in worker it was given, has no room now."
            )),
        };
    }
    let linked = leases
        .iter()
        .find_map(|l| app.comms.remote_node(&l.agent))
        .and_then(|node| members.iter().find(|m| m.name == node));
    if let Some(m) = linked.filter(|m| room(m)) {
        return Placement::On(m.name.clone());
    }
    if room(me) {
        return Placement::On(me.name.clone());
    }
    match members.iter().filter(|m| room(m)).max_by_key(|m| free(m)) {
        Some(m) => Placement::On(m.name.clone()),
        None => Placement::Full,
    }
}

/// This node's cap or maintenance mode changed: every queued task is looked at again, now.
pub fn node_changed(app: &App) {
    app.dispatcher
        .queue
        .lock()
        .expect("dispatcher lock")
        .unsettle_all();
    app.signals.dispatch.notify_one();
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

/// Why a worker cannot take work now, or None when it can. (A share's limit is the ledger's to
/// count.)
fn unavailable(app: &App, worker: &Worker, kind: &dyn WorkerKind) -> Option<String> {
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
    kind.unreachable(app)
}

/// A worker as the scheduler sees it: its machine is what its kind leases (one agent or SSH host
/// may serve workers of several spaces).
fn slot_of(app: &App, worker: &Worker) -> Slot {
    let kind = kinds::of(Some(worker));
    Slot {
        worker_id: worker.id.clone(),
        name: worker.name.clone(),
        agent: kind.machine_key(),
        order: muster_core::parse_id(muster_core::IdKind::Worker, &worker.id).unwrap_or(0),
        unavailable: unavailable(app, worker, kind.as_ref()),
        share_limit: worker.share_task_limit.map(|l| l.max(0) as usize),
    }
}

/// The built-in workers a task may use: every online node's (each node runs one), or with
/// `only_here` this node's alone (a runbook run's, which this node drives). A node's is unavailable
/// while it drains, and while its task cap is reached when another node has room (with none, the
/// cap itself is the answer).
fn builtin_slots(app: &App, only_here: bool) -> Vec<Slot> {
    let members = crate::nodes::members(app);
    let single = members.len() == 1 || only_here;
    let ledger = app.ledger();
    let full = |m: &crate::nodes::Member| ledger.capped_on(&m.name) >= m.cap;
    let any_room = members.iter().any(|m| !m.draining && !full(m));
    members
        .iter()
        .enumerate()
        .filter(|(at, _)| !only_here || *at == 0)
        .map(|(at, m)| {
            let unavailable = if at == 0 {
                kinds::of(None).unreachable(app)
            } else if !m.builtin {
                Some(format!(
                    "the {BUILTIN_WORKER_NAME} of node {} is disabled (--no-builtin-worker)",
                    m.name
                ))
            } else {
                None
            };
            let unavailable = unavailable
                .or_else(|| {
                    (m.draining && !single)
                        .then(|| format!("node {} is draining (maintenance mode)", m.name))
                })
                .or_else(|| {
                    (full(m) && any_room)
                        .then(|| format!("node {}'s task cap of {} is reached", m.name, m.cap))
                });
            Slot {
                worker_id: BUILTIN_AGENT.into(),
                // Each node's is named alike (as in Octopus); the task's ServerNode says which.
                name: BUILTIN_WORKER_NAME.into(),
                agent: muster_scheduler::builtin_agent(&m.name),
                order: at as i64,
                unavailable,
                share_limit: None,
            }
        })
        .collect()
}

fn builtin_need(app: &App, key: &str, only_here: bool) -> Need {
    Need {
        key: key.to_string(),
        label: "the built-in worker".into(),
        each: false,
        slots: builtin_slots(app, only_here),
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
    only_here: bool,
    wants: &mut Vec<String>,
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
        return dynamic_need(app, view, pool, each, key, wants);
    }
    let slots: Vec<Slot> = view
        .workers
        .iter()
        .filter(|w| w.worker_pool_ids.contains(&pool.id))
        .map(|w| slot_of(app, w))
        .collect();
    if slots.is_empty() {
        if pool.is_default {
            return Ok(builtin_need(app, &key, only_here));
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

/// A dynamic pool's need: its instances that may take a task now. With none, the task waits for
/// the scaler, which says why; the pool is noted in `wants`, the demand the scaler provisions for.
fn dynamic_need(
    app: &App,
    view: &SpaceView,
    pool: &WorkerPool,
    each: bool,
    key: String,
    wants: &mut Vec<String>,
) -> Result<Need, Planned> {
    let Some(worker_type) = crate::dynamic::type_of(app, pool) else {
        return Err(Planned::Wait(format!(
            "Pool '{}' is dynamic, and its worker type '{}' is not defined in this server's configuration file (--config).",
            pool.name,
            pool.worker_type.as_deref().unwrap_or_default()
        )));
    };
    wants.push(pool.id.clone());
    let members: Vec<(&Worker, usize)> = {
        let ledger = app.ledger();
        view.workers
            .iter()
            .filter(|w| w.dynamic.is_some() && w.worker_pool_ids.contains(&pool.id))
            .map(|w| (w, ledger.worker_load(&w.id)))
            .collect()
    };
    let slots: Vec<Slot> = members
        .into_iter()
        .filter(|(w, load)| crate::dynamic::has_room(w, &worker_type.limits, *load))
        .map(|(w, _)| slot_of(app, w))
        .filter(|slot| slot.unavailable.is_none())
        .collect();
    if slots.is_empty() {
        return Err(Planned::Wait(app.dynamic.reason(pool, worker_type)));
    }
    Ok(Need {
        key,
        label: format!("pool '{}'", pool.name),
        each,
        slots,
    })
}

/// What a queued task needs to start; the dynamic pools it waits for go in `wants`.
async fn plan(
    app: &App,
    task: &Task,
    kind: &TaskKind,
    view: &SpaceView,
    wants: &mut Vec<String>,
) -> Planned {
    let planned = match kind {
        TaskKind::RunbookRun(_) => plan_runbook_run(app, task, view, wants).await,
        TaskKind::AdHocScript(arguments) => plan_script(app, arguments, view, wants),
        TaskKind::Health(_) => Err(Planned::Fail(
            "A health check takes no worker lease.".into(),
        )),
    };
    let (exclusive, needs) = match planned {
        Ok(planned) => planned,
        Err(planned) => return planned,
    };
    Planned::Request(Request {
        task_id: task.id.clone(),
        space_id: task.space_id.clone(),
        parent: parent_of(task),
        exclusive,
        needs,
    })
}

fn plan_script(
    app: &App,
    arguments: &ScriptArguments,
    view: &SpaceView,
    wants: &mut Vec<String>,
) -> Result<(bool, Vec<Need>), Planned> {
    let need = match arguments.target {
        ScriptTarget::OctopusServer => builtin_need(app, kinds::builtin::BUILTIN_KEY, false),
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
                pool_need(
                    app,
                    view,
                    Some(&wanted[0].id),
                    false,
                    "pool".into(),
                    false,
                    wants,
                )?
            } else {
                // Several pools: any worker of any of them (the built-in worker standing in
                // for an empty default pool).
                let mut slots = Vec::new();
                let mut names = Vec::new();
                let mut waits = Vec::new();
                for pool in &wanted {
                    match pool_need(
                        app,
                        view,
                        Some(&pool.id),
                        false,
                        "pool".into(),
                        false,
                        wants,
                    ) {
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
    wants: &mut Vec<String>,
) -> Result<(bool, Vec<Need>), Planned> {
    let run = crate::runbook::run_of(app, task)
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
            muster_core::runbooks::Location::BuiltIn => builtin_need(app, &key, true),
            muster_core::runbooks::Location::Pool(pool) => {
                pool_need(app, view, pool.as_deref(), false, key, true, wants)?
            }
            muster_core::runbooks::Location::EachWorker(pool) => {
                pool_need(app, view, pool.as_deref(), true, key, true, wants)?
            }
        };
        needs.push(need);
    }
    Ok((exclusive, needs))
}

/// A task the ledger let start: counted in the ledger, not yet claimed in the store.
struct Claim {
    task: Task,
    stop: Stop,
    leases: Vec<Lease>,
    /// A script task's worker (None: the built-in worker); a runbook run drives its own.
    worker: Option<Worker>,
    is_run: bool,
    /// It runs on this node (else the node it is placed on starts it when it hears of its claim).
    here: bool,
    /// The dynamic workers it leases, as (space, worker): their use is counted before the claim.
    dynamic: Vec<(String, String)>,
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

/// What the ledger and the placement gave a task that starts.
struct Start<'a> {
    request: &'a Request,
    leases: Vec<Lease>,
    capped: bool,
    is_run: bool,
    /// The node that runs it.
    node: String,
}

/// Readies a task for the leases the ledger gave it: counted as running (on its node) before its
/// claim is written, so no later decision of the pass overshoots a cap or a lease. `workers`: the
/// space's, as the pass read them.
fn prepare_start(app: &App, mut task: Task, start: Start<'_>, workers: &[Worker]) -> Claim {
    let Start {
        request,
        leases,
        capped,
        is_run,
        node,
    } = start;
    let at = now();
    task.state = TaskState::Executing;
    task.start_time = Some(at);
    task.last_updated_time = at;
    task.queue_reason = None;
    let mut names: Vec<String> = Vec::new();
    for lease in &leases {
        if !names.contains(&lease.worker_name) {
            names.push(lease.worker_name.clone());
        }
    }
    task.worker_name = Some(names.join(", "));
    // A script task on a worker stores it: a restarted server re-attaches to a script that
    // outlives it, and the node it is placed on reads which worker runs it.
    let worker: Option<Worker> = match leases.as_slice() {
        [lease] if !is_run && muster_scheduler::builtin_node(&lease.agent).is_none() => {
            workers.iter().find(|w| w.id == lease.worker_id).cloned()
        }
        _ => None,
    };
    task.worker_id = worker.as_ref().map(|w| w.id.clone());
    let dynamic = leases
        .iter()
        .filter_map(|l| workers.iter().find(|w| w.id == l.worker_id))
        .filter(|w| w.dynamic.is_some())
        .map(|w| (w.space_id.clone(), w.id.clone()))
        .collect();
    let here = node == app.config.node_name;
    task.server_node = Some(node.clone());
    let stop = Stop::default();
    {
        let mut ledger = app.ledger();
        ledger.begin(request, leases.clone(), capped);
        ledger.place(&task.id, &node);
    }
    if here {
        app.dispatcher
            .running
            .lock()
            .expect("dispatcher lock")
            .insert(task.id.clone(), stop.clone());
    }
    Claim {
        task,
        stop,
        leases,
        worker,
        is_run,
        here,
        dynamic,
    }
}

/// Claims every task a pass starts in one commit (a task canceled meanwhile is not claimed, and
/// gives its leases back), then starts each.
async fn claim_and_launch(app: &App, claims: Vec<Claim>) -> anyhow::Result<()> {
    if claims.is_empty() {
        return Ok(());
    }
    // A dynamic worker's use is stored before its task is: `MaxUseCount` holds across a crash (a
    // use counted for a task that then did not start only retires the worker sooner).
    let uses: Vec<(String, String)> = claims.iter().flat_map(|c| c.dynamic.clone()).collect();
    let mut claims = claims;
    if !uses.is_empty() {
        let refused = match crate::dynamic::count_uses(app, &uses).await {
            Ok(refused) => refused,
            Err(error) => {
                for claim in &claims {
                    forget(app, &claim.task.id);
                }
                return Err(error);
            }
        };
        if !refused.is_empty() {
            // Being destroyed: the task stays queued for another worker.
            claims.retain(|claim| {
                let keep = !claim.dynamic.iter().any(|(_, w)| refused.contains(w));
                if !keep {
                    forget(app, &claim.task.id);
                    app.signals.dispatch.notify_one();
                }
                keep
            });
            if claims.is_empty() {
                return Ok(());
            }
        }
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
            worker,
            is_run,
            here,
            ..
        } = claim;
        // Started here, or ended elsewhere meanwhile: either way no longer queued.
        app.dispatcher
            .queue
            .lock()
            .expect("dispatcher lock")
            .remove(&task.id);
        if !claimed {
            // Its slot and leases were counted against the tasks decided after it: look again.
            forget(app, &task.id);
            app.signals.dispatch.notify_one();
            continue;
        }
        *app.dispatcher.last_space.lock().expect("dispatcher lock") = Some(task.space_id.clone());
        if !here {
            continue;
        }
        // A queued task has no log lines (only a failure logs before a start, and ends it).
        app.logs.open(&task.id, 0);
        app.logs.changed(&task.id);
        if is_run {
            let app = app.clone();
            tokio::spawn(async move {
                let (task, state, message) = crate::runbook::drive(&app, task, stop, leases).await;
                conclude(&app, task, state, message).await;
            });
        } else {
            let kind = kinds::of(worker.as_ref());
            tokio::spawn(run_script_task(app.clone(), task, kind, stop, None));
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
    app.ledger().end(task_id);
    app.dispatcher
        .running
        .lock()
        .expect("dispatcher lock")
        .remove(task_id);
}

/// Runs an AdHocScript task on its worker, or (`resume` Some) follows the script the worker
/// already runs from that line on.
async fn run_script_task(
    app: App,
    mut task: Task,
    kind: std::sync::Arc<dyn WorkerKind>,
    stop: Stop,
    resume: Option<u64>,
) {
    let id = task.id.clone();
    // The worker's ticket is followed until it is released, after the task's end is stored.
    let _hold = kind.hold(&app, &id);
    if resume.is_none() {
        let line = format!("Running on {}", kind.describe(&app));
        app.logs.append(&id, LogCategory::Verbose, line);
    }
    // Masked in every line, as a sensitive value is.
    let token = app.store.task_token(&id);
    let mask = |text: String| -> String {
        if text.contains(token.as_str()) {
            text.replace(token.as_str(), muster_core::variables::MASK)
        } else {
            text
        }
    };
    let (final_state, message) = match TaskKind::of(&task) {
        Ok(TaskKind::AdHocScript(arguments)) => {
            let invocation = Invocation {
                ticket: id.clone(),
                syntax: arguments.syntax,
                // The script helpers (set_octopusvariable, get_octopusvariable, …) as in steps.
                body: format!(
                    "{}{}",
                    muster_core::variables::prelude(arguments.syntax),
                    arguments.body
                ),
                env: vec![
                    ("MUSTER_TASK_ID".into(), id.clone()),
                    ("MUSTER_SPACE_ID".into(), task.space_id.clone()),
                    ("MUSTER_TASK_TOKEN".into(), token.clone()),
                ],
                timeout: arguments.timeout,
                resumable: true,
            };
            let mut stderr_seen = false;
            let mut announced = Vec::new();
            let logs = &app.logs;
            let mut sink = |line: Line| {
                // A resumed script's lines up to the last one stored: only what they announced.
                let replayed =
                    matches!((line.source_seq, resume), (Some(seq), Some(last)) if seq <= last);
                if replayed {
                    stderr_seen |= line.error;
                    if let Some(Ok(file)) =
                        muster_core::variables::parse_create_artifact(&line.text)
                    {
                        announced.push(file);
                    }
                    return;
                }
                if let Some(message) = muster_core::variables::parse_create_artifact(&line.text) {
                    let (category, text) = crate::artifacts::announcement(&message);
                    stderr_seen |= message.is_err();
                    match line.source_seq {
                        Some(seq) => {
                            logs.append_from_agent(&id, category, text, seq, line.occurred_at)
                        }
                        None => logs.append(&id, category, text),
                    }
                    announced.extend(message.ok());
                    return;
                }
                stderr_seen |= line.error;
                let category = if line.error {
                    LogCategory::Error
                } else {
                    LogCategory::Info
                };
                let text = mask(line.text);
                match line.source_seq {
                    Some(seq) => logs.append_from_agent(&id, category, text, seq, line.occurred_at),
                    None => logs.append(&id, category, text),
                }
            };
            let end = kind.run(&app, invocation, &stop, &mut sink, resume).await;
            task.has_warnings_or_errors |= stderr_seen;
            match end {
                Some(end) => {
                    if !announced.is_empty() && !stop.is_shutdown() {
                        let files = crate::artifacts::Collection {
                            task_id: id.clone(),
                            space_id: task.space_id.clone(),
                            step: 0,
                            source: task
                                .worker_name
                                .clone()
                                .unwrap_or_else(|| kinds::builtin::BUILTIN_WORKER_NAME.into()),
                            mask: &|text: &str| text.to_string(),
                            announced,
                            warned: Default::default(),
                        };
                        kind.collect(&app, &id, &files).await;
                        task.has_warnings_or_errors |= files.warned();
                    }
                    end
                }
                None => {
                    detach(&app, &id, kind.as_ref());
                    return;
                }
            }
        }
        Ok(_) => (TaskState::Failed, "This task does not run a script.".into()),
        Err(error) => (TaskState::Failed, error),
    };
    conclude(&app, task, final_state, message).await;
    kind.release(&app, &id);
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
    app.signals.dispatch.notify_one();
}

/// Leaves a script running on its worker while this server shuts down; the task stays Executing in
/// the store and the next start re-attaches to it.
fn detach(app: &App, task_id: &str, kind: &dyn WorkerKind) {
    app.logs.append(
        task_id,
        LogCategory::Verbose,
        format!(
            "The Muster server is shutting down; the script keeps running on {}, and the server re-attaches to it when it starts again",
            kind.describe(app)
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
                    app.dispatcher
                        .queue
                        .lock()
                        .expect("dispatcher lock")
                        .remove(&task.id);
                    app.logs.changed(&task.id);
                    app.signals.dispatch.notify_one();
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
                    let child = app.ledger().waiting_for(task_id).map(str::to_string);
                    if let Some(child) = child {
                        Box::pin(cancel(app, &child)).await?;
                    }
                    return Ok(Some(task));
                }
                None if runs_elsewhere(app, &task).await => {
                    // The dispatching node runs it: asked to cancel, it stops the script (its
                    // note reaches that node).
                    if task.state == TaskState::Executing {
                        task.state = TaskState::Cancelling;
                        task.last_updated_time = now();
                        app.store
                            .transition_task(&task, TaskState::Executing)
                            .await?;
                        app.logs.changed(&task.id);
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

/// A task changed (on any node): a cancel asked elsewhere reaches the script if it runs here; a
/// task the dispatcher placed on this node starts here; the end of a task the dispatcher placed on
/// another node frees its leases and its slot in the dispatcher's ledger.
pub async fn heard_of_task(app: &App, task_id: &str) {
    if app.dispatcher.running(task_id).is_some() {
        match app.store.get_task(task_id).await {
            Ok(Some(task)) if task.state == TaskState::Cancelling => {
                if let Err(error) = cancel(app, task_id).await {
                    tracing::error!(%error, task_id, "cannot cancel a task another node asked to cancel");
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, task_id, "cannot read a task another node changed")
            }
        }
        return;
    }
    // One node runs everything on SQLite.
    if app.store.engine_name() != "postgres" {
        return;
    }
    let me = app.config.node_name.as_str();
    let placed_elsewhere = app.ledger().node_of(task_id).is_some_and(|node| node != me);
    let task = match app.store.get_task(task_id).await {
        Ok(Some(task)) => task,
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(%error, task_id, "cannot read a task another node changed; trying again");
            catch_up_later(app);
            return;
        }
    };
    let running = matches!(task.state, TaskState::Executing | TaskState::Cancelling);
    if placed_elsewhere {
        if !running {
            app.ledger().end(task_id);
            app.signals.dispatch.notify_one();
        }
        return;
    }
    if running && task.server_node.as_deref() == Some(me) {
        start_placed(app, task).await;
    }
}

/// Starts a script task the dispatcher placed on this node (it claimed it, naming this node).
async fn start_placed(app: &App, mut task: Task) {
    let Ok(TaskKind::AdHocScript(_)) = TaskKind::of(&task) else {
        return;
    };
    let worker = match &task.worker_id {
        None => None,
        Some(id) => match app.store.get::<Worker>(id).await {
            Ok(Some(worker)) => Some(worker),
            Ok(None) => {
                let message = format!(
                    "Worker {} was deleted before its script started; it never ran.",
                    task.worker_name.clone().unwrap_or_default()
                );
                let last = app.store.last_log_seq(&task.id).await.unwrap_or(0);
                app.logs.open(&task.id, last);
                task.has_warnings_or_errors = true;
                app.logs
                    .append_final(&task.id, LogCategory::Error, message.clone());
                task.state = TaskState::Failed;
                finish(&mut task, &message);
                app.logs.end_task(task.clone()).await;
                app.logs.close(&task.id);
                return;
            }
            Err(error) => {
                tracing::warn!(%error, task = %task.id, "cannot read the worker of a task placed here; trying again");
                catch_up_later(app);
                return;
            }
        },
    };
    let stop = Stop::default();
    {
        let mut running = app.dispatcher.running.lock().expect("dispatcher lock");
        if running.contains_key(&task.id) {
            return;
        }
        running.insert(task.id.clone(), stop.clone());
    }
    // Reserved here: read again, so that a task that ended after the caller read it (it ran here
    // and finished meanwhile) is never started twice.
    let me = app.config.node_name.as_str();
    let task = match app.store.get_task(&task.id).await {
        Ok(Some(now))
            if matches!(now.state, TaskState::Executing | TaskState::Cancelling)
                && now.server_node.as_deref() == Some(me) =>
        {
            now
        }
        Ok(_) => {
            app.dispatcher
                .running
                .lock()
                .expect("dispatcher lock")
                .remove(&task.id);
            return;
        }
        Err(error) => {
            app.dispatcher
                .running
                .lock()
                .expect("dispatcher lock")
                .remove(&task.id);
            tracing::warn!(%error, task = %task.id, "cannot read a task placed here; trying again");
            catch_up_later(app);
            return;
        }
    };
    let last = app.store.last_log_seq(&task.id).await.unwrap_or(0);
    app.logs.open(&task.id, last);
    if task.state == TaskState::Cancelling {
        stop.cancel.cancel();
    }
    let kind = kinds::of(worker.as_ref());
    tokio::spawn(run_script_task(app.clone(), task, kind, stop, None));
}

/// Notes may have been missed: the queue is read from the store again at the next pass; a task
/// placed on this node meanwhile starts, and the dispatcher frees the slots of tasks that ended on
/// other nodes.
pub fn resync(app: &App) {
    app.dispatcher.queue.lock().expect("dispatcher lock").loaded = false;
    app.signals.dispatch.notify_one();
    if app.store.engine_name() == "postgres" {
        let app = app.clone();
        tokio::spawn(async move {
            if let Err(error) = catch_up(&app).await {
                tracing::warn!("cannot read the running tasks again: {error:#}");
            }
        });
    }
}

async fn catch_up(app: &App) -> anyhow::Result<()> {
    let me = app.config.node_name.as_str();
    for task in app
        .store
        .tasks_in_states(&[TaskState::Executing, TaskState::Cancelling])
        .await?
    {
        if task.server_node.as_deref() == Some(me) && app.dispatcher.running(&task.id).is_none() {
            start_placed(app, task).await;
        }
    }
    sweep_ended(app).await
}

/// Frees the ledger's entries of tasks placed on other nodes that the store says have ended (a
/// note of their end was missed). Only an end frees one: a task whose claim is not committed yet
/// still reads Queued, and keeps its slot.
async fn sweep_ended(app: &App) -> anyhow::Result<()> {
    let placed = app.ledger().placed_elsewhere(&app.config.node_name);
    for id in placed {
        if let Some(task) = app.store.get_task(&id).await?
            && !matches!(
                task.state,
                TaskState::Queued | TaskState::Executing | TaskState::Cancelling
            )
        {
            app.ledger().end(&id);
        }
    }
    app.signals.dispatch.notify_one();
    Ok(())
}

/// A read failed: the running tasks are read again in a second.
fn catch_up_later(app: &App) {
    let app = app.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Err(error) = catch_up(&app).await {
            tracing::warn!("cannot read the running tasks again: {error:#}");
            catch_up_later(&app);
        }
    });
}

/// Whether a running task is another node's, which is alive: that node finishes it.
async fn runs_elsewhere(app: &App, task: &Task) -> bool {
    let Some(node) = task.server_node.as_deref() else {
        return false;
    };
    if node == app.config.node_name {
        return false;
    }
    match app.store.node(node).await {
        Ok(Some(record)) => !crate::nodes::is_offline(&record, &now()),
        _ => false,
    }
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
