//! The cross-cutting conventions of the contract's section 1.

use crate::support::{KEY, Server, listening_endpoint};
use serde_json::json;

#[test]
fn the_root_document_is_anonymous_and_speaks_api_version_3() {
    let server = Server::start();
    for path in ["/api", "/api/"] {
        let reply = server.send(crate::support::client().get(format!("{}{path}", server.url)));
        let root = reply.assert_status(200);
        assert!(
            reply
                .content_type
                .starts_with("application/json; charset=utf-8"),
            "{}",
            reply.content_type
        );
        assert!(root["ApiVersion"].as_str().unwrap().starts_with("3.0."));
        let id = root["InstallationId"].as_str().unwrap();
        assert_eq!(id.len(), 36, "InstallationId must be a GUID: {id}");
        assert_eq!(
            root["Links"]["Spaces"],
            "/api/spaces{/id}{?name,skip,ids,take,partialName}"
        );
        assert!(root["Links"]["CertificateConfiguration"].is_string());
        assert!(
            root["Links"]["WorkerPools"]
                .as_str()
                .unwrap()
                .starts_with("/api/Spaces-1/workerpools")
        );
    }
    // npm sends an empty key when it has none: that is anonymous, not a bad key.
    let reply = server.send(
        crate::support::client()
            .get(format!("{}/api", server.url))
            .header("X-Octopus-ApiKey", ""),
    );
    reply.assert_status(200);
}

#[test]
fn every_other_route_needs_a_valid_key() {
    let server = Server::start();
    let anonymous = crate::support::client();
    server
        .send(anonymous.get(format!("{}/api/spaces", server.url)))
        .assert_error(401);
    server
        .send(
            anonymous
                .get(format!("{}/api/spaces", server.url))
                .header("X-Octopus-ApiKey", "API-WRONGWRONGWRONGWRONGWRONG1"),
        )
        .assert_error(401);
    server
        .send(
            anonymous
                .get(format!("{}/api/spaces", server.url))
                .header("X-Octopus-ApiKey", "not-a-key"),
        )
        .assert_error(401);
    server
        .send(anonymous.get(format!("{}/api/spaces?apikey={KEY}", server.url)))
        .assert_status(200);
    server
        .send(
            anonymous
                .get(format!("{}/api/spaces", server.url))
                .bearer_auth(KEY),
        )
        .assert_status(200);
    server
        .send(anonymous.get(format!("{}/api/nothing-here", server.url)))
        .assert_error(401);
}

#[test]
fn routes_and_property_names_are_case_insensitive() {
    let server = Server::start();
    let pools = server.ok("/API/spaces-1/WORKERPOOLS/");
    assert_eq!(pools["ItemType"], "WorkerPool");
    let pool = &pools["Items"][0];
    let id = pool["Id"].as_str().unwrap();
    assert_eq!(
        server.ok(&format!("/api/Spaces-1/workerPools/{}", id.to_lowercase()))["Id"],
        id
    );
    assert_eq!(
        server
            .ok("/api/spaces/SPACES-1/workerpools/all")
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        server.ok("/api/workerpools/all").as_array().unwrap().len(),
        1,
        "unprefixed means the default space"
    );
    assert_eq!(
        server
            .ok("/api/spaces/default/workerpools/all")
            .as_array()
            .unwrap()
            .len(),
        1,
        "a slug works in the alias"
    );

    let body = json!({"nAmE": "Mixed", "WORKERPOOLTYPE": "StaticWorkerPool", "description": "d"});
    let created = server
        .post("/api/Spaces-1/workerpools", &body)
        .assert_status(201)
        .clone();
    assert_eq!(created["Name"], "Mixed");
    assert_eq!(created["Description"], "d");
    let worker =
        json!({"name": "w1", "EndPoint": listening_endpoint(1), "workerpoolids": [created["Id"]]});
    let worker = server
        .post("/api/Spaces-1/workers", &worker)
        .assert_status(201)
        .clone();
    assert_eq!(worker["Endpoint"]["CommunicationStyle"], "TentaclePassive");
}

