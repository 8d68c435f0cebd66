//! The kept connection to a worker: the host key checked against the pin before anything is sent,
//! then authentication, then a channel per command or script.

use crate::keys::{Fingerprint, PublicKey};
use crate::remote::{quote, sh_command};
use crate::{Auth, Error, HostKey, Target};
use russh::client::{self, Handle};
use russh::keys::{Algorithm, EcdsaCurve, HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{Channel, ChannelMsg};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Channels open at once on one connection. OpenSSH's `MaxSessions` defaults to 10; this leaves
/// room below it. More concurrent channels than this open another connection to the same host.
const CHANNELS_PER_CONNECTION: usize = 8;

/// Connections one [`Session`] keeps at most (so at most 128 channels at once); past that, a new
/// channel waits for one to close.
const MAX_CONNECTIONS: usize = 16;

/// How much of a command's stdout and of its stderr [`Session::exec`] keeps.
const OUTPUT_LIMIT: usize = 1 << 20;

/// Keep-alives unanswered before a connection counts as lost.
const KEEPALIVE_MAX: usize = 2;

/// What a command printed, and how it ended.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// The exit status; `None` when the command was ended by a signal (see `signal`).
    pub status: Option<u32>,
    pub signal: Option<String>,
    /// At most 1 MiB of each stream.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

/// Records the key the host presents and accepts it only when it matches the pin (`None`: never,
/// for a scan).
pub(crate) struct Client {
    pin: Option<Fingerprint>,
    presented: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(cert) => PublicKey::from(cert.public_key().clone()),
        };
        let accepted = self.pin.as_ref().is_some_and(|pin| pin.matches(&key));
        *self.presented.lock().unwrap_or_else(|e| e.into_inner()) = Some(key);
        Ok(accepted)
    }
}

/// The host-key families a host may have one key of each (as `/etc/ssh/ssh_host_*_key`).
const FAMILIES: [&[Algorithm]; 3] = [
    &[Algorithm::Ed25519],
    &[
        Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP256,
        },
        Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP384,
        },
        Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP521,
        },
    ],
    &[
        Algorithm::Rsa {
            hash: Some(HashAlg::Sha512),
        },
        Algorithm::Rsa {
            hash: Some(HashAlg::Sha256),
        },
    ],
];

/// `family`: the host-key algorithms to offer (`None`: russh's default order, ed25519 first).
fn config(timeout: Duration, family: Option<&'static [Algorithm]>) -> Arc<client::Config> {
    let mut preferred = russh::Preferred::default();
    if let Some(family) = family {
        preferred.key = family.into();
    }
    Arc::new(client::Config {
        // A silent worker (a frozen host, a cut network) is noticed within about 3 × timeout.
        keepalive_interval: Some(timeout.max(Duration::from_secs(1))),
        keepalive_max: KEEPALIVE_MAX,
        nodelay: true,
        preferred,
        ..Default::default()
    })
}

/// Reads a host's key without authenticating (discovery): connects, records the key the host
/// presents, and refuses it, so nothing but the key exchange happens.
pub async fn scan(host: &str, port: u16, timeout: Duration) -> Result<HostKey, Error> {
    let presented = Arc::new(Mutex::new(None));
    let handler = Client {
        pin: None,
        presented: presented.clone(),
    };
    let attempt = tokio::time::timeout(
        timeout,
        client::connect(config(timeout, None), (host, port), handler),
    )
    .await;
    let key = presented.lock().unwrap_or_else(|e| e.into_inner()).take();
    match (key, attempt) {
        (Some(key), _) => Ok(HostKey::of(&key)),
        (None, Err(_)) => Err(timed_out(host, port, timeout, "reading its host key")),
        (None, Ok(Err(error))) => Err(connect_error(host, port, error)),
        // Unreachable: the handler refuses every key, so a connection never completes.
        (None, Ok(Ok(_))) => Err(Error::Connect {
            host: host.to_string(),
            port,
            reason: "the host presented no key".into(),
        }),
    }
}

fn timed_out(host: &str, port: u16, timeout: Duration, what: &'static str) -> Error {
    Error::Timeout {
        host: host.to_string(),
        port,
        seconds: timeout.as_secs().max(1),
        what,
    }
}

fn connect_error(host: &str, port: u16, error: russh::Error) -> Error {
    let reason = match error {
        russh::Error::IO(io) => io.to_string(),
        other => other.to_string(),
    };
    Error::Connect {
        host: host.to_string(),
        port,
        reason,
    }
}

