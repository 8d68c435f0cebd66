//! AdHocScript tasks on the built-in worker: the durable queue, logs, cancel, timeout, the task cap.

use crate::support::{Server, listening_endpoint};
use serde_json::{Value, json};

fn id(task: &Value) -> String {
    task["Id"].as_str().unwrap().to_string()
}

fn texts(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["MessageText"].as_str().unwrap().to_string())
        .collect()
}

/// Follows a queued task until its QueueReason contains `needle`, and returns the reason.
fn wait_reason(server: &Server, task: &str, needle: &str) -> String {
    let mut reason = String::new();
    server.follow(task, |kind, data| {
        if kind == "task" {
            reason = data["QueueReason"].as_str().unwrap_or("").to_string();
            assert_eq!(
                data["State"], "Queued",
                "the task should stay queued: {data}"
            );
        }
        !reason.contains(needle)
    });
    assert!(
        reason.contains(needle),
        "QueueReason '{reason}' does not say '{needle}'"
    );
    reason
}

#[test]
fn a_script_runs_on_the_builtin_worker_and_its_exit_code_decides() {
    let server = Server::start();
    let task = server.run_script("Spaces-1", json!({"ScriptBody": "echo hello\necho oops >&2\necho \"task=$MUSTER_TASK_ID\"", "Syntax": "Bash"}));
    assert_eq!(task["State"], "Queued");
    let (done, lines) = server.wait_task(&id(&task));
    assert_eq!(done["State"], "Success");
    assert_eq!(done["FinishedSuccessfully"], true);
    assert_eq!(done["WorkerName"], "Built-in worker");
    assert_eq!(
        done["HasWarningsOrErrors"], true,
        "stderr counts as an error line"
    );
    let all = texts(&lines);
    assert!(all.contains(&"hello".to_string()));
    assert!(all.contains(&format!("task={}", id(&task))));
    let oops = lines.iter().find(|l| l["MessageText"] == "oops").unwrap();
    assert_eq!(oops["Category"], "Error", "stderr is marked");
    assert!(
        all[0].contains("Built-in worker"),
        "the log names the worker: {all:?}"
    );

    let failed = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": "echo about to fail; exit 7"}),
    );
    let (failed, _) = server.wait_task(&id(&failed));
    assert_eq!(failed["State"], "Failed");
    assert!(failed["ErrorMessage"].as_str().unwrap().contains("code 7"));

    let python = server.run_script("Spaces-1", json!({"ScriptBody": "import sys\nprint('from python', sys.version_info[0])", "Syntax": "Python"}));
    let (python, lines) = server.wait_task(&id(&python));
    assert_eq!(python["State"], "Success");
    assert!(texts(&lines).contains(&"from python 3".to_string()));

    let pwsh = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": "Write-Output 'from pwsh'", "Syntax": "PowerShell"}),
    );
    let (pwsh, lines) = server.wait_task(&id(&pwsh));
    if muster_exec_has("pwsh") {
        assert_eq!(pwsh["State"], "Success");
        assert!(texts(&lines).contains(&"from pwsh".to_string()));
    } else {
        assert_eq!(pwsh["State"], "Failed");
        assert!(
            pwsh["ErrorMessage"]
                .as_str()
                .unwrap()
                .contains("pwsh is not installed"),
            "{}",
            pwsh["ErrorMessage"]
        );
    }
}

