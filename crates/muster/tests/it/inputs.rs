//! What a request may not say: names that show nothing, ids too long to echo back, and bodies that
//! say one thing twice.

use crate::support::Server;
use serde_json::json;

#[test]
fn names_of_only_invisible_characters_are_refused_naming_the_field() {
    let server = Server::start();
    for name in [
        "   ",
        "\u{200B}\u{200B}",
        "\u{3000}\u{00A0}",
        "\u{FEFF}",
        "\u{2060}\u{00AD} ",
        "\u{3164}",
    ] {
        for path in ["/api/spaces", "/api/Spaces-1/workerpools"] {
            let reply = server.post(path, &json!({"Name": name}));
            reply.assert_error(400);
            assert!(
                reply.text.contains("Name"),
                "{path} {name:?}: names the field: {}",
                reply.text
            );
        }
    }
    // A visible name with an invisible character in it is still a name.
    server
        .post("/api/spaces", &json!({"Name": "Team\u{200B}A"}))
        .assert_status(201);
}

#[test]
fn a_404_never_echoes_a_huge_id() {
    let server = Server::start();
    let id = "W".repeat(20_000);
    for path in [
        format!("/api/Spaces-1/workers/{id}"),
        format!("/api/tasks/{id}"),
        format!("/api/spaces/{id}"),
    ] {
        let reply = server.get(&path);
        reply.assert_error(404);
        assert!(
            reply.text.len() < 1_000,
            "{path}: {} bytes",
            reply.text.len()
        );
        assert!(
            reply.text.to_ascii_uppercase().contains(&"W".repeat(100)),
            "{}",
            reply.text
        );
    }
}

#[test]
fn a_body_with_a_key_twice_is_refused() {
    let server = Server::start();
    for body in [
        r#"{"Name": "one", "Name": "two"}"#,
        r#"{"Name": "one", "name": "two"}"#,
        r#"{"Name": "ok", "Description": "x", "Extra": {"A": 1, "A": 2}}"#,
    ] {
        let reply = server.post_raw("/api/spaces", body, "application/json");
        reply.assert_error(400);
        assert!(reply.text.contains("appears twice"), "{}", reply.text);
    }
    assert_eq!(
        server.ok("/api/spaces/all").as_array().unwrap().len(),
        1,
        "nothing was created"
    );
    server
        .post_raw(
            "/api/spaces",
            r#"{"Name": "one", "Nested": [{"A": 1}, {"A": 2}]}"#,
            "application/json",
        )
        .assert_status(201);
}
