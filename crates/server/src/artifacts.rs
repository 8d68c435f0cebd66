//! Artifacts: files a script announced (`##octopus[createArtifact …]`, printed by the script helpers
//! `new_octopusartifact` and `New-OctopusArtifact`) that the server collects from the worker once the
//! script has ended, before the worker's ticket is released. Each is a store record (`Artifact`,
//! `Artifacts-N`, found by its task) and a file `<data-dir>/artifacts/<space>/<task>/<id>`.
//!
//! Invariants: a file is streamed from the worker to its file in chunks, never held whole; it is
//! written as `<id>.partial` and renamed once complete, and only then recorded, so a record always
//! has its whole file. A file larger than `--artifact-max-bytes`, one that would take its task past
//! `--artifact-task-max-bytes`, a missing one, or one outside the script's working directory is a
//! warning line in the task's log: the task's outcome never changes.

use crate::state::App;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use muster_core::variables::AnnouncedArtifact;
use muster_core::{IdKind, LogCategory};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// Where artifacts are kept, and how large they may be.
pub struct Artifacts {
    root: PathBuf,
    per_file: u64,
    per_task: u64,
    /// Bytes of each task's artifacts being transferred now: with the stored ones, they count
    /// against the task's limit (a runbook's steps on several workers collect at once).
    in_flight: tokio::sync::Mutex<HashMap<String, u64>>,
}

impl Artifacts {
    pub fn new(root: PathBuf, per_file: u64, per_task: u64) -> Artifacts {
        Artifacts {
            root,
            per_file,
            per_task,
            in_flight: Default::default(),
        }
    }

    /// Removes what a crash left half written (`*.partial`), at start-up.
    pub fn clean(&self) {
        fn walk(dir: &Path) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path);
                } else if path.extension().is_some_and(|e| e == "partial") {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        walk(&self.root);
    }

    /// The file of an artifact.
    pub fn path_of(&self, artifact: &muster_core::resources::Artifact) -> PathBuf {
        self.root
            .join(&artifact.space_id)
            .join(&artifact.server_task_id)
            .join(&artifact.id)
    }

    /// Removes the files of a space's artifacts (its records go with the space's documents).
    pub async fn remove_space(&self, space_id: &str) {
        remove_dir(self.root.join(space_id)).await;
    }
}

async fn remove_dir(dir: PathBuf) {
    match tokio::fs::remove_dir_all(&dir).await {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!("cannot remove {}: {error}", dir.display()),
    }
}

/// The log line that stands for an artifact's service message (which is not shown): what will be
/// collected, or why the message was not understood.
pub fn announcement(message: &Result<AnnouncedArtifact, String>) -> (LogCategory, String) {
    match message {
        Ok(file) => (
            LogCategory::Verbose,
            format!(
                "Artifact {} announced ({}); it is collected when the script ends",
                file.name, file.path
            ),
        ),
        Err(why) => (
            LogCategory::Warning,
            format!("An artifact's service message was not understood: {why}"),
        ),
    }
}

impl Collection<'_> {
    /// Whether a file was refused.
    pub fn warned(&self) -> bool {
        self.warned.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The files one script announced, and where their artifacts belong: the kind of worker that ran
/// the script hands each file over (`WorkerKind::collect`).
pub struct Collection<'a> {
    pub task_id: String,
    pub space_id: String,
    /// The step of a runbook run whose log the lines go to (0: the task's own log).
    pub step: i64,
    /// The worker the files come from (`Source`).
    pub source: String,
    /// Masks sensitive values in names and paths shown in the log and stored.
    pub mask: &'a (dyn Fn(&str) -> String + Send + Sync),
    pub announced: Vec<AnnouncedArtifact>,
    /// Set once a file was refused: the task then has warnings (`HasWarningsOrErrors`).
    pub warned: std::sync::atomic::AtomicBool,
}

