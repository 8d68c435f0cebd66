//! Notes between the nodes that share one database: "this changed, look again". A note carries an
//! id, never data; readers read the committed rows. Every note reaches the store's own subscribers
//! at once; on PostgreSQL it also goes out by `pg_notify` on the channel `muster`, which every node
//! LISTENs to, so a node hears another's commit without polling. SQLite has one node: its notes stay
//! in the process.
//!
//! A lost listening connection may have lost notes: the listener then says `Resync`, and each
//! reader reads what it keeps again.

use crate::engine::Engines;
use crate::{Result, Store};

/// The PostgreSQL channel all nodes of a database listen to.
pub const CHANNEL: &str = "muster";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// A task was committed as new.
    NewTask(String),
    /// A task's state changed (it was claimed, asked to cancel, or ended).
    Task(String),
    /// A task's log has new lines.
    Lines(String),
    /// A space, worker pool or worker was written or deleted.
    Workers,
    /// A node's record (its cap, its maintenance mode) was changed by an administrator.
    Node(String),
    /// An agent's link opened or closed on some node, or its worker was deleted (by thumbprint).
    Agent(String),
    /// Notes may have been missed: read everything kept from them again.
    Resync,
}

impl Note {
    fn encode(&self, origin: &str) -> String {
        match self {
            Note::NewTask(id) => format!("{origin} new {id}"),
            Note::Task(id) => format!("{origin} task {id}"),
            Note::Lines(id) => format!("{origin} lines {id}"),
            Note::Workers => format!("{origin} workers -"),
            Note::Node(name) => format!("{origin} node {name}"),
            Note::Agent(thumbprint) => format!("{origin} agent {thumbprint}"),
            Note::Resync => format!("{origin} resync -"),
        }
    }

    /// A note from the channel, with the store that sent it; None for what no node sends.
    fn decode(payload: &str) -> Option<(&str, Note)> {
        let mut parts = payload.splitn(3, ' ');
        let (origin, kind, arg) = (parts.next()?, parts.next()?, parts.next()?);
        let id = || arg.to_string();
        let note = match kind {
            "new" => Note::NewTask(id()),
            "task" => Note::Task(id()),
            "lines" => Note::Lines(id()),
            "workers" => Note::Workers,
            "node" => Note::Node(id()),
            "agent" => Note::Agent(id()),
            "resync" => Note::Resync,
            _ => return None,
        };
        Some((origin, note))
    }
}

/// Where a store's notes go.
pub(crate) struct Notes {
    /// This store's mark on what it sends, so its listener skips its own notes.
    origin: String,
    local: tokio::sync::broadcast::Sender<Note>,
    listener: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Notes {
    pub(crate) fn new() -> Notes {
        let mut origin = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut origin)
            .expect("the system gives randomness");
        Notes {
            origin: origin.iter().map(|b| format!("{b:02x}")).collect(),
            local: tokio::sync::broadcast::channel(4096).0,
            listener: Default::default(),
        }
    }

    pub(crate) fn stop(&self) {
        if let Some(listener) = self.listener.lock().expect("notes lock").take() {
            listener.abort();
        }
    }
}

impl Store {
    /// Every note from now on, this node's and (on PostgreSQL) every other node's. A reader that
    /// falls behind gets `Lagged` and must read what it keeps again, as after `Resync`.
    pub fn notes(&self) -> tokio::sync::broadcast::Receiver<Note> {
        self.notes.local.subscribe()
    }

    /// Tells this node's readers and every other node. Call it after the commit it is about.
    pub async fn note(&self, note: Note) -> Result<()> {
        self.notes.local.send(note.clone()).ok();
        self.note_others(note).await
    }

    /// Tells only the other nodes.
    pub(crate) async fn note_others(&self, note: Note) -> Result<()> {
        if let Engines::Postgres(postgres) = &*self.engine {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(note.encode(&self.notes.origin))
                .execute(&postgres.pool)
                .await?;
        }
        Ok(())
    }

    /// The payload of a note sent inside a transaction (`EngineTx::notify`): it goes out with the
    /// commit, or not at all.
    pub(crate) fn payload(&self, note: &Note) -> String {
        note.encode(&self.notes.origin)
    }

    /// Tells only this node's readers (what the other nodes learn from their own listeners).
    pub(crate) fn note_locally(&self, note: Note) {
        self.notes.local.send(note).ok();
    }

