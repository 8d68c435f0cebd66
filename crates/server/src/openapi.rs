//! The OpenAPI document served at `/api/openapi.json`. Paths are listed in the form clients use
//! (`/api/{spaceId}/…`); each also answers as `/api/spaces/{spaceId}/…` and, for the default space,
//! unprefixed. A test walks every path listed here against a running server.

use serde_json::{Map, Value, json};

struct Op {
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    query: &'static [&'static str],
    body: Option<&'static str>,
    /// The schema answered with 200/201, or "text" for text/plain, "pem" for a PEM certificate,
    /// "events" for server-sent events, "bytes" for a file's bytes (application/octet-stream).
    answer: &'static str,
}

const fn op(
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    query: &'static [&'static str],
    body: Option<&'static str>,
    answer: &'static str,
) -> Op {
    Op {
        method,
        path,
        tag,
        summary,
        query,
        body,
        answer,
    }
}

const PAGING: &[&str] = &["skip", "take", "ids", "partialName", "name"];
const WORKER_FILTERS: &[&str] = &[
    "skip",
    "take",
    "ids",
    "name",
    "partialName",
    "isDisabled",
    "healthStatuses",
    "commStyles",
    "workerPoolIds",
    "thumbprint",
    "shellNames",
];
const TASK_FILTERS: &[&str] = &[
    "skip",
    "take",
    "ids",
    "name",
    "partialName",
    "states",
    "active",
    "running",
    "hasWarningsOrErrors",
    "spaces",
];

const EVENT_FILTERS: &[&str] = &[
    "skip",
    "take",
    "ids",
    "regarding",
    "users",
    "from",
    "to",
    "eventCategories",
    "spaces",
    "includeSystem",
];
/// A space's events: the space is the route's, and they are never system events.
const SPACE_EVENT_FILTERS: &[&str] = &[
    "skip",
    "take",
    "ids",
    "regarding",
    "users",
    "from",
    "to",
    "eventCategories",
];

