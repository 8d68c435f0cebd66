//! Starts the real `muster` binary on 127.0.0.1 with a temporary data dir, and speaks HTTP to it.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const KEY: &str = "API-MUSTERTESTADMINKEY0123456789";

/// Runs a `muster` client command against a server, as its administrator.
pub fn cli(server: &Server, args: &[&str]) -> std::process::Output {
    muster()
        .args(args)
        .env("MUSTER_SERVER", server.any_url())
        .env("MUSTER_API_KEY", KEY)
        .output()
        .expect("muster runs")
}

/// The HTTP client of the tests; rustls is built with ring, the one crypto provider.
pub fn client() -> reqwest::blocking::Client {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// The `muster-agent` binary, built beside `muster` (it is another package, so Cargo does not hand
/// its path to these tests).
/// A configuration file (`muster server --config`) that defines two dynamic worker types,
/// `UbuntuDefault` (the default, the first) and `Windows2022`, on the kubernetes provider, whose
/// kubeconfig names a closed port on 127.0.0.1: nothing is made, and nothing else is dialled. The
/// file lives as long as the test process.
pub fn dynamic_config() -> String {
    static FILE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: closed\n  cluster: {server: 'http://127.0.0.1:1'}\ncontexts:\n- name: closed\n  context: {cluster: closed, user: closed}\ncurrent-context: closed\nusers:\n- name: closed\n  user: {token: closed}\n",
        )
        .unwrap();
        let path = dir.join("muster.yaml");
        let settings = format!(
            "{{Image: muster-agent:test, Kubeconfig: {}}}",
            kubeconfig.display()
        );
        std::fs::write(
            &path,
            format!("WorkerTypes:\n  - Id: UbuntuDefault\n    Description: Ubuntu (default)\n    Provider: kubernetes\n    MaxWorkers: 4\n    Settings: {settings}\n  - Id: Windows2022\n    Description: Windows Server 2022\n    Provider: kubernetes\n    MaxWorkers: 2\n    Settings: {settings}\n"),
        )
        .unwrap();
        path.to_string_lossy().into_owned()
    })
    .clone()
}

pub fn agent() -> Command {
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let mut cargo = Command::new(env!("CARGO"));
        // What Cargo set for this test process is not the outer build's environment: a build
        // script that watches CARGO_MANIFEST_DIR (ring's) would run again here, and again in the
        // next outer build.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                ]
                .contains(&name.as_ref())
            {
                cargo.env_remove(name.as_ref());
            }
        }
        let status = cargo
            // The same packages and targets as this test build, so Cargo picks the same features
            // for shared dependencies and finds the agent fresh instead of building it again.
            .args([
                "build",
                "--quiet",
                "-p",
                "muster",
                "-p",
                "muster-agent",
                "--bins",
                "--tests",
            ])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cannot build muster-agent");
    });
    let path = Path::new(env!("CARGO_BIN_EXE_muster")).with_file_name("muster-agent");
    Command::new(path)
}

pub fn muster() -> Command {
    Command::new(env!("CARGO_BIN_EXE_muster"))
}

pub struct Server {
    child: Option<Child>,
    pub url: String,
    /// The comms port polling agents dial.
    pub comms_port: u16,
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    http: reqwest::blocking::Client,
    /// Everything the server prints on stdout after its listening line.
    _stdout: mpsc::Receiver<String>,
    /// What it printed before.
    pub banner: Vec<String>,
    /// Everything it printed on stderr so far (its log).
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
    /// In cluster mode (`MUSTER_TEST_NODES`), the other nodes on the same PostgreSQL database:
    /// requests go to each node in turn. This server (node `n1`) dispatches; agents dial it; every
    /// node runs scripts.
    pub others: Vec<Server>,
    turn: std::sync::atomic::AtomicUsize,
    _database: Option<muster_store::testing::TestDatabase>,
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub content_type: String,
}

