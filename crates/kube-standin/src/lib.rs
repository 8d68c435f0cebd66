//! For tests only. No Kubernetes API server can run on Muster's test machines, so this one stands
//! in for the calls Muster makes, in Kubernetes' own wire format (checked with the real `kubectl`
//! in Muster's tests): `/version` and discovery; pods and secrets (create, get, delete, list and
//! watch from a `resourceVersion`, label and name selectors); pod logs, followed; and the garbage
//! collection of objects owned by a deleted pod.
//!
//! Its kubelet runs each pod's first container as a local process: the container's `command`
//! (found among the binaries it was given, or on PATH; images are not pulled, so an image's own
//! entrypoint is unknown), with the container's environment (values, `envFrom` and
//! `secretKeyRef` of secrets, `fieldRef` of the pod's name and namespace) and its volumes
//! (secrets, emptyDir) as directories, whose mount paths are rewritten in the command, the
//! arguments, the environment and the working directory. A deleted pod's process group gets
//! SIGTERM, then SIGKILL after the grace period.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// A started stand-in, serving on 127.0.0.1 until dropped.
pub struct StandIn {
    pub url: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

struct Shared {
    store: Mutex<Store>,
    /// The latest resource version: watchers wait on it.
    version: watch::Sender<u64>,
    /// The processes of running pods, by (namespace, name).
    pods: Mutex<HashMap<(String, String), Running>>,
    binaries: HashMap<String, PathBuf>,
    /// Images that "cannot be pulled": a pod of one waits in ErrImagePull.
    unpullable: Mutex<Vec<String>>,
    dir: PathBuf,
}

struct Running {
    stop: Arc<Notify>,
}

#[derive(Default)]
struct Store {
    version: u64,
    /// By (resource, namespace, name).
    objects: BTreeMap<(String, String, String), Value>,
    /// Every change, for watches from a resource version.
    history: Vec<Change>,
}

#[derive(Clone)]
struct Change {
    version: u64,
    resource: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

const RESOURCES: [(&str, &str); 2] = [("pods", "Pod"), ("secrets", "Secret")];

fn kind_of(resource: &str) -> Option<&'static str> {
    RESOURCES
        .iter()
        .find(|(r, _)| *r == resource)
        .map(|(_, k)| *k)
}

impl StandIn {
    /// Starts the API server and its kubelet; `binaries` maps a container command's name (say
    /// `muster-agent`) to the local program that runs it.
    pub fn start(binaries: &[(&str, PathBuf)]) -> StandIn {
        let dir = tempfile::tempdir().expect("a directory for the stand-in's pods");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            version: watch::channel(0).0,
            pods: Mutex::new(HashMap::new()),
            binaries: binaries
                .iter()
                .map(|(name, path)| (name.to_string(), path.clone()))
                .collect(),
            unpullable: Mutex::new(Vec::new()),
            dir: dir.path().to_path_buf(),
        });
        // The given binaries, under the names a container's PATH finds them by.
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).expect("a bin directory");
        for (name, path) in binaries {
            std::os::unix::fs::symlink(path, bin.join(name)).expect("a link to a binary");
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = shared.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let app = router(served.clone());
                let serving = axum::serve(listener, app);
                tokio::select! {
                    _ = serving => {}
                    _ = stopped => {}
                }
                // The pods' processes end with the stand-in.
                let running: Vec<Arc<Notify>> = served
                    .pods
                    .lock()
                    .expect("pods")
                    .values()
                    .map(|r| r.stop.clone())
                    .collect();
                for stop in running {
                    stop.notify_one();
                }
                for _ in 0..50 {
                    if served.pods.lock().expect("pods").is_empty() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            runtime.shutdown_timeout(Duration::from_secs(1));
        });
        StandIn {
            url,
            shared,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Writes a kubeconfig for this server (context `standin`, namespace `default`) into `dir`.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\n    namespace: default\ncurrent-context: standin\nusers:\n- name: standin\n  user:\n    token: standin-token\n",
            self.url
        );
        std::fs::write(&path, text).expect("the kubeconfig is written");
        path
    }

    /// From now on, pods of `image` wait in `ErrImagePull`, as for an image that does not exist.
    pub fn refuse_image(&self, image: &str) {
        self.shared
            .unpullable
            .lock()
            .expect("images")
            .push(image.to_string());
    }

    /// The objects of a resource (`pods`, `secrets`) in a namespace, as stored.
    pub fn objects(&self, resource: &str, namespace: &str) -> Vec<Value> {
        self.shared
            .store
            .lock()
            .expect("store")
            .objects
            .iter()
            .filter(|((r, ns, _), _)| r == resource && ns == namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// What a pod's process has written (its log), empty before it started.
    pub fn pod_log(&self, namespace: &str, name: &str) -> String {
        std::fs::read_to_string(log_path(&self.shared, namespace, name)).unwrap_or_default()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/api", get(api_versions))
        .route("/apis", get(api_groups))
        .route("/api/v1", get(api_resources))
        .route("/openapi/v3", get(openapi_paths))
        .route("/openapi/v3/api/v1", get(openapi_core))
        .route("/api/v1/{resource}", get(list_all))
        .route(
            "/api/v1/namespaces/{namespace}/{resource}",
            get(list).post(create),
        )
        .route(
            "/api/v1/namespaces/{namespace}/{resource}/{name}",
            get(read).delete(delete),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/log",
            get(pod_log),
        )
        .fallback(|| async {
            status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
                None,
            )
        })
        .with_state(shared)
}

/// Kubernetes' error body, a `Status`.
fn status(code: StatusCode, reason: &str, message: &str, details: Option<Value>) -> Response {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    if let Some(details) = details {
        body["details"] = details;
    }
    (code, axum::Json(body)).into_response()
}

fn not_found(resource: &str, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{resource} \"{name}\" not found"),
        Some(json!({"name": name, "kind": resource})),
    )
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn version() -> Response {
    axum::Json(json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-muster-standin",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64"
    }))
    .into_response()
}