const OPS: &[Op] = &[
    op(
        "get",
        "/api",
        "Root",
        "The root document (anonymous).",
        &[],
        None,
        "Root",
    ),
    op(
        "get",
        "/api/openapi.json",
        "Root",
        "This document (anonymous).",
        &[],
        None,
        "Object",
    ),
    op(
        "get",
        "/api/{spaceId}",
        "Root",
        "A space's root document: its link templates.",
        &[],
        None,
        "SpaceRoot",
    ),
    op(
        "get",
        "/api/configuration/certificates",
        "Root",
        "The server certificate, as a collection.",
        &[],
        None,
        "Collection",
    ),
    op(
        "get",
        "/api/configuration/certificates/{certificateId}",
        "Root",
        "The server certificate (`certificate-global`); agents trust its thumbprint.",
        &[],
        None,
        "Certificate",
    ),
    op(
        "get",
        "/api/configuration/certificates/{certificateId}/public-cer",
        "Root",
        "The server certificate in PEM.",
        &[],
        None,
        "pem",
    ),
    op(
        "get",
        "/api/certificates/{certificateId}",
        "Root",
        "Older route of the server certificate.",
        &[],
        None,
        "Certificate",
    ),
    op(
        "get",
        "/api/spaces",
        "Spaces",
        "Spaces, paged, by name.",
        PAGING,
        None,
        "Collection",
    ),
    op(
        "post",
        "/api/spaces",
        "Spaces",
        "Creates a space with its own default worker pool and machine policy.",
        &[],
        Some("Space"),
        "Space",
    ),
    op(
        "get",
        "/api/spaces/all",
        "Spaces",
        "Every space, as an array.",
        &["ids", "partialName", "name"],
        None,
        "SpaceArray",
    ),
    op(
        "get",
        "/api/spaces/{id}",
        "Spaces",
        "One space.",
        &[],
        None,
        "Space",
    ),
    op(
        "put",
        "/api/spaces/{id}",
        "Spaces",
        "Updates a space; IsDefault moves the default flag to it.",
        &[],
        Some("Space"),
        "Space",
    ),
    op(
        "delete",
        "/api/spaces/{id}",
        "Spaces",
        "Deletes a non-default space whose TaskQueueStopped is true, with everything in it.",
        &[],
        None,
        "Empty",
    ),
    op(
        "get",
        "/api/users",
        "Users",
        "Users, paged.",
        &["skip", "take", "ids"],
        None,
        "Collection",
    ),
    op(
        "get",
        "/api/users/me",
        "Users",
        "The user of the API key.",
        &[],
        None,
        "User",
    ),
    op(
        "get",
        "/api/users/{userId}",
        "Users",
        "One user.",
        &[],
        None,
        "User",
    ),
    op(
        "get",
        "/api/users/{userId}/spaces",
        "Users",
        "The spaces the user can use, as an array.",
        &[],
        None,
        "SpaceArray",
    ),
    op(
        "get",
        "/api/users/{userId}/apikeys",
        "Users",
        "The user's API keys (hints only), paged.",
        &["skip", "take"],
        None,
        "Collection",
    ),
    op(
        "post",
        "/api/users/{userId}/apikeys",
        "Users",
        "Creates an API key; its value is in this answer only.",
        &[],
        Some("ApiKeyCreate"),
        "ApiKeyCreated",
    ),
    op(
        "get",
        "/api/users/{userId}/apikeys/{apiKeyId}",
        "Users",
        "One API key (hint only).",
        &[],
        None,
        "ApiKey",
    ),
    op(
        "delete",
        "/api/users/{userId}/apikeys/{apiKeyId}",
        "Users",
        "Revokes an API key.",
        &[],
        None,
        "Empty",
    ),
    op(
        "post",
        "/api/users",
        "Users",
        "Creates a user (administrators); they sign in with API keys.",
        &[],
        Some("User"),
        "User",
    ),
    op(
        "put",
        "/api/users/{userId}",
        "Users",
        "Edits a user: oneself the display name and e-mail, an administrator anything.",
        &[],
        Some("User"),
        "User",
    ),
    op(
        "delete",
        "/api/users/{userId}",
        "Users",
        "Deletes a user with their API keys and team memberships (administrators).",
        &[],
        None,
        "Empty",
    ),
    op(
        "get",
        "/api/users/{userId}/permissions",
        "Users",
        "What the user may do: system permissions, and each space permission with its spaces.",
        &[],
        None,
        "UserPermissions",
    ),
    op(
        "get",
        "/api/teams",
        "Teams",
        "Teams, paged (administrators).",
        &[
            "skip",
            "take",
            "ids",
            "partialName",
            "spaces",
            "includeSystem",
        ],
        None,
        "Collection",
    ),
    op(
        "post",
        "/api/teams",
        "Teams",
        "Creates a team: a name and MemberUserIds (SpaceId makes it a space's team).",
        &[],
        Some("Team"),
        "Team",
    ),
    op(
        "get",
        "/api/teams/all",
        "Teams",
        "Every team, as an array.",
        &[],
        None,
        "TeamArray",
    ),
    op(
        "get",
        "/api/teams/{id}",
        "Teams",
        "One team.",
        &[],
        None,
        "Team",
    ),
    op(
        "put",
        "/api/teams/{id}",
        "Teams",
        "Edits a team; the administrators' team keeps at least one member.",
        &[],
        Some("Team"),
        "Team",
    ),
    op(
        "delete",
        "/api/teams/{id}",
        "Teams",
        "Deletes a team and the roles given to it.",
        &[],
        None,
        "Empty",
    ),
    op(
        "get",
        "/api/teams/{id}/scopeduserroles",
        "Teams",
        "The roles given to a team, paged.",
        &["skip", "take"],
        None,
        "Collection",
    ),
    op(
        "get",
        "/api/userroles",
        "Teams",
        "User roles, paged: the built-in ones and your own.",
        &["skip", "take", "ids", "partialName"],
        None,
        "Collection",
    ),
    op(
        "post",
        "/api/userroles",
        "Teams",
        "Creates a role from GrantedSpacePermissions and GrantedSystemPermissions.",
        &[],
        Some("UserRole"),
        "UserRole",
    ),
    op(
        "get",
        "/api/userroles/all",
        "Teams",
        "Every user role, as an array.",
        &[],
        None,
        "UserRoleArray",
    ),
    op(
        "get",
        "/api/userroles/{id}",
        "Teams",
        "One user role.",
        &[],
        None,
        "UserRole",
    ),
    op(
        "put",
        "/api/userroles/{id}",
        "Teams",
        "Edits a role of your own (built-in roles do not change).",
        &[],
        Some("UserRole"),
        "UserRole",
    ),
    op(
        "delete",
        "/api/userroles/{id}",
        "Teams",
        "Deletes a role of your own that no team holds.",
        &[],
        None,
        "Empty",
    ),
    op(
        "get",
        "/api/scopeduserroles",
        "Teams",
        "Every role given to a team, paged.",
        &["skip", "take"],
        None,
        "Collection",
    ),
    op(
        "post",
        "/api/scopeduserroles",
        "Teams",
        "Gives a role to a team: in a space (SpaceId), or system-wide for system permissions.",
        &[],
        Some("ScopedUserRole"),
        "ScopedUserRole",
    ),
    op(
        "get",
        "/api/scopeduserroles/{id}",
        "Teams",
        "One role given to a team.",
        &[],
        None,
        "ScopedUserRole",
    ),
    op(
        "put",
        "/api/scopeduserroles/{id}",
        "Teams",
        "Edits a role given to a team.",
        &[],
        Some("ScopedUserRole"),
        "ScopedUserRole",
    ),
    op(
        "delete",
        "/api/scopeduserroles/{id}",
        "Teams",
        "Takes a role from a team.",
        &[],
        None,
        "Empty",
    ),
    op(
        "get",
        "/api/{spaceId}/scopeduserroles",
        "Teams",
        "The roles given in this space, paged.",
        &["skip", "take"],
        None,
        "Collection",
    ),
    op(
        "post",
        "/api/{spaceId}/scopeduserroles",
        "Teams",
        "Gives a role to a team in this space.",
        &[],
        Some("ScopedUserRole"),
        "ScopedUserRole",
    ),
    op(
        "get",
        "/api/permissions/all",
        "Teams",
        "Every permission, with what it allows.",
        &[],
        None,
        "Permissions",
    ),
    op(
        "get",
        "/api/{spaceId}/workerpools",
        "WorkerPools",
        "Worker pools by SortOrder, paged.",
        PAGING,
        None,
        "Collection",
    ),
    op(
        "post",
        "/api/{spaceId}/workerpools",
        "WorkerPools",
        "Creates a static or dynamic worker pool.",
        &[],
        Some("WorkerPool"),
        "WorkerPool",
    ),
    op(
        "get",
        "/api/{spaceId}/workerpools/all",
        "WorkerPools",
        "Every worker pool, as an array.",
        &["ids", "partialName", "name"],
        None,
        "WorkerPoolArray",
    ),
    op(
        "get",
        "/api/{spaceId}/workerpools/sortorder",
        "WorkerPools",
        "The pool ids in order.",
        &[],
        None,
        "IdArray",
    ),
    op(
        "put",
        "/api/{spaceId}/workerpools/sortorder",
        "WorkerPools",
        "Reorders the pools: every pool id of the space, in the new order.",
        &[],
        Some("IdArray"),
        "Empty",
    ),
    op(
        "get",
        "/api/{spaceId}/workerpools/summary",
        "WorkerPools",
        "Counts of workers per pool by health and endpoint.",
        &[
            "ids",
            "partialName",
            "isDisabled",
            "healthStatuses",
            "commStyles",
            "hideEmptyWorkerPools",
        ],
        None,
        "WorkerPoolsSummary",
    ),
    op(
        "get",
        "/api/{spaceId}/workerpools/supportedtypes",
        "WorkerPools",
        "The pool types this server supports.",
        &[],
        None,
        "Object",
    ),
    op(
        "get",
        "/api/{spaceId}/workerpools/dynamicworkertypes",
        "WorkerPools",
        "The dynamic worker types this server's configuration file defines (WorkerTypes): a DynamicWorkerPool names one in WorkerType.",
        &[],
        None,
        "Object",
    ),
    op(
        "get",
        "/api/{spaceId}/workerpools/{id}",
        "WorkerPools",
        "One worker pool.",
        &[],
        None,
        "WorkerPool",
    ),
    op(
        "put",
        "/api/{spaceId}/workerpools/{id}",
        "WorkerPools",
        "Updates a worker pool (its type cannot change).",
        &[],
        Some("WorkerPool"),
        "WorkerPool",
    ),
    op(
        "delete",
        "/api/{spaceId}/workerpools/{id}",
        "WorkerPools",
        "Deletes an empty, non-default worker pool.",
        &[],
        None,
        "Empty",
    ),
    op(
        "get",
        "/api/{spaceId}/workerpools/{id}/workers",
        "WorkerPools",
        "The pool's workers, paged.",
        WORKER_FILTERS,
        None,
        "Collection",
    ),
    op(
        "get",
        "/api/{spaceId}/workers",
        "Workers",
        "Workers by name, paged.",
        WORKER_FILTERS,
        None,
        "Collection",
    ),
    op(
        "post",
        "/api/{spaceId}/workers",
        "Workers",
        "Registers a worker in static pools of the space; a null MachinePolicyId means the default policy.",
        &[],
        Some("Worker"),
        "Worker",
    ),
    op(
        "get",
        "/api/{spaceId}/registrationtokens",
        "Workers",
        "The space's registration tokens that are still good (never their values), paged.",
        &["skip", "take"],
        None,
        "Collection",
    ),
    op(
        "post",
        "/api/{spaceId}/registrationtokens",
        "Workers",
        "Makes a registration token (Muster's): it registers Uses workers (default 1, at most 1000) in the given static pools until it expires (ExpiresInMinutes, default 60, at most a week). The token is in the answer, once.",
        &[],
        Some("RegistrationTokenCreate"),
        "RegistrationTokenCreated",
    ),
    op(
        "delete",
        "/api/{spaceId}/registrationtokens/{id}",
        "Workers",
        "Revokes a registration token.",
        &[],
        None,
        "Empty",
    ),
    op(
        "post",
        "/api/workerregistrations",
        "Workers",
        "Registers an agent's worker with a registration token instead of an API key (no key needed): the token's space and pools, on behalf of the user who made it. Endpoint.CommunicationStyle is TentacleActive, TentaclePassive or KubernetesTentacle. Answers the worker (201; 200 when the same name and certificate registered before, using nothing up) with the server's certificate thumbprint in X-Muster-Server-Thumbprint; a token unknown, used up, revoked or expired is 401.",
        &[],
        Some("WorkerRegistration"),
        "Worker",
    ),
    op(
        "get",
        "/api/{spaceId}/workers/all",
        "Workers",
        "Every worker, as an array (deregister-worker filters by thumbprint).",
        &["ids", "thumbprint", "partialName", "name"],
        None,
        "WorkerArray",
    ),
    op(
        "get",
        "/api/{spaceId}/workers/discover",
        "Workers",
        "Reads the thumbprint a listening agent presents (type TentaclePassive, port 10933) or an SSH host's key (type Ssh, port 22: Endpoint.Fingerprint in SHA-256 form and Endpoint.HostKeyAlgorithm), and answers an unsaved worker to register with it.",
        &["host", "port", "type"],
        None,
        "Worker",
    ),
    op(
        "get",
        "/api/{spaceId}/workers/{id}",
        "Workers",
        "One worker.",
        &[],
        None,
        "Worker",
    ),
    op(
        "put",
        "/api/{spaceId}/workers/{id}",
        "Workers",
        "Updates a worker; health fields are the server's.",
        &[],
        Some("Worker"),
        "Worker",
    ),
    op(
        "delete",
        "/api/{spaceId}/workers/{id}",
        "Workers",
        "Deletes a worker.",
        &[],
        None,
        "Empty",
    ),
    op(
        "get",
        "/api/{spaceId}/workers/{id}/connection",
        "Workers",
        "The worker's connection status.",
        &[],
        None,
        "Object",
    ),
    op(
        "get",
        "/api/{spaceId}/workers/usage",
        "Workers",
        "How busy this space's tasks kept its agents over a window (default the last 24 hours).",
        &["hours", "from", "to"],
        None,
        "Object",
    ),
    op(
        "get",
        "/api/usage/workers",
        "Workers",
        "How busy the agents were, per agent and per space, and what sharing saved against dedicated workers.",
        &["hours", "from", "to"],
        None,
        "Object",
    ),
    op(
        "get",
        "/api/{spaceId}/workers/{id}/shares",
        "Workers",
        "The workers that share this worker's agent into other spaces (those you can see).",
        &[],
        None,
        "WorkerArray",
    ),
    op(
        "post",
        "/api/{spaceId}/workers/{id}/shares",
        "Workers",
        "Shares the worker's agent into pools of another space (WorkerEdit in both); sharing again updates the share (200).",
        &[],
        Some("WorkerShare"),
        "Worker",
    ),
    op(
        "delete",
        "/api/{spaceId}/workers/{id}/shares/{targetSpaceId}",
        "Workers",
        "Stops sharing the agent into that space: its running tasks finish, no new ones are routed.",
        &[],
        None,
        "Empty",
    ),
    op(
        "get",
        "/api/{spaceId}/machinepolicies",
        "MachinePolicies",
        "Machine policies, paged.",
        PAGING,
        None,
        "Collection",
    ),
    op(
        "post",
        "/api/{spaceId}/machinepolicies",
        "MachinePolicies",
        "Creates a machine policy; unset fields take the template's values.",
        &[],
        Some("MachinePolicy"),
        "MachinePolicy",
    ),
    op(
        "get",
        "/api/{spaceId}/machinepolicies/all",
        "MachinePolicies",
        "Every machine policy, as an array.",
        &["ids", "partialName", "name"],
        None,
        "MachinePolicyArray",
    ),
    op(
        "get",
        "/api/{spaceId}/machinepolicies/template",
        "MachinePolicies",
        "An unsaved policy with every default.",
        &[],
        None,
        "MachinePolicy",
    ),
    op(
        "get",
        "/api/{spaceId}/machinepolicies/{id}",
        "MachinePolicies",
        "One machine policy.",
        &[],
        None,
        "MachinePolicy",
    ),
    op(
        "put",
        "/api/{spaceId}/machinepolicies/{id}",
        "MachinePolicies",
        "Updates a machine policy.",
        &[],
        Some("MachinePolicy"),
        "MachinePolicy",
    ),
    op(
        "delete",
        "/api/{spaceId}/machinepolicies/{id}",
        "MachinePolicies",
        "Deletes an unused, non-default machine policy.",
        &[],
        None,
        "Empty",
    ),
    op(
        "get",
        "/api/{spaceId}/machinepolicies/{id}/workers",
        "MachinePolicies",
        "The workers under the policy, paged.",
        &["skip", "take"],
        None,
        "Collection",
    ),
    op(
        "get",
        "/api/{spaceId}/machinepolicies/{id}/machines",
        "MachinePolicies",
        "Same as /workers (Octopus's name).",
        &["skip", "take"],
        None,
        "Collection",
    ),
    op(
        "get",
        "/api/{spaceId}/accounts",
        "Accounts",
        "The space's accounts by name, paged; `accountType` filters (SshKeyPair, UsernamePassword).",
        &["skip", "take", "ids", "partialName", "accountType"],
        None,
        "Collection",
    ),
    op(
        "post",
        "/api/{spaceId}/accounts",
        "Accounts",
        "Creates an SshKeyPair or UsernamePassword account; secrets go in NewValue and are sealed at rest.",
        &[],
        Some("Account"),
        "Account",
    ),
    op(
        "get",
        "/api/{spaceId}/accounts/all",
        "Accounts",
        "Every account of the space, as an array.",
        &["ids", "partialName", "accountType"],
        None,
        "AccountArray",
    ),
    op(
        "get",
        "/api/{spaceId}/accounts/{id}",
        "Accounts",
        "One account; its secrets show only HasValue.",
        &[],
        None,
        "Account",
    ),
    op(
        "put",
        "/api/{spaceId}/accounts/{id}",
        "Accounts",
        "Replaces an account; a secret sent with NewValue null keeps the stored one, {HasValue: false} clears it. AccountType cannot change.",
        &[],
        Some("Account"),
        "Account",
    ),
    op(
        "delete",
        "/api/{spaceId}/accounts/{id}",
        "Accounts",
        "Deletes an account that no worker uses (400 naming the workers otherwise).",
        &[],
        None,
        "Empty",
    ),
    op(
        "get",
        "/api/{spaceId}/accounts/{id}/usages",
        "Accounts",
        "Octopus's AccountUsageResource: the workers that sign in with the account are its Targets.",
        &[],
        None,
        "AccountUsage",
    ),
    op(
        "get",
        "/api/{spaceId}/artifacts",
        "Artifacts",
        "The files tasks' scripts announced (new_octopusartifact) and the server collected, newest first, paged; `regarding` a task's id lists that task's.",
        &["skip", "take", "regarding", "ids", "partialName"],
        None,
        "Collection",
    ),
    op(
        "get",
        "/api/{spaceId}/artifacts/{id}",
        "Artifacts",
        "One artifact.",
        &[],
        None,
        "Artifact",
    ),
    op(
        "get",
        "/api/{spaceId}/artifacts/{id}/content",
        "Artifacts",
        "The artifact's bytes, streamed, with Content-Length and Content-Disposition: attachment; filename=….",
        &[],
        None,
        "bytes",
    ),
    op(
        "delete",
        "/api/{spaceId}/artifacts/{id}",
        "Artifacts",
        "Deletes an artifact: its record and its file.",
        &[],
        None,
        "Empty",
    ),
    op(
        "get",
        "/api/events",
        "Events",
        "Who did what, newest first, paged: the events of every space the key sees, and system events (users, API keys, failed sign-ins) for administrators. `regarding`, `users`, `eventCategories` and `spaces` take comma-joined ids (any of them); `from` and `to` are dates (inclusive); `includeSystem=false` leaves system events out.",
        EVENT_FILTERS,
        None,
        "Collection",
    ),
    op(
        "get",
        "/api/events/categories",
        "Events",
        "The categories Muster records: Created, Modified, Deleted, Canceled, LoginFailed, DynamicWorkerFailed.",
        &[],
        None,
        "EventCategoryArray",
    ),
    op(
        "get",
        "/api/events/{id}",
        "Events",
        "One event, if the key sees its space (a system event: administrators).",
        &[],
        None,
        "Event",
    ),
    op(
        "get",
        "/api/{spaceId}/events",
        "Events",
        "The space's events, newest first, paged; filters as /api/events.",
        SPACE_EVENT_FILTERS,
        None,
        "Collection",
    ),
    op(
        "get",
        "/api/{spaceId}/events/{id}",
        "Events",
        "One event of the space.",
        &[],
        None,
        "Event",
    ),
    op(
        "get",
        "/api/{spaceId}/machines",
        "Machines",
        "Deployment targets: Muster has none, so this is always an empty page (ItemType DeploymentTarget); Octopus clients that list machines work.",
        PAGING,
        None,
        "Collection",
    ),
    op(
        "get",
        "/api/{spaceId}/machines/all",
        "Machines",
        "Every deployment target: always an empty array.",
        &["ids"],
        None,
        "MachineArray",
    ),
    op(
        "get",
        "/api/{spaceId}/machines/discover",
        "Machines",
        "The same as /api/{spaceId}/workers/discover: an unsaved worker with the thumbprint or host key read.",
        &["host", "port", "type"],
        None,
        "Worker",
    ),
    op(
        "get",
        "/api/{spaceId}/machines/{id}",
        "Machines",
        "A deployment target: always 404, with the contract's error body.",
        &[],
        None,
        "Error",
    ),
    op(
        "get",
        "/api/{spaceId}/tasks",
        "Tasks",
        "The space's tasks, newest first, paged.",
        TASK_FILTERS,
        None,
        "Collection",
    ),
    op(
        "post",
        "/api/{spaceId}/tasks",
        "Tasks",
        "Queues a task; it is committed before the 201. A running task's script may send its MUSTER_TASK_TOKEN in the header X-Muster-Task-Token: the task is then that task's child, which it waits for (it borrows the task's leases and task-cap slot); an unknown or ended task's token is a 400.",
        &[],
        Some("TaskCreate"),
        "Task",
    ),
    op(
        "get",
        "/api/{spaceId}/tasks/{taskId}",
        "Tasks",
        "One task of the space.",
        &[],
        None,
        "Task",
    ),
    op(
        "get",
        "/api/{spaceId}/tasks/{taskId}/details",
        "Tasks",
        "The task with its activity log.",
        &["verbose", "tail"],
        None,
        "TaskDetails",
    ),
    op(
        "get",
        "/api/{spaceId}/tasks/{taskId}/raw",
        "Tasks",
        "The whole log as text.",
        &[],
        None,
        "text",
    ),
    op(
        "post",
        "/api/{spaceId}/tasks/{taskId}/cancel",
        "Tasks",
        "Cancels the task (the go client's form).",
        &[],
        None,
        "Task",
    ),
    op(
        "get",
        "/api/{spaceId}/tasks/{taskId}/stream",
        "Tasks",
        "The task live, as server-sent events.",
        &["after"],
        None,
        "events",
    ),
    op(
        "get",
        "/api/{spaceId}/tasks/{taskId}/queued-behind",
        "Tasks",
        "What a queued task waits behind, and why.",
        &["skip", "take"],
        None,
        "Collection",
    ),
    op(
        "get",
        "/api/tasks",
        "Tasks",
        "Tasks of every space (or of `spaces=`), newest first, paged.",
        TASK_FILTERS,
        None,
        "Collection",
    ),
    op(
        "post",
        "/api/tasks",
        "Tasks",
        "Queues a task in the body's SpaceId, or the default space.",
        &[],
        Some("TaskCreate"),
        "Task",
    ),
    op(
        "get",
        "/api/tasks/tasktypes",
        "Tasks",
        "The task types this server runs.",
        &[],
        None,
        "TaskTypeArray",
    ),
    op(
        "post",
        "/api/tasks/rerun/{taskId}",
        "Tasks",
        "Queues a finished task again, as a new task.",
        &[],
        None,
        "Task",
    ),
    op(
        "get",
        "/api/tasks/{taskId}",
        "Tasks",
        "One task of any space.",
        &[],
        None,
        "Task",
    ),
    op(
        "get",
        "/api/tasks/{taskId}/details",
        "Tasks",
        "The task with its activity log.",
        &["verbose", "tail"],
        None,
        "TaskDetails",
    ),
    op(
        "get",
        "/api/tasks/{taskId}/raw",
        "Tasks",
        "The whole log as text.",
        &[],
        None,
        "text",
    ),
    op(
        "post",
        "/api/tasks/{taskId}/cancel",
        "Tasks",
        "Cancels the task (the npm client's form). A queued task ends at once; a running one is stopped.",
        &[],
        None,
        "Task",
    ),
    op(
        "get",
        "/api/tasks/{taskId}/stream",
        "Tasks",
        "The task live, as server-sent events: `task` events carry the task, `line` events each log line; it ends after the final state.",
        &["after"],
        None,
        "events",
    ),
    op(
        "get",
        "/api/tasks/{taskId}/queued-behind",
        "Tasks",
        "What a queued task waits behind; `QueueReason` says why.",
        &["skip", "take"],
        None,
        "Collection",
    ),
    op(
        "get",
        "/api/{spaceId}/runbooks",
        "Runbooks",
        "The space's runbooks by name, paged.",
        PAGING,
        None,
        "Collection",
    ),
    op(
        "post",
        "/api/{spaceId}/runbooks",
        "Runbooks",
        "Creates a runbook with its steps and variables (RunbookEdit).",
        &[],
        Some("Runbook"),
        "Runbook",
    ),
    op(
        "get",
        "/api/{spaceId}/runbooks/all",
        "Runbooks",
        "Every runbook of the space, as an array.",
        &["ids"],
        None,
        "RunbookArray",
    ),
    op(
        "get",
        "/api/{spaceId}/runbooks/{id}",
        "Runbooks",
        "One runbook; sensitive variable values are null.",
        &[],
        None,
        "Runbook",
    ),
    op(
        "put",
        "/api/{spaceId}/runbooks/{id}",
        "Runbooks",
        "Replaces a runbook; Steps and Variables, when given, are the whole lists. A sensitive variable sent without its Value keeps it.",
        &[],
        Some("Runbook"),
        "Runbook",
    ),
    op(
        "delete",
        "/api/{spaceId}/runbooks/{id}",
        "Runbooks",
        "Deletes a runbook that no other runbook runs.",
        &[],
        None,
        "Empty",
    ),
    op(
        "get",
        "/api/{spaceId}/runbookProcesses/{id}",
        "Runbooks",
        "A runbook's process (RunbookProcess-Runbooks-N): its steps.",
        &[],
        None,
        "RunbookProcess",
    ),
    op(
        "put",
        "/api/{spaceId}/runbookProcesses/{id}",
        "Runbooks",
        "Replaces a runbook's steps.",
        &[],
        Some("RunbookProcess"),
        "RunbookProcess",
    ),
    op(
        "get",
        "/api/{spaceId}/variables/{id}",
        "Runbooks",
        "A runbook's variable set (variableset-Runbooks-N); sensitive values are null.",
        &[],
        None,
        "VariableSet",
    ),
    op(
        "put",
        "/api/{spaceId}/variables/{id}",
        "Runbooks",
        "Replaces a runbook's variables.",
        &[],
        Some("VariableSet"),
        "VariableSet",
    ),
    op(
        "get",
        "/api/{spaceId}/runbookRuns",
        "Runbooks",
        "The space's runs, newest first, paged.",
        &["skip", "take", "ids", "runbook"],
        None,
        "Collection",
    ),
    op(
        "post",
        "/api/{spaceId}/runbookRuns",
        "Runbooks",
        "Runs a runbook (RunbookRunCreate): a RunbookRun task is queued; follow TaskId. A running task's script may send its MUSTER_TASK_TOKEN in the header X-Muster-Task-Token (beside its API key): the run is then that task's child, which borrows its leases and task-cap slot while the task waits; an unknown or ended task's token is a 400.",
        &[],
        Some("RunbookRunCreate"),
        "RunbookRun",
    ),
    op(
        "get",
        "/api/{spaceId}/runbookRuns/{id}",
        "Runbooks",
        "One run: the steps and variables it ran with, and each step's outcome.",
        &[],
        None,
        "RunbookRun",
    ),
    op(
        "get",
        "/api/octopusServerNodes",
        "Server nodes",
        "The server nodes that run on this database, by name, paged.",
        PAGING,
        None,
        "Collection",
    ),
    op(
        "get",
        "/api/octopusServerNodes/all",
        "Server nodes",
        "Every server node, as an array.",
        &["ids", "name", "partialName"],
        None,
        "OctopusServerNodeArray",
    ),
    op(
        "get",
        "/api/octopusServerNodes/ping",
        "Server nodes",
        "The load balancer's health check, without a key: this node's resource, with 200, or 418 while it is in maintenance mode (drained).",
        &[],
        None,
        "OctopusServerNode",
    ),
    op(
        "get",
        "/api/octopusServerNodes/summary",
        "Server nodes",
        "Every node with IsOffline (not seen for 3 heartbeats of 5 s), LastSeen, RunningTaskCount, Version and IsDispatcher (the node that holds the dispatcher's lease).",
        &[],
        None,
        "OctopusServerClusterSummary",
    ),
    op(
        "get",
        "/api/octopusServerNodes/{id}",
        "Server nodes",
        "One server node (OctopusServerNodes-<name>).",
        &[],
        None,
        "OctopusServerNode",
    ),
    op(
        "put",
        "/api/octopusServerNodes/{id}",
        "Server nodes",
        "Changes a node's IsInMaintenanceMode (true drains it: it takes no new task, its running tasks finish) and MaxConcurrentTasks; other fields are ignored.",
        &[],
        Some("OctopusServerNode"),
        "OctopusServerNode",
    ),
    op(
        "delete",
        "/api/octopusServerNodes/{id}",
        "Server nodes",
        "Deletes the record of a node gone for good: only an offline node (not seen for 3 heartbeats) with no task left running on it; answers the deleted node.",
        &[],
        None,
        "OctopusServerNode",
    ),
    op(
        "get",
        "/api/octopusServerNodes/{id}/details",
        "Server nodes",
        "A node's summary and the tasks running on it.",
        &[],
        None,
        "OctopusServerNodeDetails",
    ),
];