fn muster_exec_has(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

#[test]
fn logs_are_served_raw_as_details_and_live_before_the_script_ends() {
    let server = Server::start();
    let release = server.dir.join("release");
    let script = format!(
        "echo first\nwhile [ ! -f '{}' ]; do sleep 0.02; done\necho second",
        release.display()
    );
    let task = server.run_script("Spaces-1", json!({"ScriptBody": script}));
    let mut seen = Vec::new();
    let mut final_task = Value::Null;
    server.follow(&id(&task), |kind, data| {
        match kind {
            "line" => {
                let text = data["MessageText"].as_str().unwrap().to_string();
                if text == "first" {
                    // The script is still waiting: this line reached us while it runs.
                    let now = server.ok(&format!("/api/tasks/{}", id(&task)));
                    assert_eq!(now["State"], "Executing");
                    std::fs::write(&release, "go").unwrap();
                }
                seen.push(text);
            }
            "task" => final_task = data,
            _ => {}
        }
        final_task["IsCompleted"] != true
    });
    assert_eq!(final_task["State"], "Success");
    // A follower of a task that has not ended hears of the task before any line.
    let first = server.run_script("Spaces-1", json!({"ScriptBody": "sleep 1\necho late"}));
    let mut kinds = Vec::new();
    server.follow(&id(&first), |kind, data| {
        kinds.push(kind.to_string());
        !(kind == "task" && data["IsCompleted"] == true)
    });
    assert_eq!(kinds.first().map(String::as_str), Some("task"), "{kinds:?}");
    server
        .get(&format!("/api/tasks/{}/stream?after=-1", id(&first)))
        .assert_error(400);
    assert!(
        seen.ends_with(&["first".to_string(), "second".to_string()]),
        "{seen:?}"
    );

    let raw = server.get(&format!("/api/tasks/{}/raw", id(&task)));
    assert!(raw.content_type.starts_with("text/plain"));
    assert!(
        raw.text.contains("| first\n") && raw.text.contains("| second\n"),
        "{}",
        raw.text
    );
    // `HH:MM:SS  Category | message`, the category padded to 8.
    let first_line = raw.text.lines().find(|l| l.ends_with("| first")).unwrap();
    let (time, rest) = first_line.split_at(8);
    assert!(
        time.chars().enumerate().all(|(i, c)| if i == 2 || i == 5 {
            c == ':'
        } else {
            c.is_ascii_digit()
        }),
        "{first_line}"
    );
    assert_eq!(rest, "  Info     | first");
    let details = server.ok(&format!("/api/Spaces-1/tasks/{}/details", id(&task)));
    assert_eq!(details["Task"]["Id"], id(&task).as_str());
    let step = &details["ActivityLogs"][0]["Children"][0];
    assert_eq!(step["Status"], "Success");
    let messages: Vec<&str> = step["LogElements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["MessageText"].as_str().unwrap())
        .collect();
    assert!(messages.contains(&"first") && messages.contains(&"second"));
    let tail = server.ok(&format!("/api/tasks/{}/details?tail=1", id(&task)));
    assert_eq!(
        tail["ActivityLogs"][0]["Children"][0]["LogElements"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // A follower that joins late gets the whole stored log, then the end.
    let (_, again) = server.wait_task(&id(&task));
    assert!(texts(&again).contains(&"first".to_string()));
}

#[test]
fn cancel_stops_a_running_script_and_a_queued_task() {
    let server = Server::start_with(&["--task-cap", "1"]);
    let running = server.run_script("Spaces-1", json!({"ScriptBody": "echo started\nsleep 60"}));
    let queued = server.run_script("Spaces-1", json!({"ScriptBody": "echo never"}));
    server.follow(&id(&running), |kind, data| {
        !(kind == "line" && data["MessageText"] == "started")
    });
    // The go client's space alias, on the task that waits behind the cap.
    let reply = server.send(server.request(
        "POST",
        &format!("/api/spaces/Spaces-1/tasks/{}/cancel", id(&queued)),
    ));
    assert_eq!(reply.assert_status(200)["State"], "Canceled");
    // The npm client's unprefixed form, on the running one.
    let reply = server.post(&format!("/api/tasks/{}/cancel", id(&running)), &json!({}));
    assert!(
        ["Cancelling", "Canceled"].contains(&reply.assert_status(200)["State"].as_str().unwrap())
    );
    let (done, _) = server.wait_task(&id(&running));
    assert_eq!(done["State"], "Canceled");
    let (done, lines) = server.wait_task(&id(&queued));
    assert_eq!(done["State"], "Canceled");
    assert!(!texts(&lines).contains(&"never".to_string()));
    // Canceling a finished task changes nothing.
    assert_eq!(
        server
            .post(&format!("/api/tasks/{}/cancel", id(&queued)), &json!({}))
            .assert_status(200)["State"],
        "Canceled"
    );
}

#[test]
fn a_task_timeout_ends_it_timed_out() {
    let server = Server::start();
    let task = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": "echo waiting\nsleep 60", "Timeout": "00:00:01"}),
    );
    let (done, lines) = server.wait_task(&id(&task));
    assert_eq!(done["State"], "TimedOut");
    assert_eq!(done["IsCompleted"], true);
    assert!(texts(&lines).iter().any(|l| l.contains("timed out")));
}

#[test]
fn the_task_cap_holds_and_the_queued_task_says_why() {
    let server = Server::start_with(&["--task-cap", "1"]);
    let release = server.dir.join("release");
    let script = format!(
        "while [ ! -f '{}' ]; do sleep 0.02; done",
        release.display()
    );
    let first = server.run_script("Spaces-1", json!({"ScriptBody": script}));
    server.follow(&id(&first), |kind, data| {
        !(kind == "task" && data["State"] == "Executing")
    });
    let second = server.run_script("Spaces-1", json!({"ScriptBody": "echo second"}));
    let reason = wait_reason(&server, &id(&second), "task cap of 1");
    assert_eq!(
        server.ok(&format!("/api/tasks/{}", id(&second)))["State"],
        "Queued"
    );
    let behind = server.ok(&format!("/api/tasks/{}/queued-behind", id(&second)));
    assert_eq!(behind["QueueReason"], reason.as_str());
    assert_eq!(behind["Items"][0]["Id"], id(&first).as_str());
    std::fs::write(&release, "go").unwrap();
    assert_eq!(server.wait_task(&id(&first)).0["State"], "Success");
    assert_eq!(server.wait_task(&id(&second)).0["State"], "Success");
}

#[test]
fn without_the_builtin_worker_tasks_stay_queued_and_say_why() {
    let server = Server::start_with(&["--no-builtin-worker"]);
    let task = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": "echo hi", "TargetType": "OctopusServer"}),
    );
    wait_reason(&server, &id(&task), "built-in worker, which is disabled");
    let shown = server.ok(&format!("/api/tasks/{}", id(&task)));
    assert!(
        shown["QueueReason"]
            .as_str()
            .unwrap()
            .contains("--no-builtin-worker")
    );
}

#[test]
fn a_pool_with_workers_does_not_fall_back_to_the_builtin_worker() {
    let server = Server::start();
    let pool = server
        .post(
            "/api/Spaces-1/workerpools",
            &json!({"Name": "Busy", "WorkerPoolType": "StaticWorkerPool"}),
        )
        .assert_status(201)
        .clone();
    server
        .post(
            "/api/Spaces-1/workers",
            &json!({"Name": "w", "Endpoint": listening_endpoint(1), "WorkerPoolIds": [pool["Id"]]}),
        )
        .assert_status(201);
    let task = server.run_script("Spaces-1", json!({"ScriptBody": "echo hi", "TargetType": "WorkerPools", "WorkerPoolIds": [pool["Id"]]}));
    wait_reason(
        &server,
        &id(&task),
        "No worker of pool 'Busy' can take it now",
    );
    // The default pool is empty, so its tasks run on the built-in worker (the docs' rule).
    let fallback = server.run_script("Spaces-1", json!({"ScriptBody": "echo fallback"}));
    assert_eq!(server.wait_task(&id(&fallback)).0["State"], "Success");
}

#[test]
fn bad_task_input_is_refused() {
    let server = Server::start();
    let other = server
        .post("/api/spaces", &json!({"Name": "Other"}))
        .assert_status(201)
        .clone();
    let other_pool = server.ok(&format!(
        "/api/{}/workerpools/all",
        other["Id"].as_str().unwrap()
    ))[0]["Id"]
        .clone();
    let cases = [
        json!({"Name": "Deploy", "Arguments": {"ScriptBody": "true"}}),
        json!({"Name": "AdHocScript", "Arguments": {}}),
        json!({"Name": "AdHocScript", "Arguments": "echo"}),
        json!({"Name": "AdHocScript", "Arguments": {"ScriptBody": "true", "Syntax": "Cobol"}}),
        json!({"Name": "AdHocScript", "Arguments": {"ScriptBody": "true", "TargetType": "Moon"}}),
        json!({"Name": "AdHocScript", "Arguments": {"ScriptBody": "true", "WorkerPoolIds": [other_pool]}}),
        json!({"Name": "AdHocScript", "Arguments": {"ScriptBody": "true", "TargetType": "Workers"}}),
        json!({"Name": "AdHocScript", "Arguments": {"ScriptBody": "true", "MachineIds": ["Workers-404"]}}),
        json!({"Name": "AdHocScript", "Arguments": {"ScriptBody": "true", "Timeout": "eventually"}}),
        json!({"Name": "AdHocScript", "Arguments": {"ScriptBody": "true", "Timeout": 1.5}}),
        json!({"Name": "AdHocScript", "Arguments": {"ScriptBody": "true", "Timeout": 18446744073709551615u64}}),
        json!({"Name": "AdHocScript", "Arguments": {"ScriptBody": 12}}),
        json!({"Name": "AdHocScript", "QueueTime": "tomorrow", "Arguments": {"ScriptBody": "true"}}),
        json!({"Arguments": {"ScriptBody": "true"}}),
    ];
    for body in cases {
        server.post("/api/Spaces-1/tasks", &body).assert_error(400);
    }
    assert_eq!(
        server.ok("/api/tasks")["TotalResults"],
        0,
        "no refused task was queued"
    );
}

#[test]
fn task_lists_filter_by_space_and_state_newest_first() {
    let server = Server::start();
    let other = server
        .post("/api/spaces", &json!({"Name": "Other"}))
        .assert_status(201)
        .clone();
    let other_id = other["Id"].as_str().unwrap();
    let a = server.run_script("Spaces-1", json!({"ScriptBody": "true"}));
    let b = server.run_script(other_id, json!({"ScriptBody": "exit 1"}));
    server.wait_task(&id(&a));
    server.wait_task(&id(&b));
    let all = server.ok("/api/tasks");
    assert_eq!(all["ItemType"], "Task");
    assert_eq!(all["Items"][0]["Id"], id(&b).as_str(), "newest first");
    assert_eq!(all["TotalResults"], 2);
    assert_eq!(server.ok("/api/Spaces-1/tasks")["TotalResults"], 1);
    assert_eq!(
        server.ok(&format!("/api/tasks?spaces={other_id}"))["TotalResults"],
        1
    );
    assert_eq!(
        server.ok("/api/tasks?states=Failed")["Items"][0]["Id"],
        id(&b).as_str()
    );
    assert_eq!(server.ok("/api/tasks?active=true")["TotalResults"], 0);
    assert_eq!(
        server.ok(&format!("/api/tasks?ids={},{}", id(&a), id(&b)))["TotalResults"],
        2
    );
    assert_eq!(
        server.ok("/api/tasks?name=AdHocScript&take=1")["ItemsPerPage"],
        1
    );
    assert_eq!(
        server.ok(&format!("/api/tasks/{}", id(&b)))["SpaceId"],
        other_id
    );
    let rerun = server
        .post(&format!("/api/tasks/rerun/{}", id(&a)), &json!({}))
        .assert_status(201)
        .clone();
    assert_ne!(rerun["Id"], a["Id"]);
    assert_eq!(server.wait_task(&id(&rerun)).0["State"], "Success");
    let types = server.ok("/api/tasks/taskTypes");
    assert_eq!(types[0]["Id"], "AdHocScript");
}

#[test]
fn everything_survives_a_restart_and_queued_tasks_then_run() {
    let temp = tempfile::tempdir().unwrap();
    let server = Server::start_in(temp.path(), &["--no-builtin-worker"]).unwrap();
    let space = server
        .post("/api/spaces", &json!({"Name": "Kept"}))
        .assert_status(201)
        .clone();
    let space_id = space["Id"].as_str().unwrap().to_string();
    let pool = server.ok(&format!("/api/{space_id}/workerpools/all"))[0]["Id"].clone();
    server
        .post(
            &format!("/api/{space_id}/workers"),
            &json!({"Name": "kept", "Endpoint": listening_endpoint(1), "WorkerPoolIds": [pool]}),
        )
        .assert_status(201);
    let queued = server.run_script(
        &space_id,
        json!({"ScriptBody": "echo after restart", "TargetType": "OctopusServer"}),
    );
    let thumbprint =
        server.ok("/api/configuration/certificates/certificate-global")["Thumbprint"].clone();
    let installation = server.ok("/api")["InstallationId"].clone();
    let status = server.stop();
    assert!(
        status.success(),
        "SIGTERM ends the server cleanly: {status:?}"
    );

    let server = Server::start_in(temp.path(), &[]).unwrap();
    assert_eq!(
        server.ok(&format!("/api/spaces/{space_id}"))["Name"],
        "Kept"
    );
    assert_eq!(
        server.ok(&format!("/api/{space_id}/workers/all"))[0]["Name"],
        "kept"
    );
    assert_eq!(
        server.ok("/api/configuration/certificates/certificate-global")["Thumbprint"],
        thumbprint
    );
    assert_eq!(server.ok("/api")["InstallationId"], installation);
    let (done, lines) = server.wait_task(&id(&queued));
    assert_eq!(done["State"], "Success");
    assert!(texts(&lines).contains(&"after restart".to_string()));
    server.stop();

    // Finished logs survive too.
    let server = Server::start_in(temp.path(), &[]).unwrap();
    assert!(
        server
            .get(&format!("/api/tasks/{}/raw", id(&queued)))
            .text
            .contains("after restart")
    );
}

#[test]
fn a_task_executing_when_the_server_died_is_failed_after_restart() {
    let temp = tempfile::tempdir().unwrap();
    let server = Server::start_in(temp.path(), &[]).unwrap();
    let task = server.run_script("Spaces-1", json!({"ScriptBody": "echo started\nsleep 3"}));
    server.follow(&id(&task), |kind, data| {
        !(kind == "line" && data["MessageText"] == "started")
    });
    server.kill();

    let server = Server::start_in(temp.path(), &[]).unwrap();
    let task = server.ok(&format!("/api/tasks/{}", id(&task)));
    assert_eq!(task["State"], "Failed");
    assert!(
        task["ErrorMessage"]
            .as_str()
            .unwrap()
            .contains("stopped while this task was executing")
    );
    let raw = server.get(&format!("/api/tasks/{}/raw", id(&task))).text;
    assert!(
        raw.contains("started") && raw.contains("stopped while this task was executing"),
        "{raw}"
    );
}

#[test]
fn shutting_down_stops_running_scripts_and_records_why() {
    let temp = tempfile::tempdir().unwrap();
    let server = Server::start_in(temp.path(), &[]).unwrap();
    let task = server.run_script("Spaces-1", json!({"ScriptBody": "echo started\nsleep 60"}));
    server.follow(&id(&task), |kind, data| {
        !(kind == "line" && data["MessageText"] == "started")
    });
    // A follower that stays connected must not hold the shutdown until the script ends.
    let follower = {
        let request = server.request("GET", &format!("/api/tasks/{}/stream", id(&task)));
        std::thread::spawn(move || {
            let mut response = request.send().unwrap();
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut response, &mut sink);
        })
    };
    let queued_follower = {
        let body = json!({"Name": "AdHocScript", "QueueTime": "2099-01-01T00:00:00Z", "Arguments": {"ScriptBody": "true"}});
        let queued = server
            .post("/api/Spaces-1/tasks", &body)
            .assert_status(201)
            .clone();
        let request = server.request("GET", &format!("/api/tasks/{}/stream", id(&queued)));
        std::thread::spawn(move || {
            let mut response = request.send().unwrap();
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut response, &mut sink);
        })
    };
    assert!(server.stop().success());
    follower.join().unwrap();
    queued_follower.join().unwrap();
    let server = Server::start_in(temp.path(), &[]).unwrap();
    let task = server.ok(&format!("/api/tasks/{}", id(&task)));
    assert_eq!(task["State"], "Failed");
    assert!(
        task["ErrorMessage"].as_str().unwrap().contains("shut down"),
        "{}",
        task["ErrorMessage"]
    );
}

