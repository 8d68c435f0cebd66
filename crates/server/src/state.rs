//! What every handler shares.

use crate::dispatch::Dispatcher;
use crate::logs::LogHub;
use anyhow::Context;
use muster_store::Store;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Config {
    /// `--task-cap`, when given: written to this node's record at start (None: the stored cap, or
    /// `nodes::DEFAULT_TASK_CAP` for a new node).
    pub task_cap: Option<usize>,
    pub builtin_worker: bool,
    pub node_name: String,
    /// Where the other nodes dial this node's comms port (`--node-comms-address`).
    pub comms_address: String,
    /// The dynamic worker types of the configuration file (`--config`).
    pub worker_types: Vec<crate::config::WorkerType>,
    /// Parent of the per-task working directories of the built-in worker.
    pub work_dir: PathBuf,
    /// The OS user the built-in worker's scripts run as (None: the server's own).
    pub builtin_run_as: Option<muster_exec::RunAs>,
    /// The most bytes of messages one task's log keeps.
    pub task_log_limit: u64,
    /// Where artifacts are kept (`<data-dir>/artifacts`).
    pub artifact_dir: PathBuf,
    /// The largest artifact, in bytes.
    pub artifact_max_bytes: u64,
    /// The most bytes of artifacts one task keeps.
    pub artifact_task_max_bytes: u64,
    /// Where the `process` provider keeps its dynamic workers' homes (`<data-dir>/dynamic`).
    pub dynamic_dir: PathBuf,
}

pub struct AppInner {
    pub store: Store,
    pub config: Config,
    pub installation_id: String,
    pub certificate: muster_proto::Identity,
    pub logs: LogHub,
    /// The files scripts announced, collected from their workers.
    pub artifacts: crate::artifacts::Artifacts,
    pub dispatcher: Dispatcher,
    /// The running tasks' worker leases and task-cap slots (the scheduler's pure rules). The
    /// dispatcher decides with it; a runbook run tells it which child it waits for.
    pub ledger: std::sync::Mutex<muster_scheduler::Ledger>,
    pub comms: crate::comms::Comms,
    /// The kept SSH connections of SSH workers, one per machine and account.
    pub ssh: crate::kinds::ssh::Sessions,
    /// Wakes the layers above from below: events flow up as signals, not calls.
    pub signals: Signals,
    /// Turns true when the server begins to shut down.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// This node's task cap and maintenance mode, as last read from its record in the store.
    pub node: NodeState,
    /// The records of every node of the database, as last read (at each heartbeat, and when an
    /// administrator changes one): where the dispatcher may place tasks.
    pub members: std::sync::Mutex<Vec<muster_store::Node>>,
    /// The nodes this dispatcher presumed dead, and when: no task is placed on one until it is
    /// seen after that (it restarted; a fenced node's heartbeat does not count).
    pub fenced: std::sync::Mutex<std::collections::HashMap<String, muster_core::time::Timestamp>>,
    /// The dynamic pools' demand and why their tasks wait, between the dispatcher and the scaler.
    pub dynamic: crate::dynamic::Dynamic,
    /// Failed API keys by address, to slow down guessing.
    pub key_failures: crate::key_failures::KeyFailures,
    /// The current minute's `LoginFailed` event of each address.
    pub failed_sign_ins: crate::api::events::FailedSignIns,
}

pub type App = Arc<AppInner>;

/// How a lower layer (a worker kind's link, health, the API's writes) tells a higher one that
/// something changed, without calling it. A wake given while nobody waits is kept, not lost.
#[derive(Default)]
pub struct Signals {
    /// Asks the dispatcher for a pass (a task created, a worker changed or freed, a link opened).
    pub dispatch: tokio::sync::Notify,
    /// Asks the health loop for a round now (a worker was added or changed, a link closed).
    pub health: tokio::sync::Notify,
}

impl AppInner {
    pub fn new(
        store: Store,
        config: Config,
        installation_id: String,
        certificate: muster_proto::Identity,
    ) -> App {
        let logs = LogHub::start(store.clone(), config.task_log_limit);
        let config_cap = config.task_cap.unwrap_or(crate::nodes::DEFAULT_TASK_CAP);
        let artifacts = crate::artifacts::Artifacts::new(
            config.artifact_dir.clone(),
            config.artifact_max_bytes,
            config.artifact_task_max_bytes,
        );
        Arc::new(AppInner {
            store,
            config,
            installation_id,
            certificate,
            logs,
            artifacts,
            dispatcher: Dispatcher::default(),
            ledger: Default::default(),
            comms: Default::default(),
            ssh: Default::default(),
            signals: Default::default(),
            shutdown: tokio::sync::watch::Sender::new(false),
            node: NodeState::new(config_cap),
            key_failures: Default::default(),
            failed_sign_ins: Default::default(),
            members: Default::default(),
            fenced: Default::default(),
            dynamic: Default::default(),
        })
    }
}

impl AppInner {
    pub fn ledger(&self) -> std::sync::MutexGuard<'_, muster_scheduler::Ledger> {
        self.ledger.lock().expect("ledger lock")
    }
}

/// This node's task cap and maintenance mode: its record in the store is the truth, copied here
/// at start, at each heartbeat and when an administrator writes it, so a dispatch pass reads them
/// without a query.
pub struct NodeState {
    cap: std::sync::atomic::AtomicUsize,
    maintenance: std::sync::atomic::AtomicBool,
    /// The dispatcher's epoch while this node holds the lease (-1: it does not).
    dispatching: std::sync::atomic::AtomicI64,
}

impl NodeState {
    fn new(cap: usize) -> NodeState {
        NodeState {
            cap: cap.into(),
            maintenance: false.into(),
            dispatching: (-1).into(),
        }
    }

    /// The epoch this node dispatches under, if it is the dispatcher.
    pub fn dispatching(&self) -> Option<i64> {
        let epoch = self.dispatching.load(std::sync::atomic::Ordering::SeqCst);
        (epoch >= 0).then_some(epoch)
    }

    pub fn set_dispatching(&self, epoch: Option<i64>) {
        self.dispatching
            .store(epoch.unwrap_or(-1), std::sync::atomic::Ordering::SeqCst);
    }

    /// How many tasks this node runs at once.
    pub fn cap(&self) -> usize {
        self.cap.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Drained: the node takes no new task.
    pub fn draining(&self) -> bool {
        self.maintenance.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets both; true when either changed.
    pub fn set(&self, cap: usize, maintenance: bool) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let old_cap = self.cap.swap(cap.max(1), Relaxed);
        let old_maintenance = self.maintenance.swap(maintenance, Relaxed);
        old_cap != cap.max(1) || old_maintenance != maintenance
    }
}

/// Holds the data directory for this process: a second server on the same directory is refused.
pub fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("muster.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0)?;
            file.rewind()?;
            write!(file, "{}", std::process::id())?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            anyhow::bail!(
                "the data directory {} is in use by another Muster server (process {}); stop it or choose another --data-dir",
                dir.display(),
                pid.trim()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}
