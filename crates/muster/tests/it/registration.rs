//! Registration tokens: an agent registers a worker without an API key, in the token's space and
//! pools, as many times as the token allows and until it expires or is revoked.

use crate::support::{Server, agent};
use serde_json::json;

fn token(server: &Server, body: serde_json::Value) -> String {
    server
        .post("/api/Spaces-1/registrationtokens", &body)
        .assert_status(201)["Token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `muster-agent register-worker --registration-token` as a polling agent in its own home.
fn register(
    server: &Server,
    home: &std::path::Path,
    name: &str,
    token: &str,
) -> std::process::Output {
    agent()
        .arg("--home")
        .arg(home)
        .args([
            "register-worker",
            "--server",
            &server.url,
            "--registration-token",
            token,
        ])
        .args(["--name", name, "--comms-style", "TentacleActive"])
        .args([
            "--server-comms-address",
            &format!("127.0.0.1:{}", server.comms_port),
        ])
        .env_remove("MUSTER_API_KEY")
        .output()
        .unwrap()
}

#[test]
fn a_one_time_token_registers_one_worker_in_its_pool() {
    let server = Server::start();
    let pool = server
        .post("/api/Spaces-1/workerpools", &json!({"Name": "Tokened"}))
        .assert_status(201)["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let one = token(&server, json!({"WorkerPoolIds": [pool]}));
    assert!(one.starts_with("MRT-"), "{one}");
    // Listed without its value.
    let listed = server.ok("/api/Spaces-1/registrationtokens");
    assert_eq!(listed["Items"][0]["UsesLeft"], 1);
    assert!(!listed.to_string().contains(&one), "{listed}");

    let temp = tempfile::tempdir().unwrap();
    let first = register(&server, &temp.path().join("a"), "tok-a", &one);
    assert!(first.status.success(), "{first:?}");
    let worker = &server.ok("/api/Spaces-1/workers?name=tok-a")["Items"][0];
    assert_eq!(worker["WorkerPoolIds"], json!([pool]));
    assert_eq!(worker["Endpoint"]["CommunicationStyle"], "TentacleActive");
    // Used up: a second agent is refused, and says why.
    let second = register(&server, &temp.path().join("b"), "tok-b", &one);
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("registration token is not known"),
        "{second:?}"
    );
    assert_eq!(
        server.ok("/api/Spaces-1/registrationtokens")["TotalResults"],
        0
    );
    let events = server.ok(&format!(
        "/api/Spaces-1/events?regarding={}",
        worker["Id"].as_str().unwrap()
    ));
    assert!(
        events
            .to_string()
            .contains("registered with registration token"),
        "{events}"
    );

    // A token for two: the same agent registering again gets its worker back and uses nothing;
    // revoked, the token registers nothing more.
    let two = token(
        &server,
        json!({"WorkerPoolIds": [pool], "Uses": 2, "ExpiresInMinutes": 5}),
    );
    let c = temp.path().join("c");
    assert!(register(&server, &c, "tok-c", &two).status.success());
    let again = register(&server, &c, "tok-c", &two);
    assert!(again.status.success(), "{again:?}");
    let listed = server.ok("/api/Spaces-1/registrationtokens");
    assert_eq!(listed["Items"][0]["UsesLeft"], 1, "{listed}");
    let id = listed["Items"][0]["Id"].as_str().unwrap().to_string();
    server
        .delete(&format!("/api/Spaces-1/registrationtokens/{id}"))
        .assert_status(200);
    assert!(
        !register(&server, &temp.path().join("d"), "tok-d", &two)
            .status
            .success()
    );
}

#[test]
fn bad_tokens_and_registrations_are_clear_errors() {
    let server = Server::start();
    for (body, expected) in [
        (json!({}), "WorkerPoolIds is required"),
        (
            json!({"WorkerPoolIds": ["WorkerPools-99"]}),
            "there is no pool WorkerPools-99",
        ),
        (
            json!({"WorkerPoolIds": ["WorkerPools-1"], "Uses": 0}),
            "Uses must be a whole number from 1 to 1000",
        ),
        (
            json!({"WorkerPoolIds": ["WorkerPools-1"], "ExpiresInMinutes": 100000}),
            "ExpiresInMinutes must be a whole number from 1 to 10080",
        ),
    ] {
        let reply = server.post("/api/Spaces-1/registrationtokens", &body);
        reply.assert_error(400);
        assert!(reply.text.contains(expected), "{body}: {}", reply.text);
    }
    // The registration itself needs no API key, but a token.
    let anonymous = crate::support::client();
    let post = |body: serde_json::Value| {
        let response = anonymous
            .post(format!("{}/api/workerregistrations", server.url))
            .json(&body)
            .send()
            .unwrap();
        (response.status().as_u16(), response.text().unwrap())
    };
    let (status, text) = post(json!({"Name": "x"}));
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("Token is required"), "{text}");
    let (status, text) = post(json!({"Token": "MRT-WRONG", "Name": "x", "Endpoint": {}}));
    assert_eq!(status, 401, "{text}");
    let good = token(&server, json!({"WorkerPoolIds": ["WorkerPools-1"]}));
    let (status, text) = post(
        json!({"Token": good, "Name": "ssh", "Endpoint": {"CommunicationStyle": "Ssh", "Host": "127.0.0.1"}}),
    );
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("a registration token registers agents"),
        "{text}"
    );
    // Refused input used nothing up.
    assert_eq!(
        server.ok("/api/Spaces-1/registrationtokens")["Items"][0]["UsesLeft"],
        1
    );
}
