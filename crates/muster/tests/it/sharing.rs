//! One agent, many spaces: the blog's "add workers to remaining spaces" call, the shares API, share
//! limits, who may do what, and fair dispatch between spaces.

use crate::support::{Server, eventually};
use serde_json::{Value, json};

fn id(value: &Value) -> String {
    value["Id"].as_str().unwrap().to_string()
}

fn default_pool_of(server: &Server, space: &str) -> String {
    server
        .ok(&format!("/api/{space}/workerpools/all"))
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["IsDefault"] == true)
        .map(id)
        .unwrap()
}

#[test]
fn one_polling_agent_serves_several_spaces() {
    let server = Server::start();
    let b = id(server
        .post("/api/spaces", &json!({"Name": "B"}))
        .assert_status(201));
    let c = id(server
        .post("/api/spaces", &json!({"Name": "C"}))
        .assert_status(201));
    let _agent = server.polling_agent("poller");
    let home = server.wait_health("poller", "Healthy");

    // The blog's call: the same Name, Uri and Thumbprint in another space.
    let shared = server
        .post(
            &format!("/api/{b}/workers"),
            &json!({"Name": "poller", "WorkerPoolIds": [default_pool_of(&server, &b)],
                    "EndPoint": {"CommunicationStyle": "TentacleActive", "Uri": home["Uri"], "Thumbprint": home["Thumbprint"]}}),
        )
        .assert_status(201)
        .clone();
    assert_eq!(shared["HomeWorkerId"], home["Id"]);
    assert_eq!(shared["HomeSpaceId"], "Spaces-1");
    assert_eq!(shared["IsShared"], true);
    assert_eq!(
        shared["HealthStatus"], "Healthy",
        "one agent, one health record"
    );
    let home_now = server.ok(&format!("/api/Spaces-1/workers/{}", id(&home)));
    assert_eq!(home_now["IsShared"], true);
    assert_eq!(home_now["SharedWithSpaceIds"], json!([b]));

    // Each space's tasks run on the same agent.
    for space in ["Spaces-1", b.as_str()] {
        let task = server.run_script(space, json!({"ScriptBody": "echo \"in $(pwd)\""}));
        let (task, lines) = server.wait_task(&id(&task));
        assert_eq!(task["State"], "Success", "{task}");
        assert_eq!(task["WorkerName"], "poller");
        assert!(
            lines.iter().any(|l| l["MessageText"]
                .as_str()
                .unwrap()
                .contains("/agent-poller/")),
            "ran in the agent's work directory: {lines:?}"
        );
    }
    let health = server
        .post(&format!("/api/{b}/tasks"), &json!({"Name": "Health"}))
        .assert_status(201)
        .clone();
    assert_eq!(server.wait_task(&id(&health)).0["State"], "Success");

    // The shares API does the same, idempotently, by pool name.
    let url = format!("/api/Spaces-1/workers/{}/shares", id(&home));
    let body = json!({"SpaceId": c, "WorkerPoolIds": ["Default Worker Pool"], "TaskLimit": 2});
    let first = server.post(&url, &body).assert_status(201).clone();
    assert_eq!(first["ShareTaskLimit"], 2);
    assert_eq!(first["SpaceId"], json!(c));
    server.post(&url, &body).assert_status(200);
    let shares = server.ok(&url);
    assert_eq!(shares.as_array().unwrap().len(), 2, "{shares}");
    for bad in [
        json!({"SpaceId": "Spaces-1", "WorkerPoolIds": ["Default Worker Pool"]}),
        json!({"SpaceId": c, "WorkerPoolIds": ["No such pool"]}),
        json!({"SpaceId": c, "WorkerPoolIds": ["Default Worker Pool"], "TaskLimit": 0}),
        json!({"SpaceId": c, "WorkerPoolIds": ["Default Worker Pool"], "TaskLimit": 2147483648i64}),
        json!({"WorkerPoolIds": ["Default Worker Pool"]}),
        json!({"SpaceId": "Spaces-99", "WorkerPoolIds": ["Default Worker Pool"]}),
    ] {
        server.post(&url, &bad).assert_error(400);
    }
    let mut home_body = home_now.clone();
    home_body["ShareTaskLimit"] = json!(3);
    server
        .put(&format!("/api/Spaces-1/workers/{}", id(&home)), &home_body)
        .assert_error(400);
    // One agent is one worker per space.
    server
        .post(
            &format!("/api/{b}/workers"),
            &json!({"Name": "poller again", "WorkerPoolIds": [default_pool_of(&server, &b)],
                    "Endpoint": {"CommunicationStyle": "TentacleActive", "Uri": home["Uri"], "Thumbprint": home["Thumbprint"]}}),
        )
        .assert_error(400);
    server.delete(&format!("{url}/{c}")).assert_status(200);
    assert_eq!(server.ok(&url).as_array().unwrap().len(), 1);

    // A share limit holds: the second of B's tasks waits and says why.
    let mut limited = shared.clone();
    limited["ShareTaskLimit"] = json!(1);
    server
        .put(&format!("/api/{b}/workers/{}", id(&shared)), &limited)
        .assert_status(200);
    let release = server.dir.join("release");
    let script = format!(
        "echo started\nwhile [ ! -f '{}' ]; do sleep 0.02; done",
        release.display()
    );
    let first = server.run_script(&b, json!({"ScriptBody": script}));
    server.follow(&id(&first), |kind, data| {
        !(kind == "line" && data["MessageText"] == "started")
    });
    let second = server.run_script(&b, json!({"ScriptBody": script}));
    let waiting = eventually("the second task to say why it waits", || {
        let task = server.ok(&format!("/api/tasks/{}", id(&second)));
        task["QueueReason"]
            .as_str()
            .is_some_and(|r| r.contains("share limit"))
            .then_some(task)
    });
    assert_eq!(waiting["State"], "Queued");
    // The home space is not held by B's limit.
    let home_task = server.run_script("Spaces-1", json!({"ScriptBody": "echo home"}));
    assert_eq!(server.wait_task(&id(&home_task)).0["State"], "Success");
    std::fs::write(&release, "go").unwrap();
    assert_eq!(server.wait_task(&id(&first)).0["State"], "Success");
    assert_eq!(server.wait_task(&id(&second)).0["State"], "Success");

    // Revoking lets a running task finish and routes no new one to the agent.
    std::fs::remove_file(&release).unwrap();
    let running = server.run_script(&b, json!({"ScriptBody": script}));
    server.follow(&id(&running), |kind, data| {
        !(kind == "line" && data["MessageText"] == "started")
    });
    server
        .delete(&format!("/api/Spaces-1/workers/{}/shares/{b}", id(&home)))
        .assert_status(200);
    std::fs::write(&release, "go").unwrap();
    let (finished, _) = server.wait_task(&id(&running));
    assert_eq!(finished["State"], "Success", "{finished}");
    assert_eq!(finished["WorkerName"], "poller");
    // A health check of the agent records on its workers and never brings the share back.
    let health = server
        .post("/api/Spaces-1/tasks", &json!({"Name": "Health"}))
        .assert_status(201)
        .clone();
    assert_eq!(server.wait_task(&id(&health)).0["State"], "Success");
    assert_eq!(server.ok(&url), json!([]), "the revoked share stays gone");
    let after = server.run_script(&b, json!({"ScriptBody": "true"}));
    let (after, _) = server.wait_task(&id(&after));
    assert_eq!(
        after["WorkerName"], "Built-in worker",
        "B's pool has no worker of its own now (the docs' rule)"
    );
    let shared = server
        .post(
            &url,
            &json!({"SpaceId": b, "WorkerPoolIds": ["Default Worker Pool"]}),
        )
        .assert_status(201)
        .clone();

    // Deleting the home worker takes its shares with it.
    server
        .delete(&format!("/api/Spaces-1/workers/{}", id(&home)))
        .assert_status(200);
    server
        .get(&format!("/api/{b}/workers/{}", id(&shared)))
        .assert_error(404);
}

