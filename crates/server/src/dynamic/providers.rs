//! The providers of dynamic workers: what makes an instance, destroys it and lists those that
//! exist. The seam for a new kind of machine is here: `provision`, `destroy` and `list`, each an
//! arm per provider. An instance is given the identity the server issued (the `env` of
//! `provision`), never an API key.
//!
//! - `process`: `muster-agent run` processes on this node's machine, each with its own home under
//!   `<data-dir>/dynamic/<worker name>`, found again by a mark in their environment.
//! - `command`: the user's own commands (`/bin/sh -c`), which may run Terraform or a cloud CLI.
//! - `kubernetes`: a pod per worker running `muster-agent run`, its identity in a Secret the pod
//!   owns (`muster_kube`); the instance id is the pod's name.

use crate::config::Provider;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The environment variable that marks a `process` instance's processes with its directory.
const PROCESS_MARK: &str = "MUSTER_DYNAMIC_INSTANCE";
/// How much of a command's output the provisioning log keeps.
const OUTPUT_KEPT: usize = 4000;
/// How long an instance may take to stop after `SIGTERM`.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A provider's answer, with what its command printed (for the pool's provisioning log).
pub struct Outcome<T> {
    pub result: Result<T, String>,
    pub output: String,
}

impl<T> Outcome<T> {
    fn plain(result: Result<T, String>) -> Outcome<T> {
        Outcome {
            result,
            output: String::new(),
        }
    }
}

/// Where the `process` provider keeps its instances' homes.
pub fn process_root(data_dir: &Path) -> PathBuf {
    data_dir.join("dynamic")
}

/// Where a provider works, and whose instances are its own: this node's directory for `process`
/// homes, the worker type and the server (its certificate's SHA-1 thumbprint), which label `kubernetes`
/// pods so that another type or another server sharing the namespace never lists them.
pub struct Site {
    pub root: PathBuf,
    pub worker_type: String,
    pub server: String,
}

impl Site {
    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                muster_kube::WORKER_TYPE_LABEL.to_string(),
                muster_kube::label_value(&self.worker_type),
            ),
            (
                muster_kube::SERVER_LABEL.to_string(),
                muster_kube::label_value(&self.server),
            ),
        ])
    }
}

/// Makes an instance for the worker `name`, giving it `env`; its id.
pub async fn provision(
    provider: &Provider,
    site: &Site,
    name: &str,
    env: &[(&str, String)],
    timeout: Duration,
) -> Outcome<String> {
    match provider {
        Provider::Process { agent_path } => Outcome::plain(
            start_process(agent_path, &site.root, name, env).map(|()| name.to_string()),
        ),
        Provider::Command { create, .. } => {
            let ran = run_command("create", create, env, timeout).await;
            let result = ran.result.and_then(|stdout| instance_id(&stdout));
            Outcome {
                result,
                output: ran.output,
            }
        }
        Provider::Kubernetes {
            cluster,
            image,
            namespace,
            resources,
            node_selector,
        } => {
            let pod = muster_kube::WorkerPod {
                name,
                namespace,
                image,
                resources: resources.as_ref(),
                node_selector: node_selector.as_ref(),
                labels: site.labels(),
                env,
            };
            let made = async {
                let client = cluster.client().await?;
                muster_kube::create_worker(&client, &pod, timeout).await
            };
            Outcome::plain(made.await.map(|()| name.to_string()))
        }
    }
}

/// Destroys an instance; destroying one that is gone already succeeds.
pub async fn destroy(
    provider: &Provider,
    site: &Site,
    instance_id: &str,
    timeout: Duration,
) -> Outcome<()> {
    match provider {
        Provider::Process { .. } => Outcome::plain(stop_process(&site.root, instance_id).await),
        Provider::Command { destroy, .. } => {
            let env = [(muster_proto::instance::INSTANCE_ID, instance_id.to_string())];
            let ran = run_command("destroy", destroy, &env, timeout).await;
            Outcome {
                result: ran.result.map(drop),
                output: ran.output,
            }
        }
        Provider::Kubernetes {
            cluster, namespace, ..
        } => {
            let deleted = async {
                let client = cluster.client().await?;
                muster_kube::delete_worker(&client, namespace, instance_id, timeout).await
            };
            Outcome::plain(deleted.await)
        }
    }
}

