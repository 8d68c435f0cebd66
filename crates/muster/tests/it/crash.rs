//! No script outlives its task: scripts die with their runner (the server's built-in worker, an
//! agent), what a crash left is cleaned at the next start, an agent's orphaned tickets are canceled,
//! and a server killed over and over loses, repeats and strands nothing.

use crate::support::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn id(task: &Value) -> String {
    task["Id"].as_str().unwrap().to_string()
}

/// The live processes of the scripts a test started: those whose environment carries `mark` (the
/// scripts export it to what they start) or whose working directory is under `root` (the
/// interpreters and their watchdogs). Zombies are dead and not counted.
fn script_processes(mark: &str, root: &Path) -> Vec<i32> {
    let needle = format!("CRASH_MARK={mark}");
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let root = root.to_string_lossy().into_owned();
    let own = std::process::id() as i32;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let state = stat[stat.rfind(')').unwrap() + 1..].trim_start();
        if state.starts_with('Z') {
            continue;
        }
        let marked = std::fs::read(format!("/proc/{pid}/environ"))
            .map(|env| env.split(|b| *b == 0).any(|e| e == needle.as_bytes()))
            .unwrap_or(false);
        let inside = std::fs::read_link(format!("/proc/{pid}/cwd"))
            .map(|cwd| cwd.to_string_lossy().starts_with(&root))
            .unwrap_or(false);
        if marked || inside {
            found.push(pid);
        }
    }
    found
}

