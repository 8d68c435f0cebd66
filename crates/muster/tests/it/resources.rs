//! The normal path of every resource endpoint (contract 2.1–2.5, 2.7).

use crate::support::{Server, listening_endpoint};
use serde_json::{Value, json};

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v["Id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn spaces_are_created_with_their_own_defaults_and_one_default_space() {
    let server = Server::start();
    let root = server.ok("/api/Spaces-1");
    assert_eq!(root["Id"], "Spaces-1");
    assert!(
        root["Links"]["WorkerPools"]
            .as_str()
            .unwrap()
            .starts_with("/api/Spaces-1/")
    );
    let space = server
        .post(
            "/api/spaces",
            &json!({"Name": "Team B", "Description": "b"}),
        )
        .assert_status(201)
        .clone();
    let id = space["Id"].as_str().unwrap().to_string();
    assert_eq!(space["Slug"], "team-b");
    assert_eq!(space["Links"]["Self"], format!("/api/spaces/{id}"));
    assert_eq!(space["Links"]["SpaceHome"], format!("/api/{id}"));
    let pools = server.ok(&format!("/api/{id}/workerpools/all"));
    assert_eq!(pools.as_array().unwrap().len(), 1);
    assert_eq!(pools[0]["Name"], "Default Worker Pool");
    assert_eq!(pools[0]["IsDefault"], true);
    let policies = server.ok(&format!("/api/{id}/machinepolicies/all"));
    assert_eq!(policies[0]["Name"], "Default Machine Policy");
    assert_eq!(server.ok(&format!("/api/spaces/{id}"))["Name"], "Team B");
    assert_eq!(server.ok("/api/spaces/all").as_array().unwrap().len(), 2);

    let updated = server
        .put(
            &format!("/api/spaces/{id}"),
            &json!({"Description": "changed", "IsDefault": true}),
        )
        .assert_status(200)
        .clone();
    assert_eq!(updated["Description"], "changed");
    assert_eq!(
        updated["Name"], "Team B",
        "a partial PUT keeps the other fields"
    );
    let defaults: Vec<Value> = server
        .ok("/api/spaces/all")
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["IsDefault"] == true)
        .cloned()
        .collect();
    assert_eq!(defaults.len(), 1, "exactly one default space");
    assert_eq!(defaults[0]["Id"], id.as_str());
    server.delete("/api/spaces/Spaces-1").assert_error(400);
    server
        .put("/api/spaces/Spaces-1", &json!({"IsDefault": true}))
        .assert_status(200);

    server
        .delete(&format!("/api/spaces/{id}"))
        .assert_error(400);
    server
        .put(
            &format!("/api/spaces/{id}"),
            &json!({"TaskQueueStopped": true}),
        )
        .assert_status(200);
    let reply = server.delete(&format!("/api/spaces/{id}"));
    assert_eq!(reply.status, 200);
    server.get(&format!("/api/spaces/{id}")).assert_error(404);
    server
        .get(&format!("/api/{id}/workerpools"))
        .assert_error(404);
}