async fn api_versions(headers: HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    axum::Json(json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]
    }))
    .into_response()
}

async fn api_groups() -> Response {
    axum::Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})).into_response()
}

async fn api_resources() -> Response {
    let verbs = json!(["create", "delete", "get", "list", "watch"]);
    axum::Json(json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod", "verbs": verbs, "shortNames": ["po"], "categories": ["all"]},
            {"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]},
            {"name": "secrets", "singularName": "secret", "namespaced": true, "kind": "Secret", "verbs": verbs},
        ]
    }))
    .into_response()
}

/// OpenAPI v3 discovery: the one group version served.
async fn openapi_paths() -> Response {
    axum::Json(
        json!({"paths": {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=standin"}}}),
    )
    .into_response()
}

/// The schemas of core/v1's Pod and Secret (and all they use), from Kubernetes' own types, with
/// the group-version-kind by which kubectl finds them to validate a manifest.
async fn openapi_core() -> Response {
    static DOCUMENT: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    let document = DOCUMENT.get_or_init(|| {
        use k8s_openapi::api::core::v1::{Pod, Secret};
        let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
        generator.subschema_for::<Pod>();
        generator.subschema_for::<Secret>();
        let mut schemas = serde_json::to_value(generator.definitions()).expect("schemas");
        for kind in ["Pod", "Secret"] {
            schemas[format!("io.k8s.api.core.v1.{kind}")]["x-kubernetes-group-version-kind"] =
                json!([{"group": "", "kind": kind, "version": "v1"}]);
        }
        // kubectl asks whether the server validates fields itself (`fieldValidation`, which this
        // one does) by the PATCH operations of the kind; it then leaves validation to the server.
        let mut paths = serde_json::Map::new();
        for (resource, kind) in RESOURCES {
            paths.insert(
                format!("/api/v1/namespaces/{{namespace}}/{resource}/{{name}}"),
                json!({"patch": {
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": {"group": "", "kind": kind, "version": "v1"},
                    "parameters": [
                        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}
                    ],
                    "responses": {}
                }}),
            );
        }
        json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": "v1.33.0-muster-standin"},
            "paths": paths,
            "components": {"schemas": schemas}
        })
    });
    axum::Json(document.clone()).into_response()
}

/// The query of a list or watch.
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    label_selector: Option<String>,
    field_selector: Option<String>,
    watch: Option<String>,
    resource_version: Option<String>,
    timeout_seconds: Option<u64>,
}

/// One term of a selector: `k=v`, `k==v`, `k!=v`, `k` or `!k`.
fn matches(selector: Option<&str>, values: impl Fn(&str) -> Option<String>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                values(k.trim()).as_deref() != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                values(k.trim()).as_deref() == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                values(k.trim()).is_none()
            } else {
                values(term).is_some()
            }
        })
}

fn selected(object: &Value, query: &ListQuery) -> bool {
    let labels = &object["metadata"]["labels"];
    matches(query.label_selector.as_deref(), |k| {
        labels.get(k).and_then(|v| v.as_str()).map(str::to_string)
    }) && matches(query.field_selector.as_deref(), |k| match k {
        "metadata.name" => object["metadata"]["name"].as_str().map(str::to_string),
        "metadata.namespace" => object["metadata"]["namespace"].as_str().map(str::to_string),
        "status.phase" => object["status"]["phase"].as_str().map(str::to_string),
        _ => None,
    })
}

