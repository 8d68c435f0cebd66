//! Property tests of the dynamic pools' scaler: one plan over random pools, demands and clocks
//! keeps every rule; a plan applied and asked again asks for nothing more; and a simulated clock
//! (whole seconds; no sleeps) drives a pool through random bursts of tasks, slow and failing
//! provisioning, and quiet times, checking the invariants at every step.

use muster_scheduler::scaler::{
    Attempt, Instance, InstanceState, PROVISION_TIMED_OUT, Plan, Retire, WorkerTypeLimits, backoff,
    scale,
};
use proptest::prelude::*;
use std::collections::VecDeque;
use std::time::Duration;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Limits that `WorkerTypeLimits::check` accepts.
fn limits(
    max_idle_timeout: u64,
    max_lifetime: u64,
    max_provision: u64,
) -> impl Strategy<Value = WorkerTypeLimits> {
    (
        0usize..3,
        1usize..6,
        1usize..4,
        prop::option::of(1u32..4),
        1..=max_idle_timeout,
        1..=max_lifetime,
        1..=max_provision,
    )
        .prop_map(|(min_idle, max_workers, tpw, max_use, idle, life, prov)| {
            let l = WorkerTypeLimits {
                min_idle: min_idle.min(max_workers),
                max_workers,
                tasks_per_worker: tpw,
                max_use_count: max_use,
                idle_timeout: secs(idle),
                max_lifetime: secs(prov + life),
                provision_timeout: secs(prov),
            };
            assert_eq!(l.check(), Ok(()));
            l
        })
}

/// A pool as the server could see it at `now`: limits, instances within them, history, demand.
#[derive(Debug, Clone)]
struct Pool {
    now: Duration,
    limits: WorkerTypeLimits,
    queued: usize,
    instances: Vec<Instance>,
    history: Vec<Attempt>,
}

fn pool() -> impl Strategy<Value = Pool> {
    (limits(4000, 20_000, 600), 0u64..30_000)
        .prop_flat_map(|(limits, now)| {
            let max_use = limits.max_use_count;
            let tpw = limits.tasks_per_worker;
            let instance = (0u8..3, 0..=tpw, 0u32..6, 0..=now, 0..=now).prop_map(
                move |(state, busy, uses, a, b)| {
                    let state = [
                        InstanceState::Provisioning,
                        InstanceState::Ready,
                        InstanceState::Draining,
                    ][state as usize];
                    let (created, idle) = (a.min(b), a.max(b));
                    let (mut busy, mut uses) = (busy, uses.max(busy as u32));
                    if let Some(max) = max_use {
                        uses = uses.min(max);
                        busy = busy.min(uses as usize);
                    }
                    if state == InstanceState::Provisioning {
                        (busy, uses) = (0, 0);
                    }
                    Instance {
                        id: String::new(),
                        state,
                        busy_tasks: busy,
                        uses,
                        created_at: secs(created),
                        idle_since: secs(idle),
                    }
                },
            );
            let attempt =
                (0..=now, prop::option::of("[a-z ]{1,12}")).prop_map(|(at, failure)| Attempt {
                    at: secs(at),
                    failure,
                });
            (
                Just(limits.clone()),
                Just(now),
                0usize..12,
                prop::collection::vec(instance, 0..=limits.max_workers),
                prop::collection::vec(attempt, 0..6),
            )
        })
        .prop_map(|(limits, now, queued, mut instances, mut history)| {
            for (n, w) in instances.iter_mut().enumerate() {
                w.id = format!("i{n}");
            }
            history.sort_by_key(|a| a.at);
            Pool {
                now: secs(now),
                limits,
                queued,
                instances,
                history,
            }
        })
}

fn find<'a>(pool: &'a Pool, id: &str) -> &'a Instance {
    pool.instances
        .iter()
        .find(|w| w.id == id)
        .expect("a destroyed instance exists")
}

