//! The scaler of dynamic worker pools (issue 16 §4): given a pool's demand (its queued tasks), its
//! worker type's limits and its instances, what to provision, drain and destroy, and in words why
//! the queued tasks wait.
//!
//! Pure like the rest of the crate: no IO, no clock, no randomness. Times are `Duration`s since an
//! epoch the caller chooses, and `now` is a parameter, so the property tests (tests/scaler.rs) run
//! it on a simulated clock.
//!
//! The rules:
//! - never more than `max_workers` live instances (Provisioning ones count; destroyed ones do not:
//!   the caller forgets a destroyed instance as a worker at once and retries the provider's destroy
//!   in the background);
//! - never destroy a busy worker: one past `max_lifetime` is drained (it takes no new task) and
//!   destroyed once idle;
//! - a worker idle past `idle_timeout` is destroyed, but `min_idle` idle workers are kept warm, so
//!   with `min_idle` 0 and no demand the pool scales to zero;
//! - a worker that ran `max_use_count` tasks is destroyed once idle;
//! - enough workers are provisioned for the queued tasks, within `max_workers`;
//! - a Provisioning instance past `provision_timeout` is destroyed and counts as a failed attempt;
//! - after failed attempts, provisioning backs off (10 s, doubling, at most 5 min) and the queue
//!   reason says so.

use std::fmt;
use std::time::Duration;

/// The first back-off after a failed provisioning attempt; it doubles with each failure in a row.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(10);
/// The longest back-off.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5 * 60);

/// A worker type's limits, as the server's configuration sets them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerTypeLimits {
    /// Idle workers kept warm.
    pub min_idle: usize,
    pub max_workers: usize,
    /// Tasks one worker runs at once.
    pub tasks_per_worker: usize,
    /// Tasks a worker runs in its life; `Some(1)`: a fresh worker for each task (the safe default
    /// for untrusted work). `None`: no limit.
    pub max_use_count: Option<u32>,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub provision_timeout: Duration,
}

impl WorkerTypeLimits {
    /// The issue's defaults; only `max_workers` has none.
    pub fn new(max_workers: usize) -> WorkerTypeLimits {
        WorkerTypeLimits {
            min_idle: 0,
            max_workers,
            tasks_per_worker: 1,
            max_use_count: Some(1),
            idle_timeout: Duration::from_secs(60 * 60),
            max_lifetime: Duration::from_secs(72 * 60 * 60),
            provision_timeout: Duration::from_secs(5 * 60),
        }
    }

    /// Whether these limits make sense, or the first reason they do not, naming the setting as the
    /// configuration file does. The scaler assumes them checked: with a lifetime no longer than
    /// the time to provision, every worker would be too old to take a task once ready.
    pub fn check(&self) -> Result<(), String> {
        let zero = |name: &str, d: Duration| -> Result<(), String> {
            match d.is_zero() {
                true => Err(format!("{name} must be longer than 0")),
                false => Ok(()),
            }
        };
        if self.max_workers == 0 {
            return Err("MaxWorkers must be at least 1".into());
        }
        if self.min_idle > self.max_workers {
            return Err(format!(
                "MinIdle ({}) cannot be more than MaxWorkers ({})",
                self.min_idle, self.max_workers
            ));
        }
        if self.tasks_per_worker == 0 {
            return Err("TasksPerWorker must be at least 1".into());
        }
        if self.max_use_count == Some(0) {
            return Err("MaxUseCount must be at least 1 (or none, for no limit)".into());
        }
        zero("IdleTimeout", self.idle_timeout)?;
        zero("MaxLifetime", self.max_lifetime)?;
        zero("ProvisionTimeout", self.provision_timeout)?;
        if self.max_lifetime <= self.provision_timeout {
            return Err("MaxLifetime must be longer than ProvisionTimeout".into());
        }
        Ok(())
    }

    /// The tasks a fresh worker can take before it is full or used up (at least 1, so a zero that
    /// `check` would refuse cannot make the scaler provision forever).
    fn fresh_capacity(&self) -> usize {
        let mut c = self.tasks_per_worker.max(1);
        if let Some(max) = self.max_use_count {
            c = c.min((max as usize).max(1));
        }
        c
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    /// Asked of the provider; its agent has not connected yet.
    Provisioning,
    /// Its agent is connected: it takes tasks up to its capacity.
    Ready,
    /// Takes no new task; destroyed once idle.
    Draining,
}

/// One instance of a dynamic pool, as the server knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub state: InstanceState,
    /// Tasks running on it now.
    pub busy_tasks: usize,
    /// Tasks it has started in its life, the running ones included.
    pub uses: u32,
    /// When it was asked of the provider (its age and its provisioning time count from here).
    pub created_at: Duration,
    /// When it last became idle (ready, or its last task ended); read only while it is idle.
    pub idle_since: Duration,
}