/// The operations as (method, path), for the test that walks them.
pub fn operations() -> Vec<(&'static str, &'static str)> {
    OPS.iter().map(|o| (o.method, o.path)).collect()
}

/// The form a route and a documented path share: `{spaceId}` for the router's `s/{space}`, every
/// parameter as `{}`, lower case.
pub fn route_shape(path: &str) -> String {
    path.replace("/api/s/{space}", "/api/{spaceId}")
        .split('/')
        .map(|s| if s.starts_with('{') { "{}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
        .to_ascii_lowercase()
}

/// What an operation needs, in words, from the rule the router declares for it.
fn permission_of(method: &str, documented: &str) -> Option<&'static str> {
    use crate::access::Rule;
    static TABLE: std::sync::LazyLock<Vec<(axum::http::Method, &'static str, Rule)>> =
        std::sync::LazyLock::new(crate::api::route_table);
    let wanted = route_shape(documented);
    let (_, _, rule) = *TABLE
        .iter()
        .find(|(m, p, _)| m.as_str().eq_ignore_ascii_case(method) && route_shape(p) == wanted)?;
    Some(match rule {
        Rule::Anonymous => "none",
        Rule::User => "any API key; the answer holds only what the key may see",
        Rule::Admin | Rule::SpaceAdmin => "AdministerSystem",
        Rule::Space(None) => "any permission in the space",
        Rule::Space(Some(permission)) => permission,
    })
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// A path parameter as the server reads it: once decoded, a path holding a control character, a
/// `%`, `?` or `#` is refused (400) before routing, and a `/` would make it another path. A space
/// segment (`/api/{spaceId}/…`) is only ever `Spaces-N`.
fn path_parameter(name: &str) -> Value {
    let schema = if name == "spaceId" {
        json!({"type": "string", "pattern": "^Spaces-[0-9]+$"})
    } else {
        json!({"type": "string", "minLength": 1, "pattern": ID_PATTERN})
    };
    json!({"name": name, "in": "path", "required": true, "schema": schema})
}

/// What a path segment may hold (see [`path_parameter`]): no C0 or C1 control character, `%`, `?`,
/// `#` or `/`.
const ID_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f%?#/]+$";

/// A comma-joined list of an enum's names, as the filters read them.
fn list_of(names: &[&str]) -> Value {
    let one = names.join("|");
    json!({"type": "string", "pattern": format!("^({one})(,({one}))*$")})
}

/// The schema of a query parameter, by name: one table for every operation, from the parsers the
/// handlers use (`Params::page`, `Params::bool`, the enums' `parse`, `time::parse_date`). A value
/// the parser refuses is a 400; an empty value counts as absent; a parameter of one value given
/// twice is a 400 (`Params`).
fn query_schema(name: &str) -> Value {
    use muster_core::enums::{CommunicationStyle, HealthStatus, TaskState};
    let whole = |minimum: u64, maximum: u64| json!({"type": "integer", "minimum": minimum, "maximum": maximum});
    match name {
        "skip" | "take" => whole(0, muster_core::paging::MAX_TAKE),
        "tail" => whole(0, u64::MAX),
        "after" => whole(0, i64::MAX as u64),
        "hours" => whole(1, 24 * 366),
        "port" => whole(1, u64::from(u16::MAX)),
        "isDisabled"
        | "active"
        | "running"
        | "hasWarningsOrErrors"
        | "includeSystem"
        | "hideEmptyWorkerPools" => json!({"type": "boolean"}),
        "from" | "to" => json!({"type": "string", "format": "date-time"}),
        "states" => {
            let mut names: Vec<&str> = TaskState::NAMES.to_vec();
            names.push("New");
            list_of(&names)
        }
        "healthStatuses" => list_of(HealthStatus::NAMES),
        "commStyles" => list_of(CommunicationStyle::NAMES),
        "type" => json!({"type": "string", "enum": ["TentaclePassive", "Ssh"]}),
        "host" => json!({"type": "string", "pattern": "^[^/ @?#]+$"}),
        // Other lists take any text, comma-joined or repeated.
        list if crate::http::LIST_PARAMS.contains(&list.to_ascii_lowercase().as_str()) => {
            json!({"description": "Comma-joined, or the parameter repeated."})
        }
        _ => json!({"type": "string"}),
    }
}

/// The answers every operation may give besides its success, with the contract's error body: one
/// set, so no operation's list can drift from what the server's layers do to every request.
fn error_responses(anonymous: bool) -> Vec<(&'static str, Value)> {
    let error = |description: &str| json!({"description": description, "content": {"application/json": {"schema": schema_ref("Error")}}});
    if anonymous {
        // Served before any key is read, from fixed paths without parameters: always 200.
        return Vec::new();
    }
    let mut limited = error(
        "Too many wrong API keys came from this address within a minute: every request from it \
         waits, even with a right key, until the time Retry-After says (seconds).",
    );
    limited["headers"] =
        json!({"Retry-After": {"required": true, "schema": {"type": "integer", "minimum": 1}}});
    vec![
        (
            "400",
            error("The request is invalid: a path, query or body the server cannot accept."),
        ),
        (
            "401",
            error("No API key, or one that is malformed, unknown, expired or of an inactive user."),
        ),
        (
            "403",
            error("The key's user lacks the permission (named in the message)."),
        ),
        (
            "404",
            error(
                "Nothing at this address for this key: an unknown id, or a space it does not see.",
            ),
        ),
        ("429", limited),
    ]
}

fn operation(o: &Op, schemas: &Value) -> Value {
    let mut parameters: Vec<Value> = Vec::new();
    for segment in o.path.split('/') {
        if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            parameters.push(path_parameter(name));
        }
    }
    for name in o.query {
        // An empty value counts as absent.
        parameters.push(json!({
            "name": name, "in": "query", "required": false, "allowEmptyValue": true,
            "schema": query_schema(name)
        }));
    }
    // Every POST creates something and answers 201, except cancel, which changes a task.
    let success = if o.method == "post" && !o.path.ends_with("/cancel") {
        "201"
    } else {
        "200"
    };
    let content = match o.answer {
        "Empty" => json!(null),
        "text" => json!({"text/plain": {"schema": {"type": "string"}}}),
        "pem" => json!({"application/x-pem-file": {"schema": {"type": "string"}}}),
        "events" => json!({"text/event-stream": {"schema": schema_ref("StreamEvent")}}),
        "bytes" => {
            json!({"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}})
        }
        schema => json!({"application/json": {"schema": schema_ref(schema)}}),
    };
    let mut ok = json!({"description": "Success"});
    if !content.is_null() {
        ok["content"] = content;
    }
    let anonymous = o.path == "/api" || o.path == "/api/openapi.json" || o.path.ends_with("/ping");
    let mut responses = Map::new();
    if o.path.ends_with("/ping") {
        // A load balancer's health check: the node drained answers 418 with its resource.
        let drained = json!({"description": "This node is in maintenance mode (drained).", "content": ok["content"].clone()});
        responses.insert("418".into(), drained);
    }
    responses.insert(success.into(), ok);
    for (code, answer) in error_responses(anonymous) {
        responses.insert(code.into(), answer);
    }
    let mut value = json!({"tags": [o.tag], "summary": o.summary, "parameters": parameters, "responses": responses});
    if let Some(needs) = permission_of(o.method, o.path) {
        value["x-muster-permission"] = json!(needs);
    }
    if anonymous {
        value["security"] = json!([]);
    }
    if let Some(body) = o.body {
        let schema = request_schema_name(o.method, body, schemas);
        value["requestBody"] = json!({
            // A body that may be null may also be left out.
            "required": schemas[body]["nullable"] != true,
            "description": "JSON, read whatever the Content-Type; property names in any case; read-only fields ignored.",
            "content": {"application/json": {"schema": schema_ref(&schema)}}
        });
    }
    value
}

/// The schema a body is read with, when it is a resource's (one with `Links`): see [`request_schema`].
fn request_schema_name(method: &str, body: &str, schemas: &Value) -> String {
    let resource = schemas[body]["properties"].get("Links").is_some();
    match (resource, method) {
        (true, "put") => format!("{body}Update"),
        (true, _) => format!("{body}Create"),
        (false, _) => body.to_string(),
    }
}

/// Read-only fields a body may hold, whatever their value: the server never reads them.
const IGNORED_IN_BODIES: &[&str] = &[
    "Links",
    "Identities",
    // A runbook's Octopus fields that Muster has no use for.
    "EnvironmentScope",
    "MultiTenancyMode",
    "ProjectId",
];

/// A resource's schema as a body is read: read-only fields are ignored whatever they hold, and
/// a null field is as absent. A PUT changes what it is given (a field left out keeps its value), so
/// it requires nothing.
fn request_schema(resource: &Value, update: bool) -> Value {
    let mut schema = resource.clone();
    let required: Vec<Value> = schema["required"].as_array().cloned().unwrap_or_default();
    if let Some(object) = schema.as_object_mut() {
        if update {
            object.remove("required");
        }
        if let Some(Value::Object(properties)) = object.get_mut("properties") {
            for ignored in IGNORED_IN_BODIES {
                properties.remove(*ignored);
            }
            for (name, property) in properties.iter_mut() {
                if !update && required.contains(&json!(name)) {
                    continue;
                }
                if property.get("$ref").is_some() {
                    *property = json!({"allOf": [property.clone()], "nullable": true});
                } else {
                    property["nullable"] = json!(true);
                    if let Some(Value::Array(values)) = property.get_mut("enum") {
                        values.push(Value::Null);
                    }
                }
            }
        }
    }
    schema
}

fn object(required: &[&str], properties: Value) -> Value {
    let mut schema =
        json!({"type": "object", "properties": properties, "additionalProperties": true});
    // OpenAPI 3.0 wants `required` absent rather than empty.
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    schema
}

/// A resource's name as `muster_core::ids::check_name` takes it: at most 200 characters, no
/// control character (nor a bidirectional override), and a visible one.
fn name_schema() -> Value {
    const CONTROL: &str = "\\u0000-\\u001f\\u007f-\\u009f\\u202a-\\u202e\\u2066-\\u2069";
    const INVISIBLE: &str = "\\u00ad\\u034f\\u061c\\u115f\\u1160\\u17b4\\u17b5\\u180b-\\u180f\\u200b-\\u200f\\u2060-\\u206f\\u2800\\u3164\\ufe00-\\ufe0f\\ufeff\\uffa0";
    json!({
        "type": "string",
        "maxLength": 200,
        "pattern": format!("^[^{CONTROL}]*[^{CONTROL}{INVISIBLE}\\s][^{CONTROL}]*$")
    })
}

/// A task's creation body for one kind of task (`Name`) and its arguments.
fn task_create(name: &str, arguments: Value) -> Value {
    let sn = json!({"type": "string", "nullable": true});
    let mut arguments = arguments;
    arguments["nullable"] = json!(name != "AdHocScript");
    let required: &[&str] = if name == "AdHocScript" {
        &["Name", "Arguments"]
    } else {
        &["Name"]
    };
    object(
        required,
        json!({
            "Name": {"type": "string", "enum": [name]},
            "Description": sn, "SpaceId": sn,
            "QueueTime": {"type": "string", "format": "date-time", "nullable": true},
            "QueueTimeExpiry": {"type": "string", "format": "date-time", "nullable": true},
            "Arguments": arguments
        }),
    )
}

fn schemas() -> Value {
    let s = json!({"type": "string"});
    let sn = json!({"type": "string", "nullable": true});
    let b = json!({"type": "boolean"});
    let i = json!({"type": "integer"});
    let links = json!({"type": "object", "additionalProperties": {"type": "string"}});
    let ids = json!({"type": "array", "items": {"type": "string"}});
    let name = name_schema();
    // A list of ids as task arguments read it: an array, or ids comma-joined; anything else is none.
    let id_list = json!({"description": "A list of ids, or ids comma-joined."});
    let array_of = |name: &str| json!({"type": "array", "items": schema_ref(name)});
    json!({
        "Error": object(&["ErrorMessage", "Errors"], json!({
            "ErrorMessage": s, "Errors": {"type": "array", "items": s}, "FullException": sn, "HelpText": sn, "Details": {"nullable": true}
        })),
        "Root": object(&["Application", "Version", "ApiVersion", "InstallationId", "Links"], json!({
            "Application": s, "Version": s, "ApiVersion": s, "InstallationId": {"type": "string", "format": "uuid"},
            "IsEarlyAccessProgram": b, "HasLongTermSupport": b, "Product": s, "MusterVersion": s, "Links": links
        })),
        "SpaceRoot": object(&["Id", "Links"], json!({"Id": s, "Links": links})),
        "Object": {"type": "object", "additionalProperties": true},
        "Empty": {"type": "object"},
        "IdArray": ids,
        "Collection": object(&["ItemType", "TotalResults", "ItemsPerPage", "NumberOfPages", "LastPageNumber", "Items", "Links"], json!({
            "ItemType": s, "TotalResults": i, "ItemsPerPage": {"type": "integer", "description": "The effective take, not the item count."},
            "NumberOfPages": i, "LastPageNumber": i, "Items": {"type": "array", "items": {"type": "object"}},
            "Links": {"type": "object", "description": "Self, Template, Page.All, Page.Current, Page.Last, and Page.Next only when there is a next page.", "additionalProperties": {"type": "string"}}
        })),
        "Certificate": object(&["Id", "Thumbprint"], json!({
            "Id": s, "Name": s, "Thumbprint": {"type": "string", "description": "SHA-256 of the DER certificate, 64 upper-case hex."},
            "ThumbprintSha1": s, "SignatureAlgorithm": s, "Links": links
        })),
        "Space": object(&["Name"], json!({
            "Id": s, "Name": name, "Slug": s, "Description": sn, "IsDefault": b, "IsPrivate": b, "TaskQueueStopped": b,
            "SpaceManagersTeams": ids, "SpaceManagersTeamMembers": ids, "LastModifiedOn": sn, "LastModifiedBy": sn, "Links": links
        })),
        "SpaceArray": array_of("Space"),
        "User": object(&["Id", "Username", "DisplayName"], json!({
            "Id": s, "Username": name, "DisplayName": s, "EmailAddress": sn, "IsActive": b, "IsService": b,
            "Identities": {"type": "array", "items": {"type": "object"}}, "Links": links
        })),
        "ApiKeyCreate": {
            "type": "object", "nullable": true, "additionalProperties": true,
            "description": "No body, or null: a key without a purpose that never expires.",
            "properties": {"Purpose": sn, "Expires": {"type": "string", "format": "date-time", "nullable": true}}
        },
        "UserPermissions": object(&["Id"], json!({
            "Id": s, "SystemPermissions": {"type": "array", "items": s},
            "SpacePermissions": {"type": "object", "description": "Permission name → [{SpaceId, RestrictedTo…: []}]"},
            "Teams": ids, "IsAdministrator": b, "Links": links
        })),
        "Team": object(&["Name"], json!({
            "Id": s, "Name": name, "Description": sn, "MemberUserIds": ids, "ExternalSecurityGroups": {"type": "array", "description": "Kept as given."},
            "CanBeDeleted": b, "CanBeRenamed": b, "CanChangeRoles": b, "CanChangeMembers": b,
            "SpaceId": {"type": "string", "nullable": true, "description": "Set for a space's own team; null for a system team."}, "Links": links
        })),
        "TeamArray": array_of("Team"),
        "UserRole": object(&["Name"], json!({
            "Id": s, "Name": name, "Description": sn, "GrantedSpacePermissions": {"type": "array", "items": s},
            "GrantedSystemPermissions": {"type": "array", "items": s}, "CanBeDeleted": b,
            "SupportedRestrictions": {"type": "array", "items": s}, "Links": links
        })),
        "UserRoleArray": array_of("UserRole"),
        "ScopedUserRole": object(&["TeamId", "UserRoleId"], json!({
            "Id": s, "TeamId": s, "UserRoleId": s,
            "SpaceId": {"type": "string", "nullable": true, "description": "The space the role holds in; null for a role of system permissions."},
            "ProjectIds": ids, "EnvironmentIds": ids, "TenantIds": ids, "ProjectGroupIds": ids, "Links": links
        })),
        "Permissions": object(&["SpacePermissions", "SystemPermissions"], json!({
            "SpacePermissions": {"type": "object"}, "SystemPermissions": {"type": "object"}
        })),
        "ApiKey": object(&["Id", "ApiKey"], json!({
            "Id": s, "Purpose": s, "UserId": s, "Created": s, "Expires": sn,
            "ApiKey": object(&[], json!({"HasValue": b, "Hint": s, "NewValue": sn})), "Links": links
        })),
        "RegistrationTokenCreate": object(&["WorkerPoolIds"], json!({
            "WorkerPoolIds": {"type": "array", "items": s, "minItems": 1},
            "Uses": {"type": "integer", "minimum": 1, "maximum": 1000},
            "ExpiresInMinutes": {"type": "integer", "minimum": 1, "maximum": 10080}
        })),
        "RegistrationTokenCreated": object(&["Id", "Token"], json!({
            "Id": s, "SpaceId": s, "WorkerPoolIds": ids, "UsesLeft": i, "ExpiresOn": s, "Hint": s, "CreatedBy": s, "CreatedOn": s,
            "Token": {"type": "string", "description": "MRT-… (shown once)."}, "Links": links
        })),
        "WorkerRegistration": object(&["Token", "Name", "Endpoint"], json!({
            "Token": s, "Name": name, "Endpoint": {"type": "object"}, "MachinePolicyId": sn
        })),
        "ApiKeyCreated": object(&["Id", "ApiKey"], json!({
            "Id": s, "Purpose": s, "UserId": s, "Created": s, "Expires": sn,
            "ApiKey": {"type": "string", "description": "The key, shown once."}, "Links": links
        })),
        "WorkerPool": object(&["Name", "WorkerPoolType"], json!({
            "Id": s, "SpaceId": s, "Name": name, "Slug": s, "Description": sn, "IsDefault": b, "SortOrder": i,
            "WorkerPoolType": {"type": "string", "enum": ["StaticWorkerPool", "DynamicWorkerPool"]},
            "CanAddWorkers": b, "WorkerType": sn, "Links": links
        })),
        "WorkerPoolArray": array_of("WorkerPool"),
        "WorkerPoolsSummary": object(&["WorkerPoolSummaries"], json!({
            "WorkerPoolSummaries": {"type": "array", "items": object(&[], json!({
                "WorkerPool": schema_ref("WorkerPool"), "TotalMachines": i, "TotalDisabledMachines": i,
                "MachineHealthStatusSummaries": {"type": "object"}, "MachineEndpointSummaries": {"type": "object"}
            }))},
            "TotalMachines": i, "TotalDisabledMachines": i
        })),
        "Endpoint": {
            "type": "object",
            "description": "Keyed by CommunicationStyle. TentaclePassive: Uri https://host:port/, Thumbprint. TentacleActive: Uri poll://<id>/, Thumbprint. Ssh: Host, Port, Fingerprint (SHA256:… or MD5 aa:bb:…, required), AccountId (an SshKeyPair or UsernamePassword account), ProxyId null, HostKeyAlgorithm (Muster). KubernetesTentacle: TentacleEndpointConfiguration{CommunicationMode, Uri, Thumbprint}. Thumbprints are 40 (SHA-1) or 64 (SHA-256) hex.",
            "required": ["CommunicationStyle"],
            "properties": {
                "CommunicationStyle": {"type": "string", "enum": ["TentaclePassive", "TentacleActive", "Ssh", "KubernetesTentacle"]},
                "Uri": s, "Thumbprint": s, "ProxyId": sn, "Host": s, "Port": i, "Fingerprint": sn, "AccountId": sn,
                "DotNetCorePlatform": sn, "HostKeyAlgorithm": sn, "TentacleEndpointConfiguration": {"type": "object"}
            },
            "additionalProperties": true
        },
        "Worker": object(&["Name", "Endpoint", "WorkerPoolIds"], json!({
            "Id": {"type": "string", "nullable": true, "description": "Null on the unsaved worker /discover answers."}, "SpaceId": s, "Name": name, "Slug": sn, "WorkerPoolIds": ids, "MachinePolicyId": sn, "IsDisabled": b,
            "Endpoint": schema_ref("Endpoint"), "Thumbprint": sn, "Uri": sn,
            "HealthStatus": {"type": "string", "enum": ["Healthy", "Unavailable", "Unknown", "HasWarnings", "Unhealthy"]},
            "Status": s, "StatusSummary": s, "HasLatestCalamari": b, "IsInProcess": b, "OperatingSystem": sn,
            "ShellName": sn, "Architecture": sn, "SkipInitialHealthCheck": b,
            "HomeWorkerId": {"type": "string", "nullable": true, "description": "Muster: on a worker shared from another space, the worker it is shared from."},
            "HomeSpaceId": {"type": "string", "nullable": true, "description": "Muster: that worker's space, the agent's home."},
            "ShareTaskLimit": {"type": "integer", "nullable": true, "description": "Muster: on a shared worker, at most this many of this space's tasks at once."},
            "IsShared": {"type": "boolean", "description": "Muster, read-only: the agent serves workers in several spaces."},
            "SharedWithSpaceIds": {"type": "array", "items": s, "description": "Muster, read-only, on the home worker: the spaces it is shared into."},
            "CreatedOn": {"type": "string", "nullable": true, "description": "Muster, read-only: when the worker was registered, or shared into its space."},
            "Dynamic": {
                "type": "object",
                "description": "Muster, read-only, present only on a worker its dynamic pool made: its worker type and provider, the provider's instance id, its state and uses. Such a worker cannot be deleted or shared by hand; setting IsDisabled drains it and the pool destroys it once idle.",
                "properties": {
                    "WorkerType": s, "Provider": {"type": "string", "enum": ["process", "command", "kubernetes"]},
                    "InstanceId": sn,
                    "State": {"type": "string", "enum": ["Provisioning", "Ready", "Busy", "Draining", "Destroying"]},
                    "Uses": {"type": "integer", "description": "Tasks it has started (MaxUseCount counts them)."},
                    "Node": {"type": "string", "description": "The server node whose provider made it."},
                    "ProvisionedOn": sn, "ReadyOn": sn
                }
            },
            "Links": links
        })),
        "WorkerArray": array_of("Worker"),
        "WorkerShare": object(&["SpaceId", "WorkerPoolIds"], json!({
            "SpaceId": s, "WorkerPoolIds": {"type": "array", "items": s, "description": "Pools of that space, by id, name or slug."},
            "TaskLimit": {"type": "integer", "nullable": true, "description": "At most this many of that space's tasks at once on the agent."},
            "Name": {"type": "string", "description": "The worker's name in that space (default: the home worker's)."}
        })),
        "MachinePolicy": object(&["Name"], json!({
            "Id": {"type": "string", "nullable": true, "description": "Null on the unsaved template."}, "SpaceId": s, "Name": s, "Description": sn, "IsDefault": b,
            "MachineHealthCheckPolicy": {"type": "object"}, "MachineConnectivityPolicy": {"type": "object"},
            "MachineCleanupPolicy": {"type": "object"}, "MachineUpdatePolicy": {"type": "object"},
            "MachineRpcCallRetryPolicy": {"type": "object"}, "MachinePackageCacheRetentionPolicy": {"type": "object"},
            "PollingRequestQueueTimeout": s, "ConnectionRetrySleepInterval": s, "ConnectionRetryCountLimit": i,
            "ConnectionRetryTimeLimit": s, "ConnectionConnectTimeout": s, "Links": links
        })),
        "MachinePolicyArray": array_of("MachinePolicy"),
        "Account": object(&["Name", "AccountType"], json!({
            "Id": s, "SpaceId": s, "Name": name, "Slug": s, "Description": sn,
            "AccountType": {"type": "string", "enum": ["SshKeyPair", "UsernamePassword"]},
            "Username": s,
            "PrivateKeyFile": {"type": "object", "nullable": true, "description": "SshKeyPair: NewValue is the base64 of the private key file; reads show HasValue only.", "properties": {"HasValue": b, "NewValue": sn}},
            "PrivateKeyPassphrase": {"type": "object", "nullable": true, "description": "SshKeyPair: the passphrase of an encrypted key.", "properties": {"HasValue": b, "NewValue": sn}},
            "Password": {"type": "object", "nullable": true, "description": "UsernamePassword.", "properties": {"HasValue": b, "NewValue": sn}},
            "EnvironmentIds": ids, "TenantIds": ids, "TenantTags": ids, "TenantedDeploymentParticipation": s,
            "Links": links
        })),
        "AccountArray": array_of("Account"),
        "Artifact": object(&["Id", "Filename", "ServerTaskId"], json!({
            "Id": s, "SpaceId": s, "Filename": s, "Source": sn, "ServerTaskId": s,
            "Created": {"type": "string", "format": "date-time"}, "LogCorrelationId": sn,
            "RelatedDocumentIds": ids,
            "Length": {"type": "integer", "description": "Muster's addition: the file's size in bytes."},
            "Links": links
        })),
        "AccountUsage": object(&["Targets"], json!({
            "Targets": {"type": "array", "items": object(&[], json!({"TargetId": s, "TargetName": s, "SpaceId": s}))},
            "DeploymentProcesses": {"type": "array"}, "Releases": {"type": "array"}, "ProjectVariableSets": {"type": "array"},
            "LibraryVariableSets": {"type": "array"}, "RunbookProcesses": {"type": "array"}, "RunbookSnapshots": {"type": "array"},
            "Links": links
        })),
        // The arguments a task reads depend on its Name; arguments of the other kind are ignored.
        "TaskCreate": {
            "description": "AdHocScript runs ScriptBody (set Arguments.OctopusBypassDeploymentMutex to False for an exclusive worker); runbooks run through /runbookRuns. Health checks workers (WorkerpoolId, MachineIds, or every worker of the space) outside the task cap, and fails when a checked worker is not Healthy.",
            "oneOf": [
                task_create("AdHocScript", object(&["ScriptBody"], json!({
                    "ScriptBody": {"type": "string", "description": "The script to run (not blank)."},
                    "Syntax": {"type": "string", "nullable": true, "enum": ["Bash", "Python", "PowerShell"], "default": "Bash"},
                    "TargetType": {"type": "string", "nullable": true, "enum": ["OctopusServer", "WorkerPools", "Workers"], "description": "Default: Workers when MachineIds are given, else WorkerPools with the space's default pool (the built-in worker runs the script while that pool has no workers)."},
                    "WorkerPoolIds": id_list.clone(), "MachineIds": id_list.clone(),
                    "OctopusBypassDeploymentMutex": {"nullable": true, "anyOf": [b.clone(), {"type": "string", "pattern": "^\\s*([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Yy][Ee][Ss]|[Nn][Oo]|1|0)\\s*$"}], "default": "True", "description": "False: nothing else runs on the task's worker while it runs."},
                    "Timeout": {"nullable": true, "anyOf": [{"type": "integer", "minimum": 1, "maximum": i32::MAX}, s.clone()], "description": "A TimeSpan (00:10:00) longer than zero, or a whole number of seconds; the task ends TimedOut after it."}
                }))),
                task_create("Health", object(&[], json!({
                    "WorkerpoolId": {"type": "string", "nullable": true, "description": "Check this pool's workers (also WorkerPoolId)."},
                    "WorkerPoolId": sn,
                    "MachineIds": {"nullable": true, "anyOf": [{"type": "array"}, s.clone()], "description": "Check these workers: a list, or ids comma-joined."},
                    "MachineTimeout": {"type": "string", "nullable": true, "description": "How long each agent has to answer, a TimeSpan longer than zero (default 00:00:20)."}
                })))
            ]
        },
        "Task": object(&["Id", "State", "IsCompleted"], json!({
            "Id": s, "SpaceId": s, "Name": s, "Description": s, "Arguments": {"type": "object"},
            "State": {"type": "string", "enum": ["Queued", "Executing", "Failed", "Canceled", "TimedOut", "Success", "Cancelling"]},
            "Completed": s, "QueueTime": s, "QueueTimeExpiry": sn, "StartTime": sn, "LastUpdatedTime": s, "CompletedTime": sn,
            "ServerNode": sn, "Duration": s, "ErrorMessage": s, "HasBeenPickedUpByProcessor": b, "IsCompleted": b,
            "FinishedSuccessfully": b, "HasPendingInterruptions": b, "CanRerun": b, "HasWarningsOrErrors": b,
            "QueueReason": {"type": "string", "nullable": true, "description": "Why a Queued task has not started (Muster)."},
            "WaitReason": {"type": "string", "nullable": true, "description": "What an Executing task waits for, such as a child runbook run (Muster)."},
            "WorkerName": {"type": "string", "nullable": true, "description": "The worker the task runs or ran on (Muster)."},
            "Links": links
        })),
        "Step": object(&["Name", "Actions"], json!({
            "Id": s, "Name": {"type": "string", "description": "Unique in the runbook; output variables name it: #{Octopus.Action[Name].Output.X}."},
            "Condition": {"type": "string", "enum": ["Success", "Failure", "Always"], "default": "Success"},
            "StartTrigger": s, "PackageRequirement": s, "Properties": {"type": "object"},
            "Actions": {"type": "array", "maxItems": 1, "items": object(&["ActionType"], json!({
                "Id": s, "Name": s, "IsDisabled": b,
                "ActionType": {"type": "string", "enum": ["Octopus.Script", "Muster.RunRunbook"]},
                "WorkerPoolId": {"type": "string", "nullable": true, "description": "A pool by id or name; null: the space's default pool."},
                "Properties": {"type": "object", "description": "Octopus.Action.Script.ScriptBody, Octopus.Action.Script.Syntax (Bash, Python, PowerShell), Octopus.Action.MaxParallelism (default 10), Muster.Action.ExecutionLocation (WorkerPool, EachWorkerInPool, BuiltInWorker), Muster.Action.RunRunbook.RunbookId (id or name), Muster.Action.RunRunbook.WaitForCompletion (default True).", "additionalProperties": s}
            }))}
        })),
        "Variable": object(&["Name"], json!({
            "Id": s, "Name": s, "Value": {"type": "string", "nullable": true, "description": "Null when read for a sensitive variable."},
            "Description": sn, "Type": {"type": "string", "enum": ["String", "Sensitive"]}, "IsSensitive": b, "Scope": {"type": "object"},
            "Prompt": {"type": "object", "nullable": true, "description": "Set: a run's FormValues may give this variable a value (only prompted variables may be given one); Required: the run must, unless the variable has a value of its own.",
                "properties": {"Label": sn, "Description": sn, "Required": b, "DisplaySettings": {"type": "object"}}}
        })),
        "Runbook": object(&["Name"], json!({
            "Id": s, "SpaceId": s, "Name": name, "Slug": s, "Description": sn, "RunbookProcessId": s, "VariableSetId": s,
            "Steps": {"type": "array", "items": schema_ref("Step")}, "Variables": {"type": "array", "items": schema_ref("Variable"), "description": "Set OctopusBypassDeploymentMutex to False for exclusive worker leases."},
            "ProjectId": sn, "MultiTenancyMode": s, "EnvironmentScope": s, "Links": links
        })),
        "RunbookArray": array_of("Runbook"),
        "Event": object(&["Id", "Category", "Message", "Occurred"], json!({
            "Id": s, "SpaceId": {"type": "string", "nullable": true, "description": "Null for a system event (users, API keys, sign-ins)."},
            "Category": {"type": "string", "enum": ["Created", "Modified", "Deleted", "Canceled", "LoginFailed", "DynamicWorkerFailed"]},
            "UserId": {"type": "string", "nullable": true, "description": "Who; null for a failed sign-in."}, "Username": sn,
            "IsService": b, "IdentityEstablishedWith": sn, "Occurred": s,
            "Message": {"type": "string", "description": "What changed, by name; never a variable's or a secret's value. A LoginFailed event counts the refused keys of one address within a minute. The events about a dynamic pool (`regarding=` its id) are its provisioning log: workers provisioned and destroyed, with a provider command's output, and failures (DynamicWorkerFailed)."},
            "MessageHtml": s, "RelatedDocumentIds": ids, "Comments": sn, "Details": sn, "Links": links
        })),
        "EventCategoryArray": {"type": "array", "items": object(&["Id", "Name"], json!({"Id": s, "Name": s}))},
        "MachineArray": {"type": "array", "maxItems": 0, "items": {"type": "object"}, "description": "Always empty: Muster has no deployment targets."},
        "RunbookProcess": object(&["Steps"], json!({
            "Id": s, "RunbookId": s, "SpaceId": s, "Version": i, "Steps": {"type": "array", "items": schema_ref("Step")}, "Links": links
        })),
        "VariableSet": object(&["Variables"], json!({
            "Id": s, "OwnerId": s, "SpaceId": s, "Version": i, "Variables": {"type": "array", "items": schema_ref("Variable")}, "Links": links
        })),
        "RunbookRunCreate": object(&["RunbookId"], json!({
            "RunbookId": {"type": "string", "description": "The runbook, by id or name."},
            "FormValues": {"type": "object", "description": "Values for the runbook's prompted variables (and the settings OctopusBypassDeploymentMutex and Octopus.Action.MaxParallelism), by name; any other name is refused.", "additionalProperties": s},
            "Comments": sn
        })),
        "RunbookRun": object(&["Id", "TaskId"], json!({
            "Id": s, "SpaceId": s, "RunbookId": s, "TaskId": s, "Name": s, "Comments": sn, "FormValues": {"type": "object"},
            "ParentTaskId": {"type": "string", "nullable": true, "description": "The run whose step started this one."}, "Depth": i,
            "Steps": {"type": "array", "items": schema_ref("Step")}, "Variables": {"type": "array", "items": schema_ref("Variable")},
            "StepResults": {"type": "array", "items": object(&[], json!({"Name": s, "Status": s, "Started": sn, "Ended": sn, "Detail": sn}))},
            "FailureEncountered": b, "Created": s, "Links": links
        })),
        "TaskTypeArray": {"type": "array", "items": object(&["Id", "Name"], json!({"Id": s, "Name": s, "Description": s}))},
        "StreamEvent": object(&["event", "data"], json!({
            "event": {"type": "string", "enum": ["task", "line"], "description": "task: data is the task resource; line: one log line."},
            "id": {"type": "string", "description": "A line's sequence number: reconnect with after=id."},
            "data": {"type": "string", "description": "JSON: a Task, or a line {Seq, OccurredAt, Category, MessageText, …}."}
        })),
        "OctopusServerNode": object(&[], json!({
            "Id": s, "Name": s, "MaxConcurrentTasks": i, "IsInMaintenanceMode": b, "LastModifiedOn": sn, "LastModifiedBy": sn, "Links": links
        })),
        "OctopusServerNodeArray": array_of("OctopusServerNode"),
        "OctopusServerNodeSummary": object(&["Id", "Name"], json!({
            "Id": s, "Name": s, "MaxConcurrentTasks": i, "IsInMaintenanceMode": b, "IsOffline": b, "LastSeen": s,
            "RunningTaskCount": i, "Version": s, "IsDispatcher": b, "Links": links
        })),
        "OctopusServerClusterSummary": object(&["Nodes"], json!({
            "Nodes": array_of("OctopusServerNodeSummary"), "Links": links
        })),
        "OctopusServerNodeDetails": object(&["Node", "Tasks"], json!({
            "Node": schema_ref("OctopusServerNodeSummary"), "Tasks": array_of("Task")
        })),
        "TaskDetails": object(&["Task", "ActivityLogs"], json!({
            "Task": schema_ref("Task"), "Progress": {"type": "object"}, "PhysicalLogSize": i,
            "ActivityLogs": {"type": "array", "items": {"type": "object", "description": "Id, Name, Started, Ended, Status, Children[], LogElements[{Category, MessageText, OccurredAt}]"}}
        })),
    })
}

pub fn document() -> Value {
    let mut schemas = schemas();
    let mut paths = Map::new();
    for o in OPS {
        let entry = paths.entry(o.path.to_string()).or_insert_with(|| json!({}));
        entry[o.method] = operation(o, &schemas);
    }
    for o in OPS {
        if let Some(body) = o.body {
            let name = request_schema_name(o.method, body, &schemas);
            if name != body {
                schemas[&name] = request_schema(&schemas[body], o.method == "put");
            }
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Muster",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Muster's REST API, compatible with Octopus Deploy's workers API. Every space-scoped path also answers as /api/spaces/{spaceId}/… and, for the default space, without the space segment. Routes and property names are case-insensitive; JSON bodies are read whatever the Content-Type."
        },
        "servers": [{"url": "/"}],
        "security": [{"ApiKey": []}, {"ApiKeyQuery": []}, {"Bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-Octopus-ApiKey"},
                "ApiKeyQuery": {"type": "apiKey", "in": "query", "name": "apikey"},
                "Bearer": {"type": "http", "scheme": "bearer"}
            },
            "schemas": schemas
        }
    })
}
