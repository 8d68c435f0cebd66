//! Teams, user roles and scoped user roles (Octopus's shapes, a small model): a team's members get the
//! permissions of the roles scoped to the team, each in one space, or system-wide for system roles.
//! Only administrators reach these routes (see `access::check_route`).

use super::{empty_ok, events, filter_named, page, path_id};
use crate::access::Access;
use crate::access::SpaceScope;
use crate::http::{ApiError, ApiResult, JsonBody, Params, created, ok};
use crate::links::with_links;
use crate::state::App;
use axum::Extension;
use axum::extract::{Path, State};
use muster_core::IdKind;
use muster_core::ids::canonical_id;
use muster_core::permissions::{self, ADMINISTRATORS_TEAM};
use muster_core::resources::{ScopedUserRole, Space, Team, User, UserRole, apply};
use muster_core::time::now;
use serde_json::{Value, json};

fn team_resource(t: &Team) -> Value {
    with_links(
        t,
        json!({
            "Self": format!("/api/teams/{}", t.id),
            "ScopedUserRoles": format!("/api/teams/{}/scopeduserroles{{?skip,take}}", t.id),
        }),
    )
}

fn role_resource(r: &UserRole) -> Value {
    with_links(r, json!({"Self": format!("/api/userroles/{}", r.id)}))
}

fn scoped_resource(s: &ScopedUserRole) -> Value {
    with_links(s, json!({"Self": format!("/api/scopeduserroles/{}", s.id)}))
}

async fn find_team(app: &App, id: &str) -> Result<Team, ApiError> {
    let id = path_id(IdKind::Team, id)?;
    app.store
        .get::<Team>(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(&id))
}

async fn find_role(app: &App, id: &str) -> Result<UserRole, ApiError> {
    let id = path_id(IdKind::UserRole, id)?;
    app.store
        .get::<UserRole>(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(&id))
}

async fn find_scoped(app: &App, id: &str) -> Result<ScopedUserRole, ApiError> {
    let id = path_id(IdKind::ScopedUserRole, id)?;
    app.store
        .get::<ScopedUserRole>(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(&id))
}

/// A space id given in any case, checked to exist; empty counts as none.
async fn check_space(
    app: &App,
    given: &Option<String>,
    errors: &mut Vec<String>,
) -> Result<Option<String>, ApiError> {
    let Some(given) = given.as_deref().map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    match canonical_id(IdKind::Space, given) {
        Some(id) if app.store.get::<Space>(&id).await?.is_some() => Ok(Some(id)),
        _ => {
            errors.push(format!("SpaceId '{given}' is not a space of this server."));
            Ok(None)
        }
    }
}

// Teams

