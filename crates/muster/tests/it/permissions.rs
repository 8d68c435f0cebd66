//! Users, teams and roles: what a key may do in each space, refused with 403 in a space the user sees
//! and 404 in one they do not.

use crate::support::{KEY, Server, agent, muster};
use serde_json::{Value, json};

fn id(value: &Value) -> String {
    value["Id"].as_str().unwrap().to_string()
}

#[test]
fn a_fresh_server_has_built_in_roles_and_an_administrators_team() {
    let server = Server::start();
    let roles = server.ok("/api/userroles/all");
    let names: Vec<&str> = roles
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Name"].as_str().unwrap())
        .collect();
    for expected in [
        "System administrator",
        "Space manager",
        "Worker manager",
        "Task runner",
        "Space viewer",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }
    let teams = server.ok("/api/teams/all");
    let admins = teams
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["Name"] == "Octopus Administrators")
        .unwrap();
    assert_eq!(admins["MemberUserIds"], json!(["Users-1"]));
    assert_eq!(admins["CanBeDeleted"], false);
    let me = server.ok("/api/users/Users-1/permissions");
    assert_eq!(me["IsAdministrator"], true);
    assert_eq!(me["SystemPermissions"], json!(["AdministerSystem"]));
    assert!(me["SpacePermissions"]["WorkerEdit"][0]["SpaceId"] == "Spaces-1");
    let all = server.ok("/api/permissions/all");
    assert!(all["SpacePermissions"]["TaskCreate"]["Description"].is_string());

    // The built-in parts hold.
    server
        .delete(&format!("/api/teams/{}", id(admins)))
        .assert_error(400);
    let mut emptied = admins.clone();
    emptied["MemberUserIds"] = json!([]);
    server
        .put(&format!("/api/teams/{}", id(admins)), &emptied)
        .assert_error(400);
    let viewer = roles
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["Name"] == "Space viewer")
        .unwrap();
    server
        .delete(&format!("/api/userroles/{}", id(viewer)))
        .assert_error(400);
    server
        .put(
            &format!("/api/userroles/{}", id(viewer)),
            &json!({"GrantedSpacePermissions": ["WorkerEdit"]}),
        )
        .assert_error(400);
    server.delete("/api/users/Users-1").assert_error(400);
    server
        .post(
            "/api/users",
            &json!({"Username": "eve", "Password": "secret"}),
        )
        .assert_error(400);
    server.post("/api/users", &json!({})).assert_error(400);

    // Roles of one's own: known permissions only, each where it belongs.
    let role = server
        .post(
            "/api/userroles",
            &json!({"Name": "Cancellers", "GrantedSpacePermissions": ["taskview", "TaskCancel"]}),
        )
        .assert_status(201)
        .clone();
    assert_eq!(
        role["GrantedSpacePermissions"],
        json!(["TaskView", "TaskCancel"])
    );
    for bad in [
        json!({"Name": "Bad", "GrantedSpacePermissions": ["DeployEverything"]}),
        json!({"Name": "Bad", "GrantedSpacePermissions": ["AdministerSystem"]}),
        json!({"Name": "Bad", "GrantedSystemPermissions": ["WorkerView"]}),
    ] {
        server.post("/api/userroles", &bad).assert_error(400);
    }
    let team = server
        .post(
            "/api/teams",
            &json!({"Name": "Cancel team", "MemberUserIds": ["users-1"]}),
        )
        .assert_status(201)
        .clone();
    assert_eq!(team["MemberUserIds"], json!(["Users-1"]));
    server
        .post(
            "/api/teams",
            &json!({"Name": "Ghosts", "MemberUserIds": ["Users-99"]}),
        )
        .assert_error(400);
    let admin_role = id(roles
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["Name"] == "System administrator")
        .unwrap());
    for bad in [
        json!({"TeamId": id(&team), "UserRoleId": admin_role, "SpaceId": "Spaces-1"}),
        json!({"TeamId": id(&team), "UserRoleId": id(&role)}),
        json!({"TeamId": id(&team), "UserRoleId": id(&role), "SpaceId": "Spaces-99"}),
        json!({"TeamId": "Teams-99", "UserRoleId": id(&role), "SpaceId": "Spaces-1"}),
        json!({"TeamId": id(&team), "UserRoleId": id(&role), "SpaceId": "Spaces-1", "ProjectIds": ["Projects-1"]}),
    ] {
        server.post("/api/scopeduserroles", &bad).assert_error(400);
    }
    let scoped = server
        .post(
            "/api/Spaces-1/scopeduserroles",
            &json!({"TeamId": id(&team), "UserRoleId": id(&role)}),
        )
        .assert_status(201)
        .clone();
    assert_eq!(scoped["SpaceId"], "Spaces-1");
    server
        .post(
            "/api/scopeduserroles",
            &json!({"TeamId": id(&team), "UserRoleId": id(&role), "SpaceId": "Spaces-1"}),
        )
        .assert_error(400);
    server
        .delete(&format!("/api/userroles/{}", id(&role)))
        .assert_error(400);
    server
        .delete(&format!("/api/teams/{}", id(&team)))
        .assert_status(200);
    server
        .get(&format!("/api/scopeduserroles/{}", id(&scoped)))
        .assert_error(404);
    server
        .delete(&format!("/api/userroles/{}", id(&role)))
        .assert_status(200);
}

