//! `muster db copy`: moves a stopped node's whole store from SQLite to PostgreSQL, row by row.
//!
//! The copy is at the engine level: every table both engines' schemas have (`meta`, `id_counters`,
//! `documents`, `tasks`, `task_log_chunk`) is read from the source in key order, a batch at a time,
//! and each batch is written to the target in one transaction, so memory stays bounded whatever the
//! store's size. Rows are copied as they are: ids, id counters, log sequence numbers, every byte of
//! the log chunks, and the sealed bytes of sensitive values with the `meta` row that proves which
//! key sealed them. So the target is usable only with the same key file (`secrets.key`), which the
//! operator copies into the new node's data directory with the certificate and `artifacts/` (the
//! data directory's files are not in the store).
//!
//! While it copies, it holds the source's data directory (`muster.lock`, as a server does) and the
//! target database's claim (the session advisory lock every node holds shared, taken alone): a server cannot start on
//! either meanwhile, and a source or target a server uses is refused. At the end it counts each
//! table (documents per kind, log lines and log bytes too) on both sides.

use crate::engine::postgres::Postgres;
use crate::engine::sqlite::Sqlite;
use crate::engine::{Engine as _, TASK_COLUMNS};
use crate::{Result, StoreError, redact};
use sqlx::Row as _;
use std::path::{Path, PathBuf};

/// Rows of `documents`, `tasks` or `id_counters` read and written per transaction.
const BATCH_ROWS: i64 = 500;
/// Log chunks per transaction (a chunk holds a batch of the log writer's lines, so they are the
/// larger rows).
const BATCH_CHUNKS: i64 = 100;

/// What was counted in one table (or one kind of document) on each side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count {
    pub what: String,
    pub source: i64,
    pub target: i64,
}

/// The counts after a copy, source against target.
#[derive(Debug, Clone)]
pub struct CopyReport {
    pub counts: Vec<Count>,
}

impl CopyReport {
    /// Whether every count is the same on both sides.
    pub fn matches(&self) -> bool {
        self.counts.iter().all(|c| c.source == c.target)
    }

    /// The counts as a table, one line each, a mark on each that differs.
    pub fn table(&self) -> String {
        let width = self
            .counts
            .iter()
            .map(|c| c.what.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut text = format!("{:<width$}  {:>12}  {:>12}\n", "table", "source", "target");
        for c in &self.counts {
            let mark = if c.source == c.target {
                ""
            } else {
                "  DIFFERS"
            };
            text.push_str(&format!(
                "{:<width$}  {:>12}  {:>12}{mark}\n",
                c.what, c.source, c.target
            ));
        }
        text
    }
}

/// The SQLite database `from` names (`sqlite:PATH`, PATH a `muster.db` file or the data directory
/// that holds one).
fn sqlite_path(from: &str) -> Result<PathBuf> {
    let Some(path) = from.strip_prefix("sqlite:") else {
        return Err(StoreError::Url(format!(
            "--from must be sqlite:PATH (a stopped server's muster.db or its data directory), not {}",
            redact(from)
        )));
    };
    let path = Path::new(path.strip_prefix("//").unwrap_or(path));
    let path = if path.is_dir() {
        path.join("muster.db")
    } else {
        path.to_path_buf()
    };
    if !path.is_file() {
        return Err(StoreError::Url(format!(
            "--from: there is no SQLite store at {}",
            path.display()
        )));
    }
    Ok(path)
}

fn postgres_url(to: &str) -> Result<&str> {
    if to.starts_with("postgres://") || to.starts_with("postgresql://") {
        Ok(to)
    } else {
        Err(StoreError::Url(format!(
            "--to must be postgres://user:password@host:port/name, not {}",
            redact(to)
        )))
    }
}

/// Holds the data directory of the database at `db` as a server does (`muster.lock`), so a server
/// running on it refuses the copy and none starts meanwhile.
fn lock_source(db: &Path) -> Result<std::fs::File> {
    let dir = db.parent().unwrap_or(Path::new("."));
    let path = dir.join("muster.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::Files(format!("{}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            Err(StoreError::InUse(format!(
                "the source {} is in use by a running Muster server (process {}); stop it first",
                db.display(),
                pid.trim()
            )))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StoreError::Files(format!("{}: {e}", path.display())))
        }
    }
}

