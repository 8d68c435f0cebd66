//! `muster-bench SCENARIO`: starts the real `muster` and `muster-agent` binaries on loopback with a
//! temporary data directory, runs one scenario many times, stops everything, and prints a table and
//! one JSON line. It is not part of the test suite; docs/BENCHMARKS.md keeps its latest results.

use anyhow::{Context, anyhow, bail};
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod cluster;
mod dynamic;
mod failover;
mod swarm;

use cluster::Cluster;

const KEY: &str = "API-MUSTERBENCHADMINKEY0123456789";

#[derive(Parser)]
#[command(name = "muster-bench", about = "Measures Muster on this machine.")]
struct Args {
    scenario: Scenario,
    /// Runs per worker kind.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Which workers to measure on.
    #[arg(long, value_enum, default_value_t = Kind::All)]
    worker: Kind,
    /// throughput: how many tasks are queued at once.
    #[arg(long, default_value_t = 2000)]
    tasks: usize,
    /// throughput: how many polling agents run them.
    #[arg(long, default_value_t = 4)]
    agents: usize,
    /// log: how many megabytes (of 80-byte lines) the script prints.
    #[arg(long, default_value_t = 100)]
    megabytes: usize,
    /// swarm and health: how many polling connections, one measure per number.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1000, 5000])]
    connections: Vec<usize>,
    /// swarm: over how many seconds the server's CPU at rest is measured.
    #[arg(long, default_value_t = 30)]
    rest_seconds: u64,
    /// health: how many health checks of every worker are timed per number of connections.
    #[arg(long, default_value_t = 5)]
    checks: usize,
    /// backlog: how many tasks are queued before the queue is released, one measure per number.
    #[arg(long, value_delimiter = ',', default_values_t = vec![500, 20000])]
    queued: Vec<usize>,
    /// dispatch, roundtrip and throughput: the store the nodes share.
    #[arg(long, value_enum, default_value_t = Database::Sqlite)]
    database: Database,
    /// dispatch, roundtrip and throughput: how many server nodes (more than 1 only on postgres);
    /// requests go to each in turn, agents dial the first (the dispatcher).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// A PostgreSQL database whose role may CREATE DATABASE (scripts/test-postgres.sh prints one);
    /// each run makes a database `muster_bench_<random>` there and drops it at the end.
    #[arg(long, env = "MUSTER_BENCH_POSTGRES_URL", default_value = cluster::DEFAULT_POSTGRES_URL)]
    postgres_url: String,
    /// failover: how many times each failover is measured (each on a fresh cluster); dynamic: how
    /// many times the scale-up is measured.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

/// The store the nodes share.
#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Database {
    Sqlite,
    Postgres,
}

#[derive(Clone, Copy, ValueEnum)]
enum Scenario {
    /// From the 201 of a task to the first line of its script (`echo $EPOCHREALTIME > file`).
    Dispatch,
    /// From the POST of a `true` task to a follower seeing it Success.
    Roundtrip,
    /// `--tasks` `true` tasks queued at once over `--agents` polling agents: tasks per second.
    Throughput,
    /// Idle RSS of the server (no agents) and of a connected agent; binary sizes.
    Footprint,
    /// A script prints `--megabytes` MB of 80-byte lines: MB/s until `raw` returns all of it, and
    /// the server's peak RSS.
    Log,
    /// `--connections` idle polling agents from one process: the server's RSS and CPU at rest, and
    /// the time until all are connected and checked again after a server restart.
    Swarm,
    /// A `Health` task over `--connections` connected workers: time until every result is recorded.
    Health,
    /// `--queued` tasks wait behind a stopped queue, then drain on the built-in worker (task cap
    /// 50): tasks per second, and the server's RSS before and after.
    Backlog,
    /// `dispatch`, `roundtrip` (built-in worker, polling and listening agents) and `throughput` on
    /// SQLite with 1 node, PostgreSQL with 1 node and PostgreSQL with 3 nodes: one table.
    Compare,
    /// On 3 PostgreSQL nodes, the dispatcher killed (-9) `--repeats` times: while a polling
    /// agent's script prints every 50 ms (to its first new line read on another node), and during
    /// a burst of 200 queued built-in tasks (to the first task another node starts).
    Failover,
    /// A dynamic pool of the process provider: from a task queued on the empty pool to its first
    /// line (`--runs`, at most 50), and the time to scale up to 10 workers (`--repeats`).
    Dynamic,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Kind {
    Builtin,
    Polling,
    Listening,
    /// An SSH worker: a private OpenSSH sshd on 127.0.0.1, reached over one kept connection.
    Ssh,
    All,
}

/// The tests' private sshd on loopback (its own host key, port and authorized keys).
#[allow(dead_code)]
#[path = "../../ssh/tests/sshd/mod.rs"]
mod sshd;

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    if args.nodes == 0 || (args.nodes > 1 && args.database != Database::Postgres) {
        bail!("--nodes more than 1 needs --database postgres (and at least 1 node)");
    }
    let bin = binaries()?;
    let setup = cluster::Setup {
        database: args.database,
        nodes: args.nodes,
        postgres_url: args.postgres_url.clone(),
    };
    match args.scenario {
        Scenario::Throughput => {
            let (succeeded, seconds) = throughput(&bin, &setup, args.tasks, args.agents)?;
            let rate = succeeded as f64 / seconds;
            println!(
                "{:<12} {:<12} {:>7} {:>7} {:>10} {:>10}",
                "SCENARIO", "STORE", "TASKS", "AGENTS", "SECONDS", "TASKS/S"
            );
            println!(
                "{:<12} {:<12} {succeeded:>7} {:>7} {seconds:>10.2} {rate:>10.0}",
                "throughput",
                setup.label(),
                args.agents
            );
            println!(
                "{}",
                json!({"scenario": "throughput", "database": setup.database_name(), "nodes": setup.nodes,
                    "tasks": succeeded, "agents": args.agents, "seconds": seconds, "tasks_per_second": rate})
            );
            return Ok(());
        }
        Scenario::Footprint => return footprint(&bin),
        Scenario::Log => return log(&bin, args.megabytes),
        Scenario::Swarm => return swarm_scenario(&bin, &args.connections, args.rest_seconds),
        Scenario::Health => return health(&bin, &args.connections, args.checks),
        Scenario::Backlog => return backlog(&bin, &args.queued),
        Scenario::Compare => return compare(&bin, &args),
        Scenario::Failover => return failover::run(&bin, &args.postgres_url, args.repeats),
        Scenario::Dynamic => return dynamic::run(&bin, args.runs, args.repeats),
        Scenario::Dispatch | Scenario::Roundtrip => {}
    }
    let kinds: Vec<Kind> = match args.worker {
        Kind::All if std::path::Path::new(sshd::SSHD).exists() => {
            vec![Kind::Builtin, Kind::Polling, Kind::Listening, Kind::Ssh]
        }
        Kind::All => vec![Kind::Builtin, Kind::Polling, Kind::Listening],
        one => vec![one],
    };
    let cluster = Cluster::start(&bin, &setup, &["--task-cap", "50"])?;
    let workers = Workers::start(&bin, &cluster, &kinds)?;
    let scenario = match args.scenario {
        Scenario::Dispatch => "dispatch",
        _ => "roundtrip",
    };
    let mut rows = workers.measure(&cluster, scenario, args.runs)?;
    // The machine's own floor, measured the same way in the same minute: bash spawned directly by
    // this process, without Muster. What Muster adds is the rest.
    let floor = match args.scenario {
        Scenario::Dispatch => bash_floor(cluster.dir(), args.runs, true)?,
        _ => bash_floor(cluster.dir(), args.runs, false)?,
    };
    rows.push(("floor: bash alone".to_string(), floor));
    println!(
        "{:<10} {:<12} {:<28} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "SCENARIO", "STORE", "WORKER", "RUNS", "P50 ms", "P90 ms", "P99 ms", "MIN ms", "MAX ms"
    );
    let mut results = Vec::new();
    for (name, samples) in rows {
        let q = Quantiles::of(samples);
        println!(
            "{scenario:<10} {:<12} {name:<28} {:>5} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            setup.label(),
            q.runs,
            q.p50,
            q.p90,
            q.p99,
            q.min,
            q.max
        );
        let mut row = q.json();
        row["worker"] = json!(name);
        results.push(row);
    }
    println!(
        "{}",
        json!({"scenario": scenario, "database": setup.database_name(), "nodes": setup.nodes, "results": results})
    );
    drop(workers);
    drop(cluster);
    Ok(())
}

