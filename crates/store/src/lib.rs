//! Muster's durable store: the only crate that knows SQL. Configuration resources are kept as JSON
//! documents with the columns that lookups need; tasks and their log lines have tables of their own
//! because they are written on the hot path.
//!
//! `Store` is the façade the server uses, whatever the database: SQLite (the embedded default) or
//! PostgreSQL. Behind it is one narrow engine interface (`engine::Engine`) and one module per engine
//! (`engine::sqlite`, `engine::postgres`), each with its own SQL and its own migrations.
//!
//! Architecture invariant: every write that must be seen together is one transaction (a space with
//! its default pool and policy; a moved default flag).

mod copy;
mod documents;
mod engine;
mod nodes;
mod notes;
mod sealing;
mod tasks;
pub mod testing;
#[cfg(test)]
mod tests;

pub use copy::{CopyReport, Count, copy};
pub use documents::{DocKind, Document, Row};
pub use nodes::Node;
pub use notes::Note;
pub use sealing::KEY_FILE;
pub use tasks::TaskQuery;

use engine::{Engine as _, Engines, on_engine};
use muster_core::IdKind;
use std::path::Path;
use std::sync::Arc;

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
    /// Another server holds the database.
    #[error("{0}")]
    InUse(String),
    /// A write of the dispatcher's, refused because another node has taken the role over.
    #[error("{0}")]
    Fenced(String),
    /// `--database` names no engine this store has.
    #[error("{0}")]
    Url(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Clone)]
pub struct Store {
    engine: Arc<Engines>,
    /// Bumped after every committed write of a space, pool or worker: a reader that cached them
    /// knows whether its copy is still current.
    workers_generation: Arc<std::sync::atomic::AtomicU64>,
    /// Seals sensitive values before they are written and opens them when read.
    sealer: Arc<sealing::Sealer>,
    /// The tasks committed since the dispatcher last took them (None: nobody watches), so it
    /// keeps its queue without reading every queued task again.
    new_tasks: Arc<std::sync::Mutex<Option<Vec<muster_core::resources::Task>>>>,
    /// What this node tells the other nodes of the database, and hears from them.
    notes: Arc<notes::Notes>,
    /// The dispatcher's epoch this node holds (0: none), which its writes of tasks carry.
    epoch: Arc<std::sync::atomic::AtomicI64>,
    /// This node's name and incarnation, which its writes of tasks and lines carry (PostgreSQL).
    incarnation: Arc<std::sync::Mutex<Option<(String, i64)>>>,
    /// The node that held the dispatcher's lease before this node took it.
    previous_dispatcher: Arc<std::sync::Mutex<Option<String>>>,
}

