//! The idempotency keys of the embedded store, in sorted runs beside the database (`runs`;
//! before schema 13 in an LSM tree, `fjall`, whose generations are read until they expire).
//!
//! Keys are random (a Cognigy message id, a hash of the body), so in a B-tree every new key
//! lands on a random leaf and each event writes a page of its own; as the window fills, that
//! page write is most of an event's cost (measured: bench/README.md, eleventh and twelfth
//! sessions). Sorted runs, merged in the background, make a key cost its own bytes; a
//! structure made for these entries (fixed-size hashes written in sorted batches and dropped
//! by generation) does without the tree's skip lists, journal and leveled merges
//! (bench/README.md, thirty-sixth session).
//!
//! What is kept per key: the event it made and when (Unix ms), 25 bytes, under a 16-byte
//! keyed hash of the key (SipHash-2-4, 128 bits, with a random secret made with the key store
//! and kept in it, in the file `secret`, on disk before any key is hashed with it; in the
//! tree's `meta` in a store made before schema 14: no one without the secret can make two
//! keys collide). Keys as given are up
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
//! *generations* (a set of runs each, or a partition of the tree, named by the time it was
//! started); a new generation is
//! started when the newest is a quarter of the idempotency window old (one minute at least),
//! and a generation is dropped whole once the next one started before the window's cutoff:
//! every key in it was written before its successor began, so none is live. No tombstones, no
//! compaction of expired keys. A lookup probes the live generations newest first (a Bloom
//! filter makes a miss cheap), so a key written again after its window (a new event) wins
//! over its older entry. The disk and memory they hold are bounded by the window and the
//! ingest rate, not by the events ever ingested.
//!
//! # Recovery
//! The keys are a second projection of the log (see the parent module): each write records
//! the last log record it applied, and [`Keys::persist`], which the checkpointer calls before
//! it removes log segments, makes every write so far durable together with that position (the
//! runs' manifest; `meta/applied` in the tree before schema 13). What was written after the
//! last persist is lost with the process (a crash or a power cut), and its log records are
//! still there. So the keys may be behind the database, never ahead of the log they came
//! from; opening the store applies the log from the lower of the two positions, to each
//! projection what it lacks (writing a key again is harmless: see `runs`).

mod filter;
mod runs;

use std::path::Path;
use std::sync::Arc;

use fjall::{Keyspace, PartitionCreateOptions, PartitionHandle};
use parking_lot::RwLock;

