//! The OpenAPI document describes the API as it is: every documented operation is routed.

use crate::support::Server;
use serde_json::json;

#[test]
fn every_documented_operation_is_served() {
    let server = Server::start();
    let document = server.ok("/api/openapi.json");
    assert_eq!(document["openapi"], "3.0.3");
    let task = server.run_script("Spaces-1", json!({"ScriptBody": "true"}));
    let task_id = task["Id"].as_str().unwrap().to_string();
    server.wait_task(&task_id);
    let paths = document["paths"].as_object().unwrap();
    let mut count = 0;
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            let concrete = path
                .replace("{spaceId}", "Spaces-1")
                .replace("{certificateId}", "certificate-global")
                .replace("{userId}", "Users-1")
                .replace("{apiKeyId}", "APIKeys-999")
                .replace("{taskId}", &task_id)
                .replace("{id}", "Unknown-1");
            let reply = server.send(server.request(&method.to_uppercase(), &concrete).body("{}"));
            let unrouted = reply.status == 405
                || reply.body["ErrorMessage"] == "There is no resource at this address.";
            assert!(
                !unrouted,
                "{} {path} is documented but not served ({})",
                method.to_uppercase(),
                reply.status
            );
            count += 1;
        }
    }
    assert!(count >= 60, "only {count} operations documented");
    let lib_ops = muster_server::openapi_operations();
    assert_eq!(lib_ops.len(), count);
}
