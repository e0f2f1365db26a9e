//! The key store's generations since schema 13: sorted runs in files of their own, with the
//! log as their journal.
//!
//! What the key store holds suits a simpler structure than an LSM tree: keys are 16 random
//! bytes (a keyed hash) with a value of about 25 bytes; they arrive in sorted batches, one per
//! projector round; they are read almost only after a generation's filter said "maybe"; and
//! they are dropped whole, a generation at a time. The tree (`fjall`, which held the
//! generations before) paid per key for a skip-list insert, a journal write, a flush and
//! leveled merges that rewrite every level, 3.6–4.5 µs per request at saturation
//! (bench/README.md, thirty-fifth session). Here a round's batch stays in memory as it came
//! (sorted), up to [`PENDING_MAX`] batches of a generation are merged into one file, a *run*,
//! and a background thread merges [`FANOUT`] runs of the same *tier* into one of the next,
//! never across generations; a key is rewritten once per tier, and once more when its
//! generation stops taking writes and is merged into a single run (so a look-up checks one
//! Bloom filter per older generation).
//!
//! # Files
//! A run (`<id>.run`, the id in hexadecimal): blocks of entries in key order (the key, the
//! value's length as two bytes, the value), each block up to [`BLOCK`] bytes unless one entry
//! is larger; then the index (per block: its first key, offset, length and CRC-32); then the
//! Bloom filter, for the idempotency keys only; then a trailer of [`TRAILER`] bytes (counts,
//! where the index starts, the CRC-32 of index, filter and trailer, a magic number). The
//! manifest (`MANIFEST`) names every generation (family and start), its runs (id and tier)
//! and the last log record they hold, and ends with its own CRC-32.
//!
//! # Recovery
//! Runs are written without a flush. [`Runs::persist`], which the checkpointer calls before
//! it removes log segments, writes what is pending to runs, flushes every run not yet flushed
//! and the directory, then writes the manifest (a temporary file, flushed, renamed, the
//! directory flushed again). Opening reads the manifest, deletes every run it does not name,
//! and reports its log position; the store applies the log again from there. An entry written
//! twice is harmless: the log is applied in order and to its end, so the last write of a key
//! is the newest entry again. A merge's inputs, and an expired generation's runs, are deleted
//! only once a manifest that no longer names them is on disk. A run the manifest names that
//! fails its checks (size, magic, CRC) stops the store from opening; a block that fails its
//! CRC when read is an error of that read.
//!
//! # Memory
//! Per run: its index (32 bytes per block of ~95 entries) and, for the idempotency keys, its
//! Bloom filter (10 bits per entry, one cache line per look-up); per generation, up to
//! [`PENDING_MAX`] pending batches. Both grow with the live generations' entries (the window
//! times the rate), not with the events ever ingested.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock};

/// A key as the store holds it: a keyed hash (see the parent module).
pub(super) type Key = [u8; 16];

/// A block's size, unless one entry is larger.
const BLOCK: usize = 4096;
/// An entry's bytes before its value: the key and the value's length.
const ENTRY_HEAD: usize = 18;
/// A block's entry in the index: first key, offset, length, CRC-32.
const INDEX_ENTRY: usize = 32;
/// A run's trailer: entries, blocks, index offset, filter words (8 bytes each), CRC-32,
/// format version (4 bytes each), magic (8 bytes).
const TRAILER: usize = 48;
const RUN_MAGIC: u64 = u64::from_le_bytes(*b"cgkrun01");
const MANIFEST_MAGIC: u64 = u64::from_le_bytes(*b"cgkman01");
const FORMAT: u32 = 1;
const MANIFEST: &str = "MANIFEST";
const MANIFEST_TMP: &str = "MANIFEST.tmp";

/// A generation's pending batches are written to a run when there are this many: a look-up
/// that gets past the filter searches each, and each is a projector round.
pub(super) const PENDING_MAX: usize = 16;
/// Runs of one tier merged into one of the next.
pub(super) const FANOUT: usize = 4;
/// The most runs of a generation no longer taking writes merged in one pass.
const SEALED_MAX: usize = 16;
/// The Bloom filters' size: about 1 % false positives.
const BLOOM_BITS_PER_KEY: usize = 10;
/// Bits set per key, all in one 64-byte block.
const BLOOM_PROBES: u32 = 6;

/// The run's family: the idempotency keys or the correlation index (the manifest's byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Keys = 0,
    Correlations = 1,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            0 => Some(Kind::Keys),
            1 => Some(Kind::Correlations),
            _ => None,
        }
    }

    /// Only the idempotency keys' runs have Bloom filters: every event looks its key up.
    fn bloom(self) -> bool {
        self == Kind::Keys
    }
}

/// Builds a [`Batch`]: entries in any order, each value written by the caller.
#[derive(Default)]
pub(super) struct BatchBuilder {
    items: Vec<(Key, u32, u32)>,
    bytes: Vec<u8>,
}

impl BatchBuilder {
    /// Adds `key`, its value what `value` appends to the buffer it is given. A run stores a
    /// value's length in two bytes: a longer value is cut to 65,535 bytes (the values are
    /// event ids and times, ~25 bytes).
    pub(super) fn push(&mut self, key: Key, value: impl FnOnce(&mut Vec<u8>)) {
        let start = self.bytes.len();
        value(&mut self.bytes);
        self.bytes.truncate(start + usize::from(u16::MAX));
        let len = self.bytes.len() - start;
        self.items.push((key, start as u32, len as u32));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The keys added, sorted, each once: of equal keys the last added wins.
    pub(super) fn finish(mut self) -> Batch {
        // Stable: equal keys keep their order.
        self.items.sort_by_key(|a| a.0);
        let mut batch = Batch {
            keys: Vec::with_capacity(self.items.len()),
            ends: Vec::with_capacity(self.items.len()),
            values: Vec::with_capacity(self.bytes.len()),
        };
        for (i, (key, start, len)) in self.items.iter().enumerate() {
            if self.items.get(i + 1).is_some_and(|n| n.0 == *key) {
                continue;
            }
            let (start, len) = (*start as usize, *len as usize);
            batch.keys.push(*key);
            batch
                .values
                .extend_from_slice(&self.bytes[start..start + len]);
            batch.ends.push(batch.values.len() as u32);
        }
        batch
    }
}

/// One round's entries of one generation, sorted by key, each key once.
pub(super) struct Batch {
    keys: Vec<Key>,
    ends: Vec<u32>,
    values: Vec<u8>,
}

impl Batch {
    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    fn value(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.values[start..self.ends[i] as usize]
    }

    fn get(&self, key: &Key) -> Option<&[u8]> {
        self.keys.binary_search(key).ok().map(|i| self.value(i))
    }

    /// The keys, in order (for the caller's filter).
    pub(super) fn keys(&self) -> &[Key] {
        &self.keys
    }
}

/// A Bloom filter over a run's keys. The keys are already uniform hashes: their first eight
/// bytes pick the block, the next eight the bits.
struct Bloom {
    words: Box<[u64]>,
}

impl Bloom {
    fn words_for(entries: usize) -> usize {
        (entries * BLOOM_BITS_PER_KEY).div_ceil(512).max(1) * 8
    }

