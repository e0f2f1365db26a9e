//! The idempotency keys of the embedded store, in an LSM tree (`fjall`) beside the database.
//!
//! Keys are random (a Cognigy message id, a hash of the body), so in a B-tree every new key
//! lands on a random leaf and each event writes a page of its own; as the window fills, that
//! page write is most of an event's cost (measured: bench/README.md, eleventh and twelfth
//! sessions). An LSM tree writes keys in sorted runs instead, so a key costs its own bytes.
//!
//! What is kept per key: the event it made and when (Unix ms), 25 bytes, under a 16-byte
//! keyed hash of the key (SipHash-2-4, 128 bits, with a random secret made with the key store
//! and kept in it: no one without the secret can make two keys collide). Keys as given are up
//! to ~300 bytes (a route, a header's name and a value, or a body's hex SHA-256), and random
//! keys make every leveled merge rewrite what is already stored, so an entry's size is what
//! the compactor pays for, again at every level (bench/README.md, thirty-fourth session). The
//! answer and the correlation id stay in the database, in the event's row (schema 9;
//! `answers`, by event id, before). Generations written before keys were hashed (`keys_…`:
//! the key as given, with the correlation id in the entry) are still read, until they expire;
//! a store that has one starts a hashed generation when it opens.
//!
//! The same keyspace holds the *correlation index* (`events show CORRELATION-ID`: the newest
//! event of a correlation id), for the same reason: correlation ids come from payloads and
//! headers in any order, and as a database index (`events_by_correlation`, moved here and
//! dropped when a store is opened) each event wrote a leaf page of its own there; moving it here cut a third of an event's
//! CPU and half its disk writes (bench/README.md, thirteenth session). An entry maps a
//! correlation id (its keyed hash, as for the keys) to its newest event (a later write wins),
//! in generations as the keys are, over the events' retention instead of the idempotency
//! window. Generations written before (`corr_…`: the id as given, or the SHA-256 of a long
//! one, and the event id as text) are read until they expire.
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

/// An event id as a hashed generation keeps it: a tag, then a ULID's 16 bytes or the text.
fn encode_id(event_id: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(17);
    let mut text = [0u8; ulid::ULID_LEN];
    match ulid::Ulid::from_string(event_id) {
        // Only when the text comes back the same (Crockford's letters read in any case).
        Ok(u) if u.array_to_str(&mut text) == event_id => {
            v.push(ULID_ID);
            v.extend_from_slice(&u.to_bytes());
        }
        _ => {
            v.push(TEXT_ID);
            v.extend_from_slice(event_id.as_bytes());
        }
    }
    v
}

fn decode_id(v: &[u8]) -> Option<String> {
    match (*v.first()?, &v[1..]) {
        (ULID_ID, id) => Some(ulid::Ulid::from_bytes(id.try_into().ok()?).to_string()),
        (TEXT_ID, id) => Some(std::str::from_utf8(id).ok()?.to_string()),
        _ => None,
    }
}

/// What a key's entry says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyEntry {
    pub(super) event_id: String,
    /// Only in entries written before keys were hashed; the event's row has it.
    pub(super) correlation_id: Option<String>,
    /// Unix ms.
    pub(super) created_at: i64,
}

/// An entry's event id, after its time: a ULID's 16 bytes (every id the gateway makes)...
const ULID_ID: u8 = 0;
/// ...or any other id's UTF-8 text.
const TEXT_ID: u8 = 1;

impl KeyEntry {
    /// A hashed generation's entry: the time, then the event id (`encode_id`).
    fn encode(event_id: &str, created_at: i64) -> Vec<u8> {
        let mut v = created_at.to_le_bytes().to_vec();
        v.extend_from_slice(&encode_id(event_id));
        v
    }

    fn decode(v: &[u8]) -> Option<KeyEntry> {
        let created_at = i64::from_le_bytes(v.get(..8)?.try_into().ok()?);
        let event_id = decode_id(v.get(8..)?)?;
        Some(KeyEntry {
            event_id,
            correlation_id: None,
            created_at,
        })
    }

    /// An entry of a generation written before keys were hashed: the time, the event id's
    /// length (one byte), the event id, the correlation id.
    fn decode_plain(v: &[u8]) -> Option<KeyEntry> {
        let created_at = i64::from_le_bytes(v.get(..8)?.try_into().ok()?);
        let n = usize::from(*v.get(8)?);
        let event_id = std::str::from_utf8(v.get(9..9 + n)?).ok()?.to_string();
        let correlation_id = std::str::from_utf8(v.get(9 + n..)?).ok()?.to_string();
        Some(KeyEntry {
            event_id,
            correlation_id: Some(correlation_id),
            created_at,
        })
    }
}

