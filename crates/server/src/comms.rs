//! Live connections to agents. Polling agents dial the comms port; the server dials listening agents.
//! Either way the agent is the HTTP/2 server on the pinned TLS stream and the server the client, so a
//! task's work is pushed over a connection that is already open.
//!
//! Architecture invariant: a link is keyed by the agent's certificate thumbprint, so one physical agent
//! has one connection and one health record however many workers name it.

use crate::state::App;
use anyhow::{Context, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use muster_core::resources::{Endpoint, Worker};
use muster_proto::rpc;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// An open connection to one agent.
#[derive(Clone)]
pub struct Link {
    id: u64,
    sender: SendRequest<Full<Bytes>>,
    /// Cancelled to close the connection from this side (its worker was deleted).
    closer: tokio_util::sync::CancellationToken,
}

impl Link {
    /// One RPC: a JSON request, a JSON answer.
    pub async fn call<Q: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &Q,
    ) -> anyhow::Result<R> {
        let mut sender = self.sender.clone();
        sender
            .ready()
            .await
            .context("the agent's connection is closed")?;
        let request = hyper::Request::post(path)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?;
        let response = sender
            .send_request(request)
            .await
            .context("the agent did not answer")?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .context("the agent's answer broke off")?
            .to_bytes();
        if !status.is_success() {
            return Err(anyhow::Error::new(Refused(format!(
                "the agent refused {path}: {}",
                String::from_utf8_lossy(&bytes)
            ))));
        }
        serde_json::from_slice(&bytes).context("the agent's answer is not what Muster expects")
    }
}

impl Link {
    /// An RPC whose answer is a stream: a JSON request, then the answer's headers and its body, read
    /// as the caller wants it (HTTP/2 flow control holds the agent back meanwhile). An error answer
    /// is `Refused` with the agent's words.
    pub async fn open<Q: Serialize>(
        &self,
        path: &str,
        body: &Q,
    ) -> anyhow::Result<(hyper::HeaderMap, hyper::body::Incoming)> {
        let mut sender = self.sender.clone();
        sender
            .ready()
            .await
            .context("the agent's connection is closed")?;
        let request = hyper::Request::post(path)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?;
        let response = sender
            .send_request(request)
            .await
            .context("the agent did not answer")?;
        let status = response.status();
        let (parts, body) = response.into_parts();
        if !status.is_success() {
            let bytes = http_body_util::Limited::new(body, 64 * 1024)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let said: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let words = said["Error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(anyhow::Error::new(Refused(words)));
        }
        Ok((parts.headers, body))
    }
}

/// An agent answered a call with an error: it is there, and said no.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// A link opened or closed: told to the layers above (health, dispatch) over `Comms::events`.
#[derive(Clone)]
pub enum LinkEvent {
    Opened { thumbprint: String, link: Link },
    Closed { thumbprint: String },
}

pub struct Comms {
    /// Links opening and closing, for the health checks (which check an opened link at once and
    /// record a closed one).
    pub events: tokio::sync::broadcast::Sender<LinkEvent>,
    links: Mutex<HashMap<String, Link>>,
    next_id: AtomicU64,
    /// Signalled whenever a link opens or closes.
    pub changed: Notify,
    /// One lock per agent around writing its health, so that a stale "not connected" cannot land
    /// after the check of a link that has just opened.
    health_writes: Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
    /// Agents whose link this server saw close, and that have not connected since.
    closed: Mutex<std::collections::HashSet<String>>,
    /// The agents' tickets this server follows now (with how many followers): any other ticket an
    /// agent holds is an orphan.
    live: Mutex<HashMap<String, usize>>,
    /// Set once start-up has re-attached to every script it resumes: only then does `live` name
    /// them all (a re-attached script may dial its agent while others are still being recovered).
    recovered: std::sync::atomic::AtomicBool,
    recovered_now: Notify,
}

impl Default for Comms {
    fn default() -> Comms {
        Comms {
            events: tokio::sync::broadcast::channel(1024).0,
            links: Mutex::default(),
            next_id: AtomicU64::default(),
            changed: Notify::default(),
            health_writes: Mutex::default(),
            closed: Mutex::default(),
            live: Mutex::default(),
            recovered: std::sync::atomic::AtomicBool::default(),
            recovered_now: Notify::default(),
        }
    }
}

/// A ticket this server follows, while the value lives.
pub struct Hold {
    app: App,
    ticket: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut live = self.app.comms.live.lock().expect("comms lock");
        if let Some(count) = live.get_mut(&self.ticket) {
            *count -= 1;
            if *count == 0 {
                live.remove(&self.ticket);
            }
        }
    }
}

