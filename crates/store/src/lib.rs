//! Muster's durable store: the only crate that knows SQL. Configuration resources are kept as JSON
//! documents with the columns that lookups need; tasks and their log lines have tables of their own
//! because they are written on the hot path.
//!
//! Architecture invariant: every write that must be seen together is one transaction (a space with
//! its default pool and policy; a moved default flag).

mod documents;
mod tasks;

pub use documents::{DocKind, Document, Row};
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
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` in WAL mode with full synchronous
    /// commits, so a task acknowledged to a client survives a crash.
    pub async fn open_sqlite(path: &Path) -> Result<Store> {
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
        let store = Store { pool };
        store.migrate().await?;
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

fn conflict_or(error: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what()),
        _ => StoreError::Database(error),
    }
}
