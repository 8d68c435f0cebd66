//! Dynamic worker pools (issue 16): workers made on demand by a provider and destroyed when idle.
//!
//! The scaler's rules are pure (`muster_scheduler::scaler`); this module is their IO. It runs on
//! the dispatching node (`run`, one of the dispatcher's duties):
//! - the dispatcher counts, after each pass, the queued tasks that wait for each dynamic pool
//!   (`set_demand`) and asks here why they wait (`reason`);
//! - each round reads the pools and their instances (workers with `Dynamic`), asks the scaler for a
//!   plan, and carries it out: provision, drain, destroy;
//! - at start and every few minutes it reconciles the stored instances with the provider's list.
//!
//! Invariants:
//! - a worker's record (with the identity the server issued) is stored before its provider is
//!   asked: the stored intent. A crash between the two leaves a record that reconciliation
//!   resolves (adopting an instance listed under the worker's name, else forgetting it), never an
//!   instance nobody knows of (an instance listed that no record names is destroyed);
//! - a destroyed instance's record is marked `Destroying` before its provider is asked, and
//!   deleted only once the provider answered: a failed destroy is retried, never forgotten;
//! - a worker's use is counted in its record before its task is claimed (`count_uses`), so a
//!   `MaxUseCount` of 1 holds across a crash;
//! - every write of a dynamic worker's record holds its machine's health lock, as the API and the
//!   health checks do, so none writes back over another's change.

pub mod providers;

use crate::audit as events;
use crate::config::WorkerType;
use crate::state::App;
use muster_core::IdKind;
use muster_core::resources::{
    DynamicState, DynamicWorker, Endpoint, MachinePolicy, TentacleEndpoint, Worker, WorkerPool,
};
use muster_core::time::{Timestamp, now};
use muster_core::{HealthStatus, MachineStatus, WorkerPoolType};
use muster_scheduler::scaler::{self, Attempt, Instance, InstanceState};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;

/// How often the stored instances are reconciled with the providers' lists.
const RECONCILE_EVERY: Duration = Duration::from_secs(180);
/// A round at least this often while there are dynamic pools: the time-based rules (idle
/// timeout, provisioning timeout, back-off) need no event to be noticed. Scaling up needs none:
/// a dispatch pass that finds more demand wakes the scaler at once.
const ROUND_EVERY: Duration = Duration::from_secs(1);
/// The longest a provider's `list` may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a ready instance's agent may be away before the instance is replaced.
const LOST_AFTER: Duration = Duration::from_secs(30);
/// Attempts a failed destroy is tried again before it is reported (reconciliation tries on).
const DESTROY_ATTEMPTS: u32 = 3;
/// The finished provisioning attempts kept per pool, for the back-off and the queue reason.
const HISTORY: usize = 10;
/// Who the events of the scaler name as their author.
const AUTHOR: &str = "dynamic pool scaler";

/// What the dispatcher and the scaler tell each other.
#[derive(Default)]
pub struct Dynamic {
    /// The queued tasks that wait for each dynamic pool, after the last dispatch pass.
    demand: Mutex<HashMap<String, usize>>,
    /// Why each pool's tasks wait, from the scaler's last plan.
    waiting: Mutex<HashMap<String, String>>,
    /// Asks the scaler for a round now.
    pub wake: tokio::sync::Notify,
    /// Held by each dispatch pass: the scaler reads the demand and the ledger between passes, so
    /// a task a pass has started is never both a worker's load and still demand.
    pub pass: tokio::sync::Mutex<()>,
}

impl Dynamic {
    /// The dispatcher's count after a pass; wakes the scaler when it changed.
    pub fn set_demand(&self, demand: HashMap<String, usize>) {
        let mut current = self.demand.lock().expect("dynamic lock");
        if *current != demand {
            *current = demand;
            self.wake.notify_one();
        }
    }

    /// Why a dynamic pool's tasks wait, in words, for the queue reason.
    pub fn reason(&self, pool: &WorkerPool, worker_type: &WorkerType) -> String {
        self.waiting
            .lock()
            .expect("dynamic lock")
            .get(&pool.id)
            .cloned()
            .unwrap_or_else(|| {
                format!(
                    "waiting for a worker of type {} (pool '{}' is dynamic)",
                    worker_type.id, pool.name
                )
            })
    }
}

/// The configured type a dynamic pool names, if any.
pub fn type_of<'a>(app: &'a App, pool: &WorkerPool) -> Option<&'a WorkerType> {
    let named = pool.worker_type.as_deref()?;
    app.config
        .worker_types
        .iter()
        .find(|t| t.id.eq_ignore_ascii_case(named))
}

/// Whether a dynamic worker may take one more task now, running `load` tasks: its agent is
/// connected (the caller checks), it is neither draining nor too old, and its `TasksPerWorker` and
/// `MaxUseCount` leave room.
pub fn has_room(worker: &Worker, limits: &scaler::WorkerTypeLimits, load: usize) -> bool {
    let Some(dynamic) = &worker.dynamic else {
        return false;
    };
    if worker.is_disabled
        || matches!(
            dynamic.state,
            DynamicState::Draining | DynamicState::Destroying
        )
    {
        return false;
    }
    if dynamic
        .provisioned_on
        .is_some_and(|at| since(at, now()) >= limits.max_lifetime)
    {
        return false;
    }
    // `uses` counts the running tasks once their use is written; the ledger counts them from
    // their decision: the finished ones are the difference.
    let finished = (dynamic.uses as usize).saturating_sub(load);
    let mut limit = limits.tasks_per_worker.max(1);
    if let Some(max) = limits.max_use_count {
        limit = limit.min((max as usize).saturating_sub(finished));
    }
    load < limit
}

