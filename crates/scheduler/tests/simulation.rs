//! Property tests: many random workloads, driven through the real `Ledger`, `fair_order` and
//! `FanOut` by a simulated clock (whole ticks; no sleeps, no threads), as the dispatcher drives
//! them. After every pass the invariants are checked; at the end every task must have ended.

use muster_scheduler::{Decision, FanOut, Ledger, Need, Request, Slot, fair_order};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};

/// What one run does once it has started.
#[derive(Debug, Clone)]
enum Body {
    /// Works for a while.
    Work(u32),
    /// Works, then runs a child run and waits for it, then works again.
    Parent(u32, Box<Spec>, u32),
    /// Runs `durations.len()` invocations, at most `max` at once.
    FanOut(Vec<u32>, usize),
}

#[derive(Debug, Clone)]
struct Spec {
    pool: usize,
    exclusive: bool,
    body: Body,
}

#[derive(Debug, Clone)]
struct Arrival {
    at: u32,
    space: usize,
    spec: Spec,
}

#[derive(Debug, Clone)]
struct World {
    /// For each agent, the pools it is a member of.
    agents: Vec<Vec<usize>>,
    cap: usize,
    arrivals: Vec<Arrival>,
}

enum Phase {
    Working {
        until: u32,
        then: Then,
    },
    WaitingForChild {
        child: String,
        after: u32,
    },
    Fanning {
        fan: FanOut,
        durations: Vec<u32>,
        ends: Vec<u32>,
    },
}

enum Then {
    End,
    SpawnChild(Box<Spec>, u32),
}

struct Task {
    space: usize,
    spec: Spec,
    parent: Option<String>,
    queued_at: (u32, u64),
}

#[derive(Default, Debug)]
struct Outcome {
    /// (task, space, tick) in start order.
    starts: Vec<(String, usize, u32)>,
    /// Top-level tasks' start order by what they need: (space, pool, exclusive, fan-out) → ids.
    fifo: BTreeMap<(usize, usize, bool, bool), Vec<u64>>,
    deadlocks: Vec<String>,
    ended: usize,
    total: usize,
    max_fan_out_seen: Vec<(usize, usize)>,
}

const SPACES: [&str; 3] = ["0", "1", "2"];

fn slots(world: &World, pool: usize) -> Vec<Slot> {
    world
        .agents
        .iter()
        .enumerate()
        .filter(|(_, pools)| pools.contains(&pool))
        .map(|(i, _)| Slot {
            worker_id: format!("Workers-{}", i + 1),
            name: format!("worker-{}", i + 1),
            agent: format!("agent-{}", i + 1),
            order: i as i64 + 1,
            unavailable: None,
            share_limit: None,
        })
        .collect()
}

fn request(world: &World, id: &str, task: &Task) -> Request {
    let label = format!("pool {}", task.spec.pool);
    let slots = slots(world, task.spec.pool);
    let need = Need {
        key: label.clone(),
        label,
        each: matches!(task.spec.body, Body::FanOut(..)),
        slots,
    };
    Request {
        task_id: id.to_string(),
        space_id: format!("Spaces-{}", task.space + 1),
        parent: task.parent.clone(),
        exclusive: task.spec.exclusive,
        needs: vec![need],
    }
}

/// Whether `a` and `b` are one lending chain: one waits, link by link, for the other.
fn lends(ledger: &Ledger, tasks: &HashMap<String, Task>, a: &str, b: &str) -> bool {
    let chain = |from: &str, to: &str| {
        let mut child = from.to_string();
        while let Some(parent) = tasks.get(&child).and_then(|t| t.parent.clone()) {
            if ledger.waiting_for(&parent) != Some(child.as_str()) {
                return false;
            }
            if parent == to {
                return true;
            }
            child = parent;
        }
        false
    };
    chain(a, b) || chain(b, a)
}

fn new_task(
    tasks: &mut HashMap<String, Task>,
    queued: &mut Vec<String>,
    next_id: &mut u64,
    (space, spec, parent, now): (usize, Spec, Option<String>, u32),
) -> String {
    let id = format!("ServerTasks-{next_id}");
    tasks.insert(
        id.clone(),
        Task {
            space,
            spec,
            parent,
            queued_at: (now, *next_id),
        },
    );
    *next_id += 1;
    queued.push(id.clone());
    id
}