/// Why an instance still provisioning will never link, when its provider can tell (a pod whose
/// image cannot be pulled); None when it cannot, or sees nothing wrong yet.
pub async fn failure(provider: &Provider, instance_id: &str, timeout: Duration) -> Option<String> {
    match provider {
        Provider::Kubernetes {
            cluster, namespace, ..
        } => {
            let read = async {
                let client = cluster.client().await?;
                muster_kube::worker_failure(&client, namespace, instance_id, timeout).await
            };
            match read.await {
                Ok(failure) => failure,
                Err(error) => {
                    tracing::warn!("cannot read a provisioning instance's state: {error}");
                    None
                }
            }
        }
        Provider::Process { .. } | Provider::Command { .. } => None,
    }
}

/// The ids of the instances that exist, or None when the provider cannot list them (a `command`
/// provider without a `list` command).
pub async fn list(
    provider: &Provider,
    site: &Site,
    timeout: Duration,
) -> Option<Outcome<Vec<String>>> {
    match provider {
        Provider::Process { .. } => Some(Outcome::plain(Ok(running_processes(&site.root)))),
        Provider::Command { list: None, .. } => None,
        Provider::Command {
            list: Some(list), ..
        } => {
            let ran = run_command("list", list, &[], timeout).await;
            Some(Outcome {
                result: ran.result.map(|stdout| listed_ids(&stdout)),
                output: ran.output,
            })
        }
        Provider::Kubernetes {
            cluster, namespace, ..
        } => {
            let listed = async {
                let client = cluster.client().await?;
                muster_kube::list_workers(&client, namespace, &site.labels(), timeout).await
            };
            Some(Outcome::plain(listed.await))
        }
    }
}

fn start_process(
    agent: &Path,
    root: &Path,
    name: &str,
    env: &[(&str, String)],
) -> Result<(), String> {
    let dir = root.join(name);
    let home = dir.join("home");
    std::fs::create_dir_all(&home)
        .map_err(|e| format!("cannot create the instance's home {}: {e}", home.display()))?;
    let log = std::fs::File::create(dir.join("agent.log"))
        .map_err(|e| format!("cannot create {}: {e}", dir.join("agent.log").display()))?;
    let log2 = log
        .try_clone()
        .map_err(|e| format!("cannot open the instance's log: {e}"))?;
    let mut command = tokio::process::Command::new(agent);
    command
        .arg("--home")
        .arg(&home)
        .arg("run")
        .env(PROCESS_MARK, &dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own group: the server's signals are not its, and destroying it stops its scripts.
        .process_group(0);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", agent.display()))?;
    // Reaped when it ends; it outlives a server that is killed (found again by its mark).
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(())
}

/// The instances whose agent (or one of its scripts) runs: the names of their directories.
fn running_processes(root: &Path) -> Vec<String> {
    let prefix = format!("{}/", root.display());
    let mut names: Vec<String> = muster_exec::marked_processes(PROCESS_MARK, &prefix)
        .into_iter()
        .filter_map(|(_, _, dir)| Some(Path::new(&dir).file_name()?.to_str()?.to_string()))
        .collect();
    names.sort();
    names.dedup();
    names
}

async fn stop_process(root: &Path, name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(format!(
            "'{name}' is not an instance of the process provider"
        ));
    }
    let dir = root.join(name);
    let value = dir.display().to_string();
    let groups = || -> Vec<i32> {
        let mut groups: Vec<i32> = muster_exec::marked_processes(PROCESS_MARK, &value)
            .into_iter()
            .filter(|(_, _, v)| *v == value)
            .map(|(_, group, _)| group)
            .collect();
        groups.sort_unstable();
        groups.dedup();
        groups
    };
    for group in groups() {
        muster_exec::signal_group(group, false);
    }
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    loop {
        let left = groups();
        if left.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            for group in left {
                muster_exec::signal_group(group, true);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            if !groups().is_empty() {
                return Err(format!("instance {name}'s processes do not stop"));
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("cannot remove {}: {e}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Runs a provider's command by `/bin/sh -c`, with `env`: its standard output, or why it failed.
/// Its output (both streams) is kept for the provisioning log. Past `timeout` its process group is
/// killed.
async fn run_command(
    what: &str,
    command: &str,
    env: &[(&str, String)],
    timeout: Duration,
) -> Outcome<String> {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (key, value) in env {
        cmd.env(key, value);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return Outcome::plain(Err(format!("cannot run the {what} command: {e}"))),
    };
    let group = child.id().map(|id| id as i32);
    let (out, err) = (
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    // Read by tasks of their own into buffers: a child the command left running (an agent it
    // started) may hold the pipes open, so the command's exit ends the wait, and the pipes get a
    // moment more to give what was written before it.
    let keep = |mut pipe: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
        let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let reader = tokio::spawn(async move {
            let mut chunk = vec![0u8; 8192];
            while let Ok(n) = pipe.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                let mut kept = sink.lock().expect("output lock");
                if kept.len() < 1 << 20 {
                    kept.extend_from_slice(&chunk[..n]);
                }
            }
        });
        (buffer, reader)
    };
    let (stdout_buffer, stdout_reader) = keep(Box::new(out));
    let (stderr_buffer, stderr_reader) = keep(Box::new(err));
    let finished = tokio::time::timeout(timeout, child.wait()).await;
    if finished.is_ok() {
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            let _ = stdout_reader.await;
            let _ = stderr_reader.await;
        })
        .await;
    }
    let take = |b: &std::sync::Arc<std::sync::Mutex<Vec<u8>>>| {
        std::mem::take(&mut *b.lock().expect("output lock"))
    };
    let finished = finished.map(|status| (status, take(&stdout_buffer), take(&stderr_buffer)));
    let Ok((status, stdout, stderr)) = finished else {
        if let Some(group) = group {
            muster_exec::signal_group(group, true);
        }
        return Outcome::plain(Err(format!(
            "the {what} command did not finish within {}; it was killed",
            span(timeout)
        )));
    };
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    let output = tail(&format!("{stdout}{stderr}"));
    let result = match status {
        Ok(status) if status.success() => Ok(stdout),
        Ok(status) => {
            let last = stderr
                .lines()
                .rev()
                .chain(stdout.lines().rev())
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim();
            let code = status
                .code()
                .map_or_else(|| "a signal".to_string(), |c| c.to_string());
            Err(match last {
                "" => format!("the {what} command exited with {code}"),
                last => format!("the {what} command exited with {code}: {last}"),
            })
        }
        Err(e) => Err(format!("the {what} command: {e}")),
    };
    Outcome { result, output }
}

/// A length of time in words: "300 ms", "90 s".
pub fn span(d: Duration) -> String {
    match d.subsec_millis() {
        0 => format!("{} s", d.as_secs()),
        _ if d.as_secs() == 0 => format!("{} ms", d.as_millis()),
        _ => format!("{:.1} s", d.as_secs_f64()),
    }
}

fn tail(text: &str) -> String {
    let text = text.trim();
    if text.len() <= OUTPUT_KEPT {
        return text.to_string();
    }
    let mut start = text.len() - OUTPUT_KEPT;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

/// The instance id a create command printed: the last line that reads as `{"InstanceId": "…"}`.
fn instance_id(stdout: &str) -> Result<String, String> {
    stdout
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line.trim()).ok())
        .find_map(|v| {
            v.get("InstanceId")
                .and_then(|id| id.as_str())
                .map(|id| id.trim().to_string())
        })
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            "the create command succeeded but printed no {\"InstanceId\": \"…\"} line".to_string()
        })
}

