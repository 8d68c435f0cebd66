//! `Links` of every resource (contract 1.4): absolute paths, `Self` always present.

use muster_core::resources::{
    Account, ApiKeyRecord, MachinePolicy, Space, Task, User, Worker, WorkerPool,
};
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

/// An account as clients read it: whether each secret is set, never its value.
pub fn account(a: &Account) -> Value {
    with_links(
        &a.without_secrets(),
        json!({
            "Self": format!("/api/{}/accounts/{}", a.space_id, a.id),
            "Usages": format!("/api/{}/accounts/{}/usages", a.space_id, a.id),
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
            "Artifacts": format!("/api/{}/artifacts?regarding={id}", t.space_id),
        }),
    )
}

pub fn artifact(a: &muster_core::resources::Artifact) -> Value {
    with_links(
        a,
        json!({
            "Self": format!("/api/{}/artifacts/{}", a.space_id, a.id),
            "Content": format!("/api/{}/artifacts/{}/content", a.space_id, a.id),
        }),
    )
}

pub fn event(e: &muster_core::resources::Event) -> Value {
    with_links(e, json!({ "Self": format!("/api/events/{}", e.id) }))
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

/// A runbook's variables as clients see them: a sensitive value is never shown.
fn shown_variables(
    variables: &[muster_core::runbooks::Variable],
) -> Vec<muster_core::runbooks::Variable> {
    variables
        .iter()
        .cloned()
        .map(|mut v| {
            if v.is_sensitive {
                v.value = None;
            }
            v
        })
        .collect()
}

pub fn runbook(r: &muster_core::runbooks::Runbook) -> Value {
    let mut shown = r.clone();
    shown.variables = shown_variables(&r.variables);
    let mut value = with_links(
        &shown,
        json!({
            "Self": format!("/api/{}/runbooks/{}", r.space_id, r.id),
            "RunbookProcess": format!("/api/{}/runbookProcesses/{}", r.space_id, r.runbook_process_id),
            "Variables": format!("/api/{}/variables/variableset-{}", r.space_id, r.id),
            "RunbookRuns": format!("/api/{}/runbookRuns{{?skip,take}}&runbook={}", r.space_id, r.id),
            "Web": format!("/app#/{}/runbooks/{}", r.space_id, r.id),
        }),
    );
    // Octopus's fields that Muster has one answer for: no projects, environments or tenants.
    if let Value::Object(map) = &mut value {
        map.insert(
            "VariableSetId".into(),
            json!(format!("variableset-{}", r.id)),
        );
        map.insert("ProjectId".into(), Value::Null);
        map.insert("PublishedRunbookSnapshotId".into(), Value::Null);
        map.insert("MultiTenancyMode".into(), json!("Untenanted"));
        map.insert("EnvironmentScope".into(), json!("All"));
        map.insert("Environments".into(), json!([]));
        map.insert(
            "DefaultGuidedFailureMode".into(),
            json!("EnvironmentDefault"),
        );
    }
    value
}

pub fn runbook_process(r: &muster_core::runbooks::Runbook) -> Value {
    json!({
        "Id": r.runbook_process_id,
        "RunbookId": r.id,
        "SpaceId": r.space_id,
        "ProjectId": null,
        "Version": 0,
        "LastSnapshotId": null,
        "Steps": r.steps,
        "LastModifiedOn": r.last_modified_on.as_ref().map(muster_core::time::format_date),
        "LastModifiedBy": r.last_modified_by,
        "Links": {
            "Self": format!("/api/{}/runbookProcesses/{}", r.space_id, r.runbook_process_id),
            "Runbook": format!("/api/{}/runbooks/{}", r.space_id, r.id),
        },
    })
}

pub fn variable_set(r: &muster_core::runbooks::Runbook) -> Value {
    let id = format!("variableset-{}", r.id);
    json!({
        "Id": id,
        "OwnerId": r.id,
        "SpaceId": r.space_id,
        "Version": 0,
        "Variables": shown_variables(&r.variables),
        "ScopeValues": {},
        "LastModifiedOn": r.last_modified_on.as_ref().map(muster_core::time::format_date),
        "LastModifiedBy": r.last_modified_by,
        "Links": {
            "Self": format!("/api/{}/variables/{id}", r.space_id),
            "Runbook": format!("/api/{}/runbooks/{}", r.space_id, r.id),
        },
    })
}

pub fn runbook_run(run: &muster_core::runbooks::RunbookRun) -> Value {
    let mut shown = run.clone();
    shown.variables = shown_variables(&run.variables);
    // A value given for a sensitive variable is as secret as the variable.
    for (name, value) in shown.form_values.iter_mut() {
        if run
            .variables
            .iter()
            .any(|v| v.is_sensitive && v.name.eq_ignore_ascii_case(name))
        {
            *value = Value::Null;
        }
    }
    with_links(
        &shown,
        json!({
            "Self": format!("/api/{}/runbookRuns/{}", run.space_id, run.id),
            "Task": format!("/api/tasks/{}", run.task_id),
            "Runbook": format!("/api/{}/runbooks/{}", run.space_id, run.runbook_id),
            "Web": format!("/app#/{}/tasks/{}", run.space_id, run.task_id),
        }),
    )
}
