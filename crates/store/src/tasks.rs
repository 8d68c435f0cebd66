//! Server tasks and their log lines.

use crate::engine::{Chunk, Engine as _, EngineTx, on_engine};
use crate::{Result, Store, StoreError};
use muster_core::resources::{Event, LogLine, Task};
use muster_core::time::{format_date, parse_date};
use muster_core::{IdKind, LogCategory, TaskState, parse_id};

/// A filtered, paged read of tasks, newest first.
#[derive(Debug, Default, Clone)]
pub struct TaskQuery {
    /// None = every space.
    pub space_ids: Option<Vec<String>>,
    pub states: Option<Vec<TaskState>>,
    pub ids: Option<Vec<String>>,
    pub name: Option<String>,
    pub partial_name: Option<String>,
    pub has_warnings_or_errors: Option<bool>,
    pub skip: u64,
    pub take: u64,
}

fn task_num(id: &str) -> Option<i64> {
    parse_id(IdKind::ServerTask, id)
}

fn num_of(task: &Task) -> Result<i64> {
    task_num(&task.id).ok_or_else(|| StoreError::Corrupt(format!("bad task id {}", task.id)))
}

impl Store {
    /// Gives a new task its id and commits it, in one transaction (one disk sync on the way to
    /// the client's 201); it exists for clients once this returns.
    ///
    /// `event` is the event that records it (who queued it), written in the same commit with an id
    /// of its own.
    pub async fn insert_new_task(
        &self,
        task: &mut Task,
        event: impl FnOnce(&Task) -> Event,
    ) -> Result<()> {
        on_engine!(&*self.engine, e => {
            let mut tx = e.begin().await?;
            let num = tx.next_number(IdKind::ServerTask.prefix()).await?;
            task.id = IdKind::ServerTask.format(num);
            tx.insert_task(num, task).await?;
            let mut event = event(task);
            event.id = IdKind::Event.format(tx.next_number(IdKind::Event.prefix()).await?);
            crate::Row::of(&event).write(&mut tx, &self.sealer).await?;
            tx.notify(&self.payload(&crate::Note::NewTask(task.id.clone()))).await?;
            tx.commit().await?;
        });
        self.committed_new_task(task);
        Ok(())
    }

    /// Commits a new task together with documents that belong to it (a runbook run and its
    /// task): both exist, or neither.
    pub async fn insert_task_with(&self, task: &Task, rows: Vec<crate::Row>) -> Result<()> {
        let num = num_of(task)?;
        on_engine!(&*self.engine, e => {
            let mut tx = e.begin().await?;
            for row in &rows {
                row.write(&mut tx, &self.sealer).await?;
            }
            tx.insert_task(num, task).await?;
            self.workers_note(&mut tx, rows.iter().map(|r| r.kind)).await?;
            tx.notify(&self.payload(&crate::Note::NewTask(task.id.clone()))).await?;
            tx.commit().await?;
        });
        let kinds: Vec<crate::DocKind> = rows.iter().map(|r| r.kind).collect();
        for kind in kinds {
            self.bump_workers_generation(kind);
        }
        self.committed_new_task(task);
        Ok(())
    }

    /// Writes every field of a task.
    pub async fn update_task(&self, task: &Task) -> Result<()> {
        let num = num_of(task)?;
        let guard = self.guard(|| vec![crate::Note::Task(task.id.clone())]);
        on_engine!(&*self.engine, e => e.update_task(num, task, &guard).await)
    }

    /// `transition_task` for many tasks in one transaction (one disk sync): a dispatch pass claims
    /// every task it starts at once. Returns, for each, whether it moved.
    pub async fn transition_tasks(&self, tasks: &[Task], from: TaskState) -> Result<Vec<bool>> {
        let numbered = tasks
            .iter()
            .map(|task| Ok((num_of(task)?, task)))
            .collect::<Result<Vec<_>>>()?;
        let guard = self.guard(|| {
            tasks
                .iter()
                .map(|t| crate::Note::Task(t.id.clone()))
                .collect()
        });
        on_engine!(&*self.engine, e => e.transition_tasks(&numbered, from, &guard).await)
    }

