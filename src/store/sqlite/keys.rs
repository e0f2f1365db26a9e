//! The idempotency keys of the embedded store, in an LSM tree (`fjall`) beside the database.
//!
//! Keys are random (a Cognigy message id, a hash of the body), so in a B-tree every new key
//! lands on a random leaf and each event writes a page of its own; as the window fills, that
//! page write is most of an event's cost (measured: bench/README.md, eleventh and twelfth
//! sessions). An LSM tree writes keys in sorted runs instead, so a key costs its own bytes.
//!
//! What is kept per key: the event it made, its correlation id and when (Unix ms). The answer
//! itself stays in the database, in the event's row (schema 9; `answers`, by event id, before).
//!
//! The same keyspace holds the *correlation index* (`events show CORRELATION-ID`: the newest
//! event of a correlation id), for the same reason: correlation ids come from payloads and
//! headers in any order, and as a database index (`events_by_correlation`, moved here and
//! dropped when a store is opened) each event wrote a leaf page of its own there; moving it here cut a third of an event's
//! CPU and half its disk writes (bench/README.md, thirteenth session). An entry maps a
//! correlation id to its newest event (a later write wins), in generations as the keys are,
//! over the events' retention instead of the idempotency window.
//!
//! # Expiry
//! Keys (and correlation entries) are only ever inserted, and expire by age. They go to the newest of a few
//! *generations* (one partition each, named by the time it was started); a new generation is
//! started when the newest is a quarter of the idempotency window old (one minute at least),
//! and a generation is dropped whole once the next one started before the window's cutoff:
//! every key in it was written before its successor began, so none is live. No tombstones, no
//! compaction of expired keys. A lookup probes the live generations newest first (a Bloom
//! filter makes a miss cheap), so a key written again after its window (a new event) wins
//! over its older entry. The disk and memory they hold are bounded by the window and the
//! ingest rate, not by the events ever ingested.
//!
//! # Recovery
//! The keys are a second projection of the log (see the parent module): each write carries,
//! in the same atomic batch, the last log record it applied (`meta/applied`). Batches reach
//! the operating system as they are written (a crash of the process loses none) but are
//! flushed to disk only by [`Keys::persist`], which the checkpointer calls before it removes
//! log segments. So after a power cut the keys may be behind the database, never ahead of
//! the log they came from; opening the store applies the log from the lower of the two
//! positions, to each projection what it lacks (inserting a key again is harmless).

mod filter;

use std::path::Path;
use std::sync::Arc;

use fjall::{Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};
use parking_lot::RwLock;

/// What a key's entry says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyEntry {
    pub(super) event_id: String,
    pub(super) correlation_id: String,
    /// Unix ms.
    pub(super) created_at: i64,
}

impl KeyEntry {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(9 + self.event_id.len() + self.correlation_id.len());
        v.extend_from_slice(&self.created_at.to_le_bytes());
        v.push(u8::try_from(self.event_id.len()).unwrap_or(u8::MAX));
        v.extend_from_slice(&self.event_id.as_bytes()[..usize::from(v[8])]);
        v.extend_from_slice(self.correlation_id.as_bytes());
        v
    }

    fn decode(v: &[u8]) -> Option<KeyEntry> {
        let created_at = i64::from_le_bytes(v.get(..8)?.try_into().ok()?);
        let n = usize::from(*v.get(8)?);
        let event_id = std::str::from_utf8(v.get(9..9 + n)?).ok()?.to_string();
        let correlation_id = std::str::from_utf8(v.get(9 + n..)?).ok()?.to_string();
        Some(KeyEntry {
            event_id,
            correlation_id,
            created_at,
        })
    }
}

/// One generation: the partition, when it was started (Unix ms), and the filter of its keys
/// when this process started it (`filter`).
struct Generation {
    started: i64,
    part: PartitionHandle,
    filter: Option<Arc<filter::Filter>>,
}

/// A family of generations (see the module doc): the idempotency keys, or the correlation
/// index.
struct Family {
    prefix: &'static str,
    /// Whether the generations this process starts get a filter (the idempotency keys: every
    /// event looks one up; not the correlation index, read by an operator now and then).
    filtered: bool,
    /// How long the newest generation takes writes before a new one is started.
    generation_ms: i64,
    /// Oldest first; never empty once opened.
    generations: RwLock<Vec<Generation>>,
}

