//! Several server nodes on one PostgreSQL database: any node serves any request (a task made on one
//! is followed live on another, and canceled from a third), one node dispatches at a time, and when
//! it dies or is paused past its lease another takes over, fails what died with it (naming it), and
//! the paused one's late writes are refused.

use crate::support::{Server, eventually_within, free_port};
use muster_store::testing::TestDatabase;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

fn id(task: &Value) -> String {
    task["Id"].as_str().unwrap().to_string()
}

/// Three nodes, `n1` first (so it dispatches), each with its own data directory holding the first
/// node's key of sensitive values and server certificate, as the README says to copy them.
struct Cluster {
    _database: TestDatabase,
    _temp: tempfile::TempDir,
    nodes: Vec<Option<Server>>,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

impl Cluster {
    fn start() -> Cluster {
        let database = TestDatabase::create();
        let temp = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for n in 1..=3 {
            let dir = temp.path().join(format!("n{n}"));
            if n > 1 {
                let first = temp.path().join("n1");
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::copy(first.join("secrets.key"), dir.join("secrets.key")).unwrap();
                copy_dir(
                    &first.join("server-certificate"),
                    &dir.join("server-certificate"),
                );
            }
            let comms = format!("127.0.0.1:{}", free_port());
            let name = format!("n{n}");
            let args = [
                "--database",
                database.url(),
                "--node-name",
                &name,
                "--comms-listen",
                &comms,
            ];
            nodes.push(Some(
                Server::start_in(&dir, &args).unwrap_or_else(|e| panic!("node {name}: {e}")),
            ));
        }
        Cluster {
            _database: database,
            _temp: temp,
            nodes,
        }
    }

    fn node(&self, n: usize) -> &Server {
        self.nodes[n - 1].as_ref().expect("the node runs")
    }

    fn take(&mut self, n: usize) -> Server {
        self.nodes[n - 1].take().expect("the node runs")
    }
}

/// A task made on one node runs (on the dispatching node), is followed live on another, and a
/// cancel asked on a third stops its script. The node list shows all three.
#[test]
fn any_node_serves_any_request_and_follows_a_task_of_another_live() {
    let cluster = Cluster::start();
    let (n1, n2, n3) = (cluster.node(1), cluster.node(2), cluster.node(3));
    let names: Vec<String> = n3
        .ok("/api/octopusservernodes/all")
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["Name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["n1", "n2", "n3"]);
    assert!(
        n2.banner.iter().any(|l| l.contains("n1 dispatches now")),
        "{:?}",
        n2.banner
    );

    // Made on n2, run by n1, followed on n3 while it runs: each line as it comes.
    let release = n1.dir.join("release");
    let script = format!(
        "echo one\necho two\nwhile [ ! -f '{}' ]; do sleep 0.02; done\necho three",
        release.display()
    );
    let task = n2.run_script("Spaces-1", json!({"ScriptBody": script}));
    let mut seen = Vec::new();
    n3.follow(&id(&task), |kind, data| {
        if kind == "line" {
            seen.push(data["MessageText"].as_str().unwrap().to_string());
        }
        !seen.iter().any(|l| l == "two")
    });
    assert!(
        seen.ends_with(&["one".to_string(), "two".to_string()]),
        "{seen:?}"
    );
    let running = n3.ok(&format!("/api/tasks/{}", id(&task)));
    assert_eq!(running["State"], "Executing", "seen live, before its end");
    assert_eq!(running["ServerNode"], "n1");
    std::fs::write(&release, "go").unwrap();
    let (done, lines) = n3.wait_task(&id(&task));
    assert_eq!(done["State"], "Success", "{done}");
    let texts: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["MessageText"].as_str())
        .collect();
    for expected in ["one", "two", "three"] {
        assert_eq!(
            texts.iter().filter(|t| **t == expected).count(),
            1,
            "{expected} once: {texts:?}"
        );
    }

    // Canceled on n3 while it runs on n1: the script stops there.
    let marker = n1.dir.join("not-reached");
    let script = format!("echo started\nsleep 30\ntouch '{}'", marker.display());
    let long = n2.run_script("Spaces-1", json!({"ScriptBody": script}));
    n3.follow(&id(&long), |kind, data| {
        !(kind == "line" && data["MessageText"] == "started")
    });
    n3.post(&format!("/api/tasks/{}/cancel", id(&long)), &json!({}))
        .assert_status(200);
    let (canceled, _) = n2.wait_task(&id(&long));
    assert_eq!(canceled["State"], "Canceled", "{canceled}");
    assert!(!marker.exists(), "the script was stopped");
}

/// Each script of the burst appends its task's id to a file: how often each ran.
fn runs(file: &Path) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
        *counts.entry(line.to_string()).or_insert(0) += 1;
    }
    counts
}

