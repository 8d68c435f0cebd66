//! The scheduler's rules, apart from everything that does IO: which queued task may start now, on
//! which workers, and in words why the others wait.
//!
//! - A task takes its workers when it starts, as **leases**: one worker per pool it uses (or every
//!   worker of a pool, for a step that runs on each of them), kept until it ends.
//! - A lease is **exclusive** when the run sets `OctopusBypassDeploymentMutex` to False: nothing else
//!   runs on that machine while it is held. Leases exclude per machine (agent), not per worker
//!   record, so a worker shared into several spaces is exclusive across all of them.
//! - A task is started whole or not at all (every lease at once), so no task holds some workers
//!   while it waits for others. The only waiting-while-holding is a parent run waiting for a child
//!   run; the parent idles meanwhile, so it **lends** the child its leases and its task-cap slot.
//! - What lending cannot break is a cycle of waits; `Ledger::decide` finds it and says so, and the
//!   dispatcher fails the task at once instead of letting every task in the cycle hang.
//!
//! Architecture invariant: no IO, no async, no clock. The dispatcher feeds it what it read, and the
//! property tests (tests/simulation.rs) drive it with a simulated clock.
//!
//! `scaler` is the other half of the rules for dynamic worker pools: how many workers a pool
//! should have, from its queued tasks and its instances.

pub mod scaler;

use std::collections::{HashMap, HashSet, VecDeque};

/// The built-in worker's machine, as a lease names it (a node's is `builtin@NODE`: each node runs
/// one, see `builtin_agent`).
pub const BUILTIN_AGENT: &str = "builtin";

/// The machine of a node's built-in worker.
pub fn builtin_agent(node: &str) -> String {
    format!("{BUILTIN_AGENT}@{node}")
}

/// The node whose built-in worker `agent` is, if it is one.
pub fn builtin_node(agent: &str) -> Option<&str> {
    agent.strip_prefix(BUILTIN_AGENT)?.strip_prefix('@')
}

/// A worker a task could run on, as the dispatcher sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub worker_id: String,
    pub name: String,
    /// The machine behind the worker: an agent's thumbprint, or `BUILTIN_AGENT`.
    pub agent: String,
    /// The tie-break between equally loaded workers (the number in the worker's id).
    pub order: i64,
    /// Why it cannot take work now (disabled, not connected, unhealthy), or None.
    pub unavailable: Option<String>,
    /// A share's limit on this space's tasks on it at once.
    pub share_limit: Option<usize>,
}

/// What a task needs before it starts: one worker among `slots` (a pool's members, or the workers
/// a task names), or with `each`, every available one of them (a step that runs on each worker of a
/// pool).
#[derive(Debug, Clone)]
pub struct Need {
    /// The caller's key for it, copied into its leases (which step uses which lease).
    pub key: String,
    /// How reasons name it, such as `pool 'Linux'`.
    pub label: String,
    pub each: bool,
    pub slots: Vec<Slot>,
}

/// A queued task, as the scheduler needs to know it.
#[derive(Debug, Clone)]
pub struct Request {
    pub task_id: String,
    pub space_id: String,
    /// The run that started this one (a child run), if any.
    pub parent: Option<String>,
    /// `OctopusBypassDeploymentMutex` False: its leases exclude every other task.
    pub exclusive: bool,
    pub needs: Vec<Need>,
}

/// A worker held by a task, from its start to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The key of the need it meets.
    pub key: String,
    pub worker_id: String,
    pub worker_name: String,
    pub agent: String,
    pub exclusive: bool,
    /// Held through a waiting ancestor's lease on the same machine.
    pub borrowed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start now with these leases; `capped`: it takes a task-cap slot (a child whose parent waits
    /// for it runs in its parent's).
    Start { leases: Vec<Lease>, capped: bool },
    /// The workers are there, but the task cap is reached; `running` tasks hold its slots.
    CapReached { running: usize },
    /// Not now, and why, in words.
    Wait(String),
    /// Never, while the tasks it waits for wait for it: the cycle, in words.
    Deadlock(String),
}

