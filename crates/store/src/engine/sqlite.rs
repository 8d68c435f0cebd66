//! The SQLite engine: the embedded default. One database file in WAL mode with full synchronous
//! commits, its migrations applied by `PRAGMA user_version` (the scheme every release so far has
//! used, so a data directory of any earlier release opens and is brought up to date).

use super::{Chunk, Dialect, DocumentRow, Engine, EngineTx, Guard, LogSummary, TaskFilter};
use super::{NODE_COLUMNS, TASK_COLUMNS, bind_task, page_bounds, read_node, read_task};
use crate::{Result, StoreError, TaskQuery};
use muster_core::TaskState;
use muster_core::resources::Task;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::path::Path;
use std::time::Duration;

/// The schema, one script per version; a database is brought up to the last one when it opens.
pub(crate) const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/v1.sql"),
    include_str!("../../migrations/sqlite/v2.sql"),
    include_str!("../../migrations/sqlite/v3.sql"),
    include_str!("../../migrations/sqlite/v4.sql"),
    include_str!("../../migrations/sqlite/v5.sql"),
    include_str!("../../migrations/sqlite/v6.sql"),
];

pub(crate) struct Sqlite {
    pub(crate) pool: SqlitePool,
}

impl Sqlite {
    /// Opens (creating if needed) the database at `path`: WAL mode, full synchronous commits, files
    /// 0600.
    pub(crate) async fn open(path: &Path) -> Result<Sqlite> {
        private_files(path)?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(options)
            .await?;
        Ok(Sqlite { pool })
    }
}

/// The database file and its WAL and shared-memory files are the server user's alone. SQLite
/// makes the other two with the database file's mode, so a new database file is made 0600 first.
fn private_files(path: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |e: std::io::Error| StoreError::Files(format!("{}: {e}", path.display()));
    if !path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
    }
    for suffix in ["", "-wal", "-shm"] {
        let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        if file.exists() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
    }
    Ok(())
}

const DIALECT: Dialect = Dialect {
    mark: |n| format!("?{n}"),
    never: "0",
    name_equals: |n| format!("name = ?{n} COLLATE NOCASE"),
    name_contains: |n| format!("instr(lower(name), ?{n}) > 0"),
    has_warnings: |flag| {
        if flag {
            "has_warnings = 1"
        } else {
            "has_warnings = 0"
        }
    },
};

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

const UPDATE_TASK: &str = "UPDATE tasks SET space_id = ?2, name = ?3, description = ?4, arguments = ?5, state = ?6, \
    error_message = ?7, queue_time = ?8, queue_time_expiry = ?9, start_time = ?10, completed_time = ?11, \
    last_updated_time = ?12, server_node = ?13, has_warnings = ?14, queue_reason = ?15, worker_name = ?16, \
    worker_id = ?17 WHERE num = ?1";

const INSERT_TASK: &str = "INSERT INTO tasks (num, space_id, name, description, arguments, state, error_message, queue_time, \
    queue_time_expiry, start_time, completed_time, last_updated_time, server_node, has_warnings, queue_reason, worker_name, worker_id) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)";

const NEXT_NUMBER: &str = "INSERT INTO id_counters (kind, next) VALUES (?1, 1) \
    ON CONFLICT (kind) DO UPDATE SET next = next + 1 RETURNING next";

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