/// The dispatching node is killed during a burst of 200 tasks made on the other two: another node
/// takes over within 10 seconds. No task is lost or run twice: each ends, Success having run once,
/// and those that ran on the dead node's built-in worker Failed naming it.
#[test]
fn killing_the_dispatcher_during_a_burst_hands_over_without_losing_or_repeating_a_task() {
    let mut cluster = Cluster::start();
    let ran = cluster.node(1).dir.parent().unwrap().join("ran");
    let script = format!("echo \"$MUSTER_TASK_ID\" >> '{}'\nsleep 0.2", ran.display());
    // The burst is made on n2 and n3 from another thread; n1 dies when 60 of them exist.
    let (made_tx, made_rx) = std::sync::mpsc::channel::<String>();
    let burst = {
        let urls = [cluster.node(2).url.clone(), cluster.node(3).url.clone()];
        let script = script.clone();
        std::thread::spawn(move || {
            let http = crate::support::client();
            for i in 0..200 {
                let reply: Value = http
                    .post(format!("{}/api/Spaces-1/tasks", urls[i % 2]))
                    .header("X-Octopus-ApiKey", crate::support::KEY)
                    .json(&json!({"Name": "AdHocScript", "Arguments": {"ScriptBody": script}}))
                    .send()
                    .unwrap()
                    .json()
                    .unwrap();
                made_tx.send(id(&reply)).unwrap();
            }
        })
    };
    let mut tasks: Vec<String> = made_rx.iter().take(60).collect();
    cluster.take(1).kill();
    let killed = Instant::now();
    let n2 = cluster.node(2);
    // Another node starts tasks within 10 seconds of the death.
    let first = eventually_within("a node to take over", Duration::from_secs(60), || {
        let running = n2.ok("/api/tasks?states=Executing,Success&take=200");
        running["Items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["ServerNode"] != "n1")
            .cloned()
    });
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "took over after {took:?}: {first}"
    );
    burst.join().unwrap();
    tasks.extend(made_rx.iter());
    assert_eq!(tasks.len(), 200);

    let mut failed_on_n1 = 0;
    for task in &tasks {
        let (done, _) = n2.wait_task(task);
        match done["State"].as_str().unwrap() {
            "Success" => {}
            "Failed" => {
                assert_eq!(done["ServerNode"], "n1", "{done}");
                let error = done["ErrorMessage"].as_str().unwrap();
                assert!(error.contains("node n1"), "{error}");
                failed_on_n1 += 1;
            }
            other => panic!("{task} ended {other}: {done}"),
        }
    }
    let counts = runs(&ran);
    for task in &tasks {
        let done = n2.ok(&format!("/api/tasks/{task}"));
        let times = counts.get(task).copied().unwrap_or(0);
        assert!(times <= 1, "{task} ran {times} times");
        if done["State"] == "Success" {
            assert_eq!(times, 1, "{task} succeeded without running");
        }
    }
    assert!(
        failed_on_n1 <= 5,
        "{failed_on_n1} died with n1 (its task cap is 5)"
    );
    let open = n2.ok("/api/tasks?states=Queued,Executing,Cancelling");
    assert_eq!(open["TotalResults"], 0, "{open}");
}

/// The dispatching node is paused (SIGSTOP) past its lease while its script prints: another node
/// takes over and fails the task, naming the paused node. Resumed (SIGCONT), the paused node finds
/// its lease gone and stops; nothing it wrote late is in the task, which stays Failed.
#[test]
fn a_paused_dispatcher_is_fenced_and_its_late_writes_are_refused() {
    let mut cluster = Cluster::start();
    let n1 = cluster.take(1);
    let script = "for i in $(seq 1 400); do echo \"line $i\"; sleep 0.05; done";
    let task = cluster
        .node(2)
        .run_script("Spaces-1", json!({"ScriptBody": script}));
    cluster.node(3).follow(&id(&task), |kind, data| {
        !(kind == "line" && data["MessageText"] == "line 3")
    });
    let pid = n1.pid().to_string();
    let signal = |name: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([name, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    signal("-STOP");
    let n2 = cluster.node(2);
    let (failed, lines) = n2.wait_task(&id(&task));
    assert_eq!(failed["State"], "Failed", "{failed}");
    assert!(
        failed["ErrorMessage"].as_str().unwrap().contains("node n1"),
        "{failed}"
    );
    let stored = lines.len();
    signal("-CONT");
    let mut n1 = n1;
    let status = n1
        .wait_exit(Duration::from_secs(30))
        .expect("the resumed node stops");
    assert_eq!(status.code(), Some(75), "{status:?}");
    let after = n2.ok(&format!("/api/tasks/{}", id(&task)));
    assert_eq!(after["State"], "Failed", "{after}");
    let details = n2.ok(&format!("/api/tasks/{}/details", id(&task)));
    let logged = details["ActivityLogs"].to_string();
    let lines_now = n2.get(&format!("/api/tasks/{}/raw", id(&task))).text;
    assert_eq!(
        lines_now.lines().filter(|l| l.contains("line ")).count(),
        lines
            .iter()
            .filter(|l| l["MessageText"].as_str().unwrap().starts_with("line "))
            .count(),
        "no line came late: {logged}"
    );
    assert!(stored > 0);
}