/// A list's item carries no kind nor apiVersion (its list says them).
fn item(object: &Value) -> Value {
    let mut item = object.clone();
    if let Some(map) = item.as_object_mut() {
        map.remove("kind");
        map.remove("apiVersion");
    }
    item
}

async fn list_all(
    State(shared): State<Arc<Shared>>,
    Path(resource): Path<String>,
    Query(query): Query<ListQuery>,
) -> Response {
    listing(shared, resource, None, query).await
}

async fn list(
    State(shared): State<Arc<Shared>>,
    Path((namespace, resource)): Path<(String, String)>,
    Query(query): Query<ListQuery>,
) -> Response {
    listing(shared, resource, Some(namespace), query).await
}

async fn listing(
    shared: Arc<Shared>,
    resource: String,
    namespace: Option<String>,
    query: ListQuery,
) -> Response {
    let Some(kind) = kind_of(&resource) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
            None,
        );
    };
    if matches!(query.watch.as_deref(), Some("true" | "1")) {
        return watching(shared, resource, namespace, query);
    }
    let store = shared.store.lock().expect("store");
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((r, ns, _), _)| *r == resource && namespace.as_ref().is_none_or(|n| n == ns))
        .filter(|(_, o)| selected(o, &query))
        .map(|(_, o)| item(o))
        .collect();
    axum::Json(json!({
        "kind": format!("{kind}List"),
        "apiVersion": "v1",
        "metadata": {"resourceVersion": store.version.to_string()},
        "items": items,
    }))
    .into_response()
}