#[test]
fn a_key_does_only_what_its_roles_allow_in_the_spaces_it_sees() {
    let server = Server::start();
    let a = "Spaces-1";
    let b = id(server
        .post("/api/spaces", &json!({"Name": "Team B"}))
        .assert_status(201));
    let (bob, bob_key) = server.new_user("bob");
    let as_bob = |method: &str, path: &str, body: Option<&Value>| {
        server.as_user(&bob_key, method, path, body)
    };

    // No role yet: no space exists for bob.
    assert_eq!(as_bob("GET", "/api/users/me", None).body["Username"], "bob");
    assert_eq!(as_bob("GET", "/api/spaces", None).body["TotalResults"], 0);
    assert_eq!(
        as_bob("GET", &format!("/api/users/{bob}/spaces"), None).body,
        json!([])
    );
    as_bob("GET", &format!("/api/{b}/workers"), None).assert_error(404);
    as_bob("GET", "/api/Spaces-1/workerpools/all", None).assert_error(404);
    as_bob("GET", "/api/users/Users-1", None).assert_error(404);
    as_bob("POST", "/api/users", Some(&json!({"Username": "mallory"}))).assert_error(403);
    as_bob("GET", "/api/teams", None).assert_error(403);
    as_bob("POST", "/api/spaces", Some(&json!({"Name": "Mine"}))).assert_error(403);
    assert_eq!(
        as_bob("GET", &format!("/api/users/{bob}/apikeys"), None).body["TotalResults"],
        1,
        "bob manages his own keys"
    );

    // A task runner in B sees B, runs B's tasks, and configures nothing.
    server.grant(&bob, "Task runner", &b);
    let spaces = as_bob("GET", "/api/spaces", None);
    assert_eq!(spaces.body["TotalResults"], 1);
    assert_eq!(spaces.body["Items"][0]["Id"], json!(b));
    as_bob("GET", &format!("/api/{b}/workers"), None).assert_status(200);
    let refused = as_bob(
        "POST",
        &format!("/api/{b}/workers"),
        Some(
            &json!({"Name": "w", "WorkerPoolIds": [], "Endpoint": {"CommunicationStyle": "TentaclePassive", "Uri": "https://127.0.0.1:10933/", "Thumbprint": "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF"}}),
        ),
    );
    refused.assert_error(403);
    assert!(
        refused.body["ErrorMessage"]
            .as_str()
            .unwrap()
            .contains("WorkerEdit"),
        "{}",
        refused.text
    );
    as_bob(
        "POST",
        &format!("/api/{b}/machinepolicies"),
        Some(&json!({"Name": "p"})),
    )
    .assert_error(403);
    as_bob(
        "PUT",
        &format!("/api/spaces/{b}"),
        Some(&json!({"Name": "Renamed"})),
    )
    .assert_error(403);
    let task = as_bob(
        "POST",
        &format!("/api/{b}/tasks"),
        Some(&json!({"Name": "AdHocScript", "Arguments": {"ScriptBody": "echo from B", "TargetType": "OctopusServer"}})),
    )
    .assert_status(201)
    .clone();
    let (task, _) = server.wait_task(&id(&task));
    assert_eq!(task["State"], "Success");
    assert!(
        as_bob("GET", &format!("/api/tasks/{}/raw", id(&task)), None)
            .text
            .contains("from B")
    );
    // Unprefixed creation goes to a space by SpaceId, and only where bob may run tasks.
    as_bob(
        "POST",
        "/api/tasks",
        Some(&json!({"Name": "AdHocScript", "SpaceId": a, "Arguments": {"ScriptBody": "true"}})),
    )
    .assert_error(400);

    // Space A's tasks do not exist for bob, by any route.
    let secret = server.run_script(
        a,
        json!({"ScriptBody": "echo secret of A", "TargetType": "OctopusServer"}),
    );
    server.wait_task(&id(&secret));
    for path in [
        format!("/api/tasks/{}", id(&secret)),
        format!("/api/tasks/{}/raw", id(&secret)),
        format!("/api/tasks/{}/details", id(&secret)),
        format!("/api/Spaces-1/tasks/{}", id(&secret)),
        format!("/api/Spaces-1/tasks/{}/raw", id(&secret)),
        format!("/api/tasks/{}/stream", id(&secret)),
    ] {
        let reply = as_bob("GET", &path, None);
        reply.assert_error(404);
        assert!(!reply.text.contains("secret of A"));
    }
    as_bob(
        "POST",
        &format!("/api/tasks/{}/cancel", id(&secret)),
        Some(&json!({})),
    )
    .assert_error(404);
    let listed = as_bob("GET", "/api/tasks?take=100", None);
    let ids: Vec<&str> = listed.body["Items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["Id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id(&task).as_str()], "only B's tasks are listed");
    let asked_for_a = as_bob("GET", "/api/tasks?spaces=Spaces-1", None);
    assert_eq!(asked_for_a.body["TotalResults"], 0);

    // A viewer sees tasks but cannot run or cancel them.
    let (carol, carol_key) = server.new_user("carol");
    server.grant(&carol, "Space viewer", &b);
    server
        .as_user(
            &carol_key,
            "GET",
            &format!("/api/tasks/{}", id(&task)),
            None,
        )
        .assert_status(200);
    server
        .as_user(
            &carol_key,
            "POST",
            &format!("/api/{b}/tasks"),
            Some(&json!({"Name": "AdHocScript", "Arguments": {"ScriptBody": "true"}})),
        )
        .assert_error(403);
    server
        .as_user(
            &carol_key,
            "POST",
            &format!("/api/tasks/{}/cancel", id(&task)),
            Some(&json!({})),
        )
        .assert_error(403);

    // Octopus's own shortcut: a space's managers may do anything in it.
    let mut space = server.ok(&format!("/api/spaces/{b}"));
    space["SpaceManagersTeamMembers"] = json!([carol]);
    server
        .put(&format!("/api/spaces/{b}"), &space)
        .assert_status(200);
    server
        .as_user(
            &carol_key,
            "POST",
            &format!("/api/{b}/machinepolicies"),
            Some(&json!({"Name": "Carol's policy"})),
        )
        .assert_status(201);

    // Deleting a user ends their keys.
    server
        .delete(&format!("/api/users/{carol}"))
        .assert_status(200);
    server
        .as_user(&carol_key, "GET", "/api/users/me", None)
        .assert_error(401);
}

