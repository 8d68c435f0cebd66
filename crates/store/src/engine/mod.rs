//! The engines behind [`crate::Store`]: one module per database, each with its own SQL and its own
//! migrations, behind one narrow interface ([`Engine`], and [`EngineTx`] for the writes that must
//! commit together).
//!
//! The interface speaks in rows, not resources: a document is its columns and its JSON body (already
//! sealed), a log chunk is its keys and its JSON lines. What a resource means (sealing, ids, the
//! chunking of lines, the generation counter, the dispatcher's new tasks) stays in the façade, so an
//! engine is only the SQL that stores and finds rows. Everything an engine answers is the same on
//! every engine: the store test suite (`crate::tests`) runs once per engine and checks it.
//!
//! Architecture invariant: SQL that only one database understands (SQLite's `?N`, `COLLATE NOCASE`,
//! `INSERT OR IGNORE`, `PRAGMA`; PostgreSQL's `$N`, `lower()` indexes, `ON CONFLICT DO NOTHING`) is
//! written in that database's module and nowhere else. Claims and other statements whose
//! concurrency differs between databases live inside the engine too.

pub(crate) mod postgres;
pub(crate) mod sqlite;

use crate::{Node, Result, StoreError, TaskQuery};
use muster_core::resources::Task;
use muster_core::time::{format_date, parse_date};
use muster_core::{IdKind, TaskState};
use std::future::Future;

/// The engine a store runs on. The façade matches on it once per call ([`on_engine!`]); each arm
/// sees the concrete engine, so no call is boxed.
pub(crate) enum Engines {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

/// Runs `$body` with `$e` bound to the store's engine, whichever it is.
macro_rules! on_engine {
    ($engines:expr, $e:ident => $body:expr) => {
        match $engines {
            $crate::engine::Engines::Sqlite($e) => $body,
            $crate::engine::Engines::Postgres($e) => $body,
        }
    };
}
pub(crate) use on_engine;

/// One document as stored: its kind, its lookup columns and its JSON body (sealed values sealed).
pub(crate) struct DocumentRow<'a> {
    pub kind: &'static str,
    pub id: &'a str,
    pub space_id: &'a str,
    pub name: &'a str,
    pub ext: Option<&'a str>,
    pub body: String,
}

/// One chunk of a task's log: a run of its consecutive lines, as a JSON array.
pub(crate) struct Chunk {
    pub task_num: i64,
    pub first_seq: i64,
    pub last_seq: i64,
    pub max_source_seq: Option<i64>,
    pub line_count: i64,
    pub lines: String,
}

/// What every engine does. Each method is one statement or one transaction.
pub(crate) trait Engine: Sync {
    type Tx: EngineTx;

    /// Brings the schema up to this release's (each engine has its own migrations).
    fn migrate(&self) -> impl Future<Output = Result<()>> + Send;
    fn close(&self) -> impl Future<Output = ()> + Send;
    /// Begins a transaction for writes that commit together.
    fn begin(&self) -> impl Future<Output = Result<Self::Tx>> + Send;