impl Instance {
    pub fn busy(&self) -> bool {
        self.busy_tasks > 0
    }

    /// How the worker list shows it: Provisioning, Ready, Busy or Draining.
    pub fn shown_state(&self) -> &'static str {
        match self.state {
            InstanceState::Provisioning => "Provisioning",
            InstanceState::Ready if self.busy() => "Busy",
            InstanceState::Ready => "Ready",
            InstanceState::Draining => "Draining",
        }
    }

    fn past_lifetime(&self, limits: &WorkerTypeLimits, now: Duration) -> bool {
        now.saturating_sub(self.created_at) >= limits.max_lifetime
    }

    fn used_up(&self, limits: &WorkerTypeLimits) -> bool {
        limits.max_use_count.is_some_and(|max| self.uses >= max)
    }

    /// How many more tasks it may start now: the dispatcher gives it a task only while this is
    /// above 0 (a Draining, used-up or too old worker takes none).
    pub fn free_capacity(&self, limits: &WorkerTypeLimits, now: Duration) -> usize {
        if self.state != InstanceState::Ready || self.past_lifetime(limits, now) {
            return 0;
        }
        let mut free = limits
            .tasks_per_worker
            .max(1)
            .saturating_sub(self.busy_tasks);
        if let Some(max) = limits.max_use_count {
            free = free.min(max.saturating_sub(self.uses) as usize);
        }
        free
    }
}

/// One finished provisioning attempt: its agent connected (`failure` None), or it failed and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub at: Duration,
    pub failure: Option<String>,
}

/// Why an instance is destroyed; the pool's provisioning log says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retire {
    IdleTimeout,
    UsedUp,
    /// Past `max_lifetime` and idle (drained first if it was busy).
    Lifetime,
    /// Drained, and now idle.
    Drained,
    /// Still Provisioning past `provision_timeout`: the caller records a failed attempt with
    /// `PROVISION_TIMED_OUT`.
    ProvisionTimedOut,
    /// More instances than `max_workers` (the configuration was lowered).
    OverMaxWorkers,
}

/// The failure recorded for an instance destroyed with `Retire::ProvisionTimedOut`.
pub const PROVISION_TIMED_OUT: &str = "its agent did not connect within the ProvisionTimeout";

impl fmt::Display for Retire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Retire::IdleTimeout => "idle past the IdleTimeout",
            Retire::UsedUp => "it ran MaxUseCount tasks",
            Retire::Lifetime => "past its MaxLifetime",
            Retire::Drained => "drained",
            Retire::ProvisionTimedOut => PROVISION_TIMED_OUT,
            Retire::OverMaxWorkers => "more workers than MaxWorkers",
        })
    }
}

/// Recent failed attempts, for the queue reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failures {
    pub failed: usize,
    pub attempts: usize,
    pub last_reason: String,
}

/// Why the pool's queued tasks wait, when no worker has room for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// Workers are being provisioned; `elapsed` since the oldest was asked for, and the recent
    /// failures if the last attempt failed.
    Provisioning {
        elapsed: Duration,
        failures: Option<Failures>,
    },
    /// No attempt until the back-off has passed.
    BackingOff {
        failures: Failures,
        retry_in: Duration,
    },
    /// Every worker the type allows exists and none has room.
    AtMaxWorkers { max_workers: usize },
}

impl Waiting {
    /// The queue reason, for a pool of `worker_type`.
    pub fn describe(&self, worker_type: &str) -> String {
        match self {
            Waiting::Provisioning {
                elapsed,
                failures: None,
            } => format!(
                "provisioning a worker of type {worker_type}, {} so far",
                secs(*elapsed)
            ),
            Waiting::Provisioning {
                elapsed,
                failures: Some(f),
            } => format!(
                "provisioning a worker of type {worker_type}, {} so far ({} of {} attempts failed: {})",
                secs(*elapsed),
                f.failed,
                f.attempts,
                f.last_reason
            ),
            Waiting::BackingOff { failures, retry_in } => format!(
                "provisioning a worker of type {worker_type}: {} of {} attempts failed: {}; next attempt in {}",
                failures.failed,
                failures.attempts,
                failures.last_reason,
                secs(*retry_in)
            ),
            Waiting::AtMaxWorkers { max_workers } => {
                format!("all {max_workers} workers of type {worker_type} are in use (MaxWorkers)")
            }
        }
    }
}

