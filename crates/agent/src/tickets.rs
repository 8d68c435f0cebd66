//! The tickets this agent received and has not yet seen completed, kept in its home
//! (`tickets.json`, 0600) so that they outlive the agent's own restart. A restarted agent holds none
//! of their scripts (they died with it), so each remembered ticket is *lost*: it is reported as such
//! and never started again, while a ticket it never received can still be started, once.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a lost ticket that no server completes is remembered.
const KEEP_LOST: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Receipt {
    /// The thumbprint of the server that sent the ticket.
    server: String,
    ticket: String,
    /// Seconds since the Unix epoch.
    received: u64,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct File {
    received: Vec<Receipt>,
}

pub struct Tickets {
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    received: Vec<Receipt>,
    /// (server, ticket) received before this process started.
    lost: HashSet<(String, String)>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl Tickets {
    /// Loads the tickets an earlier run of the agent received: all of them are lost now.
    pub fn load(home: &Path) -> anyhow::Result<Tickets> {
        let path = home.join("tickets.json");
        let file: File = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                eprintln!(
                    "muster-agent: {} does not read ({error}); its tickets are forgotten",
                    path.display()
                );
                File::default()
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(error) => return Err(error.into()),
        };
        let oldest = now().saturating_sub(KEEP_LOST.as_secs());
        let received: Vec<Receipt> = file
            .received
            .into_iter()
            .filter(|r| r.received >= oldest)
            .collect();
        let lost = received
            .iter()
            .map(|r| (r.server.clone(), r.ticket.clone()))
            .collect();
        let tickets = Tickets {
            path,
            inner: Mutex::new(Inner { received, lost }),
        };
        tickets.save(&tickets.inner.lock().expect("tickets lock"))?;
        Ok(tickets)
    }

    /// Whether the ticket was received by an earlier run of the agent.
    pub fn is_lost(&self, server: &str, ticket: &str) -> bool {
        self.inner
            .lock()
            .expect("tickets lock")
            .lost
            .contains(&(server.to_string(), ticket.to_string()))
    }

    /// The lost tickets of a server.
    pub fn lost_of(&self, server: &str) -> Vec<String> {
        let inner = self.inner.lock().expect("tickets lock");
        inner
            .lost
            .iter()
            .filter(|(s, _)| s == server)
            .map(|(_, t)| t.clone())
            .collect()
    }

    /// Records a ticket before its script starts (and before `start` is answered), durably.
    pub fn receive(&self, server: &str, ticket: &str) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().expect("tickets lock");
        inner.received.push(Receipt {
            server: server.to_string(),
            ticket: ticket.to_string(),
            received: now(),
        });
        if let Err(error) = self.save(&inner) {
            inner.received.pop();
            return Err(error);
        }
        Ok(())
    }

    /// Forgets a completed ticket.
    pub fn complete(&self, server: &str, ticket: &str) {
        let mut inner = self.inner.lock().expect("tickets lock");
        let before = inner.received.len();
        inner
            .received
            .retain(|r| !(r.server == server && r.ticket == ticket));
        inner.lost.remove(&(server.to_string(), ticket.to_string()));
        if inner.received.len() != before
            && let Err(error) = self.save(&inner)
        {
            eprintln!(
                "muster-agent: cannot write {}: {error}",
                self.path.display()
            );
        }
    }

    /// Writes the file atomically, readable by the agent's user only.
    fn save(&self, inner: &Inner) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let temp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(&File {
            received: inner.received.clone(),
        })?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(&bytes)?;
        file.sync_data()?;
        std::fs::rename(&temp, &self.path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_tickets_are_lost_after_a_restart_until_completed() {
        let home = tempfile::tempdir().unwrap();
        let tickets = Tickets::load(home.path()).unwrap();
        tickets.receive("SERVER", "ServerTasks-1").unwrap();
        tickets.receive("SERVER", "ServerTasks-2").unwrap();
        assert!(!tickets.is_lost("SERVER", "ServerTasks-1"));
        tickets.complete("SERVER", "ServerTasks-2");

        let restarted = Tickets::load(home.path()).unwrap();
        assert!(restarted.is_lost("SERVER", "ServerTasks-1"));
        assert!(!restarted.is_lost("OTHER", "ServerTasks-1"));
        assert!(!restarted.is_lost("SERVER", "ServerTasks-2"));
        assert_eq!(restarted.lost_of("SERVER"), vec!["ServerTasks-1"]);
        restarted.complete("SERVER", "ServerTasks-1");
        assert!(
            Tickets::load(home.path())
                .unwrap()
                .lost_of("SERVER")
                .is_empty()
        );

        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.path().join("tickets.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
