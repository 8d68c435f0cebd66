//! Configuration resources as JSON documents.

use crate::engine::{DocumentRow, Engine as _, EngineTx, on_engine};
use crate::sealing::Sealer;
use crate::{Result, Store, StoreError, conflict_or};
use muster_core::resources::{
    Account, ApiKeyRecord, Artifact, Event, MachinePolicy, RegistrationToken, ScopedUserRole,
    Space, Team, User, UserRole, Worker, WorkerPool,
};
use muster_core::runbooks::{Runbook, RunbookRun, Variable};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocKind {
    Space,
    WorkerPool,
    Worker,
    MachinePolicy,
    User,
    ApiKey,
    Team,
    UserRole,
    ScopedUserRole,
    Runbook,
    RunbookRun,
    Account,
    Artifact,
    Event,
    RegistrationToken,
}

impl DocKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DocKind::Space => "space",
            DocKind::WorkerPool => "workerpool",
            DocKind::Worker => "worker",
            DocKind::MachinePolicy => "machinepolicy",
            DocKind::User => "user",
            DocKind::ApiKey => "apikey",
            DocKind::Team => "team",
            DocKind::UserRole => "userrole",
            DocKind::ScopedUserRole => "scopeduserrole",
            DocKind::Runbook => "runbook",
            DocKind::RunbookRun => "runbookrun",
            DocKind::Account => "account",
            DocKind::Artifact => "artifact",
            DocKind::Event => "event",
            DocKind::RegistrationToken => "registrationtoken",
        }
    }

    /// A space, pool or worker: what the dispatcher's view of workers is made of.
    pub(crate) fn is_of_workers(self) -> bool {
        matches!(self, DocKind::Space | DocKind::WorkerPool | DocKind::Worker)
    }

    fn noun(self) -> &'static str {
        match self {
            DocKind::Space => "space",
            DocKind::WorkerPool => "worker pool",
            DocKind::Worker => "worker",
            DocKind::MachinePolicy => "machine policy",
            DocKind::User => "user",
            DocKind::ApiKey => "API key",
            DocKind::Team => "team",
            DocKind::UserRole => "user role",
            DocKind::ScopedUserRole => "scoped user role",
            DocKind::Runbook => "runbook",
            DocKind::RunbookRun => "runbook run",
            DocKind::Account => "account",
            DocKind::Artifact => "artifact",
            DocKind::Event => "event",
            DocKind::RegistrationToken => "registration token",
        }
    }
}

/// A resource kept as a document: its kind, and the columns that lookups need.
pub trait Document: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    const KIND: DocKind;
    /// Its sensitive values: sealed before the document is written, opened when it is read.
    fn sensitive_values(&mut self) -> Vec<&mut String> {
        Vec::new()
    }
    fn id(&self) -> &str;
    /// '' for system-level documents.
    fn space_id(&self) -> &str;
    /// Unique per kind and space, compared without case.
    fn unique_name(&self) -> &str;
    /// One extra indexed value: a space's slug, a worker's thumbprint, an API key's hash.
    fn ext(&self) -> Option<&str> {
        None
    }
}

/// The values of its sensitive variables.
fn sensitive_variables(variables: &mut [Variable]) -> impl Iterator<Item = &mut String> {
    variables
        .iter_mut()
        .filter(|v| v.is_sensitive)
        .filter_map(|v| v.value.as_mut())
}