/// Copies the whole SQLite store `from` (`sqlite:PATH`) into the PostgreSQL database `to`, which
/// must hold no Muster data yet unless `force` (then its contents are replaced). `progress` hears
/// one line per table. The counts are checked by the caller with [`CopyReport::matches`].
pub async fn copy(
    from: &str,
    to: &str,
    force: bool,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<CopyReport> {
    let path = sqlite_path(from)?;
    let url = postgres_url(to)?;
    let _lock = lock_source(&path)?;
    let source = Sqlite::open(&path).await?;
    // No other process may write it meanwhile: a write lock that is refused at once means one is.
    refuse_if_busy(&source, &path).await?;
    // An older release's store is brought up to date first, as a server would at its start.
    source.migrate().await?;
    let target = Postgres::connect(url).await.map_err(|error| {
        let why = match error {
            StoreError::Database(e) => e.to_string(),
            other => other.to_string(),
        };
        StoreError::Url(format!("--to: cannot connect to {}: {why}", redact(url)))
    })?;
    target.claim(false).await?;
    target.migrate().await?;
    let result = copy_tables(&source, &target, force, progress).await;
    source.close().await;
    target.close().await;
    result
}

/// Refuses a source another process holds a write lock on (a server of another data directory, or
/// a tool), instead of waiting for it.
async fn refuse_if_busy(source: &Sqlite, path: &Path) -> Result<()> {
    let mut connection = source.pool.acquire().await?;
    sqlx::raw_sql("PRAGMA busy_timeout = 0")
        .execute(&mut *connection)
        .await?;
    let busy = sqlx::raw_sql("BEGIN IMMEDIATE; ROLLBACK")
        .execute(&mut *connection)
        .await
        .is_err();
    sqlx::raw_sql("PRAGMA busy_timeout = 10000")
        .execute(&mut *connection)
        .await?;
    if busy {
        return Err(StoreError::InUse(format!(
            "the source {} is locked by another process; stop it first",
            path.display()
        )));
    }
    Ok(())
}

async fn copy_tables(
    source: &Sqlite,
    target: &Postgres,
    force: bool,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<CopyReport> {
    let (documents, tasks, chunks): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM documents), (SELECT COUNT(*) FROM tasks), \
         (SELECT COUNT(*) FROM task_log_chunk)",
    )
    .fetch_one(&target.pool)
    .await?;
    if documents + tasks + chunks > 0 && !force {
        return Err(StoreError::Conflict(format!(
            "the target database already holds a Muster store ({documents} documents, {tasks} tasks, \
             {chunks} log chunks); copy into an empty database, or pass --force to replace its contents"
        )));
    }
    // What a server that started on it once left (its key check, counters) goes too: the source's
    // replace it.
    sqlx::raw_sql("TRUNCATE meta, id_counters, documents, tasks, task_log_chunk")
        .execute(&target.pool)
        .await?;

    let n = copy_meta(source, target).await?;
    progress(&format!("meta: {n} rows copied"));
    let n = copy_counters(source, target).await?;
    progress(&format!("id_counters: {n} rows copied"));
    let n = copy_documents(source, target).await?;
    progress(&format!("documents: {n} rows copied"));
    let n = copy_tasks(source, target, progress).await?;
    progress(&format!("tasks: {n} rows copied"));
    let n = copy_chunks(source, target, progress).await?;
    progress(&format!("task_log_chunk: {n} rows copied"));
    count(source, target).await
}

async fn copy_meta(source: &Sqlite, target: &Postgres) -> Result<i64> {
    // A handful of rows.
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT key, value FROM meta ORDER BY key")
        .fetch_all(&source.pool)
        .await?;
    let mut tx = target.pool.begin().await?;
    for (key, value) in &rows {
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2)")
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(rows.len() as i64)
}

async fn copy_counters(source: &Sqlite, target: &Postgres) -> Result<i64> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT kind, next FROM id_counters ORDER BY kind")
            .fetch_all(&source.pool)
            .await?;
    let mut tx = target.pool.begin().await?;
    for (kind, next) in &rows {
        sqlx::query("INSERT INTO id_counters (kind, next) VALUES ($1, $2)")
            .bind(kind)
            .bind(next)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(rows.len() as i64)
}