    fn positions(blocks: usize, key: &Key) -> impl Iterator<Item = (usize, u64)> {
        let h1 = u64::from_le_bytes(key[..8].try_into().expect("8 bytes"));
        let h2 = u64::from_le_bytes(key[8..].try_into().expect("8 bytes"));
        let block = (h1 % blocks as u64) as usize * 8;
        (0..BLOOM_PROBES).map(move |i| {
            let bit = (h2 >> (9 * i)) & 511;
            (block + (bit >> 6) as usize, 1u64 << (bit & 63))
        })
    }

    fn insert(&mut self, key: &Key) {
        for (w, bit) in Self::positions(self.words.len() / 8, key) {
            self.words[w] |= bit;
        }
    }

    fn may_hold(&self, key: &Key) -> bool {
        Self::positions(self.words.len() / 8, key).all(|(w, bit)| self.words[w] & bit != 0)
    }
}

/// Where a block is and what it starts with.
struct BlockRef {
    first: Key,
    at: u64,
    len: u32,
    crc: u32,
}

/// One run file, its index and filter in memory.
pub(super) struct Run {
    id: u64,
    tier: u8,
    path: PathBuf,
    file: File,
    entries: u64,
    index: Vec<BlockRef>,
    bloom: Option<Bloom>,
    /// Flushed to disk (or written by a process that flushed it before naming it).
    synced: AtomicBool,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("id", &self.id)
            .field("tier", &self.tier)
            .field("entries", &self.entries)
            .finish()
    }
}

fn corrupt(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "key store run {} is damaged: {what} (deleting the key store's directory lets \
             the store open, and forgets its idempotency keys and correlation index)",
            path.display()
        ),
    )
}

fn run_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.run"))
}

impl Run {
    /// Opens a run the manifest names, checking its trailer, index and filter.
    fn open(dir: &Path, id: u64, tier: u8) -> io::Result<Run> {
        let path = run_path(dir, id);
        let file = File::open(&path)?;
        let len = file.metadata()?.len();
        if len < TRAILER as u64 {
            return Err(corrupt(&path, "shorter than its trailer"));
        }
        let mut trailer = [0u8; TRAILER];
        file.read_exact_at(&mut trailer, len - TRAILER as u64)?;
        let word = |i: usize| u64::from_le_bytes(trailer[i * 8..i * 8 + 8].try_into().expect("8"));
        let (entries, blocks, index_at, bloom_words) = (word(0), word(1), word(2), word(3));
        let crc = u32::from_le_bytes(trailer[32..36].try_into().expect("4"));
        let format = u32::from_le_bytes(trailer[36..40].try_into().expect("4"));
        if word(5) != RUN_MAGIC || format != FORMAT {
            return Err(corrupt(&path, "not a run file of this format"));
        }
        let meta_len = blocks
            .checked_mul(INDEX_ENTRY as u64)
            .and_then(|n| n.checked_add(bloom_words.checked_mul(8)?))
            .filter(|n| index_at.checked_add(*n) == Some(len - TRAILER as u64))
            .ok_or_else(|| corrupt(&path, "its sizes do not add up"))?;
        let mut meta = vec![0u8; meta_len as usize];
        file.read_exact_at(&mut meta, index_at)?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&meta);
        hasher.update(&trailer[..32]);
        if hasher.finalize() != crc {
            return Err(corrupt(&path, "its index fails its checksum"));
        }
        let (index_bytes, bloom_bytes) = meta.split_at(blocks as usize * INDEX_ENTRY);
        let index = index_bytes
            .chunks_exact(INDEX_ENTRY)
            .map(|c| BlockRef {
                first: c[..16].try_into().expect("16"),
                at: u64::from_le_bytes(c[16..24].try_into().expect("8")),
                len: u32::from_le_bytes(c[24..28].try_into().expect("4")),
                crc: u32::from_le_bytes(c[28..32].try_into().expect("4")),
            })
            .collect();
        let bloom = (bloom_words > 0).then(|| Bloom {
            words: bloom_bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
                .collect(),
        });
        Ok(Run {
            id,
            tier,
            path,
            file,
            entries,
            index,
            bloom,
            synced: AtomicBool::new(true),
        })
    }

    fn read_block(&self, i: usize) -> io::Result<Vec<u8>> {
        let b = &self.index[i];
        let mut buf = vec![0u8; b.len as usize];
        self.file.read_exact_at(&mut buf, b.at)?;
        if crc32fast::hash(&buf) != b.crc {
            return Err(corrupt(
                &self.path,
                &format!("block {i} fails its checksum"),
            ));
        }
        Ok(buf)
    }

    /// The value of `key`, if this run holds it.
    fn get(&self, key: &Key) -> io::Result<Option<Vec<u8>>> {
        if self.bloom.as_ref().is_some_and(|b| !b.may_hold(key)) {
            return Ok(None);
        }
        let Some(i) = self
            .index
            .partition_point(|b| b.first <= *key)
            .checked_sub(1)
        else {
            return Ok(None);
        };
        let block = self.read_block(i)?;
        let mut entries = Entries {
            buf: &block,
            pos: 0,
        };
        while let Some((k, v)) = entries.next_entry(&self.path)? {
            match k.cmp(key) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Equal => return Ok(Some(v.to_vec())),
                std::cmp::Ordering::Greater => break,
            }
        }
        Ok(None)
    }
}

/// The entries of one block, in order.
struct Entries<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Entries<'a> {
    fn next_entry(&mut self, path: &Path) -> io::Result<Option<(&'a Key, &'a [u8])>> {
        let buf = self.buf;
        if self.pos >= buf.len() {
            return Ok(None);
        }
        let head = buf
            .get(self.pos..self.pos + ENTRY_HEAD)
            .ok_or_else(|| corrupt(path, "an entry is cut short"))?;
        let len = usize::from(u16::from_le_bytes([head[16], head[17]]));
        let value = buf
            .get(self.pos + ENTRY_HEAD..self.pos + ENTRY_HEAD + len)
            .ok_or_else(|| corrupt(path, "an entry is cut short"))?;
        let key: &'a Key = head[..16].try_into().expect("16");
        self.pos += ENTRY_HEAD + len;
        Ok(Some((key, value)))
    }
}

/// Writes one run, entries given in key order.
struct RunWriter {
    path: PathBuf,
    out: BufWriter<File>,
    block: Vec<u8>,
    first: Key,
    at: u64,
    entries: u64,
    index: Vec<BlockRef>,
    bloom: Option<Bloom>,
}

impl RunWriter {
    /// A new run file; `expected` bounds the entries (sizes the filter).
    fn create(dir: &Path, id: u64, expected: usize, bloom: bool) -> io::Result<RunWriter> {
        let path = run_path(dir, id);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(RunWriter {
            path,
            out: BufWriter::with_capacity(64 * 1024, file),
            block: Vec::with_capacity(BLOCK),
            first: [0; 16],
            at: 0,
            entries: 0,
            index: Vec::new(),
            bloom: bloom.then(|| Bloom {
                words: vec![0u64; Bloom::words_for(expected)].into_boxed_slice(),
            }),
        })
    }

    fn push(&mut self, key: &Key, value: &[u8]) -> io::Result<()> {
        let size = ENTRY_HEAD + value.len();
        if !self.block.is_empty() && self.block.len() + size > BLOCK {
            self.end_block()?;
        }
        if self.block.is_empty() {
            self.first = *key;
        }
        self.block.extend_from_slice(key);
        self.block
            .extend_from_slice(&(value.len() as u16).to_le_bytes());
        self.block.extend_from_slice(value);
        if let Some(b) = &mut self.bloom {
            b.insert(key);
        }
        self.entries += 1;
        Ok(())
    }

