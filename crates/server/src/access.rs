//! Who may do what: a request's user, their teams, and the roles scoped to those teams, read once per
//! request. Every route is checked here, by its normalized path, before its handler runs; handlers of
//! routes whose space is known only from the resource (unprefixed tasks) check with [`Access::require`].
//!
//! Architecture invariant: a space the user has no permission in does not exist for them (404, so
//! another space's resources are not leaked); a missing permission in a space they see answers 403,
//! naming the permission.

use crate::http::ApiError;
use crate::state::App;
use axum::http::Method;
use muster_core::permissions::{SPACE_MANAGER, SPACE_PERMISSIONS};
use muster_core::resources::{ScopedUserRole, Space, Team, User, UserRole};
use std::collections::{BTreeSet, HashMap};

/// What the user of a request may do.
#[derive(Clone, Debug)]
pub struct Access {
    pub user: User,
    /// AdministerSystem: everything, everywhere.
    pub admin: bool,
    pub system: BTreeSet<String>,
    /// Space id → the permissions granted in it.
    pub spaces: HashMap<String, BTreeSet<String>>,
    /// The teams the user is a member of.
    pub team_ids: Vec<String>,
}

impl Access {
    /// Reads the user's teams, their scoped roles, and the spaces' managers.
    pub async fn load(app: &App, user: &User) -> Result<Access, ApiError> {
        let teams: Vec<Team> = app.store.list_all().await?;
        let team_ids: Vec<String> = teams
            .iter()
            .filter(|t| t.member_user_ids.contains(&user.id))
            .map(|t| t.id.clone())
            .collect();
        let roles: HashMap<String, UserRole> = app
            .store
            .list_all::<UserRole>()
            .await?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        let scoped: Vec<ScopedUserRole> = app.store.list_all().await?;
        let mut access = Access {
            user: user.clone(),
            admin: false,
            system: BTreeSet::new(),
            spaces: HashMap::new(),
            team_ids,
        };
        for grant in scoped
            .iter()
            .filter(|s| access.team_ids.contains(&s.team_id))
        {
            let Some(role) = roles.get(&grant.user_role_id) else {
                continue;
            };
            match grant.space_id.as_deref().filter(|s| !s.is_empty()) {
                Some(space) => access
                    .spaces
                    .entry(space.to_string())
                    .or_default()
                    .extend(role.granted_space_permissions.iter().cloned()),
                None => access
                    .system
                    .extend(role.granted_system_permissions.iter().cloned()),
            }
        }
        // Octopus's shortcut on the space itself: its managers get every space permission.
        let manager = roles.values().find(|r| r.name == SPACE_MANAGER);
        for space in app.store.list::<Space>("").await? {
            let member = space.space_managers_team_members.contains(&user.id)
                || space
                    .space_managers_teams
                    .iter()
                    .any(|t| access.team_ids.contains(t));
            if member {
                let granted = manager.map_or_else(
                    || {
                        SPACE_PERMISSIONS
                            .iter()
                            .map(|(p, _)| p.to_string())
                            .collect()
                    },
                    |r| r.granted_space_permissions.clone(),
                );
                access
                    .spaces
                    .entry(space.id.clone())
                    .or_default()
                    .extend(granted);
            }
        }
        access.admin = access.system.contains("AdministerSystem");
        Ok(access)
    }

    pub fn has(&self, space_id: &str, permission: &str) -> bool {
        self.admin
            || self
                .spaces
                .get(space_id)
                .is_some_and(|granted| granted.contains(permission))
    }

    /// A space exists for a user who has any permission in it.
    pub fn sees_space(&self, space_id: &str) -> bool {
        self.admin || self.spaces.get(space_id).is_some_and(|g| !g.is_empty())
    }

    /// 404 when the space is not the user's to see, 403 when the permission is missing in it.
    pub fn require(&self, space: &Space, permission: &str) -> Result<(), ApiError> {
        if !self.sees_space(&space.id) {
            return Err(ApiError::not_found(&space.id));
        }
        if !self.has(&space.id, permission) {
            return Err(ApiError::forbidden(format!(
                "You do not have permission to perform this action: it needs {permission} in space '{}' ({}).",
                space.name, space.id
            )));
        }
        Ok(())
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "You do not have permission to perform this action: it needs AdministerSystem.",
            ))
        }
    }

    /// The user's own resources, or an administrator's view of anyone's.
    pub fn require_self_or_admin(&self, user_id: &str) -> Result<(), ApiError> {
        if self.admin || self.user.id == user_id {
            Ok(())
        } else {
            Err(ApiError::not_found(user_id))
        }
    }
}

/// The permission a space-scoped route needs, from its path after `/api/s/{space}` and its method.
/// None: seeing the space is enough.
fn space_permission(method: &Method, rest: &[&str]) -> Option<&'static str> {
    let read = *method == Method::GET || *method == Method::HEAD;
    Some(match rest {
        [] => return None,
        // Discovering dials a machine for its certificate: a step of registering a worker.
        ["workers", "discover"] => "WorkerEdit",
        ["workerpools", ..] | ["workers", ..] if read => "WorkerView",
        ["workerpools", ..] | ["workers", ..] => "WorkerEdit",
        ["machinepolicies", ..] if read => "MachinePolicyView",
        ["machinepolicies", ..] => "MachinePolicyEdit",
        ["runbooks" | "runbookprocesses" | "variables", ..] if read => "RunbookView",
        ["runbooks" | "runbookprocesses" | "variables", ..] => "RunbookEdit",
        ["runbookruns", ..] if read => "RunbookView",
        ["runbookruns", ..] => "RunbookRunCreate",
        ["tasks", _, "cancel"] => "TaskCancel",
        ["tasks", ..] if read => "TaskView",
        ["tasks", ..] => "TaskCreate",
        ["teams", ..] | ["scopeduserroles", ..] => "AdministerSystem",
        _ => return None,
    })
}

/// Checks a request's route against the user's access before its handler runs.
pub async fn check_route(
    app: &App,
    access: &Access,
    method: &Method,
    path: &str,
) -> Result<(), ApiError> {
    if access.admin {
        return Ok(());
    }
    let read = *method == Method::GET || *method == Method::HEAD;
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api", "s", space, rest @ ..] => {
            // An unknown space is the handler's 404 to give.
            let Ok(space) = crate::api::resolve_space(app, space).await else {
                return Ok(());
            };
            match space_permission(method, rest) {
                Some("AdministerSystem") if access.sees_space(&space.id) => access.require_admin(),
                Some(permission) => access.require(&space, permission),
                None if access.sees_space(&space.id) => Ok(()),
                None => Err(ApiError::not_found(&space.id)),
            }
        }
        ["api", "spaces", ..] if !read => access.require_admin(),
        ["api", "teams" | "userroles" | "scopeduserroles", ..] => access.require_admin(),
        ["api", "users"] if !read => access.require_admin(),
        _ => Ok(()),
    }
}
