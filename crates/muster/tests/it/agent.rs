//! `muster-agent`: its certificate, configuration, and registration with a real server.

use crate::support::{KEY, Server, agent};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Output;

fn run(home: &Path, args: &[&str]) -> Output {
    agent()
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("MUSTER_API_KEY")
        .output()
        .expect("muster-agent runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_blogs_bootstrap_commands_run_with_the_binary_renamed() {
    let server = Server::start();
    let home = server.dir.join("agent-home");
    let config_path = server.dir.join("tentacle-default.config");
    // configure-tentacle.sh, line by line, with `Tentacle` replaced by `muster-agent`.
    assert!(
        run(
            &home,
            &[
                "create-instance",
                "--config",
                config_path.to_str().unwrap(),
                "--instance",
                "w1"
            ]
        )
        .status
        .success()
    );
    let created = run(&home, &["new-certificate", "--if-blank"]);
    assert!(created.status.success(), "{}", text(&created));
    let thumbprint = String::from_utf8_lossy(&run(&home, &["show-thumbprint"]).stdout)
        .trim()
        .to_string();
    assert_eq!(thumbprint.len(), 64);
    assert!(text(&created).contains(&thumbprint));
    assert!(
        text(&run(&home, &["new-certificate", "--if-blank"])).contains(&thumbprint),
        "--if-blank keeps the certificate"
    );
    let configured = run(
        &home,
        &[
            "configure",
            "--noListen",
            "True",
            "--reset-trust",
            "--app",
            server.dir.join("apps").to_str().unwrap(),
        ],
    );
    assert!(configured.status.success(), "{}", text(&configured));
    let registered = run(
        &home,
        &[
            "register-worker",
            "--server",
            &server.url,
            "--apiKey",
            KEY,
            "--name",
            "samples-1",
            "--comms-style",
            "TentacleActive",
            "--server-comms-port",
            "10943",
            "--workerPool",
            "Default Worker Pool",
            "--policy",
            "Default Machine Policy",
            "--space",
            "Default",
        ],
    );
    assert!(registered.status.success(), "{}", text(&registered));

    let workers = server.ok("/api/Spaces-1/workers/all");
    assert_eq!(workers.as_array().unwrap().len(), 1);
    let worker = &workers[0];
    assert_eq!(worker["Name"], "samples-1");
    assert_eq!(worker["Endpoint"]["CommunicationStyle"], "TentacleActive");
    assert_eq!(worker["Thumbprint"], thumbprint.as_str());
    assert_eq!(worker["MachinePolicyId"], "MachinePolicies-1");
    let uri = worker["Endpoint"]["Uri"].as_str().unwrap();
    let id = uri
        .strip_prefix("poll://")
        .and_then(|r| r.strip_suffix('/'))
        .unwrap();
    assert_eq!(id.len(), 20);
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    );

    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("agent.json")).unwrap()).unwrap();
    let server_thumbprint =
        server.ok("/api/configuration/certificates/certificate-global")["Thumbprint"].clone();
    assert_eq!(
        config["TrustedThumbprints"],
        json!([server_thumbprint]),
        "registration trusts the server"
    );
    assert!(config["ListenPort"].is_null());
    assert_eq!(config["SubscriptionId"], uri);
}