/// A watch: the changes after `resourceVersion` (all objects as ADDED without one), then the
/// changes as they come, one JSON object per line.
fn watching(
    shared: Arc<Shared>,
    resource: String,
    namespace: Option<String>,
    query: ListQuery,
) -> Response {
    let from: Option<u64> = query
        .resource_version
        .as_deref()
        .filter(|v| !v.is_empty() && *v != "0")
        .and_then(|v| v.parse().ok());
    let mut versions = shared.version.subscribe();
    let deadline = query
        .timeout_seconds
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let stream = async_stream(
        move |sender: tokio::sync::mpsc::Sender<bytes::Bytes>| async move {
            let mut seen = match from {
                Some(version) => version,
                None => {
                    // No version: the current objects first, as ADDED.
                    let (lines, version) = {
                        let store = shared.store.lock().expect("store");
                        let lines: Vec<Value> = store
                            .objects
                            .iter()
                            .filter(|((r, ns, _), o)| {
                                *r == resource
                                    && namespace.as_ref().is_none_or(|n| n == ns)
                                    && selected(o, &query)
                            })
                            .map(|(_, o)| json!({"type": "ADDED", "object": o}))
                            .collect();
                        (lines, store.version)
                    };
                    for line in lines {
                        if sender.send(event_line(&line)).await.is_err() {
                            return;
                        }
                    }
                    version
                }
            };
            loop {
                let changes: Vec<Change> = {
                    let store = shared.store.lock().expect("store");
                    store
                        .history
                        .iter()
                        .filter(|c| c.version > seen)
                        .cloned()
                        .collect()
                };
                for change in changes {
                    seen = change.version;
                    if change.resource != resource
                        || namespace.as_ref().is_some_and(|n| *n != change.namespace)
                        || !selected(&change.object, &query)
                    {
                        continue;
                    }
                    let line = json!({"type": change.kind, "object": change.object});
                    if sender.send(event_line(&line)).await.is_err() {
                        return;
                    }
                }
                let changed = versions.wait_for(|v| *v > seen);
                match deadline {
                    Some(deadline) => {
                        if tokio::time::timeout_at(deadline, changed).await.is_err() {
                            return;
                        }
                    }
                    None => {
                        if changed.await.is_err() {
                            return;
                        }
                    }
                }
            }
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header("Transfer-Encoding", "chunked")
        .body(stream)
        .expect("a response")
}

fn event_line(value: &Value) -> bytes::Bytes {
    let mut line = serde_json::to_vec(value).expect("json");
    line.push(b'\n');
    bytes::Bytes::from(line)
}

/// A body fed by a task that writes into a channel.
fn async_stream<F, Fut>(produce: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<bytes::Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
    tokio::spawn(produce(sender));
    let stream = futures_util::stream::poll_fn(move |cx| {
        receiver
            .poll_recv(cx)
            .map(|chunk| chunk.map(Ok::<_, std::io::Error>))
    });
    Body::from_stream(stream)
}

async fn read(
    State(shared): State<Arc<Shared>>,
    Path((namespace, resource, name)): Path<(String, String, String)>,
) -> Response {
    if kind_of(&resource).is_none() {
        return not_found(&resource, &name);
    }
    let store = shared.store.lock().expect("store");
    match store
        .objects
        .get(&(resource.clone(), namespace, name.clone()))
    {
        Some(object) => axum::Json(object.clone()).into_response(),
        None => not_found(&resource, &name),
    }
}

impl Store {
    /// Records a change and gives it its resource version.
    fn change(&mut self, resource: &str, namespace: &str, kind: &'static str, object: &mut Value) {
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = (resource.to_string(), namespace.to_string(), name);
        if kind == "DELETED" {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key, object.clone());
        }
        self.history.push(Change {
            version: self.version,
            resource: resource.to_string(),
            namespace: namespace.to_string(),
            kind,
            object: object.clone(),
        });
    }
}

fn publish(shared: &Shared) {
    let version = shared.store.lock().expect("store").version;
    shared.version.send_replace(version);
}

fn invalid(kind: &str, name: &str, message: &str) -> Response {
    status(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        &format!("{kind} \"{name}\" is invalid: {message}"),
        Some(json!({"name": name, "kind": kind})),
    )
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct CreateQuery {
    field_validation: Option<String>,
}

/// The object as Kubernetes' type for its kind reads it (what it does not know dropped).
fn reading(api_version: &str, kind: &str, given: &Value) -> Result<Value, String> {
    fn read<T: serde::de::DeserializeOwned + serde::Serialize>(
        given: &Value,
    ) -> Result<Value, String> {
        let typed: T = serde_json::from_value(given.clone()).map_err(|e| e.to_string())?;
        serde_json::to_value(typed).map_err(|e| e.to_string())
    }
    match (api_version, kind) {
        ("v1", "Pod") => read::<k8s_openapi::api::core::v1::Pod>(given),
        ("v1", "Secret") => read::<k8s_openapi::api::core::v1::Secret>(given),
        ("apps/v1", "StatefulSet") => read::<k8s_openapi::api::apps::v1::StatefulSet>(given),
        (version, kind) => Err(format!("{version} {kind} is not a kind the stand-in knows")),
    }
}

/// The object as the API server stores it, or why it cannot be read; with `Strict` field
/// validation, a field its type does not know is an error too.
fn typed(kind: &str, given: &Value, strict: bool) -> Result<Value, String> {
    let cannot = |e: String| format!("{kind} in version \"v1\" cannot be handled as a {kind}: {e}");
    let read = reading("v1", kind, given).map_err(cannot)?;
    if strict && let Some(field) = unknown_field(given, &read, "") {
        return Err(cannot(format!(
            "strict decoding error: unknown field \"{field}\""
        )));
    }
    Ok(read)
}

/// Checks a manifest's object against Kubernetes' type for its kind (Pod, Secret, StatefulSet),
/// strictly: a field the type does not know is an error, as `kubectl apply --validate=strict`
/// would have it.
pub fn check_manifest(object: &Value) -> Result<(), String> {
    let kind = object["kind"].as_str().unwrap_or_default();
    let version = object["apiVersion"].as_str().unwrap_or_default();
    let read = reading(version, kind, object).map_err(|e| format!("{kind}: {e}"))?;
    match unknown_field(object, &read, "") {
        Some(field) => Err(format!("{kind}: unknown field \"{field}\"")),
        None => Ok(()),
    }
}

/// The first field of `given` that `read` (its typed reading) lost.
fn unknown_field(given: &Value, read: &Value, at: &str) -> Option<String> {
    match (given, read) {
        (Value::Object(given), Value::Object(read)) => given.iter().find_map(|(key, value)| {
            let path = if at.is_empty() {
                key.clone()
            } else {
                format!("{at}.{key}")
            };
            match read.get(key) {
                None if !value.is_null() => Some(path),
                None => None,
                Some(kept) => unknown_field(value, kept, &path),
            }
        }),
        (Value::Array(given), Value::Array(read)) => given
            .iter()
            .zip(read)
            .enumerate()
            .find_map(|(i, (g, r))| unknown_field(g, r, &format!("{at}[{i}]"))),
        _ => None,
    }
}

async fn create(
    State(shared): State<Arc<Shared>>,
    Path((namespace, resource)): Path<(String, String)>,
    Query(query): Query<CreateQuery>,
    body: bytes::Bytes,
) -> Response {
    let Some(kind) = kind_of(&resource) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
            None,
        );
    };
    let mut object: Value = match serde_json::from_slice(&body) {
        Ok(Value::Object(o)) => Value::Object(o),
        Ok(_) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the body must be a JSON object",
                None,
            );
        }
        Err(e) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("the body is not JSON: {e}"),
                None,
            );
        }
    };
    if object
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k != kind)
    {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("the body's kind is not {kind}"),
            None,
        );
    }
    object["kind"] = json!(kind);
    object["apiVersion"] = json!("v1");
    let strict = query.field_validation.as_deref() == Some("Strict");
    object = match typed(kind, &object, strict) {
        Ok(read) => read,
        Err(message) => return status(StatusCode::BAD_REQUEST, "BadRequest", &message, None),
    };
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    let meta = &mut object["metadata"];
    if meta["name"].as_str().is_none_or(str::is_empty) {
        match meta["generateName"].as_str() {
            Some(prefix) => {
                let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..5].to_string();
                meta["name"] = json!(format!("{prefix}{suffix}"));
            }
            None => {
                return invalid(
                    kind,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                );
            }
        }
    }
    let name = meta["name"].as_str().unwrap_or_default().to_string();
    if !dns_subdomain(&name) {
        return invalid(
            kind,
            &name,
            "metadata.name: Invalid value: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
        );
    }
    match meta["namespace"].as_str() {
        Some(ns) if ns != namespace => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
                None,
            );
        }
        _ => meta["namespace"] = json!(namespace),
    }
    meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
    meta["creationTimestamp"] = json!(now());
    if kind == "Pod" {
        let containers = object["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if containers.is_empty() {
            return invalid(kind, &name, "spec.containers: Required value");
        }
        for (i, c) in containers.iter().enumerate() {
            if c["name"].as_str().is_none_or(str::is_empty) {
                return invalid(
                    kind,
                    &name,
                    &format!("spec.containers[{i}].name: Required value"),
                );
            }
            if c["image"].as_str().is_none_or(str::is_empty) {
                return invalid(
                    kind,
                    &name,
                    &format!("spec.containers[{i}].image: Required value"),
                );
            }
        }
        let spec = &mut object["spec"];
        for (key, default) in [
            ("restartPolicy", json!("Always")),
            ("terminationGracePeriodSeconds", json!(30)),
            ("dnsPolicy", json!("ClusterFirst")),
            ("schedulerName", json!("default-scheduler")),
            ("nodeName", json!("muster-standin")),
        ] {
            if spec.get(key).is_none_or(Value::is_null) {
                spec[key] = default;
            }
        }
        object["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
    }
    if kind == "Secret" {
        // stringData is written into data, as the real API server does.
        if let Some(Value::Object(strings)) =
            object.as_object_mut().and_then(|o| o.remove("stringData"))
        {
            if !object["data"].is_object() {
                object["data"] = json!({});
            }
            for (k, v) in strings {
                let text = v.as_str().unwrap_or_default();
                object["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
            }
        }
        if object["type"].as_str().is_none() {
            object["type"] = json!("Opaque");
        }
    }
    {
        let mut store = shared.store.lock().expect("store");
        if store
            .objects
            .contains_key(&(resource.clone(), namespace.clone(), name.clone()))
        {
            return status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                &format!("{resource} \"{name}\" already exists"),
                Some(json!({"name": name, "kind": resource})),
            );
        }
        store.change(&resource, &namespace, "ADDED", &mut object);
    }
    publish(&shared);
    if kind == "Pod" {
        let stop = Arc::new(Notify::new());
        shared.pods.lock().expect("pods").insert(
            (namespace.clone(), name.clone()),
            Running { stop: stop.clone() },
        );
        tokio::spawn(kubelet(shared.clone(), namespace, name, stop));
    }
    (StatusCode::CREATED, axum::Json(object)).into_response()
}