/// One key exchange: the handle when the presented key matches the pin, else the key presented (if
/// any) and the error.
async fn handshake(
    target: &Target,
    timeout: Duration,
    family: Option<&'static [Algorithm]>,
) -> Result<(Handle<Client>, PublicKey), (Option<PublicKey>, Error)> {
    let (host, port) = (target.host.as_str(), target.port);
    let presented = Arc::new(Mutex::new(None));
    let handler = Client {
        pin: Some(target.pin.clone()),
        presented: presented.clone(),
    };
    let connected = tokio::time::timeout(
        timeout,
        client::connect(config(timeout, family), (host, port), handler),
    )
    .await;
    let key = presented.lock().unwrap_or_else(|e| e.into_inner()).take();
    match (connected, key) {
        (Ok(Ok(handle)), Some(key)) => Ok((handle, key)),
        (Ok(Ok(_)), None) => Err((
            None,
            Error::Connect {
                host: host.to_string(),
                port,
                reason: "the host presented no key".into(),
            },
        )),
        (Ok(Err(error)), key) => Err((key, connect_error(host, port, error))),
        (Err(_), key) => Err((key, timed_out(host, port, timeout, "connecting"))),
    }
}

/// Opens one authenticated connection, checking the host key against the pin first. A host has a
/// key of each family (ed25519, ECDSA, RSA) and the pin may name any of them, as OpenSSH's
/// `known_hosts` may: when the key the default order gets does not match, the other families are
/// asked for in turn (key exchanges only; nothing is sent before a key matches). `family` is the
/// one that matched before, for the session's later connections.
async fn dial(
    target: &Target,
    auth: &Auth,
    timeout: Duration,
    family: Option<&'static [Algorithm]>,
) -> Result<(Handle<Client>, HostKey, Option<&'static [Algorithm]>), Error> {
    let (host, port) = (target.host.as_str(), target.port);
    let mut first_mismatch: Option<PublicKey> = None;
    let mut matched = None;
    let tries = std::iter::once(family).chain(FAMILIES.iter().map(|f| Some(*f)));
    for family in tries {
        if let (Some(family), Some(seen)) = (family, &first_mismatch)
            && family
                .iter()
                .any(|a| std::mem::discriminant(a) == std::mem::discriminant(&seen.algorithm()))
        {
            continue;
        }
        match handshake(target, timeout, family).await {
            Ok((handle, key)) => {
                matched = Some((handle, key, family));
                break;
            }
            Err((Some(key), _)) if !target.pin.matches(&key) => {
                first_mismatch.get_or_insert(key);
            }
            // The host has no key of this family.
            Err(_) if first_mismatch.is_some() => {}
            Err((_, error)) => return Err(error),
        }
    }
    let Some((mut handle, key, family)) = matched else {
        let key = first_mismatch.expect("a try that did not match recorded the key");
        return Err(Error::HostKeyChanged {
            host: host.to_string(),
            port,
            pinned: target.pin.clone(),
            presented: Box::new(HostKey::of(&key)),
        });
    };
    let host_key = HostKey::of(&key);
    let authenticated = tokio::time::timeout(timeout, async {
        match auth {
            Auth::Key { username, key } => {
                let hash = handle.best_supported_rsa_hash().await?.flatten();
                handle
                    .authenticate_publickey(username, PrivateKeyWithHashAlg::new(key.clone(), hash))
                    .await
            }
            Auth::Password { username, password } => {
                handle.authenticate_password(username, password).await
            }
        }
    })
    .await
    .map_err(|_| timed_out(host, port, timeout, "authenticating"))?
    .map_err(|error| connect_error(host, port, error))?;
    if !authenticated.success() {
        return Err(Error::AuthRejected {
            host: host.to_string(),
            port,
            username: auth.username().to_string(),
            method: match auth {
                Auth::Key { .. } => "key",
                Auth::Password { .. } => "password",
            },
        });
    }
    Ok((handle, host_key, family))
}

struct Connection {
    handle: Handle<Client>,
    slots: Arc<Semaphore>,
    /// The channels this connection may hold: lowered when the worker refuses one (its sshd's
    /// `MaxSessions` is below [`CHANNELS_PER_CONNECTION`]).
    capacity: AtomicUsize,
}