#[test]
fn the_current_user_their_spaces_and_api_keys() {
    let server = Server::start();
    let me = server.ok("/api/users/me");
    assert_eq!(me["Username"], "admin");
    assert!(me["DisplayName"].is_string());
    let user_id = me["Id"].as_str().unwrap();
    assert_eq!(
        me["Links"]["Spaces"],
        format!("/api/users/{user_id}/spaces")
    );
    let spaces = server.ok(&format!("/api/users/{user_id}/spaces"));
    assert_eq!(
        spaces
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["IsDefault"] == true)
            .count(),
        1
    );
    assert_eq!(server.ok(&format!("/api/users/{user_id}"))["Id"], user_id);
    assert_eq!(server.ok("/api/users")["TotalResults"], 1);

    let created = server
        .post(
            &format!("/api/users/{user_id}/apikeys"),
            &json!({"Purpose": "ci"}),
        )
        .assert_status(201)
        .clone();
    let key = created["ApiKey"]
        .as_str()
        .expect("the new key is a plain string, once")
        .to_string();
    assert!(key.starts_with("API-") && key.len() >= 30);
    let listed = server.ok(&format!("/api/users/{user_id}/apikeys"));
    let entry = listed["Items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["Id"] == created["Id"])
        .unwrap()
        .clone();
    assert_eq!(entry["ApiKey"]["HasValue"], true);
    assert!(entry["ApiKey"]["NewValue"].is_null());
    assert!(
        !listed.to_string().contains(&key),
        "a key is never shown twice"
    );

    let with_new_key = crate::support::client()
        .get(format!("{}/api/users/me", server.url))
        .header("X-Octopus-ApiKey", &key);
    server.send(with_new_key).assert_status(200);
    assert_eq!(
        server
            .delete(&format!(
                "/api/users/{user_id}/apikeys/{}",
                created["Id"].as_str().unwrap()
            ))
            .status,
        200
    );
    let revoked = crate::support::client()
        .get(format!("{}/api/users/me", server.url))
        .header("X-Octopus-ApiKey", &key);
    server.send(revoked).assert_error(401);
    server
        .post(
            &format!("/api/users/{user_id}/apikeys"),
            &json!({"Expires": "2001-01-01T00:00:00Z"}),
        )
        .assert_error(400);
    server.get("/api/users/Users-99").assert_error(404);

    let database = std::fs::read(server.dir.join("muster.db")).unwrap();
    let needle = crate::support::KEY.as_bytes();
    assert!(
        !database.windows(needle.len()).any(|w| w == needle),
        "API keys are stored only as hashes"
    );
}