impl Document for Runbook {
    const KIND: DocKind = DocKind::Runbook;
    fn sensitive_values(&mut self) -> Vec<&mut String> {
        sensitive_variables(&mut self.variables).collect()
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn space_id(&self) -> &str {
        &self.space_id
    }
    fn unique_name(&self) -> &str {
        &self.name
    }
    fn ext(&self) -> Option<&str> {
        Some(&self.slug)
    }
}

/// A run is found by its task: the extra column holds the task's id.
impl Document for RunbookRun {
    const KIND: DocKind = DocKind::RunbookRun;
    /// Its sensitive variables' values, and the values the run gave them.
    fn sensitive_values(&mut self) -> Vec<&mut String> {
        let names: Vec<String> = self
            .variables
            .iter()
            .filter(|v| v.is_sensitive)
            .map(|v| v.name.to_lowercase())
            .collect();
        let mut values: Vec<&mut String> = sensitive_variables(&mut self.variables).collect();
        values.extend(
            self.form_values
                .iter_mut()
                .filter(|(name, _)| names.contains(&name.to_lowercase()))
                .filter_map(|(_, value)| match value {
                    serde_json::Value::String(text) => Some(text),
                    _ => None,
                }),
        );
        values
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn space_id(&self) -> &str {
        &self.space_id
    }
    fn unique_name(&self) -> &str {
        &self.id
    }
    fn ext(&self) -> Option<&str> {
        Some(&self.task_id)
    }
}

/// An account's secrets (key file, passphrase, password) are sealed; its slug is the extra column.
impl Document for Account {
    const KIND: DocKind = DocKind::Account;
    fn sensitive_values(&mut self) -> Vec<&mut String> {
        self.secrets_mut()
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn space_id(&self) -> &str {
        &self.space_id
    }
    fn unique_name(&self) -> &str {
        &self.name
    }
    fn ext(&self) -> Option<&str> {
        Some(&self.slug)
    }
}

impl Document for Space {
    const KIND: DocKind = DocKind::Space;
    fn id(&self) -> &str {
        &self.id
    }
    fn space_id(&self) -> &str {
        ""
    }
    fn unique_name(&self) -> &str {
        &self.name
    }
    fn ext(&self) -> Option<&str> {
        Some(&self.slug)
    }
}

impl Document for WorkerPool {
    const KIND: DocKind = DocKind::WorkerPool;
    fn id(&self) -> &str {
        &self.id
    }
    fn space_id(&self) -> &str {
        &self.space_id
    }
    fn unique_name(&self) -> &str {
        &self.name
    }
}

impl Document for Worker {
    const KIND: DocKind = DocKind::Worker;
    fn id(&self) -> &str {
        &self.id
    }
    fn space_id(&self) -> &str {
        &self.space_id
    }
    fn unique_name(&self) -> &str {
        &self.name
    }
    fn ext(&self) -> Option<&str> {
        self.machine_key()
    }
}

impl Document for MachinePolicy {
    const KIND: DocKind = DocKind::MachinePolicy;
    fn id(&self) -> &str {
        &self.id
    }
    fn space_id(&self) -> &str {
        &self.space_id
    }
    fn unique_name(&self) -> &str {
        &self.name
    }
}

impl Document for User {
    const KIND: DocKind = DocKind::User;
    fn id(&self) -> &str {
        &self.id
    }
    fn space_id(&self) -> &str {
        ""
    }
    fn unique_name(&self) -> &str {
        &self.username
    }
}

/// A registration token lives in its space (and goes with it); found by its hash.
impl Document for RegistrationToken {
    const KIND: DocKind = DocKind::RegistrationToken;
    fn id(&self) -> &str {
        &self.id
    }
    fn space_id(&self) -> &str {
        &self.space_id
    }
    fn unique_name(&self) -> &str {
        &self.id
    }
    fn ext(&self) -> Option<&str> {
        Some(&self.token_hash)
    }
}

impl Document for ApiKeyRecord {
    const KIND: DocKind = DocKind::ApiKey;
    fn id(&self) -> &str {
        &self.id
    }
    fn space_id(&self) -> &str {
        ""
    }
    fn unique_name(&self) -> &str {
        &self.id
    }
    fn ext(&self) -> Option<&str> {
        Some(&self.key_hash)
    }
}

/// Teams of a space live in it (and go with it); system teams are system-level. Names are unique per
/// space, as Octopus has them.
impl Document for Team {
    const KIND: DocKind = DocKind::Team;
    fn id(&self) -> &str {
        &self.id
    }
    fn space_id(&self) -> &str {
        self.space_id.as_deref().unwrap_or("")
    }
    fn unique_name(&self) -> &str {
        &self.name
    }
}

impl Document for UserRole {
    const KIND: DocKind = DocKind::UserRole;
    fn id(&self) -> &str {
        &self.id
    }
    fn space_id(&self) -> &str {
        ""
    }
    fn unique_name(&self) -> &str {
        &self.name
    }
}

/// Kept in its space, so deleting a space removes the roles given in it; indexed by team.
impl Document for ScopedUserRole {
    const KIND: DocKind = DocKind::ScopedUserRole;
    fn id(&self) -> &str {
        &self.id
    }
    fn space_id(&self) -> &str {
        self.space_id.as_deref().unwrap_or("")
    }
    fn unique_name(&self) -> &str {
        &self.id
    }
    fn ext(&self) -> Option<&str> {
        Some(&self.team_id)
    }
}

/// An artifact is found by its task: the extra column holds the task's id. Its file name need not
/// be unique, so its unique name is its id.
impl Document for Artifact {
    const KIND: DocKind = DocKind::Artifact;
    fn id(&self) -> &str {
        &self.id
    }
    fn space_id(&self) -> &str {
        &self.space_id
    }
    fn unique_name(&self) -> &str {
        &self.id
    }
    fn ext(&self) -> Option<&str> {
        Some(&self.server_task_id)
    }
}

/// An event (who did what) is kept in its space ('' for a system event: users, keys, sign-ins),
/// so deleting a space removes its trail with it.
impl Document for Event {
    const KIND: DocKind = DocKind::Event;
    fn id(&self) -> &str {
        &self.id
    }
    fn space_id(&self) -> &str {
        self.space_id.as_deref().unwrap_or("")
    }
    fn unique_name(&self) -> &str {
        &self.id
    }
}

/// How a document's body is written: with its sensitive values sealed.
type Body = Box<dyn Fn(&Sealer) -> String + Send + Sync>;

/// One document ready to write, of any kind.
pub struct Row {
    pub(crate) kind: DocKind,
    id: String,
    space_id: String,
    name: String,
    ext: Option<String>,
    body: Body,
}

impl Row {
    pub fn of<D: Document>(doc: &D) -> Row {
        let mut copy = doc.clone();
        let body: Body = if copy.sensitive_values().is_empty() {
            let body = serde_json::to_string(doc).expect("resources always serialize");
            Box::new(move |_| body.clone())
        } else {
            Box::new(move |sealer| {
                let mut sealed = copy.clone();
                for value in sealed.sensitive_values() {
                    *value = sealer.seal(value);
                }
                serde_json::to_string(&sealed).expect("resources always serialize")
            })
        };
        Row {
            kind: D::KIND,
            id: doc.id().to_string(),
            space_id: doc.space_id().to_string(),
            name: doc.unique_name().trim().to_string(),
            ext: doc.ext().map(str::to_string),
            body,
        }
    }
}

impl Row {
    fn document<'a>(&'a self, sealer: &Sealer) -> DocumentRow<'a> {
        DocumentRow {
            kind: self.kind.as_str(),
            id: &self.id,
            space_id: &self.space_id,
            name: &self.name,
            ext: self.ext.as_deref(),
            body: (self.body)(sealer),
        }
    }

