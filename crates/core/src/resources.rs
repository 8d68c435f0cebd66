//! The resources as clients read them (contract 2), without `Links`, which the server adds because only
//! it knows routes. Every struct reads with defaults, so a create is "defaults, then the body" and an
//! update is "the stored resource, then the body" (see [`apply`]).

use crate::enums::*;
use crate::time::{Timestamp, date_format};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[allow(clippy::derivable_impls)] // the enums come from a macro that does not take #[default]
impl Default for HealthStatus {
    fn default() -> Self {
        HealthStatus::Unknown
    }
}
#[allow(clippy::derivable_impls)] // the enums come from a macro that does not take #[default]
impl Default for MachineStatus {
    fn default() -> Self {
        MachineStatus::Unknown
    }
}
#[allow(clippy::derivable_impls)] // the enums come from a macro that does not take #[default]
impl Default for WorkerPoolType {
    fn default() -> Self {
        WorkerPoolType::StaticWorkerPool
    }
}

/// Reads a request body over a base resource: fields the body names replace the base's, nested objects
/// merge key by key, and nulls are treated as absent (clients send `null` for what they do not set).
/// The caller then resets the read-only fields; unknown fields are ignored.
pub fn apply<T: Serialize + DeserializeOwned>(base: &T, body: &Value) -> Result<T, String> {
    let mut merged = serde_json::to_value(base).map_err(|e| e.to_string())?;
    overlay(&mut merged, body);
    // The error names the field, such as `Endpoint.Port: invalid type: string "x", expected i64`.
    serde_path_to_error::deserialize(merged).map_err(|e| match e.path().to_string().as_str() {
        "." | "" => e.inner().to_string(),
        path => format!("{path}: {}", e.inner()),
    })
}

fn overlay(base: &mut Value, body: &Value) {
    match (base, body) {
        (Value::Object(base), Value::Object(body)) => {
            for (key, value) in body {
                if value.is_null() {
                    continue;
                }
                match base.get_mut(key) {
                    Some(existing @ Value::Object(_)) if value.is_object() => {
                        overlay(existing, value)
                    }
                    _ => {
                        base.insert(key.clone(), strip_nulls(value));
                    }
                }
            }
        }
        (base, body) => *base = strip_nulls(body),
    }
}

