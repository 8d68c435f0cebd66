//! The server's configuration file (`--config FILE`, YAML): what a flag cannot say well. Today it
//! defines the dynamic worker types (`WorkerTypes`): each names a provider, the provider's settings
//! and the scaler's limits (`muster_scheduler::scaler::WorkerTypeLimits`). Everything is checked
//! at start, so a mistake stops the server with the file, the type and the setting named, never a
//! pool that waits for ever.

use anyhow::{Context, anyhow, bail};
use muster_kube::k8s_openapi::api::core::v1::ResourceRequirements;
use muster_scheduler::scaler::WorkerTypeLimits;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A dynamic worker type, checked.
#[derive(Debug, Clone)]
pub struct WorkerType {
    pub id: String,
    pub description: String,
    pub provider: Provider,
    pub limits: WorkerTypeLimits,
    pub start_date_utc: Option<String>,
    pub deprecation_date_utc: Option<String>,
    pub end_of_life_date_utc: Option<String>,
}

/// What makes and destroys a type's workers, with its settings.
#[derive(Debug, Clone)]
pub enum Provider {
    /// `muster-agent` processes on the server's machine, each with a home of its own.
    Process { agent_path: PathBuf },
    /// The user's own commands (Terraform, a cloud CLI…), run by `/bin/sh -c`.
    Command {
        create: String,
        destroy: String,
        list: Option<String>,
    },
    /// A pod per worker, running `muster-agent` in polling mode.
    Kubernetes {
        cluster: muster_kube::Cluster,
        image: String,
        namespace: String,
        resources: Option<ResourceRequirements>,
        node_selector: Option<BTreeMap<String, String>>,
    },
}

impl Provider {
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Process { .. } => "process",
            Provider::Command { .. } => "command",
            Provider::Kubernetes { .. } => "kubernetes",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    worker_types: Vec<Entry>,
}

/// A number of seconds, or a text such as `90s`, `5m`, `72h`, `2d`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Span {
    Seconds(i64),
    Text(String),
}