impl Family {
    fn open(
        keyspace: &Keyspace,
        prefix: &'static str,
        window_ms: i64,
        now: i64,
    ) -> Result<Family, fjall::Error> {
        let mut generations = Vec::new();
        for name in keyspace.list_partitions() {
            if let Some(started) = name.strip_prefix(prefix).and_then(|s| s.parse().ok()) {
                let part = keyspace.open_partition(&name, options(prefix))?;
                generations.push(Generation {
                    started,
                    part,
                    filter: None,
                });
            }
        }
        generations.sort_by_key(|g| g.started);
        let family = Family {
            prefix,
            filtered: prefix == PREFIX,
            generation_ms: (window_ms / 4).max(MIN_GENERATION_MS),
            generations: RwLock::new(generations),
        };
        if family.generations.read().is_empty() {
            family.start(keyspace, now)?;
        }
        Ok(family)
    }

    /// Opens (making it when missing) the generation started at `started`, in its place;
    /// returns its partition and filter.
    fn start(&self, keyspace: &Keyspace, started: i64) -> Result<Writable, fjall::Error> {
        let part =
            keyspace.open_partition(&format!("{}{started}", self.prefix), options(self.prefix))?;
        // A filter must have seen every key of its generation: only one begun empty gets one.
        let filter = if self.filtered && part.is_empty()? {
            Some(Arc::new(filter::Filter::new()))
        } else {
            None
        };
        let mut generations = self.generations.write();
        if let Some(g) = generations.iter().find(|g| g.started == started) {
            return Ok((g.part.clone(), g.filter.clone()));
        }
        let at = generations.partition_point(|g| g.started < started);
        generations.insert(
            at,
            Generation {
                started,
                part: part.clone(),
                filter: filter.clone(),
            },
        );
        Ok((part, filter))
    }

    /// The newest value of `key` (newest generation first; a generation whose filter says
    /// the key was never written there is not probed).
    fn get(&self, key: &[u8]) -> Result<Option<fjall::Slice>, fjall::Error> {
        for g in self.generations.read().iter().rev() {
            if g.filter.as_ref().is_some_and(|f| !f.may_hold(key)) {
                continue;
            }
            if let Some(v) = g.part.get(key)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// The generation that takes writes at `now` (a new one is started when it is due).
    fn newest(&self, keyspace: &Keyspace, now: i64) -> Result<Writable, fjall::Error> {
        let current = self.generations.read().last().and_then(|g| {
            (now < g.started.saturating_add(self.generation_ms))
                .then(|| (g.part.clone(), g.filter.clone()))
        });
        match current {
            Some(part) => Ok(part),
            None => self.start(keyspace, now),
        }
    }

    /// Drops the generations whose every entry was written before `cutoff` (Unix ms); returns
    /// how many. When even the newest began before it, a new one is started first (nothing
    /// may have been written for a while), so that its entries go too.
    fn expire(&self, keyspace: &Keyspace, cutoff: i64, now: i64) -> Result<usize, fjall::Error> {
        let stale = self
            .generations
            .read()
            .last()
            .is_some_and(|g| g.started < cutoff && g.started < now);
        if stale {
            self.start(keyspace, now)?;
        }
        let mut dropped = 0;
        loop {
            let old = {
                let mut generations = self.generations.write();
                // The successor's start bounds every entry of the oldest generation.
                match generations.get(1) {
                    Some(next) if next.started < cutoff => generations.remove(0),
                    _ => break,
                }
            };
            keyspace.delete_partition(old.part)?;
            dropped += 1;
        }
        Ok(dropped)
    }
}

/// A generation's partition and its filter, if it has one (every key written to the
/// partition is added to the filter first).
type Writable = (PartitionHandle, Option<Arc<filter::Filter>>);

const PREFIX: &str = "keys_";
const CORRELATION_PREFIX: &str = "corr_";
const APPLIED: &[u8] = b"applied";

/// Memory the keys may hold: memtables (all generations together) and the block cache.
const WRITE_BUFFER_BYTES: u64 = 8 * 1024 * 1024;
/// A partition's memtable is flushed at this size. Small: a lookup or insert walks a skip
/// list whose nodes are mostly cache misses, and with the correlation index beside the keys
/// two partitions take writes. From 4 MiB to 1 MiB: peak RSS over 60 s at full speed 66.9 →
/// 61.9 MiB, the keys' share of CPU (lookups, inserts, flushes, compactions) 16.9 → 14.9 %
/// (bench/README.md, thirteenth session).
const MEMTABLE_BYTES: u32 = 1024 * 1024;
const CACHE_BYTES: u64 = 4 * 1024 * 1024;

/// The size of the files compactions write. Writing one holds two hashes (16 bytes) per key
/// for its Bloom filter until the file is done: with the default 64 MiB files that was a
/// transient 16–32 MiB, and peak RSS over 60 s at full speed was 67 MiB; with 16 MiB files
/// 56 MiB at the same rate (bench/README.md, twelfth session).
const SEGMENT_BYTES: u32 = 16 * 1024 * 1024;

/// The shortest generation (see the module doc): a short window in tests must not make a
/// partition a second.
const MIN_GENERATION_MS: i64 = 60_000;

/// A correlation id longer than this is indexed by its SHA-256 (a payload's id can be as
/// long as the body; an LSM key cannot).
const MAX_CORRELATION_KEY: usize = 256;

/// A batch's entries sorted by key, the last of each key only (a later entry wins). A
/// memtable insert is mostly a walk down a skip list; in key order each walk starts where the
/// last one left the cache warm (measured: bench/README.md, thirteenth session).
fn in_key_order<K: AsRef<[u8]>, V>(entries: &mut [(K, V)]) -> impl Iterator<Item = &(K, V)> {
    // Stable: equal keys keep their order, and the last one is kept.
    entries.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
    let mut it = entries.iter().peekable();
    std::iter::from_fn(move || loop {
        let e = it.next()?;
        if it.peek().is_none_or(|n| n.0.as_ref() != e.0.as_ref()) {
            return Some(e);
        }
    })
}

/// The correlation index's key for `correlation_id`.
fn correlation_key(correlation_id: &str) -> std::borrow::Cow<'_, [u8]> {
    use sha2::Digest;
    if correlation_id.len() <= MAX_CORRELATION_KEY {
        return std::borrow::Cow::Borrowed(correlation_id.as_bytes());
    }
    // The prefix cannot begin a valid UTF-8 string, so no short id collides with it.
    let mut k = vec![0xff];
    k.extend_from_slice(&sha2::Sha256::digest(correlation_id.as_bytes()));
    std::borrow::Cow::Owned(k)
}

pub(super) struct Keys {
    keyspace: Keyspace,
    meta: PartitionHandle,
    keys: Family,
    correlations: Family,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("generations", &self.keys.generations.read().len())
            .field(
                "correlation_generations",
                &self.correlations.generations.read().len(),
            )
            .finish()
    }
}

