//! Server nodes (`/api/octopusservernodes`, `muster node`): the registry's shapes, draining a node
//! (it takes no new task, `ping` answers 418, its running tasks finish), who may drain, bad input.

use crate::support::{Server, cli, client};
use serde_json::{Value, json};

const NODE: &str = "it-node-a";
const NODE_ID: &str = "OctopusServerNodes-it-node-a";

fn id(task: &Value) -> String {
    task["Id"].as_str().unwrap().to_string()
}

/// Follows a task until its stream shows it in `state`.
fn wait_state(server: &Server, task: &str, state: &str) {
    let mut seen = Value::Null;
    server.follow(task, |kind, data| {
        if kind == "task" {
            seen = data["State"].clone();
        }
        seen != state
    });
    assert_eq!(seen, state, "{task} never reached {state}");
}

/// Follows a queued task until its QueueReason says `needle`.
fn wait_reason(server: &Server, task: &str, needle: &str) -> String {
    let mut reason = String::new();
    server.follow(task, |kind, data| {
        if kind == "task" {
            reason = data["QueueReason"].as_str().unwrap_or("").to_string();
            assert_eq!(
                data["State"], "Queued",
                "the task should stay queued: {data}"
            );
        }
        !reason.contains(needle)
    });
    assert!(
        reason.contains(needle),
        "QueueReason '{reason}' does not say '{needle}'"
    );
    reason
}

/// `GET /api/octopusservernodes/ping` without a key: (status, body).
fn ping(server: &Server) -> (u16, Value) {
    let reply = client()
        .get(format!("{}/api/octopusservernodes/ping", server.url))
        .send()
        .unwrap();
    let status = reply.status().as_u16();
    (status, reply.json().unwrap_or(Value::Null))
}

