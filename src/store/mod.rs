//! The store: where accepted events, session state, idempotency records and outbox rows live.
//!
//! Invariant (SPEC §6): [`Store::accept`] returns `Committed` only after the event, the
//! session-state change, the idempotency record and one outbox row per sink are committed in
//! one transaction and (with `sync = "full"`) flushed to disk. A duplicate changes nothing and
//! gets the original answer back. `Store` is an enum over backends; only the embedded SQLite
//! backend exists in this version.

pub mod sqlite;

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::ingest::payload::NormalisedEvent;

/// One event to commit.
#[derive(Debug)]
pub struct Acceptance {
    pub idempotency_key: String,
    /// The event; its `state_version` is set by the store.
    pub event: NormalisedEvent,
    /// The success body to answer with; the store sets `data.stateVersion` and keeps a copy
    /// for duplicates.
    pub response: Value,
    /// One outbox row is written per sink.
    pub sinks: Vec<String>,
    /// A response larger than this is refused (nothing is committed).
    pub max_response_bytes: usize,
}

/// What `accept` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptOutcome {
    /// Committed now; `body` is the response to send.
    Committed { state_version: u64, body: Bytes },
    /// Seen before inside the idempotency window: the original answer, nothing changed.
    Duplicate {
        status: u16,
        body: Bytes,
        correlation_id: String,
    },
}

/// Why `accept` could not commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("store is overloaded: {0} acceptances are waiting")]
    Overloaded(usize),
    #[error("store is unavailable: {0}")]
    Unavailable(String),
    #[error("store is closed")]
    Closed,
    #[error("response of {size} bytes exceeds limits.max_response_bytes ({limit})")]
    ResponseTooLarge { size: usize, limit: usize },
}

/// An event and what happened to it, for `events show` and `/admin/events/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct Journey {
    pub event: Value,
    #[serde(rename = "committedAt")]
    pub committed_at: String,
    pub deliveries: Vec<Delivery>,
}

/// The delivery of one event to one sink.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub sink: String,
    pub status: String,
    pub attempts: Vec<Value>,
}

/// Counts for `/stats` and metrics.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    pub outbox_pending: u64,
    pub dead_letters: u64,
}

/// The store, whichever backend it is.
#[derive(Clone)]
pub enum Store {
    Sqlite(Arc<sqlite::SqliteStore>),
}

impl Store {
    /// Commits one event (grouped with concurrent ones).
    pub async fn accept(&self, a: Acceptance) -> Result<AcceptOutcome, StoreError> {
        match self {
            Store::Sqlite(s) => s.accept(a).await,
        }
    }

    /// An event's journey by event id or correlation id (the newest event with it).
    pub async fn journey(&self, id: &str) -> Result<Option<Journey>, StoreError> {
        match self {
            Store::Sqlite(s) => s.journey(id).await,
        }
    }

    pub async fn counts(&self) -> Result<Counts, StoreError> {
        match self {
            Store::Sqlite(s) => s.counts().await,
        }
    }

    /// True when the store answers a query and its writer is running.
    pub async fn ready(&self) -> bool {
        match self {
            Store::Sqlite(s) => s.ready().await,
        }
    }

    /// Commits everything queued, then stops the writer.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
        }
    }
}
