//! SSH workers as a kind of worker, through `muster_ssh`: one kept connection per machine (its
//! pinned host key) and account, connected on first use and again after it dropped; a health check
//! is a connection (the host key checked first) and `uname -sm`; a script runs detached on the worker
//! and is followed by byte offset, so it outlives the server and a restarted server re-attaches
//! from the last stored line.
//!
//! A host key that no longer matches the pin makes the worker Unhealthy and unreachable (nothing
//! is sent to it) until a user pins the new key. An MD5 pin that matched is upgraded to the
//! SHA-256 of the same key.

use super::{Ended, Facts, Health, Invocation, Line, Sink, Stop, WorkerKind};
use crate::artifacts::Collection;
use crate::state::App;
use futures_util::future::BoxFuture;
use muster_core::resources::{Account, Endpoint, SshEndpoint, Worker};
use muster_core::variables::AnnouncedArtifact;
use muster_core::{HealthStatus, MachineStatus, ScriptSyntax, TaskState};
use muster_ssh::keys::Fingerprint;
use muster_ssh::{Auth, HostKey, Session, Target};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How soon a worker whose last connection failed is checked again.
const UNREACHABLE_RETRY: Duration = Duration::from_secs(5);

/// Bounds a connection's opening and each channel's (and its keep-alives: a silent worker is noticed
/// within about three times it), whatever the machine policy allows.
const CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(20);

/// The kept connections of SSH workers (one per machine and account) and, per machine, why the last
/// attempt to connect failed.
#[derive(Default)]
pub struct Sessions {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    failures: Mutex<HashMap<String, String>>,
}

#[derive(Default)]
struct Slot {
    /// One connection attempt at a time; the session once connected.
    session: tokio::sync::Mutex<Option<Session>>,
}

/// Why no session could be had.
enum NoSession {
    /// The worker's settings (its account) cannot work: retrying does not help.
    Config(String),
    /// The host key changed or the login was refused: retrying does not help either.
    Refused(muster_ssh::Error),
    /// The worker could not be reached: it may come back.
    Unreachable(muster_ssh::Error),
}

impl std::fmt::Display for NoSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoSession::Config(why) => write!(f, "{why}"),
            NoSession::Refused(error) | NoSession::Unreachable(error) => write!(f, "{error}"),
        }
    }
}

impl Sessions {
    fn slot(&self, key: &str) -> Arc<Slot> {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    /// Why the last attempt to connect to this machine failed, if it did.
    pub fn failure(&self, machine_key: &str) -> Option<String> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(machine_key)
            .cloned()
    }

    fn set_failure(&self, machine_key: &str, failure: Option<String>) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match failure {
            Some(why) => failures.insert(machine_key.to_string(), why),
            None => failures.remove(machine_key),
        };
    }
}

pub struct Ssh {
    worker: Worker,
    endpoint: SshEndpoint,
    key: String,
}

impl Ssh {
    pub fn new(worker: &Worker) -> Ssh {
        let endpoint = match &worker.endpoint {
            Some(Endpoint::Ssh(endpoint)) => endpoint.clone(),
            _ => SshEndpoint::default(),
        };
        Ssh {
            key: worker
                .machine_key()
                .map_or_else(|| format!("worker:{}", worker.id), str::to_string),
            worker: worker.clone(),
            endpoint,
        }
    }

    fn slot_key(&self) -> String {
        format!(
            "{} {} {}:{}",
            self.key,
            self.endpoint.account_id.as_deref().unwrap_or_default(),
            self.endpoint.host,
            self.endpoint.port
        )
    }

    fn target(&self) -> Result<Target, String> {
        let pin = Fingerprint::parse(self.endpoint.fingerprint.as_deref().unwrap_or_default())?;
        let port = u16::try_from(self.endpoint.port)
            .map_err(|_| format!("{} is not a port", self.endpoint.port))?;
        Ok(Target {
            host: self.endpoint.host.clone(),
            port,
            pin,
        })
    }

