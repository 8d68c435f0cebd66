//! Server tasks and their log lines.

use crate::{Result, Store, StoreError};
use muster_core::resources::{Event, LogLine, Task};
use muster_core::time::{format_date, parse_date};
use muster_core::{IdKind, LogCategory, TaskState, parse_id};
use sqlx::Row as _;
use sqlx::sqlite::SqliteRow;

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

/// Writes every field of a task that is still in the state ?18.
const UPDATE_TASK_FROM: &str = "UPDATE tasks SET space_id = ?2, name = ?3, description = ?4, arguments = ?5, state = ?6, \
    error_message = ?7, queue_time = ?8, queue_time_expiry = ?9, start_time = ?10, completed_time = ?11, \
    last_updated_time = ?12, server_node = ?13, has_warnings = ?14, queue_reason = ?15, worker_name = ?16, \
    worker_id = ?17 WHERE num = ?1 AND state = ?18";

/// Writes every field of a task that is still running (Executing or Cancelling).
const UPDATE_TASK_FROM_RUNNING: &str = "UPDATE tasks SET space_id = ?2, name = ?3, description = ?4, arguments = ?5, state = ?6, \
    error_message = ?7, queue_time = ?8, queue_time_expiry = ?9, start_time = ?10, completed_time = ?11, \
    last_updated_time = ?12, server_node = ?13, has_warnings = ?14, queue_reason = ?15, worker_name = ?16, \
    worker_id = ?17 WHERE num = ?1 AND state IN ('Executing', 'Cancelling')";

const TASK_COLUMNS: &str = "num, space_id, name, description, arguments, state, error_message, queue_time, \
    queue_time_expiry, start_time, completed_time, last_updated_time, server_node, has_warnings, queue_reason, worker_name, worker_id";

fn task_num(id: &str) -> Option<i64> {
    parse_id(IdKind::ServerTask, id)
}

fn date_column(row: &SqliteRow, column: &str) -> Result<Option<muster_core::time::Timestamp>> {
    let text: Option<String> = row.try_get(column)?;
    match text {
        None => Ok(None),
        Some(text) => parse_date(&text)
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt(format!("bad date {text}"))),
    }
}

