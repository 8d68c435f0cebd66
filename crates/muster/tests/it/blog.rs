//! The seed blog's "Get Space List" and "Add workers to remaining spaces" calls, made the way its
//! PowerShell makes them: `?skip=N` paging that stops when a page is shorter than ItemsPerPage, mixed
//! route casing, and a JSON body sent without a JSON content type.

use crate::support::Server;
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
    let endpoint = json!({"CommunicationStyle": "TentacleActive", "Uri": "poll://samplesworker0000001/", "Thumbprint": "C0FFEE".repeat(7).chars().take(40).collect::<String>()});
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
