//! The `kubernetes` provider of dynamic pools (issue 16), against the stand-in API server and
//! kubelet of `muster-kube-standin`, whose wire format is checked here with the real `kubectl`.

use muster_kube_standin::StandIn;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{Server, eventually_within};
use serde_json::json;

fn kubectl(kubeconfig: &Path) -> Command {
    let mut command = Command::new("kubectl");
    command.arg("--kubeconfig").arg(kubeconfig);
    command
}

/// Whether this kubectl learns from the OpenAPI v3 document that the server validates fields
/// (1.27 and later). An older one (Debian's is 1.20) validates from the v2 document, in protobuf,
/// which the stand-in does not serve: it is given `--validate=false`.
fn kubectl_validates_on_the_server() -> bool {
    let out = Command::new("kubectl")
        .args(["version", "--client", "-o", "json"])
        .output()
        .expect("kubectl is installed (scripts/test.sh installs it)");
    let version: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let minor: u32 = version["clientVersion"]["minor"]
        .as_str()
        .unwrap_or("0")
        .trim_end_matches('+')
        .parse()
        .unwrap_or(0);
    minor >= 27
}

/// `kubectl create -f FILE`.
fn create(kubeconfig: &Path, file: &Path) -> Command {
    let mut command = kubectl(kubeconfig);
    command.arg("create").arg("-f").arg(file);
    if !kubectl_validates_on_the_server() {
        command.arg("--validate=false");
    }
    command
}

fn run(command: &mut Command) -> String {
    let out = command.output().expect("kubectl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{command:?}: {text}");
    text
}

/// `kubectl create`, `get -w`, `logs -f` and `delete` work against the stand-in: its format is
/// Kubernetes', not ours.
#[test]
fn the_standin_speaks_kubernetes_to_kubectl() {
    let standin = StandIn::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = standin.kubeconfig(dir.path());
    assert!(run(kubectl(&kubeconfig).arg("version")).contains("v1.33.0-muster-standin"));

    // A watch from before the pod exists sees it come, run and go.
    let mut watch = kubectl(&kubeconfig)
        .args(["get", "pods", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    let out = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });

    let manifest = dir.path().join("pod.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: greeting\nstringData:\n  WORD: hello\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: hello\n  labels: {app: hello}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: busybox:1\n    command: [sh, -c, 'echo \"$WORD from $HOSTNAME\"; sleep 1; echo done']\n    envFrom:\n    - secretRef: {name: greeting}\n",
    )
    .unwrap();
    let created = run(&mut create(&kubeconfig, &manifest));
    assert!(created.contains("pod/hello created"), "{created}");
    assert!(created.contains("secret/greeting created"), "{created}");

    // kubectl leaves validation to the server (fieldValidation=Strict), which knows Kubernetes'
    // types.
    let typo = dir.path().join("typo.yaml");
    std::fs::write(
        &typo,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: typo}\nspec:\n  containers:\n  - {name: main, image: busybox:1, comand: [sh]}\n",
    )
    .unwrap();
    if kubectl_validates_on_the_server() {
        let refused = create(&kubeconfig, &typo).output().unwrap();
        assert!(!refused.status.success());
        assert!(
            String::from_utf8_lossy(&refused.stderr)
                .contains("unknown field \"spec.containers[0].comand\""),
            "{refused:?}"
        );
    }

    let logs = run(kubectl(&kubeconfig)
        .args(["logs", "-f", "hello"])
        .env("X", "1"));
    assert_eq!(logs, "hello from hello\ndone\n");
    let listed = run(kubectl(&kubeconfig).args(["get", "pods", "-l", "app=hello"]));
    assert!(listed.contains("hello"), "{listed}");
    let json = run(kubectl(&kubeconfig).args(["get", "pod", "hello", "-o", "json"]));
    let pod: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(pod["status"]["phase"], "Succeeded", "{json}");

    let deleted = run(kubectl(&kubeconfig).args(["delete", "pod", "hello"]));
    assert!(deleted.contains("pod \"hello\" deleted"), "{deleted}");
    let gone = kubectl(&kubeconfig)
        .args(["get", "pod", "hello"])
        .output()
        .unwrap();
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("pods \"hello\" not found"),
        "{gone:?}"
    );
    let mut events = Vec::new();
    eventually_within(
        "the watch to see the pod deleted",
        Duration::from_secs(20),
        || {
            while let Ok(line) = seen.try_recv() {
                events.push(line);
            }
            events
                .iter()
                .any(|l| l.starts_with("DELETED"))
                .then_some(())
        },
    );
    let _ = watch.kill();
    let _ = watch.wait();
    let text = events.join("\n");
    assert!(text.contains("ADDED"), "{text}");
    assert!(text.contains("MODIFIED"), "{text}");
}

fn agent_path() -> std::path::PathBuf {
    // Built by the harness's first call.
    drop(crate::support::agent());
    Path::new(env!("CARGO_BIN_EXE_muster")).with_file_name("muster-agent")
}

