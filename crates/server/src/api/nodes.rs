//! The server nodes (`/api/octopusservernodes`), in Octopus's shapes: `OctopusServerNodeResource`
//! (`Id` `OctopusServerNodes-<name>`, `Name`, `MaxConcurrentTasks`, `IsInMaintenanceMode`), the
//! cluster summary (each node with `IsOffline`, `LastSeen`, `RunningTaskCount`, `Version`), a
//! node's details (its running tasks), the load balancer's anonymous `ping` (200, or 418 while
//! this node is drained), and an administrator's PUT (maintenance mode, task cap).

use super::{actor, events, filter_named, page};
use crate::auth::CurrentUser;
use crate::http::{ApiError, ApiResult, JsonBody, Params, json_response, ok};
use crate::links;
use crate::nodes;
use crate::state::App;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use muster_core::TaskState;
use muster_core::resources::Task;
use muster_core::time::{format_date, now};
use muster_store::Node;
use serde_json::{Value, json};

/// A node as `OctopusServerNodeResource`.
fn resource(node: &Node) -> Value {
    let id = nodes::id_of(&node.name);
    json!({
        "Id": id,
        "Name": node.name,
        "MaxConcurrentTasks": node.max_concurrent_tasks,
        "IsInMaintenanceMode": node.is_in_maintenance_mode,
        "LastModifiedOn": node.last_modified_on.as_ref().map(format_date),
        "LastModifiedBy": node.last_modified_by,
        "Links": {
            "Self": format!("/api/octopusservernodes/{id}"),
            "Details": format!("/api/octopusservernodes/{id}/details"),
        },
    })
}

/// A node as `OctopusServerNodeSummaryResource`: the resource, whether it is alive and busy, and
/// (Muster's own) whether it is the node that dispatches.
fn summary(node: &Node, running: &[Task], dispatcher: Option<&str>) -> Value {
    let mut value = resource(node);
    let count = running
        .iter()
        .filter(|t| t.server_node.as_deref() == Some(node.name.as_str()))
        .count();
    value["IsOffline"] = json!(nodes::is_offline(node, &now()));
    value["LastSeen"] = json!(format_date(&node.last_seen));
    value["RunningTaskCount"] = json!(count);
    value["Version"] = json!(node.version);
    value["IsDispatcher"] = json!(dispatcher == Some(node.name.as_str()));
    value
}

/// The tasks running on any node (Executing or Cancelling).
async fn running(app: &App) -> Result<Vec<Task>, ApiError> {
    Ok(app
        .store
        .tasks_in_states(&[TaskState::Executing, TaskState::Cancelling])
        .await?)
}

/// A node by its id (any case: paths are lower-cased), or 404.
async fn find(app: &App, id: &str) -> Result<Node, ApiError> {
    app.store
        .nodes()
        .await?
        .into_iter()
        .find(|n| nodes::id_of(&n.name).eq_ignore_ascii_case(id))
        .ok_or_else(|| ApiError::not_found(id))
}

/// The nodes that match `ids`, `name` and `partialName`, by name.
async fn filtered(app: &App, params: &Params) -> Result<Vec<Node>, ApiError> {
    let pairs: Vec<(String, Node)> = app
        .store
        .nodes()
        .await?
        .into_iter()
        .map(|n| (nodes::id_of(&n.name), n))
        .collect();
    Ok(filter_named(pairs, params, |p| &p.0, |p| &p.1.name)
        .into_iter()
        .map(|(_, n)| n)
        .collect())
}

pub async fn list(State(app): State<App>, params: Params) -> ApiResult {
    let found = filtered(&app, &params).await?;
    page(
        "OctopusServerNode",
        found.iter().map(resource).collect(),
        &params,
        "/api/octopusservernodes",
        "skip,take,ids,partialName,name",
        30,
    )
}

pub async fn all(State(app): State<App>, params: Params) -> ApiResult {
    let found = filtered(&app, &params).await?;
    ok(&found.iter().map(resource).collect::<Vec<_>>())
}

pub async fn get_one(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    ok(&resource(&find(&app, &id).await?))
}

/// `OctopusServerClusterSummaryResource`: every node's summary.
pub async fn cluster_summary(State(app): State<App>) -> ApiResult {
    let running = running(&app).await?;
    let dispatcher = nodes::dispatcher(&app).await?;
    let nodes: Vec<Value> = app
        .store
        .nodes()
        .await?
        .iter()
        .map(|n| summary(n, &running, dispatcher.as_deref()))
        .collect();
    ok(&json!({
        "Nodes": nodes,
        "Links": {"Self": "/api/octopusservernodes/summary"},
    }))
}