#[test]
fn a_second_server_on_the_same_data_dir_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let _first = Server::start_in(temp.path(), &[]).unwrap();
    let error = Server::start_in(temp.path(), &[])
        .err()
        .expect("the second server must not start");
    assert!(error.contains("in use by another Muster server"), "{error}");
}

#[test]
fn scheduled_tasks_wait_for_their_queue_time() {
    let server = Server::start();
    let later = (chrono_like_now_plus_hours(1)).to_string();
    let body = json!({"Name": "AdHocScript", "Description": "later", "QueueTime": later, "Arguments": {"ScriptBody": "true"}});
    let task = server
        .post("/api/Spaces-1/tasks", &body)
        .assert_status(201)
        .clone();
    wait_reason(&server, &id(&task), "Scheduled to start at");
}

/// An ISO-8601 time `hours` from now, without a date library in the tests.
fn chrono_like_now_plus_hours(hours: u64) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + hours * 3600;
    let output = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[test]
fn a_stopped_task_queue_holds_its_tasks_until_it_restarts() {
    let server = Server::start();
    server
        .put("/api/spaces/Spaces-1", &json!({"TaskQueueStopped": true}))
        .assert_status(200);
    let task = server.run_script("Spaces-1", json!({"ScriptBody": "echo resumed"}));
    wait_reason(
        &server,
        &id(&task),
        "task queue of space 'Default' is stopped",
    );
    server
        .put("/api/spaces/Spaces-1", &json!({"TaskQueueStopped": false}))
        .assert_status(200);
    let (done, lines) = server.wait_task(&id(&task));
    assert_eq!(done["State"], "Success");
    assert!(texts(&lines).contains(&"resumed".to_string()));
}

