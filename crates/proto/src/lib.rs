//! The agent link. For now: the certificates every Muster party owns and the thumbprints by which each
//! side pins the other. Thumbprints are upper-case hex of a hash of the DER certificate: SHA-256 (64
//! characters) for Muster's own parties, SHA-1 (40) where an Octopus client gave one.

pub mod net;
pub mod rpc;
pub mod tls;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read or write the certificate at {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the certificate at {path} does not read: {reason}")]
    Invalid { path: String, reason: String },
    #[error("cannot generate a certificate: {0}")]
    Generate(String),
}

/// A party's own certificate and private key.
pub struct Identity {
    pub cert_der: CertificateDer<'static>,
    pub key_der: PrivateKeyDer<'static>,
    pub cert_pem: String,
    key_pem: String,
}

impl Identity {
    /// A new self-signed certificate (ECDSA P-256) for `common_name`.
    pub fn generate(common_name: &str) -> Result<Identity, CertError> {
        let mut params = rcgen::CertificateParams::new(vec![common_name.to_string()])
            .map_err(|e| CertError::Generate(e.to_string()))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2120, 1, 1);
        let key = rcgen::KeyPair::generate().map_err(|e| CertError::Generate(e.to_string()))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| CertError::Generate(e.to_string()))?;
        Ok(Identity {
            cert_der: cert.der().clone(),
            key_der: PrivateKeyDer::try_from(key.serialize_der())
                .map_err(|e| CertError::Generate(e.to_string()))?,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Loads `cert.pem` and `key.pem` from `dir`, creating them on first use. The key file is 0600.
    pub fn load_or_create(dir: &Path, common_name: &str) -> Result<Identity, CertError> {
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| CertError::Io { path, source }
        };
        if cert_path.exists() && key_path.exists() {
            let invalid = |path: &Path| {
                let path = path.display().to_string();
                move |e: rustls::pki_types::pem::Error| CertError::Invalid {
                    path,
                    reason: e.to_string(),
                }
            };
            return Ok(Identity {
                cert_der: CertificateDer::from_pem_file(&cert_path).map_err(invalid(&cert_path))?,
                key_der: PrivateKeyDer::from_pem_file(&key_path).map_err(invalid(&key_path))?,
                cert_pem: std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?,
                key_pem: String::new(),
            });
        }
        let identity = Identity::generate(common_name)?;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        write_private(&key_path, &identity.key_pem).map_err(io(&key_path))?;
        std::fs::write(&cert_path, &identity.cert_pem).map_err(io(&cert_path))?;
        Ok(identity)
    }

    pub fn thumbprint(&self) -> String {
        thumbprint_sha256(&self.cert_der)
    }

    /// An identity handed over as PEM text (a dynamic worker's, issued by the server): both parts
    /// must read, and the key must belong to the certificate's kind. `what` names where they came
    /// from in an error.
    pub fn from_pem(cert_pem: &str, key_pem: &str, what: &str) -> Result<Identity, CertError> {
        let invalid = |reason: String| CertError::Invalid {
            path: what.to_string(),
            reason,
        };
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| invalid(format!("the certificate does not read: {e}")))?;
        let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| invalid(format!("the key does not read: {e}")))?;
        Ok(Identity {
            cert_der,
            key_der,
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    /// The private key as PEM (empty for an identity loaded from files: it stays in its file).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Writes `cert.pem` and `key.pem` (0600) into `dir`, replacing what is there.
    pub fn save_to(&self, dir: &Path) -> Result<(), CertError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| CertError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        write_private(&key_path, &self.key_pem).map_err(io(&key_path))?;
        std::fs::write(&cert_path, &self.cert_pem).map_err(io(&cert_path))
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

/// Muster's thumbprint: SHA-256 of the DER certificate, 64 upper-case hex characters.
pub fn thumbprint_sha256(der: &[u8]) -> String {
    hex::encode_upper(sha2::Sha256::digest(der))
}

/// Octopus's thumbprint (.NET `X509Certificate2.Thumbprint`): SHA-1, 40 upper-case hex characters.
pub fn thumbprint_sha1(der: &[u8]) -> String {
    hex::encode_upper(sha1::Sha1::digest(der))
}

/// Whether a certificate matches a pinned thumbprint of either length.
pub fn matches_thumbprint(der: &[u8], pinned: &str) -> bool {
    match pinned.len() {
        64 => thumbprint_sha256(der).eq_ignore_ascii_case(pinned),
        40 => thumbprint_sha1(der).eq_ignore_ascii_case(pinned),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_identity_loads_back_with_the_same_thumbprint() {
        let dir = std::env::temp_dir().join(format!("muster-proto-test-{}", std::process::id()));
        let first = Identity::load_or_create(&dir, "test").unwrap();
        let again = Identity::load_or_create(&dir, "test").unwrap();
        assert_eq!(first.thumbprint(), again.thumbprint());
        assert_eq!(first.thumbprint().len(), 64);
        assert!(matches_thumbprint(
            &first.cert_der,
            &thumbprint_sha1(&first.cert_der)
        ));
        assert!(!matches_thumbprint(&first.cert_der, &"0".repeat(64)));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// The environment a dynamic worker's instance gets from its provider (issue 16): the identity the
/// server issued for that one worker, and where to find the server. The server sets them; the
/// agent's `run` reads them. No API key is ever among them.
pub mod instance {
    /// The agent certificate the server issued for the worker (PEM).
    pub const CERTIFICATE: &str = "MUSTER_AGENT_CERTIFICATE";
    /// Its private key (PEM).
    pub const KEY: &str = "MUSTER_AGENT_KEY";
    /// The server's certificate thumbprint, which the agent pins.
    pub const SERVER_THUMBPRINT: &str = "MUSTER_SERVER_THUMBPRINT";
    /// The worker's polling subscription (`poll://…/`).
    pub const SUBSCRIPTION: &str = "MUSTER_SUBSCRIPTION";
    /// The comms addresses to dial, comma separated (`host:port`).
    pub const COMMS_ADDRESSES: &str = "MUSTER_SERVER_COMMS_ADDRESSES";
    /// The worker's name, for the instance's own use (a host name, a log line).
    pub const WORKER_NAME: &str = "MUSTER_WORKER_NAME";
    /// Given to a provider's destroy command: the instance to destroy.
    pub const INSTANCE_ID: &str = "MUSTER_INSTANCE_ID";
}
