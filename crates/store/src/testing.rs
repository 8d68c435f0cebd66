//! Fresh PostgreSQL databases for tests: the store's own suite and the integration tests that start
//! `muster server --database postgres://…`. Only tests use it; it lives here because this is the
//! only crate that speaks SQL.
//!
//! The server is `MUSTER_TEST_POSTGRES_URL` (a database the role can connect to, with the right to
//! CREATE DATABASE), by default [`DEFAULT_URL`], the role `scripts/test.sh` creates on the local
//! cluster it starts. Each [`TestDatabase`] is a new database `muster_test_<random>`, dropped when
//! it is dropped. A server that cannot be reached fails the test, saying so: it is never skipped.

use sqlx::Connection as _;

/// The role and cluster `scripts/test.sh` sets up: password login over TCP on the loopback.
pub const DEFAULT_URL: &str = "postgres://muster_test:muster_test@127.0.0.1:5432/postgres";

/// A database of its own for one test, dropped (with any connection still open) when dropped.
pub struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates a new, empty database. Panics, with what to do, when PostgreSQL cannot be reached.
    /// Blocks; callable from inside or outside a Tokio runtime.
    pub fn create() -> TestDatabase {
        let admin_url = std::env::var("MUSTER_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_URL.to_string());
        let name = format!("muster_test_{}", random_suffix());
        let url = database_url(&admin_url, &name);
        let sql = format!("CREATE DATABASE {name}");
        if let Err(error) = run_admin(&admin_url, sql) {
            panic!(
                "PostgreSQL is not reachable as {}: {error}. The store's tests run on PostgreSQL too: \
                 run scripts/test.sh (it installs and starts PostgreSQL and makes the test role), or \
                 set MUSTER_TEST_POSTGRES_URL to a database whose role may CREATE DATABASE.",
                crate::redact(&admin_url)
            );
        }
        TestDatabase {
            admin_url,
            name,
            url,
        }
    }

    /// The new database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(error) = run_admin(&self.admin_url, sql) {
            eprintln!("cannot drop the test database {}: {error}", self.name);
        }
    }
}

/// Runs one statement on the admin database, on a thread of its own with its own runtime (so a
/// test's runtime, or none, can call it, and a `Drop` too).
fn run_admin(admin_url: &str, sql: String) -> Result<(), String> {
    let admin_url = admin_url.to_string();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let mut connection = sqlx::postgres::PgConnection::connect(&admin_url)
                .await
                .map_err(|e| e.to_string())?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut connection)
                .await
                .map_err(|e| e.to_string())?;
            connection.close().await.map_err(|e| e.to_string())
        })
    })
    .join()
    .unwrap_or_else(|_| Err("the thread that ran it panicked".into()))
}

/// Adds `count` finished (Success) tasks to a space, each with `lines_each` log lines ("task N
/// line M"), a thousand tasks per transaction: a store of volume in seconds, for tests that need
/// one. Returns the ids of the first and the last.
pub async fn add_finished_tasks(
    store: &crate::Store,
    space_id: &str,
    count: usize,
    lines_each: usize,
) -> crate::Result<(String, String)> {
    use crate::engine::{Engine as _, EngineTx as _, on_engine};
    use muster_core::resources::{LogLine, Task};
    use muster_core::{IdKind, LogCategory, TaskState};
    let at =
        muster_core::time::parse_date(&muster_core::time::format_date(&muster_core::time::now()))
            .expect("a date reads back");
    let mut ids = Vec::new();
    let mut left = count;
    while left > 0 {
        let batch = left.min(1000);
        left -= batch;
        let mut tasks = Vec::with_capacity(batch);
        on_engine!(&*store.engine, e => {
            let mut tx = e.begin().await?;
            for _ in 0..batch {
                let num = tx.next_number(IdKind::ServerTask.prefix()).await?;
                let task = Task {
                    id: IdKind::ServerTask.format(num),
                    space_id: space_id.into(),
                    name: "AdHocScript".into(),
                    description: format!("bulk task {num}"),
                    arguments: serde_json::Map::new(),
                    state: TaskState::Success,
                    error_message: None,
                    queue_time: at,
                    queue_time_expiry: None,
                    start_time: Some(at),
                    completed_time: Some(at),
                    last_updated_time: at,
                    server_node: None,
                    has_warnings_or_errors: num % 7 == 0,
                    queue_reason: None,
                    worker_name: Some("bulk".into()),
                    worker_id: None,
                };
                tx.insert_task(num, &task).await?;
                tasks.push(task);
            }
            tx.commit().await?;
        });
        let lines: Vec<(String, LogLine, Option<u64>)> = tasks
            .iter()
            .flat_map(|task| {
                (1..=lines_each).map(move |seq| {
                    let line = LogLine {
                        seq: seq as i64,
                        occurred_at: at,
                        category: LogCategory::Info,
                        message_text: format!("{} line {seq}", task.id),
                        step: None,
                    };
                    (task.id.clone(), line, None)
                })
            })
            .collect();
        store.append_logs(&lines).await?;
        ids.extend(tasks.first().map(|t| t.id.clone()));
        ids.extend(tasks.last().map(|t| t.id.clone()));
    }
    Ok((
        ids.first().cloned().unwrap_or_default(),
        ids.last().cloned().unwrap_or_default(),
    ))
}

/// `admin_url` with its database name replaced by `name` (its query string kept).
fn database_url(admin_url: &str, name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (admin_url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

fn random_suffix() -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::database_url;

    #[test]
    fn a_test_database_url_names_the_new_database() {
        assert_eq!(
            database_url("postgres://u:p@127.0.0.1:5432/postgres", "t1"),
            "postgres://u:p@127.0.0.1:5432/t1"
        );
        assert_eq!(
            database_url("postgres://u@localhost?sslmode=disable", "t1"),
            "postgres://u@localhost/t1?sslmode=disable"
        );
        assert_eq!(
            crate::redact("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
    }
}