#[derive(Debug, Clone)]
struct Holding {
    parent: Option<String>,
    leases: Vec<Lease>,
    capped: bool,
    /// The child run this task waits for now.
    waiting_for: Option<String>,
    /// The server node that runs it.
    node: Option<String>,
}

/// The leases and task-cap slots of running tasks, and the node each runs on.
#[derive(Debug, Default)]
pub struct Ledger {
    holdings: HashMap<String, Holding>,
}

enum SlotState {
    Free {
        borrowed: bool,
    },
    Unavailable(String),
    Limited(String),
    /// Leased so that this task may not have it: by these tasks.
    Held {
        by: Vec<String>,
        why: String,
    },
}

impl Ledger {
    /// How many running tasks take a task-cap slot.
    pub fn capped_count(&self) -> usize {
        self.holdings.values().filter(|h| h.capped).count()
    }

    /// How many running tasks hold a lease on a machine, from every space it serves.
    pub fn agent_load(&self, agent: &str) -> usize {
        self.holdings
            .values()
            .filter(|h| h.leases.iter().any(|l| l.agent == agent))
            .count()
    }

    /// How many running tasks hold a lease through one worker record (one space's share of an agent).
    pub fn worker_load(&self, worker_id: &str) -> usize {
        self.holdings
            .values()
            .filter(|h| h.leases.iter().any(|l| l.worker_id == worker_id))
            .count()
    }

    pub fn is_running(&self, task_id: &str) -> bool {
        self.holdings.contains_key(task_id)
    }

    pub fn leases(&self, task_id: &str) -> &[Lease] {
        self.holdings
            .get(task_id)
            .map(|h| h.leases.as_slice())
            .unwrap_or_default()
    }

    /// The tasks holding a lease on a machine, and whether each is exclusive.
    pub fn holders(&self, agent: &str) -> Vec<(String, bool)> {
        let mut holders: Vec<(String, bool)> = self
            .holdings
            .iter()
            .filter_map(|(task, h)| {
                let mine: Vec<&Lease> = h.leases.iter().filter(|l| l.agent == agent).collect();
                (!mine.is_empty()).then(|| (task.clone(), mine.iter().any(|l| l.exclusive)))
            })
            .collect();
        holders.sort();
        holders
    }

    /// Records a task that starts, with what `decide` gave it.
    pub fn begin(&mut self, request: &Request, leases: Vec<Lease>, capped: bool) {
        self.holdings.insert(
            request.task_id.clone(),
            Holding {
                parent: request.parent.clone(),
                leases,
                capped,
                waiting_for: None,
                node: None,
            },
        );
    }

    /// Records which server node runs a task that began.
    pub fn place(&mut self, task_id: &str, node: &str) {
        if let Some(holding) = self.holdings.get_mut(task_id) {
            holding.node = Some(node.to_string());
        }
    }

    /// The server node that runs a task, if it was placed.
    pub fn node_of(&self, task_id: &str) -> Option<&str> {
        self.holdings.get(task_id)?.node.as_deref()
    }