impl Connection {
    fn new(handle: Handle<Client>, capacity: usize) -> Arc<Connection> {
        Arc::new(Connection {
            handle,
            slots: Arc::new(Semaphore::new(capacity)),
            capacity: AtomicUsize::new(capacity),
        })
    }
}

struct Inner {
    target: Target,
    auth: Auth,
    timeout: Duration,
    /// The host-key algorithms whose key matched the pin.
    family: Option<&'static [Algorithm]>,
    connections: Mutex<Vec<Arc<Connection>>>,
    /// The channels a new connection starts with: the least any connection was found to hold.
    capacity: AtomicUsize,
    /// One new connection at a time (sshd's `MaxStartups` limits unauthenticated ones).
    dialing: tokio::sync::Mutex<()>,
    /// Channels already running a program's shell, waiting for its arguments (by program).
    warm: Mutex<std::collections::HashMap<&'static str, Warm>>,
}

/// One kept connection to a worker (a second one only when more than 8 channels are open at once);
/// cheap to clone; a channel per command or script. Dropping the last clone closes it; scripts
/// started with [`Session::start`] keep running on the worker.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

/// An open channel and its place on its connection.
pub(crate) struct Chan {
    pub channel: Channel<client::Msg>,
    pub permit: OwnedSemaphorePermit,
    connection: Arc<Connection>,
}

/// Warm channels kept per program: each has its login shell started and waits for its
/// arguments, so a script's start and follow do not wait for the user's shell start-up (which
/// may source a slow `~/.bashrc`).
const WARM_PER_PROGRAM: usize = 1;

/// Whether sessions keep warm channels: yes, unless the environment variable
/// `MUSTER_SSH_WARM_CHANNELS` is `0` (to measure what they save: `muster-bench dispatch`).
fn warm_channels() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("MUSTER_SSH_WARM_CHANNELS").map_or(true, |v| v.trim() != "0"))
}

/// A program's warm channels, and how many are being opened.
#[derive(Default)]
struct Warm {
    ready: Vec<Chan>,
    opening: usize,
}

impl Session {
    /// Connects and authenticates. The host key is checked against `target.pin` before any
    /// authentication: a key that does not match gives [`Error::HostKeyChanged`] and nothing is
    /// sent. An MD5 pin that matches: the returned [`HostKey`] gives the SHA-256 of the same key,
    /// for the caller to upgrade its pin to. `timeout` bounds connecting and each later channel
    /// opening; a silent worker is noticed within about three times it (keep-alives).
    pub async fn connect(
        target: &Target,
        auth: &Auth,
        timeout: Duration,
    ) -> Result<(Session, HostKey), Error> {
        let (handle, host_key, family) = dial(target, auth, timeout, None).await?;
        let session = Session {
            inner: Arc::new(Inner {
                target: target.clone(),
                auth: auth.clone(),
                timeout,
                family,
                connections: Mutex::new(vec![Connection::new(handle, CHANNELS_PER_CONNECTION)]),
                capacity: AtomicUsize::new(CHANNELS_PER_CONNECTION),
                dialing: tokio::sync::Mutex::new(()),
                warm: Mutex::new(std::collections::HashMap::new()),
            }),
        };
        Ok((session, host_key))
    }

    /// Whether every connection is gone (the worker or the network went away): connect again.
    pub fn is_closed(&self) -> bool {
        self.live_connections().is_empty()
    }

    pub fn target(&self) -> &Target {
        &self.inner.target
    }

    fn live_connections(&self) -> Vec<Arc<Connection>> {
        let mut connections = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        connections.retain(|c| !c.handle.is_closed());
        connections.clone()
    }

    /// Why a channel closed without an exit status: the worker refused the command, or the
    /// connection went.
    pub(crate) fn no_end(&self, refused: bool) -> Error {
        if refused {
            Error::Remote {
                what: "run a command",
                detail: "its sshd refused to run it for this account".into(),
            }
        } else {
            self.disconnected()
        }
    }

    pub(crate) fn disconnected(&self) -> Error {
        Error::Disconnected {
            host: self.inner.target.host.clone(),
            port: self.inner.target.port,
        }
    }

