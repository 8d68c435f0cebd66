//! This node in the node registry (the store's `server_nodes`): it registers at start, writes a
//! heartbeat every `HEARTBEAT`, and takes its task cap and maintenance mode from its record, which
//! an administrator writes (`api::nodes`). A node not seen for `OFFLINE_AFTER_BEATS` heartbeats is
//! offline. In maintenance mode (drained) a node takes no new task: the dispatcher leaves queued
//! tasks Queued with a reason that says so, and the running ones finish.

use crate::state::App;
use muster_core::time::{Timestamp, now};
use muster_store::Node;
use std::time::Duration;

/// How often a node writes that it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A node not seen for this many heartbeats is offline.
pub const OFFLINE_AFTER_BEATS: u32 = 3;
/// The cap of a new node started without `--task-cap`.
pub const DEFAULT_TASK_CAP: usize = 5;
/// The version a node records.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A node's id, as Octopus spells it.
pub fn id_of(name: &str) -> String {
    format!("OctopusServerNodes-{name}")
}

/// Not seen for `OFFLINE_AFTER_BEATS` heartbeats.
pub fn is_offline(node: &Node, at: &Timestamp) -> bool {
    let silent = at.signed_duration_since(node.last_seen);
    silent.to_std().unwrap_or_default() > HEARTBEAT * OFFLINE_AFTER_BEATS
}

/// Writes this node's first heartbeat (with `--task-cap` when given) and takes its stored cap and
/// maintenance mode.
pub async fn register(app: &App) -> anyhow::Result<Node> {
    let given = app.config.task_cap;
    let node = app
        .store
        .node_seen(
            &app.config.node_name,
            given.unwrap_or(DEFAULT_TASK_CAP) as i64,
            given.is_some(),
            &now(),
            VERSION,
        )
        .await?;
    apply(app, &node);
    if node.is_in_maintenance_mode {
        tracing::warn!(
            "node {} is in maintenance mode: it takes no new task until an administrator ends it (muster node undrain {})",
            node.name,
            node.name
        );
    }
    Ok(node)
}

/// Takes a node record's cap and maintenance mode; a change makes the dispatcher look at every
/// queued task again.
pub fn apply(app: &App, node: &Node) {
    let cap = usize::try_from(node.max_concurrent_tasks.max(1)).unwrap_or(DEFAULT_TASK_CAP);
    if app.node.set(cap, node.is_in_maintenance_mode) {
        crate::dispatch::node_changed(app);
    }
}

/// Writes this node's heartbeat every `HEARTBEAT` and takes what an administrator changed.
pub async fn heartbeat(app: App) {
    let mut ticks = tokio::time::interval(HEARTBEAT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match app
            .store
            .node_seen(&app.config.node_name, 0, false, &now(), VERSION)
            .await
        {
            Ok(node) => apply(&app, &node),
            Err(error) => tracing::warn!("cannot write this node's heartbeat: {error}"),
        }
    }
}