/// An event id as a hashed generation keeps it: a tag, then a ULID's 16 bytes or the text.
fn encode_id_into(event_id: &str, v: &mut Vec<u8>) {
    match crate::event_id::canonical_ulid(event_id) {
        Some(bytes) => {
            v.push(ULID_ID);
            v.extend_from_slice(&bytes);
        }
        None => {
            v.push(TEXT_ID);
            v.extend_from_slice(event_id.as_bytes());
        }
    }
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
    /// A hashed generation's entry: the time, then the event id (`encode_id_into`).
    fn encode_into(event_id: &str, created_at: i64, v: &mut Vec<u8>) {
        v.extend_from_slice(&created_at.to_le_bytes());
        encode_id_into(event_id, v);
    }

    #[cfg(test)]
    fn encode(event_id: &str, created_at: i64) -> Vec<u8> {
        let mut v = Vec::new();
        KeyEntry::encode_into(event_id, created_at, &mut v);
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

/// Where a generation's entries are: a partition of the tree (written before schema 13; keys
/// by hash or, before schema 11, as given), read until it expires; or runs (see `runs`).
enum Store {
    Tree { part: PartitionHandle, hashed: bool },
    Runs(Arc<runs::Shelf>),
}

/// One generation: where its entries are, when it was started (Unix ms), and the filter of
/// its keys when this process started it (`filter`).
struct Generation {
    started: i64,
    store: Store,
    filter: Option<Arc<filter::Filter>>,
}

/// A family of generations (see the module doc): the idempotency keys, or the correlation
/// index.
struct Family {
    kind: runs::Kind,
    /// Whether the generations this process starts get a filter (the idempotency keys: every
    /// event looks one up; not the correlation index, read by an operator now and then).
    filtered: bool,
    /// How long the newest generation takes writes before a new one is started.
    generation_ms: i64,
    /// Oldest first; never empty once opened, and the newest is always one of runs.
    generations: RwLock<Vec<Generation>>,
}

impl Family {
    /// Opens the generations of `kind`: those of runs, and the tree's partitions named with
    /// `prefix` (keys held by hash) and with `plain_prefix` (keys as given).
    fn open(
        keyspace: Option<&Keyspace>,
        runs: &runs::Runs,
        (kind, prefix, plain_prefix): (runs::Kind, &'static str, &'static str),
        window_ms: i64,
        now: i64,
    ) -> Result<Family, fjall::Error> {
        let mut generations = Vec::new();
        let names = keyspace.map(|k| k.list_partitions()).unwrap_or_default();
        for name in names {
            let (started, hashed) = match name.strip_prefix(prefix) {
                Some(started) => (started, true),
                None => match name.strip_prefix(plain_prefix) {
                    Some(started) => (started, false),
                    None => continue,
                },
            };
            if let (Ok(started), Some(keyspace)) = (started.parse(), keyspace) {
                let part = keyspace.open_partition(&name, options(prefix))?;
                generations.push(Generation {
                    started,
                    store: Store::Tree { part, hashed },
                    filter: None,
                });
            }
        }
        for (started, shelf) in runs.shelves(kind) {
            generations.push(Generation {
                started,
                store: Store::Runs(shelf),
                filter: None,
            });
        }
        generations.sort_by_key(|g| g.started);
        let family = Family {
            kind,
            filtered: kind == runs::Kind::Keys,
            generation_ms: (window_ms / 4).max(MIN_GENERATION_MS),
            generations: RwLock::new(generations),
        };
        // Writes go to a generation of runs begun empty by this process, so that it has a
        // filter: a new key is then known to be new without probing the runs (up to
        // `runs::PENDING_MAX` batches and a Bloom filter per run) of the generation that took
        // writes before the restart, which is merged into one run instead. It starts after the
        // newest found (whatever the clock says now), whose keys it then bounds; an empty
        // newest generation of runs just gets a filter.
        let newest = family.generations.read().last().map(|g| match &g.store {
            Store::Runs(shelf) if shelf.is_empty() => None,
            _ => Some(g.started),
        });
        match newest {
            None => {
                family.start(runs, now);
            }
            Some(Some(started)) => {
                family.start(runs, now.max(started + 1));
            }
            Some(None) => {
                if let Some(g) = family.generations.write().last_mut() {
                    if family.filtered {
                        g.filter = Some(Arc::new(filter::Filter::new()));
                    }
                }
            }
        }
        Ok(family)
    }

    /// Starts (or finds) the generation of runs started at `started`, in its place; returns
    /// its shelf and filter.
    fn start(&self, runs: &runs::Runs, started: i64) -> Writable {
        let shelf = runs.start(self.kind, started);
        // A filter must have seen every key of its generation: only one begun empty gets one.
        let filter = (self.filtered && shelf.is_empty()).then(|| Arc::new(filter::Filter::new()));
        let mut generations = self.generations.write();
        if let Some(g) = generations.iter().find(|g| g.started == started) {
            if let Store::Runs(s) = &g.store {
                return (s.clone(), g.filter.clone());
            }
        }
        let at = generations.partition_point(|g| g.started <= started);
        generations.insert(
            at,
            Generation {
                started,
                store: Store::Runs(shelf.clone()),
                filter: filter.clone(),
            },
        );
        (shelf, filter)
    }

    /// The newest value of a key, `hashed` where keys are held by hash and `plain` in the
    /// tree's oldest generations (newest generation first; a generation whose filter says the
    /// key was never written there is not probed); and whether it is a hashed entry.
    fn get(
        &self,
        plain: &[u8],
        hashed: &[u8; 16],
    ) -> Result<Option<(Vec<u8>, bool)>, fjall::Error> {
        for g in self.generations.read().iter().rev() {
            if g.filter.as_ref().is_some_and(|f| !f.may_hold(hashed)) {
                continue;
            }
            let found = match &g.store {
                Store::Runs(shelf) => shelf.get(hashed)?.map(|v| (v, true)),
                Store::Tree { part, hashed: true } => part.get(hashed)?.map(|v| (v.to_vec(), true)),
                Store::Tree {
                    part,
                    hashed: false,
                } => part.get(plain)?.map(|v| (v.to_vec(), false)),
            };
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// The generation that takes writes at `now` (a new one is started when it is due).
    fn newest(&self, runs: &runs::Runs, now: i64) -> Writable {
        let current = self.generations.read().last().and_then(|g| match &g.store {
            Store::Runs(shelf) if now < g.started.saturating_add(self.generation_ms) => {
                Some((shelf.clone(), g.filter.clone()))
            }
            _ => None,
        });
        match current {
            Some(w) => w,
            None => {
                let newest = self.generations.read().last().map_or(now, |g| g.started);
                // Never before the newest: a clock set back must not start one behind it.
                self.start(runs, now.max(newest))
            }
        }
    }

    /// Drops the generations whose every entry was written before `cutoff` (Unix ms); returns
    /// how many. When even the newest began before it, a new one is started first (nothing
    /// may have been written for a while), so that its entries go too.
    fn expire(
        &self,
        keyspace: Option<&Keyspace>,
        runs: &runs::Runs,
        cutoff: i64,
        now: i64,
    ) -> Result<usize, fjall::Error> {
        let stale = self
            .generations
            .read()
            .last()
            .is_some_and(|g| g.started < cutoff && g.started < now);
        if stale {
            self.start(runs, now);
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
            match old.store {
                Store::Tree { part, .. } => match keyspace {
                    Some(keyspace) => keyspace.delete_partition(part)?,
                    None => unreachable!("a tree generation comes from the tree"),
                },
                Store::Runs(shelf) => runs.drop_generation(&shelf),
            }
            dropped += 1;
        }
        Ok(dropped)
    }
}

/// A generation's shelf of runs and its filter, if it has one (every key written to the
/// generation is added to the filter first).
type Writable = (Arc<runs::Shelf>, Option<Arc<filter::Filter>>);

/// The idempotency keys' generations, keys hashed (see the module doc)...
const PREFIX: &str = "kh_";
/// ...and those written before keys were hashed.
const PLAIN_PREFIX: &str = "keys_";
/// The same for the correlation index.
const CORRELATION_PREFIX: &str = "ch_";
const PLAIN_CORRELATION_PREFIX: &str = "corr_";
/// The tree's last log record applied, in `meta` (stores before schema 13; the runs'
/// manifest has it since).
const APPLIED: &[u8] = b"applied";
/// The runs' directory, inside the key store's.
const RUNS_DIR: &str = "runs";
/// The secret of the keys' hash (16 bytes), in the tree's `meta` (stores made before schema
/// 14)...
const HASH_SECRET: &[u8] = b"hash_secret";
/// ...and in this file of the keys' directory (written for every store since).
const SECRET_FILE: &str = "secret";
const SECRET_TMP: &str = "secret.tmp";
/// The file `fjall` writes first in a directory it makes: a tree is there.
const TREE_MARK: &str = "version";
/// The tree's other files: its journals, and a folder per partition (`meta`, generations).
const TREE_DIRS: [&str; 2] = ["journals", "partitions"];
/// A partition `fjall` deleted, whose folder was not removed yet.
const TREE_DELETED_MARK: &str = ".deleted";

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
    /// The tree of a store from before schema 14 (`None` for one made since, see `open`).
    tree: Option<Tree>,
    runs: Arc<runs::Runs>,
    /// Merges runs in the background; stopped and joined when the keys are dropped.
    merger: Option<std::thread::JoinHandle<()>>,
    keys: Family,
    correlations: Family,
    hasher: siphasher::sip128::SipHasher24,
}

/// The LSM tree of a store made before schema 14, and its `meta` partition.
struct Tree {
    keyspace: Keyspace,
    meta: PartitionHandle,
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

impl Drop for Keys {
    fn drop(&mut self) {
        self.runs.stop();
        if let Some(merger) = self.merger.take() {
            let _ = merger.join();
        }
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
        // Opened first: whether its manifest holds the keys' position decides below whether
        // an empty tree may go.
        let runs = Arc::new(runs::Runs::open(&dir.join(RUNS_DIR))?);
        // A store made before schema 14 has a tree: its generations are read until they
        // expire, and its `meta` holds the hash secret. A store made since has none, and its
        // secret is only in `SECRET_FILE`: no tree is opened (its journal, flush and
        // compaction threads and caches would serve nothing). A tree that holds no generation
        // any more goes once its secret is in the file and the runs' manifest has the
        // position (`retire_tree`).
        let tree = if !dir.join(TREE_MARK).exists() {
            remove_tree_files(dir)?;
            None
        } else if !tree_has_generations(dir)?
            && read_secret(dir)?.is_some()
            && runs.applied().is_some()
        {
            retire_tree(dir)?;
            None
        } else {
            let keyspace = fjall::Config::new(dir)
                .cache_size(CACHE_BYTES)
                .max_write_buffer_size(WRITE_BUFFER_BYTES)
                .flush_workers(1)
                .compaction_workers(1)
                .open()?;
            let meta = keyspace.open_partition("meta", PartitionCreateOptions::default())?;
            Some(Tree { keyspace, meta })
        };
        let in_tree = match &tree {
            Some(t) => t.meta.get(HASH_SECRET)?,
            None => None,
        };
        let secret = match (in_tree, read_secret(dir)?) {
            (Some(v), file) => {
                let secret: [u8; 16] = v[..].try_into().map_err(|_| {
                    std::io::Error::other("the hash secret in the key store is not 16 bytes")
                })?;
                match file {
                    // Also in the file, so that the tree can go once it is empty.
                    None => write_secret(dir, &secret)?,
                    Some(f) if f == secret => {}
                    // Every key, in the tree and in the runs, was hashed with the tree's: a
                    // file that differs was put there by hand, and once the tree is retired
                    // it would find none of the keys.
                    Some(_) => {
                        return Err(std::io::Error::other(format!(
                            "{} differs from the secret in the key store's tree, which every                              idempotency key was hashed with: restore the file from the same                              backup as the rest of {}, or delete the file to have it written                              again from the tree",
                            dir.join(SECRET_FILE).display(),
                            dir.display()
                        ))
                        .into())
                    }
                }
                secret
            }
            (None, Some(secret)) => secret,
            // Runs written with a secret that is gone: a new one would find none of their
            // keys, and repeated requests inside the window would become new events.
            (None, None) if runs.applied().is_some() => {
                return Err(std::io::Error::other(format!(
                    "{} is missing, but {} holds keys hashed with it: restore the file \
                     (from the backup the directory was copied with), or delete the whole \
                     directory {} to forget the idempotency keys and the correlation index",
                    dir.join(SECRET_FILE).display(),
                    dir.join(RUNS_DIR).display(),
                    dir.display()
                ))
                .into())
            }
            // A new key store, or a tree from before keys were hashed: a new secret.
            (None, None) => new_secret(dir)?,
        };
        let keyspace = tree.as_ref().map(|t| &t.keyspace);
        let keys = Family::open(
            keyspace,
            &runs,
            (runs::Kind::Keys, PREFIX, PLAIN_PREFIX),
            window_ms,
            now,
        )?;
        let correlations = Family::open(
            keyspace,
            &runs,
            (
                runs::Kind::Correlations,
                CORRELATION_PREFIX,
                PLAIN_CORRELATION_PREFIX,
            ),
            retention_ms,
            now,
        )?;
        let merger = {
            let runs = runs.clone();
            std::thread::Builder::new()
                .name("cognihook-keys-merge".into())
                .spawn(move || runs.merge_until_stopped())?
        };
        Ok(Keys {
            tree,
            runs,
            merger: Some(merger),
            keys,
            correlations,
            hasher: siphasher::sip128::SipHasher24::new_with_key(&secret),
        })
    }

    /// What the correlation index on disk says of `correlation_id`, for a process that does
    /// not own the keys (the CLI beside a serving gateway, which cannot open them): the newest
    /// event it names, and the last log record the index on disk holds (the records after it
    /// are still in the log). `None` when it cannot say: a store that still has its tree (the
    /// gateway holds it locked), no secret or no manifest yet.
    pub(super) fn read_only_event_of(
        dir: &Path,
        correlation_id: &str,
    ) -> std::io::Result<Option<(Option<String>, u64)>> {
        if dir.join(TREE_MARK).exists() {
            return Ok(None);
        }
        let Some(secret) = read_secret(dir)? else {
            return Ok(None);
        };
        let hashed = siphasher::sip128::SipHasher24::new_with_key(&secret)
            .hash(correlation_id.as_bytes())
            .as_bytes();
        let (applied, value) =
            runs::read_only_get(&dir.join(RUNS_DIR), runs::Kind::Correlations, &hashed)?;
        Ok(applied.map(|at| (value.and_then(|v| decode_id(&v)), at)))
    }

    /// The last log record the keys on disk hold (see [`Keys::read_only_event_of`]).
    pub(super) fn read_only_applied(dir: &Path) -> std::io::Result<Option<u64>> {
        runs::read_only_applied(&dir.join(RUNS_DIR))
    }

    /// What a hashed generation holds `key` by.
    fn hash(&self, key: &str) -> [u8; 16] {
        self.hasher.hash(key.as_bytes()).as_bytes()
    }

    /// The last log record whose keys are here; `None` when nothing was ever written (keys
    /// just made, or their directory deleted). The runs' manifest says it once one was
    /// written; before, the tree does (a store from before schema 13).
    pub(super) fn applied(&self) -> Result<Option<u64>, fjall::Error> {
        if let Some(at) = self.runs.applied() {
            return Ok(Some(at));
        }
        let Some(tree) = &self.tree else {
            return Ok(None);
        };
        Ok(tree
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
                Some((v, false)) => String::from_utf8(v).ok(),
                None => None,
            },
        )
    }

    /// Writes the key entries (key, the event it made, when), the correlation index's
    /// entries (correlation id, event id; a later one wins) and the log position `applied`
    /// (the newest generations take them; new ones are started first when due). They are
    /// read from here on; they reach the disk with [`Keys::persist`].
    pub(super) fn write<'a>(
        &self,
        entries: impl Iterator<Item = (&'a str, &'a str, i64)>,
        correlations: impl Iterator<Item = (&'a str, &'a str)>,
        applied: u64,
        now: i64,
    ) -> Result<(), fjall::Error> {
        let (keys, filter) = self.keys.newest(&self.runs, now);
        let mut batch = runs::BatchBuilder::default();
        for (key, event_id, at) in entries {
            batch.push(self.hash(key), |out| {
                KeyEntry::encode_into(event_id, at, out)
            });
        }
        if !batch.is_empty() {
            let batch = batch.finish();
            if let Some(f) = &filter {
                for key in batch.keys() {
                    f.insert(key);
                }
            }
            self.runs.push(&keys, batch)?;
        }
        let mut batch = runs::BatchBuilder::default();
        for (correlation_id, event_id) in correlations {
            batch.push(self.hash(correlation_id), |out| {
                encode_id_into(event_id, out)
            });
        }
        if !batch.is_empty() {
            let (corr, _) = self.correlations.newest(&self.runs, now);
            self.runs.push(&corr, batch.finish())?;
        }
        self.runs.set_applied(applied);
        Ok(())
    }

    /// Indexes events the database held before the index moved here, in their own
    /// generation started at `started` (their oldest time): every later generation, and so
    /// every entry the log writes, wins over them. The caller persists when done.
    pub(super) fn backfill_correlations(
        &self,
        started: i64,
        chunk: &[(String, String)],
    ) -> Result<(), fjall::Error> {
        let (shelf, _) = self.correlations.start(&self.runs, started);
        let mut batch = runs::BatchBuilder::default();
        for (correlation_id, event_id) in chunk {
            batch.push(self.hash(correlation_id), |out| {
                encode_id_into(event_id, out)
            });
        }
        if !batch.is_empty() {
            self.runs.push(&shelf, batch.finish())?;
        }
        Ok(())
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
        let keyspace = self.tree.as_ref().map(|t| &t.keyspace);
        self.correlations
            .expire(keyspace, &self.runs, events_cutoff, now)?;
        self.keys.expire(keyspace, &self.runs, cutoff, now)
    }

    /// Makes every entry written so far durable (`fdatasync`; only to the operating system
    /// under `sync = "off"`), with the position last written.
    pub(super) fn persist(&self, sync: crate::config::SyncMode) -> Result<(), fjall::Error> {
        Ok(self.runs.persist(sync != crate::config::SyncMode::Off)?)
    }

    /// Merges runs until none is due, as the merge thread would (for tests).
    #[cfg(test)]
    pub(super) fn merge_all(&self) {
        while self.runs.merge_one().expect("merge") {}
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

/// Whether the tree in `dir` still has a generation: a partition folder with a generation's
/// name that `fjall` has not marked deleted (read from the directory, without opening it).
fn tree_has_generations(dir: &Path) -> std::io::Result<bool> {
    let folders = match std::fs::read_dir(dir.join(TREE_DIRS[1])) {
        Ok(folders) => folders,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    for folder in folders {
        let folder = folder?;
        let name = folder.file_name();
        let name = name.to_string_lossy();
        let generation = [
            PREFIX,
            PLAIN_PREFIX,
            CORRELATION_PREFIX,
            PLAIN_CORRELATION_PREFIX,
        ]
        .iter()
        .any(|p| name.starts_with(p));
        if generation && !folder.path().join(TREE_DELETED_MARK).exists() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes a tree that holds no generation: first its mark, so that a crash midway leaves a
/// store without a tree (whose leftover files the next open removes), then its files. Only
/// when its secret is in `SECRET_FILE` and the runs' manifest holds the keys' position,
/// the two things `meta` held that are still needed.
fn retire_tree(dir: &Path) -> std::io::Result<()> {
    std::fs::remove_file(dir.join(TREE_MARK))?;
    std::fs::File::open(dir)?.sync_all()?;
    remove_tree_files(dir)?;
    tracing::info!(
        dir = %dir.display(),
        "the idempotency keys' LSM tree (from before schema 13) held no generation any more: removed"
    );
    Ok(())
}

/// Removes what is left of a tree without its mark (a `retire_tree` cut short).
fn remove_tree_files(dir: &Path) -> std::io::Result<()> {
    for folder in TREE_DIRS {
        match std::fs::remove_dir_all(dir.join(folder)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The hash secret in `dir`'s `SECRET_FILE`, if it has one.
fn read_secret(dir: &Path) -> std::io::Result<Option<[u8; 16]>> {
    match std::fs::read(dir.join(SECRET_FILE)) {
        Ok(v) => v[..].try_into().map(Some).map_err(|_| {
            std::io::Error::other(format!(
                "{} is not 16 bytes: it is the secret the idempotency keys are hashed with; \
                 deleting the whole directory makes a new one (and forgets the keys)",
                dir.join(SECRET_FILE).display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes a new hash secret and writes it to `dir` (see `write_secret`).
fn new_secret(dir: &Path) -> std::io::Result<[u8; 16]> {
    use ring::rand::SecureRandom;
    let mut secret = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| std::io::Error::other("no random bytes for the hash secret"))?;
    write_secret(dir, &secret)?;
    Ok(secret)
}

/// Writes `secret` to `dir`'s `SECRET_FILE` for good before any key is hashed with it (a
/// temporary file, flushed, renamed, the directory flushed), whatever `store.sync` says: a
/// secret lost in a crash would leave every key written with it unfindable.
fn write_secret(dir: &Path, secret: &[u8; 16]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(SECRET_TMP);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(secret)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(SECRET_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// The key store's directory beside a database file: `cognihook.db` → `cognihook.keys/`.
pub(super) fn dir_of(db: &Path) -> std::path::PathBuf {
    db.with_extension("keys")
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjall::PersistMode;

    fn entry(event: &str, at: i64) -> KeyEntry {
        KeyEntry {
            event_id: event.into(),
            correlation_id: None,
            created_at: at,
        }
    }

    /// An entry as versions before hashed keys wrote it.
    /// Writes the key "a" (event e1, at 1,000) with the log position `applied`, and persists.
    fn write_a_and_persist(keys: &Keys, applied: u64) {
        keys.write(
            [("a", "e1", 1_000)].into_iter(),
            std::iter::empty(),
            applied,
            1_000,
        )
        .expect("keys");
        keys.persist(crate::config::SyncMode::Full).expect("keys");
    }

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
        // Held by its hash, in runs.
        let shelf_of = |family: &Family| {
            let generations = family.generations.read();
            match &generations.last().expect("a generation").store {
                Store::Runs(shelf) => shelf.clone(),
                Store::Tree { .. } => panic!("the newest generation is one of runs"),
            }
        };
        let newest = shelf_of(&keys.keys);
        assert!(newest.get(&keys.hash("new")).expect("keys").is_some());
        let ulid = "01HZZZZZZZZZZZZZZZZZZZZZZZ";
        keys.write(std::iter::empty(), [("c1", ulid)].into_iter(), 2, 2_000)
            .expect("keys");
        assert_eq!(keys.event_of("c1").expect("keys").as_deref(), Some(ulid));
        let newest_corr = shelf_of(&keys.correlations);
        assert_eq!(
            newest_corr
                .get(&keys.hash("c1"))
                .expect("keys")
                .map(|v| v.len()),
            Some(17),
            "a ULID in 16 bytes and its tag"
        );
        keys.persist(crate::config::SyncMode::Full).expect("keys");
        drop((keys, newest, newest_corr));
        // The secret stays with the store: reopened, the key is found, and writes go to a
        // generation begun at the reopen.
        let keys = Keys::open(&path, 240_000, 240_000, 3_000).expect("keys");
        assert_eq!(keys.generation_count(), 3);
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
        let hashed = |g: &Generation| !matches!(g.store, Store::Tree { hashed: false, .. });
        assert!(keys.keys.generations.read().iter().all(hashed));
        assert!(keys.correlations.generations.read().iter().all(hashed));
        assert_eq!(keys.get("old").expect("keys"), Some(entry("e3", 3_000)));
        assert_eq!(keys.event_of("c1").expect("keys").as_deref(), Some(ulid));
        assert_eq!(keys.event_of(&long).expect("keys"), None);
    }

    #[test]
    fn a_reopen_writes_to_a_filtered_generation_and_an_empty_newest_one_just_gets_a_filter() {
        let dir = tempfile::tempdir().expect("keys");
        {
            let keys = Keys::open(dir.path(), 240_000, 240_000, 0).expect("keys");
            keys.persist(crate::config::SyncMode::Full).expect("keys");
        }
        {
            let keys = Keys::open(dir.path(), 240_000, 240_000, 1_000).expect("keys");
            assert_eq!(
                keys.filtered_generations(),
                [true],
                "the empty one, filtered"
            );
            write_a_and_persist(&keys, 1);
        }
        let keys = Keys::open(dir.path(), 240_000, 240_000, 2_000).expect("keys");
        assert_eq!(keys.filtered_generations(), [false, true]);
        assert_eq!(keys.get("a").expect("keys"), Some(entry("e1", 1_000)));
        keys.write(
            [("b", "e2", 2_000)].into_iter(),
            std::iter::empty(),
            2,
            2_000,
        )
        .expect("keys");
        assert_eq!(keys.get("b").expect("keys"), Some(entry("e2", 2_000)));
        assert_eq!(keys.filtered_generations(), [false, true], "no third one");
    }

    #[test]
    fn keys_and_their_position_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("keys");
        let path = dir.path().join("k");
        {
            let keys = Keys::open(&path, 60_000, 60_000, 1_000).expect("keys");
            assert_eq!(keys.applied().expect("keys"), None);
            write_a_and_persist(&keys, 7);
        }
        let keys = Keys::open(&path, 60_000, 60_000, 2_000).expect("keys");
        assert_eq!(keys.applied().expect("keys"), Some(7));
        assert_eq!(keys.get("a").expect("keys"), Some(entry("e1", 1_000)));
        assert_eq!(keys.get("b").expect("keys"), None);
    }

    #[test]
    fn a_new_key_store_has_no_tree_and_its_secret_in_a_file_and_a_damaged_secret_stops_it() {
        let dir = tempfile::tempdir().expect("keys");
        let path = dir.path().join("k");
        let secret = {
            let keys = Keys::open(&path, 60_000, 60_000, 1_000).expect("keys");
            assert!(keys.tree.is_none());
            write_a_and_persist(&keys, 3);
            std::fs::read(path.join(SECRET_FILE)).expect("secret")
        };
        assert_eq!(secret.len(), 16);
        let mut names: Vec<String> = std::fs::read_dir(&path)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [RUNS_DIR, SECRET_FILE], "no tree's files");
        // The same secret after a reopen: the key is found by its hash.
        let keys = Keys::open(&path, 60_000, 60_000, 2_000).expect("keys");
        assert!(keys.tree.is_none());
        assert_eq!(keys.get("a").expect("keys"), Some(entry("e1", 1_000)));
        drop(keys);
        std::fs::write(path.join(SECRET_FILE), &secret[..15]).expect("secret");
        let e = Keys::open(&path, 60_000, 60_000, 3_000).expect_err("a short secret");
        let said = e.to_string();
        assert!(
            said.contains("secret") && said.contains("not 16 bytes"),
            "{said}"
        );
        // Gone while runs hold keys hashed with it: refused, not replaced.
        std::fs::remove_file(path.join(SECRET_FILE)).expect("secret");
        let e = Keys::open(&path, 60_000, 60_000, 3_000).expect_err("no secret");
        let said = e.to_string();
        assert!(
            said.contains("secret is missing") && said.contains("delete the whole directory"),
            "{said}"
        );
        assert!(!path.join(SECRET_FILE).exists(), "no new secret was made");
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
        // Reopened, the generation's filter is gone with the process: it is probed, and writes
        // go to a generation begun now, which has one.
        let keys = Keys::open(&path, 240_000, 240_000, 30_000).expect("keys");
        assert_eq!(keys.filtered_generations(), [false, true]);
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
    fn entries_are_found_in_runs_after_merges_and_a_reopen_with_and_without_bloom_filters() {
        let dir = tempfile::tempdir().expect("keys");
        let rounds = (runs::PENDING_MAX * runs::FANOUT) as u64;
        {
            let keys = Keys::open(dir.path(), 60_000, 240_000, 1_000).expect("keys");
            for round in 0..rounds {
                let (k, c, e) = (format!("k{round}"), format!("c{round}"), ulid(round));
                keys.write(
                    [(k.as_str(), e.as_str(), 1_000)].into_iter(),
                    [(c.as_str(), e.as_str())].into_iter(),
                    round,
                    1_000,
                )
                .expect("keys");
            }
            keys.merge_all();
            for family in [&keys.keys, &keys.correlations] {
                let generations = family.generations.read();
                let Store::Runs(shelf) = &generations[0].store else {
                    panic!("a generation of runs");
                };
                assert_eq!(shelf.tiers(), vec![1], "{rounds} rounds, one merged run");
            }
            keys.persist(crate::config::SyncMode::Full).expect("keys");
        }
        let keys = Keys::open(dir.path(), 60_000, 240_000, 2_000).expect("keys");
        assert_eq!(keys.applied().expect("keys"), Some(rounds - 1));
        assert_eq!(
            keys.filtered_generations(),
            vec![false, true],
            "found at start: no filter; writes go to a new one, which has one"
        );
        for round in 0..rounds {
            assert_eq!(
                keys.get(&format!("k{round}")).expect("keys"),
                Some(entry(&ulid(round), 1_000))
            );
            assert_eq!(
                keys.event_of(&format!("c{round}")).expect("keys"),
                Some(ulid(round))
            );
        }
        assert_eq!(keys.get("k-none").expect("keys"), None);
        assert_eq!(keys.event_of("c-none").expect("keys"), None);
    }

    /// A ULID made from `n`, as the gateway's event ids are.
    fn ulid(n: u64) -> String {
        ulid::Ulid::from_parts(1_000 + n, u128::from(n)).to_string()
    }

    #[test]
    fn only_a_ulid_in_canonical_text_is_kept_as_its_bytes_and_they_are_the_crates() {
        let mut ids: Vec<String> = (0..2_000).map(|_| ulid::Ulid::new().to_string()).collect();
        ids.extend(["00000000000000000000000000", "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"].map(String::from));
        for id in &ids {
            let want = ulid::Ulid::from_string(id).expect("a ULID").to_bytes();
            assert_eq!(crate::event_id::canonical_ulid(id), Some(want), "{id}");
            let mut v = Vec::new();
            encode_id_into(id, &mut v);
            assert_eq!(decode_id(&v).as_deref(), Some(id.as_str()));
        }
        let id = &ids[0];
        let refused = [
            id.to_lowercase(),
            format!("{}I", &id[..25]),
            format!("{}L", &id[..25]),
            format!("{}O", &id[..25]),
            format!("{}U", &id[..25]),
            format!("8{}", &id[1..]),
            id[..25].to_string(),
            format!("{id}0"),
            format!("{}é", &id[..24]),
            String::new(),
        ];
        for text in refused {
            assert_eq!(crate::event_id::canonical_ulid(&text), None, "{text}");
            let mut v = Vec::new();
            encode_id_into(&text, &mut v);
            assert_eq!(v[0], TEXT_ID, "{text}");
            assert_eq!(
                decode_id(&v).as_deref(),
                Some(text.as_str()),
                "kept as given"
            );
        }
    }

    #[test]
    fn tree_generations_are_read_until_they_expire_and_a_foreign_secret_file_stops_the_store() {
        let dir = tempfile::tempdir().expect("keys");
        let path = dir.path().join("keys");
        let secret;
        {
            let keys = Keys::open(&path, 60_000, 240_000, 0).expect("keys");
            secret = keys.hasher;
        }
        // What a build of schema 11 or 12 left: hashed generations in the tree, its position.
        {
            let keyspace = fjall::Config::new(&path).open().expect("keys");
            let part = keyspace
                .open_partition("kh_1000", options(PREFIX))
                .expect("keys");
            let key = secret.hash(b"old-key").as_bytes();
            part.insert(key, KeyEntry::encode(&ulid(1), 1_000))
                .expect("keys");
            let corr = keyspace
                .open_partition("ch_1000", options(CORRELATION_PREFIX))
                .expect("keys");
            let mut id = Vec::new();
            encode_id_into(&ulid(1), &mut id);
            corr.insert(secret.hash(b"old-corr").as_bytes(), id)
                .expect("keys");
            let meta = keyspace
                .open_partition("meta", PartitionCreateOptions::default())
                .expect("keys");
            meta.insert(APPLIED, 41u64.to_le_bytes()).expect("keys");
            // Such a build kept the secret in the tree only.
            let file = path.join(SECRET_FILE);
            meta.insert(HASH_SECRET, std::fs::read(&file).expect("secret"))
                .expect("keys");
            std::fs::remove_file(&file).expect("secret");
            keyspace.persist(PersistMode::SyncAll).expect("keys");
        }
        // Run generations left by the first open were never named by a manifest: gone.
        let keys = Keys::open(&path, 60_000, 240_000, 2_000).expect("keys");
        assert_eq!(
            keys.applied().expect("keys"),
            Some(41),
            "the tree's position"
        );
        assert_eq!(
            keys.get("old-key").expect("keys"),
            Some(entry(&ulid(1), 1_000))
        );
        assert_eq!(keys.event_of("old-corr").expect("keys"), Some(ulid(1)));
        let in_tree = keys.tree.as_ref().expect("the tree").meta.get(HASH_SECRET);
        assert_eq!(
            read_secret(&path).expect("secret").map(Vec::from),
            in_tree.expect("keys").map(|v| v.to_vec()),
            "the tree's secret is copied to the file"
        );
        // The correlation id moves on to a newer event, in runs: the newer wins.
        keys.write(
            [("new-key", ulid(2).as_str(), 2_000)].into_iter(),
            [("old-corr", ulid(2).as_str())].into_iter(),
            42,
            2_000,
        )
        .expect("keys");
        assert_eq!(keys.applied().expect("keys"), Some(42));
        assert_eq!(keys.event_of("old-corr").expect("keys"), Some(ulid(2)));
        assert_eq!(
            keys.get("new-key").expect("keys"),
            Some(entry(&ulid(2), 2_000))
        );
        assert_eq!(keys.generation_count(), 2, "the tree's and one of runs");
        keys.persist(crate::config::SyncMode::Full).expect("keys");
        drop(keys);
        // A secret file that is not the tree's (put back by hand from another copy) stops
        // the store; deleted, it is written again from the tree.
        let file = path.join(SECRET_FILE);
        let right = std::fs::read(&file).expect("secret");
        std::fs::write(&file, [7u8; 16]).expect("secret");
        let e = Keys::open(&path, 60_000, 240_000, 3_000).expect_err("a secret of another");
        let said = e.to_string();
        assert!(
            said.contains("differs from the secret in the key store's tree")
                && said.contains("delete the file"),
            "{said}"
        );
        assert_eq!(
            std::fs::read(&file).expect("secret"),
            [7u8; 16],
            "left as found"
        );
        std::fs::remove_file(&file).expect("secret");
        drop(Keys::open(&path, 60_000, 240_000, 3_000).expect("keys"));
        assert_eq!(
            std::fs::read(&file).expect("secret"),
            right,
            "the tree's again"
        );
        let keys = Keys::open(&path, 60_000, 240_000, 3_000).expect("keys");
        assert_eq!(
            keys.applied().expect("keys"),
            Some(42),
            "the manifest's position"
        );
        assert_eq!(
            keys.get("old-key").expect("keys"),
            Some(entry(&ulid(1), 1_000))
        );
        // The tree's generation goes once its successor began before the cutoff.
        assert_eq!(keys.expire(2_001, 0, 3_000).expect("keys"), 1);
        assert_eq!(keys.get("old-key").expect("keys"), None);
        assert_eq!(
            keys.get("new-key").expect("keys"),
            Some(entry(&ulid(2), 2_000))
        );
        assert!(
            !keys
                .tree
                .as_ref()
                .expect("the tree")
                .keyspace
                .partition_exists("kh_1000"),
            "the tree's partition is deleted"
        );
        // The correlation generation still needs the tree.
        keys.persist(crate::config::SyncMode::Full).expect("keys");
        drop(keys);
        let keys = Keys::open(&path, 60_000, 240_000, 3_000).expect("keys");
        assert!(keys.tree.is_some(), "a generation of the tree is left");
        assert_eq!(keys.expire(2_001, 2_001, 3_000).expect("keys"), 0);
        assert_eq!(keys.event_of("old-corr").expect("keys"), Some(ulid(2)));
        keys.persist(crate::config::SyncMode::Full).expect("keys");
        drop(keys);
        // With none left, the tree goes at the next open; what the runs hold stays.
        let keys = Keys::open(&path, 60_000, 240_000, 4_000).expect("keys");
        assert!(keys.tree.is_none(), "the empty tree is not opened");
        for gone in [TREE_MARK, TREE_DIRS[0], TREE_DIRS[1]] {
            assert!(!path.join(gone).exists(), "{gone} is removed");
        }
        assert_eq!(keys.applied().expect("keys"), Some(42));
        assert_eq!(
            keys.get("new-key").expect("keys"),
            Some(entry(&ulid(2), 2_000))
        );
        assert_eq!(keys.event_of("old-corr").expect("keys"), Some(ulid(2)));
    }

    #[test]
    fn an_empty_tree_stays_until_its_secret_is_in_the_file_and_leftovers_of_one_are_removed() {
        let dir = tempfile::tempdir().expect("keys");
        let path = dir.path().join("keys");
        let secret;
        {
            let keys = Keys::open(&path, 60_000, 60_000, 0).expect("keys");
            write_a_and_persist(&keys, 5);
            secret = std::fs::read(path.join(SECRET_FILE)).expect("secret");
        }
        // What a build of schema 13 left: a tree with only `meta`, the secret only there.
        {
            let keyspace = fjall::Config::new(&path).open().expect("keys");
            let meta = keyspace
                .open_partition("meta", PartitionCreateOptions::default())
                .expect("keys");
            meta.insert(HASH_SECRET, secret.clone()).expect("keys");
            keyspace.persist(PersistMode::SyncAll).expect("keys");
        }
        std::fs::remove_file(path.join(SECRET_FILE)).expect("secret");
        let keys = Keys::open(&path, 60_000, 60_000, 1_000).expect("keys");
        assert!(keys.tree.is_some(), "the secret was only in the tree");
        assert_eq!(keys.get("a").expect("keys"), Some(entry("e1", 1_000)));
        drop(keys);
        assert_eq!(
            std::fs::read(path.join(SECRET_FILE)).expect("secret"),
            secret
        );
        let keys = Keys::open(&path, 60_000, 60_000, 2_000).expect("keys");
        assert!(keys.tree.is_none(), "now it goes");
        assert_eq!(keys.get("a").expect("keys"), Some(entry("e1", 1_000)));
        drop(keys);
        // A removal cut short after the mark went: the rest goes at the next open.
        std::fs::create_dir_all(path.join(TREE_DIRS[1]).join("meta")).expect("leftover");
        let keys = Keys::open(&path, 60_000, 60_000, 3_000).expect("keys");
        assert!(keys.tree.is_none());
        assert!(!path.join(TREE_DIRS[1]).exists(), "leftovers removed");
        assert_eq!(keys.get("a").expect("keys"), Some(entry("e1", 1_000)));
    }
}