    /// The running tasks placed on nodes other than `node`.
    pub fn placed_elsewhere(&self, node: &str) -> Vec<String> {
        self.holdings
            .iter()
            .filter(|(_, h)| h.node.as_deref().is_some_and(|n| n != node))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// How many running tasks placed on a node take a task-cap slot there.
    pub fn capped_on(&self, node: &str) -> usize {
        self.holdings
            .values()
            .filter(|h| h.capped && h.node.as_deref() == Some(node))
            .count()
    }

    /// A task ended: its leases and its slot are free.
    pub fn end(&mut self, task_id: &str) {
        self.holdings.remove(task_id);
        for holding in self.holdings.values_mut() {
            if holding.waiting_for.as_deref() == Some(task_id) {
                holding.waiting_for = None;
            }
        }
    }

    /// A running task waits for a child run (Some) or no longer does (None). Call it before the
    /// child is queued, so the child's first pass already sees what its parent lends.
    pub fn wait_for(&mut self, parent: &str, child: Option<&str>) {
        if let Some(holding) = self.holdings.get_mut(parent) {
            holding.waiting_for = child.map(str::to_string);
        }
    }

    /// The children that running tasks wait for now.
    pub fn waited_for(&self) -> Vec<String> {
        self.holdings
            .values()
            .filter_map(|h| h.waiting_for.clone())
            .collect()
    }

    pub fn waiting_for(&self, task_id: &str) -> Option<&str> {
        self.holdings.get(task_id)?.waiting_for.as_deref()
    }

    /// The running ancestors that wait, link by link, for this task: they idle until it ends, so
    /// their leases and their cap slot are its to use.
    fn lenders(&self, task_id: &str, parent: Option<&str>) -> Vec<String> {
        let mut lenders = Vec::new();
        let mut child = task_id.to_string();
        let mut next = parent.map(str::to_string);
        while let Some(ancestor) = next {
            let Some(holding) = self.holdings.get(&ancestor) else {
                break;
            };
            if holding.waiting_for.as_deref() != Some(child.as_str()) || lenders.contains(&ancestor)
            {
                break;
            }
            lenders.push(ancestor.clone());
            child = ancestor;
            next = holding.parent.clone();
        }
        lenders
    }

    fn slot_state(&self, request: &Request, lenders: &[String], slot: &Slot) -> SlotState {
        if let Some(why) = &slot.unavailable {
            return SlotState::Unavailable(why.clone());
        }
        let others = |task: &String| *task != request.task_id && !lenders.contains(task);
        if let Some(limit) = slot.share_limit {
            let used = self
                .holdings
                .iter()
                .filter(|(task, h)| {
                    others(task) && h.leases.iter().any(|l| l.worker_id == slot.worker_id)
                })
                .count();
            if used >= limit {
                return SlotState::Limited(format!(
                    "{} is shared into this space for at most {limit} task(s) at once, and this space's share limit is reached",
                    slot.name
                ));
            }
        }
        let mut exclusive_holders = Vec::new();
        let mut holders = Vec::new();
        let mut borrowed = false;
        for (task, holding) in &self.holdings {
            let mut on_it = holding.leases.iter().filter(|l| l.agent == slot.agent);
            let Some(first) = on_it.next() else {
                continue;
            };
            if !others(task) {
                borrowed |= lenders.contains(task);
                continue;
            }
            if first.exclusive || on_it.any(|l| l.exclusive) {
                exclusive_holders.push(task.clone());
            } else if request.exclusive {
                holders.push(task.clone());
            }
        }
        // Named oldest first; only the holders of a machine that is not free are sorted.
        let by_age = |a: &String, b: &String| task_order(a).cmp(&task_order(b)).then(a.cmp(b));
        if !exclusive_holders.is_empty() {
            exclusive_holders.sort_by(by_age);
            let why = format!(
                "{} is exclusively leased by {}",
                slot.name,
                exclusive_holders.join(", ")
            );
            return SlotState::Held {
                by: exclusive_holders,
                why,
            };
        }
        if request.exclusive && !holders.is_empty() {
            holders.sort_by(by_age);
            let why = format!(
                "{} is running {}, and this task needs it exclusively (OctopusBypassDeploymentMutex is False)",
                slot.name,
                holders.join(", ")
            );
            return SlotState::Held { by: holders, why };
        }
        SlotState::Free { borrowed }
    }

    /// Whether a queued task may start now, with which leases; or why not. `pending` holds the
    /// other queued tasks of the pass, for finding a cycle of waits through them.
    pub fn decide(
        &self,
        request: &Request,
        task_cap: usize,
        pending: &HashMap<String, Request>,
    ) -> Decision {
        let lenders = self.lenders(&request.task_id, request.parent.as_deref());
        let mut leases = Vec::new();
        let mut reasons = Vec::new();
        for need in &request.needs {
            match self.meet(request, &lenders, need) {
                Ok(mut got) => leases.append(&mut got),
                Err(why) => reasons.push(why),
            }
        }
        if !reasons.is_empty() {
            if let Some(cycle) = self.deadlock(request, pending) {
                return Decision::Deadlock(format!(
                    "Deadlock: {} can never start, and lending cannot help: {cycle}.",
                    request.task_id
                ));
            }
            return Decision::Wait(reasons.join(" "));
        }
        // A child whose parent waits for it runs in the parent's task-cap slot.
        let capped = lenders.is_empty();
        let running = self.capped_count();
        if capped && running >= task_cap {
            return Decision::CapReached { running };
        }
        Decision::Start { leases, capped }
    }

    fn meet(
        &self,
        request: &Request,
        lenders: &[String],
        need: &Need,
    ) -> Result<Vec<Lease>, String> {
        let lease = |slot: &Slot, borrowed: bool| Lease {
            key: need.key.clone(),
            worker_id: slot.worker_id.clone(),
            worker_name: slot.name.clone(),
            agent: slot.agent.clone(),
            exclusive: request.exclusive,
            borrowed,
        };
        let mut reasons = Vec::new();
        let label = &need.label;
        let slots = &need.slots;
        match need.each {
            false => {
                // A waiting ancestor's machine first (it idles), then the least loaded, then by id.
                let mut best: Option<((bool, usize, i64), &Slot, bool)> = None;
                for slot in slots {
                    match self.slot_state(request, lenders, slot) {
                        SlotState::Free { borrowed } => {
                            let key = (!borrowed, self.agent_load(&slot.agent), slot.order);
                            if best.as_ref().is_none_or(|(k, _, _)| key < *k) {
                                best = Some((key, slot, borrowed));
                            }
                        }
                        SlotState::Unavailable(why)
                        | SlotState::Limited(why)
                        | SlotState::Held { why, .. } => reasons.push(why),
                    }
                }
                match best {
                    Some((_, slot, borrowed)) => Ok(vec![lease(slot, borrowed)]),
                    None if slots.is_empty() => Err(format!("{label} has no workers.")),
                    None => Err(format!(
                        "No worker of {label} can take it now: {}.",
                        reasons.join("; ")
                    )),
                }
            }
            true => {
                let mut got = Vec::new();
                let mut skipped = Vec::new();
                for slot in slots {
                    match self.slot_state(request, lenders, slot) {
                        SlotState::Free { borrowed } => got.push(lease(slot, borrowed)),
                        // An unavailable worker is skipped, as Octopus skips unavailable targets.
                        SlotState::Unavailable(why) => skipped.push(why),
                        SlotState::Limited(why) | SlotState::Held { why, .. } => reasons.push(why),
                    }
                }
                if !reasons.is_empty() {
                    Err(format!(
                        "It runs on each worker of {label}, and not all of them can take it now: {}.",
                        reasons.join("; ")
                    ))
                } else if got.is_empty() {
                    Err(format!(
                        "It runs on each worker of {label}, and none is available: {}.",
                        if skipped.is_empty() {
                            "the pool has no workers".to_string()
                        } else {
                            skipped.join("; ")
                        }
                    ))
                } else {
                    Ok(got)
                }
            }
        }
    }

    /// The running task at the end of a holder's chain of waits: the queued child it waits for,
    /// through running children that wait in turn. None: the holder does not wait on a queued task.
    fn queued_child<'p>(
        &self,
        holder: &str,
        pending: &'p HashMap<String, Request>,
    ) -> Option<(&'p Request, Vec<String>)> {
        let mut chain = vec![holder.to_string()];
        let mut at = holder.to_string();
        loop {
            let child = self.holdings.get(&at)?.waiting_for.clone()?;
            if chain.contains(&child) {
                return None;
            }
            if let Some(queued) = pending.get(&child) {
                return Some((queued, chain));
            }
            if !self.holdings.contains_key(&child) {
                return None;
            }
            chain.push(child.clone());
            at = child;
        }
    }

