//! Worker pools (contract 2.3). A space has exactly one default pool, which cannot be deleted.

use super::{actor, check_space_id, empty_ok, events, filter_named, page};
use crate::access::SpaceScope;
use crate::auth::CurrentUser;
use crate::http::{ApiError, ApiResult, JsonBody, Params, created, ok};
use crate::links;
use crate::state::App;
use axum::Extension;
use axum::extract::{Path, State};
use muster_core::resources::{Space, Worker, WorkerPool, apply};
use muster_core::{CommunicationStyle, HealthStatus, IdKind, WorkerPoolType};
use muster_store::Row;
use serde_json::{Map, Value, json};

pub async fn sorted_pools(app: &App, space: &Space) -> Result<Vec<WorkerPool>, ApiError> {
    let mut pools: Vec<WorkerPool> = app.store.list(&space.id).await?;
    pools.sort_by(|a, b| {
        a.sort_order
            .cmp(&b.sort_order)
            .then_with(|| a.name.to_lowercase().cmp(&b.name.to_lowercase()))
    });
    Ok(pools)
}

pub async fn find(app: &App, space: &Space, id: &str) -> Result<WorkerPool, ApiError> {
    super::find_in_space(app, space, IdKind::WorkerPool, id).await
}

pub async fn list(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    params: Params,
) -> ApiResult {
    let pools = filter_named(
        sorted_pools(&app, &space).await?,
        &params,
        |p| &p.id,
        |p| &p.name,
    );
    let path = format!("/api/{}/workerpools", space.id);
    page(
        "WorkerPool",
        pools.iter().map(links::pool).collect(),
        &params,
        &path,
        "name,skip,ids,take,partialName",
        30,
    )
}

pub async fn all(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    params: Params,
) -> ApiResult {
    let pools = filter_named(
        sorted_pools(&app, &space).await?,
        &params,
        |p| &p.id,
        |p| &p.name,
    );
    ok(&pools.iter().map(links::pool).collect::<Vec<_>>())
}

pub async fn get_one(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    ok(&links::pool(&find(&app, &space, &id).await?))
}