    fn meta(&self, key: &str) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Writes a meta value; without `replace`, only when the key has none yet.
    fn set_meta(
        &self,
        key: &str,
        value: &str,
        replace: bool,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The next number of a kind's id counter (1 first).
    fn next_id(&self, kind: &str) -> impl Future<Output = Result<i64>> + Send;

    /// A document's body.
    fn document(&self, kind: &str, id: &str)
    -> impl Future<Output = Result<Option<String>>> + Send;
    /// The bodies of a kind's documents in one space (None: in every space), in id order (shorter
    /// ids first, so `Spaces-2` before `Spaces-10`).
    fn documents(
        &self,
        kind: &str,
        space_id: Option<&str>,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// The bodies of a kind's documents whose extra column is `ext`, in id order.
    fn documents_by_ext(
        &self,
        kind: &str,
        ext: &str,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// How many documents of a kind are in the spaces (None: all; never empty), and one page of
    /// their bodies, newest (reverse id order) first.
    fn page_newest(
        &self,
        kind: &str,
        spaces: Option<&[String]>,
        skip: u64,
        take: u64,
    ) -> impl Future<Output = Result<(u64, Vec<String>)>> + Send;
    /// Deletes a document; true if it existed.
    fn delete_document(&self, kind: &str, id: &str) -> impl Future<Output = Result<bool>> + Send;
    /// Deletes a space's documents, the space, its tasks and their logs, in one transaction.
    fn delete_space(&self, space_id: &str) -> impl Future<Output = Result<()>> + Send;
    /// Makes sure no old copy of a rewritten row is left in the database's files (after values
    /// stored in the clear were sealed).
    fn forget_old_rows(&self) -> impl Future<Output = Result<()>> + Send;

    fn task(&self, num: i64) -> impl Future<Output = Result<Option<Task>>> + Send;
    /// Tasks in the states, by number.
    fn tasks_in_states(
        &self,
        states: &[TaskState],
    ) -> impl Future<Output = Result<Vec<Task>>> + Send;
    /// Tasks on an external worker that started before `to` and had not completed by `from`
    /// (both the contract's date text), by number.
    fn tasks_on_workers_between(
        &self,
        from: &str,
        to: &str,
    ) -> impl Future<Output = Result<Vec<Task>>> + Send;
    /// How many tasks match, and one page of them, newest first.
    fn list_tasks(&self, q: &TaskQuery) -> impl Future<Output = Result<(u64, Vec<Task>)>> + Send;
    /// Writes every field of a task.
    fn update_task(
        &self,
        num: i64,
        task: &Task,
        guard: &Guard,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Writes each task only if it is still in `from`, in one transaction; whether each moved.
    fn transition_tasks(
        &self,
        tasks: &[(i64, &Task)],
        from: TaskState,
        guard: &Guard,
    ) -> impl Future<Output = Result<Vec<bool>>> + Send;
    /// Inserts the chunks (a chunk already stored is left as it is) and writes each ended task if it
    /// is still Executing or Cancelling, in one transaction; whether each ended task was written.
    fn append_chunks_and_end(
        &self,
        chunks: &[Chunk],
        ended: &[(i64, &Task)],
        guard: &Guard,
    ) -> impl Future<Output = Result<Vec<bool>>> + Send;
    /// The first chunk of a task whose last line is after `after`: (its last seq, its lines).
    fn chunk_after(
        &self,
        num: i64,
        after: i64,
    ) -> impl Future<Output = Result<Option<(i64, String)>>> + Send;
    /// The last chunk of a task whose first line is before `before`: (its first seq, its lines).
    fn chunk_before(
        &self,
        num: i64,
        before: i64,
    ) -> impl Future<Output = Result<Option<(i64, String)>>> + Send;
    /// (bytes of its chunks' text, highest seq, highest agent seq) of a task's log; 0 when none.
    fn log_summary(&self, num: i64) -> impl Future<Output = Result<LogSummary>> + Send;

    /// A node's heartbeat: inserts its row (with `cap`, not in maintenance mode) or writes when it
    /// was seen and its version, and its cap too when `set_cap`; with `incarnation`, only while the
    /// row still has it (a node presumed dead is not seen again until it restarts).
    fn node_seen(
        &self,
        name: &str,
        cap: i64,
        set_cap: bool,
        last_seen: &str,
        version: &str,
        incarnation: Option<i64>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Every node, by name.
    fn nodes(&self) -> impl Future<Output = Result<Vec<Node>>> + Send;
    /// Writes a node's cap and maintenance mode; false when it has no row.
    fn update_node(
        &self,
        name: &str,
        cap: i64,
        maintenance: bool,
        modified_on: &str,
        modified_by: Option<&str>,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Writes where the other nodes dial a node's comms port, and whether it runs the built-in
    /// worker.
    fn set_node_facts(
        &self,
        name: &str,
        address: &str,
        builtin_worker: bool,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Moves a node's incarnation on if it was last seen before `seen_before`; whether it did.
    fn presume_dead(
        &self,
        name: &str,
        seen_before: &str,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Records that `node` holds the link of the agent with `thumbprint` (replacing any other).
    fn set_agent_link(
        &self,
        thumbprint: &str,
        node: &str,
        since: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Forgets the agent's link if `node` holds it (another node may hold it by now); whether it did.
    fn clear_agent_link(
        &self,
        thumbprint: &str,
        node: &str,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Deletes a node's row and the links it held; whether it had a row.
    fn delete_node(&self, name: &str) -> impl Future<Output = Result<bool>> + Send;
    /// Forgets every link `node` holds (it starts, so it holds none).
    fn clear_agent_links_of(&self, node: &str) -> impl Future<Output = Result<()>> + Send;
    /// (thumbprint, node) of every agent's link, or of one agent's.
    fn agent_links(
        &self,
        thumbprint: Option<&str>,
    ) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;
}

/// The columns of the server nodes table, in the order `read_node` reads them.
pub(crate) const NODE_COLUMNS: &str = "name, max_concurrent_tasks, is_in_maintenance_mode, last_seen, version, \
    last_modified_on, last_modified_by, comms_address, builtin_worker, incarnation";

/// Reads a node from a row of `NODE_COLUMNS`, on any engine (a boolean is 0 or 1 in SQLite).
pub(crate) fn read_node<R>(row: &R) -> Result<Node>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let date = |text: String| {
        parse_date(&text).ok_or_else(|| StoreError::Corrupt(format!("bad date {text}")))
    };
    let modified: Option<String> = row.try_get("last_modified_on")?;
    Ok(Node {
        name: row.try_get("name")?,
        max_concurrent_tasks: row.try_get("max_concurrent_tasks")?,
        is_in_maintenance_mode: row.try_get("is_in_maintenance_mode")?,
        last_seen: date(row.try_get("last_seen")?)?,
        version: row.try_get("version")?,
        last_modified_on: modified.map(date).transpose()?,
        last_modified_by: row.try_get("last_modified_by")?,
        comms_address: row.try_get("comms_address")?,
        builtin_worker: row.try_get("builtin_worker")?,
        incarnation: row.try_get("incarnation")?,
    })
}

/// What `Engine::log_summary` answers.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LogSummary {
    pub bytes: i64,
    pub last_seq: i64,
    pub last_source_seq: i64,
}

/// What goes with a write of tasks on an engine of several nodes: the dispatcher's epoch the write
/// holds (it is refused, as a whole, once another node took the role over), and the notes the other
/// nodes get when it commits. SQLite, with one node, has neither.
#[derive(Default)]
pub(crate) struct Guard {
    pub epoch: Option<i64>,
    /// The writing node and its incarnation: refused once the dispatcher presumed it dead.
    pub node: Option<(String, i64)>,
    pub notes: Vec<String>,
}

/// A transaction of an engine: the writes that must be seen together.
pub(crate) trait EngineTx: Send {
    /// The next number of a kind's id counter, within the transaction.
    fn next_number(&mut self, kind: &str) -> impl Future<Output = Result<i64>> + Send;
    /// Inserts or replaces a document (a unique violation is the caller's to name).
    fn write_document(
        &mut self,
        doc: &DocumentRow<'_>,
    ) -> impl Future<Output = std::result::Result<(), sqlx::Error>> + Send;
    /// Replaces a document only if it still exists: false when it was deleted meanwhile.
    fn update_document(
        &mut self,
        doc: &DocumentRow<'_>,
    ) -> impl Future<Output = std::result::Result<bool, sqlx::Error>> + Send;
    fn insert_task(&mut self, num: i64, task: &Task) -> impl Future<Output = Result<()>> + Send;
    /// Sends a note to the other nodes when (and only if) the transaction commits; nothing on an
    /// engine with one node.
    fn notify(&mut self, payload: &str) -> impl Future<Output = Result<()>> + Send;
    fn commit(self) -> impl Future<Output = Result<()>> + Send;
}

/// The columns of the tasks table, in the order `bind_task` binds them (1 to 17).
pub(crate) const TASK_COLUMNS: &str = "num, space_id, name, description, arguments, state, error_message, queue_time, \
    queue_time_expiry, start_time, completed_time, last_updated_time, server_node, has_warnings, queue_reason, worker_name, worker_id";

/// Binds a task's columns in `TASK_COLUMNS` order, on any engine. `has_warnings` is a boolean:
/// SQLite stores it as 0 or 1, PostgreSQL as a BOOLEAN.
pub(crate) fn bind_task<'q, DB>(
    query: sqlx::query::Query<'q, DB, DB::Arguments>,
    num: i64,
    task: &Task,
) -> sqlx::query::Query<'q, DB, DB::Arguments>
where
    DB: sqlx::Database,
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> bool: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> Option<String>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let fmt = |t: &Option<muster_core::time::Timestamp>| t.as_ref().map(format_date);
    query
        .bind(num)
        .bind(task.space_id.clone())
        .bind(task.name.clone())
        .bind(task.description.clone())
        .bind(serde_json::Value::Object(task.arguments.clone()).to_string())
        .bind(task.state.as_str().to_string())
        .bind(task.error_message.clone())
        .bind(format_date(&task.queue_time))
        .bind(fmt(&task.queue_time_expiry))
        .bind(fmt(&task.start_time))
        .bind(fmt(&task.completed_time))
        .bind(format_date(&task.last_updated_time))
        .bind(task.server_node.clone())
        .bind(task.has_warnings_or_errors)
        .bind(task.queue_reason.clone())
        .bind(task.worker_name.clone())
        .bind(task.worker_id.clone())
}

/// Reads a task from a row of `TASK_COLUMNS`, on any engine.
pub(crate) fn read_task<R>(row: &R) -> Result<Task>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let date = |column: &str| -> Result<Option<muster_core::time::Timestamp>> {
        let text: Option<String> = row.try_get(column)?;
        match text {
            None => Ok(None),
            Some(text) => parse_date(&text)
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt(format!("bad date {text}"))),
        }
    };
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
        queue_time: date("queue_time")?.unwrap_or_default(),
        queue_time_expiry: date("queue_time_expiry")?,
        start_time: date("start_time")?,
        completed_time: date("completed_time")?,
        last_updated_time: date("last_updated_time")?.unwrap_or_default(),
        server_node: row.try_get("server_node")?,
        has_warnings_or_errors: row.try_get::<bool, _>("has_warnings")?,
        queue_reason: row.try_get("queue_reason")?,
        worker_name: row.try_get("worker_name")?,
        worker_id: row.try_get("worker_id")?,
    })
}

/// The parts of a `TaskQuery`'s filter that are the same on every engine: each clause with its
/// values, placeholders written by `mark` (the engine's parameter syntax, numbered from 1), and
/// the engine's spelling of the clauses that differ.
pub(crate) struct TaskFilter {
    pub clause: String,
    pub binds: Vec<String>,
}

/// How an engine spells the parts of a task filter that differ between databases.
pub(crate) struct Dialect {
    /// The n-th parameter (from 1).
    pub mark: fn(usize) -> String,
    /// A condition that is never true.
    pub never: &'static str,
    /// `name` equals parameter n without case.
    pub name_equals: fn(usize) -> String,
    /// `name` lowered contains parameter n (already lowered).
    pub name_contains: fn(usize) -> String,
    /// `has_warnings` is the flag.
    pub has_warnings: fn(bool) -> &'static str,
}

impl TaskFilter {
    pub(crate) fn of(q: &TaskQuery, dialect: &Dialect) -> TaskFilter {
        let mut clauses: Vec<String> = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        let mut list = |clauses: &mut Vec<String>, column: &str, values: Vec<String>| {
            let start = binds.len();
            let marks: Vec<String> = (0..values.len())
                .map(|i| (dialect.mark)(start + i + 1))
                .collect();
            binds.extend(values);
            clauses.push(if marks.is_empty() {
                dialect.never.into()
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
                    .filter_map(|id| muster_core::parse_id(IdKind::ServerTask, id))
                    .map(|n| n.to_string())
                    .collect(),
            );
        }
        if let Some(name) = &q.name {
            binds.push(name.clone());
            clauses.push((dialect.name_equals)(binds.len()));
        }
        if let Some(partial) = &q.partial_name {
            binds.push(partial.to_lowercase());
            clauses.push((dialect.name_contains)(binds.len()));
        }
        if let Some(flag) = q.has_warnings_or_errors {
            clauses.push((dialect.has_warnings)(flag).into());
        }
        let clause = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        TaskFilter { clause, binds }
    }
}

/// `LIMIT` and `OFFSET` values as the databases take them.
pub(crate) fn page_bounds(skip: u64, take: u64) -> (i64, i64) {
    (
        i64::try_from(take).unwrap_or(i64::MAX),
        i64::try_from(skip).unwrap_or(i64::MAX),
    )
}