    /// The login of the worker's account, from its (unsealed) secrets.
    async fn auth(&self, app: &App) -> Result<Auth, String> {
        let id = self
            .endpoint
            .account_id
            .as_deref()
            .ok_or("the worker has no account")?;
        let account = app
            .store
            .get::<Account>(id)
            .await
            .map_err(|e| format!("cannot read account {id}: {e}"))?
            .ok_or_else(|| format!("its account {id} was deleted"))?;
        let username = account.username.clone().unwrap_or_default();
        let secret = |value: &Option<muster_core::resources::SensitiveValue>| {
            value.as_ref().and_then(|v| v.new_value.clone())
        };
        match account.account_type.as_str() {
            "SshKeyPair" => {
                let file = secret(&account.private_key_file)
                    .ok_or_else(|| format!("account {} has no private key", account.name))?;
                use base64::Engine as _;
                let file = base64::engine::general_purpose::STANDARD
                    .decode(file.trim())
                    .map_err(|_| {
                        format!("the private key of account {} is not base64", account.name)
                    })?;
                let passphrase = secret(&account.private_key_passphrase).filter(|p| !p.is_empty());
                let key = tokio::task::spawn_blocking(move || {
                    muster_ssh::keys::read_private_key(&file, passphrase.as_deref())
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("the private key of account {}: {e}", account.name))?;
                Ok(Auth::Key {
                    username,
                    key: Arc::new(key),
                })
            }
            "UsernamePassword" => Ok(Auth::Password {
                username,
                password: secret(&account.password).unwrap_or_default(),
            }),
            other => Err(format!(
                "account {} is a {other} account, not SshKeyPair or UsernamePassword",
                account.name
            )),
        }
    }

    /// The kept session, connecting when there is none or it closed. A fresh connection's host key
    /// is returned with it (for the pin's upgrade).
    async fn session(
        &self,
        app: &App,
        timeout: Duration,
    ) -> Result<(Session, Option<HostKey>), NoSession> {
        let slot = app.ssh.slot(&self.slot_key());
        let mut held = slot.session.lock().await;
        if let Some(session) = held.as_ref()
            && !session.is_closed()
        {
            return Ok((session.clone(), None));
        }
        *held = None;
        let target = self.target().map_err(NoSession::Config)?;
        let auth = match self.auth(app).await {
            Ok(auth) => auth,
            Err(why) => {
                let why = format!("cannot sign in to {}: {why}", self.worker.name);
                app.ssh.set_failure(&self.key, Some(why.clone()));
                return Err(NoSession::Config(why));
            }
        };
        let timeout = timeout.clamp(Duration::from_secs(1), CONNECT_TIMEOUT_MAX);
        match Session::connect(&target, &auth, timeout).await {
            Ok((session, host_key)) => {
                *held = Some(session.clone());
                drop(held);
                app.ssh.set_failure(&self.key, None);
                Ok((session, Some(host_key)))
            }
            Err(error) => {
                app.ssh.set_failure(&self.key, Some(error.to_string()));
                Err(match error {
                    muster_ssh::Error::HostKeyChanged { .. }
                    | muster_ssh::Error::AuthRejected { .. } => NoSession::Refused(error),
                    other => NoSession::Unreachable(other),
                })
            }
        }
    }

    /// Forgets a session that dropped, so the next use connects again.
    async fn forget(&self, app: &App, session: &Session) {
        let slot = app.ssh.slot(&self.slot_key());
        let mut held = slot.session.lock().await;
        if held
            .as_ref()
            .is_some_and(|s| s.is_closed() || same(s, session))
        {
            *held = None;
        }
    }

    /// After a fresh connection: an MD5 pin becomes the SHA-256 of the same key, and the key's
    /// algorithm is recorded, on every worker of this machine (and `health` with them, since the
    /// machine's key changes and the caller's record would find none).
    async fn record_host_key(
        &self,
        app: &App,
        host_key: &HostKey,
        health: Option<&Health>,
    ) -> bool {
        let pinned_md5 = !self.key.starts_with("SHA256:");
        let known =
            self.endpoint.host_key_algorithm.as_deref() == Some(host_key.algorithm.as_str());
        if !pinned_md5 && known {
            return false;
        }
        let workers = match app.store.find_by_ext::<Worker>(&self.key).await {
            Ok(workers) => workers,
            Err(error) => {
                tracing::error!(%error, "cannot read workers to record their host key");
                return false;
            }
        };
        let sha256 = host_key.sha256.to_string();
        for mut worker in workers {
            let Some(Endpoint::Ssh(endpoint)) = worker.endpoint.as_mut() else {
                continue;
            };
            if pinned_md5 {
                tracing::info!(
                    worker = %worker.id,
                    "the MD5 pin {} of worker {} matched; pinned to the same key's {sha256}",
                    self.key,
                    worker.name
                );
                endpoint.fingerprint = Some(sha256.clone());
            }
            endpoint.host_key_algorithm = Some(host_key.algorithm.clone());
            if pinned_md5 && let Some(health) = health {
                worker.health_status = health.status;
                worker.status = if health.status == HealthStatus::Healthy {
                    MachineStatus::Online
                } else {
                    MachineStatus::Offline
                };
                worker.status_summary = health.summary.clone();
                if let Some(facts) = &health.facts {
                    worker.operating_system = Some(facts.operating_system.clone());
                    worker.architecture = Some(facts.architecture.clone());
                    worker.shell_name = Some(facts.shell_name.clone());
                }
            }
            if let Err(error) = app.store.update(&worker).await {
                tracing::error!(%error, "cannot record a worker's host key");
            }
        }
        if pinned_md5 {
            // The machine's key is now the SHA-256: its kept session serves it too.
            let slot = app.ssh.slot(&self.slot_key());
            let upgraded = self.slot_key().replacen(&self.key, &sha256, 1);
            app.ssh
                .slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(upgraded)
                .or_insert(slot);
            app.signals.dispatch.notify_one();
            app.signals.health.notify_one();
        }
        pinned_md5
    }
}

impl Ssh {
    /// Streams one announced file of a finished script's working directory into the store, over
    /// a channel of its own (the bytes are never whole in memory).
    async fn fetch(
        &self,
        app: &App,
        ticket: &str,
        files: &Collection<'_>,
        file: &AnnouncedArtifact,
    ) -> Result<(), String> {
        let relative = inside_work_dir(ticket, &file.path)
            .ok_or("it is not inside the script's working directory")?;
        let grace = super::connect_grace(app, &self.worker).await;
        let (session, _) = self
            .session(app, grace)
            .await
            .map_err(|e| format!("worker {} cannot be reached: {e}", self.worker.name))?;
        match session.read_file(ticket, relative).await {
            Ok(Some(remote)) => {
                let length = remote.size;
                let chunks = crate::artifacts::file_chunks(remote, length);
                files.store(app, file, length, chunks).await;
                Ok(())
            }
            Ok(None) => Err("the file does not exist".into()),
            Err(muster_ssh::Error::BadPath(_)) => {
                Err("it is not inside the script's working directory".into())
            }
            Err(error) => Err(format!(
                "worker {} did not send it: {error}",
                self.worker.name
            )),
        }
    }
}

/// The part of an announced path inside the script's working directory on the worker
/// (`…/.muster/work/<ticket>/<relative>`), or the path itself when relative; None when it
/// names a place outside it.
fn inside_work_dir<'p>(ticket: &str, path: &'p str) -> Option<&'p str> {
    let relative = if path.starts_with('/') {
        let marker = format!("/.muster/work/{ticket}/");
        let at = path.find(&marker)?;
        &path[at + marker.len()..]
    } else {
        path
    };
    let escapes = relative.is_empty() || relative.split('/').any(|part| part == "..");
    (!escapes).then_some(relative)
}