/// A failure of the key store, as the database's callers see one.
pub(super) fn failed(e: fjall::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(std::io::Error::other(format!(
        "idempotency keys: {e}"
    ))))
}

impl Keys {
    /// Opens (creating) the keys in `dir`; `window_ms` is the idempotency window,
    /// `retention_ms` how long events are kept (the correlation index's window).
    pub(super) fn open(
        dir: &Path,
        window_ms: i64,
        retention_ms: i64,
        now: i64,
    ) -> Result<Keys, fjall::Error> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            // Keys may be personal data (a message id): readable by the owner only.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let keyspace = fjall::Config::new(dir)
            .cache_size(CACHE_BYTES)
            .max_write_buffer_size(WRITE_BUFFER_BYTES)
            .flush_workers(1)
            .compaction_workers(1)
            .open()?;
        let meta = keyspace.open_partition("meta", PartitionCreateOptions::default())?;
        let keys = Family::open(&keyspace, PREFIX, window_ms, now)?;
        let correlations = Family::open(&keyspace, CORRELATION_PREFIX, retention_ms, now)?;
        Ok(Keys {
            keyspace,
            meta,
            keys,
            correlations,
        })
    }

    /// The last log record whose keys are here; `None` when nothing was ever written (keys
    /// just made, or their directory deleted).
    pub(super) fn applied(&self) -> Result<Option<u64>, fjall::Error> {
        Ok(self
            .meta
            .get(APPLIED)?
            .and_then(|v| Some(u64::from_le_bytes(v[..].try_into().ok()?))))
    }

    /// The newest entry of `key`, live or not (the caller checks its age).
    pub(super) fn get(&self, key: &str) -> Result<Option<KeyEntry>, fjall::Error> {
        Ok(self
            .keys
            .get(key.as_bytes())?
            .and_then(|v| KeyEntry::decode(&v)))
    }

    /// The newest event of `correlation_id` still indexed (the caller checks it is kept).
    pub(super) fn event_of(&self, correlation_id: &str) -> Result<Option<String>, fjall::Error> {
        Ok(self
            .correlations
            .get(&correlation_key(correlation_id))?
            .and_then(|v| String::from_utf8(v.to_vec()).ok()))
    }

    /// Writes the key entries, the correlation index's entries (correlation id, event id; a
    /// later one wins) and the log position `applied` in one batch (the newest generations
    /// take them; new ones are started first when due).
    pub(super) fn write<'a>(
        &self,
        entries: impl Iterator<Item = (&'a str, KeyEntry)>,
        correlations: impl Iterator<Item = (&'a str, &'a str)>,
        applied: u64,
        now: i64,
    ) -> Result<(), fjall::Error> {
        let (keys, filter) = self.keys.newest(&self.keyspace, now)?;
        let (corr, _) = self.correlations.newest(&self.keyspace, now)?;
        let mut batch = self.keyspace.batch();
        let mut sorted: Vec<(&[u8], Vec<u8>)> = entries
            .map(|(key, entry)| (key.as_bytes(), entry.encode()))
            .collect();
        for (key, value) in in_key_order(&mut sorted) {
            if let Some(f) = &filter {
                f.insert(key);
            }
            batch.insert(&keys, *key, value.as_slice());
        }
        let mut sorted: Vec<(std::borrow::Cow<'_, [u8]>, &str)> = correlations
            .map(|(correlation_id, event_id)| (correlation_key(correlation_id), event_id))
            .collect();
        for (key, event_id) in in_key_order(&mut sorted) {
            batch.insert(&corr, &**key, *event_id);
        }
        batch.insert(&self.meta, APPLIED, applied.to_le_bytes());
        batch.commit()
    }

    /// Indexes events the database held before the index moved here, in their own
    /// generation started at `started` (their oldest time): every later generation, and so
    /// every entry the log writes, wins over them. The caller persists when done.
    pub(super) fn backfill_correlations(
        &self,
        started: i64,
        chunk: &[(String, String)],
    ) -> Result<(), fjall::Error> {
        let (part, _) = self.correlations.start(&self.keyspace, started)?;
        let mut batch = self.keyspace.batch();
        for (correlation_id, event_id) in chunk {
            batch.insert(&part, &*correlation_key(correlation_id), event_id.as_str());
        }
        batch.commit()
    }

    /// Drops the key generations whose every key was written before `cutoff` (Unix ms), and
    /// the correlation generations whose every entry was written before `events_cutoff`;
    /// returns how many key generations went.
    pub(super) fn expire(
        &self,
        cutoff: i64,
        events_cutoff: i64,
        now: i64,
    ) -> Result<usize, fjall::Error> {
        self.correlations
            .expire(&self.keyspace, events_cutoff, now)?;
        self.keys.expire(&self.keyspace, cutoff, now)
    }

    /// Flushes every batch written so far to disk (`fdatasync`; only to the operating system
    /// under `sync = "off"`).
    pub(super) fn persist(&self, sync: crate::config::SyncMode) -> Result<(), fjall::Error> {
        self.keyspace.persist(match sync {
            crate::config::SyncMode::Off => PersistMode::Buffer,
            _ => PersistMode::SyncData,
        })
    }

    /// Key generations live now (for tests and figures).
    #[cfg(test)]
    pub(super) fn generation_count(&self) -> usize {
        self.keys.generations.read().len()
    }

    /// Which key generations have a filter, oldest first (for tests).
    #[cfg(test)]
    fn filtered_generations(&self) -> Vec<bool> {
        let generations = self.keys.generations.read();
        generations.iter().map(|g| g.filter.is_some()).collect()
    }

    /// Correlation generations live now (for tests).
    #[cfg(test)]
    pub(super) fn correlation_generation_count(&self) -> usize {
        self.correlations.generations.read().len()
    }
}