fn validate(app: &App, pool: &mut WorkerPool) -> Result<(), ApiError> {
    pool.name = pool.name.trim().to_string();
    let mut errors = Vec::new();
    errors.extend(muster_core::ids::check_name(&pool.name));
    if !(0..=i64::from(i32::MAX)).contains(&pool.sort_order) {
        errors.push(format!("SortOrder must be between 0 and {}.", i32::MAX));
    }
    pool.slug = muster_core::ids::slugify(if pool.slug.trim().is_empty() {
        &pool.name
    } else {
        &pool.slug
    });
    match pool.worker_pool_type {
        WorkerPoolType::StaticWorkerPool => {
            pool.can_add_workers = true;
            pool.worker_type = None;
        }
        WorkerPoolType::DynamicWorkerPool => {
            pool.can_add_workers = false;
            let types = &app.config.worker_types;
            match (pool.worker_type.as_deref(), types.first()) {
                (_, None) => errors.push(
                    "This server defines no dynamic worker types: add one under WorkerTypes in its configuration file (muster server --config FILE), then name it in WorkerType.".to_string(),
                ),
                // The first type is the default, as Octopus Cloud's default type is.
                (None, Some(first)) => pool.worker_type = Some(first.id.clone()),
                (Some(named), _) => match types.iter().find(|t| t.id.eq_ignore_ascii_case(named)) {
                    Some(found) => pool.worker_type = Some(found.id.clone()),
                    None => {
                        let known: Vec<&str> = types.iter().map(|t| t.id.as_str()).collect();
                        errors.push(format!(
                            "WorkerType must be one of {}, got '{named}'.",
                            known.join(", ")
                        ));
                    }
                },
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

/// Writes a pool; when it is (now) the default, the old default loses the flag in the same transaction.
async fn write(app: &App, pool: &WorkerPool) -> Result<(), ApiError> {
    let mut rows = vec![Row::of(pool)];
    if pool.is_default {
        let others: Vec<WorkerPool> = app.store.list(&pool.space_id).await?;
        for mut other in others
            .into_iter()
            .filter(|o| o.is_default && o.id != pool.id)
        {
            other.is_default = false;
            rows.push(Row::of(&other));
        }
    }
    app.store.put_rows(rows).await?;
    Ok(())
}

pub async fn create(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    SpaceScope(space): SpaceScope,
    body: JsonBody,
) -> ApiResult {
    let body = body.object()?;
    check_space_id(body, &space)?;
    let mut pool = apply(&WorkerPool::default(), body).map_err(ApiError::bad_request)?;
    validate(&app, &mut pool)?;
    pool.space_id = space.id.clone();
    if pool.sort_order <= 0 {
        pool.sort_order = sorted_pools(&app, &space)
            .await?
            .iter()
            .map(|p| p.sort_order)
            .max()
            .unwrap_or(0)
            + 1;
    }
    pool.id = app.store.next_id(IdKind::WorkerPool).await?;
    pool.last_modified_on = Some(muster_core::time::now());
    pool.last_modified_by = actor(&user);
    write(&app, &pool).await?;
    events::resource(
        &app,
        &user.0,
        Some(&space.id),
        events::CREATED,
        "Worker pool",
        &pool.name,
        &pool.id,
    )
    .await;
    created(&links::pool(&pool))
}

pub async fn update(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
    body: JsonBody,
) -> ApiResult {
    let existing = find(&app, &space, &id).await?;
    let body = body.object()?;
    check_space_id(body, &space)?;
    let mut pool = apply(&existing, body).map_err(ApiError::bad_request)?;
    pool.id = existing.id.clone();
    pool.space_id = existing.space_id.clone();
    if pool.worker_pool_type != existing.worker_pool_type {
        return Err(ApiError::bad_request(
            "A worker pool's WorkerPoolType cannot be changed.",
        ));
    }
    if existing.is_default {
        pool.is_default = true;
    }
    validate(&app, &mut pool)?;
    pool.last_modified_on = Some(muster_core::time::now());
    pool.last_modified_by = actor(&user);
    write(&app, &pool).await?;
    events::resource(
        &app,
        &user.0,
        Some(&space.id),
        events::MODIFIED,
        "Worker pool",
        &pool.name,
        &pool.id,
    )
    .await;
    ok(&links::pool(&pool))
}

pub async fn delete(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    let pool = find(&app, &space, &id).await?;
    if pool.is_default {
        return Err(ApiError::bad_request(
            "The default worker pool cannot be deleted; make another pool the default first.",
        ));
    }
    let members: Vec<String> = app
        .store
        .list::<Worker>(&space.id)
        .await?
        .into_iter()
        // A dynamic pool's own workers go with it: its scaler destroys them once idle.
        .filter(|w| w.worker_pool_ids.contains(&pool.id) && w.dynamic.is_none())
        .map(|w| w.name)
        .collect();
    if !members.is_empty() {
        return Err(ApiError::validation(vec![format!(
            "The pool still has {} worker(s) ({}); remove them from the pool first.",
            members.len(),
            members.join(", ")
        )]));
    }
    app.store.delete::<WorkerPool>(&pool.id).await?;
    app.dynamic.wake.notify_one();
    events::resource(
        &app,
        &user.0,
        Some(&space.id),
        events::DELETED,
        "Worker pool",
        &pool.name,
        &pool.id,
    )
    .await;
    empty_ok()
}

pub async fn get_sort_order(State(app): State<App>, SpaceScope(space): SpaceScope) -> ApiResult {
    ok(&sorted_pools(&app, &space)
        .await?
        .iter()
        .map(|p| p.id.clone())
        .collect::<Vec<_>>())
}

/// Takes every pool id of the space, in the new order.
pub async fn sort_order(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    body: JsonBody,
) -> ApiResult {
    let ids: Vec<String> = serde_json::from_value(body.0).map_err(|_| {
        ApiError::bad_request("The body must be a JSON array of every worker pool id, in order.")
    })?;
    let mut pools = sorted_pools(&app, &space).await?;
    let canonical: Vec<String> = ids
        .iter()
        .map(|id| {
            muster_core::ids::canonical_id(IdKind::WorkerPool, id).unwrap_or_else(|| id.clone())
        })
        .collect();
    let mut unique = canonical.clone();
    unique.sort();
    unique.dedup();
    let mut known: Vec<String> = pools.iter().map(|p| p.id.clone()).collect();
    known.sort();
    if unique.len() != canonical.len() || unique != known {
        return Err(ApiError::bad_request(format!(
            "The body must list each of the space's {} worker pool ids exactly once.",
            known.len()
        )));
    }
    for pool in &mut pools {
        pool.sort_order = canonical.iter().position(|id| *id == pool.id).unwrap_or(0) as i64 + 1;
    }
    app.store
        .put_rows(pools.iter().map(Row::of).collect())
        .await?;
    empty_ok()
}

pub async fn summary(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    params: Params,
) -> ApiResult {
    let pools = filter_named(
        sorted_pools(&app, &space).await?,
        &params,
        |p| &p.id,
        |p| &p.name,
    );
    let workers =
        super::workers::filter_workers(app.store.list::<Worker>(&space.id).await?, &params)?;
    let hide_empty = params.bool("hideemptyworkerpools")?.unwrap_or(false);
    let counts = |members: &[&Worker]| {
        let mut health = Map::new();
        for status in HealthStatus::ALL {
            health.insert(
                status.as_str().into(),
                json!(
                    members
                        .iter()
                        .filter(|w| w.health_status == *status)
                        .count()
                ),
            );
        }
        let mut endpoints = Map::new();
        for style in [
            CommunicationStyle::TentaclePassive,
            CommunicationStyle::TentacleActive,
            CommunicationStyle::Ssh,
            CommunicationStyle::KubernetesTentacle,
        ] {
            let n = members
                .iter()
                .filter(|w| w.endpoint.as_ref().map(|e| e.style()) == Some(style))
                .count();
            endpoints.insert(style.as_str().into(), json!(n));
        }
        (health, endpoints)
    };
    let mut summaries = Vec::new();
    for pool in &pools {
        let members: Vec<&Worker> = workers
            .iter()
            .filter(|w| w.worker_pool_ids.contains(&pool.id))
            .collect();
        if hide_empty && members.is_empty() {
            continue;
        }
        let (health, endpoints) = counts(&members);
        summaries.push(json!({
            "WorkerPool": links::pool(pool),
            "TotalMachines": members.len(),
            "TotalDisabledMachines": members.iter().filter(|w| w.is_disabled).count(),
            "MachineHealthStatusSummaries": health,
            "MachineEndpointSummaries": endpoints,
            "MachineIdsForCalamariUpgrade": [],
            "MachineIdsForTentacleUpgrade": [],
            "TentacleUpgradesRequired": false,
        }));
    }
    let all: Vec<&Worker> = workers.iter().collect();
    let (health, endpoints) = counts(&all);
    ok(&json!({
        "WorkerPoolSummaries": summaries,
        "TotalMachines": all.len(),
        "TotalDisabledMachines": all.iter().filter(|w| w.is_disabled).count(),
        "MachineHealthStatusSummaries": health,
        "MachineEndpointSummaries": endpoints,
        "MachineIdsForCalamariUpgrade": [],
        "MachineIdsForTentacleUpgrade": [],
        "TentacleUpgradesRequired": false,
    }))
}

pub async fn supported_types(SpaceScope(_): SpaceScope) -> ApiResult {
    ok(
        &json!({"SupportedPoolTypes": [WorkerPoolType::StaticWorkerPool, WorkerPoolType::DynamicWorkerPool]}),
    )
}

/// The worker types of the configuration file, in Octopus's `DynamicWorkerType` shape (`Type`:
/// its provider).
pub async fn dynamic_worker_types(State(app): State<App>, SpaceScope(_): SpaceScope) -> ApiResult {
    let types: Vec<Value> = app
        .config
        .worker_types
        .iter()
        .map(|t| {
            json!({"Id": t.id, "Type": t.provider.name(), "Description": t.description,
                "StartDateUtc": t.start_date_utc, "DeprecationDateUtc": t.deprecation_date_utc,
                "EndOfLifeDateUtc": t.end_of_life_date_utc})
        })
        .collect();
    ok(&json!({"Id": "DynamicWorkerTypes", "WorkerTypes": types}))
}

pub async fn workers(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
    params: Params,
) -> ApiResult {
    let pool = find(&app, &space, &id).await?;
    let members: Vec<Worker> = app
        .store
        .list::<Worker>(&space.id)
        .await?
        .into_iter()
        .filter(|w| w.worker_pool_ids.contains(&pool.id))
        .collect();
    let members = super::workers::sorted(super::workers::filter_workers(members, &params)?);
    let members = super::workers::annotate(&app, members).await?;
    let path = format!("/api/{}/workerpools/{}/workers", space.id, pool.id);
    page(
        "Worker",
        members.iter().map(links::worker).collect(),
        &params,
        &path,
        "skip,take,partialName,isDisabled,healthStatuses,commStyles,shellNames",
        30,
    )
}