/// Waits (bounded) until no process of the test's scripts is left; returns those left at the end.
fn gone_within(limit: Duration, mark: &str, root: &Path) -> Vec<i32> {
    let deadline = Instant::now() + limit;
    loop {
        let left = script_processes(mark, root);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn describe(pids: &[i32]) -> String {
    pids.iter()
        .map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            format!(
                "{pid}: {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The per-script entries (directories and records) left under a work root.
fn stale_entries(work: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(work)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("muster-task-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A quiet script: it starts a child of its own, says so, and then sleeps.
fn quiet_script(mark: &str) -> String {
    format!("export CRASH_MARK={mark}\nsleep 120 &\necho started\nsleep 120")
}

fn worker_id(server: &Server, name: &str) -> Value {
    server
        .ok("/api/Spaces-1/workers/all")
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["Name"] == name)
        .unwrap()["Id"]
        .clone()
}

fn wait_started(server: &Server, task: &str) {
    server.follow(task, |kind, data| {
        !(kind == "line" && data["MessageText"] == "started")
    });
}

#[test]
fn the_builtin_workers_script_dies_with_the_server_and_its_directory_goes_at_the_next_start() {
    let temp = tempfile::tempdir().unwrap();
    let mark = format!("builtin-{}", std::process::id());
    let server = Server::start_in(temp.path(), &[]).unwrap();
    let task = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": quiet_script(&mark), "TargetType": "OctopusServer"}),
    );
    wait_started(&server, &id(&task));
    assert!(
        script_processes(&mark, temp.path()).len() >= 3,
        "the script, its child and its watchdog run"
    );
    server.kill();
    let left = gone_within(Duration::from_secs(5), &mark, temp.path());
    assert!(
        left.is_empty(),
        "the script outlived the server: {}",
        describe(&left)
    );
    let work = temp.path().join("work");
    assert!(
        !stale_entries(&work).is_empty(),
        "a killed server leaves its script's directory behind"
    );

    let server = Server::start_in(temp.path(), &[]).unwrap();
    assert!(stale_entries(&work).is_empty(), "the start removed it");
    let (done, _) = server.wait_task(&id(&task));
    assert_eq!(done["State"], "Failed");
    let message = done["ErrorMessage"].as_str().unwrap();
    assert!(
        message.contains("was stopped with the server") && message.contains("outcome is unknown"),
        "{message}"
    );
}

#[test]
fn a_killed_agent_takes_its_script_with_it_and_its_restart_reports_the_ticket_lost() {
    let server = Server::start();
    server
        .put(
            "/api/Spaces-1/machinepolicies/MachinePolicies-1",
            &json!({"ConnectionConnectTimeout": "00:00:30"}),
        )
        .assert_status(200);
    let mark = format!("agent-{}", std::process::id());
    let mut agent = server.polling_agent("mortal");
    server.wait_health("mortal", "Healthy");
    let home = server.dir.join("agent-mortal");
    let task = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": quiet_script(&mark), "TargetType": "Workers", "MachineIds": [worker_id(&server, "mortal")]}),
    );
    wait_started(&server, &id(&task));
    assert!(script_processes(&mark, &home).len() >= 3);
    agent.kill();
    let left = gone_within(Duration::from_secs(5), &mark, &home);
    assert!(
        left.is_empty(),
        "the script outlived its agent: {}",
        describe(&left)
    );
    assert!(!stale_entries(&home.join("work")).is_empty());

    // Back within the server's wait: the agent says it lost the ticket, and cleans its work root.
    let agent = Agent::start(&home);
    agent.wait_for("is connected to");
    let (done, _) = server.wait_task(&id(&task));
    assert_eq!(done["State"], "Failed");
    let message = done["ErrorMessage"].as_str().unwrap();
    assert!(
        message.contains("The agent of worker mortal restarted while it held this script"),
        "{message}"
    );
    assert!(stale_entries(&home.join("work")).is_empty());
    // The ticket is freed: the agent's home forgets it.
    eventually("the lost ticket to be completed", || {
        let tickets = std::fs::read_to_string(home.join("tickets.json")).unwrap();
        (!tickets.contains(&id(&task))).then_some(())
    });
}

#[test]
fn an_orphaned_ticket_is_canceled_when_its_agent_reconnects() {
    let temp = tempfile::tempdir().unwrap();
    let server = Server::start_in(temp.path(), &[]).unwrap();
    let comms = format!("127.0.0.1:{}", server.comms_port);
    let mark = format!("orphan-{}", std::process::id());
    let _agent = server.polling_agent("keeper");
    server.wait_health("keeper", "Healthy");
    let home = server.dir.join("agent-keeper");
    let finished = temp.path().join("finished");
    let script = format!(
        "export CRASH_MARK={mark}\necho started\nsleep 8\ntouch '{}'",
        finished.display()
    );
    let task = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": script, "TargetType": "Workers", "MachineIds": [worker_id(&server, "keeper")]}),
    );
    wait_started(&server, &id(&task));
    // A clean stop leaves the script running on its agent; the task then ends while the server is
    // down (as when it was failed for an unreachable agent), so nothing follows the ticket any more.
    assert!(server.stop().success());
    let num = id(&task).trim_start_matches("ServerTasks-").to_string();
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"UPDATE tasks SET state='Failed' WHERE num=?\", (int(sys.argv[2]),)); c.commit()",
        ])
        .arg(temp.path().join("muster.db"))
        .arg(&num)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(!script_processes(&mark, &home).is_empty(), "still running");

    let server = Server::start_in(temp.path(), &["--comms-listen", &comms]).unwrap();
    let left = gone_within(Duration::from_secs(40), &mark, &home);
    assert!(
        left.is_empty(),
        "the orphan still runs: {}",
        describe(&left)
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(!finished.exists(), "the orphan ran to its end");
    eventually("the orphan's ticket to be completed", || {
        let tickets = std::fs::read_to_string(home.join("tickets.json")).unwrap();
        (!tickets.contains(&id(&task))).then_some(())
    });
    drop(server);
}

/// A task's `line N` lines, in the order logged.
fn numbered_lines(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["MessageText"].as_str().unwrap().to_string())
        .filter(|t| t.starts_with("line "))
        .collect()
}