/// Counts a use of each dynamic worker a starting task leases, before the task is claimed; the
/// workers that may not take it (being destroyed, or gone) are answered. A destroy decided before
/// the task's lease was counted wins: the task stays queued and takes another worker.
pub async fn count_uses(
    app: &App,
    worker_ids: &[(String, String)],
) -> anyhow::Result<HashSet<String>> {
    let mut refused = HashSet::new();
    for (space_id, worker_id) in worker_ids {
        let taken = change(app, space_id, worker_id, |d| {
            if d.state == DynamicState::Destroying {
                return false;
            }
            d.uses += 1;
            if d.state == DynamicState::Ready || d.state == DynamicState::Provisioning {
                d.state = DynamicState::Busy;
            }
            true
        })
        .await?;
        if taken != Some(true) {
            refused.insert(worker_id.clone());
        }
    }
    Ok(refused)
}

/// Rewrites a dynamic worker's `Dynamic` under its machine's health lock, and answers what the
/// edit answered; None if the worker is gone.
async fn change<R>(
    app: &App,
    space_id: &str,
    worker_id: &str,
    edit: impl FnOnce(&mut DynamicWorker) -> R,
) -> anyhow::Result<Option<R>> {
    let Some(worker) = app.store.get::<Worker>(worker_id).await? else {
        return Ok(None);
    };
    let key = worker.machine_key().unwrap_or_default().to_string();
    let lock = app.comms.health_lock(&key);
    let _held = lock.lock().await;
    let Some(mut worker) = app.store.get::<Worker>(worker_id).await? else {
        return Ok(None);
    };
    if worker.space_id != space_id {
        return Ok(None);
    }
    let Some(dynamic) = worker.dynamic.as_mut() else {
        return Ok(None);
    };
    let before = dynamic.clone();
    let answer = edit(dynamic);
    if *dynamic != before {
        app.store.put(&worker).await?;
    }
    Ok(Some(answer))
}

fn since(earlier: Timestamp, later: Timestamp) -> Duration {
    (later - earlier).to_std().unwrap_or_default()
}

/// A time as the scaler counts it: since the Unix epoch.
fn clock(at: Timestamp) -> Duration {
    Duration::from_millis(at.timestamp_millis().max(0) as u64)
}

/// What a provisioning or destroying job reports to the scaler's loop.
enum Report {
    /// A finished provisioning attempt; `job`: the worker type of the job that ended (None: a
    /// timeout the scaler itself noticed).
    Attempt {
        pool: String,
        job: Option<Job>,
        failure: Option<String>,
    },
    Destroyed {
        worker: String,
    },
    /// Its provider says a provisioning instance will never link (a pod whose image cannot be
    /// pulled): the attempt failed, and the worker goes.
    Broken {
        pool: String,
        worker: String,
        why: String,
    },
}

/// A provisioning job: its worker type and worker.
struct Job {
    worker_type: String,
    worker: String,
}

/// The scaler's own memory, between rounds.
#[derive(Default)]
struct Scaler {
    /// Finished provisioning attempts per pool, oldest first.
    history: HashMap<String, Vec<Attempt>>,
    /// Provisioning jobs running, per worker type.
    provisioning: HashMap<String, usize>,
    /// The workers whose provider has not answered yet: the job's own timeout bounds them.
    asking: HashSet<String>,
    /// The workers whose provisioning failed, until their record is gone.
    failed: HashSet<String>,
    /// Workers being destroyed now.
    destroying: HashSet<String>,
    /// When each instance was last seen busy (or became ready).
    idle_since: HashMap<String, Duration>,
    /// Since when each ready instance's agent has not been connected.
    disconnected_since: HashMap<String, Duration>,
    /// When each worker type was last reconciled.
    reconciled: HashMap<String, std::time::Instant>,
    /// When each provisioning instance's state was last asked of its provider.
    checked: HashMap<String, std::time::Instant>,
    /// Provisioning instances their provider says will never link, with why.
    broken: HashMap<String, String>,
}

/// How often a provisioning instance's state is asked of its provider.
const CHECK_EVERY: Duration = Duration::from_secs(3);

/// The scaler's loop: a duty of the dispatching node.
pub async fn run(app: App) {
    if app.config.worker_types.is_empty() {
        return;
    }
    let (reports, mut reported) = mpsc::unbounded_channel();
    let mut scaler = Scaler::default();
    loop {
        if let Err(error) = round(&app, &mut scaler, &reports, &mut reported).await {
            tracing::warn!("the dynamic pools' scaler: {error:#}");
        }
        tokio::select! {
            () = app.dynamic.wake.notified() => {}
            report = reported.recv() => {
                if let Some(report) = report {
                    heard(&mut scaler, report);
                    while let Ok(report) = reported.try_recv() {
                        heard(&mut scaler, report);
                    }
                }
            }
            () = tokio::time::sleep(ROUND_EVERY) => {}
        }
    }
}

