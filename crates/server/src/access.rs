//! Who may do what: a request's user, their teams, and the roles scoped to those teams, read once per
//! request. Every route is declared with a [`Rule`]; [`check`] applies the rule of the route the
//! router matched before its handler runs, and hands a `{space}` route's resolved space to the
//! handler. Handlers of routes whose space is known only from the resource (unprefixed tasks) check
//! with [`Access::require`].
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

/// Who may call a route: the one permission table. Every route of the router is declared with its
/// rule (`api::routes`), and the access check reads the rule of the route the router matched, so the
/// check and the handler always see the same route and the same parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// No key needed: the root document and the OpenAPI document.
    Anonymous,
    /// Any valid key; the handler narrows what it answers to what the user may see (their own user,
    /// the spaces they see, a task's space).
    User,
    /// AdministerSystem.
    Admin,
    /// A `{space}` route: the space must be one the user sees (else 404), and, when named, this
    /// permission must be granted in it (else 403).
    Space(Option<&'static str>),
    /// A `{space}` route that needs AdministerSystem (the roles teams have in a space): 404 when
    /// the space is unseen, else 403 without AdministerSystem.
    SpaceAdmin,
}

/// The space a `{space}` route names, resolved once by the access check and handed to the handler.
#[derive(Clone, Debug)]
pub struct SpaceScope(pub Space);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for SpaceScope {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        // Fail closed: a handler whose space the check did not resolve answers nothing.
        parts
            .extensions
            .get::<SpaceScope>()
            .cloned()
            .ok_or_else(|| ApiError::not_found("space"))
    }
}

/// The rules of the router's routes, by (method, route template).
pub type Rules = std::collections::HashMap<(Method, &'static str), Rule>;

/// Checks a matched route's rule before its handler runs; a `{space}` route's space is resolved
/// here, once, and handed to the handler as [`SpaceScope`]. A route without a rule, or a space that
/// cannot be resolved, is refused: the check fails closed.
pub async fn check(
    axum::extract::State((app, rules)): axum::extract::State<(App, std::sync::Arc<Rules>)>,
    params: axum::extract::RawPathParams,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match authorize(&app, &rules, &params, &mut request).await {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

async fn authorize(
    app: &App,
    rules: &Rules,
    params: &axum::extract::RawPathParams,
    request: &mut axum::extract::Request,
) -> Result<(), ApiError> {
    let template = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let method = if request.method() == Method::HEAD {
        Method::GET
    } else {
        request.method().clone()
    };
    let Some(rule) = rules.get(&(method, template.as_str())).copied() else {
        return Err(ApiError::new(
            axum::http::StatusCode::METHOD_NOT_ALLOWED,
            "This address does not accept that method.",
        ));
    };
    if rule == Rule::Anonymous {
        return Ok(());
    }
    let access = request
        .extensions()
        .get::<Access>()
        .cloned()
        .ok_or_else(|| ApiError::unauthorized("You must be authenticated."))?;
    match rule {
        Rule::Anonymous | Rule::User => Ok(()),
        Rule::Admin => access.require_admin(),
        Rule::Space(_) | Rule::SpaceAdmin => {
            let key = params
                .iter()
                .find(|(name, _)| *name == "space")
                .map(|(_, value)| value.to_string())
                .ok_or_else(|| ApiError::not_found("space"))?;
            let space = resolve_space(app, &key).await?;
            if !access.sees_space(&space.id) {
                return Err(ApiError::not_found(&key));
            }
            match rule {
                Rule::Space(Some(permission)) => access.require(&space, permission)?,
                Rule::SpaceAdmin => access.require_admin()?,
                _ => {}
            }
            request.extensions_mut().insert(SpaceScope(space));
            Ok(())
        }
    }
}

/// The space a scoped route names: `default`, an id, or a slug. Unknown answers 404.
pub async fn resolve_space(app: &App, key: &str) -> Result<Space, ApiError> {
    let found = if key == crate::http::DEFAULT_SPACE {
        app.store
            .list::<Space>("")
            .await?
            .into_iter()
            .find(|s| s.is_default)
    } else if let Some(id) = muster_core::ids::canonical_id(muster_core::IdKind::Space, key) {
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
