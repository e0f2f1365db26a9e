//! Event bodies beside the database (schema 16).
//!
//! An events row's body is most of its bytes (the event's JSON, ~750 bytes for a Cognigy NLU
//! event, against ~400 for the rest of the row). In the database each byte is written three
//! times: the log, the WAL, then the checkpointer's copy into the database file. Here the
//! projector appends the body to a file of its own instead and the row keeps its place
//! (`body_at`: the file's number and the offset), so a body is written twice, both times as an
//! append, and the WAL and the checkpointer carry only the row's other columns
//! (bench/README.md, fiftieth session: 4.7 % less CPU per request, 6 % more requests a second).
//!
//! # Files
//! `STORE.bodies/NNNNNNNNNN.bodies`, numbered from 1, each up to [`FILE_BYTES`]; a process
//! never appends to a file an earlier process wrote (it starts the next number), so a torn
//! tail is never written after. A record is `len` (u32), a CRC-32 of the row and the body
//! (u32), the events rowid (i64), all little-endian, then the body's bytes. A reader checks
//! the length, the checksum and the rowid, so a row never reads another's body or a torn or
//! erased one without an error. The records of a transaction that fails are taken back off
//! the files (`discard`: no row names them, and the round is applied again).
//!
//! # Which bodies go there
//! Only an event whose rowid is its id's number (not a moved one) and whose id time is
//! within [`Bodies::window_ms`] before now and not after the system clock; any other body
//! stays in its row (`body_at` NULL), as every body did before schema 16. That bound is what
//! lets retention find every row a file holds (below).
//!
//! # Durability (see the store's "Recovery")
//! The projector writes its records' bytes (`write_out`) before the transaction that names
//! them commits, so a reader, in this process or another, finds them. The checkpointer flushes
//! every file written to (`persist`) before it removes a log segment, with the database and
//! the keys: a segment goes only once every body of its records is on the disk. Opening the
//! store checks the body of every record still in the log that the database holds (the ones a
//! power cut could have lost, `check`), and writes a lost one into its row.
//! Between flushes the writer starts each file's write-back every 256 KiB
//! (`crate::writeback`), so that a flush finds little left and the disk gets a steady
//! stream: flushed all at once, a second's records (~60 MB at full speed) queued ahead of
//! the log's `fdatasync`s for several milliseconds (bench/README.md, fifty-fourth session).
//!
//! # Retention
//! Each pruning pass copies the bodies of the events retention keeps (an undelivered row, a
//! dead letter) into their rows, in the statement after the one that deletes the others
//! (`project::maintain`). When a pass ends a cycle, every event before the cycle's end has
//! been deleted or copied since it was written (an event's id time is within the window when
//! it is written, so no pass had passed it yet), and a file last written before that time
//! names no row: the projector condemns it, and the checkpointer removes it after its next
//! flush of the WAL, once the copies are durable. Removing a file also closes every reader's
//! handle of it (`Reader::forget_files`), so its disk space comes back at once.
//!
//! # Forgetting
//! A forget empties its events rows (`project::forget_events`); after the transaction commits,
//! the projector overwrites each of their records here with zeros (`erase_pending`), flushed
//! with the next `persist`. A crash between the commit and the overwrite leaves the bytes in
//! a file no row names, until retention removes the file.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::writeback::Appender;

/// A file takes records until it holds this many bytes.
pub(super) const FILE_BYTES: u64 = 64 << 20;

/// The bytes before a record's body: its length, checksum and rowid.
const HEADER: usize = 16;

/// `body_at` is the file's number above these bits and the offset below them.
const OFFSET_BITS: u32 = 40;

/// Bodies waiting for `write_out` are written early past this many bytes.
const BUFFER_BYTES: usize = 1 << 20;

/// A file is condemned this long after it was last written at the earliest, beyond the
/// rows' times (the file system's clock is coarser than the events').
const MTIME_MARGIN: Duration = Duration::from_secs(1);

/// The directory of the store at `db`'s bodies.
pub(super) fn dir_of(db: &Path) -> PathBuf {
    db.with_extension("bodies")
}

fn file_name(n: u32) -> String {
    format!("{n:010}.bodies")
}

/// The number of a file named by [`file_name`].
fn number_of(name: &str) -> Option<u32> {
    name.strip_suffix(".bodies")?.parse().ok()
}