/// Milliseconds' order statistics of a sample.
struct Quantiles {
    runs: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    min: f64,
    max: f64,
}

impl Quantiles {
    fn of(mut samples: Vec<f64>) -> Quantiles {
        samples.sort_by(f64::total_cmp);
        if samples.is_empty() {
            samples.push(f64::NAN);
        }
        let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
        Quantiles {
            runs: samples.len(),
            p50: pick(0.5),
            p90: pick(0.9),
            p99: pick(0.99),
            min: samples[0],
            max: samples[samples.len() - 1],
        }
    }

    fn json(&self) -> Value {
        json!({"runs": self.runs, "p50_ms": self.p50, "p90_ms": self.p90, "p99_ms": self.p99,
            "min_ms": self.min, "max_ms": self.max})
    }
}

/// The workers a latency scenario runs on, each with the target of its tasks, registered once.
struct Workers {
    targets: Vec<(&'static str, Value)>,
    _agents: Vec<Agent>,
    _sshds: Vec<sshd::Sshd>,
}

impl Workers {
    fn start(bin: &Path, cluster: &Cluster, kinds: &[Kind]) -> anyhow::Result<Workers> {
        let server = cluster.first();
        let dir = cluster.dir();
        let (mut agents, mut sshds, mut targets) = (Vec::new(), Vec::new(), Vec::new());
        for &kind in kinds {
            let target = match kind {
                Kind::Builtin => json!({"TargetType": "OctopusServer"}),
                Kind::Ssh => {
                    let (sshd, id) = server.ssh_worker(dir, "ssh")?;
                    sshds.push(sshd);
                    json!({"TargetType": "Workers", "MachineIds": [id]})
                }
                _ => {
                    let name = if kind == Kind::Polling {
                        "polling"
                    } else {
                        "listening"
                    };
                    // A polling agent dials the first node: the one that dispatches.
                    agents.push(server.agent(bin, dir, name, kind)?);
                    let id = server.wait_healthy(name)?;
                    json!({"TargetType": "Workers", "MachineIds": [id]})
                }
            };
            let name = match kind {
                Kind::Builtin => "built-in worker",
                Kind::Polling => "polling agent",
                Kind::Listening => "listening agent",
                Kind::Ssh => "ssh worker",
                Kind::All => unreachable!(),
            };
            targets.push((name, target));
        }
        Ok(Workers {
            targets,
            _agents: agents,
            _sshds: sshds,
        })
    }