fn read_task(row: &SqliteRow) -> Result<Task> {
    let num: i64 = row.try_get("num")?;
    let arguments: String = row.try_get("arguments")?;
    let state: String = row.try_get("state")?;
    Ok(Task {
        id: IdKind::ServerTask.format(num),
        space_id: row.try_get("space_id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        arguments: serde_json::from_str(&arguments)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        state: TaskState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("bad task state {state}")))?,
        error_message: row.try_get("error_message")?,
        queue_time: date_column(row, "queue_time")?.unwrap_or_default(),
        queue_time_expiry: date_column(row, "queue_time_expiry")?,
        start_time: date_column(row, "start_time")?,
        completed_time: date_column(row, "completed_time")?,
        last_updated_time: date_column(row, "last_updated_time")?.unwrap_or_default(),
        server_node: row.try_get("server_node")?,
        has_warnings_or_errors: row.try_get::<i64, _>("has_warnings")? != 0,
        queue_reason: row.try_get("queue_reason")?,
        worker_name: row.try_get("worker_name")?,
        worker_id: row.try_get("worker_id")?,
    })
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
        let mut tx = self.pool.begin().await?;
        let num = next_number(&mut tx, IdKind::ServerTask).await?;
        task.id = IdKind::ServerTask.format(num);
        let sql = format!(
            "INSERT INTO tasks ({TASK_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
        );
        bind_task(sqlx::query(sqlx::AssertSqlSafe(sql)), num, task)
            .execute(&mut *tx)
            .await?;
        let mut event = event(task);
        event.id = IdKind::Event.format(next_number(&mut tx, IdKind::Event).await?);
        crate::Row::of(&event).write(&mut tx, &self.sealer).await?;
        tx.commit().await?;
        self.committed_new_task(task);
        Ok(())
    }

    /// Commits a new task together with documents that belong to it (a runbook run and its
    /// task): both exist, or neither.
    pub async fn insert_task_with(&self, task: &Task, rows: Vec<crate::Row>) -> Result<()> {
        let num = task_num(&task.id)
            .ok_or_else(|| StoreError::Corrupt(format!("bad task id {}", task.id)))?;
        let mut tx = self.pool.begin().await?;
        for row in &rows {
            row.write(&mut tx, &self.sealer).await?;
        }
        let kinds: Vec<crate::DocKind> = rows.iter().map(|r| r.kind).collect();
        let sql = format!(
            "INSERT INTO tasks ({TASK_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
        );
        bind_task(sqlx::query(sqlx::AssertSqlSafe(sql)), num, task)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        for kind in kinds {
            self.bump_workers_generation(kind);
        }
        self.committed_new_task(task);
        Ok(())
    }

    /// Writes every field of a task.
    pub async fn update_task(&self, task: &Task) -> Result<()> {
        let num = task_num(&task.id)
            .ok_or_else(|| StoreError::Corrupt(format!("bad task id {}", task.id)))?;
        let sql = "UPDATE tasks SET space_id = ?2, name = ?3, description = ?4, arguments = ?5, state = ?6, \
            error_message = ?7, queue_time = ?8, queue_time_expiry = ?9, start_time = ?10, completed_time = ?11, \
            last_updated_time = ?12, server_node = ?13, has_warnings = ?14, queue_reason = ?15, worker_name = ?16, \
            worker_id = ?17 WHERE num = ?1";
        bind_task(sqlx::query(sql), num, task)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// `transition_task` for many tasks in one transaction (one disk sync): a dispatch pass claims
    /// every task it starts at once. Returns, for each, whether it moved.
    pub async fn transition_tasks(&self, tasks: &[Task], from: TaskState) -> Result<Vec<bool>> {
        let mut tx = self.pool.begin().await?;
        let mut moved = Vec::with_capacity(tasks.len());
        for task in tasks {
            let num = task_num(&task.id)
                .ok_or_else(|| StoreError::Corrupt(format!("bad task id {}", task.id)))?;
            let done = bind_task(sqlx::query(UPDATE_TASK_FROM), num, task)
                .bind(from.as_str())
                .execute(&mut *tx)
                .await?;
            moved.push(done.rows_affected() == 1);
        }
        tx.commit().await?;
        Ok(moved)
    }

    /// Moves a task from `from` to the task's state, and writes it, only if it is still in `from`.
    /// This is how a task is claimed: two claimers cannot both win.
    pub async fn transition_task(&self, task: &Task, from: TaskState) -> Result<bool> {
        let num = task_num(&task.id)
            .ok_or_else(|| StoreError::Corrupt(format!("bad task id {}", task.id)))?;
        let done = bind_task(sqlx::query(UPDATE_TASK_FROM), num, task)
            .bind(from.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn get_task(&self, id: &str) -> Result<Option<Task>> {
        let Some(num) = task_num(id) else {
            return Ok(None);
        };
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE num = ?1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(num)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(read_task).transpose()
    }

    /// Tasks in the given states, oldest first (the order the queue is served in).
    pub async fn tasks_in_states(&self, states: &[TaskState]) -> Result<Vec<Task>> {
        let placeholders = (1..=states.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE state IN ({placeholders}) ORDER BY num"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for state in states {
            query = query.bind(state.as_str());
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(read_task).collect()
    }

    /// The tasks that ran on external workers at some time between `from` and `to`, for utilization.
    pub async fn tasks_on_workers_between(
        &self,
        from: &muster_core::time::Timestamp,
        to: &muster_core::time::Timestamp,
    ) -> Result<Vec<Task>> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE worker_id IS NOT NULL AND start_time IS NOT NULL \
             AND start_time < ?1 AND (completed_time IS NULL OR completed_time > ?2) ORDER BY num"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(format_date(to))
            .bind(format_date(from))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(read_task).collect()
    }

    /// A page of tasks, newest first, and the number that match.
    pub async fn list_tasks(&self, q: &TaskQuery) -> Result<(u64, Vec<Task>)> {
        let mut clauses: Vec<String> = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        let mut list = |clauses: &mut Vec<String>, column: &str, values: Vec<String>| {
            let start = binds.len();
            let marks: Vec<String> = (0..values.len())
                .map(|i| format!("?{}", start + i + 1))
                .collect();
            binds.extend(values);
            clauses.push(if marks.is_empty() {
                "0".into()
            } else {
                format!("{column} IN ({})", marks.join(", "))
            });
        };
        if let Some(spaces) = &q.space_ids {
            list(&mut clauses, "space_id", spaces.clone());
        }
        if let Some(states) = &q.states {
            list(
                &mut clauses,
                "state",
                states.iter().map(|s| s.as_str().to_string()).collect(),
            );
        }
        if let Some(ids) = &q.ids {
            list(
                &mut clauses,
                "CAST(num AS TEXT)",
                ids.iter()
                    .filter_map(|id| task_num(id))
                    .map(|n| n.to_string())
                    .collect(),
            );
        }
        if let Some(name) = &q.name {
            binds.push(name.clone());
            clauses.push(format!("name = ?{} COLLATE NOCASE", binds.len()));
        }
        if let Some(partial) = &q.partial_name {
            binds.push(partial.to_lowercase());
            clauses.push(format!("instr(lower(name), ?{}) > 0", binds.len()));
        }
        if let Some(flag) = q.has_warnings_or_errors {
            clauses.push(format!("has_warnings = {}", i64::from(flag)));
        }
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let count_sql = format!("SELECT COUNT(*) FROM tasks {filter}");
        let mut count = sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(count_sql));
        for b in &binds {
            count = count.bind(b);
        }
        let (total,) = count.fetch_one(&self.pool).await?;
        let page_sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks {filter} ORDER BY num DESC LIMIT {} OFFSET {}",
            q.take.min(i64::MAX as u64),
            q.skip.min(i64::MAX as u64)
        );
        let mut page = sqlx::query(sqlx::AssertSqlSafe(page_sql));
        for b in &binds {
            page = page.bind(b);
        }
        let rows = page.fetch_all(&self.pool).await?;
        Ok((
            total as u64,
            rows.iter().map(read_task).collect::<Result<_>>()?,
        ))
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
        // One statement needs no transaction around it: a task that ends with its lines already
        // stored, or one task's lines, cost one round trip to SQLite.
        if chunks.len() + ended.len() == 1 {
            if let Some((num, group)) = chunks.first() {
                chunk_insert(*num, group)?.execute(&self.pool).await?;
                return Ok(Vec::new());
            }
            let task = &ended[0];
            let done = end_update(task)?.execute(&self.pool).await?;
            return Ok(vec![done.rows_affected() == 1]);
        }
        let mut tx = self.pool.begin().await?;
        for (num, group) in &chunks {
            chunk_insert(*num, group)?.execute(&mut *tx).await?;
        }
        let mut written = Vec::with_capacity(ended.len());
        for task in ended {
            let done = end_update(task)?.execute(&mut *tx).await?;
            written.push(done.rows_affected() == 1);
        }
        tx.commit().await?;
        Ok(written)
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
            let rows: Vec<(i64, String)> = sqlx::query_as(
                "SELECT last_seq, lines FROM task_log_chunk WHERE task_num = ?1 AND last_seq > ?2 \
                 ORDER BY last_seq LIMIT 1",
            )
            .bind(num)
            .bind(cursor)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                return Ok(());
            }
            for (last, text) in &rows {
                let lines: Vec<StoredLine<'_>> = serde_json::from_str(text)
                    .map_err(|e| StoreError::Corrupt(format!("a log chunk does not read: {e}")))?;
                let count = lines.len();
                for (index, line) in lines.iter().enumerate().filter(|(_, l)| l.0 > cursor) {
                    if !each(line, index + 1 == count)? {
                        return Ok(());
                    }
                }
                cursor = *last;
            }
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
            let row: Option<(i64, String)> = sqlx::query_as(
                "SELECT first_seq, lines FROM task_log_chunk WHERE task_num = ?1 AND first_seq < ?2 \
                 ORDER BY first_seq DESC LIMIT 1",
            )
            .bind(num)
            .bind(before)
            .fetch_optional(&self.pool)
            .await?;
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
        let Some(num) = task_num(task_id) else {
            return Ok(0);
        };
        let (bytes,): (Option<i64>,) =
            // octet_length reads a value's size from its record, not its (overflow) pages.
            sqlx::query_as("SELECT SUM(octet_length(lines)) FROM task_log_chunk WHERE task_num = ?1")
                .bind(num)
                .fetch_one(&self.pool)
                .await?;
        Ok(bytes.unwrap_or(0))
    }

    /// The highest sequence number logged for a task (0 when none).
    pub async fn last_log_seq(&self, task_id: &str) -> Result<i64> {
        let Some(num) = task_num(task_id) else {
            return Ok(0);
        };
        let (seq,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(last_seq) FROM task_log_chunk WHERE task_num = ?1")
                .bind(num)
                .fetch_one(&self.pool)
                .await?;
        Ok(seq.unwrap_or(0))
    }

    /// The agent's sequence number of the last stored line that came from an agent (0 when none):
    /// where a re-attached server resumes reading the script's output.
    pub async fn last_source_seq(&self, task_id: &str) -> Result<u64> {
        let Some(num) = task_num(task_id) else {
            return Ok(0);
        };
        let (seq,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(max_source_seq) FROM task_log_chunk WHERE task_num = ?1")
                .bind(num)
                .fetch_one(&self.pool)
                .await?;
        Ok(seq.unwrap_or(0).max(0) as u64)
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

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

/// The insert of one chunk: a run of one task's lines.
fn chunk_insert<'q>(num: i64, group: &[StoredLineOut<'_>]) -> Result<Query<'q>> {
    let (first, last) = (group[0].0, group[group.len() - 1].0);
    let max_source = group.iter().filter_map(|l| l.4).max();
    let body = serde_json::to_string(group).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(sqlx::query(
        "INSERT OR IGNORE INTO task_log_chunk (task_num, first_seq, last_seq, max_source_seq, line_count, lines) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .bind(num)
    .bind(first)
    .bind(last)
    .bind(max_source)
    .bind(group.len() as i64)
    .bind(body))
}

/// The write of a task's final state, if it is still running.
fn end_update<'q>(task: &Task) -> Result<Query<'q>> {
    let num = task_num(&task.id)
        .ok_or_else(|| StoreError::Corrupt(format!("bad task id {}", task.id)))?;
    Ok(bind_task(sqlx::query(UPDATE_TASK_FROM_RUNNING), num, task))
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

fn bind_task<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    num: i64,
    task: &Task,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    let fmt = |t: &Option<muster_core::time::Timestamp>| t.as_ref().map(format_date);
    query
        .bind(num)
        .bind(task.space_id.clone())
        .bind(task.name.clone())
        .bind(task.description.clone())
        .bind(serde_json::Value::Object(task.arguments.clone()).to_string())
        .bind(task.state.as_str())
        .bind(task.error_message.clone())
        .bind(format_date(&task.queue_time))
        .bind(fmt(&task.queue_time_expiry))
        .bind(fmt(&task.start_time))
        .bind(fmt(&task.completed_time))
        .bind(format_date(&task.last_updated_time))
        .bind(task.server_node.clone())
        .bind(i64::from(task.has_warnings_or_errors))
        .bind(task.queue_reason.clone())
        .bind(task.worker_name.clone())
        .bind(task.worker_id.clone())
}

/// The next number of a kind's id counter, within a transaction.
async fn next_number(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, kind: IdKind) -> Result<i64> {
    let (next,): (i64,) = sqlx::query_as(
        "INSERT INTO id_counters (kind, next) VALUES (?1, 1) \
         ON CONFLICT (kind) DO UPDATE SET next = next + 1 RETURNING next",
    )
    .bind(kind.prefix())
    .fetch_one(&mut **tx)
    .await?;
    Ok(next)
}