#[test]
fn json_is_read_whatever_the_content_type_and_read_only_fields_are_ignored() {
    let server = Server::start();
    let pool = server.default_pool();
    let body = json!({
        "Id": "Workers-999", "Name": "plain", "Endpoint": listening_endpoint(2), "WorkerPoolIds": [pool],
        "HealthStatus": "Healthy", "Status": "Online", "IsInProcess": true, "HasLatestCalamari": false,
        "StatusSummary": "fine", "Links": null, "SpaceId": null
    })
    .to_string();
    let reply = server.post_raw("/api/Spaces-1/workers", &body, "text/plain");
    let worker = reply.assert_status(201);
    assert_ne!(worker["Id"], "Workers-999");
    assert_eq!(
        worker["HealthStatus"], "Unknown",
        "a client cannot set health"
    );
    assert_eq!(worker["IsInProcess"], false);
    let form = json!({"Name": "form", "Endpoint": listening_endpoint(3), "WorkerPoolIds": [pool]})
        .to_string();
    server
        .post_raw(
            "/api/Spaces-1/workers",
            &form,
            "application/x-www-form-urlencoded",
        )
        .assert_status(201);
    server
        .post_raw(
            "/api/Spaces-1/workers",
            &json!({"Name": "none"}).to_string(),
            "",
        )
        .assert_error(400);
}

#[test]
fn paging_envelope_is_exact_at_the_edges() {
    let server = Server::start();
    for i in 0..34 {
        server
            .post("/api/spaces", &json!({"Name": format!("Space {i:02}")}))
            .assert_status(201);
    }
    let first = server.ok("/api/spaces");
    assert_eq!(first["TotalResults"], 35);
    assert_eq!(first["ItemsPerPage"], 30, "ItemsPerPage is the take");
    assert_eq!(first["NumberOfPages"], 2);
    assert_eq!(first["LastPageNumber"], 1);
    assert_eq!(first["Items"].as_array().unwrap().len(), 30);
    assert_eq!(first["Links"]["Page.Next"], "/api/spaces?skip=30&take=30");
    let last = server.ok("/api/spaces?skip=30");
    assert_eq!(last["Items"].as_array().unwrap().len(), 5);
    assert!(
        last["Links"].get("Page.Next").is_none(),
        "no Page.Next on the last page"
    );
    let small = server.ok("/api/spaces?take=7&skip=21");
    assert_eq!(small["ItemsPerPage"], 7);
    assert_eq!(small["Items"].as_array().unwrap().len(), 7);
    assert!(small["Links"]["Page.Next"].is_string());
    let past = server.ok("/api/spaces?skip=500");
    assert_eq!(past["Items"].as_array().unwrap().len(), 0);
    assert_eq!(past["TotalResults"], 35);
    let everything = server.ok("/api/spaces?skip=0&take=2147483647");
    assert_eq!(everything["Items"].as_array().unwrap().len(), 35);
    // Filters stay in the paging links, so a client following Page.Next keeps its filter.
    let filtered = server.ok("/api/spaces?partialName=space&take=10");
    assert_eq!(filtered["TotalResults"], 34);
    assert_eq!(
        filtered["Links"]["Page.Next"],
        "/api/spaces?partialName=space&skip=10&take=10"
    );
    assert_eq!(
        server.ok("/api/spaces?ids=Spaces-1,Spaces-3&ids=Spaces-4")["TotalResults"],
        3
    );
    assert_eq!(server.ok("/api/spaces?name=space%2003")["TotalResults"], 1);
}

#[test]
fn absurd_or_malformed_input_is_a_4xx_with_the_error_body() {
    let server = Server::start();
    for path in [
        "/api/spaces?take=-1",
        "/api/spaces?skip=abc",
        "/api/spaces?take=99999999999999999",
        "/api/tasks?states=Bogus",
        "/api/Spaces-1/workers?isDisabled=maybe",
        "/api/Spaces-1/workers?healthStatuses=Great",
    ] {
        server.get(path).assert_error(400);
    }
    server
        .post_raw("/api/spaces", "{not json", "application/json")
        .assert_error(400);
    server
        .post_raw("/api/spaces", "[1,2]", "application/json")
        .assert_error(400);
    server
        .post("/api/spaces", &json!({"Name": 5}))
        .assert_error(400);
    server
        .post("/api/spaces", &json!({"Name": "  "}))
        .assert_error(400);
    server
        .post(
            "/api/Spaces-1/workerpools",
            &json!({"Name": "p", "WorkerPoolType": "Gigantic"}),
        )
        .assert_error(400);
    server
        .post(
            "/api/Spaces-1/machinepolicies",
            &json!({"Name": "p", "ConnectionConnectTimeout": "forever"}),
        )
        .assert_error(400);
    let huge = format!("{{\"Name\": \"{}\"}}", "x".repeat(5 * 1024 * 1024));
    // The server answers 413 as soon as the limit is passed and closes the connection; a client
    // still writing the rest may see the connection reset before it reads the answer, so the
    // request is tried a few times, each on a client of its own so that no broken connection goes
    // back to the pool the other requests use.
    let oversize = (0..5)
        .find_map(|_| {
            crate::support::client()
                .post(format!("{}/api/spaces", server.url))
                .header("X-Octopus-ApiKey", crate::support::KEY)
                .header("content-type", "application/json")
                .body(huge.clone())
                .send()
                .ok()
        })
        .expect("an answer to an oversize body");
    assert_eq!(oversize.status().as_u16(), 413);
    let body: serde_json::Value = oversize.json().unwrap();
    assert!(
        body["ErrorMessage"]
            .as_str()
            .unwrap()
            .contains("larger than the limit")
    );
    server.get("/api/spaces/Spaces-999").assert_error(404);
    server.get("/api/spaces/Workers-1").assert_error(404);
    server.get("/api/Spaces-77/workerpools").assert_error(404);
    server
        .get("/api/Spaces-1/workers/garbage")
        .assert_error(404);
    server
        .get("/api/tasks/ServerTasks-123456")
        .assert_error(404);
    server.get("/api/no/such/route").assert_error(404);
    server
        .send(server.request("PATCH", "/api/spaces"))
        .assert_error(405);
    server
        .post(
            "/api/Spaces-1/workerpools",
            &json!({"Name": "x", "SpaceId": "Spaces-2"}),
        )
        .assert_error(400);
    // Duplicate names are refused, whatever their case.
    server
        .post(
            "/api/Spaces-1/workerpools",
            &json!({"Name": "Twice", "WorkerPoolType": "StaticWorkerPool"}),
        )
        .assert_status(201);
    server
        .post(
            "/api/Spaces-1/workerpools",
            &json!({"Name": "twice", "WorkerPoolType": "StaticWorkerPool"}),
        )
        .assert_error(400);
    server
        .post("/api/spaces", &json!({"Name": "Default"}))
        .assert_error(400);
}

