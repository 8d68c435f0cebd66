//! The `muster` client commands against a real server.

use crate::support::{KEY, Server, cli, listening_endpoint, muster};
use serde_json::{Value, json};
use std::process::Output;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn script_run_prints_the_output_and_exits_by_the_task_state() {
    let server = Server::start();
    let hello = cli(&server, &["script", "run", "--", "echo hello"]);
    assert_eq!(stdout(&hello), "hello\n", "stderr: {}", stderr(&hello));
    assert_eq!(hello.status.code(), Some(0));

    let failed = cli(
        &server,
        &["script", "run", "--", "echo out; echo err >&2; exit 3"],
    );
    assert_eq!(failed.status.code(), Some(1));
    assert_eq!(stdout(&failed), "out\n");
    assert!(stderr(&failed).contains("err"));
    assert!(stderr(&failed).contains("Failed"));

    let python = cli(
        &server,
        &[
            "script",
            "run",
            "--builtin",
            "--syntax",
            "python",
            "--",
            "print(6 * 7)",
        ],
    );
    assert_eq!(stdout(&python), "42\n");

    let file = server.dir.join("script.sh");
    std::fs::write(&file, "echo from a file\n").unwrap();
    let from_file = cli(
        &server,
        &["script", "run", "--file", file.to_str().unwrap()],
    );
    assert_eq!(stdout(&from_file), "from a file\n");

    let timed_out = cli(
        &server,
        &["script", "run", "--timeout", "1", "--", "sleep 30"],
    );
    assert_eq!(timed_out.status.code(), Some(124));

    let queued = cli(&server, &["script", "run", "--no-wait", "--", "echo later"]);
    let task_id = stdout(&queued).trim().to_string();
    assert!(task_id.starts_with("ServerTasks-"), "{task_id}");
    let followed = cli(&server, &["task", "log", "--follow", &task_id]);
    assert_eq!(stdout(&followed), "later\n");
    let plain = cli(&server, &["task", "log", &task_id]);
    assert_eq!(stdout(&plain), "later\n", "the same as --follow");
    let raw = cli(&server, &["task", "log", "--raw", &task_id]);
    assert!(stdout(&raw).contains("| later"));
    let described = server.ok(&format!("/api/tasks/{task_id}"));
    assert_eq!(
        described["Description"], "echo later",
        "the script's first line"
    );
    let shown = cli(&server, &["task", "show", &task_id]);
    assert!(stdout(&shown).contains("Success"));
    let listed = cli(&server, &["task", "list", "--state", "Success"]);
    assert!(stdout(&listed).contains(&task_id));
    let as_json = cli(&server, &["--json", "task", "list"]);
    let parsed: Value = serde_json::from_str(&stdout(&as_json)).expect("--json prints JSON");
    let listed = parsed
        .as_array()
        .expect("a list prints an array of resources");
    assert!(listed.iter().any(|t| t["Id"] == json!(task_id)), "{parsed}");

    // A failed task's log prints alike and exits alike, followed or not.
    let failing = cli(
        &server,
        &[
            "script",
            "run",
            "--no-wait",
            "--description",
            "Breaks on purpose",
            "--",
            "#!/bin/bash\necho before; echo oops >&2; exit 3",
        ],
    );
    let failing = stdout(&failing).trim().to_string();
    assert_eq!(
        server.ok(&format!("/api/tasks/{failing}"))["Description"],
        "Breaks on purpose"
    );
    let followed = cli(&server, &["task", "log", "--follow", &failing]);
    let plain = cli(&server, &["task", "log", &failing]);
    assert_eq!(followed.status.code(), Some(1), "{}", stderr(&followed));
    assert_eq!(plain.status.code(), followed.status.code());
    assert_eq!(stdout(&plain), stdout(&followed));
    assert_eq!(stdout(&plain), "before\n");
    assert_eq!(stderr(&plain), stderr(&followed));
    assert!(
        stderr(&plain).contains("oops") && stderr(&plain).contains("Failed"),
        "{}",
        stderr(&plain)
    );

    let none = cli(&server, &["script", "run"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(stderr(&none).starts_with("error: give the script"));
}

#[test]
fn spaces_pools_workers_and_policies_from_the_command_line() {
    let server = Server::start();
    assert!(
        cli(&server, &["space", "create", "Team A"])
            .status
            .success()
    );
    let spaces = stdout(&cli(&server, &["space", "list"]));
    assert!(
        spaces.contains("Team A") && spaces.contains("Default"),
        "{spaces}"
    );
    assert!(
        cli(&server, &["pool", "create", "Linux", "--space", "Team A"])
            .status
            .success()
    );
    let pools = stdout(&cli(&server, &["pool", "list", "--space", "team-a"]));
    assert!(
        pools.contains("Linux") && pools.contains("Default Worker Pool"),
        "{pools}"
    );
    let space_id = server
        .ok("/api/spaces/all")
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Name"] == "Team A")
        .unwrap()["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let pool = server.ok(&format!("/api/{space_id}/workerpools/all?name=Linux"))[0]["Id"].clone();
    server
        .post(
            &format!("/api/{space_id}/workers"),
            &json!({"Name": "box", "Endpoint": listening_endpoint(1), "WorkerPoolIds": [pool]}),
        )
        .assert_status(201);
    let workers = stdout(&cli(
        &server,
        &["worker", "list", "--space", "Team A", "--pool", "Linux"],
    ));
    assert!(
        workers.contains("box") && workers.contains("TentaclePassive"),
        "{workers}"
    );
    let shown = stdout(&cli(
        &server,
        &["worker", "show", "box", "--space", "Team A"],
    ));
    assert!(
        shown.contains("box") && shown.contains("HealthStatus"),
        "{shown}"
    );
    let policies = stdout(&cli(&server, &["policy", "list", "--space", "Team A"]));
    assert!(policies.contains("Default Machine Policy"));
    assert!(
        cli(&server, &["worker", "delete", "box", "--space", "Team A"])
            .status
            .success()
    );
    assert!(
        cli(&server, &["pool", "delete", "Linux", "--space", "Team A"])
            .status
            .success()
    );
    assert!(
        cli(&server, &["space", "delete", "Team A"])
            .status
            .success()
    );
    assert!(!stdout(&cli(&server, &["space", "list"])).contains("Team A"));

    let default = cli(&server, &["space", "delete", "Default"]);
    assert_eq!(default.status.code(), Some(1));
    assert_eq!(
        server.ok("/api/spaces/Spaces-1")["TaskQueueStopped"],
        false,
        "a refused delete changes nothing"
    );

    let missing = cli(&server, &["pool", "delete", "Nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        stderr(&missing).lines().count(),
        1,
        "one clear line: {}",
        stderr(&missing)
    );
    let refused = cli(&server, &["pool", "delete", "Default Worker Pool"]);
    assert!(
        stderr(&refused).contains("default worker pool cannot be deleted"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn errors_are_one_line_without_a_backtrace() {
    let server = Server::start();
    let unreachable = muster()
        .args(["space", "list", "--server", "http://127.0.0.1:9"])
        .env("MUSTER_API_KEY", KEY)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(1));
    let text = stderr(&unreachable);
    assert!(
        text.starts_with("error: cannot reach the Muster server at http://127.0.0.1:9"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "{text}");
    let bad_key = muster()
        .args(["space", "list"])
        .env("MUSTER_SERVER", &server.url)
        .env("MUSTER_API_KEY", "API-NOTAKEYNOTAKEYNOTAKEYNOTAKEY")
        .output()
        .unwrap();
    assert!(stderr(&bad_key).contains("API key"), "{}", stderr(&bad_key));
    assert!(!stderr(&bad_key).contains("panicked"));
}

#[test]
fn worker_share_says_what_it_changed_and_keeps_a_limit_it_was_not_told_to_change() {
    let server = Server::start();
    let b = server
        .post("/api/spaces", &json!({"Name": "B"}))
        .assert_status(201)["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let _agent = server.polling_agent("sharer");
    let home = server.wait_health("sharer", "Healthy");
    let shares = format!(
        "/api/Spaces-1/workers/{}/shares",
        home["Id"].as_str().unwrap()
    );
    let stored_limit = || {
        server
            .ok(&shares)
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["SpaceId"] == b.as_str())
            .map(|w| w["ShareTaskLimit"].clone())
            .expect("shared into B")
    };
    let share = |extra: &[&str]| {
        let mut args = vec![
            "worker",
            "share",
            "--pool-name",
            "Default Worker Pool",
            "--space",
            "B",
        ];
        args.extend_from_slice(extra);
        let output = cli(&server, &args);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        stdout(&output)
    };

    let first = share(&["--task-limit", "2"]);
    assert!(
        first.contains("sharer → B / Default Worker Pool: shared with task limit 2"),
        "{first}"
    );
    assert_eq!(stored_limit(), 2);
    let share_events = || {
        server.ok("/api/events?take=1000")["Items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["Message"].as_str().unwrap().contains("space 'B'"))
            .count()
    };
    let events = share_events();

    // Running it again, with or without the same limit, changes nothing and says so.
    for again in [share(&[]), share(&["--task-limit", "2"])] {
        assert!(
            again.contains("already shared with task limit 2, nothing changed"),
            "{again}"
        );
        assert!(again.contains("0 share(s) changed"), "{again}");
        assert_eq!(stored_limit(), 2, "a limit is kept unless told otherwise");
    }
    assert_eq!(share_events(), events, "no change, no event");

    let raised = share(&["--task-limit", "3"]);
    assert!(raised.contains("task limit changed 2 → 3"), "{raised}");
    assert_eq!(stored_limit(), 3);

    let removed = share(&["--no-task-limit"]);
    assert!(removed.contains("task limit removed (was 3)"), "{removed}");
    assert_eq!(stored_limit(), Value::Null);
    let again = share(&[]);
    assert!(again.contains("already shared, nothing changed"), "{again}");
    assert_eq!(stored_limit(), Value::Null);

    let both = cli(
        &server,
        &[
            "worker",
            "share",
            "--pool-name",
            "Default Worker Pool",
            "--space",
            "B",
            "--task-limit",
            "2",
            "--no-task-limit",
        ],
    );
    assert_eq!(both.status.code(), Some(2), "clap refuses both");
}

/// `muster task log … | head` ends quietly when `head` has read enough: no panic, no backtrace.
#[test]
fn a_command_whose_reader_goes_away_ends_quietly() {
    let server = Server::start();
    let task = server.run_script("Spaces-1", json!({"ScriptBody": "seq 1 50000"}));
    let task_id = task["Id"].as_str().unwrap().to_string();
    server.wait_task(&task_id);
    let mut child = muster()
        .args(["task", "log", &task_id])
        .env("MUSTER_SERVER", &server.url)
        .env("MUSTER_API_KEY", KEY)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader takes one line and goes, long before the log's 290 KB are written.
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert_eq!(first.trim(), "1");
    let output = child.wait_with_output().unwrap();
    let errors = stderr(&output);
    assert!(!errors.contains("panicked"), "{errors}");
    assert!(!output.status.success(), "ended by the closed pipe");
}
