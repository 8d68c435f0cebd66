//! What the first start creates: the default space with its pool and policy, the administrator and
//! an API key; and the installation id.

use crate::auth;
use anyhow::Context;
use muster_core::IdKind;
use muster_core::resources::{ApiKeyRecord, MachinePolicy, Space, User, WorkerPool};
use muster_core::time::now;
use muster_store::{Row, Store};

pub struct Setup {
    pub installation_id: String,
    /// A key generated on this start, to print once.
    pub new_admin_key: Option<String>,
}

pub const ADMIN_USERNAME: &str = "admin";

pub fn check_bootstrap_key(key: &str) -> anyhow::Result<()> {
    if !(auth::valid_key_format(key) && key.len() >= 4 + 26) {
        anyhow::bail!(
            "MUSTER_BOOTSTRAP_API_KEY must be API- followed by 26 or more upper-case letters and digits"
        );
    }
    Ok(())
}

pub async fn ensure(store: &Store, bootstrap_key: Option<&str>) -> anyhow::Result<Setup> {
    if let Some(key) = bootstrap_key {
        check_bootstrap_key(key)?;
    }
    let installation_id = match store.meta("installation_id").await? {
        Some(id) => id,
        None => {
            let id = uuid::Uuid::new_v4().to_string();
            store.set_meta("installation_id", &id).await?;
            id
        }
    };
    if store.list::<Space>("").await?.is_empty() {
        let space = Space {
            name: "Default".into(),
            is_default: true,
            ..Default::default()
        };
        create_space(store, space, "system")
            .await
            .context("cannot create the default space")?;
    }
    let admin = match store
        .list::<User>("")
        .await?
        .into_iter()
        .find(|u| u.username == ADMIN_USERNAME)
    {
        Some(admin) => admin,
        None => {
            let admin = User {
                id: store.next_id(IdKind::User).await?,
                username: ADMIN_USERNAME.into(),
                display_name: "Administrator".into(),
                is_active: true,
                last_modified_on: Some(now()),
                ..Default::default()
            };
            store.put(&admin).await?;
            admin
        }
    };
    ensure_roles_and_administrators(store, &admin).await?;
    let mut new_admin_key = None;
    match bootstrap_key {
        Some(key) => {
            if store
                .find_by_ext::<ApiKeyRecord>(&auth::hash_key(key))
                .await?
                .is_empty()
            {
                add_key(store, &admin, key, "Bootstrap (MUSTER_BOOTSTRAP_API_KEY)").await?;
            }
        }
        None => {
            let has_key = store
                .list::<ApiKeyRecord>("")
                .await?
                .iter()
                .any(|k| k.user_id == admin.id);
            if !has_key {
                let key = auth::new_api_key();
                add_key(store, &admin, &key, "Created at first start").await?;
                new_admin_key = Some(key);
            }
        }
    }
    Ok(Setup {
        installation_id,
        new_admin_key,
    })
}

pub async fn add_key(
    store: &Store,
    user: &User,
    key: &str,
    purpose: &str,
) -> anyhow::Result<ApiKeyRecord> {
    let record = ApiKeyRecord {
        id: store.next_id(IdKind::ApiKey).await?,
        user_id: user.id.clone(),
        purpose: purpose.into(),
        key_hash: auth::hash_key(key),
        hint: auth::hint(key),
        created: now(),
        expires: None,
    };
    store.put(&record).await?;
    Ok(record)
}