#[test]
fn registering_a_worker_needs_worker_edit_in_its_space() {
    let server = Server::start();
    let (dave, dave_key) = server.new_user("dave");
    server.grant(&dave, "Task runner", "Spaces-1");
    let home = server.dir.join("agent-dave");
    let register = |key: &str| {
        agent()
            .arg("--home")
            .arg(&home)
            .args([
                "register-worker",
                "--server",
                &server.url,
                "--api-key",
                key,
                "--name",
                "daves-worker",
                "--worker-pool",
                "Default Worker Pool",
                "--comms-style",
                "TentaclePassive",
                "--public-hostname",
                "127.0.0.1",
            ])
            .output()
            .unwrap()
    };
    let refused = register(&dave_key);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("WorkerEdit"), "{stderr}");
    assert_eq!(
        server.ok("/api/Spaces-1/workers").get("TotalResults"),
        Some(&json!(0))
    );

    server.grant(&dave, "Worker manager", "Spaces-1");
    let registered = register(&dave_key);
    assert!(
        registered.status.success(),
        "{}",
        String::from_utf8_lossy(&registered.stderr)
    );
    assert_eq!(
        server.ok("/api/Spaces-1/workers").get("TotalResults"),
        Some(&json!(1))
    );
}

#[test]
fn the_cli_creates_users_and_grants_roles_in_spaces() {
    let server = Server::start();
    server
        .post("/api/spaces", &json!({"Name": "Team B"}))
        .assert_status(201);
    let cli = |key: &str, args: &[&str]| {
        let output = muster()
            .args(args)
            .env("MUSTER_SERVER", &server.url)
            .env("MUSTER_API_KEY", key)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let (code, out, err) = cli(KEY, &["user", "create", "erin"]);
    assert_eq!(code, Some(0), "{err}");
    let erin_key = out
        .split_whitespace()
        .find(|w| w.starts_with("API-"))
        .unwrap()
        .to_string();
    for _ in 0..2 {
        let (code, out, err) = cli(
            KEY,
            &[
                "user",
                "grant",
                "erin",
                "--role",
                "task runner",
                "--space",
                "Team B",
            ],
        );
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("erin is a Task runner in Team B"), "{out}");
    }
    let teams = server.ok("/api/teams/all");
    let granted: Vec<&Value> = teams
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["Name"] == "Task runner in Team B")
        .collect();
    assert_eq!(granted.len(), 1, "granting twice makes one team");
    assert_eq!(granted[0]["MemberUserIds"].as_array().unwrap().len(), 1);

    let (code, out, err) = cli(
        &erin_key,
        &[
            "script",
            "run",
            "--space",
            "Team B",
            "--builtin",
            "--",
            "echo hello from erin",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "hello from erin");
    let (code, _, err) = cli(&erin_key, &["script", "run", "--builtin", "--", "true"]);
    assert_ne!(code, Some(0), "erin has no role in the default space");
    assert!(
        err.contains("no role in the default space") && err.contains("Team B"),
        "says why and names her spaces: {err}"
    );
    let (_, out, _) = cli(KEY, &["user", "permissions", "erin"]);
    assert!(out.contains("TaskCreate"), "{out}");

    let (code, _, err) = cli(
        KEY,
        &[
            "user",
            "revoke",
            "erin",
            "--role",
            "Task runner",
            "--space",
            "Team B",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        server.as_user(&erin_key, "GET", "/api/spaces", None).body["TotalResults"],
        0
    );

    // A space deleted and made again: granting there takes effect (the old team had lost its role).
    let (code, _, err) = cli(KEY, &["space", "delete", "Team B"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = cli(KEY, &["space", "create", "Team B"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = cli(
        KEY,
        &[
            "user",
            "grant",
            "erin",
            "--role",
            "Task runner",
            "--space",
            "Team B",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        server.as_user(&erin_key, "GET", "/api/spaces", None).body["TotalResults"],
        1
    );
    // A grant that fails leaves no team behind.
    let (code, _, _) = cli(
        KEY,
        &[
            "user",
            "grant",
            "erin",
            "--role",
            "System administrator",
            "--space",
            "Team B",
        ],
    );
    assert_ne!(code, Some(0));
    let teams = server.ok("/api/teams/all");
    assert!(
        !teams
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["Name"] == "System administrator in Team B"),
        "{teams}"
    );
}
