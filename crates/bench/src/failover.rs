//! `failover`: three nodes on one PostgreSQL database, a node killed with SIGKILL, each measure on
//! a fresh cluster and database:
//!
//! - `agent on the dispatcher`: a polling agent linked to the first node (which dispatches, and so
//!   runs the agent's script); its script prints a numbered line stamped with `$EPOCHREALTIME` every
//!   50 ms; the task is made on the second node and followed on the third; the first node is
//!   killed. Timed from the kill to the first line read on the third node's stream that the script
//!   printed after the kill (another node took the lease over and re-attached to the script).
//! - `agent on another node`: the same with the agent linked to the second node, which runs its
//!   script and is killed: the dispatcher takes the script over once that node is offline.
//! - `burst`: 200 built-in `sleep 0.5` tasks made on the second and third nodes in turn; the first
//!   node (the dispatcher) is killed once 100 exist. Timed from the kill to the first task that
//!   started after it (its `StartTime`), polled every 10 ms on the second node.

use crate::cluster::{Cluster, Setup};
use crate::{Database, KEY, Kind, seconds_now};
use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One failover: seconds from the kill, and the node that took over.
struct Measure {
    seconds: f64,
    node: String,
}

pub fn run(bin: &Path, postgres_url: &str, repeats: usize) -> anyhow::Result<()> {
    let setup = Setup {
        database: Database::Postgres,
        nodes: 3,
        postgres_url: postgres_url.to_string(),
    };
    let mut rows = Vec::new();
    for (scenario, measure) in [
        (
            "agent on the dispatcher: line",
            agent_on_dispatcher as fn(&Path, &Setup) -> anyhow::Result<Measure>,
        ),
        ("agent on another node: line", agent_on_another_node),
        ("burst: task started after kill", burst),
    ] {
        let mut measures = Vec::new();
        for repeat in 1..=repeats.max(1) {
            let m = measure(bin, &setup).with_context(|| format!("{scenario}, run {repeat}"))?;
            eprintln!(
                "muster-bench: {scenario}, run {repeat}: {:.2} s ({} took over)",
                m.seconds, m.node
            );
            measures.push(m);
        }
        rows.push((scenario, measures));
    }
    println!(
        "{:<32} {:>5} {:>8} {:>9} {:>8}  TAKEN OVER BY",
        "FAILOVER", "RUNS", "MIN s", "MEDIAN s", "MAX s"
    );
    let mut results = Vec::new();
    for (scenario, measures) in rows {
        let mut seconds: Vec<f64> = measures.iter().map(|m| m.seconds).collect();
        seconds.sort_by(f64::total_cmp);
        let (min, max) = (seconds[0], seconds[seconds.len() - 1]);
        let median = seconds[(seconds.len() - 1) / 2];
        let nodes: Vec<&str> = measures.iter().map(|m| m.node.as_str()).collect();
        println!(
            "{scenario:<32} {:>5} {min:>8.2} {median:>9.2} {max:>8.2}  {}",
            seconds.len(),
            nodes.join(",")
        );
        results.push(json!({"failover": scenario, "runs": seconds.len(), "min_s": min,
            "median_s": median, "max_s": max, "seconds": measures.iter().map(|m| m.seconds).collect::<Vec<_>>(),
            "taken_over_by": nodes}));
    }
    println!(
        "{}",
        json!({"scenario": "failover", "database": "postgres", "nodes": 3, "results": results})
    );
    Ok(())
}

/// A line of the script, as read on a follower's stream.
struct Line {
    read_at: Instant,
    printed_at: f64,
}