    fn end_block(&mut self) -> io::Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        self.out.write_all(&self.block)?;
        self.index.push(BlockRef {
            first: self.first,
            at: self.at,
            len: self.block.len() as u32,
            crc: crc32fast::hash(&self.block),
        });
        self.at += self.block.len() as u64;
        self.block.clear();
        Ok(())
    }

    /// Writes the index, filter and trailer; the run is not flushed to disk.
    fn finish(mut self, id: u64, tier: u8) -> io::Result<Run> {
        self.end_block()?;
        let mut meta = Vec::with_capacity(self.index.len() * INDEX_ENTRY + TRAILER);
        for b in &self.index {
            meta.extend_from_slice(&b.first);
            meta.extend_from_slice(&b.at.to_le_bytes());
            meta.extend_from_slice(&b.len.to_le_bytes());
            meta.extend_from_slice(&b.crc.to_le_bytes());
        }
        let bloom_words = self.bloom.as_ref().map_or(0, |b| b.words.len());
        for w in self.bloom.iter().flat_map(|b| b.words.iter()) {
            meta.extend_from_slice(&w.to_le_bytes());
        }
        let trailer_at = meta.len();
        for n in [
            self.entries,
            self.index.len() as u64,
            self.at,
            bloom_words as u64,
        ] {
            meta.extend_from_slice(&n.to_le_bytes());
        }
        let crc = crc32fast::hash(&meta);
        meta.extend_from_slice(&crc.to_le_bytes());
        meta.extend_from_slice(&FORMAT.to_le_bytes());
        meta.extend_from_slice(&RUN_MAGIC.to_le_bytes());
        debug_assert_eq!(meta.len() - trailer_at, TRAILER);
        self.out.write_all(&meta)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        Ok(Run {
            id,
            tier,
            path: self.path,
            file,
            entries: self.entries,
            index: self.index,
            bloom: self.bloom,
            synced: AtomicBool::new(false),
        })
    }
}

/// Where a merge reads: a pending batch or a run, from its first entry on.
enum Source<'a> {
    Batch(&'a Batch, usize),
    Run {
        run: &'a Run,
        block: usize,
        buf: Vec<u8>,
        pos: usize,
    },
}

impl<'a> Source<'a> {
    fn of_run(run: &'a Run) -> io::Result<Source<'a>> {
        let buf = if run.index.is_empty() {
            Vec::new()
        } else {
            run.read_block(0)?
        };
        Ok(Source::Run {
            run,
            block: 0,
            buf,
            pos: 0,
        })
    }

    fn peek(&self) -> Option<(&Key, &[u8])> {
        match self {
            Source::Batch(b, i) => (*i < b.len()).then(|| (&b.keys[*i], b.value(*i))),
            Source::Run { buf, pos, .. } => {
                let head = buf.get(*pos..*pos + ENTRY_HEAD)?;
                let len = usize::from(u16::from_le_bytes([head[16], head[17]]));
                let value = buf.get(*pos + ENTRY_HEAD..*pos + ENTRY_HEAD + len)?;
                Some((head[..16].try_into().expect("16"), value))
            }
        }
    }

    fn advance(&mut self) -> io::Result<()> {
        match self {
            Source::Batch(_, i) => *i += 1,
            Source::Run {
                run,
                block,
                buf,
                pos,
            } => {
                let len = usize::from(u16::from_le_bytes([buf[*pos + 16], buf[*pos + 17]]));
                *pos += ENTRY_HEAD + len;
                if *pos >= buf.len() {
                    *block += 1;
                    *pos = 0;
                    *buf = if *block < run.index.len() {
                        run.read_block(*block)?
                    } else {
                        Vec::new()
                    };
                }
            }
        }
        Ok(())
    }
}

/// Merges `sources` (oldest first; of equal keys the newest source's entry wins) into one run;
/// `None` when `stop` said so (asked every 65,536 entries).
///
/// The sources' next keys wait in a min-heap (a key as a big-endian `u128` sorts as its
/// bytes do; of equal keys the newest source first), so an entry costs a sift of the heap,
/// not a look at every source: a flush merges 16 batches, a sealed generation up to 16 runs.
fn merge_into(
    mut w: RunWriter,
    mut sources: Vec<Source<'_>>,
    stop: &dyn Fn() -> bool,
) -> io::Result<Option<RunWriter>> {
    use std::cmp::Reverse;
    use std::collections::binary_heap::{BinaryHeap, PeekMut};
    let head = |s: &Source<'_>, i: usize| {
        s.peek()
            .map(|(k, _)| Reverse((u128::from_be_bytes(*k), Reverse(i))))
    };
    let mut heap: BinaryHeap<_> = sources
        .iter()
        .enumerate()
        .filter_map(|(i, s)| head(s, i))
        .collect();
    let mut n = 0u64;
    while let Some(&Reverse((key, Reverse(winner)))) = heap.peek() {
        if n % 65_536 == 65_535 && stop() {
            return Ok(None);
        }
        n += 1;
        let (k, value) = sources[winner]
            .peek()
            .expect("a source in the heap has an entry");
        w.push(k, value)?;
        // The winner and every older source at the same key move past it.
        while let Some(mut top) = heap.peek_mut() {
            let Reverse((k, Reverse(i))) = *top;
            if k != key {
                break;
            }
            sources[i].advance()?;
            match head(&sources[i], i) {
                // Sifted down when `top` goes.
                Some(next) => *top = next,
                None => {
                    PeekMut::pop(top);
                }
            }
        }
    }
    Ok(Some(w))
}

/// Writes the run `id` of `tier` from `sources` (see `merge_into`); a run cut short by an
/// error or by `stop` is deleted.
fn write_run<'a>(
    dir: &Path,
    (id, tier): (u64, u8),
    (expected, bloom): (usize, bool),
    sources: impl FnOnce() -> io::Result<Vec<Source<'a>>>,
    stop: &dyn Fn() -> bool,
) -> io::Result<Option<Run>> {
    let written = RunWriter::create(dir, id, expected, bloom).and_then(|w| {
        match merge_into(w, sources()?, stop)? {
            Some(w) => w.finish(id, tier).map(Some),
            None => Ok(None),
        }
    });
    if !matches!(written, Ok(Some(_))) {
        let _ = std::fs::remove_file(run_path(dir, id));
    }
    written
}

/// A generation's runs and pending batches.
pub(super) struct Shelf {
    kind: Kind,
    started: i64,
    state: RwLock<ShelfState>,
}

#[derive(Default)]
struct ShelfState {
    /// Oldest first.
    pending: Vec<Arc<Batch>>,
    /// Oldest first; every pending batch is newer than every run.
    runs: Vec<Arc<Run>>,
}

impl std::fmt::Debug for Shelf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.read();
        f.debug_struct("Shelf")
            .field("kind", &self.kind)
            .field("started", &self.started)
            .field("pending", &s.pending.len())
            .field("runs", &s.runs)
            .finish()
    }
}