type DocumentRow = (String, String, String, String, Option<String>, String);

async fn copy_documents(source: &Sqlite, target: &Postgres) -> Result<i64> {
    let mut copied = 0;
    let mut after: Option<(String, String)> = None;
    loop {
        let rows: Vec<DocumentRow> = match &after {
            None => sqlx::query_as(
                "SELECT kind, id, space_id, name, ext, body FROM documents ORDER BY kind, id LIMIT ?1",
            )
            .bind(BATCH_ROWS)
            .fetch_all(&source.pool)
            .await?,
            Some((kind, id)) => sqlx::query_as(
                "SELECT kind, id, space_id, name, ext, body FROM documents \
                 WHERE kind > ?1 OR (kind = ?1 AND id > ?2) ORDER BY kind, id LIMIT ?3",
            )
            .bind(kind)
            .bind(id)
            .bind(BATCH_ROWS)
            .fetch_all(&source.pool)
            .await?,
        };
        let Some(last) = rows.last() else {
            return Ok(copied);
        };
        after = Some((last.0.clone(), last.1.clone()));
        let mut tx = target.pool.begin().await?;
        for (kind, id, space_id, name, ext, body) in &rows {
            sqlx::query(
                "INSERT INTO documents (kind, id, space_id, name, ext, body) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(kind)
            .bind(id)
            .bind(space_id)
            .bind(name)
            .bind(ext)
            .bind(body)
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                crate::conflict_or(e, || {
                    format!(
                        "the {kind} {id} ({name}): its name is taken in PostgreSQL, whose case rules \
                         are wider than SQLite's; rename one in the source and copy again"
                    )
                })
            })?;
        }
        tx.commit().await?;
        copied += rows.len() as i64;
    }
}