/// A node's summary and the tasks running on it.
pub async fn details(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    let node = find(&app, &id).await?;
    let running = running(&app).await?;
    let dispatcher = nodes::dispatcher(&app).await?;
    let tasks: Vec<Value> = running
        .iter()
        .filter(|t| t.server_node.as_deref() == Some(node.name.as_str()))
        .map(links::task)
        .collect();
    ok(&json!({
        "Node": summary(&node, &running, dispatcher.as_deref()),
        "Tasks": tasks,
    }))
}

/// The load balancer's health check (anonymous): this node's resource, with 200, or 418 while
/// it is in maintenance mode.
pub async fn ping(State(app): State<App>) -> ApiResult {
    let node = app
        .store
        .node(&app.config.node_name)
        .await?
        .ok_or_else(|| ApiError::not_found(nodes::id_of(&app.config.node_name)))?;
    let status = if node.is_in_maintenance_mode {
        StatusCode::IM_A_TEAPOT
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &resource(&node)))
}

/// Deletes the record of a node that is gone for good (administrators): only an offline node
/// (one that runs would register again at its next heartbeat) with no task left running on it
/// (the dispatcher takes those over within seconds of the node going offline).
pub async fn delete(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    Path(id): Path<String>,
) -> ApiResult {
    let node = find(&app, &id).await?;
    if !nodes::is_offline(&node, &now()) {
        return Err(ApiError::validation(vec![format!(
            "Node {} is online (last seen {}): stop it first; a node that runs registers again at its next heartbeat.",
            node.name,
            format_date(&node.last_seen)
        )]));
    }
    let left: Vec<String> = running(&app)
        .await?
        .into_iter()
        .filter(|t| t.server_node.as_deref() == Some(node.name.as_str()))
        .map(|t| t.id)
        .collect();
    if !left.is_empty() {
        return Err(ApiError::validation(vec![format!(
            "Tasks still run on node {} ({}): the dispatching node takes them over within seconds of a node going offline; try again then.",
            node.name,
            left.join(", ")
        )]));
    }
    if !app.store.delete_node(&node.name).await? {
        return Err(ApiError::not_found(&id));
    }
    let _ = app
        .store
        .note(muster_store::Note::Node(node.name.clone()))
        .await;
    events::record(
        &app,
        Some(&user.0),
        None,
        events::DELETED,
        format!("Server node '{}' deleted", node.name),
        vec![nodes::id_of(&node.name)],
    )
    .await;
    ok(&resource(&node))
}

/// Changes a node's maintenance mode and task cap (administrators). A drained node takes no new
/// task; its running tasks finish.
pub async fn update(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult {
    let body = body.object()?;
    let existing = find(&app, &id).await?;
    let mut errors = Vec::new();
    let maintenance = match body.get("IsInMaintenanceMode") {
        None | Some(Value::Null) => existing.is_in_maintenance_mode,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.push("IsInMaintenanceMode must be true or false.".to_string());
            existing.is_in_maintenance_mode
        }
    };
    let cap = match body.get("MaxConcurrentTasks") {
        None | Some(Value::Null) => existing.max_concurrent_tasks,
        Some(value) => match value.as_i64() {
            Some(cap) if (1..=10_000).contains(&cap) => cap,
            _ => {
                errors.push("MaxConcurrentTasks must be a whole number from 1 to 10000.".into());
                existing.max_concurrent_tasks
            }
        },
    };
    if let Some(name) = body.get("Name").and_then(Value::as_str)
        && name != existing.name
    {
        errors.push(format!(
            "A node's Name cannot be changed (it is {}); start the node with --node-name instead.",
            existing.name
        ));
    }
    // The fields the server keeps are ignored, but only as what they are.
    for field in ["Id", "Name", "LastModifiedOn", "LastModifiedBy"] {
        if !matches!(body.get(field), None | Some(Value::Null | Value::String(_))) {
            errors.push(format!("{field} must be a string."));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let by = actor(&user);
    let node = app
        .store
        .update_node(&existing.name, cap, maintenance, &now(), by.as_deref())
        .await?
        .ok_or_else(|| ApiError::not_found(&id))?;
    if node.name == app.config.node_name {
        nodes::apply(&app, &node);
    }
    // That node applies it at once, not at its next heartbeat, and the dispatcher places by it.
    let _ = app
        .store
        .note(muster_store::Note::Node(node.name.clone()))
        .await;
    let mut changes = Vec::new();
    if maintenance != existing.is_in_maintenance_mode {
        changes.push(if maintenance {
            "put into maintenance mode (drained: it takes no new task)".to_string()
        } else {
            "taken out of maintenance mode".to_string()
        });
    }
    if cap != existing.max_concurrent_tasks {
        changes.push(format!(
            "its task cap changed from {} to {cap}",
            existing.max_concurrent_tasks
        ));
    }
    if !changes.is_empty() {
        events::record(
            &app,
            Some(&user.0),
            None,
            events::MODIFIED,
            format!("Server node '{}' {}", node.name, changes.join(", and ")),
            vec![nodes::id_of(&node.name)],
        )
        .await;
    }
    ok(&resource(&node))
}
