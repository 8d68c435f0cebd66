//! A polling agent with a list of comms addresses: it skips one that does not answer, and fails over
//! to the next when its server node dies.

use crate::support::{Agent, KEY, Server, agent, free_port};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Registers a polling agent home whose comms addresses are `addresses`, in order.
fn register(server: &Server, name: &str, addresses: &[String]) -> PathBuf {
    let home = server.dir.join(format!("agent-{name}"));
    let mut command = agent();
    command.arg("--home").arg(&home).args([
        "register-worker",
        "--server",
        &server.url,
        "--api-key",
        KEY,
        "--name",
        name,
        "--worker-pool",
        "Default Worker Pool",
        "--comms-style",
        "TentacleActive",
    ]);
    for address in addresses {
        command.args(["--server-comms-address", address]);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    home
}

fn worker_id(server: &Server, name: &str) -> String {
    let workers = server.ok("/api/Spaces-1/workers/all");
    workers
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["Name"] == name)
        .unwrap_or_else(|| panic!("no worker {name}"))["Id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Runs a script on the named worker and asserts that it succeeded there.
#[track_caller]
fn runs_a_script_on(server: &Server, name: &str) {
    let task = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": "echo ran here", "TargetType": "Workers", "MachineIds": [worker_id(server, name)]}),
    );
    let (task, lines) = server.wait_task(task["Id"].as_str().unwrap());
    assert_eq!(task["State"], "Success", "{task}");
    assert_eq!(task["WorkerName"], name, "{task}");
    assert!(
        lines.iter().any(|l| l["MessageText"] == "ran here"),
        "{lines:?}"
    );
}

fn show_configuration(home: &Path) -> Value {
    let output = agent()
        .arg("--home")
        .arg(home)
        .arg("show-configuration")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("show-configuration prints JSON")
}

#[test]
fn an_agent_skips_a_closed_comms_address_for_the_next() {
    let server = Server::start();
    // Bound and released: nothing listens there.
    let closed = format!("127.0.0.1:{}", free_port());
    let open = format!("127.0.0.1:{}", server.comms_port);
    let home = register(&server, "skipper", &[closed.clone(), open.clone()]);
    let shown = show_configuration(&home);
    assert_eq!(
        shown["ServerCommsAddresses"],
        json!([closed, open]),
        "{shown}"
    );
    assert_eq!(shown["PollingAddresses"], json!([closed, open]), "{shown}");

    let agent = Agent::start(&home);
    let connected = agent.wait_for("is connected to");
    assert!(
        connected.contains(&format!("is connected to {open} as poll://")),
        "{connected}"
    );
    server.wait_health("skipper", "Healthy");
    runs_a_script_on(&server, "skipper");
}

#[test]
fn an_agent_fails_over_to_the_next_address_when_its_server_dies() {
    let temp = tempfile::tempdir().unwrap();
    let server = Server::start_in(temp.path(), &[]).unwrap();
    let first = format!("127.0.0.1:{}", server.comms_port);
    let second = format!("127.0.0.1:{}", free_port());
    let home = register(&server, "mover", &[first.clone(), second.clone()]);
    let agent = Agent::start(&home);
    let connected = agent.wait_for("is connected to");
    assert!(connected.contains(&first), "{connected}");
    server.wait_health("mover", "Healthy");
    runs_a_script_on(&server, "mover");

    // The node dies; another (the same data, as another node on one database) serves the second
    // address. The agent goes to the next address at once, and keeps trying until it answers.
    server.kill();
    agent.wait_for(&format!("the link to {first} closed; trying {second}"));
    let server = Server::start_in(temp.path(), &["--comms-listen", &second]).unwrap();
    let connected = agent.wait_for(&format!("is connected to {second}"));
    assert!(connected.contains("as poll://"), "{connected}");
    server.wait_health("mover", "Healthy");
    runs_a_script_on(&server, "mover");
}

#[test]
fn bad_comms_addresses_are_refused_with_a_reason() {
    let home = tempfile::tempdir().unwrap();
    for (bad, says) in [
        ("muster1.example", "has no port"),
        ("muster1.example:0", "not 0"),
        ("muster1.example:99999", "1 to 65535"),
        (":10943", "has no host"),
        ("https://muster1.example:10943", "is a URL"),
        ("::1:10943", "goes in brackets"),
        ("", "empty"),
    ] {
        for command in [
            &[
                "register-worker",
                "--server",
                "http://127.0.0.1:1",
                "--api-key",
                KEY,
                "--worker-pool",
                "Default Worker Pool",
                "--comms-style",
                "TentacleActive",
            ][..],
            &["configure"][..],
        ] {
            let output = agent()
                .arg("--home")
                .arg(home.path())
                .args(command)
                .args(["--server-comms-address", bad])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{} took '{bad}'", command[0]);
            assert!(
                stderr.contains("--server-comms-address") && stderr.contains(says),
                "{} with '{bad}': {stderr}",
                command[0]
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
    assert!(
        !home.path().join("agent.json").exists(),
        "a refused command writes no configuration"
    );

    // A listening agent is dialled by the server: a comms address makes no sense for it.
    let output = agent()
        .arg("--home")
        .arg(home.path())
        .args([
            "register-worker",
            "--server",
            "http://127.0.0.1:1",
            "--api-key",
            KEY,
            "--worker-pool",
            "Default Worker Pool",
            "--server-comms-address",
            "127.0.0.1:10943",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("TentacleActive"), "{stderr}");

    // Addresses name their ports: a --server-comms-port beside them is refused, not ignored.
    let output = agent()
        .arg("--home")
        .arg(home.path())
        .args([
            "register-worker",
            "--server",
            "http://127.0.0.1:1",
            "--api-key",
            KEY,
            "--comms-style",
            "TentacleActive",
            "--server-comms-port",
            "10943",
            "--server-comms-address",
            "127.0.0.1:10943",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--server-comms-port") && stderr.contains("cannot be used with"),
        "{stderr}"
    );
}
