//! Muster's Kubernetes seam, over the kube crate and the real Kubernetes REST API: a client from a
//! kubeconfig (or from inside a cluster), and the worker pods of the `kubernetes` provider.
//!
//! A worker pod runs `muster-agent run` in polling mode. Its identity (the certificate and key the
//! server issued for that worker alone, the server's thumbprint, its subscription) is in a Secret
//! that the pod owns, so Kubernetes' garbage collector deletes it with the pod; the pod reads it
//! through `envFrom`, and the pod's spec holds no secret value.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvFromSource, EnvVar, Pod, PodSpec, ResourceRequirements,
    Secret, SecretEnvSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use k8s_openapi;
pub use kube;

/// The label every object Muster makes carries.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "muster");
/// The label naming the dynamic worker type of a worker pod.
pub const WORKER_TYPE_LABEL: &str = "muster.dev/worker-type";
/// The label naming the server (its certificate's thumbprint) that made a worker pod: two servers
/// that share a namespace never take each other's pods for orphans.
pub const SERVER_LABEL: &str = "muster.dev/server";
/// The worker pod's one container.
pub const AGENT_CONTAINER: &str = "muster-agent";
/// Where the agent's home is in a worker pod: a volume of the pod's own, writable even when the
/// image's file system is read-only.
pub const AGENT_HOME: &str = "/var/lib/muster-agent";

/// Where a cluster is and how to speak to it.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// A kubeconfig file; without it, the usual places (`KUBECONFIG`, `~/.kube/config`, or the
    /// service account of the pod Muster runs in).
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig's context to use; its current context without it.
    pub context: Option<String>,
}

impl Cluster {
    /// A client for the cluster, or why there is none.
    pub async fn client(&self) -> Result<kube::Client, String> {
        let options = kube::config::KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| format!("cannot read the kubeconfig {}: {e}", path.display()))?;
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| format!("the kubeconfig {}: {e}", path.display()))?
            }
            None if self.context.is_some() => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| format!("the kubeconfig: {e}"))?,
            None => kube::Config::infer()
                .await
                .map_err(|e| format!("no Kubernetes cluster is configured: {e}"))?,
        };
        kube::Client::try_from(config).map_err(|e| format!("a Kubernetes client: {e}"))
    }
}

/// What a worker pod is made of.
pub struct WorkerPod<'a> {
    /// The pod's name, also the worker's.
    pub name: &'a str,
    pub namespace: &'a str,
    pub image: &'a str,
    pub resources: Option<&'a ResourceRequirements>,
    pub node_selector: Option<&'a BTreeMap<String, String>>,
    /// Labels beyond `MANAGED_BY` (the worker type and server, for `list`).
    pub labels: BTreeMap<String, String>,
    /// The identity and where the server is: the Secret's keys.
    pub env: &'a [(&'a str, String)],
}

/// The name of a worker pod's Secret.
pub fn identity_secret(pod: &str) -> String {
    format!("{pod}-identity")
}

/// A label value Kubernetes accepts (63 characters of letters, digits, `-`, `_` and `.`, starting
/// and ending with a letter or digit) made from `text`.
pub fn label_value(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// The pod as it is sent: one container running `muster-agent run`, its environment from the
/// identity Secret, restarted never (a worker whose agent ended is replaced, not revived).
pub fn worker_pod(spec: &WorkerPod) -> Pod {
    let mut labels = spec.labels.clone();
    labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    Pod {
        metadata: ObjectMeta {
            name: Some(spec.name.into()),
            namespace: Some(spec.namespace.into()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: AGENT_CONTAINER.into(),
                image: Some(spec.image.into()),
                command: Some(vec!["muster-agent".into()]),
                args: Some(vec!["run".into()]),
                env: Some(vec![EnvVar {
                    name: "MUSTER_AGENT_HOME".into(),
                    value: Some(AGENT_HOME.into()),
                    ..Default::default()
                }]),
                volume_mounts: Some(vec![VolumeMount {
                    name: "home".into(),
                    mount_path: AGENT_HOME.into(),
                    ..Default::default()
                }]),
                env_from: Some(vec![EnvFromSource {
                    secret_ref: Some(SecretEnvSource {
                        name: identity_secret(spec.name),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }]),
                resources: spec.resources.cloned(),
                ..Default::default()
            }],
            volumes: Some(vec![Volume {
                name: "home".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            }]),
            node_selector: spec.node_selector.cloned(),
            restart_policy: Some("Never".into()),
            // The agent speaks to Muster only; it has no business with the cluster's API.
            automount_service_account_token: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The reason a Kubernetes call failed, in words: the API server's own message when it gave one.
fn reason(what: &str, error: kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!(
            "{what}: the Kubernetes API answered {} {}: {}",
            status.code, status.reason, status.message
        ),
        other => format!("{what}: {other}"),
    }
}

/// Bounds a call: an API server that does not answer is a reason, never a hang.
async fn bounded<T>(
    what: &str,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, String> {
    bounded_found(what, timeout, call)
        .await?
        .ok_or_else(|| format!("{what}: the Kubernetes API answered 404 NotFound"))
}

/// `bounded`, with an object that is not there as None.
async fn bounded_found<T>(
    what: &str,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<Option<T>, String> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => Ok(Some(value)),
        Ok(Err(kube::Error::Api(status))) if status.is_not_found() => Ok(None),
        Ok(Err(error)) => Err(reason(what, error)),
        Err(_) => Err(format!(
            "{what}: the Kubernetes API did not answer within {} s",
            timeout.as_secs()
        )),
    }
}

/// Creates a worker's pod, then its identity Secret owned by that pod. A Secret that cannot be
/// made takes its pod away again.
pub async fn create_worker(
    client: &kube::Client,
    spec: &WorkerPod<'_>,
    timeout: Duration,
) -> Result<(), String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), spec.namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), spec.namespace);
    let what = format!("creating pod {}/{}", spec.namespace, spec.name);
    let made = bounded(
        &what,
        timeout,
        pods.create(&PostParams::default(), &worker_pod(spec)),
    )
    .await?;
    let uid = made
        .metadata
        .uid
        .ok_or_else(|| format!("{what}: the Kubernetes API gave the pod no uid"))?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(identity_secret(spec.name)),
            namespace: Some(spec.namespace.into()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY.0.to_string(),
                MANAGED_BY.1.to_string(),
            )])),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: spec.name.into(),
                uid,
                block_owner_deletion: Some(true),
                controller: Some(true),
            }]),
            ..Default::default()
        },
        data: Some(
            spec.env
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes())))
                .collect(),
        ),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    let what = format!(
        "creating secret {}/{}",
        spec.namespace,
        identity_secret(spec.name)
    );
    if let Err(error) = bounded(
        &what,
        timeout,
        secrets.create(&PostParams::default(), &secret),
    )
    .await
    {
        let _ = delete_worker(client, spec.namespace, spec.name, timeout).await;
        return Err(error);
    }
    Ok(())
}