    /// Opens a channel on a connection with room, opening another connection when all are full.
    pub(crate) async fn channel(&self) -> Result<Chan, Error> {
        'retry: loop {
            let connections = self.live_connections();
            if connections.is_empty() {
                return Err(self.disconnected());
            }
            for connection in &connections {
                if let Ok(permit) = connection.slots.clone().try_acquire_owned() {
                    match self.open_on(connection, permit).await? {
                        Some(chan) => return Ok(chan),
                        None => continue 'retry,
                    }
                }
            }
            let dialing = self.inner.dialing.lock().await;
            if self
                .live_connections()
                .iter()
                .any(|c| c.slots.available_permits() > 0)
            {
                continue;
            }
            if connections.len() < MAX_CONNECTIONS {
                let inner = &self.inner;
                let (handle, _, _) =
                    dial(&inner.target, &inner.auth, inner.timeout, inner.family).await?;
                let capacity = inner.capacity.load(Ordering::SeqCst);
                inner
                    .connections
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Connection::new(handle, capacity));
                continue;
            }
            drop(dialing);
            let first = connections[0].clone();
            let permit = first
                .slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| self.disconnected())?;
            if let Some(chan) = self.open_on(&first, permit).await? {
                return Ok(chan);
            }
        }
    }

    /// How often a refused channel with nothing else open on its connection is asked again (after
    /// 50, 100, … ms: about 0.75 s in all).
    const CLOSING_RETRIES: u64 = 5;

    /// Opens a channel on `connection`. `None`: the worker refused it while others are open there,
    /// so the connection now counts one channel fewer; try again.
    async fn open_on(
        &self,
        connection: &Arc<Connection>,
        permit: OwnedSemaphorePermit,
    ) -> Result<Option<Chan>, Error> {
        let target = &self.inner.target;
        // Channels this side closed a moment ago may still count on the worker (sshd handles
        // their close after it answers this open): a refusal with nothing else open here is
        // asked again a few times before it is the worker's answer.
        let mut attempt = 0;
        loop {
            let opened =
                tokio::time::timeout(self.inner.timeout, connection.handle.channel_open_session())
                    .await
                    .map_err(|_| {
                        timed_out(
                            &target.host,
                            target.port,
                            self.inner.timeout,
                            "opening a channel",
                        )
                    })?;
            return match opened {
                Ok(channel) => Ok(Some(Chan {
                    channel,
                    permit,
                    connection: connection.clone(),
                })),
                Err(_) if connection.handle.is_closed() => Err(self.disconnected()),
                Err(russh::Error::ChannelOpenFailure(reason)) => {
                    let capacity = connection.capacity.load(Ordering::SeqCst);
                    let others_open =
                        capacity.saturating_sub(connection.slots.available_permits() + 1);
                    if others_open == 0 {
                        if attempt < Self::CLOSING_RETRIES {
                            attempt += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(50 * attempt))
                                .await;
                            continue;
                        }
                        return Err(Error::Remote {
                            what: "open a channel",
                            detail: format!("its sshd refused it ({reason:?})"),
                        });
                    }
                    permit.forget();
                    connection.capacity.store(capacity - 1, Ordering::SeqCst);
                    self.inner
                        .capacity
                        .fetch_min(capacity - 1, Ordering::SeqCst);
                    Ok(None)
                }
                Err(error) => Err(error.into()),
            };
        }
    }

    /// A channel on a connection of its own, for a bulk transfer: russh hands a connection's data
    /// to its channels in order, so a slow reader of a large file would hold up every other
    /// channel (the scripts' lines) on a shared one. Dropping the handle closes the connection.
    pub(crate) async fn bulk_channel(
        &self,
    ) -> Result<(Handle<Client>, Channel<client::Msg>), Error> {
        let inner = &self.inner;
        let (handle, _, _) = dial(&inner.target, &inner.auth, inner.timeout, inner.family).await?;
        let channel = tokio::time::timeout(inner.timeout, handle.channel_open_session())
            .await
            .map_err(|_| {
                timed_out(
                    &inner.target.host,
                    inner.target.port,
                    inner.timeout,
                    "opening a channel",
                )
            })??;
        Ok((handle, channel))
    }

    /// Runs a command through the login user's shell (health checks: `uname -sm`, …), with
    /// `stdin` as its input, and collects at most 1 MiB of each output stream.
    pub async fn exec(&self, command: &str) -> Result<Output, Error> {
        self.run(command, &[]).await
    }

    pub(crate) async fn run(&self, command: &str, stdin: &[u8]) -> Result<Output, Error> {
        let chan = self.channel().await?;
        chan.channel.exec(true, command).await?;
        self.collect(chan, stdin).await
    }

    /// Runs a POSIX-sh `program` with `args` (as `sh -c PROGRAM muster ARGS…`) and `stdin`, on a
    /// warm channel when there is one.
    pub(crate) async fn run_program(
        &self,
        name: &'static str,
        program: &'static str,
        args: &[&str],
        stdin: &[u8],
    ) -> Result<Output, Error> {
        let chan = self.program_channel(name, program, args).await?;
        self.collect(chan, stdin).await
    }

    /// A channel running `program` with `args`: a warm one (its login shell already started) when
    /// there is one, and another is warmed in the background for the next call.
    pub(crate) async fn program_channel(
        &self,
        name: &'static str,
        program: &'static str,
        args: &[&str],
    ) -> Result<Chan, Error> {
        if !warm_channels() || args.iter().any(|a| a.contains(['\n', '\r'])) {
            let chan = self.channel().await?;
            chan.channel.exec(true, sh_command(program, args)).await?;
            return Ok(chan);
        }
        let warm = {
            let mut pools = self.inner.warm.lock().unwrap_or_else(|e| e.into_inner());
            let pool = pools.entry(name).or_default();
            pool.ready.retain(|c| !c.connection.handle.is_closed());
            pool.ready.pop()
        };
        let chan = match warm {
            Some(chan) => chan,
            None => self.warm_channel(program).await?,
        };
        self.warm_up(name, program);
        let mut line: Vec<String> = args.iter().map(|a| quote(a)).collect::<Vec<_>>();
        line.push("\n".into());
        chan.channel.data(line.join(" ").as_bytes()).await?;
        Ok(chan)
    }

    /// Opens a channel whose shell waits for `program`'s arguments, one line of sh words.
    async fn warm_channel(&self, program: &'static str) -> Result<Chan, Error> {
        let chan = self.channel().await?;
        let waiting = format!(
            "IFS= read -r muster_args || exit 125\neval \"set -- $muster_args\"\nunset muster_args\n{program}"
        );
        chan.channel.exec(true, sh_command(&waiting, &[])).await?;
        Ok(chan)
    }

    /// Keeps a warm channel for `program` ready, in the background.
    fn warm_up(&self, name: &'static str, program: &'static str) {
        let session = self.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut pools = self.inner.warm.lock().unwrap_or_else(|e| e.into_inner());
            let pool = pools.entry(name).or_default();
            if pool.ready.len() + pool.opening >= WARM_PER_PROGRAM {
                return;
            }
            pool.opening += 1;
        }
        runtime.spawn(async move {
            let opened = session.warm_channel(program).await;
            let mut pools = session.inner.warm.lock().unwrap_or_else(|e| e.into_inner());
            let pool = pools.entry(name).or_default();
            pool.opening -= 1;
            if let Ok(chan) = opened {
                pool.ready.push(chan);
            }
        });
    }

    /// Sends `stdin` and collects what the command prints, and how it ended.
    async fn collect(&self, chan: Chan, stdin: &[u8]) -> Result<Output, Error> {
        let Chan {
            mut channel,
            permit: _permit,
            ..
        } = chan;
        // A command that does not read its input may end before all of it is sent.
        let _ = channel.data(stdin).await;
        let _ = channel.eof().await;
        let mut output = Output::default();
        let (mut ended, mut refused) = (false, false);
        while let Some(message) = channel.wait().await {
            match message {
                ChannelMsg::Data { data } => keep(&mut output.stdout, &data),
                ChannelMsg::ExtendedData { data, ext: 1 } => keep(&mut output.stderr, &data),
                ChannelMsg::ExitStatus { exit_status } => {
                    output.status = Some(exit_status);
                    ended = true;
                }
                ChannelMsg::ExitSignal { signal_name, .. } => {
                    output.signal = Some(format!("{signal_name:?}"));
                    ended = true;
                }
                ChannelMsg::Failure => refused = true,
                _ => {}
            }
        }
        if !ended {
            return Err(self.no_end(refused));
        }
        Ok(output)
    }
}

fn keep(buffer: &mut Vec<u8>, data: &[u8]) {
    let room = OUTPUT_LIMIT.saturating_sub(buffer.len());
    buffer.extend_from_slice(&data[..data.len().min(room)]);
}
