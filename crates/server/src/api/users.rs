//! The current user, users, and API keys (contract 2.2).

use super::{empty_ok, events, filter_named, page, path_id};
use crate::access::Access;
use crate::auth;
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

/// A user may see and manage their own keys and spaces; an administrator anyone's.
async fn find_visible(app: &App, access: &Access, id: &str) -> Result<User, ApiError> {
    let user = find(app, id).await?;
    access.require_self_or_admin(&user.id)?;
    Ok(user)
}

/// What `user` may do: the caller's own access, or theirs read afresh.
async fn access_of(app: &App, caller: Access, user: &User) -> Result<Access, ApiError> {
    if user.id == caller.user.id {
        Ok(caller)
    } else {
        Access::load(app, user).await
    }
}

/// Every user for an administrator; oneself for anyone else.
pub async fn list(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    params: Params,
) -> ApiResult {
    let mut users: Vec<User> = app.store.list("").await?;
    users.retain(|u| access.admin || u.id == access.user.id);
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

pub async fn me(Extension(access): Extension<Access>) -> ApiResult {
    ok(&links::user(&access.user))
}

pub async fn get_one(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> ApiResult {
    ok(&links::user(&find_visible(&app, &access, &id).await?))
}

/// The spaces a user can use: a bare array, with the default space among them (Tentacle picks here).
pub async fn spaces(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> ApiResult {
    let user = find_visible(&app, &access, &id).await?;
    let theirs = access_of(&app, access, &user).await?;
    let spaces = super::spaces::visible_spaces(&app, &theirs).await?;
    ok(&spaces.iter().map(links::space).collect::<Vec<_>>())
}

pub async fn list_keys(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult {
    let user = find_visible(&app, &access, &id).await?;
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
    Extension(access): Extension<Access>,
    Path((id, key)): Path<(String, String)>,
) -> ApiResult {
    let user = find_visible(&app, &access, &id).await?;
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
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult {
    let user = find_visible(&app, &access, &id).await?;
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
    events::record(
        &app,
        Some(&access.user),
        None,
        events::CREATED,
        format!(
            "API key {} ({}) created for user '{}'",
            record.id,
            key_purpose(&record),
            user.username
        ),
        vec![record.id.clone(), user.id.clone()],
    )
    .await;
    created(&links::api_key(&record, Some(&key)))
}

pub async fn revoke_key(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    Path((id, key)): Path<(String, String)>,
) -> ApiResult {
    let user = find_visible(&app, &access, &id).await?;
    let key_id = path_id(IdKind::ApiKey, &key)?;
    let record = app
        .store
        .get::<ApiKeyRecord>(&key_id)
        .await?
        .filter(|k| k.user_id == user.id);
    let Some(record) = record else {
        return Err(ApiError::not_found(&key_id));
    };
    let remaining = app
        .store
        .list::<ApiKeyRecord>("")
        .await?
        .iter()
        .filter(|k| k.user_id == user.id && k.id != key_id)
        .count();
    if remaining == 0
        && user.username == crate::bootstrap::ADMIN_USERNAME
        && user.id == access.user.id
    {
        return Err(ApiError::bad_request(
            "This is the administrator's last API key; create another before revoking it.",
        ));
    }
    app.store.delete::<ApiKeyRecord>(&key_id).await?;
    events::record(
        &app,
        Some(&access.user),
        None,
        events::DELETED,
        format!(
            "API key {} ({}) of user '{}' revoked",
            record.id,
            key_purpose(&record),
            user.username
        ),
        vec![record.id.clone(), user.id.clone()],
    )
    .await;
    empty_ok()
}

/// A key's purpose as an event names it.
fn key_purpose(record: &ApiKeyRecord) -> String {
    if record.purpose.is_empty() {
        "no purpose given".to_string()
    } else {
        format!("'{}'", record.purpose)
    }
}

/// Checks a user's fields; the username is required and unique (the store says so).
fn validate(user: &mut User) -> Result<(), ApiError> {
    user.username = user.username.trim().to_string();
    user.display_name = user.display_name.trim().to_string();
    let mut errors = muster_core::ids::check_name(&user.username)
        .into_iter()
        .map(|e| format!("Username: {e}"))
        .collect::<Vec<_>>();
    if user.display_name.is_empty() {
        user.display_name = user.username.clone();
    }
    if user.display_name.chars().any(char::is_control) {
        errors.push("DisplayName may not contain control characters.".into());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

/// Creates a user (administrators only). Muster's users sign in with API keys: a `Password` is refused
/// rather than silently dropped.
pub async fn create(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    body: JsonBody,
) -> ApiResult {
    access.require_admin()?;
    let body = body.object()?;
    if body.get("Password").is_some_and(|p| !p.is_null()) {
        return Err(ApiError::bad_request(
            "Muster users sign in with API keys; create one at /api/users/{id}/apikeys instead of sending a Password.",
        ));
    }
    let mut user = muster_core::resources::apply(
        &User {
            is_active: true,
            ..Default::default()
        },
        body,
    )
    .map_err(ApiError::bad_request)?;
    validate(&mut user)?;
    user.id = app.store.next_id(IdKind::User).await?;
    user.identities = Vec::new();
    user.last_modified_on = Some(muster_core::time::now());
    user.last_modified_by = Some(access.user.username.clone());
    app.store.put(&user).await?;
    events::record(
        &app,
        Some(&access.user),
        None,
        events::CREATED,
        format!("User '{}' created", user.username),
        vec![user.id.clone()],
    )
    .await;
    created(&links::user(&user))
}

/// Edits a user: anyone their own display name and e-mail; an administrator anything but the id.
pub async fn update(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult {
    let existing = find_visible(&app, &access, &id).await?;
    let body = body.object()?;
    let mut user = muster_core::resources::apply(&existing, body).map_err(ApiError::bad_request)?;
    user.id = existing.id.clone();
    user.identities = existing.identities.clone();
    if !access.admin {
        user.username = existing.username.clone();
        user.is_active = existing.is_active;
        user.is_service = existing.is_service;
    }
    if user.id == access.user.id && !user.is_active {
        return Err(ApiError::bad_request("You cannot deactivate yourself."));
    }
    validate(&mut user)?;
    user.last_modified_on = Some(muster_core::time::now());
    user.last_modified_by = Some(access.user.username.clone());
    app.store.put(&user).await?;
    if user != existing {
        let change = match (existing.is_active, user.is_active) {
            (true, false) => " deactivated",
            (false, true) => " reactivated",
            _ => " changed",
        };
        let renamed = if user.username == existing.username {
            String::new()
        } else {
            format!(" (was '{}')", existing.username)
        };
        events::record(
            &app,
            Some(&access.user),
            None,
            events::MODIFIED,
            format!("User '{}'{renamed}{change}", user.username),
            vec![user.id.clone()],
        )
        .await;
    }
    ok(&links::user(&user))
}

/// Deletes a user with their API keys and team memberships (administrators only, never oneself).
pub async fn delete(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> ApiResult {
    access.require_admin()?;
    let user = find(&app, &id).await?;
    if user.id == access.user.id {
        return Err(ApiError::bad_request("You cannot delete yourself."));
    }
    let mut rows = Vec::new();
    for mut team in app
        .store
        .list_all::<muster_core::resources::Team>()
        .await?
        .into_iter()
        .filter(|t| t.member_user_ids.contains(&user.id))
    {
        team.member_user_ids.retain(|m| *m != user.id);
        rows.push(muster_store::Row::of(&team));
    }
    app.store.put_rows(rows).await?;
    for key in app
        .store
        .list::<ApiKeyRecord>("")
        .await?
        .into_iter()
        .filter(|k| k.user_id == user.id)
    {
        app.store.delete::<ApiKeyRecord>(&key.id).await?;
    }
    app.store.delete::<User>(&user.id).await?;
    events::record(
        &app,
        Some(&access.user),
        None,
        events::DELETED,
        format!("User '{}' deleted", user.username),
        vec![user.id.clone()],
    )
    .await;
    empty_ok()
}

/// What a user may do: system permissions, and each space permission with the spaces it holds in
/// (Octopus's `UserPermissionSetResource`, without project restrictions).
pub async fn permissions(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> ApiResult {
    let user = find_visible(&app, &access, &id).await?;
    let theirs = access_of(&app, access, &user).await?;
    let spaces: Vec<Space> = app.store.list("").await?;
    let mut by_permission = serde_json::Map::new();
    for (permission, _) in muster_core::permissions::SPACE_PERMISSIONS {
        let holders: Vec<Value> = spaces
            .iter()
            .filter(|s| theirs.has(&s.id, permission))
            .map(|s| serde_json::json!({"SpaceId": s.id, "RestrictedToProjectIds": [], "RestrictedToEnvironmentIds": [], "RestrictedToTenantIds": [], "RestrictedToProjectGroupIds": []}))
            .collect();
        if !holders.is_empty() {
            by_permission.insert(permission.to_string(), Value::Array(holders));
        }
    }
    ok(&serde_json::json!({
        "Id": user.id,
        "SystemPermissions": theirs.system,
        "SpacePermissions": by_permission,
        "Teams": theirs.team_ids,
        "IsAdministrator": theirs.admin,
        "Links": {"Self": format!("/api/users/{}/permissions", user.id)},
    }))
}