/// A count, or `unlimited`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Count {
    Number(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct Entry {
    id: String,
    #[serde(default)]
    description: Option<String>,
    provider: Option<String>,
    #[serde(default)]
    settings: Option<serde_norway::Value>,
    min_idle: Option<i64>,
    max_workers: Option<i64>,
    tasks_per_worker: Option<i64>,
    max_use_count: Option<Count>,
    idle_timeout: Option<Span>,
    max_lifetime: Option<Span>,
    provision_timeout: Option<Span>,
    start_date_utc: Option<String>,
    deprecation_date_utc: Option<String>,
    end_of_life_date_utc: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct ProcessSettings {
    agent_path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct CommandSettings {
    create: Option<String>,
    destroy: Option<String>,
    list: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct KubernetesSettings {
    image: Option<String>,
    namespace: Option<String>,
    /// Kubernetes' own shape: `{requests: {cpu: 500m, memory: 512Mi}, limits: {…}}`.
    resources: Option<serde_json::Value>,
    node_selector: Option<BTreeMap<String, String>>,
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
}

/// Reads and checks the configuration file: its worker types (none without a file).
pub fn load(path: Option<&Path>) -> anyhow::Result<Vec<WorkerType>> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
    parse(&text).with_context(|| format!("the configuration file {}", path.display()))
}

/// Parses and checks a configuration file's text.
pub fn parse(text: &str) -> anyhow::Result<Vec<WorkerType>> {
    let shape: FileShape = if text.trim().is_empty() {
        FileShape::default()
    } else {
        serde_norway::from_str(text).map_err(|e| anyhow!("{e}"))?
    };
    let mut types: Vec<WorkerType> = Vec::new();
    for entry in shape.worker_types {
        let id = entry.id.trim().to_string();
        if id.is_empty() || id.len() > 100 || id.chars().any(|c| c.is_whitespace() || c == '/') {
            bail!(
                "a worker type's Id must be 1 to 100 characters without spaces or '/', got '{id}'"
            );
        }
        if types.iter().any(|t| t.id.eq_ignore_ascii_case(&id)) {
            bail!("worker type '{id}' is defined twice");
        }
        let checked = check(&id, entry).map_err(|e| anyhow!("worker type '{id}': {e}"))?;
        types.push(checked);
    }
    Ok(types)
}

fn check(id: &str, entry: Entry) -> Result<WorkerType, String> {
    let max_workers = entry
        .max_workers
        .ok_or("MaxWorkers is missing: say how many workers it may have at once")?;
    let mut limits = WorkerTypeLimits::new(count("MaxWorkers", max_workers)?);
    if let Some(n) = entry.min_idle {
        limits.min_idle = count("MinIdle", n)?;
    }
    if let Some(n) = entry.tasks_per_worker {
        limits.tasks_per_worker = count("TasksPerWorker", n)?;
    }
    limits.max_use_count = match entry.max_use_count {
        None => Some(1),
        Some(Count::Number(n)) if n >= 1 => {
            Some(u32::try_from(n).map_err(|_| "MaxUseCount is too large")?)
        }
        Some(Count::Text(t)) if t.eq_ignore_ascii_case("unlimited") => None,
        Some(other) => {
            return Err(format!(
                "MaxUseCount must be a whole number from 1, or unlimited, got {other:?}"
            ));
        }
    };
    if let Some(span) = entry.idle_timeout {
        limits.idle_timeout = duration("IdleTimeout", span)?;
    }
    if let Some(span) = entry.max_lifetime {
        limits.max_lifetime = duration("MaxLifetime", span)?;
    }
    if let Some(span) = entry.provision_timeout {
        limits.provision_timeout = duration("ProvisionTimeout", span)?;
    }
    limits.check()?;
    let provider = entry
        .provider
        .ok_or("Provider is missing: process, command or kubernetes")?;
    let settings = entry.settings.unwrap_or(serde_norway::Value::Null);
    let provider = match provider.trim().to_ascii_lowercase().as_str() {
        "process" => {
            let s: ProcessSettings = settings_of(settings)?;
            let agent_path = match s.agent_path {
                Some(path) => path,
                None => default_agent().ok_or(
                    "the process provider runs muster-agent, which is neither beside the muster binary nor on PATH: set Settings.AgentPath",
                )?,
            };
            if !agent_path.is_file() {
                return Err(format!(
                    "Settings.AgentPath {} is not a file",
                    agent_path.display()
                ));
            }
            Provider::Process { agent_path }
        }
        "command" => {
            let s: CommandSettings = settings_of(settings)?;
            let create = command("Create", s.create)?;
            let destroy = command("Destroy", s.destroy)?;
            let list = s.list.map(|l| command("List", Some(l))).transpose()?;
            Provider::Command {
                create,
                destroy,
                list,
            }
        }
        "kubernetes" => {
            let s: KubernetesSettings = settings_of(settings)?;
            let image = s
                .image
                .filter(|i| !i.trim().is_empty())
                .ok_or("Settings.Image is missing: the container image that runs muster-agent")?;
            let namespace = s.namespace.unwrap_or_else(|| "default".into());
            if !dns_label(&namespace) {
                return Err(format!(
                    "Settings.Namespace must be a Kubernetes namespace name (lower-case letters, digits and '-', at most 63), got '{namespace}'"
                ));
            }
            let resources = s.resources.map(resources).transpose()?;
            if let Some(path) = &s.kubeconfig
                && !path.is_file()
            {
                return Err(format!(
                    "Settings.Kubeconfig {} is not a file",
                    path.display()
                ));
            }
            Provider::Kubernetes {
                cluster: muster_kube::Cluster {
                    kubeconfig: s.kubeconfig,
                    context: s.context,
                },
                image,
                namespace,
                resources,
                node_selector: s.node_selector,
            }
        }
        other => {
            return Err(format!(
                "Provider must be process, command or kubernetes, got '{other}'"
            ));
        }
    };
    Ok(WorkerType {
        id: id.to_string(),
        description: entry.description.unwrap_or_default(),
        provider,
        limits,
        start_date_utc: entry.start_date_utc,
        deprecation_date_utc: entry.deprecation_date_utc,
        end_of_life_date_utc: entry.end_of_life_date_utc,
    })
}

fn settings_of<T: Default + serde::de::DeserializeOwned>(
    value: serde_norway::Value,
) -> Result<T, String> {
    if value.is_null() {
        return Ok(T::default());
    }
    serde_norway::from_value(value).map_err(|e| format!("Settings: {e}"))
}

fn count(name: &str, n: i64) -> Result<usize, String> {
    usize::try_from(n).map_err(|_| format!("{name} must be 0 or more, got {n}"))
}

/// A span of time: whole seconds, or a number with `s`, `m`, `h` or `d`.
fn duration(name: &str, span: Span) -> Result<Duration, String> {
    let bad = |got: &str| {
        format!(
            "{name} must be a length of time of 0 or more, such as 90s, 5m, 72h or 2d (or whole seconds), got '{got}'"
        )
    };
    match span {
        Span::Seconds(n) => u64::try_from(n)
            .map(Duration::from_secs)
            .map_err(|_| bad(&n.to_string())),
        Span::Text(text) => {
            let t = text.trim();
            let (number, unit) =
                t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
            let number: u64 = number.parse().map_err(|_| bad(&text))?;
            let seconds = match unit.trim() {
                "" | "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86_400,
                _ => return Err(bad(&text)),
            };
            number
                .checked_mul(seconds)
                .map(Duration::from_secs)
                .ok_or_else(|| bad(&text))
        }
    }
}

/// A container's resources in Kubernetes' own shape (`{requests: {cpu: 500m, memory: 512Mi},
/// limits: {…}}`), checked against its type: a key it does not know is refused, not dropped.
fn resources(mut given: serde_json::Value) -> Result<ResourceRequirements, String> {
    // Kubernetes takes `cpu: 1` as well as `cpu: "1"`.
    if let Some(map) = given.as_object_mut() {
        for quantities in map.values_mut().filter_map(|v| v.as_object_mut()) {
            for q in quantities.values_mut() {
                if q.is_number() {
                    *q = serde_json::Value::String(q.to_string());
                }
            }
        }
    }
    let bad = |e: String| {
        format!(
            "Settings.Resources must be Kubernetes' shape, {{requests: {{cpu: 500m, memory: 512Mi}}, limits: {{…}}}}: {e}"
        )
    };
    let parsed: ResourceRequirements =
        serde_json::from_value(given.clone()).map_err(|e| bad(e.to_string()))?;
    let read = serde_json::to_value(&parsed).map_err(|e| bad(e.to_string()))?;
    if let Some(unknown) = given
        .as_object()
        .and_then(|m| m.keys().find(|k| read.get(k.as_str()).is_none()))
    {
        return Err(bad(format!("unknown field `{unknown}`")));
    }
    Ok(parsed)
}

/// A name Kubernetes accepts for a namespace (an RFC 1123 label).
fn dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A provider's command, whose program must exist (a path, or a name on PATH).
fn command(name: &str, given: Option<String>) -> Result<String, String> {
    let command = given
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            format!("Settings.{name} is missing: the command that the command provider runs")
        })?;
    let program = command.split_whitespace().next().unwrap_or_default();
    if !program_exists(program) {
        return Err(format!(
            "Settings.{name}: its program '{program}' is not found (not a file, nor on PATH)"
        ));
    }
    Ok(command)
}

fn program_exists(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// `muster-agent` beside this binary, or on PATH.
fn default_agent() -> Option<PathBuf> {
    let beside = std::env::current_exe().ok()?.with_file_name("muster-agent");
    if beside.is_file() {
        return Some(beside);
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join("muster-agent"))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_type_is_read_with_its_limits() {
        let types = parse(
            "WorkerTypes:\n  - Id: linux-cmd\n    Description: Made by our scripts\n    Provider: command\n    MaxWorkers: 4\n    MinIdle: 1\n    MaxUseCount: unlimited\n    IdleTimeout: 90s\n    MaxLifetime: 2d\n    ProvisionTimeout: 120\n    Settings:\n      Create: /bin/sh make.sh\n      Destroy: sh unmake.sh\n",
        )
        .unwrap();
        let t = &types[0];
        assert_eq!(t.id, "linux-cmd");
        assert_eq!(t.provider.name(), "command");
        assert_eq!(t.limits.max_workers, 4);
        assert_eq!(t.limits.min_idle, 1);
        assert_eq!(t.limits.max_use_count, None);
        assert_eq!(t.limits.idle_timeout, Duration::from_secs(90));
        assert_eq!(t.limits.max_lifetime, Duration::from_secs(2 * 86_400));
        assert_eq!(t.limits.provision_timeout, Duration::from_secs(120));
    }

    #[test]
    fn kubernetes_settings_are_read_in_kubernetes_shape() {
        let types = parse(
            "WorkerTypes:\n  - Id: k8s\n    Provider: kubernetes\n    MaxWorkers: 2\n    Settings:\n      Image: muster-agent:1\n      Namespace: workers\n      Resources: {requests: {cpu: 1, memory: 256Mi}, limits: {memory: 1Gi}}\n      NodeSelector: {kubernetes.io/os: linux}\n",
        )
        .unwrap();
        let Provider::Kubernetes {
            namespace,
            resources,
            node_selector,
            ..
        } = &types[0].provider
        else {
            panic!("kubernetes");
        };
        assert_eq!(namespace, "workers");
        let resources = resources.as_ref().unwrap();
        assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "1");
        assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "1Gi");
        assert_eq!(node_selector.as_ref().unwrap()["kubernetes.io/os"], "linux");
    }

    #[test]
    fn defaults_are_the_issues() {
        let types = parse(
            "WorkerTypes:\n  - Id: k\n    Provider: kubernetes\n    MaxWorkers: 2\n    Settings: {Image: muster-agent:1}\n",
        )
        .unwrap();
        let limits = &types[0].limits;
        assert_eq!(limits.max_use_count, Some(1));
        assert_eq!(limits.tasks_per_worker, 1);
        assert_eq!(limits.idle_timeout, Duration::from_secs(3600));
        assert_eq!(limits.max_lifetime, Duration::from_secs(72 * 3600));
        assert_eq!(limits.provision_timeout, Duration::from_secs(300));
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn bad_types_are_refused_with_the_setting_named() {
        let cases = [
            (
                "    Provider: kubernetes\n    MaxWorkers: 0\n    Settings: {Image: x}\n",
                "MaxWorkers must be at least 1",
            ),
            (
                "    Provider: kubernetes\n    Settings: {Image: x}\n",
                "MaxWorkers is missing",
            ),
            (
                "    Provider: kubernetes\n    MaxWorkers: 1\n    IdleTimeout: -5m\n    Settings: {Image: x}\n",
                "IdleTimeout must be a length of time of 0 or more",
            ),
            (
                "    Provider: kubernetes\n    MaxWorkers: 1\n    IdleTimeout: -5\n    Settings: {Image: x}\n",
                "IdleTimeout must be a length of time of 0 or more",
            ),
            (
                "    Provider: ec2\n    MaxWorkers: 1\n",
                "Provider must be process, command or kubernetes, got 'ec2'",
            ),
            (
                "    Provider: command\n    MaxWorkers: 1\n    Settings: {Create: /no/such/create.sh, Destroy: sh}\n",
                "Settings.Create: its program '/no/such/create.sh' is not found",
            ),
            (
                "    Provider: command\n    MaxWorkers: 1\n    Settings: {Create: sh}\n",
                "Settings.Destroy is missing",
            ),
            (
                "    Provider: kubernetes\n    MaxWorkers: 1\n",
                "Settings.Image is missing",
            ),
            (
                "    Provider: kubernetes\n    MaxWorkers: 1\n    Settings: {Image: x, Colour: red}\n",
                "unknown field `Colour`",
            ),
            (
                "    Provider: kubernetes\n    MaxWorkers: 1\n    Settings: {Image: x, Resources: {Requests: {cpu: 1}}}\n",
                "Settings.Resources must be Kubernetes' shape",
            ),
            (
                "    Provider: kubernetes\n    MaxWorkers: 1\n    Settings: {Image: x, Namespace: Team_A}\n",
                "Settings.Namespace must be a Kubernetes namespace name",
            ),
            (
                "    Provider: kubernetes\n    MaxWorkers: 1\n    Settings: {Image: x, Kubeconfig: /no/such/kubeconfig}\n",
                "Settings.Kubeconfig /no/such/kubeconfig is not a file",
            ),
            (
                "    Provider: kubernetes\n    MaxWorkers: 1\n    MaxUseCount: 0\n    Settings: {Image: x}\n",
                "MaxUseCount must be a whole number from 1",
            ),
        ];
        for (body, expected) in cases {
            let text = format!("WorkerTypes:\n  - Id: bad\n{body}");
            let error = format!("{:#}", parse(&text).unwrap_err());
            assert!(
                error.contains("worker type 'bad'") || error.contains("Colour"),
                "{error}"
            );
            assert!(error.contains(expected), "{body}: {error}");
        }
        let twice = "WorkerTypes:\n  - {Id: a, Provider: kubernetes, MaxWorkers: 1, Settings: {Image: x}}\n  - {Id: A, Provider: kubernetes, MaxWorkers: 1, Settings: {Image: x}}\n";
        assert!(format!("{:#}", parse(twice).unwrap_err()).contains("defined twice"));
        let unknown_key = "WorkerTypez: []\n";
        assert!(format!("{:#}", parse(unknown_key).unwrap_err()).contains("unknown field"));
    }
}