/// Creates a space with its own default worker pool and default machine policy, in one transaction.
pub async fn create_space(
    store: &Store,
    mut space: Space,
    by: &str,
) -> Result<Space, muster_store::StoreError> {
    let stamp = Some(now());
    space.id = store.next_id(IdKind::Space).await?;
    if space.slug.trim().is_empty() {
        space.slug = muster_core::ids::slugify(&space.name);
    }
    if space.slug.is_empty() {
        // A name without letters or digits: the id serves as the slug.
        space.slug = space.id.to_ascii_lowercase();
    }
    space.last_modified_on = stamp;
    space.last_modified_by = Some(by.into());
    let pool = WorkerPool {
        id: store.next_id(IdKind::WorkerPool).await?,
        space_id: space.id.clone(),
        name: "Default Worker Pool".into(),
        slug: "default-worker-pool".into(),
        is_default: true,
        sort_order: 1,
        can_add_workers: true,
        last_modified_on: stamp,
        last_modified_by: Some(by.into()),
        ..Default::default()
    };
    let policy = MachinePolicy {
        id: store.next_id(IdKind::MachinePolicy).await?,
        space_id: space.id.clone(),
        name: "Default Machine Policy".into(),
        description: Some("The default machine policy".into()),
        is_default: true,
        last_modified_on: stamp,
        last_modified_by: Some(by.into()),
        ..Default::default()
    };
    store
        .put_rows(vec![Row::of(&space), Row::of(&pool), Row::of(&policy)])
        .await?;
    Ok(space)
}

/// The built-in user roles, and the administrators' team holding the system administrator role with
/// the first administrator in it. Each is created once; what a user changed later stays.
async fn ensure_roles_and_administrators(store: &Store, admin: &User) -> anyhow::Result<()> {
    use muster_core::permissions::{ADMINISTRATORS_TEAM, BUILT_IN_ROLES, SYSTEM_ADMINISTRATOR};
    use muster_core::resources::{ScopedUserRole, Team, UserRole};
    let roles: Vec<UserRole> = store.list("").await?;
    let mut admin_role_id = roles
        .iter()
        .find(|r| r.name == SYSTEM_ADMINISTRATOR)
        .map(|r| r.id.clone());
    for built_in in BUILT_IN_ROLES {
        if let Some(existing) = roles.iter().find(|r| r.name == built_in.name) {
            // A data directory from before runbooks, accounts or artifacts: its built-in roles get the
            // permissions of each family they would have had (a role that has any permission of a
            // family is left as it is).
            let mut role = existing.clone();
            for family in ["Runbook", "Account", "Artifact"] {
                let has_any = existing
                    .granted_space_permissions
                    .iter()
                    .any(|p| p.starts_with(family));
                if !has_any {
                    role.granted_space_permissions.extend(
                        built_in
                            .space
                            .iter()
                            .filter(|p| p.starts_with(family))
                            .map(|p| p.to_string()),
                    );
                }
            }
            if role != *existing && !existing.can_be_deleted {
                store.put(&role).await?;
            }
            continue;
        }
        let role = UserRole {
            id: store.next_id(IdKind::UserRole).await?,
            name: built_in.name.into(),
            description: Some(built_in.description.into()),
            granted_space_permissions: built_in.space.iter().map(|p| p.to_string()).collect(),
            granted_system_permissions: built_in.system.iter().map(|p| p.to_string()).collect(),
            can_be_deleted: false,
            supported_restrictions: Vec::new(),
            last_modified_on: Some(now()),
            last_modified_by: Some("system".into()),
        };
        store.put(&role).await?;
        if built_in.name == SYSTEM_ADMINISTRATOR {
            admin_role_id = Some(role.id.clone());
        }
    }
    let teams: Vec<Team> = store.list("").await?;
    if !teams.iter().any(|t| t.name == ADMINISTRATORS_TEAM) {
        let team = Team {
            id: store.next_id(IdKind::Team).await?,
            name: ADMINISTRATORS_TEAM.into(),
            description: Some("Administer the whole server.".into()),
            member_user_ids: vec![admin.id.clone()],
            can_be_deleted: false,
            can_be_renamed: false,
            can_change_roles: false,
            can_change_members: true,
            last_modified_on: Some(now()),
            last_modified_by: Some("system".into()),
            ..Default::default()
        };
        let scoped = ScopedUserRole {
            id: store.next_id(IdKind::ScopedUserRole).await?,
            team_id: team.id.clone(),
            user_role_id: admin_role_id.context("the system administrator role is missing")?,
            last_modified_on: Some(now()),
            last_modified_by: Some("system".into()),
            ..Default::default()
        };
        store
            .put_rows(vec![Row::of(&team), Row::of(&scoped)])
            .await?;
    }
    Ok(())
}
