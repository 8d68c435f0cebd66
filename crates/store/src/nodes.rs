//! The server nodes: one row per node that runs on this database, keyed by its name. A node writes
//! its heartbeat (`Store::node_seen`) every few seconds; its task cap and maintenance mode are
//! written by an administrator (`Store::update_node`) and read back by the node.

use crate::engine::{Engine as _, on_engine};
use crate::{Result, Store};
use muster_core::time::{Timestamp, format_date};

/// A server node as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub max_concurrent_tasks: i64,
    /// Drained: it takes no new task; its running tasks finish.
    pub is_in_maintenance_mode: bool,
    /// Its last heartbeat.
    pub last_seen: Timestamp,
    /// The version it last ran.
    pub version: String,
    pub last_modified_on: Option<Timestamp>,
    pub last_modified_by: Option<String>,
    /// Where the other nodes dial its comms port (None: it never said).
    pub comms_address: Option<String>,
    /// Whether it runs the built-in worker.
    pub builtin_worker: bool,
    /// Moved on each time the dispatcher presumed it dead; its writes hold the one it started with.
    pub incarnation: i64,
}

impl Store {
    /// A node's heartbeat: registers it (with `cap`, not in maintenance mode) the first time, and
    /// writes when it was seen; `set_cap` also writes its cap (a cap given at start). Answers the
    /// node as stored.
    pub async fn node_seen(
        &self,
        name: &str,
        cap: i64,
        set_cap: bool,
        at: &Timestamp,
        version: &str,
    ) -> Result<Node> {
        let at = format_date(at);
        let held = self.held_incarnation();
        on_engine!(&*self.engine, e => e.node_seen(name, cap, set_cap, &at, version, held).await)?;
        self.node(name).await?.ok_or_else(|| {
            crate::StoreError::Corrupt(format!("the node {name} was written but is not found"))
        })
    }

    /// Every node, by name.
    pub async fn nodes(&self) -> Result<Vec<Node>> {
        on_engine!(&*self.engine, e => e.nodes().await)
    }

    /// A node by its name (exactly).
    pub async fn node(&self, name: &str) -> Result<Option<Node>> {
        Ok(self.nodes().await?.into_iter().find(|n| n.name == name))
    }

    /// Writes a node's cap and maintenance mode; None when there is no such node.
    pub async fn update_node(
        &self,
        name: &str,
        cap: i64,
        maintenance: bool,
        at: &Timestamp,
        by: Option<&str>,
    ) -> Result<Option<Node>> {
        let at = format_date(at);
        let found =
            on_engine!(&*self.engine, e => e.update_node(name, cap, maintenance, &at, by).await)?;
        if !found {
            return Ok(None);
        }
        self.node(name).await
    }

    /// Writes where the other nodes dial this node's comms port, and whether it runs the built-in
    /// worker.
    pub async fn set_node_facts(
        &self,
        name: &str,
        address: &str,
        builtin_worker: bool,
    ) -> Result<()> {
        on_engine!(&*self.engine, e => e.set_node_facts(name, address, builtin_worker).await)
    }

    /// From now on every write of a task or a line holds this node's incarnation (PostgreSQL): it
    /// is refused once the dispatcher presumed the node dead.
    pub fn hold_incarnation(&self, name: &str, incarnation: i64) {
        *self.incarnation.lock().expect("store lock") = Some((name.to_string(), incarnation));
    }

    /// Deletes a node's record (a node gone for good) and the links it held; false when there was
    /// none. A node that still runs registers again at its next heartbeat.
    pub async fn delete_node(&self, name: &str) -> Result<bool> {
        on_engine!(&*self.engine, e => e.delete_node(name).await)
    }

    /// The incarnation this node's writes hold, if it holds one.
    pub fn held_incarnation(&self) -> Option<i64> {
        self.incarnation
            .lock()
            .expect("store lock")
            .as_ref()
            .map(|(_, incarnation)| *incarnation)
    }

    /// Fences a node that was last seen before `seen_before` (its writes are refused from now on),
    /// before its tasks are taken over; false when it was seen since (it lives).
    pub async fn presume_dead(&self, name: &str, seen_before: &Timestamp) -> Result<bool> {
        let seen_before = format_date(seen_before);
        on_engine!(&*self.engine, e => e.presume_dead(name, &seen_before).await)
    }
}

/// Which node holds each polling agent's link (keyed by the agent's certificate thumbprint, in
/// capitals). A node writes a link it opens and forgets one it saw close; every change is noted
/// (`Note::Agent`), so that the other nodes know where to relay.
impl Store {
    /// `node` holds the agent's link from `since` on.
    pub async fn set_agent_link(
        &self,
        thumbprint: &str,
        node: &str,
        since: &Timestamp,
    ) -> Result<()> {
        let since = format_date(since);
        on_engine!(&*self.engine, e => e.set_agent_link(thumbprint, node, &since).await)?;
        self.note(crate::Note::Agent(thumbprint.to_string())).await
    }

    /// The agent's link closed on `node`: forgotten unless another node holds it by now.
    pub async fn clear_agent_link(&self, thumbprint: &str, node: &str) -> Result<()> {
        if on_engine!(&*self.engine, e => e.clear_agent_link(thumbprint, node).await)? {
            self.note(crate::Note::Agent(thumbprint.to_string()))
                .await?;
        }
        Ok(())
    }

    /// `node` starts: it holds no link yet, whatever a crash left written.
    pub async fn clear_agent_links_of(&self, node: &str) -> Result<()> {
        on_engine!(&*self.engine, e => e.clear_agent_links_of(node).await)
    }

    /// (thumbprint, node) of every agent's link.
    pub async fn agent_links(&self) -> Result<Vec<(String, String)>> {
        on_engine!(&*self.engine, e => e.agent_links(None).await)
    }

    /// The node that holds the agent's link, if one does.
    pub async fn agent_link(&self, thumbprint: &str) -> Result<Option<String>> {
        let links = on_engine!(&*self.engine, e => e.agent_links(Some(thumbprint)).await)?;
        Ok(links.into_iter().next().map(|(_, node)| node))
    }
}