    /// Starts listening to the other nodes' notes (PostgreSQL only). A new task of another node is
    /// read and kept for the dispatcher (`take_new_tasks`) before its note goes to the readers.
    pub(crate) async fn listen_to_other_nodes(&self) -> Result<()> {
        let Engines::Postgres(postgres) = &*self.engine else {
            return Ok(());
        };
        let mut listener = sqlx::postgres::PgListener::connect_with(&postgres.pool).await?;
        listener.listen(CHANNEL).await?;
        let store = self.clone();
        let handle = tokio::spawn(async move {
            loop {
                match listener.try_recv().await {
                    Ok(Some(notification)) => {
                        let Some((origin, note)) = Note::decode(notification.payload()) else {
                            continue;
                        };
                        if origin == store.notes.origin {
                            continue;
                        }
                        store.heard(note).await;
                    }
                    // The connection was lost (and is made again on the next call): notes sent
                    // meanwhile are lost.
                    Ok(None) => store.note_locally(Note::Resync),
                    Err(_) => {
                        store.note_locally(Note::Resync);
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                }
            }
        });
        *self.notes.listener.lock().expect("notes lock") = Some(handle);
        Ok(())
    }

    /// Another node's note: what the store itself keeps from it first, then the readers.
    async fn heard(&self, note: Note) {
        match &note {
            Note::NewTask(id) => {
                if self.watching_new_tasks()
                    && let Ok(Some(task)) = self.get_task(id).await
                {
                    self.committed_new_task(&task);
                }
            }
            Note::Workers | Note::Resync => self.bump_generation_only(),
            _ => {}
        }
        self.note_locally(note);
    }
}

/// The dispatcher's role among the nodes: on PostgreSQL a lease that one node holds at a time; on
/// SQLite, whose one node always holds it, epoch 0 for ever.
impl Store {
    /// Takes the dispatcher's lease for `ttl` if nobody holds it: Some(epoch) when this node now
    /// dispatches. The store's own writes of tasks hold the epoch from then on.
    pub async fn take_dispatch_lease(
        &self,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<i64>> {
        let taken = match &*self.engine {
            Engines::Sqlite(_) => return Ok(Some(0)),
            Engines::Postgres(postgres) => postgres.take_lease(holder, ttl).await?,
        };
        let Some((epoch, previous)) = taken else {
            return Ok(None);
        };
        self.epoch.store(epoch, std::sync::atomic::Ordering::SeqCst);
        *self.previous_dispatcher.lock().expect("store lock") =
            Some(previous).filter(|p| !p.is_empty() && p != holder);
        Ok(Some(epoch))
    }

    /// The node that held the dispatcher's lease before this node took it (None: nobody, or this
    /// node itself): it stopped, or was paused past its lease.
    pub fn previous_dispatcher(&self) -> Option<String> {
        self.previous_dispatcher.lock().expect("store lock").clone()
    }

    /// Extends the lease; false once another node took it over (this node must stop dispatching,
    /// and its writes of tasks are refused from then on).
    pub async fn renew_dispatch_lease(&self, epoch: i64, ttl: std::time::Duration) -> Result<bool> {
        match &*self.engine {
            Engines::Sqlite(_) => Ok(true),
            Engines::Postgres(postgres) => postgres.renew_lease(epoch, ttl).await,
        }
    }

    /// This node no longer dispatches: its writes of tasks hold no epoch.
    pub fn forget_dispatch_epoch(&self) {
        self.epoch.store(0, std::sync::atomic::Ordering::SeqCst);
    }

    pub async fn release_dispatch_lease(&self, epoch: i64) -> Result<()> {
        match &*self.engine {
            Engines::Sqlite(_) => Ok(()),
            Engines::Postgres(postgres) => postgres.release_lease(epoch).await,
        }
    }

    /// The name of the node that dispatches now (None: nobody, until a node takes the lease).
    pub async fn dispatch_lease_holder(&self) -> Result<Option<String>> {
        match &*self.engine {
            Engines::Sqlite(_) => Ok(None),
            Engines::Postgres(postgres) => postgres.lease_holder().await,
        }
    }

    /// What a write of tasks carries: the epoch this node dispatches under (if it does, on
    /// PostgreSQL), and the notes for the other nodes.
    pub(crate) fn guard(&self, notes: impl FnOnce() -> Vec<Note>) -> crate::engine::Guard {
        match &*self.engine {
            Engines::Sqlite(_) => crate::engine::Guard::default(),
            Engines::Postgres(_) => {
                let epoch = self.epoch.load(std::sync::atomic::Ordering::SeqCst);
                crate::engine::Guard {
                    epoch: (epoch > 0).then_some(epoch),
                    node: self.incarnation.lock().expect("store lock").clone(),
                    notes: notes().iter().map(|n| self.payload(n)).collect(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Note;

    #[test]
    fn notes_read_back_as_sent() {
        for note in [
            Note::NewTask("ServerTasks-12".into()),
            Note::Task("ServerTasks-3".into()),
            Note::Lines("ServerTasks-4".into()),
            Note::Workers,
            Note::Node("node a".into()),
            Note::Agent("AB12CD".into()),
            Note::Resync,
        ] {
            assert_eq!(Note::decode(&note.encode("ab12")), Some(("ab12", note)));
        }
        assert_eq!(Note::decode("ab12 other x"), None);
        assert_eq!(Note::decode("garbage"), None);
    }
}