impl Reply {
    /// Asserts the contract's error body and this status.
    #[track_caller]
    pub fn assert_error(&self, status: u16) -> &Self {
        assert_eq!(
            self.status, status,
            "expected {status}, got {} with {}",
            self.status, self.text
        );
        assert!(
            self.body["ErrorMessage"].is_string(),
            "no ErrorMessage in {}",
            self.text
        );
        assert!(self.body["Errors"].is_array(), "no Errors in {}", self.text);
        assert!(
            self.content_type.starts_with("application/json"),
            "error content type {}",
            self.content_type
        );
        self
    }

    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Value {
        assert_eq!(
            self.status, status,
            "expected {status}, got {} with {}",
            self.status, self.text
        );
        &self.body
    }
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> Server {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().to_path_buf();
        let nodes = std::env::var("MUSTER_TEST_NODES")
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(1);
        let mut server = if nodes > 1 && !args.contains(&"--database") {
            Self::start_cluster(&dir, args, nodes)
        } else {
            Self::start_in(&dir, args).expect("server starts")
        };
        server._temp = Some(temp);
        server
    }

    /// Cluster mode: `nodes` nodes on a PostgreSQL database of their own, the first in `dir` and
    /// each other in a directory beside it holding the first node's key and certificate.
    fn start_cluster(dir: &Path, args: &[&str], nodes: usize) -> Server {
        let database = muster_store::testing::TestDatabase::create();
        let with = |name: &str| {
            let mut all = vec![
                "--database".to_string(),
                database.url().to_string(),
                "--node-name".to_string(),
                name.to_string(),
            ];
            all.extend(args.iter().map(|a| a.to_string()));
            all
        };
        let first_args = with("n1");
        let first_args: Vec<&str> = first_args.iter().map(String::as_str).collect();
        let mut first = Self::start_in(dir, &first_args).expect("node n1 starts");
        for n in 2..=nodes {
            let other = dir.join(format!("node-n{n}"));
            copy_node_files(dir, &other);
            let node_args = with(&format!("n{n}"));
            let node_args: Vec<&str> = node_args.iter().map(String::as_str).collect();
            first
                .others
                .push(Self::start_in(&other, &node_args).expect("another node starts"));
        }
        first._database = Some(database);
        first
    }

    /// The address of the node whose turn it is (in cluster mode each request goes to the next).
    pub fn any_url(&self) -> &str {
        let turn =
            self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % (self.others.len() + 1);
        match turn {
            0 => &self.url,
            n => &self.others[n - 1].url,
        }
    }

    /// Starts a server on an existing data dir (a restart), or returns what it printed when it fails.
    pub fn start_in(dir: &Path, args: &[&str]) -> Result<Server, String> {
        Self::start_with_key(dir, args, Some(KEY))
    }