/// `body_at` for a record at `offset` in file `file`.
fn place(file: u32, offset: u64) -> i64 {
    (i64::from(file) << OFFSET_BITS) | offset as i64
}

fn split(at: i64) -> Option<(u32, u64)> {
    let file = u32::try_from(at >> OFFSET_BITS).ok()?;
    let offset = u64::try_from(at & ((1 << OFFSET_BITS) - 1)).ok()?;
    (at >= 0).then_some((file, offset))
}

fn checksum(row: i64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&row.to_le_bytes());
    h.update(body);
    h.finalize()
}

fn damaged(at: i64, why: &str) -> io::Error {
    let (file, offset) = split(at).unwrap_or((0, 0));
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("event body {} at offset {offset}: {why}", file_name(file)),
    )
}

/// The time an event's rowid was made from (its id's first 48 bits, `crate::event_id`).
fn row_time(row: i64) -> i64 {
    row >> 15
}

fn system_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Reads bodies by their place, keeping a few files open.
#[derive(Debug)]
pub(super) struct Reader {
    dir: PathBuf,
    open: Mutex<HashMap<u32, Arc<File>>>,
}

/// Files a reader keeps open at most.
const OPEN_FILES: usize = 4;

/// Every reader of the process, so that removing a file closes their handles of it: an open
/// handle keeps a removed file's disk space (up to 64 MiB a file) for as long as it is open,
/// and a connection that reads no body after the removal (an idle one) would keep it for
/// good. Dead ones are dropped at each registration.
static READERS: Mutex<Vec<std::sync::Weak<Reader>>> = Mutex::new(Vec::new());

impl Reader {
    pub(super) fn new(dir: PathBuf) -> Arc<Reader> {
        let reader = Arc::new(Reader {
            dir,
            open: Mutex::new(HashMap::new()),
        });
        let mut all = READERS.lock();
        all.retain(|r| r.strong_count() > 0);
        all.push(Arc::downgrade(&reader));
        reader
    }

    /// Closes every reader's handles of `files` in `dir` (a read in progress keeps its own
    /// until it ends).
    fn forget_files(dir: &Path, files: &[u32]) {
        let all: Vec<Arc<Reader>> = READERS
            .lock()
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        for reader in all.iter().filter(|r| r.dir == dir) {
            let mut open = reader.open.lock();
            for n in files {
                open.remove(n);
            }
        }
    }

    fn file(&self, n: u32) -> io::Result<Arc<File>> {
        if let Some(f) = self.open.lock().get(&n) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(self.dir.join(file_name(n)))?);
        let mut open = self.open.lock();
        if open.len() >= OPEN_FILES {
            open.clear();
        }
        open.insert(n, f.clone());
        Ok(f)
    }

    /// The body of the events row `row` at `at`.
    pub(super) fn read(&self, at: i64, row: i64) -> io::Result<Vec<u8>> {
        let (n, offset) = split(at).ok_or_else(|| damaged(at, "no such place"))?;
        let file = self.file(n).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "event body file {}: {e}",
                    self.dir.join(file_name(n)).display()
                ),
            )
        })?;
        let mut header = [0u8; HEADER];
        file.read_exact_at(&mut header, offset)
            .map_err(|_| damaged(at, "cut short"))?;
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let sum = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let stored_row = i64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        if stored_row != row {
            return Err(damaged(at, "another row's record, or erased"));
        }
        // A large length past the file's end is damage, found before a buffer is made for
        // it (a short one fails the read below).
        if len > 1 << 20 && offset + (HEADER as u64) + u64::from(len) > file.metadata()?.len() {
            return Err(damaged(at, "cut short"));
        }
        let mut body = vec![0u8; len as usize];
        file.read_exact_at(&mut body, offset + HEADER as u64)
            .map_err(|_| damaged(at, "cut short"))?;
        if checksum(row, &body) != sum {
            return Err(damaged(at, "checksum mismatch"));
        }
        Ok(body)
    }
}