async fn copy_tasks(
    source: &Sqlite,
    target: &Postgres,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<i64> {
    let insert = format!(
        "INSERT INTO tasks ({TASK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
         $12, $13, $14, $15, $16, $17)"
    );
    let select = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE num > ?1 ORDER BY num LIMIT ?2");
    let mut copied = 0i64;
    let mut after = i64::MIN;
    loop {
        let rows = sqlx::query(sqlx::AssertSqlSafe(select.clone()))
            .bind(after)
            .bind(BATCH_ROWS)
            .fetch_all(&source.pool)
            .await?;
        let Some(last) = rows.last() else {
            return Ok(copied);
        };
        after = last.try_get("num")?;
        let mut tx = target.pool.begin().await?;
        for row in &rows {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(insert.clone()));
            for (index, column) in TASK_COLUMNS.split(',').map(str::trim).enumerate() {
                query = match column {
                    "num" => query.bind(row.try_get::<i64, _>(index)?),
                    "has_warnings" => query.bind(row.try_get::<bool, _>(index)?),
                    _ => query.bind(row.try_get::<Option<String>, _>(index)?),
                };
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        copied += rows.len() as i64;
        if copied % 5000 < BATCH_ROWS {
            progress(&format!("tasks: {copied} rows so far"));
        }
    }
}

type ChunkRow = (i64, i64, i64, Option<i64>, i64, String);

async fn copy_chunks(
    source: &Sqlite,
    target: &Postgres,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<i64> {
    let mut copied = 0i64;
    let mut reported = 0i64;
    let mut after = (i64::MIN, i64::MIN);
    loop {
        let rows: Vec<ChunkRow> = sqlx::query_as(
            "SELECT task_num, first_seq, last_seq, max_source_seq, line_count, lines \
             FROM task_log_chunk WHERE task_num > ?1 OR (task_num = ?1 AND first_seq > ?2) \
             ORDER BY task_num, first_seq LIMIT ?3",
        )
        .bind(after.0)
        .bind(after.1)
        .bind(BATCH_CHUNKS)
        .fetch_all(&source.pool)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(copied);
        };
        after = (last.0, last.1);
        let mut tx = target.pool.begin().await?;
        for (task_num, first_seq, last_seq, max_source_seq, line_count, lines) in &rows {
            sqlx::query(
                "INSERT INTO task_log_chunk (task_num, first_seq, last_seq, max_source_seq, line_count, lines) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(task_num)
            .bind(first_seq)
            .bind(last_seq)
            .bind(max_source_seq)
            .bind(line_count)
            .bind(lines)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        copied += rows.len() as i64;
        if copied - reported >= 5000 {
            reported = copied;
            progress(&format!("task_log_chunk: {copied} rows so far"));
        }
    }
}

/// Each table's rows on both sides, the documents per kind, and the log's lines and bytes.
async fn count(source: &Sqlite, target: &Postgres) -> Result<CopyReport> {
    let mut counts = Vec::new();
    for table in [
        "meta",
        "id_counters",
        "documents",
        "tasks",
        "task_log_chunk",
    ] {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        let (s,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_one(&source.pool)
            .await?;
        let (t,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_one(&target.pool)
            .await?;
        counts.push(Count {
            what: table.into(),
            source: s,
            target: t,
        });
    }
    let by_kind = "SELECT kind, COUNT(*) FROM documents GROUP BY kind ORDER BY kind";
    let s: Vec<(String, i64)> = sqlx::query_as(by_kind).fetch_all(&source.pool).await?;
    let t: Vec<(String, i64)> = sqlx::query_as(by_kind).fetch_all(&target.pool).await?;
    let mut kinds: Vec<&String> = s.iter().chain(&t).map(|(k, _)| k).collect();
    kinds.sort();
    kinds.dedup();
    let of = |rows: &[(String, i64)], kind: &str| {
        rows.iter().find(|(k, _)| k == kind).map_or(0, |(_, n)| *n)
    };
    for kind in kinds {
        counts.push(Count {
            what: format!("  documents: {kind}"),
            source: of(&s, kind),
            target: of(&t, kind),
        });
    }
    // Bytes of UTF-8 text on both: SQLite's length() of a BLOB, PostgreSQL's octet_length.
    let (s_lines, s_bytes): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(line_count), 0), COALESCE(SUM(length(CAST(lines AS BLOB))), 0) \
         FROM task_log_chunk",
    )
    .fetch_one(&source.pool)
    .await?;
    let (t_lines, t_bytes): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(line_count), 0)::BIGINT, COALESCE(SUM(octet_length(lines)), 0)::BIGINT \
         FROM task_log_chunk",
    )
    .fetch_one(&target.pool)
    .await?;
    counts.push(Count {
        what: "  log lines".into(),
        source: s_lines,
        target: t_lines,
    });
    counts.push(Count {
        what: "  log bytes".into(),
        source: s_bytes,
        target: t_bytes,
    });
    Ok(CopyReport { counts })
}

#[cfg(test)]
mod tests {
    use super::{CopyReport, Count, copy};
    use crate::StoreError;
    use sqlx::Connection as _;

    /// A source another process holds a write lock on is refused at once, before the target is
    /// dialled (the target here does not exist).
    #[tokio::test]
    async fn a_source_another_process_has_locked_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("muster.db");
        let store = crate::Store::open_sqlite(&db).await.unwrap();
        store.close().await;
        let mut other =
            sqlx::sqlite::SqliteConnection::connect(&format!("sqlite:{}", db.display()))
                .await
                .unwrap();
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();
        let from = format!("sqlite:{}", dir.path().display());
        let error = copy(&from, "postgres://u:p@127.0.0.1:1/none", false, &mut |_| {})
            .await
            .expect_err("refused");
        assert!(
            matches!(&error, StoreError::InUse(m) if m.contains("locked by another process")),
            "{error}"
        );
        sqlx::raw_sql("ROLLBACK").execute(&mut other).await.unwrap();
    }

    #[test]
    fn the_report_marks_a_count_that_differs() {
        let count = |what: &str, source, target| Count {
            what: what.into(),
            source,
            target,
        };
        let same = CopyReport {
            counts: vec![count("tasks", 3, 3)],
        };
        assert!(same.matches());
        assert!(!same.table().contains("DIFFERS"));
        let differs = CopyReport {
            counts: vec![count("tasks", 3, 3), count("task_log_chunk", 5, 4)],
        };
        assert!(!differs.matches());
        let table = differs.table();
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("task_log_chunk") && l.ends_with("DIFFERS")),
            "{table}"
        );
    }
}
