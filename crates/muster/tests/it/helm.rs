//! The Helm chart `packaging/helm/muster-agent` (issue 16, the Kubernetes worker). No helm binary
//! runs on the test machines: the chart is rendered here with a Go text/template engine (gtmpl)
//! and the few Helm functions the chart uses, its objects are checked against Kubernetes' types,
//! and its pod is run on the Kubernetes stand-in, where it registers with the real server and
//! runs a task.

use crate::support::{KEY, Server, eventually_within};
use gtmpl::{FuncError, Value as Go};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

fn chart_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/helm/muster-agent")
}

fn to_go(value: &Value) -> Go {
    match value {
        Value::Null => Go::Nil,
        Value::Bool(b) => Go::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Go::from(i),
            None => Go::from(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => Go::String(s.clone()),
        Value::Array(items) => Go::Array(items.iter().map(to_go).collect()),
        Value::Object(map) => Go::Map(map.iter().map(|(k, v)| (k.clone(), to_go(v))).collect()),
    }
}

fn from_go(value: &Go) -> Value {
    match value {
        Go::NoValue | Go::Nil | Go::Function(_) => Value::Null,
        Go::Bool(b) => json!(b),
        Go::String(s) => json!(s),
        Go::Number(n) => match n.as_i64() {
            Some(i) => json!(i),
            None => json!(n.as_f64()),
        },
        Go::Array(items) => Value::Array(items.iter().map(from_go).collect()),
        Go::Object(map) | Go::Map(map) => {
            let mut sorted: Vec<_> = map.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                sorted
                    .into_iter()
                    .map(|(k, v)| (k.clone(), from_go(v)))
                    .collect(),
            )
        }
    }
}

/// Helm's idea of an empty value, for `default` and `required`.
fn empty(value: &Go) -> bool {
    match value {
        Go::NoValue | Go::Nil => true,
        Go::Bool(b) => !b,
        Go::String(s) => s.is_empty(),
        Go::Array(a) => a.is_empty(),
        Go::Object(m) | Go::Map(m) => m.is_empty(),
        Go::Number(n) => n.as_f64() == Some(0.0),
        Go::Function(_) => false,
    }
}

fn text(value: &Go) -> String {
    match value {
        Go::String(s) => s.clone(),
        Go::NoValue | Go::Nil => String::new(),
        other => other.to_string(),
    }
}

// Helm's functions that the chart uses (sprig's, and Helm's own `required` and `toYaml`).
fn required(args: &[Go]) -> Result<Go, FuncError> {
    match args {
        [message, value] if empty(value) => Err(FuncError::Generic(text(message))),
        [_, value] => Ok(value.clone()),
        _ => Err(FuncError::ExactlyXArgs("required".into(), 2)),
    }
}

fn default(args: &[Go]) -> Result<Go, FuncError> {
    match args {
        [fallback, value] if empty(value) => Ok(fallback.clone()),
        [_, value] => Ok(value.clone()),
        [fallback] => Ok(fallback.clone()),
        _ => Err(FuncError::ExactlyXArgs("default".into(), 2)),
    }
}

fn quote(args: &[Go]) -> Result<Go, FuncError> {
    // Go's %q, which JSON's string form matches for the text a chart quotes.
    let joined: Vec<String> = args
        .iter()
        .map(|a| serde_json::to_string(&text(a)).unwrap())
        .collect();
    Ok(Go::String(joined.join(" ")))
}

fn join(args: &[Go]) -> Result<Go, FuncError> {
    match args {
        [separator, Go::Array(items)] => Ok(Go::String(
            items
                .iter()
                .map(text)
                .collect::<Vec<_>>()
                .join(&text(separator)),
        )),
        [_, other] if empty(other) => Ok(Go::String(String::new())),
        _ => Err(FuncError::Generic(
            "join takes a separator and a list".into(),
        )),
    }
}

fn fail(args: &[Go]) -> Result<Go, FuncError> {
    Err(FuncError::Generic(
        args.first().map(text).unwrap_or_default(),
    ))
}

fn to_yaml(args: &[Go]) -> Result<Go, FuncError> {
    let [value] = args else {
        return Err(FuncError::ExactlyXArgs("toYaml".into(), 1));
    };
    let yaml =
        serde_norway::to_string(&from_go(value)).map_err(|e| FuncError::Generic(e.to_string()))?;
    Ok(Go::String(yaml.trim_end().to_string()))
}

