//! Live connections to agents. Polling agents dial the comms port; the server dials listening agents.
//! Either way the agent is the HTTP/2 server on the pinned TLS stream and the server the client, so a
//! task's work is pushed over a connection that is already open.
//!
//! Architecture invariant: a link is keyed by the agent's certificate thumbprint, so one physical agent
//! has one connection and one health record however many workers name it.
//!
//! Several nodes on one database: every node listens on its comms port, and a polling agent holds
//! one link to any one of them. The store records which node holds each link (`agent_links`); a
//! node that needs an agent linked elsewhere calls it through that node (the relay): one HTTP/2
//! connection per pair of nodes over TLS 1.3, both ends pinned to the nodes' shared certificate,
//! each call's path prefixed `/relay/{THUMBPRINT}`. The agent's protocol is unchanged, and so is
//! every caller: `link_for` answers a `Link` either way.

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

/// An open connection to one agent: this node's own link, or the link another node holds, called
/// through that node.
#[derive(Clone)]
pub struct Link {
    id: u64,
    sender: SendRequest<Full<Bytes>>,
    /// Cancelled to close the connection from this side (its worker was deleted).
    closer: tokio_util::sync::CancellationToken,
    /// The node whose link this is, when it is not this node's: calls go through it.
    via: Option<String>,
    /// Put before each call's path: "" on this node's own link, `/relay/{THUMBPRINT}` through
    /// another node.
    prefix: String,
}

impl Link {
    /// Sends one call; a relay's own "no such link" answer is an error of the connection, not
    /// the agent's refusal.
    async fn send(
        &self,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let mut sender = self.sender.clone();
        let closed = match &self.via {
            None => "the agent's connection is closed".to_string(),
            Some(node) => {
                format!("the connection to node {node}, which holds the agent's link, is closed")
            }
        };
        sender.ready().await.context(closed)?;
        let request = hyper::Request::post(format!("{}{path}", self.prefix))
            .header("content-type", "application/json")
            .body(Full::new(body))?;
        let response = sender
            .send_request(request)
            .await
            .context("the agent did not answer")?;
        if response
            .headers()
            .contains_key(rpc::RELAY_UNREACHABLE_HEADER)
        {
            let bytes = http_body_util::Limited::new(response.into_body(), 64 * 1024)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(anyhow!("{}", String::from_utf8_lossy(&bytes)));
        }
        Ok(response)
    }