async fn validate_team(app: &App, team: &mut Team) -> Result<(), ApiError> {
    team.name = team.name.trim().to_string();
    let mut errors: Vec<String> = muster_core::ids::check_name(&team.name)
        .into_iter()
        .collect();
    let users: Vec<User> = app.store.list("").await?;
    let mut members = Vec::new();
    for given in &team.member_user_ids {
        let id = canonical_id(IdKind::User, given).unwrap_or_else(|| given.clone());
        if members.contains(&id) {
            continue;
        }
        if users.iter().any(|u| u.id == id) {
            members.push(id);
        } else {
            errors.push(format!("MemberUserIds: '{given}' is not a user."));
        }
    }
    team.member_user_ids = members;
    team.space_id = check_space(app, &team.space_id, &mut errors).await?;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

pub async fn list_teams(State(app): State<App>, params: Params) -> ApiResult {
    let mut teams: Vec<Team> = app.store.list_all().await?;
    let include_system = params.bool("includesystem")?.unwrap_or(true);
    if let Some(spaces) = params.list("spaces") {
        let spaces: Vec<String> = spaces
            .iter()
            .filter_map(|s| canonical_id(IdKind::Space, s))
            .collect();
        teams.retain(|t| match &t.space_id {
            Some(space) => spaces.contains(space),
            None => include_system,
        });
    }
    teams.sort_by_key(|t| t.name.to_lowercase());
    let teams = filter_named(teams, &params, |t| &t.id, |t| &t.name);
    page(
        "Team",
        teams.iter().map(team_resource).collect(),
        &params,
        "/api/teams",
        "skip,take,ids,partialName,spaces,includeSystem",
        30,
    )
}

pub async fn all_teams(State(app): State<App>) -> ApiResult {
    let mut teams: Vec<Team> = app.store.list_all().await?;
    teams.sort_by_key(|t| t.name.to_lowercase());
    ok(&teams.iter().map(team_resource).collect::<Vec<_>>())
}

pub async fn get_team(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    ok(&team_resource(&find_team(&app, &id).await?))
}

pub async fn create_team(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    body: JsonBody,
) -> ApiResult {
    let base = Team {
        can_be_deleted: true,
        can_be_renamed: true,
        can_change_roles: true,
        can_change_members: true,
        ..Default::default()
    };
    let mut team = apply(&base, body.object()?).map_err(ApiError::bad_request)?;
    (
        team.can_be_deleted,
        team.can_be_renamed,
        team.can_change_roles,
        team.can_change_members,
    ) = (true, true, true, true);
    validate_team(&app, &mut team).await?;
    team.id = app.store.next_id(IdKind::Team).await?;
    team.last_modified_on = Some(now());
    team.last_modified_by = Some(access.user.username.clone());
    app.store.put(&team).await?;
    let message = format!(
        "Team '{}' created{}",
        team.name,
        members_change(&app, &[], &team.member_user_ids).await
    );
    record_team(&app, &access, &team, events::CREATED, message).await;
    created(&team_resource(&team))
}

pub async fn update_team(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult {
    let existing = find_team(&app, &id).await?;
    let mut team = apply(&existing, body.object()?).map_err(ApiError::bad_request)?;
    team.id = existing.id.clone();
    (
        team.can_be_deleted,
        team.can_be_renamed,
        team.can_change_roles,
        team.can_change_members,
    ) = (
        existing.can_be_deleted,
        existing.can_be_renamed,
        existing.can_change_roles,
        existing.can_change_members,
    );
    if team.space_id != existing.space_id {
        return Err(ApiError::bad_request("A team's SpaceId cannot change."));
    }
    validate_team(&app, &mut team).await?;
    if !existing.can_be_renamed && !team.name.eq_ignore_ascii_case(&existing.name) {
        return Err(ApiError::bad_request(format!(
            "Team '{}' cannot be renamed.",
            existing.name
        )));
    }
    // The built-in administrators' team (it alone cannot be deleted) keeps a member, and you.
    let administrators = !existing.can_be_deleted && existing.name == ADMINISTRATORS_TEAM;
    if administrators && team.member_user_ids.is_empty() {
        return Err(ApiError::bad_request(format!(
            "'{ADMINISTRATORS_TEAM}' must keep at least one member."
        )));
    }
    if administrators && !team.member_user_ids.contains(&access.user.id) {
        return Err(ApiError::bad_request(
            "You cannot remove yourself from the administrators; ask another administrator.",
        ));
    }
    team.last_modified_on = Some(now());
    team.last_modified_by = Some(access.user.username.clone());
    app.store.put(&team).await?;
    if team != existing {
        let message = format!(
            "Team '{}' changed{}",
            team.name,
            members_change(&app, &existing.member_user_ids, &team.member_user_ids).await
        );
        record_team(&app, &access, &team, events::MODIFIED, message).await;
    }
    ok(&team_resource(&team))
}

/// Deletes a team and the roles scoped to it.
pub async fn delete_team(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> ApiResult {
    let team = find_team(&app, &id).await?;
    if !team.can_be_deleted {
        return Err(ApiError::bad_request(format!(
            "Team '{}' is built in and cannot be deleted.",
            team.name
        )));
    }
    for scoped in app.store.find_by_ext::<ScopedUserRole>(&team.id).await? {
        app.store.delete::<ScopedUserRole>(&scoped.id).await?;
    }
    app.store.delete::<Team>(&team.id).await?;
    let message = format!("Team '{}' deleted, with its roles", team.name);
    record_team(&app, &access, &team, events::DELETED, message).await;
    empty_ok()
}

/// A team's event: in its space, or a system event for a team of the whole server.
async fn record_team(app: &App, access: &Access, team: &Team, category: &str, message: String) {
    events::record(
        app,
        Some(&access.user),
        team.space_id.as_deref().filter(|s| !s.is_empty()),
        category,
        message,
        vec![team.id.clone()],
    )
    .await;
}

/// "; members added alice; removed bob", by username; empty when the members did not change.
async fn members_change(app: &App, before: &[String], after: &[String]) -> String {
    let name = async |id: &String| match app.store.get::<User>(id).await {
        Ok(Some(user)) => format!("'{}'", user.username),
        _ => id.clone(),
    };
    let mut parts = Vec::new();
    for (what, ids) in [
        (
            "added",
            after
                .iter()
                .filter(|m| !before.contains(m))
                .collect::<Vec<_>>(),
        ),
        (
            "removed",
            before.iter().filter(|m| !after.contains(m)).collect(),
        ),
    ] {
        if !ids.is_empty() {
            let mut names = Vec::new();
            for id in ids {
                names.push(name(id).await);
            }
            parts.push(format!("members {what} {}", names.join(", ")));
        }
    }
    parts.iter().map(|p| format!("; {p}")).collect()
}

/// A role granted, changed or revoked: in the grant's space, or a system event.
async fn record_grant(
    app: &App,
    access: &Access,
    scoped: &ScopedUserRole,
    category: &str,
    verb: &str,
) {
    let role = match app.store.get::<UserRole>(&scoped.user_role_id).await {
        Ok(Some(role)) => role.name,
        _ => scoped.user_role_id.clone(),
    };
    let team = match app.store.get::<Team>(&scoped.team_id).await {
        Ok(Some(team)) => team.name,
        _ => scoped.team_id.clone(),
    };
    let space_id = scoped.space_id.as_deref().filter(|s| !s.is_empty());
    let whereabouts = match space_id {
        Some(space) => match app.store.get::<Space>(space).await {
            Ok(Some(space)) => format!("in space '{}'", space.name),
            _ => format!("in space {space}"),
        },
        None => "on the whole server".to_string(),
    };
    events::record(
        app,
        Some(&access.user),
        space_id,
        category,
        format!("Role '{role}' {verb} team '{team}' {whereabouts}"),
        vec![
            scoped.id.clone(),
            scoped.team_id.clone(),
            scoped.user_role_id.clone(),
        ],
    )
    .await;
}

pub async fn team_scoped_roles(
    State(app): State<App>,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult {
    let team = find_team(&app, &id).await?;
    let mut scoped = app.store.find_by_ext::<ScopedUserRole>(&team.id).await?;
    scoped.sort_by(|a, b| a.id.cmp(&b.id));
    page(
        "ScopedUserRole",
        scoped.iter().map(scoped_resource).collect(),
        &params,
        &format!("/api/teams/{}/scopeduserroles", team.id),
        "skip,take",
        30,
    )
}

// User roles

fn validate_role(role: &mut UserRole) -> Result<(), ApiError> {
    role.name = role.name.trim().to_string();
    let mut errors: Vec<String> = muster_core::ids::check_name(&role.name)
        .into_iter()
        .collect();
    let mut check = |given: &mut Vec<String>, system: bool, field: &str| {
        let mut canonical = Vec::new();
        for name in given.iter() {
            match permissions::canonical(name) {
                Some(p) if permissions::is_system_permission(p) == system => {
                    if !canonical.contains(&p.to_string()) {
                        canonical.push(p.to_string());
                    }
                }
                _ => errors.push(format!(
                    "{field}: '{name}' is not a {} permission; see /api/permissions/all.",
                    if system { "system" } else { "space" }
                )),
            }
        }
        *given = canonical;
    };
    check(
        &mut role.granted_space_permissions,
        false,
        "GrantedSpacePermissions",
    );
    check(
        &mut role.granted_system_permissions,
        true,
        "GrantedSystemPermissions",
    );
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

async fn sorted_roles(app: &App) -> Result<Vec<UserRole>, ApiError> {
    let mut roles: Vec<UserRole> = app.store.list("").await?;
    roles.sort_by_key(|r| r.name.to_lowercase());
    Ok(roles)
}

pub async fn list_roles(State(app): State<App>, params: Params) -> ApiResult {
    let roles = filter_named(sorted_roles(&app).await?, &params, |r| &r.id, |r| &r.name);
    page(
        "UserRole",
        roles.iter().map(role_resource).collect(),
        &params,
        "/api/userroles",
        "skip,take,ids,partialName",
        30,
    )
}

pub async fn all_roles(State(app): State<App>) -> ApiResult {
    let roles = sorted_roles(&app).await?;
    ok(&roles.iter().map(role_resource).collect::<Vec<_>>())
}

pub async fn get_role(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    ok(&role_resource(&find_role(&app, &id).await?))
}

pub async fn create_role(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    body: JsonBody,
) -> ApiResult {
    let mut role = apply(&UserRole::default(), body.object()?).map_err(ApiError::bad_request)?;
    role.can_be_deleted = true;
    role.supported_restrictions = Vec::new();
    validate_role(&mut role)?;
    role.id = app.store.next_id(IdKind::UserRole).await?;
    role.last_modified_on = Some(now());
    role.last_modified_by = Some(access.user.username.clone());
    app.store.put(&role).await?;
    events::resource(
        &app,
        &access.user,
        None,
        events::CREATED,
        "User role",
        &role.name,
        &role.id,
    )
    .await;
    created(&role_resource(&role))
}

pub async fn update_role(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult {
    let existing = find_role(&app, &id).await?;
    if !existing.can_be_deleted {
        return Err(ApiError::bad_request(format!(
            "'{}' is a built-in role and cannot change; create a role of your own instead.",
            existing.name
        )));
    }
    let mut role = apply(&existing, body.object()?).map_err(ApiError::bad_request)?;
    role.id = existing.id.clone();
    role.can_be_deleted = true;
    validate_role(&mut role)?;
    // The teams that hold it keep holding it as they were given it.
    let holders: Vec<ScopedUserRole> = app
        .store
        .list_all::<ScopedUserRole>()
        .await?
        .into_iter()
        .filter(|s| s.user_role_id == role.id)
        .collect();
    if holders.iter().any(|s| s.space_id.is_some()) && !role.granted_system_permissions.is_empty() {
        return Err(ApiError::bad_request(
            "Teams hold this role in spaces, where system permissions do not apply; create another role for them.",
        ));
    }
    if holders.iter().any(|s| s.space_id.is_none()) && role.granted_system_permissions.is_empty() {
        return Err(ApiError::bad_request(
            "Teams hold this role system-wide, which needs system permissions; create another role for them.",
        ));
    }
    role.last_modified_on = Some(now());
    role.last_modified_by = Some(access.user.username.clone());
    app.store.put(&role).await?;
    events::resource(
        &app,
        &access.user,
        None,
        events::MODIFIED,
        "User role",
        &role.name,
        &role.id,
    )
    .await;
    ok(&role_resource(&role))
}

pub async fn delete_role(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> ApiResult {
    let role = find_role(&app, &id).await?;
    if !role.can_be_deleted {
        return Err(ApiError::bad_request(format!(
            "'{}' is a built-in role and cannot be deleted.",
            role.name
        )));
    }
    let used = app
        .store
        .list_all::<ScopedUserRole>()
        .await?
        .iter()
        .any(|s| s.user_role_id == role.id);
    if used {
        return Err(ApiError::bad_request(format!(
            "Role '{}' is given to a team; remove it from the team first.",
            role.name
        )));
    }
    app.store.delete::<UserRole>(&role.id).await?;
    events::resource(
        &app,
        &access.user,
        None,
        events::DELETED,
        "User role",
        &role.name,
        &role.id,
    )
    .await;
    empty_ok()
}

/// Every permission Muster knows, with what it allows.
pub async fn all_permissions() -> ApiResult {
    let describe = |list: &[(&str, &str)]| -> serde_json::Map<String, Value> {
        list.iter()
            .map(|(name, description)| (name.to_string(), json!({"Description": description})))
            .collect()
    };
    ok(&json!({
        "SpacePermissions": describe(permissions::SPACE_PERMISSIONS),
        "SystemPermissions": describe(permissions::SYSTEM_PERMISSIONS),
    }))
}

// Scoped user roles

async fn validate_scoped(app: &App, scoped: &mut ScopedUserRole) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    let team = match canonical_id(IdKind::Team, &scoped.team_id) {
        Some(id) => app.store.get::<Team>(&id).await?,
        None => None,
    };
    let role = match canonical_id(IdKind::UserRole, &scoped.user_role_id) {
        Some(id) => app.store.get::<UserRole>(&id).await?,
        None => None,
    };
    if team.is_none() {
        errors.push(format!("TeamId '{}' is not a team.", scoped.team_id));
    }
    if role.is_none() {
        errors.push(format!(
            "UserRoleId '{}' is not a user role.",
            scoped.user_role_id
        ));
    }
    scoped.space_id = check_space(app, &scoped.space_id, &mut errors).await?;
    for (field, values) in [
        ("ProjectIds", &scoped.project_ids),
        ("EnvironmentIds", &scoped.environment_ids),
        ("TenantIds", &scoped.tenant_ids),
        ("ProjectGroupIds", &scoped.project_group_ids),
    ] {
        if !values.is_empty() {
            errors.push(format!(
                "{field} must be empty: Muster scopes roles to whole spaces."
            ));
        }
    }
    if let (Some(team), Some(role)) = (&team, &role) {
        scoped.team_id = team.id.clone();
        scoped.user_role_id = role.id.clone();
        if !team.can_change_roles {
            errors.push(format!("The roles of team '{}' cannot change.", team.name));
        }
        if let Some(team_space) = &team.space_id
            && scoped.space_id.as_ref() != Some(team_space)
        {
            errors.push(format!(
                "Team '{}' belongs to space {team_space}: its roles must be scoped to that space.",
                team.name
            ));
        }
        match (&scoped.space_id, role.granted_system_permissions.is_empty()) {
            (Some(_), false) => errors.push(format!(
                "Role '{}' grants system permissions: give it with no SpaceId.",
                role.name
            )),
            (None, true) => errors.push(format!(
                "Role '{}' grants space permissions: give it with a SpaceId.",
                role.name
            )),
            _ => {}
        }
    }
    let duplicate = app
        .store
        .find_by_ext::<ScopedUserRole>(&scoped.team_id)
        .await?
        .into_iter()
        .any(|other| {
            other.id != scoped.id
                && other.user_role_id == scoped.user_role_id
                && other.space_id == scoped.space_id
        });
    if duplicate {
        errors.push("The team already holds this role there.".into());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

fn scoped_page(scoped: Vec<ScopedUserRole>, params: &Params, path: &str) -> ApiResult {
    page(
        "ScopedUserRole",
        scoped.iter().map(scoped_resource).collect(),
        params,
        path,
        "skip,take",
        30,
    )
}

pub async fn list_scoped(State(app): State<App>, params: Params) -> ApiResult {
    let mut scoped: Vec<ScopedUserRole> = app.store.list_all().await?;
    scoped.sort_by(|a, b| a.id.cmp(&b.id));
    scoped_page(scoped, &params, "/api/scopeduserroles")
}

pub async fn list_scoped_in_space(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    params: Params,
) -> ApiResult {
    let mut scoped: Vec<ScopedUserRole> = app.store.list(&space.id).await?;
    scoped.sort_by(|a, b| a.id.cmp(&b.id));
    scoped_page(
        scoped,
        &params,
        &format!("/api/{}/scopeduserroles", space.id),
    )
}

pub async fn get_scoped(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    ok(&scoped_resource(&find_scoped(&app, &id).await?))
}

async fn create_scoped_from(app: &App, access: &Access, body: &Value) -> ApiResult {
    let mut scoped = apply(&ScopedUserRole::default(), body).map_err(ApiError::bad_request)?;
    validate_scoped(app, &mut scoped).await?;
    scoped.id = app.store.next_id(IdKind::ScopedUserRole).await?;
    scoped.last_modified_on = Some(now());
    scoped.last_modified_by = Some(access.user.username.clone());
    app.store.put(&scoped).await?;
    record_grant(app, access, &scoped, events::CREATED, "granted to").await;
    created(&scoped_resource(&scoped))
}

pub async fn create_scoped(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    body: JsonBody,
) -> ApiResult {
    create_scoped_from(&app, &access, body.object()?).await
}

/// The space-scoped form: `SpaceId` defaults to the route's space and may not name another.
pub async fn create_scoped_in_space(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    SpaceScope(space): SpaceScope,
    body: JsonBody,
) -> ApiResult {
    let body = body.object()?;
    super::check_space_id(body, &space)?;
    let mut body = body.clone();
    body["SpaceId"] = json!(space.id);
    create_scoped_from(&app, &access, &body).await
}

pub async fn update_scoped(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult {
    let existing = find_scoped(&app, &id).await?;
    let mut scoped = apply(&existing, body.object()?).map_err(ApiError::bad_request)?;
    scoped.id = existing.id.clone();
    validate_scoped(&app, &mut scoped).await?;
    scoped.last_modified_on = Some(now());
    scoped.last_modified_by = Some(access.user.username.clone());
    app.store.put(&scoped).await?;
    if scoped.user_role_id != existing.user_role_id || scoped.space_id != existing.space_id {
        record_grant(&app, &access, &existing, events::DELETED, "revoked from").await;
        record_grant(&app, &access, &scoped, events::CREATED, "granted to").await;
    }
    ok(&scoped_resource(&scoped))
}

pub async fn delete_scoped(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> ApiResult {
    let scoped = find_scoped(&app, &id).await?;
    let team = app.store.get::<Team>(&scoped.team_id).await?;
    if team.as_ref().is_some_and(|t| !t.can_change_roles) {
        return Err(ApiError::bad_request(format!(
            "The roles of team '{}' cannot change.",
            team.map(|t| t.name).unwrap_or_default()
        )));
    }
    app.store.delete::<ScopedUserRole>(&scoped.id).await?;
    record_grant(&app, &access, &scoped, events::DELETED, "revoked from").await;
    empty_ok()
}