#[test]
fn a_server_killed_ten_times_loses_repeats_and_strands_nothing() {
    const LINES: usize = 30;
    let temp = tempfile::tempdir().unwrap();
    let mark = format!("loop-{}", std::process::id());
    let runs = temp.path().join("runs");
    let mut server = Server::start_in(temp.path(), &["--task-cap", "6"]).unwrap();
    let comms = format!("127.0.0.1:{}", server.comms_port);
    let _poller = server.polling_agent("poller");
    let _listener = server.listening_agent("listener");
    server.wait_health("poller", "Healthy");
    server.wait_health("listener", "Healthy");
    let targets = [
        json!({"TargetType": "Workers", "MachineIds": [worker_id(&server, "poller")]}),
        json!({"TargetType": "Workers", "MachineIds": [worker_id(&server, "listener")]}),
        json!({"TargetType": "OctopusServer"}),
    ];
    let script = format!(
        "echo \"$MUSTER_TASK_ID\" >> '{}'\nexport CRASH_MARK={mark}\n\
         for i in $(seq 1 {LINES}); do echo \"line $i\"; sleep 0.05; done",
        runs.display()
    );
    // (task id, on the built-in worker)
    let mut tasks: Vec<(String, bool)> = Vec::new();
    let started = Instant::now();
    for round in 0..10 {
        for target in &targets {
            let mut arguments = target.clone();
            arguments["ScriptBody"] = json!(script);
            let task = server.run_script("Spaces-1", arguments);
            tasks.push((id(&task), target["TargetType"] == "OctopusServer"));
        }
        std::thread::sleep(Duration::from_millis(300 + 150 * (round % 4)));
        server.kill();
        server =
            Server::start_in(temp.path(), &["--task-cap", "6", "--comms-listen", &comms]).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the kill loop takes too long"
        );
    }

    let mut ended = Vec::new();
    for (task_id, _) in &tasks {
        ended.push(server.wait_task(task_id));
    }
    let runs_text = std::fs::read_to_string(&runs).unwrap_or_default();
    let mut failed_builtin = 0;
    for ((task_id, builtin), (task, lines)) in tasks.iter().zip(ended) {
        let numbered = numbered_lines(&lines);
        let expected: Vec<String> = (1..=numbered.len()).map(|i| format!("line {i}")).collect();
        assert_eq!(
            numbered, expected,
            "{task_id}: no line lost, repeated or out of order"
        );
        let ran = runs_text.lines().filter(|l| l == task_id).count();
        let texts: Vec<&str> = lines
            .iter()
            .map(|l| l["MessageText"].as_str().unwrap())
            .filter(|t| !t.starts_with("line "))
            .collect();
        assert!(ran <= 1, "{task_id} ran {ran} times: {task} {texts:?}");
        if *builtin && task["State"] == "Failed" {
            // Killed with the server: it says so, and ran at most once.
            let message = task["ErrorMessage"].as_str().unwrap();
            assert!(message.contains("stopped with the server"), "{message}");
            failed_builtin += 1;
        } else {
            assert_eq!(task["State"], "Success", "{task_id}: {task}");
            assert_eq!(numbered.len(), LINES, "{task_id}: the whole log");
            assert_eq!(ran, 1, "{task_id} ran once");
        }
    }
    eprintln!(
        "kill loop: {} tasks, {failed_builtin} built-in tasks stopped by a kill, {:?}",
        tasks.len(),
        started.elapsed()
    );
    let left = gone_within(Duration::from_secs(5), &mark, temp.path());
    assert!(left.is_empty(), "orphan processes: {}", describe(&left));
    let queued = server.ok("/api/tasks?states=Queued,Executing,Cancelling");
    assert_eq!(queued["TotalResults"], 0, "nothing stuck: {queued}");
}

#[test]
fn a_task_claimed_but_never_received_is_started_once_after_a_restart() {
    let temp = tempfile::tempdir().unwrap();
    let server = Server::start_in(temp.path(), &[]).unwrap();
    let comms = format!("127.0.0.1:{}", server.comms_port);
    let mut agent = server.polling_agent("late");
    server.wait_health("late", "Healthy");
    let home = server.dir.join("agent-late");
    let worker = worker_id(&server, "late");
    agent.kill();
    server.wait_health("late", "Unavailable");
    let runs = temp.path().join("runs");
    let script = format!(
        "echo \"$MUSTER_TASK_ID\" >> '{}'\nfor i in 1 2 3; do echo \"line $i\"; done",
        runs.display()
    );
    let task = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": script, "TargetType": "Workers", "MachineIds": [worker]}),
    );
    eventually("the task to wait for its worker", || {
        let task = server.ok(&format!("/api/tasks/{}", id(&task)));
        task["QueueReason"].as_str().map(|_| ())
    });
    // As a server that died between its claim and the agent's `start` leaves it.
    assert!(server.stop().success());
    let num = id(&task).trim_start_matches("ServerTasks-").to_string();
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"UPDATE tasks SET state='Executing', worker_id=?, worker_name='late', start_time=queue_time, queue_reason=NULL WHERE num=?\", (sys.argv[3], int(sys.argv[2]))); c.commit()",
        ])
        .arg(temp.path().join("muster.db"))
        .arg(&num)
        .arg(worker.as_str().unwrap())
        .status()
        .unwrap();
    assert!(status.success());

    let server = Server::start_in(temp.path(), &["--comms-listen", &comms]).unwrap();
    let agent = Agent::start(&home);
    agent.wait_for("is connected to");
    let (done, lines) = server.wait_task(&id(&task));
    assert_eq!(done["State"], "Success", "{done}");
    assert_eq!(numbered_lines(&lines), ["line 1", "line 2", "line 3"]);
    let texts: Vec<&str> = lines
        .iter()
        .map(|l| l["MessageText"].as_str().unwrap())
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("never received this script")),
        "{texts:?}"
    );
    let ran = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(ran.lines().count(), 1, "started once: {ran}");
}