/// The projector's file and the records not written to it yet.
#[derive(Debug)]
struct Writer {
    /// The file records go to, its logical length (written and buffered).
    number: u32,
    len: u64,
    /// The open file and its number (once something was written to it); its write-back
    /// is started as it fills (`crate::writeback`: a steady stream for the disk, not a burst
    /// at each `persist`).
    file: Option<(u32, Appender)>,
    /// Records not written yet: the file each goes to and its bytes (two files when one
    /// filled up since the last `write_out`).
    pending: Vec<(u32, Vec<u8>)>,
    /// A written buffer of `pending`, emptied, kept for the next: a round's records (~400 KB
    /// at full speed) grew a new buffer from 64 KiB each round, and the reallocations' copies
    /// were ~3 % of the projector's CPU (`perf --call-graph dwarf`, fifty-seventh session).
    spare: Vec<u8>,
    /// An early write (`append`, past `BUFFER_BYTES`) failed since the last `write_out`, and
    /// why: records the round's rows name are lost, so its transaction must not commit.
    failed: Option<io::Error>,
    /// Where the round's first record went (file, length before it): everything from there
    /// on belongs to a transaction that has not committed yet, and goes if it fails
    /// (`discard`). Taken by `committed` and `discard`.
    round: Option<(u32, u64)>,
}

/// The bodies of one store (see the module's documentation).
#[derive(Debug)]
pub(super) struct Bodies {
    dir: PathBuf,
    writer: Mutex<Writer>,
    /// Files written since the last `persist`, and whether one was made.
    dirty: Mutex<(BTreeSet<u32>, bool)>,
    /// Files no row names, removed after the database's next flush (`remove_condemned`).
    condemned: Mutex<Vec<u32>>,
    /// Records of forgotten events, overwritten once their transaction has committed.
    erasures: Mutex<Vec<(i64, i64)>>,
    reader: Arc<Reader>,
    /// A body goes to a file only for an event whose id time is at most this long ago.
    window_ms: i64,
}

impl Bodies {
    /// Opens (or makes) the bodies directory of the store at `db`. New records go to a file
    /// after every one there. `retention_ms` bounds the window (see the module's docs).
    pub(super) fn open(db: &Path, retention_ms: i64) -> io::Result<Bodies> {
        let dir = dir_of(db);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let last = files(&dir)?.last().copied().unwrap_or(0);
        Ok(Bodies {
            writer: Mutex::new(Writer {
                number: last + 1,
                len: 0,
                file: None,
                pending: Vec::new(),
                spare: Vec::new(),
                failed: None,
                round: None,
            }),
            dirty: Mutex::new((BTreeSet::new(), false)),
            condemned: Mutex::new(Vec::new()),
            erasures: Mutex::new(Vec::new()),
            reader: Reader::new(dir.clone()),
            dir,
            window_ms: (retention_ms / 2).clamp(1, 60_000),
        })
    }

    /// Where `body` of the events row `row` goes: a place in a file (the record buffered
    /// until `write_out`), or `None` when it stays in the row (see the module's docs).
    /// `body` may also be an event's whole record (`beside`): a reader knows which by
    /// what names the place.
    pub(super) fn append(&self, row: i64, body: &[u8]) -> Option<i64> {
        if row <= 0 || body.len() > u32::MAX as usize {
            return None;
        }
        let t = row_time(row);
        if t > system_now_ms() || t <= crate::now_millis() - self.window_ms {
            return None;
        }
        let record = HEADER + body.len();
        let mut w = self.writer.lock();
        if w.round.is_none() {
            w.round = Some((w.number, w.len));
        }
        if w.len > 0 && w.len + record as u64 > FILE_BYTES {
            w.number += 1;
            w.len = 0;
        }
        let at = place(w.number, w.len);
        let number = w.number;
        if w.pending.last().is_none_or(|(n, _)| *n != number) {
            let mut buf = std::mem::take(&mut w.spare);
            buf.reserve(64 * 1024);
            w.pending.push((number, buf));
        }
        let buf = &mut w.pending.last_mut().expect("pushed").1;
        buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
        buf.extend_from_slice(&checksum(row, body).to_le_bytes());
        buf.extend_from_slice(&row.to_le_bytes());
        buf.extend_from_slice(body);
        w.len += record as u64;
        let buffered: usize = w.pending.iter().map(|(_, b)| b.len()).sum();
        if buffered >= BUFFER_BYTES {
            if let Err(e) = self.write_locked(&mut w) {
                // Reported by the `write_out` before the commit.
                w.failed = Some(e);
            }
        }
        Some(at)
    }