fn same(a: &Session, b: &Session) -> bool {
    std::ptr::eq(a.target(), b.target())
}

/// The script's ticket on the worker: this installation's and the task's, so that two servers
/// sharing a worker never collide; letters, digits, `-` and `_`, at most 64.
pub fn remote_ticket(app: &App, ticket: &str) -> String {
    let installation: String = app
        .installation_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    let clean: String = ticket
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let full = format!("{installation}-{clean}");
    if full.len() <= 64 {
        return full;
    }
    // Too long: a prefix and a digest of the whole, still unique.
    use sha2::Digest as _;
    let digest = hex::encode(&sha2::Sha256::digest(full.as_bytes())[..8]);
    format!("{}-{digest}", &full[..64 - 17])
}

fn syntax_of(syntax: ScriptSyntax) -> muster_exec::Syntax {
    match syntax {
        ScriptSyntax::Bash => muster_exec::Syntax::Bash,
        ScriptSyntax::Python => muster_exec::Syntax::Python,
        ScriptSyntax::PowerShell => muster_exec::Syntax::PowerShell,
    }
}

impl WorkerKind for Ssh {
    fn describe(&self, _app: &App) -> String {
        format!(
            "worker {} (ssh://{}:{}/)",
            self.worker.name, self.endpoint.host, self.endpoint.port
        )
    }