    /// `dispatch` or `roundtrip`, `runs` times on each worker: milliseconds per run. With several
    /// nodes, each worker's runs are also split by where the task was made and followed: on the
    /// dispatcher (`via n1`) or on another node (`via n2+`, which hands the task over by a note).
    fn measure(
        &self,
        cluster: &Cluster,
        scenario: &str,
        runs: usize,
    ) -> anyhow::Result<Vec<(String, Vec<f64>)>> {
        let mut rows = Vec::new();
        for (name, target) in &self.targets {
            let samples = if scenario == "dispatch" {
                dispatch(cluster, cluster.dir(), target, runs)?
            } else {
                roundtrip(cluster, target, runs)?
            };
            rows.extend(by_node(name, samples, cluster.nodes.len()));
        }
        Ok(rows)
    }
}

/// A worker's row, and with several nodes its runs split by the node they were made on: the
/// dispatcher (`via n1`, runs 0, N, 2N…) or another (`via n2+`).
fn by_node(name: &str, samples: Vec<f64>, nodes: usize) -> Vec<(String, Vec<f64>)> {
    let mut rows = Vec::new();
    if nodes > 1 {
        let on = |first: bool| -> Vec<f64> {
            samples
                .iter()
                .enumerate()
                .filter(|(run, _)| (run % nodes == 0) == first)
                .map(|(_, ms)| *ms)
                .collect()
        };
        rows.push((format!("{name}, via n1"), on(true)));
        rows.push((format!("{name}, via n2+"), on(false)));
    }
    rows.insert(0, (name.to_string(), samples));
    rows
}

/// `dispatch`, `roundtrip` and `throughput` on SQLite (1 node), PostgreSQL (1 node) and
/// PostgreSQL (3 nodes), one after the other: one table and one JSON line.
fn compare(bin: &Path, args: &Args) -> anyhow::Result<()> {
    let setups = [
        (Database::Sqlite, 1),
        (Database::Postgres, 1),
        (Database::Postgres, 3),
    ];
    let kinds = [Kind::Builtin, Kind::Polling, Kind::Listening];
    let setups: Vec<cluster::Setup> = setups
        .into_iter()
        .map(|(database, nodes)| cluster::Setup {
            database,
            nodes,
            postgres_url: args.postgres_url.clone(),
        })
        .collect();
    let mut latency = Vec::new();
    {
        // Every setup runs at once and takes its runs in turn (run 1 on each, run 2 on each…), so
        // that a change in the machine's load falls on all of them alike.
        let mut running = Vec::new();
        for setup in &setups {
            eprintln!("muster-bench: starting {}", setup.label());
            let cluster = Cluster::start(bin, setup, &["--task-cap", "50"])?;
            let workers = Workers::start(bin, &cluster, &kinds)?;
            running.push((setup, cluster, workers));
        }
        for scenario in ["dispatch", "roundtrip"] {
            for k in 0..kinds.len() {
                eprintln!("muster-bench: {scenario} on {}", running[0].2.targets[k].0);
                let mut stamps = Vec::new();
                for (_, cluster, _) in &running {
                    stamps.push(stamps_in(cluster.dir())?);
                }
                let mut samples = vec![Vec::with_capacity(args.runs); running.len()];
                for run in 0..args.runs {
                    for (c, (_, cluster, workers)) in running.iter().enumerate() {
                        let server = cluster.pick(run);
                        let target = &workers.targets[k].1;
                        samples[c].push(if scenario == "dispatch" {
                            dispatch_once(server, stamps[c].path(), target, run)?
                        } else {
                            roundtrip_once(server, target)?
                        });
                    }
                }
                for ((setup, cluster, workers), samples) in running.iter().zip(samples) {
                    let name = workers.targets[k].0;
                    for (row, samples) in by_node(name, samples, cluster.nodes.len()) {
                        latency.push((setup.label(), scenario, row, Quantiles::of(samples)));
                    }
                }
            }
        }
    }
    // Throughput saturates the machine: one setup at a time.
    let mut rates = Vec::new();
    for setup in &setups {
        eprintln!("muster-bench: throughput on {}", setup.label());
        let (succeeded, seconds) = throughput(bin, setup, args.tasks, args.agents)?;
        rates.push((setup.label(), succeeded, seconds));
    }
    let temp = tempfile::tempdir()?;
    for (scenario, first_line) in [("dispatch", true), ("roundtrip", false)] {
        let samples = bash_floor(temp.path(), args.runs, first_line)?;
        latency.push((
            "no server".to_string(),
            scenario,
            "floor: bash alone".to_string(),
            Quantiles::of(samples),
        ));
    }
    println!(
        "{:<12} {:<10} {:<28} {:>5} {:>9} {:>9} {:>9}",
        "STORE", "SCENARIO", "WORKER", "RUNS", "P50 ms", "P90 ms", "P99 ms"
    );
    let mut results = Vec::new();
    // By setup, then as measured (scenario, worker).
    let order: Vec<String> = setups.iter().map(cluster::Setup::label).collect();
    latency.sort_by_key(|(label, ..)| order.iter().position(|l| l == label).unwrap_or(order.len()));
    for (label, scenario, worker, q) in &latency {
        println!(
            "{label:<12} {scenario:<10} {worker:<28} {:>5} {:>9.3} {:>9.3} {:>9.3}",
            q.runs, q.p50, q.p90, q.p99
        );
        let mut row = q.json();
        row["store"] = json!(label);
        row["scenario"] = json!(scenario);
        row["worker"] = json!(worker);
        results.push(row);
    }
    println!(
        "{:<12} {:<10} {:>7} {:>7} {:>10} {:>10}",
        "STORE", "SCENARIO", "TASKS", "AGENTS", "SECONDS", "TASKS/S"
    );
    for (label, succeeded, seconds) in &rates {
        let rate = *succeeded as f64 / seconds;
        println!(
            "{label:<12} {:<10} {succeeded:>7} {:>7} {seconds:>10.2} {rate:>10.0}",
            "throughput", args.agents
        );
        results.push(
            json!({"store": label, "scenario": "throughput", "tasks": succeeded,
            "agents": args.agents, "seconds": seconds, "tasks_per_second": rate}),
        );
    }
    // Issue 15's goal: PostgreSQL on one node within 1.5 times SQLite's p50 dispatch.
    let p50 = |label: &str, worker: &str| {
        latency
            .iter()
            .find(|(l, s, w, _)| l == label && *s == "dispatch" && w == worker)
            .map(|(_, _, _, q)| q.p50)
    };
    let mut goal = Vec::new();
    for worker in latency
        .iter()
        .filter(|(l, s, ..)| l == "sqlite" && *s == "dispatch")
        .map(|(_, _, w, _)| w.as_str())
    {
        if let (Some(sqlite), Some(postgres)) = (p50("sqlite", worker), p50("postgres", worker)) {
            let ratio = postgres / sqlite;
            println!(
                "goal (postgres p50 dispatch <= 1.5 x sqlite's), {worker}: {postgres:.3} / {sqlite:.3} ms = {ratio:.2}x, {}",
                if ratio <= 1.5 { "met" } else { "missed" }
            );
            goal.push(json!({"worker": worker, "sqlite_p50_ms": sqlite, "postgres_p50_ms": postgres, "ratio": ratio, "met": ratio <= 1.5}));
        }
    }
    println!(
        "{}",
        json!({"scenario": "compare", "runs": args.runs, "results": results, "goal_dispatch_within_1_5x": goal})
    );
    Ok(())
}

/// The `muster` and `muster-agent` binaries beside this one, built in release when run by Cargo.
fn binaries() -> anyhow::Result<PathBuf> {
    let dir = std::env::current_exe()?
        .parent()
        .ok_or_else(|| anyhow!("no directory for this binary"))?
        .to_path_buf();
    if let Ok(cargo) = std::env::var("CARGO") {
        let profile = if dir.ends_with("release") {
            vec!["--release"]
        } else {
            vec![]
        };
        let mut build = Command::new(cargo);
        // Without what `cargo run` sets for this package: build scripts that watch these (ring's
        // watches CARGO_MANIFEST_DIR) would otherwise run again, and rebuild everything each time.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
            if name == "CARGO_MANIFEST_DIR"
                || name == "CARGO_MANIFEST_PATH"
                || name == "CARGO_CRATE_NAME"
                || name == "CARGO_BIN_NAME"
                || name == "CARGO_PRIMARY_PACKAGE"
                || name.starts_with("CARGO_PKG_")
            {
                build.env_remove(name);
            }
        }
        let status = build
            .args(["build", "--quiet", "-p", "muster", "-p", "muster-agent"])
            .args(profile)
            .status()?;
        if !status.success() {
            bail!("cannot build muster and muster-agent");
        }
    }
    for name in ["muster", "muster-agent"] {
        if !dir.join(name).exists() {
            bail!(
                "{} is missing: run `cargo build --release -p muster -p muster-agent`",
                dir.join(name).display()
            );
        }
    }
    Ok(dir)
}

