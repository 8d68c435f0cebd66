//! Muster's durable store: the only crate that knows SQL. Configuration resources are kept as JSON
//! documents with the columns that lookups need; tasks and their log lines have tables of their own
//! because they are written on the hot path.
//!
//! Architecture invariant: every write that must be seen together is one transaction (a space with
//! its default pool and policy; a moved default flag).

mod documents;
mod sealing;
mod tasks;

pub use documents::{DocKind, Document, Row};
pub use sealing::KEY_FILE;
pub use tasks::TaskQuery;

use muster_core::IdKind;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique name is taken.
    #[error("{0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("a stored document does not read: {0}")]
    Corrupt(String),
    /// The key that seals sensitive values cannot be had.
    #[error("the key of sensitive values: {0}")]
    Key(String),
    #[error("the database's files: {0}")]
    Files(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The schema, one script per version; a database is brought up to the last one when it opens.
const MIGRATIONS: &[&str] = &[
    include_str!("schema_v1.sql"),
    include_str!("schema_v2.sql"),
    include_str!("schema_v3.sql"),
    include_str!("schema_v4.sql"),
];

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    /// Bumped after every committed write of a space, pool or worker: a reader that cached them
    /// knows whether its copy is still current.
    workers_generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Seals sensitive values before they are written and opens them when read.
    sealer: std::sync::Arc<sealing::Sealer>,
    /// The tasks committed since the dispatcher last took them (None: nobody watches), so it
    /// keeps its queue without reading every queued task again.
    new_tasks: std::sync::Arc<std::sync::Mutex<Option<Vec<muster_core::resources::Task>>>>,
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` in WAL mode with full synchronous
    /// commits, so a task acknowledged to a client survives a crash. The database files are 0600,
    /// and sensitive values are sealed with the key file `KEY_FILE` beside it (made at the first
    /// start); values stored before sealing existed are sealed now.
    pub async fn open_sqlite(path: &Path) -> Result<Store> {
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
        // A new database has no meta table yet.
        let (tables,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
        )
        .fetch_one(&pool)
        .await?;
        let check: Option<(String,)> = if tables == 0 {
            None
        } else {
            sqlx::query_as("SELECT value FROM meta WHERE key = 'sealing_check'")
                .fetch_optional(&pool)
                .await?
        };
        let key = path.with_file_name(KEY_FILE);
        let sealer = sealing::Sealer::load_or_create(&key, check.is_none())?;
        if let Some((check,)) = &check
            && sealer.open(check).ok().as_deref() != Some(SEALING_CHECK)
        {
            return Err(StoreError::Key(format!(
                "{} is not the key this database's values were sealed with",
                key.display()
            )));
        }
        let store = Store {
            pool,
            workers_generation: Default::default(),
            sealer: std::sync::Arc::new(sealer),
            new_tasks: Default::default(),
        };
        store.migrate().await?;
        if check.is_none() {
            store
                .set_meta("sealing_check", &store.sealer.seal(SEALING_CHECK))
                .await?;
        }
        store.seal_plaintext().await?;
        Ok(store)
    }

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

    /// From now on, keeps each task committed as new for `take_new_tasks`. Call it before reading
    /// the queued tasks once: a task committed meanwhile is then in one or both, never in neither.
    pub fn watch_new_tasks(&self) {
        let mut new = self.new_tasks.lock().expect("new tasks lock");
        if new.is_none() {
            *new = Some(Vec::new());
        }
    }

    /// The tasks committed as new since the last call, oldest first.
    pub fn take_new_tasks(&self) -> Vec<muster_core::resources::Task> {
        self.new_tasks
            .lock()
            .expect("new tasks lock")
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn committed_new_task(&self, task: &muster_core::resources::Task) {
        if let Some(new) = self.new_tasks.lock().expect("new tasks lock").as_mut() {
            new.push(task.clone());
        }
    }

    /// Changes whenever a space, worker pool or worker has been written or deleted since.
    pub fn workers_generation(&self) -> u64 {
        self.workers_generation
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    fn bump_workers_generation(&self, kind: DocKind) {
        if matches!(kind, DocKind::Space | DocKind::WorkerPool | DocKind::Worker) {
            self.workers_generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The next id of a kind: one counter per kind for the whole server.
    pub async fn next_id(&self, kind: IdKind) -> Result<String> {
        let (next,): (i64,) = sqlx::query_as(
            "INSERT INTO id_counters (kind, next) VALUES (?1, 1) \
             ON CONFLICT (kind) DO UPDATE SET next = next + 1 RETURNING next",
        )
        .bind(kind.prefix())
        .fetch_one(&self.pool)
        .await?;
        Ok(kind.format(next))
    }

    pub async fn meta(&self, key: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as("SELECT value FROM meta WHERE key = ?1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(v,)| v))
    }

    pub async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// What the meta row `sealing_check` holds, sealed: the key that opens it is this database's.
const SEALING_CHECK: &str = "muster";

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

fn conflict_or(error: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what()),
        _ => StoreError::Database(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events are paged by the database, newest first (Events-10 after Events-9), in the spaces
    /// asked for.
    #[tokio::test]
    async fn a_page_of_the_newest_documents_in_some_spaces() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("muster.db"))
            .await
            .unwrap();
        for n in 1..=12 {
            let event = muster_core::resources::Event {
                id: format!("Events-{n}"),
                space_id: match n % 3 {
                    0 => None,
                    1 => Some("Spaces-1".into()),
                    _ => Some("Spaces-2".into()),
                },
                ..Default::default()
            };
            store.put(&event).await.unwrap();
        }
        let ids = |page: Vec<muster_core::resources::Event>| {
            page.into_iter().map(|e| e.id).collect::<Vec<_>>()
        };
        let (total, page) = store
            .page_newest::<muster_core::resources::Event>(None, 1, 3)
            .await
            .unwrap();
        assert_eq!(total, 12);
        assert_eq!(ids(page), ["Events-11", "Events-10", "Events-9"]);
        let spaces = ["Spaces-1".to_string(), String::new()];
        let (total, page) = store
            .page_newest::<muster_core::resources::Event>(Some(&spaces), 0, 100)
            .await
            .unwrap();
        assert_eq!(total, 8);
        assert_eq!(
            ids(page),
            [
                "Events-12",
                "Events-10",
                "Events-9",
                "Events-7",
                "Events-6",
                "Events-4",
                "Events-3",
                "Events-1"
            ]
        );
        let (total, page) = store
            .page_newest::<muster_core::resources::Event>(Some(&[]), 0, 100)
            .await
            .unwrap();
        assert_eq!((total, page.len()), (0, 0));
    }

    /// A data directory of schema v3 keeps its task logs through the move to chunks (v4): every
    /// line, in order, with its step and its agent sequence number.
    #[tokio::test]
    async fn lines_stored_before_chunks_read_back_after_the_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("muster.db");
        {
            let options = SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .unwrap();
            for script in &MIGRATIONS[..3] {
                sqlx::raw_sql(*script).execute(&pool).await.unwrap();
            }
            sqlx::raw_sql(
                "PRAGMA user_version = 3; \
                 INSERT INTO task_log (task_num, seq, occurred_at, category, message, source_seq, step) VALUES \
                 (7, 1, '2026-12-01T10:11:12.000001Z', 'Info', 'first \"quoted\" line', NULL, NULL), \
                 (7, 2, '2026-12-01T10:11:13.5Z', 'Error', 'from the agent', 41, 2);",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let store = Store::open_sqlite(&path).await.unwrap();
        let lines = store.logs("ServerTasks-7", 0, 100).await.unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].message_text, "first \"quoted\" line");
        assert_eq!(lines[1].step, Some(2));
        assert_eq!(store.last_log_seq("ServerTasks-7").await.unwrap(), 2);
        assert_eq!(store.last_source_seq("ServerTasks-7").await.unwrap(), 41);
        let (last, count, text) = store
            .raw_log_page("ServerTasks-7", 0, 10)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((last, count), (2, 2));
        assert_eq!(
            text,
            "10:11:12  Info     | first \"quoted\" line\n10:11:13  Error    | from the agent\n"
        );
        // New lines go on after the old ones.
        let line = muster_core::resources::LogLine {
            seq: 3,
            occurred_at: muster_core::time::now(),
            category: muster_core::LogCategory::Info,
            message_text: "after the upgrade".into(),
            step: None,
        };
        store
            .append_logs(&[("ServerTasks-7".into(), line, None)])
            .await
            .unwrap();
        let lines = store.logs("ServerTasks-7", 1, 100).await.unwrap();
        let texts: Vec<&str> = lines.iter().map(|l| l.message_text.as_str()).collect();
        assert_eq!(texts, ["from the agent", "after the upgrade"]);
    }

    /// A sensitive value stored in the clear before values were sealed is sealed at the next open:
    /// neither the database nor its WAL holds it afterwards, and it reads back as it was. The key
    /// file is made 0600, the database files are 0600, and another key is refused.
    #[tokio::test]
    async fn sensitive_values_stored_in_the_clear_are_sealed_on_upgrade() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("muster.db");
        let secret = "plain-old-s3cret-value";
        {
            let options = SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal);
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .unwrap();
            for script in MIGRATIONS {
                sqlx::raw_sql(*script).execute(&pool).await.unwrap();
            }
            let runbook = serde_json::json!({"Id": "Runbooks-1", "SpaceId": "Spaces-1", "Name": "R",
                "Variables": [{"Name": "Pw", "Value": secret, "IsSensitive": true},
                              {"Name": "Plain", "Value": "visible-value"}]});
            sqlx::query("INSERT INTO documents (kind, id, space_id, name, ext, body) VALUES ('runbook', 'Runbooks-1', 'Spaces-1', 'R', 'r', ?1)")
                .bind(runbook.to_string())
                .execute(&pool)
                .await
                .unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "PRAGMA user_version = {}",
                MIGRATIONS.len()
            )))
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = Store::open_sqlite(&path).await.unwrap();
        let on_disk = |name: &str| std::fs::read(dir.path().join(name)).unwrap_or_default();
        for file in ["muster.db", "muster.db-wal"] {
            let bytes = on_disk(file);
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{file} holds the secret in the clear"
            );
        }
        let visible = on_disk("muster.db");
        assert!(visible.windows(13).any(|w| w == b"visible-value"));
        let runbook: muster_core::runbooks::Runbook =
            store.get("Runbooks-1").await.unwrap().unwrap();
        assert_eq!(runbook.variables[0].value.as_deref(), Some(secret));
        for file in ["muster.db", "muster.db-wal", "muster.db-shm", KEY_FILE] {
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        store.close().await;
        // The same key opens it again; another key, or none, is refused.
        let store = Store::open_sqlite(&path).await.unwrap();
        store.close().await;
        let key = dir.path().join(KEY_FILE);
        let kept = std::fs::read(&key).unwrap();
        std::fs::remove_file(&key).unwrap();
        let missing = Store::open_sqlite(&path).await.err().unwrap();
        assert!(missing.to_string().contains("missing"), "{missing}");
        std::fs::write(&key, [7u8; 32]).unwrap();
        let wrong = Store::open_sqlite(&path).await.err().unwrap();
        assert!(wrong.to_string().contains("not the key"), "{wrong}");
        std::fs::write(&key, kept).unwrap();
        Store::open_sqlite(&path).await.unwrap().close().await;
    }

    /// Long lines of one batch are split over chunks of about 1 MiB, and read back whole and in
    /// order from any point.
    #[tokio::test]
    async fn a_batch_of_long_lines_is_stored_in_bounded_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("muster.db"))
            .await
            .unwrap();
        let lines: Vec<_> = (1..=5)
            .map(|seq| {
                let line = muster_core::resources::LogLine {
                    seq,
                    occurred_at: muster_core::time::now(),
                    category: muster_core::LogCategory::Info,
                    message_text: format!("{seq}{}", "x".repeat(600 * 1024)),
                    step: None,
                };
                ("ServerTasks-3".to_string(), line, Some(seq as u64 + 100))
            })
            .collect();
        store.append_logs(&lines).await.unwrap();
        let (chunks,): (i64,) = sqlx::query_as("SELECT count(*) FROM task_log_chunk")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(chunks, 5, "600 KiB lines take a chunk each");
        let seqs = |lines: &[muster_core::resources::LogLine]| -> Vec<i64> {
            lines.iter().map(|l| l.seq).collect()
        };
        // A read answers about 1 MiB of messages at most, and pages on from its last line.
        let read = store.logs("ServerTasks-3", 2, 100).await.unwrap();
        assert_eq!(seqs(&read), [3, 4]);
        assert!(read[0].message_text.starts_with("3xxx"));
        let rest = store.logs("ServerTasks-3", 4, 100).await.unwrap();
        assert_eq!(seqs(&rest), [5]);
        assert!(
            store
                .logs("ServerTasks-3", 5, 100)
                .await
                .unwrap()
                .is_empty()
        );
        // The tail is read from the end, by lines and by bytes, and counts what comes before it.
        let (tail, earlier) = store.logs_tail("ServerTasks-3", 2, 4 << 20).await.unwrap();
        assert_eq!((seqs(&tail), earlier), (vec![4, 5], 3));
        let (tail, earlier) = store.logs_tail("ServerTasks-3", 100, 1).await.unwrap();
        assert_eq!((seqs(&tail), earlier), (vec![5], 4));
        let (tail, earlier) = store.logs_tail("ServerTasks-9", 100, 1).await.unwrap();
        assert_eq!((seqs(&tail), earlier), (vec![], 0));
        assert_eq!(store.last_source_seq("ServerTasks-3").await.unwrap(), 105);
    }
}
