//! The REST API (contract sections 1–3). Routes are written once, in their normalized form (see
//! `http::normalize_path`): lower case, space-scoped ones under `/api/s/{space}`.

mod accounts;
mod artifacts;
pub mod events;
mod machines;
mod nodes;
mod policies;
mod pools;
mod registration;
mod root;
mod runbooks;
mod spaces;
mod tasks;
mod teams;
mod usage;
mod users;
mod workers;

use crate::access::{Rule, Rules};
use crate::http::{ApiError, ApiResult, Params, json_response};
use crate::state::App;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::http::StatusCode;
use axum::routing::{MethodFilter, on};
use muster_core::IdKind;
use muster_core::resources::Space;
use serde_json::Value;

/// Every route, its method, its rule (who may call it: see [`Rule`]) and its handler: the one
/// list from which the router is built and the access check reads, and which the permission test
/// walks. Routes are written in their normalized form (see `http::normalize_path`).
#[rustfmt::skip]
fn routes() -> Routes {
    use Rule::*;
    const GET: Method = Method::GET;
    const POST: Method = Method::POST;
    const PUT: Method = Method::PUT;
    const DELETE: Method = Method::DELETE;
    Routes::default()
        .add(GET, "/api", Anonymous, root::root)
        .add(GET, "/api/openapi.json", Anonymous, root::openapi)
        .add(GET, "/api/s/{space}", Space(None), root::space_root)
        .add(GET, "/api/configuration/certificates", User, root::certificates)
        .add(GET, "/api/configuration/certificates/{id}", User, root::certificate)
        .add(GET, "/api/configuration/certificates/{id}/public-cer", User, root::certificate_public)
        .add(GET, "/api/certificates/{id}", User, root::certificate)
        .add(GET, "/api/spaces", User, spaces::list)
        .add(POST, "/api/spaces", Admin, spaces::create)
        .add(GET, "/api/spaces/all", User, spaces::all)
        .add(GET, "/api/spaces/{id}", User, spaces::get_one)
        .add(PUT, "/api/spaces/{id}", Admin, spaces::update)
        .add(DELETE, "/api/spaces/{id}", Admin, spaces::delete)
        .add(GET, "/api/users", User, users::list)
        .add(POST, "/api/users", Admin, users::create)
        .add(GET, "/api/users/me", User, users::me)
        .add(GET, "/api/users/{id}", User, users::get_one)
        .add(PUT, "/api/users/{id}", User, users::update)
        .add(DELETE, "/api/users/{id}", Admin, users::delete)
        .add(GET, "/api/users/{id}/permissions", User, users::permissions)
        .add(GET, "/api/users/{id}/spaces", User, users::spaces)
        .add(GET, "/api/users/{id}/apikeys", User, users::list_keys)
        .add(POST, "/api/users/{id}/apikeys", User, users::create_key)
        .add(GET, "/api/users/{id}/apikeys/{key}", User, users::get_key)
        .add(DELETE, "/api/users/{id}/apikeys/{key}", User, users::revoke_key)
        .add(GET, "/api/teams", Admin, teams::list_teams)
        .add(POST, "/api/teams", Admin, teams::create_team)
        .add(GET, "/api/teams/all", Admin, teams::all_teams)
        .add(GET, "/api/teams/{id}", Admin, teams::get_team)
        .add(PUT, "/api/teams/{id}", Admin, teams::update_team)
        .add(DELETE, "/api/teams/{id}", Admin, teams::delete_team)
        .add(GET, "/api/teams/{id}/scopeduserroles", Admin, teams::team_scoped_roles)
        .add(GET, "/api/userroles", Admin, teams::list_roles)
        .add(POST, "/api/userroles", Admin, teams::create_role)
        .add(GET, "/api/userroles/all", Admin, teams::all_roles)
        .add(GET, "/api/userroles/{id}", Admin, teams::get_role)
        .add(PUT, "/api/userroles/{id}", Admin, teams::update_role)
        .add(DELETE, "/api/userroles/{id}", Admin, teams::delete_role)
        .add(GET, "/api/scopeduserroles", Admin, teams::list_scoped)
        .add(POST, "/api/scopeduserroles", Admin, teams::create_scoped)
        .add(GET, "/api/scopeduserroles/{id}", Admin, teams::get_scoped)
        .add(PUT, "/api/scopeduserroles/{id}", Admin, teams::update_scoped)
        .add(DELETE, "/api/scopeduserroles/{id}", Admin, teams::delete_scoped)
        .add(GET, "/api/s/{space}/scopeduserroles", SpaceAdmin, teams::list_scoped_in_space)
        .add(POST, "/api/s/{space}/scopeduserroles", SpaceAdmin, teams::create_scoped_in_space)
        .add(GET, "/api/permissions/all", User, teams::all_permissions)
        .add(GET, "/api/s/{space}/workerpools", Space(Some("WorkerView")), pools::list)
        .add(POST, "/api/s/{space}/workerpools", Space(Some("WorkerEdit")), pools::create)
        .add(GET, "/api/s/{space}/workerpools/all", Space(Some("WorkerView")), pools::all)
        .add(GET, "/api/s/{space}/workerpools/sortorder", Space(Some("WorkerView")), pools::get_sort_order)
        .add(PUT, "/api/s/{space}/workerpools/sortorder", Space(Some("WorkerEdit")), pools::sort_order)
        .add(GET, "/api/s/{space}/workerpools/summary", Space(Some("WorkerView")), pools::summary)
        .add(GET, "/api/s/{space}/workerpools/supportedtypes", Space(Some("WorkerView")), pools::supported_types)
        .add(GET, "/api/s/{space}/workerpools/dynamicworkertypes", Space(Some("WorkerView")), pools::dynamic_worker_types)
        .add(GET, "/api/s/{space}/workerpools/{id}", Space(Some("WorkerView")), pools::get_one)
        .add(PUT, "/api/s/{space}/workerpools/{id}", Space(Some("WorkerEdit")), pools::update)
        .add(DELETE, "/api/s/{space}/workerpools/{id}", Space(Some("WorkerEdit")), pools::delete)
        .add(GET, "/api/s/{space}/workerpools/{id}/workers", Space(Some("WorkerView")), pools::workers)
        .add(GET, "/api/s/{space}/workers", Space(Some("WorkerView")), workers::list)
        .add(POST, "/api/s/{space}/workers", Space(Some("WorkerEdit")), workers::create)
        .add(GET, "/api/s/{space}/registrationtokens", Space(Some("WorkerView")), registration::list)
        .add(POST, "/api/s/{space}/registrationtokens", Space(Some("WorkerEdit")), registration::create)
        .add(DELETE, "/api/s/{space}/registrationtokens/{id}", Space(Some("WorkerEdit")), registration::delete)
        .add(POST, "/api/workerregistrations", Anonymous, registration::register)
        .add(GET, "/api/s/{space}/workers/all", Space(Some("WorkerView")), workers::all)
        .add(GET, "/api/s/{space}/workers/discover", Space(Some("WorkerEdit")), workers::discover)
        .add(GET, "/api/s/{space}/workers/usage", Space(Some("WorkerView")), usage::one_space)
        .add(GET, "/api/usage/workers", User, usage::all_spaces)
        .add(GET, "/api/s/{space}/workers/{id}", Space(Some("WorkerView")), workers::get_one)
        .add(PUT, "/api/s/{space}/workers/{id}", Space(Some("WorkerEdit")), workers::update)
        .add(DELETE, "/api/s/{space}/workers/{id}", Space(Some("WorkerEdit")), workers::delete)
        .add(GET, "/api/s/{space}/workers/{id}/connection", Space(Some("WorkerView")), workers::connection)
        .add(GET, "/api/s/{space}/workers/{id}/shares", Space(Some("WorkerView")), workers::list_shares)
        .add(POST, "/api/s/{space}/workers/{id}/shares", Space(Some("WorkerEdit")), workers::share)
        .add(DELETE, "/api/s/{space}/workers/{id}/shares/{target}", Space(Some("WorkerEdit")), workers::unshare)
        .add(GET, "/api/s/{space}/machines", Space(Some("WorkerView")), machines::list)
        .add(GET, "/api/s/{space}/machines/all", Space(Some("WorkerView")), machines::all)
        .add(GET, "/api/s/{space}/machines/discover", Space(Some("WorkerEdit")), workers::discover)
        .add(GET, "/api/s/{space}/machines/{id}", Space(Some("WorkerView")), machines::get_one)
        .add(GET, "/api/s/{space}/machinepolicies", Space(Some("MachinePolicyView")), policies::list)
        .add(POST, "/api/s/{space}/machinepolicies", Space(Some("MachinePolicyEdit")), policies::create)
        .add(GET, "/api/s/{space}/machinepolicies/all", Space(Some("MachinePolicyView")), policies::all)
        .add(GET, "/api/s/{space}/machinepolicies/template", Space(Some("MachinePolicyView")), policies::template)
        .add(GET, "/api/s/{space}/machinepolicies/{id}", Space(Some("MachinePolicyView")), policies::get_one)
        .add(PUT, "/api/s/{space}/machinepolicies/{id}", Space(Some("MachinePolicyEdit")), policies::update)
        .add(DELETE, "/api/s/{space}/machinepolicies/{id}", Space(Some("MachinePolicyEdit")), policies::delete)
        .add(GET, "/api/s/{space}/machinepolicies/{id}/workers", Space(Some("MachinePolicyView")), policies::workers)
        .add(GET, "/api/s/{space}/machinepolicies/{id}/machines", Space(Some("MachinePolicyView")), policies::workers)
        .add(GET, "/api/s/{space}/accounts", Space(Some("AccountView")), accounts::list)
        .add(POST, "/api/s/{space}/accounts", Space(Some("AccountCreate")), accounts::create)
        .add(GET, "/api/s/{space}/accounts/all", Space(Some("AccountView")), accounts::all)
        .add(GET, "/api/s/{space}/accounts/{id}", Space(Some("AccountView")), accounts::get_one)
        .add(PUT, "/api/s/{space}/accounts/{id}", Space(Some("AccountEdit")), accounts::update)
        .add(DELETE, "/api/s/{space}/accounts/{id}", Space(Some("AccountDelete")), accounts::delete)
        .add(GET, "/api/s/{space}/accounts/{id}/usages", Space(Some("AccountView")), accounts::usages)
        .add(GET, "/api/s/{space}/artifacts", Space(Some("ArtifactView")), artifacts::list)
        .add(GET, "/api/s/{space}/artifacts/{id}", Space(Some("ArtifactView")), artifacts::get_one)
        .add(GET, "/api/s/{space}/artifacts/{id}/content", Space(Some("ArtifactView")), artifacts::content)
        .add(DELETE, "/api/s/{space}/artifacts/{id}", Space(Some("ArtifactDelete")), artifacts::delete)
        .add(GET, "/api/s/{space}/runbooks", Space(Some("RunbookView")), runbooks::list)
        .add(POST, "/api/s/{space}/runbooks", Space(Some("RunbookEdit")), runbooks::create)
        .add(GET, "/api/s/{space}/runbooks/all", Space(Some("RunbookView")), runbooks::all)
        .add(GET, "/api/s/{space}/runbooks/{id}", Space(Some("RunbookView")), runbooks::get_one)
        .add(PUT, "/api/s/{space}/runbooks/{id}", Space(Some("RunbookEdit")), runbooks::update)
        .add(DELETE, "/api/s/{space}/runbooks/{id}", Space(Some("RunbookEdit")), runbooks::delete)
        .add(GET, "/api/s/{space}/runbookprocesses/{id}", Space(Some("RunbookView")), runbooks::get_process)
        .add(PUT, "/api/s/{space}/runbookprocesses/{id}", Space(Some("RunbookEdit")), runbooks::update_process)
        .add(GET, "/api/s/{space}/variables/{id}", Space(Some("RunbookView")), runbooks::get_variables)
        .add(PUT, "/api/s/{space}/variables/{id}", Space(Some("RunbookEdit")), runbooks::update_variables)
        .add(GET, "/api/s/{space}/runbookruns", Space(Some("RunbookView")), runbooks::list_runs)
        .add(POST, "/api/s/{space}/runbookruns", Space(Some("RunbookRunCreate")), runbooks::create_run)
        .add(GET, "/api/s/{space}/runbookruns/{id}", Space(Some("RunbookView")), runbooks::get_run)
        .add(GET, "/api/s/{space}/tasks", Space(Some("TaskView")), tasks::list_in_space)
        .add(POST, "/api/s/{space}/tasks", Space(Some("TaskCreate")), tasks::create_in_space)
        .add(GET, "/api/s/{space}/tasks/{id}", Space(Some("TaskView")), tasks::get_in_space)
        .add(GET, "/api/s/{space}/tasks/{id}/details", Space(Some("TaskView")), tasks::details_in_space)
        .add(GET, "/api/s/{space}/tasks/{id}/raw", Space(Some("TaskView")), tasks::raw_in_space)
        .add(POST, "/api/s/{space}/tasks/{id}/cancel", Space(Some("TaskCancel")), tasks::cancel_in_space)
        .add(GET, "/api/s/{space}/tasks/{id}/stream", Space(Some("TaskView")), tasks::stream_in_space)
        .add(GET, "/api/s/{space}/tasks/{id}/queued-behind", Space(Some("TaskView")), tasks::queued_behind_in_space)
        .add(GET, "/api/events", User, events::list_all)
        .add(GET, "/api/events/categories", User, events::categories)
        .add(GET, "/api/events/{id}", User, events::get_any)
        .add(GET, "/api/s/{space}/events", Space(None), events::list_in_space)
        .add(GET, "/api/s/{space}/events/{id}", Space(None), events::get_in_space)
        .add(GET, "/api/octopusservernodes", User, nodes::list)
        .add(GET, "/api/octopusservernodes/all", User, nodes::all)
        .add(GET, "/api/octopusservernodes/ping", Anonymous, nodes::ping)
        .add(GET, "/api/octopusservernodes/summary", User, nodes::cluster_summary)
        .add(GET, "/api/octopusservernodes/{id}", User, nodes::get_one)
        .add(PUT, "/api/octopusservernodes/{id}", Admin, nodes::update)
        .add(DELETE, "/api/octopusservernodes/{id}", Admin, nodes::delete)
        .add(GET, "/api/octopusservernodes/{id}/details", Admin, nodes::details)
        .add(GET, "/api/tasks", User, tasks::list_all)
        .add(POST, "/api/tasks", User, tasks::create_default)
        .add(GET, "/api/tasks/tasktypes", User, tasks::task_types)
        .add(POST, "/api/tasks/rerun/{id}", User, tasks::rerun)
        .add(GET, "/api/tasks/{id}", User, tasks::get_any)
        .add(GET, "/api/tasks/{id}/details", User, tasks::details_any)
        .add(GET, "/api/tasks/{id}/raw", User, tasks::raw_any)
        .add(POST, "/api/tasks/{id}/cancel", User, tasks::cancel_any)
        .add(GET, "/api/tasks/{id}/stream", User, tasks::stream_any)
        .add(GET, "/api/tasks/{id}/queued-behind", User, tasks::queued_behind_any)
}