    /// Writes the buffered records to their files (before the transaction naming them commits).
    pub(super) fn write_out(&self) -> io::Result<()> {
        let mut w = self.writer.lock();
        let r = self.write_locked(&mut w);
        if let Some(e) = w.failed.take() {
            return Err(io::Error::new(
                e.kind(),
                format!("an event body could not be written to its file ({e}); the round is applied again"),
            ));
        }
        r
    }

    fn write_locked(&self, w: &mut Writer) -> io::Result<()> {
        while let Some(&(number, _)) = w.pending.first() {
            let Writer { file, pending, .. } = &mut *w;
            let r = (|| {
                if !matches!(file, Some((n, _)) if *n == number) {
                    let f = OpenOptions::new()
                        .create(true)
                        .append(true)
                        .mode(0o600)
                        .open(self.dir.join(file_name(number)))?;
                    *file = Some((number, Appender::new(f)?));
                    self.dirty.lock().1 = true;
                }
                let (_, f) = file.as_mut().expect("opened");
                f.write_all(&pending[0].1)
            })();
            self.dirty.lock().0.insert(number);
            if let Err(e) = r {
                // The file's length is no longer known: what follows goes to the next file,
                // and the transaction that named these records rolls back.
                w.pending.clear();
                w.file = None;
                w.number = w.number.max(number) + 1;
                w.len = 0;
                return Err(e);
            }
            let (_, mut written) = w.pending.remove(0);
            // One grown past this by a body that large is let go (the memory it holds).
            if written.capacity() <= 2 * BUFFER_BYTES {
                written.clear();
                w.spare = written;
            }
        }
        Ok(())
    }

    /// The transaction naming the records appended since the last call (or `discard`)
    /// committed: they stay.
    pub(super) fn committed(&self) {
        self.writer.lock().round = None;
    }

    /// The transaction naming the records appended since the last `committed` failed (they
    /// are applied again): drops the ones not written yet, and takes the written ones back
    /// off their files (the files the round began are removed, the one it began in cut back
    /// to its length before), since no row names them. Without that, a commit that kept
    /// failing (a lock held from outside) would append the same round again at every try.
    /// If the cut fails, the next records go to a new file and these stay, named by no row,
    /// until retention removes the file.
    pub(super) fn discard(&self) {
        let mut w = self.writer.lock();
        w.failed = None;
        w.pending.clear();
        let Some((n, len)) = w.round.take() else {
            return;
        };
        w.file = None;
        let later: Vec<u32> = (n + 1..=w.number).collect();
        let cut = (|| {
            self.remove_files(&later)?;
            match OpenOptions::new()
                .write(true)
                .open(self.dir.join(file_name(n)))
            {
                Ok(f) => f.set_len(len),
                Err(e) if e.kind() == io::ErrorKind::NotFound && len == 0 => Ok(()),
                Err(e) => Err(e),
            }
        })();
        match cut {
            Ok(()) => {
                w.number = n;
                w.len = len;
            }
            Err(_) => {
                w.number = w.number.max(n) + 1;
                w.len = 0;
            }
        }
    }

