//! Real agent processes on loopback: polling and listening, scripts pushed to them, failures, and
//! every security refusal.

use crate::support::{Agent, KEY, Server, agent, eventually, free_port, muster};
use serde_json::{Value, json};

fn id(task: &Value) -> String {
    task["Id"].as_str().unwrap().to_string()
}

#[test]
fn polling_and_listening_agents_run_the_pools_scripts() {
    let server = Server::start();
    let _poller = server.polling_agent("poller");
    let _listener = server.listening_agent("listener");
    let poller = server.wait_health("poller", "Healthy");
    assert_eq!(poller["Status"], "Online");
    assert_eq!(poller["OperatingSystem"], "linux");
    server.wait_health("listener", "Healthy");

    // Two tasks at once go to different workers: fewest running tasks first.
    let release = server.dir.join("release");
    let script = format!(
        "echo \"started on $(pwd)\"\nwhile [ ! -f '{}' ]; do sleep 0.02; done\necho done >&2",
        release.display()
    );
    let first = server.run_script("Spaces-1", json!({"ScriptBody": script}));
    server.follow(&id(&first), |kind, data| {
        !(kind == "line" && data["MessageText"].as_str().unwrap().starts_with("started"))
    });
    let second = server.run_script("Spaces-1", json!({"ScriptBody": script}));
    server.follow(&id(&second), |kind, data| {
        !(kind == "line" && data["MessageText"].as_str().unwrap().starts_with("started"))
    });
    std::fs::write(&release, "go").unwrap();
    let (first, first_lines) = server.wait_task(&id(&first));
    let (second, _) = server.wait_task(&id(&second));
    assert_eq!(first["State"], "Success", "{first}");
    assert_eq!(second["State"], "Success", "{second}");
    let mut names = vec![
        first["WorkerName"].as_str().unwrap(),
        second["WorkerName"].as_str().unwrap(),
    ];
    names.sort();
    assert_eq!(
        names,
        vec!["listener", "poller"],
        "each worker took one task, none ran on the built-in worker"
    );
    let texts: Vec<&str> = first_lines
        .iter()
        .map(|l| l["MessageText"].as_str().unwrap())
        .collect();
    assert!(
        texts[0].starts_with("Running on worker "),
        "the log names the worker: {texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("/agent-")),
        "the script ran in the agent's working directory: {texts:?}"
    );
    let done = first_lines
        .iter()
        .find(|l| l["MessageText"] == "done")
        .unwrap();
    assert_eq!(
        done["Category"], "Error",
        "stderr stays marked over the wire"
    );

    let cli = muster()
        .args([
            "script",
            "run",
            "--pool",
            "Default Worker Pool",
            "--",
            "echo $MUSTER_TASK_ID",
        ])
        .env("MUSTER_SERVER", &server.url)
        .env("MUSTER_API_KEY", KEY)
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let task_id = String::from_utf8_lossy(&cli.stdout).trim().to_string();
    let task = server.ok(&format!("/api/tasks/{task_id}"));
    assert_ne!(task["WorkerName"], "Built-in worker");

    // A canceled script on an agent ends Canceled.
    let long = server.run_script("Spaces-1", json!({"ScriptBody": "echo started\nsleep 30"}));
    server.follow(&id(&long), |kind, data| {
        !(kind == "line" && data["MessageText"] == "started")
    });
    server
        .post(&format!("/api/tasks/{}/cancel", id(&long)), &json!({}))
        .assert_status(200);
    assert_eq!(server.wait_task(&id(&long)).0["State"], "Canceled");
}