fn heard(scaler: &mut Scaler, report: Report) {
    let at = clock(now());
    match report {
        Report::Attempt { pool, job, failure } => {
            if let Some(job) = &job {
                scaler.asking.remove(&job.worker);
                if failure.is_some() {
                    scaler.failed.insert(job.worker.clone());
                }
                if let Some(n) = scaler.provisioning.get_mut(&job.worker_type) {
                    *n = n.saturating_sub(1);
                }
            }
            // A provider's answer is not yet a success: the attempt succeeds when the worker's
            // agent links (see `round`), and fails if it does not within the ProvisionTimeout.
            if job.is_some() && failure.is_none() {
                return;
            }
            let history = scaler.history.entry(pool).or_default();
            history.push(Attempt { at, failure });
            if history.len() > HISTORY {
                history.remove(0);
            }
        }
        Report::Broken { pool, worker, why } => {
            if scaler.broken.insert(worker, why.clone()).is_none() {
                let history = scaler.history.entry(pool).or_default();
                history.push(Attempt {
                    at,
                    failure: Some(why),
                });
                if history.len() > HISTORY {
                    history.remove(0);
                }
            }
        }
        Report::Destroyed { worker } => {
            scaler.destroying.remove(&worker);
            scaler.checked.remove(&worker);
            scaler.broken.remove(&worker);
            scaler.idle_since.remove(&worker);
            scaler.disconnected_since.remove(&worker);
        }
    }
}

/// The dynamic pools of every space, and their workers by pool.
async fn read(app: &App) -> anyhow::Result<(Vec<WorkerPool>, Vec<Worker>)> {
    let pools: Vec<WorkerPool> = app
        .store
        .list_all::<WorkerPool>()
        .await?
        .into_iter()
        .filter(|p| p.worker_pool_type == WorkerPoolType::DynamicWorkerPool)
        .collect();
    let workers: Vec<Worker> = app
        .store
        .list_all::<Worker>()
        .await?
        .into_iter()
        .filter(|w| w.dynamic.is_some())
        .collect();
    Ok((pools, workers))
}