    /// Flushes every file written since the last call (the checkpointer, before it removes a
    /// log segment); under `sync = "off"` nothing is flushed, as for the rest of the store.
    pub(super) fn persist(&self, sync: crate::config::SyncMode) -> io::Result<()> {
        let (files, made) = {
            let mut d = self.dirty.lock();
            (std::mem::take(&mut d.0), std::mem::take(&mut d.1))
        };
        if sync == crate::config::SyncMode::Off {
            return Ok(());
        }
        let r = (|| {
            for n in &files {
                match File::open(self.dir.join(file_name(*n))) {
                    Ok(f) => f.sync_data()?,
                    // Removed since (condemned): nothing of it is needed.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            if made {
                File::open(&self.dir)?.sync_all()?;
            }
            Ok(())
        })();
        if r.is_err() {
            let mut d = self.dirty.lock();
            d.0.extend(files);
            d.1 |= made;
        }
        r
    }

    /// The body of row `row` at `at`.
    pub(super) fn read(&self, at: i64, row: i64) -> io::Result<Vec<u8>> {
        self.reader.read(at, row)
    }

    /// Notes the record of row `row` at `at` for overwriting once the transaction commits.
    pub(super) fn erase_later(&self, at: i64, row: i64) {
        self.erasures.lock().push((at, row));
    }

    /// Overwrites the records noted by `erase_later` with zeros (after the commit).
    pub(super) fn erase_pending(&self) -> io::Result<()> {
        let erasures = std::mem::take(&mut *self.erasures.lock());
        for (at, row) in erasures {
            let Some((n, offset)) = split(at) else {
                continue;
            };
            let path = self.dir.join(file_name(n));
            let f = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let mut header = [0u8; HEADER];
            if f.read_exact_at(&mut header, offset).is_err() {
                continue;
            }
            if i64::from_le_bytes(header[8..16].try_into().expect("8 bytes")) != row {
                continue;
            }
            let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
            f.write_all_at(&vec![0u8; HEADER + len], offset)?;
            self.dirty.lock().0.insert(n);
        }
        Ok(())
    }

    /// Forgets the erasures of a transaction that rolled back.
    pub(super) fn drop_erasures(&self) {
        self.erasures.lock().clear();
    }

    /// Condemns every file but the one being written that was last written before
    /// `before_ms` (Unix ms) by more than a margin: a pruning cycle has looked at every
    /// event up to that time (see the module's docs).
    pub(super) fn condemn_before(&self, before_ms: i64) -> io::Result<usize> {
        let current = self.writer.lock().number;
        let bound = UNIX_EPOCH
            + Duration::from_millis(u64::try_from(before_ms).unwrap_or(0))
                .saturating_sub(MTIME_MARGIN);
        let mut found = Vec::new();
        for n in files(&self.dir)? {
            if n >= current {
                continue;
            }
            let meta = match std::fs::metadata(self.dir.join(file_name(n))) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.modified()? < bound {
                found.push(n);
            }
        }
        let count = found.len();
        let mut condemned = self.condemned.lock();
        for n in found {
            if !condemned.contains(&n) {
                condemned.push(n);
            }
        }
        Ok(count)
    }

    /// The condemned files, taken to be removed after the WAL's next flush.
    pub(super) fn take_condemned(&self) -> Vec<u32> {
        std::mem::take(&mut *self.condemned.lock())
    }

    /// Whether files wait to be removed.
    pub(super) fn has_condemned(&self) -> bool {
        !self.condemned.lock().is_empty()
    }

    /// Removes `files` (taken by `take_condemned` before the database's flush).
    pub(super) fn remove(&self, files: &[u32]) -> io::Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        self.remove_files(files)?;
        File::open(&self.dir)?.sync_all()
    }

    /// Removes `files` in order until one fails (one already gone counts as removed), and
    /// closes every reader's handles of the ones removed.
    fn remove_files(&self, files: &[u32]) -> io::Result<()> {
        let mut removed = Vec::with_capacity(files.len());
        let result = files.iter().try_for_each(|n| {
            match std::fs::remove_file(self.dir.join(file_name(*n))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            removed.push(*n);
            Ok(())
        });
        Reader::forget_files(&self.dir, &removed);
        result
    }
}

/// The numbers of the bodies' files in `dir`, in order.
fn files(dir: &Path) -> io::Result<Vec<u32>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(n) = entry.file_name().to_str().and_then(number_of) {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rowid made now, as `crate::event_id` makes one (time, then a sequence).
    fn row_now(seq: i64) -> i64 {
        (crate::now_millis() << 15) | seq
    }

    #[test]
    fn a_body_is_read_back_from_its_place_and_only_by_its_row() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("s.db");
        let bodies = Bodies::open(&db, 86_400_000).expect("open");
        let (r1, r2) = (row_now(1), row_now(2));
        let a = bodies.append(r1, b"{\"a\":1}").expect("placed");
        let b = bodies.append(r2, b"{\"b\":\"two\"}").expect("placed");
        bodies.write_out().expect("written");
        assert_eq!(bodies.read(a, r1).expect("read"), b"{\"a\":1}");
        assert_eq!(bodies.read(b, r2).expect("read"), b"{\"b\":\"two\"}");
        let wrong = bodies.read(a, r2).expect_err("another row");
        assert!(wrong.to_string().contains("another row"), "{wrong}");
        // A reader of its own (another connection, another process) finds them too.
        let reader = Reader::new(dir_of(&db));
        assert_eq!(reader.read(b, r2).expect("read"), b"{\"b\":\"two\"}");
    }