/// The pool after the caller applied `plan`: destroyed instances gone (a timed-out one recorded as
/// a failed attempt), drained ones Draining, new ones Provisioning since `now`.
fn apply(pool: &Pool, plan: &Plan) -> Pool {
    let mut next = pool.clone();
    next.instances
        .retain(|w| !plan.destroy.iter().any(|(id, _)| id == &w.id));
    for (_, why) in &plan.destroy {
        if *why == Retire::ProvisionTimedOut {
            next.history.push(Attempt {
                at: pool.now,
                failure: Some(PROVISION_TIMED_OUT.into()),
            });
        }
    }
    for w in &mut next.instances {
        if plan.drain.contains(&w.id) {
            w.state = InstanceState::Draining;
        }
    }
    for n in 0..plan.provision {
        next.instances.push(Instance {
            id: format!("new{n}"),
            state: InstanceState::Provisioning,
            busy_tasks: 0,
            uses: 0,
            created_at: pool.now,
            idle_since: pool.now,
        });
    }
    next
}

/// Whether provisioning is backing off at `now` (the timed-out attempts recorded).
fn backing_off(pool: &Pool) -> bool {
    let in_a_row = pool
        .history
        .iter()
        .rev()
        .take_while(|a| a.failure.is_some())
        .count();
    match pool.history.last() {
        Some(last) if in_a_row > 0 => pool.now < last.at + backoff(in_a_row),
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// One plan, any pool: every rule holds.
    #[test]
    fn a_plan_keeps_every_rule(pool in pool()) {
        let (l, now) = (&pool.limits, pool.now);
        let plan = scale(now, l, pool.queued, &pool.instances, &pool.history);
        let after = apply(&pool, &plan);

        // Never above MaxWorkers, Provisioning ones counted.
        prop_assert!(after.instances.len() <= l.max_workers, "{:?}", plan);
        // Never destroy a busy worker; drain only a busy one past its lifetime.
        for (id, _) in &plan.destroy {
            prop_assert!(!find(&pool, id).busy(), "destroyed busy {}", id);
        }
        for id in &plan.drain {
            let w = find(&pool, id);
            prop_assert!(w.busy() && w.state == InstanceState::Ready);
            prop_assert!(now - w.created_at >= l.max_lifetime);
        }
        // What must go, goes: idle and drained, used up or too old; provisioning too long.
        for w in &pool.instances {
            let gone = plan.destroy.iter().any(|(id, _)| id == &w.id);
            let old = now - w.created_at >= l.max_lifetime;
            let used_up = l.max_use_count.is_some_and(|m| w.uses >= m);
            match w.state {
                InstanceState::Provisioning => {
                    prop_assert_eq!(gone, now - w.created_at >= l.provision_timeout)
                }
                _ if w.busy() => {}
                InstanceState::Draining => prop_assert!(gone),
                InstanceState::Ready if old || used_up => prop_assert!(gone),
                InstanceState::Ready => {}
            }
        }
        // Idle past the timeout: only min_idle stay when nothing is queued.
        if pool.queued == 0 {
            let stale = after.instances.iter().filter(|w| {
                w.state == InstanceState::Ready && !w.busy() && now - w.idle_since >= l.idle_timeout
            });
            prop_assert!(stale.count() <= l.min_idle);
        }
        // Enough capacity for the queue, unless at MaxWorkers or backing off.
        let fresh = l.tasks_per_worker.min(l.max_use_count.map_or(usize::MAX, |m| m as usize));
        let room: usize = after.instances.iter().map(|w| w.free_capacity(l, now)).sum::<usize>()
            + after.instances.iter().filter(|w| w.state == InstanceState::Provisioning).count() * fresh;
        if backing_off(&after) {
            prop_assert_eq!(plan.provision, 0);
        } else if after.instances.len() < l.max_workers {
            prop_assert!(room >= pool.queued, "room {} for {}: {:?}", room, pool.queued, plan);
        }
        // A reason exactly when some queued task has no Ready worker with room.
        let ready_room: usize = after.instances.iter().map(|w| w.free_capacity(l, now)).sum();
        prop_assert_eq!(plan.waiting.is_some(), pool.queued > ready_room, "{:?}", plan);
    }

    /// Applied and asked again at the same time, with the same demand: nothing more to do.
    #[test]
    fn a_plan_applied_asks_for_nothing_more(pool in pool()) {
        let plan = scale(pool.now, &pool.limits, pool.queued, &pool.instances, &pool.history);
        let after = apply(&pool, &plan);
        let again = scale(after.now, &after.limits, after.queued, &after.instances, &after.history);
        prop_assert!(again.is_quiet(), "{:?} then {:?}", plan, again);
    }
}

/// A task's life in the simulation.
#[derive(Debug, Clone)]
struct Arrival {
    at: u64,
    runs_for: u64,
}

#[derive(Debug, Clone)]
struct World {
    limits: WorkerTypeLimits,
    arrivals: Vec<Arrival>,
    /// The provider: the n-th instance takes `delays[n % len]` s to connect; until `broken_until`,
    /// creates fail when `fails[n % len]` (and slow ones time out, as they may at any time).
    delays: Vec<u64>,
    fails: Vec<bool>,
    broken_until: u64,
}

fn world() -> impl Strategy<Value = World> {
    (
        limits(60, 6000, 30),
        prop::collection::vec((0u64..200, 1u64..40), 0..25),
        prop::collection::vec(1u64..45, 1..8),
        prop::collection::vec(any::<bool>(), 1..5),
        0u64..150,
    )
        .prop_map(|(limits, arrivals, delays, fails, broken_until)| {
            let mut arrivals: Vec<Arrival> = arrivals
                .into_iter()
                .map(|(at, runs_for)| Arrival { at, runs_for })
                .collect();
            arrivals.sort_by_key(|a| a.at);
            World {
                limits,
                arrivals,
                delays,
                fails,
                broken_until,
            }
        })
}

struct Sim {
    instances: Vec<Instance>,
    /// When each Provisioning instance connects, by id.
    connects_at: Vec<(String, u64)>,
    /// (instance id, ends at) of the running tasks.
    running: Vec<(String, u64)>,
    queue: VecDeque<Arrival>,
    history: Vec<Attempt>,
    created: usize,
    ended: usize,
}

/// The end of the simulation: every queued task must have run by then (arrivals stop at 200 s,
/// the provider works from 150 s, a back-off is at most 5 min, and 25 tasks of at most 40 s run
/// one after another with a fresh worker each).
const END: u64 = 4000;

fn simulate(world: &World) -> Result<(), String> {
    let l = &world.limits;
    let mut sim = Sim {
        instances: Vec::new(),
        connects_at: Vec::new(),
        running: Vec::new(),
        queue: VecDeque::new(),
        history: Vec::new(),
        created: 0,
        ended: 0,
    };
    let mut arrivals: VecDeque<Arrival> = world.arrivals.iter().cloned().collect();
    for t in 0..=END {
        let now = secs(t);
        // Tasks end; workers connect; tasks arrive.
        let (ended, running): (Vec<_>, Vec<_>) =
            sim.running.drain(..).partition(|(_, end)| *end <= t);
        sim.running = running;
        for (id, _) in ended {
            sim.ended += 1;
            let w = sim
                .instances
                .iter_mut()
                .find(|w| w.id == id)
                .ok_or("a worker vanished under its task")?;
            w.busy_tasks -= 1;
            if w.busy_tasks == 0 {
                w.idle_since = now;
            }
        }
        for (id, at) in &sim.connects_at {
            if *at == t
                && let Some(w) = sim
                    .instances
                    .iter_mut()
                    .find(|w| &w.id == id && w.state == InstanceState::Provisioning)
            {
                w.state = InstanceState::Ready;
                w.idle_since = now;
                sim.history.push(Attempt {
                    at: now,
                    failure: None,
                });
            }
        }
        while arrivals.front().is_some_and(|a| a.at <= t) {
            sim.queue.push_back(arrivals.pop_front().expect("front"));
        }
        // The dispatcher: queued tasks, oldest first, on workers with room.
        for w in &mut sim.instances {
            while w.free_capacity(l, now) > 0
                && let Some(task) = sim.queue.pop_front()
            {
                w.busy_tasks += 1;
                w.uses += 1;
                sim.running.push((w.id.clone(), t + task.runs_for));
            }
        }
        for w in &sim.instances {
            if w.busy_tasks > l.tasks_per_worker || l.max_use_count.is_some_and(|m| w.uses > m) {
                return Err(format!("{} over its limits at {t}: {w:?}", w.id));
            }
        }

        // The scaler, and its plan applied.
        let plan = scale(now, l, sim.queue.len(), &sim.instances, &sim.history);
        if !sim.queue.is_empty() && plan.waiting.is_none() {
            return Err(format!(
                "{} queued tasks without a reason at {t}",
                sim.queue.len()
            ));
        }
        for (id, why) in &plan.destroy {
            let w = sim
                .instances
                .iter()
                .find(|w| &w.id == id)
                .ok_or("destroyed an unknown instance")?;
            if w.busy() {
                return Err(format!("destroyed busy {id} at {t}"));
            }
            if *why == Retire::ProvisionTimedOut {
                sim.history.push(Attempt {
                    at: now,
                    failure: Some(PROVISION_TIMED_OUT.into()),
                });
            }
        }
        sim.instances
            .retain(|w| !plan.destroy.iter().any(|(id, _)| id == &w.id));
        for w in &mut sim.instances {
            if plan.drain.contains(&w.id) {
                w.state = InstanceState::Draining;
            }
        }
        for _ in 0..plan.provision {
            let n = sim.created;
            sim.created += 1;
            let broken = t < world.broken_until;
            if broken && world.fails[n % world.fails.len()] {
                sim.history.push(Attempt {
                    at: now,
                    failure: Some("create exited with 1".into()),
                });
                continue;
            }
            let mut delay = world.delays[n % world.delays.len()];
            if !broken {
                delay = delay
                    .min(l.provision_timeout.as_secs().saturating_sub(1))
                    .max(1);
            }
            let id = format!("i{n}");
            sim.connects_at.push((id.clone(), t + delay));
            sim.instances.push(Instance {
                id,
                state: InstanceState::Provisioning,
                busy_tasks: 0,
                uses: 0,
                created_at: now,
                idle_since: now,
            });
        }
        // With nothing queued, no more than MinIdle workers stay idle past the IdleTimeout.
        if sim.queue.is_empty() {
            let stale = sim.instances.iter().filter(|w| {
                w.state == InstanceState::Ready && !w.busy() && now - w.idle_since >= l.idle_timeout
            });
            if stale.count() > l.min_idle {
                return Err(format!(
                    "idle workers kept past the IdleTimeout at {t}: {:?}",
                    sim.instances
                ));
            }
        }
        if sim.history.len() > 10 {
            sim.history.drain(..sim.history.len() - 10);
        }
        if sim.instances.len() > l.max_workers {
            return Err(format!(
                "{} instances at {t}, MaxWorkers {}",
                sim.instances.len(),
                l.max_workers
            ));
        }
    }
    // Every task ran, and with nothing to do the pool is back to its warm workers.
    if sim.ended != world.arrivals.len() {
        return Err(format!(
            "{} of {} tasks ran; {} still queued",
            sim.ended,
            world.arrivals.len(),
            sim.queue.len()
        ));
    }
    if sim.instances.len() != l.min_idle || sim.instances.iter().any(Instance::busy) {
        return Err(format!(
            "the pool did not return to {} warm workers: {:?}",
            l.min_idle, sim.instances
        ));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Bursts, slow and failing provisioning, quiet times: at every step the rules hold, every
    /// task gets a worker once provisioning works, and the pool returns to MinIdle.
    #[test]
    fn a_pool_over_time_serves_every_task_and_returns_to_min_idle(world in world()) {
        simulate(&world).map_err(TestCaseError::fail)?;
    }
}
