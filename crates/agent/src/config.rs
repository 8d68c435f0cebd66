//! The agent's home directory: its certificate (`cert.pem`, `key.pem`) and `agent.json`, which holds
//! how it talks to its server and which server thumbprints it trusts.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const DEFAULT_LISTEN_PORT: u16 = 10933;
pub const DEFAULT_SERVER_COMMS_PORT: u16 = 10943;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentConfig {
    /// The port a listening agent serves; None for a polling agent (`--no-listen`).
    pub listen_port: Option<u16>,
    /// Server certificate thumbprints this agent accepts.
    pub trusted_thumbprints: Vec<String>,
    /// Where a polling agent dials: the server's REST address and its comms port, unless
    /// `server_comms_addresses` lists addresses of its own.
    pub server: Option<String>,
    pub server_comms_port: Option<u16>,
    /// The comms addresses (`host:port`, `[v6]:port`) of the server's nodes, which a polling agent
    /// dials in turn until one answers. Empty: the REST address's host and `server_comms_port`.
    pub server_comms_addresses: Vec<String>,
    /// The server's REST address this agent last registered with (polling or listening), which
    /// `deregister-worker` uses when it is not given `--server`.
    pub registered_with: Option<String>,
    /// A polling agent's subscription id, `poll://…/`, made at its first registration.
    pub subscription_id: Option<String>,
    /// Where the agent's scripts get their working directories.
    pub work_dir: Option<PathBuf>,
}

impl AgentConfig {
    /// The addresses a polling agent dials, in order: the configured list, or the REST address's
    /// host with the comms port. An error when the configuration names none, or holds a bad one.
    pub fn polling_addresses(&self) -> anyhow::Result<Vec<CommsAddress>> {
        if !self.server_comms_addresses.is_empty() {
            return self
                .server_comms_addresses
                .iter()
                .map(|a| {
                    a.parse().map_err(|e: String| {
                        anyhow::anyhow!("agent.json's ServerCommsAddresses: {e}")
                    })
                })
                .collect();
        }
        let Some(server) = &self.server else {
            anyhow::bail!("the configuration names no server to dial");
        };
        Ok(vec![CommsAddress {
            host: server_host(server)?,
            port: self.server_comms_port.unwrap_or(DEFAULT_SERVER_COMMS_PORT),
        }])
    }
}

/// The host part of the server's REST address, which the comms port shares by default.
fn server_host(server: &str) -> anyhow::Result<String> {
    let rest = server.split("://").nth(1).unwrap_or(server);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    if host.is_empty() {
        anyhow::bail!("cannot tell the server's host from '{server}'");
    }
    Ok(host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string())
}

/// One comms address of a server node: a host name or IP address, and a port. It reads and prints
/// as `host:port`, an IPv6 address in brackets (`[::1]:10943`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommsAddress {
    /// Without brackets.
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for CommsAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for CommsAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<CommsAddress, String> {
        let text = text.trim();
        let example = "such as muster1.example:10943 or [::1]:10943";
        if text.is_empty() {
            return Err(format!("an empty address: give HOST:PORT, {example}"));
        }
        if text.contains("://") {
            return Err(format!(
                "'{text}' is a URL: give HOST:PORT without a scheme, {example}"
            ));
        }
        if text.contains(['/', '?', '#', '@']) || text.contains(char::is_whitespace) {
            return Err(format!("'{text}' is not HOST:PORT, {example}"));
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let Some((host, after)) = rest.split_once(']') else {
                return Err(format!("'{text}' opens '[' but never closes it"));
            };
            let Some(port) = after.strip_prefix(':') else {
                return Err(format!("'{text}' has no port: give HOST:PORT, {example}"));
            };
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!(
                    "'{text}': only an IPv6 address goes in brackets, and '{host}' is not one"
                ));
            }
            (host, port)
        } else {
            let Some((host, port)) = text.rsplit_once(':') else {
                return Err(format!("'{text}' has no port: give HOST:PORT, {example}"));
            };
            if host.contains(':') {
                return Err(format!(
                    "'{text}': an IPv6 address goes in brackets, as in [::1]:10943"
                ));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(format!("'{text}' has no host: give HOST:PORT, {example}"));
        }
        let port = match port.parse::<u16>() {
            Ok(0) => return Err(format!("'{text}': the port must be 1 to 65535, not 0")),
            Ok(port) => port,
            Err(_) if port.is_empty() => {
                return Err(format!("'{text}' has no port: give HOST:PORT, {example}"));
            }
            Err(_) => {
                return Err(format!(
                    "'{text}': the port must be a number from 1 to 65535, not '{port}'"
                ));
            }
        };
        Ok(CommsAddress {
            host: host.to_string(),
            port,
        })
    }
}