#[test]
fn an_agent_stops_a_script_the_server_stopped_asking_about() {
    let temp = tempfile::tempdir().unwrap();
    let server = Server::start_in(temp.path(), &[]).unwrap();
    server
        .put(
            "/api/Spaces-1/machinepolicies/MachinePolicies-1",
            &json!({"ConnectionConnectTimeout": "00:00:01"}),
        )
        .assert_status(200);
    let comms = format!("127.0.0.1:{}", server.comms_port);
    let mark = format!("abandoned-{}", std::process::id());
    // A listening agent: the restarted server dials it at once, well within its 1-second wait.
    let _agent = server.listening_agent("patient");
    server.wait_health("patient", "Healthy");
    let home = server.dir.join("agent-patient");
    let task = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": quiet_script(&mark), "TargetType": "Workers", "MachineIds": [worker_id(&server, "patient")]}),
    );
    wait_started(&server, &id(&task));
    // A clean stop leaves the script running; no server comes back to ask about it.
    assert!(server.stop().success());
    std::thread::sleep(Duration::from_secs(1));
    assert!(!script_processes(&mark, &home).is_empty(), "still running");
    // The server waits 1 second for a lost agent; the agent, that plus 30.
    let left = gone_within(Duration::from_secs(45), &mark, &home);
    assert!(left.is_empty(), "the script ran on: {}", describe(&left));

    let server = Server::start_in(temp.path(), &["--comms-listen", &comms]).unwrap();
    let (done, _) = server.wait_task(&id(&task));
    assert_eq!(done["State"], "Failed");
    let message = done["ErrorMessage"].as_str().unwrap();
    assert!(
        message.contains("Worker patient stopped the script: it heard nothing about it"),
        "{message}"
    );
}

/// Lines an agent's script printed while the server was down keep the agent's time of each line,
/// not the moment the restarted server read them all at once.
#[test]
fn lines_printed_while_the_server_was_down_keep_their_own_time() {
    let temp = tempfile::tempdir().unwrap();
    let server = Server::start_in(temp.path(), &[]).unwrap();
    let comms = format!("127.0.0.1:{}", server.comms_port);
    let _poller = server.polling_agent("poller");
    server.wait_health("poller", "Healthy");
    let task = server.run_script(
        "Spaces-1",
        json!({
            "TargetType": "Workers",
            "MachineIds": [worker_id(&server, "poller")],
            "ScriptBody": "echo started\nfor i in $(seq 1 20); do echo \"line $i\"; sleep 0.1; done",
        }),
    );
    let task_id = id(&task);
    wait_started(&server, &task_id);
    server.kill();
    // The script prints the rest of its lines (about 2 s of them) while no server reads them.
    std::thread::sleep(Duration::from_secs(3));
    let server = Server::start_in(temp.path(), &["--comms-listen", &comms]).unwrap();
    let (task, lines) = server.wait_task(&task_id);
    assert_eq!(task["State"], "Success", "{task}");
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = lines
        .iter()
        .filter(|l| l["MessageText"].as_str().unwrap().starts_with("line "))
        .map(|l| chrono::DateTime::parse_from_rfc3339(l["OccurredAt"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(times.len(), 20, "{lines:?}");
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "in order: {times:?}"
    );
    // Printed 0.1 s apart: stamped when the restarted server read them, they would jump by the
    // 3 s it was down and then share one instant.
    let largest_gap = times.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        largest_gap < chrono::Duration::milliseconds(1000),
        "a gap of {largest_gap:?}: {times:?}"
    );
    let spread = times[19] - times[0];
    assert!(
        spread >= chrono::Duration::milliseconds(1500),
        "the lines' own times span {spread:?}: {times:?}"
    );
}
