//! Utilization: how busy each agent (or SSH machine: its machine key) was over a window, per agent and per space, from the tasks that
//! ran on it, and what sharing saved compared with dedicated workers per space (the blog's first
//! setup, whose workers "sat idle 99% of the day"). Nothing is recorded for it: task start and end
//! times are the record.

use crate::access::Access;
use crate::access::SpaceScope;
use crate::http::{ApiError, ApiResult, Params, ok};
use crate::state::App;
use axum::Extension;
use axum::extract::State;
use muster_core::resources::{Event, Space, Worker};
use muster_core::time::{Timestamp, format_date, now, parse_date};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Seconds covered by the union of intervals (tasks may overlap on one agent).
fn covered_seconds(mut spans: Vec<(Timestamp, Timestamp)>) -> f64 {
    spans.sort();
    let mut total = 0.0;
    let mut current: Option<(Timestamp, Timestamp)> = None;
    for (start, end) in spans {
        match &mut current {
            Some((_, until)) if start <= *until => *until = (*until).max(end),
            _ => {
                if let Some((s, e)) = current.take() {
                    total += (e - s).num_milliseconds() as f64 / 1000.0;
                }
                current = Some((start, end));
            }
        }
    }
    if let Some((s, e)) = current {
        total += (e - s).num_milliseconds() as f64 / 1000.0;
    }
    total
}

fn window(params: &Params) -> Result<(Timestamp, Timestamp), ApiError> {
    let date = |name: &str| -> Result<Option<Timestamp>, ApiError> {
        params
            .get(name)
            .map(|text| {
                parse_date(text).ok_or_else(|| {
                    ApiError::bad_request(format!("{name} must be an ISO-8601 date, got '{text}'."))
                })
            })
            .transpose()
    };
    let to = date("to")?.unwrap_or_else(now);
    let from = match (date("from")?, params.get("hours")) {
        (Some(from), _) => from,
        (None, Some(hours)) => {
            let hours: i64 = hours
                .trim()
                .parse()
                .ok()
                .filter(|h| (1..=24 * 366).contains(h))
                .ok_or_else(|| ApiError::bad_request("hours must be between 1 and 8784."))?;
            to - chrono::Duration::hours(hours)
        }
        (None, None) => to - chrono::Duration::hours(24),
    };
    if from >= to {
        return Err(ApiError::bad_request("from must be before to."));
    }
    Ok((from, to))
}

/// Seconds to the millisecond.
fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A share of the window, to a millionth (a few seconds of a day must not read as zero).
fn ratio(x: f64) -> f64 {
    (x * 1_000_000.0).round() / 1_000_000.0
}

