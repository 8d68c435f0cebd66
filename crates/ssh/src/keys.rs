//! Host-key fingerprints in the two forms users paste, and the checks of an account's private key.

use base64::Engine;
use md5::{Digest, Md5};
pub use russh::keys::PublicKey;
use russh::keys::{HashAlg, PrivateKey};

/// A pinned host key: the SHA-256 form `ssh-keygen -E sha256 -lf` prints (`SHA256:` and unpadded
/// base64), or the older MD5 form (`aa:bb:…`, 16 colon-separated hex pairs, optionally `MD5:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fingerprint {
    Sha256([u8; 32]),
    Md5([u8; 16]),
}

impl Fingerprint {
    /// Reads a fingerprint as a user gives it; the error says which forms are accepted.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad = || {
            format!(
                "'{text}' is not an SSH host key fingerprint: give the SHA-256 form that `ssh-keygen -E sha256 -lf KEY` prints (SHA256:…, 43 base64 characters) or the MD5 form (16 hex pairs separated by colons)"
            )
        };
        if let Some(b64) = text.strip_prefix("SHA256:") {
            let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(b64.trim_end_matches('='))
                .map_err(|_| bad())?;
            return bytes.try_into().map(Fingerprint::Sha256).map_err(|_| bad());
        }
        let hex_pairs = text.strip_prefix("MD5:").unwrap_or(text);
        let pairs: Vec<&str> = hex_pairs.split(':').collect();
        if pairs.len() != 16 {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        for (slot, pair) in out.iter_mut().zip(pairs) {
            if pair.len() != 2 {
                return Err(bad());
            }
            *slot = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint::Md5(out))
    }

    /// The SHA-256 fingerprint of a public key.
    pub fn sha256_of(key: &PublicKey) -> Self {
        let fingerprint = key.fingerprint(HashAlg::Sha256);
        let mut out = [0u8; 32];
        out.copy_from_slice(fingerprint.as_bytes());
        Fingerprint::Sha256(out)
    }

    /// The MD5 fingerprint of a public key (of its wire encoding, as OpenSSH computes it).
    pub fn md5_of(key: &PublicKey) -> Self {
        let blob = key.to_bytes().unwrap_or_default();
        Fingerprint::Md5(Md5::digest(&blob).into())
    }

    /// Whether this pin names that key.
    pub fn matches(&self, key: &PublicKey) -> bool {
        match self {
            Fingerprint::Sha256(_) => *self == Fingerprint::sha256_of(key),
            Fingerprint::Md5(_) => *self == Fingerprint::md5_of(key),
        }
    }

    pub fn is_md5(&self) -> bool {
        matches!(self, Fingerprint::Md5(_))
    }
}

impl std::fmt::Display for Fingerprint {
    /// `SHA256:…` exactly as `ssh-keygen -E sha256 -lf` prints it; MD5 as lower-case hex pairs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fingerprint::Sha256(bytes) => write!(
                f,
                "SHA256:{}",
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
            ),
            Fingerprint::Md5(bytes) => {
                let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
                write!(f, "{}", hex.join(":"))
            }
        }
    }
}

/// A public key's algorithm as OpenSSH names it (`ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`).
pub fn algorithm_of(key: &PublicKey) -> String {
    key.algorithm().as_str().to_string()
}

/// What a valid private key file holds, for an account's checks.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub algorithm: String,
    pub public_fingerprint: Fingerprint,
}

/// Why an account's private key cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("the private key file is not an OpenSSH or PEM private key")]
    NotAKey,
    #[error("the private key is encrypted: give its passphrase")]
    NeedsPassphrase,
    #[error("the passphrase does not open the private key")]
    WrongPassphrase,
}

/// Reads a private key file (OpenSSH, PEM or PKCS#8 text), opening it with the passphrase if it is
/// encrypted.
pub fn read_private_key(file: &[u8], passphrase: Option<&str>) -> Result<PrivateKey, KeyError> {
    let text = std::str::from_utf8(file).map_err(|_| KeyError::NotAKey)?;
    if !text.contains("PRIVATE KEY-----") {
        return Err(KeyError::NotAKey);
    }
    let passphrase = passphrase.filter(|p| !p.is_empty());
    match russh::keys::decode_secret_key(text, passphrase) {
        Ok(key) => Ok(key),
        Err(_) if looks_encrypted(text) && passphrase.is_none() => Err(KeyError::NeedsPassphrase),
        Err(_) if looks_encrypted(text) => Err(KeyError::WrongPassphrase),
        Err(russh::keys::Error::KeyIsEncrypted) => Err(KeyError::NeedsPassphrase),
        Err(_) => Err(KeyError::NotAKey),
    }
}

/// Checks an account's private key file and passphrase, and says what the key is.
pub fn check_private_key(file: &[u8], passphrase: Option<&str>) -> Result<KeyInfo, KeyError> {
    let key = read_private_key(file, passphrase)?;
    let public = key.public_key();
    Ok(KeyInfo {
        algorithm: algorithm_of(public),
        public_fingerprint: Fingerprint::sha256_of(public),
    })
}

/// Whether a key file is passphrase-protected: OpenSSH's format names its cipher (`none` when it
/// is not); PEM says `ENCRYPTED`.
fn looks_encrypted(text: &str) -> bool {
    if text.contains("ENCRYPTED") {
        return true;
    }
    let body: String = text
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    match base64::engine::general_purpose::STANDARD.decode(body.trim()) {
        // "openssh-key-v1\0", then the cipher name as an SSH string.
        Ok(bytes) if bytes.starts_with(b"openssh-key-v1\0") && bytes.len() > 19 => {
            let len = u32::from_be_bytes([bytes[15], bytes[16], bytes[17], bytes[18]]) as usize;
            bytes.get(19..19 + len).is_some_and(|name| name != b"none")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_forms() {
        let sha = Fingerprint::parse("SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8").unwrap();
        assert!(matches!(sha, Fingerprint::Sha256(_)));
        assert_eq!(
            sha.to_string(),
            "SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8"
        );
        let md5 = Fingerprint::parse("16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48").unwrap();
        assert!(md5.is_md5());
        assert_eq!(
            md5.to_string(),
            "16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48"
        );
        assert_eq!(
            Fingerprint::parse("MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48").unwrap(),
            md5
        );
        for bad in [
            "",
            "SHA256:",
            "SHA256:abc",
            "16:27",
            "zz:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48",
            "nonsense",
        ] {
            assert!(Fingerprint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn not_a_key() {
        assert_eq!(
            check_private_key(b"hello", None).unwrap_err(),
            KeyError::NotAKey
        );
        assert_eq!(
            check_private_key(
                b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
                None
            )
            .unwrap_err(),
            KeyError::NotAKey
        );
        assert_eq!(
            check_private_key(&[0xff, 0xfe], None).unwrap_err(),
            KeyError::NotAKey
        );
    }
}