/// The home directory: `--home`, `MUSTER_AGENT_HOME`, or a per-user default.
pub fn default_home() -> PathBuf {
    if running_as_root() {
        PathBuf::from("/var/lib/muster-agent")
    } else {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".muster-agent")
    }
}

fn running_as_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || std::fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false)
}

/// A dynamic worker's identity, handed to its instance by the server's provider as environment
/// variables: the certificate and key the server issued for this worker, the server's thumbprint,
/// the worker's polling subscription and the comms addresses to dial. No API key: the instance can
/// be this one worker and nothing else.
pub struct Instance {
    identity: muster_proto::Identity,
    server_thumbprint: String,
    subscription: String,
    addresses: Vec<String>,
}

use muster_proto::instance::{
    CERTIFICATE as INSTANCE_CERTIFICATE, COMMS_ADDRESSES as INSTANCE_COMMS_ADDRESSES,
    KEY as INSTANCE_KEY, SERVER_THUMBPRINT as INSTANCE_SERVER_THUMBPRINT,
    SUBSCRIPTION as INSTANCE_SUBSCRIPTION,
};

impl Instance {
    /// The instance's identity from the environment: None when `MUSTER_AGENT_CERTIFICATE` is not
    /// set (an agent registered by hand); an error naming what is missing or wrong otherwise.
    pub fn from_env() -> anyhow::Result<Option<Instance>> {
        let Some(certificate) = std::env::var(INSTANCE_CERTIFICATE)
            .ok()
            .filter(|v| !v.is_empty())
        else {
            return Ok(None);
        };
        let var = |name: &str| -> anyhow::Result<String> {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    anyhow::anyhow!("{INSTANCE_CERTIFICATE} is set, so this is a dynamic worker, but {name} is missing")
                })
        };
        let key = var(INSTANCE_KEY)?;
        let identity = muster_proto::Identity::from_pem(&certificate, &key, INSTANCE_CERTIFICATE)?;
        let server_thumbprint = var(INSTANCE_SERVER_THUMBPRINT)?.to_ascii_uppercase();
        if server_thumbprint.len() != 64
            || !server_thumbprint.bytes().all(|b| b.is_ascii_hexdigit())
        {
            anyhow::bail!(
                "{INSTANCE_SERVER_THUMBPRINT} must be a SHA-256 thumbprint (64 hex characters)"
            );
        }
        let subscription = var(INSTANCE_SUBSCRIPTION)?.to_ascii_lowercase();
        if !subscription.starts_with("poll://") {
            anyhow::bail!(
                "{INSTANCE_SUBSCRIPTION} must be a poll://…/ subscription id, got '{subscription}'"
            );
        }
        let addresses: Vec<String> = var(INSTANCE_COMMS_ADDRESSES)?
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        for address in &addresses {
            address
                .parse::<CommsAddress>()
                .map_err(|e| anyhow::anyhow!("{INSTANCE_COMMS_ADDRESSES}: {e}"))?;
        }
        Ok(Some(Instance {
            identity,
            server_thumbprint,
            subscription,
            addresses,
        }))
    }

    /// Makes `home` this worker's: its certificate, and a polling configuration that trusts the
    /// server and dials its addresses.
    pub fn install(&self, home: &Home) -> anyhow::Result<()> {
        if home.has_certificate() {
            let existing = home.identity()?;
            if existing.thumbprint() != self.identity.thumbprint() {
                anyhow::bail!(
                    "{} holds another agent's certificate: a dynamic worker's home must be its own",
                    home.dir.display()
                );
            }
        }
        std::fs::create_dir_all(&home.dir)
            .with_context(|| format!("cannot create {}", home.dir.display()))?;
        restrict(&home.dir);
        self.identity.save_to(&home.dir)?;
        let mut config = home.load()?;
        config.listen_port = None;
        config.trusted_thumbprints = vec![self.server_thumbprint.clone()];
        config.subscription_id = Some(self.subscription.clone());
        config.server_comms_addresses = self.addresses.clone();
        home.save(&config)
    }
}

pub struct Home {
    pub dir: PathBuf,
}

impl Home {
    pub fn new(dir: PathBuf) -> Home {
        Home { dir }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("agent.json")
    }

    pub fn has_certificate(&self) -> bool {
        self.dir.join("cert.pem").exists() && self.dir.join("key.pem").exists()
    }

