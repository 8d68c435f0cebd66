//! The seed blog's "Get Space List" and "Add workers to remaining spaces" calls, made the way its
//! PowerShell makes them: `?skip=N` paging that stops when a page is shorter than ItemsPerPage, mixed
//! route casing, and a JSON body sent without a JSON content type.

use crate::support::{Agent, KEY, Server, agent, muster};
use serde_json::{Value, json};

/// The blog's Get-OctopusItems: follows `?skip=N` until a page is shorter than ItemsPerPage.
fn get_octopus_items(server: &Server, uri: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut skip = 0;
    loop {
        let separator = if uri.contains('?') { '&' } else { '?' };
        let page = server.ok(&format!("{uri}{separator}skip={skip}"));
        let batch = page["Items"].as_array().expect("a collection").clone();
        let per_page = page["ItemsPerPage"].as_u64().unwrap() as usize;
        let full = !batch.is_empty() && batch.len() == per_page;
        items.extend(batch);
        if !full {
            return items;
        }
        skip += per_page;
    }
}

#[test]
fn the_blogs_space_list_and_add_workers_steps_work_unchanged() {
    let server = Server::start();
    let pool_name = "Linux Worker Pool TF";
    for i in 0..34 {
        let space = server
            .post("/api/spaces", &json!({"Name": format!("Samples {i:02}")}))
            .assert_status(201)
            .clone();
        if i % 3 == 0 {
            let path = format!("/api/{}/workerpools", space["Id"].as_str().unwrap());
            server
                .post(
                    &path,
                    &json!({"Name": pool_name, "WorkerPoolType": "StaticWorkerPool"}),
                )
                .assert_status(201);
        }
    }

    // Get Space List
    let spaces = get_octopus_items(&server, "/api/spaces");
    assert_eq!(
        spaces.len(),
        35,
        "the skip loop reaches every space past the first page of 30"
    );
    let mut with_pool = Vec::new();
    for space in &spaces {
        let pools = get_octopus_items(
            &server,
            &format!("/api/{}/workerPools", space["Id"].as_str().unwrap()),
        );
        if pools.iter().any(|p| p["Name"] == pool_name) {
            with_pool.push(space["Id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(with_pool.len(), 12);
    let (initial, remaining) = with_pool.split_first().unwrap();

    // Wait for workers to register: a worker registered in the initial space's pool.
    let initial_pool = server
        .ok(&format!("/api/{initial}/workerpools/all"))
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["Name"] == pool_name)
        .unwrap()
        .clone();
    let endpoint = json!({"CommunicationStyle": "TentacleActive", "Uri": "poll://samplesworker0000001/", "Thumbprint": "C0FFEE".repeat(11).chars().take(64).collect::<String>()});
    let registered = json!({"Name": "samples-worker-1", "Endpoint": endpoint, "WorkerPoolIds": [initial_pool["Id"]], "MachinePolicyId": null});
    server
        .post(&format!("/api/{initial}/workers"), &registered)
        .assert_status(201);
    let workers = server.ok(&format!(
        "/api/{initial}/workerpools/{}/workers",
        initial_pool["Id"].as_str().unwrap()
    ));
    assert_eq!(workers["Items"].as_array().unwrap().len(), 1);

    // Add workers to remaining spaces
    let workers = get_octopus_items(
        &server,
        &format!(
            "/api/{initial}/workerPools/{}/workers",
            initial_pool["Id"].as_str().unwrap()
        ),
    );
    for space_id in remaining {
        let pool = get_octopus_items(&server, &format!("/api/{space_id}/workerPools"))
            .into_iter()
            .find(|p| p["Name"] == pool_name)
            .unwrap();
        let policy = get_octopus_items(&server, &format!("/api/{space_id}/machinepolicies"))
            .into_iter()
            .find(|p| p["Name"] == "Default Machine Policy")
            .unwrap();
        for worker in &workers {
            let payload = json!({
                "Name": worker["Name"],
                "MachinePolicyId": policy["Id"],
                "IsDisabled": worker["IsDisabled"],
                "HealthStatus": worker["HealthStatus"],
                "HasLatestCalamari": worker["HasLatestCalamari"],
                "IsInProcess": true,
                "EndPoint": worker["Endpoint"],
                "WorkerPoolIds": [pool["Id"]],
            });
            // Invoke-RestMethod -Method Post -Body $json sends form-urlencoded.
            let reply = server.post_raw(
                &format!("/api/{space_id}/workers"),
                &payload.to_string(),
                "application/x-www-form-urlencoded",
            );
            let created = reply.assert_status(201);
            assert_eq!(created["Endpoint"]["Uri"], "poll://samplesworker0000001/");
            assert_eq!(created["SpaceId"], space_id.as_str());
            assert_eq!(
                created["IsInProcess"], false,
                "read-only fields are ignored"
            );
        }
    }
    for space_id in remaining {
        let listed = server.ok(&format!("/api/{space_id}/workers/all"));
        assert_eq!(listed[0]["Name"], "samples-worker-1");
    }
}

/// The blog end to end: four spaces with a "Linux Worker Pool TF", three polling agents registered into
/// the first space as configure-tentacle.sh does it, `muster worker wait` for them, shared into two
/// spaces with the CLI and into the last with the blog's raw REST call made by curl, then tasks queued
/// in every space run on the three agents, and a space's user cannot read another space's logs.
#[test]
fn the_blogs_shared_workers_run_every_spaces_tasks() {
    let server = Server::start();
    let pool_name = "Linux Worker Pool TF";
    let mut spaces = vec!["Spaces-1".to_string()];
    for name in ["Samples 2", "Samples 3", "Samples 4"] {
        let space = server
            .post("/api/spaces", &json!({"Name": name}))
            .assert_status(201)
            .clone();
        spaces.push(space["Id"].as_str().unwrap().to_string());
    }
    let mut pools = Vec::new();
    for space in &spaces {
        let pool = server
            .post(
                &format!("/api/{space}/workerpools"),
                &json!({"Name": pool_name, "WorkerPoolType": "StaticWorkerPool"}),
            )
            .assert_status(201)
            .clone();
        pools.push(pool["Id"].as_str().unwrap().to_string());
    }

    // Create workers: each registers itself into the initial space, as configure-tentacle.sh does.
    let port = server.comms_port.to_string();
    let mut agents: Vec<Agent> = Vec::new();
    for n in 1..=3 {
        let home = server.dir.join(format!("agent-samples-{n}"));
        let name = format!("samples-worker-{n}");
        let configure = agent()
            .arg("--home")
            .arg(&home)
            .args(["configure", "--noListen", "True"])
            .output()
            .unwrap();
        assert!(configure.status.success());
        let output = agent()
            .arg("--home")
            .arg(&home)
            .args([
                "register-worker",
                "--server",
                &server.url,
                "--apiKey",
                KEY,
                "--name",
                &name,
                "--space",
                "Default",
                "--comms-style",
                "TentacleActive",
                "--server-comms-port",
                &port,
                "--workerpool",
                pool_name,
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        agents.push(Agent::start(&home));
    }

    // Wait for workers to register themselves.
    let cli = |args: &[&str]| {
        muster()
            .args(args)
            .env("MUSTER_SERVER", &server.url)
            .env("MUSTER_API_KEY", KEY)
            .output()
            .unwrap()
    };
    let waited = cli(&[
        "worker",
        "wait",
        "--pool",
        pool_name,
        "--count",
        "3",
        "--timeout",
        "60s",
    ]);
    assert_eq!(
        waited.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );
    let too_many = cli(&[
        "worker",
        "wait",
        "--pool",
        pool_name,
        "--count",
        "4",
        "--timeout",
        "2s",
    ]);
    assert_eq!(
        too_many.status.code(),
        Some(124),
        "a real timeout and exit code"
    );

    // Add workers to remaining spaces: two with the CLI (twice: it is idempotent)...
    for _ in 0..2 {
        let shared = cli(&[
            "worker",
            "share",
            "--pool-name",
            pool_name,
            "--space",
            "Samples 2,Samples 3",
        ]);
        assert!(
            shared.status.success(),
            "{}",
            String::from_utf8_lossy(&shared.stderr)
        );
    }
    // ...and the last with the blog's own call, made by curl.
    let workers = server.ok(&format!("/api/Spaces-1/workerpools/{}/workers", pools[0]));
    let policy = server
        .ok(&format!("/api/{}/machinepolicies/all", spaces[3]))
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["Name"] == "Default Machine Policy")
        .unwrap()["Id"]
        .clone();
    for worker in workers["Items"].as_array().unwrap() {
        let payload = json!({
            "Name": worker["Name"], "MachinePolicyId": policy, "IsDisabled": worker["IsDisabled"],
            "HealthStatus": worker["HealthStatus"], "HasLatestCalamari": worker["HasLatestCalamari"],
            "IsInProcess": true, "EndPoint": worker["Endpoint"], "WorkerPoolIds": [pools[3]],
        });
        let curl = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "POST",
                "-H",
            ])
            .arg(format!("X-Octopus-ApiKey: {KEY}"))
            .args(["--data-binary", &payload.to_string()])
            .arg(format!("{}/api/{}/workers", server.url, spaces[3]))
            .output()
            .expect("curl runs");
        assert_eq!(String::from_utf8_lossy(&curl.stdout), "201");
    }
    for (space, pool) in spaces.iter().zip(&pools) {
        let members = server.ok(&format!("/api/{space}/workerpools/{pool}/workers"));
        assert_eq!(members["TotalResults"], 3, "{space} has the three workers");
        for worker in members["Items"].as_array().unwrap() {
            assert_eq!(worker["IsShared"], true);
            assert_eq!(
                worker["HealthStatus"], "Healthy",
                "one health record per agent"
            );
        }
    }

    // Tasks queued in every space run on the three agents, never on a built-in worker.
    let mut tasks = Vec::new();
    for (space, pool) in spaces.iter().zip(&pools) {
        for _ in 0..3 {
            let task = server.run_script(
                space,
                json!({"ScriptBody": "echo \"secret of $MUSTER_SPACE_ID\"\nsleep 0.2", "TargetType": "WorkerPools", "WorkerPoolIds": [pool]}),
            );
            tasks.push((space.clone(), task["Id"].as_str().unwrap().to_string()));
        }
    }
    let mut used = std::collections::BTreeSet::new();
    for (_, task) in &tasks {
        let (task, _) = server.wait_task(task);
        assert_eq!(task["State"], "Success", "{task}");
        let worker = task["WorkerName"].as_str().unwrap().to_string();
        assert!(worker.starts_with("samples-worker-"), "ran on {worker}");
        used.insert(worker);
    }
    assert!(used.len() >= 2, "the load spread over the agents: {used:?}");

    // What sharing saved, measured: 3 agents did the work of 12 dedicated ones.
    let usage = server.ok("/api/usage/workers?hours=1");
    let summary = &usage["Summary"];
    assert_eq!(summary["Agents"], 3, "{usage}");
    assert_eq!(summary["Spaces"], 4);
    assert_eq!(summary["DedicatedAgents"], 12);
    assert_eq!(summary["AgentsSaved"], 9);
    assert!(summary["Utilization"].as_f64().unwrap() > 0.0);
    assert!(
        summary["DedicatedUtilization"].as_f64().unwrap()
            < summary["Utilization"].as_f64().unwrap(),
        "shared agents are busier than dedicated ones would be: {summary}"
    );
    // The agents were registered moments ago: idle only since then, not for the whole hour.
    for agent in usage["Agents"].as_array().unwrap() {
        let existed = agent["ExistedSeconds"].as_f64().unwrap();
        let idle = agent["IdleSeconds"].as_f64().unwrap();
        assert!(existed < 600.0 && idle <= existed, "{agent}");
        assert!(agent["Utilization"].as_f64().unwrap() > 0.0001, "{agent}");
    }
    for space in usage["Spaces"].as_array().unwrap() {
        assert_eq!(space["Tasks"], 3, "{space}");
        assert!(space["BusySeconds"].as_f64().unwrap() > 0.0);
    }
    let one = server.ok(&format!("/api/{}/workers/usage?hours=1", spaces[2]));
    assert_eq!(one["Summary"]["Spaces"], 1);
    for bad in [
        "hours=0",
        "hours=x",
        "from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
        "from=yesterday",
    ] {
        server
            .get(&format!("/api/usage/workers?{bad}"))
            .assert_error(400);
    }
    let printed = cli(&["worker", "usage", "--hours", "1"]);
    let text = String::from_utf8_lossy(&printed.stdout);
    assert!(text.contains("3 agent(s) served 4 space(s)"), "{text}");
    assert!(text.contains("sharing saved 9"), "{text}");

    // A user of space 2 sees space 2's logs, not the initial space's.
    let (reader, reader_key) = server.new_user("reader");
    server.grant(&reader, "Task runner", &spaces[1]);
    for (space, task) in &tasks {
        let reply = server.as_user(&reader_key, "GET", &format!("/api/tasks/{task}/raw"), None);
        if *space == spaces[1] {
            assert_eq!(reply.status, 200);
            assert!(reply.text.contains(&format!("secret of {}", spaces[1])));
        } else {
            reply.assert_error(404);
        }
    }
    let theirs = server.as_user(&reader_key, "GET", "/api/usage/workers", None);
    assert_eq!(
        theirs.body["Summary"]["Spaces"], 1,
        "usage shows only the spaces one may see"
    );
    drop(agents);
}
