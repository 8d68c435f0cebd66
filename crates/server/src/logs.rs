//! Task logs: each line gets its sequence number here and is committed by one writer that batches
//! whatever lines are waiting into one transaction; the writer then publishes the batch to live
//! followers. A line is published only once committed, so a line any follower saw survives a crash.

use muster_core::LogCategory;
use muster_core::resources::{LogLine, Task};
use muster_core::time::Timestamp;
use muster_store::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc, oneshot};

#[derive(Debug, Clone)]
pub enum LogEvent {
    Line(LogLine),
    /// The task has reached its final state; no more lines come.
    Done,
}

struct Live {
    next_seq: i64,
    events: broadcast::Sender<LogEvent>,
    /// Bytes of messages taken for the task since it was opened, against the log limit.
    bytes: u64,
    /// The limit was reached: later lines are dropped, but for the task's final message.
    capped: bool,
}

enum WriterMessage {
    /// A line of a task, with the agent's sequence number of it when it came from an agent.
    Line(String, LogLine, Option<u64>),
    Flush(oneshot::Sender<()>),
    /// A task's final state, committed with its last lines; answers whether it was written.
    End(Box<Task>, oneshot::Sender<bool>),
}

type LiveMap = Arc<Mutex<HashMap<String, Live>>>;

pub struct LogHub {
    live: LiveMap,
    /// The most bytes of messages one task's log keeps (`--task-log-limit-mb`).
    limit: u64,
    /// Lines appended and not yet committed, and a signal each time a batch commits: a chatty
    /// script waits for room (`wait_for_room`) instead of filling memory faster than the disk takes it.
    backlog: Arc<Backlog>,
    writer: mpsc::UnboundedSender<WriterMessage>,
    /// The id of every task whose state changed, for followers waiting on a task to start or end.
    changes: broadcast::Sender<String>,
}

/// How many lines a task's live followers may fall behind before they catch up from the store.
const LIVE_LINES: usize = 128;

/// How many waiting lines one commit takes at most.
const BATCH: usize = 8192;
/// How many uncommitted lines make a script's reader wait.
const MAX_BACKLOG: usize = 4 * BATCH;

#[derive(Default)]
struct Backlog {
    lines: std::sync::atomic::AtomicUsize,
    committed: tokio::sync::Notify,
}

impl LogHub {
    pub fn start(store: Store, limit: u64) -> LogHub {
        let (writer, receiver) = mpsc::unbounded_channel();
        let live: LiveMap = Arc::default();
        let backlog: Arc<Backlog> = Arc::default();
        tokio::spawn(write_lines(store, receiver, live.clone(), backlog.clone()));
        let (changes, _) = broadcast::channel(1024);
        LogHub {
            live,
            limit,
            backlog,
            writer,
            changes,
        }
    }

    /// Tells followers that a task's stored state changed.
    pub fn changed(&self, task_id: &str) {
        let _ = self.changes.send(task_id.to_string());
    }

    /// Tells every follower to read its task again (notes from other nodes may have been lost).
    pub fn changed_all(&self) {
        let _ = self.changes.send(String::new());
    }