    /// Whether a holder will release its lease some day, given the queued tasks known to start
    /// some day (`alive`): it does not wait, or what it waits for is alive.
    fn releasable(
        &self,
        holder: &str,
        pending: &HashMap<String, Request>,
        alive: &HashSet<String>,
    ) -> bool {
        match self.queued_child(holder, pending) {
            Some((child, _)) => alive.contains(&child.task_id),
            None => true,
        }
    }

    /// Whether a slot may some day be this task's: it is free, or may come back, or every task that
    /// keeps it from this one will release it.
    fn slot_hopeful(
        &self,
        request: &Request,
        lenders: &[String],
        slot: &Slot,
        pending: &HashMap<String, Request>,
        alive: &HashSet<String>,
    ) -> bool {
        match self.slot_state(request, lenders, slot) {
            SlotState::Held { by, .. } => by.iter().all(|h| self.releasable(h, pending, alive)),
            _ => true,
        }
    }

    fn need_hopeful(
        &self,
        request: &Request,
        lenders: &[String],
        need: &Need,
        pending: &HashMap<String, Request>,
        alive: &HashSet<String>,
    ) -> bool {
        let hopeful = |s: &Slot| self.slot_hopeful(request, lenders, s, pending, alive);
        if need.each {
            need.slots.iter().all(hopeful)
        } else {
            // A pool with no workers yet waits for one to be added.
            need.slots.is_empty() || need.slots.iter().any(hopeful)
        }
    }

