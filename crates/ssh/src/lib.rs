//! SSH workers: the pinned host key's fingerprint, the accounts' private keys, and the connection
//! that runs scripts on a worker. It knows nothing of tasks, stores or servers: the server's SSH
//! worker kind calls it.
//!
//! - [`scan`] reads a host's key without authenticating (discovery).
//! - [`Session::connect`] checks the host key against the pin **before** it authenticates, so a
//!   changed key never sees a password, a signature or a command.
//! - A [`Session`] is one kept connection (more only when OpenSSH's per-connection limit on channels
//!   would be exceeded); each command or script uses a channel of its own.
//! - Scripts run detached under a small POSIX-sh keeper in `$HOME/.muster/work/<ticket>` (see
//!   [`remote`]), so that they outlive the server and can be re-attached to with
//!   [`Session::follow`] from the last stored byte offset.

pub mod keys;
pub mod remote;
mod session;

pub use remote::{Line, RemoteFile, RemoteScript};
pub use russh::keys::PrivateKey;
pub use session::{Output, Session, scan};

use keys::Fingerprint;
use std::sync::Arc;

/// Where a worker is and which host key it must present.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub pin: Fingerprint,
}

/// How to log in: an account's key pair or its password.
#[derive(Clone)]
pub enum Auth {
    Key {
        username: String,
        key: Arc<PrivateKey>,
    },
    Password {
        username: String,
        password: String,
    },
}

impl Auth {
    pub fn username(&self) -> &str {
        match self {
            Auth::Key { username, .. } | Auth::Password { username, .. } => username,
        }
    }
}

impl std::fmt::Debug for Auth {
    /// Never prints the key or the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Key { username, .. } => write!(f, "Auth::Key({username})"),
            Auth::Password { username, .. } => write!(f, "Auth::Password({username})"),
        }
    }
}

/// The key a host presented: its algorithm (`ssh-ed25519`, …) and both fingerprint forms. After an
/// MD5 pin matched, the caller upgrades its pin to `sha256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    pub algorithm: String,
    pub sha256: Fingerprint,
    pub md5: Fingerprint,
}

impl HostKey {
    pub fn of(key: &keys::PublicKey) -> HostKey {
        HostKey {
            algorithm: keys::algorithm_of(key),
            sha256: Fingerprint::sha256_of(key),
            md5: Fingerprint::md5_of(key),
        }
    }

    /// The fingerprint in the same form as `pin`, so that a message compares like with like.
    pub fn in_form_of(&self, pin: &Fingerprint) -> &Fingerprint {
        if pin.is_md5() {
            &self.md5
        } else {
            &self.sha256
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {host}:{port}: {reason}")]
    Connect {
        host: String,
        port: u16,
        reason: String,
    },
    #[error("{host}:{port} did not answer within {seconds} s ({what})")]
    Timeout {
        host: String,
        port: u16,
        seconds: u64,
        what: &'static str,
    },
    #[error(
        "the host key of {host}:{port} changed: the worker is pinned to {pinned}, but the host presented {} {}; nothing was sent to it. Update the worker's fingerprint if the change is expected",
        .presented.algorithm,
        .presented.in_form_of(pinned)
    )]
    HostKeyChanged {
        host: String,
        port: u16,
        pinned: Fingerprint,
        presented: Box<HostKey>,
    },
    #[error("{host}:{port} refused the {method} of user '{username}'")]
    AuthRejected {
        host: String,
        port: u16,
        username: String,
        method: &'static str,
    },
    #[error("the SSH connection to {host}:{port} was lost")]
    Disconnected { host: String, port: u16 },
    #[error("'{0}' is not a script ticket (letters, digits, '-' and '_', at most 64)")]
    BadTicket(String),
    #[error("'{0}' is not a path inside the script's working directory")]
    BadPath(String),
    #[error("'{0}' is not an environment variable name")]
    BadVariable(String),
    #[error("no script '{0}' on this worker")]
    NoSuchScript(String),
    #[error(
        "the script '{0}' ended on the worker without recording how (its keeper was killed or the machine restarted)"
    )]
    Lost(String),
    #[error("the worker could not {what}: {detail}")]
    Remote { what: &'static str, detail: String },
    #[error("SSH: {0}")]
    Ssh(#[from] russh::Error),
}
