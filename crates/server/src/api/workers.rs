//! Workers (contract 2.4). Names are unique per space; pools must be static pools of the same space;
//! a null policy means the space's default policy.

use super::{actor, check_space_id, empty_ok, events, filter_named, page, path_id, resolve_space};
use crate::access::Access;
use crate::access::SpaceScope;
use crate::auth::CurrentUser;
use crate::http::{ApiError, ApiResult, JsonBody, Params, created, ok};
use crate::links;
use crate::state::App;
use axum::Extension;
use axum::extract::{Path, State};
use muster_core::resources::{Account, Endpoint, MachinePolicy, Space, Worker, WorkerPool, apply};
use muster_core::{
    CommunicationStyle, HealthStatus, IdKind, MachineStatus, TaskState, WorkerPoolType,
};
use muster_ssh::keys::Fingerprint;
use serde_json::{Value, json};
use std::collections::HashMap;

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

/// Fills the read-only sharing fields: whether the agent serves several spaces, and, on the home
/// worker, which spaces it is shared into.
pub async fn annotate(app: &App, mut workers: Vec<Worker>) -> Result<Vec<Worker>, ApiError> {
    let mut spaces_of: HashMap<String, Vec<(String, bool)>> = HashMap::new();
    // A few workers (one resource, a small page): each machine's records by the machine-key
    // index; many: one read of every worker. Either way it costs no more than the listing itself.
    let records: Vec<Worker> = if workers.len() <= 16 {
        let mut records = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for key in workers.iter().filter_map(Worker::machine_key) {
            if seen.insert(key) {
                records.extend(app.store.find_by_ext::<Worker>(key).await?);
            }
        }
        records
    } else {
        app.store.list_all::<Worker>().await?
    };
    for w in records {
        if let Some(t) = w.machine_key().map(str::to_string) {
            spaces_of
                .entry(t)
                .or_default()
                .push((w.space_id.clone(), w.home_worker_id.is_some()));
        }
    }
    for worker in &mut workers {
        let records = worker
            .machine_key()
            .and_then(|t| spaces_of.get(t))
            .map(Vec::as_slice)
            .unwrap_or_default();
        worker.is_shared = records.iter().any(|(space, _)| *space != worker.space_id);
        worker.shared_with_space_ids = if worker.home_worker_id.is_none() {
            records
                .iter()
                .filter(|(space, is_share)| *is_share && *space != worker.space_id)
                .map(|(space, _)| space.clone())
                .collect()
        } else {
            Vec::new()
        };
    }
    Ok(workers)
}

pub(super) async fn resource(app: &App, worker: Worker) -> Result<Value, ApiError> {
    let annotated = annotate(app, vec![worker]).await?;
    Ok(links::worker(&annotated[0]))
}

pub async fn find(app: &App, space: &Space, id: &str) -> Result<Worker, ApiError> {
    super::find_in_space(app, space, IdKind::Worker, id).await
}

