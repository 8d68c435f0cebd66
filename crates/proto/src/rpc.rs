//! The agent RPC: JSON over HTTP/2 on the pinned TLS connection. Whoever dialled, the agent is the
//! HTTP/2 server and the Muster server the client, so polling and listening share everything after
//! the handshake.
//!
//! Scripts are restart-safe (Tentacle's design): `start` is idempotent for a ticket, `status` returns
//! the lines after a sequence number and waits (long-polls) until there are some or the script ends,
//! `cancel` stops the script, `complete` frees the ticket (stopping its script if it still runs),
//! `list` names the tickets the agent holds for the calling server, `artifact` streams a file the
//! ticket's script left in its working directory (kept until `complete`). The agent keeps every line until
//! `complete`, so a dropped connection or a restarted server loses and duplicates nothing.
//!
//! No script outlives its task: the agent remembers every ticket it received (in its home) until it
//! is completed, so after the agent's own restart a ticket it received is `Lost`, not `Unknown`, and
//! the server never starts it twice; a server that reconnects cancels and completes the tickets it no
//! longer drives; and an agent that hears nothing about a running ticket for the server's wait
//! (`ServerWaitSeconds`) plus [`ABANDON_MARGIN`] stops the script itself (outcome `Abandoned`).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What a polling agent writes first on its TLS connection: `MUSTER-SUBSCRIBER 2 poll://…/`. Version
/// 2 agents read the server's one-line answer ([`SUBSCRIBER_ACCEPTED`] or [`SUBSCRIBER_REFUSED`]);
/// a version 1 agent (older) is answered nothing, as before.
pub const SUBSCRIBER_PREFACE: &str = "MUSTER-SUBSCRIBER 2";
/// The preface of an agent from before the server answered.
pub const SUBSCRIBER_PREFACE_V1: &str = "MUSTER-SUBSCRIBER 1";

/// The server's answer to a polling agent's preface, one line: this, and the link is the agent's...
pub const SUBSCRIBER_ACCEPTED: &str = "MUSTER-ACCEPTED";
/// ...or this, a space and the reason it was refused (for the agent to print), and the server
/// closes the connection.
pub const SUBSCRIBER_REFUSED: &str = "MUSTER-REFUSED";

/// What a server node writes first on its TLS connection to another node's comms port, with the
/// nodes' shared certificate as its client certificate: it then speaks HTTP/2 to reach, through
/// that node, the agents whose links it holds (`/relay/{THUMBPRINT}/…`). Answered
/// [`SUBSCRIBER_ACCEPTED`].
pub const RELAY_PREFACE: &str = "MUSTER-RELAY 1";
/// The prefix of a relayed call's path; then the agent's thumbprint and the call's own path.
pub const RELAY_PATH: &str = "/relay/";
/// Set on a relay's own error answer (the node holds no link to that agent), as against an answer
/// of the agent itself.
pub const RELAY_UNREACHABLE_HEADER: &str = "x-muster-relay-unreachable";

/// The longest a polling agent that the server refused waits between dials: it needs its operator
/// (a worker registered again), not a quick retry.
pub const MAX_REFUSED_DELAY: Duration = Duration::from_secs(60);

/// HTTP/2 keep-alive on every link, both sides: a ping after this long without news from the peer...
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(4);
/// ...and the link is closed when it is not answered in this long. So a dropped link is noticed
/// within 9 seconds, and a busy link (data flowing) sends no pings.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a polling agent waits between dials, so that it is back within 5 seconds of its
/// server (or the network to it).
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(4);

/// How long a polling agent waits before dialling again after `failures` failed or short-lived
/// connections in a row: capped exponential backoff with jitter (between half the step and the
/// whole), so that thousands of agents that lost a restarting server do not all dial it in the same
/// instant.
pub fn reconnect_delay(failures: u32) -> Duration {
    let base = Duration::from_millis(100u64.saturating_mul(1 << failures.clamp(1, 9)))
        .min(MAX_RECONNECT_DELAY);
    let jitter = rand::random_range(0..=base.as_millis() as u64 / 2);
    base / 2 + Duration::from_millis(jitter)
}

/// How long a polling agent waits before dialling again after the server refused it `refusals`
/// times in a row: 1 s doubling to [`MAX_REFUSED_DELAY`], with the same jitter.
pub fn refused_delay(refusals: u32) -> Duration {
    let base =
        Duration::from_secs(1u64 << refusals.clamp(1, 7).saturating_sub(1)).min(MAX_REFUSED_DELAY);
    let jitter = rand::random_range(0..=base.as_millis() as u64 / 4);
    base + Duration::from_millis(jitter)
}