    /// Moves a task from `from` to the task's state, and writes it, only if it is still in `from`.
    /// This is how a task is claimed: two claimers cannot both win.
    pub async fn transition_task(&self, task: &Task, from: TaskState) -> Result<bool> {
        let numbered = [(num_of(task)?, task)];
        let guard = self.guard(|| vec![crate::Note::Task(task.id.clone())]);
        let moved =
            on_engine!(&*self.engine, e => e.transition_tasks(&numbered, from, &guard).await)?;
        Ok(moved == [true])
    }

    pub async fn get_task(&self, id: &str) -> Result<Option<Task>> {
        let Some(num) = task_num(id) else {
            return Ok(None);
        };
        on_engine!(&*self.engine, e => e.task(num).await)
    }

    /// Tasks in the given states, oldest first (the order the queue is served in).
    pub async fn tasks_in_states(&self, states: &[TaskState]) -> Result<Vec<Task>> {
        on_engine!(&*self.engine, e => e.tasks_in_states(states).await)
    }

    /// The tasks that ran on external workers at some time between `from` and `to`, for utilization.
    pub async fn tasks_on_workers_between(
        &self,
        from: &muster_core::time::Timestamp,
        to: &muster_core::time::Timestamp,
    ) -> Result<Vec<Task>> {
        let (from, to) = (format_date(from), format_date(to));
        on_engine!(&*self.engine, e => e.tasks_on_workers_between(&from, &to).await)
    }

    /// A page of tasks, newest first, and the number that match.
    pub async fn list_tasks(&self, q: &TaskQuery) -> Result<(u64, Vec<Task>)> {
        on_engine!(&*self.engine, e => e.list_tasks(q).await)
    }

    /// Appends log lines of any tasks in one transaction: the log writer batches lines this way so
    /// that a chatty script costs one commit per batch, not per line. Each line is (task id, line,
    /// the agent's sequence number of it when it came from an agent). Each task's lines of the batch
    /// become one chunk row; a task's lines must come in sequence order.
    pub async fn append_logs(&self, lines: &[(String, LogLine, Option<u64>)]) -> Result<()> {
        self.append_logs_and_end(lines, &[]).await.map(|_| ())
    }