pub async fn list(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    params: Params,
) -> ApiResult {
    let workers = sorted(filter_workers(app.store.list(&space.id).await?, &params)?);
    let workers = annotate(&app, workers).await?;
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

pub async fn all(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    params: Params,
) -> ApiResult {
    let workers = sorted(filter_workers(app.store.list(&space.id).await?, &params)?);
    let workers = annotate(&app, workers).await?;
    ok(&workers.iter().map(links::worker).collect::<Vec<_>>())
}

pub async fn get_one(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    ok(&resource(&app, find(&app, &space, &id).await?).await?)
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
    if let Some(thumbprint) = &worker.thumbprint
        && let Some(twin) = app
            .store
            .find_by_ext::<Worker>(thumbprint)
            .await?
            .into_iter()
            .find(|w| w.space_id == space.id && w.id != worker.id)
    {
        errors.push(format!(
            "The agent with this thumbprint is already worker '{}' ({}) of this space; add pools to it instead.",
            twin.name, twin.id
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

/// The checks of an SSH endpoint that need more than its shape: no proxy, a fingerprint in a form
/// Muster reads (kept in the form given), and an account of the worker's space. Muster never pins a
/// host key on first use, so a worker without a fingerprint is refused with the way to get one.
async fn check_ssh_endpoint(app: &App, space: &Space, worker: &mut Worker) -> Result<(), ApiError> {
    let Some(Endpoint::Ssh(endpoint)) = worker.endpoint.as_mut() else {
        return Ok(());
    };
    let mut errors = Vec::new();
    if endpoint
        .proxy_id
        .as_deref()
        .is_some_and(|p| !p.trim().is_empty())
    {
        errors.push(
            "Endpoint.ProxyId: Muster does not support proxies; reach the SSH worker directly and send ProxyId null."
                .to_string(),
        );
    }
    match endpoint
        .fingerprint
        .as_deref()
        .map(str::trim)
        .filter(|f| !f.is_empty())
    {
        None => errors.push(format!(
            "Endpoint.Fingerprint is required: discover the host key first (GET /api/{}/workers/discover?host={}&port={}&type=Ssh, or `muster worker add-ssh` without --fingerprint), check it, and send it; Muster never trusts a host key on first use.",
            space.id, endpoint.host, endpoint.port
        )),
        Some(text) => match Fingerprint::parse(text) {
            Ok(fingerprint) => endpoint.fingerprint = Some(fingerprint.to_string()),
            Err(why) => errors.push(format!("Endpoint.Fingerprint: {why}")),
        },
    }
    match endpoint
        .account_id
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        None => errors.push(
            "Endpoint.AccountId is required: an SshKeyPair or UsernamePassword account of this space."
                .to_string(),
        ),
        Some(given) => {
            let account = match muster_core::ids::canonical_id(IdKind::Account, given) {
                Some(id) => app.store.get::<Account>(&id).await?,
                None => None,
            };
            match account.filter(|a| a.space_id == space.id) {
                Some(account) => endpoint.account_id = Some(account.id),
                None => errors.push(format!(
                    "Endpoint.AccountId: '{given}' is not an account of space {}.",
                    space.id
                )),
            }
        }
    }
    if errors.is_empty()
        && let Some(key) = worker.machine_key()
        && let Some(twin) = app
            .store
            .find_by_ext::<Worker>(key)
            .await?
            .into_iter()
            .find(|w| w.space_id == space.id && w.id != worker.id)
    {
        errors.push(format!(
            "The SSH host with this fingerprint is already worker '{}' ({}) of this space; add pools to it instead.",
            twin.name, twin.id
        ));
    }
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
    worker.home_worker_id = from.home_worker_id.clone();
    worker.home_space_id = from.home_space_id.clone();
    worker.created_on = from.created_on;
    worker.is_shared = false;
    worker.shared_with_space_ids = Vec::new();
    worker.dynamic = from.dynamic.clone();
}

/// When a new worker names an agent already registered in another space, it becomes a share of that
/// agent (the blog's "add workers to remaining spaces" step): the caller needs WorkerEdit in the
/// agent's home space too, and a polling agent keeps its one subscription.
async fn link_to_home(app: &App, access: &Access, worker: &mut Worker) -> Result<(), ApiError> {
    let Some(key) = worker.machine_key().map(str::to_string) else {
        return Ok(());
    };
    let records = app.store.find_by_ext::<Worker>(&key).await?;
    let Some(home) = records
        .iter()
        .filter(|w| w.space_id != worker.space_id)
        .min_by_key(|w| {
            (
                w.home_worker_id.is_some(),
                muster_core::parse_id(IdKind::Worker, &w.id),
            )
        })
    else {
        return Ok(());
    };
    let (home_id, home_space) = match (&home.home_worker_id, &home.home_space_id) {
        (Some(id), Some(space)) => (id.clone(), space.clone()),
        _ => (home.id.clone(), home.space_id.clone()),
    };
    refuse_dynamic(home, "shared into another space")?;
    if !access.has(&home_space, "WorkerEdit") {
        return Err(ApiError::forbidden(format!(
            "This agent is registered in another space; sharing it here needs WorkerEdit in its home space ({home_space}) as well."
        )));
    }
    let home_style = home.endpoint.as_ref().map(|e| e.style());
    if home_style != worker.endpoint.as_ref().map(|e| e.style()) {
        return Err(ApiError::bad_request(
            "The Endpoint's CommunicationStyle must be the agent's own, as registered in its home space.",
        ));
    }
    if home_style == Some(CommunicationStyle::TentacleActive) && home.uri != worker.uri {
        return Err(ApiError::bad_request(format!(
            "A polling agent has one subscription: the Endpoint's Uri must be {}.",
            home.uri.clone().unwrap_or_default()
        )));
    }
    worker.home_worker_id = Some(home_id);
    worker.home_space_id = Some(home_space);
    worker.health_status = home.health_status;
    worker.status = home.status;
    worker.status_summary = home.status_summary.clone();
    worker.operating_system = home.operating_system.clone();
    worker.architecture = home.architecture.clone();
    worker.shell_name = home.shell_name.clone();
    Ok(())
}

/// A dynamic worker belongs to its pool, which makes and destroys it: it is not shared, moved or
/// deleted by hand. Disabling it drains it, and the pool destroys it once idle.
fn refuse_dynamic(worker: &Worker, what: &str) -> Result<(), ApiError> {
    match &worker.dynamic {
        None => Ok(()),
        Some(_) => Err(ApiError::bad_request(format!(
            "Worker '{}' was made by its dynamic pool and cannot be {what}. Disable it (`muster worker disable NAME`, or IsDisabled: true) to have the pool drain it and destroy it once idle.",
            worker.name
        ))),
    }
}

fn check_share_limit(worker: &Worker) -> Result<(), ApiError> {
    if let Some(limit) = worker.share_task_limit
        && !(1..=i64::from(i32::MAX)).contains(&limit)
    {
        return Err(ApiError::bad_request(
            "ShareTaskLimit must be at least 1 (or null for no limit).",
        ));
    }
    if worker.share_task_limit.is_some() && worker.home_worker_id.is_none() {
        return Err(ApiError::bad_request(
            "ShareTaskLimit applies to a worker shared from another space; this worker is the agent's home.",
        ));
    }
    Ok(())
}

pub async fn create(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    Extension(access): Extension<Access>,
    SpaceScope(space): SpaceScope,
    body: JsonBody,
) -> ApiResult {
    let body = body.object()?;
    created(&register(&app, &user, &access, &space, body).await?)
}

/// Registers a worker in `space` from a request's body, as `user` (`POST …/workers`, and a
/// registration token's `POST /api/workerregistrations`): the worker's resource.
pub(super) async fn register(
    app: &App,
    user: &CurrentUser,
    access: &Access,
    space: &Space,
    body: &Value,
) -> Result<Value, ApiError> {
    check_space_id(body, space)?;
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
    validate(app, space, &mut worker).await?;
    check_ssh_endpoint(app, space, &mut worker).await?;
    // An SSH host registered in two spaces, each with its own account, is two logins to one
    // machine: they share its leases and health record (by host key) without either space
    // needing rights in the other. An explicit share (`…/shares`) links them.
    if !matches!(worker.endpoint, Some(Endpoint::Ssh(_))) {
        link_to_home(app, access, &mut worker).await?;
    }
    check_share_limit(&worker)?;
    worker.id = app.store.next_id(IdKind::Worker).await?;
    worker.created_on = Some(muster_core::time::now());
    worker.last_modified_on = worker.created_on;
    worker.last_modified_by = actor(user);
    app.store.put(&worker).await?;
    app.signals.dispatch.notify_one();
    app.signals.health.notify_one();
    events::record(
        app,
        Some(&user.0),
        Some(&space.id),
        events::CREATED,
        format!("Worker '{}' registered", worker.name),
        vec![worker.id.clone()],
    )
    .await;
    resource(app, worker).await
}

pub async fn update(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    Extension(access): Extension<Access>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
    body: JsonBody,
) -> ApiResult {
    // A health check writes the whole worker: its machine's health lock, held from this read to
    // the write, keeps a check that read the worker before from writing it back over this change
    // (a new pin or endpoint would be lost).
    let machine = find(&app, &space, &id)
        .await?
        .machine_key()
        .map(str::to_string);
    let lock = machine.as_deref().map(|key| app.comms.health_lock(key));
    let _held = match &lock {
        Some(lock) => Some(lock.lock().await),
        None => None,
    };
    let existing = find(&app, &space, &id).await?;
    let body = body.object()?;
    check_space_id(body, &space)?;
    let mut worker = apply(&existing, body).map_err(ApiError::bad_request)?;
    if existing.dynamic.is_some() {
        // Only IsDisabled is the user's: the rest is the pool's.
        let disabled = worker.is_disabled;
        worker = existing.clone();
        worker.is_disabled = disabled;
        // The block is the scaler's, which may write it on another node: the latest is kept.
        if let Some(fresh) = app.store.get::<Worker>(&existing.id).await? {
            worker.dynamic = fresh.dynamic;
        }
        worker.last_modified_on = Some(muster_core::time::now());
        worker.last_modified_by = actor(&user);
        app.store.put(&worker).await?;
        app.signals.dispatch.notify_one();
        app.dynamic.wake.notify_one();
        return ok(&resource(&app, worker).await?);
    }
    worker.id = existing.id.clone();
    worker.space_id = existing.space_id.clone();
    keep_server_fields(&mut worker, &existing);
    validate(&app, &space, &mut worker).await?;
    if existing.home_space_id.is_none() {
        // A share keeps its home's endpoint, whose account is of the home space.
        check_ssh_endpoint(&app, &space, &mut worker).await?;
    }
    if let Some(home_space) = &existing.home_space_id {
        // A shared worker belongs to its home space's editors.
        if !access.has(home_space, "WorkerEdit") {
            return Err(ApiError::forbidden(format!(
                "This worker is shared from space {home_space}; changing it needs WorkerEdit there. Deleting it here stops using it in this space."
            )));
        }
        if worker.machine_key() != existing.machine_key() {
            return Err(ApiError::bad_request(
                "A shared worker's machine (its agent or SSH host key) cannot change; share another worker instead.",
            ));
        }
    } else if worker.machine_key() != existing.machine_key()
        && !matches!(worker.endpoint, Some(Endpoint::Ssh(_)))
    {
        link_to_home(&app, &access, &mut worker).await?;
    }
    check_share_limit(&worker)?;
    worker.last_modified_on = Some(muster_core::time::now());
    worker.last_modified_by = actor(&user);
    app.store.put(&worker).await?;
    // An SSH host's shares name it by its endpoint: a new pin (or account, host, port) goes to them.
    if existing.home_worker_id.is_none()
        && matches!(worker.endpoint, Some(Endpoint::Ssh(_)))
        && worker.endpoint != existing.endpoint
    {
        for mut share in shares_of(&app, &existing).await? {
            share.endpoint = worker.endpoint.clone();
            share.uri = worker.uri.clone();
            app.store.put(&share).await?;
        }
    }
    app.signals.dispatch.notify_one();
    app.signals.health.notify_one();
    let renamed = if worker.name == existing.name {
        String::new()
    } else {
        format!(" (was '{}')", existing.name)
    };
    events::record(
        &app,
        Some(&user.0),
        Some(&space.id),
        events::MODIFIED,
        format!("Worker '{}'{renamed} changed", worker.name),
        vec![worker.id.clone()],
    )
    .await;
    ok(&resource(&app, worker).await?)
}

pub async fn delete(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    let worker = find(&app, &space, &id).await?;
    refuse_dynamic(&worker, "deleted by hand")?;
    // The home worker goes with its shares; a share goes alone (the space stops using the agent).
    let mut deleted = vec![worker.id.clone()];
    if worker.home_worker_id.is_none() {
        for share in shares_of(&app, &worker).await? {
            app.store.delete::<Worker>(&share.id).await?;
            deleted.push(share.id);
        }
    }
    app.store.delete::<Worker>(&worker.id).await?;
    app.signals.dispatch.notify_one();
    if let Some(key) = worker.machine_key() {
        tokio::spawn(close_when_unused(app.clone(), key.to_string(), deleted));
    }
    events::record(
        &app,
        Some(&user.0),
        Some(&space.id),
        events::DELETED,
        format!("Worker '{}' deleted", worker.name),
        vec![worker.id.clone()],
    )
    .await;
    empty_ok()
}

/// Closes a deleted worker's agent link once no worker names the agent and no task runs on it
/// any more: its running tasks finish first (as a deleted share's do), then the agent is told it
/// was deleted when it dials again. Checked every 2 seconds, for a day at most.
async fn close_when_unused(app: App, key: String, deleted: Vec<String>) {
    for _ in 0..(24 * 60 * 30) {
        let named = app.store.find_by_ext::<Worker>(&key).await;
        if !matches!(&named, Ok(workers) if workers.is_empty()) {
            return;
        }
        let running = app
            .store
            .tasks_in_states(&[TaskState::Executing, TaskState::Cancelling])
            .await;
        let busy = match running {
            Ok(tasks) => tasks
                .iter()
                .any(|t| t.worker_id.as_ref().is_some_and(|id| deleted.contains(id))),
            Err(_) => true,
        };
        if !busy {
            app.comms.close(&key);
            // The node that holds its link, if another, closes it on hearing this.
            let _ = app.store.note(muster_store::Note::Agent(key)).await;
            return;
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

/// The workers that share a home worker's agent into other spaces.
async fn shares_of(app: &App, home: &Worker) -> Result<Vec<Worker>, ApiError> {
    let Some(key) = home.machine_key() else {
        return Ok(Vec::new());
    };
    Ok(app
        .store
        .find_by_ext::<Worker>(key)
        .await?
        .into_iter()
        .filter(|w| w.home_worker_id.as_deref() == Some(home.id.as_str()))
        .collect())
}

/// The home worker of a worker: itself, or the one it is shared from.
async fn home_of(app: &App, worker: Worker) -> Result<Worker, ApiError> {
    match &worker.home_worker_id {
        None => Ok(worker),
        Some(id) => app
            .store
            .get::<Worker>(id)
            .await?
            .ok_or_else(|| ApiError::not_found(id)),
    }
}

/// `GET /api/{space}/workers/{id}/shares`: the spaces the agent is shared into (those the caller sees).
pub async fn list_shares(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    let home = home_of(&app, find(&app, &space, &id).await?).await?;
    let mut shares = shares_of(&app, &home).await?;
    shares.retain(|w| access.sees_space(&w.space_id));
    let shares = annotate(&app, sorted(shares)).await?;
    ok(&shares.iter().map(links::worker).collect::<Vec<_>>())
}

/// `POST /api/{space}/workers/{id}/shares`: makes the agent a worker of named pools in another space
/// (`SpaceId`, `WorkerPoolIds` by id or name, optional `TaskLimit`), or updates that share. It needs
/// WorkerEdit in both spaces; sharing twice changes the share, never duplicates it.
pub async fn share(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    Extension(access): Extension<Access>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
    body: JsonBody,
) -> ApiResult {
    let home = home_of(&app, find(&app, &space, &id).await?).await?;
    refuse_dynamic(&home, "shared into another space")?;
    let home_space = app
        .store
        .get::<Space>(&home.space_id)
        .await?
        .ok_or_else(|| ApiError::not_found(&id))?;
    if !access.sees_space(&home_space.id) {
        return Err(ApiError::forbidden(format!(
            "This worker is shared from another space; only editors of its home space may share it ({id})."
        )));
    }
    access.require(&home_space, "WorkerEdit")?;
    let body = body.object()?;
    let target_key = body
        .get("SpaceId")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("SpaceId must name the space to share the worker into.")
        })?;
    let target = resolve_space(&app, &target_key.to_ascii_lowercase())
        .await
        .ok()
        .filter(|s| access.sees_space(&s.id))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "SpaceId '{target_key}' is not a space of this server."
            ))
        })?;
    access.require(&target, "WorkerEdit")?;
    if target.id == home.space_id {
        return Err(ApiError::bad_request(
            "The worker is already in that space: it is the agent's home.",
        ));
    }
    // Absent keeps the share's limit, null removes it: running the same share again changes nothing.
    let limit = match body.get("TaskLimit") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(value) => Some(Some(
            value
                .as_i64()
                .filter(|n| (1..=i64::from(i32::MAX)).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "TaskLimit must be a whole number from 1 to {} (or null for no limit).",
                        i32::MAX
                    ))
                })?,
        )),
    };
    let pools: Vec<WorkerPool> = app.store.list(&target.id).await?;
    let mut pool_ids = Vec::new();
    let given: Vec<String> = match body.get("WorkerPoolIds") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::bad_request("WorkerPoolIds must be a list of pool ids or names.")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(Value::String(one)) => vec![one.clone()],
        _ => {
            return Err(ApiError::bad_request(
                "WorkerPoolIds must name at least one pool of the target space.",
            ));
        }
    };
    for key in &given {
        let key = key.trim();
        let found = pools.iter().find(|p| {
            p.id.eq_ignore_ascii_case(key)
                || p.name.eq_ignore_ascii_case(key)
                || p.slug.eq_ignore_ascii_case(key)
        });
        match found {
            Some(pool) => pool_ids.push(pool.id.clone()),
            None => {
                return Err(ApiError::bad_request(format!(
                    "'{key}' is not a worker pool of space {}.",
                    target.id
                )));
            }
        }
    }
    let existing = shares_of(&app, &home)
        .await?
        .into_iter()
        .find(|w| w.space_id == target.id);
    let is_new = existing.is_none();
    let mut worker = match existing {
        Some(worker) => worker,
        None => Worker {
            name: body
                .get("Name")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| home.name.clone()),
            endpoint: home.endpoint.clone(),
            space_id: target.id.clone(),
            ..Default::default()
        },
    };
    // The same pools and limit again: nothing to write, and no event for a change that did not happen.
    let unchanged = !is_new && {
        let (mut before, mut after) = (worker.worker_pool_ids.clone(), pool_ids.clone());
        before.sort();
        after.sort();
        before.dedup();
        after.dedup();
        before == after && limit.is_none_or(|l| l == worker.share_task_limit)
    };
    if unchanged {
        let body = resource(&app, worker).await?;
        return ok(&body);
    }
    worker.worker_pool_ids = pool_ids;
    if let Some(limit) = limit {
        worker.share_task_limit = limit;
    }
    worker.machine_policy_id = worker.machine_policy_id.filter(|p| !p.is_empty());
    validate(&app, &target, &mut worker).await?;
    if is_new {
        link_to_home(&app, &access, &mut worker).await?;
        worker.id = app.store.next_id(IdKind::Worker).await?;
        worker.created_on = Some(muster_core::time::now());
    }
    check_share_limit(&worker)?;
    worker.last_modified_on = Some(muster_core::time::now());
    worker.last_modified_by = actor(&user);
    app.store.put(&worker).await?;
    app.signals.dispatch.notify_one();
    let what = if is_new {
        "shared into"
    } else {
        "changed its share in"
    };
    let message = format!("Worker '{}' {what} space '{}'", home.name, target.name);
    let category = if is_new {
        events::CREATED
    } else {
        events::MODIFIED
    };
    record_share(&app, &user, &home, &worker, category, message).await;
    let body = resource(&app, worker).await?;
    if is_new { created(&body) } else { ok(&body) }
}