impl Collection<'_> {
    fn log(&self, app: &App, category: LogCategory, text: String) {
        let text = (self.mask)(&text);
        if self.step == 0 {
            app.logs.append(&self.task_id, category, text);
        } else {
            app.logs
                .append_step(&self.task_id, self.step, category, text);
        }
    }

    /// A warning that one announced file was not collected, and why.
    pub fn refuse(&self, app: &App, file: &AnnouncedArtifact, why: &str) {
        self.warned.store(true, std::sync::atomic::Ordering::SeqCst);
        self.log(
            app,
            LogCategory::Warning,
            format!(
                "Artifact {} ({}) was not collected: {why}",
                file.name, file.path
            ),
        );
    }

    /// Stores one announced file from its bytes: `length` as the worker gave it, `bytes` in
    /// chunks. Whatever goes wrong is a warning line; the task's outcome does not change.
    pub async fn store<S>(&self, app: &App, file: &AnnouncedArtifact, length: u64, bytes: S)
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let artifacts = &app.artifacts;
        if length > artifacts.per_file {
            self.refuse(
                app,
                file,
                &format!(
                    "it is {length} bytes, more than the {} bytes an artifact may have (--artifact-max-bytes)",
                    artifacts.per_file
                ),
            );
            return;
        }
        if let Err(why) = self.reserve(app, length).await {
            self.refuse(app, file, &why);
            return;
        }
        let stored = self.write(app, file, length, bytes).await;
        let mut in_flight = artifacts.in_flight.lock().await;
        if let Some(used) = in_flight.get_mut(&self.task_id) {
            *used = used.saturating_sub(length);
            if *used == 0 {
                in_flight.remove(&self.task_id);
            }
        }
        drop(in_flight);
        match stored {
            Ok(artifact) => self.log(
                app,
                LogCategory::Info,
                format!(
                    "Collected artifact {} ({} bytes) as {}",
                    artifact.filename, artifact.length, artifact.id
                ),
            ),
            Err(why) => self.refuse(app, file, &why),
        }
    }

    /// Counts `length` against the task's limit, or says why it does not fit.
    async fn reserve(&self, app: &App, length: u64) -> Result<(), String> {
        let artifacts = &app.artifacts;
        let mut in_flight = artifacts.in_flight.lock().await;
        let stored: u64 = app
            .store
            .find_by_ext::<muster_core::resources::Artifact>(&self.task_id)
            .await
            .map_err(|e| format!("the store cannot be read: {e}"))?
            .iter()
            .map(|a| a.length)
            .sum();
        let pending = in_flight.get(&self.task_id).copied().unwrap_or(0);
        if stored + pending + length > artifacts.per_task {
            return Err(format!(
                "with it, this task's artifacts would take {} bytes, more than the {} bytes a task may keep (--artifact-task-max-bytes)",
                stored + pending + length,
                artifacts.per_task
            ));
        }
        *in_flight.entry(self.task_id.clone()).or_default() += length;
        Ok(())
    }

    async fn write<S>(
        &self,
        app: &App,
        file: &AnnouncedArtifact,
        length: u64,
        bytes: S,
    ) -> Result<muster_core::resources::Artifact, String>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let id = app
            .store
            .next_id(IdKind::Artifact)
            .await
            .map_err(|e| format!("the store cannot give it an id: {e}"))?;
        let artifact = muster_core::resources::Artifact {
            id: id.clone(),
            space_id: self.space_id.clone(),
            filename: file_name((self.mask)(&file.name).as_str()),
            source: Some(self.source.clone()),
            server_task_id: self.task_id.clone(),
            created: muster_core::time::now(),
            log_correlation_id: None,
            related_document_ids: vec![self.task_id.clone(), self.space_id.clone()],
            length,
        };
        let path = app.artifacts.path_of(&artifact);
        let partial = path.with_extension("partial");
        let written = copy(&partial, length, bytes).await;
        if let Err(why) = written {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(why);
        }
        if let Err(error) = tokio::fs::rename(&partial, &path).await {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(format!("it cannot be stored: {error}"));
        }
        if let Err(error) = app.store.put(&artifact).await {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(format!("it cannot be recorded: {error}"));
        }
        Ok(artifact)
    }
}

/// Writes the chunks to `path` (0600, in 0700 directories), checking that exactly `length` bytes
/// come.
async fn copy<S>(path: &Path, length: u64, bytes: S) -> Result<(), String>
where
    S: Stream<Item = std::io::Result<Bytes>> + Send,
{
    let dir = path.parent().expect("an artifact's file has a directory");
    create_private_dirs(dir)
        .await
        .map_err(|e| format!("its directory cannot be made: {e}"))?;
    let mut out = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(|e| format!("it cannot be stored: {e}"))?;
    let mut written: u64 = 0;
    let mut bytes = std::pin::pin!(bytes);
    while let Some(chunk) = bytes.next().await {
        let chunk = chunk.map_err(|e| format!("its transfer broke off: {e}"))?;
        written += chunk.len() as u64;
        if written > length {
            return Err(format!(
                "it grew past the {length} bytes it had when its transfer began"
            ));
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| format!("it cannot be stored: {e}"))?;
    }
    if written != length {
        return Err(format!(
            "only {written} of its {length} bytes came (did it change while it was read?)"
        ));
    }
    out.flush()
        .await
        .map_err(|e| format!("it cannot be stored: {e}"))?;
    Ok(())
}

async fn create_private_dirs(dir: &Path) -> std::io::Result<()> {
    let mut builder = tokio::fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    builder.create(dir).await
}

/// A name fit for a file and a `Content-Disposition`: no directories, no control characters.
pub fn file_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String = last
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    match clean.trim() {
        "" | "." | ".." => "artifact".to_string(),
        name => name.chars().take(255).collect(),
    }
}

/// A file's bytes as a stream of chunks of 64 KiB, read as they are wanted.
pub fn file_chunks<R>(file: R, length: u64) -> impl Stream<Item = std::io::Result<Bytes>> + Send
where
    R: tokio::io::AsyncRead + Unpin + Send,
{
    use tokio::io::AsyncReadExt;
    const CHUNK: usize = 64 * 1024;
    futures_util::stream::unfold((file, length), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = bytes::BytesMut::with_capacity(CHUNK.min(left as usize));
        match file.read_buf(&mut buf).await {
            Ok(0) => None,
            Ok(n) => Some((Ok(buf.freeze()), (file, left.saturating_sub(n as u64)))),
            Err(error) => Some((Err(error), (file, 0))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_their_directories_and_control_characters() {
        assert_eq!(file_name("report.txt"), "report.txt");
        assert_eq!(file_name("../../etc/passwd"), "passwd");
        assert_eq!(file_name("a\\b.txt"), "b.txt");
        assert_eq!(file_name("bad\nname"), "bad_name");
        assert_eq!(file_name(".."), "artifact");
        assert_eq!(file_name(""), "artifact");
    }
}