#[test]
fn only_editors_of_both_spaces_share_and_space_b_cannot_change_the_agent() {
    let server = Server::start();
    let b = id(server
        .post("/api/spaces", &json!({"Name": "B"}))
        .assert_status(201));
    let _agent = server.polling_agent("poller");
    let home = server.wait_health("poller", "Healthy");
    let (bea, bea_key) = server.new_user("bea");
    server.grant(&bea, "Worker manager", &b);
    let endpoint = json!({"CommunicationStyle": "TentacleActive", "Uri": home["Uri"], "Thumbprint": home["Thumbprint"]});
    let body = json!({"Name": "poller", "WorkerPoolIds": [default_pool_of(&server, &b)], "Endpoint": endpoint});
    let refused = server.as_user(&bea_key, "POST", &format!("/api/{b}/workers"), Some(&body));
    refused.assert_error(403);
    assert!(refused.text.contains("home space"), "{}", refused.text);

    // The administrator shares; bea sees the worker in B and runs B's tasks on it, and cannot change it.
    let shared = server
        .post(&format!("/api/{b}/workers"), &body)
        .assert_status(201)
        .clone();
    let seen = server.as_user(
        &bea_key,
        "GET",
        &format!("/api/{b}/workers/{}", id(&shared)),
        None,
    );
    assert_eq!(seen.body["HomeSpaceId"], "Spaces-1");
    let mut renamed = seen.body.clone();
    renamed["Name"] = json!("mine now");
    server
        .as_user(
            &bea_key,
            "PUT",
            &format!("/api/{b}/workers/{}", id(&shared)),
            Some(&renamed),
        )
        .assert_error(403);
    server
        .as_user(
            &bea_key,
            "GET",
            &format!("/api/Spaces-1/workers/{}", id(&home)),
            None,
        )
        .assert_error(404);
    server
        .as_user(
            &bea_key,
            "POST",
            &format!("/api/Spaces-1/workers/{}/shares", id(&home)),
            Some(&json!({"SpaceId": b, "WorkerPoolIds": ["Default Worker Pool"]})),
        )
        .assert_error(404);
    // A polling agent keeps its one subscription.
    let mut wrong = body.clone();
    wrong["Endpoint"]["Uri"] = json!("poll://abcdefghijklmnopqrst/");
    wrong["Name"] = json!("other");
    let c = id(server
        .post("/api/spaces", &json!({"Name": "C"}))
        .assert_status(201));
    wrong["WorkerPoolIds"] = json!([default_pool_of(&server, &c)]);
    server
        .post(&format!("/api/{c}/workers"), &wrong)
        .assert_error(400);
    // B may stop using it.
    server
        .as_user(
            &bea_key,
            "DELETE",
            &format!("/api/{b}/workers/{}", id(&shared)),
            None,
        )
        .assert_status(200);
    server
        .get(&format!("/api/Spaces-1/workers/{}", id(&home)))
        .assert_status(200);
}