/// `DELETE /api/{space}/workers/{id}/shares/{spaceId}`: the other space stops using the agent. Its
/// running tasks finish; no new ones are routed to it.
pub async fn unshare(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    SpaceScope(space): SpaceScope,
    Path((_, id, target)): Path<(String, String, String)>,
) -> ApiResult {
    let home = home_of(&app, find(&app, &space, &id).await?).await?;
    let target = path_id(IdKind::Space, &target)?;
    let share = shares_of(&app, &home)
        .await?
        .into_iter()
        .find(|w| w.space_id == target)
        .ok_or_else(|| ApiError::not_found(&target))?;
    app.store.delete::<Worker>(&share.id).await?;
    app.signals.dispatch.notify_one();
    let target_name = app
        .store
        .get::<Space>(&share.space_id)
        .await?
        .map_or_else(|| share.space_id.clone(), |s| s.name);
    let message = format!(
        "Worker '{}' no longer shared into space '{target_name}'",
        home.name
    );
    record_share(&app, &user, &home, &share, events::DELETED, message).await;
    empty_ok()
}

/// A share's event, in the home space and in the space it shares into: both spaces' members see it.
async fn record_share(
    app: &App,
    user: &CurrentUser,
    home: &Worker,
    share: &Worker,
    category: &str,
    message: String,
) {
    for space in [&home.space_id, &share.space_id] {
        events::record(
            app,
            Some(&user.0),
            Some(space),
            category,
            message.clone(),
            vec![home.id.clone(), share.id.clone(), share.space_id.clone()],
        )
        .await;
    }
}