fn nindent(args: &[Go]) -> Result<Go, FuncError> {
    let [width, value] = args else {
        return Err(FuncError::ExactlyXArgs("nindent".into(), 2));
    };
    let width: usize = text(width)
        .parse()
        .map_err(|_| FuncError::UnableToConvertFromValue)?;
    let pad = " ".repeat(width);
    let lines: Vec<String> = text(value).lines().map(|l| format!("{pad}{l}")).collect();
    Ok(Go::String(format!("\n{}", lines.join("\n"))))
}

/// Merges `over` into `base`, as `--set` does.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (k, v) in over {
                merge(base.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (base, over) => *base = over.clone(),
    }
}

/// Renders the chart with `values` over its defaults, as release `workers` in namespace
/// `muster`: its objects, or the first template's error.
fn render(values: &Value) -> Result<Vec<Value>, String> {
    let dir = chart_dir();
    let chart: Value =
        serde_norway::from_str(&std::fs::read_to_string(dir.join("Chart.yaml")).unwrap()).unwrap();
    let mut merged: Value =
        serde_norway::from_str(&std::fs::read_to_string(dir.join("values.yaml")).unwrap()).unwrap();
    merge(&mut merged, values);
    let context = json!({
        "Values": merged,
        "Release": {"Name": "workers", "Namespace": "muster", "Service": "Helm"},
        "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]},
    });
    let mut objects = Vec::new();
    let mut templates: Vec<_> = std::fs::read_dir(dir.join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    templates.sort();
    for path in templates {
        let mut template = gtmpl::Template::default();
        let funcs: HashMap<&str, gtmpl::Func> = HashMap::from([
            ("required", required as gtmpl::Func),
            ("default", default),
            ("quote", quote),
            ("join", join),
            ("fail", fail),
            ("toYaml", to_yaml),
            ("nindent", nindent),
        ]);
        template.add_funcs(&funcs.into_iter().collect::<Vec<_>>());
        template
            .parse(std::fs::read_to_string(&path).unwrap())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let rendered = template
            .render(&gtmpl::Context::from(to_go(&context)))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        for document in rendered.split("\n---") {
            if document.trim().is_empty() {
                continue;
            }
            let object: Value = serde_norway::from_str(document)
                .map_err(|e| format!("{}: not YAML ({e}):\n{document}", path.display()))?;
            objects.push(object);
        }
    }
    Ok(objects)
}

fn values(server: &str, comms: &str, thumbprint: &str) -> Value {
    json!({
        "image": {"repository": "registry.example/muster-agent"},
        "server": {"url": server, "commsAddress": comms, "thumbprint": thumbprint},
        "registration": {"apiKey": KEY},
        "workerPools": ["Default Worker Pool"],
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
        "nodeSelector": {"kubernetes.io/os": "linux"},
    })
}

/// The chart renders objects that Kubernetes' types read without a field lost, and the API key is
/// in the Secret only.
#[test]
fn the_chart_renders_kubernetes_objects() {
    let objects = render(&values(
        "https://muster.example:8080",
        "muster.example:10943",
        &"A".repeat(64),
    ))
    .unwrap();
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(kinds, ["Secret", "StatefulSet"]);
    for object in &objects {
        muster_kube_standin::check_manifest(object).unwrap_or_else(|e| panic!("{e}\n{object:#}"));
    }
    // The check is strict: a field Kubernetes' type does not know fails it.
    let mut typo = objects[1].clone();
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = json!("Always");
    assert!(
        muster_kube_standin::check_manifest(&typo)
            .unwrap_err()
            .contains("unknown field \"spec.template.spec.containers[0].imagePullPolicyy\"")
    );
    let set = &objects[1];
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example/muster-agent:0.1.0");
    assert_eq!(container["resources"]["requests"]["cpu"], "250m");
    assert_eq!(
        set["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/os"],
        "linux"
    );
    assert!(
        !set.to_string().contains(KEY),
        "the key is in the Secret only"
    );
    assert_eq!(objects[0]["stringData"]["apiKey"], KEY);
    let env = container["env"].as_array().unwrap();
    let key = env.iter().find(|e| e["name"] == "MUSTER_API_KEY").unwrap();
    assert_eq!(
        key["valueFrom"]["secretKeyRef"]["name"],
        "workers-registration"
    );

    // With a Secret of the user's own, the chart makes none.
    let mut own = values("https://muster.example:8080", "muster.example:10943", "AB");
    own["registration"] = json!({"existingSecret": "muster-registration"});
    let objects = render(&own).unwrap();
    assert_eq!(objects.len(), 1);
    assert_eq!(
        objects[0]["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "MUSTER_API_KEY")
            .unwrap()["valueFrom"]["secretKeyRef"]["name"],
        "muster-registration"
    );
}

/// A value the chart needs and was not given stops the install with the value named.
#[test]
fn a_missing_chart_value_is_named() {
    let full = values("https://muster.example:8080", "muster.example:10943", "AB");
    for (path, expected) in [
        (json!({"server": {"url": ""}}), "server.url is required"),
        (
            json!({"server": {"commsAddress": ""}}),
            "server.commsAddress is required",
        ),
        (
            json!({"server": {"thumbprint": ""}}),
            "server.thumbprint is required",
        ),
        (
            json!({"image": {"repository": ""}}),
            "image.repository is required",
        ),
        (
            json!({"workerPools": []}),
            "workerPools is required with registration.apiKey",
        ),
        (
            json!({"registration": {"apiKey": ""}}),
            "registration.token, registration.apiKey or registration.existingSecret is required",
        ),
    ] {
        let mut given = full.clone();
        merge(&mut given, &path);
        let error = render(&given).unwrap_err();
        assert!(error.contains(expected), "{path}: {error}");
    }
}

/// The chart's pod, run on the Kubernetes stand-in, registers a Kubernetes worker
/// (`KubernetesTentacle`, polling) with the real server, which runs a task on it.
#[test]
fn the_charts_pod_registers_a_kubernetes_worker_that_runs_tasks() {
    let agent = {
        drop(crate::support::agent());
        Path::new(env!("CARGO_BIN_EXE_muster")).with_file_name("muster-agent")
    };
    let standin = muster_kube_standin::StandIn::start(&[("muster-agent", agent)]);
    let server = Server::start();
    let thumbprint = server.ok("/api/configuration/certificates")["Items"][0]["Thumbprint"]
        .as_str()
        .unwrap()
        .to_string();
    // Registered with a one-time token, not an API key: it names the space and the pool.
    let token = server
        .post(
            "/api/Spaces-1/registrationtokens",
            &json!({"WorkerPoolIds": ["WorkerPools-1"]}),
        )
        .assert_status(201)["Token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut given = values(
        &server.url,
        &format!("127.0.0.1:{}", server.comms_port),
        &thumbprint,
    );
    given["registration"] = json!({"token": token});
    given["workerPools"] = json!([]);
    let objects = render(&given).unwrap();
    assert_eq!(objects[0]["stringData"]["registrationToken"], json!(token));
    // What the StatefulSet controller makes of the template: pod workers-0, with its volume claim.
    let set = &objects[1];
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": set["spec"]["template"]["metadata"].clone(),
        "spec": set["spec"]["template"]["spec"].clone(),
    });
    pod["metadata"]["name"] = json!("workers-0");
    pod["spec"]["volumes"] =
        json!([{"name": "home", "persistentVolumeClaim": {"claimName": "home-workers-0"}}]);
    let temp = tempfile::tempdir().unwrap();
    let kubeconfig = standin.kubeconfig(temp.path());
    for (name, object) in [("secret.json", &objects[0]), ("pod.json", &pod)] {
        let file = temp.path().join(name);
        std::fs::write(&file, object.to_string()).unwrap();
        let out = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["create", "--validate=false", "-n", "muster", "-f"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    let worker = eventually_within(
        "the chart's worker to register",
        Duration::from_secs(60),
        || {
            let workers = server.ok("/api/Spaces-1/workers?name=workers-0");
            workers["Items"].as_array()?.first().cloned()
        },
    );
    assert_eq!(
        worker["Endpoint"]["CommunicationStyle"], "KubernetesTentacle",
        "{worker}"
    );
    let endpoint = &worker["Endpoint"]["TentacleEndpointConfiguration"];
    assert_eq!(endpoint["CommunicationMode"], "Polling");
    assert!(endpoint["Uri"].as_str().unwrap().starts_with("poll://"));
    assert_eq!(worker["Endpoint"]["DefaultNamespace"], "muster");
    assert_eq!(
        worker["Endpoint"]["KubernetesAgentDetails"]["HelmReleaseName"],
        "workers"
    );
    server.wait_health("workers-0", "Healthy");
    let task = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": "echo \"in pod $HOSTNAME\"", "TargetType": "Workers", "MachineIds": [worker["Id"]]}),
    );
    let (done, lines) = server.wait_task(task["Id"].as_str().unwrap());
    assert_eq!(
        done["State"],
        "Success",
        "{done} {}",
        standin.pod_log("muster", "workers-0")
    );
    assert!(
        lines.iter().any(|l| l["MessageText"] == "in pod workers-0"),
        "{lines:?}"
    );
}