/// A configuration file with a kubernetes type `k8s` on the stand-in, and `extra` types.
fn config(dir: &Path, kubeconfig: &Path, extra: &str) -> String {
    let path = dir.join("muster.yaml");
    std::fs::write(
        &path,
        format!(
            "WorkerTypes:\n  - Id: k8s\n    Provider: kubernetes\n    MaxWorkers: 2\n    MaxUseCount: 1\n    IdleTimeout: 3s\n    ProvisionTimeout: 60s\n    Settings:\n      Image: muster-agent:test\n      Namespace: workers\n      Kubeconfig: {}\n      Resources: {{requests: {{cpu: 100m, memory: 64Mi}}}}\n      NodeSelector: {{kubernetes.io/os: linux}}\n{extra}",
            kubeconfig.display()
        ),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

fn dynamic_pool(server: &Server, name: &str, worker_type: &str) -> String {
    server
        .post(
            "/api/Spaces-1/workerpools",
            &json!({"Name": name, "WorkerPoolType": "DynamicWorkerPool", "WorkerType": worker_type}),
        )
        .assert_status(201)["Id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Tasks on a kubernetes pool run each in a pod of its own, made for it with its identity in a
/// Secret the pod owns, and deleted after it; the pool scales back to nothing.
#[test]
fn a_kubernetes_pool_runs_each_task_in_a_pod_of_its_own() {
    let standin = StandIn::start(&[("muster-agent", agent_path())]);
    let temp = tempfile::tempdir().unwrap();
    let kubeconfig = standin.kubeconfig(temp.path());
    let server = Server::start_with(&["--config", &config(temp.path(), &kubeconfig, "")]);
    let pool = dynamic_pool(&server, "Pods", "k8s");
    let tasks: Vec<String> = (0..3)
        .map(|i| {
            server.run_script(
                "Spaces-1",
                json!({"ScriptBody": format!("echo \"task {i} on $HOSTNAME\"; sleep 1"), "TargetType": "WorkerPools", "WorkerPoolIds": [pool]}),
            )["Id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();

    // A pod as it runs: its spec names its Secret and holds no key; the Secret is owned by it.
    let (pod, secret) = eventually_within("a worker pod", Duration::from_secs(60), || {
        let pod = standin.objects("pods", "workers").into_iter().next()?;
        let name = pod["metadata"]["name"].as_str()?.to_string();
        let secret = standin
            .objects("secrets", "workers")
            .into_iter()
            .find(|s| s["metadata"]["name"] == json!(format!("{name}-identity")))?;
        Some((pod, secret))
    });
    let spec = pod["spec"].to_string();
    assert!(!spec.contains("PRIVATE KEY"), "{spec}");
    assert_eq!(
        pod["spec"]["containers"][0]["envFrom"][0]["secretRef"]["name"],
        secret["metadata"]["name"]
    );
    assert_eq!(pod["spec"]["containers"][0]["image"], "muster-agent:test");
    assert_eq!(
        pod["spec"]["containers"][0]["resources"]["requests"]["cpu"],
        "100m"
    );
    assert_eq!(pod["spec"]["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(pod["metadata"]["labels"]["muster.dev/worker-type"], "k8s");
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["uid"],
        pod["metadata"]["uid"]
    );
    assert!(secret["data"]["MUSTER_AGENT_KEY"].is_string());

    let mut names = std::collections::HashSet::new();
    for id in &tasks {
        let (done, lines) = server.wait_task(id);
        assert_eq!(done["State"], "Success", "{done}");
        let worker = done["WorkerName"].as_str().unwrap().to_string();
        assert!(worker.starts_with("k8s-"), "{worker}");
        // Run by the agent in the pod: the pod's host name is the worker's name.
        assert!(
            lines.iter().any(|l| l["MessageText"]
                .as_str()
                .unwrap_or("")
                .ends_with(&format!("on {worker}"))),
            "{lines:?}"
        );
        assert!(names.insert(worker.clone()), "{worker} ran two tasks");
    }

    // Used up (MaxUseCount 1): every pod and its Secret are deleted, and the pool is empty.
    eventually_within("the pods to go", Duration::from_secs(60), || {
        let workers = server.ok(&format!("/api/Spaces-1/workerpools/{pool}/workers"));
        (standin.objects("pods", "workers").is_empty()
            && standin.objects("secrets", "workers").is_empty()
            && workers["Items"].as_array().unwrap().is_empty())
        .then_some(())
    });
    let events = server.ok(&format!("/api/Spaces-1/events?regarding={pool}&take=100"));
    let provisioned = events["Items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["Message"]
                .as_str()
                .unwrap_or("")
                .contains("provisioned by the kubernetes provider")
        })
        .count();
    assert_eq!(provisioned, 3, "{events}");
}

/// A pod labelled as this server's that no worker names is destroyed when the server reconciles;
/// a cluster that cannot be reached is the waiting task's reason, not a hang.
#[test]
fn an_orphan_pod_is_deleted_and_an_unreachable_cluster_is_a_reason() {
    let standin = StandIn::start(&[("muster-agent", agent_path())]);
    let temp = tempfile::tempdir().unwrap();
    let kubeconfig = standin.kubeconfig(temp.path());
    let dead = temp.path().join("dead-kubeconfig");
    let port = crate::support::free_port();
    std::fs::write(
        &dead,
        std::fs::read_to_string(&kubeconfig)
            .unwrap()
            .replace(&standin.url, &format!("http://127.0.0.1:{port}")),
    )
    .unwrap();
    standin.refuse_image("registry.example/missing:1");
    let extra = format!(
        "  - Id: missing\n    Provider: kubernetes\n    MaxWorkers: 1\n    Settings: {{Image: registry.example/missing:1, Namespace: workers, Kubeconfig: {}}}\n  - Id: far\n    Provider: kubernetes\n    MaxWorkers: 1\n    ProvisionTimeout: 5s\n    Settings: {{Image: muster-agent:test, Kubeconfig: {}}}\n",
        kubeconfig.display(),
        dead.display()
    );
    let config = config(temp.path(), &kubeconfig, &extra);

    // The orphan: made by "this server" (its thumbprint is known only once it ran: a first start
    // makes the certificate, which the second start keeps).
    let data = tempfile::tempdir().unwrap();
    let first = Server::start_in(data.path(), &["--config", &config]).unwrap();
    let thumbprint = first.ok("/api/configuration/certificates")["Items"][0]["ThumbprintSha1"]
        .as_str()
        .unwrap()
        .to_string();
    first.stop();
    let orphan = temp.path().join("orphan.yaml");
    std::fs::write(
        &orphan,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: k8s-orphan1\n  namespace: workers\n  labels: {{muster.dev/worker-type: k8s, muster.dev/server: {thumbprint}, app.kubernetes.io/managed-by: muster}}\nspec:\n  containers:\n  - {{name: muster-agent, image: muster-agent:test, command: [sleep, '300']}}\n"
        ),
    )
    .unwrap();
    run(&mut create(&kubeconfig, &orphan));
    // Another server's pod in the same namespace is not this one's to delete.
    std::fs::write(
        &orphan,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: k8s-theirs\n  namespace: workers\n  labels: {muster.dev/worker-type: k8s, muster.dev/server: ABCDEF, app.kubernetes.io/managed-by: muster}\nspec:\n  containers:\n  - {name: muster-agent, image: muster-agent:test, command: [sleep, '300']}\n",
    )
    .unwrap();
    run(&mut create(&kubeconfig, &orphan));

    let server = Server::start_in(data.path(), &["--config", &config]).unwrap();
    eventually_within(
        "the orphan pod to be deleted",
        Duration::from_secs(60),
        || {
            let names: Vec<String> = standin
                .objects("pods", "workers")
                .iter()
                .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
                .collect();
            (names == ["k8s-theirs"]).then_some(())
        },
    );

    let pool = dynamic_pool(&server, "Far", "far");
    let id = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": "echo never", "TargetType": "WorkerPools", "WorkerPoolIds": [pool]}),
    )["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let reason = eventually_within(
        "a queue reason naming the failure",
        Duration::from_secs(60),
        || {
            let task = server.ok(&format!("/api/tasks/{id}"));
            let reason = task["QueueReason"].as_str()?.to_string();
            reason.contains("attempt").then_some(reason)
        },
    );
    assert!(reason.contains("creating pod default/far-"), "{reason}");
    let events = server.ok(&format!("/api/Spaces-1/events?regarding={pool}&take=100"));
    assert!(events.to_string().contains("failed"), "{events}");

    // A pod whose image cannot be pulled is a failed attempt at once (not after the 5 minutes of
    // ProvisionTimeout), with Kubernetes' reason, and it is deleted.
    let pool = dynamic_pool(&server, "Missing", "missing");
    let id = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": "echo never", "TargetType": "WorkerPools", "WorkerPoolIds": [pool]}),
    )["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let reason = eventually_within(
        "the pull failure as the reason",
        Duration::from_secs(60),
        || {
            let task = server.ok(&format!("/api/tasks/{id}"));
            let reason = task["QueueReason"].as_str()?.to_string();
            reason.contains("ErrImagePull").then_some(reason)
        },
    );
    assert!(
        reason.contains("attempts failed: pod workers/missing-"),
        "{reason}"
    );
    assert!(reason.contains("not found"), "{reason}");
    eventually_within(
        "the broken pod to be deleted",
        Duration::from_secs(30),
        || {
            standin
                .objects("pods", "workers")
                .iter()
                .all(|p| {
                    !p["metadata"]["name"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("missing-")
                })
                .then_some(())
        },
    );
}
