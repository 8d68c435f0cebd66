//! Nothing knocks a server or an agent over: floods of idle connections, a process out of file
//! descriptors, restarts on either side, and two agents on one home.

use crate::support::{Agent, Server, agent, eventually};
use serde_json::{Value, json};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

fn id(task: &Value) -> String {
    task["Id"].as_str().unwrap().to_string()
}

/// How many descriptors a process has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the process is alive")
        .count()
}

/// Sets a running process's descriptor limit (util-linux `prlimit`); only the soft limit, so that
/// it can be raised again.
fn limit_fds(pid: u32, limit: usize) {
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={limit}:")])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit failed");
}

/// User and system CPU time of a process so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process is alive");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Opens `n` idle TCP connections to a port and keeps them open while the result lives. Past the
/// listener's backlog (128) a connect would wait for the process to accept, so each has 2 seconds.
fn flood(port: u16, n: usize) -> Vec<TcpStream> {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    (0..n)
        .filter_map(|_| TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok())
        .collect()
}

fn listen_port_of(home: &Path) -> u16 {
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("agent.json")).unwrap()).unwrap();
    config["ListenPort"].as_u64().unwrap() as u16
}

fn home_of(server: &Server, name: &str) -> std::path::PathBuf {
    server.dir.join(format!("agent-{name}"))
}

/// Runs a script on the default pool and asserts that it succeeds, printing what it printed.
fn assert_script_runs(server: &Server, text: &str) {
    let task = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": format!("echo {text}"), "WorkerPoolId": server.default_pool()}),
    );
    let (done, lines) = server.wait_task(&id(&task));
    assert_eq!(done["State"], "Success", "{done}");
    assert!(
        lines.iter().any(|l| l["MessageText"] == text),
        "the script's line is in its log: {lines:?}"
    );
}

/// Runs a Health task on the default space and returns its final state.
fn health_task(server: &Server) -> Value {
    let task = server
        .post(
            "/api/Spaces-1/tasks",
            &json!({"Name": "Health", "Arguments": {}}),
        )
        .assert_status(201)
        .clone();
    server.wait_task(&id(&task)).0
}

#[test]
fn a_listening_agent_out_of_descriptors_keeps_serving() {
    let server = Server::start();
    let flooded = server.listening_agent("flooded");
    server.wait_health("flooded", "Healthy");
    let port = listen_port_of(&home_of(&server, "flooded"));

    // A few descriptors to spare, far fewer than the flood: its accepts fail for lack of them.
    let pid = flooded.pid();
    limit_fds(pid, open_fds(pid) + 8);
    let connections = flood(port, 100);
    assert_eq!(connections.len(), 100, "the flood connected");
    flooded.wait_for("cannot accept a connection");

    // During the flood: alive, and the server's link (opened before) still answers.
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the agent died"
    );
    assert_eq!(health_task(&server)["State"], "Success");

    // Once the flood ends it accepts again: a new TLS handshake (discovery), and a script.
    drop(connections);
    let discovered = eventually("the agent to accept again", || {
        let reply = server.get(&format!(
            "/api/Spaces-1/workers/discover?host=127.0.0.1&port={port}&type=TentaclePassive"
        ));
        (reply.status == 200).then_some(reply.body)
    });
    assert_eq!(
        discovered["Endpoint"]["CommunicationStyle"],
        "TentaclePassive"
    );
    assert_script_runs(&server, "still serving");
}