/// One generation: the partition, when it was started (Unix ms), the filter of its keys
/// when this process started it (`filter`), and whether it holds keys by their hash.
struct Generation {
    started: i64,
    part: PartitionHandle,
    filter: Option<Arc<filter::Filter>>,
    hashed: bool,
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
    /// Opens the generations named with `prefix` (keys held by hash) and with
    /// `plain_prefix` (written before keys were hashed: keys as given).
    fn open(
        keyspace: &Keyspace,
        (prefix, plain_prefix): (&'static str, &'static str),
        window_ms: i64,
        now: i64,
    ) -> Result<Family, fjall::Error> {
        let mut generations = Vec::new();
        for name in keyspace.list_partitions() {
            let (started, hashed) = match name.strip_prefix(prefix) {
                Some(started) => (started, true),
                None => match name.strip_prefix(plain_prefix) {
                    Some(started) => (started, false),
                    None => continue,
                },
            };
            if let Ok(started) = started.parse() {
                let part = keyspace.open_partition(&name, options(prefix))?;
                generations.push(Generation {
                    started,
                    part,
                    filter: None,
                    hashed,
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
        // Writes go to the newest generation, which must hold keys by hash: after the newest
        // of the older form (whatever the clock says now), whose keys it then bounds.
        let newest = family
            .generations
            .read()
            .last()
            .map(|g| (g.started, g.hashed));
        match newest {
            None => {
                family.start(keyspace, now)?;
            }
            Some((started, false)) => {
                family.start(keyspace, now.max(started + 1))?;
            }
            Some((_, true)) => {}
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
        if let Some(g) = generations
            .iter()
            .find(|g| g.started == started && g.hashed)
        {
            return Ok((g.part.clone(), g.filter.clone()));
        }
        let at = generations.partition_point(|g| g.started <= started);
        generations.insert(
            at,
            Generation {
                started,
                part: part.clone(),
                filter: filter.clone(),
                hashed: true,
            },
        );
        Ok((part, filter))
    }

    /// The newest value of a key, `hashed` in the generations that hold keys by hash and
    /// `plain` in the others (newest generation first; a generation whose filter says the key
    /// was never written there is not probed); and whether it came from a hashed one.
    fn get(
        &self,
        plain: &[u8],
        hashed: &[u8],
    ) -> Result<Option<(fjall::Slice, bool)>, fjall::Error> {
        for g in self.generations.read().iter().rev() {
            let key = if g.hashed { hashed } else { plain };
            if g.filter.as_ref().is_some_and(|f| !f.may_hold(key)) {
                continue;
            }
            if let Some(v) = g.part.get(key)? {
                return Ok(Some((v, g.hashed)));
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

/// The idempotency keys' generations, keys hashed (see the module doc)...
const PREFIX: &str = "kh_";
/// ...and those written before keys were hashed.
const PLAIN_PREFIX: &str = "keys_";
/// The same for the correlation index.
const CORRELATION_PREFIX: &str = "ch_";
const PLAIN_CORRELATION_PREFIX: &str = "corr_";
const APPLIED: &[u8] = b"applied";
/// The secret of the keys' hash (16 bytes), in `meta`.
const HASH_SECRET: &[u8] = b"hash_secret";

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

/// In generations written before correlation ids were hashed, an id longer than this was
/// indexed by its SHA-256 (a payload's id can be as long as the body; an LSM key cannot).
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

/// What a generation written before correlation ids were hashed holds `correlation_id` by.
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
    hasher: siphasher::sip128::SipHasher24,
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
        let secret: [u8; 16] = match meta.get(HASH_SECRET)? {
            Some(v) => v[..].try_into().map_err(|_| {
                std::io::Error::other("the hash secret in the key store is not 16 bytes")
            })?,
            None => {
                use ring::rand::SecureRandom;
                let mut secret = [0u8; 16];
                ring::rand::SystemRandom::new()
                    .fill(&mut secret)
                    .map_err(|_| std::io::Error::other("no random bytes for the hash secret"))?;
                meta.insert(HASH_SECRET, secret)?;
                // On disk before any key hashed with it.
                keyspace.persist(PersistMode::SyncAll)?;
                secret
            }
        };
        let keys = Family::open(&keyspace, (PREFIX, PLAIN_PREFIX), window_ms, now)?;
        let correlations = Family::open(
            &keyspace,
            (CORRELATION_PREFIX, PLAIN_CORRELATION_PREFIX),
            retention_ms,
            now,
        )?;
        Ok(Keys {
            keyspace,
            meta,
            keys,
            correlations,
            hasher: siphasher::sip128::SipHasher24::new_with_key(&secret),
        })
    }

    /// What a hashed generation holds `key` by.
    fn hash(&self, key: &str) -> [u8; 16] {
        self.hasher.hash(key.as_bytes()).as_bytes()
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
        Ok(match self.keys.get(key.as_bytes(), &self.hash(key))? {
            Some((v, true)) => KeyEntry::decode(&v),
            Some((v, false)) => KeyEntry::decode_plain(&v),
            None => None,
        })
    }

    /// The newest event of `correlation_id` still indexed (the caller checks it is kept).
    pub(super) fn event_of(&self, correlation_id: &str) -> Result<Option<String>, fjall::Error> {
        Ok(
            match self
                .correlations
                .get(&correlation_key(correlation_id), &self.hash(correlation_id))?
            {
                Some((v, true)) => decode_id(&v),
                Some((v, false)) => String::from_utf8(v.to_vec()).ok(),
                None => None,
            },
        )
    }

    /// Writes the key entries (key, the event it made, when), the correlation index's
    /// entries (correlation id, event id; a later one wins) and the log position `applied` in
    /// one batch (the newest generations take them; new ones are started first when due).
    pub(super) fn write<'a>(
        &self,
        entries: impl Iterator<Item = (&'a str, &'a str, i64)>,
        correlations: impl Iterator<Item = (&'a str, &'a str)>,
        applied: u64,
        now: i64,
    ) -> Result<(), fjall::Error> {
        let (keys, filter) = self.keys.newest(&self.keyspace, now)?;
        let (corr, _) = self.correlations.newest(&self.keyspace, now)?;
        let mut batch = self.keyspace.batch();
        let mut sorted: Vec<([u8; 16], Vec<u8>)> = entries
            .map(|(key, event_id, at)| (self.hash(key), KeyEntry::encode(event_id, at)))
            .collect();
        for (key, value) in in_key_order(&mut sorted) {
            if let Some(f) = &filter {
                f.insert(key);
            }
            batch.insert(&keys, key.as_slice(), value.as_slice());
        }
        let mut sorted: Vec<([u8; 16], Vec<u8>)> = correlations
            .map(|(correlation_id, event_id)| (self.hash(correlation_id), encode_id(event_id)))
            .collect();
        for (key, event_id) in in_key_order(&mut sorted) {
            batch.insert(&corr, key.as_slice(), event_id.as_slice());
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
            batch.insert(&part, self.hash(correlation_id), encode_id(event_id));
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
            correlation_id: None,
            created_at: at,
        }
    }

    /// An entry as versions before hashed keys wrote it.
    fn plain_entry(event: &str, correlation: &str, at: i64) -> Vec<u8> {
        let mut v = at.to_le_bytes().to_vec();
        v.push(u8::try_from(event.len()).expect("short"));
        v.extend_from_slice(event.as_bytes());
        v.extend_from_slice(correlation.as_bytes());
        v
    }

    #[test]
    fn an_entry_decodes_to_what_was_encoded() {
        let ulid = "01HZZZZZZZZZZZZZZZZZZZZZZZ";
        // A ULID in lower case reads as one but would come back in upper case: kept as text.
        for id in [ulid, "01hzzzzzzzzzzzzzzzzzzzzzzz", "not-a-ulid", ""] {
            assert_eq!(
                KeyEntry::decode(&KeyEntry::encode(id, -5)),
                Some(entry(id, -5)),
                "{id}"
            );
        }
        assert_eq!(KeyEntry::encode(ulid, 1).len(), 25, "a ULID in 16 bytes");
        assert_eq!(KeyEntry::decode(&[1, 2, 3]), None);
        assert_eq!(KeyEntry::decode(&[0; 12]), None, "a ULID cut short");
        assert_eq!(
            KeyEntry::decode_plain(&plain_entry("e1", "c1", -5)),
            Some(KeyEntry {
                event_id: "e1".into(),
                correlation_id: Some("c1".into()),
                created_at: -5,
            })
        );
    }

    #[test]
    fn keys_written_before_they_were_hashed_are_found_until_they_expire() {
        let dir = tempfile::tempdir().expect("keys");
        let path = dir.path().join("k");
        {
            // A key store as an earlier version left it: a generation of keys as given.
            let keyspace = fjall::Config::new(&path).open().expect("keys");
            let part = keyspace
                .open_partition("keys_1000", options(PLAIN_PREFIX))
                .expect("keys");
            part.insert("old", plain_entry("e1", "c1", 1_000))
                .expect("keys");
            // And of correlation ids as given (a long one by its SHA-256), events as text.
            let corr = keyspace
                .open_partition("corr_1000", options(PLAIN_CORRELATION_PREFIX))
                .expect("keys");
            corr.insert("c1", "e1").expect("keys");
            let long = "c".repeat(MAX_CORRELATION_KEY + 1);
            corr.insert(&*correlation_key(&long), "e-long")
                .expect("keys");
            keyspace.persist(PersistMode::SyncAll).expect("keys");
        }
        // Window 4 min: a generation per minute.
        let keys = Keys::open(&path, 240_000, 240_000, 2_000).expect("keys");
        assert_eq!(
            keys.filtered_generations(),
            [false, true],
            "a hashed one began"
        );
        let old = KeyEntry {
            event_id: "e1".into(),
            correlation_id: Some("c1".into()),
            created_at: 1_000,
        };
        assert_eq!(keys.get("old").expect("keys"), Some(old));
        let long = "c".repeat(MAX_CORRELATION_KEY + 1);
        assert_eq!(keys.event_of("c1").expect("keys").as_deref(), Some("e1"));
        assert_eq!(
            keys.event_of(&long).expect("keys").as_deref(),
            Some("e-long")
        );
        assert_eq!(keys.correlation_generation_count(), 2, "a hashed one began");
        keys.write(
            [("new", "e2", 2_000)].into_iter(),
            std::iter::empty(),
            1,
            2_000,
        )
        .expect("keys");
        assert_eq!(keys.get("new").expect("keys"), Some(entry("e2", 2_000)));
        // Held by its hash, not as given.
        let newest = {
            let generations = keys.keys.generations.read();
            generations.last().expect("a generation").part.clone()
        };
        assert!(newest.get("new").expect("keys").is_none());
        assert!(newest.get(keys.hash("new")).expect("keys").is_some());
        let ulid = "01HZZZZZZZZZZZZZZZZZZZZZZZ";
        keys.write(std::iter::empty(), [("c1", ulid)].into_iter(), 2, 2_000)
            .expect("keys");
        assert_eq!(keys.event_of("c1").expect("keys").as_deref(), Some(ulid));
        let newest_corr = {
            let generations = keys.correlations.generations.read();
            generations.last().expect("a generation").part.clone()
        };
        assert!(newest_corr.get("c1").expect("keys").is_none());
        assert_eq!(
            newest_corr
                .get(keys.hash("c1"))
                .expect("keys")
                .map(|v| v.len()),
            Some(17),
            "a ULID in 16 bytes and its tag"
        );
        keys.persist(crate::config::SyncMode::Full).expect("keys");
        drop((keys, newest, newest_corr));
        // The secret stays with the store: reopened, the key is found, and the newest
        // generation (hashed) goes on taking writes.
        let keys = Keys::open(&path, 240_000, 240_000, 3_000).expect("keys");
        assert_eq!(keys.generation_count(), 2);
        assert_eq!(keys.get("new").expect("keys"), Some(entry("e2", 2_000)));
        // A key written again wins over its older entry; the old generation goes by age.
        keys.write(
            [("old", "e3", 3_000)].into_iter(),
            std::iter::empty(),
            2,
            3_000,
        )
        .expect("keys");
        assert_eq!(keys.get("old").expect("keys"), Some(entry("e3", 3_000)));
        assert_eq!(keys.event_of("c1").expect("keys").as_deref(), Some(ulid));
        assert_eq!(
            keys.event_of(&long).expect("keys").as_deref(),
            Some("e-long")
        );
        assert_eq!(keys.expire(2_001, 2_001, 242_001).expect("keys"), 1);
        assert!(keys.keys.generations.read().iter().all(|g| g.hashed));
        assert!(keys
            .correlations
            .generations
            .read()
            .iter()
            .all(|g| g.hashed));
        assert_eq!(keys.get("old").expect("keys"), Some(entry("e3", 3_000)));
        assert_eq!(keys.event_of("c1").expect("keys").as_deref(), Some(ulid));
        assert_eq!(keys.event_of(&long).expect("keys"), None);
    }

    #[test]
    fn keys_and_their_position_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("keys");
        let path = dir.path().join("k");
        {
            let keys = Keys::open(&path, 60_000, 60_000, 1_000).expect("keys");
            assert_eq!(keys.applied().expect("keys"), None);
            keys.write(
                [("a", "e1", 1_000)].into_iter(),
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
                written.iter().map(|k| (k.as_str(), k.as_str(), 0)),
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
            [("new", "new", 60_000)].into_iter(),
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
        keys.write([("k", "old", 0)].into_iter(), std::iter::empty(), 1, 0)
            .expect("keys");
        keys.write(
            [("x", "x", 30_000)].into_iter(),
            std::iter::empty(),
            2,
            30_000,
        )
        .expect("keys");
        assert_eq!(keys.generation_count(), 1);
        keys.write(
            [("k", "new", 60_000)].into_iter(),
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
            [("k", "later", 540_003)].into_iter(),
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
            [("k1", "e1", 1_000)].into_iter(),
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
