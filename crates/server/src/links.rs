//! `Links` of every resource (contract 1.4): absolute paths, `Self` always present.

use muster_core::resources::{ApiKeyRecord, MachinePolicy, Space, Task, User, Worker, WorkerPool};
use serde::Serialize;
use serde_json::{Value, json};

/// The resource as JSON with its `Links` added.
pub fn with_links(resource: &impl Serialize, links: Value) -> Value {
    let mut value = serde_json::to_value(resource).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("Links".into(), links);
    }
    value
}

pub fn space(s: &Space) -> Value {
    with_links(
        s,
        json!({
            "Self": format!("/api/spaces/{}", s.id),
            "SpaceHome": format!("/api/{}", s.id),
            "Web": format!("/app#/{}", s.id),
            "Logo": format!("/api/spaces/{}/logo", s.id),
        }),
    )
}

pub fn pool(p: &WorkerPool) -> Value {
    with_links(
        p,
        json!({
            "Self": format!("/api/{}/workerpools/{}", p.space_id, p.id),
            "Workers": format!("/api/{}/workerpools/{}/workers{{?skip,take}}", p.space_id, p.id),
            "Web": format!("/app#/{}/infrastructure/workerpools/{}", p.space_id, p.id),
        }),
    )
}

pub fn worker(w: &Worker) -> Value {
    with_links(
        w,
        json!({
            "Self": format!("/api/{}/workers/{}", w.space_id, w.id),
            "Connection": format!("/api/{}/workers/{}/connection", w.space_id, w.id),
            "Web": format!("/app#/{}/infrastructure/workers/{}", w.space_id, w.id),
        }),
    )
}

pub fn policy(p: &MachinePolicy) -> Value {
    with_links(
        p,
        json!({
            "Self": format!("/api/{}/machinepolicies/{}", p.space_id, p.id),
            "Workers": format!("/api/{}/machinepolicies/{}/workers{{?skip,take}}", p.space_id, p.id),
            "Machines": format!("/api/{}/machinepolicies/{}/machines{{?skip,take}}", p.space_id, p.id),
        }),
    )
}

pub fn task(t: &Task) -> Value {
    let id = &t.id;
    with_links(
        &t.to_resource(muster_core::time::now()),
        json!({
            "Self": format!("/api/tasks/{id}"),
            "Web": format!("/app#/{}/tasks/{id}", t.space_id),
            "Raw": format!("/api/tasks/{id}/raw"),
            "Details": format!("/api/tasks/{id}/details{{?verbose,tail}}"),
            "Stream": format!("/api/tasks/{id}/stream{{?after}}"),
            "Cancel": format!("/api/tasks/{id}/cancel"),
            "Rerun": format!("/api/tasks/rerun/{id}"),
            "QueuedBehind": format!("/api/tasks/{id}/queued-behind{{?skip,take}}"),
        }),
    )
}

pub fn user(u: &User) -> Value {
    with_links(
        u,
        json!({
            "Self": format!("/api/users/{}", u.id),
            "Spaces": format!("/api/users/{}/spaces", u.id),
            "ApiKeys": format!("/api/users/{}/apikeys{{/id}}{{?skip,take}}", u.id),
        }),
    )
}

/// An API key as listed: never the key, only that it exists and its hint.
pub fn api_key(k: &ApiKeyRecord, new_value: Option<&str>) -> Value {
    let api_key = match new_value {
        Some(key) => json!(key),
        None => json!({"HasValue": true, "Hint": k.hint, "NewValue": null}),
    };
    json!({
        "Id": k.id,
        "Purpose": k.purpose,
        "UserId": k.user_id,
        "Created": muster_core::time::format_date(&k.created),
        "Expires": k.expires.as_ref().map(muster_core::time::format_date),
        "ApiKey": api_key,
        "Links": {"Self": format!("/api/users/{}/apikeys/{}", k.user_id, k.id)},
    })
}