fn seconds_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// From the 201 to the timestamp the script's first line wrote: bash's `$EPOCHREALTIME`, no process.
fn dispatch(
    cluster: &Cluster,
    dir: &Path,
    target: &Value,
    runs: usize,
) -> anyhow::Result<Vec<f64>> {
    let stamps = stamps_in(dir)?;
    let mut samples = Vec::with_capacity(runs);
    for run in 0..runs {
        // Each run's task is made and followed on the next node in turn.
        samples.push(dispatch_once(
            cluster.pick(run),
            stamps.path(),
            target,
            run,
        )?);
    }
    Ok(samples)
}

/// A directory for one kind's stamps, so a stamp left by the kind before is never read as this
/// one's.
fn stamps_in(dir: &Path) -> anyhow::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt as _;
    // An SSH worker's scripts run as another user: it must reach and write the stamps.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    let stamps = tempfile::tempdir_in(dir)?;
    std::fs::set_permissions(stamps.path(), std::fs::Permissions::from_mode(0o777))?;
    Ok(stamps)
}

/// One `dispatch` run on `server`: milliseconds from the 201 to the script's first line.
fn dispatch_once(
    server: &Server,
    stamps: &Path,
    target: &Value,
    run: usize,
) -> anyhow::Result<f64> {
    let file = stamps.join(format!("stamp-{run}"));
    let mut arguments = target.clone();
    arguments["ScriptBody"] = json!(format!("echo $EPOCHREALTIME > '{}'", file.display()));
    let (id, answered) = create_script_task(server, &arguments)?;
    let state = server.wait_done(&id)?;
    if state != "Success" {
        bail!("task {id} ended {state}");
    }
    let stamp: f64 = std::fs::read_to_string(&file)
        .with_context(|| format!("task {id} wrote no timestamp"))?
        .trim()
        .replace(',', ".")
        .parse()?;
    Ok((stamp - answered) * 1000.0)
}

/// Creates an AdHocScript task with these arguments: its id, and when its 201 came.
fn create_script_task(server: &Server, arguments: &Value) -> anyhow::Result<(String, f64)> {
    let body = json!({"Name": "AdHocScript", "Arguments": arguments});
    let reply = server
        .http
        .post(format!("{}/api/Spaces-1/tasks", server.url))
        .header("X-Octopus-ApiKey", KEY)
        .json(&body)
        .send()?;
    let answered = seconds_now();
    if reply.status().as_u16() != 201 {
        bail!("the task was not created: {}", reply.text()?);
    }
    let task: Value = reply.json()?;
    Ok((
        task["Id"].as_str().unwrap_or_default().to_string(),
        answered,
    ))
}

/// Bash spawned directly, as the built-in worker spawns it: to its first line writing
/// `$EPOCHREALTIME` (`first_line`), or to its exit after `true`.
fn bash_floor(dir: &Path, runs: usize, first_line: bool) -> anyhow::Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(runs);
    let stamp = dir.join("floor-stamp");
    let script = dir.join("floor.sh");
    let body = if first_line {
        format!("echo $EPOCHREALTIME > '{}'", stamp.display())
    } else {
        "true".to_string()
    };
    std::fs::write(&script, body)?;
    for _ in 0..runs {
        let started = seconds_now();
        let clock = Instant::now();
        let status = Command::new("bash")
            .args(["--noprofile", "--norc"])
            .arg(&script)
            .status()?;
        if !status.success() {
            bail!("bash failed: {status}");
        }
        samples.push(if first_line {
            let at: f64 = std::fs::read_to_string(&stamp)?
                .trim()
                .replace(',', ".")
                .parse()?;
            (at - started) * 1000.0
        } else {
            clock.elapsed().as_secs_f64() * 1000.0
        });
    }
    Ok(samples)
}

/// From the POST to a follower seeing the task Success on its live stream.
fn roundtrip(cluster: &Cluster, target: &Value, runs: usize) -> anyhow::Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(runs);
    for run in 0..runs {
        samples.push(roundtrip_once(cluster.pick(run), target)?);
    }
    Ok(samples)
}

/// One `roundtrip` run on `server`: milliseconds from the POST to the follower seeing Success.
fn roundtrip_once(server: &Server, target: &Value) -> anyhow::Result<f64> {
    let mut arguments = target.clone();
    arguments["ScriptBody"] = json!("true");
    let body = json!({"Name": "AdHocScript", "Arguments": arguments});
    let started = Instant::now();
    let reply = server
        .http
        .post(format!("{}/api/Spaces-1/tasks", server.url))
        .header("X-Octopus-ApiKey", KEY)
        .json(&body)
        .send()?;
    let task: Value = reply.json()?;
    let id = task["Id"]
        .as_str()
        .ok_or_else(|| anyhow!("no task: {task}"))?
        .to_string();
    let state = server.wait_done(&id)?;
    if state != "Success" {
        bail!("task {id} ended {state}");
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// Kilobytes of a process's resident set now (`VmRSS`) or at its peak (`VmHWM`), from /proc.
fn rss_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        })
        .and_then(|kb| kb.parse().ok())
        .ok_or_else(|| anyhow!("no {field} for process {pid}"))
}

/// Queues `tasks` tasks while the space's queue is stopped, starts the queue, and times until
/// every one has ended: how many succeeded, in how many seconds. Tasks are made on each node in
/// turn; the agents dial the first node (the dispatcher).
fn throughput(
    bin: &Path,
    setup: &cluster::Setup,
    tasks: usize,
    agents: usize,
) -> anyhow::Result<(u64, f64)> {
    let cluster = Cluster::start(bin, setup, &["--task-cap", "200"])?;
    let server = cluster.first();
    let mut running = Vec::new();
    for n in 0..agents {
        let name = format!("agent-{n}");
        running.push(server.agent(bin, cluster.dir(), &name, Kind::Polling)?);
        server.wait_healthy(&name)?;
    }
    let space = server.get("/api/spaces/Spaces-1")?;
    let mut stopped = space.clone();
    stopped["TaskQueueStopped"] = json!(true);
    server.put("/api/spaces/Spaces-1", &stopped)?;
    // Queued from 4 client threads, so queueing is not what is measured.
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let mut threads = Vec::new();
        for t in 0..4 {
            let cluster = &cluster;
            threads.push(scope.spawn(move || -> anyhow::Result<()> {
                for n in (t..tasks).step_by(4) {
                    let server = cluster.pick(n);
                    let body = json!({"Name": "AdHocScript", "Arguments": {"ScriptBody": "true"}});
                    let reply = server
                        .http
                        .post(format!("{}/api/Spaces-1/tasks", server.url))
                        .header("X-Octopus-ApiKey", KEY)
                        .json(&body)
                        .send()?;
                    if reply.status().as_u16() != 201 {
                        bail!("a task was not created: {}", reply.text()?);
                    }
                }
                Ok(())
            }));
        }
        for thread in threads {
            thread
                .join()
                .map_err(|_| anyhow!("a client thread panicked"))??;
        }
        Ok(())
    })?;
    let mut start = space.clone();
    start["TaskQueueStopped"] = json!(false);
    let started = Instant::now();
    server.put("/api/spaces/Spaces-1", &start)?;
    loop {
        let open = server.get("/api/Spaces-1/tasks?states=Queued,Executing,Cancelling&take=1")?;
        if open["TotalResults"] == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the tasks did not finish in 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let seconds = started.elapsed().as_secs_f64();
    let done = server.get("/api/Spaces-1/tasks?states=Success&take=1")?;
    let succeeded = done["TotalResults"].as_u64().unwrap_or(0);
    drop(running);
    Ok((succeeded, seconds))
}

