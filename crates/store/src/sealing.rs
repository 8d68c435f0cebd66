//! Sensitive values at rest: each is sealed (AES-256-GCM from ring, a fresh random nonce per
//! value) with one key kept in a file beside the database, made at the first start (0600). A copy
//! of the database alone, or of a backup of it, does not give the values away.

use crate::{Result, StoreError};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use std::io::Write as _;
use std::path::Path;

/// The key file's name, in the database's directory.
pub const KEY_FILE: &str = "secrets.key";
/// What a sealed value starts with; a value without it was stored before values were sealed.
const PREFIX: &str = "muster-sealed:1:";
const KEY_LEN: usize = 32;

pub struct Sealer {
    key: LessSafeKey,
    /// Signs task tokens: derived from the same file, so every node of a database verifies the
    /// tokens any node gave.
    tokens: ring::hmac::Key,
    rng: SystemRandom,
}

impl Sealer {
    /// Reads the key file; with `create`, makes it (0600) when there is none.
    pub fn load_or_create(path: &Path, create: bool) -> Result<Sealer> {
        let fail = |why: String| StoreError::Key(format!("{}: {why}", path.display()));
        let rng = SystemRandom::new();
        let bytes = match std::fs::read(path) {
            Ok(bytes) => {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| fail(e.to_string()))?;
                bytes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let mut key = [0u8; KEY_LEN];
                rng.fill(&mut key)
                    .map_err(|_| fail("the system gave no randomness".into()))?;
                write_new(path, &key).map_err(|e| fail(e.to_string()))?;
                key.to_vec()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(fail(
                    "the key file is missing, and this database holds values sealed with it; restore the file that belongs to this database (a new node of a database that other nodes use: copy secrets.key, and the server-certificate directory, from one of them)".into(),
                ));
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| {
            fail(format!(
                "a key file holds {KEY_LEN} bytes, this one {}",
                bytes.len()
            ))
        })?;
        let derived = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes),
            b"muster task tokens v1",
        );
        Ok(Sealer {
            key: LessSafeKey::new(key),
            tokens: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref()),
            rng,
        })
    }

    pub fn seal(&self, plain: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("the system's randomness");
        let mut data = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .expect("a value of any size this store holds can be sealed");
        format!("{PREFIX}{}", BASE64.encode([&nonce[..], &data].concat()))
    }

    /// The value a sealed text holds; a text stored before sealing is returned as it is.
    pub fn open(&self, text: &str) -> Result<String> {
        let Some(encoded) = text.strip_prefix(PREFIX) else {
            return Ok(text.to_string());
        };
        let corrupt = || {
            StoreError::Corrupt(format!(
                "a sealed value does not open with this data directory's {KEY_FILE}"
            ))
        };
        let mut data = BASE64.decode(encoded).map_err(|_| corrupt())?;
        if data.len() < NONCE_LEN {
            return Err(corrupt());
        }
        let nonce = Nonce::try_assume_unique_for_key(&data[..NONCE_LEN]).map_err(|_| corrupt())?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut data[NONCE_LEN..])
            .map_err(|_| corrupt())?;
        String::from_utf8(plain.to_vec()).map_err(|_| corrupt())
    }
}

/// What a task token starts with.
const TOKEN_PREFIX: &str = "MTT-";

impl Sealer {
    /// The token of a task: `MTT-<task number>-<HMAC-SHA256 of the task id, hex>`. Nothing is stored:
    /// any node with the database's key verifies it, and it means something only while its task
    /// runs (the caller checks that).
    pub fn task_token(&self, task_id: &str) -> String {
        let num = task_id.rsplit('-').next().unwrap_or_default();
        let tag = ring::hmac::sign(&self.tokens, task_id.as_bytes());
        format!("{TOKEN_PREFIX}{num}-{}", hex_of(tag.as_ref()))
    }

    /// The task a token was given for, if this key signed it.
    pub fn task_of_token(&self, token: &str) -> Option<String> {
        let (num, tag) = token.strip_prefix(TOKEN_PREFIX)?.split_once('-')?;
        let num: u64 = num.parse().ok()?;
        let task_id = format!("ServerTasks-{num}");
        let tag = bytes_of_hex(tag)?;
        ring::hmac::verify(&self.tokens, task_id.as_bytes(), &tag).ok()?;
        Some(task_id)
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn bytes_of_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

pub fn is_sealed(text: &str) -> bool {
    text.starts_with(PREFIX)
}

/// Creates a file only this user can read, and writes it through to the disk.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        assert!(Sealer::load_or_create(&path, false).is_err());
        let sealer = Sealer::load_or_create(&path, true).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = sealer.seal("it's a \"$ecret\"");
        assert!(is_sealed(&sealed) && !sealed.contains("ecret"));
        assert_ne!(
            sealer.seal("it's a \"$ecret\""),
            sealed,
            "a fresh nonce each time"
        );
        assert_eq!(sealer.open(&sealed).unwrap(), "it's a \"$ecret\"");
        assert_eq!(
            sealer.open("plain, from before").unwrap(),
            "plain, from before"
        );
        let again = Sealer::load_or_create(&path, true).unwrap();
        assert_eq!(again.open(&sealed).unwrap(), "it's a \"$ecret\"");
        let other = Sealer::load_or_create(&dir.path().join("other.key"), true).unwrap();
        assert!(other.open(&sealed).is_err());
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push('A');
        assert!(sealer.open(&tampered).is_err());
    }

    /// A task token names its task and is accepted only under the key that signed it, as written.
    #[test]
    fn a_task_token_is_verified_by_its_key_alone() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::load_or_create(&dir.path().join(KEY_FILE), true).unwrap();
        let copy = Sealer::load_or_create(&dir.path().join(KEY_FILE), false).unwrap();
        let other = Sealer::load_or_create(&dir.path().join("other.key"), true).unwrap();
        let token = sealer.task_token("ServerTasks-42");
        assert!(token.starts_with("MTT-42-"), "{token}");
        assert_eq!(
            copy.task_of_token(&token).as_deref(),
            Some("ServerTasks-42")
        );
        assert_eq!(other.task_of_token(&token), None, "another database's key");
        let moved = token.replacen("MTT-42-", "MTT-43-", 1);
        assert_eq!(sealer.task_of_token(&moved), None, "bound to its task");
        for bad in [
            "",
            "MTT-",
            "MTT-42",
            "MTT-x-00",
            "MTT-42-zz",
            &token[..token.len() - 1],
        ] {
            assert_eq!(sealer.task_of_token(bad), None, "{bad}");
        }
    }
}