    /// Starts a server whose MUSTER_BOOTSTRAP_API_KEY is `key` (or unset).
    pub fn start_with_key(dir: &Path, args: &[&str], key: Option<&str>) -> Result<Server, String> {
        let mut command = muster();
        match key {
            Some(key) => command.env("MUSTER_BOOTSTRAP_API_KEY", key),
            None => command.env_remove("MUSTER_BOOTSTRAP_API_KEY"),
        };
        command.args(["server", "--listen", "127.0.0.1:0"]);
        // A restart that agents must find again passes its own --comms-listen.
        if !args.contains(&"--comms-listen") {
            command.args(["--comms-listen", "127.0.0.1:0"]);
        }
        let mut child = command
            .arg("--data-dir")
            .arg(dir)
            .args(args)
            .env_remove("MUSTER_LISTEN")
            .env_remove("MUSTER_DATA_DIR")
            .env_remove("MUSTER_DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the muster binary runs");
        let stdout = child.stdout.take().expect("stdout");
        let stderr_text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr_pipe = child.stderr.take().expect("stderr");
        let stderr_reader = {
            let sink = stderr_text.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                    let mut text = sink.lock().unwrap();
                    text.push_str(&line);
                    text.push('\n');
                }
            })
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut banner = Vec::new();
        let mut comms_port = 0;
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    banner.push(line.clone());
                    if let Some(rest) = line.split("polling agents is listening on ").nth(1) {
                        let rest = rest.split_whitespace().next().unwrap_or_default();
                        comms_port = rest
                            .rsplit(':')
                            .next()
                            .and_then(|p| p.trim().parse().ok())
                            .unwrap_or(0);
                    }
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let address = rest.split('/').next().unwrap_or_default();
                        return Ok(Server {
                            child: Some(child),
                            url: format!("http://{address}"),
                            comms_port,
                            dir: dir.to_path_buf(),
                            _temp: None,
                            http: client(),
                            _stdout: rx,
                            banner,
                            stderr: stderr_text,
                            others: Vec::new(),
                            turn: Default::default(),
                            _database: None,
                        });
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = stderr_reader.join();
                    return Err(stderr_text.lock().unwrap().clone());
                }
            }
        }
    }

    /// SIGTERM, and waits for the process to exit; returns its exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().expect("wait")
    }

    /// Waits (up to `limit`) for the process to exit by itself; its status, or None if it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: the server dies as in a crash.
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The server's resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    pub fn request(&self, method: &str, path: &str) -> reqwest::blocking::RequestBuilder {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        self.http
            .request(method, format!("{}{}", self.any_url(), path))
            .header("X-Octopus-ApiKey", KEY)
    }

    pub fn send(&self, request: reqwest::blocking::RequestBuilder) -> Reply {
        let response = request.send().expect("the server answers");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = response.text().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(status < 500, "server error {status} for a request: {text}");
        Reply {
            status,
            body,
            text,
            content_type,
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        self.send(self.request("GET", path))
    }

    /// A request made with another user's API key.
    pub fn as_user(&self, key: &str, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self
            .http
            .request(method, format!("{}{}", self.any_url(), path))
            .header("X-Octopus-ApiKey", key);
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(request)
    }

    /// Creates a user and an API key for them; returns (user id, key).
    pub fn new_user(&self, username: &str) -> (String, String) {
        let user = self
            .post("/api/users", &json!({"Username": username}))
            .assert_status(201)
            .clone();
        let id = user["Id"].as_str().unwrap().to_string();
        let key = self
            .post(
                &format!("/api/users/{id}/apikeys"),
                &json!({"Purpose": "tests"}),
            )
            .assert_status(201)["ApiKey"]
            .as_str()
            .unwrap()
            .to_string();
        (id, key)
    }

    /// Gives a user a built-in role in a space, through a team of their own.
    pub fn grant(&self, user_id: &str, role: &str, space_id: &str) {
        let roles = self.ok("/api/userroles/all");
        let role_id = roles
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["Name"] == role)
            .unwrap_or_else(|| panic!("no role {role}"))["Id"]
            .clone();
        let team = self
            .post(
                "/api/teams",
                &json!({"Name": format!("{user_id} as {role} in {space_id}"), "MemberUserIds": [user_id]}),
            )
            .assert_status(201)
            .clone();
        self.post(
            "/api/scopeduserroles",
            &json!({"TeamId": team["Id"], "UserRoleId": role_id, "SpaceId": space_id}),
        )
        .assert_status(201);
    }

    pub fn delete(&self, path: &str) -> Reply {
        self.send(self.request("DELETE", path))
    }

    pub fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(self.request("POST", path).json(body))
    }

    pub fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(self.request("PUT", path).json(body))
    }

    /// POSTs a body that is not sent as application/json.
    pub fn post_raw(&self, path: &str, body: &str, content_type: &str) -> Reply {
        self.send(
            self.request("POST", path)
                .header("content-type", content_type)
                .body(body.to_string()),
        )
    }

    pub fn ok(&self, path: &str) -> Value {
        self.get(path).assert_status(200).clone()
    }

    /// Queues an AdHocScript task in a space and returns it.
    pub fn run_script(&self, space: &str, arguments: Value) -> Value {
        let body = json!({"Name": "AdHocScript", "Description": "test", "Arguments": arguments});
        self.post(&format!("/api/{space}/tasks"), &body)
            .assert_status(201)
            .clone()
    }

    /// Follows a task's event stream and returns (task, log lines) once the task has ended. Waiting
    /// on the stream is waiting on the server's own signal, not on a timer.
    pub fn wait_task(&self, id: &str) -> (Value, Vec<Value>) {
        let mut lines = Vec::new();
        let mut task = Value::Null;
        self.follow(id, |kind, data| {
            match kind {
                "line" => lines.push(data),
                "task" => task = data,
                _ => {}
            }
            task["IsCompleted"] != json!(true)
        });
        assert_eq!(
            task["IsCompleted"],
            json!(true),
            "the stream of {id} ended before the task"
        );
        (task, lines)
    }

    /// Reads a task's server-sent events, calling `on_event(kind, data)` until it returns false or
    /// the stream ends.
    pub fn follow(&self, id: &str, mut on_event: impl FnMut(&str, Value) -> bool) {
        let response = self
            .request("GET", &format!("/api/tasks/{id}/stream"))
            .send()
            .expect("stream");
        assert_eq!(response.status().as_u16(), 200);
        let mut reader = BufReader::new(response);
        let (mut kind, mut data) = (String::new(), String::new());
        let mut line = String::new();
        // Keep-alive comments arrive every 15 seconds, so a stuck task fails here instead of hanging.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "task {id} did not finish in 120 seconds"
            );
            let text = line.trim_end_matches('\n');
            if text.is_empty() {
                if !data.is_empty() {
                    let value = serde_json::from_str(&data).expect("event data is JSON");
                    if !on_event(&kind, value) {
                        return;
                    }
                }
                kind.clear();
                data.clear();
            } else if let Some(v) = text.strip_prefix("event:") {
                kind = v.trim().to_string();
            } else if let Some(v) = text.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
            line.clear();
        }
    }

    /// The id of the default space's default pool.
    pub fn default_pool(&self) -> String {
        let pools = self.ok("/api/Spaces-1/workerpools/all");
        pools
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["IsDefault"] == json!(true))
            .unwrap()["Id"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A server that died by itself before its test ended says why, for the test's output.
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!(
                    "the server at {} had exited ({status}); its log:\n{}",
                    self.url,
                    self.stderr.lock().unwrap()
                );
            }
            let _ = child.kill();
            let _ = child.wait();
            // The agents a dynamic pool's process provider started outlive the server by design
            // (a test that kills or stops it on purpose finds them again): the test's end is theirs.
            kill_marked("MUSTER_DYNAMIC_INSTANCE", &self.dir.to_string_lossy());
        }
    }
}

