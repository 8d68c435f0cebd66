//! Workers (contract 2.4). Names are unique per space; pools must be static pools of the same space;
//! a null policy means the space's default policy.

use super::{actor, check_space_id, empty_ok, filter_named, page, path_id, resolve_space};
use crate::auth::CurrentUser;
use crate::http::{ApiError, ApiResult, JsonBody, Params, created, ok};
use crate::links;
use crate::state::App;
use axum::Extension;
use axum::extract::{Path, State};
use muster_core::resources::{MachinePolicy, Space, Worker, WorkerPool, apply};
use muster_core::{CommunicationStyle, HealthStatus, IdKind, MachineStatus, WorkerPoolType};
use serde_json::json;

pub fn sorted(mut workers: Vec<Worker>) -> Vec<Worker> {
    workers.sort_by_key(|w| w.name.to_lowercase());
    workers
}

/// The worker filters of the contract, plus `ids`, `name` and `partialName`.
pub fn filter_workers(workers: Vec<Worker>, params: &Params) -> Result<Vec<Worker>, ApiError> {
    let mut workers = filter_named(workers, params, |w| &w.id, |w| &w.name);
    if let Some(disabled) = params.bool("isdisabled")? {
        workers.retain(|w| w.is_disabled == disabled);
    }
    if let Some(names) = params.list("healthstatuses") {
        let wanted = names
            .iter()
            .map(|n| {
                HealthStatus::parse(n)
                    .ok_or_else(|| ApiError::bad_request(format!("'{n}' is not a HealthStatus.")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        workers.retain(|w| wanted.contains(&w.health_status));
    }
    if let Some(names) = params.list("commstyles") {
        let wanted = names
            .iter()
            .map(|n| {
                CommunicationStyle::parse(n).ok_or_else(|| {
                    ApiError::bad_request(format!("'{n}' is not a CommunicationStyle."))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        workers.retain(|w| {
            w.endpoint
                .as_ref()
                .is_some_and(|e| wanted.contains(&e.style()))
        });
    }
    if let Some(pools) = params.list("workerpoolids") {
        let pools: Vec<String> = pools.iter().map(|p| p.to_ascii_lowercase()).collect();
        workers.retain(|w| {
            w.worker_pool_ids
                .iter()
                .any(|id| pools.contains(&id.to_ascii_lowercase()))
        });
    }
    if let Some(thumbprint) = params.get("thumbprint") {
        let thumbprint = thumbprint.trim().to_ascii_uppercase();
        workers.retain(|w| w.thumbprint.as_deref() == Some(thumbprint.as_str()));
    }
    if let Some(shells) = params.list("shellnames") {
        workers.retain(|w| {
            w.shell_name
                .as_ref()
                .is_some_and(|s| shells.iter().any(|x| x.eq_ignore_ascii_case(s)))
        });
    }
    Ok(workers)
}

pub async fn find(app: &App, space: &Space, id: &str) -> Result<Worker, ApiError> {
    let id = path_id(IdKind::Worker, id)?;
    app.store
        .get::<Worker>(&id)
        .await?
        .filter(|w| w.space_id == space.id)
        .ok_or_else(|| ApiError::not_found(&id))
}

pub async fn list(State(app): State<App>, Path(space): Path<String>, params: Params) -> ApiResult {
    let space = resolve_space(&app, &space).await?;
    let workers = sorted(filter_workers(app.store.list(&space.id).await?, &params)?);
    let path = format!("/api/{}/workers", space.id);
    page(
        "Worker",
        workers.iter().map(links::worker).collect(),
        &params,
        &path,
        "skip,take,name,ids,partialName,isDisabled,healthStatuses,commStyles,workerPoolIds,thumbprint,shellNames",
        30,
    )
}

pub async fn all(State(app): State<App>, Path(space): Path<String>, params: Params) -> ApiResult {
    let space = resolve_space(&app, &space).await?;
    let workers = sorted(filter_workers(app.store.list(&space.id).await?, &params)?);
    ok(&workers.iter().map(links::worker).collect::<Vec<_>>())
}

pub async fn get_one(
    State(app): State<App>,
    Path((space, id)): Path<(String, String)>,
) -> ApiResult {
    let space = resolve_space(&app, &space).await?;
    ok(&links::worker(&find(&app, &space, &id).await?))
}

/// Checks a worker as a client sent it and fills what the server owns. Every problem is reported.
async fn validate(app: &App, space: &Space, worker: &mut Worker) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    worker.name = worker.name.trim().to_string();
    errors.extend(muster_core::ids::check_name(&worker.name));
    match worker.endpoint.as_mut() {
        None => errors
            .push("Endpoint is required: it says how the server reaches the worker.".to_string()),
        Some(endpoint) => {
            if let Err(problems) = endpoint.validate() {
                errors.extend(problems);
            }
        }
    }
    if worker.worker_pool_ids.is_empty() {
        errors.push("WorkerPoolIds must name at least one worker pool.".to_string());
    }
    let pools: Vec<WorkerPool> = app.store.list(&space.id).await?;
    let mut canonical = Vec::new();
    for given in &worker.worker_pool_ids {
        let id = muster_core::ids::canonical_id(IdKind::WorkerPool, given)
            .unwrap_or_else(|| given.clone());
        match pools.iter().find(|p| p.id == id) {
            None => errors.push(format!(
                "'{given}' is not a worker pool of space {}.",
                space.id
            )),
            Some(pool) if pool.worker_pool_type != WorkerPoolType::StaticWorkerPool => {
                errors.push(format!(
                    "'{}' is a dynamic pool; workers can be added only to static pools.",
                    pool.name
                ))
            }
            Some(_) if canonical.contains(&id) => {}
            Some(_) => canonical.push(id),
        }
    }
    worker.worker_pool_ids = canonical;
    let policies: Vec<MachinePolicy> = app.store.list(&space.id).await?;
    match worker
        .machine_policy_id
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        None => {
            worker.machine_policy_id = policies.iter().find(|p| p.is_default).map(|p| p.id.clone())
        }
        Some(given) => {
            let id = muster_core::ids::canonical_id(IdKind::MachinePolicy, given)
                .unwrap_or_else(|| given.to_string());
            if policies.iter().any(|p| p.id == id) {
                worker.machine_policy_id = Some(id);
            } else {
                errors.push(format!(
                    "'{given}' is not a machine policy of space {}.",
                    space.id
                ));
            }
        }
    }
    if let Some(slug) = &worker.slug {
        worker.slug = Some(muster_core::ids::slugify(slug)).filter(|s| !s.is_empty());
    }
    if worker.slug.is_none() {
        worker.slug = Some(muster_core::ids::slugify(&worker.name));
    }
    worker.thumbprint = worker
        .endpoint
        .as_ref()
        .and_then(|e| e.thumbprint())
        .map(str::to_string);
    worker.uri = worker
        .endpoint
        .as_ref()
        .and_then(|e| e.uri())
        .map(str::to_string);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

/// Fields only the server sets; what a client sent for them is ignored.
fn keep_server_fields(worker: &mut Worker, from: &Worker) {
    worker.health_status = from.health_status;
    worker.status = from.status;
    worker.status_summary = from.status_summary.clone();
    worker.has_latest_calamari = from.has_latest_calamari;
    worker.is_in_process = from.is_in_process;
    worker.operating_system = from.operating_system.clone();
    worker.operating_system_version = from.operating_system_version.clone();
    worker.shell_name = from.shell_name.clone();
    worker.shell_version = from.shell_version.clone();
    worker.architecture = from.architecture.clone();
}

pub async fn create(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    Path(space): Path<String>,
    body: JsonBody,
) -> ApiResult {
    let space = resolve_space(&app, &space).await?;
    let body = body.object()?;
    check_space_id(body, &space)?;
    let mut worker = apply(&Worker::default(), body).map_err(ApiError::bad_request)?;
    let fresh = Worker {
        health_status: HealthStatus::Unknown,
        status: MachineStatus::Unknown,
        status_summary: "This worker has not been health checked yet.".into(),
        has_latest_calamari: true,
        ..Default::default()
    };
    keep_server_fields(&mut worker, &fresh);
    worker.space_id = space.id.clone();
    validate(&app, &space, &mut worker).await?;
    worker.id = app.store.next_id(IdKind::Worker).await?;
    worker.last_modified_on = Some(muster_core::time::now());
    worker.last_modified_by = actor(&user);
    app.store.put(&worker).await?;
    app.dispatcher.wake();
    app.health_wake.notify_one();
    created(&links::worker(&worker))
}

pub async fn update(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    Path((space, id)): Path<(String, String)>,
    body: JsonBody,
) -> ApiResult {
    let space = resolve_space(&app, &space).await?;
    let existing = find(&app, &space, &id).await?;
    let body = body.object()?;
    check_space_id(body, &space)?;
    let mut worker = apply(&existing, body).map_err(ApiError::bad_request)?;
    worker.id = existing.id.clone();
    worker.space_id = existing.space_id.clone();
    keep_server_fields(&mut worker, &existing);
    validate(&app, &space, &mut worker).await?;
    worker.last_modified_on = Some(muster_core::time::now());
    worker.last_modified_by = actor(&user);
    app.store.put(&worker).await?;
    app.dispatcher.wake();
    app.health_wake.notify_one();
    ok(&links::worker(&worker))
}

pub async fn delete(
    State(app): State<App>,
    Path((space, id)): Path<(String, String)>,
) -> ApiResult {
    let space = resolve_space(&app, &space).await?;
    let worker = find(&app, &space, &id).await?;
    app.store.delete::<Worker>(&worker.id).await?;
    app.dispatcher.wake();
    empty_ok()
}

/// Reads a listening agent's thumbprint, and answers an unsaved worker to register with it.
pub async fn discover(
    State(app): State<App>,
    Path(space): Path<String>,
    params: Params,
) -> ApiResult {
    let space = resolve_space(&app, &space).await?;
    let host = params.get("host").map(str::trim).unwrap_or("");
    if host.is_empty() || host.contains(['/', ' ', '@', '?', '#']) {
        return Err(ApiError::bad_request(
            "host must be a host name or address.",
        ));
    }
    let port: u16 = match params.get("port") {
        None => 10933,
        Some(text) => text
            .trim()
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| ApiError::bad_request("port must be between 1 and 65535."))?,
    };
    match params.get("type").map(str::to_ascii_lowercase).as_deref() {
        None | Some("tentaclepassive") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Discovery of '{other}' workers is not supported; only TentaclePassive."
            )));
        }
    }
    let thumbprint = crate::comms::discover(host, port).await.map_err(|e| {
        ApiError::bad_request(format!(
            "Could not discover a worker at {host}:{port}: {e:#}"
        ))
    })?;
    let uri = format!("https://{host}:{port}/");
    ok(&json!({
        "Id": null,
        "SpaceId": space.id,
        "Name": host,
        "Endpoint": {"CommunicationStyle": "TentaclePassive", "Id": null, "Uri": uri, "Thumbprint": thumbprint, "ProxyId": null, "Links": {}},
        "Thumbprint": thumbprint,
        "Uri": uri,
        "WorkerPoolIds": [],
        "MachinePolicyId": null,
        "IsDisabled": false,
        "HealthStatus": "Unknown",
        "Links": {},
    }))
}

pub async fn connection(
    State(app): State<App>,
    Path((space, id)): Path<(String, String)>,
) -> ApiResult {
    let space = resolve_space(&app, &space).await?;
    let worker = find(&app, &space, &id).await?;
    ok(&json!({
        "Id": format!("{}-connection", worker.id),
        "MachineId": worker.id,
        "Status": worker.status,
        "CurrentTentacleVersion": null,
        "LastChecked": null,
        "HealthStatus": worker.health_status,
        "Logs": [worker.status_summary],
        "Links": {"Self": format!("/api/{}/workers/{}/connection", space.id, worker.id)},
    }))
}