fn strip_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Space {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub description: Option<String>,
    pub is_default: bool,
    pub is_private: bool,
    pub task_queue_stopped: bool,
    pub space_managers_teams: Vec<String>,
    pub space_managers_team_members: Vec<String>,
    pub icon: Option<Value>,
    #[serde(with = "date_format::option")]
    pub last_modified_on: Option<Timestamp>,
    pub last_modified_by: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct WorkerPool {
    pub id: String,
    pub space_id: String,
    pub name: String,
    pub slug: String,
    pub description: Option<String>,
    pub is_default: bool,
    pub sort_order: i64,
    pub worker_pool_type: WorkerPoolType,
    pub can_add_workers: bool,
    /// The image of a dynamic pool's workers, such as `UbuntuDefault`.
    pub worker_type: Option<String>,
    #[serde(with = "date_format::option")]
    pub last_modified_on: Option<Timestamp>,
    pub last_modified_by: Option<String>,
}

/// How the server reaches a worker; the tag is `CommunicationStyle` (contract 2.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "CommunicationStyle")]
pub enum Endpoint {
    TentaclePassive(TentacleEndpoint),
    TentacleActive(TentacleEndpoint),
    Ssh(SshEndpoint),
    KubernetesTentacle(KubernetesTentacleEndpoint),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TentacleEndpoint {
    pub id: Option<String>,
    pub uri: String,
    pub thumbprint: String,
    pub proxy_id: Option<String>,
    pub certificate_signature_algorithm: Option<String>,
    pub tentacle_version_details: Option<Value>,
    pub links: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SshEndpoint {
    pub id: Option<String>,
    pub host: String,
    pub port: i64,
    pub fingerprint: Option<String>,
    pub account_id: Option<String>,
    pub dot_net_core_platform: Option<String>,
    pub proxy_id: Option<String>,
    pub uri: Option<String>,
    /// Muster: the host key's algorithm as OpenSSH names it (`ssh-ed25519`), from discovery or the
    /// first contact. An extra field, so Octopus's clients ignore it.
    pub host_key_algorithm: Option<String>,
    pub links: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct KubernetesTentacleEndpoint {
    pub id: Option<String>,
    pub tentacle_endpoint_configuration: TentacleEndpointConfiguration,
    pub kubernetes_agent_details: Option<Value>,
    pub upgrade_locked: bool,
    pub default_namespace: Option<String>,
    pub links: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TentacleEndpointConfiguration {
    pub communication_mode: String,
    pub uri: String,
    pub thumbprint: String,
    pub certificate_signature_algorithm: Option<String>,
    pub proxy_id: Option<String>,
}

impl Endpoint {
    pub fn style(&self) -> CommunicationStyle {
        match self {
            Endpoint::TentaclePassive(_) => CommunicationStyle::TentaclePassive,
            Endpoint::TentacleActive(_) => CommunicationStyle::TentacleActive,
            Endpoint::Ssh(_) => CommunicationStyle::Ssh,
            Endpoint::KubernetesTentacle(_) => CommunicationStyle::KubernetesTentacle,
        }
    }

    /// The certificate thumbprint the server pins for this worker, where it has one.
    pub fn thumbprint(&self) -> Option<&str> {
        match self {
            Endpoint::TentaclePassive(e) | Endpoint::TentacleActive(e) => Some(&e.thumbprint),
            Endpoint::KubernetesTentacle(e) => Some(&e.tentacle_endpoint_configuration.thumbprint),
            Endpoint::Ssh(_) => None,
        }
    }

    pub fn uri(&self) -> Option<&str> {
        match self {
            Endpoint::TentaclePassive(e) | Endpoint::TentacleActive(e) => Some(&e.uri),
            Endpoint::KubernetesTentacle(e) => Some(&e.tentacle_endpoint_configuration.uri),
            Endpoint::Ssh(e) => e.uri.as_deref(),
        }
    }

    /// Checks the shape of each communication style and writes values in their canonical form
    /// (upper-case thumbprints, lower-case subscription ids, the SSH `Uri`). Returns every problem found.
    pub fn validate(&mut self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        match self {
            Endpoint::TentaclePassive(e) => {
                e.uri = e.uri.trim().to_string();
                if !valid_listening_uri(&e.uri) {
                    errors.push(format!(
                        "Endpoint.Uri must be a listening Tentacle's address such as https://host:10933/, got '{}'",
                        e.uri
                    ));
                }
                check_thumbprint(&mut e.thumbprint, "Endpoint.Thumbprint", &mut errors);
            }
            Endpoint::TentacleActive(e) => {
                e.uri = e.uri.trim().to_ascii_lowercase();
                if !valid_subscription_uri(&e.uri) {
                    errors.push(format!(
                        "Endpoint.Uri of a polling Tentacle must be poll://<subscription id>/ with lower-case letters and digits, got '{}'",
                        e.uri
                    ));
                }
                check_thumbprint(&mut e.thumbprint, "Endpoint.Thumbprint", &mut errors);
            }
            Endpoint::Ssh(e) => {
                e.host = e.host.trim().to_string();
                if e.host.is_empty() || e.host.contains(['/', ' ', '@']) {
                    errors.push(format!(
                        "Endpoint.Host must be a host name or address, got '{}'",
                        e.host
                    ));
                }
                if e.port == 0 {
                    e.port = 22;
                }
                if !(1..=65535).contains(&e.port) {
                    errors.push(format!(
                        "Endpoint.Port must be between 1 and 65535, got {}",
                        e.port
                    ));
                }
                e.uri = Some(format!("ssh://{}:{}/", e.host, e.port));
            }
            Endpoint::KubernetesTentacle(e) => {
                let config = &mut e.tentacle_endpoint_configuration;
                match config.communication_mode.to_ascii_lowercase().as_str() {
                    "polling" => {
                        config.communication_mode = "Polling".into();
                        config.uri = config.uri.trim().to_ascii_lowercase();
                        if !valid_subscription_uri(&config.uri) {
                            errors.push("Endpoint.TentacleEndpointConfiguration.Uri must be poll://<subscription id>/".into());
                        }
                    }
                    "listening" => {
                        config.communication_mode = "Listening".into();
                        if !valid_listening_uri(config.uri.trim()) {
                            errors.push("Endpoint.TentacleEndpointConfiguration.Uri must be https://host:port/".into());
                        }
                    }
                    other => errors.push(format!(
                        "Endpoint.TentacleEndpointConfiguration.CommunicationMode must be Polling or Listening, got '{other}'"
                    )),
                }
                check_thumbprint(
                    &mut config.thumbprint,
                    "Endpoint.TentacleEndpointConfiguration.Thumbprint",
                    &mut errors,
                );
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Thumbprints are SHA-1 (40 hex, Octopus's) or SHA-256 (64 hex, Muster's own agents).
pub fn normalize_thumbprint(text: &str) -> Option<String> {
    let t: String = text
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_uppercase();
    ((t.len() == 40 || t.len() == 64) && t.bytes().all(|b| b.is_ascii_hexdigit())).then_some(t)
}

/// An agent is pinned by its SHA-256 thumbprint only: with two accepted forms, one agent would have two
/// identities, and a second form could pass for another agent (and around the rules of sharing).
fn check_thumbprint(thumbprint: &mut String, field: &str, errors: &mut Vec<String>) {
    match normalize_thumbprint(thumbprint) {
        Some(t) if t.len() == 64 => *thumbprint = t,
        Some(_) => errors.push(format!(
            "{field} must be the agent's SHA-256 thumbprint (64 hexadecimal characters); Muster does not pin agents by SHA-1. `muster-agent show-thumbprint` and GET workers/discover give it."
        )),
        None => errors.push(format!(
            "{field} must be 64 hexadecimal characters (the agent's SHA-256 thumbprint), got '{}'",
            thumbprint
        )),
    }
}

fn valid_listening_uri(uri: &str) -> bool {
    let Some(rest) = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("HTTPS://"))
    else {
        return false;
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains(['/', ' ', '@', '?', '#']) {
        return false;
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.ends_with(':') => port
            .parse::<u16>()
            .map(|p| p > 0)
            .unwrap_or(host.ends_with(']') && port.is_empty()),
        _ => true,
    }
}

fn valid_subscription_uri(uri: &str) -> bool {
    uri.strip_prefix("poll://")
        .and_then(|rest| rest.strip_suffix('/'))
        .is_some_and(|id| {
            (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Worker {
    pub id: String,
    pub space_id: String,
    pub name: String,
    pub slug: Option<String>,
    pub worker_pool_ids: Vec<String>,
    pub machine_policy_id: Option<String>,
    pub is_disabled: bool,
    pub endpoint: Option<Endpoint>,
    pub thumbprint: Option<String>,
    pub uri: Option<String>,
    pub health_status: HealthStatus,
    pub status: MachineStatus,
    pub status_summary: String,
    pub has_latest_calamari: bool,
    pub is_in_process: bool,
    pub operating_system: Option<String>,
    pub operating_system_version: Option<String>,
    pub shell_name: Option<String>,
    pub shell_version: Option<String>,
    pub architecture: Option<String>,
    pub skip_initial_health_check: bool,
    /// Muster: on a worker that shares another space's agent, the worker it is shared from.
    pub home_worker_id: Option<String>,
    /// Muster: that worker's space (the agent's home).
    pub home_space_id: Option<String>,
    /// Muster: at most this many of this space's tasks run on the shared agent at once (None: no
    /// limit beyond the server's task cap).
    pub share_task_limit: Option<i64>,
    /// Muster, read-only: the agent serves workers in more than one space.
    pub is_shared: bool,
    /// Muster, read-only, on the home worker: the spaces the agent is shared into.
    pub shared_with_space_ids: Vec<String>,
    /// Muster, read-only: when this worker was registered (or shared into its space). None on
    /// workers registered before Muster kept it.
    #[serde(with = "date_format::option")]
    pub created_on: Option<Timestamp>,
    #[serde(with = "date_format::option")]
    pub last_modified_on: Option<Timestamp>,
    pub last_modified_by: Option<String>,
    /// Muster, read-only: a worker its dynamic pool made through a provider (absent: registered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic: Option<DynamicWorker>,
}

/// What a dynamic pool's scaler keeps of a worker it made: its record is written before the
/// provider is asked (the stored intent), so a crash leaks nothing the next start cannot find.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DynamicWorker {
    pub worker_type: String,
    /// The provider that made it: process, command or kubernetes.
    pub provider: String,
    /// The provider's id of the instance; None until the provider answered.
    pub instance_id: Option<String>,
    pub state: DynamicState,
    /// Tasks it has started in its life (counted before each starts).
    pub uses: u32,
    /// The server node whose provider made it.
    pub node: String,
    #[serde(with = "date_format::option")]
    pub provisioned_on: Option<Timestamp>,
    /// When its agent first connected.
    #[serde(with = "date_format::option")]
    pub ready_on: Option<Timestamp>,
}

/// A dynamic worker's state, as the worker list shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DynamicState {
    /// Asked of the provider; its agent has not connected yet.
    #[default]
    Provisioning,
    /// Connected and idle.
    Ready,
    /// Running tasks.
    Busy,
    /// Takes no new task; destroyed once idle.
    Draining,
    /// Being destroyed by its provider.
    Destroying,
}

impl DynamicState {
    pub fn as_str(self) -> &'static str {
        match self {
            DynamicState::Provisioning => "Provisioning",
            DynamicState::Ready => "Ready",
            DynamicState::Busy => "Busy",
            DynamicState::Draining => "Draining",
            DynamicState::Destroying => "Destroying",
        }
    }
}

impl Worker {
    /// The identity of the physical machine behind this worker, which the ledger leases and health
    /// records name: an agent's certificate thumbprint, an SSH worker's pinned host-key fingerprint
    /// (`SHA256:…`, case-sensitive). Workers of several spaces that share one machine share its key.
    pub fn machine_key(&self) -> Option<&str> {
        match &self.endpoint {
            Some(Endpoint::Ssh(e)) => e.fingerprint.as_deref(),
            _ => self.thumbprint.as_deref(),
        }
    }
}

/// A secret as Octopus carries it (`SensitiveValue`): clients send `NewValue` to set it and read only
/// `HasValue`. The store keeps the value in `NewValue`, sealed; reads clear it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SensitiveValue {
    pub has_value: bool,
    pub new_value: Option<String>,
}

impl SensitiveValue {
    pub fn of(value: String) -> Self {
        SensitiveValue {
            has_value: true,
            new_value: Some(value),
        }
    }

    /// The stored secret, if there is one.
    pub fn value(&self) -> Option<&str> {
        self.new_value.as_deref().filter(|_| self.has_value)
    }
}

/// The account types Muster supports, of Octopus's `AccountType`: what an SSH worker signs in with.
pub const ACCOUNT_TYPES: &[&str] = &["SshKeyPair", "UsernamePassword"];

/// An account (Octopus's `SshKeyPairAccountResource` and `UsernamePasswordAccountResource` in one
/// shape, told apart by `AccountType`). Its secrets are sealed at rest and never read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Account {
    pub id: String,
    pub space_id: String,
    pub name: String,
    pub slug: String,
    pub description: Option<String>,
    pub account_type: String,
    pub username: Option<String>,
    /// SshKeyPair: the base64 of the private key file.
    pub private_key_file: Option<SensitiveValue>,
    /// SshKeyPair: the passphrase of an encrypted key.
    pub private_key_passphrase: Option<SensitiveValue>,
    /// UsernamePassword.
    pub password: Option<SensitiveValue>,
    pub environment_ids: Vec<String>,
    pub tenant_ids: Vec<String>,
    pub tenant_tags: Vec<String>,
    pub tenanted_deployment_participation: String,
    #[serde(with = "date_format::option")]
    pub last_modified_on: Option<Timestamp>,
    pub last_modified_by: Option<String>,
}

impl Default for Account {
    fn default() -> Self {
        Account {
            id: String::new(),
            space_id: String::new(),
            name: String::new(),
            slug: String::new(),
            description: None,
            account_type: String::new(),
            username: None,
            private_key_file: None,
            private_key_passphrase: None,
            password: None,
            environment_ids: Vec::new(),
            tenant_ids: Vec::new(),
            tenant_tags: Vec::new(),
            tenanted_deployment_participation: "Untenanted".into(),
            last_modified_on: None,
            last_modified_by: None,
        }
    }
}

impl Account {
    /// Its secrets, for sealing at rest.
    pub fn secrets_mut(&mut self) -> Vec<&mut String> {
        [
            &mut self.private_key_file,
            &mut self.private_key_passphrase,
            &mut self.password,
        ]
        .into_iter()
        .filter_map(|s| s.as_mut().and_then(|s| s.new_value.as_mut()))
        .collect()
    }

    /// The account as clients read it: whether each secret is set, never its value.
    pub fn without_secrets(&self) -> Account {
        let hide = |s: &Option<SensitiveValue>| {
            Some(SensitiveValue {
                has_value: s.as_ref().is_some_and(|s| s.value().is_some()),
                new_value: None,
            })
        };
        let mut shown = self.clone();
        match self.account_type.as_str() {
            "SshKeyPair" => {
                shown.private_key_file = hide(&self.private_key_file);
                shown.private_key_passphrase = hide(&self.private_key_passphrase);
                shown.password = None;
            }
            _ => {
                shown.password = hide(&self.password);
                shown.private_key_file = None;
                shown.private_key_passphrase = None;
            }
        }
        shown
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct MachinePolicy {
    pub id: String,
    pub space_id: String,
    pub name: String,
    pub description: Option<String>,
    pub is_default: bool,
    pub machine_health_check_policy: Value,
    pub machine_connectivity_policy: Value,
    pub machine_cleanup_policy: Value,
    pub machine_update_policy: Value,
    pub machine_rpc_call_retry_policy: Value,
    pub machine_package_cache_retention_policy: Value,
    pub polling_request_queue_timeout: String,
    pub polling_request_maximum_message_processing_timeout: String,
    pub connection_retry_sleep_interval: String,
    pub connection_retry_count_limit: i64,
    pub connection_retry_time_limit: String,
    pub connection_connect_timeout: String,
    #[serde(with = "date_format::option")]
    pub last_modified_on: Option<Timestamp>,
    pub last_modified_by: Option<String>,
}

impl Default for MachinePolicy {
    /// The template: the defaults of Octopus's C# client (contract 2.5).
    fn default() -> Self {
        use serde_json::json;
        MachinePolicy {
            id: String::new(),
            space_id: String::new(),
            name: String::new(),
            description: None,
            is_default: false,
            machine_health_check_policy: json!({
                "PowerShellHealthCheckPolicy": {"RunType": "Inline", "ScriptBody": ""},
                "BashHealthCheckPolicy": {"RunType": "Inline", "ScriptBody": ""},
                "HealthCheckInterval": "01:00:00",
                "HealthCheckCron": null,
                "HealthCheckCronTimezone": "UTC",
                "HealthCheckType": "RunScript",
            }),
            machine_connectivity_policy: json!({"MachineConnectivityBehavior": "ExpectedToBeOnline"}),
            machine_cleanup_policy: json!({
                "DeleteMachinesBehavior": "DoNotDelete",
                "DeleteMachinesElapsedTimeSpan": "01:00:00",
            }),
            machine_update_policy: json!({
                "CalamariUpdateBehavior": "UpdateOnDeployment",
                "TentacleUpdateBehavior": "NeverUpdate",
                "KubernetesAgentUpdateBehavior": "Update",
                "TentacleUpdateAccountId": null,
            }),
            machine_rpc_call_retry_policy: json!({
                "Enabled": true,
                "RetryDuration": "00:02:30",
                "HealthCheckRetryDuration": "00:02:30",
            }),
            machine_package_cache_retention_policy: json!({
                "Strategy": "Default",
                "QuantityOfPackagesToKeep": null,
                "PackageUnit": "Items",
                "QuantityOfVersionsToKeep": null,
                "VersionUnit": "Items",
            }),
            polling_request_queue_timeout: "00:02:00".into(),
            polling_request_maximum_message_processing_timeout: "00:10:00".into(),
            connection_retry_sleep_interval: "00:00:01".into(),
            connection_retry_count_limit: 5,
            connection_retry_time_limit: "00:05:00".into(),
            connection_connect_timeout: "00:01:00".into(),
            last_modified_on: None,
            last_modified_by: None,
        }
    }
}

impl MachinePolicy {
    /// Every TimeSpan must parse, and the enums must be Octopus's.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        let mut span = |name: &str, text: Option<&str>| {
            if let Some(text) = text
                && crate::time::parse_timespan(text).is_none()
            {
                errors.push(format!(
                    "{name} must be a TimeSpan such as 01:00:00, got '{text}'"
                ));
            }
        };
        span(
            "PollingRequestQueueTimeout",
            Some(&self.polling_request_queue_timeout),
        );
        span(
            "PollingRequestMaximumMessageProcessingTimeout",
            Some(&self.polling_request_maximum_message_processing_timeout),
        );
        span(
            "ConnectionRetrySleepInterval",
            Some(&self.connection_retry_sleep_interval),
        );
        span(
            "ConnectionRetryTimeLimit",
            Some(&self.connection_retry_time_limit),
        );
        span(
            "ConnectionConnectTimeout",
            Some(&self.connection_connect_timeout),
        );
        span(
            "MachineHealthCheckPolicy.HealthCheckInterval",
            self.machine_health_check_policy["HealthCheckInterval"].as_str(),
        );
        span(
            "MachineRpcCallRetryPolicy.RetryDuration",
            self.machine_rpc_call_retry_policy["RetryDuration"].as_str(),
        );
        let mut one_of = |name: &str, value: &Value, allowed: &[&str]| {
            if let Some(text) = value.as_str()
                && !allowed.contains(&text)
            {
                errors.push(format!(
                    "{name} must be one of {}, got '{text}'",
                    allowed.join(", ")
                ));
            } else if !value.is_null() && !value.is_string() {
                errors.push(format!("{name} must be a string"));
            }
        };
        one_of(
            "MachineHealthCheckPolicy.HealthCheckType",
            &self.machine_health_check_policy["HealthCheckType"],
            &["RunScript", "OnlyConnectivity"],
        );
        one_of(
            "MachineConnectivityPolicy.MachineConnectivityBehavior",
            &self.machine_connectivity_policy["MachineConnectivityBehavior"],
            &["ExpectedToBeOnline", "MayBeOfflineAndCanBeSkipped"],
        );
        one_of(
            "MachineCleanupPolicy.DeleteMachinesBehavior",
            &self.machine_cleanup_policy["DeleteMachinesBehavior"],
            &["DoNotDelete", "DeleteUnavailableMachines"],
        );
        if !(0..=i64::from(i32::MAX)).contains(&self.connection_retry_count_limit) {
            errors.push(format!(
                "ConnectionRetryCountLimit must be between 0 and {}",
                i32::MAX
            ));
        }
        if self.machine_health_check_policy["HealthCheckInterval"]
            .as_str()
            .and_then(crate::time::parse_timespan)
            .is_some_and(|d| d.is_zero())
        {
            errors.push(
                "MachineHealthCheckPolicy.HealthCheckInterval must be longer than zero".into(),
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// How often a worker under this policy is health checked.
    pub fn health_check_interval(&self) -> std::time::Duration {
        self.machine_health_check_policy["HealthCheckInterval"]
            .as_str()
            .and_then(crate::time::parse_timespan)
            .unwrap_or(std::time::Duration::from_secs(3600))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct User {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub email_address: Option<String>,
    pub is_active: bool,
    pub is_service: bool,
    pub identities: Vec<Value>,
    #[serde(with = "date_format::option")]
    pub last_modified_on: Option<Timestamp>,
    pub last_modified_by: Option<String>,
}

/// A team: users who share the roles scoped to it. A team with a `SpaceId` belongs to that space.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Team {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub member_user_ids: Vec<String>,
    pub external_security_groups: Vec<Value>,
    pub can_be_deleted: bool,
    pub can_be_renamed: bool,
    pub can_change_roles: bool,
    pub can_change_members: bool,
    pub space_id: Option<String>,
    #[serde(with = "date_format::option")]
    pub last_modified_on: Option<Timestamp>,
    pub last_modified_by: Option<String>,
}

/// A named set of permissions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct UserRole {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub granted_space_permissions: Vec<String>,
    pub granted_system_permissions: Vec<String>,
    pub can_be_deleted: bool,
    pub supported_restrictions: Vec<String>,
    #[serde(with = "date_format::option")]
    pub last_modified_on: Option<Timestamp>,
    pub last_modified_by: Option<String>,
}

/// A role given to a team, in one space (`SpaceId`) or, for system permissions, in none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ScopedUserRole {
    pub id: String,
    pub team_id: String,
    pub user_role_id: String,
    pub space_id: Option<String>,
    pub project_ids: Vec<String>,
    pub environment_ids: Vec<String>,
    pub tenant_ids: Vec<String>,
    pub project_group_ids: Vec<String>,
    #[serde(with = "date_format::option")]
    pub last_modified_on: Option<Timestamp>,
    pub last_modified_by: Option<String>,
}

/// A stored API key: only its SHA-256 hash and a short hint are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ApiKeyRecord {
    pub id: String,
    pub user_id: String,
    pub purpose: String,
    pub key_hash: String,
    pub hint: String,
    #[serde(with = "date_format")]
    pub created: Timestamp,
    #[serde(with = "date_format::option", default)]
    pub expires: Option<Timestamp>,
}

/// A registration token (Muster's): lets an agent register one worker (or `UsesLeft` workers) in
/// its space's pools without an API key, until it expires. Only the token's SHA-256 hash is kept;
/// the token itself is shown once, when it is made. A worker registers on behalf of the user who
/// made the token, with that user's permissions as they are when it registers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RegistrationToken {
    pub id: String,
    pub space_id: String,
    pub worker_pool_ids: Vec<String>,
    pub uses_left: u32,
    #[serde(with = "date_format")]
    pub expires_on: Timestamp,
    pub token_hash: String,
    pub hint: String,
    pub created_by: String,
    #[serde(with = "date_format")]
    pub created_on: Timestamp,
}

/// A file a task's script announced and the server collected (Octopus's `ArtifactResource`). The
/// bytes live under the data directory; `Length` is Muster's addition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Artifact {
    pub id: String,
    pub space_id: String,
    pub filename: String,
    /// Where it came from: the worker that returned it.
    pub source: Option<String>,
    pub server_task_id: String,
    #[serde(with = "date_format")]
    pub created: Timestamp,
    pub log_correlation_id: Option<String>,
    /// The task and the space, as Octopus relates an artifact to documents.
    pub related_document_ids: Vec<String>,
    /// Its size in bytes.
    pub length: u64,
}

impl Default for Artifact {
    fn default() -> Self {
        Artifact {
            id: String::new(),
            space_id: String::new(),
            filename: String::new(),
            source: None,
            server_task_id: String::new(),
            created: crate::time::now(),
            log_correlation_id: None,
            related_document_ids: Vec::new(),
            length: 0,
        }
    }
}

/// Who did what (Octopus's `EventResource`): written by the server right after each change it
/// audits. `SpaceId` is null for a system event (users, API keys, sign-ins). A message names what
/// changed, never a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Event {
    pub id: String,
    pub space_id: Option<String>,
    /// Octopus's event category: `Created`, `Modified`, `Deleted`, `Canceled`, `LoginFailed`.
    pub category: String,
    /// The user who made the change; null for a failed sign-in.
    pub user_id: Option<String>,
    pub username: Option<String>,
    pub is_service: bool,
    /// How the user was identified: `API key`.
    pub identity_established_with: Option<String>,
    #[serde(with = "date_format")]
    pub occurred: Timestamp,
    pub message: String,
    /// The message with HTML's special characters escaped.
    pub message_html: String,
    /// The documents the event is about: the changed resource, its space, related ones.
    pub related_document_ids: Vec<String>,
    pub comments: Option<String>,
    pub details: Option<String>,
}

impl Default for Event {
    fn default() -> Self {
        Event {
            id: String::new(),
            space_id: None,
            category: String::new(),
            user_id: None,
            username: None,
            is_service: false,
            identity_established_with: None,
            occurred: crate::time::now(),
            message: String::new(),
            message_html: String::new(),
            related_document_ids: Vec::new(),
            comments: None,
            details: None,
        }
    }
}

/// A server task, as stored. The resource adds the derived fields (see [`Task::to_resource`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: String,
    pub space_id: String,
    pub name: String,
    pub description: String,
    pub arguments: Map<String, Value>,
    pub state: TaskState,
    pub error_message: Option<String>,
    pub queue_time: Timestamp,
    pub queue_time_expiry: Option<Timestamp>,
    pub start_time: Option<Timestamp>,
    pub completed_time: Option<Timestamp>,
    pub last_updated_time: Timestamp,
    pub server_node: Option<String>,
    pub has_warnings_or_errors: bool,
    /// Why a Queued task has not started yet, in words (Muster's addition).
    pub queue_reason: Option<String>,
    /// The worker the task ran on, once it started.
    pub worker_name: Option<String>,
    /// The external worker's id (None on the built-in worker): a restarted server re-attaches to it.
    pub worker_id: Option<String>,
}

impl Task {
    pub fn to_resource(&self, now: Timestamp) -> Value {
        use crate::time::{format_date, human_duration};
        let fmt = |t: &Option<Timestamp>| t.as_ref().map(format_date);
        let completed_text = match (self.state, &self.completed_time) {
            (TaskState::Queued, _) => "Queued...".to_string(),
            (TaskState::Executing, _) => "Executing...".to_string(),
            (TaskState::Cancelling, _) => "Cancelling...".to_string(),
            (_, Some(t)) => t.format("%A, %d %B %Y %H:%M:%S +00:00").to_string(),
            (_, None) => String::new(),
        };
        // From start (or queueing, for a task that never started) to the end, or to now.
        let end = self.completed_time.unwrap_or(now);
        let duration = human_duration(end - self.start_time.unwrap_or(self.queue_time).min(end));
        let completed = self.state.is_completed();
        serde_json::json!({
            "Id": self.id,
            "SpaceId": self.space_id,
            "Name": self.name,
            "Description": self.description,
            "Arguments": self.arguments,
            "State": self.state,
            "Completed": completed_text,
            "QueueTime": format_date(&self.queue_time),
            "QueueTimeExpiry": fmt(&self.queue_time_expiry),
            "StartTime": fmt(&self.start_time),
            "LastUpdatedTime": format_date(&self.last_updated_time),
            "CompletedTime": fmt(&self.completed_time),
            "ServerNode": self.server_node,
            "Duration": duration,
            "ErrorMessage": self.error_message.clone().unwrap_or_default(),
            "HasBeenPickedUpByProcessor": self.start_time.is_some(),
            "IsCompleted": completed,
            "FinishedSuccessfully": self.state == TaskState::Success,
            "HasPendingInterruptions": false,
            "PendingInterruptionTypes": [],
            "CanRerun": completed,
            "HasWarningsOrErrors": self.has_warnings_or_errors,
            "QueueReason": if self.state == TaskState::Queued { self.queue_reason.clone() } else { None },
            // Muster's addition: what an executing task waits for, such as a child runbook run.
            "WaitReason": if self.state == TaskState::Executing { self.queue_reason.clone() } else { None },
            "WorkerName": self.worker_name,
            "LastModifiedOn": format_date(&self.last_updated_time),
            "LastModifiedBy": null,
        })
    }
}

/// One line of a task's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LogLine {
    pub seq: i64,
    #[serde(with = "date_format")]
    pub occurred_at: Timestamp,
    pub category: LogCategory,
    pub message_text: String,
    /// The step of a runbook run it belongs to (from 1); None for the task's own lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn apply_merges_nested_objects_and_ignores_nulls() {
        let base = MachinePolicy::default();
        let body = json!({"Name": "p", "Description": null, "MachineHealthCheckPolicy": {"HealthCheckInterval": "00:10:00"}});
        let policy = apply(&base, &body).unwrap();
        assert_eq!(policy.name, "p");
        assert_eq!(
            policy.machine_health_check_policy["HealthCheckInterval"],
            "00:10:00"
        );
        assert_eq!(
            policy.machine_health_check_policy["HealthCheckType"],
            "RunScript"
        );
        assert!(apply(&base, &json!({"ConnectionRetryCountLimit": "many"})).is_err());
    }

    #[test]
    fn endpoints_are_validated_per_style() {
        let mut passive: Endpoint = serde_json::from_value(json!({
            "CommunicationStyle": "TentaclePassive", "Uri": "https://127.0.0.1:10933/", "Thumbprint": "ab".repeat(32)
        }))
        .unwrap();
        passive.validate().unwrap();
        assert_eq!(passive.thumbprint(), Some("AB".repeat(32).as_str()));
        // A SHA-1 thumbprint would give one agent a second identity.
        let mut sha1: Endpoint = serde_json::from_value(json!({
            "CommunicationStyle": "TentaclePassive", "Uri": "https://127.0.0.1:10933/", "Thumbprint": "ab".repeat(20)
        }))
        .unwrap();
        assert!(sha1.validate().unwrap_err()[0].contains("SHA-256"));
        let mut polling: Endpoint = serde_json::from_value(json!({
            "CommunicationStyle": "TentacleActive", "Uri": "poll://not valid/", "Thumbprint": "xyz"
        }))
        .unwrap();
        assert_eq!(polling.validate().unwrap_err().len(), 2);
        let mut ssh: Endpoint =
            serde_json::from_value(json!({"CommunicationStyle": "Ssh", "Host": "localhost"}))
                .unwrap();
        ssh.validate().unwrap();
        assert_eq!(ssh.uri(), Some("ssh://localhost:22/"));
    }
}