fn dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DeleteQuery {
    grace_period_seconds: Option<u64>,
}

async fn delete(
    State(shared): State<Arc<Shared>>,
    Path((namespace, resource, name)): Path<(String, String, String)>,
    Query(query): Query<DeleteQuery>,
    body: bytes::Bytes,
) -> Response {
    if kind_of(&resource).is_none() {
        return not_found(&resource, &name);
    }
    // DeleteOptions may come in the body too.
    let grace = query.grace_period_seconds.or_else(|| {
        serde_json::from_slice::<Value>(&body)
            .ok()?
            .get("gracePeriodSeconds")?
            .as_u64()
    });
    let key = (resource.clone(), namespace.clone(), name.clone());
    let mut object = {
        let store = shared.store.lock().expect("store");
        match store.objects.get(&key) {
            Some(object) => object.clone(),
            None => return not_found(&resource, &name),
        }
    };
    if resource == "pods" {
        let running = shared
            .pods
            .lock()
            .expect("pods")
            .get(&(namespace.clone(), name.clone()))
            .map(|r| r.stop.clone());
        if let Some(stop) = running {
            let grace = grace
                .or_else(|| object["spec"]["terminationGracePeriodSeconds"].as_u64())
                .unwrap_or(30);
            if object["metadata"]["deletionTimestamp"].is_null() {
                object["metadata"]["deletionTimestamp"] = json!(now());
                object["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                shared.store.lock().expect("store").change(
                    &resource,
                    &namespace,
                    "MODIFIED",
                    &mut object,
                );
                publish(&shared);
            }
            stop.notify_one();
            return axum::Json(object).into_response();
        }
    }
    remove(&shared, &resource, &namespace, &name);
    axum::Json(object).into_response()
}