#[test]
fn a_killed_agent_fails_its_task_and_turns_unavailable() {
    let server = Server::start();
    server
        .put(
            "/api/Spaces-1/machinepolicies/MachinePolicies-1",
            &json!({"ConnectionConnectTimeout": "00:00:02"}),
        )
        .assert_status(200);
    let mut poller = server.polling_agent("doomed");
    server.wait_health("doomed", "Healthy");
    let task = server.run_script("Spaces-1", json!({"ScriptBody": "echo started\nsleep 5"}));
    server.follow(&id(&task), |kind, data| {
        !(kind == "line" && data["MessageText"] == "started")
    });
    poller.kill();
    let (done, _) = server.wait_task(&id(&task));
    assert_eq!(done["State"], "Failed");
    let message = done["ErrorMessage"].as_str().unwrap();
    assert!(
        message.contains("worker doomed"),
        "the message names the worker: {message}"
    );
    let worker = server.wait_health("doomed", "Unavailable");
    let summary = worker["StatusSummary"].as_str().unwrap();
    assert!(
        summary.contains("connection closed"),
        "the worker says why it is Unavailable: {summary}"
    );
    // With its only worker gone, the pool's next task waits and says why.
    let next = server.run_script("Spaces-1", json!({"ScriptBody": "true"}));
    let reason = eventually("a queue reason", || {
        let task = server.ok(&format!("/api/tasks/{}", id(&next)));
        task["QueueReason"].as_str().map(str::to_string)
    });
    assert!(
        reason.contains(
            "No worker of pool 'Default Worker Pool' can take it now: doomed is Unavailable"
        ),
        "{reason}"
    );
}

#[test]
fn the_comms_port_refuses_unknown_certificates_and_old_tls_and_answers_probes() {
    let server = Server::start();
    let _known = server.polling_agent("known");
    let subscription = server.ok("/api/Spaces-1/workers/all")[0]["Endpoint"]["Uri"]
        .as_str()
        .unwrap()
        .to_string();
    let server_thumbprint =
        server.ok("/api/configuration/certificates/certificate-global")["Thumbprint"]
            .as_str()
            .unwrap()
            .to_string();

    // Another certificate claiming the same subscription id is refused, and the refusal is logged.
    let impostor = server.dir.join("impostor");
    assert!(
        agent()
            .arg("--home")
            .arg(&impostor)
            .args(["configure", "--noListen", "--trust", &server_thumbprint])
            .status()
            .unwrap()
            .success()
    );
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(impostor.join("agent.json")).unwrap())
            .unwrap();
    config["Server"] = json!(server.url);
    config["ServerCommsPort"] = json!(server.comms_port);
    config["SubscriptionId"] = json!(subscription);
    std::fs::write(impostor.join("agent.json"), config.to_string()).unwrap();
    let _impostor = Agent::start(&impostor);
    eventually("the refusal in the server's log", || {
        let log = server.stderr.lock().unwrap().clone();
        (log.contains("refused a connection on the comms port")
            && log.contains("is not registered for subscription"))
        .then_some(())
    });

    // A plain HTTPS request gets a 200, as Octopus's Halibut port answers Tentacle's probe.
    let probe = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let reply = probe
        .post(format!("https://127.0.0.1:{}/handshake", server.comms_port))
        .send()
        .unwrap();
    assert_eq!(reply.status().as_u16(), 200);

    // Only TLS 1.3.
    let old = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-tls1_2",
            "-connect",
            &format!("127.0.0.1:{}", server.comms_port),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        !old.status.success(),
        "a TLS 1.2 handshake must fail: {}",
        String::from_utf8_lossy(&old.stdout)
    );
    let new = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-tls1_3",
            "-connect",
            &format!("127.0.0.1:{}", server.comms_port),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&new.stdout).contains("TLSv1.3"),
        "{}",
        String::from_utf8_lossy(&new.stdout)
    );
}

