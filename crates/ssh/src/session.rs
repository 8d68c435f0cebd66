//! The kept connection to a worker: the host key checked against the pin before anything is sent,
//! then authentication, then a channel per command or script.

use crate::keys::{Fingerprint, PublicKey};
use crate::{Auth, Error, HostKey, Target};
use russh::client::{self, Handle};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{Channel, ChannelMsg};
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
struct Client {
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

fn config(timeout: Duration) -> Arc<client::Config> {
    Arc::new(client::Config {
        // A silent worker (a frozen host, a cut network) is noticed within about 3 × timeout.
        keepalive_interval: Some(timeout.max(Duration::from_secs(1))),
        keepalive_max: KEEPALIVE_MAX,
        nodelay: true,
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
        client::connect(config(timeout), (host, port), handler),
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

/// Opens one authenticated connection, checking the host key against the pin first.
async fn dial(
    target: &Target,
    auth: &Auth,
    timeout: Duration,
) -> Result<(Handle<Client>, HostKey), Error> {
    let (host, port) = (target.host.as_str(), target.port);
    let presented = Arc::new(Mutex::new(None));
    let handler = Client {
        pin: Some(target.pin.clone()),
        presented: presented.clone(),
    };
    let connected = tokio::time::timeout(
        timeout,
        client::connect(config(timeout), (host, port), handler),
    )
    .await;
    let key = presented.lock().unwrap_or_else(|e| e.into_inner()).take();
    let mut handle = match connected {
        Ok(Ok(handle)) => handle,
        Ok(Err(error)) => {
            return Err(match key {
                Some(key) if !target.pin.matches(&key) => Error::HostKeyChanged {
                    host: host.to_string(),
                    port,
                    pinned: target.pin.clone(),
                    presented: Box::new(HostKey::of(&key)),
                },
                _ => connect_error(host, port, error),
            });
        }
        Err(_) => return Err(timed_out(host, port, timeout, "connecting")),
    };
    let host_key = match key {
        Some(key) => HostKey::of(&key),
        None => {
            return Err(Error::Connect {
                host: host.to_string(),
                port,
                reason: "the host presented no key".into(),
            });
        }
    };
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
    Ok((handle, host_key))
}

struct Connection {
    handle: Handle<Client>,
    slots: Arc<Semaphore>,
}

struct Inner {
    target: Target,
    auth: Auth,
    timeout: Duration,
    connections: Mutex<Vec<Arc<Connection>>>,
    /// One new connection at a time (sshd's `MaxStartups` limits unauthenticated ones).
    dialing: tokio::sync::Mutex<()>,
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
        let (handle, host_key) = dial(target, auth, timeout).await?;
        let session = Session {
            inner: Arc::new(Inner {
                target: target.clone(),
                auth: auth.clone(),
                timeout,
                connections: Mutex::new(vec![Arc::new(Connection {
                    handle,
                    slots: Arc::new(Semaphore::new(CHANNELS_PER_CONNECTION)),
                })]),
                dialing: tokio::sync::Mutex::new(()),
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

    pub(crate) fn disconnected(&self) -> Error {
        Error::Disconnected {
            host: self.inner.target.host.clone(),
            port: self.inner.target.port,
        }
    }

    /// Opens a channel on a connection with room, opening another connection when all are full.
    pub(crate) async fn channel(&self) -> Result<Chan, Error> {
        loop {
            let connections = self.live_connections();
            if connections.is_empty() {
                return Err(self.disconnected());
            }
            for connection in &connections {
                if let Ok(permit) = connection.slots.clone().try_acquire_owned() {
                    return self.open_on(connection, permit).await;
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
                let (handle, _) =
                    dial(&self.inner.target, &self.inner.auth, self.inner.timeout).await?;
                self.inner
                    .connections
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Arc::new(Connection {
                        handle,
                        slots: Arc::new(Semaphore::new(CHANNELS_PER_CONNECTION)),
                    }));
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
            return self.open_on(&first, permit).await;
        }
    }

    async fn open_on(
        &self,
        connection: &Connection,
        permit: OwnedSemaphorePermit,
    ) -> Result<Chan, Error> {
        let target = &self.inner.target;
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
        match opened {
            Ok(channel) => Ok(Chan { channel, permit }),
            Err(_) if connection.handle.is_closed() => Err(self.disconnected()),
            Err(error) => Err(error.into()),
        }
    }

    /// Runs a command through the login user's shell (health checks: `uname -sm`, …), with
    /// `stdin` as its input, and collects at most 1 MiB of each output stream.
    pub async fn exec(&self, command: &str) -> Result<Output, Error> {
        self.run(command, &[]).await
    }

    pub(crate) async fn run(&self, command: &str, stdin: &[u8]) -> Result<Output, Error> {
        let Chan {
            mut channel,
            permit: _permit,
        } = self.channel().await?;
        channel.exec(true, command).await?;
        // A command that does not read its input may end before all of it is sent.
        let _ = channel.data(stdin).await;
        let _ = channel.eof().await;
        let mut output = Output::default();
        let mut ended = false;
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
                _ => {}
            }
        }
        if !ended {
            return Err(self.disconnected());
        }
        Ok(output)
    }
}

fn keep(buffer: &mut Vec<u8>, data: &[u8]) {
    let room = OUTPUT_LIMIT.saturating_sub(buffer.len());
    buffer.extend_from_slice(&data[..data.len().min(room)]);
}
