//! `muster-agent run`: serves the script RPC to the server, by listening for it, by dialling it
//! (polling), or both. Scripts run through `muster-exec`, the built-in worker's code.

use crate::config::{AgentConfig, CommsAddress, Home};
use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use muster_proto::rpc::{
    self, ArtifactRequest, HealthReply, HeldTicket, Outcome, ScriptLine, ScriptState, StartScript,
    StatusReply, StatusRequest, Ticket, TicketList,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

/// The most lines one status answer carries.
const MAX_LINES_PER_REPLY: usize = 5000;

struct Script {
    inner: Mutex<ScriptInner>,
    changed: Notify,
    cancel: Notify,
    /// When the server last asked about this ticket (start, status, cancel).
    contact: Mutex<tokio::time::Instant>,
    /// The finished script's working directory, kept until the ticket is completed so that the
    /// server can collect the files it announced.
    work_dir: Mutex<Option<muster_exec::WorkDir>>,
}

#[derive(Default)]
struct ScriptInner {
    lines: Vec<ScriptLine>,
    done: Option<(Outcome, Option<i32>)>,
}

impl Script {
    fn touch(&self) {
        *self.contact.lock().expect("script lock") = tokio::time::Instant::now();
    }

    /// Resolves once the server has said nothing about this script for `limit`.
    async fn silent_for(&self, limit: Duration) {
        loop {
            let deadline = *self.contact.lock().expect("script lock") + limit;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A ticket as the agent keys it: the server that sent it (its certificate's thumbprint) and the
/// ticket, so two servers that trust this agent never see or stop each other's scripts.
type Key = (String, String);

/// The scripts this agent runs or ran, by server and ticket, until the server completes them.
pub struct Scripts {
    map: Mutex<HashMap<Key, Arc<Script>>>,
    work_dir: PathBuf,
    tickets: crate::tickets::Tickets,
}

impl Scripts {
    fn get(&self, key: &Key) -> Option<Arc<Script>> {
        self.map.lock().expect("scripts lock").get(key).cloned()
    }

    fn running(&self) -> usize {
        self.map
            .lock()
            .expect("scripts lock")
            .values()
            .filter(|s| s.inner.lock().expect("script lock").done.is_none())
            .count()
    }

    /// Starts a script, or does nothing when the ticket is known (a repeated start) or was lost
    /// (received before this agent restarted: it never runs twice). The ticket is recorded in the
    /// home before the script starts.
    fn start(self: &Arc<Self>, server: &str, request: StartScript) -> anyhow::Result<()> {
        let key = (server.to_string(), request.ticket.clone());
        if self.tickets.is_lost(server, &request.ticket) {
            return Ok(());
        }
        let script = {
            let mut map = self.map.lock().expect("scripts lock");
            if let Some(script) = map.get(&key) {
                script.touch();
                return Ok(());
            }
            self.tickets.receive(server, &request.ticket)?;
            let script = Arc::new(Script {
                inner: Mutex::new(ScriptInner::default()),
                changed: Notify::new(),
                cancel: Notify::new(),
                contact: Mutex::new(tokio::time::Instant::now()),
                work_dir: Mutex::new(None),
            });
            map.insert(key, script.clone());
            script
        };
        let syntax = match request.syntax.to_ascii_lowercase().as_str() {
            "python" => muster_exec::Syntax::Python,
            "powershell" => muster_exec::Syntax::PowerShell,
            _ => muster_exec::Syntax::Bash,
        };
        let exec_script = muster_exec::Script {
            syntax,
            body: request.body,
            env: request.env,
            clean_env: false,
            timeout: request.timeout_seconds.map(Duration::from_secs),
            work_root: self.work_dir.clone(),
            run_as: None,
        };
        // The server fails the task after its wait; past that (and the margin) nobody follows the
        // script any more, so it stops.
        let abandon_after = request
            .server_wait_seconds
            .map(|wait| Duration::from_secs(wait) + rpc::ABANDON_MARGIN);
        tokio::spawn(async move {
            let (tx, mut rx) = mpsc::channel::<Vec<muster_exec::Line>>(16);
            let collector = {
                let script = script.clone();
                tokio::spawn(async move {
                    while let Some(batch) = rx.recv().await {
                        push_lines(&script, batch);
                    }
                })
            };
            let abandoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let stop = {
                let (script, abandoned) = (script.clone(), abandoned.clone());
                async move {
                    let silence = async {
                        match abandon_after {
                            Some(limit) => script.silent_for(limit).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = script.cancel.notified() => {}
                        _ = silence => {
                            abandoned.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                }
            };
            let result =
                muster_exec::run_keeping(exec_script, tx, stop)
                    .await
                    .map(|(outcome, dir)| {
                        *script.work_dir.lock().expect("script lock") = Some(dir);
                        outcome
                    });
            let _ = collector.await;
            let done = match result {
                Ok(muster_exec::Outcome::Exited(code)) => (Outcome::Exited, Some(code)),
                Ok(muster_exec::Outcome::Signaled(signal)) => (Outcome::Signaled, Some(signal)),
                Ok(muster_exec::Outcome::Canceled)
                    if abandoned.load(std::sync::atomic::Ordering::SeqCst) =>
                {
                    let wait = abandon_after.unwrap_or_default().as_secs();
                    eprintln!(
                        "muster-agent: no word from the server about a script for {wait} seconds; it was stopped"
                    );
                    (Outcome::Abandoned, None)
                }
                Ok(muster_exec::Outcome::Canceled) => (Outcome::Canceled, None),
                Ok(muster_exec::Outcome::TimedOut) => (Outcome::TimedOut, None),
                Err(error) => {
                    push_line(&script, true, error.to_string());
                    (Outcome::Failed, None)
                }
            };
            script.inner.lock().expect("script lock").done = Some(done);
            script.changed.notify_waiters();
        });
        Ok(())
    }

    async fn status(&self, server: &str, request: StatusRequest) -> StatusReply {
        let key = (server.to_string(), request.ticket.clone());
        let Some(script) = self.get(&key) else {
            let state = if self.tickets.is_lost(server, &request.ticket) {
                ScriptState::Lost
            } else {
                ScriptState::Unknown
            };
            return StatusReply {
                state,
                outcome: None,
                exit_code: None,
                lines: Vec::new(),
            };
        };
        script.touch();
        let reply = self.wait_for_news(&script, &request).await;
        script.touch();
        reply
    }

    async fn wait_for_news(&self, script: &Script, request: &StatusRequest) -> StatusReply {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(request.wait_ms.min(60_000));
        loop {
            let changed = script.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let inner = script.inner.lock().expect("script lock");
                let start = inner.lines.partition_point(|l| l.seq <= request.after);
                let lines: Vec<ScriptLine> = inner.lines[start..]
                    .iter()
                    .take(MAX_LINES_PER_REPLY)
                    .cloned()
                    .collect();
                let all_sent = start + lines.len() == inner.lines.len();
                if !lines.is_empty() || inner.done.is_some() {
                    let (state, outcome, exit_code) = match inner.done {
                        Some((outcome, code)) if all_sent => {
                            (ScriptState::Complete, Some(outcome), code)
                        }
                        _ => (ScriptState::Running, None, None),
                    };
                    return StatusReply {
                        state,
                        outcome,
                        exit_code,
                        lines,
                    };
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return StatusReply {
                    state: ScriptState::Running,
                    outcome: None,
                    exit_code: None,
                    lines: Vec::new(),
                };
            }
        }
    }

    fn cancel(&self, server: &str, ticket: &str) {
        if let Some(script) = self.get(&(server.to_string(), ticket.to_string())) {
            script.touch();
            script.cancel.notify_one();
        }
    }

    /// Opens a file of a finished script's working directory (kept until the ticket is completed).
    fn open_artifact(
        &self,
        server: &str,
        request: &ArtifactRequest,
    ) -> Result<(std::fs::File, u64), (StatusCode, String)> {
        let Some(script) = self.get(&(server.to_string(), request.ticket.clone())) else {
            return Err((
                StatusCode::NOT_FOUND,
                "this agent holds no such ticket".into(),
            ));
        };
        script.touch();
        if script.inner.lock().expect("script lock").done.is_none() {
            return Err((StatusCode::CONFLICT, "the script is still running".into()));
        }
        let work_dir = script.work_dir.lock().expect("script lock");
        let Some(dir) = work_dir.as_ref() else {
            return Err((
                StatusCode::NOT_FOUND,
                "the script left no working directory (it could not start)".into(),
            ));
        };
        dir.open(&request.path).map_err(|error| {
            let status = match error {
                muster_exec::FileError::Missing => StatusCode::NOT_FOUND,
                muster_exec::FileError::Outside => StatusCode::FORBIDDEN,
                muster_exec::FileError::NotAFile => StatusCode::UNPROCESSABLE_ENTITY,
                muster_exec::FileError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (status, error.to_string())
        })
    }

    /// Frees a ticket; a script that still runs is stopped, since nobody will read it any more.
    fn complete(&self, server: &str, ticket: &str) {
        let removed = self
            .map
            .lock()
            .expect("scripts lock")
            .remove(&(server.to_string(), ticket.to_string()));
        if let Some(script) = removed {
            script.cancel.notify_one();
        }
        self.tickets.complete(server, ticket);
    }

    /// The tickets held for a server: those it may still read, and those lost in a restart.
    fn list(&self, server: &str) -> TicketList {
        let mut tickets: Vec<HeldTicket> = self
            .map
            .lock()
            .expect("scripts lock")
            .iter()
            .filter(|((s, _), _)| s == server)
            .map(|((_, ticket), script)| HeldTicket {
                ticket: ticket.clone(),
                state: if script.inner.lock().expect("script lock").done.is_some() {
                    ScriptState::Complete
                } else {
                    ScriptState::Running
                },
            })
            .collect();
        tickets.extend(
            self.tickets
                .lost_of(server)
                .into_iter()
                .map(|ticket| HeldTicket {
                    ticket,
                    state: ScriptState::Lost,
                }),
        );
        TicketList { tickets }
    }
}

fn push_line(script: &Script, error: bool, text: String) {
    let stream = if error {
        muster_exec::Stream::Stderr
    } else {
        muster_exec::Stream::Stdout
    };
    push_lines(script, vec![muster_exec::Line { stream, text }]);
}

/// Keeps a batch of a script's lines, numbered, and wakes the server's waiting status call once.
fn push_lines(script: &Script, batch: Vec<muster_exec::Line>) {
    let time_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok());
    let mut inner = script.inner.lock().expect("script lock");
    for line in batch {
        let seq = inner.lines.len() as u64 + 1;
        inner.lines.push(ScriptLine {
            seq,
            error: line.stream == muster_exec::Stream::Stderr,
            text: line.text,
            time_ms,
        });
    }
    drop(inner);
    script.changed.notify_waiters();
}

/// An answer's body: a JSON document, or a file's bytes streamed in chunks.
type Body = UnsyncBoxBody<Bytes, std::io::Error>;

fn json_reply(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(bytes))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("a valid response")
}

/// The bytes of a file in chunks of 64 KiB, at most `length` of them (a file that grows meanwhile
/// is cut at the size announced in the header). HTTP/2 flow control holds the reads back while the
/// server is slow, so the file is never held whole.
fn file_reply(file: std::fs::File, length: u64) -> Response<Body> {
    use tokio::io::AsyncReadExt;
    const CHUNK: usize = 64 * 1024;
    let file = tokio::fs::File::from_std(file);
    let chunks = futures_util::stream::unfold((file, length), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = bytes::BytesMut::with_capacity(CHUNK.min(left as usize));
        match file.read_buf(&mut buf).await {
            Ok(0) => None,
            Ok(n) => Some((
                Ok(hyper::body::Frame::data(buf.freeze())),
                (file, left.saturating_sub(n as u64)),
            )),
            Err(error) => Some((Err(error), (file, 0))),
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/octet-stream")
        .header(rpc::ARTIFACT_LENGTH_HEADER, length.to_string())
        .body(BodyExt::boxed_unsync(StreamBody::new(chunks)))
        .expect("a valid response")
}

async fn read_json<T: serde::de::DeserializeOwned>(
    request: Request<hyper::body::Incoming>,
) -> Result<T, String> {
    let body = Limited::new(request.into_body(), 64 * 1024 * 1024)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

async fn handle(
    scripts: Arc<Scripts>,
    server: Arc<str>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let path = request.uri().path().to_string();
    let bad = |e: String| json_reply(StatusCode::BAD_REQUEST, &serde_json::json!({"Error": e}));
    let response = match path.as_str() {
        rpc::PATH_START => match read_json::<StartScript>(request).await {
            Ok(start) => {
                let ticket = start.ticket.clone();
                match scripts.start(&server, start) {
                    Ok(()) => json_reply(StatusCode::OK, &Ticket { ticket }),
                    Err(error) => json_reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &serde_json::json!({"Error": format!("the agent cannot record the ticket in its home, so it does not start the script: {error:#}")}),
                    ),
                }
            }
            Err(e) => bad(e),
        },
        rpc::PATH_STATUS => match read_json::<StatusRequest>(request).await {
            Ok(status) => json_reply(StatusCode::OK, &scripts.status(&server, status).await),
            Err(e) => bad(e),
        },
        rpc::PATH_CANCEL => match read_json::<Ticket>(request).await {
            Ok(ticket) => {
                scripts.cancel(&server, &ticket.ticket);
                json_reply(StatusCode::OK, &ticket)
            }
            Err(e) => bad(e),
        },
        rpc::PATH_COMPLETE => match read_json::<Ticket>(request).await {
            Ok(ticket) => {
                scripts.complete(&server, &ticket.ticket);
                json_reply(StatusCode::OK, &ticket)
            }
            Err(e) => bad(e),
        },
        rpc::PATH_LIST => json_reply(StatusCode::OK, &scripts.list(&server)),
        rpc::PATH_ARTIFACT => match read_json::<ArtifactRequest>(request).await {
            Ok(artifact) => match scripts.open_artifact(&server, &artifact) {
                Ok((file, length)) => file_reply(file, length),
                Err((status, error)) => json_reply(status, &serde_json::json!({"Error": error})),
            },
            Err(e) => bad(e),
        },
        rpc::PATH_HEALTH => json_reply(
            StatusCode::OK,
            &HealthReply {
                agent_version: env!("CARGO_PKG_VERSION").into(),
                operating_system: std::env::consts::OS.into(),
                architecture: std::env::consts::ARCH.into(),
                shell_name: "bash".into(),
                running_scripts: scripts.running(),
            },
        ),
        _ => json_reply(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"Error": "no such call"}),
        ),
    };
    Ok(response)
}

/// The server at the other end of a connection: its certificate's thumbprint (the handshake
/// checked that it is a trusted one).
trait PeerServer {
    fn peer_thumbprint(&self) -> String;
}

fn thumbprint_of(certificates: Option<&[rustls::pki_types::CertificateDer<'static>]>) -> String {
    certificates
        .and_then(|c| c.first())
        .map(|c| muster_proto::thumbprint_sha256(c))
        .unwrap_or_default()
}

impl PeerServer for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn peer_thumbprint(&self) -> String {
        thumbprint_of(self.get_ref().1.peer_certificates())
    }
}

impl PeerServer for tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    fn peer_thumbprint(&self) -> String {
        thumbprint_of(self.get_ref().1.peer_certificates())
    }
}

/// Serves the RPC on one established connection until it closes.
async fn serve(
    stream: impl AsyncRead + AsyncWrite + PeerServer + Unpin + Send + 'static,
    scripts: Arc<Scripts>,
) {
    let server: Arc<str> = stream.peer_thumbprint().into();
    let service =
        hyper::service::service_fn(move |request| handle(scripts.clone(), server.clone(), request));
    let result = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(rpc::KEEP_ALIVE_INTERVAL))
        .keep_alive_timeout(rpc::KEEP_ALIVE_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = result {
        eprintln!("muster-agent: the connection to the server ended: {error}");
    }
}

/// How many connections may be in their TLS handshake at once; only a server should connect here.
const MAX_HANDSHAKES: usize = 64;

async fn listen(
    address: String,
    identity: Arc<muster_proto::Identity>,
    config: AgentConfig,
    scripts: Arc<Scripts>,
) -> anyhow::Result<()> {
    use muster_proto::net::{HANDSHAKE_TIMEOUT, Listener, Trouble};
    let pin = muster_proto::tls::pin_thumbprints(config.trusted_thumbprints.clone());
    let tls = muster_proto::tls::server_config(&identity, pin, true)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = TcpListener::bind(&address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    let mut listener = Listener::new(listener, MAX_HANDSHAKES);
    println!("muster-agent is listening on {}", listener.local_addr()?);
    loop {
        let (tcp, peer, permit) = listener
            .accept(|trouble| match trouble {
                Trouble::AcceptFailed { error, pause } => eprintln!(
                    "muster-agent: cannot accept a connection ({error}); trying again in {} ms",
                    pause.as_millis()
                ),
                Trouble::Full { limit } => eprintln!(
                    "muster-agent: {limit} connections are in their TLS handshake; closing new ones until one ends"
                ),
            })
            .await;
        let acceptor = acceptor.clone();
        let scripts = scripts.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(permit);
            match handshake {
                Ok(Ok(stream)) => serve(stream, scripts).await,
                Ok(Err(error)) => {
                    eprintln!("muster-agent: refused a connection from {peer}: {error}")
                }
                Err(_) => eprintln!(
                    "muster-agent: refused a connection from {peer}: no TLS handshake in time"
                ),
            }
        });
    }
}

/// A link shorter than this does not count as up: the next address is still tried at once, but a
/// server that accepts and drops the agent at once counts as a failed dial, so it cannot make the
/// agent spin.
const STEADY_LINK: Duration = Duration::from_secs(1);

/// Holds one link to any one of the server's nodes. The addresses are tried in order, starting
/// from the one that last worked; a link that closes sends the agent to the next address at once.
/// Only a whole round of failed dials waits: the capped exponential backoff, or the longer delay
/// for refusals when every address refused this agent.
async fn poll(
    addresses: Vec<CommsAddress>,
    subscription: String,
    identity: Arc<muster_proto::Identity>,
    config: AgentConfig,
    scripts: Arc<Scripts>,
) {
    let pin = muster_proto::tls::pin_thumbprints(config.trusted_thumbprints.clone());
    let tls = match muster_proto::tls::client_config(&identity, pin) {
        Ok(tls) => tls,
        Err(error) => {
            eprintln!("muster-agent: cannot set up TLS: {error}");
            return;
        }
    };
    let connector = tokio_rustls::TlsConnector::from(tls);
    let count = addresses.len();
    if count == 0 {
        eprintln!("muster-agent: no comms address to dial");
        return;
    }
    // The address to dial next, and this round's dials so far and refusals among them.
    let (mut next, mut last_worked) = (0, 0);
    let (mut tried, mut refused) = (0, 0);
    // Whole rounds failed in a row, and rounds in which every address refused.
    let mut failures: u32 = 0;
    let mut refusals: u32 = 0;
    loop {
        let (index, address) = (next, &addresses[next]);
        next = (next + 1) % count;
        match rpc::dial_polling(&connector, &address.host, address.port, &subscription).await {
            Ok(stream) => {
                let up = tokio::time::Instant::now();
                (last_worked, refusals) = (index, 0);
                println!("muster-agent is connected to {address} as {subscription}");
                serve(stream, scripts.clone()).await;
                let then = if count == 1 {
                    "dialling it again".to_string()
                } else {
                    format!("trying {}", addresses[next])
                };
                println!("muster-agent: the link to {address} closed; {then}");
                // A new round starts at the next address and ends with this one.
                (tried, refused) = (0, 0);
                if up.elapsed() >= STEADY_LINK {
                    failures = 0;
                    continue;
                }
            }
            // The server refused this agent: say why; only its operator can mend it.
            Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                refused += 1;
                eprintln!("muster-agent: the server at {address} refused this agent: {error}");
            }
            Err(error) => eprintln!("muster-agent: cannot connect to {address}: {error:#}"),
        }
        tried += 1;
        if tried < count {
            continue;
        }
        // A whole round failed: wait, longer each round, then start again from the address that
        // last worked.
        let delay = if refused == count {
            refusals = refusals.saturating_add(1);
            rpc::refused_delay(refusals)
        } else {
            failures = failures.saturating_add(1);
            rpc::reconnect_delay(failures)
        };
        if count > 1 {
            eprintln!(
                "muster-agent: none of the {count} comms addresses took this agent; trying again from {} in {} ms",
                addresses[last_worked],
                delay.as_millis()
            );
        } else if refused == count {
            eprintln!("muster-agent: trying again in {}s", delay.as_secs());
        }
        (tried, refused, next) = (0, 0, last_worked);
        tokio::time::sleep(delay).await;
    }
}

pub async fn run(home: &Home, listen_address: &str) -> anyhow::Result<()> {
    let _home_lock = home.lock()?;
    let identity = Arc::new(home.identity()?);
    let config = home.load()?;
    let work_dir = config
        .work_dir
        .clone()
        .unwrap_or_else(|| home.dir.join("work"));
    // Scripts of an earlier run died with it (their watchdogs kill them); what a crash left is
    // killed and removed now, and the tickets it held are remembered as lost.
    match muster_exec::clean_work_root(&work_dir) {
        Ok(cleaned) if cleaned != Default::default() => println!(
            "muster-agent cleaned its work directory: {} leftover script process(es) killed, {} stale entr(ies) removed",
            cleaned.processes_killed, cleaned.entries_removed
        ),
        Ok(_) => {}
        Err(error) => eprintln!("muster-agent: cannot clean {}: {error}", work_dir.display()),
    }
    let scripts = Arc::new(Scripts {
        map: Mutex::new(HashMap::new()),
        work_dir,
        tickets: crate::tickets::Tickets::load(&home.dir)
            .context("cannot read the tickets in the agent's home")?,
    });
    if config.trusted_thumbprints.is_empty() {
        bail!(
            "the agent trusts no server yet: run register-worker, or configure --trust THUMBPRINT"
        );
    }
    let mut jobs = tokio::task::JoinSet::new();
    if let Some(port) = config.listen_port {
        let address = format!("{listen_address}:{port}");
        jobs.spawn(listen(
            address,
            identity.clone(),
            config.clone(),
            scripts.clone(),
        ));
    }
    if let (true, Some(subscription)) = (
        config.server.is_some() || !config.server_comms_addresses.is_empty(),
        config.subscription_id.clone(),
    ) {
        let addresses = config.polling_addresses()?;
        let (identity, config, scripts) = (identity.clone(), config.clone(), scripts.clone());
        jobs.spawn(async move {
            poll(addresses, subscription, identity, config, scripts).await;
            Ok(())
        });
    }
    if jobs.is_empty() {
        bail!(
            "the agent neither listens nor polls: configure --listen-port, or register-worker --comms-style TentacleActive"
        );
    }
    let terminate = async {
        if let Ok(mut signal) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            signal.recv().await;
        }
    };
    tokio::select! {
        Some(result) = jobs.join_next() => result?,
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = terminate => Ok(()),
    }
}

const UNIT_PATH: &str = "/etc/systemd/system/muster-agent.service";

/// `service`: the agent as a systemd unit that runs `muster-agent run` on this home.
pub fn systemd(
    home: &Home,
    install: bool,
    start: bool,
    stop: bool,
    restart: bool,
    uninstall: bool,
) -> anyhow::Result<()> {
    let systemctl = |args: &[&str]| -> anyhow::Result<()> {
        let status = std::process::Command::new("systemctl")
            .args(args)
            .status()
            .context("cannot run systemctl")?;
        if !status.success() {
            bail!("systemctl {} failed", args.join(" "));
        }
        Ok(())
    };
    if muster_exec::find_program("systemctl").is_none()
        || !std::path::Path::new("/run/systemd/system").exists()
    {
        bail!(
            "systemd is not running here: run `muster-agent --home {} run` under your own supervisor",
            home.dir.display()
        );
    }
    if install {
        let exe = std::env::current_exe().context("cannot tell where muster-agent is")?;
        let unit = format!(
            "[Unit]\nDescription=Muster worker agent\nAfter=network-online.target\nWants=network-online.target\n\n\
             [Service]\nExecStart={} --home {} run\nRestart=always\nRestartSec=2\n\n[Install]\nWantedBy=multi-user.target\n",
            exe.display(),
            home.dir.display()
        );
        std::fs::write(UNIT_PATH, unit)
            .with_context(|| format!("cannot write {UNIT_PATH} (run as root)"))?;
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "muster-agent"])?;
    }
    if stop || uninstall {
        systemctl(&["stop", "muster-agent"])?;
    }
    if uninstall {
        systemctl(&["disable", "muster-agent"])?;
        std::fs::remove_file(UNIT_PATH).with_context(|| format!("cannot remove {UNIT_PATH}"))?;
        systemctl(&["daemon-reload"])?;
    }
    if restart {
        systemctl(&["restart", "muster-agent"])?;
    } else if start {
        systemctl(&["start", "muster-agent"])?;
    }
    Ok(())
}