#[test]
fn a_listening_agent_closes_connections_past_its_handshake_limit() {
    let server = Server::start();
    let flooded = server.listening_agent("crowded");
    server.wait_health("crowded", "Healthy");
    let port = listen_port_of(&home_of(&server, "crowded"));
    // Enough descriptors for the handshake limit, not for the flood: the limit keeps it in bounds.
    let pid = flooded.pid();
    limit_fds(pid, open_fds(pid) + 64 + 32);
    let connections = flood(port, 300);
    flooded.wait_for("connections are in their TLS handshake");
    assert!(
        open_fds(pid) <= 64 + 32 + 16,
        "{} descriptors",
        open_fds(pid)
    );
    // A new connection is refused at once, not left hanging.
    let mut extra = TcpStream::connect(("127.0.0.1", port)).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 1];
    let read = std::io::Read::read(&mut extra, &mut byte);
    assert!(
        matches!(read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
        "the connection past the limit was not closed: {read:?}"
    );
    // Discovery (a new TLS connection) works again once the flood ends, and scripts run throughout.
    assert_script_runs(&server, "during the flood");
    drop(connections);
    eventually("the agent to accept again", || {
        let reply = server.get(&format!(
            "/api/Spaces-1/workers/discover?host=127.0.0.1&port={port}&type=TentaclePassive"
        ));
        (reply.status == 200).then_some(())
    });
}

#[test]
fn the_comms_port_out_of_descriptors_backs_off_and_the_api_serves_again() {
    let server = Server::start();
    let pid = server.pid();
    let base = open_fds(pid);

    // Out of descriptors: the comms port's accepts fail; it must wait, not spin.
    limit_fds(pid, base + 8);
    let connections = flood(server.comms_port, 100);
    assert_eq!(connections.len(), 100, "the flood connected");
    eventually("the failed accept in the server's log", || {
        let log = server.stderr.lock().unwrap().clone();
        log.contains("the comms port cannot accept a connection")
            .then_some(())
    });
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(pid) - before;
    // A spinning accept loop burns a core: about 200 ticks (at 100 a second) in 2 seconds.
    assert!(
        spent < 50,
        "the server used {spent} ticks of CPU in 2 seconds out of descriptors"
    );
    drop(connections);
    eventually("the API to answer again", || {
        (server.get("/api").status == 200).then_some(())
    });

    // With descriptors for its handshake limit: a flood past the limit is closed at once, and
    // the API and a polling agent are served during it.
    limit_fds(pid, base + 256 + 64);
    let connections = flood(server.comms_port, 500);
    eventually("the handshake limit in the server's log", || {
        let log = server.stderr.lock().unwrap().clone();
        log.contains("unauthenticated; closing new ones")
            .then_some(())
    });
    assert_eq!(server.get("/api").status, 200);
    assert!(
        open_fds(pid) <= base + 256 + 32,
        "{} descriptors",
        open_fds(pid)
    );
    drop(connections);
    let _poller = server.polling_agent("after-the-flood");
    server.wait_health("after-the-flood", "Healthy");
}

