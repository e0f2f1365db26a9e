//! `[store]`, `[audit]` and `[privacy]`: where events are kept, their audit trail, and
//! what is redacted or sealed before they are.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration_str;
use crate::secret::{SecretRef, SecretUrl};

/// `[privacy]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// JSON pointers into the normalised event replaced by `"[redacted]"` before storage and
    /// delivery (see `event::Redaction`).
    pub redact: Vec<String>,
    /// Secret reference to the data key(s), base64 of 32 bytes each, comma-separated for
    /// rotation (the first seals, all open): event bodies are sealed at rest (`seal`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encrypt_key: Option<SecretRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// fsync on every commit (default; a 2xx means the event is on disk).
    Full,
    /// WAL without fsync per commit: an OS crash may lose the last commits.
    Normal,
    /// No fsync at all (benchmarks only).
    Off,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreConfig {
    /// `sqlite://PATH`; unset = `DATA_DIR/cognihook.db`.
    pub url: Option<SecretUrl>,
    /// Directory of the embedded store (from `COGNIHOOK_DATA_DIR`).
    pub data_dir: PathBuf,
    pub sync: SyncMode,
    #[serde(with = "duration_str")]
    pub idempotency_window: Duration,
    #[serde(with = "duration_str")]
    pub session_ttl: Duration,
    #[serde(with = "duration_str")]
    pub retention: Duration,
    /// Most acceptances committed in one transaction.
    pub max_batch: usize,
    /// Acceptances waiting for the writer before ingest answers 503 `unavailable`.
    pub queue_depth: usize,
    /// Niceness (0–19) of the embedded store's background threads that work in bursts (the
    /// checkpointer, the keys' flush and compaction; not the projector, which every
    /// acknowledgement's read-your-writes and the sequencer's queue wait on): 0 leaves them
    /// beside the request path.
    pub background_nice: u8,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditConfig {
    pub enabled: bool,
    /// File to append audit lines to; unset = stdout.
    pub path: Option<PathBuf>,
}

impl Default for StoreConfig {
    /// From the built-in defaults (`defaults.toml`).
    fn default() -> Self {
        super::Config::builtin().store.clone()
    }
}

impl Default for AuditConfig {
    /// From the built-in defaults (`defaults.toml`).
    fn default() -> Self {
        super::Config::builtin().audit.clone()
    }
}

/// Which store a configuration selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Sqlite(PathBuf),
    /// A `postgres://` URL.
    Postgres(String),
}

/// Why `store.url` selects no usable store.
#[derive(Debug, thiserror::Error)]
pub enum StoreUrlError {
    #[error("store.url `sqlite://` needs a path")]
    NoPath,
    #[error("store.url selects PostgreSQL, not an embedded SQLite file")]
    NotSqlite,
    #[error("store.url `{0}`: expected sqlite://PATH or postgres://…")]
    UnknownScheme(SecretUrl),
}

impl StoreConfig {
    /// The backend: PostgreSQL for a `postgres://` URL (its options are the store's to check:
    /// `store::pg_conn::PgTarget::parse`), else the embedded SQLite file.
    pub fn backend(&self) -> Result<Backend, StoreUrlError> {
        match self.url.as_ref().map(SecretUrl::expose) {
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Ok(Backend::Postgres(u.to_string()))
            }
            _ => self.sqlite_path().map(Backend::Sqlite),
        }
    }

    /// The SQLite database file this configuration selects.
    pub fn sqlite_path(&self) -> Result<PathBuf, StoreUrlError> {
        match self.url.as_ref().map(SecretUrl::expose) {
            None => Ok(self.data_dir.join("cognihook.db")),
            Some(u) => {
                if let Some(path) = u.strip_prefix("sqlite://") {
                    if path.is_empty() {
                        Err(StoreUrlError::NoPath)
                    } else {
                        Ok(PathBuf::from(path))
                    }
                } else if u.starts_with("postgres://") || u.starts_with("postgresql://") {
                    Err(StoreUrlError::NotSqlite)
                } else {
                    Err(StoreUrlError::UnknownScheme(SecretUrl::from(u)))
                }
            }
        }
    }
}
