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
    /// Where a polling agent dials: the server's REST address and its comms port.
    pub server: Option<String>,
    pub server_comms_port: Option<u16>,
    /// The server's REST address this agent last registered with (polling or listening), which
    /// `deregister-worker` uses when it is not given `--server`.
    pub registered_with: Option<String>,
    /// A polling agent's subscription id, `poll://…/`, made at its first registration.
    pub subscription_id: Option<String>,
    /// Where the agent's scripts get their working directories.
    pub work_dir: Option<PathBuf>,
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