/// The ids a list command printed: a JSON array of ids (or of `{"InstanceId": …}`), or one id
/// per line.
fn listed_ids(stdout: &str) -> Vec<String> {
    if let Ok(serde_json::Value::Array(items)) = serde_json::from_str(stdout.trim()) {
        return items
            .iter()
            .filter_map(|item| match item {
                serde_json::Value::String(id) => Some(id.clone()),
                other => other.get("InstanceId")?.as_str().map(str::to_string),
            })
            .collect();
    }
    stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_and_lists_are_read_in_their_forms() {
        assert_eq!(
            instance_id("Creating…\n{\"InstanceId\": \"i-0abc\"}\n").unwrap(),
            "i-0abc"
        );
        assert!(instance_id("done\n").unwrap_err().contains("InstanceId"));
        assert_eq!(listed_ids("[\"a\", {\"InstanceId\": \"b\"}]"), ["a", "b"]);
        assert_eq!(listed_ids("a\n\n b \n"), ["a", "b"]);
        assert!(listed_ids("").is_empty());
    }

    #[tokio::test]
    async fn a_command_that_fails_or_hangs_is_a_reason() {
        let failed = run_command(
            "create",
            "echo working; echo broken >&2; exit 3",
            &[],
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(
            failed.result.unwrap_err(),
            "the create command exited with 3: broken"
        );
        assert!(failed.output.contains("working"));
        let hung = run_command("create", "sleep 30", &[], Duration::from_millis(300)).await;
        assert!(
            hung.result
                .unwrap_err()
                .contains("did not finish within 300 ms")
        );
        let env = [("MUSTER_X", "y".to_string())];
        let ok = run_command(
            "create",
            "echo \"{\\\"InstanceId\\\": \\\"$MUSTER_X\\\"}\"",
            &env,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(instance_id(&ok.result.unwrap()).unwrap(), "y");
    }
}
