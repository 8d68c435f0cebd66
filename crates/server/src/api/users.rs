//! The current user, users, and API keys (contract 2.2).

use super::{empty_ok, filter_named, page, path_id};
use crate::auth::{self, CurrentUser};
use crate::http::{ApiError, ApiResult, JsonBody, Params, created, ok};
use crate::links;
use crate::state::App;
use axum::Extension;
use axum::extract::{Path, State};
use muster_core::IdKind;
use muster_core::resources::{ApiKeyRecord, Space, User};
use serde_json::Value;

async fn find(app: &App, id: &str) -> Result<User, ApiError> {
    let id = path_id(IdKind::User, id)?;
    app.store
        .get::<User>(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(&id))
}

/// A user may see and manage only their own keys and spaces (until teams arrive, every user is an
/// administrator, and only the administrator exists).
async fn find_visible(app: &App, current: &CurrentUser, id: &str) -> Result<User, ApiError> {
    let user = find(app, id).await?;
    if user.id != current.0.id && current.0.username != crate::bootstrap::ADMIN_USERNAME {
        return Err(ApiError::not_found(id));
    }
    Ok(user)
}

pub async fn list(State(app): State<App>, params: Params) -> ApiResult {
    let mut users: Vec<User> = app.store.list("").await?;
    users.sort_by_key(|u| u.username.to_lowercase());
    let users = filter_named(users, &params, |u| &u.id, |u| &u.username);
    page(
        "User",
        users.iter().map(links::user).collect(),
        &params,
        "/api/users",
        "skip,take,ids,filter",
        30,
    )
}

pub async fn me(Extension(current): Extension<CurrentUser>) -> ApiResult {
    ok(&links::user(&current.0))
}

pub async fn get_one(
    State(app): State<App>,
    Extension(current): Extension<CurrentUser>,
    Path(id): Path<String>,
) -> ApiResult {
    ok(&links::user(&find_visible(&app, &current, &id).await?))
}

/// The spaces a user can use: a bare array, with the default space among them (Tentacle picks here).
pub async fn spaces(
    State(app): State<App>,
    Extension(current): Extension<CurrentUser>,
    Path(id): Path<String>,
) -> ApiResult {
    find_visible(&app, &current, &id).await?;
    let mut spaces: Vec<Space> = app.store.list("").await?;
    spaces.sort_by_key(|s| s.name.to_lowercase());
    ok(&spaces.iter().map(links::space).collect::<Vec<_>>())
}

pub async fn list_keys(
    State(app): State<App>,
    Extension(current): Extension<CurrentUser>,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult {
    let user = find_visible(&app, &current, &id).await?;
    let keys: Vec<ApiKeyRecord> = app
        .store
        .list::<ApiKeyRecord>("")
        .await?
        .into_iter()
        .filter(|k| k.user_id == user.id)
        .collect();
    let items = keys.iter().map(|k| links::api_key(k, None)).collect();
    page(
        "ApiKey",
        items,
        &params,
        &format!("/api/users/{}/apikeys", user.id),
        "skip,take",
        30,
    )
}

pub async fn get_key(
    State(app): State<App>,
    Extension(current): Extension<CurrentUser>,
    Path((id, key)): Path<(String, String)>,
) -> ApiResult {
    let user = find_visible(&app, &current, &id).await?;
    let key_id = path_id(IdKind::ApiKey, &key)?;
    let record = app
        .store
        .get::<ApiKeyRecord>(&key_id)
        .await?
        .filter(|k| k.user_id == user.id);
    ok(&links::api_key(
        &record.ok_or_else(|| ApiError::not_found(&key_id))?,
        None,
    ))
}

/// Creates a key; its value is in the answer once and never again.
pub async fn create_key(
    State(app): State<App>,
    Extension(current): Extension<CurrentUser>,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult {
    let user = find_visible(&app, &current, &id).await?;
    let empty = serde_json::json!({});
    let body = if body.0.is_null() {
        &empty
    } else {
        body.object()?
    };
    let purpose = match body.get("Purpose") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(p)) => p.trim().to_string(),
        Some(_) => return Err(ApiError::bad_request("Purpose must be a string.")),
    };
    if purpose.chars().count() > 200 {
        return Err(ApiError::bad_request(
            "Purpose must be at most 200 characters.",
        ));
    }
    let expires = match body.get("Expires") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => {
            let at = muster_core::time::parse_date(text).ok_or_else(|| {
                ApiError::bad_request(format!("Expires must be an ISO-8601 date, got '{text}'."))
            })?;
            if at <= muster_core::time::now() {
                return Err(ApiError::bad_request("Expires must be in the future."));
            }
            Some(at)
        }
        Some(_) => return Err(ApiError::bad_request("Expires must be an ISO-8601 date.")),
    };
    let key = auth::new_api_key();
    let mut record = crate::bootstrap::add_key(&app.store, &user, &key, &purpose)
        .await
        .map_err(ApiError::internal)?;
    if expires.is_some() {
        record.expires = expires;
        app.store.put(&record).await?;
    }
    created(&links::api_key(&record, Some(&key)))
}

pub async fn revoke_key(
    State(app): State<App>,
    Extension(current): Extension<CurrentUser>,
    Path((id, key)): Path<(String, String)>,
) -> ApiResult {
    let user = find_visible(&app, &current, &id).await?;
    let key_id = path_id(IdKind::ApiKey, &key)?;
    let record = app
        .store
        .get::<ApiKeyRecord>(&key_id)
        .await?
        .filter(|k| k.user_id == user.id);
    if record.is_none() {
        return Err(ApiError::not_found(&key_id));
    }
    let remaining = app
        .store
        .list::<ApiKeyRecord>("")
        .await?
        .iter()
        .filter(|k| k.user_id == user.id && k.id != key_id)
        .count();
    if remaining == 0 && user.username == crate::bootstrap::ADMIN_USERNAME {
        return Err(ApiError::bad_request(
            "This is the administrator's last API key; create another before revoking it.",
        ));
    }
    app.store.delete::<ApiKeyRecord>(&key_id).await?;
    empty_ok()
}
