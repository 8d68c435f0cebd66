//! Property names are case-insensitive on input (contract 1.3: the blog sends `EndPoint`). Every key of a
//! request body is rewritten to its canonical spelling before serde reads it; keys we do not know are
//! left as they are, so unknown fields stay ignorable and free-form maps keep their spelling.

use serde_json::Value;
use std::collections::HashMap;
use std::sync::OnceLock;

/// Every property name that Muster reads from a request body, spelled as the contract spells it.
pub const KNOWN_NAMES: &[&str] = &[
    // Common
    "Id",
    "Name",
    "Slug",
    "Description",
    "SpaceId",
    "Links",
    "LastModifiedOn",
    "LastModifiedBy",
    // Spaces
    "IsDefault",
    "IsPrivate",
    "TaskQueueStopped",
    "SpaceManagersTeams",
    "SpaceManagersTeamMembers",
    "Icon",
    // Server nodes
    "MaxConcurrentTasks",
    "IsInMaintenanceMode",
    // Worker pools
    "WorkerPoolType",
    "SortOrder",
    "CanAddWorkers",
    "WorkerType",
    // Workers and endpoints
    "WorkerPoolIds",
    "MachinePolicyId",
    "IsDisabled",
    "Endpoint",
    "Thumbprint",
    "Uri",
    "HealthStatus",
    "Status",
    "StatusSummary",
    "HasLatestCalamari",
    "IsInProcess",
    "OperatingSystem",
    "OperatingSystemVersion",
    "ShellName",
    "ShellVersion",
    "Architecture",
    "SkipInitialHealthCheck",
    "HomeWorkerId",
    "HomeSpaceId",
    "ShareTaskLimit",
    "IsShared",
    "SharedWithSpaceIds",
    "TaskLimit",
    "CommunicationStyle",
    "ProxyId",
    "CertificateSignatureAlgorithm",
    "TentacleVersionDetails",
    "UpgradeLocked",
    "Version",
    "UpgradeSuggested",
    "UpgradeRequired",
    "UpgradeAvailable",
    "Host",
    "Port",
    "Fingerprint",
    "AccountId",
    "DotNetCorePlatform",
    "TentacleEndpointConfiguration",
    "CommunicationMode",
    "KubernetesAgentDetails",
    "AgentVersion",
    "TentacleVersion",
    "UpgradeStatus",
    "HelmReleaseName",
    "KubernetesNamespace",
    "DefaultNamespace",
    "HostKeyAlgorithm",
    // Accounts
    "AccountType",
    "PrivateKeyFile",
    "PrivateKeyPassphrase",
    "HasValue",
    "NewValue",
    "TenantTags",
    "TenantedDeploymentParticipation",
    // Machine policies
    "MachineHealthCheckPolicy",
    "PowerShellHealthCheckPolicy",
    "BashHealthCheckPolicy",
    "RunType",
    "ScriptBody",
    "HealthCheckInterval",
    "HealthCheckCron",
    "HealthCheckCronTimezone",
    "HealthCheckType",
    "MachineConnectivityPolicy",
    "MachineConnectivityBehavior",
    "MachineCleanupPolicy",
    "DeleteMachinesBehavior",
    "DeleteMachinesElapsedTimeSpan",
    "MachineUpdatePolicy",
    "CalamariUpdateBehavior",
    "TentacleUpdateBehavior",
    "KubernetesAgentUpdateBehavior",
    "TentacleUpdateAccountId",
    "MachineRpcCallRetryPolicy",
    "Enabled",
    "RetryDuration",
    "HealthCheckRetryDuration",
    "MachinePackageCacheRetentionPolicy",
    "Strategy",
    "QuantityOfPackagesToKeep",
    "PackageUnit",
    "QuantityOfVersionsToKeep",
    "VersionUnit",
    "PollingRequestQueueTimeout",
    "PollingRequestMaximumMessageProcessingTimeout",
    "ConnectionRetrySleepInterval",
    "ConnectionRetryCountLimit",
    "ConnectionRetryTimeLimit",
    "ConnectionConnectTimeout",
    // Tasks
    "Arguments",
    "Syntax",
    "TargetType",
    "MachineIds",
    "QueueTime",
    "QueueTimeExpiry",
    "Timeout",
    "State",
    "Reason",
    // Teams, user roles and scoped user roles
    "MemberUserIds",
    "ExternalSecurityGroups",
    "CanBeDeleted",
    "CanBeRenamed",
    "CanChangeRoles",
    "CanChangeMembers",
    "GrantedSpacePermissions",
    "GrantedSystemPermissions",
    "SupportedRestrictions",
    "SpacePermissionDescriptions",
    "SystemPermissionDescriptions",
    "TeamId",
    "UserRoleId",
    "ProjectIds",
    "EnvironmentIds",
    "TenantIds",
    "ProjectGroupIds",
    // Users and API keys
    "Purpose",
    "Expires",
    "Username",
    "Password",
    "DisplayName",
    "EmailAddress",
    "IsActive",
    "IsService",
    // Runbooks, their processes, variables and runs
    "RunbookProcessId",
    "Steps",
    "Actions",
    "ActionType",
    "WorkerPoolId",
    "Properties",
    "Condition",
    "StartTrigger",
    "PackageRequirement",
    "Variables",
    "Value",
    "Type",
    "IsSensitive",
    "Scope",
    "RunbookId",
    "RunbookSnapshotId",
    "EnvironmentId",
    "FormValues",
    "Prompt",
    "Label",
    "Required",
    "DisplaySettings",
    "Comments",
    "TaskId",
];