impl Store {
    /// Opens the store `database` names: `postgres://…` (or `postgresql://…`) is a PostgreSQL
    /// database, `sqlite:PATH` a SQLite file. Sensitive values are sealed with the key file
    /// `KEY_FILE` in `data_dir` (for SQLite: beside the database file).
    pub async fn open(database: &str, data_dir: &Path) -> Result<Store> {
        if database.starts_with("postgres://") || database.starts_with("postgresql://") {
            return Store::open_postgres(database, &data_dir.join(KEY_FILE)).await;
        }
        if let Some(path) = database.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            return Store::open_sqlite(Path::new(path)).await;
        }
        Err(StoreError::Url(format!(
            "the database must be postgres://user:password@host/name or sqlite:PATH, not {}",
            redact(database)
        )))
    }

    /// Opens (creating if needed) the SQLite database at `path` in WAL mode with full synchronous
    /// commits, so a task acknowledged to a client survives a crash. The database files are 0600,
    /// and sensitive values are sealed with the key file `KEY_FILE` beside it (made at the first
    /// start); values stored before sealing existed are sealed now.
    pub async fn open_sqlite(path: &Path) -> Result<Store> {
        let engine = engine::sqlite::Sqlite::open(path).await?;
        Store::start(Engines::Sqlite(engine), &path.with_file_name(KEY_FILE)).await
    }

    /// Opens the PostgreSQL database at `url` and brings its schema up to date. Sensitive values
    /// are sealed with the key file `key_file` (made at the first start when the database holds
    /// no sealed value yet). The store claims the database until it is closed: a second store on
    /// it is refused (`StoreError::InUse`).
    pub async fn open_postgres(url: &str, key_file: &Path) -> Result<Store> {
        let engine = engine::postgres::Postgres::connect(url).await?;
        Store::start(Engines::Postgres(engine), key_file).await
    }

    /// Claims the database (PostgreSQL), migrates, proves that `key` is the key of this database's
    /// sealed values (a new database records a value sealed with it), and seals values stored in
    /// the clear.
    async fn start(engine: Engines, key: &Path) -> Result<Store> {
        // A database another server uses is refused before anything is read or migrated.
        if let Engines::Postgres(postgres) = &engine {
            postgres.claim(true).await?;
        }
        on_engine!(&engine, e => e.migrate().await)?;
        let mut check = on_engine!(&engine, e => e.meta("sealing_check").await)?;
        let sealer = sealing::Sealer::load_or_create(key, check.is_none())?;
        if check.is_none() {
            // Only if no other process recorded its own meanwhile: then this key is refused below.
            let sealed = sealer.seal(SEALING_CHECK);
            on_engine!(&engine, e => e.set_meta("sealing_check", &sealed, false).await)?;
            check = on_engine!(&engine, e => e.meta("sealing_check").await)?;
        }
        if check
            .as_deref()
            .and_then(|c| sealer.open(c).ok())
            .as_deref()
            != Some(SEALING_CHECK)
        {
            return Err(StoreError::Key(format!(
                "{} is not the key this database's values were sealed with (a node of a database \
                 that other nodes use needs their key: copy secrets.key, and the server-certificate \
                 directory, from one of them)",
                key.display()
            )));
        }
        let store = Store {
            engine: Arc::new(engine),
            workers_generation: Default::default(),
            sealer: Arc::new(sealer),
            new_tasks: Default::default(),
            notes: Arc::new(notes::Notes::new()),
            epoch: Default::default(),
            incarnation: Default::default(),
            previous_dispatcher: Default::default(),
        };
        store.seal_plaintext().await?;
        store.listen_to_other_nodes().await?;
        Ok(store)
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

    fn watching_new_tasks(&self) -> bool {
        self.new_tasks.lock().expect("new tasks lock").is_some()
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

    /// After a committed write of `kind`: a space, pool or worker moves the generation (the other
    /// nodes move theirs by the note `workers_note` sent with the commit).
    fn bump_workers_generation(&self, kind: DocKind) {
        if kind.is_of_workers() {
            self.bump_generation_only();
        }
    }

    fn bump_generation_only(&self) {
        self.workers_generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// The token of a running task's scripts (`MUSTER_TASK_TOKEN`), signed with the database's key.
    pub fn task_token(&self, task_id: &str) -> String {
        self.sealer.task_token(task_id)
    }

    /// The task a token was given for, if it was signed with the database's key (whether that task
    /// still runs is the caller's to check).
    pub fn task_of_token(&self, token: &str) -> Option<String> {
        self.sealer.task_of_token(token)
    }

    /// Which engine the store runs on: "sqlite" or "postgres".
    pub fn engine_name(&self) -> &'static str {
        match &*self.engine {
            Engines::Sqlite(_) => "sqlite",
            Engines::Postgres(_) => "postgres",
        }
    }

    pub async fn close(&self) {
        self.notes.stop();
        on_engine!(&*self.engine, e => e.close().await)
    }

    /// The next id of a kind: one counter per kind for the whole server.
    pub async fn next_id(&self, kind: IdKind) -> Result<String> {
        let next = on_engine!(&*self.engine, e => e.next_id(kind.prefix()).await)?;
        Ok(kind.format(next))
    }

    pub async fn meta(&self, key: &str) -> Result<Option<String>> {
        on_engine!(&*self.engine, e => e.meta(key).await)
    }

    pub async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        on_engine!(&*self.engine, e => e.set_meta(key, value, true).await)
    }
}

/// What the meta row `sealing_check` holds, sealed: the key that opens it is this database's.
const SEALING_CHECK: &str = "muster";

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn conflict_or(error: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what()),
        _ => StoreError::Database(error),
    }
}
