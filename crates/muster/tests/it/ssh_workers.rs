//! SSH workers end to end: the real `muster` binary against a private real OpenSSH `sshd` on
//! 127.0.0.1 (`crate::sshd`). Key-pair and password accounts, scripts with output variables and
//! masking, a wrong or changed host key (nothing runs until the user pins the new one), an MD5 pin
//! upgraded, 50 tasks at once, cancel, a dying sshd, a killed server re-attaching, and a share.

use crate::sshd::{self, Sshd};
use crate::support::{SSH_FINGERPRINT, Server, cli, eventually, eventually_within};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn id(value: &Value) -> String {
    value["Id"].as_str().unwrap().to_string()
}

/// A host key's fingerprint as `ssh-keygen -E <hash> -lf` prints it.
pub(crate) fn fingerprint(public: &Path, hash: &str) -> String {
    sshd::run("ssh-keygen", &["-E", hash, "-lf", public.to_str().unwrap()])
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

/// Runs a CLI command; (exit code, stdout and stderr).
fn run_cli(server: &Server, args: &[&str]) -> (Option<i32>, String) {
    let out = cli(server, args);
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[track_caller]
fn ok_cli(server: &Server, args: &[&str]) -> String {
    let (code, out) = run_cli(server, args);
    assert_eq!(code, Some(0), "{args:?}: {out}");
    out
}

/// A user's key, the sshd that lets it in, and a key-pair account for it made with the CLI.
pub(crate) struct Host {
    pub(crate) sshd: Sshd,
    _keys: tempfile::TempDir,
}

pub(crate) fn key_host(server: &Server, account: &str) -> Host {
    let keys = tempfile::tempdir().unwrap();
    let key = sshd::keygen(keys.path(), "id", "");
    let sshd = Sshd::start(&[&key]);
    ok_cli(
        server,
        &[
            "account",
            "create",
            "ssh-key",
            account,
            "--username",
            &sshd::login_user(),
            "--key-file",
            key.to_str().unwrap(),
        ],
    );
    Host { sshd, _keys: keys }
}

/// Registers the sshd as a worker of the default pool (pinned to `fingerprint`) through the API.
pub(crate) fn add_worker(
    server: &Server,
    name: &str,
    port: u16,
    account: &str,
    fingerprint: &str,
) -> Value {
    let account = server
        .ok("/api/Spaces-1/accounts/all")
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["Name"] == account)
        .map(id)
        .unwrap();
    server
        .post(
            "/api/Spaces-1/workers",
            &json!({"Name": name, "WorkerPoolIds": [server.default_pool()],
                "Endpoint": {"CommunicationStyle": "Ssh", "Host": "127.0.0.1", "Port": port,
                    "Fingerprint": fingerprint, "AccountId": account}}),
        )
        .assert_status(201)
        .clone()
}

fn script_on(server: &Server, worker: &str, body: &str) -> String {
    id(&server.run_script(
        "Spaces-1",
        json!({"ScriptBody": body, "TargetType": "Workers", "MachineIds": [worker]}),
    ))
}

fn texts(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["MessageText"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn wait_line(server: &Server, task: &str, text: &str) {
    server.follow(task, |kind, data| {
        !(kind == "line" && data["MessageText"] == text)
    });
}

/// Processes whose command line contains `needle`.
fn processes(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Waits until the named worker of the default space has this health status; shows it and the
/// server's log when it does not.
#[track_caller]
pub(crate) fn wait_health(server: &Server, name: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let worker = worker_by_name(server, "Spaces-1", name);
        if worker["HealthStatus"] == status {
            return worker;
        }
        if Instant::now() > deadline {
            panic!(
                "{name} is not {status}: {worker}\nserver log:\n{}",
                server.stderr.lock().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn worker_by_name(server: &Server, space: &str, name: &str) -> Value {
    server
        .ok(&format!("/api/{space}/workers/all"))
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["Name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no worker {name}"))
}

#[test]
fn ssh_key_pair_worker_added_by_the_cli_runs_bash_and_python_with_output_variables_masking_50_tasks_and_a_share()
 {
    let server = Server::start_with(&["--task-cap", "50"]);
    let host = key_host(&server, "deploy key");
    let expected = fingerprint(&host.sshd.host_key_pub(), "sha256");
    ok_cli(&server, &["pool", "create", "SSH pool"]);
    let port = host.sshd.port.to_string();
    // Without --fingerprint: discovery reads the key and the CLI says what it pinned.
    let out = ok_cli(
        &server,
        &[
            "worker",
            "add-ssh",
            "box",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--account",
            "deploy key",
            "--pool",
            "SSH pool",
        ],
    );
    assert!(out.contains(&expected), "{out}");
    let worker = wait_health(&server, "box", "Healthy");
    assert_eq!(worker["OperatingSystem"], "Linux", "{worker}");
    assert_eq!(worker["Endpoint"]["HostKeyAlgorithm"], "ssh-ed25519");
    let worker_id = id(&worker);

    // A runbook on the SSH pool: an output variable read by the next step, a sensitive value
    // masked, and Python.
    let runbook = json!({
        "name": "Remote",
        "variables": {"Secret": {"value": "hunter2-zqx", "sensitive": true}},
        "steps": [
            {"name": "Set", "script": "set_octopusvariable Color 'blue sky'\necho \"the secret is #{Secret}\"", "pool": "SSH pool"},
            {"name": "Read", "script": "echo \"color [$(get_octopusvariable 'Octopus.Action[Set].Output.Color')]\"\necho \"host $(hostname) user $(id -un)\"", "pool": "SSH pool"},
            {"name": "Py", "syntax": "Python", "script": "import os\nprint('python says', get_octopusvariable('Secret')[::-1][::-1])", "pool": "SSH pool"},
        ],
    });
    let path = server.dir.join("runbook.json");
    std::fs::write(&path, runbook.to_string()).unwrap();
    ok_cli(
        &server,
        &["runbook", "create", "--file", path.to_str().unwrap()],
    );
    let out = cli(&server, &["runbook", "run", "Remote"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let task = stderr
        .split_whitespace()
        .find(|w| w.starts_with("ServerTasks-"))
        .unwrap_or_else(|| panic!("the CLI names the task: {stderr}"))
        .to_string();
    let raw = server.get(&format!("/api/tasks/{task}/raw")).text;
    assert_eq!(out.status.code(), Some(0), "{raw}");
    assert!(!raw.contains("zqx"), "the secret leaked:\n{raw}");
    assert!(raw.contains("the secret is ********"), "{raw}");
    assert!(raw.contains("color [blue sky]"), "{raw}");
    assert!(
        raw.contains(&format!("user {}", sshd::login_user())),
        "{raw}"
    );
    assert!(raw.contains("python says ********"), "{raw}");

    // An ad-hoc Python script on the worker, and its exit code.
    let task = id(&server.run_script(
        "Spaces-1",
        json!({"ScriptBody": "import sys\nprint('py', sys.version_info[0])\nsys.exit(3)", "Syntax": "Python",
            "TargetType": "Workers", "MachineIds": [worker_id]}),
    ));
    let (ended, lines) = server.wait_task(&task);
    assert_eq!(ended["State"], "Failed");
    assert!(
        ended["ErrorMessage"]
            .as_str()
            .unwrap()
            .contains("exited with code 3"),
        "{ended}"
    );
    assert!(texts(&lines).contains(&"py 3".to_string()), "{lines:?}");

    // 50 tasks at once through the one worker: each succeeds with its whole log.
    let started = Instant::now();
    let tasks: Vec<String> = (0..50)
        .map(|n| {
            script_on(
                &server,
                &worker_id,
                &format!("for i in $(seq 1 20); do echo \"task {n} line $i\"; done"),
            )
        })
        .collect();
    for (n, task) in tasks.iter().enumerate() {
        let (ended, lines) = server.wait_task(task);
        assert_eq!(ended["State"], "Success", "{ended}");
        let got: Vec<String> = texts(&lines)
            .into_iter()
            .filter(|t| t.starts_with("task "))
            .collect();
        let want: Vec<String> = (1..=20).map(|i| format!("task {n} line {i}")).collect();
        assert_eq!(got, want, "{task}");
    }
    eprintln!("50 SSH tasks in {:?}", started.elapsed());

    // Shared into a second space: that space's task runs on it, and the machine has one health
    // record (every record shows the same check).
    let other = id(server
        .post("/api/spaces", &json!({"Name": "Other"}))
        .assert_status(201));
    let pool = server
        .ok(&format!("/api/{other}/workerpools/all"))
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["IsDefault"] == true)
        .map(id)
        .unwrap();
    let share = server
        .post(
            &format!("/api/Spaces-1/workers/{worker_id}/shares"),
            &json!({"SpaceId": other, "WorkerPoolIds": [pool]}),
        )
        .assert_status(201)
        .clone();
    assert_eq!(share["HomeWorkerId"], worker_id.as_str());
    let task = id(&server.run_script(
        &other,
        json!({"ScriptBody": "echo \"in the other space on $(uname -s)\"", "TargetType": "WorkerPools", "WorkerPoolIds": [pool]}),
    ));
    let (ended, lines) = server.wait_task(&task);
    assert_eq!(ended["State"], "Success", "{ended}");
    assert!(
        texts(&lines).contains(&"in the other space on Linux".to_string()),
        "{lines:?}"
    );
    let check = server
        .post(&format!("/api/{other}/tasks"), &json!({"Name": "Health"}))
        .assert_status(201)
        .clone();
    let (ended, _) = server.wait_task(&id(&check));
    assert_eq!(ended["State"], "Success", "{ended}");
    let home = worker_by_name(&server, "Spaces-1", "box");
    let shared = worker_by_name(&server, &other, "box");
    assert_eq!(home["HealthStatus"], "Healthy");
    assert_eq!(shared["HealthStatus"], "Healthy");
    assert_eq!(home["StatusSummary"], shared["StatusSummary"]);
    assert_eq!(home["IsShared"], true);
}

#[test]
fn ssh_password_account_worker_pinned_by_md5_is_upgraded_to_sha256_and_runs_as_its_user() {
    if !sshd::password_user() {
        eprintln!("skipped: the password user needs root");
        return;
    }
    let sshd = Sshd::start(&[]);
    let server = Server::start();
    let password = server.dir.join("password");
    std::fs::write(&password, format!("{}\n", sshd::PASSWORD)).unwrap();
    ok_cli(
        &server,
        &[
            "account",
            "create",
            "password",
            "login",
            "--username",
            sshd::PASSWORD_USER,
            "--password-file",
            password.to_str().unwrap(),
        ],
    );
    let md5 = fingerprint(&sshd.host_key_pub(), "md5");
    let sha256 = fingerprint(&sshd.host_key_pub(), "sha256");
    let port = sshd.port.to_string();
    let out = ok_cli(
        &server,
        &[
            "worker",
            "add-ssh",
            "pw",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--account",
            "login",
            "--pool",
            "Default Worker Pool",
            "--fingerprint",
            &md5,
        ],
    );
    assert!(out.contains("Created SSH worker pw"), "{out}");
    // The first check matched the MD5 pin and pinned the same key's SHA-256.
    let worker = wait_health(&server, "pw", "Healthy");
    assert_eq!(
        worker["Endpoint"]["Fingerprint"],
        sha256.as_str(),
        "{worker}"
    );
    assert_eq!(worker["Endpoint"]["HostKeyAlgorithm"], "ssh-ed25519");
    let task = script_on(&server, &id(&worker), "echo \"I am $(id -un)\"");
    let (ended, lines) = server.wait_task(&task);
    assert_eq!(ended["State"], "Success", "{ended}");
    assert!(
        texts(&lines).contains(&format!("I am {}", sshd::PASSWORD_USER)),
        "{lines:?}"
    );
}

#[test]
fn ssh_wrong_or_changed_host_key_runs_nothing_until_the_user_pins_the_new_key() {
    let server = Server::start();
    let mut host = key_host(&server, "key");
    let old = fingerprint(&host.sshd.host_key_pub(), "sha256");
    let marks = tempfile::tempdir().unwrap();
    // The scripts' user writes the markers.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(marks.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let marker = |n: &str| -> PathBuf { marks.path().join(n) };

    // Pinned to a key the host does not have: refused before any command runs.
    let wrong = add_worker(&server, "wrong", host.sshd.port, "key", SSH_FINGERPRINT);
    let unhealthy = wait_health(&server, "wrong", "Unhealthy");
    let summary = unhealthy["StatusSummary"].as_str().unwrap();
    assert!(
        summary.contains(SSH_FINGERPRINT) && summary.contains(&old),
        "{summary}"
    );
    let task = script_on(
        &server,
        &id(&wrong),
        &format!("touch '{}'", marker("wrong").display()),
    );
    let reason = eventually("a queue reason", || {
        server.ok(&format!("/api/tasks/{task}"))["QueueReason"]
            .as_str()
            .map(str::to_string)
    });
    assert!(reason.contains("host key"), "{reason}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !marker("wrong").exists(),
        "a command ran on a wrong host key"
    );
    server
        .post(&format!("/api/tasks/{task}/cancel"), &json!({}))
        .assert_status(200);
    server
        .delete(&format!("/api/Spaces-1/workers/{}", id(&wrong)))
        .assert_status(200);

    // The right pin: it runs.
    let worker = add_worker(&server, "box", host.sshd.port, "key", &old);
    let worker_id = id(&worker);
    wait_health(&server, "box", "Healthy");
    let (ended, _) = server.wait_task(&script_on(&server, &worker_id, "echo ok"));
    assert_eq!(ended["State"], "Success", "{ended}");

    // The host is rebuilt with new keys on the same port.
    host.sshd.restart(true);
    let new = fingerprint(&host.sshd.host_key_pub(), "sha256");
    assert_ne!(old, new);
    let (code, out) = run_cli(&server, &["worker", "health", "--worker", "box"]);
    assert_ne!(code, Some(0), "{out}");
    let unhealthy = wait_health(&server, "box", "Unhealthy");
    let summary = unhealthy["StatusSummary"].as_str().unwrap();
    assert!(
        summary.contains(&old) && summary.contains(&new),
        "{summary}"
    );
    let task = script_on(
        &server,
        &worker_id,
        &format!("touch '{}'", marker("changed").display()),
    );
    let reason = eventually("a queue reason", || {
        server.ok(&format!("/api/tasks/{task}"))["QueueReason"]
            .as_str()
            .map(str::to_string)
    });
    assert!(
        reason.contains("host key") && reason.contains(&new),
        "{reason}"
    );
    assert!(!marker("changed").exists());

    // The CLI shows both and changes the pin only with --yes; then the task runs.
    let (code, out) = run_cli(&server, &["worker", "update-fingerprint", "box"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&old) && out.contains(&new), "{out}");
    assert_eq!(
        server.ok(&format!("/api/Spaces-1/workers/{worker_id}"))["Endpoint"]["Fingerprint"],
        old.as_str()
    );
    assert!(!marker("changed").exists());
    ok_cli(&server, &["worker", "update-fingerprint", "box", "--yes"]);
    assert_eq!(
        server.ok(&format!("/api/Spaces-1/workers/{worker_id}"))["Endpoint"]["Fingerprint"],
        new.as_str()
    );
    let (ended, _) = server.wait_task(&task);
    assert_eq!(ended["State"], "Success", "{ended}");
    assert!(marker("changed").exists());
    wait_health(&server, "box", "Healthy");
}

#[test]
fn ssh_cancel_kills_the_remote_tree_and_a_dead_sshd_fails_the_task_within_the_connect_timeout() {
    let server = Server::start();
    server
        .put(
            "/api/Spaces-1/machinepolicies/MachinePolicies-1",
            &json!({"ConnectionConnectTimeout": "00:00:05"}),
        )
        .assert_status(200);
    let mut host = key_host(&server, "key");
    let pin = fingerprint(&host.sshd.host_key_pub(), "sha256");
    let worker_id = id(&add_worker(&server, "box", host.sshd.port, "key", &pin));
    wait_health(&server, "box", "Healthy");

    // Cancel: the script and its children (a background sleep) are gone.
    let mark = format!("3{}", std::process::id() % 10000 + 10000);
    let task = script_on(
        &server,
        &worker_id,
        &format!("sleep {mark} &\nsleep {mark} &\necho started\nwait"),
    );
    wait_line(&server, &task, "started");
    let needle = format!("sleep {mark}");
    // A background command's fork execs `sleep` a moment after the script goes on to `echo`.
    eventually_within(
        "the script's sleeps to run",
        Duration::from_secs(10),
        || (processes(&needle).len() == 2).then_some(()),
    );
    server
        .post(&format!("/api/tasks/{task}/cancel"), &json!({}))
        .assert_status(200);
    let (ended, _) = server.wait_task(&task);
    assert_eq!(ended["State"], "Canceled", "{ended}");
    eventually_within("the remote sleeps to die", Duration::from_secs(10), || {
        processes(&needle).is_empty().then_some(())
    });

    // sshd dies mid-task: the task fails within the policy's connect timeout (5 s), saying why.
    let task = script_on(&server, &worker_id, "echo started\nsleep 20");
    wait_line(&server, &task, "started");
    host.sshd.kill();
    let killed = Instant::now();
    let (ended, _) = server.wait_task(&task);
    let took = killed.elapsed();
    assert_eq!(ended["State"], "Failed", "{ended}");
    let message = ended["ErrorMessage"].as_str().unwrap();
    assert!(message.contains("unreachable"), "{message}");
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(15),
        "failed after {took:?}"
    );
    // The worker says why it takes no work.
    let task = script_on(&server, &worker_id, "echo never");
    let reason = eventually("a queue reason", || {
        server.ok(&format!("/api/tasks/{task}"))["QueueReason"]
            .as_str()
            .filter(|r| r.contains("box"))
            .map(str::to_string)
    });
    assert!(reason.contains("box"), "{reason}");
}

#[test]
fn ssh_a_server_killed_mid_script_re_attaches_and_logs_every_line_exactly_once() {
    const LINES: usize = 60;
    let temp = tempfile::tempdir().unwrap();
    let server = Server::start_in(temp.path(), &[]).unwrap();
    let host = key_host(&server, "key");
    let pin = fingerprint(&host.sshd.host_key_pub(), "sha256");
    let worker_id = id(&add_worker(&server, "box", host.sshd.port, "key", &pin));
    wait_health(&server, "box", "Healthy");
    let task = script_on(
        &server,
        &worker_id,
        &format!("for i in $(seq 1 {LINES}); do echo \"line $i\"; sleep 0.05; done"),
    );
    wait_line(&server, &task, "line 5");
    server.kill();
    std::thread::sleep(Duration::from_millis(500));
    let server = Server::start_in(temp.path(), &[]).unwrap();
    let (ended, lines) = server.wait_task(&task);
    assert_eq!(ended["State"], "Success", "{ended}");
    let numbered: Vec<String> = texts(&lines)
        .into_iter()
        .filter(|t| t.starts_with("line "))
        .collect();
    let expected: Vec<String> = (1..=LINES).map(|i| format!("line {i}")).collect();
    assert_eq!(numbered, expected, "every line exactly once");
    assert!(
        texts(&lines)
            .iter()
            .any(|t| t.contains("re-attaching to the script on worker box")),
        "{lines:?}"
    );
    drop(host);
}
