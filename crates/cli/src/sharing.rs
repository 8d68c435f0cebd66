//! `muster worker share` and `muster worker wait`: the blog's runbook steps "add workers to remaining
//! spaces" and "wait for workers to register", each one idempotent command with a real exit code.

use crate::client::Client;
use crate::names::Names;
use crate::{SpaceOption, array, id_of, matches, output, resolve_pool, resolve_space};
use anyhow::{anyhow, bail};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// What `worker share` does to a share's task limit.
#[derive(Debug, Clone, Copy)]
pub enum TaskLimit {
    /// Keep the limit a share has (none for a new share).
    Keep,
    Set(i64),
    Remove,
}

/// Shares the workers of a pool in one space into the pool of the same name in other spaces.
pub async fn share(
    client: &Client,
    json: bool,
    pool_name: &str,
    from: &SpaceOption,
    all_spaces: bool,
    spaces: &[String],
    limit: TaskLimit,
) -> anyhow::Result<i32> {
    let source = resolve_space(client, from).await?;
    let source_pool = resolve_pool(client, &source, pool_name).await?;
    let every = array(&client.get("/api/spaces/all").await?);
    let mut targets = Vec::new();
    if all_spaces {
        for space in every.iter().filter(|s| s["Id"] != source["Id"]) {
            if let Ok(pool) = resolve_pool(client, space, pool_name).await {
                targets.push((space.clone(), pool));
            }
        }
    } else {
        for key in spaces {
            let space = every
                .iter()
                .find(|s| matches(s, key))
                .ok_or_else(|| anyhow!("no space named '{key}'"))?;
            if space["Id"] == source["Id"] {
                continue;
            }
            let pool = resolve_pool(client, space, pool_name).await?;
            targets.push((space.clone(), pool));
        }
    }
    if targets.is_empty() {
        bail!("no other space has a pool named '{pool_name}'");
    }
    let workers = client
        .get_all_pages(&format!(
            "/api/{}/workers?take=2147483647&workerPoolIds={}",
            id_of(&source),
            crate::client::encode(&id_of(&source_pool))
        ))
        .await?;
    // Only the source space's own workers: a worker shared into it is shared from its home.
    let workers: Vec<&Value> = workers
        .iter()
        .filter(|w| w["HomeWorkerId"].is_null())
        .collect();
    if workers.is_empty() {
        bail!(
            "pool '{}' of space {} has no workers of its own to share",
            pool_name,
            output::text(&source["Name"])
        );
    }
    let mut results = Vec::new();
    let mut changed = 0;
    for worker in &workers {
        let shares_url = format!("/api/{}/workers/{}/shares", id_of(&source), id_of(worker));
        let existing = array(&client.get(&shares_url).await?);
        for (space, pool) in &targets {
            let share = existing.iter().find(|w| w["SpaceId"] == space["Id"]);
            // Keep the pools the share already has: sharing adds, never takes away.
            let mut pools: Vec<Value> = share
                .map(|w| array(&w["WorkerPoolIds"]))
                .unwrap_or_default();
            let in_pool = pools.contains(&pool["Id"]);
            if !in_pool {
                pools.push(pool["Id"].clone());
            }
            // A limit is kept unless this run names one (or removes it with --no-task-limit).
            let before = share.and_then(|w| w["ShareTaskLimit"].as_i64());
            let after = match limit {
                TaskLimit::Keep => before,
                TaskLimit::Set(n) => Some(n),
                TaskLimit::Remove => None,
            };
            let mut changes = Vec::new();
            match share {
                None => changes.push(match after {
                    Some(n) => format!("shared with task limit {n}"),
                    None => "shared".to_string(),
                }),
                Some(_) => {
                    if !in_pool {
                        changes.push("added to the pool".to_string());
                    }
                    match (before, after) {
                        (Some(b), Some(a)) if b != a => {
                            changes.push(format!("task limit changed {b} → {a}"))
                        }
                        (None, Some(a)) => changes.push(format!("task limit set to {a}")),
                        (Some(b), None) => changes.push(format!("task limit removed (was {b})")),
                        _ => {}
                    }
                }
            }
            let state = if changes.is_empty() {
                results.push(share.cloned().unwrap_or(Value::Null));
                match after {
                    Some(n) => format!("already shared with task limit {n}, nothing changed"),
                    None => "already shared, nothing changed".to_string(),
                }
            } else {
                let mut body = json!({"SpaceId": space["Id"], "WorkerPoolIds": pools});
                match limit {
                    TaskLimit::Keep => {}
                    TaskLimit::Set(n) => body["TaskLimit"] = json!(n),
                    TaskLimit::Remove => body["TaskLimit"] = Value::Null,
                }
                results.push(client.send(Method::POST, &shares_url, Some(&body)).await?);
                changed += 1;
                changes.join(", ")
            };
            if !json {
                println!(
                    "{} → {} / {}: {state}",
                    output::text(&worker["Name"]),
                    output::text(&space["Name"]),
                    output::text(&pool["Name"])
                );
            }
        }
    }
    if json {
        output::json(&Value::Array(results));
    } else {
        println!(
            "{} worker(s) of {} serve {} other space(s); {changed} share(s) changed.",
            workers.len(),
            output::text(&source["Name"]),
            targets.len()
        );
    }
    Ok(0)
}