#[test]
fn worker_pools_crud_order_summary_and_types() {
    let config = crate::support::dynamic_config();
    let server = Server::start_with(&["--config", &config]);
    let default_pool = server.default_pool();
    let linux = server
        .post(
            "/api/Spaces-1/workerpools",
            &json!({"Name": "Linux", "WorkerPoolType": "StaticWorkerPool"}),
        )
        .assert_status(201)
        .clone();
    let linux_id = linux["Id"].as_str().unwrap().to_string();
    assert_eq!(linux["CanAddWorkers"], true);
    assert_eq!(
        linux["Links"]["Self"],
        format!("/api/Spaces-1/workerpools/{linux_id}")
    );
    let dynamic = server
        .post(
            "/api/Spaces-1/workerpools",
            &json!({"Name": "Cloud", "WorkerPoolType": "DynamicWorkerPool"}),
        )
        .assert_status(201)
        .clone();
    assert_eq!(dynamic["CanAddWorkers"], false);
    assert_eq!(dynamic["WorkerType"], "UbuntuDefault");
    let dynamic_id = dynamic["Id"].as_str().unwrap().to_string();

    assert_eq!(
        ids(&server.ok("/api/Spaces-1/workerpools/all")),
        vec![default_pool.clone(), linux_id.clone(), dynamic_id.clone()]
    );
    let order = json!([dynamic_id, default_pool, linux_id]);
    assert_eq!(
        server
            .put("/api/Spaces-1/workerpools/sortorder", &order)
            .status,
        200
    );
    assert_eq!(
        ids(&server.ok("/api/Spaces-1/workerpools/all")),
        vec![dynamic_id.clone(), default_pool.clone(), linux_id.clone()]
    );
    assert_eq!(server.ok("/api/Spaces-1/workerpools/sortorder"), order);
    server
        .put("/api/Spaces-1/workerpools/sortorder", &json!([linux_id]))
        .assert_error(400);

    let worker =
        json!({"Name": "w1", "Endpoint": listening_endpoint(1), "WorkerPoolIds": [linux_id]});
    server
        .post("/api/Spaces-1/workers", &worker)
        .assert_status(201);
    let summary = server.ok("/api/Spaces-1/workerpools/summary");
    let linux_summary = summary["WorkerPoolSummaries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["WorkerPool"]["Id"] == linux_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(linux_summary["TotalMachines"], 1);
    // Its health changes as soon as it is checked; whatever it is, it is counted once.
    let counted: u64 = linux_summary["MachineHealthStatusSummaries"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(counted, 1);
    assert_eq!(
        linux_summary["MachineEndpointSummaries"]["TentaclePassive"],
        1
    );
    assert_eq!(summary["TotalMachines"], 1);
    let hidden = server.ok("/api/Spaces-1/workerpools/summary?hideEmptyWorkerPools=true");
    assert_eq!(hidden["WorkerPoolSummaries"].as_array().unwrap().len(), 1);
    assert_eq!(
        server.ok("/api/Spaces-1/workerpools/supportedtypes")["SupportedPoolTypes"],
        json!(["StaticWorkerPool", "DynamicWorkerPool"])
    );
    let types = server.ok("/api/Spaces-1/workerpools/dynamicworkertypes");
    assert_eq!(
        types["WorkerTypes"][1],
        json!({"Id": "Windows2022", "Type": "kubernetes", "Description": "Windows Server 2022",
            "StartDateUtc": null, "DeprecationDateUtc": null, "EndOfLifeDateUtc": null})
    );
    let unknown = server.post(
        "/api/Spaces-1/workerpools",
        &json!({"Name": "Mac", "WorkerPoolType": "DynamicWorkerPool", "WorkerType": "MacOS"}),
    );
    assert_eq!(unknown.status, 400, "{}", unknown.text);
    assert!(
        unknown
            .text
            .contains("WorkerType must be one of UbuntuDefault, Windows2022, got 'MacOS'"),
        "{}",
        unknown.text
    );

    let renamed = server
        .put(
            &format!("/api/Spaces-1/workerpools/{linux_id}"),
            &json!({"Name": "Linux Pool", "IsDefault": true}),
        )
        .assert_status(200)
        .clone();
    assert_eq!(renamed["IsDefault"], true);
    assert_eq!(
        server.ok(&format!("/api/Spaces-1/workerpools/{default_pool}"))["IsDefault"],
        false,
        "the default flag moved"
    );
    server
        .put(
            &format!("/api/Spaces-1/workerpools/{dynamic_id}"),
            &json!({"WorkerPoolType": "StaticWorkerPool"}),
        )
        .assert_error(400);
    server
        .delete(&format!("/api/Spaces-1/workerpools/{linux_id}"))
        .assert_error(400);
    assert_eq!(
        server
            .delete(&format!("/api/Spaces-1/workerpools/{dynamic_id}"))
            .status,
        200
    );
    server
        .get(&format!("/api/Spaces-1/workerpools/{dynamic_id}"))
        .assert_error(404);
}

#[test]
fn workers_crud_filters_and_endpoint_shapes() {
    let server = Server::start();
    let pool = server.default_pool();
    let passive = json!({"Name": "listening", "Endpoint": listening_endpoint(1), "WorkerPoolIds": [pool], "MachinePolicyId": null});
    let passive = server
        .post("/api/Spaces-1/workers", &passive)
        .assert_status(201)
        .clone();
    assert_eq!(passive["HealthStatus"], "Unknown");
    assert_eq!(
        passive["MachinePolicyId"], "MachinePolicies-1",
        "a null policy is the default policy"
    );
    assert_eq!(passive["Thumbprint"], passive["Endpoint"]["Thumbprint"]);
    assert_eq!(passive["Uri"], "https://127.0.0.1:10934/");
    let polling_endpoint = json!({"CommunicationStyle": "TentacleActive", "Uri": "poll://abcdefghij0123456789/", "Thumbprint": "ab".repeat(32)});
    let polling = server
        .post(
            "/api/Spaces-1/workers",
            &json!({"Name": "polling", "Endpoint": polling_endpoint, "WorkerPoolIds": [pool]}),
        )
        .assert_status(201)
        .clone();
    assert_eq!(
        polling["Thumbprint"],
        "AB".repeat(32),
        "thumbprints are stored upper case"
    );
    let account = crate::support::ssh_account(&server, "Spaces-1", "ssh login");
    let ssh = json!({"Name": "ssh", "Endpoint": {"CommunicationStyle": "Ssh", "Host": "127.0.0.1", "Port": 2222,
        "Fingerprint": crate::support::SSH_FINGERPRINT, "AccountId": account}, "WorkerPoolIds": [pool]});
    let ssh = server
        .post("/api/Spaces-1/workers", &ssh)
        .assert_status(201)
        .clone();
    assert_eq!(ssh["Endpoint"]["Uri"], "ssh://127.0.0.1:2222/");

    for bad in [
        json!({"CommunicationStyle": "TentaclePassive", "Uri": "ftp://x/", "Thumbprint": "AB".repeat(32)}),
        json!({"CommunicationStyle": "TentaclePassive", "Uri": "https://h:10933/", "Thumbprint": "short"}),
        json!({"CommunicationStyle": "TentacleActive", "Uri": "poll://UPPER CASE/", "Thumbprint": "AB".repeat(32)}),
        json!({"CommunicationStyle": "Ssh", "Host": "", "Port": 70000}),
        json!({"CommunicationStyle": "Carrier pigeon"}),
        json!("not an object"),
    ] {
        server
            .post(
                "/api/Spaces-1/workers",
                &json!({"Name": "bad", "Endpoint": bad, "WorkerPoolIds": [pool]}),
            )
            .assert_error(400);
    }
    server
        .post(
            "/api/Spaces-1/workers",
            &json!({"Name": "nopool", "Endpoint": listening_endpoint(9), "WorkerPoolIds": []}),
        )
        .assert_error(400);
    server.post("/api/Spaces-1/workers", &json!({"Name": "nopolicy", "Endpoint": listening_endpoint(9), "WorkerPoolIds": [pool], "MachinePolicyId": "MachinePolicies-77"})).assert_error(400);
    server.post("/api/Spaces-1/workers", &json!({"Name": "LISTENING", "Endpoint": listening_endpoint(9), "WorkerPoolIds": [pool]})).assert_error(400);

    let thumbprint = passive["Thumbprint"].as_str().unwrap();
    let found = server.ok(&format!(
        "/api/Spaces-1/workers/all?thumbprint={}",
        thumbprint.to_lowercase()
    ));
    assert_eq!(
        ids(&found),
        vec![passive["Id"].as_str().unwrap().to_string()]
    );
    let listed = server.ok("/api/Spaces-1/workers");
    assert_eq!(listed["ItemType"], "Worker");
    let names: Vec<&str> = listed["Items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["Name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["listening", "polling", "ssh"],
        "workers are ordered by name"
    );
    assert_eq!(
        server.ok("/api/Spaces-1/workers?commStyles=Ssh,TentacleActive")["TotalResults"],
        2
    );
    assert_eq!(
        server.ok("/api/Spaces-1/workers?partialName=LLIN")["TotalResults"],
        1
    );
    assert_eq!(
        server.ok(&format!("/api/Spaces-1/workerpools/{pool}/workers"))["TotalResults"],
        3
    );
    assert_eq!(
        server.ok("/api/Spaces-1/machinepolicies/MachinePolicies-1/workers")["TotalResults"],
        3
    );

    let id = passive["Id"].as_str().unwrap();
    let updated = server
        .put(
            &format!("/api/Spaces-1/workers/{id}"),
            &json!({"IsDisabled": true, "HealthStatus": "Healthy"}),
        )
        .assert_status(200)
        .clone();
    assert_eq!(updated["IsDisabled"], true);
    assert_ne!(
        updated["HealthStatus"], "Healthy",
        "a client cannot set health"
    );
    assert_eq!(
        server.ok("/api/Spaces-1/workers?isDisabled=true")["TotalResults"],
        1
    );
    assert_eq!(
        server.ok(&format!("/api/Spaces-1/workers/{id}/connection"))["MachineId"],
        id
    );
    assert_eq!(
        server.delete(&format!("/api/Spaces-1/workers/{id}")).status,
        200
    );
    server
        .get(&format!("/api/Spaces-1/workers/{id}"))
        .assert_error(404);
}

#[test]
fn machine_policies_crud_and_template() {
    let server = Server::start();
    let template = server.ok("/api/Spaces-1/machinepolicies/template");
    assert_eq!(
        template["MachineHealthCheckPolicy"]["HealthCheckInterval"],
        "01:00:00"
    );
    assert_eq!(
        template["MachineRpcCallRetryPolicy"]["RetryDuration"],
        "00:02:30"
    );
    assert_eq!(template["ConnectionRetryCountLimit"], 5);
    let created = server.post("/api/Spaces-1/machinepolicies", &json!({"Name": "Fast", "MachineHealthCheckPolicy": {"HealthCheckInterval": "00:05:00"}})).assert_status(201).clone();
    assert_eq!(
        created["MachineHealthCheckPolicy"]["HealthCheckInterval"],
        "00:05:00"
    );
    assert_eq!(
        created["MachineHealthCheckPolicy"]["HealthCheckType"], "RunScript",
        "unset fields take the template's values"
    );
    assert_eq!(created["IsDefault"], false);
    let id = created["Id"].as_str().unwrap();
    assert_eq!(
        server.ok("/api/Spaces-1/machinepolicies")["TotalResults"],
        2
    );
    let updated = server
        .put(
            &format!("/api/Spaces-1/machinepolicies/{id}"),
            &json!({"Description": "quick"}),
        )
        .assert_status(200)
        .clone();
    assert_eq!(updated["Description"], "quick");
    server
        .put(
            &format!("/api/Spaces-1/machinepolicies/{id}"),
            &json!({"MachineHealthCheckPolicy": {"HealthCheckType": "Sometimes"}}),
        )
        .assert_error(400);
    server
        .delete("/api/Spaces-1/machinepolicies/MachinePolicies-1")
        .assert_error(400);
    assert_eq!(
        server
            .delete(&format!("/api/Spaces-1/machinepolicies/{id}"))
            .status,
        200
    );
}

#[test]
fn the_server_certificate_is_served_with_its_thumbprint() {
    let server = Server::start();
    let cert = server.ok("/api/configuration/certificates/certificate-global");
    let thumbprint = cert["Thumbprint"].as_str().unwrap();
    assert_eq!(thumbprint.len(), 64);
    assert!(
        thumbprint
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
    );
    assert_eq!(
        server.ok("/api/certificates/certificate-global")["Thumbprint"],
        thumbprint
    );
    let pem = server.get("/api/configuration/certificates/certificate-global/public-cer");
    assert!(pem.text.starts_with("-----BEGIN CERTIFICATE-----"));
    server
        .get("/api/configuration/certificates/other")
        .assert_error(404);
    assert!(server.dir.join("server-certificate/cert.pem").exists());
}

/// Dynamic worker types come from the configuration file: without one a dynamic pool is refused
/// with what to do; a bad file stops the server at start, naming the file, the type and the
/// setting; a task on a dynamic pool says which type and provider it waits for.
#[test]
fn dynamic_worker_types_come_from_the_configuration_file() {
    let bare = Server::start();
    let refused = bare.post(
        "/api/Spaces-1/workerpools",
        &json!({"Name": "Cloud", "WorkerPoolType": "DynamicWorkerPool"}),
    );
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert!(
        refused.text.contains("defines no dynamic worker types"),
        "{}",
        refused.text
    );
    assert_eq!(
        bare.ok("/api/Spaces-1/workerpools/dynamicworkertypes")["WorkerTypes"],
        json!([])
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "WorkerTypes:\n  - Id: tiny\n    Provider: process\n    MaxWorkers: 0\n",
    )
    .unwrap();
    let error = Server::start_in(
        &dir.path().join("data"),
        &["--config", bad.to_str().unwrap()],
    )
    .err()
    .expect("a bad configuration file stops the server");
    assert!(
        error.contains("worker type 'tiny': MaxWorkers must be at least 1"),
        "{error}"
    );
    assert!(error.contains("bad.yaml"), "{error}");

    let config = crate::support::dynamic_config();
    let server = Server::start_with(&["--config", &config]);
    let pool = server
        .post(
            "/api/Spaces-1/workerpools",
            &json!({"Name": "Cloud", "WorkerPoolType": "DynamicWorkerPool"}),
        )
        .assert_status(201)
        .clone();
    assert_eq!(
        pool["WorkerType"], "UbuntuDefault",
        "the first type is the default"
    );
    let task = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": "echo hi", "TargetType": "WorkerPools", "WorkerPoolIds": [pool["Id"]]}),
    );
    let id = task["Id"].as_str().unwrap().to_string();
    // The type's provider is asked for a worker, and its answer is the task's queue reason.
    crate::support::eventually("the provider's answer in the queue reason", || {
        let reason = server.ok(&format!("/api/tasks/{id}"))["QueueReason"]
            .as_str()
            .map(str::to_string)?;
        reason
            .contains("a worker of type UbuntuDefault: 1 of 1 attempts failed: creating pod default/ubuntudefault-")
            .then_some(())
    });
}