#[test]
fn another_spaces_ids_answer_404() {
    let server = Server::start();
    let other = server
        .post("/api/spaces", &json!({"Name": "Other"}))
        .assert_status(201)
        .clone();
    let other_id = other["Id"].as_str().unwrap();
    let other_pool = server.ok(&format!("/api/{other_id}/workerpools/all"))[0]["Id"]
        .as_str()
        .unwrap()
        .to_string();
    server
        .get(&format!("/api/Spaces-1/workerpools/{other_pool}"))
        .assert_error(404);
    server
        .delete(&format!("/api/Spaces-1/workerpools/{other_pool}"))
        .assert_error(404);
    let policy = server.ok(&format!("/api/{other_id}/machinepolicies/all"))[0]["Id"]
        .as_str()
        .unwrap()
        .to_string();
    server
        .get(&format!("/api/Spaces-1/machinepolicies/{policy}"))
        .assert_error(404);
    // A pool of another space cannot hold this space's worker.
    let body =
        json!({"Name": "w", "Endpoint": listening_endpoint(4), "WorkerPoolIds": [other_pool]});
    let reply = server.post("/api/Spaces-1/workers", &body);
    reply.assert_error(400);
    assert!(
        reply.body["Errors"][0]
            .as_str()
            .unwrap()
            .contains("not a worker pool of space Spaces-1")
    );
    let task = server.run_script(
        other_id,
        json!({"ScriptBody": "true", "TargetType": "OctopusServer"}),
    );
    server
        .get(&format!(
            "/api/Spaces-1/tasks/{}",
            task["Id"].as_str().unwrap()
        ))
        .assert_error(404);
}

#[test]
fn the_first_start_prints_an_admin_key_once_and_bootstrap_keys_are_checked() {
    let temp = tempfile::tempdir().unwrap();
    let server = Server::start_with_key(temp.path(), &[], None).unwrap();
    let line = server
        .banner
        .iter()
        .find(|l| l.contains("Administrator API key"))
        .expect("a key is printed")
        .clone();
    let key = line.rsplit(' ').next().unwrap().to_string();
    assert!(key.starts_with("API-"));
    let me = crate::support::client()
        .get(format!("{}/api/users/me", server.url))
        .header("X-Octopus-ApiKey", &key);
    assert_eq!(server.send(me).assert_status(200)["Username"], "admin");
    assert!(server.stop().success());
    let again = Server::start_with_key(temp.path(), &[], None).unwrap();
    assert!(
        !again
            .banner
            .iter()
            .any(|l| l.contains("Administrator API key")),
        "the key is shown once"
    );
    drop(again);
    let refused =
        Server::start_with_key(tempfile::tempdir().unwrap().path(), &[], Some("API-short"))
            .err()
            .expect("a bad bootstrap key is refused");
    assert!(
        refused.contains("MUSTER_BOOTSTRAP_API_KEY must be"),
        "{refused}"
    );
}

