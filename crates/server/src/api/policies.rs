//! Machine policies (contract 2.5). The default policy of a space cannot be deleted.

use super::{actor, check_space_id, empty_ok, events, filter_named, page};
use crate::access::SpaceScope;
use crate::auth::CurrentUser;
use crate::http::{ApiError, ApiResult, JsonBody, Params, created, ok};
use crate::links;
use crate::state::App;
use axum::Extension;
use axum::extract::{Path, State};
use muster_core::IdKind;
use muster_core::resources::{MachinePolicy, Space, Worker, apply};
use muster_store::Row;

async fn sorted_policies(app: &App, space: &Space) -> Result<Vec<MachinePolicy>, ApiError> {
    let mut policies: Vec<MachinePolicy> = app.store.list(&space.id).await?;
    policies.sort_by_key(|p| p.name.to_lowercase());
    Ok(policies)
}

async fn find(app: &App, space: &Space, id: &str) -> Result<MachinePolicy, ApiError> {
    super::find_in_space(app, space, IdKind::MachinePolicy, id).await
}

pub async fn list(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    params: Params,
) -> ApiResult {
    let policies = filter_named(
        sorted_policies(&app, &space).await?,
        &params,
        |p| &p.id,
        |p| &p.name,
    );
    let path = format!("/api/{}/machinepolicies", space.id);
    page(
        "MachinePolicy",
        policies.iter().map(links::policy).collect(),
        &params,
        &path,
        "skip,take,ids,partialName",
        30,
    )
}

pub async fn all(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    params: Params,
) -> ApiResult {
    let policies = filter_named(
        sorted_policies(&app, &space).await?,
        &params,
        |p| &p.id,
        |p| &p.name,
    );
    ok(&policies.iter().map(links::policy).collect::<Vec<_>>())
}

/// An unsaved policy with every default, for clients to fill in.
pub async fn template(SpaceScope(space): SpaceScope) -> ApiResult {
    let template = MachinePolicy {
        space_id: space.id,
        ..Default::default()
    };
    let mut value = serde_json::to_value(&template).map_err(ApiError::internal)?;
    value["Id"] = serde_json::Value::Null;
    ok(&value)
}

pub async fn get_one(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    ok(&links::policy(&find(&app, &space, &id).await?))
}

fn validate(policy: &mut MachinePolicy) -> Result<(), ApiError> {
    policy.name = policy.name.trim().to_string();
    let mut errors = Vec::new();
    errors.extend(muster_core::ids::check_name(&policy.name));
    if let Err(problems) = policy.validate() {
        errors.extend(problems);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

async fn write(app: &App, policy: &MachinePolicy) -> Result<(), ApiError> {
    let mut rows = vec![Row::of(policy)];
    if policy.is_default {
        let others: Vec<MachinePolicy> = app.store.list(&policy.space_id).await?;
        for mut other in others
            .into_iter()
            .filter(|o| o.is_default && o.id != policy.id)
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
    let mut policy = apply(&MachinePolicy::default(), body).map_err(ApiError::bad_request)?;
    validate(&mut policy)?;
    policy.space_id = space.id.clone();
    policy.id = app.store.next_id(IdKind::MachinePolicy).await?;
    policy.last_modified_on = Some(muster_core::time::now());
    policy.last_modified_by = actor(&user);
    write(&app, &policy).await?;
    events::resource(
        &app,
        &user.0,
        Some(&space.id),
        events::CREATED,
        "Machine policy",
        &policy.name,
        &policy.id,
    )
    .await;
    created(&links::policy(&policy))
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
    let mut policy = apply(&existing, body).map_err(ApiError::bad_request)?;
    policy.id = existing.id.clone();
    policy.space_id = existing.space_id.clone();
    if existing.is_default {
        policy.is_default = true;
    }
    validate(&mut policy)?;
    policy.last_modified_on = Some(muster_core::time::now());
    policy.last_modified_by = actor(&user);
    write(&app, &policy).await?;
    events::resource(
        &app,
        &user.0,
        Some(&space.id),
        events::MODIFIED,
        "Machine policy",
        &policy.name,
        &policy.id,
    )
    .await;
    ok(&links::policy(&policy))
}

pub async fn delete(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    let policy = find(&app, &space, &id).await?;
    if policy.is_default {
        return Err(ApiError::bad_request(
            "The default machine policy cannot be deleted.",
        ));
    }
    let users: Vec<String> = app
        .store
        .list::<Worker>(&space.id)
        .await?
        .into_iter()
        .filter(|w| w.machine_policy_id.as_deref() == Some(policy.id.as_str()))
        .map(|w| w.name)
        .collect();
    if !users.is_empty() {
        return Err(ApiError::validation(vec![format!(
            "The policy is used by {} worker(s) ({}); move them to another policy first.",
            users.len(),
            users.join(", ")
        )]));
    }
    app.store.delete::<MachinePolicy>(&policy.id).await?;
    events::resource(
        &app,
        &user.0,
        Some(&space.id),
        events::DELETED,
        "Machine policy",
        &policy.name,
        &policy.id,
    )
    .await;
    empty_ok()
}

pub async fn workers(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
    params: Params,
) -> ApiResult {
    let policy = find(&app, &space, &id).await?;
    let workers: Vec<Worker> = app
        .store
        .list::<Worker>(&space.id)
        .await?
        .into_iter()
        .filter(|w| w.machine_policy_id.as_deref() == Some(policy.id.as_str()))
        .collect();
    let workers = super::workers::sorted(super::workers::filter_workers(workers, &params)?);
    let workers = super::workers::annotate(&app, workers).await?;
    let path = format!("/api/{}/machinepolicies/{}/workers", space.id, policy.id);
    page(
        "Worker",
        workers.iter().map(links::worker).collect(),
        &params,
        &path,
        "skip,take",
        30,
    )
}