/// Fields whose values are enums: their values, too, are read without case.
fn enum_values(field: &str) -> &'static [&'static str] {
    use crate::enums::*;
    match field {
        "CommunicationStyle" => CommunicationStyle::NAMES,
        "Condition" => crate::runbooks::CONDITIONS,
        "WorkerPoolType" => WorkerPoolType::NAMES,
        "AccountType" => crate::resources::ACCOUNT_TYPES,
        "HealthStatus" => HealthStatus::NAMES,
        "Status" => MachineStatus::NAMES,
        "HealthCheckType" => &["RunScript", "OnlyConnectivity"],
        "RunType" => &["InheritFromDefault", "Inline", "OnlyConnectivity"],
        "MachineConnectivityBehavior" => &["ExpectedToBeOnline", "MayBeOfflineAndCanBeSkipped"],
        "DeleteMachinesBehavior" => &["DoNotDelete", "DeleteUnavailableMachines"],
        "CalamariUpdateBehavior" => &["UpdateOnDeployment", "UpdateOnNewMachine", "UpdateAlways"],
        "TentacleUpdateBehavior" => &["NeverUpdate", "Update"],
        "KubernetesAgentUpdateBehavior" => &["NeverUpdate", "Update", "Block"],
        _ => &[],
    }
}

fn dictionary() -> &'static HashMap<String, &'static str> {
    static DICTIONARY: OnceLock<HashMap<String, &'static str>> = OnceLock::new();
    DICTIONARY.get_or_init(|| {
        KNOWN_NAMES
            .iter()
            .map(|name| (name.to_ascii_lowercase(), *name))
            .collect()
    })
}

/// Rewrites every known key, at any depth, to its canonical spelling. When a body holds the same name
/// twice in different cases, the last one wins, as with a JSON object's duplicate keys.
pub fn canonicalize(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (key, mut inner) in entries {
                canonicalize(&mut inner);
                let key = match dictionary().get(&key.to_ascii_lowercase()) {
                    Some(canonical) => (*canonical).to_string(),
                    None => key,
                };
                if let Value::String(text) = &mut inner
                    && let Some(canonical) = enum_values(&key)
                        .iter()
                        .find(|v| v.eq_ignore_ascii_case(text.trim()))
                {
                    *text = (*canonical).to_string();
                }
                map.insert(key, inner);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(canonicalize),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_canonical_at_every_depth_and_unknown_keys_survive() {
        let mut body = json!({"name": "w", "EndPoint": {"communicationstyle": "ssh", "HOST": "h"}, "custom_Key": 1});
        canonicalize(&mut body);
        assert_eq!(
            body,
            json!({"Name": "w", "Endpoint": {"CommunicationStyle": "Ssh", "Host": "h"}, "custom_Key": 1})
        );
    }

    #[test]
    fn the_dictionary_has_no_two_names_differing_only_by_case() {
        assert_eq!(
            dictionary().len(),
            KNOWN_NAMES
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len()
        );
    }
}