#[test]
fn registering_twice_needs_force_and_never_duplicates() {
    let server = Server::start();
    let home = server.dir.join("agent-home");
    let args = [
        "register-worker",
        "--server",
        &server.url,
        "--api-key",
        KEY,
        "--name",
        "box",
        "--worker-pool",
        "default-worker-pool",
        "--comms-style",
        "TentaclePassive",
        "--public-hostname",
        "127.0.0.1",
        "--listen-port",
        "10999",
    ];
    assert!(run(&home, &args).status.success());
    let again = run(&home, &args);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again).contains("already registered") && text(&again).contains("--force"),
        "{}",
        text(&again)
    );
    // A second agent on the machine (another home) with the same name: --force would take the
    // first one's worker, so the message suggests --name.
    let other = run(&server.dir.join("other-home"), &args);
    assert_eq!(other.status.code(), Some(1));
    assert!(
        text(&other).contains("for another agent")
            && text(&other).contains("--name NAME")
            && !text(&other).contains("--force"),
        "{}",
        text(&other)
    );
    let pool = server
        .post(
            "/api/Spaces-1/workerpools",
            &json!({"Name": "Second", "WorkerPoolType": "StaticWorkerPool"}),
        )
        .assert_status(201)
        .clone();
    let mut forced = args.to_vec();
    forced.extend(["--force", "--worker-pool", pool["Id"].as_str().unwrap()]);
    let output = run(&home, &forced);
    assert!(output.status.success(), "{}", text(&output));
    let workers = server.ok("/api/Spaces-1/workers/all");
    assert_eq!(
        workers.as_array().unwrap().len(),
        1,
        "--force updates, never duplicates"
    );
    assert_eq!(workers[0]["Endpoint"]["Uri"], "https://127.0.0.1:10999/");
    assert_eq!(workers[0]["WorkerPoolIds"].as_array().unwrap().len(), 2);

    let bad_pool = run(
        &home,
        &[
            "register-worker",
            "--server",
            &server.url,
            "--api-key",
            KEY,
            "--name",
            "x",
            "--worker-pool",
            "Nope",
        ],
    );
    assert!(
        text(&bad_pool).contains("no worker pool named 'Nope'"),
        "{}",
        text(&bad_pool)
    );
    let bad_key = run(
        &home,
        &[
            "register-worker",
            "--server",
            &server.url,
            "--api-key",
            "API-WRONGWRONGWRONGWRONGWRONGW",
            "--name",
            "x",
            "--worker-pool",
            "Second",
        ],
    );
    assert_eq!(bad_key.status.code(), Some(1));
    assert!(text(&bad_key).contains("API key"), "{}", text(&bad_key));

    let removed = run(
        &home,
        &[
            // The server is the one the agent registered with.
            "deregister-worker",
            "--apiKey",
            KEY,
        ],
    );
    assert!(removed.status.success(), "{}", text(&removed));
    assert!(text(&removed).contains("box"));
    assert_eq!(
        server
            .ok("/api/Spaces-1/workers/all")
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn configure_checks_what_it_is_given() {
    let temp = tempfile::tempdir().unwrap();
    let home = temp.path().join("home");
    let bad = run(&home, &["configure", "--trust", "xyz"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad).starts_with("error: --trust takes a thumbprint"),
        "{}",
        text(&bad)
    );
    let good = run(
        &home,
        &[
            "configure",
            "--trust",
            &"ab".repeat(32),
            "--listen-port",
            "10950",
        ],
    );
    assert!(good.status.success(), "{}", text(&good));
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("agent.json")).unwrap()).unwrap();
    assert_eq!(config["ListenPort"], 10950);
    assert_eq!(config["TrustedThumbprints"], json!(["AB".repeat(32)]));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&home).unwrap().permissions().mode() & 0o777,
        0o700,
        "the home holds a private key"
    );
}

#[test]
fn a_deleted_workers_agent_says_why_it_was_refused_and_backs_off() {
    let server = Server::start();
    let mut doomed = server.polling_agent("doomed");
    let worker = server.wait_health("doomed", "Healthy");
    server
        .delete(&format!(
            "/api/Spaces-1/workers/{}",
            worker["Id"].as_str().unwrap()
        ))
        .assert_status(200);
    // The server closes the running agent's link (no task runs on it); it dials again and is
    // refused, with the reason.
    let again = &mut doomed;
    let refused = again.wait_for("refused this agent");
    assert!(
        refused.contains("this worker was deleted from the server")
            && refused.contains("muster-agent register-worker"),
        "{refused}"
    );
    let lines = again.lines_for(std::time::Duration::from_secs(5));
    assert!(
        !lines.iter().any(|l| l.contains("is connected")),
        "never connected: {lines:?}"
    );
    let dials = lines.iter().filter(|l| l.contains("refused")).count();
    assert!(
        (1..=3).contains(&dials),
        "backs off (1 s, 2 s, 4 s, … up to a minute): {lines:?}"
    );
}

#[test]
fn show_thumbprint_creates_no_home() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("never-made");
    let shown = run(&home, &["show-thumbprint"]);
    assert_eq!(shown.status.code(), Some(1));
    assert!(text(&shown).contains("new-certificate"), "{}", text(&shown));
    assert!(!home.exists(), "showing created nothing");
    let unregistered = run(&home, &["deregister-worker", "--api-key", "API-X"]);
    assert_eq!(unregistered.status.code(), Some(1));
    assert!(
        text(&unregistered).contains("--server"),
        "{}",
        text(&unregistered)
    );
}

