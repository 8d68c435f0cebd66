//! The task token: a running task's scripts get `MUSTER_TASK_TOKEN`, and a run they create with it
//! (the `muster` CLI sends it by itself) is the task's child, so the blog's parent, whose *script*
//! runs its exclusive child and waits, completes on one worker with a task cap of 1.

use crate::support::{KEY, Server, cli, client, eventually};
use serde_json::{Value, json};
use std::path::Path;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn create(server: &Server, file_name: &str, yaml: &str) {
    let path = server.dir.join(file_name);
    std::fs::write(&path, yaml).unwrap();
    let out = cli(
        server,
        &["runbook", "create", "--file", path.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

fn runbook_id(server: &Server, name: &str) -> String {
    server
        .ok("/api/Spaces-1/runbooks/all")
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["Name"] == name)
        .unwrap_or_else(|| panic!("no runbook {name}"))["Id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn start_run(server: &Server, name: &str) -> String {
    let id = runbook_id(server, name);
    let run = server
        .post("/api/Spaces-1/runbookRuns", &json!({"RunbookId": id}))
        .assert_status(201)
        .clone();
    run["TaskId"].as_str().unwrap().to_string()
}

fn child_of(server: &Server, task_id: &str) -> String {
    server.ok("/api/tasks?take=1000")["Items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["Arguments"]["ParentTaskId"] == task_id)
        .map(|t| t["Id"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// A script line that runs `muster` as the administrator (a script's environment is clean: the
/// server and the key come from a file the test writes).
fn muster_line(server: &Server, args: &str) -> String {
    let env = server.dir.join("client.env");
    std::fs::write(
        &env,
        format!(
            "export MUSTER_SERVER='{}'\nexport MUSTER_API_KEY='{KEY}'\n",
            server.url
        ),
    )
    .unwrap();
    format!(
        ". '{}'; '{}' {args}",
        env.display(),
        env!("CARGO_BIN_EXE_muster")
    )
}

fn gate(dir: &Path, name: &str) -> String {
    format!(
        "while [ ! -f '{}' ]; do sleep 0.02; done",
        dir.join(name).display()
    )
}

fn exclusive_child(server: &Server) {
    create(
        server,
        "child.yaml",
        "name: Child\nexclusive: true\nsteps:\n  - name: Work\n    script: 'echo child ran'\n",
    );
}

/// The blog's runbooks, the way the blog met them: the parent's step is a script that runs the
/// child with `muster runbook run Child --wait`. The parent holds the only worker exclusively and
/// the task cap is 1, yet both end Success: the child borrows the parent's lease and slot. The
/// token is masked in the log.
#[test]
fn a_script_that_runs_its_exclusive_child_with_the_cli_completes_on_one_worker() {
    let server = Server::start_with(&["--task-cap", "1"]);
    exclusive_child(&server);
    let run_child = muster_line(&server, "runbook run Child --wait");
    create(
        &server,
        "parent.yaml",
        &format!(
            "name: Parent\nexclusive: true\nsteps:\n  - name: Call\n    script: |\n      echo \"token=$MUSTER_TASK_TOKEN\"\n      {run_child}\n"
        ),
    );
    let parent = start_run(&server, "Parent");
    let (task, lines) = server.wait_task(&parent);
    assert_eq!(task["State"], "Success", "{lines:?}");
    let child = child_of(&server, &parent);
    assert!(!child.is_empty(), "the run is not the parent's child");
    let (child_task, _) = server.wait_task(&child);
    assert_eq!(child_task["State"], "Success");
    let texts: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["MessageText"].as_str())
        .collect();
    assert!(texts.contains(&"token=********"), "{texts:?}");
    assert!(
        !texts.iter().any(|t| t.contains("MTT-")),
        "the token shows in the log: {texts:?}"
    );
}

/// A task, not only a run: the exclusive parent's script runs a script task with
/// `muster script run` (which waits), on the only worker with a task cap of 1. The task is the
/// parent's child and borrows its lease and slot; both end Success.
#[test]
fn a_script_task_made_with_the_token_is_the_tasks_child() {
    let server = Server::start_with(&["--task-cap", "1"]);
    let run_script = muster_line(&server, "script run -- 'echo child task ran'");
    create(
        &server,
        "parent.yaml",
        &format!(
            "name: Parent\nexclusive: true\nsteps:\n  - name: Call\n    script: |\n      {run_script}\n"
        ),
    );
    let parent = start_run(&server, "Parent");
    let (task, lines) = server.wait_task(&parent);
    assert_eq!(task["State"], "Success", "{lines:?}");
    let child = child_of(&server, &parent);
    assert!(!child.is_empty(), "the task is not the parent's child");
    let (child_task, child_lines) = server.wait_task(&child);
    assert_eq!(child_task["Name"], "AdHocScript");
    assert_eq!(child_task["State"], "Success");
    assert!(
        child_lines
            .iter()
            .any(|l| l["MessageText"] == "child task ran"),
        "{child_lines:?}"
    );
    // A client cannot name a parent itself: only a token makes a child.
    let forged = server
        .post(
            "/api/Spaces-1/tasks",
            &json!({"Name": "AdHocScript", "Arguments": {"ScriptBody": "true", "ParentTaskId": parent}}),
        )
        .assert_status(201)
        .clone();
    assert_eq!(forged["Arguments"]["ParentTaskId"], Value::Null, "{forged}");
}

/// The same parent with the token stripped: the server cannot know the new run is the parent's
/// child, so the child waits, and its queue reason names the holder. Never silently.
#[test]
fn without_the_token_the_child_waits_and_says_who_holds_its_worker() {
    let server = Server::start_with(&["--task-cap", "1"]);
    exclusive_child(&server);
    let run_child = muster_line(&server, "runbook run Child --wait");
    create(
        &server,
        "parent.yaml",
        &format!(
            "name: Parent\nexclusive: true\nsteps:\n  - name: Call\n    script: |\n      env -u MUSTER_TASK_TOKEN bash -c \"{}\"\n",
            run_child.replace('"', "\\\"")
        ),
    );
    let parent = start_run(&server, "Parent");
    let child = eventually("the child queued", || {
        let tasks = server.ok("/api/tasks?take=1000");
        tasks["Items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["Name"] == "RunbookRun" && t["Id"] != parent.as_str())
            .map(|t| t["Id"].as_str().unwrap().to_string())
    });
    let reason = eventually("the child's queue reason", || {
        server.ok(&format!("/api/tasks/{child}"))["QueueReason"]
            .as_str()
            .filter(|r| r.contains("exclusively leased"))
            .map(str::to_string)
    });
    assert!(
        reason.contains(&format!("exclusively leased by {parent}")),
        "{reason}"
    );
    let child_task = server.ok(&format!("/api/tasks/{child}"));
    assert_eq!(child_task["State"], "Queued");
    assert_eq!(child_task["Arguments"]["ParentTaskId"], Value::Null);
    for id in [&parent, &child] {
        server
            .post(&format!("/api/tasks/{id}/cancel"), &json!({}))
            .assert_status(200);
    }
}

/// A token is refused once its task has ended (and a made-up one always), with the contract's
/// error body; a token never lets a key into a space it has no rights in.
#[test]
fn a_token_is_refused_after_its_task_and_grants_nothing_beyond_the_key() {
    let server = Server::start();
    exclusive_child(&server);
    let dir = server.dir.clone();
    let token_file = dir.join("token");
    let script = format!(
        "printf '%s' \"$MUSTER_TASK_TOKEN\" > '{}'; {}",
        token_file.display(),
        gate(&dir, "go")
    );
    let task = server.run_script("Spaces-1", json!({ "ScriptBody": script }));
    let task = task["Id"].as_str().unwrap().to_string();
    let token = eventually("the token written", || {
        std::fs::read_to_string(&token_file)
            .ok()
            .filter(|t| !t.is_empty())
    });
    let child = runbook_id(&server, "Child");
    let post = |key: &str, token: &str| {
        server.send(
            client()
                .post(format!("{}/api/Spaces-1/runbookRuns", server.url))
                .header("X-Octopus-ApiKey", key)
                .header("X-Muster-Task-Token", token)
                .json(&json!({"RunbookId": child})),
        )
    };
    // A key without rights in the space gets no further with a valid token.
    let (_, stranger) = server.new_user("stranger");
    let refused = post(&stranger, &token);
    assert!(
        refused.status == 403 || refused.status == 404,
        "{}",
        refused.text
    );
    // A made-up token is a clear 400.
    post(KEY, "MTT-0000").assert_error(400);
    // While its task runs, the token makes the run its child.
    let run = post(KEY, &token).assert_status(201).clone();
    let run_task = run["TaskId"].as_str().unwrap().to_string();
    let run_task = server.ok(&format!("/api/tasks/{run_task}"));
    assert_eq!(run_task["Arguments"]["ParentTaskId"], task.as_str());
    std::fs::write(dir.join("go"), "").unwrap();
    let (ended, _) = server.wait_task(&task);
    assert_eq!(ended["State"], "Success");
    let after = post(KEY, &token);
    after.assert_error(400);
    assert!(after.text.contains("task token"), "{}", after.text);
}
