//! Payloads at rest (`[privacy] encrypt_key`): event bodies are sealed with AES-256-GCM
//! before the store writes them (log and database, both backends) and opened when it reads
//! them (deliveries, journeys). A sealed body is text: `enc1:<key id>:<base64 of nonce ‖
//! ciphertext ‖ tag>`, the key id being the first 8 hex digits of the key's SHA-256, so that
//! with several keys (rotation: the first seals, all open) each body names its key. A body
//! without the prefix is plaintext (written before encryption was turned on) and is read as
//! it is. The keys are installed once per process (`install`), by `serve` and by the CLI
//! commands that read bodies.
//!
//! A leaf: it imports nothing of the crate.

use std::sync::OnceLock;

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

const PREFIX: &str = "enc1:";

/// Why keys could not be used, or a body could not be sealed or opened. Never holds a key or
/// a body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The configured keys are unusable (none, not base64, not 32 bytes, another set installed).
    #[error("{0}")]
    Keys(String),
    /// The system's random source or the cipher failed while sealing.
    #[error("{0}")]
    Seal(&'static str),
    /// A stored body does not open: damaged, altered, or sealed with a key not configured.
    #[error("{0}")]
    Open(String),
}

struct Key {
    id: String,
    key: LessSafeKey,
}

/// The data keys: the first seals, every one opens.
pub struct DataKeys {
    keys: Vec<Key>,
    rng: SystemRandom,
}

static KEYS: OnceLock<DataKeys> = OnceLock::new();

impl DataKeys {
    /// Keys from their raw bytes (each must be 32 bytes: AES-256).
    pub fn new(raw: &[Vec<u8>]) -> Result<DataKeys, SealError> {
        if raw.is_empty() {
            return Err(SealError::Keys("no key given".into()));
        }
        let mut keys = Vec::new();
        for (i, k) in raw.iter().enumerate() {
            let unbound = UnboundKey::new(&AES_256_GCM, k).map_err(|_| {
                SealError::Keys(format!(
                    "key {} is {} bytes; AES-256-GCM takes 32 (base64 of 32 random bytes)",
                    i + 1,
                    k.len()
                ))
            })?;
            keys.push(Key {
                id: hex::encode(&Sha256::digest(k)[..4]),
                key: LessSafeKey::new(unbound),
            });
        }
        Ok(DataKeys {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// Decodes base64 keys (what `encrypt_key` names) and builds the set.
    pub fn from_base64(values: &[Vec<u8>]) -> Result<DataKeys, SealError> {
        let raw: Result<Vec<Vec<u8>>, SealError> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let text = std::str::from_utf8(v)
                    .map_err(|_| SealError::Keys(format!("key {} is not text", i + 1)))?;
                base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|e| SealError::Keys(format!("key {} is not base64: {e}", i + 1)))
            })
            .collect();
        DataKeys::new(&raw?)
    }

    pub fn seal(&self, plaintext: &str) -> Result<String, SealError> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| SealError::Seal("the system's random source failed"))?;
        let mut buf = plaintext.as_bytes().to_vec();
        key.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
            .map_err(|_| SealError::Seal("sealing failed"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(format!(
            "{PREFIX}{}:{}",
            key.id,
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    pub fn open(&self, stored: &str) -> Result<String, SealError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_string());
        };
        let fail = |m: String| SealError::Open(m);
        let (id, data) = rest
            .split_once(':')
            .ok_or_else(|| fail("a sealed body without its key id".into()))?;
        let key = self.keys.iter().find(|k| k.id == id).ok_or_else(|| {
            fail(format!(
                "sealed with key {id}, which is not among encrypt_key"
            ))
        })?;
        let mut data = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| fail(format!("a sealed body is not base64: {e}")))?;
        if data.len() < NONCE_LEN {
            return Err(fail("a sealed body too short for its nonce".into()));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&data[..NONCE_LEN]);
        let plain = key
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut data[NONCE_LEN..],
            )
            .map_err(|_| {
                fail(format!(
                    "a body sealed with key {id} does not open (altered?)"
                ))
            })?;
        String::from_utf8(plain.to_vec()).map_err(|_| fail("an opened body is not UTF-8".into()))
    }
}

/// Installs this process's data keys. Once per process: a second call with the same sealing
/// key is a no-op, with another one an error.
pub fn install(keys: DataKeys) -> Result<(), SealError> {
    let id = keys.keys[0].id.clone();
    let installed = KEYS.get_or_init(|| keys);
    if installed.keys[0].id == id {
        Ok(())
    } else {
        Err(SealError::Keys(
            "other data keys are already installed in this process".into(),
        ))
    }
}

/// Resolves `[privacy] encrypt_key` (its values: base64 keys) and installs them.
pub fn install_values(values: &[Vec<u8>]) -> Result<(), SealError> {
    install(DataKeys::from_base64(values)?)
}

/// Whether bodies are sealed.
pub fn active() -> bool {
    KEYS.get().is_some()
}

/// The body as the store writes it: sealed when keys are installed, else as it is.
pub fn seal(body: String) -> Result<String, SealError> {
    match KEYS.get() {
        Some(k) => k.seal(&body),
        None => Ok(body),
    }
}

/// The body as the store read it, opened when sealed.
pub fn open(stored: String) -> Result<String, SealError> {
    if !stored.starts_with(PREFIX) {
        return Ok(stored);
    }
    match KEYS.get() {
        Some(k) => k.open(&stored),
        None => Err(SealError::Open(
            "this body is encrypted and no [privacy] encrypt_key is set".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bodies_open_with_any_listed_key_and_not_without_it() {
        let old = vec![7u8; 32];
        let new = vec![9u8; 32];
        let before = DataKeys::new(std::slice::from_ref(&old)).expect("keys");
        let sealed_old = before.seal("{\"text\":\"secret\"}").expect("seal");
        assert!(sealed_old.starts_with("enc1:"));
        assert!(!sealed_old.contains("secret"));
        let rotated = DataKeys::new(&[new.clone(), old]).expect("keys");
        assert_eq!(
            rotated.open(&sealed_old).expect("old key opens"),
            "{\"text\":\"secret\"}"
        );
        let sealed_new = rotated.seal("x").expect("seal");
        assert_ne!(sealed_new.split(':').nth(1), sealed_old.split(':').nth(1));
        let only_new = DataKeys::new(&[new]).expect("keys");
        let gone = only_new.open(&sealed_old).expect_err("gone");
        assert!(
            matches!(&gone, SealError::Open(m) if m.contains("not among")),
            "{gone}"
        );
        assert_eq!(only_new.open("plain").expect("plaintext passes"), "plain");
    }

    #[test]
    fn an_altered_body_or_a_short_key_is_refused() {
        let keys = DataKeys::new(&[vec![1u8; 32]]).expect("keys");
        let sealed = keys.seal("hello").expect("seal");
        let mut altered = sealed.into_bytes();
        let last = altered.len() - 3;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).expect("utf8");
        assert!(keys.open(&altered).is_err());
        assert!(DataKeys::new(&[vec![1u8; 16]]).is_err());
        assert!(DataKeys::from_base64(&[b"not base64!".to_vec()]).is_err());
    }
}