#[test]
fn a_listening_agent_refuses_a_server_it_does_not_trust() {
    let server = Server::start();
    let home = server.dir.join("wary");
    let port = free_port();
    let configured = agent()
        .arg("--home")
        .arg(&home)
        .args([
            "configure",
            "--listen-port",
            &port.to_string(),
            "--trust",
            &"0".repeat(64),
        ])
        .output()
        .unwrap();
    assert!(configured.status.success());
    let thumbprint = String::from_utf8_lossy(
        &agent()
            .arg("--home")
            .arg(&home)
            .args(["new-certificate", "--if-blank"])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_string();
    assert!(!thumbprint.is_empty());
    let thumbprint = String::from_utf8_lossy(
        &agent()
            .arg("--home")
            .arg(&home)
            .arg("show-thumbprint")
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_string();
    let wary = Agent::start(&home);
    wary.wait_for("is listening on");
    // Discovery reads the thumbprint the agent presents, as the portal's "add worker" does.
    let discovered = server.ok(&format!(
        "/api/Spaces-1/workers/discover?host=127.0.0.1&port={port}&type=TentaclePassive"
    ));
    assert_eq!(discovered["Endpoint"]["Thumbprint"], thumbprint.as_str());
    server
        .get("/api/Spaces-1/workers/discover?host=127.0.0.1&port=1")
        .assert_error(400);
    server
        .get("/api/Spaces-1/workers/discover")
        .assert_error(400);
    let endpoint = json!({"CommunicationStyle": "TentaclePassive", "Uri": format!("https://127.0.0.1:{port}/"), "Thumbprint": thumbprint});
    server
        .post(
            "/api/Spaces-1/workers",
            &json!({"Name": "wary", "Endpoint": endpoint, "WorkerPoolIds": ["WorkerPools-1"]}),
        )
        .assert_status(201);
    wary.wait_for("refused a connection");
    let worker = server.wait_health("wary", "Unavailable");
    assert_ne!(worker["StatusSummary"], "", "the summary says why");
    // The server pins the agent too: an endpoint naming a live agent with another thumbprint fails.
    let _other = server.listening_agent("other");
    let other = server.wait_health("other", "Healthy");
    let endpoint = json!({"CommunicationStyle": "TentaclePassive", "Uri": other["Uri"], "Thumbprint": "AB".repeat(32)});
    server
        .post(
            "/api/Spaces-1/workers",
            &json!({"Name": "mispinned", "Endpoint": endpoint, "WorkerPoolIds": ["WorkerPools-1"]}),
        )
        .assert_status(201);
    let mispinned = server.wait_health("mispinned", "Unavailable");
    assert!(
        mispinned["StatusSummary"]
            .as_str()
            .unwrap()
            .contains("TLS handshake failed"),
        "{}",
        mispinned["StatusSummary"]
    );
}

/// The lines `line 1` to `line N` appear once each, in order, among a task's log lines.
fn assert_whole_log(lines: &[Value], n: usize) {
    let numbered: Vec<&str> = lines
        .iter()
        .map(|l| l["MessageText"].as_str().unwrap())
        .filter(|t| t.starts_with("line "))
        .collect();
    let expected: Vec<String> = (1..=n).map(|i| format!("line {i}")).collect();
    assert_eq!(numbered.len(), n, "no line lost or repeated");
    assert!(
        numbered.iter().zip(&expected).all(|(a, b)| a == b),
        "lines in order"
    );
}

#[test]
fn a_restarted_server_reattaches_to_scripts_its_agents_kept_running() {
    let temp = tempfile::tempdir().unwrap();
    let server = Server::start_in(temp.path(), &[]).unwrap();
    let comms = format!("127.0.0.1:{}", server.comms_port);
    let _poller = server.polling_agent("poller");
    let _listener = server.listening_agent("listener");
    server.wait_health("poller", "Healthy");
    server.wait_health("listener", "Healthy");
    let worker_id = |server: &Server, name: &str| {
        server
            .ok("/api/Spaces-1/workers/all")
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["Name"] == name)
            .unwrap()["Id"]
            .clone()
    };
    // Five lines, then a wait for a file, then 3,000 lines: many log batches around the restart.
    let release = temp.path().join("release");
    let script = format!(
        "for i in 1 2 3 4 5; do echo \"line $i\"; done\n\
         while [ ! -f '{}' ]; do sleep 0.02; done\n\
         for i in $(seq 6 3000); do echo \"line $i\"; done",
        release.display()
    );
    let mut tasks = Vec::new();
    for name in ["poller", "listener"] {
        let task = server.run_script(
            "Spaces-1",
            json!({"ScriptBody": script, "TargetType": "Workers", "MachineIds": [worker_id(&server, name)]}),
        );
        server.follow(&id(&task), |kind, data| {
            !(kind == "line" && data["MessageText"] == "line 5")
        });
        tasks.push(id(&task));
    }

    // A crash: the scripts finish while no server is there to hear them.
    server.kill();
    std::fs::write(&release, "go").unwrap();
    let server = Server::start_in(temp.path(), &["--comms-listen", &comms]).unwrap();
    for (task_id, name) in tasks.iter().zip(["poller", "listener"]) {
        let (task, lines) = server.wait_task(task_id);
        assert_eq!(task["State"], "Success", "{task}");
        assert_eq!(task["WorkerName"], name);
        assert_whole_log(&lines, 3000);
        let texts: Vec<&str> = lines
            .iter()
            .map(|l| l["MessageText"].as_str().unwrap())
            .collect();
        assert!(
            texts
                .iter()
                .any(|t| t.contains("re-attaching to the script")),
            "the log says the server re-attached: {texts:?}"
        );
    }

    // A clean stop leaves a running script running; the next start follows it to its end.
    std::fs::remove_file(&release).unwrap();
    let task = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": script, "TargetType": "Workers", "MachineIds": [worker_id(&server, "poller")]}),
    );
    server.follow(&id(&task), |kind, data| {
        !(kind == "line" && data["MessageText"] == "line 5")
    });
    assert!(server.stop().success());
    let server = Server::start_in(temp.path(), &["--comms-listen", &comms]).unwrap();
    let stored = server.ok(&format!("/api/tasks/{}", id(&task)));
    assert!(
        stored["State"] == "Executing",
        "still running after the restart: {stored}"
    );
    std::fs::write(&release, "go").unwrap();
    let (task, lines) = server.wait_task(&id(&task));
    assert_eq!(task["State"], "Success", "{task}");
    assert_whole_log(&lines, 3000);
    let raw = server.get(&format!("/api/tasks/{}/raw", id(&task))).text;
    assert!(raw.contains("keeps running on worker poller"), "{raw}");

    // A task being canceled when the server died is canceled on the agent after the restart.
    std::fs::remove_file(&release).unwrap();
    let task = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": script, "TargetType": "Workers", "MachineIds": [worker_id(&server, "listener")]}),
    );
    server.follow(&id(&task), |kind, data| {
        !(kind == "line" && data["MessageText"] == "line 5")
    });
    assert!(server.stop().success());
    // Mark it Cancelling as a cancel that raced the crash would have left it.
    let db = temp.path().join("muster.db");
    let num = id(&task).trim_start_matches("ServerTasks-").to_string();
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"UPDATE tasks SET state='Cancelling' WHERE num=?\", (int(sys.argv[2]),)); c.commit()",
        ])
        .arg(&db)
        .arg(&num)
        .status()
        .unwrap();
    assert!(status.success());
    let server = Server::start_in(temp.path(), &["--comms-listen", &comms]).unwrap();
    let (task, _) = server.wait_task(&id(&task));
    assert_eq!(task["State"], "Canceled", "{task}");
}

