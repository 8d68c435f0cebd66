//! This node in the node registry (the store's `server_nodes`): it registers at start, writes a
//! heartbeat every `HEARTBEAT`, and takes its task cap and maintenance mode from its record, which
//! an administrator writes (`api::nodes`). A node not seen for `OFFLINE_AFTER_BEATS` heartbeats is
//! offline. In maintenance mode (drained) a node takes no new task: the dispatcher leaves queued
//! tasks Queued with a reason that says so, and the running ones finish.
//!
//! One node dispatches: the one that holds the store's dispatcher lease (on SQLite, the only node).
//! It renews the lease every `RENEW_EVERY`; the others try to take it every `TRY_EVERY` and get it
//! once it has been `LEASE` without renewal. A node that finds it lost the lease (it was paused, or
//! cut off from the database, past the lease) exits at once: its writes of tasks are refused by then
//! (they hold its epoch), and a supervisor starts it again as a node that waits its turn.

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

/// How long the dispatcher's lease lasts without renewal: a node that dies is replaced within it.
pub const LEASE: Duration = Duration::from_secs(7);
/// How often the dispatcher renews its lease: a renewal may be late by more than 5 s (a stalled
/// disk, a busy database) before the lease runs out.
const RENEW_EVERY: Duration = Duration::from_millis(1500);
/// How often a node that does not dispatch tries to take the lease: another node dispatches at
/// most `LEASE` + `TRY_EVERY` after the dispatcher died.
const TRY_EVERY: Duration = Duration::from_millis(500);
/// The exit code of a node that lost the dispatcher's lease (EX_TEMPFAIL: start it again).
const LOST_LEASE_EXIT: i32 = 75;

/// A node's id, as Octopus spells it.
pub fn id_of(name: &str) -> String {
    format!("OctopusServerNodes-{name}")
}

/// Not seen for `OFFLINE_AFTER_BEATS` heartbeats.
pub fn is_offline(node: &Node, at: &Timestamp) -> bool {
    let silent = at.signed_duration_since(node.last_seen);
    silent.to_std().unwrap_or_default() > HEARTBEAT * OFFLINE_AFTER_BEATS
}

/// The heartbeat before which a node is offline now.
pub fn offline_mark(at: &Timestamp) -> Timestamp {
    *at - chrono::Duration::from_std(HEARTBEAT * OFFLINE_AFTER_BEATS).unwrap_or_default()
}

/// The name of the node that dispatches now: on SQLite this one; on PostgreSQL the lease's holder,
/// if its lease runs.
pub async fn dispatcher(app: &App) -> muster_store::Result<Option<String>> {
    if app.store.engine_name() == "sqlite" {
        return Ok(Some(app.config.node_name.clone()));
    }
    app.store.dispatch_lease_holder().await
}

/// A node as the dispatcher places tasks on it.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub cap: usize,
    pub draining: bool,
    pub builtin: bool,
}

/// The nodes tasks may be placed on now, this one first (as it knows itself), then every other
/// that is online (PostgreSQL), by name.
pub fn members(app: &App) -> Vec<Member> {
    let me = &app.config.node_name;
    let mut all = vec![Member {
        name: me.clone(),
        cap: app.node.cap(),
        draining: app.node.draining(),
        builtin: app.config.builtin_worker,
    }];
    let at = now();
    let fenced = app.fenced.lock().expect("fenced lock");
    for node in app.members.lock().expect("members lock").iter() {
        let presumed_dead = fenced
            .get(&node.name)
            .is_some_and(|since| node.last_seen <= *since);
        if node.name != *me && !is_offline(node, &at) && !presumed_dead {
            all.push(Member {
                name: node.name.clone(),
                cap: usize::try_from(node.max_concurrent_tasks.max(1)).unwrap_or(DEFAULT_TASK_CAP),
                draining: node.is_in_maintenance_mode,
                builtin: node.builtin_worker,
            });
        }
    }
    all
}