/// Queues `tasks` tasks from 4 client threads (so queueing is not what is measured).
fn queue_tasks(server: &Server, tasks: usize, body: &Value) -> anyhow::Result<()> {
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let mut threads = Vec::new();
        for t in 0..4 {
            threads.push(scope.spawn(move || -> anyhow::Result<()> {
                for _ in (t..tasks).step_by(4) {
                    let reply = server
                        .http
                        .post(format!("{}/api/Spaces-1/tasks", server.url))
                        .header("X-Octopus-ApiKey", KEY)
                        .json(body)
                        .send()?;
                    if reply.status().as_u16() != 201 {
                        bail!("a task was not created: {}", reply.text()?);
                    }
                }
                Ok(())
            }));
        }
        for thread in threads {
            thread
                .join()
                .map_err(|_| anyhow!("a client thread panicked"))??;
        }
        Ok(())
    })
}

/// For each number: a fresh server (task cap 50, the built-in worker), that many `true` tasks
/// queued while the space's queue is stopped, then the queue started and timed until none is
/// Queued or Executing. The server's RSS is read with the backlog queued, and after the drain.
fn backlog(bin: &Path, counts: &[usize]) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for &tasks in counts {
        let temp = tempfile::tempdir()?;
        let server = Server::start(bin, temp.path())?;
        let pid = server.child.id();
        let idle_kb = rss_kb(pid, "VmRSS")?;
        let space = server.get("/api/spaces/Spaces-1")?;
        let mut stopped = space.clone();
        stopped["TaskQueueStopped"] = json!(true);
        server.put("/api/spaces/Spaces-1", &stopped)?;
        let queueing = Instant::now();
        let body = json!({"Name": "AdHocScript", "Arguments": {"ScriptBody": "true"}});
        queue_tasks(&server, tasks, &body)?;
        let queue_seconds = queueing.elapsed().as_secs_f64();
        // Settled: the dispatcher has seen every queued task.
        std::thread::sleep(Duration::from_secs(2));
        let queued_kb = rss_kb(pid, "VmRSS")?;
        let mut start = space.clone();
        start["TaskQueueStopped"] = json!(false);
        let started = Instant::now();
        server.put("/api/spaces/Spaces-1", &start)?;
        // When a tenth and when nine tenths of the backlog had ended: the rate over the first
        // tenth (the whole backlog still queued) and over the next-to-last (most of it gone).
        let mut marks: [Option<f64>; 4] = [None; 4];
        let at = [0.0, 0.1, 0.8, 0.9];
        loop {
            let open =
                server.get("/api/Spaces-1/tasks?states=Queued,Executing,Cancelling&take=1")?;
            let open = open["TotalResults"].as_u64().unwrap_or(0) as f64;
            let done = 1.0 - open / tasks as f64;
            for (mark, share) in marks.iter_mut().zip(at) {
                if mark.is_none() && done >= share {
                    *mark = Some(started.elapsed().as_secs_f64());
                }
            }
            if open == 0.0 {
                break;
            }
            if started.elapsed() > Duration::from_secs(1800) {
                bail!("the backlog did not drain in 30 minutes");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let seconds = started.elapsed().as_secs_f64();
        let tenth = tasks as f64 / 10.0;
        let first_rate = tenth / marks[1].unwrap_or(seconds).max(1e-3);
        let late_rate = tenth / (marks[3].unwrap_or(seconds) - marks[2].unwrap_or(0.0)).max(1e-3);
        let done = server.get("/api/Spaces-1/tasks?states=Success&take=1")?;
        let succeeded = done["TotalResults"].as_u64().unwrap_or(0);
        if succeeded != tasks as u64 {
            bail!("{succeeded} of {tasks} tasks succeeded");
        }
        let after_kb = rss_kb(pid, "VmRSS")?;
        let peak_kb = rss_kb(pid, "VmHWM")?;
        rows.push((
            tasks,
            queue_seconds,
            seconds,
            first_rate,
            late_rate,
            idle_kb,
            queued_kb,
            after_kb,
            peak_kb,
        ));
        server.stop()?;
    }
    println!(
        "{:<8} {:>7} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>9} {:>9} {:>8}",
        "SCENARIO",
        "QUEUED",
        "QUEUE s",
        "DRAIN s",
        "TASKS/S",
        "1st 10%/s",
        "9th 10%/s",
        "IDLE MB",
        "QUEUED MB",
        "AFTER MB",
        "PEAK MB"
    );
    let mut results = Vec::new();
    for (tasks, queue_seconds, seconds, first, late, idle, queued, after, peak) in rows {
        let rate = tasks as f64 / seconds;
        let mb = |kb: u64| kb as f64 / 1024.0;
        println!(
            "{:<8} {tasks:>7} {queue_seconds:>8.2} {seconds:>8.2} {rate:>8.0} {first:>9.0} {late:>9.0} {:>8.1} {:>9.1} {:>9.1} {:>8.1}",
            "backlog",
            mb(idle),
            mb(queued),
            mb(after),
            mb(peak)
        );
        results.push(json!({"queued": tasks, "queue_seconds": queue_seconds, "drain_seconds": seconds,
            "tasks_per_second": rate, "first_tenth_per_second": first, "ninth_tenth_per_second": late, "rss_idle_mb": mb(idle), "rss_queued_mb": mb(queued),
            "rss_after_mb": mb(after), "rss_peak_mb": mb(peak)}));
    }
    println!("{}", json!({"scenario": "backlog", "results": results}));
    Ok(())
}

/// Idle memory of the server alone and of a connected, trusted agent; the binaries' sizes.
fn footprint(bin: &Path) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let server = Server::start(bin, temp.path())?;
    std::thread::sleep(Duration::from_secs(3));
    let server_kb = rss_kb(server.child.id(), "VmRSS")?;
    let agent = server.agent(bin, temp.path(), "idle", Kind::Polling)?;
    server.wait_healthy("idle")?;
    std::thread::sleep(Duration::from_secs(3));
    let agent_kb = rss_kb(agent.0.id(), "VmRSS")?;
    let size = |name: &str| -> anyhow::Result<u64> { Ok(std::fs::metadata(bin.join(name))?.len()) };
    let (server_bytes, agent_bytes) = (size("muster")?, size("muster-agent")?);
    let mb = |kb: u64| kb as f64 / 1024.0;
    let mib = |b: u64| b as f64 / 1024.0 / 1024.0;
    println!("{:<28} {:>10}", "MEASURE", "MB");
    println!("{:<28} {:>10.1}", "server idle RSS", mb(server_kb));
    println!(
        "{:<28} {:>10.1}",
        "agent idle RSS (connected)",
        mb(agent_kb)
    );
    println!("{:<28} {:>10.1}", "muster binary", mib(server_bytes));
    println!("{:<28} {:>10.1}", "muster-agent binary", mib(agent_bytes));
    println!(
        "{}",
        json!({"scenario": "footprint", "server_rss_mb": mb(server_kb), "agent_rss_mb": mb(agent_kb), "muster_binary_mb": mib(server_bytes), "agent_binary_mb": mib(agent_bytes)})
    );
    drop(agent);
    Ok(())
}

