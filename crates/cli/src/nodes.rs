//! `muster node`: the server nodes (`/api/octopusservernodes`), and draining one for maintenance.

use crate::client::Client;
use crate::{array, output};
use anyhow::anyhow;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

#[derive(Debug, Clone, Subcommand)]
pub enum NodeCommand {
    /// Lists the server nodes: task cap, running tasks, maintenance mode, last heartbeat.
    List,
    /// Puts a node in maintenance mode: it takes no new task, its running tasks finish, and its
    /// /api/octopusservernodes/ping answers 418 (administrators).
    Drain {
        /// The node's name.
        name: String,
    },
    /// Takes a node out of maintenance mode: it takes tasks again (administrators).
    Undrain {
        /// The node's name.
        name: String,
    },
    /// Deletes the record of a node gone for good: it must be offline, with no task left on it
    /// (administrators).
    Delete {
        /// The node's name.
        name: String,
    },
}

pub async fn node(client: &Client, json: bool, command: NodeCommand) -> anyhow::Result<i32> {
    match command {
        NodeCommand::List => {
            let summary = client.get("/api/octopusservernodes/summary").await?;
            let nodes = array(&summary["Nodes"]);
            if json {
                output::json(&Value::Array(nodes));
                return Ok(0);
            }
            let rows = nodes
                .iter()
                .map(|n| {
                    vec![
                        output::text(&n["Name"]),
                        output::text(&n["MaxConcurrentTasks"]),
                        output::text(&n["RunningTaskCount"]),
                        output::text(&n["IsInMaintenanceMode"]),
                        output::text(&n["LastSeen"]),
                        output::text(&n["IsOffline"]),
                        output::text(&n["IsDispatcher"]),
                    ]
                })
                .collect();
            output::table(
                &[
                    "NAME",
                    "CAP",
                    "RUNNING",
                    "MAINTENANCE",
                    "LAST SEEN",
                    "OFFLINE",
                    "DISPATCHER",
                ],
                rows,
            );
            Ok(0)
        }
        NodeCommand::Drain { name } => set_maintenance(client, json, &name, true).await,
        NodeCommand::Undrain { name } => set_maintenance(client, json, &name, false).await,
        NodeCommand::Delete { name } => {
            let node = find(client, &name).await?;
            let path = self_link(&node)?;
            let deleted = client.send(Method::DELETE, &path, None).await?;
            if json {
                output::json(&deleted);
            } else {
                println!("Node {} deleted.", output::text(&deleted["Name"]));
            }
            Ok(0)
        }
    }
}

/// The node named `name` (without case), or an error naming the nodes there are.
async fn find(client: &Client, name: &str) -> anyhow::Result<Value> {
    let nodes = array(&client.get("/api/octopusservernodes/all").await?);
    nodes
        .iter()
        .find(|n| {
            n["Name"]
                .as_str()
                .is_some_and(|v| v.eq_ignore_ascii_case(name.trim()))
        })
        .cloned()
        .ok_or_else(|| {
            let names: Vec<String> = nodes.iter().map(|n| output::text(&n["Name"])).collect();
            anyhow!(
                "no server node named '{name}' (nodes: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )
        })
}

fn self_link(node: &Value) -> anyhow::Result<String> {
    node["Links"]["Self"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the server's node has no Links.Self"))
}

async fn set_maintenance(
    client: &Client,
    json: bool,
    name: &str,
    maintenance: bool,
) -> anyhow::Result<i32> {
    let node = find(client, name).await?;
    let path = self_link(&node)?;
    let changed = client
        .send(
            Method::PUT,
            &path,
            Some(&json!({"IsInMaintenanceMode": maintenance})),
        )
        .await?;
    if json {
        output::json(&changed);
    } else if maintenance {
        println!(
            "Node {} is in maintenance mode: it takes no new task, and its running tasks finish.",
            output::text(&changed["Name"])
        );
    } else {
        println!(
            "Node {} is out of maintenance mode: it takes tasks again.",
            output::text(&changed["Name"])
        );
    }
    Ok(0)
}