    /// The agent's identity, created on first use.
    pub fn identity(&self) -> anyhow::Result<muster_proto::Identity> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        restrict(&self.dir);
        Ok(muster_proto::Identity::load_or_create(
            &self.dir,
            "Muster Agent",
        )?)
    }

    pub fn load(&self) -> anyhow::Result<AgentConfig> {
        match std::fs::read_to_string(self.config_path()) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} does not read", self.config_path().display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentConfig {
                listen_port: Some(DEFAULT_LISTEN_PORT),
                ..Default::default()
            }),
            Err(e) => {
                Err(e).with_context(|| format!("cannot read {}", self.config_path().display()))
            }
        }
    }

    /// Writes the configuration atomically (a crash never leaves half a file). An agent running on
    /// this home read its configuration when it started: the change is written, and the user told
    /// to restart it.
    pub fn save(&self, config: &AgentConfig) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        restrict(&self.dir);
        let text = serde_json::to_string_pretty(config)?;
        if std::fs::read_to_string(self.config_path()).ok().as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        let temp = self.dir.join("agent.json.tmp");
        std::fs::write(&temp, text).with_context(|| format!("cannot write {}", temp.display()))?;
        std::fs::rename(&temp, self.config_path())
            .with_context(|| format!("cannot write {}", self.config_path().display()))?;
        if let Some(pid) = self.running_agent() {
            eprintln!(
                "warning: muster-agent (process {pid}) is running on {} and read its configuration when it started: restart it for this change to take effect",
                self.dir.display()
            );
        }
        Ok(())
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("agent.lock")
    }

    fn open_lock(&self) -> anyhow::Result<std::fs::File> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        restrict(&self.dir);
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.lock_path())
            .with_context(|| format!("cannot open {}", self.lock_path().display()))
    }

    /// Locks the home for `run`'s whole life (the lock goes with the returned file, and with the
    /// process): two agents on one home would take each other's link and tickets. The lock file
    /// holds the process id, for the message a second agent gives.
    pub fn lock(&self) -> anyhow::Result<std::fs::File> {
        use std::io::{Read, Seek, Write};
        let mut file = self.open_lock()?;
        // A command that only looks (`running_agent`) holds the lock for an instant: try a few
        // times before calling the home taken.
        let mut tries = 0;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if tries < 10 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    let mut pid = String::new();
                    let _ = file.read_to_string(&mut pid);
                    anyhow::bail!(
                        "the agent home {} is in use by another muster-agent (process {}); stop it, or give this one another --home",
                        self.dir.display(),
                        pid.trim()
                    )
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e)
                        .with_context(|| format!("cannot lock {}", self.lock_path().display()));
                }
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        Ok(file)
    }

    /// The process id of an agent running on this home, if one is.
    pub fn running_agent(&self) -> Option<String> {
        use std::io::Read;
        let mut file = std::fs::File::open(self.lock_path()).ok()?;
        match file.try_lock_shared() {
            Ok(()) | Err(std::fs::TryLockError::Error(_)) => None,
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                Some(pid.trim().to_string())
            }
        }
    }
}

/// The home holds a private key: only its owner may enter it.
fn restrict(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
}

/// A new polling subscription id: `poll://` and 20 random lower-case letters and digits.
pub fn new_subscription_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let id: String = (0..20)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("poll://{id}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<String, String> {
        text.parse::<CommsAddress>().map(|a| a.to_string())
    }

    #[test]
    fn comms_addresses_read_and_print_as_host_and_port() {
        assert_eq!(
            parse("muster1.example:10943").unwrap(),
            "muster1.example:10943"
        );
        assert_eq!(parse(" 127.0.0.1:1 ").unwrap(), "127.0.0.1:1");
        assert_eq!(parse("[::1]:10943").unwrap(), "[::1]:10943");
        let v6 = "[::1]:10943".parse::<CommsAddress>().unwrap();
        assert_eq!(v6.host, "::1");
        for (bad, says) in [
            ("muster1.example", "has no port"),
            ("muster1.example:", "has no port"),
            ("muster1.example:0", "not 0"),
            ("muster1.example:70000", "1 to 65535"),
            (":10943", "has no host"),
            ("[]:10943", "not one"),
            ("", "empty"),
            ("https://muster1.example:10943", "is a URL"),
            ("::1:10943", "in brackets"),
            ("[::1]", "has no port"),
            ("muster1.example:10943/x", "not HOST:PORT"),
        ] {
            let error = parse(bad).expect_err(bad);
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn an_old_configuration_dials_the_rest_host_and_comms_port() {
        let config: AgentConfig =
            serde_json::from_str(r#"{"Server": "http://[::1]:8080", "ServerCommsPort": 10950}"#)
                .unwrap();
        let addresses = config.polling_addresses().unwrap();
        assert_eq!(addresses.len(), 1);
        assert_eq!(addresses[0].to_string(), "[::1]:10950");
        let config = AgentConfig {
            server: Some("http://muster.example:8080".into()),
            server_comms_addresses: vec!["a.example:1".into(), "b.example:2".into()],
            ..Default::default()
        };
        let addresses: Vec<String> = config
            .polling_addresses()
            .unwrap()
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(addresses, ["a.example:1", "b.example:2"]);
    }
}