/// Reads every node's record again (PostgreSQL: SQLite has only this node). Returns them.
pub async fn read_members(app: &App) -> Vec<Node> {
    if app.store.engine_name() != "postgres" {
        return Vec::new();
    }
    match app.store.nodes().await {
        Ok(nodes) => {
            *app.members.lock().expect("members lock") = nodes.clone();
            nodes
        }
        Err(error) => {
            tracing::warn!("cannot read the nodes: {error}");
            app.members.lock().expect("members lock").clone()
        }
    }
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
    app.store
        .set_node_facts(
            &app.config.node_name,
            &app.config.comms_address,
            app.config.builtin_worker,
        )
        .await?;
    // Every write of a task or a line holds this incarnation from now on.
    app.store
        .hold_incarnation(&app.config.node_name, node.incarnation);
    read_members(app).await;
    // The other nodes (the dispatcher) learn of this one at once.
    app.store
        .note(muster_store::Note::Node(app.config.node_name.clone()))
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
            Ok(node) => {
                if let Some(held) = app.store.held_incarnation()
                    && held != node.incarnation
                {
                    lost(
                        "the dispatcher presumed this node dead (it missed its heartbeats) and took its tasks over",
                    );
                }
                apply(&app, &node)
            }
            Err(error) => tracing::warn!("cannot write this node's heartbeat: {error}"),
        }
        // The agents linked to a node that stopped are not reached through it: they dial another.
        if app.store.engine_name() == "postgres" {
            let nodes = read_members(&app).await;
            let at = now();
            let gone: std::collections::HashSet<String> = nodes
                .into_iter()
                .filter(|n| is_offline(n, &at))
                .map(|n| n.name)
                .collect();
            app.comms.forget_nodes(&gone);
            app.signals.dispatch.notify_one();
        }
    }
}

/// The dispatcher's work on this node: with the lease (`held`, its epoch), at once; without, once
/// this node takes it over (after recovering what the last dispatcher left running). Then it
/// dispatches and checks health, keeping the lease while it does. Drained while another node could
/// dispatch, it hands the role over once its running tasks have ended, and waits for it again once
/// it is undrained. (Every node serves its comms port, whatever its role: agents linked to it are
/// reached through it.)
pub async fn dispatch_role(app: App, held: Option<i64>) {
    let mut held = held;
    loop {
        let epoch = match held.take() {
            Some(epoch) => epoch,
            None => {
                let epoch = take_lease(&app).await;
                tracing::warn!(
                    epoch,
                    "node {} took the dispatcher's lease over",
                    app.config.node_name
                );
                println!(
                    "Muster node {} dispatches now (epoch {epoch})",
                    app.config.node_name
                );
                if let Err(error) = crate::dispatch::recover(&app, true).await {
                    lost(&format!(
                        "cannot recover the last dispatcher's tasks: {error:#}"
                    ));
                }
                epoch
            }
        };
        app.node.set_dispatching(Some(epoch));
        let mut duties = tokio::task::JoinSet::new();
        duties.spawn(crate::dispatch::run(app.clone()));
        duties.spawn(crate::health::health_loop(app.clone()));
        duties.spawn(crate::dispatch::watch_nodes(app.clone()));
        duties.spawn(crate::dynamic::run(app.clone()));
        keep_lease(&app, epoch).await;
        // Handed over: nothing is dispatched here any more.
        duties.abort_all();
        while duties.join_next().await.is_some() {}
        app.node.set_dispatching(None);
        app.store.forget_dispatch_epoch();
        crate::dispatch::resync(&app);
        if let Err(error) = app.store.release_dispatch_lease(epoch).await {
            tracing::warn!("cannot give the dispatcher's lease up: {error}");
        }
        tracing::warn!(
            "node {} is drained and idle: it handed the dispatcher's role over",
            app.config.node_name
        );
    }
}

/// Whether this node, drained, may hand the dispatcher's role over now: nothing runs here, and
/// another node is online and not drained (on PostgreSQL; SQLite has one node).
async fn may_hand_over(app: &App) -> bool {
    if !app.node.draining()
        || app.store.engine_name() != "postgres"
        || app.dispatcher.running_count() > 0
    {
        return false;
    }
    let at = now();
    match app.store.nodes().await {
        Ok(nodes) => nodes.iter().any(|node| {
            node.name != app.config.node_name
                && !node.is_in_maintenance_mode
                && !is_offline(node, &at)
        }),
        Err(_) => false,
    }
}