/// The insert of one chunk; a chunk already stored (the same first line) is left as it is.
fn chunk_insert<'q>(chunk: &Chunk) -> Query<'q> {
    sqlx::query(
        "INSERT OR IGNORE INTO task_log_chunk (task_num, first_seq, last_seq, max_source_seq, line_count, lines) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .bind(chunk.task_num)
    .bind(chunk.first_seq)
    .bind(chunk.last_seq)
    .bind(chunk.max_source_seq)
    .bind(chunk.line_count)
    .bind(chunk.lines.clone())
}

impl Engine for Sqlite {
    type Tx = SqliteTx;

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let (version,): (i64,) = sqlx::query_as("PRAGMA user_version")
            .fetch_one(&mut *tx)
            .await?;
        for (index, script) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            sqlx::raw_sql(*script).execute(&mut *tx).await?;
            let bump = format!("PRAGMA user_version = {}", index + 1);
            sqlx::raw_sql(sqlx::AssertSqlSafe(bump))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn node_seen(
        &self,
        name: &str,
        cap: i64,
        set_cap: bool,
        last_seen: &str,
        version: &str,
        incarnation: Option<i64>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO server_nodes (name, max_concurrent_tasks, is_in_maintenance_mode, last_seen, version) \
             VALUES (?1, ?2, 0, ?3, ?4) ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen, \
             version = excluded.version, max_concurrent_tasks = CASE WHEN ?5 THEN excluded.max_concurrent_tasks \
             ELSE server_nodes.max_concurrent_tasks END \
             WHERE ?6 IS NULL OR server_nodes.incarnation = ?6",
        )
        .bind(name)
        .bind(cap)
        .bind(last_seen)
        .bind(version)
        .bind(set_cap)
        .bind(incarnation)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<crate::Node>> {
        let sql = format!("SELECT {NODE_COLUMNS} FROM server_nodes ORDER BY name");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(read_node).collect()
    }

    async fn update_node(
        &self,
        name: &str,
        cap: i64,
        maintenance: bool,
        modified_on: &str,
        modified_by: Option<&str>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE server_nodes SET max_concurrent_tasks = ?2, is_in_maintenance_mode = ?3, \
             last_modified_on = ?4, last_modified_by = ?5 WHERE name = ?1",
        )
        .bind(name)
        .bind(cap)
        .bind(maintenance)
        .bind(modified_on)
        .bind(modified_by)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_node_facts(&self, name: &str, address: &str, builtin_worker: bool) -> Result<()> {
        sqlx::query(
            "UPDATE server_nodes SET comms_address = ?2, builtin_worker = ?3 WHERE name = ?1",
        )
        .bind(name)
        .bind(address)
        .bind(builtin_worker)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn presume_dead(&self, name: &str, seen_before: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE server_nodes SET incarnation = incarnation + 1 WHERE name = ?1 AND last_seen < ?2",
        )
        .bind(name)
        .bind(seen_before)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_agent_link(&self, thumbprint: &str, node: &str, since: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO agent_links (thumbprint, node, since) VALUES (?1, ?2, ?3) \
             ON CONFLICT (thumbprint) DO UPDATE SET node = excluded.node, since = excluded.since",
        )
        .bind(thumbprint)
        .bind(node)
        .bind(since)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn clear_agent_link(&self, thumbprint: &str, node: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM agent_links WHERE thumbprint = ?1 AND node = ?2")
            .bind(thumbprint)
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_node(&self, name: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM agent_links WHERE node = ?1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM server_nodes WHERE name = ?1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    async fn clear_agent_links_of(&self, node: &str) -> Result<()> {
        sqlx::query("DELETE FROM agent_links WHERE node = ?1")
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn agent_links(&self, thumbprint: Option<&str>) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT thumbprint, node FROM agent_links WHERE ?1 IS NULL OR thumbprint = ?1 \
             ORDER BY thumbprint",
        )
        .bind(thumbprint)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin(&self) -> Result<SqliteTx> {
        Ok(SqliteTx(self.pool.begin().await?))
    }

    async fn meta(&self, key: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as("SELECT value FROM meta WHERE key = ?1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(v,)| v))
    }

    async fn set_meta(&self, key: &str, value: &str, replace: bool) -> Result<()> {
        let sql = if replace {
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2"
        } else {
            "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)"
        };
        sqlx::query(sql)
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn next_id(&self, kind: &str) -> Result<i64> {
        let (next,): (i64,) = sqlx::query_as(NEXT_NUMBER)
            .bind(kind)
            .fetch_one(&self.pool)
            .await?;
        Ok(next)
    }

    async fn document(&self, kind: &str, id: &str) -> Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT body FROM documents WHERE kind = ?1 AND id = ?2")
                .bind(kind)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(body,)| body))
    }

    async fn documents(&self, kind: &str, space_id: Option<&str>) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = match space_id {
            Some(space_id) => sqlx::query_as(
                "SELECT body FROM documents WHERE kind = ?1 AND space_id = ?2 ORDER BY length(id), id",
            )
            .bind(kind)
            .bind(space_id)
            .fetch_all(&self.pool)
            .await?,
            None => {
                sqlx::query_as("SELECT body FROM documents WHERE kind = ?1 ORDER BY length(id), id")
                    .bind(kind)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows.into_iter().map(|(body,)| body).collect())
    }

    async fn documents_by_ext(&self, kind: &str, ext: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT body FROM documents WHERE kind = ?1 AND ext = ?2 ORDER BY length(id), id",
        )
        .bind(kind)
        .bind(ext)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(body,)| body).collect())
    }

    async fn page_newest(
        &self,
        kind: &str,
        spaces: Option<&[String]>,
        skip: u64,
        take: u64,
    ) -> Result<(u64, Vec<String>)> {
        let filter = match spaces {
            None => String::new(),
            Some(spaces) => {
                let marks: Vec<String> = (0..spaces.len()).map(|i| format!("?{}", i + 2)).collect();
                format!(" AND space_id IN ({})", marks.join(", "))
            }
        };
        let count_sql = format!("SELECT COUNT(*) FROM documents WHERE kind = ?1{filter}");
        let mut count = sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(count_sql)).bind(kind);
        for space in spaces.unwrap_or_default() {
            count = count.bind(space);
        }
        let (total,) = count.fetch_one(&self.pool).await?;
        let n = spaces.map_or(0, <[String]>::len);
        let page_sql = format!(
            "SELECT body FROM documents WHERE kind = ?1{filter} ORDER BY length(id) DESC, id DESC LIMIT ?{} OFFSET ?{}",
            n + 2,
            n + 3
        );
        let mut page = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(page_sql)).bind(kind);
        for space in spaces.unwrap_or_default() {
            page = page.bind(space);
        }
        let (limit, offset) = page_bounds(skip, take);
        let rows = page.bind(limit).bind(offset).fetch_all(&self.pool).await?;
        Ok((
            u64::try_from(total).unwrap_or(0),
            rows.into_iter().map(|(body,)| body).collect(),
        ))
    }

    async fn delete_document(&self, kind: &str, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM documents WHERE kind = ?1 AND id = ?2")
            .bind(kind)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_space(&self, space_id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM documents WHERE space_id = ?1")
            .bind(space_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM documents WHERE kind = 'space' AND id = ?1")
            .bind(space_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM task_log_chunk WHERE task_num IN (SELECT num FROM tasks WHERE space_id = ?1)",
        )
        .bind(space_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM tasks WHERE space_id = ?1")
            .bind(space_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Rewrites the database and empties its WAL, so no old page keeps a value in the clear.
    async fn forget_old_rows(&self) -> Result<()> {
        sqlx::raw_sql("VACUUM").execute(&self.pool).await?;
        sqlx::raw_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn task(&self, num: i64) -> Result<Option<Task>> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE num = ?1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(num)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(read_task).transpose()
    }

    async fn tasks_in_states(&self, states: &[TaskState]) -> Result<Vec<Task>> {
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

    async fn tasks_on_workers_between(&self, from: &str, to: &str) -> Result<Vec<Task>> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE worker_id IS NOT NULL AND start_time IS NOT NULL \
             AND start_time < ?1 AND (completed_time IS NULL OR completed_time > ?2) ORDER BY num"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to)
            .bind(from)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(read_task).collect()
    }

    async fn list_tasks(&self, q: &TaskQuery) -> Result<(u64, Vec<Task>)> {
        let TaskFilter { clause, binds } = TaskFilter::of(q, &DIALECT);
        let count_sql = format!("SELECT COUNT(*) FROM tasks {clause}");
        let mut count = sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(count_sql));
        for b in &binds {
            count = count.bind(b);
        }
        let (total,) = count.fetch_one(&self.pool).await?;
        let (limit, offset) = page_bounds(q.skip, q.take);
        let page_sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks {clause} ORDER BY num DESC LIMIT {limit} OFFSET {offset}"
        );
        let mut page = sqlx::query(sqlx::AssertSqlSafe(page_sql));
        for b in &binds {
            page = page.bind(b);
        }
        let rows = page.fetch_all(&self.pool).await?;
        Ok((
            u64::try_from(total).unwrap_or(0),
            rows.iter().map(read_task).collect::<Result<_>>()?,
        ))
    }

    async fn update_task(&self, num: i64, task: &Task, _guard: &Guard) -> Result<()> {
        bind_task(sqlx::query(UPDATE_TASK), num, task)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn transition_tasks(
        &self,
        tasks: &[(i64, &Task)],
        from: TaskState,
        _guard: &Guard,
    ) -> Result<Vec<bool>> {
        // One task needs no transaction around its one statement.
        if let [(num, task)] = tasks {
            let done = bind_task(sqlx::query(UPDATE_TASK_FROM), *num, task)
                .bind(from.as_str())
                .execute(&self.pool)
                .await?;
            return Ok(vec![done.rows_affected() == 1]);
        }
        let mut tx = self.pool.begin().await?;
        let mut moved = Vec::with_capacity(tasks.len());
        for (num, task) in tasks {
            let done = bind_task(sqlx::query(UPDATE_TASK_FROM), *num, task)
                .bind(from.as_str())
                .execute(&mut *tx)
                .await?;
            moved.push(done.rows_affected() == 1);
        }
        tx.commit().await?;
        Ok(moved)
    }

    async fn append_chunks_and_end(
        &self,
        chunks: &[Chunk],
        ended: &[(i64, &Task)],
        _guard: &Guard,
    ) -> Result<Vec<bool>> {
        // One statement needs no transaction around it: a task that ends with its lines already
        // stored, or one task's lines, cost one round trip to SQLite.
        if chunks.len() + ended.len() == 1 {
            if let Some(chunk) = chunks.first() {
                chunk_insert(chunk).execute(&self.pool).await?;
                return Ok(Vec::new());
            }
            let (num, task) = ended[0];
            let done = bind_task(sqlx::query(UPDATE_TASK_FROM_RUNNING), num, task)
                .execute(&self.pool)
                .await?;
            return Ok(vec![done.rows_affected() == 1]);
        }
        let mut tx = self.pool.begin().await?;
        for chunk in chunks {
            chunk_insert(chunk).execute(&mut *tx).await?;
        }
        let mut written = Vec::with_capacity(ended.len());
        for (num, task) in ended {
            let done = bind_task(sqlx::query(UPDATE_TASK_FROM_RUNNING), *num, task)
                .execute(&mut *tx)
                .await?;
            written.push(done.rows_affected() == 1);
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn chunk_after(&self, num: i64, after: i64) -> Result<Option<(i64, String)>> {
        Ok(sqlx::query_as(
            "SELECT last_seq, lines FROM task_log_chunk WHERE task_num = ?1 AND last_seq > ?2 \
             ORDER BY last_seq LIMIT 1",
        )
        .bind(num)
        .bind(after)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn chunk_before(&self, num: i64, before: i64) -> Result<Option<(i64, String)>> {
        Ok(sqlx::query_as(
            "SELECT first_seq, lines FROM task_log_chunk WHERE task_num = ?1 AND first_seq < ?2 \
             ORDER BY first_seq DESC LIMIT 1",
        )
        .bind(num)
        .bind(before)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn log_summary(&self, num: i64) -> Result<LogSummary> {
        // octet_length reads a value's size from its record, not its (overflow) pages.
        let (bytes, last_seq, last_source_seq): (Option<i64>, Option<i64>, Option<i64>) =
            sqlx::query_as(
                "SELECT SUM(octet_length(lines)), MAX(last_seq), MAX(max_source_seq) \
                 FROM task_log_chunk WHERE task_num = ?1",
            )
            .bind(num)
            .fetch_one(&self.pool)
            .await?;
        Ok(LogSummary {
            bytes: bytes.unwrap_or(0),
            last_seq: last_seq.unwrap_or(0),
            last_source_seq: last_source_seq.unwrap_or(0),
        })
    }
}

pub(crate) struct SqliteTx(sqlx::Transaction<'static, sqlx::Sqlite>);

impl EngineTx for SqliteTx {
    async fn next_number(&mut self, kind: &str) -> Result<i64> {
        let (next,): (i64,) = sqlx::query_as(NEXT_NUMBER)
            .bind(kind)
            .fetch_one(&mut *self.0)
            .await?;
        Ok(next)
    }

    async fn write_document(
        &mut self,
        doc: &DocumentRow<'_>,
    ) -> std::result::Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO documents (kind, id, space_id, name, ext, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (kind, id) DO UPDATE SET space_id = ?3, name = ?4, ext = ?5, body = ?6",
        )
        .bind(doc.kind)
        .bind(doc.id)
        .bind(doc.space_id)
        .bind(doc.name)
        .bind(doc.ext)
        .bind(doc.body.as_str())
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn update_document(
        &mut self,
        doc: &DocumentRow<'_>,
    ) -> std::result::Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE documents SET space_id = ?3, name = ?4, ext = ?5, body = ?6 \
             WHERE kind = ?1 AND id = ?2",
        )
        .bind(doc.kind)
        .bind(doc.id)
        .bind(doc.space_id)
        .bind(doc.name)
        .bind(doc.ext)
        .bind(doc.body.as_str())
        .execute(&mut *self.0)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn notify(&mut self, _payload: &str) -> Result<()> {
        Ok(())
    }

    async fn insert_task(&mut self, num: i64, task: &Task) -> Result<()> {
        bind_task(sqlx::query(INSERT_TASK), num, task)
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }

    async fn commit(self) -> Result<()> {
        self.0.commit().await?;
        Ok(())
    }
}
