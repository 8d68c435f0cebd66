//! A swarm of polling agents in one process: N connections that speak the real link (TLS 1.3 with
//! each agent's own pinned certificate, the subscriber preface, HTTP/2 with the agent as the server)
//! and answer health checks as an idle agent does. It stands in for N agent processes, which this
//! machine could not hold, so the server can be measured with thousands of live links.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use muster_proto::Identity;
use muster_proto::rpc::{self, HealthReply};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;

/// One simulated agent: its certificate and its polling subscription.
pub struct Member {
    pub identity: Identity,
    pub subscription: String,
}

/// Counts shared by every connection of the swarm.
#[derive(Default)]
pub struct Counts {
    /// Connections open now (TLS done, preface sent).
    pub open: AtomicUsize,
    /// Open connections on which the server has made its health check: the server has accepted
    /// the agent and recorded it Healthy.
    pub checked: AtomicUsize,
    /// Health checks answered in all.
    pub health_calls: AtomicUsize,
}

pub struct Swarm {
    pub counts: Arc<Counts>,
    runtime: tokio::runtime::Runtime,
}

impl Swarm {
    /// Starts every member dialling 127.0.0.1:`port`, pinning the server's `thumbprint`.
    pub fn start(members: Vec<Member>, port: u16, thumbprint: &str) -> anyhow::Result<Swarm> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let counts = Arc::new(Counts::default());
        for member in members {
            let pin = muster_proto::tls::pin_thumbprints(vec![thumbprint.to_string()]);
            let tls = muster_proto::tls::client_config(&member.identity, pin)?;
            let connector = tokio_rustls::TlsConnector::from(tls);
            let counts = counts.clone();
            runtime.spawn(poll(connector, port, member.subscription, counts));
        }
        Ok(Swarm { counts, runtime })
    }

    pub fn checked(&self) -> usize {
        self.counts.checked.load(Ordering::SeqCst)
    }

    pub fn open(&self) -> usize {
        self.counts.open.load(Ordering::SeqCst)
    }

    pub fn stop(self) {
        self.runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// The agent's dial loop, with the agent's own backoff.
async fn poll(
    connector: tokio_rustls::TlsConnector,
    port: u16,
    subscription: String,
    counts: Arc<Counts>,
) {
    let mut failures: u32 = 0;
    loop {
        let started = tokio::time::Instant::now();
        if let Ok(stream) = rpc::dial_polling(&connector, "127.0.0.1", port, &subscription).await {
            counts.open.fetch_add(1, Ordering::SeqCst);
            serve(stream, counts.clone()).await;
            counts.open.fetch_sub(1, Ordering::SeqCst);
        }
        if started.elapsed() > Duration::from_secs(30) {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        tokio::time::sleep(rpc::reconnect_delay(failures)).await;
    }
}

/// Serves the agent's side of the RPC on one connection: health answers; anything else is refused,
/// since a swarm member runs no scripts.
async fn serve(stream: tokio_rustls::client::TlsStream<TcpStream>, counts: Arc<Counts>) {
    let checked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let service = {
        let (counts, checked) = (counts.clone(), checked.clone());
        hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let (counts, checked) = (counts.clone(), checked.clone());
            async move {
                let response = if request.uri().path() == rpc::PATH_HEALTH {
                    counts.health_calls.fetch_add(1, Ordering::SeqCst);
                    if !checked.swap(true, Ordering::SeqCst) {
                        counts.checked.fetch_add(1, Ordering::SeqCst);
                    }
                    let reply = HealthReply {
                        agent_version: "swarm".into(),
                        operating_system: std::env::consts::OS.into(),
                        architecture: std::env::consts::ARCH.into(),
                        shell_name: "bash".into(),
                        running_scripts: 0,
                    };
                    Response::new(Full::new(Bytes::from(
                        serde_json::to_vec(&reply).unwrap_or_default(),
                    )))
                } else {
                    let mut refused = Response::new(Full::new(Bytes::from_static(
                        br#"{"Error":"a swarm member runs no scripts"}"#,
                    )));
                    *refused.status_mut() = StatusCode::NOT_FOUND;
                    refused
                };
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    // The agent's own HTTP/2 settings, keep-alive included.
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(rpc::KEEP_ALIVE_INTERVAL))
        .keep_alive_timeout(rpc::KEEP_ALIVE_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if checked.load(Ordering::SeqCst) {
        counts.checked.fetch_sub(1, Ordering::SeqCst);
    }
}