#[test]
fn the_node_registers_itself_in_octopus_shapes() {
    let temp = tempfile::tempdir().unwrap();
    let server = Server::start_in(temp.path(), &["--node-name", NODE, "--task-cap", "3"]).unwrap();
    let page = server.ok("/api/octopusservernodes");
    assert_eq!(page["ItemType"], "OctopusServerNode");
    assert_eq!(page["TotalResults"], 1);
    let node = &page["Items"][0];
    assert_eq!(node["Id"], NODE_ID);
    assert_eq!(node["Name"], NODE);
    assert_eq!(node["MaxConcurrentTasks"], 3);
    assert_eq!(node["IsInMaintenanceMode"], false);
    assert_eq!(
        node["Links"]["Self"],
        format!("/api/octopusservernodes/{NODE_ID}")
    );
    assert_eq!(
        server.ok(&format!("/api/octopusservernodes/{NODE_ID}")),
        *node
    );
    assert_eq!(server.ok("/api/octopusservernodes/all"), json!([node]));

    let summary = server.ok("/api/octopusservernodes/summary");
    let nodes = summary["Nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["Name"], NODE);
    assert_eq!(nodes[0]["IsOffline"], false);
    assert_eq!(nodes[0]["RunningTaskCount"], 0);
    assert_eq!(
        nodes[0]["IsDispatcher"], true,
        "SQLite's one node dispatches"
    );
    assert!(
        nodes[0]["LastSeen"].as_str().unwrap().ends_with("+00:00"),
        "{summary}"
    );
    assert!(nodes[0]["Version"].is_string());
    let details = server.ok(&format!("/api/octopusservernodes/{NODE_ID}/details"));
    assert_eq!(details["Node"]["Name"], NODE);
    assert_eq!(details["Tasks"], json!([]));

    // Tasks name the node they ran on.
    let task = server.run_script("Spaces-1", json!({"ScriptBody": "true", "Syntax": "Bash"}));
    let (done, _) = server.wait_task(&id(&task));
    assert_eq!(done["ServerNode"], NODE);

    // The load balancer's ping needs no key.
    let (status, body) = ping(&server);
    assert_eq!(status, 200);
    assert_eq!(body["Name"], NODE);

    // A restart without --task-cap keeps the stored cap; the CLI lists the node by name.
    server.stop();
    let server = Server::start_in(temp.path(), &["--node-name", NODE]).unwrap();
    let node = server.ok(&format!("/api/octopusservernodes/{NODE_ID}"));
    assert_eq!(node["MaxConcurrentTasks"], 3);
    let out = cli(&server, &["node", "list"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text.lines().next().unwrap();
    for column in [
        "NAME",
        "CAP",
        "RUNNING",
        "MAINTENANCE",
        "LAST SEEN",
        "OFFLINE",
    ] {
        assert!(header.contains(column), "{text}");
    }
    assert!(text.contains(NODE) && !text.contains(NODE_ID), "{text}");
    let out = cli(&server, &["node", "list", "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["Name"], NODE);
    assert_eq!(listed[0]["RunningTaskCount"], 0);
}

/// The test: a drained node takes no new task (it stays Queued, saying why), `ping`
/// answers 418, and its running task finishes; undrained, the queued task runs.
fn drain_a_node(args: &[&str]) {
    let mut all = vec!["--node-name", NODE];
    all.extend_from_slice(args);
    let server = Server::start_with(&all);
    let gate = tempfile::tempdir().unwrap();
    let go = gate.path().join("go");
    let running = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": format!("while [ ! -f '{}' ]; do sleep 0.05; done\necho finished", go.display()), "Syntax": "Bash"}),
    );
    wait_state(&server, &id(&running), "Executing");

    let out = cli(&server, &["node", "drain", NODE, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let drained: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(drained["Id"], NODE_ID);
    assert_eq!(drained["IsInMaintenanceMode"], true);
    let (status, body) = ping(&server);
    assert_eq!(status, 418);
    assert_eq!(body["IsInMaintenanceMode"], true);

    let queued = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": "echo second", "Syntax": "Bash"}),
    );
    let reason = wait_reason(&server, &id(&queued), "draining");
    assert!(reason.contains(NODE), "{reason}");
    let summary = server.ok("/api/octopusservernodes/summary");
    assert_eq!(summary["Nodes"][0]["RunningTaskCount"], 1, "{summary}");
    assert_eq!(summary["Nodes"][0]["IsInMaintenanceMode"], true);
    let details = server.ok(&format!("/api/octopusservernodes/{NODE_ID}/details"));
    assert_eq!(details["Tasks"][0]["Id"], running["Id"], "{details}");

    // The running task finishes; the queued one still waits.
    std::fs::write(&go, "").unwrap();
    let (done, _) = server.wait_task(&id(&running));
    assert_eq!(done["State"], "Success");
    let still = server.ok(&format!("/api/tasks/{}", id(&queued)));
    assert_eq!(still["State"], "Queued", "{still}");

    // The change is an event.
    let events = server.ok("/api/events?take=5");
    assert!(
        events["Items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["Message"]
                .as_str()
                .unwrap_or("")
                .contains("maintenance mode")),
        "{events}"
    );

    let out = cli(&server, &["node", "undrain", NODE]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("takes tasks again"));
    let (done, _) = server.wait_task(&id(&queued));
    assert_eq!(done["State"], "Success");
    assert_eq!(ping(&server).0, 200);
}

#[test]
fn a_drained_node_takes_no_new_task_and_finishes_its_running_ones() {
    drain_a_node(&[]);
}

#[test]
fn a_drained_node_takes_no_new_task_on_postgres() {
    let database = muster_store::testing::TestDatabase::create();
    drain_a_node(&["--database", database.url()]);
}

#[test]
fn only_an_administrator_changes_a_node_and_bad_input_is_refused() {
    let server = Server::start_with(&["--node-name", NODE]);
    let (_, key) = server.new_user("viewer");
    let path = format!("/api/octopusservernodes/{NODE_ID}");
    server
        .as_user(
            &key,
            "PUT",
            &path,
            Some(&json!({"IsInMaintenanceMode": true})),
        )
        .assert_error(403);
    server.as_user(&key, "GET", &path, None).assert_status(200);
    server
        .as_user(&key, "GET", &format!("{path}/details"), None)
        .assert_error(403);
    // No key: 401, except ping.
    let anonymous = client()
        .get(format!("{}{path}", server.url))
        .send()
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    server
        .get("/api/octopusservernodes/OctopusServerNodes-nowhere")
        .assert_error(404);
    server
        .put(
            "/api/octopusservernodes/OctopusServerNodes-nowhere",
            &json!({"IsInMaintenanceMode": true}),
        )
        .assert_error(404);
    server
        .put(&path, &json!({"IsInMaintenanceMode": "yes"}))
        .assert_error(400);
    server
        .put(&path, &json!({"MaxConcurrentTasks": 0}))
        .assert_error(400);
    server
        .put(&path, &json!({"Name": "renamed"}))
        .assert_error(400);
    server.put(&path, &json!([1])).assert_error(400);
    server
        .send(server.request("PUT", &path).body("not json"))
        .assert_error(400);
    let out = cli(&server, &["node", "drain", "nowhere"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no server node named 'nowhere'"),
        "{out:?}"
    );

    // Property names in any case; the cap follows the stored value.
    let changed = server
        .put(&path, &json!({"maxconcurrenttasks": 2}))
        .assert_status(200)
        .clone();
    assert_eq!(changed["MaxConcurrentTasks"], 2);
    assert_eq!(changed["IsInMaintenanceMode"], false);
    assert_eq!(changed["LastModifiedBy"], "admin");
}
