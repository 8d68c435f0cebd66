//! The PostgreSQL engine, chosen with `--database postgres://…`. Its migrations are embedded in
//! the binary (`migrations/postgres/`) and applied by sqlx's migrator, which records them in
//! `_sqlx_migrations` and holds an advisory lock meanwhile, so nodes that start together migrate
//! once.
//!
//! Where it differs from SQLite: parameters are `$N`; a name is unique without case through an
//! index on `lower(name)` (SQLite: `COLLATE NOCASE`; PostgreSQL's `lower` folds every letter,
//! SQLite's NOCASE only ASCII ones); "insert unless present" is `ON CONFLICT DO NOTHING`;
//! `has_warnings` is a BOOLEAN; integers are BIGINT (Rust's i64). Conditional updates
//! (`UPDATE … WHERE state = $18`) re-check their condition on the locked row under READ
//! COMMITTED, so two writers cannot both win a claim here either.

use super::{Chunk, Dialect, DocumentRow, Engine, EngineTx, Guard, LogSummary, TaskFilter};
use super::{NODE_COLUMNS, TASK_COLUMNS, bind_task, page_bounds, read_node, read_task};
use crate::{Result, StoreError, TaskQuery};
use muster_core::TaskState;
use muster_core::resources::Task;
use sqlx::SqlSafeStr as _;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::time::Duration;

/// The schema, one file per version, applied in order by sqlx's migrator.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "schema",
        include_str!("../../migrations/postgres/0001_schema.sql"),
    ),
    (
        2,
        "server nodes",
        include_str!("../../migrations/postgres/0002_server_nodes.sql"),
    ),
    (
        3,
        "dispatch lease",
        include_str!("../../migrations/postgres/0003_dispatch_lease.sql"),
    ),
    (
        4,
        "agent links",
        include_str!("../../migrations/postgres/0004_agent_links.sql"),
    ),
];

pub(crate) struct Postgres {
    pub(crate) pool: PgPool,
    /// A connection of the dispatcher's lease alone: a pool busy with the node's work (every
    /// connection taken, callers waiting) must not delay a renewal past the lease.
    lease_pool: PgPool,
    /// The connection that holds this server's claim on the database (`claim`), for its life.
    claim: tokio::sync::Mutex<Option<sqlx::postgres::PgConnection>>,
}

/// The advisory lock on a database: every node holds it shared for its life, and `muster db copy`
/// holds it alone while it writes, so no node starts on a half-copied store and no copy overwrites
/// a store in use.
const SERVER_LOCK: i64 = 0x6d75_7374_6572; // "muster"