/// A polling agent's dial: TCP to the server's comms port, the TLS handshake (`connector` pins the
/// server), then the subscriber preface and the server's answer. Each step has 10 seconds. A
/// refusal is an error of kind `PermissionDenied` whose text is the server's reason.
pub async fn dial_polling(
    connector: &tokio_rustls::TlsConnector,
    host: &str,
    port: u16,
    subscription: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use tokio::io::AsyncWriteExt;
    let timed_out =
        |what: &str| std::io::Error::new(std::io::ErrorKind::TimedOut, what.to_string());
    let step = Duration::from_secs(10);
    let tcp = tokio::time::timeout(step, tokio::net::TcpStream::connect((host, port)))
        .await
        .map_err(|_| timed_out("timed out"))??;
    tcp.set_nodelay(true)?;
    let mut stream = tokio::time::timeout(step, connector.connect(crate::tls::server_name(), tcp))
        .await
        .map_err(|_| timed_out("the TLS handshake timed out"))??;
    stream
        .write_all(format!("{SUBSCRIBER_PREFACE} {subscription}\n").as_bytes())
        .await?;
    stream.flush().await?;
    let answer = tokio::time::timeout(step, read_answer(&mut stream))
        .await
        .map_err(|_| timed_out("the server did not answer the subscription in time"))??;
    if answer == SUBSCRIBER_ACCEPTED {
        return Ok(stream);
    }
    match answer.strip_prefix(SUBSCRIBER_REFUSED) {
        Some(reason) => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            reason.trim().to_string(),
        )),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the server answered the subscription with '{}' (is it older than this agent?)",
                answer.chars().take(100).collect::<String>()
            ),
        )),
    }
}

/// One line of the server's answer, byte by byte so that nothing after it is read.
async fn read_answer(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut line = Vec::new();
    loop {
        let byte = stream.read_u8().await?;
        if byte == b'\n' || line.len() >= 1024 {
            return Ok(String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string());
        }
        line.push(byte);
    }
}

pub const PATH_START: &str = "/v1/scripts/start";
pub const PATH_STATUS: &str = "/v1/scripts/status";
pub const PATH_CANCEL: &str = "/v1/scripts/cancel";
pub const PATH_COMPLETE: &str = "/v1/scripts/complete";
pub const PATH_LIST: &str = "/v1/scripts/list";
pub const PATH_HEALTH: &str = "/v1/health";
/// Streams a file of a finished ticket's working directory ([`ArtifactRequest`]): the answer's body
/// is the file's bytes, in chunks (HTTP/2 flow control paces them: neither side holds the whole
/// file), and [`ARTIFACT_LENGTH_HEADER`] its size. A refusal is a 4xx with `{"Error": "…"}`: 404
/// no such ticket or file, 403 a path outside the working directory, 409 a script still running.
pub const PATH_ARTIFACT: &str = "/v1/scripts/artifact";

/// The header that gives an artifact's size in bytes before its body.
pub const ARTIFACT_LENGTH_HEADER: &str = "x-muster-length";

/// How much longer than the server's wait an agent lets a script run without word about its ticket:
/// the time a dead link takes to be noticed and a status call's long poll.
pub const ABANDON_MARGIN: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StartScript {
    /// Chosen by the server (the task id), so a repeated start finds the running script.
    pub ticket: String,
    /// `Bash`, `Python` or `PowerShell`.
    pub syntax: String,
    pub body: String,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// How long the server waits for a lost agent before it fails the task. The agent stops the
    /// script when it hears nothing about the ticket for this plus [`ABANDON_MARGIN`]; None: never.
    #[serde(default)]
    pub server_wait_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ticket {
    pub ticket: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StatusRequest {
    pub ticket: String,
    /// Lines with a sequence number above this one are wanted.
    pub after: u64,
    /// How long the agent may wait for news before answering.
    pub wait_ms: u64,
}

/// A file of a ticket's working directory: `path` relative to it, or absolute and inside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ArtifactRequest {
    pub ticket: String,
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScriptState {
    Running,
    Complete,
    /// The agent never received that ticket, or it was completed.
    Unknown,
    /// The agent received the ticket but restarted since: the script was stopped with the agent,
    /// and its outcome and unread lines are lost. It is never started again.
    Lost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Exited,
    Signaled,
    Canceled,
    TimedOut,
    /// The script could not start (the message is the last line).
    Failed,
    /// The agent stopped the script because it heard nothing about it from the server for longer
    /// than the server waits (see [`StartScript::server_wait_seconds`]).
    Abandoned,
}

/// The tickets an agent holds for the server that asks (`list`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TicketList {
    pub tickets: Vec<HeldTicket>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HeldTicket {
    pub ticket: String,
    pub state: ScriptState,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScriptLine {
    pub seq: u64,
    /// True for stderr.
    pub error: bool,
    pub text: String,
    /// When the agent read the line, in milliseconds since the Unix epoch: lines printed while the
    /// server was away keep their own time. None from agents before this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StatusReply {
    pub state: ScriptState,
    pub outcome: Option<Outcome>,
    pub exit_code: Option<i32>,
    pub lines: Vec<ScriptLine>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthReply {
    pub agent_version: String,
    pub operating_system: String,
    pub architecture: String,
    pub shell_name: String,
    pub running_scripts: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reconnect_delay_grows_and_stays_within_its_cap() {
        for failures in [0, 1, 2, 5, 9, 30, u32::MAX] {
            let delay = reconnect_delay(failures);
            assert!(delay <= MAX_RECONNECT_DELAY, "{failures}: {delay:?}");
        }
        assert!(reconnect_delay(1) <= Duration::from_millis(200));
        assert!(reconnect_delay(20) >= MAX_RECONNECT_DELAY / 2);
        assert!(refused_delay(1) >= Duration::from_secs(1));
        assert!(refused_delay(1) < Duration::from_secs(2));
        assert!(refused_delay(3) >= Duration::from_secs(4));
        for refusals in 0..100 {
            assert!(refused_delay(refusals) <= MAX_REFUSED_DELAY * 5 / 4);
        }
        assert!(refused_delay(100) >= MAX_REFUSED_DELAY);
    }
}