    fn machine_key(&self) -> String {
        self.key.clone()
    }

    fn unreachable(&self, app: &App) -> Option<String> {
        app.ssh
            .failure(&self.key)
            .map(|why| format!("{} cannot be reached: {why}", self.worker.name))
    }

    fn check_interval(&self, app: &App, policy: Duration) -> Duration {
        if app.ssh.failure(&self.key).is_some() {
            policy.min(UNREACHABLE_RETRY)
        } else {
            policy
        }
    }

    fn check_health<'a>(&'a self, app: &'a App, timeout: Duration) -> BoxFuture<'a, Health> {
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            let (session, host_key) = match self.session(app, timeout).await {
                Ok(found) => found,
                Err(NoSession::Refused(error @ muster_ssh::Error::HostKeyChanged { .. })) => {
                    return Health {
                        status: HealthStatus::Unhealthy,
                        summary: format!("{error}."),
                        facts: None,
                        unless_reachable: false,
                    };
                }
                Err(error) => {
                    return Health {
                        status: HealthStatus::Unavailable,
                        summary: format!("{}: {error}.", self.worker.name),
                        facts: None,
                        unless_reachable: false,
                    };
                }
            };
            let left = timeout
                .saturating_sub(started.elapsed())
                .max(Duration::from_secs(1));
            let health = match tokio::time::timeout(left, session.exec("uname -sm")).await {
                Ok(Ok(output)) if output.success() => {
                    let text = String::from_utf8_lossy(&output.stdout);
                    let mut words = text.split_whitespace();
                    let os = words.next().unwrap_or("unknown").to_string();
                    let arch = words.next().unwrap_or("unknown").to_string();
                    Health {
                        status: HealthStatus::Healthy,
                        summary: format!(
                            "The SSH worker answered its health check (host key {}).",
                            host_key
                                .as_ref()
                                .map_or(self.key.clone(), |k| k.sha256.to_string())
                        ),
                        facts: Some(Facts {
                            operating_system: os,
                            architecture: arch,
                            shell_name: "bash".into(),
                        }),
                        unless_reachable: false,
                    }
                }
                Ok(Ok(output)) => Health {
                    status: HealthStatus::Unhealthy,
                    summary: format!(
                        "`uname -sm` failed on the SSH worker: {}",
                        String::from_utf8_lossy(&output.stderr).trim()
                    ),
                    facts: None,
                    unless_reachable: false,
                },
                Ok(Err(error)) => {
                    self.forget(app, &session).await;
                    Health {
                        status: HealthStatus::Unavailable,
                        summary: format!("{}: {error}.", self.worker.name),
                        facts: None,
                        unless_reachable: false,
                    }
                }
                Err(_) => Health {
                    status: HealthStatus::Unavailable,
                    summary: format!(
                        "The SSH worker did not answer its health check in {} seconds.",
                        timeout.as_secs()
                    ),
                    facts: None,
                    unless_reachable: false,
                },
            };
            if let Some(host_key) = host_key {
                self.record_host_key(app, &host_key, Some(&health)).await;
            }
            health
        })
    }

    fn run<'a>(
        &'a self,
        app: &'a App,
        invocation: Invocation,
        stop: &'a Stop,
        sink: Sink<'a>,
        resume: Option<u64>,
    ) -> BoxFuture<'a, Option<Ended>> {
        Box::pin(self.drive(app, invocation, stop, sink, resume))
    }

    fn outlives_restart(&self) -> bool {
        true
    }

    fn collect<'a>(
        &'a self,
        app: &'a App,
        ticket: &'a str,
        files: &'a Collection<'_>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let ticket = remote_ticket(app, ticket);
            for file in &files.announced {
                if let Err(why) = self.fetch(app, &ticket, files, file).await {
                    files.refuse(app, file, &why);
                }
            }
        })
    }

    fn release(&self, app: &App, ticket: &str) {
        let ticket = remote_ticket(app, ticket);
        let (app, this) = (app.clone(), Ssh::new(&self.worker));
        tokio::spawn(async move {
            let grace = super::connect_grace(&app, &this.worker).await;
            if let Ok((session, _)) = this.session(&app, grace).await
                && let Err(error) = session.remove(&ticket).await
            {
                tracing::warn!(%ticket, "cannot remove the script's directory on {}: {error}", this.worker.name);
            }
        });
    }
}