#[test]
fn health_tasks_run_beside_a_full_task_cap_and_name_the_unhealthy_workers() {
    let server = Server::start_with(&["--task-cap", "1"]);
    let _poller = server.polling_agent("poller");
    let _listener = server.listening_agent("listener");
    server.wait_health("poller", "Healthy");
    server.wait_health("listener", "Healthy");
    let pool = server.default_pool();
    // A worker whose agent is gone: nothing listens on its port.
    let ghost = server
        .post(
            "/api/Spaces-1/workers",
            &json!({"Name": "ghost", "WorkerPoolIds": [pool], "Endpoint": {
                "CommunicationStyle": "TentaclePassive",
                "Uri": format!("https://127.0.0.1:{}/", free_port()),
                "Thumbprint": "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF"}}),
        )
        .assert_status(201)
        .clone();
    let worker_ids: Vec<Value> = ["poller", "listener"]
        .iter()
        .map(|name| {
            server
                .ok("/api/Spaces-1/workers/all")
                .as_array()
                .unwrap()
                .iter()
                .find(|w| w["Name"] == *name)
                .unwrap()["Id"]
                .clone()
        })
        .collect();

    // The only task-cap slot is taken by a script that waits.
    let release = server.dir.join("release");
    let blocker = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": format!("echo waiting\nwhile [ ! -f '{}' ]; do sleep 0.02; done", release.display()),
               "TargetType": "Workers", "MachineIds": [worker_ids[0]]}),
    );
    server.follow(&id(&blocker), |kind, data| {
        !(kind == "line" && data["MessageText"] == "waiting")
    });

    let task = server
        .post(
            "/api/Spaces-1/tasks",
            &json!({"Name": "Health", "Arguments": {"WorkerpoolId": pool}}),
        )
        .assert_status(201)
        .clone();
    assert_eq!(task["Description"], "Check health");
    let (task, lines) = server.wait_task(&id(&task));
    assert_eq!(task["State"], "Failed", "{task}");
    assert!(
        task["ErrorMessage"]
            .as_str()
            .unwrap()
            .contains("1 of 3 workers are not healthy: ghost (Unavailable)"),
        "{task}"
    );
    let texts: Vec<&str> = lines
        .iter()
        .map(|l| l["MessageText"].as_str().unwrap())
        .collect();
    for expected in ["poller: Healthy", "listener: Healthy", "ghost: Unavailable"] {
        assert!(
            texts.iter().any(|t| t.starts_with(expected)),
            "{expected} in {texts:?}"
        );
    }
    let blocker_now = server.ok(&format!("/api/tasks/{}", id(&blocker)));
    assert_eq!(
        blocker_now["State"], "Executing",
        "the health check ran while the script held the only slot"
    );

    let named = server
        .post(
            "/api/Spaces-1/tasks",
            &json!({"Name": "health", "Arguments": {"MachineIds": worker_ids, "MachineTimeout": "00:00:30"}}),
        )
        .assert_status(201)
        .clone();
    assert_eq!(server.wait_task(&id(&named)).0["State"], "Success");

    // Bad arguments are refused before anything is queued.
    for arguments in [
        json!({"WorkerpoolId": "WorkerPools-999"}),
        json!({"MachineIds": ["Workers-999"]}),
        json!({"MachineTimeout": "soon"}),
        json!({"MachineTimeout": "00:00:00"}),
        json!({"WorkerpoolId": 7}),
    ] {
        server
            .post(
                "/api/Spaces-1/tasks",
                &json!({"Name": "Health", "Arguments": arguments}),
            )
            .assert_error(400);
    }

    // The CLI runs the same check, prints each worker's result and exits by it.
    let cli = |args: &[&str]| {
        muster()
            .args(["worker", "health"])
            .args(args)
            .env("MUSTER_SERVER", &server.url)
            .env("MUSTER_API_KEY", KEY)
            .output()
            .unwrap()
    };
    let all = cli(&["--pool", "Default Worker Pool"]);
    // Error lines (the unhealthy workers) go to stderr, as a script's do.
    let stdout = format!(
        "{}{}",
        String::from_utf8_lossy(&all.stdout),
        String::from_utf8_lossy(&all.stderr)
    );
    assert_eq!(all.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("ghost: Unavailable"), "{stdout}");
    assert!(stdout.contains("poller: Healthy"), "{stdout}");
    let healthy = cli(&["--worker", "poller", "--worker", "listener"]);
    assert!(
        healthy.status.success(),
        "{}{}",
        String::from_utf8_lossy(&healthy.stdout),
        String::from_utf8_lossy(&healthy.stderr)
    );
    std::fs::write(&release, "go").unwrap();
    assert_eq!(server.wait_task(&id(&blocker)).0["State"], "Success");

    // A policy that deletes unavailable workers deletes the ghost and keeps the healthy agents.
    let policy = server
        .post(
            "/api/Spaces-1/machinepolicies",
            &json!({"Name": "Clean up", "MachineHealthCheckPolicy": {"HealthCheckInterval": "00:00:01"},
                    "MachineCleanupPolicy": {"DeleteMachinesBehavior": "DeleteUnavailableMachines",
                                             "DeleteMachinesElapsedTimeSpan": "00:00:02"}}),
        )
        .assert_status(201)
        .clone();
    for worker in [&ghost["Id"], &worker_ids[0]] {
        let mut body = server.ok(&format!(
            "/api/Spaces-1/workers/{}",
            worker.as_str().unwrap()
        ));
        body["MachinePolicyId"] = policy["Id"].clone();
        server
            .put(
                &format!("/api/Spaces-1/workers/{}", worker.as_str().unwrap()),
                &body,
            )
            .assert_status(200);
    }
    eventually("the unavailable worker to be deleted", || {
        (server
            .get(&format!(
                "/api/Spaces-1/workers/{}",
                ghost["Id"].as_str().unwrap()
            ))
            .status
            == 404)
            .then_some(())
    });
    server
        .get(&format!(
            "/api/Spaces-1/workers/{}",
            worker_ids[0].as_str().unwrap()
        ))
        .assert_status(200);
}