/// Waits until this node takes the dispatcher's lease; its epoch.
async fn take_lease(app: &App) -> i64 {
    loop {
        // A drained node does not take the role; with every node drained, one takes it anyway,
        // so that queued tasks are still told why they wait.
        if app.node.draining() && !every_node_drained(app).await {
            tokio::time::sleep(TRY_EVERY).await;
            continue;
        }
        match app
            .store
            .take_dispatch_lease(&app.config.node_name, LEASE)
            .await
        {
            Ok(Some(epoch)) => return epoch,
            Ok(None) => {}
            Err(error) => tracing::warn!("cannot read the dispatcher's lease: {error}"),
        }
        tokio::time::sleep(TRY_EVERY).await;
    }
}

/// Renews the lease while this node dispatches; returns when a drained node may hand it over. A
/// lease lost ends the process.
async fn keep_lease(app: &App, epoch: i64) {
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        if may_hand_over(app).await {
            return;
        }
        match app.store.renew_dispatch_lease(epoch, LEASE).await {
            Ok(true) => renewed = tokio::time::Instant::now(),
            Ok(false) => lost("another node took the dispatcher's lease over"),
            Err(error) if renewed.elapsed() >= LEASE => lost(&format!(
                "the dispatcher's lease could not be renewed before it ran out: {error}"
            )),
            Err(error) => tracing::warn!("cannot renew the dispatcher's lease: {error}"),
        }
    }
}

async fn every_node_drained(app: &App) -> bool {
    let at = now();
    match app.store.nodes().await {
        Ok(nodes) => nodes
            .iter()
            .filter(|node| !is_offline(node, &at))
            .all(|node| node.is_in_maintenance_mode),
        Err(_) => false,
    }
}

fn lost(why: &str) -> ! {
    tracing::error!("{why}; this node stops so that nothing it does lands twice");
    eprintln!(
        "muster: {why}; this node stops so that nothing it does lands twice (exit {LOST_LEASE_EXIT}: start it again)"
    );
    std::process::exit(LOST_LEASE_EXIT)
}

/// Gives the lease up at a clean stop, so another node takes over without waiting it out.
pub async fn release_lease(app: &App) {
    if let Some(epoch) = app.node.dispatching()
        && let Err(error) = app.store.release_dispatch_lease(epoch).await
    {
        tracing::warn!("cannot give the dispatcher's lease up: {error}");
    }
}

/// What this node hears from the others (and itself) through the store's notes: new tasks and
/// changed workers wake the dispatcher, another node's lines and task changes wake this node's
/// live streams, a cancel asked on another node reaches the script here.
pub async fn follow_notes(
    app: App,
    mut notes: tokio::sync::broadcast::Receiver<muster_store::Note>,
) {
    use muster_store::Note;
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match notes.recv().await {
            Ok(Note::NewTask(_)) | Ok(Note::Workers) => app.signals.dispatch.notify_one(),
            Ok(Note::Lines(id)) => app.logs.changed(&id),
            Ok(Note::Node(name)) => {
                let nodes = read_members(&app).await;
                if let Some(node) = nodes.iter().find(|n| n.name == app.config.node_name) {
                    apply(&app, node);
                } else if name == app.config.node_name
                    && let Ok(Some(node)) = app.store.node(&name).await
                {
                    apply(&app, &node);
                }
                crate::dispatch::node_changed(&app);
            }
            Ok(Note::Agent(thumbprint)) => {
                crate::comms::heard_of_agent(&app, &thumbprint).await;
                if app.node.dispatching().is_some() && app.comms.remote_node(&thumbprint).is_some()
                {
                    let app = app.clone();
                    tokio::spawn(
                        async move { crate::health::check_agent(&app, &thumbprint).await },
                    );
                }
            }
            Ok(Note::Task(id)) => {
                app.logs.changed(&id);
                crate::dispatch::heard_of_task(&app, &id).await;
            }
            Ok(Note::Resync) | Err(RecvError::Lagged(_)) => {
                if let Err(error) = crate::comms::load_links(&app).await {
                    tracing::warn!("cannot read which nodes hold the agents' links: {error:#}");
                }
                crate::dispatch::resync(&app);
                app.logs.changed_all();
            }
            Err(RecvError::Closed) => return,
        }
    }
}