/// The processes whose environment sets `variable` to a value that starts with `prefix`.
pub fn marked(variable: &str, prefix: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ.split(|b| *b == 0).any(|entry| {
                    String::from_utf8_lossy(entry)
                        .strip_prefix(variable)
                        .and_then(|rest| rest.strip_prefix('='))
                        .is_some_and(|value| value.starts_with(prefix))
                })
            })
        })
        .collect()
}

/// Kills every process [`marked`] so.
pub fn kill_marked(variable: &str, prefix: &str) {
    for pid in marked(variable, prefix) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

/// A listening worker's endpoint, for registering workers (nothing dials it in these tests).
pub fn listening_endpoint(n: u32) -> Value {
    json!({"CommunicationStyle": "TentaclePassive", "Uri": format!("https://127.0.0.1:{}/", 10933 + n), "Thumbprint": format!("{:064X}", n + 1)})
}

/// A host-key fingerprint in the form `ssh-keygen -E sha256 -lf` prints (no host has this key).
pub const SSH_FINGERPRINT: &str = "SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8";

/// A UsernamePassword account in a space, for SSH endpoints that nothing dials; answers its id.
pub fn ssh_account(server: &Server, space: &str, name: &str) -> String {
    server
        .post(
            &format!("/api/{space}/accounts"),
            &json!({"Name": name, "AccountType": "UsernamePassword", "Username": "deploy",
                "Password": {"HasValue": true, "NewValue": "not-a-real-password"}}),
        )
        .assert_status(201)["Id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A running `muster-agent run`, killed when dropped.
pub struct Agent {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Agent {
    /// Starts `muster-agent run` on a home that was set up before.
    pub fn start(home: &Path) -> Agent {
        let mut command = agent();
        command
            .arg("--home")
            .arg(home)
            .args(["run", "--listen-address", "127.0.0.1"]);
        Agent::spawn(command)
    }

    /// Starts an agent from a command made ready (such as one run in another network namespace).
    pub fn spawn(mut command: Command) -> Agent {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("muster-agent runs");
        let (tx, rx) = mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Agent { child, lines: rx }
    }

    /// Waits for a line of the agent's output that contains `needle`, and returns it.
    #[track_caller]
    pub fn wait_for(&self, needle: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("the agent never printed '{needle}'"),
            }
        }
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line the agent prints during the next `span`.
    pub fn lines_for(&self, span: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + span;
        let mut lines = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(left);
                    break;
                }
            }
        }
        lines
    }

    /// SIGKILL: the agent dies as in a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free port on 127.0.0.1 (bound and released at once).
/// Gives a new node's data directory `to` what the README says to copy from the first node's
/// (`from`): the key of sensitive values and the server certificate.
pub fn copy_node_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("server-certificate")).unwrap();
    std::fs::copy(from.join("secrets.key"), to.join("secrets.key")).unwrap();
    for entry in std::fs::read_dir(from.join("server-certificate")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            to.join("server-certificate").join(entry.file_name()),
        )
        .unwrap();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Asks `check` until it gives a value, for state the API has no stream for (a worker's health).
#[track_caller]
pub fn eventually<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    eventually_within(what, Duration::from_secs(30), check)
}

