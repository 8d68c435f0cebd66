//! The REST API (contract sections 1–3). Routes are written once, in their normalized form (see
//! `http::normalize_path`): lower case, space-scoped ones under `/api/s/{space}`.

mod policies;
mod pools;
mod root;
mod runbooks;
mod spaces;
mod tasks;
mod teams;
mod usage;
mod users;
mod workers;

use crate::http::{ApiError, ApiResult, Params, json_response};
use crate::state::App;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use muster_core::IdKind;
use muster_core::resources::Space;
use serde_json::Value;

pub fn router(app: App) -> Router {
    let api = Router::new()
        .route("/api", get(root::root))
        .route("/api/openapi.json", get(root::openapi))
        .route("/api/s/{space}", get(root::space_root))
        .route("/api/configuration/certificates", get(root::certificates))
        .route(
            "/api/configuration/certificates/{id}",
            get(root::certificate),
        )
        .route(
            "/api/configuration/certificates/{id}/public-cer",
            get(root::certificate_public),
        )
        .route("/api/certificates/{id}", get(root::certificate))
        // Spaces
        .route("/api/spaces", get(spaces::list).post(spaces::create))
        .route("/api/spaces/all", get(spaces::all))
        .route(
            "/api/spaces/{id}",
            get(spaces::get_one)
                .put(spaces::update)
                .delete(spaces::delete),
        )
        // Users and API keys
        .route("/api/users", get(users::list).post(users::create))
        .route("/api/users/me", get(users::me))
        .route(
            "/api/users/{id}",
            get(users::get_one).put(users::update).delete(users::delete),
        )
        .route("/api/users/{id}/permissions", get(users::permissions))
        .route("/api/users/{id}/spaces", get(users::spaces))
        .route(
            "/api/users/{id}/apikeys",
            get(users::list_keys).post(users::create_key),
        )
        .route(
            "/api/users/{id}/apikeys/{key}",
            get(users::get_key).delete(users::revoke_key),
        )
        // Teams, user roles and the roles given to teams
        .route(
            "/api/teams",
            get(teams::list_teams).post(teams::create_team),
        )
        .route("/api/teams/all", get(teams::all_teams))
        .route(
            "/api/teams/{id}",
            get(teams::get_team)
                .put(teams::update_team)
                .delete(teams::delete_team),
        )
        .route(
            "/api/teams/{id}/scopeduserroles",
            get(teams::team_scoped_roles),
        )
        .route(
            "/api/userroles",
            get(teams::list_roles).post(teams::create_role),
        )
        .route("/api/userroles/all", get(teams::all_roles))
        .route(
            "/api/userroles/{id}",
            get(teams::get_role)
                .put(teams::update_role)
                .delete(teams::delete_role),
        )
        .route(
            "/api/scopeduserroles",
            get(teams::list_scoped).post(teams::create_scoped),
        )
        .route(
            "/api/scopeduserroles/{id}",
            get(teams::get_scoped)
                .put(teams::update_scoped)
                .delete(teams::delete_scoped),
        )
        .route(
            "/api/s/{space}/scopeduserroles",
            get(teams::list_scoped_in_space).post(teams::create_scoped_in_space),
        )
        .route("/api/permissions/all", get(teams::all_permissions))
        // Worker pools
        .route(
            "/api/s/{space}/workerpools",
            get(pools::list).post(pools::create),
        )
        .route("/api/s/{space}/workerpools/all", get(pools::all))
        .route(
            "/api/s/{space}/workerpools/sortorder",
            get(pools::get_sort_order).put(pools::sort_order),
        )
        .route("/api/s/{space}/workerpools/summary", get(pools::summary))
        .route(
            "/api/s/{space}/workerpools/supportedtypes",
            get(pools::supported_types),
        )
        .route(
            "/api/s/{space}/workerpools/dynamicworkertypes",
            get(pools::dynamic_worker_types),
        )
        .route(
            "/api/s/{space}/workerpools/{id}",
            get(pools::get_one).put(pools::update).delete(pools::delete),
        )
        .route(
            "/api/s/{space}/workerpools/{id}/workers",
            get(pools::workers),
        )
        // Workers
        .route(
            "/api/s/{space}/workers",
            get(workers::list).post(workers::create),
        )
        .route("/api/s/{space}/workers/all", get(workers::all))
        .route("/api/s/{space}/workers/discover", get(workers::discover))
        .route("/api/s/{space}/workers/usage", get(usage::one_space))
        .route("/api/usage/workers", get(usage::all_spaces))
        .route(
            "/api/s/{space}/workers/{id}",
            get(workers::get_one)
                .put(workers::update)
                .delete(workers::delete),
        )
        .route(
            "/api/s/{space}/workers/{id}/connection",
            get(workers::connection),
        )
        .route(
            "/api/s/{space}/workers/{id}/shares",
            get(workers::list_shares).post(workers::share),
        )
        .route(
            "/api/s/{space}/workers/{id}/shares/{target}",
            axum::routing::delete(workers::unshare),
        )
        // Machine policies
        .route(
            "/api/s/{space}/machinepolicies",
            get(policies::list).post(policies::create),
        )
        .route("/api/s/{space}/machinepolicies/all", get(policies::all))
        .route(
            "/api/s/{space}/machinepolicies/template",
            get(policies::template),
        )
        .route(
            "/api/s/{space}/machinepolicies/{id}",
            get(policies::get_one)
                .put(policies::update)
                .delete(policies::delete),
        )
        .route(
            "/api/s/{space}/machinepolicies/{id}/workers",
            get(policies::workers),
        )
        .route(
            "/api/s/{space}/machinepolicies/{id}/machines",
            get(policies::workers),
        )
        // Runbooks, their processes and variables, and runs
        .route(
            "/api/s/{space}/runbooks",
            get(runbooks::list).post(runbooks::create),
        )
        .route("/api/s/{space}/runbooks/all", get(runbooks::all))
        .route(
            "/api/s/{space}/runbooks/{id}",
            get(runbooks::get_one)
                .put(runbooks::update)
                .delete(runbooks::delete),
        )
        .route(
            "/api/s/{space}/runbookprocesses/{id}",
            get(runbooks::get_process).put(runbooks::update_process),
        )
        .route(
            "/api/s/{space}/variables/{id}",
            get(runbooks::get_variables).put(runbooks::update_variables),
        )
        .route(
            "/api/s/{space}/runbookruns",
            get(runbooks::list_runs).post(runbooks::create_run),
        )
        .route("/api/s/{space}/runbookruns/{id}", get(runbooks::get_run))
        // Tasks: space-scoped, and unprefixed across spaces
        .route(
            "/api/s/{space}/tasks",
            get(tasks::list_in_space).post(tasks::create_in_space),
        )
        .route("/api/s/{space}/tasks/{id}", get(tasks::get_in_space))
        .route(
            "/api/s/{space}/tasks/{id}/details",
            get(tasks::details_in_space),
        )
        .route("/api/s/{space}/tasks/{id}/raw", get(tasks::raw_in_space))
        .route(
            "/api/s/{space}/tasks/{id}/cancel",
            post(tasks::cancel_in_space),
        )
        .route(
            "/api/s/{space}/tasks/{id}/stream",
            get(tasks::stream_in_space),
        )
        .route(
            "/api/s/{space}/tasks/{id}/queued-behind",
            get(tasks::queued_behind_in_space),
        )
        .route(
            "/api/tasks",
            get(tasks::list_all).post(tasks::create_default),
        )
        .route("/api/tasks/tasktypes", get(tasks::task_types))
        .route("/api/tasks/rerun/{id}", post(tasks::rerun))
        .route("/api/tasks/{id}", get(tasks::get_any))
        .route("/api/tasks/{id}/details", get(tasks::details_any))
        .route("/api/tasks/{id}/raw", get(tasks::raw_any))
        .route("/api/tasks/{id}/cancel", post(tasks::cancel_any))
        .route("/api/tasks/{id}/stream", get(tasks::stream_any))
        .route(
            "/api/tasks/{id}/queued-behind",
            get(tasks::queued_behind_any),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);

    api.layer(axum::middleware::from_fn_with_state(
        app.clone(),
        crate::auth::authenticate,
    ))
    .layer(DefaultBodyLimit::max(crate::http::MAX_BODY_BYTES))
    .layer(tower_http::catch_panic::CatchPanicLayer::custom(
        panic_response,
    ))
    .with_state(app)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "There is no resource at this address.",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "This address does not accept that method.",
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    tracing::error!("a request handler panicked");
    let body = muster_core::ErrorBody::new("The server failed to handle the request.", vec![]);
    json_response(StatusCode::INTERNAL_SERVER_ERROR, &body)
}

