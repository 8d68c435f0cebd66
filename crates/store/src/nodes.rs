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
        on_engine!(&*self.engine, e => e.node_seen(name, cap, set_cap, &at, version).await)?;
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
}
