//! Permissions, with Octopus's names: space permissions are granted per space through a team's scoped
//! user roles; system permissions through roles scoped to no space. The built-in roles are the small
//! model Muster starts every installation with.

/// A permission granted per space.
pub const SPACE_PERMISSIONS: &[(&str, &str)] = &[
    ("WorkerView", "View worker pools and workers"),
    (
        "WorkerEdit",
        "Create, edit and delete worker pools and workers; register and share workers",
    ),
    ("MachinePolicyView", "View machine policies"),
    (
        "MachinePolicyEdit",
        "Create, edit and delete machine policies",
    ),
    ("TaskView", "View tasks and their logs"),
    ("TaskCreate", "Run scripts and health checks"),
    ("TaskCancel", "Cancel tasks"),
    (
        "RunbookView",
        "View runbooks, their processes, variables and runs",
    ),
    (
        "RunbookEdit",
        "Create, edit and delete runbooks, their processes and variables",
    ),
    ("RunbookRunCreate", "Run runbooks"),
    ("AccountView", "View accounts (never their secrets)"),
    ("AccountCreate", "Create accounts"),
    ("AccountEdit", "Edit accounts"),
    ("AccountDelete", "Delete accounts"),
    (
        "ArtifactView",
        "View and download the files tasks collected",
    ),
    (
        "ArtifactCreate",
        "Create artifacts (scripts do, through their task)",
    ),
    ("ArtifactEdit", "Edit artifacts"),
    ("ArtifactDelete", "Delete artifacts"),
];

/// A permission over the whole server.
pub const SYSTEM_PERMISSIONS: &[(&str, &str)] = &[(
    "AdministerSystem",
    "Everything: spaces, users, teams and roles, and every space permission in every space",
)];

pub fn is_space_permission(name: &str) -> bool {
    SPACE_PERMISSIONS.iter().any(|(p, _)| *p == name)
}

pub fn is_system_permission(name: &str) -> bool {
    SYSTEM_PERMISSIONS.iter().any(|(p, _)| *p == name)
}

/// The canonical spelling of a permission given in any case.
pub fn canonical(name: &str) -> Option<&'static str> {
    SPACE_PERMISSIONS
        .iter()
        .chain(SYSTEM_PERMISSIONS)
        .map(|(p, _)| *p)
        .find(|p| p.eq_ignore_ascii_case(name.trim()))
}

/// A built-in role: name, description, space permissions, system permissions.
pub struct BuiltInRole {
    pub name: &'static str,
    pub description: &'static str,
    pub space: &'static [&'static str],
    pub system: &'static [&'static str],
}

const ALL_SPACE: &[&str] = &[
    "WorkerView",
    "WorkerEdit",
    "MachinePolicyView",
    "MachinePolicyEdit",
    "TaskView",
    "TaskCreate",
    "TaskCancel",
    "RunbookView",
    "RunbookEdit",
    "RunbookRunCreate",
    "AccountView",
    "AccountCreate",
    "AccountEdit",
    "AccountDelete",
    "ArtifactView",
    "ArtifactCreate",
    "ArtifactEdit",
    "ArtifactDelete",
];

pub const SYSTEM_ADMINISTRATOR: &str = "System administrator";
pub const SPACE_MANAGER: &str = "Space manager";

pub const BUILT_IN_ROLES: &[BuiltInRole] = &[
    BuiltInRole {
        name: SYSTEM_ADMINISTRATOR,
        description: "Administers the whole server.",
        space: ALL_SPACE,
        system: &["AdministerSystem"],
    },
    BuiltInRole {
        name: SPACE_MANAGER,
        description: "Everything within a space.",
        space: ALL_SPACE,
        system: &[],
    },
    BuiltInRole {
        name: "Worker manager",
        description: "Configures a space's workers, pools, machine policies and accounts, and sees its tasks.",
        space: &[
            "WorkerView",
            "WorkerEdit",
            "MachinePolicyView",
            "MachinePolicyEdit",
            "TaskView",
            "RunbookView",
            "AccountView",
            "AccountCreate",
            "AccountEdit",
            "AccountDelete",
            "ArtifactView",
        ],
        system: &[],
    },
    BuiltInRole {
        name: "Task runner",
        description: "Runs and cancels tasks and runbooks in a space, and sees its workers, tasks and runbooks.",
        space: &[
            "WorkerView",
            "MachinePolicyView",
            "TaskView",
            "TaskCreate",
            "TaskCancel",
            "RunbookView",
            "RunbookRunCreate",
            "AccountView",
            "ArtifactView",
            "ArtifactDelete",
        ],
        system: &[],
    },
    BuiltInRole {
        name: "Space viewer",
        description: "Sees a space's workers, pools, policies, accounts, tasks and runbooks.",
        space: &[
            "WorkerView",
            "MachinePolicyView",
            "TaskView",
            "RunbookView",
            "AccountView",
            "ArtifactView",
        ],
        system: &[],
    },
];

/// The team whose members administer the server.
pub const ADMINISTRATORS_TEAM: &str = "Octopus Administrators";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_roles_name_only_known_permissions() {
        for role in BUILT_IN_ROLES {
            assert!(
                role.space.iter().all(|p| is_space_permission(p)),
                "{}",
                role.name
            );
            assert!(
                role.system.iter().all(|p| is_system_permission(p)),
                "{}",
                role.name
            );
        }
        assert_eq!(canonical("workeredit"), Some("WorkerEdit"));
        assert_eq!(canonical("nope"), None);
    }
}