#[test]
fn a_space_flooding_the_queue_does_not_starve_another() {
    let server = Server::start_with(&["--task-cap", "1"]);
    let b = id(server
        .post("/api/spaces", &json!({"Name": "B"}))
        .assert_status(201));
    // The first of A's tasks (one per node: each node has its own cap) last long enough for all
    // the others and B's to be queued behind them, however slow the machine is at creating them.
    let nodes = 1 + server.others.len();
    let flood: Vec<String> = (0..15)
        .map(|n| {
            let body = if n < nodes { "sleep 1" } else { "sleep 0.05" };
            id(&server.run_script("Spaces-1", json!({"ScriptBody": body})))
        })
        .collect();
    let late = id(&server.run_script(&b, json!({"ScriptBody": "true"})));
    let (late_task, _) = server.wait_task(&late);
    assert_eq!(late_task["State"], "Success");
    let started_before: usize = flood
        .iter()
        .filter(|t| {
            let task = server.ok(&format!("/api/tasks/{t}"));
            task["StartTime"].as_str().unwrap_or("9") < late_task["StartTime"].as_str().unwrap()
        })
        .count();
    assert!(
        started_before <= nodes + 1,
        "B's task waited behind {started_before} of A's 15 tasks"
    );
    for t in &flood {
        assert_eq!(server.wait_task(t).0["State"], "Success");
    }
}