/// What one follow of the script ended with.
enum Followed {
    Ended(muster_exec::Outcome),
    Error(muster_ssh::Error),
    /// The server is shutting down and leaves the script running.
    Detached,
}

impl Ssh {
    /// Starts the script (or, `resume` Some, reads on after that byte offset of one the worker
    /// already runs; one it never received is started then) and follows it to its end, over a
    /// dropped connection if the worker comes back within the machine policy's connect timeout.
    async fn drive(
        &self,
        app: &App,
        invocation: Invocation,
        stop: &Stop,
        sink: Sink<'_>,
        resume: Option<u64>,
    ) -> Option<Ended> {
        let name = &self.worker.name;
        let grace = super::connect_grace(app, &self.worker).await;
        let resumable = invocation.resumable;
        let ticket = remote_ticket(app, &invocation.ticket);
        let script = muster_ssh::RemoteScript {
            ticket: ticket.clone(),
            syntax: syntax_of(invocation.syntax),
            body: invocation.body,
            env: invocation.env,
            timeout: invocation.timeout,
        };
        let mut offset = resume.unwrap_or(0);
        let mut started = resume.is_some();
        let mut start_sent = false;
        let mut kill_sent = false;
        let mut lost_since: Option<tokio::time::Instant> = None;
        let end = loop {
            if stop.is_shutdown() && resumable {
                return None;
            }
            if stop.is_shutdown() && !started && !start_sent {
                break (
                    TaskState::Failed,
                    format!(
                        "The Muster server shut down before worker {name} received this script; it never ran."
                    ),
                );
            }
            if stop.cancel.is_cancelled() && !started && !start_sent {
                break (
                    TaskState::Canceled,
                    format!(
                        "The task was canceled before worker {name} received its script; it never ran."
                    ),
                );
            }
            let session = match self.session(app, grace).await {
                Ok((session, host_key)) => {
                    if let Some(host_key) = host_key {
                        self.record_host_key(app, &host_key, None).await;
                    }
                    session
                }
                Err(NoSession::Unreachable(error)) => {
                    let since = *lost_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= grace {
                        break (
                            TaskState::Failed,
                            self.unreachable_message(grace, &error, start_sent),
                        );
                    }
                    self.pause(stop, kill_sent).await;
                    continue;
                }
                Err(error) => {
                    break (
                        TaskState::Failed,
                        format!("Worker {name} did not run the script: {error}."),
                    );
                }
            };
            lost_since = None;
            if stop.cancel.is_cancelled()
                && started
                && !kill_sent
                && !(stop.is_shutdown() && resumable)
            {
                kill_sent = true;
                spawn_kill(&session, &ticket, name);
            }
            if !started {
                start_sent = true;
                match session.start(&script).await {
                    Ok(_) => started = true,
                    Err(error) if is_connection(&error) => {
                        self.forget(app, &session).await;
                        lost_since = Some(tokio::time::Instant::now());
                        continue;
                    }
                    Err(error) => {
                        break (
                            TaskState::Failed,
                            format!("Worker {name} did not start the script: {error}."),
                        );
                    }
                }
            }
            match self
                .follow(
                    app,
                    &session,
                    &ticket,
                    &mut offset,
                    stop,
                    &mut kill_sent,
                    resumable,
                    &mut *sink,
                )
                .await
            {
                Followed::Detached => return None,
                Followed::Ended(outcome) => {
                    break self.ended(outcome, stop, kill_sent, invocation.timeout);
                }
                Followed::Error(muster_ssh::Error::NoSuchScript(_)) if !start_sent => {
                    // Claimed, and the server stopped before the worker received it: it never ran.
                    app.logs.append(
                        &invocation.ticket,
                        muster_core::LogCategory::Verbose,
                        format!(
                            "Worker {name} never received this script (the Muster server stopped before starting it); starting it now"
                        ),
                    );
                    started = false;
                }
                Followed::Error(muster_ssh::Error::NoSuchScript(_)) => {
                    break (
                        TaskState::Failed,
                        format!(
                            "Worker {name} does not hold this script although it started it (was its ~/.muster/work removed?); the script's outcome is unknown."
                        ),
                    );
                }
                Followed::Error(muster_ssh::Error::Lost(_)) => {
                    break (
                        TaskState::Failed,
                        format!(
                            "The script ended on worker {name} without recording how (its keeper was killed or the machine restarted): its outcome and any lines after byte {offset} are lost."
                        ),
                    );
                }
                Followed::Error(error) if is_connection(&error) || session.is_closed() => {
                    self.forget(app, &session).await;
                    lost_since = Some(tokio::time::Instant::now());
                    tracing::warn!(%ticket, "lost the SSH connection to {name} while following its script: {error}");
                }
                Followed::Error(error) => {
                    break (
                        TaskState::Failed,
                        format!("Cannot follow the script on worker {name}: {error}."),
                    );
                }
            }
        };
        Some(end)
    }

