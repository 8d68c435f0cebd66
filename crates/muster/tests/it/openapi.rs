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
            // Without a key, every operation but the anonymous two answers 401, as documented
            // (what schemathesis's ignored_auth check would probe; its wrong keys trip the 429).
            let anonymous =
                path == "/api" || path == "/api/openapi.json" || path.ends_with("/ping");
            let bare = crate::support::client()
                .request(
                    method.to_uppercase().parse().unwrap(),
                    format!("{}{concrete}", server.url),
                )
                .body("{}");
            let reply = server.send(bare);
            if path == "/api/workerregistrations" {
                // A registration token, in the body, is its credential.
                assert_eq!(reply.status, 400, "{method} {path} without a token");
                assert!(reply.text.contains("Token is required"), "{}", reply.text);
            } else if anonymous {
                assert_eq!(reply.status, 200, "{method} {path} without a key");
            } else {
                assert_eq!(reply.status, 401, "{method} {path} without a key");
                assert!(reply.body["ErrorMessage"].is_string(), "{method} {path}");
            }
            count += 1;
        }
    }
    assert!(count >= 60, "only {count} operations documented");
    let lib_ops = muster_server::openapi_operations();
    assert_eq!(lib_ops.len(), count);
}

/// What every request may answer is in the document: the contract's error body for a bad request,
/// a missing key or permission, an unknown address, and the 429 (with Retry-After) an address
/// gets after too many wrong keys. A bounded schemathesis run (`scripts/schemathesis.sh`) checks
/// the whole document against a live server.
#[test]
fn every_operation_documents_the_answers_every_request_may_get() {
    let server = Server::start();
    let document = server.ok("/api/openapi.json");
    for (path, operations) in document["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let responses = &operation["responses"];
            let anonymous =
                path == "/api" || path == "/api/openapi.json" || path.ends_with("/ping");
            let codes: &[&str] = if anonymous {
                // The load balancer's ping also answers 418 while its node is drained.
                let expected: &[&str] = if path.ends_with("/ping") {
                    &["200", "418"]
                } else {
                    &["200"]
                };
                let mut documented: Vec<&String> = responses.as_object().unwrap().keys().collect();
                documented.sort();
                assert_eq!(documented, expected, "{path}");
                &[]
            } else {
                &["400", "401", "403", "404", "429"]
            };
            for code in codes {
                assert_eq!(
                    responses[code]["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/Error",
                    "{method} {path} does not document {code}"
                );
            }
            if !anonymous {
                assert!(
                    responses["429"]["headers"]["Retry-After"]["required"] == true,
                    "{method} {path}: 429 without Retry-After"
                );
            }
        }
    }
    let schemas = &document["components"]["schemas"];
    let error = &schemas["Error"]["required"];
    assert_eq!(error, &json!(["ErrorMessage", "Errors"]));
    // A query parameter of one value given twice is refused; a list may repeat.
    let reply = server.send(server.request("GET", "/api/spaces?skip=0&skip=1"));
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(
        reply.body["Errors"][0],
        "The query parameter 'skip' is given more than once."
    );
    let reply = server.send(server.request("GET", "/api/spaces?ids=Spaces-1&ids=Spaces-2"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    // A documented query parameter says what the server reads: skip is a whole number.
    let skip = document["paths"]["/api/spaces"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "skip")
        .unwrap()
        .clone();
    assert_eq!(skip["schema"]["type"], "integer");
    assert_eq!(skip["allowEmptyValue"], true);
    let reply = server.send(server.request("GET", "/api/spaces?skip=x"));
    assert_eq!(reply.status, 400);
}