async fn round(
    app: &App,
    scaler: &mut Scaler,
    reports: &mpsc::UnboundedSender<Report>,
    reported: &mut mpsc::UnboundedReceiver<Report>,
) -> anyhow::Result<()> {
    // Each type in turn, once no provisioning of it is in flight (a record mid-provisioning has
    // no instance id yet, and its instance would look like an orphan).
    let due: Vec<WorkerType> = app
        .config
        .worker_types
        .iter()
        .filter(|t| {
            scaler
                .reconciled
                .get(&t.id)
                .is_none_or(|at| at.elapsed() >= RECONCILE_EVERY)
                && scaler.provisioning.get(&t.id).copied().unwrap_or(0) == 0
        })
        .cloned()
        .collect();
    if !due.is_empty() {
        reconcile(app, scaler, reports, &due).await?;
        for t in &due {
            scaler
                .reconciled
                .insert(t.id.clone(), std::time::Instant::now());
        }
    }
    let (pools, workers) = read(app).await?;
    // A job reports before it deletes a failed worker's record: heard after the read, a failure
    // is either in the history or its record still in `workers`, never neither.
    while let Ok(report) = reported.try_recv() {
        heard(scaler, report);
    }
    scaler
        .failed
        .retain(|id| workers.iter().any(|w| &w.id == id));
    scaler
        .checked
        .retain(|id, _| workers.iter().any(|w| &w.id == id));
    let at = now();
    let clock_now = clock(at);
    let (demand, loads) = {
        let _between_passes = app.dynamic.pass.lock().await;
        let demand = app.dynamic.demand.lock().expect("dynamic lock").clone();
        let ledger = app.ledger();
        let loads: HashMap<String, usize> = workers
            .iter()
            .map(|w| (w.id.clone(), ledger.worker_load(&w.id)))
            .collect();
        (demand, loads)
    };
    let mut waiting = HashMap::new();
    // The instances of each type that exist, in every pool and state.
    let mut exist: HashMap<String, usize> = HashMap::new();
    for worker in &workers {
        let dynamic = worker.dynamic.as_ref().expect("filtered");
        *exist
            .entry(dynamic.worker_type.to_ascii_lowercase())
            .or_default() += 1;
    }
    let mut by_pool: HashMap<&str, Vec<&Worker>> = HashMap::new();
    for worker in &workers {
        let dynamic = worker.dynamic.as_ref().expect("filtered");
        if dynamic.state == DynamicState::Destroying {
            // Its destroy failed before: reconciliation tries again.
            continue;
        }
        let pool = worker
            .worker_pool_ids
            .first()
            .and_then(|id| pools.iter().find(|p| &p.id == id));
        // A worker whose pool was deleted, or now names another type, goes once idle.
        let current = pool.is_some_and(|p| {
            type_of(app, p).is_some_and(|t| t.id.eq_ignore_ascii_case(&dynamic.worker_type))
        });
        if !current {
            if loads[&worker.id] == 0 {
                retire(
                    app,
                    scaler,
                    reports,
                    worker,
                    "its pool was deleted or changed its worker type",
                );
            }
            continue;
        }
        by_pool
            .entry(pool.expect("current").id.as_str())
            .or_default()
            .push(worker);
    }
    for pool in &pools {
        let Some(worker_type) = type_of(app, pool) else {
            continue;
        };
        let mine = by_pool.remove(pool.id.as_str()).unwrap_or_default();
        let mut instances = Vec::new();
        for worker in &mine {
            let dynamic = worker.dynamic.as_ref().expect("filtered");
            let load = loads[&worker.id];
            if scaler.destroying.contains(&worker.id) || scaler.failed.contains(&worker.id) {
                continue;
            }
            if let Some(why) = scaler.broken.get(&worker.id).cloned() {
                if load == 0 {
                    retire(app, scaler, reports, worker, &why);
                }
                continue;
            }
            // A worker its health check found Unavailable takes no task (the dispatcher skips it),
            // so it gives no room either: it is replaced like one whose agent went away.
            let connected = worker
                .thumbprint
                .as_deref()
                .is_some_and(|t| app.comms.reachable(t))
                && worker.health_status != HealthStatus::Unavailable;
            // An instance whose agent went away (it crashed, or was deleted under us) is replaced
            // once idle; a short absence (the server restarted) is not.
            if dynamic.ready_on.is_some() && !connected {
                let gone = *scaler
                    .disconnected_since
                    .entry(worker.id.clone())
                    .or_insert(clock_now);
                if clock_now.saturating_sub(gone) >= LOST_AFTER && load == 0 {
                    retire(
                        app,
                        scaler,
                        reports,
                        worker,
                        &format!(
                            "its agent has not been connected (or has been Unavailable) for {}",
                            providers::span(LOST_AFTER)
                        ),
                    );
                    continue;
                }
            } else {
                scaler.disconnected_since.remove(&worker.id);
            }
            let state = if worker.is_disabled || dynamic.state == DynamicState::Draining {
                InstanceState::Draining
            } else if dynamic.ready_on.is_none() && !connected {
                InstanceState::Provisioning
            } else {
                InstanceState::Ready
            };
            // While its provider is being asked, the job's timeout is the one that counts.
            let created_at = match scaler.asking.contains(&worker.id) {
                true => clock_now,
                false => dynamic.provisioned_on.map_or(clock_now, clock),
            };
            if load > 0 || !scaler.idle_since.contains_key(&worker.id) {
                scaler.idle_since.insert(worker.id.clone(), clock_now);
            }
            instances.push(Instance {
                id: worker.id.clone(),
                state,
                busy_tasks: load,
                uses: dynamic.uses,
                created_at,
                idle_since: scaler.idle_since[&worker.id],
            });
            if state == InstanceState::Provisioning {
                check(scaler, reports, pool, worker_type, worker);
            }
            // What the worker list shows follows what the scaler sees.
            let shown = match (state, load) {
                (InstanceState::Provisioning, _) => DynamicState::Provisioning,
                (InstanceState::Draining, _) => DynamicState::Draining,
                (InstanceState::Ready, 0) => DynamicState::Ready,
                (InstanceState::Ready, _) => DynamicState::Busy,
            };
            if connected && dynamic.ready_on.is_none() {
                let history = scaler.history.entry(pool.id.clone()).or_default();
                history.push(Attempt {
                    at: clock_now,
                    failure: None,
                });
                if history.len() > HISTORY {
                    history.remove(0);
                }
            }
            if shown != dynamic.state || (connected && dynamic.ready_on.is_none()) {
                change(app, &worker.space_id, &worker.id, |d| {
                    if d.state != DynamicState::Destroying {
                        d.state = shown;
                    }
                    if connected && d.ready_on.is_none() {
                        d.ready_on = Some(at);
                    }
                })
                .await?;
            }
        }
        let history = scaler.history.get(&pool.id).cloned().unwrap_or_default();
        let queued = demand.get(&pool.id).copied().unwrap_or(0);
        let mut plan = scaler::scale(clock_now, &worker_type.limits, queued, &instances, &history);
        // MaxWorkers is the type's, over all its pools, and every instance that exists counts
        // until it is gone, those being destroyed too (a cloud's quota counts them).
        let exists = exist
            .entry(worker_type.id.to_ascii_lowercase())
            .or_default();
        let room = worker_type.limits.max_workers.saturating_sub(*exists);
        if plan.provision > room {
            plan.provision = room;
            if room == 0
                && !instances
                    .iter()
                    .any(|i| i.state == InstanceState::Provisioning)
            {
                plan.waiting = Some(scaler::Waiting::AtMaxWorkers {
                    max_workers: worker_type.limits.max_workers,
                });
            }
        }
        *exists += plan.provision;
        for (id, why) in &plan.destroy {
            let Some(worker) = mine.iter().find(|w| &w.id == id) else {
                continue;
            };
            if *why == scaler::Retire::ProvisionTimedOut && !scaler.destroying.contains(id) {
                let _ = reports.send(Report::Attempt {
                    pool: pool.id.clone(),
                    job: None,
                    failure: Some(scaler::PROVISION_TIMED_OUT.to_string()),
                });
            }
            retire(app, scaler, reports, worker, &why.to_string());
        }
        for id in &plan.drain {
            if let Some(worker) = mine.iter().find(|w| &w.id == id) {
                change(app, &worker.space_id, &worker.id, |d| {
                    d.state = DynamicState::Draining;
                })
                .await?;
                events::record(
                    app,
                    None,
                    Some(&pool.space_id),
                    events::MODIFIED,
                    format!(
                        "Dynamic worker '{}' of pool '{}' is draining: past its MaxLifetime",
                        worker.name, pool.name
                    ),
                    vec![worker.id.clone(), pool.id.clone()],
                )
                .await;
            }
        }
        // Each record is stored here, before the next round: the plan counts it from then on.
        for _ in 0..plan.provision {
            let (worker, env) = match intend(app, pool, worker_type).await {
                Ok(intent) => intent,
                Err(why) => {
                    let _ = reports.send(Report::Attempt {
                        pool: pool.id.clone(),
                        job: None,
                        failure: Some(why),
                    });
                    break;
                }
            };
            *scaler
                .provisioning
                .entry(worker_type.id.clone())
                .or_default() += 1;
            scaler.asking.insert(worker.id.clone());
            tokio::spawn(provide(
                app.clone(),
                pool.clone(),
                worker_type.clone(),
                worker,
                env,
                reports.clone(),
            ));
        }
        if let Some(why) = &plan.waiting {
            waiting.insert(pool.id.clone(), why.describe(&worker_type.id));
        }
    }
    let changed = {
        let mut current = app.dynamic.waiting.lock().expect("dynamic lock");
        let changed = *current != waiting;
        *current = waiting;
        changed
    };
    if changed {
        app.signals.dispatch.notify_one();
    }
    Ok(())
}