    pub fn watch_changes(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// Starts taking lines for a task whose last stored line is `last_seq`.
    pub fn open(&self, task_id: &str, last_seq: i64) {
        // Allocated whole for every task; a follower that falls further behind reads the store.
        let (events, _) = broadcast::channel(LIVE_LINES);
        self.live.lock().expect("log hub lock").insert(
            task_id.to_string(),
            Live {
                next_seq: last_seq + 1,
                events,
                bytes: 0,
                capped: false,
            },
        );
    }

    pub fn append(&self, task_id: &str, category: LogCategory, text: impl Into<String>) {
        self.append_line(task_id, None, category, text.into(), None, false);
    }

    /// Appends a task's final message, which the log limit never drops.
    pub fn append_final(&self, task_id: &str, category: LogCategory, text: impl Into<String>) {
        self.append_line(task_id, None, category, text.into(), None, true);
    }

    /// Appends a line of one step of a runbook run (its activity node, from 1).
    pub fn append_step(
        &self,
        task_id: &str,
        step: i64,
        category: LogCategory,
        text: impl Into<String>,
    ) {
        self.append_line(task_id, Some(step), category, text.into(), None, false);
    }

    /// Appends a line an agent sent, stored with the agent's sequence number of it and, where the
    /// worker said, the time it read it: lines printed while the server was away keep their time.
    /// A time ahead of the server's clock (a skewed worker) is taken as now.
    pub fn append_from_agent(
        &self,
        task_id: &str,
        category: LogCategory,
        text: String,
        agent_seq: u64,
        occurred_at: Option<Timestamp>,
    ) {
        let at = occurred_at.map(|at| at.min(muster_core::time::now()));
        self.append_line(task_id, None, category, text, Some((agent_seq, at)), false);
    }

    /// Appends a line; `always` lines (a task's final message) pass the log limit.
    fn append_line(
        &self,
        task_id: &str,
        step: Option<i64>,
        category: LogCategory,
        text: String,
        // An agent's line: its sequence number, and its time where the agent said.
        from_agent: Option<(u64, Option<Timestamp>)>,
        always: bool,
    ) {
        let (agent_seq, occurred_at) = match from_agent {
            Some((seq, at)) => (Some(seq), at),
            None => (None, None),
        };
        let mut live = self.live.lock().expect("log hub lock");
        let Some(entry) = live.get_mut(task_id) else {
            tracing::warn!(
                task_id,
                "a log line for a task that is not open was dropped"
            );
            return;
        };
        if !always {
            if entry.capped {
                return;
            }
            entry.bytes += text.len() as u64;
            if entry.bytes > self.limit {
                // One line says so, in place of the line that went over.
                entry.capped = true;
                let notice = format!(
                    "This task's log reached its limit of {} MiB (--task-log-limit-mb): later output \
                     is not stored. The script runs on to its end.",
                    self.limit / (1024 * 1024)
                );
                drop(live);
                return self.append_line(task_id, step, LogCategory::Warning, notice, None, true);
            }
        }
        let line = LogLine {
            seq: entry.next_seq,
            occurred_at: occurred_at.unwrap_or_else(muster_core::time::now),
            category,
            message_text: text,
            step,
        };
        entry.next_seq += 1;
        self.backlog
            .lines
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = self
            .writer
            .send(WriterMessage::Line(task_id.to_string(), line, agent_seq));
    }

    /// Live events of a task that is running, or None when it is not (its log is all stored).
    pub fn subscribe(&self, task_id: &str) -> Option<broadcast::Receiver<LogEvent>> {
        self.live
            .lock()
            .expect("log hub lock")
            .get(task_id)
            .map(|live| live.events.subscribe())
    }

    /// Waits while more lines wait for their commit than the writer takes in a few batches.
    pub async fn wait_for_room(&self) {
        use std::sync::atomic::Ordering;
        while self.backlog.lines.load(Ordering::SeqCst) > MAX_BACKLOG {
            let committed = self.backlog.committed.notified();
            if self.backlog.lines.load(Ordering::SeqCst) <= MAX_BACKLOG {
                break;
            }
            committed.await;
        }
    }

    /// Waits until every line appended so far is committed.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.writer.send(WriterMessage::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// Stores a task's final state (if it is still Executing or Cancelling) in the same commit as
    /// every line appended before; tasks that end together share one commit. Returns whether the
    /// state was written.
    pub async fn end_task(&self, task: Task) -> bool {
        let (done, wait) = oneshot::channel();
        if self
            .writer
            .send(WriterMessage::End(Box::new(task), done))
            .is_err()
        {
            return false;
        }
        wait.await.unwrap_or(false)
    }

    /// Ends a task's log: followers are told, after the final state is stored.
    pub fn close(&self, task_id: &str) {
        if let Some(live) = self.live.lock().expect("log hub lock").remove(task_id) {
            let _ = live.events.send(LogEvent::Done);
        }
        self.changed(task_id);
    }
}

/// Final states written without the lines they came with, once those could not be stored.
async fn end_alone(store: &Store, ended: &[Task]) -> Vec<bool> {
    if ended.is_empty() {
        return Vec::new();
    }
    let mut attempt = 0;
    loop {
        match store.append_logs_and_end(&[], ended).await {
            Ok(written) => return written,
            Err(muster_store::StoreError::Fenced(_)) => return vec![false; ended.len()],
            Err(error) => {
                attempt += 1;
                tracing::error!(%error, attempt, "cannot store tasks' final states; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100 * attempt.min(50))).await;
            }
        }
    }
}

async fn write_lines(
    store: Store,
    mut receiver: mpsc::UnboundedReceiver<WriterMessage>,
    live: LiveMap,
    backlog: Arc<Backlog>,
) {
    let mut lines = Vec::new();
    let mut flushes = Vec::new();
    let mut ended: Vec<Task> = Vec::new();
    let mut answers: Vec<oneshot::Sender<bool>> = Vec::new();
    while let Some(first) = receiver.recv().await {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                WriterMessage::Line(task, line, agent_seq) => lines.push((task, line, agent_seq)),
                WriterMessage::Flush(done) => flushes.push(done),
                WriterMessage::End(task, done) => {
                    ended.push(*task);
                    answers.push(done);
                }
            }
            if lines.len() < BATCH {
                next = receiver.try_recv().ok();
            }
        }
        let mut attempt = 0;
        let written = loop {
            match store.append_logs_and_end(&lines, &ended).await {
                Ok(written) => break written,
                // Another node dispatches now and owns these tasks: nothing here may land.
                Err(muster_store::StoreError::Fenced(why)) => {
                    tracing::error!(lost = lines.len(), "task log lines refused: {why}");
                    break vec![false; ended.len()];
                }
                Err(error) => {
                    attempt += 1;
                    tracing::error!(%error, attempt, "cannot store task log lines; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
                    if attempt >= 50 {
                        tracing::error!(lost = lines.len(), "giving up on storing task log lines");
                        // The tasks' ends must not go down with lines that cannot be stored.
                        break end_alone(&store, &ended).await;
                    }
                }
            }
        };
        // Published once committed, in order, before any flush is answered: a follower told the
        // task ended has had every line.
        backlog
            .lines
            .fetch_sub(lines.len(), std::sync::atomic::Ordering::SeqCst);
        backlog.committed.notify_waiters();
        {
            let live = live.lock().expect("log hub lock");
            for (task, line, _) in lines.drain(..) {
                if let Some(entry) = live.get(&task) {
                    let _ = entry.events.send(LogEvent::Line(line));
                }
            }
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
        ended.clear();
        for (index, done) in answers.drain(..).enumerate() {
            let _ = done.send(written.get(index).copied().unwrap_or(false));
        }
    }
}