/// [`eventually`] with its own bound.
#[track_caller]
pub fn eventually_within<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

impl Server {
    /// Registers an agent home as a polling worker of the default pool and starts it, connected.
    pub fn polling_agent(&self, name: &str) -> Agent {
        self.polling_agent_in(name, "Default Worker Pool")
    }

    /// Registers an agent home as a polling worker of a pool of the default space, connected.
    pub fn polling_agent_in(&self, name: &str, pool: &str) -> Agent {
        let home = self.dir.join(format!("agent-{name}"));
        let port = self.comms_port.to_string();
        let output = agent()
            .arg("--home")
            .arg(&home)
            .args([
                "register-worker",
                "--server",
                &self.url,
                "--api-key",
                KEY,
                "--name",
                name,
                "--worker-pool",
                pool,
                "--comms-style",
                "TentacleActive",
                "--server-comms-port",
                &port,
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let agent = Agent::start(&home);
        agent.wait_for("is connected to");
        agent
    }

    /// Registers an agent home as a listening worker of the default pool and starts it.
    pub fn listening_agent(&self, name: &str) -> Agent {
        let home = self.dir.join(format!("agent-{name}"));
        let port = free_port().to_string();
        let output = agent()
            .arg("--home")
            .arg(&home)
            .args([
                "register-worker",
                "--server",
                &self.url,
                "--api-key",
                KEY,
                "--name",
                name,
                "--worker-pool",
                "Default Worker Pool",
                "--comms-style",
                "TentaclePassive",
                "--public-hostname",
                "127.0.0.1",
                "--listen-port",
                &port,
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let agent = Agent::start(&home);
        agent.wait_for("is listening on");
        agent
    }

    /// Waits until the named worker of the default space has this health status.
    #[track_caller]
    pub fn wait_health(&self, name: &str, status: &str) -> Value {
        eventually(&format!("{name} to be {status}"), || {
            let workers = self.ok("/api/Spaces-1/workers/all");
            workers
                .as_array()
                .unwrap()
                .iter()
                .find(|w| w["Name"] == name && w["HealthStatus"] == status)
                .cloned()
        })
    }
}