/// Asks the provider, off the round and now and then, whether a provisioning instance is broken.
fn check(
    scaler: &mut Scaler,
    reports: &mpsc::UnboundedSender<Report>,
    pool: &WorkerPool,
    worker_type: &WorkerType,
    worker: &Worker,
) {
    let Some(instance) = worker.dynamic.as_ref().and_then(|d| d.instance_id.clone()) else {
        return;
    };
    if scaler.asking.contains(&worker.id)
        || !matches!(
            worker_type.provider,
            crate::config::Provider::Kubernetes { .. }
        )
        || scaler
            .checked
            .get(&worker.id)
            .is_some_and(|at| at.elapsed() < CHECK_EVERY)
    {
        return;
    }
    scaler
        .checked
        .insert(worker.id.clone(), std::time::Instant::now());
    let (provider, reports, pool, id) = (
        worker_type.provider.clone(),
        reports.clone(),
        pool.id.clone(),
        worker.id.clone(),
    );
    tokio::spawn(async move {
        if let Some(why) = providers::failure(&provider, &instance, CHECK_EVERY).await {
            let _ = reports.send(Report::Broken {
                pool,
                worker: id,
                why,
            });
        }
    });
}

/// Starts destroying a worker (once).
fn retire(
    app: &App,
    scaler: &mut Scaler,
    reports: &mpsc::UnboundedSender<Report>,
    worker: &Worker,
    why: &str,
) {
    if !scaler.destroying.insert(worker.id.clone()) {
        return;
    }
    tokio::spawn(destroy_one(
        app.clone(),
        worker.clone(),
        why.to_string(),
        reports.clone(),
    ));
}

/// The comms addresses an instance dials: this node's, then the other online nodes'.
fn comms_addresses(app: &App) -> String {
    let mut addresses = vec![app.config.comms_address.clone()];
    let at = now();
    for node in app.members.lock().expect("members lock").iter() {
        if let Some(address) = node.comms_address.as_ref().filter(|a| !a.is_empty())
            && node.name != app.config.node_name
            && !crate::nodes::is_offline(node, &at)
            && !addresses.contains(address)
        {
            addresses.push(address.clone());
        }
    }
    addresses.join(",")
}