    /// Waits a second before connecting again (less when the task is canceled or the server stops).
    async fn pause(&self, stop: &Stop, kill_sent: bool) {
        let cancel = stop.cancel.clone();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = cancel.cancelled(), if !kill_sent && !cancel.is_cancelled() => {}
        }
    }

    fn unreachable_message(
        &self,
        grace: Duration,
        error: &muster_ssh::Error,
        start_sent: bool,
    ) -> String {
        let name = &self.worker.name;
        if start_sent {
            format!(
                "Outcome unknown: worker {name} was unreachable for {} seconds ({error}). The script may still be running there; its directory is removed (and the script stopped) when the worker is reachable again.",
                grace.as_secs()
            )
        } else {
            format!(
                "Worker {name} was unreachable for {} seconds ({error}); the script did not start.",
                grace.as_secs()
            )
        }
    }

    /// Follows the script from `offset`, handing its lines to the sink, until it ends or the
    /// follow fails; a cancel kills it meanwhile.
    #[allow(clippy::too_many_arguments)]
    async fn follow(
        &self,
        app: &App,
        session: &Session,
        ticket: &str,
        offset: &mut u64,
        stop: &Stop,
        kill_sent: &mut bool,
        resumable: bool,
        sink: Sink<'_>,
    ) -> Followed {
        let (tx, mut rx) = mpsc::channel::<Vec<muster_ssh::Line>>(16);
        let follow = session.follow(ticket, *offset, tx);
        tokio::pin!(follow);
        let cancel = stop.cancel.clone();
        let mut hand_over = |batch: Vec<muster_ssh::Line>, offset: &mut u64| {
            for line in batch {
                *offset = line.offset;
                sink(Line {
                    error: line.stream == muster_exec::Stream::Stderr,
                    text: line.text,
                    source_seq: Some(line.offset),
                    occurred_at: None,
                });
            }
        };
        let result = loop {
            tokio::select! {
                biased;
                Some(batch) = rx.recv() => {
                    hand_over(batch, offset);
                    // The script's output waits on the worker while the log writer catches up.
                    app.logs.wait_for_room().await;
                }
                result = &mut follow => break result,
                _ = cancel.cancelled(), if !*kill_sent => {
                    if stop.is_shutdown() && resumable {
                        return Followed::Detached;
                    }
                    *kill_sent = true;
                    spawn_kill(session, ticket, &self.worker.name);
                }
            }
        };
        while let Ok(batch) = rx.try_recv() {
            hand_over(batch, offset);
        }
        match result {
            Ok(outcome) => Followed::Ended(outcome),
            Err(error) => Followed::Error(error),
        }
    }

    /// A script's end, worded as the built-in worker and agents word it.
    fn ended(
        &self,
        outcome: muster_exec::Outcome,
        stop: &Stop,
        kill_sent: bool,
        timeout: Option<Duration>,
    ) -> Ended {
        use muster_exec::Outcome;
        match outcome {
            Outcome::Exited(0) => (TaskState::Success, String::new()),
            Outcome::Exited(code) => (
                TaskState::Failed,
                format!("The script exited with code {code}."),
            ),
            Outcome::Signaled(signal) => (
                TaskState::Failed,
                format!("The script was ended by signal {signal}."),
            ),
            Outcome::Canceled if stop.is_shutdown() => (
                TaskState::Failed,
                "The Muster server shut down while this task was executing; the script was stopped."
                    .into(),
            ),
            Outcome::Canceled if kill_sent => (TaskState::Canceled, "The task was canceled.".into()),
            Outcome::Canceled => (
                TaskState::Failed,
                format!(
                    "The script was stopped on worker {} by a cancel this run of the server did not send (one sent before it restarted).",
                    self.worker.name
                ),
            ),
            Outcome::TimedOut => (
                TaskState::TimedOut,
                format!(
                    "The task timed out after {}.",
                    muster_core::time::format_timespan(timeout.unwrap_or_default())
                ),
            ),
        }
    }
}