/// Waits, at most `limit`, for a worker of the default space to have a health status.
fn within(server: &Server, limit: Duration, name: &str, status: &str) -> Duration {
    let started = Instant::now();
    loop {
        let workers = server.ok("/api/Spaces-1/workers/all");
        let worker = workers
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["Name"] == name)
            .cloned()
            .unwrap_or(Value::Null);
        if worker["HealthStatus"] == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{name} was not {status} within {limit:?}: {worker}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_restarted_listening_agent_is_healthy_again_within_10_seconds() {
    let server = Server::start();
    let mut phoenix = server.listening_agent("phoenix");
    server.wait_health("phoenix", "Healthy");
    // Long enough for the health loop to look again, see the link open, and plan its next check by
    // the policy's hour.
    std::thread::sleep(Duration::from_secs(7));
    phoenix.kill();
    within(&server, Duration::from_secs(10), "phoenix", "Unavailable");
    // The machine policy checks every hour; the restart must not wait for that.
    let again = Agent::start(&home_of(&server, "phoenix"));
    again.wait_for("is listening on");
    within(&server, Duration::from_secs(10), "phoenix", "Healthy");
    assert_script_runs(&server, "risen");
}

#[test]
fn a_restarted_polling_agent_is_healthy_again_within_10_seconds() {
    let server = Server::start();
    let mut poller = server.polling_agent("returning");
    server.wait_health("returning", "Healthy");
    poller.kill();
    within(&server, Duration::from_secs(10), "returning", "Unavailable");
    let poller = Agent::start(&home_of(&server, "returning"));
    poller.wait_for("is connected to");
    within(&server, Duration::from_secs(10), "returning", "Healthy");
    assert_script_runs(&server, "returned");
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// Waits, at most `limit`, for an agent to print a line containing `needle`.
fn printed_within(agent: &Agent, limit: Duration, needle: &str) {
    let started = Instant::now();
    agent.wait_for(needle);
    assert!(
        started.elapsed() <= limit,
        "the agent printed '{needle}' after {:?}, not within {limit:?}",
        started.elapsed()
    );
}

#[test]
fn a_silent_agent_is_noticed_within_10_seconds() {
    let server = Server::start();
    let poller = server.polling_agent("silent");
    server.wait_health("silent", "Healthy");
    // A stopped process answers no keep-alive ping, as a machine behind a cut network would not;
    // its kernel still holds the connection open, so only the pings can tell.
    signal(poller.pid(), "-STOP");
    let noticed = within(&server, Duration::from_secs(10), "silent", "Unavailable");
    signal(poller.pid(), "-CONT");
    within(&server, Duration::from_secs(10), "silent", "Healthy");
    assert!(
        noticed > Duration::from_secs(1),
        "noticed by the pings, not at once"
    );
}

#[test]
fn a_polling_agent_notices_a_silent_server_and_is_back_within_5_seconds_of_it() {
    let server = Server::start();
    let poller = server.polling_agent("patient");
    server.wait_health("patient", "Healthy");
    signal(server.pid(), "-STOP");
    let stopped = Instant::now();
    printed_within(
        &poller,
        Duration::from_secs(10),
        "the connection to the server ended",
    );
    // Long enough for the agent's dials to fail a few times and its backoff to reach its cap.
    std::thread::sleep(Duration::from_secs(12).saturating_sub(stopped.elapsed()));
    signal(server.pid(), "-CONT");
    printed_within(&poller, Duration::from_secs(5), "is connected to");
    within(&server, Duration::from_secs(10), "patient", "Healthy");
}

/// Runs a command that must end by itself; one still running after `limit` is killed and fails.
#[track_caller]
fn exits_within(command: &mut std::process::Command, limit: Duration) -> std::process::Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_second_agent_on_one_home_is_refused_and_the_first_goes_on() {
    let server = Server::start();
    let first = server.listening_agent("single");
    server.wait_health("single", "Healthy");
    let home = home_of(&server, "single");
    let second = exits_within(
        agent()
            .arg("--home")
            .arg(&home)
            .args(["run", "--listen-address", "127.0.0.1"]),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "the second agent ran: {stderr}");
    assert!(
        stderr.contains("is in use by another muster-agent")
            && stderr.contains(&format!("process {}", first.pid())),
        "the refusal says why and names the first: {stderr}"
    );
    // Replacing the certificate under a running agent is refused; changing its configuration is
    // written, with a warning that the running agent needs a restart to see it.
    let renew = agent()
        .arg("--home")
        .arg(&home)
        .arg("new-certificate")
        .output()
        .unwrap();
    assert!(!renew.status.success());
    assert!(
        String::from_utf8_lossy(&renew.stderr).contains("stop it before replacing"),
        "{}",
        String::from_utf8_lossy(&renew.stderr)
    );
    let configure = agent()
        .arg("--home")
        .arg(&home)
        .args(["configure", "--work-dir"])
        .arg(home.join("scripts"))
        .output()
        .unwrap();
    assert!(configure.status.success());
    assert!(
        String::from_utf8_lossy(&configure.stderr).contains("restart it for this change"),
        "{}",
        String::from_utf8_lossy(&configure.stderr)
    );
    // The first is unaffected.
    assert!(Path::new(&format!("/proc/{}", first.pid())).exists());
    server.wait_health("single", "Healthy");
    assert_script_runs(&server, "only one");
    // Once it stops, the home is free.
    drop(first);
    let again = Agent::start(&home);
    again.wait_for("is listening on");
}

/// A network namespace of this test's own, deleted when dropped.
struct Namespace(String);

impl Namespace {
    /// None when this machine cannot make one (no root, no iproute2, or a sandbox that forbids it).
    fn create(name: &str) -> Option<Namespace> {
        let added = std::process::Command::new("ip")
            .args(["netns", "add", name])
            .output();
        match added {
            Ok(output) if output.status.success() => {}
            Ok(output) => {
                eprintln!(
                    "skipped: cannot create a network namespace ({}); the network cut test needs root and iproute2",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                return None;
            }
            Err(error) => {
                eprintln!(
                    "skipped: cannot run `ip` ({error}); the network cut test needs iproute2"
                );
                return None;
            }
        }
        let namespace = Namespace(name.to_string());
        namespace.run(&["ip", "link", "set", "lo", "up"]);
        Some(namespace)
    }

    /// A command run inside the namespace.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        let mut command = std::process::Command::new("ip");
        command.args(["netns", "exec", &self.0]).arg(program);
        command
    }

    #[track_caller]
    fn run(&self, args: &[&str]) -> String {
        let output = self.command(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            output.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A GET on the server's API inside the namespace.
    fn get(&self, path: &str) -> Value {
        let url = format!("http://127.0.0.1:8080{path}");
        let text = self.run(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-H",
            &format!("X-Octopus-ApiKey: {}", crate::support::KEY),
            &url,
        ]);
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    fn health(&self, name: &str) -> Value {
        let workers = self.get("/api/Spaces-1/workers/all");
        workers
            .as_array()
            .and_then(|all| all.iter().find(|w| w["Name"] == name))
            .map_or(Value::Null, |w| w["HealthStatus"].clone())
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// The server and a polling agent in a namespace of their own, on its loopback, which the test
/// takes down for 12 seconds: both sides notice, and the agent is back within 5 seconds of the
/// network. Skipped, saying so, where a namespace cannot be made.
#[test]
fn a_network_cut_is_noticed_and_healed() {
    let Some(namespace) = Namespace::create(&format!("muster-cut-{}", std::process::id())) else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    // Its own loopback: fixed ports cannot clash with anything outside.
    let mut command = namespace.command(env!("CARGO_BIN_EXE_muster"));
    command
        .args([
            "server",
            "--listen",
            "127.0.0.1:8080",
            "--comms-listen",
            "127.0.0.1:10943",
            "--data-dir",
        ])
        .arg(temp.path().join("data"))
        .env("MUSTER_BOOTSTRAP_API_KEY", crate::support::KEY);
    let server = Agent::spawn(command);
    server.wait_for("listening on http://");

    let agent_path = agent().get_program().to_owned();
    let home = temp.path().join("agent");
    let home_arg = home.to_str().unwrap();
    namespace.run(&[
        agent_path.to_str().unwrap(),
        "--home",
        home_arg,
        "register-worker",
        "--server",
        "http://127.0.0.1:8080",
        "--api-key",
        crate::support::KEY,
        "--name",
        "remote",
        "--worker-pool",
        "Default Worker Pool",
        "--comms-style",
        "TentacleActive",
        "--server-comms-port",
        "10943",
    ]);
    let mut command = namespace.command(&agent_path);
    command.args(["--home", home_arg, "run"]);
    let remote = Agent::spawn(command);
    remote.wait_for("is connected to");
    eventually("the agent to be Healthy", || {
        (namespace.health("remote") == "Healthy").then_some(())
    });

    // The cut: packets go nowhere, and no side is told.
    namespace.run(&["ip", "link", "set", "lo", "down"]);
    let cut = Instant::now();
    printed_within(
        &remote,
        Duration::from_secs(10),
        "the connection to the server ended",
    );
    std::thread::sleep(Duration::from_secs(12).saturating_sub(cut.elapsed()));
    namespace.run(&["ip", "link", "set", "lo", "up"]);
    printed_within(&remote, Duration::from_secs(5), "is connected to");
    eventually("the agent to be Healthy again", || {
        (namespace.health("remote") == "Healthy").then_some(())
    });
    drop(server);
    drop(remote);
}