/// The space a scoped route names: `default`, an id, or a slug. Unknown answers 404.
pub async fn resolve_space(app: &App, key: &str) -> Result<Space, ApiError> {
    let found = if key == crate::http::DEFAULT_SPACE {
        app.store
            .list::<Space>("")
            .await?
            .into_iter()
            .find(|s| s.is_default)
    } else if let Some(id) = muster_core::ids::canonical_id(IdKind::Space, key) {
        app.store.get::<Space>(&id).await?
    } else {
        app.store
            .find_by_ext::<Space>(key)
            .await?
            .into_iter()
            .next()
    };
    found.ok_or_else(|| ApiError::not_found(key))
}

/// The canonical id of a path segment, or 404 when it is not even of the right kind.
pub fn path_id(kind: IdKind, text: &str) -> Result<String, ApiError> {
    muster_core::ids::canonical_id(kind, text).ok_or_else(|| ApiError::not_found(text))
}

/// Keeps the items that match `ids`, `name` (exact, any case) and `partialName` (contains, any case).
pub fn filter_named<T>(
    items: Vec<T>,
    params: &Params,
    id: impl Fn(&T) -> &str,
    name: impl Fn(&T) -> &str,
) -> Vec<T> {
    let ids: Option<Vec<String>> = params
        .list("ids")
        .map(|ids| ids.iter().map(|i| i.to_ascii_lowercase()).collect());
    let exact = params.get("name").map(|n| n.trim().to_lowercase());
    let partial = params.get("partialname").map(|n| n.trim().to_lowercase());
    items
        .into_iter()
        .filter(|item| {
            ids.as_ref()
                .is_none_or(|ids| ids.contains(&id(item).to_ascii_lowercase()))
        })
        .filter(|item| {
            exact
                .as_ref()
                .is_none_or(|n| name(item).to_lowercase() == *n)
        })
        .filter(|item| {
            partial
                .as_ref()
                .is_none_or(|n| name(item).to_lowercase().contains(n.as_str()))
        })
        .collect()
}