/// A script prints `megabytes` MB of 80-byte lines on the built-in worker; timed until `raw`
/// returns every line.
fn log(bin: &Path, megabytes: usize) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let server = Server::start(bin, temp.path())?;
    let lines = megabytes * 1024 * 1024 / 80;
    // 79 characters and a newline: one line of 80 bytes, printed by coreutils (no shell loop).
    let script = format!("yes \"$(printf '%079d' 0)\" | head -n {lines}");
    let body = json!({"Name": "AdHocScript", "Arguments": {"ScriptBody": script, "TargetType": "OctopusServer"}});
    let started = Instant::now();
    let reply = server
        .http
        .post(format!("{}/api/Spaces-1/tasks", server.url))
        .header("X-Octopus-ApiKey", KEY)
        .json(&body)
        .send()?;
    let task: Value = reply.json()?;
    let id = task["Id"]
        .as_str()
        .ok_or_else(|| anyhow!("no task: {task}"))?
        .to_string();
    // Without a live follower: the scenario is storing and `raw` (docs/BENCHMARKS.md says what a
    // follower adds).
    loop {
        let task = server.get(&format!("/api/tasks/{id}"))?;
        if task["IsCompleted"] == true {
            if task["State"] != "Success" {
                bail!("task {id} ended {}", task["State"]);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stored = started.elapsed().as_secs_f64();
    let raw = server
        .http
        .get(format!("{}/api/tasks/{id}/raw", server.url))
        .header("X-Octopus-ApiKey", KEY)
        .send()?
        .text()?;
    let seconds = started.elapsed().as_secs_f64();
    let line = "0".repeat(79);
    let got = raw.lines().filter(|l| l.ends_with(line.as_str())).count();
    if got != lines {
        bail!("raw returned {got} of {lines} lines");
    }
    let peak_kb = rss_kb(server.child.id(), "VmHWM")?;
    let peak_mb = peak_kb as f64 / 1024.0;
    let rate = (lines * 80) as f64 / 1024.0 / 1024.0 / seconds;
    let raw_seconds = seconds - stored;
    println!(
        "{:<8} {:>6} {:>9} {:>9} {:>7} {:>7} {:>12}",
        "SCENARIO", "MB", "LINES", "STORED s", "RAW s", "MB/S", "PEAK RSS MB"
    );
    println!(
        "{:<8} {megabytes:>6} {lines:>9} {stored:>9.2} {raw_seconds:>7.2} {rate:>7.1} {peak_mb:>12.1}",
        "log"
    );
    println!(
        "{}",
        json!({"scenario": "log", "megabytes": megabytes, "lines": lines, "stored_seconds": stored, "raw_seconds": raw_seconds, "mb_per_second": rate, "server_peak_rss_mb": peak_mb})
    );
    Ok(())
}

/// Seconds of CPU (user and system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields
        .get(11..13)
        .ok_or_else(|| anyhow!("/proc/{pid}/stat is short"))?
        .iter()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    let hz: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    Ok(ticks as f64 / hz)
}

/// Waits until `done` holds, checking every 10 ms; fails after `limit`.
fn wait_until(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while !done()? {
        if started.elapsed() > limit {
            bail!("{what} did not happen in {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(started.elapsed())
}

/// A free TCP port on loopback, for a server that must keep its comms port across a restart.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `count` simulated agents, each registered as a polling worker of the default pool through the
/// REST API (from 4 client threads), then dialling the server: returns once every one is connected
/// and Healthy, with the time that took.
fn start_swarm(server: &Server, count: usize) -> anyhow::Result<(swarm::Swarm, Duration)> {
    let thumbprint =
        server.get("/api/configuration/certificates/certificate-global")?["Thumbprint"]
            .as_str()
            .ok_or_else(|| anyhow!("the server gave no certificate thumbprint"))?
            .to_string();
    let pools = server.get("/api/Spaces-1/workerpools/all")?;
    let pool = pools
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["IsDefault"] == true)
        .and_then(|p| p["Id"].as_str())
        .ok_or_else(|| anyhow!("no default pool"))?
        .to_string();
    let started = Instant::now();
    let members: Vec<swarm::Member> = (0..count)
        .map(|n| {
            Ok(swarm::Member {
                identity: muster_proto::Identity::generate(&format!("swarm-{n}"))?,
                subscription: format!("poll://swarm{n:015}/"),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let mut threads = Vec::new();
        for t in 0..4 {
            let (members, pool) = (&members, &pool);
            threads.push(scope.spawn(move || -> anyhow::Result<()> {
                for n in (t..count).step_by(4) {
                    let member = &members[n];
                    server.post(
                        "/api/Spaces-1/workers",
                        &json!({
                            "Name": format!("swarm-{n}"),
                            "WorkerPoolIds": [pool],
                            "Endpoint": {
                                "CommunicationStyle": "TentacleActive",
                                "Uri": member.subscription,
                                "Thumbprint": member.identity.thumbprint(),
                            }
                        }),
                    )?;
                }
                Ok(())
            }));
        }
        for thread in threads {
            thread
                .join()
                .map_err(|_| anyhow!("a client thread panicked"))??;
        }
        Ok(())
    })?;
    eprintln!(
        "muster-bench: {count} workers registered in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let swarm = swarm::Swarm::start(members, server.comms_port, &thumbprint)?;
    let connected = wait_until("every agent connecting", Duration::from_secs(300), || {
        Ok(swarm.checked() == count)
    })?;
    wait_until(
        "every worker turning Healthy",
        Duration::from_secs(300),
        || Ok(server.healthy_count()? == count as u64),
    )?;
    Ok((swarm, connected))
}

/// Idle connections at scale: the server's RSS and CPU at rest, and how long until every agent is
/// connected and checked again after the server restarts.
fn swarm_scenario(bin: &Path, connections: &[usize], rest_seconds: u64) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for &count in connections {
        let temp = tempfile::tempdir()?;
        let comms_port = free_port()?;
        let server = Server::start_on(bin, temp.path(), &[], comms_port)?;
        let (swarm, first) = start_swarm(&server, count)?;
        eprintln!(
            "muster-bench: {count} agents connected and Healthy in {:.1} s; settling",
            first.as_secs_f64()
        );
        // Let the connect-time checks and writes settle before measuring rest.
        std::thread::sleep(Duration::from_secs(5));
        let pid = server.child.id();
        let (cpu_before, at) = (cpu_seconds(pid)?, Instant::now());
        std::thread::sleep(Duration::from_secs(rest_seconds));
        let cpu = (cpu_seconds(pid)? - cpu_before) / at.elapsed().as_secs_f64() * 100.0;
        let rss_mb = rss_kb(pid, "VmRSS")? as f64 / 1024.0;
        if swarm.open() != count {
            bail!(
                "{} of {count} connections stayed open at rest",
                swarm.open()
            );
        }
        // A clean restart on the same data directory and comms port.
        server.stop()?;
        let restarted = Instant::now();
        let server = Server::start_on(bin, temp.path(), &[], comms_port)?;
        let serving = restarted.elapsed();
        wait_until("every agent reconnecting", Duration::from_secs(300), || {
            Ok(swarm.checked() == count)
        })?;
        let reconnected = restarted.elapsed();
        wait_until(
            "every worker Healthy again",
            Duration::from_secs(300),
            || Ok(server.healthy_count()? == count as u64),
        )?;
        let recorded = restarted.elapsed();
        results.push((count, rss_mb, cpu, serving, reconnected, recorded));
        swarm.stop();
        drop(server);
    }
    println!(
        "{:<8} {:>11} {:>13} {:>12} {:>16} {:>14}",
        "SCENARIO", "CONNECTIONS", "RSS MB", "CPU % core", "RECONNECTED s", "HEALTHY s"
    );
    let mut rows = Vec::new();
    for (count, rss, cpu, serving, reconnected, recorded) in results {
        println!(
            "{:<8} {count:>11} {rss:>13.1} {cpu:>12.2} {:>16.2} {:>14.2}",
            "swarm",
            reconnected.as_secs_f64(),
            recorded.as_secs_f64()
        );
        rows.push(json!({
            "connections": count, "server_rss_mb": rss, "server_cpu_percent_of_core": cpu,
            "rest_seconds": rest_seconds, "serving_after_restart_s": serving.as_secs_f64(),
            "all_reconnected_s": reconnected.as_secs_f64(), "all_healthy_s": recorded.as_secs_f64(),
        }));
    }
    println!("{}", json!({"scenario": "swarm", "results": rows}));
    Ok(())
}

/// A `Health` task of the whole space with `count` connected workers, timed from its POST until it
/// ends, which is when every result is recorded on its workers.
fn health(bin: &Path, connections: &[usize], checks: usize) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    println!(
        "{:<8} {:>8} {:>5} {:>9} {:>9} {:>9}",
        "SCENARIO", "WORKERS", "RUNS", "P50 s", "MIN s", "MAX s"
    );
    for &count in connections {
        let temp = tempfile::tempdir()?;
        let server = Server::start(bin, temp.path())?;
        let (swarm, _) = start_swarm(&server, count)?;
        let mut samples = Vec::new();
        for _ in 0..checks.max(1) {
            let calls = swarm
                .counts
                .health_calls
                .load(std::sync::atomic::Ordering::SeqCst);
            let started = Instant::now();
            let task = server.post(
                "/api/Spaces-1/tasks",
                &json!({"Name": "Health", "Description": "muster-bench health"}),
            )?;
            let id = task["Id"].as_str().unwrap_or_default().to_string();
            let state = server.wait_done(&id)?;
            let seconds = started.elapsed().as_secs_f64();
            if state != "Success" {
                bail!("health task {id} ended {state}");
            }
            let answered = swarm
                .counts
                .health_calls
                .load(std::sync::atomic::Ordering::SeqCst)
                - calls;
            if answered < count {
                bail!("the health task checked {answered} of {count} agents");
            }
            samples.push(seconds);
        }
        swarm.stop();
        drop(server);
        samples.sort_by(f64::total_cmp);
        let p50 = samples[(samples.len() - 1) / 2];
        let (min, max) = (samples[0], samples[samples.len() - 1]);
        println!(
            "{:<8} {count:>8} {:>5} {p50:>9.2} {min:>9.2} {max:>9.2}",
            "health",
            samples.len()
        );
        rows.push(json!({"workers": count, "runs": samples.len(), "p50_s": p50, "min_s": min, "max_s": max}));
    }
    println!("{}", json!({"scenario": "health", "results": rows}));
    Ok(())
}

struct Server {
    child: Child,
    url: String,
    comms_port: u16,
    http: reqwest::blocking::Client,
}

impl Server {
    fn start(bin: &Path, dir: &Path) -> anyhow::Result<Server> {
        Server::start_with(bin, dir, &["--task-cap", "50"])
    }

    fn start_with(bin: &Path, dir: &Path, extra: &[&str]) -> anyhow::Result<Server> {
        Server::start_on(bin, dir, extra, 0)
    }

    /// Starts the server on `dir`'s data directory with its comms port on `comms_port` (0: any).
    fn start_on(bin: &Path, dir: &Path, extra: &[&str], comms_port: u16) -> anyhow::Result<Server> {
        let mut child = Command::new(bin.join("muster"))
            .args(["server", "--listen", "127.0.0.1:0", "--comms-listen"])
            .arg(format!("127.0.0.1:{comms_port}"))
            .args(extra)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("MUSTER_BOOTSTRAP_API_KEY", KEY)
            .stdout(Stdio::piped())
            // MUSTER_BENCH_SERVER_LOG=1 shows the server's own log, to see why a scenario fails.
            .stderr(if std::env::var_os("MUSTER_BENCH_SERVER_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .context("cannot start muster")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let mut comms_port = 0;
        loop {
            let line = lines
                .next()
                .ok_or_else(|| anyhow!("the server stopped"))??;
            if let Some(rest) = line.split("polling agents is listening on ").nth(1) {
                comms_port = rest
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.trim().parse().ok())
                    .unwrap_or(0);
            }
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let address = rest.split('/').next().unwrap_or_default().to_string();
                // Keep reading stdout so the server never blocks on a full pipe.
                std::thread::spawn(move || for _ in lines.by_ref() {});
                return Ok(Server {
                    child,
                    url: format!("http://{address}"),
                    comms_port,
                    http: reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(120))
                        .build()?,
                });
            }
        }
    }

    fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}{path}", self.url))
            .header("X-Octopus-ApiKey", KEY)
            .send()?
            .json()?)
    }

    fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(reqwest::Method::POST, path, body)
    }

    fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(reqwest::Method::PUT, path, body)
    }

    fn send(&self, method: reqwest::Method, path: &str, body: &Value) -> anyhow::Result<Value> {
        let reply = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .header("X-Octopus-ApiKey", KEY)
            .json(body)
            .send()?;
        if !reply.status().is_success() {
            bail!("{method} {path}: {}", reply.text()?);
        }
        Ok(reply.json()?)
    }

    /// Stops the server as an operator would (SIGTERM) and waits for it to exit.
    fn stop(mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("cannot signal the server");
        }
        self.child.wait()?;
        Ok(())
    }

    /// How many workers of the default space are Healthy now.
    fn healthy_count(&self) -> anyhow::Result<u64> {
        let page = self.get("/api/Spaces-1/workers?healthStatuses=Healthy&take=1")?;
        page["TotalResults"]
            .as_u64()
            .ok_or_else(|| anyhow!("no worker count: {page}"))
    }

    /// Follows the task's live stream until it ends; returns its final state.
    fn wait_done(&self, id: &str) -> anyhow::Result<String> {
        let mut response = self
            .http
            .get(format!("{}/api/tasks/{id}/stream", self.url))
            .header("X-Octopus-ApiKey", KEY)
            .send()?;
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = response.read(&mut chunk)?;
            if n == 0 {
                bail!("the stream of {id} ended early");
            }
            buffer.extend_from_slice(&chunk[..n]);
            while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&event);
                if text.contains("event: task") {
                    let data: String = text
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(str::trim)
                        .collect();
                    let task: Value = serde_json::from_str(&data)?;
                    if task["IsCompleted"] == true {
                        return Ok(task["State"].as_str().unwrap_or_default().to_string());
                    }
                }
            }
        }
    }

    fn agent(&self, bin: &Path, dir: &Path, name: &str, kind: Kind) -> anyhow::Result<Agent> {
        self.agent_via(bin, dir, name, kind, &[self.comms_port])
    }

    /// Registers and runs an agent; a polling one dials the first of `comms_ports` (loopback) that
    /// answers, and moves to the next when its node goes.
    fn agent_via(
        &self,
        bin: &Path,
        dir: &Path,
        name: &str,
        kind: Kind,
        comms_ports: &[u16],
    ) -> anyhow::Result<Agent> {
        let home = dir.join(format!("agent-{name}"));
        let mut register = Command::new(bin.join("muster-agent"));
        register.arg("--home").arg(&home).args([
            "register-worker",
            "--server",
            &self.url,
            "--api-key",
            KEY,
            "--name",
            name,
            "--worker-pool",
            "Default Worker Pool",
        ]);
        if kind == Kind::Polling {
            register.args(["--comms-style", "TentacleActive"]);
            if let [port] = comms_ports {
                register.args(["--server-comms-port", &port.to_string()]);
            } else {
                for port in comms_ports {
                    register.args(["--server-comms-address", &format!("127.0.0.1:{port}")]);
                }
            }
        } else {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            register.args([
                "--comms-style",
                "TentaclePassive",
                "--public-hostname",
                "127.0.0.1",
                "--listen-port",
                &port.to_string(),
            ]);
        }
        let output = register.output()?;
        if !output.status.success() {
            bail!(
                "cannot register {name}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let child = Command::new(bin.join("muster-agent"))
            .arg("--home")
            .arg(&home)
            .args(["run", "--listen-address", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Agent(child))
    }

    /// Starts a private sshd that lets a user in with a new key, and registers it as an SSH
    /// worker of the default pool (an SshKeyPair account, the host key pinned by discovery).
    fn ssh_worker(&self, dir: &Path, name: &str) -> anyhow::Result<(sshd::Sshd, String)> {
        use base64::Engine as _;
        let key = sshd::keygen(dir, &format!("{name}-key"), "");
        let sshd = sshd::Sshd::start(&[&key]);
        // When run as root (as in CI), a deploy user with Debian's default shell start-up: root's
        // own start-up files here run slow tools (`pyenv init`) on every login, which would
        // measure them, not Muster.
        let username = sshd::login_user();
        let account = self.post(
            "/api/Spaces-1/accounts",
            &json!({"Name": name, "AccountType": "SshKeyPair", "Username": username.trim(),
                "PrivateKeyFile": {"HasValue": true,
                    "NewValue": base64::engine::general_purpose::STANDARD.encode(std::fs::read(&key)?)}}),
        )?;
        let found = self.get(&format!(
            "/api/Spaces-1/workers/discover?host=127.0.0.1&port={}&type=Ssh",
            sshd.port
        ))?;
        let pools = self.get("/api/Spaces-1/workerpools/all")?;
        let pool = pools
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["IsDefault"] == true)
            .ok_or_else(|| anyhow!("no default pool"))?["Id"]
            .clone();
        self.post(
            "/api/Spaces-1/workers",
            &json!({"Name": name, "WorkerPoolIds": [pool], "Endpoint": {
                "CommunicationStyle": "Ssh", "Host": "127.0.0.1", "Port": sshd.port,
                "Fingerprint": found["Endpoint"]["Fingerprint"], "AccountId": account["Id"]}}),
        )?;
        let id = self.wait_healthy(name)?;
        Ok((sshd, id))
    }

    fn wait_healthy(&self, name: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let workers = self.get("/api/Spaces-1/workers/all")?;
            if let Some(worker) = workers
                .as_array()
                .into_iter()
                .flatten()
                .find(|w| w["Name"] == name && w["HealthStatus"] == "Healthy")
            {
                return Ok(worker["Id"].as_str().unwrap_or_default().to_string());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{name} did not turn Healthy in 60 s")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