/// Follows `id`'s live stream on `url` from a thread of its own, sending each numbered line; the
/// stream is opened again if it ends before the task does.
fn follow(url: String, id: String, lines: mpsc::Sender<Line>) {
    std::thread::spawn(move || {
        let Ok(http) = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
        else {
            return;
        };
        loop {
            let Ok(response) = http
                .get(format!("{url}/api/tasks/{id}/stream"))
                .header("X-Octopus-ApiKey", KEY)
                .send()
            else {
                return;
            };
            let mut reader = BufReader::new(response);
            let (mut kind, mut data, mut line) = (String::new(), String::new(), String::new());
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                let text = line.trim_end_matches('\n');
                if text.is_empty() {
                    if let Ok(event) = serde_json::from_str::<Value>(&data) {
                        if kind == "line" {
                            let message = event["MessageText"].as_str().unwrap_or_default();
                            let mut words = message.split_whitespace();
                            if let (Some("n"), Some(_), Some(stamp)) =
                                (words.next(), words.next(), words.next())
                                && let Ok(printed_at) = stamp.replace(',', ".").parse()
                            {
                                let sent = lines.send(Line {
                                    read_at: Instant::now(),
                                    printed_at,
                                });
                                if sent.is_err() {
                                    return;
                                }
                            }
                        } else if kind == "task" && event["IsCompleted"] == true {
                            return;
                        }
                    }
                    kind.clear();
                    data.clear();
                } else if let Some(v) = text.strip_prefix("event:") {
                    kind = v.trim().to_string();
                } else if let Some(v) = text.strip_prefix("data:") {
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
                line.clear();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}

fn task_id(task: &Value) -> anyhow::Result<String> {
    Ok(task["Id"]
        .as_str()
        .ok_or_else(|| anyhow!("no task: {task}"))?
        .to_string())
}

fn agent_on_dispatcher(bin: &Path, setup: &Setup) -> anyhow::Result<Measure> {
    agent(bin, setup, 0)
}

fn agent_on_another_node(bin: &Path, setup: &Setup) -> anyhow::Result<Measure> {
    agent(bin, setup, 1)
}

/// The node that holds a polling agent's link (and so runs its script), `victim` (0: the first
/// node, which dispatches; 1: the second), killed while the script prints: to the first line
/// printed after the kill, read through the third node.
fn agent(bin: &Path, setup: &Setup, victim: usize) -> anyhow::Result<Measure> {
    let mut cluster = Cluster::start(bin, setup, &["--task-cap", "50"])?;
    // The victim's address first, then the others', to move to when it dies.
    let mut ports = vec![cluster.node(victim).comms_port];
    ports.extend(
        (0..3)
            .filter(|n| *n != victim)
            .map(|n| cluster.node(n).comms_port),
    );
    let n2 = cluster.node(1);
    let agent = n2.agent_via(bin, cluster.dir(), "linked", Kind::Polling, &ports)?;
    let worker = n2.wait_healthy("linked")?;
    let script = "for i in $(seq 1 2400); do echo \"n $i $EPOCHREALTIME\"; sleep 0.05; done";
    let task = n2.post(
        "/api/Spaces-1/tasks",
        &json!({"Name": "AdHocScript", "Arguments": {"ScriptBody": script,
            "TargetType": "Workers", "MachineIds": [worker]}}),
    )?;
    let id = task_id(&task)?;
    let (tx, rx) = mpsc::channel();
    follow(cluster.node(2).url.clone(), id.clone(), tx);
    // A second of lines first: the script runs and its lines reach the third node.
    let mut seen = 0;
    while seen < 20 {
        rx.recv_timeout(Duration::from_secs(60))
            .map_err(|_| anyhow!("no line of {id} in 60 s"))?;
        seen += 1;
    }
    let runs_on = cluster.node(2).get(&format!("/api/tasks/{id}"))?["ServerNode"].clone();
    if runs_on != format!("n{}", victim + 1).as_str() {
        bail!("the script runs on {runs_on}, not on the node that holds its agent's link");
    }
    let mut n1 = cluster.nodes[victim].take().expect("the node runs");
    n1.child.kill()?;
    let killed = Instant::now();
    let killed_wall = seconds_now();
    let measured = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120).saturating_sub(killed.elapsed()))
            .map_err(|_| anyhow!("no new line in 120 s after the kill"))?;
        if line.printed_at > killed_wall {
            break line.read_at.duration_since(killed).as_secs_f64();
        }
    };
    let node = cluster.node(2).get(&format!("/api/tasks/{id}"))?["ServerNode"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let _ = cluster
        .node(2)
        .post(&format!("/api/tasks/{id}/cancel"), &json!({}));
    let _ = crate::wait_until("the task to end", Duration::from_secs(15), || {
        Ok(cluster.node(2).get(&format!("/api/tasks/{id}"))?["IsCompleted"] == true)
    });
    drop(rx);
    drop(agent);
    drop(n1);
    drop(cluster);
    Ok(Measure {
        seconds: measured,
        node,
    })
}

/// The dispatcher killed during a burst of 200 built-in tasks: to the first task started after
/// the kill (by the node that took the dispatcher's role over).
fn burst(bin: &Path, setup: &Setup) -> anyhow::Result<Measure> {
    let mut cluster = Cluster::start(bin, setup, &["--task-cap", "50"])?;
    let urls = [cluster.node(1).url.clone(), cluster.node(2).url.clone()];
    let (made_tx, made_rx) = mpsc::channel::<String>();
    let making = std::thread::spawn(move || -> anyhow::Result<()> {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?;
        for i in 0..200 {
            let reply = http
                .post(format!("{}/api/Spaces-1/tasks", urls[i % 2]))
                .header("X-Octopus-ApiKey", KEY)
                .json(
                    &json!({"Name": "AdHocScript", "Arguments": {"ScriptBody": "sleep 0.5",
                    "TargetType": "OctopusServer"}}),
                )
                .send()?;
            if reply.status().as_u16() != 201 {
                bail!("a task was not created: {}", reply.text()?);
            }
            let task: Value = reply.json()?;
            if made_tx.send(task_id(&task)?).is_err() {
                break;
            }
        }
        Ok(())
    });
    if made_rx.iter().take(100).count() < 100 {
        bail!("the burst stopped before 100 tasks");
    }
    let mut n1 = cluster.nodes[0].take().expect("the first node runs");
    n1.child.kill()?;
    let killed = Instant::now();
    let killed_ms = (seconds_now() * 1000.0) as i64;
    let n2 = cluster.node(1);
    let (seconds, node) = loop {
        let tasks = n2.get("/api/tasks?states=Executing,Success&take=300")?;
        let started_after = tasks["Items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| {
                t["StartTime"]
                    .as_str()
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                    .is_some_and(|at| at.timestamp_millis() > killed_ms)
            })
            .map(|_| cluster.lease_holder().unwrap_or_default());
        if let Some(node) = started_after {
            break (killed.elapsed().as_secs_f64(), node);
        }
        if killed.elapsed() > Duration::from_secs(120) {
            bail!("no other node started a task in 120 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    drop(made_rx);
    making
        .join()
        .map_err(|_| anyhow!("the burst's thread panicked"))??;
    drop(n1);
    drop(cluster);
    Ok(Measure { seconds, node })
}