/// A generation's options. Only the keys have Bloom filters: every event looks its key up,
/// and most look-ups miss; the correlation index is read by an operator now and then, and
/// its filters would hold about 1.3 bytes of memory per event over the whole retention
/// (seven days by default, against the keys' one).
///
/// Both are leveled, so no file is written larger than `SEGMENT_BYTES`: a file's index
/// blocks (and for the keys its Bloom hashes) are held in memory until it is done. Size-tiered
/// merges would have cut the compactor's CPU by a seventh for the correlation index (whose
/// random keys make every leveled merge rewrite a whole level), but their files grow with
/// the retention times the rate, and so would that memory (bench/README.md, twenty-sixth
/// session).
fn options(prefix: &str) -> PartitionCreateOptions {
    let bloom = (prefix == PREFIX).then_some(10);
    PartitionCreateOptions::default()
        .max_memtable_size(MEMTABLE_BYTES)
        .bloom_filter_bits(bloom)
        .compaction_strategy(fjall::compaction::Strategy::Leveled(
            fjall::compaction::Leveled {
                target_size: SEGMENT_BYTES,
                ..Default::default()
            },
        ))
}

/// The key store's directory beside a database file: `cognihook.db` → `cognihook.keys/`.
pub(super) fn dir_of(db: &Path) -> std::path::PathBuf {
    db.with_extension("keys")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(event: &str, at: i64) -> KeyEntry {
        KeyEntry {
            event_id: event.into(),
            correlation_id: format!("c-{event}"),
            created_at: at,
        }
    }

    #[test]
    fn an_entry_decodes_to_what_was_encoded() {
        let e = entry("01HZZZZZZZZZZZZZZZZZZZZZZZ", -5);
        assert_eq!(KeyEntry::decode(&e.encode()), Some(e));
        assert_eq!(KeyEntry::decode(&[1, 2, 3]), None);
    }

    #[test]
    fn keys_and_their_position_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("keys");
        let path = dir.path().join("k");
        {
            let keys = Keys::open(&path, 60_000, 60_000, 1_000).expect("keys");
            assert_eq!(keys.applied().expect("keys"), None);
            keys.write(
                [("a", entry("e1", 1_000))].into_iter(),
                std::iter::empty(),
                7,
                1_000,
            )
            .expect("keys");
            keys.persist(crate::config::SyncMode::Full).expect("keys");
        }
        let keys = Keys::open(&path, 60_000, 60_000, 2_000).expect("keys");
        assert_eq!(keys.applied().expect("keys"), Some(7));
        assert_eq!(keys.get("a").expect("keys"), Some(entry("e1", 1_000)));
        assert_eq!(keys.get("b").expect("keys"), None);
    }

    #[test]
    fn only_generations_begun_empty_by_this_process_are_filtered_and_all_find_their_keys() {
        let dir = tempfile::tempdir().expect("keys");
        let path = dir.path().join("k");
        let many = |from: usize| (from..from + 2_000).map(|i| format!("key-{i}"));
        {
            // Window 4 min: a generation per minute.
            let keys = Keys::open(&path, 240_000, 240_000, 0).expect("keys");
            assert_eq!(keys.filtered_generations(), [true]);
            let written: Vec<String> = many(0).collect();
            keys.write(
                written.iter().map(|k| (k.as_str(), entry(k, 0))),
                std::iter::empty(),
                1,
                0,
            )
            .expect("keys");
            for k in &written {
                assert_eq!(keys.get(k).expect("keys"), Some(entry(k, 0)), "{k}");
            }
            assert!(many(2_000).all(|k| keys.get(&k).expect("keys").is_none()));
            keys.persist(crate::config::SyncMode::Full).expect("keys");
        }
        // Reopened, the generation's filter is gone with the process: it is probed, and a new
        // generation begun now gets one.
        let keys = Keys::open(&path, 240_000, 240_000, 30_000).expect("keys");
        assert_eq!(keys.filtered_generations(), [false]);
        assert!(many(0).all(|k| keys.get(&k).expect("keys").is_some()));
        keys.write(
            [("new", entry("new", 60_000))].into_iter(),
            std::iter::empty(),
            2,
            60_000,
        )
        .expect("keys");
        assert_eq!(keys.filtered_generations(), [false, true]);
        assert_eq!(keys.get("new").expect("keys"), Some(entry("new", 60_000)));
        assert!(many(0).all(|k| keys.get(&k).expect("keys").is_some()));
        assert!(many(2_000).all(|k| keys.get(&k).expect("keys").is_none()));
    }

    #[test]
    fn the_newest_generation_wins_and_old_generations_are_dropped_whole() {
        let dir = tempfile::tempdir().expect("keys");
        // Window 4 min: a generation per minute.
        let keys = Keys::open(dir.path(), 240_000, 240_000, 0).expect("keys");
        keys.write(
            [("k", entry("old", 0))].into_iter(),
            std::iter::empty(),
            1,
            0,
        )
        .expect("keys");
        keys.write(
            [("x", entry("x", 30_000))].into_iter(),
            std::iter::empty(),
            2,
            30_000,
        )
        .expect("keys");
        assert_eq!(keys.generation_count(), 1);
        keys.write(
            [("k", entry("new", 60_000))].into_iter(),
            std::iter::empty(),
            3,
            60_000,
        )
        .expect("keys");
        assert_eq!(keys.generation_count(), 2);
        assert_eq!(keys.get("k").expect("keys").expect("keys").event_id, "new");
        // The second generation started at 60 s: the first goes once the cutoff (now minus
        // the window) passes that.
        assert_eq!(keys.expire(60_000, i64::MIN, 300_000).expect("keys"), 0);
        assert_eq!(keys.get("x").expect("keys").expect("keys").event_id, "x");
        assert_eq!(keys.expire(60_001, i64::MIN, 300_001).expect("keys"), 1);
        assert_eq!(keys.get("x").expect("keys"), None);
        assert_eq!(keys.get("k").expect("keys").expect("keys").event_id, "new");
        // Since the newest generation began before the cutoff, an empty one was started so
        // that it can go in its turn, with its keys, though nothing was written meanwhile.
        assert_eq!(keys.generation_count(), 2);
        assert_eq!(keys.expire(300_000, i64::MIN, 540_000).expect("keys"), 0);
        assert_eq!(keys.get("k").expect("keys").expect("keys").event_id, "new");
        assert_eq!(keys.expire(300_002, i64::MIN, 540_002).expect("keys"), 1);
        assert_eq!(keys.get("k").expect("keys"), None);
        keys.write(
            [("k", entry("later", 540_003))].into_iter(),
            std::iter::empty(),
            4,
            540_003,
        )
        .expect("keys");
        assert_eq!(
            keys.get("k").expect("keys").expect("keys").event_id,
            "later"
        );
    }

    #[test]
    fn a_correlation_finds_its_newest_event_and_older_events_lose_to_the_log() {
        let dir = tempfile::tempdir().expect("keys");
        // Retention 4 min: a correlation generation per minute.
        let keys = Keys::open(dir.path(), 60_000, 240_000, 100_000).expect("keys");
        let long = "c".repeat(MAX_CORRELATION_KEY + 1);
        let longer = "c".repeat(MAX_CORRELATION_KEY + 2);
        keys.write(
            std::iter::empty(),
            [("c1", "e1"), ("c1", "e2"), (long.as_str(), "e3")].into_iter(),
            1,
            100_000,
        )
        .expect("keys");
        assert_eq!(keys.event_of("c1").expect("keys").as_deref(), Some("e2"));
        assert_eq!(keys.event_of(&long).expect("keys").as_deref(), Some("e3"));
        assert_eq!(keys.event_of(&longer).expect("keys"), None);
        // Events from before the index moved here: older than anything the log wrote.
        let old = [
            ("c1".to_string(), "e0".to_string()),
            ("c0".to_string(), "e-old".to_string()),
        ];
        keys.backfill_correlations(10_000, &old).expect("keys");
        assert_eq!(keys.event_of("c1").expect("keys").as_deref(), Some("e2"));
        assert_eq!(keys.event_of("c0").expect("keys").as_deref(), Some("e-old"));
        assert_eq!(keys.correlation_generation_count(), 2);
        // The backfilled generation goes once the next one began before the events' cutoff;
        // the keys' cutoff alone does not touch the index.
        assert_eq!(keys.expire(i64::MIN, 100_000, 400_000).expect("keys"), 0);
        assert_eq!(keys.event_of("c0").expect("keys").as_deref(), Some("e-old"));
        keys.expire(i64::MIN, 100_001, 400_000).expect("keys");
        assert_eq!(keys.event_of("c0").expect("keys"), None);
        assert_eq!(keys.event_of("c1").expect("keys").as_deref(), Some("e2"));
    }

    #[test]
    fn entries_are_found_once_flushed_to_files_with_and_without_bloom_filters() {
        let dir = tempfile::tempdir().expect("keys");
        let keys = Keys::open(dir.path(), 60_000, 240_000, 1_000).expect("keys");
        keys.write(
            [("k1", entry("e1", 1_000))].into_iter(),
            [("c1", "e1")].into_iter(),
            1,
            1_000,
        )
        .expect("keys");
        for family in [&keys.keys, &keys.correlations] {
            for g in family.generations.read().iter() {
                g.part.rotate_memtable_and_wait().expect("flush");
                assert_eq!(g.part.segment_count(), 1);
            }
        }
        assert_eq!(keys.get("k1").expect("keys"), Some(entry("e1", 1_000)));
        assert_eq!(keys.get("k2").expect("keys"), None);
        assert_eq!(keys.event_of("c1").expect("keys").as_deref(), Some("e1"));
        assert_eq!(keys.event_of("c2").expect("keys"), None);
    }
}