impl Postgres {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`).
    pub(crate) async fn connect(url: &str) -> Result<Postgres> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        let lease_pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy(url)?;
        Ok(Postgres {
            pool,
            lease_pool,
            claim: Default::default(),
        })
    }

    /// Claims the database, as `muster.lock` claims a data directory: a session advisory lock on a
    /// connection of its own, held until `close` (or until the process or its connection dies).
    /// A node claims it `shared` with the other nodes; a copy claims it alone. A holder that
    /// stopped a moment ago may still hold it, so the claim is tried for a few seconds before it
    /// is refused.
    pub(crate) async fn claim(&self, shared: bool) -> Result<()> {
        let mut connection = self.pool.acquire().await?.detach();
        let try_lock = if shared {
            "SELECT pg_try_advisory_lock_shared($1)"
        } else {
            "SELECT pg_try_advisory_lock($1)"
        };
        for attempt in 0.. {
            let (claimed,): (bool,) = sqlx::query_as(try_lock)
                .bind(SERVER_LOCK)
                .fetch_one(&mut connection)
                .await?;
            if claimed {
                *self.claim.lock().await = Some(connection);
                return Ok(());
            }
            if attempt == 50 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(StoreError::InUse(if shared {
            "muster db copy is writing this database; start the node when it is done".into()
        } else {
            "Muster server nodes use this database; stop them all before copying into it".into()
        }))
    }
}

/// The dispatcher's lease (`dispatch_lease`), timed by the database's clock so that the nodes'
/// clocks need not agree.
impl Postgres {
    /// Takes the lease if it has expired: the new epoch and the node that held it before, or None
    /// while another node holds it.
    pub(crate) async fn take_lease(
        &self,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<(i64, String)>> {
        Ok(sqlx::query_as(
            "UPDATE dispatch_lease SET holder = $1, epoch = dispatch_lease.epoch + 1, \
             expires_at = clock_timestamp() + make_interval(secs => $2) \
             FROM (SELECT holder AS previous FROM dispatch_lease WHERE id = 1) AS before \
             WHERE dispatch_lease.id = 1 AND dispatch_lease.expires_at < clock_timestamp() \
             RETURNING dispatch_lease.epoch, before.previous",
        )
        .bind(holder)
        .bind(ttl.as_secs_f64())
        .fetch_optional(&self.lease_pool)
        .await?)
    }

    /// Extends the lease of `epoch`; false once another node has taken it.
    pub(crate) async fn renew_lease(&self, epoch: i64, ttl: Duration) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE dispatch_lease SET expires_at = clock_timestamp() + make_interval(secs => $2) \
             WHERE id = 1 AND epoch = $1",
        )
        .bind(epoch)
        .bind(ttl.as_secs_f64())
        .execute(&self.lease_pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives the lease up at once (a node that stops), so another node need not wait it out.
    pub(crate) async fn release_lease(&self, epoch: i64) -> Result<()> {
        sqlx::query(
            "UPDATE dispatch_lease SET expires_at = '-infinity', holder = '' WHERE id = 1 AND epoch = $1",
        )
        .bind(epoch)
        .execute(&self.lease_pool)
        .await?;
        Ok(())
    }

    /// The node that holds the lease now, if any.
    pub(crate) async fn lease_holder(&self) -> Result<Option<String>> {
        Ok(sqlx::query_as(
            "SELECT holder FROM dispatch_lease WHERE id = 1 AND expires_at >= clock_timestamp()",
        )
        .fetch_optional(&self.lease_pool)
        .await?
        .map(|(holder,): (String,)| holder))
    }
}

const DIALECT: Dialect = Dialect {
    mark: |n| format!("${n}"),
    never: "FALSE",
    name_equals: |n| format!("lower(name) = lower(${n})"),
    name_contains: |n| format!("strpos(lower(name), ${n}) > 0"),
    has_warnings: |flag| {
        if flag {
            "has_warnings"
        } else {
            "NOT has_warnings"
        }
    },
};

/// Writes every field of a task that is still in the state $18. Each write of a task holds the
/// dispatcher's epoch ($19 here, $18 below; NULL for a node that is not the dispatcher): once another
/// node took the role over, it changes nothing. It also holds the writing node's incarnation
/// (name $20 and number $21 here): once the dispatcher presumed that node dead and took its tasks
/// over, it changes nothing either.
const UPDATE_TASK_FROM: &str = "UPDATE tasks SET space_id = $2, name = $3, description = $4, arguments = $5, state = $6, \
    error_message = $7, queue_time = $8, queue_time_expiry = $9, start_time = $10, completed_time = $11, \
    last_updated_time = $12, server_node = $13, has_warnings = $14, queue_reason = $15, worker_name = $16, \
    worker_id = $17 WHERE num = $1 AND state = $18 AND ($19::bigint IS NULL OR EXISTS (SELECT 1 FROM dispatch_lease WHERE epoch = $19)) AND ($20::text IS NULL OR EXISTS (SELECT 1 FROM server_nodes WHERE name = $20 AND incarnation = $21))";

/// Writes every field of a task that is still running (Executing or Cancelling).
const UPDATE_TASK_FROM_RUNNING: &str = "UPDATE tasks SET space_id = $2, name = $3, description = $4, arguments = $5, state = $6, \
    error_message = $7, queue_time = $8, queue_time_expiry = $9, start_time = $10, completed_time = $11, \
    last_updated_time = $12, server_node = $13, has_warnings = $14, queue_reason = $15, worker_name = $16, \
    worker_id = $17 WHERE num = $1 AND state IN ('Executing', 'Cancelling') AND ($18::bigint IS NULL OR EXISTS (SELECT 1 FROM dispatch_lease WHERE epoch = $18)) AND ($19::text IS NULL OR EXISTS (SELECT 1 FROM server_nodes WHERE name = $19 AND incarnation = $20))";

const UPDATE_TASK: &str = "UPDATE tasks SET space_id = $2, name = $3, description = $4, arguments = $5, state = $6, \
    error_message = $7, queue_time = $8, queue_time_expiry = $9, start_time = $10, completed_time = $11, \
    last_updated_time = $12, server_node = $13, has_warnings = $14, queue_reason = $15, worker_name = $16, \
    worker_id = $17 WHERE num = $1 AND ($18::bigint IS NULL OR EXISTS (SELECT 1 FROM dispatch_lease WHERE epoch = $18)) AND ($19::text IS NULL OR EXISTS (SELECT 1 FROM server_nodes WHERE name = $19 AND incarnation = $20))";

const INSERT_TASK: &str = "INSERT INTO tasks (num, space_id, name, description, arguments, state, error_message, queue_time, \
    queue_time_expiry, start_time, completed_time, last_updated_time, server_node, has_warnings, queue_reason, worker_name, worker_id) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)";

const NEXT_NUMBER: &str = "INSERT INTO id_counters (kind, next) VALUES ($1, 1) \
    ON CONFLICT (kind) DO UPDATE SET next = id_counters.next + 1 RETURNING next";

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// The insert of one chunk; a chunk already stored (the same first line) is left as it is.
fn chunk_insert<'q>(chunk: &Chunk, guard: &Guard) -> Query<'q> {
    let query = sqlx::query(
        "INSERT INTO task_log_chunk (task_num, first_seq, last_seq, max_source_seq, line_count, lines) \
         SELECT $1, $2, $3, $4, $5, $6 \
         WHERE ($7::bigint IS NULL OR EXISTS (SELECT 1 FROM dispatch_lease WHERE epoch = $7)) \
         AND ($8::text IS NULL OR EXISTS (SELECT 1 FROM server_nodes WHERE name = $8 AND incarnation = $9)) \
         ON CONFLICT DO NOTHING",
    )
    .bind(chunk.task_num)
    .bind(chunk.first_seq)
    .bind(chunk.last_seq)
    .bind(chunk.max_source_seq)
    .bind(chunk.line_count)
    .bind(chunk.lines.clone());
    bind_fence(query, guard)
}

/// Binds what a write holds: the dispatcher's epoch, the node's name and its incarnation.
fn bind_fence<'q>(query: Query<'q>, guard: &Guard) -> Query<'q> {
    let (name, incarnation) = match &guard.node {
        Some((name, incarnation)) => (Some(name.clone()), Some(*incarnation)),
        None => (None, None),
    };
    query.bind(guard.epoch).bind(name).bind(incarnation)
}

/// One write (`statement`, whose parameters end at `$last`) and its notes in one statement, one
/// round trip and its own commit: the notes go out only if it changed a row. Returns the rows it
/// changed.
async fn write_noting(
    pool: &PgPool,
    statement: &str,
    last: usize,
    bind: impl FnOnce(Query<'_>) -> Query<'_>,
    notes: &[String],
) -> Result<u64> {
    let sql = format!(
        "WITH written AS ({statement} RETURNING 1) \
         SELECT (SELECT count(*) FROM written), \
         (SELECT count(pg_notify(${channel}, note)) FROM unnest(${notes}::text[]) AS note \
          WHERE EXISTS (SELECT 1 FROM written))",
        channel = last + 1,
        notes = last + 2,
    );
    let query = bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
        .bind(crate::notes::CHANNEL)
        .bind(notes);
    let row = query.fetch_one(pool).await?;
    let written: i64 = sqlx::Row::get(&row, 0);
    Ok(written as u64)
}

/// Sends a write's notes to the other nodes, with its transaction.
async fn send_notes(tx: &mut sqlx::PgConnection, notes: &[String]) -> Result<()> {
    if !notes.is_empty() {
        sqlx::query("SELECT pg_notify($1, note) FROM unnest($2::text[]) AS note")
            .bind(crate::notes::CHANNEL)
            .bind(notes)
            .execute(tx)
            .await?;
    }
    Ok(())
}

/// After a write that changed less than asked: refused as a whole if it held an epoch that is no
/// longer the dispatcher's, or an incarnation of its node that the dispatcher presumed dead.
async fn check_epoch(tx: &mut sqlx::PgConnection, guard: &Guard) -> Result<()> {
    if let Some(epoch) = guard.epoch {
        let (current,): (i64,) = sqlx::query_as("SELECT epoch FROM dispatch_lease WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        if current != epoch {
            return Err(StoreError::Fenced(format!(
                "this node's dispatcher epoch {epoch} ended: epoch {current} is another node's"
            )));
        }
    }
    if let Some((name, incarnation)) = &guard.node {
        let current: Option<(i64,)> =
            sqlx::query_as("SELECT incarnation FROM server_nodes WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        if current.map(|(c,)| c) != Some(*incarnation) {
            return Err(StoreError::Fenced(format!(
                "node {name} was presumed dead (it missed its heartbeats) and its tasks were taken over"
            )));
        }
    }
    Ok(())
}

impl Engine for Postgres {
    type Tx = PostgresTx;

    async fn migrate(&self) -> Result<()> {
        let migrations = MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                sqlx::migrate::Migration::new(
                    *version,
                    std::borrow::Cow::Borrowed(*description),
                    sqlx::migrate::MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect();
        sqlx::migrate::Migrator::with_migrations(migrations)
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Database(e.into()))
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
             VALUES ($1, $2, FALSE, $3, $4) ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen, \
             version = excluded.version, max_concurrent_tasks = CASE WHEN $5 THEN excluded.max_concurrent_tasks \
             ELSE server_nodes.max_concurrent_tasks END \
             WHERE $6::bigint IS NULL OR server_nodes.incarnation = $6",
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
            "UPDATE server_nodes SET max_concurrent_tasks = $2, is_in_maintenance_mode = $3, \
             last_modified_on = $4, last_modified_by = $5 WHERE name = $1",
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
            "UPDATE server_nodes SET comms_address = $2, builtin_worker = $3 WHERE name = $1",
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
            "UPDATE server_nodes SET incarnation = incarnation + 1 WHERE name = $1 AND last_seen < $2",
        )
        .bind(name)
        .bind(seen_before)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_agent_link(&self, thumbprint: &str, node: &str, since: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO agent_links (thumbprint, node, since) VALUES ($1, $2, $3) \
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
        let done = sqlx::query("DELETE FROM agent_links WHERE thumbprint = $1 AND node = $2")
            .bind(thumbprint)
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_node(&self, name: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM agent_links WHERE node = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM server_nodes WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    async fn clear_agent_links_of(&self, node: &str) -> Result<()> {
        sqlx::query("DELETE FROM agent_links WHERE node = $1")
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn agent_links(&self, thumbprint: Option<&str>) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT thumbprint, node FROM agent_links WHERE $1 IS NULL OR thumbprint = $1 \
             ORDER BY thumbprint",
        )
        .bind(thumbprint)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn close(&self) {
        if let Some(connection) = self.claim.lock().await.take() {
            use sqlx::Connection as _;
            let _ = connection.close().await;
        }
        self.pool.close().await;
        self.lease_pool.close().await;
    }

    async fn begin(&self) -> Result<PostgresTx> {
        Ok(PostgresTx(self.pool.begin().await?))
    }

    async fn meta(&self, key: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(v,)| v))
    }

    async fn set_meta(&self, key: &str, value: &str, replace: bool) -> Result<()> {
        let sql = if replace {
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
        } else {
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING"
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
            sqlx::query_as("SELECT body FROM documents WHERE kind = $1 AND id = $2")
                .bind(kind)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(body,)| body))
    }

    async fn documents(&self, kind: &str, space_id: Option<&str>) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = match space_id {
            Some(space_id) => sqlx::query_as(
                "SELECT body FROM documents WHERE kind = $1 AND space_id = $2 ORDER BY length(id), id",
            )
            .bind(kind)
            .bind(space_id)
            .fetch_all(&self.pool)
            .await?,
            None => {
                sqlx::query_as("SELECT body FROM documents WHERE kind = $1 ORDER BY length(id), id")
                    .bind(kind)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows.into_iter().map(|(body,)| body).collect())
    }

    async fn documents_by_ext(&self, kind: &str, ext: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT body FROM documents WHERE kind = $1 AND ext = $2 ORDER BY length(id), id",
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
        // One array parameter holds the spaces, however many.
        let filter = if spaces.is_some() {
            " AND space_id = ANY($2)"
        } else {
            ""
        };
        let count_sql = format!("SELECT COUNT(*) FROM documents WHERE kind = $1{filter}");
        let mut count = sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(count_sql)).bind(kind);
        if let Some(spaces) = spaces {
            count = count.bind(spaces);
        }
        let (total,) = count.fetch_one(&self.pool).await?;
        let limit_mark = if spaces.is_some() { 3 } else { 2 };
        let page_sql = format!(
            "SELECT body FROM documents WHERE kind = $1{filter} ORDER BY length(id) DESC, id DESC LIMIT ${limit_mark} OFFSET ${}",
            limit_mark + 1
        );
        let mut page = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(page_sql)).bind(kind);
        if let Some(spaces) = spaces {
            page = page.bind(spaces);
        }
        let (limit, offset) = page_bounds(skip, take);
        let rows = page.bind(limit).bind(offset).fetch_all(&self.pool).await?;
        Ok((
            u64::try_from(total).unwrap_or(0),
            rows.into_iter().map(|(body,)| body).collect(),
        ))
    }

    async fn delete_document(&self, kind: &str, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM documents WHERE kind = $1 AND id = $2")
            .bind(kind)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_space(&self, space_id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM documents WHERE space_id = $1")
            .bind(space_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM documents WHERE kind = 'space' AND id = $1")
            .bind(space_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM task_log_chunk WHERE task_num IN (SELECT num FROM tasks WHERE space_id = $1)",
        )
        .bind(space_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM tasks WHERE space_id = $1")
            .bind(space_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Rewrites the documents table, so no dead copy of a row keeps a value in the clear. (A
    /// PostgreSQL store is sealed from its first write, so this runs only if one was not.)
    async fn forget_old_rows(&self) -> Result<()> {
        sqlx::raw_sql("VACUUM FULL documents")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn task(&self, num: i64) -> Result<Option<Task>> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE num = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(num)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(read_task).transpose()
    }

    async fn tasks_in_states(&self, states: &[TaskState]) -> Result<Vec<Task>> {
        let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE state = ANY($1) ORDER BY num");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(states)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(read_task).collect()
    }

    async fn tasks_on_workers_between(&self, from: &str, to: &str) -> Result<Vec<Task>> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE worker_id IS NOT NULL AND start_time IS NOT NULL \
             AND start_time < $1 AND (completed_time IS NULL OR completed_time > $2) ORDER BY num"
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

    async fn update_task(&self, num: i64, task: &Task, guard: &Guard) -> Result<()> {
        let written = write_noting(
            &self.pool,
            UPDATE_TASK,
            20,
            |q| bind_fence(bind_task(q, num, task), guard),
            &guard.notes,
        )
        .await?;
        if written == 0 {
            check_epoch(&mut *self.pool.acquire().await?, guard).await?;
        }
        Ok(())
    }

    async fn transition_tasks(
        &self,
        tasks: &[(i64, &Task)],
        from: TaskState,
        guard: &Guard,
    ) -> Result<Vec<bool>> {
        // One task (most claims): one statement, one round trip.
        if let [(num, task)] = tasks {
            let written = write_noting(
                &self.pool,
                UPDATE_TASK_FROM,
                21,
                |q| bind_fence(bind_task(q, *num, task).bind(from.as_str()), guard),
                &guard.notes,
            )
            .await?;
            if written == 0 {
                check_epoch(&mut *self.pool.acquire().await?, guard).await?;
            }
            return Ok(vec![written == 1]);
        }
        let mut tx = self.pool.begin().await?;
        let mut moved = Vec::with_capacity(tasks.len());
        for (num, task) in tasks {
            let query = bind_task(sqlx::query(UPDATE_TASK_FROM), *num, task).bind(from.as_str());
            let done = bind_fence(query, guard).execute(&mut *tx).await?;
            moved.push(done.rows_affected() == 1);
        }
        if moved.contains(&false) {
            check_epoch(&mut tx, guard).await?;
        }
        send_notes(&mut tx, &guard.notes).await?;
        tx.commit().await?;
        Ok(moved)
    }

    async fn append_chunks_and_end(
        &self,
        chunks: &[Chunk],
        ended: &[(i64, &Task)],
        guard: &Guard,
    ) -> Result<Vec<bool>> {
        let mut tx = self.pool.begin().await?;
        let mut short = false;
        for chunk in chunks {
            let done = chunk_insert(chunk, guard).execute(&mut *tx).await?;
            short |= done.rows_affected() == 0;
        }
        let mut written = Vec::with_capacity(ended.len());
        for (num, task) in ended {
            let query = bind_task(sqlx::query(UPDATE_TASK_FROM_RUNNING), *num, task);
            let done = bind_fence(query, guard).execute(&mut *tx).await?;
            written.push(done.rows_affected() == 1);
        }
        if short || written.contains(&false) {
            check_epoch(&mut tx, guard).await?;
        }
        send_notes(&mut tx, &guard.notes).await?;
        tx.commit().await?;
        Ok(written)
    }

    async fn chunk_after(&self, num: i64, after: i64) -> Result<Option<(i64, String)>> {
        Ok(sqlx::query_as(
            "SELECT last_seq, lines FROM task_log_chunk WHERE task_num = $1 AND last_seq > $2 \
             ORDER BY last_seq LIMIT 1",
        )
        .bind(num)
        .bind(after)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn chunk_before(&self, num: i64, before: i64) -> Result<Option<(i64, String)>> {
        Ok(sqlx::query_as(
            "SELECT first_seq, lines FROM task_log_chunk WHERE task_num = $1 AND first_seq < $2 \
             ORDER BY first_seq DESC LIMIT 1",
        )
        .bind(num)
        .bind(before)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn log_summary(&self, num: i64) -> Result<LogSummary> {
        // octet_length is an INTEGER, whose SUM is a BIGINT (a SUM of BIGINTs would be NUMERIC).
        let (bytes, last_seq, last_source_seq): (Option<i64>, Option<i64>, Option<i64>) =
            sqlx::query_as(
                "SELECT SUM(octet_length(lines)), MAX(last_seq), MAX(max_source_seq) \
                 FROM task_log_chunk WHERE task_num = $1",
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

pub(crate) struct PostgresTx(sqlx::Transaction<'static, sqlx::Postgres>);

impl EngineTx for PostgresTx {
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
            "INSERT INTO documents (kind, id, space_id, name, ext, body) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (kind, id) DO UPDATE SET space_id = EXCLUDED.space_id, name = EXCLUDED.name, \
             ext = EXCLUDED.ext, body = EXCLUDED.body",
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
            "UPDATE documents SET space_id = $3, name = $4, ext = $5, body = $6 \
             WHERE kind = $1 AND id = $2",
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

    async fn notify(&mut self, payload: &str) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(crate::notes::CHANNEL)
            .bind(payload)
            .execute(&mut *self.0)
            .await?;
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
