//! `dynamic`: a dynamic pool of the `process` provider (`muster-agent` processes on this machine),
//! `MaxUseCount` 1, empty at the start of each measure:
//!
//! - `first line`: from the 201 of a task on the empty pool to its script's first line (bash's
//!   `$EPOCHREALTIME`): the worker's record and certificate, the agent's start and link, and the
//!   dispatch. `--runs` times (at most 50), the pool empty again before each.
//! - `scale-up, 10 workers`: 10 tasks queued at once on the empty pool (MaxWorkers 10), each
//!   holding its worker for 5 s: from before the first POST to the last of the 10 first lines, so
//!   all 10 workers were made and ran at once. `--repeats` times.

use crate::{Quantiles, Server, create_script_task, seconds_now};
use anyhow::{Context, anyhow, bail};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

pub fn run(bin: &Path, runs: usize, repeats: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("muster.yaml");
    std::fs::write(
        &config,
        format!(
            "WorkerTypes:\n  - Id: local\n    Provider: process\n    MaxWorkers: 10\n    MaxUseCount: 1\n    IdleTimeout: 2s\n    Settings: {{AgentPath: {}}}\n",
            bin.join("muster-agent").display()
        ),
    )?;
    let config = config.to_string_lossy().into_owned();
    let server = Server::start_with(bin, dir.path(), &["--task-cap", "50", "--config", &config])?;
    let pool = server.post(
        "/api/Spaces-1/workerpools",
        &json!({"Name": "Bench", "WorkerPoolType": "DynamicWorkerPool", "WorkerType": "local"}),
    )?["Id"]
        .as_str()
        .ok_or_else(|| anyhow!("no pool id"))?
        .to_string();
    let stamps = tempfile::tempdir_in(dir.path())?;

    let mut first = Vec::new();
    for run in 0..runs.clamp(1, 50) {
        wait_empty(&server, &pool)?;
        let stamp = stamps.path().join(format!("first-{run}"));
        let answered = queue(
            &server,
            &pool,
            &format!("echo $EPOCHREALTIME > '{}'", stamp.display()),
        )?;
        let (id, answered) = answered;
        let state = server.wait_done(&id)?;
        if state != "Success" {
            bail!("task {id} ended {state}");
        }
        let ms = (read_stamp(&stamp)? - answered) * 1000.0;
        eprintln!(
            "muster-bench: dynamic first line, run {}: {ms:.0} ms",
            run + 1
        );
        first.push(ms);
    }

    let mut scale = Vec::new();
    for repeat in 0..repeats.max(1) {
        wait_empty(&server, &pool)?;
        let start = seconds_now();
        let mut ids = Vec::new();
        let mut files = Vec::new();
        for n in 0..10 {
            let stamp = stamps.path().join(format!("scale-{repeat}-{n}"));
            let script = format!("echo $EPOCHREALTIME > '{}'; sleep 5", stamp.display());
            ids.push(queue(&server, &pool, &script)?.0);
            files.push(stamp);
        }
        for id in &ids {
            let state = server.wait_done(id)?;
            if state != "Success" {
                bail!("task {id} ended {state}");
            }
        }
        let mut last: f64 = 0.0;
        for file in &files {
            last = last.max(read_stamp(file)?);
        }
        let ms = (last - start) * 1000.0;
        eprintln!(
            "muster-bench: dynamic scale-up to 10 workers, run {}: {ms:.0} ms",
            repeat + 1
        );
        scale.push(ms);
    }

    let first = Quantiles::of(first);
    let scale = Quantiles::of(scale);
    println!(
        "{:<28} {:>5} {:>9} {:>9} {:>9} {:>9}",
        "DYNAMIC (process provider)", "RUNS", "MIN ms", "P50 ms", "P90 ms", "MAX ms"
    );
    for (name, q) in [
        ("first line, empty pool", &first),
        ("scale-up, 10 workers", &scale),
    ] {
        println!(
            "{name:<28} {:>5} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
            q.runs, q.min, q.p50, q.p90, q.max
        );
    }
    println!(
        "{}",
        json!({"scenario": "dynamic", "first_line": first.json(), "scale_up_10": scale.json()})
    );
    // The agents the pool made outlive a stopped server by design: the pool is emptied first.
    wait_empty(&server, &pool)?;
    server.stop()?;
    Ok(())
}

/// Creates a script task on the pool: its id, and when its 201 came.
fn queue(server: &Server, pool: &str, script: &str) -> anyhow::Result<(String, f64)> {
    create_script_task(
        server,
        &json!({"ScriptBody": script, "TargetType": "WorkerPools", "WorkerPoolIds": [pool]}),
    )
}

fn read_stamp(file: &Path) -> anyhow::Result<f64> {
    Ok(std::fs::read_to_string(file)
        .with_context(|| format!("no timestamp in {}", file.display()))?
        .trim()
        .replace(',', ".")
        .parse()?)
}

/// Waits until the pool has no worker (the last ones destroyed).
fn wait_empty(server: &Server, pool: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = server.get(&format!("/api/Spaces-1/workerpools/{pool}/workers?take=1"))?;
        if page["TotalResults"].as_u64() == Some(0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the pool did not empty in 60 s: {page}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