#[test]
fn an_empty_pool_other_than_the_default_queues_its_tasks_until_a_worker_joins_it() {
    let server = Server::start();
    let pool = server
        .post("/api/Spaces-1/workerpools", &json!({"Name": "Hardened"}))
        .assert_status(201)
        .clone();
    let task = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": "pwd", "TargetType": "WorkerPools", "WorkerPoolIds": [pool["Id"]]}),
    );
    let reason = wait_reason(&server, &id(&task), "Pool 'Hardened' has no workers");
    assert!(reason.contains("default pool"), "{reason}");
    // Several pools, one of them the empty default: the built-in worker stands in for it alone.
    let default_pool = server.default_pool();
    let both = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": "pwd", "TargetType": "WorkerPools", "WorkerPoolIds": [pool["Id"], default_pool]}),
    );
    assert_eq!(server.wait_task(&id(&both)).0["State"], "Success");

    // A worker joins the pool: the task runs there, not on the server.
    let _agent = server.polling_agent_in("hardened", "Hardened");
    let (done, lines) = server.wait_task(&id(&task));
    assert_eq!(done["State"], "Success", "{lines:?}");
    let printed = texts(&lines).join("\n");
    assert!(printed.contains("agent-hardened"), "{printed}");
}

#[test]
fn the_builtin_worker_gives_scripts_a_clean_environment() {
    // Cargo hands the tests (and so the server they start) variables such as this one.
    assert!(std::env::var("CARGO_MANIFEST_DIR").is_ok());
    let server = Server::start();
    let task = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": "echo \"[${CARGO_MANIFEST_DIR:-}]\"; echo \"home=${HOME:-}\"; command -v bash"}),
    );
    let (done, lines) = server.wait_task(&id(&task));
    assert_eq!(done["State"], "Success");
    let printed = texts(&lines);
    assert!(printed.contains(&"[]".to_string()), "{printed:?}");
    if std::env::var("HOME").is_ok() {
        assert!(
            printed.iter().any(|l| l.starts_with("home=/")),
            "{printed:?}"
        );
    }
    assert!(printed.iter().any(|l| l.ends_with("/bash")), "{printed:?}");
}
