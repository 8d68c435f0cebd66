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

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    /// Three nodes, each started with `extra` arguments too.
    fn start_with(extra: &[&str]) -> Cluster {
        let database = TestDatabase::create();
        let temp = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for n in 1..=3 {
            let dir = temp.path().join(format!("n{n}"));
            if n > 1 {
                crate::support::copy_node_files(&temp.path().join("n1"), &dir);
            }
            let name = format!("n{n}");
            // A free port can be taken by a parallel test before the node binds it: try another.
            let mut started = Err(String::new());
            for _ in 0..4 {
                let comms = format!("127.0.0.1:{}", free_port());
                let mut args = vec![
                    "--database",
                    database.url(),
                    "--node-name",
                    &name,
                    "--comms-listen",
                    &comms,
                ];
                args.extend_from_slice(extra);
                started = Server::start_in(&dir, &args);
                if !matches!(&started, Err(e) if e.contains("Address already in use")) {
                    break;
                }
            }
            nodes.push(Some(started.unwrap_or_else(|e| panic!("node {name}: {e}"))));
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
    let summary = n2.ok("/api/octopusservernodes/summary");
    let dispatching: Vec<&str> = summary["Nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["IsDispatcher"] == true)
        .map(|n| n["Name"].as_str().unwrap())
        .collect();
    assert_eq!(dispatching, ["n1"], "{summary}");
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
    let pid = n1.pid();
    let signal = |name: &str| send_signal(pid, name);
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

/// nginx's `stream` module (Debian's `libnginx-mod-stream`) in front of the nodes' comms ports: one
/// address for every agent. A node that does not dispatch does not listen, so nginx passes each
/// connection on to the one that does. One process (`master_process off`), so that killing it
/// leaves no worker behind.
struct Balancer {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Balancer {
    fn start(upstreams: &[u16]) -> Balancer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let servers: String = upstreams
            .iter()
            .map(|p| format!("        server 127.0.0.1:{p} max_fails=0;\n"))
            .collect();
        let config = format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
             master_process off;\n\
             pid {dir}/nginx.pid;\n\
             error_log {dir}/error.log info;\n\
             events {{}}\n\
             stream {{\n    upstream comms {{\n{servers}    }}\n    server {{\n        listen 127.0.0.1:{port};\n        proxy_pass comms;\n        proxy_connect_timeout 1s;\n        proxy_timeout 1h;\n    }}\n}}\n",
            dir = dir.path().display()
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        let child = std::process::Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx runs (the test command installs nginx-core and libnginx-mod-stream)");
        eventually_within("nginx to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Balancer {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A polling agent dials the nodes through one balanced address (nginx). The node that holds its
/// link is killed (-9) while the agent's script prints numbered lines: the agent's next connection
/// reaches the node that took over, which re-attaches to the script. The task ends Success with
/// every line once, and the script ran once.
#[test]
fn killing_the_node_that_holds_an_agents_link_moves_the_agent_and_loses_no_line() {
    let mut cluster = Cluster::start();
    let ports: Vec<u16> = (1..=3).map(|n| cluster.node(n).comms_port).collect();
    assert!(ports.iter().all(|p| *p != 0), "{ports:?}");
    let balancer = Balancer::start(&ports);
    cluster.nodes[1].as_mut().unwrap().comms_port = balancer.port;
    let _agent = cluster.node(2).polling_agent("balanced");
    cluster.node(2).wait_health("balanced", "Healthy");
    the_agents_script_outlives_its_node(&mut cluster, "balanced");
}

/// The same without a balancer: the agent is given every node's comms address and moves to the
/// next when its node dies.
#[test]
fn an_agent_given_every_nodes_address_moves_when_its_node_dies() {
    let mut cluster = Cluster::start();
    let agent = listed_agent(&cluster, "listed", &[1, 2, 3]);
    let linked = agent.wait_for("is connected to");
    let n1 = format!("127.0.0.1:{}", cluster.node(1).comms_port);
    assert!(linked.contains(&n1), "{linked}");
    cluster.node(2).wait_health("listed", "Healthy");
    the_agents_script_outlives_its_node(&mut cluster, "listed");
}

/// An agent linked to a node that does not dispatch: its script tasks run on that node; the
/// dispatcher reaches it through that node (the relay) for a health check and for a runbook run it
/// drives. When that node dies mid-step, the agent links to the next, the dispatcher reads on
/// through it, and the run ends Success with every line once; the script ran once.
#[test]
fn an_agent_linked_to_another_node_is_reached_through_it_and_survives_its_death() {
    let mut cluster = Cluster::start();
    let agent = listed_agent(&cluster, "relayed", &[2, 3]);
    let linked = agent.wait_for("is connected to");
    let n2 = format!("127.0.0.1:{}", cluster.node(2).comms_port);
    assert!(linked.contains(&n2), "linked to n2 first: {linked}");
    cluster.node(1).wait_health("relayed", "Healthy");
    // A script task runs on the node that holds the agent's link.
    let quick = cluster
        .node(3)
        .run_script("Spaces-1", json!({"ScriptBody": "echo relayed"}));
    let (done, lines) = cluster.node(3).wait_task(&id(&quick));
    assert_eq!(done["State"], "Success", "{done}");
    assert_eq!(
        done["ServerNode"], "n2",
        "the node that holds the link ran it"
    );
    assert!(lines.iter().any(|l| l["MessageText"] == "relayed"));
    // A health check runs on the dispatcher, through n2.
    let health = cluster
        .node(3)
        .post("/api/Spaces-1/tasks", &json!({"Name": "Health"}))
        .assert_status(201)
        .clone();
    let (checked, lines) = cluster.node(3).wait_task(&id(&health));
    assert_eq!(checked["State"], "Success", "{checked} {lines:?}");
    assert_eq!(checked["ServerNode"], "n1");
    assert!(
        lines.iter().any(|l| l["MessageText"]
            .as_str()
            .unwrap()
            .contains("answered its health check")),
        "{lines:?}"
    );

    let marker = cluster.node(2).dir.join("ran-relayed");
    crate::runbooks::create(
        cluster.node(1),
        "numbered.yaml",
        &format!(
            "name: Numbered\nsteps:\n  - name: Count\n    script: \"echo once >> '{}'; for i in $(seq 1 60); do echo n $i; sleep 0.1; done\"\n",
            marker.display()
        ),
    );
    let run = crate::runbooks::start_run(cluster.node(1), "Numbered");
    cluster.node(3).follow(&run, |kind, data| {
        !(kind == "line" && data["MessageText"] == "n 5")
    });
    cluster.take(2).kill();
    let killed = Instant::now();
    let moved = agent.wait_for("is connected to");
    let n3 = format!("127.0.0.1:{}", cluster.node(3).comms_port);
    assert!(moved.contains(&n3), "moved to n3: {moved}");
    let (done, lines) = cluster.node(1).wait_task(&run);
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!(done["State"], "Success", "{done}");
    assert_eq!(done["ServerNode"], "n1");
    let numbered: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["MessageText"].as_str())
        .filter(|t| t.starts_with("n "))
        .collect();
    let expected: Vec<String> = (1..=60).map(|i| format!("n {i}")).collect();
    assert_eq!(numbered, expected, "every line once, in order");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "once\n");
    cluster.node(3).wait_health("relayed", "Healthy");
}

/// Every node runs scripts on its own built-in worker, never more at once than its task cap;
/// killing a node that does not dispatch fails the tasks on its built-in worker (naming it) within
/// 30 seconds, and moves its agent's script to the dispatcher, which reads on to its end.
#[test]
fn every_node_runs_scripts_and_the_tasks_of_a_dead_node_are_taken_over() {
    let mut cluster = Cluster::start_with(&["--task-cap", "2"]);
    let dir = cluster.node(1).dir.clone();
    let gate = dir.join("go");
    let hold = format!(
        "echo started\nwhile [ ! -f '{}' ]; do sleep 0.05; done",
        gate.display()
    );
    let tasks: Vec<String> = (0..6)
        .map(|i| {
            id(&cluster
                .node(1 + i % 3)
                .run_script("Spaces-1", json!({"ScriptBody": hold.clone()})))
        })
        .collect();
    // Six at once: two on each node.
    let placed = eventually_within("six tasks to run", Duration::from_secs(30), || {
        let running = cluster.node(1).ok("/api/tasks?states=Executing&take=100");
        let items = running["Items"].as_array().unwrap().clone();
        (items.len() == 6).then_some(items)
    });
    let mut per_node = std::collections::HashMap::new();
    for task in &placed {
        *per_node
            .entry(task["ServerNode"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(per_node.values().all(|n| *n == 2), "{per_node:?}");
    // A seventh waits for room on any node.
    let seventh = cluster
        .node(2)
        .run_script("Spaces-1", json!({"ScriptBody": "echo seventh"}));
    let reason = eventually_within("the reason", Duration::from_secs(30), || {
        cluster.node(2).ok(&format!("/api/tasks/{}", id(&seventh)))["QueueReason"]
            .as_str()
            .map(str::to_string)
    });
    assert!(
        reason.contains("task cap is reached on every node"),
        "{reason}"
    );

    // n3 dies with its two tasks; an agent's script placed on it moves to the dispatcher.
    let on_n3: Vec<String> = placed
        .iter()
        .filter(|t| t["ServerNode"] == "n3")
        .map(|t| t["Id"].as_str().unwrap().to_string())
        .collect();
    cluster.take(3).kill();
    let killed = Instant::now();
    for task in &on_n3 {
        let (done, _) = cluster.node(2).wait_task(task);
        assert_eq!(done["State"], "Failed", "{done}");
        let error = done["ErrorMessage"].as_str().unwrap();
        assert!(error.contains("node n3"), "{error}");
    }
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "{:?}",
        killed.elapsed()
    );
    std::fs::write(&gate, "").unwrap();
    for task in tasks.iter().filter(|t| !on_n3.contains(t)) {
        let (done, _) = cluster.node(1).wait_task(task);
        assert_eq!(done["State"], "Success", "{done}");
    }
    let (done, _) = cluster.node(1).wait_task(&id(&seventh));
    assert_eq!(done["State"], "Success", "{done}");
    assert_ne!(done["ServerNode"], "n3");
}

/// An agent's script on a node that is not the dispatcher: that node dies, the dispatcher takes
/// the script over once the node is offline, and the task ends Success with every line once.
#[test]
fn an_agents_script_outlives_a_node_that_does_not_dispatch() {
    let mut cluster = Cluster::start();
    let agent = listed_agent(&cluster, "onn2", &[2, 3]);
    agent.wait_for("is connected to");
    cluster.node(1).wait_health("onn2", "Healthy");
    let marker = cluster.node(1).dir.join("ran-onn2");
    let script = format!(
        "echo once >> '{}'\nfor i in $(seq 1 150); do echo \"n $i\"; sleep 0.1; done",
        marker.display()
    );
    let task = cluster
        .node(1)
        .run_script("Spaces-1", json!({"ScriptBody": script}));
    cluster.node(1).follow(&id(&task), |kind, data| {
        !(kind == "line" && data["MessageText"] == "n 5")
    });
    assert_eq!(
        cluster.node(1).ok(&format!("/api/tasks/{}", id(&task)))["ServerNode"],
        "n2"
    );
    cluster.take(2).kill();
    let killed = Instant::now();
    let (done, lines) = cluster.node(1).wait_task(&id(&task));
    assert_eq!(done["State"], "Success", "{done}");
    assert_eq!(done["ServerNode"], "n1", "the dispatcher took it over");
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "{:?}",
        killed.elapsed()
    );
    assert!(
        lines.iter().any(|l| l["MessageText"]
            .as_str()
            .unwrap()
            .contains("node n2 stopped")),
        "the log says why the script was re-attached"
    );
    let numbered: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["MessageText"].as_str())
        .filter(|t| t.starts_with("n "))
        .collect();
    let expected: Vec<String> = (1..=150).map(|i| format!("n {i}")).collect();
    assert_eq!(numbered, expected, "every line once, in order");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "once\n");
}

/// Only a node with the nodes' shared certificate may call agents through another node: a client
/// with any other certificate is refused at the relay's preface, and the node's own is accepted.
#[test]
fn only_a_node_with_the_shared_certificate_may_relay() {
    use std::io::{Read, Write};
    let server = Server::start();
    let answer = |identity: &muster_proto::Identity| -> String {
        let anything: muster_proto::tls::Pin = std::sync::Arc::new(|_: &[u8]| true);
        let config = muster_proto::tls::client_config(identity, anything).unwrap();
        let tcp = std::net::TcpStream::connect(("127.0.0.1", server.comms_port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let connection =
            rustls::ClientConnection::new(config, muster_proto::tls::server_name()).unwrap();
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        tls.write_all(b"MUSTER-RELAY 1\n").unwrap();
        // The first line only: an accepted relay's HTTP/2 settings may follow in the same read.
        let mut line = [0u8; 64];
        let read = tls.read(&mut line).unwrap_or(0);
        let text = String::from_utf8_lossy(&line[..read]).into_owned();
        match text.find('\n') {
            Some(end) => text[..=end].to_string(),
            None => text,
        }
    };
    let intruder = muster_proto::Identity::generate("Muster Server").unwrap();
    assert_eq!(answer(&intruder), "", "refused and closed");
    let own = muster_proto::Identity::load_or_create(
        &server.dir.join("server-certificate"),
        "Muster Server",
    )
    .unwrap();
    assert_eq!(answer(&own), "MUSTER-ACCEPTED\n");
}

/// A node that does not dispatch is paused (SIGSTOP) past its heartbeat while it runs an agent's
/// script: the dispatcher fences it and takes the script over (the agent links to the next node).
/// Resumed (SIGCONT), the paused node finds itself presumed dead and stops; its late writes are
/// refused, so every line is in the log once and the task ends Success where it was taken over.
#[test]
fn a_paused_node_is_fenced_and_its_agents_script_taken_over() {
    let mut cluster = Cluster::start();
    let agent = listed_agent(&cluster, "paused", &[2, 3]);
    agent.wait_for("is connected to");
    cluster.node(1).wait_health("paused", "Healthy");
    let script = "for i in $(seq 1 300); do echo \"n $i\"; sleep 0.1; done";
    let task = cluster
        .node(1)
        .run_script("Spaces-1", json!({"ScriptBody": script}));
    cluster.node(1).follow(&id(&task), |kind, data| {
        !(kind == "line" && data["MessageText"] == "n 3")
    });
    assert_eq!(
        cluster.node(1).ok(&format!("/api/tasks/{}", id(&task)))["ServerNode"],
        "n2"
    );
    let n2 = cluster.take(2);
    let pid = n2.pid();
    let signal = |name: &str| send_signal(pid, name);
    signal("-STOP");
    let n1 = cluster.node(1);
    eventually_within(
        "the dispatcher to take it over",
        Duration::from_secs(40),
        || (n1.ok(&format!("/api/tasks/{}", id(&task)))["ServerNode"] == "n1").then_some(()),
    );
    signal("-CONT");
    let mut n2 = n2;
    let status = n2
        .wait_exit(Duration::from_secs(30))
        .expect("the resumed node stops");
    assert_eq!(status.code(), Some(75), "{status:?}");
    let (done, lines) = n1.wait_task(&id(&task));
    assert_eq!(done["State"], "Success", "{done}");
    assert_eq!(done["ServerNode"], "n1");
    let numbered: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["MessageText"].as_str())
        .filter(|t| t.starts_with("n "))
        .collect();
    let expected: Vec<String> = (1..=300).map(|i| format!("n {i}")).collect();
    assert_eq!(numbered, expected, "every line once, in order");
}

/// A node gone for good is deleted from the registry once it is offline; an online node, an
/// unknown one and a key that is not an administrator's are refused.
#[test]
fn a_node_gone_for_good_is_deleted_once_offline() {
    let mut cluster = Cluster::start();
    let n1 = cluster.node(1);
    let online = crate::support::cli(n1, &["node", "delete", "n3"]);
    assert!(!online.status.success());
    let said = String::from_utf8_lossy(&online.stderr).to_string();
    assert!(said.contains("Node n3 is online"), "{said}");
    let unknown = n1.delete("/api/octopusservernodes/OctopusServerNodes-nobody");
    assert_eq!(unknown.status, 404, "{}", unknown.text);
    cluster.take(3).kill();
    let n1 = cluster.node(1);
    eventually_within("n3 to be offline", Duration::from_secs(40), || {
        let summary = n1.ok("/api/octopusservernodes/summary");
        summary["Nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["Name"] == "n3" && n["IsOffline"] == true)
            .then_some(())
    });
    let deleted = crate::support::cli(n1, &["node", "delete", "n3"]);
    assert!(deleted.status.success(), "{deleted:?}");
    assert!(String::from_utf8_lossy(&deleted.stdout).contains("Node n3 deleted."));
    let names: Vec<String> = n1
        .ok("/api/octopusservernodes/all")
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["Name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["n1", "n2"]);
    let events = n1.ok("/api/events?take=20");
    assert!(
        events["Items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["Message"] == "Server node 'n3' deleted"),
        "{events}"
    );
}

/// Every node's one slot is held by a parent script that runs a child task with its task token,
/// through a node that does not dispatch, and waits for it: the dispatcher learns from the child
/// that its parent waits (`ParentWaits`), so the child borrows the parent's slot and all finish,
/// where it would otherwise wait for a slot for ever.
#[test]
fn a_child_made_through_another_node_borrows_its_waiting_parents_slot() {
    let cluster = Cluster::start_with(&["--task-cap", "1"]);
    let parents: Vec<String> = (0..3)
        .map(|i| {
            let via = cluster.node(2 + i % 2);
            let script = format!(
                "export MUSTER_SERVER='{}' MUSTER_API_KEY='{}'\n'{}' script run -- 'echo child {i} ran'",
                via.url,
                crate::support::KEY,
                env!("CARGO_BIN_EXE_muster")
            );
            id(&cluster
                .node(1)
                .run_script("Spaces-1", json!({"ScriptBody": script})))
        })
        .collect();
    for (i, parent) in parents.iter().enumerate() {
        let (done, lines) = cluster.node(1).wait_task(parent);
        assert_eq!(done["State"], "Success", "{done} {lines:?}");
        assert!(
            lines
                .iter()
                .any(|l| l["MessageText"] == format!("child {i} ran")),
            "{lines:?}"
        );
    }
}

/// Registers a polling agent named `name` in the default pool, given the comms addresses of
/// `nodes` in that order, and starts it.
fn listed_agent(cluster: &Cluster, name: &str, nodes: &[usize]) -> crate::support::Agent {
    let home = cluster.node(1).dir.join(format!("agent-{name}"));
    let mut args = vec![
        "register-worker".to_string(),
        "--server".into(),
        cluster.node(1).url.clone(),
        "--api-key".into(),
        crate::support::KEY.into(),
        "--name".into(),
        name.into(),
        "--worker-pool".into(),
        "Default Worker Pool".into(),
        "--comms-style".into(),
        "TentacleActive".into(),
    ];
    for n in nodes {
        args.push("--server-comms-address".into());
        args.push(format!("127.0.0.1:{}", cluster.node(*n).comms_port));
    }
    let registered = crate::support::agent()
        .arg("--home")
        .arg(&home)
        .args(&args)
        .output()
        .unwrap();
    assert!(registered.status.success(), "{registered:?}");
    crate::support::Agent::start(&home)
}

/// Kills the node that holds the agent's link, which runs the agent's script, while the script
/// prints: the task ends Success within 30 seconds of the death, on another node, with every line
/// once; the script ran once.
fn the_agents_script_outlives_its_node(cluster: &mut Cluster, worker: &str) {
    let marker = cluster.node(2).dir.join("ran");
    let script = format!(
        "echo once >> '{}'\nfor i in $(seq 1 150); do echo \"n $i\"; sleep 0.1; done",
        marker.display()
    );
    let observer = |cluster: &Cluster, dead: &str| {
        (1..=3)
            .find(|n| format!("n{n}") != dead && cluster.nodes[n - 1].is_some())
            .unwrap()
    };
    let task = cluster
        .node(3)
        .run_script("Spaces-1", json!({"ScriptBody": script}));
    cluster.node(3).follow(&id(&task), |kind, data| {
        !(kind == "line" && data["MessageText"] == "n 5")
    });
    let holder = cluster.node(3).ok(&format!("/api/tasks/{}", id(&task)))["ServerNode"]
        .as_str()
        .unwrap()
        .to_string();
    let n: usize = holder.trim_start_matches('n').parse().unwrap();
    cluster.take(n).kill();
    let killed = Instant::now();
    let watcher = cluster.node(observer(cluster, &holder));
    let (done, lines) = watcher.wait_task(&id(&task));
    let ended = killed.elapsed();
    assert!(
        ended < Duration::from_secs(30),
        "ended {ended:?} after the kill"
    );
    assert_eq!(done["State"], "Success", "{done}");
    assert_eq!(done["WorkerName"], worker);
    assert_ne!(
        done["ServerNode"],
        holder.as_str(),
        "the node that followed it to its end"
    );
    assert!(
        lines.iter().any(|l| l["MessageText"]
            .as_str()
            .unwrap()
            .contains(&format!("node {holder} stopped"))),
        "the log says why the script was re-attached"
    );
    let numbered: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["MessageText"].as_str())
        .filter(|t| t.starts_with("n "))
        .collect();
    let expected: Vec<String> = (1..=150).map(|i| format!("n {i}")).collect();
    assert_eq!(numbered, expected, "every line once, in order");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "once\n");
}

/// Sends a signal (`-STOP`, `-CONT`) to a process.
fn send_signal(pid: u32, name: &str) {
    let sent = std::process::Command::new("kill")
        .args([name, &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill {name} {pid}: {sent:?}");
}

/// `GET /api/octopusservernodes/ping` of a node, without a key: its status.
fn ping(node: &Server) -> u16 {
    crate::support::client()
        .get(format!("{}/api/octopusservernodes/ping", node.url))
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// The dispatching node is drained (from another node): its ping answers 418 at once, a task queued
/// meanwhile runs on another node, its running task finishes there, and it then hands the
/// dispatcher's role over. Undrained, it stays a node that waits its turn.
#[test]
fn a_drained_dispatcher_finishes_its_task_and_hands_the_role_over() {
    let cluster = Cluster::start();
    let (n1, n2) = (cluster.node(1), cluster.node(2));
    let go = n1.dir.join("go");
    let running = n2.run_script(
        "Spaces-1",
        json!({"ScriptBody": format!("echo started\nwhile [ ! -f '{}' ]; do sleep 0.05; done\necho finished", go.display())}),
    );
    n2.follow(&id(&running), |kind, data| {
        !(kind == "line" && data["MessageText"] == "started")
    });
    let drained = crate::support::cli(n2, &["node", "drain", "n1", "--json"]);
    assert!(drained.status.success(), "{drained:?}");
    assert_eq!(ping(n1), 418);
    assert_eq!(ping(n2), 200);
    // n1 hears of it at once; a task queued now runs on another node, while n1 still dispatches.
    let queued = n2.run_script("Spaces-1", json!({"ScriptBody": "echo elsewhere"}));
    let (elsewhere, _) = n2.wait_task(&id(&queued));
    assert_eq!(elsewhere["State"], "Success", "{elsewhere}");
    assert_ne!(elsewhere["ServerNode"], "n1");
    std::fs::write(&go, "").unwrap();
    let (finished, _) = n2.wait_task(&id(&running));
    assert_eq!(finished["State"], "Success", "{finished}");
    assert_eq!(finished["ServerNode"], "n1");
    eventually_within("the role to move", Duration::from_secs(30), || {
        let now = dispatcher(n2);
        (!now.is_empty() && now != "n1").then_some(())
    });
    let undrained = crate::support::cli(n2, &["node", "undrain", "n1"]);
    assert!(undrained.status.success(), "{undrained:?}");
    assert_eq!(ping(n1), 200);
    let again = n1.run_script("Spaces-1", json!({"ScriptBody": "echo again"}));
    let (again, _) = n1.wait_task(&id(&again));
    assert_eq!(again["State"], "Success");
    assert_ne!(dispatcher(n1), "n1", "the role stays where it went");
}

/// The name of the node that dispatches now, as the node summary says.
fn dispatcher(node: &Server) -> String {
    let summary = node.ok("/api/octopusservernodes/summary");
    summary["Nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["IsDispatcher"] == true)
        .map(|n| n["Name"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// The most tasks that ran at once on each node, from their start and end times.
fn most_at_once(tasks: &[Value]) -> std::collections::HashMap<String, usize> {
    let time = |t: &Value, field: &str| {
        chrono::DateTime::parse_from_rfc3339(t[field].as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    let mut edges: std::collections::HashMap<String, Vec<(i64, i32)>> = Default::default();
    for task in tasks {
        let node = task["ServerNode"].as_str().unwrap().to_string();
        let list = edges.entry(node).or_default();
        list.push((time(task, "StartTime"), 1));
        list.push((time(task, "CompletedTime"), -1));
    }
    edges
        .into_iter()
        .map(|(node, mut list)| {
            // An end at the same millisecond as a start comes first: the slot was free.
            list.sort();
            let (mut now, mut most) = (0i32, 0i32);
            for (_, step) in list {
                now += step;
                most = most.max(now);
            }
            (node, most as usize)
        })
        .collect()
}

/// Nodes started with a task cap of 2 take a burst of 24 tasks made on all three: every task
/// succeeds, and no node ever ran more than 2 at once.
#[test]
fn no_node_runs_more_than_its_task_cap_under_a_burst() {
    let cluster = Cluster::start_with(&["--task-cap", "2"]);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let node = cluster.node(1 + i % 3);
        tasks.push(id(
            &node.run_script("Spaces-1", json!({"ScriptBody": "sleep 0.2"}))
        ));
    }
    let mut done = Vec::new();
    for task in &tasks {
        let (ended, _) = cluster.node(2).wait_task(task);
        assert_eq!(ended["State"], "Success", "{ended}");
        done.push(ended);
    }
    let most = most_at_once(&done);
    assert!(!most.is_empty());
    for (node, most) in &most {
        assert!(*most <= 2, "node {node} ran {most} tasks at once");
    }
    assert_eq!(most.values().max(), Some(&2), "the cap was used: {most:?}");
}