/// How long SSH discovery waits for a host's key: a closed port answers at once, a silent host or a
/// server that is not SSH is given up on after this.
const SSH_DISCOVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads a listening agent's thumbprint (`type=TentaclePassive`, port 10933) or an SSH host's key
/// (`type=Ssh`, port 22), and answers an unsaved worker to register with it. Nothing is trusted or
/// stored: the caller checks what it read and registers the worker with it.
pub async fn discover(SpaceScope(space): SpaceScope, params: Params) -> ApiResult {
    let host = params.get("host").map(str::trim).unwrap_or("");
    if host.is_empty() || host.contains(['/', ' ', '@', '?', '#']) {
        return Err(ApiError::bad_request(
            "host must be a host name or address.",
        ));
    }
    let ssh = match params.get("type").map(str::to_ascii_lowercase).as_deref() {
        None | Some("tentaclepassive") => false,
        Some("ssh") => true,
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "Discovery of '{}' workers is not supported; only TentaclePassive and Ssh.",
                params.get("type").unwrap_or_default()
            )));
        }
    };
    let port: u16 = match params.get("port") {
        None => {
            if ssh {
                22
            } else {
                10933
            }
        }
        Some(text) => text
            .trim()
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| ApiError::bad_request("port must be between 1 and 65535."))?,
    };
    if ssh {
        let key = muster_ssh::scan(host, port, SSH_DISCOVERY_TIMEOUT)
            .await
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "Could not read an SSH host key at {host}:{port}: {e}. Is it an SSH server, and is the port right?"
                ))
            })?;
        let uri = format!("ssh://{host}:{port}/");
        let fingerprint = key.sha256.to_string();
        return ok(&json!({
            "Id": null,
            "SpaceId": space.id,
            "Name": host,
            "Endpoint": {"CommunicationStyle": "Ssh", "Id": null, "Host": host, "Port": port,
                "Fingerprint": fingerprint, "HostKeyAlgorithm": key.algorithm, "AccountId": null,
                "DotNetCorePlatform": null, "ProxyId": null, "Uri": uri, "Links": {}},
            "Thumbprint": null,
            "Uri": uri,
            "WorkerPoolIds": [],
            "MachinePolicyId": null,
            "IsDisabled": false,
            "HealthStatus": "Unknown",
            "Links": {},
        }));
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
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
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