impl Shelf {
    /// The newest value of `key` here.
    pub(super) fn get(&self, key: &Key) -> io::Result<Option<Vec<u8>>> {
        let s = self.state.read();
        for b in s.pending.iter().rev() {
            if let Some(v) = b.get(key) {
                return Ok(Some(v.to_vec()));
            }
        }
        for r in s.runs.iter().rev() {
            if let Some(v) = r.get(key)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// Whether nothing was ever written here.
    pub(super) fn is_empty(&self) -> bool {
        let s = self.state.read();
        s.pending.is_empty() && s.runs.is_empty()
    }

    /// The tiers of its runs, oldest first (for tests).
    #[cfg(test)]
    pub(super) fn tiers(&self) -> Vec<u8> {
        self.state.read().runs.iter().map(|r| r.tier).collect()
    }
}

/// A live generation as the registry holds it.
type Entry = Arc<Shelf>;

/// The run files of both families, in one directory.
pub(super) struct Runs {
    dir: PathBuf,
    next_id: AtomicU64,
    /// The last log record written here (`None`: nothing ever was).
    applied: Mutex<Option<u64>>,
    /// Live generations.
    shelves: RwLock<Vec<Entry>>,
    /// Runs no longer live, deleted once a manifest without them is on disk.
    retired: Mutex<Vec<Arc<Run>>>,
    /// One flush of pending batches at a time.
    flushing: Mutex<()>,
    /// One manifest at a time.
    persisting: Mutex<()>,
    /// Wakes the merge thread; true when it should stop.
    wake: (Mutex<bool>, Condvar),
    /// Something the last manifest does not say has happened (a write, a merge, a
    /// generation started or dropped): the next `persist` writes one.
    changed: AtomicBool,
}

impl std::fmt::Debug for Runs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runs").field("dir", &self.dir).finish()
    }
}

/// A generation as the manifest names it: family, start, and its runs' ids and tiers.
type Named = (Kind, i64, Vec<(u64, u8)>);

/// What the manifest says.
struct Manifest {
    applied: Option<u64>,
    generations: Vec<Named>,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Manifest {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&MANIFEST_MAGIC.to_le_bytes());
        v.push(u8::from(self.applied.is_some()));
        v.extend_from_slice(&self.applied.unwrap_or(0).to_le_bytes());
        v.extend_from_slice(&(self.generations.len() as u32).to_le_bytes());
        for (kind, started, runs) in &self.generations {
            v.push(*kind as u8);
            v.extend_from_slice(&started.to_le_bytes());
            v.extend_from_slice(&(runs.len() as u32).to_le_bytes());
            for (id, tier) in runs {
                v.extend_from_slice(&id.to_le_bytes());
                v.push(*tier);
            }
        }
        let crc = crc32fast::hash(&v);
        v.extend_from_slice(&crc.to_le_bytes());
        v
    }

    fn decode(bytes: &[u8], path: &Path) -> io::Result<Manifest> {
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("key store manifest {} is damaged: {what}", path.display()),
            )
        };
        let (body, crc) = bytes
            .split_last_chunk::<4>()
            .ok_or_else(|| bad("too short"))?;
        if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
            return Err(bad("it fails its checksum"));
        }
        let mut r = body;
        let mut take = |n: usize| -> io::Result<&[u8]> {
            let (a, b) = r.split_at_checked(n).ok_or_else(|| bad("cut short"))?;
            r = b;
            Ok(a)
        };
        let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8"));
        let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4"));
        if u64_of(take(8)?) != MANIFEST_MAGIC {
            return Err(bad("not a manifest of this format"));
        }
        let has_applied = take(1)?[0] == 1;
        let applied = u64_of(take(8)?);
        let mut generations = Vec::new();
        for _ in 0..u32_of(take(4)?) {
            let kind = Kind::from_byte(take(1)?[0]).ok_or_else(|| bad("unknown family"))?;
            let started = u64_of(take(8)?) as i64;
            let mut runs = Vec::new();
            for _ in 0..u32_of(take(4)?) {
                let id = u64_of(take(8)?);
                runs.push((id, take(1)?[0]));
            }
            generations.push((kind, started, runs));
        }
        Ok(Manifest {
            applied: has_applied.then_some(applied),
            generations,
        })
    }
}

/// Failed merges (a full disk, a failing one) are logged at most once a minute.
static MERGE_FAILED: crate::telemetry::throttle::Throttle =
    crate::telemetry::throttle::Throttle::new(std::time::Duration::from_secs(60));

/// How long the merge thread waits before it looks for merges again: a second, woken early
/// by new runs; after a failed merge, a delay that doubles with each failure in a row up to a
/// minute, which new runs do not cut short (a failing disk is not retried on every flush).
#[derive(Debug, Default)]
struct MergeBackoff {
    failures: u32,
}

impl MergeBackoff {
    const FIRST: std::time::Duration = std::time::Duration::from_secs(1);
    const MOST: std::time::Duration = std::time::Duration::from_secs(60);

    fn failing(&self) -> bool {
        self.failures > 0
    }

    /// The delay after one more failure.
    fn next(&self) -> std::time::Duration {
        Self::delay(self.failures + 1)
    }

    fn delay(failures: u32) -> std::time::Duration {
        match failures {
            0 => Self::FIRST,
            n => Self::FIRST
                .saturating_mul(1 << (n - 1).min(6))
                .min(Self::MOST),
        }
    }

    fn wait(&self) -> std::time::Duration {
        Self::delay(self.failures)
    }

    fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }

    fn succeeded(&mut self) {
        self.failures = 0;
    }
}