/// Removes an object, and (as the garbage collector) the objects it owns.
fn remove(shared: &Shared, resource: &str, namespace: &str, name: &str) {
    {
        let mut store = shared.store.lock().expect("store");
        let key = (
            resource.to_string(),
            namespace.to_string(),
            name.to_string(),
        );
        let Some(mut object) = store.objects.get(&key).cloned() else {
            return;
        };
        let uid = object["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        store.change(resource, namespace, "DELETED", &mut object);
        let owned: Vec<(String, Value)> = store
            .objects
            .iter()
            .filter(|((_, ns, _), o)| {
                ns == namespace
                    && o["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == json!(uid)))
            })
            .map(|((r, _, _), o)| (r.clone(), o.clone()))
            .collect();
        for (r, mut o) in owned {
            store.change(&r, namespace, "DELETED", &mut o);
        }
    }
    publish(shared);
}

/// The PATH of a container: the binaries the stand-in was given (as an image's), then the host's.
fn container_path(shared: &Shared) -> std::ffi::OsString {
    let bin = shared.dir.join("bin");
    let mut paths = vec![bin];
    if let Some(host) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&host));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

fn log_path(shared: &Shared, namespace: &str, name: &str) -> PathBuf {
    shared.dir.join(namespace).join(name).join("log")
}

#[derive(serde::Deserialize, Default)]
struct LogQuery {
    follow: Option<String>,
}

async fn pod_log(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<LogQuery>,
) -> Response {
    let (phase, exists) = {
        let store = shared.store.lock().expect("store");
        match store
            .objects
            .get(&("pods".to_string(), namespace.clone(), name.clone()))
        {
            Some(pod) => (
                pod["status"]["phase"].as_str().unwrap_or("").to_string(),
                true,
            ),
            None => (String::new(), false),
        }
    };
    if !exists {
        return not_found("pods", &name);
    }
    let path = log_path(&shared, &namespace, &name);
    if phase == "Pending" || !path.exists() {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("container in pod \"{name}\" is waiting to start: ContainerCreating"),
            None,
        );
    }
    let follow = matches!(query.follow.as_deref(), Some("true" | "1"));
    let body = async_stream(move |sender| async move {
        let Ok(mut file) = tokio::fs::File::open(&path).await else {
            return;
        };
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut file, &mut chunk)
                .await
                .unwrap_or(0);
            if n > 0 {
                if sender
                    .send(bytes::Bytes::copy_from_slice(&chunk[..n]))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            if !follow
                || !shared
                    .pods
                    .lock()
                    .expect("pods")
                    .contains_key(&(namespace.clone(), name.clone()))
            {
                // Ended: what it wrote before is all read (a last read above found nothing).
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain")
        .body(body)
        .expect("a response")
}

/// Sets a pod's status (unless it is gone).
fn set_status(shared: &Shared, namespace: &str, name: &str, status: Value) {
    {
        let mut store = shared.store.lock().expect("store");
        let key = ("pods".to_string(), namespace.to_string(), name.to_string());
        let Some(mut pod) = store.objects.get(&key).cloned() else {
            return;
        };
        pod["status"] = status;
        store.change("pods", namespace, "MODIFIED", &mut pod);
    }
    publish(shared);
}

fn pod(shared: &Shared, namespace: &str, name: &str) -> Option<Value> {
    shared
        .store
        .lock()
        .expect("store")
        .objects
        .get(&("pods".to_string(), namespace.to_string(), name.to_string()))
        .cloned()
}

fn secret(shared: &Shared, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    let store = shared.store.lock().expect("store");
    let object = store.objects.get(&(
        "secrets".to_string(),
        namespace.to_string(),
        name.to_string(),
    ))?;
    Some(
        object["data"]
            .as_object()
            .map(|data| {
                data.iter()
                    .filter_map(|(k, v)| {
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(v.as_str()?)
                            .ok()?;
                        Some((k.clone(), bytes))
                    })
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// What the kubelet needs to start a container, or why it cannot yet.
struct Prepared {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    working_dir: Option<String>,
}

fn waiting(reason: &str, message: &str, container: &Value) -> Value {
    json!({
        "phase": "Pending",
        "qosClass": "BestEffort",
        "containerStatuses": [{
            "name": container["name"],
            "image": container["image"],
            "imageID": "",
            "ready": false,
            "started": false,
            "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}}
        }]
    })
}

/// Kubernetes' `$(NAME)` references to the variables defined before; `$$` is a `$`.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after.strip_prefix('(').and_then(|a| a.split_once(')'))
            && let Some((_, v)) = env.iter().rev().find(|(k, _)| k == name)
        {
            out.push_str(v);
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Resolves the first container's program, environment and volumes; Err is (reason, message).
fn prepare(
    shared: &Shared,
    namespace: &str,
    name: &str,
    pod: &Value,
) -> Result<Prepared, (String, String)> {
    let container = &pod["spec"]["containers"][0];
    let image = container["image"].as_str().unwrap_or_default();
    if shared
        .unpullable
        .lock()
        .expect("images")
        .iter()
        .any(|i| i == image)
    {
        return Err((
            "ErrImagePull".into(),
            format!("failed to pull and unpack image \"{image}\": not found"),
        ));
    }
    let root = shared.dir.join(namespace).join(name);
    // Volumes become directories; their mount paths are rewritten to them.
    let mut mounts: Vec<(String, String)> = Vec::new();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume_name = mount["name"].as_str().unwrap_or_default();
        let mount_path = mount["mountPath"].as_str().unwrap_or_default();
        let Some(volume) = pod["spec"]["volumes"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == json!(volume_name)))
        else {
            return Err((
                "CreateContainerConfigError".into(),
                format!("volume \"{volume_name}\" is not defined"),
            ));
        };
        let local = root.join("volumes").join(volume_name);
        std::fs::create_dir_all(&local)
            .map_err(|e| ("CreateContainerError".into(), e.to_string()))?;
        if let Some(secret_name) = volume["secret"]["secretName"].as_str() {
            let Some(data) = secret(shared, namespace, secret_name) else {
                return Err((
                    "ContainerCreating".into(),
                    format!("secret \"{secret_name}\" not found"),
                ));
            };
            for (key, bytes) in data {
                std::fs::write(local.join(&key), bytes)
                    .map_err(|e| ("CreateContainerError".into(), e.to_string()))?;
            }
        }
        mounts.push((mount_path.to_string(), local.display().to_string()));
    }
    let rewrite = |text: &str| {
        let mut text = text.to_string();
        for (path, local) in &mounts {
            text = text.replace(path.as_str(), local);
        }
        text
    };
    let mut env: Vec<(String, String)> = Vec::new();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        if let Some(secret_name) = from["secretRef"]["name"].as_str() {
            match secret(shared, namespace, secret_name) {
                Some(data) => {
                    for (k, v) in data {
                        env.push((k, String::from_utf8_lossy(&v).into_owned()));
                    }
                }
                None if from["secretRef"]["optional"] == json!(true) => {}
                None => {
                    return Err((
                        "CreateContainerConfigError".into(),
                        format!("secret \"{secret_name}\" not found"),
                    ));
                }
            }
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let key = var["name"].as_str().unwrap_or_default().to_string();
        let value = if let Some(value) = var["value"].as_str() {
            expand(value, &env)
        } else if let Some(reference) = var["valueFrom"]["secretKeyRef"].as_object() {
            let secret_name = reference["name"].as_str().unwrap_or_default();
            let wanted = reference["key"].as_str().unwrap_or_default();
            match secret(shared, namespace, secret_name).and_then(|d| d.get(wanted).cloned()) {
                Some(v) => String::from_utf8_lossy(&v).into_owned(),
                // An optional reference that resolves to nothing sets no variable.
                None if reference.get("optional") == Some(&json!(true)) => continue,
                None => {
                    return Err((
                        "CreateContainerConfigError".into(),
                        format!("secret \"{secret_name}\" or its key \"{wanted}\" not found"),
                    ));
                }
            }
        } else if let Some(path) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match path {
                "metadata.name" => name.to_string(),
                "metadata.namespace" => namespace.to_string(),
                "status.podIP" => "127.0.0.1".to_string(),
                _ => String::new(),
            }
        } else {
            String::new()
        };
        env.push((key, value));
    }
    let command: Vec<String> = container["command"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(&rewrite))
        .collect();
    let Some(program) = command.first() else {
        return Err((
            "CreateContainerError".into(),
            format!(
                "the stand-in kubelet runs a container's command, and image {} has no known entrypoint: set command",
                container["image"]
            ),
        ));
    };
    let program = shared
        .binaries
        .get(program.as_str())
        .cloned()
        .or_else(|| {
            if program.contains('/') {
                return Some(PathBuf::from(program));
            }
            let paths = std::env::var_os("PATH")?;
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| {
            (
                "ErrImagePull".to_string(),
                format!("{program} is not found in image {}", container["image"]),
            )
        })?;
    let mut args: Vec<String> = command[1..].to_vec();
    args.extend(
        container["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(&rewrite)),
    );
    Ok(Prepared {
        program,
        args,
        env: env.into_iter().map(|(k, v)| (k, rewrite(&v))).collect(),
        working_dir: container["workingDir"].as_str().map(&rewrite),
    })
}

/// Runs a pod: waits for what it needs (its secrets), starts its container's process, and records
/// the pod's phases; a delete stops the process, and the pod goes when it has ended.
async fn kubelet(shared: Arc<Shared>, namespace: String, name: String, stop: Arc<Notify>) {
    let root = shared.dir.join(&namespace).join(&name);
    let finish = |shared: &Shared| {
        shared
            .pods
            .lock()
            .expect("pods")
            .remove(&(namespace.clone(), name.clone()));
        remove(shared, "pods", &namespace, &name);
    };
    let prepared = loop {
        let Some(pod) = pod(&shared, &namespace, &name) else {
            shared
                .pods
                .lock()
                .expect("pods")
                .remove(&(namespace.clone(), name.clone()));
            return;
        };
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            finish(&shared);
            return;
        }
        match prepare(&shared, &namespace, &name, &pod) {
            Ok(prepared) => break prepared,
            Err((reason, message)) => {
                let container = &pod["spec"]["containers"][0];
                if pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
                    != json!(message)
                {
                    set_status(
                        &shared,
                        &namespace,
                        &name,
                        waiting(&reason, &message, container),
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.notified() => {
                        finish(&shared);
                        return;
                    }
                }
            }
        }
    };
    let started = now();
    let home = root.join("home");
    let _ = std::fs::create_dir_all(&home);
    let log = std::fs::File::create(root.join("log"));
    let Ok(log) = log else {
        finish(&shared);
        return;
    };
    let log2 = log.try_clone().expect("log");
    let mut command = tokio::process::Command::new(&prepared.program);
    command
        .args(&prepared.args)
        .env_clear()
        .env("PATH", container_path(&shared))
        .env("HOME", &home)
        .env("HOSTNAME", &name)
        .envs(prepared.env.iter().map(|(k, v)| (k, v)))
        .current_dir(
            prepared
                .working_dir
                .as_deref()
                .map_or(home.clone(), PathBuf::from),
        )
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .kill_on_drop(true);
    let pod_now = pod(&shared, &namespace, &name).unwrap_or(Value::Null);
    let container = pod_now["spec"]["containers"][0].clone();
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            set_status(
                &shared,
                &namespace,
                &name,
                waiting("CreateContainerError", &e.to_string(), &container),
            );
            stop.notified().await;
            finish(&shared);
            return;
        }
    };
    let group = child.id().map(|id| id as i32).unwrap_or(0);
    set_status(
        &shared,
        &namespace,
        &name,
        json!({
            "phase": "Running",
            "podIP": "127.0.0.1",
            "hostIP": "127.0.0.1",
            "startTime": started,
            "qosClass": "BestEffort",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": started}],
            "containerStatuses": [{
                "name": container["name"],
                "image": container["image"],
                "imageID": "",
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": started}}
            }]
        }),
    );
    let exit = tokio::select! {
        exit = child.wait() => exit,
        _ = stop.notified() => {
            muster_exec::signal_group(group, false);
            let grace = pod(&shared, &namespace, &name)
                .and_then(|p| p["metadata"]["deletionGracePeriodSeconds"].as_u64())
                .unwrap_or(30);
            match tokio::time::timeout(Duration::from_secs(grace), child.wait()).await {
                Ok(exit) => exit,
                Err(_) => {
                    muster_exec::signal_group(group, true);
                    child.wait().await
                }
            }
        }
    };
    // What the container started is ended with it.
    muster_exec::signal_group(group, true);
    let code = exit.ok().and_then(|s| s.code()).unwrap_or(137);
    let deleting = pod(&shared, &namespace, &name)
        .is_none_or(|p| !p["metadata"]["deletionTimestamp"].is_null());
    if deleting {
        finish(&shared);
        return;
    }
    set_status(
        &shared,
        &namespace,
        &name,
        json!({
            "phase": if code == 0 { "Succeeded" } else { "Failed" },
            "podIP": "127.0.0.1",
            "hostIP": "127.0.0.1",
            "startTime": started,
            "qosClass": "BestEffort",
            "containerStatuses": [{
                "name": container["name"],
                "image": container["image"],
                "imageID": "",
                "ready": false,
                "started": false,
                "restartCount": 0,
                "state": {"terminated": {
                    "exitCode": code,
                    "reason": if code == 0 { "Completed" } else { "Error" },
                    "startedAt": started,
                    "finishedAt": now()
                }}
            }]
        }),
    );
    // Ended, it waits for its delete (restartPolicy is not honoured: a pod runs once).
    shared
        .pods
        .lock()
        .expect("pods")
        .remove(&(namespace.clone(), name.clone()));
}