/// A router being built, with the rule of each (method, route).
#[derive(Default)]
struct Routes {
    router: Router<App>,
    rules: Rules,
    list: Vec<(Method, &'static str, Rule)>,
}

impl Routes {
    fn add<H, T>(mut self, method: Method, path: &'static str, rule: Rule, handler: H) -> Self
    where
        H: axum::handler::Handler<T, App>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a route's method is standard");
        self.router = self.router.route(path, on(filter, handler));
        let repeated = self.rules.insert((method.clone(), path), rule);
        assert!(repeated.is_none(), "{method} {path} is declared twice");
        self.list.push((method, path, rule));
        self
    }
}

/// (method, route, rule) of every route the router serves.
pub fn route_table() -> Vec<(Method, &'static str, Rule)> {
    routes().list
}

pub fn router(app: App) -> Router {
    let Routes { router, rules, .. } = routes();
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn_with_state(
            (app.clone(), std::sync::Arc::new(rules)),
            crate::access::check,
        ))
        .layer(axum::middleware::from_fn_with_state(
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

pub use crate::access::resolve_space;

/// The canonical id of a path segment, or 404 when it is not even of the right kind.
pub fn path_id(kind: IdKind, text: &str) -> Result<String, ApiError> {
    muster_core::ids::canonical_id(kind, text).ok_or_else(|| ApiError::not_found(text))
}

/// Keeps the items that match `ids`, `name` (exact, any case) and `partialName` (contains, any case).
/// A document of `space` by its id in a path: 404 when it is missing or another space's (a
/// document of an unseen space is not found, never forbidden).
pub async fn find_in_space<T: muster_store::Document>(
    app: &crate::state::App,
    space: &muster_core::resources::Space,
    kind: muster_core::IdKind,
    id: &str,
) -> Result<T, ApiError> {
    let id = path_id(kind, id)?;
    app.store
        .get::<T>(&id)
        .await?
        .filter(|d| d.space_id() == space.id)
        .ok_or_else(|| ApiError::not_found(&id))
}

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
    match body.get("SpaceId") {
        Some(Value::String(given))
            if !given.is_empty() && !given.eq_ignore_ascii_case(&space.id) =>
        {
            Err(ApiError::bad_request(format!(
                "The body's SpaceId '{given}' does not match the space of the route, '{}'.",
                space.id
            )))
        }
        None | Some(Value::Null | Value::String(_)) => Ok(()),
        Some(other) => Err(ApiError::bad_request(format!(
            "The body's SpaceId must be a space id, got {other}."
        ))),
    }
}

/// Who made a change, for `LastModifiedBy`.
pub fn actor(user: &crate::auth::CurrentUser) -> Option<String> {
    Some(user.0.username.clone())
}

pub fn empty_ok() -> ApiResult {
    Ok(axum::response::IntoResponse::into_response(StatusCode::OK))
}