    /// The queued tasks that will start some day, as the least fixed point: a task is alive when
    /// each of its needs can be met by workers that are free, may come back, or are held by tasks
    /// that do not wait on a task that is not alive. The rest wait in a cycle, or on one.
    fn alive(&self, pending: &HashMap<String, Request>) -> HashSet<String> {
        let mut alive = HashSet::new();
        loop {
            let mut grew = false;
            for (id, request) in pending {
                if alive.contains(id) {
                    continue;
                }
                let lenders = self.lenders(id, request.parent.as_deref());
                if request
                    .needs
                    .iter()
                    .all(|n| self.need_hopeful(request, &lenders, n, pending, &alive))
                {
                    alive.insert(id.clone());
                    grew = true;
                }
            }
            if !grew {
                return alive;
            }
        }
    }

    /// Whether a task that cannot start now never will: it is not alive, and it is on a cycle of
    /// waits (a task merely waiting on another cycle is left for that cycle's own task to break).
    /// Returns the cycle in words.
    fn deadlock(&self, request: &Request, pending: &HashMap<String, Request>) -> Option<String> {
        // Without a waiting parent there is no waiting-while-holding, so no cycle.
        if self.holdings.values().all(|h| h.waiting_for.is_none()) {
            return None;
        }
        let mut pending = pending.clone();
        pending.insert(request.task_id.clone(), request.clone());
        let alive = self.alive(&pending);
        if alive.contains(&request.task_id) {
            return None;
        }
        let mut path = Vec::new();
        let mut visited = HashSet::new();
        self.cycle_from(
            request,
            &request.task_id,
            &pending,
            &alive,
            &mut visited,
            &mut path,
        )
        .then(|| path.join("; "))
    }

    /// Depth-first along the waits of tasks that are not alive, looking for `target`.
    fn cycle_from(
        &self,
        request: &Request,
        target: &str,
        pending: &HashMap<String, Request>,
        alive: &HashSet<String>,
        visited: &mut HashSet<String>,
        path: &mut Vec<String>,
    ) -> bool {
        if !visited.insert(request.task_id.clone()) {
            return false;
        }
        let lenders = self.lenders(&request.task_id, request.parent.as_deref());
        for need in &request.needs {
            if self.need_hopeful(request, &lenders, need, pending, alive) {
                continue;
            }
            for slot in &need.slots {
                let SlotState::Held { by, .. } = self.slot_state(request, &lenders, slot) else {
                    continue;
                };
                for holder in by {
                    let Some((child, chain)) = self.queued_child(&holder, pending) else {
                        continue;
                    };
                    if alive.contains(&child.task_id) {
                        continue;
                    }
                    let waits: Vec<String> = chain
                        .iter()
                        .skip(1)
                        .map(|c| format!(", which waits for its child {c}"))
                        .collect();
                    path.push(format!(
                        "{} needs {}, and {} is leased by {holder}{}, which waits for its child {}",
                        request.task_id,
                        need.label,
                        slot.name,
                        waits.concat(),
                        child.task_id
                    ));
                    if child.task_id == target
                        || self.cycle_from(child, target, pending, alive, visited, path)
                    {
                        return true;
                    }
                    path.pop();
                }
            }
        }
        false
    }
}