/// A page of already filtered and ordered items, in the contract's envelope.
pub fn page(
    item_type: &str,
    items: Vec<Value>,
    params: &Params,
    path: &str,
    template_params: &str,
    default_take: u64,
) -> ApiResult {
    let request = params.page(default_take)?;
    let range = request.range(items.len());
    let body = muster_core::paging::envelope(
        item_type,
        &items[range],
        items.len() as u64,
        request,
        path,
        template_params,
        &params.filters(),
    );
    crate::http::ok(&body)
}

/// Rejects a body whose `SpaceId` names another space than the route's.
pub fn check_space_id(body: &Value, space: &Space) -> Result<(), ApiError> {
    match body.get("SpaceId").and_then(Value::as_str) {
        Some(given) if !given.is_empty() && !given.eq_ignore_ascii_case(&space.id) => {
            Err(ApiError::bad_request(format!(
                "The body's SpaceId '{given}' does not match the space of the route, '{}'.",
                space.id
            )))
        }
        _ => Ok(()),
    }
}

/// Who made a change, for `LastModifiedBy`.
pub fn actor(user: &crate::auth::CurrentUser) -> Option<String> {
    Some(user.0.username.clone())
}

pub fn empty_ok() -> ApiResult {
    Ok(axum::response::IntoResponse::into_response(StatusCode::OK))
}
