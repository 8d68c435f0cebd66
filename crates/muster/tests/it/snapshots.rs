//! Snapshots of the JSON shapes clients read: a changed shape fails here. Values that differ on every
//! run (dates, GUIDs, thumbprints, durations) are replaced by placeholders first.

use crate::support::{Server, listening_endpoint};
use serde_json::{Value, json};

fn stable(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = match k.as_str() {
                        "Duration" | "Completed" | "InstallationId" | "Thumbprint"
                        | "ThumbprintSha1" | "Hint" | "ApiKey"
                            if v.is_string() =>
                        {
                            json!(format!("[{k}]"))
                        }
                        "PhysicalLogSize" => json!("[size]"),
                        // Health checks start as soon as a worker exists and race with the snapshot.
                        "MachineHealthStatusSummaries" => json!("[health counts]"),
                        "ServerNode" if v.is_string() => json!("[node]"),
                        _ => stable(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(stable).collect()),
        Value::String(s) if looks_like_date(s) => json!("[date]"),
        Value::String(s) if s.starts_with("Running on the Built-in worker of node ") => {
            json!("Running on the Built-in worker of node [node]")
        }
        other => other.clone(),
    }
}

fn looks_like_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && s.ends_with("+00:00")
}

macro_rules! snapshot {
    ($name:expr, $value:expr) => {
        insta::with_settings!({snapshot_path => "snapshots", prepend_module_to_snapshot => false}, {
            insta::assert_json_snapshot!($name, stable(&$value));
        });
    };
}

#[test]
fn resource_shapes() {
    let config = crate::support::dynamic_config();
    let server = Server::start_with(&["--config", &config]);
    snapshot!("root", server.ok("/api"));
    snapshot!("space_root", server.ok("/api/Spaces-1"));
    snapshot!("space", server.ok("/api/spaces/Spaces-1"));
    snapshot!("spaces_page", server.ok("/api/spaces?take=1"));
    snapshot!("user", server.ok("/api/users/me"));
    snapshot!(
        "certificate",
        server.ok("/api/configuration/certificates/certificate-global")
    );
    snapshot!("pool", server.ok("/api/Spaces-1/workerpools/WorkerPools-1"));
    let dynamic = server
        .post(
            "/api/Spaces-1/workerpools",
            &json!({"Name": "Dynamic", "WorkerPoolType": "DynamicWorkerPool"}),
        )
        .assert_status(201)
        .clone();
    snapshot!("pool_dynamic", dynamic);
    snapshot!(
        "policy",
        server.ok("/api/Spaces-1/machinepolicies/MachinePolicies-1")
    );
    let passive = json!({"Name": "listening", "Endpoint": listening_endpoint(1), "WorkerPoolIds": ["WorkerPools-1"]});
    snapshot!(
        "worker_listening",
        server
            .post("/api/Spaces-1/workers", &passive)
            .assert_status(201)
            .clone()
    );
    let polling = json!({"Name": "polling", "Endpoint": {"CommunicationStyle": "TentacleActive", "Uri": "poll://abcdefghij0123456789/", "Thumbprint": "AB".repeat(32)}, "WorkerPoolIds": ["WorkerPools-1"]});
    snapshot!(
        "worker_polling",
        server
            .post("/api/Spaces-1/workers", &polling)
            .assert_status(201)
            .clone()
    );
    let account = crate::support::ssh_account(&server, "Spaces-1", "ssh login");
    let ssh = json!({"Name": "ssh", "Endpoint": {"CommunicationStyle": "Ssh", "Host": "127.0.0.1", "Port": 22,
        "Fingerprint": crate::support::SSH_FINGERPRINT, "AccountId": account}, "WorkerPoolIds": ["WorkerPools-1"]});
    snapshot!(
        "worker_ssh",
        server
            .post("/api/Spaces-1/workers", &ssh)
            .assert_status(201)
            .clone()
    );
    let k8s = json!({"Name": "k8s", "Endpoint": {"CommunicationStyle": "KubernetesTentacle", "TentacleEndpointConfiguration": {"CommunicationMode": "Polling", "Uri": "poll://kubernetesagent0000001/", "Thumbprint": "CD".repeat(32)}}, "WorkerPoolIds": ["WorkerPools-1"]});
    snapshot!(
        "worker_kubernetes",
        server
            .post("/api/Spaces-1/workers", &k8s)
            .assert_status(201)
            .clone()
    );
    snapshot!(
        "pools_summary",
        server.ok("/api/Spaces-1/workerpools/summary")
    );
    snapshot!(
        "api_key_created",
        server
            .post(
                "/api/users/Users-1/apikeys",
                &json!({"Purpose": "snapshot"})
            )
            .assert_status(201)
            .clone()
    );
    snapshot!("api_keys", server.ok("/api/users/Users-1/apikeys"));
    snapshot!(
        "error_validation",
        server
            .post("/api/Spaces-1/workers", &json!({"Name": ""}))
            .body
            .clone()
    );
    snapshot!(
        "error_not_found",
        server.get("/api/spaces/Spaces-404").body.clone()
    );
    let task = server.post("/api/Spaces-1/tasks", &json!({"Name": "AdHocScript", "Description": "Snapshot", "Arguments": {"ScriptBody": "echo snap", "TargetType": "OctopusServer"}})).assert_status(201).clone();
    let id = task["Id"].as_str().unwrap().to_string();
    server.wait_task(&id);
    snapshot!("task", server.ok(&format!("/api/tasks/{id}")));
    snapshot!(
        "task_details",
        server.ok(&format!("/api/tasks/{id}/details"))
    );
}