    /// One RPC: a JSON request, a JSON answer.
    pub async fn call<Q: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &Q,
    ) -> anyhow::Result<R> {
        let response = self
            .send(path, Bytes::from(serde_json::to_vec(body)?))
            .await?;
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
        let response = self
            .send(path, Bytes::from(serde_json::to_vec(body)?))
            .await?;
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
    /// The agents whose link another node holds (by thumbprint): that node's name.
    remote: Mutex<HashMap<String, String>>,
    /// The open relay connections to other nodes, by node name.
    peers: Mutex<HashMap<String, Link>>,
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
            remote: Mutex::default(),
            peers: Mutex::default(),
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

    /// Whether `link` is still the agent's open link (a relayed one: whether its node still holds
    /// the agent's link).
    pub fn is_current(&self, thumbprint: &str, link: &Link) -> bool {
        match &link.via {
            None => self.link(thumbprint).is_some_and(|l| l.id == link.id),
            Some(node) => self.remote_node(thumbprint).as_deref() == Some(node.as_str()),
        }
    }

    /// Whether the agent can be called now: this node holds its link, or another node does.
    pub fn reachable(&self, thumbprint: &str) -> bool {
        self.link(thumbprint).is_some() || self.remote_node(thumbprint).is_some()
    }

    /// The other node that holds the agent's link, if one does.
    pub fn remote_node(&self, thumbprint: &str) -> Option<String> {
        self.remote
            .lock()
            .expect("comms lock")
            .get(&thumbprint.to_ascii_uppercase())
            .cloned()
    }

    /// Takes what the store says of one agent's link (None: no node holds it).
    fn set_remote(&self, thumbprint: &str, node: Option<String>) {
        let thumbprint = thumbprint.to_ascii_uppercase();
        let mut remote = self.remote.lock().expect("comms lock");
        let changed = match node {
            Some(node) => remote.insert(thumbprint, node.clone()) != Some(node),
            None => remote.remove(&thumbprint).is_some(),
        };
        drop(remote);
        if changed {
            self.changed.notify_waiters();
        }
    }

    /// Forgets the links of nodes that stopped (offline): their agents dial another node.
    pub fn forget_nodes(&self, gone: &std::collections::HashSet<String>) {
        let mut remote = self.remote.lock().expect("comms lock");
        let before = remote.len();
        remote.retain(|_, node| !gone.contains(node));
        let changed = remote.len() != before;
        drop(remote);
        self.peers
            .lock()
            .expect("comms lock")
            .retain(|node, _| !gone.contains(node));
        if changed {
            self.changed.notify_waiters();
        }
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
            via: None,
            prefix: String::new(),
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

    /// Forgets a closed link; whether it was the agent's current one.
    fn remove(&self, thumbprint: &str, id: u64) -> bool {
        let mut links = self.links.lock().expect("comms lock");
        let current = links
            .get(&thumbprint.to_ascii_uppercase())
            .is_some_and(|l| l.id == id);
        if current {
            links.remove(&thumbprint.to_ascii_uppercase());
            self.closed
                .lock()
                .expect("comms lock")
                .insert(thumbprint.to_ascii_uppercase());
        }
        drop(links);
        self.changed.notify_waiters();
        current
    }
}

/// The client side of HTTP/2 on a link's stream (an agent's, or another node's for the relay), with
/// the links' keep-alive, so a dead peer is noticed within `KEEP_ALIVE_INTERVAL + TIMEOUT`.
async fn http2_client(
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
) -> hyper::Result<(
    SendRequest<Full<Bytes>>,
    hyper::client::conn::http2::Connection<
        TokioIo<impl AsyncRead + AsyncWrite + Unpin + Send + 'static>,
        Full<Bytes>,
        TokioExecutor,
    >,
)> {
    hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(rpc::KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(rpc::KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(stream))
        .await
}

/// Opens the HTTP/2 client side on an agent's stream, keeps the link while it lives, and marks the
/// agent's workers Unavailable when it ends.
async fn attach(
    app: &App,
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    thumbprint: String,
    polling: bool,
) -> anyhow::Result<Link> {
    let (sender, connection) = http2_client(stream)
        .await
        .context("the HTTP/2 handshake with the agent failed")?;
    let thumbprint = thumbprint.to_ascii_uppercase();
    let link = app.comms.add(&thumbprint, sender);
    // A polling agent's link is where the other nodes reach it (a listening agent each node dials).
    let shared = polling && app.store.engine_name() == "postgres";
    if shared
        && let Err(error) = app
            .store
            .set_agent_link(
                &thumbprint,
                &app.config.node_name,
                &muster_core::time::now(),
            )
            .await
    {
        tracing::warn!(%error, "cannot record that this node holds an agent's link");
    }
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
        if app2.comms.remove(&closed, id)
            && shared
            && let Err(error) = app2
                .store
                .clear_agent_link(&closed, &app2.config.node_name)
                .await
        {
            tracing::warn!(%error, "cannot record that an agent's link closed");
        }
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
            || followed_elsewhere(&app, &held.ticket).await
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

/// Whether another node follows a ticket (or may again: the node that ran it stopped, and the next
/// dispatcher re-attaches to it): its task still runs, on a node that is not this one. Tickets are
/// task ids, or a run's `{task}/{step}/{worker}`.
async fn followed_elsewhere(app: &App, ticket: &str) -> bool {
    if app.store.engine_name() != "postgres" {
        return false;
    }
    let task_id = ticket.split('/').next().unwrap_or(ticket);
    match app.store.get_task(task_id).await {
        Ok(Some(task)) => {
            matches!(
                task.state,
                muster_core::TaskState::Executing | muster_core::TaskState::Cancelling
            ) && task.server_node.as_deref() != Some(app.config.node_name.as_str())
        }
        Ok(None) => false,
        // Unknown: left alone, and weighed again at the agent's next connection.
        Err(_) => true,
    }
}

/// The comms port: polling agents, other nodes relaying to them, and plain HTTPS probes (answered
/// 200 as Octopus's port does).
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
                Ok(Arrival::Agent(stream, thumbprint)) => {
                    attach(&app, stream, thumbprint, true).await.map(drop)
                }
                Ok(Arrival::Node(stream)) => {
                    serve_relay(app, stream).await;
                    Ok(())
                }
                Ok(Arrival::Probe) => Ok(()),
                Err(error) => Err(error),
            };
            if let Err(error) = result {
                tracing::warn!(%peer, "refused a connection on the comms port: {error:#}");
            }
        });
    }
}

type CommsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// Who a comms port connection turned out to be.
enum Arrival {
    /// A polling agent registered for the subscription it named, with its thumbprint.
    Agent(CommsStream, String),
    /// Another node of this database (it presented the nodes' shared certificate), to relay.
    Node(CommsStream),
    /// A plain HTTPS probe, answered already.
    Probe,
}

/// The unauthenticated part of a comms port connection: the TLS handshake and the first line.
async fn authenticate(
    app: &App,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
) -> anyhow::Result<Arrival> {
    let mut stream = acceptor.accept(tcp).await?;
    let line = read_line(&mut stream).await?;
    if line == rpc::RELAY_PREFACE {
        // Only a node that holds this node's own certificate (every node of a database shares
        // it) may call agents through it.
        let ours = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .is_some_and(|c| muster_proto::thumbprint_sha256(c) == app.certificate.thumbprint());
        if !ours {
            return Err(anyhow!(
                "a relay was asked by a client without this server's certificate"
            ));
        }
        stream
            .write_all(format!("{}\n", rpc::SUBSCRIBER_ACCEPTED).as_bytes())
            .await?;
        stream.flush().await?;
        return Ok(Arrival::Node(stream));
    }
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
        return Ok(Arrival::Probe);
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
    Ok(Arrival::Agent(
        stream,
        worker.thumbprint.clone().unwrap_or_default(),
    ))
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

/// The link to a worker: this node's open connection to it, or a listening agent dialled now, or
/// the polling agent's link on another node, through that node.
pub async fn link_for(app: &App, worker: &Worker) -> anyhow::Result<Link> {
    let thumbprint = worker
        .thumbprint
        .clone()
        .ok_or_else(|| anyhow!("worker {} has no thumbprint", worker.name))?;
    if let Some(link) = app.comms.link(&thumbprint) {
        return Ok(link);
    }
    if let Some(Endpoint::TentaclePassive(e)) = &worker.endpoint {
        return dial(app, &e.uri, &thumbprint).await;
    }
    match app.comms.remote_node(&thumbprint) {
        Some(node) => {
            let mut link = peer(app, &node).await.with_context(|| {
                format!(
                    "the polling agent of worker {} is connected to node {node}, which cannot be reached",
                    worker.name
                )
            })?;
            link.prefix = format!("{}{}", rpc::RELAY_PATH, thumbprint.to_ascii_uppercase());
            Ok(link)
        }
        None => Err(anyhow!(
            "the polling agent of worker {} is not connected",
            worker.name
        )),
    }
}

/// The relay connection to another node: the open one, or one dialled now at the comms address
/// it recorded. Both ends present and pin the nodes' shared certificate.
async fn peer(app: &App, node: &str) -> anyhow::Result<Link> {
    if let Some(link) = app.comms.peers.lock().expect("comms lock").get(node)
        && !link.sender.is_closed()
    {
        return Ok(link.clone());
    }
    let record = app
        .store
        .node(node)
        .await?
        .ok_or_else(|| anyhow!("there is no node {node}"))?;
    let address = record
        .comms_address
        .ok_or_else(|| anyhow!("node {node} has not said where its comms port listens"))?;
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&address))
        .await
        .context("connecting timed out")?
        .with_context(|| format!("cannot connect to node {node} at {address}"))?;
    tcp.set_nodelay(true)?;
    let pin = muster_proto::tls::pin_thumbprints(vec![app.certificate.thumbprint()]);
    let connector =
        tokio_rustls::TlsConnector::from(muster_proto::tls::client_config(&app.certificate, pin)?);
    let mut stream = tokio::time::timeout(
        Duration::from_secs(5),
        connector.connect(muster_proto::tls::server_name(), tcp),
    )
    .await
    .context("the TLS handshake timed out")?
    .with_context(|| {
        format!(
            "the TLS handshake with node {node} failed (do the nodes share one server certificate?)"
        )
    })?;
    stream
        .write_all(format!("{}\n", rpc::RELAY_PREFACE).as_bytes())
        .await?;
    stream.flush().await?;
    let answer = tokio::time::timeout(Duration::from_secs(5), read_line(&mut stream))
        .await
        .with_context(|| format!("node {node} did not answer the relay's preface"))??;
    if answer != rpc::SUBSCRIBER_ACCEPTED {
        return Err(anyhow!("node {node} refused to relay: {answer}"));
    }
    let (sender, connection) = http2_client(stream)
        .await
        .with_context(|| format!("the HTTP/2 handshake with node {node} failed"))?;
    let link = Link {
        id: app.comms.next_id.fetch_add(1, Ordering::SeqCst),
        sender,
        closer: tokio_util::sync::CancellationToken::new(),
        via: Some(node.to_string()),
        prefix: String::new(),
    };
    app.comms
        .peers
        .lock()
        .expect("comms lock")
        .insert(node.to_string(), link.clone());
    let (app2, node2, id) = (app.clone(), node.to_string(), link.id);
    tokio::spawn(async move {
        let _ = connection.await;
        let mut peers = app2.comms.peers.lock().expect("comms lock");
        if peers.get(&node2).is_some_and(|l| l.id == id) {
            peers.remove(&node2);
        }
    });
    Ok(link)
}

type RelayBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// Serves another node's relayed calls: each goes to the agent's link on this node, and its answer
/// streams back as the agent sends it.
async fn serve_relay(app: App, stream: CommsStream) {
    let service = hyper::service::service_fn(move |request| {
        let app = app.clone();
        async move { Ok::<_, std::convert::Infallible>(relay(&app, request).await) }
    });
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(rpc::KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(rpc::KEEP_ALIVE_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = served {
        tracing::debug!("a relay connection from another node ended: {error}");
    }
}

/// The most bytes of one relayed call (a script's body and its variables).
const RELAY_MAX_REQUEST: usize = 64 * 1024 * 1024;

async fn relay(
    app: &App,
    request: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<RelayBody> {
    let unreachable = |why: String| {
        hyper::Response::builder()
            .status(hyper::StatusCode::BAD_GATEWAY)
            .header(rpc::RELAY_UNREACHABLE_HEADER, "1")
            .body(
                Full::new(Bytes::from(why))
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .expect("a relay answer")
    };
    let path = request.uri().path().to_string();
    let Some((thumbprint, call)) = path
        .strip_prefix(rpc::RELAY_PATH)
        .and_then(|rest| rest.find('/').map(|at| rest.split_at(at)))
    else {
        return unreachable(format!("node cannot relay {path}"));
    };
    let node = &app.config.node_name;
    let Some(link) = app.comms.link(thumbprint) else {
        return unreachable(format!(
            "node {node} no longer holds the agent's link (it closed)"
        ));
    };
    let body = match http_body_util::Limited::new(request.into_body(), RELAY_MAX_REQUEST)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => return unreachable(format!("the relayed call broke off: {error}")),
    };
    match link.send(call, body).await {
        Ok(response) => response.map(|body| body.boxed()),
        Err(error) => unreachable(format!("node {node} cannot reach the agent: {error:#}")),
    }
}

/// What this node knows of the agents' links on the other nodes: read whole at start (after this
/// node forgot what a crash of its own left written) and after missed notes.
pub async fn load_links(app: &App) -> anyhow::Result<()> {
    if app.store.engine_name() != "postgres" {
        return Ok(());
    }
    let me = &app.config.node_name;
    let links = app.store.agent_links().await?;
    let mut remote = app.comms.remote.lock().expect("comms lock");
    remote.clear();
    for (thumbprint, node) in links {
        if node != *me {
            remote.insert(thumbprint.to_ascii_uppercase(), node);
        }
    }
    drop(remote);
    app.comms.changed.notify_waiters();
    Ok(())
}

/// An agent's link moved, or its worker was deleted, on some node: where it is now is read, and a
/// link this node holds that no worker names any more is closed.
pub async fn heard_of_agent(app: &App, thumbprint: &str) {
    match app.store.agent_link(thumbprint).await {
        Ok(node) => {
            let node = node.filter(|n| *n != app.config.node_name);
            app.comms.set_remote(thumbprint, node);
        }
        Err(error) => tracing::warn!(%error, "cannot read which node holds an agent's link"),
    }
    if app.comms.link(thumbprint).is_some()
        && matches!(app.store.find_by_ext::<Worker>(thumbprint).await, Ok(workers) if workers.is_empty())
    {
        app.comms.close(thumbprint);
    }
    app.signals.dispatch.notify_one();
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
    attach(app, stream, thumbprint.to_string(), false).await
}