/// A dynamic worker's instance: the worker record and its certificate exist first (the server
/// makes them before the machine), and the instance is given that identity in its environment,
/// with no API key. `muster-agent run` takes it, links, and runs the worker's scripts; a missing
/// or malformed variable is refused with its name.
#[test]
fn a_dynamic_workers_instance_runs_from_the_identity_in_its_environment() {
    let server = Server::start();
    let identity = muster_proto::Identity::generate("Muster Agent").unwrap();
    let subscription = "poll://instanceabcdefghij01/";
    let worker = server
        .post(
            "/api/Spaces-1/workers",
            &json!({"Name": "instance-1", "WorkerPoolIds": [server.default_pool()],
                "Endpoint": {"CommunicationStyle": "TentacleActive", "Uri": subscription,
                    "Thumbprint": identity.thumbprint()}}),
        )
        .assert_status(201)
        .clone();
    let server_thumbprint = server.ok("/api/certificates/certificate-global")["Thumbprint"]
        .as_str()
        .unwrap()
        .to_string();
    let home = server.dir.join("instance-1");
    let environment = |command: &mut std::process::Command| {
        command
            .env("MUSTER_AGENT_CERTIFICATE", &identity.cert_pem)
            .env("MUSTER_AGENT_KEY", identity.key_pem())
            .env("MUSTER_SERVER_THUMBPRINT", &server_thumbprint)
            .env("MUSTER_SUBSCRIPTION", subscription)
            .env(
                "MUSTER_SERVER_COMMS_ADDRESSES",
                format!("127.0.0.1:{}", server.comms_port),
            );
    };

    // Each variable is checked before anything runs.
    let mut missing = agent();
    environment(&mut missing);
    missing
        .env_remove("MUSTER_AGENT_KEY")
        .arg("--home")
        .arg(&home)
        .arg("run");
    let refused = missing.output().unwrap();
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("MUSTER_AGENT_KEY is missing"),
        "{}",
        text(&refused)
    );
    let mut garbled = agent();
    environment(&mut garbled);
    garbled
        .env("MUSTER_AGENT_CERTIFICATE", "not a certificate")
        .arg("--home")
        .arg(&home)
        .arg("run");
    let refused = garbled.output().unwrap();
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("MUSTER_AGENT_CERTIFICATE"),
        "{}",
        text(&refused)
    );

    let mut command = agent();
    environment(&mut command);
    command
        .arg("--home")
        .arg(&home)
        .args(["run", "--listen-address", "127.0.0.1"]);
    let running = crate::support::Agent::spawn(command);
    running.wait_for("is connected to");
    server.wait_health("instance-1", "Healthy");
    let task = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": "echo from the instance", "TargetType": "Workers", "MachineIds": [worker["Id"]]}),
    );
    let (done, lines) = server.wait_task(task["Id"].as_str().unwrap());
    assert_eq!(done["State"], "Success", "{done}");
    assert!(
        lines
            .iter()
            .any(|l| l["MessageText"] == "from the instance")
    );
    assert!(
        !std::fs::read_to_string(home.join("agent.json"))
            .unwrap()
            .contains(KEY),
        "no API key reaches the instance"
    );
}

#[test]
fn a_pinned_server_thumbprint_is_checked_before_registering() {
    let server = Server::start();
    // The server prints its thumbprint at start, for the operator to pin.
    let printed = server
        .banner
        .iter()
        .find_map(|l| l.split("certificate thumbprint: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the banner names the server's thumbprint")
        .to_string();
    let register = |home: &str, pin: &str| {
        run(
            &server.dir.join(home),
            &[
                "register-worker",
                "--server",
                &server.url,
                "--api-key",
                KEY,
                "--name",
                home,
                "--worker-pool",
                "default-worker-pool",
                "--comms-style",
                "TentacleActive",
                "--server-thumbprint",
                pin,
            ],
        )
    };
    let wrong = register("wrong", &"AB".repeat(32));
    assert_eq!(wrong.status.code(), Some(1), "{}", text(&wrong));
    assert!(
        text(&wrong).contains(&format!("reports certificate {printed}"))
            && text(&wrong).contains("refusing to register"),
        "{}",
        text(&wrong)
    );
    let malformed = register("malformed", "not-a-thumbprint");
    assert!(
        text(&malformed).contains("64 hexadecimal characters"),
        "{}",
        text(&malformed)
    );
    let workers = server.ok("/api/Spaces-1/workers/all");
    assert_eq!(
        workers.as_array().unwrap().len(),
        0,
        "nothing was registered"
    );
    // Pinned right (in lower case, with colons, as some tools print it), it registers.
    let colons: Vec<String> = printed
        .to_ascii_lowercase()
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let right = register("right", &colons.join(":"));
    assert!(right.status.success(), "{}", text(&right));
    let config = run(&server.dir.join("right"), &["show-configuration"]);
    assert!(text(&config).contains(&printed), "{}", text(&config));
}