/// The newest value of `key` in the runs of `kind` as the manifest on disk names them, and the
/// log position the manifest holds (`None`: no manifest yet), for a process that does not own
/// the runs (the CLI beside a serving gateway). Nothing is created or deleted. The runs are
/// all opened before the first is read, so a merge that replaces them afterwards changes
/// nothing here (the open files stay readable); a run already replaced when it is opened
/// (`NotFound`: the manifest read is no longer the newest) means the manifest is read again.
pub(super) fn read_only_get(
    dir: &Path,
    kind: Kind,
    key: &Key,
) -> io::Result<(Option<u64>, Option<Vec<u8>>)> {
    let manifest_path = dir.join(MANIFEST);
    for _ in 0..5 {
        let manifest = match std::fs::read(&manifest_path) {
            Ok(bytes) => Manifest::decode(&bytes, &manifest_path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((None, None)),
            Err(e) => return Err(e),
        };
        let mut generations: Vec<&Named> = manifest
            .generations
            .iter()
            .filter(|(k, _, _)| *k == kind)
            .collect();
        // Newest generation first, and in each the newest run first (the manifest lists
        // them oldest first), as `Shelf::get` reads them.
        generations.sort_by_key(|(_, started, _)| std::cmp::Reverse(*started));
        let opened: io::Result<Vec<Run>> = generations
            .iter()
            .flat_map(|(_, _, ids)| ids.iter().rev())
            .map(|&(id, tier)| Run::open(dir, id, tier))
            .collect();
        let runs = match opened {
            Ok(runs) => runs,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for run in &runs {
            if let Some(v) = run.get(key)? {
                return Ok((manifest.applied, Some(v)));
            }
        }
        return Ok((manifest.applied, None));
    }
    Err(io::Error::other(format!(
        "the key store's runs in {} kept changing while they were read",
        dir.display()
    )))
}

/// The log position the manifest on disk holds (see [`read_only_get`]).
pub(super) fn read_only_applied(dir: &Path) -> io::Result<Option<u64>> {
    let manifest_path = dir.join(MANIFEST);
    match std::fs::read(&manifest_path) {
        Ok(bytes) => Ok(Manifest::decode(&bytes, &manifest_path)?.applied),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl Runs {
    /// Opens the runs in `dir` (creating it): the live generations as the last manifest on
    /// disk names them; runs it does not name are deleted.
    pub(super) fn open(dir: &Path) -> io::Result<Runs> {
        std::fs::create_dir_all(dir)?;
        let manifest_path = dir.join(MANIFEST);
        let manifest = match std::fs::read(&manifest_path) {
            Ok(bytes) => Some(Manifest::decode(&bytes, &manifest_path)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let manifest = manifest.unwrap_or(Manifest {
            applied: None,
            generations: Vec::new(),
        });
        let mut named = std::collections::HashSet::new();
        let mut shelves = Vec::new();
        let mut next_id = 0;
        for (kind, started, ids) in &manifest.generations {
            let mut runs = Vec::new();
            for &(id, tier) in ids {
                runs.push(Arc::new(Run::open(dir, id, tier)?));
                named.insert(id);
                next_id = next_id.max(id + 1);
            }
            shelves.push(Arc::new(Shelf {
                kind: *kind,
                started: *started,
                state: RwLock::new(ShelfState {
                    pending: Vec::new(),
                    runs,
                }),
            }));
        }
        // Runs written after the last manifest (their entries come again from the log),
        // merges' outputs not yet named, inputs already replaced.
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            let unnamed = match name.strip_suffix(".run") {
                Some(id) => u64::from_str_radix(id, 16).map_or(true, |id| !named.contains(&id)),
                None => name == MANIFEST_TMP,
            };
            if unnamed {
                std::fs::remove_file(e.path())?;
            }
        }
        Ok(Runs {
            dir: dir.to_path_buf(),
            next_id: AtomicU64::new(next_id),
            applied: Mutex::new(manifest.applied),
            shelves: RwLock::new(shelves),
            retired: Mutex::new(Vec::new()),
            flushing: Mutex::new(()),
            persisting: Mutex::new(()),
            wake: (Mutex::new(false), Condvar::new()),
            changed: AtomicBool::new(true),
        })
    }

    /// The last log record written here, as of the last manifest at open and since then as
    /// written.
    pub(super) fn applied(&self) -> Option<u64> {
        *self.applied.lock()
    }

    pub(super) fn set_applied(&self, applied: u64) {
        let mut at = self.applied.lock();
        if *at != Some(applied) {
            *at = Some(applied);
            self.changed.store(true, Ordering::SeqCst);
        }
    }

    /// The live generations of `kind`, oldest first.
    pub(super) fn shelves(&self, kind: Kind) -> Vec<(i64, Arc<Shelf>)> {
        let mut v: Vec<_> = self
            .shelves
            .read()
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| (s.started, s.clone()))
            .collect();
        v.sort_by_key(|(started, _)| *started);
        v
    }

    /// Starts a generation of `kind` at `started` (or returns the one there).
    pub(super) fn start(&self, kind: Kind, started: i64) -> Arc<Shelf> {
        let mut shelves = self.shelves.write();
        if let Some(s) = shelves
            .iter()
            .find(|s| s.kind == kind && s.started == started)
        {
            return s.clone();
        }
        let s = Arc::new(Shelf {
            kind,
            started,
            state: RwLock::new(ShelfState::default()),
        });
        shelves.push(s.clone());
        self.changed.store(true, Ordering::SeqCst);
        s
    }

    /// Drops a generation: its runs are deleted after the next manifest.
    pub(super) fn drop_generation(&self, shelf: &Arc<Shelf>) {
        let mut shelves = self.shelves.write();
        shelves.retain(|s| !Arc::ptr_eq(s, shelf));
        let mut state = shelf.state.write();
        state.pending.clear();
        self.retired.lock().append(&mut state.runs);
        self.changed.store(true, Ordering::SeqCst);
    }

    /// Adds a round's batch to `shelf`; writes the pending batches to a run when there are
    /// [`PENDING_MAX`].
    pub(super) fn push(&self, shelf: &Arc<Shelf>, batch: Batch) -> io::Result<()> {
        let due = {
            let mut s = shelf.state.write();
            s.pending.push(Arc::new(batch));
            self.changed.store(true, Ordering::SeqCst);
            s.pending.len() >= PENDING_MAX
        };
        if due {
            self.flush(shelf)?;
        }
        Ok(())
    }

    fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Writes `shelf`'s pending batches to one run of tier 0 (not flushed to disk).
    fn flush(&self, shelf: &Arc<Shelf>) -> io::Result<()> {
        let _one = self.flushing.lock();
        let pending = shelf.state.read().pending.clone();
        if pending.is_empty() {
            return Ok(());
        }
        let id = self.new_id();
        let expected = pending.iter().map(|b| b.len()).sum();
        let sources = || Ok(pending.iter().map(|b| Source::Batch(b, 0)).collect());
        let run = write_run(
            &self.dir,
            (id, 0),
            (expected, shelf.kind.bloom()),
            sources,
            &|| false,
        )?;
        let Some(run) = run.map(Arc::new) else {
            return Ok(());
        };
        let live = self.shelves.read();
        if !live.iter().any(|s| Arc::ptr_eq(s, shelf)) {
            // The generation expired meanwhile; the run was never named.
            drop(live);
            return std::fs::remove_file(&run.path);
        }
        {
            let mut s = shelf.state.write();
            // Only this thread removes pending batches: they are still the first ones.
            debug_assert!(pending
                .iter()
                .zip(&s.pending)
                .all(|(a, b)| Arc::ptr_eq(a, b)));
            s.pending.drain(..pending.len());
            s.runs.push(run);
        }
        drop(live);
        self.notify();
        Ok(())
    }

    fn notify(&self) {
        let _g = self.wake.0.lock();
        self.wake.1.notify_one();
    }

    /// Makes every entry written so far durable: pending batches to runs, runs flushed, then
    /// the manifest (see the module doc); then deletes the runs it no longer names. Under
    /// `sync = off`, nothing is flushed to disk.
    pub(super) fn persist(&self, sync: bool) -> io::Result<()> {
        let _one = self.persisting.lock();
        if !self.changed.swap(false, Ordering::SeqCst) {
            // An idle store writes nothing.
            return Ok(());
        }
        // Read first: every batch up to it was pushed before it was set.
        let applied = self.applied();
        // Retired before the snapshot below, so it names none of them.
        let retired = std::mem::take(&mut *self.retired.lock());
        match self.write_manifest(applied, sync) {
            Ok(()) => {
                for run in retired {
                    match std::fs::remove_file(&run.path) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                        _ => {}
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.retired.lock().extend(retired);
                self.changed.store(true, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// Flushes the pending batches to runs, the runs to disk, then names them and `applied`
    /// in a new manifest.
    fn write_manifest(&self, applied: Option<u64>, sync: bool) -> io::Result<()> {
        let live = self.shelves.read().clone();
        for shelf in &live {
            self.flush(shelf)?;
        }
        let snapshot: Vec<(Kind, i64, Vec<Arc<Run>>)> = self
            .shelves
            .read()
            .iter()
            .map(|s| (s.kind, s.started, s.state.read().runs.clone()))
            .collect();
        if sync {
            for run in snapshot.iter().flat_map(|(_, _, runs)| runs) {
                if !run.synced.load(Ordering::Acquire) {
                    run.file.sync_data()?;
                    run.synced.store(true, Ordering::Release);
                }
            }
            sync_dir(&self.dir)?;
        }
        let manifest = Manifest {
            applied,
            generations: snapshot
                .iter()
                .map(|(kind, started, runs)| {
                    (
                        *kind,
                        *started,
                        runs.iter().map(|r| (r.id, r.tier)).collect(),
                    )
                })
                .collect(),
        };
        let tmp = self.dir.join(MANIFEST_TMP);
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&manifest.encode())?;
            if sync {
                f.sync_data()?;
            }
        }
        std::fs::rename(&tmp, self.dir.join(MANIFEST))?;
        if sync {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Does one merge, if one is due; false when none is. First the first [`FANOUT`] runs of
    /// one tier in one generation, the lowest tier first; then, in a generation that no
    /// longer takes writes (a newer one of its family exists) and has nothing pending, its
    /// newest runs, up to [`SEALED_MAX`] at a time, until it is one run: a look-up that gets
    /// that far then checks one Bloom filter there, not one per run.
    pub(super) fn merge_one(&self) -> io::Result<bool> {
        let picked = {
            let shelves = self.shelves.read();
            let tiered = shelves.iter().find_map(|shelf| {
                let s = shelf.state.read();
                let tiers: Vec<u8> = s.runs.iter().map(|r| r.tier).collect();
                (0..=u8::MAX).find_map(|tier| {
                    let at = tiers
                        .windows(FANOUT)
                        .position(|w| w.iter().all(|t| *t == tier))?;
                    let inputs = s.runs[at..at + FANOUT].to_vec();
                    Some((shelf.clone(), inputs, tier.saturating_add(1)))
                })
            });
            tiered.or_else(|| {
                shelves.iter().find_map(|shelf| {
                    let sealed = shelves
                        .iter()
                        .any(|o| o.kind == shelf.kind && o.started > shelf.started);
                    let s = shelf.state.read();
                    if !sealed || !s.pending.is_empty() || s.runs.len() < 2 {
                        return None;
                    }
                    let inputs = s.runs[s.runs.len().saturating_sub(SEALED_MAX)..].to_vec();
                    let tier = inputs.iter().map(|r| r.tier).max().unwrap_or(0);
                    Some((shelf.clone(), inputs, tier.saturating_add(1)))
                })
            })
        };
        let Some((shelf, inputs, tier)) = picked else {
            return Ok(false);
        };
        let id = self.new_id();
        let expected = inputs.iter().map(|r| r.entries as usize).sum();
        let sources = || inputs.iter().map(|r| Source::of_run(r)).collect();
        let stop = || *self.wake.0.lock();
        let run = write_run(
            &self.dir,
            (id, tier),
            (expected, shelf.kind.bloom()),
            sources,
            &stop,
        )?;
        let Some(run) = run.map(Arc::new) else {
            // Told to stop: the merge is done again after the next start.
            return Ok(false);
        };
        let live = self.shelves.read();
        let mut s = shelf.state.write();
        let at = s
            .runs
            .iter()
            .position(|r| Arc::ptr_eq(r, &inputs[0]))
            .filter(|_| live.iter().any(|l| Arc::ptr_eq(l, &shelf)));
        match at {
            Some(at) => {
                let replaced: Vec<_> = s.runs.splice(at..at + inputs.len(), [run]).collect();
                debug_assert!(replaced.iter().zip(&inputs).all(|(a, b)| Arc::ptr_eq(a, b)));
                self.retired.lock().extend(replaced);
                self.changed.store(true, Ordering::SeqCst);
            }
            // The generation expired meanwhile: the output was never named.
            None => std::fs::remove_file(&run.path)?,
        }
        Ok(true)
    }

    /// Runs merges until told to stop (the merge thread's body).
    pub(super) fn merge_until_stopped(&self) {
        let mut backoff = MergeBackoff::default();
        loop {
            loop {
                if *self.wake.0.lock() {
                    return;
                }
                match self.merge_one() {
                    Ok(true) => backoff.succeeded(),
                    Ok(false) => break,
                    Err(e) => {
                        if let Some(left_out) = MERGE_FAILED.check() {
                            tracing::warn!(
                                error = %e,
                                retry_in_s = backoff.next().as_secs(),
                                failures_not_logged = left_out,
                                "cannot merge idempotency key runs; will retry"
                            );
                        }
                        backoff.failed();
                        break;
                    }
                }
            }
            // After a failure, the wait is not cut short by new runs (only by a stop).
            let until = std::time::Instant::now() + backoff.wait();
            let mut stop = self.wake.0.lock();
            loop {
                if *stop {
                    return;
                }
                let timed_out = self.wake.1.wait_until(&mut stop, until).timed_out();
                if timed_out || !backoff.failing() {
                    break;
                }
            }
        }
    }

    /// Tells the merge thread to stop.
    pub(super) fn stop(&self) {
        *self.wake.0.lock() = true;
        self.wake.1.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_merge_waits_longer_each_time_up_to_a_minute_and_a_success_starts_over() {
        use std::time::Duration;
        let mut b = MergeBackoff::default();
        assert!(!b.failing());
        assert_eq!(b.wait(), Duration::from_secs(1), "woken early by new runs");
        let mut waits = Vec::new();
        for _ in 0..9 {
            let logged = b.next();
            b.failed();
            assert_eq!(b.wait(), logged, "the delay the warning names");
            waits.push(b.wait().as_secs());
        }
        assert!(b.failing());
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        b.succeeded();
        assert!(!b.failing());
        assert_eq!(b.wait(), Duration::from_secs(1));
    }

    fn key(n: u64) -> Key {
        // Spread like a hash, reproducible.
        let h = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (n >> 7);
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&h.to_be_bytes());
        k[8..].copy_from_slice(&n.to_le_bytes());
        k
    }

    fn batch(entries: impl IntoIterator<Item = (u64, Vec<u8>)>) -> Batch {
        let mut b = BatchBuilder::default();
        for (n, v) in entries {
            b.push(key(n), |out| out.extend_from_slice(&v));
        }
        b.finish()
    }

    fn value(n: u64, round: u8) -> Vec<u8> {
        let mut v = n.to_le_bytes().to_vec();
        v.push(round);
        v
    }

    #[test]
    fn a_batch_is_sorted_and_keeps_the_last_of_equal_keys() {
        let b = batch([(3, vec![1]), (1, vec![2]), (3, vec![3]), (2, vec![])]);
        assert_eq!(b.len(), 3);
        assert!(b.keys().windows(2).all(|w| w[0] < w[1]), "sorted");
        assert_eq!(b.get(&key(3)), Some(&[3u8][..]), "the last one written");
        assert_eq!(b.get(&key(2)), Some(&[][..]));
        assert_eq!(b.get(&key(4)), None);
    }

    #[test]
    fn a_run_finds_every_entry_after_a_reopen_across_blocks_and_long_values() {
        let dir = tempfile::tempdir().expect("dir");
        let long = vec![7u8; 5000];
        let b = batch(
            (0..3000)
                .map(|n| (n, value(n, 0)))
                .chain([(9999, long.clone())]),
        );
        for bloom in [true, false] {
            let id = u64::from(bloom);
            let w = RunWriter::create(dir.path(), id, b.len(), bloom).expect("create");
            let run = merge_into(w, vec![Source::Batch(&b, 0)], &|| false)
                .expect("write")
                .expect("not stopped")
                .finish(id, 0)
                .expect("finish");
            assert!(run.index.len() > 20, "many blocks: {}", run.index.len());
            let reopened = Run::open(dir.path(), id, 0).expect("open");
            for r in [&run, &reopened] {
                assert_eq!(r.entries, 3001);
                for n in 0..3000 {
                    assert_eq!(r.get(&key(n)).expect("read"), Some(value(n, 0)), "{n}");
                }
                assert_eq!(r.get(&key(9999)).expect("read"), Some(long.clone()));
                for n in 10_000..10_300 {
                    assert_eq!(r.get(&key(n)).expect("read"), None, "{n}");
                }
            }
        }
    }

    #[test]
    fn a_bloom_filter_never_misses_and_rarely_says_maybe_wrongly() {
        let mut bloom = Bloom {
            words: vec![0; Bloom::words_for(10_000)].into_boxed_slice(),
        };
        for n in 0..10_000 {
            bloom.insert(&key(n));
        }
        assert!((0..10_000).all(|n| bloom.may_hold(&key(n))));
        let wrong = (100_000..200_000)
            .filter(|n| bloom.may_hold(&key(*n)))
            .count();
        assert!(wrong < 3_000, "{wrong} of 100,000 absent keys said maybe");
    }

    #[test]
    fn a_reader_that_does_not_own_the_runs_finds_the_newest_entry_on_disk_only() {
        let dir = tempfile::tempdir().expect("dir");
        let runs = Runs::open(dir.path()).expect("open");
        assert_eq!(
            read_only_get(dir.path(), Kind::Correlations, &key(1)).expect("read"),
            (None, None),
            "no manifest yet"
        );
        let (old, new) = (
            runs.start(Kind::Correlations, 1),
            runs.start(Kind::Correlations, 2),
        );
        let keys = runs.start(Kind::Keys, 3);
        runs.push(&old, batch([(1, value(1, 0)), (2, value(2, 0))]))
            .expect("push");
        runs.push(&new, batch([(1, value(1, 1))])).expect("push");
        runs.push(&keys, batch([(3, value(3, 0))])).expect("push");
        runs.set_applied(7);
        runs.persist(false).expect("persist");
        // Written after the manifest: not on disk for a reader.
        runs.push(&new, batch([(2, value(2, 1))])).expect("push");
        let get = |n| read_only_get(dir.path(), Kind::Correlations, &key(n)).expect("read");
        assert_eq!(
            get(1),
            (Some(7), Some(value(1, 1))),
            "the newer generation wins"
        );
        assert_eq!(
            get(2),
            (Some(7), Some(value(2, 0))),
            "what the manifest names"
        );
        assert_eq!(
            get(3),
            (Some(7), None),
            "the other family's runs are not read"
        );
        assert_eq!(read_only_applied(dir.path()).expect("read"), Some(7));
        // A run the manifest names that is gone (replaced by a merge whose manifest this
        // reader would read next): read again, and an error if it stays so.
        for e in std::fs::read_dir(dir.path()).expect("list") {
            let path = e.expect("entry").path();
            if path.extension().is_some_and(|x| x == "run") {
                std::fs::remove_file(path).expect("remove");
            }
        }
        let err = read_only_get(dir.path(), Kind::Correlations, &key(1)).expect_err("gone");
        assert!(err.to_string().contains("kept changing"), "{err}");
    }

    #[test]
    fn a_merge_keeps_the_newest_entry_of_each_key_in_order() {
        let dir = tempfile::tempdir().expect("dir");
        let runs = Runs::open(dir.path()).expect("open");
        let shelf = runs.start(Kind::Correlations, 1);
        // Rounds overlapping in keys: round r writes keys r*100 .. r*100+300.
        for round in 0..(PENDING_MAX * FANOUT) as u64 {
            let b = batch((round * 100..round * 100 + 300).map(|n| (n, value(n, round as u8))));
            runs.push(&shelf, b).expect("push");
        }
        assert_eq!(
            shelf.tiers(),
            vec![0; FANOUT],
            "a run per {PENDING_MAX} rounds"
        );
        assert!(
            runs.merge_one().expect("merge"),
            "four runs of tier 0 merge"
        );
        assert!(!runs.merge_one().expect("merge"), "nothing more to merge");
        assert_eq!(shelf.tiers(), vec![1]);
        let last = (PENDING_MAX * FANOUT) as u64 - 1;
        for n in 0..last * 100 + 300 {
            // The newest round that wrote n: the one with the largest r where r*100 <= n.
            let round = (n / 100).min(last);
            assert_eq!(
                shelf.get(&key(n)).expect("read"),
                Some(value(n, round as u8)),
                "{n}"
            );
        }
        let merged = shelf.state.read().runs[0].clone();
        let mut source = Source::of_run(&merged).expect("read");
        let mut previous: Option<Key> = None;
        let mut count = 0;
        while let Some((k, _)) = source.peek() {
            assert!(previous.is_none_or(|p| p < *k), "strictly ascending");
            previous = Some(*k);
            count += 1;
            source.advance().expect("read");
        }
        assert_eq!(count, last * 100 + 300, "each key once");
    }

    #[test]
    fn a_generation_that_no_longer_takes_writes_is_merged_into_one_run() {
        let dir = tempfile::tempdir().expect("dir");
        let runs = Runs::open(dir.path()).expect("open");
        let old = runs.start(Kind::Keys, 1);
        // 3 runs of tier 0, and one pending batch: nothing due while it takes writes.
        for round in 0..(3 * PENDING_MAX) as u64 {
            runs.push(&old, batch([(round % 20, value(round, 0))]))
                .expect("push");
        }
        runs.push(&old, batch([(7, value(99, 0))])).expect("push");
        assert!(
            !runs.merge_one().expect("merge"),
            "the newest generation: no merge"
        );
        let _new = runs.start(Kind::Keys, 2);
        assert!(
            !runs.merge_one().expect("merge"),
            "not while a batch is pending"
        );
        runs.persist(true).expect("persist");
        assert_eq!(old.tiers(), vec![0, 0, 0, 0]);
        assert!(runs.merge_one().expect("merge"));
        assert!(!runs.merge_one().expect("merge"));
        assert_eq!(old.tiers(), vec![1], "one run");
        assert_eq!(
            old.get(&key(7)).expect("read"),
            Some(value(99, 0)),
            "the newest wins"
        );
        for n in (0..20).filter(|n| *n != 7) {
            // The last round that wrote n: the largest round below 48 with round % 20 == n.
            let round = (0..(3 * PENDING_MAX) as u64).filter(|r| r % 20 == n).max();
            assert_eq!(
                old.get(&key(n)).expect("read"),
                round.map(|r| value(r, 0)),
                "{n}"
            );
        }
    }

    #[test]
    fn a_merge_told_to_stop_leaves_its_inputs_and_no_file_behind() {
        let dir = tempfile::tempdir().expect("dir");
        let runs = Runs::open(dir.path()).expect("open");
        let shelf = runs.start(Kind::Keys, 1);
        for round in 0..(PENDING_MAX * FANOUT) as u64 {
            let b = batch((round * 1250..(round + 1) * 1250).map(|n| (n, value(n, 0))));
            runs.push(&shelf, b).expect("push");
        }
        let files = || std::fs::read_dir(dir.path()).expect("list").count();
        let before = files();
        runs.stop();
        assert!(!runs.merge_one().expect("merge"), "stopped: nothing merged");
        assert_eq!(shelf.tiers(), vec![0; FANOUT]);
        assert_eq!(files(), before, "the cut-short output was deleted");
        assert_eq!(
            shelf.get(&key(70_000)).expect("read"),
            Some(value(70_000, 0))
        );
    }

    #[test]
    fn only_runs_named_by_a_manifest_on_disk_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let runs = Runs::open(dir.path()).expect("open");
            let shelf = runs.start(Kind::Keys, 5);
            runs.push(&shelf, batch([(1, value(1, 0))])).expect("push");
            runs.set_applied(10);
            runs.persist(true).expect("persist");
            // After the manifest: a flushed run and a pending batch, neither named.
            for round in 0..PENDING_MAX as u64 {
                runs.push(&shelf, batch([(100 + round, value(100 + round, 1))]))
                    .expect("push");
            }
            runs.push(&shelf, batch([(2, value(2, 0))])).expect("push");
            runs.set_applied(20);
            assert_eq!(shelf.tiers(), vec![0, 0]);
            // A crash: no persist.
        }
        let runs = Runs::open(dir.path()).expect("reopen");
        assert_eq!(runs.applied(), Some(10), "the manifest's position");
        let shelves = runs.shelves(Kind::Keys);
        assert_eq!(shelves.len(), 1);
        let (started, shelf) = &shelves[0];
        assert_eq!(*started, 5);
        assert_eq!(shelf.get(&key(1)).expect("read"), Some(value(1, 0)));
        assert_eq!(
            shelf.get(&key(100)).expect("read"),
            None,
            "from the log again"
        );
        assert_eq!(shelf.get(&key(2)).expect("read"), None);
        let files = std::fs::read_dir(dir.path())
            .expect("list")
            .filter(|e| e.as_ref().expect("entry").path().extension() == Some("run".as_ref()))
            .count();
        assert_eq!(files, 1, "the unnamed run was deleted");
    }

    #[test]
    fn a_persist_with_nothing_new_writes_no_manifest() {
        let dir = tempfile::tempdir().expect("dir");
        let runs = Runs::open(dir.path()).expect("open");
        let shelf = runs.start(Kind::Keys, 1);
        runs.push(&shelf, batch([(1, value(1, 0))])).expect("push");
        runs.set_applied(3);
        runs.persist(true).expect("persist");
        let manifest = dir.path().join(MANIFEST);
        // Taken away to see whether the next persist writes one.
        std::fs::remove_file(&manifest).expect("remove");
        runs.set_applied(3);
        runs.persist(true).expect("persist");
        assert!(!manifest.exists(), "the same position: nothing written");
        runs.set_applied(4);
        runs.persist(true).expect("persist");
        assert!(manifest.exists(), "a new position: a new manifest");
    }

    #[test]
    fn merged_and_expired_runs_are_deleted_only_after_the_next_manifest() {
        let dir = tempfile::tempdir().expect("dir");
        let runs = Runs::open(dir.path()).expect("open");
        let shelf = runs.start(Kind::Keys, 1);
        for round in 0..(PENDING_MAX * FANOUT) as u64 {
            runs.push(&shelf, batch([(round, value(round, 0))]))
                .expect("push");
        }
        runs.persist(true).expect("persist");
        let count = || {
            std::fs::read_dir(dir.path())
                .expect("list")
                .filter(|e| e.as_ref().expect("entry").path().extension() == Some("run".as_ref()))
                .count()
        };
        assert_eq!(count(), FANOUT);
        assert!(runs.merge_one().expect("merge"));
        assert_eq!(
            count(),
            FANOUT + 1,
            "the inputs stay: the manifest names them"
        );
        // A reopen now (a crash) finds what the manifest names.
        let again = Runs::open(dir.path());
        assert!(again.is_ok(), "{again:?}");
        drop(again);
        let runs = Runs::open(dir.path()).expect("reopen");
        let (_, shelf) = runs.shelves(Kind::Keys).remove(0);
        assert_eq!(
            shelf.tiers(),
            vec![0; FANOUT],
            "the merge's output was not named"
        );
        assert!(runs.merge_one().expect("merge"));
        runs.persist(true).expect("persist");
        assert_eq!(count(), 1, "inputs deleted after the manifest");
        for round in 0..(PENDING_MAX * FANOUT) as u64 {
            assert_eq!(shelf.get(&key(round)).expect("read"), Some(value(round, 0)));
        }
        runs.drop_generation(&shelf);
        assert_eq!(count(), 1, "kept until the next manifest");
        runs.persist(true).expect("persist");
        assert_eq!(count(), 0);
        let runs = Runs::open(dir.path()).expect("reopen");
        assert!(
            runs.shelves(Kind::Keys).is_empty(),
            "the generation is gone"
        );
    }

    #[test]
    fn a_damaged_run_or_manifest_is_refused_with_its_name() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let runs = Runs::open(dir.path()).expect("open");
            let shelf = runs.start(Kind::Keys, 1);
            runs.push(&shelf, batch((0..500).map(|n| (n, value(n, 0)))))
                .expect("push");
            runs.persist(true).expect("persist");
        }
        let run = run_path(dir.path(), 0);
        let bytes = std::fs::read(&run).expect("read");
        // A bit flipped in the first block: found when the block is read.
        let mut damaged = bytes.clone();
        damaged[20] ^= 1;
        std::fs::write(&run, &damaged).expect("write");
        let runs = Runs::open(dir.path()).expect("the index is intact");
        let (_, shelf) = runs.shelves(Kind::Keys).remove(0);
        let first = (0..500).map(key).min().expect("keys");
        let err = shelf.get(&first).expect_err("damaged block");
        assert!(
            err.to_string().contains("block 0 fails its checksum"),
            "{err}"
        );
        drop(runs);
        // A bit flipped in the index: refused at open.
        let mut damaged = bytes.clone();
        let at = bytes.len() - TRAILER - 10;
        damaged[at] ^= 1;
        std::fs::write(&run, &damaged).expect("write");
        let err = Runs::open(dir.path()).expect_err("damaged index");
        assert!(
            err.to_string().contains("0000000000000000.run is damaged"),
            "{err}"
        );
        // Cut short.
        std::fs::write(&run, &bytes[..bytes.len() - 1]).expect("write");
        assert!(Runs::open(dir.path()).is_err());
        std::fs::write(&run, &bytes).expect("write");
        assert!(Runs::open(dir.path()).is_ok());
        let manifest = dir.path().join(MANIFEST);
        let mut m = std::fs::read(&manifest).expect("read");
        m[9] ^= 1;
        std::fs::write(&manifest, &m).expect("write");
        let err = Runs::open(dir.path()).expect_err("damaged manifest");
        assert!(err.to_string().contains("manifest"), "{err}");
    }
}