fn task_order(id: &str) -> i64 {
    id.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(i64::MAX)
}

/// The order a pass looks at queued tasks in: oldest first within each space, the spaces taking
/// turns, and the space that started a task most recently last, so a space that floods the queue
/// cannot starve the others of the task cap or of the workers they share. `space_rank` orders the
/// spaces for the turns (their id's number).
pub fn fair_order<T>(
    queued: Vec<T>,
    space_of: impl Fn(&T) -> &str,
    space_rank: impl Fn(&str) -> i64,
    last_space: Option<&str>,
) -> Vec<T> {
    let mut queues: HashMap<String, VecDeque<T>> = HashMap::new();
    for task in queued {
        queues
            .entry(space_of(&task).to_string())
            .or_default()
            .push_back(task);
    }
    let mut spaces: Vec<String> = queues.keys().cloned().collect();
    spaces.sort_by_key(|s| (space_rank(s), s.clone()));
    if let Some(last) = last_space
        && let Some(at) = spaces.iter().position(|s| s == last)
    {
        spaces.rotate_left(at + 1);
    }
    let mut ordered = Vec::new();
    loop {
        let before = ordered.len();
        for space in &spaces {
            if let Some(task) = queues.get_mut(space).and_then(VecDeque::pop_front) {
                ordered.push(task);
            }
        }
        if ordered.len() == before {
            return ordered;
        }
    }
}

/// The invocations of a step that runs on each worker of a pool, at most `max` at once
/// (`Octopus.Action.MaxParallelism`, default 10).
#[derive(Debug, Clone)]
pub struct FanOut {
    total: usize,
    max: usize,
    started: usize,
    running: usize,
}

pub const DEFAULT_MAX_PARALLELISM: usize = 10;

impl FanOut {
    pub fn new(total: usize, max: usize) -> FanOut {
        FanOut {
            total,
            max: max.max(1),
            started: 0,
            running: 0,
        }
    }

    /// The next invocation to start, if one may start now.
    pub fn start_next(&mut self) -> Option<usize> {
        if self.running < self.max && self.started < self.total {
            self.started += 1;
            self.running += 1;
            Some(self.started - 1)
        } else {
            None
        }
    }

    /// One invocation ended.
    pub fn done(&mut self) {
        self.running = self.running.saturating_sub(1);
    }

    pub fn running(&self) -> usize {
        self.running
    }