/// Reads `20m`, `90s`, `1h`, plain seconds, or a TimeSpan such as `00:20:00`.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let bad = || anyhow!("'{text}' is not a duration: use 90s, 20m, 1h, or 00:20:00");
    if text.contains(':') {
        let parts: Vec<u64> = text
            .split(':')
            .map(|p| p.parse::<u64>().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        return match parts.as_slice() {
            [h, m, s] => Ok(Duration::from_secs(h * 3600 + m * 60 + s)),
            [m, s] => Ok(Duration::from_secs(m * 60 + s)),
            _ => Err(bad()),
        };
    }
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(seconds))
}

/// Waits until a pool has `count` enabled, Healthy workers; exits 124 at the timeout.
pub async fn wait(
    client: &Client,
    pool_name: &str,
    space: &SpaceOption,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<i32> {
    let space = resolve_space(client, space).await?;
    let deadline = Instant::now() + timeout;
    let mut last_line = String::new();
    loop {
        // The pool may not exist yet while a provisioning script creates it.
        let (healthy, others) = match resolve_pool(client, &space, pool_name).await {
            Ok(pool) => {
                let workers = client
                    .get_all_pages(&format!(
                        "/api/{}/workers?take=2147483647&workerPoolIds={}",
                        id_of(&space),
                        crate::client::encode(&id_of(&pool))
                    ))
                    .await?;
                let healthy = workers
                    .iter()
                    .filter(|w| w["HealthStatus"] == "Healthy" && w["IsDisabled"] != true)
                    .count();
                let others: Vec<String> = workers
                    .iter()
                    .filter(|w| w["HealthStatus"] != "Healthy" || w["IsDisabled"] == true)
                    .map(|w| {
                        format!(
                            "{} ({})",
                            output::text(&w["Name"]),
                            if w["IsDisabled"] == true {
                                "disabled".to_string()
                            } else {
                                output::text(&w["HealthStatus"])
                            }
                        )
                    })
                    .collect();
                (healthy, others)
            }
            Err(_) => (0, vec![format!("no pool '{pool_name}' yet")]),
        };
        let mut line = format!("{healthy}/{count} workers of '{pool_name}' are healthy");
        if !others.is_empty() {
            line.push_str(&format!("; not yet: {}", others.join(", ")));
        }
        if line != last_line {
            eprintln!("{line}");
            last_line = line;
        }
        if healthy >= count {
            println!("{healthy} workers of '{pool_name}' are registered and healthy.");
            return Ok(0);
        }
        if Instant::now() >= deadline {
            eprintln!(
                "Timed out after {}s waiting for {count} healthy workers in '{pool_name}'.",
                timeout.as_secs()
            );
            return Ok(124);
        }
        tokio::time::sleep(Duration::from_secs(1).min(deadline - Instant::now())).await;
    }
}

/// `muster worker usage`: how busy the agents were, and what sharing saved against dedicated workers.
pub async fn usage(
    client: &Client,
    json: bool,
    space: Option<&str>,
    hours: u32,
) -> anyhow::Result<i32> {
    let path = match space {
        Some(key) => {
            let space = resolve_space(
                client,
                &SpaceOption {
                    space: Some(key.to_string()),
                },
            )
            .await?;
            format!("/api/{}/workers/usage?hours={hours}", id_of(&space))
        }
        None => format!("/api/usage/workers?hours={hours}"),
    };
    let usage = client.get(&path).await?;
    if json {
        output::json(&usage);
        return Ok(0);
    }
    let percent = |v: &Value| format!("{:.1}%", v.as_f64().unwrap_or(0.0) * 100.0);
    let spaces = Names::spaces(client).await;
    let rows = array(&usage["Agents"])
        .iter()
        .map(|a| {
            vec![
                output::text(&a["Name"]),
                spaces.name(&a["SpaceIds"]),
                output::text(&a["Tasks"]),
                format!("{:.0}s", a["BusySeconds"].as_f64().unwrap_or(0.0)),
                format!("{:.0}s", a["IdleSeconds"].as_f64().unwrap_or(0.0)),
                percent(&a["Utilization"]),
            ]
        })
        .collect();
    output::table(
        &["AGENT", "SPACES", "TASKS", "BUSY", "IDLE", "BUSY %"],
        rows,
    );
    let s = &usage["Summary"];
    println!(
        "{} agent(s) served {} space(s) over {hours}h: busy {}, idle {}.",
        output::text(&s["Agents"]),
        output::text(&s["Spaces"]),
        percent(&s["Utilization"]),
        percent(&s["Idle"])
    );
    println!(
        "Dedicated workers per space would have needed {} agent(s), busy {}, idle {}: sharing saved {}.",
        output::text(&s["DedicatedAgents"]),
        percent(&s["DedicatedUtilization"]),
        percent(&s["DedicatedIdle"]),
        output::text(&s["AgentsSaved"])
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("20m").unwrap(), Duration::from_secs(1200));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_duration("00:20:00").unwrap(),
            Duration::from_secs(1200)
        );
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