    fn name_taken(&self, e: sqlx::Error) -> StoreError {
        conflict_or(e, || {
            format!(
                "A {} named '{}' already exists here",
                self.kind.noun(),
                self.name
            )
        })
    }

    /// Inserts or replaces the document within a transaction.
    pub(crate) async fn write<T: EngineTx>(&self, tx: &mut T, sealer: &Sealer) -> Result<()> {
        tx.write_document(&self.document(sealer))
            .await
            .map_err(|e| self.name_taken(e))
    }
}

/// Reads a stored document and opens its sealed values.
fn decode<D: Document>(body: &str, sealer: &Sealer) -> Result<D> {
    let mut doc: D = serde_json::from_str(body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    for value in doc.sensitive_values() {
        *value = sealer.open(value)?;
    }
    Ok(doc)
}

impl Store {
    fn decode_all<D: Document>(&self, bodies: Vec<String>) -> Result<Vec<D>> {
        bodies
            .iter()
            .map(|body| decode(body, &self.sealer))
            .collect()
    }

    pub async fn get<D: Document>(&self, id: &str) -> Result<Option<D>> {
        let body = on_engine!(&*self.engine, e => e.document(D::KIND.as_str(), id).await)?;
        body.map(|body| decode(&body, &self.sealer)).transpose()
    }

    /// Every document of a kind in one space ('' for system-level kinds), in id order.
    pub async fn list<D: Document>(&self, space_id: &str) -> Result<Vec<D>> {
        let bodies =
            on_engine!(&*self.engine, e => e.documents(D::KIND.as_str(), Some(space_id)).await)?;
        self.decode_all(bodies)
    }

    /// Every document of a kind in all spaces.
    pub async fn list_all<D: Document>(&self) -> Result<Vec<D>> {
        let bodies = on_engine!(&*self.engine, e => e.documents(D::KIND.as_str(), None).await)?;
        self.decode_all(bodies)
    }

    /// One page of a kind's documents in some spaces ('' for system-level ones; None: all),
    /// newest (highest id number) first, and how many there are in all: a log that only grows
    /// (events) is paged by the database, not read whole.
    pub async fn page_newest<D: Document>(
        &self,
        spaces: Option<&[String]>,
        skip: u64,
        take: u64,
    ) -> Result<(u64, Vec<D>)> {
        if spaces.is_some_and(|s| s.is_empty()) {
            return Ok((0, Vec::new()));
        }
        let (total, bodies) = on_engine!(&*self.engine, e => {
            e.page_newest(D::KIND.as_str(), spaces, skip, take).await
        })?;
        Ok((total, self.decode_all(bodies)?))
    }

    /// The documents of a kind whose extra column equals `ext` (slug, thumbprint, key hash).
    pub async fn find_by_ext<D: Document>(&self, ext: &str) -> Result<Vec<D>> {
        let bodies =
            on_engine!(&*self.engine, e => e.documents_by_ext(D::KIND.as_str(), ext).await)?;
        self.decode_all(bodies)
    }

    pub async fn put<D: Document>(&self, doc: &D) -> Result<()> {
        self.put_rows(vec![Row::of(doc)]).await
    }

    /// Writes (inserts or replaces) several documents in one transaction.
    pub async fn put_rows(&self, rows: Vec<Row>) -> Result<()> {
        on_engine!(&*self.engine, e => {
            let mut tx = e.begin().await?;
            for row in &rows {
                row.write(&mut tx, &self.sealer).await?;
            }
            self.workers_note(&mut tx, rows.iter().map(|r| r.kind)).await?;
            tx.commit().await?;
        });
        for row in &rows {
            self.bump_workers_generation(row.kind);
        }
        Ok(())
    }

    /// Seals the sensitive values stored before values were sealed (once per database), then
    /// has the engine drop every old copy of the rows, so none keeps them in the clear.
    pub(crate) async fn seal_plaintext(&self) -> Result<()> {
        if self.meta("sealed_at_rest").await?.is_some() {
            return Ok(());
        }
        let mut rows = Vec::new();
        for kind in [DocKind::Runbook, DocKind::RunbookRun] {
            let bodies = on_engine!(&*self.engine, e => e.documents(kind.as_str(), None).await)?;
            for body in bodies {
                match kind {
                    DocKind::Runbook => rows.extend(unsealed::<Runbook>(&body, &self.sealer)?),
                    _ => rows.extend(unsealed::<RunbookRun>(&body, &self.sealer)?),
                }
            }
        }
        if !rows.is_empty() {
            self.put_rows(rows).await?;
            on_engine!(&*self.engine, e => e.forget_old_rows().await)?;
        }
        self.set_meta("sealed_at_rest", "1").await
    }

    /// Replaces a document only if it still exists; false (and nothing written) when it was
    /// deleted meanwhile. For a writer that read the document earlier and must not bring a deleted
    /// one back (a health check recording its result on the workers it read).
    pub async fn update<D: Document>(&self, doc: &D) -> Result<bool> {
        let row = Row::of(doc);
        let updated = on_engine!(&*self.engine, e => {
            let mut tx = e.begin().await?;
            let updated = tx
                .update_document(&row.document(&self.sealer))
                .await
                .map_err(|e| row.name_taken(e))?;
            self.workers_note(&mut tx, [row.kind]).await?;
            tx.commit().await?;
            updated
        });
        self.bump_workers_generation(row.kind);
        Ok(updated)
    }

    /// Within a write's transaction: tells the other nodes, on commit, when it writes a space,
    /// pool or worker.
    pub(crate) async fn workers_note<T: EngineTx>(
        &self,
        tx: &mut T,
        kinds: impl IntoIterator<Item = DocKind>,
    ) -> Result<()> {
        if kinds.into_iter().any(DocKind::is_of_workers) {
            tx.notify(&self.payload(&crate::Note::Workers)).await?;
        }
        Ok(())
    }

    /// Deletes one document; true if it existed.
    pub async fn delete<D: Document>(&self, id: &str) -> Result<bool> {
        let existed =
            on_engine!(&*self.engine, e => e.delete_document(D::KIND.as_str(), id).await)?;
        self.bump_workers_generation(D::KIND);
        if D::KIND.is_of_workers() {
            self.note_others(crate::Note::Workers).await?;
        }
        Ok(existed)
    }

    /// Deletes a space with everything in it: its documents, its tasks and their logs.
    pub async fn delete_space(&self, space_id: &str) -> Result<()> {
        on_engine!(&*self.engine, e => e.delete_space(space_id).await)?;
        self.bump_workers_generation(DocKind::Space);
        self.note_others(crate::Note::Workers).await
    }
}

/// The document to write again when a stored body holds a sensitive value in the clear.
fn unsealed<D: Document>(body: &str, sealer: &Sealer) -> Result<Option<Row>> {
    let mut raw: D = serde_json::from_str(body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if raw
        .sensitive_values()
        .iter()
        .all(|v| crate::sealing::is_sealed(v))
    {
        return Ok(None);
    }
    Ok(Some(Row::of(&decode::<D>(body, sealer)?)))
}