/// Whether an error means the connection went (so connect again and re-attach).
fn is_connection(error: &muster_ssh::Error) -> bool {
    matches!(
        error,
        muster_ssh::Error::Disconnected { .. }
            | muster_ssh::Error::Timeout { .. }
            | muster_ssh::Error::Connect { .. }
            | muster_ssh::Error::Ssh(_)
    )
}

/// Cancels the script in the background (the follow then ends with `Canceled`).
fn spawn_kill(session: &Session, ticket: &str, name: &str) {
    let (session, ticket, name) = (session.clone(), ticket.to_string(), name.to_string());
    tokio::spawn(async move {
        if let Err(error) = session.kill(&ticket).await {
            tracing::warn!(%ticket, "cannot cancel the script on {name}: {error}");
        }
    });
}

#[cfg(test)]
mod collect_tests {
    use super::inside_work_dir;

    #[test]
    fn an_announced_path_must_stay_inside_the_working_directory() {
        let t = "abc-ServerTasks-1";
        assert_eq!(
            inside_work_dir(t, "/home/u/.muster/work/abc-ServerTasks-1/out/a.txt"),
            Some("out/a.txt")
        );
        assert_eq!(inside_work_dir(t, "report.html"), Some("report.html"));
        assert_eq!(inside_work_dir(t, "/etc/passwd"), None);
        assert_eq!(
            inside_work_dir(t, "/home/u/.muster/work/abc-ServerTasks-1/../x/secret"),
            None
        );
        assert_eq!(
            inside_work_dir(t, "/home/u/.muster/work/abc-ServerTasks-12/a"),
            None
        );
        assert_eq!(inside_work_dir(t, "../a"), None);
    }
}