/// A random lower-case id of `n` letters and digits.
fn random_id(n: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// Where `worker_type`'s provider works for this server.
fn site(app: &App, worker_type: &WorkerType) -> providers::Site {
    providers::Site {
        root: app.config.dynamic_dir.clone(),
        worker_type: worker_type.id.clone(),
        // Octopus's form (40 characters), which fits a label value.
        server: muster_proto::thumbprint_sha1(&app.certificate.cert_der),
    }
}

/// The environment an instance is given: its identity and where the server is.
type Env = Vec<(&'static str, String)>;

/// Stores a new worker's record, with the identity the server issues for it: the stored intent.
async fn intend(
    app: &App,
    pool: &WorkerPool,
    worker_type: &WorkerType,
) -> Result<(Worker, Env), String> {
    let name = format!(
        "{}-{}",
        muster_core::ids::slugify(&worker_type.id),
        random_id(8)
    );
    let identity = muster_proto::Identity::generate(&name)
        .map_err(|e| format!("cannot issue a certificate: {e}"))?;
    let subscription = format!("poll://{}/", random_id(20));
    let policy = app
        .store
        .list::<MachinePolicy>(&pool.space_id)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|p| p.is_default)
        .map(|p| p.id);
    let at = now();
    let thumbprint = identity.thumbprint();
    let mut worker = Worker {
        space_id: pool.space_id.clone(),
        name: name.clone(),
        slug: Some(name.clone()),
        worker_pool_ids: vec![pool.id.clone()],
        machine_policy_id: policy,
        endpoint: Some(Endpoint::TentacleActive(TentacleEndpoint {
            uri: subscription.clone(),
            thumbprint: thumbprint.clone(),
            ..Default::default()
        })),
        thumbprint: Some(thumbprint),
        uri: Some(subscription.clone()),
        health_status: HealthStatus::Unknown,
        status: MachineStatus::Unknown,
        status_summary: "Being provisioned by its pool's provider.".into(),
        has_latest_calamari: true,
        skip_initial_health_check: true,
        created_on: Some(at),
        last_modified_on: Some(at),
        last_modified_by: Some(AUTHOR.into()),
        dynamic: Some(DynamicWorker {
            worker_type: worker_type.id.clone(),
            provider: worker_type.provider.name().into(),
            instance_id: None,
            state: DynamicState::Provisioning,
            uses: 0,
            node: app.config.node_name.clone(),
            provisioned_on: Some(at),
            ready_on: None,
        }),
        ..Default::default()
    };
    worker.id = app
        .store
        .next_id(IdKind::Worker)
        .await
        .map_err(|e| e.to_string())?;
    app.store.put(&worker).await.map_err(|e| e.to_string())?;
    let env = vec![
        (
            muster_proto::instance::CERTIFICATE,
            identity.cert_pem.clone(),
        ),
        (muster_proto::instance::KEY, identity.key_pem().to_string()),
        (
            muster_proto::instance::SERVER_THUMBPRINT,
            app.certificate.thumbprint(),
        ),
        (muster_proto::instance::SUBSCRIPTION, subscription),
        (
            muster_proto::instance::COMMS_ADDRESSES,
            comms_addresses(app),
        ),
        (muster_proto::instance::WORKER_NAME, name),
    ];
    Ok((worker, env))
}

/// `text` with the lines of the identity's certificate and key replaced by a mask.
fn mask(text: &str, env: &Env) -> String {
    let mut masked = text.to_string();
    for (name, value) in env {
        if *name != muster_proto::instance::KEY && *name != muster_proto::instance::CERTIFICATE {
            continue;
        }
        for line in value.lines().map(str::trim) {
            if line.len() >= 16 && !line.starts_with("-----") {
                masked = masked.replace(line, "********");
            }
        }
    }
    masked
}

/// Asks the provider for the instance of a stored worker, and records its answer.
async fn provide(
    app: App,
    pool: WorkerPool,
    worker_type: WorkerType,
    worker: Worker,
    env: Env,
    reports: mpsc::UnboundedSender<Report>,
) {
    let report = |failure: Option<String>| Report::Attempt {
        pool: pool.id.clone(),
        job: Some(Job {
            worker_type: worker_type.id.clone(),
            worker: worker.id.clone(),
        }),
        failure,
    };
    match provide_one(&app, &pool, &worker_type, &worker, &env).await {
        Ok(()) => {
            let _ = reports.send(report(None));
        }
        Err((why, output)) => {
            // Reported before the record goes (see `round`).
            let _ = reports.send(report(Some(why.clone())));
            // A create that failed late (or printed no id) may have made something: its destroy
            // is asked for the worker's name, the instance id the README recommends.
            let cleanup = match &worker_type.provider {
                crate::config::Provider::Command { .. } => {
                    let undone = providers::destroy(
                        &worker_type.provider,
                        &site(&app, &worker_type),
                        &worker.name,
                        worker_type.limits.provision_timeout,
                    )
                    .await;
                    match undone.result {
                        Ok(()) => format!(
                            "\nThe destroy command was run for instance {} in case the create made it.",
                            worker.name
                        ),
                        Err(error) => format!(
                            "\nThe destroy command, run for instance {} in case the create made it, failed: {error}",
                            worker.name
                        ),
                    }
                }
                _ => String::new(),
            };
            let _ = app.store.delete::<Worker>(&worker.id).await;
            log(
                &app,
                &pool,
                &worker,
                FAILED,
                format!(
                    "Provisioning dynamic worker '{}' of pool '{}' failed: {why}{output}{cleanup}",
                    worker.name, pool.name
                ),
            )
            .await;
        }
    }
    app.dynamic.wake.notify_one();
}

async fn provide_one(
    app: &App,
    pool: &WorkerPool,
    worker_type: &WorkerType,
    worker: &Worker,
    env: &Env,
) -> Result<(), (String, String)> {
    let name = &worker.name;
    let site = site(app, worker_type);
    let made = providers::provision(
        &worker_type.provider,
        &site,
        name,
        env,
        worker_type.limits.provision_timeout,
    )
    .await;
    // A command that echoes its environment (set -x, a tool printing its variables) must not put
    // the worker's key in the log, which everyone who reads the space's events sees.
    let output = match mask(&made.output, env) {
        output if output.is_empty() => String::new(),
        output => format!("\n{output}"),
    };
    let made_result = made.result.map_err(|why| mask(&why, env));
    match made_result {
        Ok(instance_id) => {
            // A worker being destroyed meanwhile (its pool went) does not take the instance: the
            // destroy read no instance id, so the instance is destroyed here.
            let recorded = change(app, &pool.space_id, &worker.id, |d| {
                if d.state == DynamicState::Destroying {
                    return false;
                }
                d.instance_id = Some(instance_id.clone());
                true
            })
            .await
            .is_ok_and(|taken| taken == Some(true));
            log(
                app,
                pool,
                worker,
                events::CREATED,
                format!(
                    "Dynamic worker '{name}' of pool '{}' provisioned by the {} provider (instance {instance_id}){output}",
                    pool.name,
                    worker_type.provider.name()
                ),
            )
            .await;
            if !recorded {
                // Deleted meanwhile (its pool went): the instance must not outlive it.
                let _ = providers::destroy(
                    &worker_type.provider,
                    &site,
                    &instance_id,
                    worker_type.limits.provision_timeout,
                )
                .await;
            }
            app.signals.dispatch.notify_one();
            Ok(())
        }
        Err(why) => Err((why, output)),
    }
}

/// What the log names as a worker's pool once the pool is gone.
fn deleted_pool(worker: &Worker) -> WorkerPool {
    WorkerPool {
        id: worker.worker_pool_ids.first().cloned().unwrap_or_default(),
        space_id: worker.space_id.clone(),
        name: "(deleted)".into(),
        ..Default::default()
    }
}

/// The event category of a failed provisioning or destroy.
const FAILED: &str = events::DYNAMIC_WORKER_FAILED;

/// Writes a line of the pool's provisioning log: an event about the worker and its pool.
async fn log(app: &App, pool: &WorkerPool, worker: &Worker, category: &str, message: String) {
    tracing::info!(pool = %pool.id, worker = %worker.name, "{message}");
    events::record(
        app,
        None,
        Some(&pool.space_id),
        category,
        message,
        vec![worker.id.clone(), pool.id.clone()],
    )
    .await;
}

async fn destroy_one(
    app: App,
    worker: Worker,
    why: String,
    reports: mpsc::UnboundedSender<Report>,
) {
    if let Err(error) = destroy(&app, &worker, &why).await {
        tracing::warn!(worker = %worker.name, "cannot destroy a dynamic worker: {error:#}");
    }
    let _ = reports.send(Report::Destroyed {
        worker: worker.id.clone(),
    });
    app.dynamic.wake.notify_one();
}

/// Marks the worker Destroying, asks its provider to destroy its instance (a few times), and
/// forgets the worker once that succeeded.
async fn destroy(app: &App, worker: &Worker, why: &str) -> anyhow::Result<()> {
    // Under the health lock, as `count_uses` counts a use: a task whose lease was counted first
    // keeps the worker (it is looked at again once idle); one counted after finds it Destroying.
    let id = worker.id.clone();
    let marked = change(app, &worker.space_id, &worker.id, |d| {
        if app.ledger().worker_load(&id) > 0 {
            return false;
        }
        d.state = DynamicState::Destroying;
        true
    })
    .await?;
    if marked != Some(true) {
        return Ok(());
    }
    app.signals.dispatch.notify_one();
    let dynamic = worker.dynamic.clone().unwrap_or_default();
    let pool = match worker.worker_pool_ids.first() {
        Some(id) => app.store.get::<WorkerPool>(id).await?,
        None => None,
    }
    .unwrap_or_else(|| deleted_pool(worker));
    let provider = app
        .config
        .worker_types
        .iter()
        .find(|t| t.id.eq_ignore_ascii_case(&dynamic.worker_type));
    // Re-read: the provider's answer may have come after the caller's copy.
    let instance_id = app
        .store
        .get::<Worker>(&worker.id)
        .await?
        .and_then(|w| w.dynamic)
        .and_then(|d| d.instance_id);
    let Some(worker_type) = provider else {
        // Its type left the configuration: nothing here can destroy the instance, so the record
        // stays (Destroying) for the type's return, and the log says so.
        if instance_id.is_some() {
            log(
                app,
                &pool,
                worker,
                FAILED,
                format!(
                    "Dynamic worker '{}' cannot be destroyed: its worker type '{}' is no longer in the configuration file; its instance {} remains",
                    worker.name,
                    dynamic.worker_type,
                    instance_id.as_deref().unwrap_or_default()
                ),
            )
            .await;
            return Ok(());
        }
        app.store.delete::<Worker>(&worker.id).await?;
        return Ok(());
    };
    // A process instance lives on the machine of the node that made it: only that node can stop
    // it. Another node forgets the record; the instance, named by no record, is destroyed when its
    // node reconciles.
    let elsewhere = matches!(
        worker_type.provider,
        crate::config::Provider::Process { .. }
    ) && !dynamic.node.is_empty()
        && dynamic.node != app.config.node_name;
    if let (Some(instance_id), false) = (&instance_id, elsewhere) {
        let mut last = String::new();
        let mut done = false;
        for attempt in 1..=DESTROY_ATTEMPTS {
            let outcome = providers::destroy(
                &worker_type.provider,
                &site(app, worker_type),
                instance_id,
                worker_type.limits.provision_timeout,
            )
            .await;
            match outcome.result {
                Ok(()) => {
                    done = true;
                    break;
                }
                Err(error) => {
                    last = match outcome.output.as_str() {
                        "" => error,
                        output => format!("{error}\n{output}"),
                    };
                    if attempt < DESTROY_ATTEMPTS {
                        tokio::time::sleep(Duration::from_secs(2 * u64::from(attempt))).await;
                    }
                }
            }
        }
        if !done {
            log(
                app,
                &pool,
                worker,
                FAILED,
                format!(
                    "Destroying dynamic worker '{}' (instance {instance_id}) failed {DESTROY_ATTEMPTS} times; it is tried again at the next reconciliation: {last}",
                    worker.name
                ),
            )
            .await;
            return Ok(());
        }
    }
    app.comms
        .close(worker.thumbprint.as_deref().unwrap_or_default());
    app.store.delete::<Worker>(&worker.id).await?;
    log(
        app,
        &pool,
        worker,
        events::DELETED,
        format!(
            "Dynamic worker '{}' of pool '{}' destroyed: {why}",
            worker.name, pool.name
        ),
    )
    .await;
    Ok(())
}

/// Brings the stored instances and the providers' lists together, type by type: an instance
/// listed that no worker names is an orphan (a crash between the provider's answer and its
/// record, or a failed destroy) and is destroyed; a worker whose instance is not listed is gone
/// and forgotten; a record whose provisioning never finished is resolved. A type with
/// provisioning in flight is left for the next time.
async fn reconcile(
    app: &App,
    scaler: &mut Scaler,
    reports: &mpsc::UnboundedSender<Report>,
    types: &[WorkerType],
) -> anyhow::Result<()> {
    let (pools, workers) = read(app).await?;
    for worker_type in types {
        // A process instance lives on its node's machine: each node lists and reconciles its own.
        let process = matches!(
            worker_type.provider,
            crate::config::Provider::Process { .. }
        );
        let stored: Vec<&Worker> = workers
            .iter()
            .filter(|w| {
                w.dynamic.as_ref().is_some_and(|d| {
                    d.worker_type.eq_ignore_ascii_case(&worker_type.id)
                        && (!process || d.node.is_empty() || d.node == app.config.node_name)
                }) && !scaler.destroying.contains(&w.id)
            })
            .collect();
        let pool_of = |w: &Worker| {
            w.worker_pool_ids
                .first()
                .and_then(|id| pools.iter().find(|p| &p.id == id))
                .cloned()
                .unwrap_or_else(|| deleted_pool(w))
        };
        // The round waits for the list: a hung command holds scaling for at most LIST_TIMEOUT.
        let listed = match providers::list(
            &worker_type.provider,
            &site(app, worker_type),
            worker_type.limits.provision_timeout.min(LIST_TIMEOUT),
        )
        .await
        {
            None => None,
            Some(outcome) => match outcome.result {
                Ok(ids) => Some(ids),
                Err(error) => {
                    tracing::warn!(
                        worker_type = %worker_type.id,
                        "cannot list the instances of a dynamic worker type: {error}"
                    );
                    continue;
                }
            },
        };
        for worker in &stored {
            let dynamic = worker.dynamic.as_ref().expect("filtered");
            let found = listed.as_ref().map(|ids| {
                ids.iter().find(|id| {
                    Some(id.as_str()) == dynamic.instance_id.as_deref() || **id == worker.name
                })
            });
            match (found, &dynamic.instance_id) {
                // Listed under its name, its provider's answer lost in a crash: adopted.
                (Some(Some(id)), None) => {
                    let id = id.clone();
                    change(app, &worker.space_id, &worker.id, |d| {
                        d.instance_id = Some(id)
                    })
                    .await?;
                }
                (Some(Some(_)), Some(_)) => {
                    if dynamic.state == DynamicState::Destroying {
                        retire(app, scaler, reports, worker, "its destroy is tried again");
                    }
                }
                // Not listed: gone (or never made). A list that lags or errs quietly must not
                // take a working worker away: one that runs a task or whose agent is connected
                // stays, and is looked at again next time.
                (Some(None), _) => {
                    let busy = app.ledger().worker_load(&worker.id) > 0;
                    let linked = worker
                        .thumbprint
                        .as_deref()
                        .is_some_and(|t| app.comms.reachable(t));
                    if busy || linked {
                        tracing::warn!(
                            worker = %worker.name,
                            "a dynamic worker's provider does not list its instance, but it is connected or busy; kept"
                        );
                        continue;
                    }
                    app.store.delete::<Worker>(&worker.id).await?;
                    log(
                        app,
                        &pool_of(worker),
                        worker,
                        events::DELETED,
                        format!(
                            "Dynamic worker '{}' is forgotten: its instance no longer exists at its provider",
                            worker.name
                        ),
                    )
                    .await;
                }
                // A provider that cannot list: a record without an instance is forgotten; a
                // failed destroy is tried again.
                (None, None) => {
                    app.store.delete::<Worker>(&worker.id).await?;
                    log(
                        app,
                        &pool_of(worker),
                        worker,
                        FAILED,
                        format!(
                            "Dynamic worker '{}' is forgotten: its provisioning never finished (the server stopped), and the {} provider cannot list instances, so one may be left behind",
                            worker.name,
                            worker_type.provider.name()
                        ),
                    )
                    .await;
                }
                (None, Some(_)) => {
                    if dynamic.state == DynamicState::Destroying {
                        retire(app, scaler, reports, worker, "its destroy is tried again");
                    }
                }
            }
        }
        let Some(listed) = listed else {
            continue;
        };
        for id in listed {
            let known = stored.iter().any(|w| {
                w.name == id
                    || w.dynamic
                        .as_ref()
                        .is_some_and(|d| d.instance_id.as_deref() == Some(id.as_str()))
            }) || workers.iter().any(|w| w.name == id);
            if known {
                continue;
            }
            // Off the round: an orphan's destroy may take as long as a provisioning.
            let (app, worker_type) = (app.clone(), worker_type.clone());
            tokio::spawn(async move {
                let outcome = providers::destroy(
                    &worker_type.provider,
                    &site(&app, &worker_type),
                    &id,
                    worker_type.limits.provision_timeout,
                )
                .await;
                let (category, message) = match outcome.result {
                    Ok(()) => (
                        events::DELETED,
                        format!(
                            "Orphan instance {id} of worker type {} (no worker names it) destroyed",
                            worker_type.id
                        ),
                    ),
                    Err(error) => (
                        FAILED,
                        format!(
                            "Orphan instance {id} of worker type {} (no worker names it) could not be destroyed: {error}",
                            worker_type.id
                        ),
                    ),
                };
                tracing::warn!("{message}");
                events::record(&app, None, None, category, message, vec![]).await;
            });
        }
    }
    Ok(())
}