/// Deletes a worker's pod and its Secret; one that is gone already is deleted.
pub async fn delete_worker(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<(), String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let pod = bounded_found(
        &format!("deleting pod {namespace}/{name}"),
        timeout,
        pods.delete(name, &DeleteParams::default()),
    )
    .await;
    // The garbage collector deletes it with its pod; deleted here too, so that nothing waits on a
    // collector that is slow or off.
    let secret = bounded_found(
        &format!("deleting secret {namespace}/{}", identity_secret(name)),
        timeout,
        secrets.delete(&identity_secret(name), &DeleteParams::default()),
    )
    .await;
    pod?;
    secret?;
    Ok(())
}

/// Why a worker pod will never run its agent, if Kubernetes says so: it failed, or its container
/// waits for something that does not come by itself (an image that cannot be pulled, a container
/// that cannot be made). A pod that is gone is a failure too; one still starting is None.
pub async fn worker_failure(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<Option<String>, String> {
    // Not CreateContainerConfigError: the pod waits so for its identity Secret, made just after
    // it, until the kubelet looks again.
    const STUCK: [&str; 5] = [
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerError",
        "CrashLoopBackOff",
    ];
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let what = format!("reading pod {namespace}/{name}");
    let Some(pod) = bounded_found(&what, timeout, pods.get(name)).await? else {
        return Ok(Some(format!("pod {namespace}/{name} is gone")));
    };
    let Some(status) = pod.status else {
        return Ok(None);
    };
    let container = status
        .container_statuses
        .as_ref()
        .and_then(|c| c.iter().find(|c| c.name == AGENT_CONTAINER));
    if status.phase.as_deref() == Some("Failed") || status.phase.as_deref() == Some("Succeeded") {
        let ended = container
            .and_then(|c| c.state.as_ref()?.terminated.as_ref())
            .map(|t| {
                format!(
                    ": its agent exited with {}{}",
                    t.exit_code,
                    t.message
                        .as_deref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                )
            })
            .unwrap_or_default();
        return Ok(Some(format!("pod {namespace}/{name} ended{ended}")));
    }
    let waiting = container.and_then(|c| c.state.as_ref()?.waiting.as_ref());
    Ok(waiting
        .filter(|w| w.reason.as_deref().is_some_and(|r| STUCK.contains(&r)))
        .map(|w| {
            format!(
                "pod {namespace}/{name}: {}: {}",
                w.reason.as_deref().unwrap_or_default(),
                w.message.as_deref().unwrap_or("no message")
            )
        }))
}

/// The names of the worker pods that carry all of `labels` and are not being deleted.
pub async fn list_workers(
    client: &kube::Client,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let listed = bounded(
        &format!("listing the pods of {namespace}"),
        timeout,
        pods.list(&ListParams::default().labels(&selector)),
    )
    .await?;
    let mut names: Vec<String> = listed
        .items
        .into_iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| pod.metadata.name)
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_pod_holds_no_secret_value_and_reads_its_secret() {
        let env = [(
            "MUSTER_AGENT_KEY",
            "-----BEGIN PRIVATE KEY-----".to_string(),
        )];
        let pod = worker_pod(&WorkerPod {
            name: "linux-ab12cd34",
            namespace: "workers",
            image: "muster-agent:1",
            resources: None,
            node_selector: None,
            labels: BTreeMap::from([(WORKER_TYPE_LABEL.into(), "linux".into())]),
            env: &env,
        });
        let text = serde_json::to_string(&pod).unwrap();
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(text.contains("\"secretRef\":{\"name\":\"linux-ab12cd34-identity\""));
        assert!(text.contains("\"restartPolicy\":\"Never\""));
        assert!(text.contains("\"app.kubernetes.io/managed-by\":\"muster\""));
    }

    #[test]
    fn label_values_are_what_kubernetes_accepts() {
        assert_eq!(label_value("Ubuntu 22.04 (LTS)"), "Ubuntu-22.04--LTS");
        assert_eq!(label_value(&"x".repeat(80)).len(), 63);
        assert_eq!(label_value("--a--"), "a");
    }
}