fn simulate(world: &World) -> Result<Outcome, String> {
    let mut ledger = Ledger::default();
    let mut tasks: HashMap<String, Task> = HashMap::new();
    let mut queued: Vec<String> = Vec::new();
    let mut phases: HashMap<String, Phase> = HashMap::new();
    let mut outcome = Outcome::default();
    let mut next_id = 1u64;
    let mut last_space: Option<String> = None;
    let mut arrivals = world.arrivals.clone();
    arrivals.sort_by_key(|a| a.at);
    let mut arrivals = arrivals.into_iter().peekable();
    let mut now = 0u32;
    let mut ended: Vec<String> = Vec::new();
    for _round in 0..100_000 {
        while arrivals.peek().is_some_and(|a| a.at <= now) {
            let a = arrivals.next().expect("peeked");
            new_task(
                &mut tasks,
                &mut queued,
                &mut next_id,
                (a.space, a.spec, None, now),
            );
            outcome.total += 1;
        }
        // Runs that reach the end of a phase move on.
        let mut moved = true;
        while moved {
            moved = false;
            let ids: Vec<String> = phases.keys().cloned().collect();
            for id in ids {
                let phase = phases.remove(&id).expect("listed");
                let next = match phase {
                    Phase::Working { until, then } if until <= now => {
                        moved = true;
                        match then {
                            Then::End => None,
                            Then::SpawnChild(spec, after) => {
                                let space = tasks[&id].space;
                                // The parent waits before its child is queued, as the driver does.
                                let child_id = format!("ServerTasks-{next_id}");
                                ledger.wait_for(&id, Some(&child_id));
                                let made = new_task(
                                    &mut tasks,
                                    &mut queued,
                                    &mut next_id,
                                    (space, *spec, Some(id.clone()), now),
                                );
                                assert_eq!(made, child_id);
                                outcome.total += 1;
                                Some(Phase::WaitingForChild {
                                    child: child_id,
                                    after,
                                })
                            }
                        }
                    }
                    Phase::WaitingForChild { child, after } if ended.contains(&child) => {
                        moved = true;
                        ledger.wait_for(&id, None);
                        Some(Phase::Working {
                            until: now + after,
                            then: Then::End,
                        })
                    }
                    Phase::Fanning {
                        mut fan,
                        durations,
                        mut ends,
                    } => {
                        let before = ends.len();
                        ends.retain(|end| *end > now);
                        for _ in ends.len()..before {
                            fan.done();
                        }
                        while let Some(i) = fan.start_next() {
                            ends.push(now + durations[i]);
                        }
                        let max = match &tasks[&id].spec.body {
                            Body::FanOut(_, max) => (*max).max(1),
                            _ => unreachable!(),
                        };
                        if fan.running() > max || ends.len() > max {
                            return Err(format!(
                                "{id} runs {} invocations at once, max {max}",
                                ends.len()
                            ));
                        }
                        outcome.max_fan_out_seen.push((ends.len(), max));
                        if fan.finished() {
                            moved = true;
                            None
                        } else {
                            moved |= ends.len() != before;
                            Some(Phase::Fanning {
                                fan,
                                durations,
                                ends,
                            })
                        }
                    }
                    other => Some(other),
                };
                match next {
                    Some(phase) => {
                        phases.insert(id, phase);
                    }
                    None => {
                        ledger.end(&id);
                        ended.push(id);
                        outcome.ended += 1;
                    }
                }
            }
        }
        // A pass: children whose parents wait first, then the fair order, as the dispatcher does.
        let (children, rest): (Vec<String>, Vec<String>) = queued.drain(..).partition(|id| {
            tasks[id]
                .parent
                .as_ref()
                .is_some_and(|p| ledger.waiting_for(p) == Some(id.as_str()))
        });
        let mut rest = rest;
        rest.sort_by_key(|id| tasks[id].queued_at);
        let order: Vec<String> = children
            .into_iter()
            .chain(fair_order(
                rest,
                |id| SPACES[tasks[id.as_str()].space],
                |s| s.parse().unwrap_or(0),
                last_space.as_deref(),
            ))
            .collect();
        let mut pending: HashMap<String, Request> = order
            .iter()
            .map(|id| (id.clone(), request(world, id, &tasks[id])))
            .collect();
        let mut failed_now = false;
        for id in order {
            let req = pending[&id].clone();
            let req = &req;
            match ledger.decide(req, world.cap, &pending) {
                Decision::Start { leases, capped } => {
                    ledger.begin(req, leases, capped);
                    let task = &tasks[&id];
                    last_space = Some(task.space.to_string());
                    outcome.starts.push((id.clone(), task.space, now));
                    if task.parent.is_none() {
                        let fan = matches!(task.spec.body, Body::FanOut(..));
                        outcome
                            .fifo
                            .entry((task.space, task.spec.pool, task.spec.exclusive, fan))
                            .or_default()
                            .push(task.queued_at.1);
                    }
                    let phase = match &task.spec.body {
                        Body::Work(d) => Phase::Working {
                            until: now + d,
                            then: Then::End,
                        },
                        Body::Parent(before, child, after) => Phase::Working {
                            until: now + before,
                            then: Then::SpawnChild(child.clone(), *after),
                        },
                        Body::FanOut(durations, max) => Phase::Fanning {
                            fan: FanOut::new(durations.len(), *max),
                            durations: durations.clone(),
                            ends: Vec::new(),
                        },
                    };
                    phases.insert(id, phase);
                }
                Decision::Deadlock(why) => {
                    // Failed: no longer a task the others can wait through.
                    pending.remove(&id);
                    failed_now = true;
                    outcome.deadlocks.push(why);
                    ended.push(id);
                    outcome.ended += 1;
                }
                Decision::Wait(_) | Decision::CapReached { .. } => queued.push(id),
            }
        }
        // The invariants, after every pass.
        if ledger.capped_count() > world.cap {
            return Err(format!(
                "{} capped tasks run, cap {}",
                ledger.capped_count(),
                world.cap
            ));
        }
        for agent in 0..world.agents.len() {
            let holders = ledger.holders(&format!("agent-{}", agent + 1));
            if holders.iter().any(|(_, exclusive)| *exclusive) {
                for (a, _) in &holders {
                    for (b, _) in &holders {
                        if a != b && !lends(&ledger, &tasks, a, b) {
                            return Err(format!(
                                "agent-{} is held by {a} and {b} while one lease is exclusive",
                                agent + 1
                            ));
                        }
                    }
                }
            }
        }
        if failed_now {
            // Its parent reacts to the failure at this same tick.
            continue;
        }
        // The next event: an arrival, or the end of a phase (a fan-out reacts at once).
        let mut next: Option<u32> = arrivals.peek().map(|a| a.at);
        for phase in phases.values() {
            let at = match phase {
                Phase::Working { until, .. } => Some(*until),
                Phase::Fanning { ends, .. } => ends.iter().min().copied().or(Some(now)),
                Phase::WaitingForChild { .. } => None,
            };
            if let Some(at) = at {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        match next {
            Some(at) => now = at.max(now),
            None if queued.is_empty() && phases.is_empty() => return Ok(outcome),
            None => {
                return Err(format!(
                    "stuck at tick {now}: queued {queued:?}, running {:?}",
                    phases.keys().collect::<Vec<_>>()
                ));
            }
        }
    }
    Err("the simulation did not end".into())
}

/// A run, nested `depth` deep at most. With `uniform`, the whole tree keeps to one pool and one
/// lease kind, and only a top-level run fans out (a fan-out needs every worker of its pool, so one
/// nested under another tree's held worker is a real deadlock, which the other test covers).
fn spec(
    pools: usize,
    depth: u32,
    uniform: Option<(usize, bool)>,
    top: bool,
) -> BoxedStrategy<Spec> {
    let pool = match uniform {
        Some((pool, _)) => Just(pool).boxed(),
        None => (0..pools).boxed(),
    };
    let exclusive = match uniform {
        Some((_, exclusive)) => Just(exclusive).boxed(),
        None => any::<bool>().boxed(),
    };
    let fan_out_weight = if uniform.is_none() || top { 1 } else { 0 };
    let leaf = prop_oneof![
        3 => (1u32..8).prop_map(Body::Work),
        fan_out_weight => (prop::collection::vec(1u32..6, 1..12), 1usize..4).prop_map(|(d, m)| Body::FanOut(d, m)),
    ];
    let body = if depth == 0 {
        leaf.boxed()
    } else {
        prop_oneof![
            2 => leaf,
            1 => (0u32..4, spec(pools, depth - 1, uniform, false), 0u32..4)
                .prop_map(|(b, child, a)| Body::Parent(b, Box::new(child), a)),
        ]
        .boxed()
    };
    (pool, exclusive, body)
        .prop_map(|(pool, exclusive, body)| Spec {
            pool,
            exclusive,
            body,
        })
        .boxed()
}

/// Agents in random pools (every pool has at least one), random arrivals.
fn world(uniform_trees: bool) -> impl Strategy<Value = World> {
    (1usize..4, 1usize..5, 1usize..5).prop_flat_map(move |(pools, agents, cap)| {
        let membership = prop::collection::vec(prop::collection::vec(0..pools, 1..3), agents);
        let arrival = (0u32..30, 0usize..3, 0..pools, any::<bool>()).prop_flat_map(
            move |(at, space, pool, exclusive)| {
                let uniform = uniform_trees.then_some((pool, exclusive));
                spec(pools, 3, uniform, true).prop_map(move |spec| Arrival { at, space, spec })
            },
        );
        (membership, prop::collection::vec(arrival, 1..25)).prop_map(
            move |(mut agents, arrivals)| {
                for pool in 0..pools {
                    if !agents.iter().any(|a| a.contains(&pool)) {
                        let at = pool % agents.len();
                        agents[at].push(pool);
                    }
                }
                World {
                    agents,
                    cap,
                    arrivals,
                }
            },
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Any workload: the cap and exclusive leases hold, fan-outs keep to their parallelism, and
    /// every task ends: started and finished, or failed at once by a deadlock that is named.
    #[test]
    fn every_task_ends_and_no_rule_is_broken(world in world(false)) {
        let outcome = simulate(&world).map_err(TestCaseError::fail)?;
        prop_assert_eq!(outcome.ended, outcome.total);
        for (seen, max) in &outcome.max_fan_out_seen {
            prop_assert!(seen <= max);
        }
        for why in &outcome.deadlocks {
            prop_assert!(why.starts_with("Deadlock: "), "{}", why);
        }
    }

    /// Trees of runs that keep to one pool and one kind of lease (the blog's runbooks, nested):
    /// lending always suffices, so nothing is ever failed as a deadlock, and a space's tasks that
    /// need the same thing start in the order they were queued.
    #[test]
    fn nested_runs_of_one_pool_never_deadlock_and_start_in_order(world in world(true)) {
        let outcome = simulate(&world).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&outcome.deadlocks, &Vec::<String>::new());
        prop_assert_eq!(outcome.ended, outcome.total);
        // FIFO: a space's top-level tasks that need the same thing start in the order queued.
        for (key, ids) in &outcome.fifo {
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            prop_assert_eq!(ids, &sorted, "{:?} started out of order", key);
        }
    }

    /// The spaces take turns: with the cap as the only limit, no space starts two tasks in a row
    /// while another space has a task waiting.
    #[test]
    fn spaces_take_turns(floods in prop::collection::vec(1usize..12, 2..4)) {
        let arrivals: Vec<Arrival> = floods
            .iter()
            .enumerate()
            .flat_map(|(space, n)| (0..*n).map(move |_| Arrival {
                at: 0,
                space,
                spec: Spec { pool: 0, exclusive: false, body: Body::Work(1) },
            }))
            .collect();
        let world = World { agents: vec![vec![0]; 2], cap: 1, arrivals };
        let outcome = simulate(&world).map_err(TestCaseError::fail)?;
        let mut left = floods.clone();
        let mut previous: Option<usize> = None;
        for (_, space, _) in &outcome.starts {
            let others_waiting = left.iter().enumerate().any(|(s, n)| s != *space && *n > 0);
            prop_assert!(!(previous == Some(*space) && others_waiting), "space {} went twice in a row: {:?}", space, outcome.starts);
            left[*space] -= 1;
            previous = Some(*space);
        }
    }
}

/// The simulation itself can see a broken rule: a workload that must queue (one worker, exclusive
/// runs, cap 1) shows tasks waiting and starting in turn.
#[test]
fn exclusive_runs_on_one_worker_go_one_at_a_time_in_queue_order() {
    let arrivals: Vec<Arrival> = (0..6)
        .map(|_| Arrival {
            at: 0,
            space: 0,
            spec: Spec {
                pool: 0,
                exclusive: true,
                body: Body::Work(3),
            },
        })
        .collect();
    let world = World {
        agents: vec![vec![0]],
        cap: 5,
        arrivals,
    };
    let outcome = simulate(&world).expect("the workload runs");
    let ticks: Vec<u32> = outcome.starts.iter().map(|(_, _, t)| *t).collect();
    assert_eq!(ticks, vec![0, 3, 6, 9, 12, 15]);
    assert_eq!(outcome.fifo[&(0, 0, true, false)], vec![1, 2, 3, 4, 5, 6]);
}