/// Marks a ticket as followed until the returned value is dropped.
pub fn hold(app: &App, ticket: &str) -> Hold {
    *app.comms
        .live
        .lock()
        .expect("comms lock")
        .entry(ticket.to_string())
        .or_default() += 1;
    Hold {
        app: app.clone(),
        ticket: ticket.to_string(),
    }
}

impl Comms {
    /// Start-up has taken a hold on every ticket it resumes.
    pub fn set_recovered(&self) {
        self.recovered.store(true, Ordering::SeqCst);
        self.recovered_now.notify_waiters();
    }

    async fn wait_recovered(&self) {
        loop {
            let notified = self.recovered_now.notified();
            if self.recovered.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    pub fn link(&self, thumbprint: &str) -> Option<Link> {
        self.links
            .lock()
            .expect("comms lock")
            .get(&thumbprint.to_ascii_uppercase())
            .cloned()
    }

    /// Whether this server saw the agent's link close (and it has not come back since).
    pub fn was_closed(&self, thumbprint: &str) -> bool {
        self.closed
            .lock()
            .expect("comms lock")
            .contains(&thumbprint.to_ascii_uppercase())
    }

    /// Whether `link` is still the agent's open link.
    pub fn is_current(&self, thumbprint: &str, link: &Link) -> bool {
        self.link(thumbprint).is_some_and(|l| l.id == link.id)
    }

    pub fn health_lock(&self, thumbprint: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        self.health_writes
            .lock()
            .expect("comms lock")
            .entry(thumbprint.to_ascii_uppercase())
            .or_default()
            .clone()
    }

    fn add(&self, thumbprint: &str, sender: SendRequest<Full<Bytes>>) -> Link {
        let link = Link {
            id: self.next_id.fetch_add(1, Ordering::SeqCst),
            sender,
            closer: tokio_util::sync::CancellationToken::new(),
        };
        self.links
            .lock()
            .expect("comms lock")
            .insert(thumbprint.to_ascii_uppercase(), link.clone());
        self.closed
            .lock()
            .expect("comms lock")
            .remove(&thumbprint.to_ascii_uppercase());
        self.changed.notify_waiters();
        link
    }

    /// Closes the agent's link, if it has one: its worker was deleted, and an agent no worker
    /// names must not stay connected (it dials again and is refused, with the reason).
    pub fn close(&self, thumbprint: &str) {
        if let Some(link) = self.link(thumbprint) {
            link.closer.cancel();
        }
    }

    /// Closes every agent's link: this node stops dispatching, and its agents dial the node that
    /// takes over.
    pub fn close_all(&self) {
        for link in self.links.lock().expect("comms lock").values() {
            link.closer.cancel();
        }
    }

    fn remove(&self, thumbprint: &str, id: u64) {
        let mut links = self.links.lock().expect("comms lock");
        if links
            .get(&thumbprint.to_ascii_uppercase())
            .is_some_and(|l| l.id == id)
        {
            links.remove(&thumbprint.to_ascii_uppercase());
            self.closed
                .lock()
                .expect("comms lock")
                .insert(thumbprint.to_ascii_uppercase());
        }
        drop(links);
        self.changed.notify_waiters();
    }
}

/// Opens the HTTP/2 client side on an agent's stream, keeps the link while it lives, and marks the
/// agent's workers Unavailable when it ends.
async fn attach(
    app: &App,
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    thumbprint: String,
) -> anyhow::Result<Link> {
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(rpc::KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(rpc::KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(stream))
        .await
        .context("the HTTP/2 handshake with the agent failed")?;
    let thumbprint = thumbprint.to_ascii_uppercase();
    let link = app.comms.add(&thumbprint, sender);
    let id = link.id;
    let app2 = app.clone();
    let closed = thumbprint.clone();
    let closer = link.closer.clone();
    tokio::spawn(async move {
        // Dropping the connection closes it.
        tokio::select! {
            _ = connection => {}
            () = closer.cancelled() => {}
        }
        app2.comms.remove(&closed, id);
        let _ = app2
            .comms
            .events
            .send(LinkEvent::Closed { thumbprint: closed });
        app2.signals.dispatch.notify_one();
    });
    let _ = app.comms.events.send(LinkEvent::Opened {
        thumbprint,
        link: link.clone(),
    });
    tokio::spawn(cancel_orphans(app.clone(), link.clone()));
    app.signals.dispatch.notify_one();
    Ok(link)
}

/// How many connections may be unauthenticated at once on the comms port (in their TLS handshake,
/// or yet to send a polling agent's preface or a probe's request). Agents that find it full are
/// closed at once and dial again after their backoff.
const MAX_HANDSHAKES: usize = 256;

/// Cancels and completes every ticket a (re)connected agent holds for this server that no task
/// follows any more: its task ended while the agent was out of reach (or the server restarted and
/// could not resume it), so its script must not run on, nor its lines stay on the agent.
async fn cancel_orphans(app: App, link: Link) {
    app.comms.wait_recovered().await;
    // An agent without `list` (an older one) holds no orphans this server can name.
    let Ok(list) = link
        .call::<_, rpc::TicketList>(rpc::PATH_LIST, &serde_json::json!({}))
        .await
    else {
        return;
    };
    for held in list.tickets {
        if app
            .comms
            .live
            .lock()
            .expect("comms lock")
            .contains_key(&held.ticket)
        {
            continue;
        }
        let ticket = rpc::Ticket {
            ticket: held.ticket.clone(),
        };
        if held.state == rpc::ScriptState::Running {
            let _ = link.call::<_, rpc::Ticket>(rpc::PATH_CANCEL, &ticket).await;
        }
        match link
            .call::<_, rpc::Ticket>(rpc::PATH_COMPLETE, &ticket)
            .await
        {
            Ok(_) => tracing::warn!(
                ticket = %held.ticket,
                state = ?held.state,
                "an agent held a ticket that no task follows any more; it was canceled and completed"
            ),
            Err(error) => {
                tracing::warn!(ticket = %held.ticket, "cannot complete an orphaned ticket: {error:#}")
            }
        }
    }
}

/// The comms port: polling agents, and plain HTTPS probes (answered 200 as Octopus's port does).
pub async fn listen(app: App, listener: TcpListener) {
    use muster_proto::net::{Listener, Trouble};
    let tls = match muster_proto::tls::server_config(
        &app.certificate,
        std::sync::Arc::new(|_: &[u8]| true),
        false,
    ) {
        Ok(tls) => tls,
        Err(error) => {
            tracing::error!(%error, "cannot set up TLS on the comms port");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut listener = Listener::new(listener, MAX_HANDSHAKES);
    loop {
        let (tcp, peer, permit) = listener
            .accept(|trouble| match trouble {
                Trouble::AcceptFailed { error, pause } => tracing::error!(
                    %error,
                    "the comms port cannot accept a connection; trying again in {} ms",
                    pause.as_millis()
                ),
                Trouble::Full { limit } => tracing::warn!(
                    "{limit} connections to the comms port are unauthenticated; closing new ones until one ends"
                ),
            })
            .await;
        let (app, acceptor) = (app.clone(), acceptor.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let authenticated = tokio::time::timeout(
                muster_proto::net::HANDSHAKE_TIMEOUT,
                authenticate(&app, acceptor, tcp),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow!("no TLS handshake and subscription in time")));
            drop(permit);
            let result = match authenticated {
                Ok(Some((stream, thumbprint))) => attach(&app, stream, thumbprint).await.map(drop),
                Ok(None) => Ok(()),
                Err(error) => Err(error),
            };
            if let Err(error) = result {
                tracing::warn!(%peer, "refused a connection on the comms port: {error:#}");
            }
        });
    }
}

/// The unauthenticated part of a comms port connection: the TLS handshake and the first line. A
/// polling agent registered for the subscription it names is returned with its thumbprint; a probe
/// is answered 200 and gives None.
async fn authenticate(
    app: &App,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
) -> anyhow::Result<Option<(tokio_rustls::server::TlsStream<TcpStream>, String)>> {
    let mut stream = acceptor.accept(tcp).await?;
    let line = read_line(&mut stream).await?;
    // A version 2 agent is told whether it was accepted (and why not); a version 1 agent is not.
    let (subscription, answers) = match (
        line.strip_prefix(rpc::SUBSCRIBER_PREFACE),
        line.strip_prefix(rpc::SUBSCRIBER_PREFACE_V1),
    ) {
        (Some(rest), _) => (Some(rest), true),
        (None, rest) => (rest, false),
    };
    let Some(subscription) = subscription.map(|s| s.trim().to_ascii_lowercase()) else {
        let page = "<html><body><p>Muster communications port</p></body></html>";
        let answer = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{page}",
            page.len()
        );
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        return Ok(None);
    };
    let certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or_else(|| anyhow!("a polling agent for {subscription} sent no client certificate"))?;
    // By the certificate's thumbprint, an indexed lookup: thousands of agents reconnecting after a
    // restart must not each read every worker.
    let presented = muster_proto::thumbprint_sha256(&certificate);
    let workers: Vec<Worker> = app.store.find_by_ext(&presented).await?;
    let registered = workers.iter().find(|w| match &w.endpoint {
        Some(Endpoint::TentacleActive(e)) => {
            e.uri == subscription && muster_proto::matches_thumbprint(&certificate, &e.thumbprint)
        }
        Some(Endpoint::KubernetesTentacle(e)) => {
            let c = &e.tentacle_endpoint_configuration;
            c.uri == subscription && muster_proto::matches_thumbprint(&certificate, &c.thumbprint)
        }
        _ => false,
    });
    let Some(worker) = registered else {
        // Tell the agent why, so that its operator need not read this server's log.
        let reason = if workers.is_empty() {
            format!(
                "this worker was deleted from the server, or never registered (its certificate's thumbprint {presented} is no longer registered); register it again with `muster-agent register-worker`"
            )
        } else {
            format!(
                "this agent's certificate is registered on the server, but not for subscription {subscription}; register it again with `muster-agent register-worker`"
            )
        };
        if answers {
            let answer = format!("{} {reason}\n", rpc::SUBSCRIBER_REFUSED);
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
        return Err(anyhow!(
            "certificate {presented} is not registered for subscription {subscription}"
        ));
    };
    if answers {
        stream
            .write_all(format!("{}\n", rpc::SUBSCRIBER_ACCEPTED).as_bytes())
            .await?;
        stream.flush().await?;
    }
    Ok(Some((
        stream,
        worker.thumbprint.clone().unwrap_or_default(),
    )))
}

async fn read_line(stream: &mut (impl AsyncRead + Unpin)) -> anyhow::Result<String> {
    let mut line = Vec::new();
    loop {
        let byte = stream.read_u8().await?;
        if byte == b'\n' || line.len() >= 512 {
            return Ok(String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string());
        }
        line.push(byte);
    }
}

/// Reads the thumbprint of the certificate a listening agent presents at host:port.
pub async fn discover(host: &str, port: u16) -> anyhow::Result<String> {
    let seen: std::sync::Arc<Mutex<Option<Vec<u8>>>> = Default::default();
    let slot = seen.clone();
    let pin: muster_proto::tls::Pin = std::sync::Arc::new(move |der: &[u8]| {
        *slot.lock().expect("discover lock") = Some(der.to_vec());
        true
    });
    let connector = tokio_rustls::TlsConnector::from(muster_proto::tls::probe_config(pin)?);
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect((host, port)))
        .await
        .context("connecting timed out")?
        .with_context(|| format!("cannot connect to {host}:{port}"))?;
    // The agent refuses a client without a trusted certificate, but only after showing its own.
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        connector.connect(muster_proto::tls::server_name(), tcp),
    )
    .await;
    let der = seen.lock().expect("discover lock").take();
    der.map(|der| muster_proto::thumbprint_sha256(&der))
        .ok_or_else(|| anyhow!("{host}:{port} did not present a TLS certificate"))
}

/// The link to a worker: the polling agent's open connection, or a listening agent dialled now.
pub async fn link_for(app: &App, worker: &Worker) -> anyhow::Result<Link> {
    let thumbprint = worker
        .thumbprint
        .clone()
        .ok_or_else(|| anyhow!("worker {} has no thumbprint", worker.name))?;
    if let Some(link) = app.comms.link(&thumbprint) {
        return Ok(link);
    }
    match &worker.endpoint {
        Some(Endpoint::TentaclePassive(e)) => dial(app, &e.uri, &thumbprint).await,
        _ => Err(anyhow!(
            "the polling agent of worker {} is not connected",
            worker.name
        )),
    }
}

async fn dial(app: &App, uri: &str, thumbprint: &str) -> anyhow::Result<Link> {
    let authority = uri
        .trim_start_matches("https://")
        .trim_start_matches("HTTPS://")
        .trim_end_matches('/');
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
            (host, port.parse::<u16>()?)
        }
        _ => (authority, 10933),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect((host, port)))
        .await
        .context("connecting timed out")?
        .with_context(|| format!("cannot connect to {host}:{port}"))?;
    tcp.set_nodelay(true)?;
    let pin = muster_proto::tls::pin_thumbprints(vec![thumbprint.to_string()]);
    let connector =
        tokio_rustls::TlsConnector::from(muster_proto::tls::client_config(&app.certificate, pin)?);
    let stream = tokio::time::timeout(Duration::from_secs(10), connector.connect(muster_proto::tls::server_name(), tcp))
        .await
        .context("the TLS handshake timed out")?
        .context("the TLS handshake failed (is the agent's thumbprint right, and does it trust this server?)")?;
    attach(app, stream, thumbprint.to_string()).await
}