    #[test]
    fn bodies_outside_the_window_stay_in_their_rows() {
        let dir = tempfile::tempdir().expect("dir");
        let bodies = Bodies::open(&dir.path().join("s.db"), 10_000).expect("open");
        // A moved event (negative rowid), one from before the window, one from the future.
        assert_eq!(bodies.append(-3, b"x"), None);
        let old = (crate::now_millis() - 6_000) << 15;
        assert_eq!(bodies.append(old, b"x"), None);
        let ahead = (system_now_ms() + 60_000) << 15;
        assert_eq!(bodies.append(ahead, b"x"), None);
        assert!(bodies.append(row_now(0), b"x").is_some());
    }

    #[test]
    fn a_damaged_or_erased_record_is_an_error_not_another_body() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("s.db");
        let bodies = Bodies::open(&db, 86_400_000).expect("open");
        let row = row_now(7);
        let at = bodies.append(row, b"secret text").expect("placed");
        let other = bodies.append(row + 1, b"kept text").expect("placed");
        bodies.write_out().expect("written");
        let path = dir_of(&db).join(file_name(1));
        // A flipped byte in the body.
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.write_all_at(b"S", HEADER as u64).expect("write");
        let e = bodies.read(at, row).expect_err("damaged");
        assert!(e.to_string().contains("checksum"), "{e}");
        // Erased after a forget: zeros, the other record untouched.
        bodies.erase_later(at, row);
        bodies.erase_pending().expect("erased");
        let bytes = std::fs::read(&path).expect("file");
        assert!(!bytes.windows(11).any(|w| w == b"ecret text"));
        assert!(bodies.read(at, row).is_err());
        assert_eq!(bodies.read(other, row + 1).expect("read"), b"kept text");
        // Cut short, as after a power cut before the flush.
        std::fs::write(&path, &bytes[..bytes.len() - 3]).expect("truncate");
        let e = Reader::new(dir_of(&db))
            .read(other, row + 1)
            .expect_err("cut");
        assert!(e.to_string().contains("cut short"), "{e}");
    }

    #[test]
    fn a_full_file_is_followed_by_the_next_and_a_new_process_starts_after_both() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("s.db");
        let bodies = Bodies::open(&db, 86_400_000).expect("open");
        let big = "x".repeat(1 << 20);
        let mut placed = Vec::new();
        for i in 0..70 {
            let row = row_now(i);
            placed.push((row, bodies.append(row, big.as_bytes()).expect("placed")));
            if i % 10 == 0 {
                bodies.write_out().expect("written");
            }
        }
        bodies.write_out().expect("written");
        assert_eq!(files(&dir_of(&db)).expect("files"), vec![1, 2]);
        for (row, at) in &placed {
            assert_eq!(bodies.read(*at, *row).expect("read").len(), 1 << 20);
        }
        bodies
            .persist(crate::config::SyncMode::Full)
            .expect("flushed");
        drop(bodies);
        let again = Bodies::open(&db, 86_400_000).expect("open");
        let at = again.append(row_now(99), b"y").expect("placed");
        assert_eq!(split(at), Some((3, 0)));
    }

    #[test]
    fn only_files_last_written_before_the_bound_are_condemned_and_never_the_current_one() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("s.db");
        let bodies = Bodies::open(&db, 86_400_000).expect("open");
        bodies.append(row_now(1), b"a").expect("placed");
        bodies.write_out().expect("written");
        // The current file is never condemned, however old.
        assert_eq!(
            bodies.condemn_before(system_now_ms() + 60_000).expect("ok"),
            0
        );
        drop(bodies);
        let bodies = Bodies::open(&db, 86_400_000).expect("open");
        assert_eq!(
            bodies.condemn_before(system_now_ms() - 60_000).expect("ok"),
            0
        );
        assert!(!bodies.has_condemned());
        assert_eq!(
            bodies.condemn_before(system_now_ms() + 60_000).expect("ok"),
            1
        );
        let gone = bodies.take_condemned();
        assert_eq!(gone, vec![1]);
        bodies.remove(&gone).expect("removed");
        assert!(files(&dir_of(&db)).expect("files").is_empty());
    }

    #[test]
    fn a_failed_rounds_records_are_taken_back_off_their_files_and_committed_ones_stay() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("s.db");
        let bodies = Bodies::open(&db, 86_400_000).expect("open");
        let len_of = |n: u32| std::fs::metadata(dir_of(&db).join(file_name(n))).map(|m| m.len());
        let kept_row = row_now(1);
        let kept = bodies.append(kept_row, b"kept").expect("placed");
        bodies.write_out().expect("written");
        bodies.committed();
        let before = len_of(1).expect("file 1");
        // A failure in a round with no records of its own changes nothing.
        bodies.discard();
        assert_eq!(len_of(1).expect("file 1"), before);
        // A round that wrote past the end of file 1 into file 2, then failed to commit.
        let big = "x".repeat(1 << 20);
        let mut lost = Vec::new();
        for i in 0..70 {
            let row = row_now(100 + i);
            lost.push((row, bodies.append(row, big.as_bytes()).expect("placed")));
            if i % 10 == 0 {
                bodies.write_out().expect("written");
            }
        }
        bodies.write_out().expect("written");
        assert!(len_of(2).is_ok(), "the round filled file 1");
        bodies.discard();
        assert_eq!(
            len_of(1).expect("file 1"),
            before,
            "cut back to the round's start"
        );
        assert!(len_of(2).is_err(), "the file the round began is removed");
        assert!(lost.iter().all(|(row, at)| bodies.read(*at, *row).is_err()));
        // Applied again: it goes where the failed one went, and the earlier record stays.
        let row = row_now(200);
        let again = bodies.append(row, b"again").expect("placed");
        assert_eq!(split(again), Some((1, before)));
        bodies.write_out().expect("written");
        bodies.committed();
        assert_eq!(bodies.read(kept, kept_row).expect("read"), b"kept");
        assert_eq!(bodies.read(again, row).expect("read"), b"again");
        // Committed, a round stays whatever fails after it.
        bodies.discard();
        assert_eq!(bodies.read(again, row).expect("read"), b"again");
    }

    /// The files under `dir` this process has open (`/proc/self/fd`).
    fn open_under(dir: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .expect("fds")
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target.starts_with(dir))
            .count()
    }

    #[test]
    fn removing_a_file_closes_every_readers_handle_of_it_and_no_other() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("s.db");
        let bodies = Bodies::open(&db, 86_400_000).expect("open");
        let row = row_now(1);
        let at = bodies.append(row, b"old").expect("placed");
        bodies.write_out().expect("written");
        drop(bodies);
        // Another store's reader, whose file 1 must stay open.
        let elsewhere = tempfile::tempdir().expect("dir");
        let other_db = elsewhere.path().join("s.db");
        let other = Bodies::open(&other_db, 86_400_000).expect("open");
        let other_at = other.append(row, b"other").expect("placed");
        other.write_out().expect("written");
        drop(other);
        let other_reader = Reader::new(dir_of(&other_db));
        other_reader.read(other_at, row).expect("read");
        // Two connections' readers have read from file 1 and keep it open; then a new
        // process's retention removes it.
        let readers = [Reader::new(dir_of(&db)), Reader::new(dir_of(&db))];
        for r in &readers {
            assert_eq!(r.read(at, row).expect("read"), b"old");
        }
        assert_eq!(open_under(&dir_of(&db)), 2);
        let bodies = Bodies::open(&db, 86_400_000).expect("open");
        assert_eq!(
            bodies.condemn_before(system_now_ms() + 60_000).expect("ok"),
            1
        );
        bodies.remove(&bodies.take_condemned()).expect("removed");
        assert_eq!(
            open_under(&dir_of(&db)),
            0,
            "a removed file is still open, keeping its disk space"
        );
        assert!(readers.iter().all(|r| r.open.lock().is_empty()));
        assert_eq!(open_under(&dir_of(&other_db)), 1);
        assert_eq!(other_reader.read(other_at, row).expect("read"), b"other");
    }

    #[test]
    fn a_failed_early_write_fails_the_rounds_write_out_and_the_next_round_goes_on() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("s.db");
        let bodies = Bodies::open(&db, 86_400_000).expect("open");
        // The file the records go to cannot be opened (a directory in its place).
        std::fs::create_dir(dir_of(&db).join(file_name(1))).expect("in the way");
        let big = "x".repeat(BUFFER_BYTES);
        bodies.append(row_now(1), big.as_bytes()).expect("placed");
        bodies.append(row_now(2), b"small").expect("placed");
        assert!(
            bodies.write_out().is_err(),
            "the round's first record is lost"
        );
        bodies.discard();
        let row = row_now(3);
        let at = bodies.append(row, b"again").expect("placed");
        bodies.write_out().expect("the next file");
        assert_eq!(bodies.read(at, row).expect("read"), b"again");
    }
}