/// The usage of the agents serving `spaces`, from those spaces' tasks only.
async fn usage(app: &App, spaces: Vec<Space>, from: Timestamp, to: Timestamp) -> ApiResult {
    let window = (to - from).num_milliseconds() as f64 / 1000.0;
    let space_ids: BTreeSet<String> = spaces.iter().map(|s| s.id.clone()).collect();
    let workers: Vec<Worker> = app.store.list_all().await?;
    let agent_of = |worker_id: &str| -> String {
        workers
            .iter()
            .find(|w| w.id == worker_id)
            .and_then(|w| w.machine_key().map(str::to_string))
            .unwrap_or_else(|| format!("(deleted {worker_id})"))
    };
    // The agents that serve each space now, and each agent's home worker.
    let mut serving: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut home: HashMap<String, &Worker> = HashMap::new();
    for worker in workers.iter().filter(|w| space_ids.contains(&w.space_id)) {
        if let Some(t) = worker.machine_key() {
            serving
                .entry(worker.space_id.clone())
                .or_default()
                .insert(t.to_string());
            if worker.home_worker_id.is_none() || !home.contains_key(t) {
                home.insert(t.to_string(), worker);
            }
        }
    }
    let tasks = app.store.tasks_on_workers_between(&from, &to).await?;
    let at = now();
    // agent → space → spans
    let mut spans: BTreeMap<String, BTreeMap<String, Vec<(Timestamp, Timestamp)>>> =
        BTreeMap::new();
    for task in tasks.iter().filter(|t| space_ids.contains(&t.space_id)) {
        let (Some(start), Some(worker_id)) = (task.start_time, task.worker_id.as_deref()) else {
            continue;
        };
        let end = task.completed_time.unwrap_or(at).min(to);
        let start = start.max(from);
        if end <= start {
            continue;
        }
        let agent = agent_of(worker_id);
        serving
            .entry(task.space_id.clone())
            .or_default()
            .insert(agent.clone());
        spans
            .entry(agent)
            .or_default()
            .entry(task.space_id.clone())
            .or_default()
            .push((start, end));
    }
    let agents: BTreeSet<String> = serving.values().flatten().cloned().collect();
    // A deleted worker's life, from its events: a dynamic worker is made and destroyed by its
    // pool, and existed only between the two (its idle time is what the pool cost).
    let deleted: BTreeSet<&str> = agents
        .iter()
        .filter_map(|a| a.strip_prefix("(deleted ")?.strip_suffix(')'))
        .collect();
    let mut lives: HashMap<String, (Option<Timestamp>, Option<Timestamp>)> = HashMap::new();
    // Its name, from the provisioning log's "Dynamic worker 'NAME' …".
    let mut names: HashMap<String, String> = HashMap::new();
    if !deleted.is_empty() {
        for space in &space_ids {
            for event in app.store.list::<Event>(space).await? {
                let Some(worker) = event
                    .related_document_ids
                    .first()
                    .filter(|id| deleted.contains(id.as_str()))
                else {
                    continue;
                };
                let key = format!("(deleted {worker})");
                if let Some(name) = event
                    .message
                    .strip_prefix("Dynamic worker '")
                    .and_then(|rest| rest.split_once('\''))
                    .map(|(name, _)| name.to_string())
                {
                    names.insert(key.clone(), name);
                }
                let life = lives.entry(key).or_default();
                match event.category.as_str() {
                    crate::audit::CREATED => life.0 = Some(event.occurred),
                    crate::audit::DELETED => life.1 = Some(event.occurred),
                    _ => {}
                }
            }
        }
    }
    // An agent is idle only while it exists: from its registration (when within the window) to
    // its deletion (when known).
    let existed = |agent: &String| -> f64 {
        let life = lives.get(agent);
        let since = home
            .get(agent)
            .and_then(|w| w.created_on)
            .or_else(|| life.and_then(|l| l.0))
            .map_or(from, |created| created.max(from));
        let until = life.and_then(|l| l.1).map_or(to, |gone| gone.min(to));
        ((until - since).num_milliseconds() as f64 / 1000.0).max(0.0)
    };
    let mut agent_rows = Vec::new();
    let mut total_busy = 0.0;
    let mut total_existed = 0.0;
    for agent in &agents {
        let by_space = spans.get(agent).cloned().unwrap_or_default();
        let all: Vec<(Timestamp, Timestamp)> = by_space.values().flatten().cloned().collect();
        let busy = covered_seconds(all.clone());
        // Tasks of a worker registered again count too: it existed while it ran them.
        let existed = existed(agent).max(busy);
        total_busy += busy;
        total_existed += existed;
        let served: Vec<&String> = serving
            .iter()
            .filter(|(_, set)| set.contains(agent))
            .map(|(space, _)| space)
            .collect();
        let worker = home.get(agent);
        agent_rows.push(json!({
            "Thumbprint": agent,
            "Name": worker.map(|w| w.name.clone()).or_else(|| names.get(agent).cloned()),
            "HomeSpaceId": worker.map(|w| w.home_space_id.clone().unwrap_or_else(|| w.space_id.clone())),
            "SpaceIds": served,
            "Tasks": all.len(),
            "ExistedSeconds": round(existed),
            "BusySeconds": round(busy),
            "IdleSeconds": round((existed - busy).max(0.0)),
            "Utilization": if existed > 0.0 { ratio(busy / existed) } else { 0.0 },
            "Spaces": by_space.iter().map(|(space, s)| json!({
                "SpaceId": space, "Tasks": s.len(), "BusySeconds": round(covered_seconds(s.clone())),
            })).collect::<Vec<_>>(),
        }));
    }
    let mut space_rows = Vec::new();
    let mut dedicated_agents = 0usize;
    let mut dedicated_busy = 0.0;
    let mut dedicated_existed = 0.0;
    for space in &spaces {
        let count = serving.get(&space.id).map_or(0, BTreeSet::len);
        let busy: f64 = spans
            .values()
            .filter_map(|by_space| by_space.get(&space.id))
            .map(|s| covered_seconds(s.clone()))
            .sum();
        let tasks: usize = spans
            .values()
            .filter_map(|by_space| by_space.get(&space.id))
            .map(Vec::len)
            .sum();
        // Had this space its own copy of each agent serving it, for as long as that agent existed.
        let existed: f64 = serving
            .get(&space.id)
            .into_iter()
            .flatten()
            .map(&existed)
            .sum::<f64>()
            .max(busy);
        dedicated_agents += count;
        dedicated_busy += busy;
        dedicated_existed += existed;
        space_rows.push(json!({
            "SpaceId": space.id,
            "Name": space.name,
            "Agents": count,
            "Tasks": tasks,
            "BusySeconds": round(busy),
            // Had this space its own copy of each agent serving it: how busy those would have been.
            "DedicatedUtilization": if existed > 0.0 { ratio(busy / existed) } else { 0.0 },
        }));
    }
    let shared_utilization = if total_existed > 0.0 {
        ratio(total_busy / total_existed)
    } else {
        0.0
    };
    let dedicated_utilization = if dedicated_existed > 0.0 {
        ratio(dedicated_busy / dedicated_existed)
    } else {
        0.0
    };
    ok(&json!({
        "From": format_date(&from),
        "To": format_date(&to),
        "WindowSeconds": round(window),
        "Agents": agent_rows,
        "Spaces": space_rows,
        "Summary": {
            "Agents": agents.len(),
            "Spaces": spaces.len(),
            "Utilization": shared_utilization,
            "Idle": ratio(1.0 - shared_utilization),
            "DedicatedAgents": dedicated_agents,
            "DedicatedUtilization": dedicated_utilization,
            "DedicatedIdle": ratio(1.0 - dedicated_utilization),
            "AgentsSaved": dedicated_agents.saturating_sub(agents.len()),
        },
    }))
}

/// `GET /api/usage/workers[?from&to|hours]`: every space whose workers the caller may see.
pub async fn all_spaces(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    params: Params,
) -> ApiResult {
    let (from, to) = window(&params)?;
    let mut spaces: Vec<Space> = app.store.list("").await?;
    spaces.retain(|s| access.has(&s.id, "WorkerView"));
    spaces.sort_by_key(|s| muster_core::parse_id(muster_core::IdKind::Space, &s.id));
    usage(&app, spaces, from, to).await
}

/// `GET /api/{spaceId}/workers/usage[?from&to|hours]`: one space.
pub async fn one_space(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    params: Params,
) -> ApiResult {
    let (from, to) = window(&params)?;
    usage(&app, vec![space], from, to).await
}

#[cfg(test)]
mod tests {
    use super::covered_seconds;
    use chrono::{TimeZone, Utc};

    #[test]
    fn overlapping_tasks_count_once() {
        let t = |s: i64| Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap();
        let spans = vec![(t(0), t(10)), (t(5), t(15)), (t(20), t(25)), (t(24), t(24))];
        assert_eq!(covered_seconds(spans), 20.0);
        assert_eq!(covered_seconds(vec![]), 0.0);
    }
}