    pub fn finished(&self) -> bool {
        self.started == self.total && self.running == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(n: i64) -> Slot {
        Slot {
            worker_id: format!("Workers-{n}"),
            name: format!("w{n}"),
            agent: format!("agent{n}"),
            order: n,
            unavailable: None,
            share_limit: None,
        }
    }

    fn request(id: &str, parent: Option<&str>, exclusive: bool, slots: Vec<Slot>) -> Request {
        Request {
            task_id: id.into(),
            space_id: "Spaces-1".into(),
            parent: parent.map(str::to_string),
            exclusive,
            needs: vec![Need {
                key: "A".into(),
                label: "pool 'A'".into(),
                each: false,
                slots,
            }],
        }
    }

    fn start(ledger: &mut Ledger, request: &Request) -> Vec<Lease> {
        match ledger.decide(request, 5, &HashMap::new()) {
            Decision::Start { leases, capped } => {
                ledger.begin(request, leases.clone(), capped);
                leases
            }
            other => panic!("{} did not start: {other:?}", request.task_id),
        }
    }

    #[test]
    fn the_blogs_child_borrows_its_waiting_parents_exclusive_worker() {
        let mut ledger = Ledger::default();
        let parent = request("ServerTasks-1", None, true, vec![slot(1)]);
        start(&mut ledger, &parent);
        let child = request("ServerTasks-2", Some("ServerTasks-1"), true, vec![slot(1)]);
        // Before the parent waits, the child waits for the parent's worker.
        assert!(matches!(ledger.decide(&child, 5, &HashMap::new()),
            Decision::Wait(why) if why.contains("w1 is exclusively leased by ServerTasks-1")));
        ledger.wait_for("ServerTasks-1", Some("ServerTasks-2"));
        let leases = start(&mut ledger, &child);
        assert!(leases[0].borrowed);
        // A stranger still cannot have it.
        let stranger = request("ServerTasks-3", None, false, vec![slot(1)]);
        assert!(matches!(
            ledger.decide(&stranger, 5, &HashMap::new()),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn a_child_in_its_parents_slot_does_not_count_against_the_cap() {
        let mut ledger = Ledger::default();
        let parent = request("ServerTasks-1", None, false, vec![slot(1)]);
        assert!(matches!(
            ledger.decide(&parent, 1, &HashMap::new()),
            Decision::Start { capped: true, .. }
        ));
        ledger.begin(&parent, vec![], true);
        let child = request("ServerTasks-2", Some("ServerTasks-1"), false, vec![slot(2)]);
        assert_eq!(
            ledger.decide(&child, 1, &HashMap::new()),
            Decision::CapReached { running: 1 }
        );
        ledger.wait_for("ServerTasks-1", Some("ServerTasks-2"));
        assert!(matches!(
            ledger.decide(&child, 1, &HashMap::new()),
            Decision::Start { capped: false, .. }
        ));
    }

    #[test]
    fn a_cycle_lending_cannot_break_is_named() {
        // P1 holds w1 and waits for C1, which needs w2; P2 holds w2 and waits for C2, which needs w1.
        let mut ledger = Ledger::default();
        let p1 = request("ServerTasks-1", None, true, vec![slot(1)]);
        let p2 = request("ServerTasks-2", None, true, vec![slot(2)]);
        start(&mut ledger, &p1);
        start(&mut ledger, &p2);
        ledger.wait_for("ServerTasks-1", Some("ServerTasks-3"));
        ledger.wait_for("ServerTasks-2", Some("ServerTasks-4"));
        let c1 = request("ServerTasks-3", Some("ServerTasks-1"), true, vec![slot(2)]);
        let c2 = request("ServerTasks-4", Some("ServerTasks-2"), true, vec![slot(1)]);
        let pending: HashMap<String, Request> = [c1.clone(), c2.clone()]
            .into_iter()
            .map(|r| (r.task_id.clone(), r))
            .collect();
        match ledger.decide(&c1, 5, &pending) {
            Decision::Deadlock(why) => {
                assert!(why.contains("w2 is leased by ServerTasks-2"), "{why}");
                assert!(
                    why.contains("which waits for its child ServerTasks-4"),
                    "{why}"
                );
                assert!(why.contains("w1 is leased by ServerTasks-1"), "{why}");
                assert!(
                    why.contains("which waits for its child ServerTasks-3"),
                    "{why}"
                );
            }
            other => panic!("no deadlock found: {other:?}"),
        }
        // A second worker in C1's pool that is merely busy is a way out: a wait, not a deadlock.
        let mut third = slot(3);
        third.unavailable = Some("w3 is not connected".into());
        let c1_more = request(
            "ServerTasks-3",
            Some("ServerTasks-1"),
            true,
            vec![slot(2), third],
        );
        assert!(matches!(
            ledger.decide(&c1_more, 5, &pending),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn fan_out_keeps_to_its_parallelism() {
        let mut fan = FanOut::new(5, 2);
        assert_eq!(
            (fan.start_next(), fan.start_next(), fan.start_next()),
            (Some(0), Some(1), None)
        );
        fan.done();
        assert_eq!(fan.start_next(), Some(2));
        assert!(!fan.finished());
    }
}