/// Whole seconds, rounded up, so a wait of 0.2 s is not "0 s".
fn secs(d: Duration) -> String {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    format!("{s} s")
}

/// What to do now. The caller destroys first, then drains, then provisions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// New instances to ask of the provider.
    pub provision: usize,
    /// Instances that take no new task from now on.
    pub drain: Vec<String>,
    pub destroy: Vec<(String, Retire)>,
    /// Why the queued tasks wait, if some have no worker with room.
    pub waiting: Option<Waiting>,
}

impl Plan {
    /// Nothing to provision, drain or destroy.
    pub fn is_quiet(&self) -> bool {
        self.provision == 0 && self.drain.is_empty() && self.destroy.is_empty()
    }
}

/// The back-off after `n` failed attempts in a row.
pub fn backoff(n: usize) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    let doublings = (n - 1).min(16) as u32;
    BACKOFF_FIRST
        .saturating_mul(1 << doublings)
        .min(BACKOFF_MAX)
}

/// The plan for one dynamic pool at `now`: `queued` tasks wait for it, `instances` are its live
/// instances, `history` its recent finished provisioning attempts, oldest first (the caller keeps
/// the last few; an instance destroyed with `Retire::ProvisionTimedOut` is one more, which this
/// plan already counts).
pub fn scale(
    now: Duration,
    limits: &WorkerTypeLimits,
    queued: usize,
    instances: &[Instance],
    history: &[Attempt],
) -> Plan {
    let mut plan = Plan::default();
    let mut timed_out = 0;
    // Idle, usable Ready workers: (index, capacity); whether each stays is decided below.
    let mut idle = Vec::new();
    let mut busy_room = 0;
    let mut provisioning = Vec::new();
    let mut live = 0;
    for (i, w) in instances.iter().enumerate() {
        let retire = match w.state {
            InstanceState::Provisioning => {
                if now.saturating_sub(w.created_at) >= limits.provision_timeout {
                    timed_out += 1;
                    Some(Retire::ProvisionTimedOut)
                } else {
                    provisioning.push(i);
                    None
                }
            }
            // A busy worker is never destroyed: too old, it is drained; used up, it takes no
            // task (`free_capacity`) and goes once idle.
            _ if w.busy() => {
                if w.state == InstanceState::Ready && w.past_lifetime(limits, now) {
                    plan.drain.push(w.id.clone());
                } else {
                    busy_room += w.free_capacity(limits, now);
                }
                None
            }
            InstanceState::Draining => Some(Retire::Drained),
            InstanceState::Ready if w.past_lifetime(limits, now) => Some(Retire::Lifetime),
            InstanceState::Ready if w.used_up(limits) => Some(Retire::UsedUp),
            InstanceState::Ready => {
                idle.push((i, w.free_capacity(limits, now)));
                None
            }
        };
        match retire {
            Some(why) => plan.destroy.push((w.id.clone(), why)),
            None => live += 1,
        }
    }

    // The queued tasks go to busy workers' room first, then to idle workers (the most recently
    // idle first: they are the ones kept warm too), then to those being provisioned.
    let mut rest = queued.saturating_sub(busy_room);
    idle.sort_by(|a, b| {
        let (wa, wb) = (&instances[a.0], &instances[b.0]);
        wb.idle_since.cmp(&wa.idle_since).then(wa.id.cmp(&wb.id))
    });
    let mut warm = 0;
    for &(i, capacity) in &idle {
        let w = &instances[i];
        if rest > 0 {
            rest = rest.saturating_sub(capacity);
        } else if warm < limits.min_idle {
            warm += 1;
        } else if now.saturating_sub(w.idle_since) >= limits.idle_timeout {
            plan.destroy.push((w.id.clone(), Retire::IdleTimeout));
            live -= 1;
        } else {
            // Idle, but not for long enough yet: it stays, and counts as warm.
            warm += 1;
        }
    }
    // The tasks no Ready worker has room for: they are the ones that wait.
    let short = rest;
    let fresh = limits.fresh_capacity();
    let mut covered = 0;
    for _ in &provisioning {
        if rest > 0 {
            rest = rest.saturating_sub(fresh);
            covered += 1;
        } else {
            warm += 1;
        }
    }

    // More live workers than allowed (the limit was lowered): the idle ones go first.
    if live > limits.max_workers {
        for &(i, _) in idle.iter().rev() {
            let w = &instances[i];
            if live <= limits.max_workers {
                break;
            }
            if !plan.destroy.iter().any(|(id, _)| id == &w.id) {
                plan.destroy.push((w.id.clone(), Retire::OverMaxWorkers));
                live -= 1;
            }
        }
    }

    let wanted = rest.div_ceil(fresh) + limits.min_idle.saturating_sub(warm);
    let room = limits.max_workers.saturating_sub(live);

    // Back-off: from the last failed attempt, by the failures in a row (this plan's timed-out
    // ones included, as the newest); after a success there is none.
    let in_a_row = timed_out
        + history
            .iter()
            .rev()
            .take_while(|a| a.failure.is_some())
            .count();
    let last_failure = match (timed_out, history.last()) {
        (0, Some(a)) => a.failure.clone().map(|why| (a.at, why)),
        (0, None) => None,
        _ => Some((now, PROVISION_TIMED_OUT.to_string())),
    };
    let backing_off = last_failure
        .as_ref()
        .map(|(at, _)| *at + backoff(in_a_row))
        .filter(|&retry_at| now < retry_at);
    let failures = last_failure.map(|(_, last_reason)| Failures {
        failed: history.iter().filter(|a| a.failure.is_some()).count() + timed_out,
        attempts: history.len() + timed_out,
        last_reason,
    });

    if backing_off.is_none() {
        plan.provision = wanted.min(room);
    }

    // The queue reason: only tasks that no worker, live or coming, has room for wait.
    let uncovered = rest.saturating_sub(plan.provision * fresh);
    let asked = covered + plan.provision;
    plan.waiting = if short == 0 {
        None
    } else if let (Some(at), Some(f), true) = (backing_off, &failures, uncovered > 0) {
        Some(Waiting::BackingOff {
            failures: f.clone(),
            retry_in: at - now,
        })
    } else if asked > 0 {
        let oldest = provisioning
            .iter()
            .map(|&i| instances[i].created_at)
            .min()
            .unwrap_or(now);
        Some(Waiting::Provisioning {
            elapsed: now.saturating_sub(oldest),
            failures,
        })
    } else {
        Some(Waiting::AtMaxWorkers {
            max_workers: limits.max_workers,
        })
    };
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn at(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn worker(id: &str, state: InstanceState, busy: usize, uses: u32, created: u64) -> Instance {
        Instance {
            id: id.into(),
            state,
            busy_tasks: busy,
            uses,
            created_at: at(created),
            idle_since: at(created),
        }
    }

    fn failed(s: u64, why: &str) -> Attempt {
        Attempt {
            at: at(s),
            failure: Some(why.into()),
        }
    }

    #[test]
    fn the_defaults_are_the_issues() {
        let l = WorkerTypeLimits::new(4);
        assert_eq!(
            (l.min_idle, l.tasks_per_worker, l.max_use_count),
            (0, 1, Some(1))
        );
        assert_eq!(l.idle_timeout, 60 * MIN);
        assert_eq!(l.max_lifetime, 72 * 60 * MIN);
        assert_eq!(l.provision_timeout, 5 * MIN);
    }

    #[test]
    fn bad_limits_are_refused_with_the_setting_named() {
        assert_eq!(WorkerTypeLimits::new(4).check(), Ok(()));
        let bad = |f: fn(&mut WorkerTypeLimits)| {
            let mut l = WorkerTypeLimits::new(4);
            f(&mut l);
            l.check().unwrap_err()
        };
        assert_eq!(bad(|l| l.max_workers = 0), "MaxWorkers must be at least 1");
        assert!(bad(|l| l.min_idle = 5).starts_with("MinIdle (5)"));
        assert!(bad(|l| l.tasks_per_worker = 0).starts_with("TasksPerWorker"));
        assert!(bad(|l| l.max_use_count = Some(0)).starts_with("MaxUseCount"));
        assert!(bad(|l| l.idle_timeout = Duration::ZERO).starts_with("IdleTimeout"));
        assert!(bad(|l| l.max_lifetime = 5 * MIN).starts_with("MaxLifetime"));
    }

    #[test]
    fn a_burst_scales_up_to_max_workers_and_says_why_the_rest_wait() {
        let l = WorkerTypeLimits::new(4);
        let plan = scale(at(100), &l, 10, &[], &[]);
        assert_eq!(plan.provision, 4);
        assert_eq!(
            plan.waiting.unwrap().describe("linux-local"),
            "provisioning a worker of type linux-local, 0 s so far"
        );
        // Four are being provisioned: nothing more, and the reason counts from the oldest.
        let four: Vec<_> = (0..4)
            .map(|n| worker(&format!("i{n}"), InstanceState::Provisioning, 0, 0, 100))
            .collect();
        let plan = scale(at(112), &l, 10, &four, &[]);
        assert!(plan.is_quiet());
        assert_eq!(
            plan.waiting.unwrap().describe("linux-local"),
            "provisioning a worker of type linux-local, 12 s so far"
        );
    }

    #[test]
    fn every_worker_busy_at_max_workers_is_said() {
        let l = WorkerTypeLimits::new(2);
        let busy = [
            worker("a", InstanceState::Ready, 1, 1, 0),
            worker("b", InstanceState::Ready, 1, 1, 0),
        ];
        let plan = scale(at(10), &l, 3, &busy, &[]);
        assert!(plan.is_quiet());
        assert_eq!(plan.waiting, Some(Waiting::AtMaxWorkers { max_workers: 2 }));
    }

    #[test]
    fn tasks_per_worker_shares_workers() {
        let l = WorkerTypeLimits {
            tasks_per_worker: 3,
            max_use_count: None,
            ..WorkerTypeLimits::new(10)
        };
        // One worker runs 1 of its 3: 2 queued fit, 5 more need 2 workers.
        let w = [worker("a", InstanceState::Ready, 1, 5, 0)];
        assert_eq!(scale(at(10), &l, 7, &w, &[]).provision, 2);
        assert_eq!(scale(at(10), &l, 2, &w, &[]), Plan::default());
    }

    #[test]
    fn idle_workers_go_after_the_idle_timeout_but_min_idle_stay_warm() {
        let l = WorkerTypeLimits {
            min_idle: 1,
            max_use_count: None,
            ..WorkerTypeLimits::new(5)
        };
        let mut a = worker("a", InstanceState::Ready, 0, 3, 0);
        let mut b = worker("b", InstanceState::Ready, 0, 3, 0);
        a.idle_since = at(100);
        b.idle_since = at(200);
        // Not idle long enough yet.
        assert!(scale(at(100) + 59 * MIN, &l, 0, &[a.clone(), b.clone()], &[]).is_quiet());
        // Both past it: the most recently idle stays warm.
        let plan = scale(at(200) + 60 * MIN, &l, 0, &[a.clone(), b.clone()], &[]);
        assert_eq!(plan.destroy, vec![("a".to_string(), Retire::IdleTimeout)]);
        assert_eq!(plan.provision, 0);
        // With min_idle 0 the pool scales to zero.
        let zero = WorkerTypeLimits { min_idle: 0, ..l };
        let plan = scale(at(200) + 60 * MIN, &zero, 0, &[a, b], &[]);
        assert_eq!(plan.destroy.len(), 2);
        assert_eq!(plan.waiting, None);
    }

    #[test]
    fn min_idle_is_provisioned_without_demand() {
        let l = WorkerTypeLimits {
            min_idle: 2,
            ..WorkerTypeLimits::new(5)
        };
        let plan = scale(at(0), &l, 0, &[], &[]);
        assert_eq!(plan.provision, 2);
        assert_eq!(plan.waiting, None);
    }

    #[test]
    fn a_used_up_worker_is_destroyed_once_idle_and_replaced() {
        let l = WorkerTypeLimits::new(1);
        let busy = [worker("a", InstanceState::Ready, 1, 1, 0)];
        assert!(scale(at(5), &l, 1, &busy, &[]).is_quiet());
        let done = [worker("a", InstanceState::Ready, 0, 1, 0)];
        let plan = scale(at(6), &l, 1, &done, &[]);
        assert_eq!(plan.destroy, vec![("a".to_string(), Retire::UsedUp)]);
        assert_eq!(plan.provision, 1);
    }

    #[test]
    fn a_worker_past_its_lifetime_is_drained_then_destroyed() {
        let l = WorkerTypeLimits {
            max_use_count: None,
            ..WorkerTypeLimits::new(3)
        };
        let old = at(0) + l.max_lifetime;
        let busy = worker("a", InstanceState::Ready, 1, 1, 0);
        assert_eq!(busy.free_capacity(&l, old), 0);
        let plan = scale(old, &l, 0, &[busy], &[]);
        assert_eq!(plan.drain, vec!["a".to_string()]);
        assert!(plan.destroy.is_empty());
        let draining = worker("a", InstanceState::Draining, 1, 1, 0);
        assert_eq!(draining.shown_state(), "Draining");
        assert!(scale(old, &l, 0, &[draining], &[]).is_quiet());
        let idle = worker("a", InstanceState::Draining, 0, 1, 0);
        let plan = scale(old, &l, 0, &[idle], &[]);
        assert_eq!(plan.destroy, vec![("a".to_string(), Retire::Drained)]);
        // Idle and too old: destroyed at once.
        let idle = worker("b", InstanceState::Ready, 0, 1, 0);
        let plan = scale(old, &l, 0, &[idle], &[]);
        assert_eq!(plan.destroy, vec![("b".to_string(), Retire::Lifetime)]);
    }

    #[test]
    fn failed_attempts_back_off_and_the_reason_says_so() {
        let l = WorkerTypeLimits::new(4);
        let ok = Attempt {
            at: at(0),
            failure: None,
        };
        let history = [
            ok,
            failed(10, "create exited with 1"),
            failed(30, "create exited with 2"),
        ];
        // Two in a row: 20 s after the last.
        let plan = scale(at(40), &l, 1, &[], &history);
        assert_eq!(plan.provision, 0);
        assert_eq!(
            plan.waiting.unwrap().describe("linux-local"),
            "provisioning a worker of type linux-local: 2 of 3 attempts failed: create exited with 2; next attempt in 10 s"
        );
        // Past it: try again, still saying what failed.
        let plan = scale(at(50), &l, 1, &[], &history);
        assert_eq!(plan.provision, 1);
        assert_eq!(
            plan.waiting.unwrap().describe("t"),
            "provisioning a worker of type t, 0 s so far (2 of 3 attempts failed: create exited with 2)"
        );
        // After a success, no back-off and no failures in the reason.
        let mut h = history.to_vec();
        h.push(Attempt {
            at: at(60),
            failure: None,
        });
        let plan = scale(at(61), &l, 1, &[], &h);
        assert_eq!(plan.provision, 1);
        assert!(matches!(
            plan.waiting,
            Some(Waiting::Provisioning { failures: None, .. })
        ));
    }

    #[test]
    fn the_backoff_doubles_up_to_five_minutes() {
        let steps: Vec<u64> = (0..8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(steps, vec![0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(1000), BACKOFF_MAX);
    }

    #[test]
    fn a_provisioning_past_its_timeout_is_destroyed_and_counts_as_a_failure() {
        let l = WorkerTypeLimits::new(4);
        let slow = [worker("a", InstanceState::Provisioning, 0, 0, 0)];
        let plan = scale(at(0) + l.provision_timeout, &l, 1, &slow, &[]);
        assert_eq!(
            plan.destroy,
            vec![("a".to_string(), Retire::ProvisionTimedOut)]
        );
        assert_eq!(plan.provision, 0);
        assert_eq!(
            plan.waiting,
            Some(Waiting::BackingOff {
                failures: Failures {
                    failed: 1,
                    attempts: 1,
                    last_reason: PROVISION_TIMED_OUT.into()
                },
                retry_in: BACKOFF_FIRST,
            })
        );
    }

    #[test]
    fn a_lowered_max_workers_destroys_idle_workers_only() {
        let l = WorkerTypeLimits {
            max_use_count: None,
            ..WorkerTypeLimits::new(1)
        };
        let w = [
            worker("a", InstanceState::Ready, 1, 1, 0),
            worker("b", InstanceState::Ready, 0, 1, 0),
            worker("c", InstanceState::Ready, 0, 1, 0),
        ];
        let plan = scale(at(1), &l, 0, &w, &[]);
        let gone: Vec<_> = plan.destroy.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(gone.len(), 2);
        assert!(!gone.contains(&"a"));
    }

    #[test]
    fn ready_workers_with_room_leave_no_reason() {
        let l = WorkerTypeLimits::new(4);
        let w = [worker("a", InstanceState::Ready, 0, 0, 0)];
        assert_eq!(scale(at(1), &l, 1, &w, &[]), Plan::default());
        assert_eq!(w[0].shown_state(), "Ready");
    }
}