    /// Appends log lines as `append_logs` does and, in the same transaction, writes the final
    /// state of each of `ended` if it is still Executing or Cancelling: a task's last lines and its
    /// end are one commit, and tasks that end together share it (group commit). Returns, for each
    /// of `ended`, whether it was written.
    pub async fn append_logs_and_end(
        &self,
        lines: &[(String, LogLine, Option<u64>)],
        ended: &[Task],
    ) -> Result<Vec<bool>> {
        let mut chunks: Vec<(i64, Vec<StoredLineOut<'_>>)> = Vec::new();
        let mut chunk_of_task: std::collections::HashMap<i64, (usize, usize)> = Default::default();
        // A task's lines come in runs, and many share a millisecond: each id is parsed and each
        // date written once per run, not once per line.
        let mut last_task: Option<(&str, Option<i64>)> = None;
        let mut last_date: Option<(i64, String)> = None;
        for (task_id, line, source_seq) in lines {
            let num = match last_task {
                Some((id, num)) if id == task_id.as_str() => num,
                _ => task_num(task_id),
            };
            last_task = Some((task_id.as_str(), num));
            let Some(num) = num else {
                continue;
            };
            // A chunk holds at most about 1 MiB of messages: a reader parses a whole chunk for
            // even one of its lines, and a row must stay far below SQLite's limit.
            let bytes = line.message_text.len() + 64;
            let (index, size) = chunk_of_task.entry(num).or_insert_with(|| {
                chunks.push((num, Vec::new()));
                (chunks.len() - 1, 0)
            });
            if *size > 0 && *size + bytes > CHUNK_BYTES {
                chunks.push((num, Vec::new()));
                *index = chunks.len() - 1;
                *size = 0;
            }
            *size += bytes;
            let index = *index;
            let millis = line.occurred_at.timestamp_millis();
            let date = match &last_date {
                Some((at, text)) if *at == millis => text.clone(),
                _ => {
                    let text = format_date(&line.occurred_at);
                    last_date = Some((millis, text.clone()));
                    text
                }
            };
            chunks[index].1.push(StoredLineOut(
                line.seq,
                date,
                line.category.as_str(),
                line.step,
                source_seq.map(|n| n.min(i64::MAX as u64) as i64),
                &line.message_text,
            ));
        }
        if chunks.is_empty() && ended.is_empty() {
            return Ok(Vec::new());
        }
        let chunks = chunks
            .iter()
            .map(|(num, group)| chunk_of(*num, group))
            .collect::<Result<Vec<_>>>()?;
        let ended = ended
            .iter()
            .map(|task| Ok((num_of(task)?, task)))
            .collect::<Result<Vec<_>>>()?;
        let guard = self.guard(|| {
            let mut notes: Vec<crate::Note> = Vec::new();
            for chunk in &chunks {
                let note = crate::Note::Lines(IdKind::ServerTask.format(chunk.task_num));
                if notes.last() != Some(&note) {
                    notes.push(note);
                }
            }
            notes.extend(ended.iter().map(|(_, t)| crate::Note::Task(t.id.clone())));
            notes
        });
        on_engine!(&*self.engine, e => e.append_chunks_and_end(&chunks, &ended, &guard).await)
    }

    /// Calls `each` with the task's stored lines after sequence number `after`, in order (and
    /// whether the line ends its chunk), until it returns false or the lines run out. Chunks are
    /// read one at a time, so memory stays bounded however long the log.
    async fn each_log_line(
        &self,
        task_id: &str,
        after: i64,
        mut each: impl FnMut(&StoredLine<'_>, bool) -> Result<bool>,
    ) -> Result<()> {
        let Some(num) = task_num(task_id) else {
            return Ok(());
        };
        let mut cursor = after;
        loop {
            let chunk = on_engine!(&*self.engine, e => e.chunk_after(num, cursor).await)?;
            let Some((last, text)) = chunk else {
                return Ok(());
            };
            let lines: Vec<StoredLine<'_>> = serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("a log chunk does not read: {e}")))?;
            let count = lines.len();
            for (index, line) in lines.iter().enumerate().filter(|(_, l)| l.0 > cursor) {
                if !each(line, index + 1 == count)? {
                    return Ok(());
                }
            }
            cursor = last;
        }
    }

    /// The log lines of a task after sequence number `after`, in order: at most `limit` lines
    /// and about [`PAGE_BYTES`] of messages (always at least one line), so that no read of a long
    /// log holds much of it in memory. Page on with the last line's `seq` until it answers none.
    pub async fn logs(&self, task_id: &str, after: i64, limit: i64) -> Result<Vec<LogLine>> {
        let mut out = Vec::new();
        if limit <= 0 {
            return Ok(out);
        }
        let mut bytes = 0;
        self.each_log_line(task_id, after, |line, _| {
            bytes += line.5.len();
            out.push(log_line(line)?);
            Ok((out.len() as i64) < limit && bytes < PAGE_BYTES)
        })
        .await?;
        Ok(out)
    }

    /// The last lines of a task's log, in order: at most `limit` lines and about `max_bytes` of
    /// messages (at least one line). Chunks are read from the end, so the cost is that of the
    /// lines answered, not of the whole log. Also answers how many lines come before them.
    pub async fn logs_tail(
        &self,
        task_id: &str,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<LogLine>, i64)> {
        let Some(num) = task_num(task_id) else {
            return Ok((Vec::new(), 0));
        };
        let mut newest_first: Vec<LogLine> = Vec::new();
        let mut bytes = 0;
        let mut before = i64::MAX;
        'chunks: while newest_first.len() < limit {
            let row = on_engine!(&*self.engine, e => e.chunk_before(num, before).await)?;
            let Some((first, text)) = row else { break };
            before = first;
            let lines: Vec<StoredLine<'_>> = serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("a log chunk does not read: {e}")))?;
            for line in lines.iter().rev() {
                if newest_first.len() >= limit || (bytes >= max_bytes && !newest_first.is_empty()) {
                    break 'chunks;
                }
                bytes += line.5.len();
                newest_first.push(log_line(line)?);
            }
        }
        newest_first.reverse();
        let earlier = newest_first.first().map_or(0, |l| (l.seq - 1).max(0));
        Ok((newest_first, earlier))
    }

    /// A page of a task's log as `raw` text (`HH:MM:SS  Category | message` lines) after `after`:
    /// whole chunks, until at least `limit` lines or about [`PAGE_BYTES`] of text. Returns (last
    /// sequence number, lines, text), or None after the last line.
    pub async fn raw_log_page(
        &self,
        task_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Option<(i64, i64, String)>> {
        let (mut last, mut count, mut text) = (after, 0i64, String::new());
        if limit <= 0 {
            return Ok(None);
        }
        self.each_log_line(task_id, after, |line, chunk_end| {
            // The time of day of an RFC 3339 date: "2026-12-02T04:41:21.13Z" gives "04:41:21".
            let time = line.1.get(11..19).unwrap_or(line.1);
            // `HH:MM:SS  Category | message`, the category padded to 8, written without the
            // formatting machinery: this runs for every line of a log read whole.
            text.push_str(time);
            text.push_str("  ");
            text.push_str(line.2);
            for _ in line.2.len()..8 {
                text.push(' ');
            }
            text.push_str(" | ");
            text.push_str(&line.5);
            text.push('\n');
            last = line.0;
            count += 1;
            Ok((count < limit && text.len() < PAGE_BYTES) || !chunk_end)
        })
        .await?;
        Ok((count > 0).then_some((last, count, text)))
    }

    /// About how many bytes a task's stored log takes (its chunks' text).
    pub async fn log_bytes(&self, task_id: &str) -> Result<i64> {
        Ok(self.log_summary(task_id).await?.bytes)
    }

    /// The highest sequence number logged for a task (0 when none).
    pub async fn last_log_seq(&self, task_id: &str) -> Result<i64> {
        Ok(self.log_summary(task_id).await?.last_seq)
    }

    /// The agent's sequence number of the last stored line that came from an agent (0 when none):
    /// where a re-attached server resumes reading the script's output.
    pub async fn last_source_seq(&self, task_id: &str) -> Result<u64> {
        Ok(self.log_summary(task_id).await?.last_source_seq.max(0) as u64)
    }

    async fn log_summary(&self, task_id: &str) -> Result<crate::engine::LogSummary> {
        let Some(num) = task_num(task_id) else {
            return Ok(Default::default());
        };
        on_engine!(&*self.engine, e => e.log_summary(num).await)
    }
}

/// About how many bytes of messages one read of a log answers at most.
pub const PAGE_BYTES: usize = 1024 * 1024;

fn log_line(line: &StoredLine<'_>) -> Result<LogLine> {
    Ok(LogLine {
        seq: line.0,
        occurred_at: parse_date(line.1)
            .ok_or_else(|| StoreError::Corrupt(format!("bad date {}", line.1)))?,
        category: LogCategory::parse(line.2).unwrap_or(LogCategory::Info),
        message_text: line.5.to_string(),
        step: line.3,
    })
}

/// About how many bytes of messages one chunk holds at most.
const CHUNK_BYTES: usize = 1024 * 1024;

/// One chunk: a run of one task's lines.
fn chunk_of(num: i64, group: &[StoredLineOut<'_>]) -> Result<Chunk> {
    Ok(Chunk {
        task_num: num,
        first_seq: group[0].0,
        last_seq: group[group.len() - 1].0,
        max_source_seq: group.iter().filter_map(|l| l.4).max(),
        line_count: group.len() as i64,
        lines: serde_json::to_string(group).map_err(|e| StoreError::Corrupt(e.to_string()))?,
    })
}

/// A log line as a chunk stores it: [seq, occurred_at, category, step, source_seq, message].
#[derive(serde::Serialize)]
struct StoredLineOut<'a>(i64, String, &'a str, Option<i64>, Option<i64>, &'a str);

/// A stored log line as read back; the message is borrowed from the chunk unless it had escapes.
#[derive(serde::Deserialize)]
struct StoredLine<'a>(
    i64,
    &'a str,
    &'a str,
    Option<i64>,
    #[allow(dead_code)] Option<i64>,
    #[serde(borrow)] std::borrow::Cow<'a, str>,
);
