//! Events (who did what) and the machines Muster does not have: a workflow leaves the events a team
//! would look for, with user names and never a value; each reader sees only the events of the
//! spaces they see; `muster events` prints them.

use crate::support::{Server, cli, listening_endpoint};
use serde_json::{Value, json};

fn id(value: &Value) -> String {
    value["Id"].as_str().unwrap().to_string()
}

/// Every event of a page's items, as (category, username, message).
fn summary(page: &Value) -> Vec<(String, String, String)> {
    page["Items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["Category"].as_str().unwrap().to_string(),
                e["Username"].as_str().unwrap_or("-").to_string(),
                e["Message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[track_caller]
fn has(events: &[(String, String, String)], category: &str, user: &str, needle: &str) {
    assert!(
        events
            .iter()
            .any(|(c, u, m)| c == category && u == user && m.contains(needle)),
        "no {category} event by {user} with '{needle}' in {events:#?}"
    );
}

#[test]
fn a_workflow_leaves_its_events_and_each_reader_sees_only_their_spaces() {
    let server = Server::start();
    let b = id(server
        .post("/api/spaces", &json!({"Name": "Blue"}))
        .assert_status(201));
    let (alice_id, alice) = server.new_user("alice");
    server.grant(&alice_id, "Space manager", "Spaces-1");
    let (bob_id, bob) = server.new_user("bob");
    server.grant(&bob_id, "Space viewer", &b);

    // Alice registers a worker in a pool of its own (scripts keep the built-in worker), and the
    // administrator shares it into Blue.
    let pool = id(server
        .as_user(
            &alice,
            "POST",
            "/api/Spaces-1/workerpools",
            Some(&json!({"Name": "Agents", "WorkerPoolType": "StaticWorkerPool"})),
        )
        .assert_status(201));
    let worker = server
        .as_user(
            &alice,
            "POST",
            "/api/Spaces-1/workers",
            Some(&json!({"Name": "web-1", "WorkerPoolIds": [pool], "Endpoint": listening_endpoint(1)})),
        )
        .assert_status(201)
        .clone();
    let mut changed = worker.clone();
    changed["Name"] = json!("web-01");
    server
        .as_user(
            &alice,
            "PUT",
            &format!("/api/Spaces-1/workers/{}", id(&worker)),
            Some(&changed),
        )
        .assert_status(200);
    let share_path = format!("/api/Spaces-1/workers/{}/shares", id(&worker));
    server
        .post(
            &share_path,
            &json!({"SpaceId": b, "WorkerPoolIds": ["Default Worker Pool"]}),
        )
        .assert_status(201);

    // Alice runs a script and cancels it.
    let task = server
        .as_user(
            &alice,
            "POST",
            "/api/Spaces-1/tasks",
            Some(&json!({"Name": "AdHocScript", "Description": "sleepy", "Arguments": {"ScriptBody": "sleep 60"}})),
        )
        .assert_status(201)
        .clone();
    server
        .as_user(
            &alice,
            "POST",
            &format!("/api/tasks/{}/cancel", id(&task)),
            Some(&json!({})),
        )
        .assert_status(200);
    server.wait_task(&id(&task));

    // Alice changes a runbook and its variables; the secret's value never reaches an event.
    let secret = "hunter2-zqx-value";
    let runbook = server
        .as_user(
            &alice,
            "POST",
            "/api/Spaces-1/runbooks",
            Some(&json!({"Name": "Deploy"})),
        )
        .assert_status(201)
        .clone();
    let variables = runbook["Links"]["Variables"].as_str().unwrap().to_string();
    server
        .as_user(
            &alice,
            "PUT",
            &variables,
            Some(&json!({"Variables": [
                {"Name": "Password", "Value": secret, "Type": "Sensitive", "IsSensitive": true},
                {"Name": "Region", "Value": "eu-west-plain-value"}
            ]})),
        )
        .assert_status(200);
    server
        .as_user(
            &alice,
            "PUT",
            &variables,
            Some(&json!({"Variables": [
                {"Name": "Password", "Value": null, "Type": "Sensitive", "IsSensitive": true},
                {"Name": "Region", "Value": "us-east-plain-value"}
            ]})),
        )
        .assert_status(200);

    // The administrator creates Carol, grants her a role in Blue, creates and revokes a key of
    // hers; someone guesses keys from another address.
    let (carol_id, _) = server.new_user("carol");
    server.grant(&carol_id, "Task runner", &b);
    let key = server
        .post(
            &format!("/api/users/{carol_id}/apikeys"),
            &json!({"Purpose": "ci"}),
        )
        .assert_status(201)
        .clone();
    server
        .delete(&format!("/api/users/{carol_id}/apikeys/{}", id(&key)))
        .assert_status(200);
    let guesser = reqwest::blocking::Client::builder()
        .local_address("127.0.0.3".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    for _ in 0..3 {
        let status = guesser
            .get(format!("{}/api/spaces", server.url))
            .header("X-Octopus-ApiKey", "API-WRONGWRONGWRONGWRONGWRONG1")
            .send()
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 401);
    }
    // Alice deletes her worker.
    server
        .as_user(
            &alice,
            "DELETE",
            &format!("/api/Spaces-1/workers/{}", id(&worker)),
            None,
        )
        .assert_status(200);

    // The administrator sees everything, newest first.
    let all = server.ok("/api/events?take=1000");
    assert_eq!(all["ItemType"], "Event");
    let events = summary(&all);
    has(&events, "Created", "admin", "Space 'Blue' created");
    has(&events, "Created", "alice", "Worker pool 'Agents' created");
    has(&events, "Created", "alice", "Worker 'web-1' registered");
    has(
        &events,
        "Modified",
        "alice",
        "Worker 'web-01' (was 'web-1') changed",
    );
    has(&events, "Created", "admin", "shared into space 'Blue'");
    has(&events, "Created", "alice", "queued: sleepy");
    has(&events, "Canceled", "alice", "canceled: sleepy");
    has(&events, "Created", "alice", "Runbook 'Deploy' created");
    has(
        &events,
        "Modified",
        "alice",
        "variables added Password, Region",
    );
    has(&events, "Modified", "alice", "variables changed Region");
    has(
        &events,
        "Created",
        "admin",
        "Role 'Task runner' granted to team",
    );
    has(&events, "Created", "admin", "User 'carol' created");
    has(
        &events,
        "Created",
        "admin",
        "('ci') created for user 'carol'",
    );
    has(
        &events,
        "Deleted",
        "admin",
        "('ci') of user 'carol' revoked",
    );
    has(
        &events,
        "LoginFailed",
        "-",
        "from 127.0.0.3 3 times within a minute",
    );
    has(&events, "Deleted", "alice", "Worker 'web-01' deleted");
    assert_eq!(
        events.iter().filter(|e| e.0 == "LoginFailed").count(),
        1,
        "one summary per address and minute"
    );
    let ids: Vec<i64> = all["Items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Id"].as_str().unwrap()[7..].parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    assert!(!all.to_string().contains(secret), "a secret in {all}");
    assert!(!all.to_string().contains("plain-value"), "a value in {all}");
    let first = &all["Items"][0];
    assert_eq!(first["Links"]["Self"], format!("/api/events/{}", id(first)));
    assert!(first["Occurred"].as_str().unwrap().ends_with("+00:00"));
    let cancel = all["Items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["Category"] == "Canceled")
        .unwrap();
    assert_eq!(cancel["UserId"], json!(alice_id));
    assert_eq!(cancel["SpaceId"], "Spaces-1");
    assert_eq!(cancel["RelatedDocumentIds"], json!([id(&task), "Spaces-1"]));

    // Paging: newest first across pages, with the contract's envelope.
    let total = all["TotalResults"].as_u64().unwrap();
    let page = server.ok("/api/events?take=2&skip=1");
    assert_eq!(page["ItemsPerPage"], 2);
    assert_eq!(page["TotalResults"], total);
    assert_eq!(page["Items"][0]["Id"], all["Items"][1]["Id"]);
    assert_eq!(page["Items"][1]["Id"], all["Items"][2]["Id"]);
    assert!(page["Links"]["Page.Next"].is_string());

    let system = all["Items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["SpaceId"].is_null())
        .count() as u64;
    let spaces_only = server.ok("/api/events?take=1000&includeSystem=false");
    assert_eq!(spaces_only["TotalResults"], total - system);
    assert!(
        spaces_only["Items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["SpaceId"].is_string())
    );
    let blue_only = server.ok(&format!("/api/events?take=1000&spaces={b}"));
    assert!(
        blue_only["Items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["SpaceId"] == json!(b))
    );

    // Filters: regarding, users, categories, from/to.
    let regarding = server.ok(&format!("/api/events?regarding={}", id(&task)));
    assert_eq!(regarding["TotalResults"], 2, "{regarding}");
    let by_alice = summary(&server.ok(&format!("/api/events?take=1000&users={alice_id}")));
    assert!(by_alice.iter().all(|e| e.1 == "alice"), "{by_alice:?}");
    let canceled = server.ok("/api/events?eventCategories=Canceled,LoginFailed");
    assert_eq!(canceled["TotalResults"], 2, "{canceled}");
    let later = server.ok("/api/events?from=2999-01-01T00:00:00%2B00:00");
    assert_eq!(later["TotalResults"], 0);
    let earlier = server.ok("/api/events?to=2000-01-01T00:00:00%2B00:00");
    assert_eq!(earlier["TotalResults"], 0);
    server.get("/api/events?from=yesterday").assert_error(400);

    // Alice (a manager of Spaces-1) sees Spaces-1's events only: not Blue's, not the server's.
    let alices = server.as_user(&alice, "GET", "/api/events?take=1000", None);
    let alices = alices.assert_status(200);
    for event in alices["Items"].as_array().unwrap() {
        assert_eq!(event["SpaceId"], "Spaces-1", "{event}");
    }
    let theirs = summary(alices);
    has(&theirs, "Created", "admin", "shared into space 'Blue'");
    assert!(
        !theirs
            .iter()
            .any(|e| e.0 == "LoginFailed" || e.2.contains("User '"))
    );
    server
        .as_user(&alice, "GET", &format!("/api/{b}/events"), None)
        .assert_error(404);
    assert_eq!(
        server
            .as_user(&alice, "GET", &format!("/api/events?spaces={b}"), None)
            .body["TotalResults"],
        0
    );
    let system = all["Items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["SpaceId"].is_null())
        .unwrap();
    server
        .as_user(&alice, "GET", &format!("/api/events/{}", id(system)), None)
        .assert_error(404);
    server
        .as_user(&alice, "GET", &format!("/api/events/{}", id(first)), None)
        .assert_status(200);

    // Bob (viewer in Blue) sees Blue's events: the share and the role given there, nothing else.
    let blue = server.as_user(&bob, "GET", &format!("/api/{b}/events"), None);
    let blue = summary(blue.assert_status(200));
    has(&blue, "Created", "admin", "shared into space 'Blue'");
    has(
        &blue,
        "Created",
        "admin",
        "Role 'Task runner' granted to team",
    );
    let bobs = server.as_user(&bob, "GET", "/api/events?take=1000", None);
    for event in bobs.assert_status(200)["Items"].as_array().unwrap() {
        assert_eq!(event["SpaceId"], json!(b), "{event}");
    }
    server
        .as_user(&bob, "GET", "/api/Spaces-1/events", None)
        .assert_error(404);
    server
        .as_user(&bob, "GET", "/api/events?includeSystem=true", None)
        .assert_status(200);

    // The CLI prints the table: time, user, category, message.
    let out = cli(&server, &["events", "--since", "1h"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text.lines().next().unwrap();
    for column in ["TIME", "USER", "CATEGORY", "MESSAGE"] {
        assert!(header.contains(column), "{text}");
    }
    assert!(text.contains("Worker 'web-01' deleted"), "{text}");
    assert!(text.contains("alice"), "{text}");
    let out = cli(&server, &["events", "--space", "Blue", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["SpaceId"] == json!(b))
    );
    let out = cli(&server, &["events", "--since", "2999-01-01"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let out = cli(&server, &["events", "--since", "soon"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

#[test]
fn machines_answer_as_an_octopus_without_deployment_targets() {
    let server = Server::start();
    for path in [
        "/api/Spaces-1/machines",
        "/api/spaces/Spaces-1/machines?skip=0&take=10",
        "/api/machines",
    ] {
        let page = server.ok(path);
        assert_eq!(page["ItemType"], "DeploymentTarget", "{path}");
        assert_eq!(page["TotalResults"], 0);
        assert_eq!(page["Items"], json!([]));
        assert!(page["Links"]["Self"].is_string());
        assert!(page["Links"]["Page.Next"].is_null());
    }
    assert_eq!(server.ok("/api/Spaces-1/machines/all"), json!([]));
    assert_eq!(server.ok("/api/machines/all"), json!([]));
    for path in [
        "/api/Spaces-1/machines/Machines-1",
        "/api/machines/Machines-1",
        "/api/Spaces-1/machines/anything",
    ] {
        server.get(path).assert_error(404);
    }
    // Another space's machines are as unseen as the rest of it.
    let (_, nobody) = server.new_user("nobody");
    server
        .as_user(&nobody, "GET", "/api/Spaces-1/machines", None)
        .assert_error(404);
    // machines/discover is workers/discover: the same answers.
    for query in [
        "",
        "?host=",
        "?host=127.0.0.1&type=Cloud",
        "?host=127.0.0.1&port=1",
    ] {
        let workers = server.get(&format!("/api/Spaces-1/workers/discover{query}"));
        let machines = server.get(&format!("/api/Spaces-1/machines/discover{query}"));
        assert_eq!(machines.status, workers.status, "{query}");
        assert_eq!(machines.body, workers.body, "{query}");
    }
    // The root and space root link them, as Octopus does.
    let root = server.ok("/api");
    assert!(
        root["Links"]["Events"]
            .as_str()
            .unwrap()
            .starts_with("/api/events")
    );
    let space_root = server.ok("/api/Spaces-1");
    assert!(
        space_root["Links"]["Machines"]
            .as_str()
            .unwrap()
            .starts_with("/api/Spaces-1/machines")
    );
}