#[test]
fn odd_input_found_by_a_newcomer_is_handled() {
    let server = Server::start();
    let head = server.send(crate::support::client().head(format!("{}/api", server.url)));
    assert_eq!(head.status, 200, "HEAD on the root is anonymous too");
    let empty_key =
        server.send(crate::support::client().get(format!("{}/api/spaces?apikey=", server.url)));
    assert!(
        empty_key.assert_error(401).body["ErrorMessage"]
            .as_str()
            .unwrap()
            .contains("must be authenticated")
    );
    let bom = format!("\u{feff}{}", json!({"Name": "With BOM"}));
    server
        .post_raw("/api/spaces", &bom, "application/json")
        .assert_status(201);
    for name in [
        "bad\u{1b}[31mred",
        "two\nlines",
        "nul\u{0}",
        "rtl\u{202e}txt",
    ] {
        server
            .post(
                "/api/Spaces-1/workerpools",
                &json!({"Name": name, "WorkerPoolType": "StaticWorkerPool"}),
            )
            .assert_error(400);
    }
    let typed = server.post("/api/spaces", &json!({"Name": 123}));
    assert!(
        typed.assert_error(400).body["Errors"][0]
            .as_str()
            .unwrap()
            .starts_with("Name:"),
        "{}",
        typed.text
    );
    let nested = server.post("/api/Spaces-1/workers", &json!({"Name": "w", "Endpoint": {"CommunicationStyle": "Ssh", "Host": "h", "Port": "x"}, "WorkerPoolIds": ["WorkerPools-1"]}));
    assert!(
        nested.assert_error(400).body["Errors"][0]
            .as_str()
            .unwrap()
            .starts_with("Endpoint"),
        "{}",
        nested.text
    );
    // In a pool of its own: the default pool stays empty, so its tasks run on the built-in worker.
    let far = server
        .post("/api/Spaces-1/workerpools", &json!({"Name": "SSH"}))
        .assert_status(201)["Id"]
        .clone();
    let account = crate::support::ssh_account(&server, "Spaces-1", "ssh login");
    let lower = json!({"Name": "lower", "Endpoint": {"CommunicationStyle": "ssh", "Host": "h",
        "Fingerprint": crate::support::SSH_FINGERPRINT, "AccountId": account}, "WorkerPoolIds": [far]});
    assert_eq!(
        server
            .post("/api/Spaces-1/workers", &lower)
            .assert_status(201)["Endpoint"]["CommunicationStyle"],
        "Ssh"
    );
    server
        .post(
            "/api/spaces",
            &json!({"Name": "Shadow", "Slug": "Spaces-1"}),
        )
        .assert_error(400);
    server
        .post("/api/spaces", &json!({"Name": "Everything", "Slug": "all"}))
        .assert_error(400);
    let symbols = server
        .post("/api/spaces", &json!({"Name": "!!!"}))
        .assert_status(201)
        .clone();
    assert_eq!(
        symbols["Slug"],
        symbols["Id"].as_str().unwrap().to_lowercase()
    );
    server
        .post("/api/spaces", &json!({"Name": "???"}))
        .assert_status(201);
    server
        .post(
            "/api/Spaces-1/workerpools",
            &json!({"Name": "Far", "SortOrder": 99999999999i64}),
        )
        .assert_error(400);
    server.post("/api/Spaces-1/machinepolicies", &json!({"Name": "Never", "MachineHealthCheckPolicy": {"HealthCheckInterval": "00:00:00"}})).assert_error(400);
    let body = json!({"Name": "AdHocScript", "QueueTime": "2030-01-02T00:00:00Z", "QueueTimeExpiry": "2030-01-01T00:00:00Z", "Arguments": {"ScriptBody": "true"}});
    server.post("/api/Spaces-1/tasks", &body).assert_error(400);
    let twice = json!({"Name": "AdHocScript", "Arguments": {"ScriptBody": "true", "WorkerPoolIds": ["WorkerPools-1", "workerpools-1"]}});
    let task = server
        .post("/api/Spaces-1/tasks", &twice)
        .assert_status(201)
        .clone();
    assert_eq!(task["Arguments"]["WorkerPoolIds"], json!(["WorkerPools-1"]));
    assert_eq!(
        server.wait_task(task["Id"].as_str().unwrap()).0["State"],
        "Success"
    );
    // The administrator's last key cannot be revoked: that would lock everyone out.
    server
        .delete("/api/users/Users-1/apikeys/APIKeys-1")
        .assert_error(400);
    let refused = Server::start_with_key(
        tempfile::tempdir().unwrap().path(),
        &["--task-cap", "0"],
        Some(KEY),
    )
    .err()
    .unwrap();
    assert!(refused.contains("task-cap"), "{refused}");
}
