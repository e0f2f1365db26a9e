//! The embedded store's commit point: an append-only log of checksummed records, split into
//! segment files `<first record number, 20 digits>.log` in one directory.
//!
//! A record is `len: u32 | crc: u32 | lsn: u64 | payload` (little-endian), `crc` being the
//! CRC-32 of the `lsn` bytes and the payload. Record numbers (LSNs) rise by one from record to
//! record and from segment to segment, so a reader can tell a record from a stale or torn one.
//!
//! Writing: [`LogWriter::append`] buffers records; [`LogWriter::commit`] writes the buffer
//! with one `write` and, under `sync = "full"`, one `fdatasync`, and only then are the
//! records committed. A failed write is cut back off the file, so the records of a failed
//! group never reach a reader; if even that fails, the writer refuses every later commit.
//! Each write ends with an *end mark* (a header of zeros, never a record's: a record's length
//! is at least 1), which the next write overwrites: where the records end is written down,
//! whatever follows them in the file.
//!
//! Spare segments (under `sync = "full"`): an `fdatasync` after an append that grows the file
//! must also commit the file system's journal (the file's size and its new blocks), and on
//! ext4 that commit first writes out every other file's newly allocated data (the database's
//! checkpoints, the audit log): measured here, a commit's write and flush took a third to
//! a half less at the median overwriting (bench/README.md, sixteenth session). So segments are
//! made ahead of the writer, as `spare.log`, at their full size: either zero-filled
//! (`Spare::prepare`) or an applied segment reused instead of removed (`remove_through`),
//! whose old records stay behind the end mark and are never read (their numbers are lower
//! than the segment's). The writer renames the spare to its next segment's name when it rolls,
//! and rolls early onto a spare when its segment was not made ahead (the first one, or after
//! a restart, which cuts the segment it continues at its end).
//!
//! Reading ([`recover`]): every segment is read in order and each record checked (length,
//! checksum, number) up to the end mark or the end of the file. The first bad record of the
//! *last* segment is where a crash tore the tail: what follows it was never acknowledged (an
//! acknowledgement waits for the sync of the whole group), so the file is cut there and the
//! cut is reported. Recovery cuts the last segment after its last record in every case, end
//! mark or not: a write torn so that its first bytes never reached the disk leaves the
//! previous end mark in place with later bytes of that write behind it, records whose
//! numbers the writer gives out again, which must never be read. A bad record in an
//! earlier segment is not a torn tail (the writer starts a segment only after the previous
//! one is complete and synced): recovery refuses to go on rather than lose acknowledged
//! records silently.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Bytes before a record's payload.
const HEADER: usize = 16;

/// The largest payload a record may have (an event of `max_body_bytes` plus its answer fits
/// many times over); a larger length in a header can only be damage.
pub(super) const MAX_RECORD: usize = 64 << 20;

/// A segment past this size is closed and a new one started after the next commit.
pub(super) const SEGMENT_BYTES: u64 = 64 << 20;

/// What ends every write: a header no record has (see the module doc).
const END_MARK: [u8; HEADER] = [0; HEADER];

/// A segment that was not made ahead asks for a spare once it holds this share of a
/// segment (4 MiB of 64): a store that takes a few events (a test, a quiet gateway) never
/// writes a spare's size of zeros.
const SPARE_AFTER_SHARE: u64 = 16;

/// Sets the segment size instead of `SEGMENT_BYTES` (at least 4 KiB): a test hook, so that
/// crash tests roll segments and use spares within a few hundred events (docs/testing.md).
const SEGMENT_BYTES_VAR: &str = "COGNIHOOK_LOG_SEGMENT_BYTES";

fn segment_bytes() -> u64 {
    std::env::var(SEGMENT_BYTES_VAR)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(SEGMENT_BYTES, |n| n.max(4096))
}

/// How much of a zero-filled spare one call of [`Spare::prepare`] writes (one checkpointer
/// round, every 100 ms: 80 MiB/s, ahead of the log at full speed).
const SPARE_CHUNK_BYTES: usize = 8 << 20;

/// A spare's zeros are flushed after each this many bytes: the log's `fdatasync` is a flush
/// of the device, which waits for every write before it, so no flush may carry much of a
/// spare. On a fresh store (`bench/latency.sh 1000 5000`, alternating pairs), p99 with the
/// whole 64 MiB flushed at the end: 32–65 ms at 1,000/s and 39–50 ms at 5,000/s; flushed
/// every 8 MiB: 6.3–7.1 and 12–22 ms; every 1 MiB: see bench/README.md (thirtieth session).
const SPARE_FLUSH_BYTES: usize = 1 << 20;

/// What a reader hands each record to: its number and payload.
pub(super) type RecordFn<'a> = dyn FnMut(u64, &[u8]) -> Result<(), LogError> + 'a;

/// A failure of the store's log. An I/O failure keeps the `std::io::Error` as its source (an
/// operator needs its kind: a full disk, an I/O error); the message says what was being done.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LogError {
    #[error("{doing}: {source}")]
    Io {
        doing: String,
        #[source]
        source: std::io::Error,
    },
    /// The log contradicts itself or the database: records are missing, or damage that is
    /// not a torn tail. The message says what to do.
    #[error("{0}")]
    Damaged(String),
    /// A write failed and could not be cut off: the log takes no more writes.
    #[error("{0}")]
    Broken(String),
    /// What a record was handed to failed (applying it to the database).
    #[error("{doing}: {source}")]
    Record {
        doing: String,
        #[source]
        source: crate::store::Cause,
    },
}

impl LogError {
    /// A record's consumer failed while `doing`.
    pub(super) fn record(
        doing: impl Into<String>,
        e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> LogError {
        LogError::Record {
            doing: doing.into(),
            source: crate::store::Cause::new(e),
        }
    }
}

/// Turns an I/O error into a [`LogError`] saying what was being done.
fn io(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> LogError {
    let doing = doing.into();
    move |source| LogError::Io { doing, source }
}

/// When the log is flushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LogSync {
    /// `fdatasync` after every commit: a committed record survives a power cut.
    EveryCommit,
    /// Only when a segment is closed and at shutdown: a committed record survives a crash
    /// of the process, not of the machine.
    SegmentEnds,
    /// Never.
    Never,
}

/// The file name of the segment whose first record is `lsn`.
fn segment_name(lsn: u64) -> String {
    format!("{lsn:020}.log")
}

/// The segments in `dir`, by first record number.
pub(super) fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".log") else {
            continue;
        };
        if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(lsn) = stem.parse::<u64>() {
                out.push((lsn, entry.path()));
            }
        }
    }
    out.sort_unstable_by_key(|(lsn, _)| *lsn);
    Ok(out)
}

/// Appends records to the newest segment.
pub(super) struct LogWriter {
    dir: PathBuf,
    file: File,
    /// Bytes of the current segment that hold committed records.
    len: u64,
    next_lsn: u64,
    buf: Vec<u8>,
    /// Records in `buf`.
    buffered: u64,
    sync: LogSync,
    /// A failed write could not be cut off: nothing more may be written.
    broken: Option<String>,
    /// Segments made ahead (under `LogSync::EveryCommit` only).
    spare: Option<std::sync::Arc<Spare>>,
    /// Whether the current segment was made ahead at its full size.
    made_ahead: bool,
    /// The size past which a segment is closed (`SEGMENT_BYTES`; smaller in tests).
    segment_bytes: u64,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter")
            .field("dir", &self.dir)
            .field("next_lsn", &self.next_lsn)
            .finish()
    }
}

impl LogWriter {
    /// The number the next appended record gets.
    pub(super) fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Buffers one record; it is committed by the next [`LogWriter::commit`].
    pub(super) fn append(&mut self, payload: &[u8]) -> u64 {
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        self.buffered += 1;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&lsn.to_le_bytes());
        crc.update(payload);
        // The caller keeps payloads far below MAX_RECORD (see `record`).
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(&crc.finalize().to_le_bytes());
        self.buf.extend_from_slice(&lsn.to_le_bytes());
        self.buf.extend_from_slice(payload);
        lsn
    }

    /// Drops the records appended since the last commit; their numbers are given out again.
    pub(super) fn discard(&mut self) {
        self.next_lsn -= self.buffered;
        self.buffered = 0;
        self.buf.clear();
    }

    /// Writes (and, per the sync setting, flushes) the buffered records. On an error nothing
    /// of them stays in the file and their numbers are given out again.
    pub(super) fn commit(&mut self) -> Result<(), LogError> {
        if let Some(why) = &self.broken {
            return Err(LogError::Broken(why.clone()));
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        self.buf.extend_from_slice(&END_MARK);
        let written = std::os::unix::fs::FileExt::write_all_at(&self.file, &self.buf, self.len)
            .and_then(|()| {
                if self.sync == LogSync::EveryCommit {
                    self.file.sync_data()
                } else {
                    Ok(())
                }
            });
        if let Err(e) = written {
            let doing = format!("cannot write the store's log in {}", self.dir.display());
            // Cut off whatever part of the group reached the file, so that no reader ever
            // sees records that were refused.
            let cut = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_data());
            // Cut short, the segment grows from here on: move to a spare when one is ready.
            self.made_ahead = false;
            self.discard();
            if let Err(cut) = cut {
                let why = format!("{doing}: {e}; the failed write could not be cut off ({cut})");
                self.broken = Some(why.clone());
                return Err(LogError::Broken(why));
            }
            return Err(LogError::Io { doing, source: e });
        }
        self.len += (self.buf.len() - HEADER) as u64;
        self.buf.clear();
        self.buffered = 0;
        if self.len >= self.segment_bytes || (!self.made_ahead && self.spare_ready()) {
            self.roll()?;
        } else if !self.made_ahead && self.len >= self.segment_bytes / SPARE_AFTER_SHARE {
            if let Some(spare) = &self.spare {
                spare.wanted.store(true, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn spare_ready(&self) -> bool {
        self.spare
            .as_ref()
            .is_some_and(|s| s.ready.load(Ordering::Acquire))
    }

    /// The segments made ahead for this writer (none unless the log is flushed after every
    /// commit).
    pub(super) fn spare(&self) -> Option<std::sync::Arc<Spare>> {
        self.spare.clone()
    }

    /// What the checkpointer's thread needs to look after this log.
    pub(super) fn upkeep(&self) -> Upkeep {
        Upkeep {
            dir: self.dir.clone(),
            spare: self.spare(),
        }
    }

    /// Closes the current segment and starts the next one at `next_lsn`.
    fn roll(&mut self) -> Result<(), LogError> {
        if self.sync == LogSync::SegmentEnds {
            self.file
                .sync_data()
                .map_err(io("cannot flush the store's log"))?;
        }
        let taken = match &self.spare {
            Some(spare) => spare.take(self.next_lsn)?,
            None => None,
        };
        self.made_ahead = taken.is_some();
        self.file = match taken {
            Some(file) => file,
            None => create_segment(&self.dir, self.next_lsn, self.sync)?.0,
        };
        self.len = 0;
        Ok(())
    }

    /// Flushes the log (at shutdown).
    pub(super) fn close(&mut self) -> Result<(), LogError> {
        self.commit()?;
        if self.sync != LogSync::Never {
            self.file
                .sync_data()
                .map_err(io("cannot flush the store's log"))?;
        }
        Ok(())
    }
}

/// Creates the segment that starts at `lsn` (its name made durable with the directory).
fn create_segment(dir: &Path, lsn: u64, sync: LogSync) -> Result<(File, u64), LogError> {
    let path = dir.join(segment_name(lsn));
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(io(format!("cannot create log segment {}", path.display())))?;
    if sync != LogSync::Never {
        sync_dir(dir)?;
    }
    Ok((file, 0))
}

/// The spare segment's name: not a segment's (`segments` passes it by), and the name of the
/// one being zero-filled.
const SPARE_NAME: &str = "spare.log";
const SPARE_FILLING: &str = "spare.log.tmp";

/// Zeros for filling spares.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// The segment made ahead of the writer (see the module doc): `spare.log` in the log's
/// directory. The writer takes it; the checkpointer's thread makes it.
#[derive(Debug)]
pub(super) struct Spare {
    dir: PathBuf,
    /// The size a spare is made at.
    size: u64,
    /// `spare.log` exists and is complete.
    ready: AtomicBool,
    /// The writer will want one (it has taken the last, or its segment was not made ahead).
    wanted: AtomicBool,
}

/// The log as the checkpointer's thread sees it: the directory whose applied segments it
/// removes, and the spare it makes.
#[derive(Debug)]
pub(super) struct Upkeep {
    pub(super) dir: PathBuf,
    pub(super) spare: Option<std::sync::Arc<Spare>>,
}

/// A zero-filled spare being written, a chunk per call of [`Spare::prepare`].
#[derive(Debug, Default)]
pub(super) struct Filling {
    file: Option<File>,
    written: u64,
    /// After a failure (a full disk, most likely), no new spare before this: the log needs
    /// the space more than a spare does.
    pause_until: Option<std::time::Instant>,
}

/// How long a failed spare waits before the next try.
const SPARE_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

impl Spare {
    /// The spare of the log in `dir`: one left complete by an earlier run is kept, a half
    /// written one removed.
    fn open(dir: &Path, size: u64) -> Spare {
        let _ = std::fs::remove_file(dir.join(SPARE_FILLING));
        let path = dir.join(SPARE_NAME);
        let ready = std::fs::metadata(&path).is_ok_and(|m| m.len() >= size);
        if !ready {
            let _ = std::fs::remove_file(&path);
        }
        Spare {
            dir: dir.to_path_buf(),
            size,
            ready: AtomicBool::new(ready),
            wanted: AtomicBool::new(false),
        }
    }

    /// The writer's: the spare, renamed to the segment that starts at `lsn` (the name made
    /// durable with the directory) and opened for writing; none when there is no spare.
    fn take(&self, lsn: u64) -> Result<Option<File>, LogError> {
        if !self.ready.swap(false, Ordering::AcqRel) {
            return Ok(None);
        }
        self.wanted.store(true, Ordering::Relaxed);
        let path = self.dir.join(segment_name(lsn));
        match std::fs::rename(self.dir.join(SPARE_NAME), &path) {
            Ok(()) => {}
            // Replaced by a newer spare while it was taken (see `prepare`): none this time.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(io(format!(
                    "cannot use the spare log segment as {}",
                    path.display()
                ))(e))
            }
        }
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io(format!("cannot open log segment {}", path.display())))?;
        sync_dir(&self.dir)?;
        Ok(Some(file))
    }

    /// The checkpointer's: an applied segment becomes the spare instead of being removed,
    /// when there is none and it has a spare's size. Its records stay in it, behind the end
    /// marks the writer puts after its own (see the module doc). True when it was taken.
    fn reuse(&self, path: &Path) -> bool {
        if self.ready.load(Ordering::Acquire)
            || !std::fs::metadata(path).is_ok_and(|m| m.len() >= self.size)
        {
            return false;
        }
        if std::fs::rename(path, self.dir.join(SPARE_NAME)).is_err() {
            return false;
        }
        self.wanted.store(false, Ordering::Relaxed);
        self.ready.store(true, Ordering::Release);
        true
    }

    /// The checkpointer's, called every round: when the writer wants a spare, none is ready
    /// and no applied segment will soon be reused (`segments()`, the log's segments, is 1),
    /// writes and flushes the next chunk of zeros of a new one; the last chunk makes it the
    /// spare.
    /// A failure removes the half-made file and pauses making spares for `SPARE_RETRY`.
    pub(super) fn prepare(
        &self,
        filling: &mut Filling,
        segments: impl FnOnce() -> usize,
    ) -> std::io::Result<()> {
        if filling
            .pause_until
            .is_some_and(|t| std::time::Instant::now() < t)
        {
            return Ok(());
        }
        let made = self.fill(filling, segments);
        if made.is_err() {
            filling.file = None;
            let _ = std::fs::remove_file(self.dir.join(SPARE_FILLING));
            filling.pause_until = Some(std::time::Instant::now() + SPARE_RETRY);
        }
        made
    }

    fn fill(&self, filling: &mut Filling, segments: impl FnOnce() -> usize) -> std::io::Result<()> {
        if self.ready.load(Ordering::Acquire) || !self.wanted.load(Ordering::Relaxed) {
            if filling.file.take().is_some() {
                let _ = std::fs::remove_file(self.dir.join(SPARE_FILLING));
            }
            return Ok(());
        }
        let temp = self.dir.join(SPARE_FILLING);
        if filling.file.is_none() {
            if segments() > 1 {
                return Ok(());
            }
            filling.file = Some(
                OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(&temp)?,
            );
            filling.written = 0;
        }
        let Some(file) = &filling.file else {
            return Ok(());
        };
        let until = (filling.written + SPARE_CHUNK_BYTES as u64).min(self.size);
        while filling.written < until {
            let n = ZEROS.len().min((until - filling.written) as usize);
            std::os::unix::fs::FileExt::write_all_at(file, &ZEROS[..n], filling.written)?;
            filling.written += n as u64;
            let boundary = filling.written.is_multiple_of(SPARE_FLUSH_BYTES as u64);
            if boundary && filling.written < self.size {
                file.sync_data()?;
            }
        }
        if filling.written >= self.size {
            // The last flush, of the rest and of the file's size.
            file.sync_all()?;
            filling.file = None;
            std::fs::rename(&temp, self.dir.join(SPARE_NAME))?;
            self.wanted.store(false, Ordering::Relaxed);
            self.ready.store(true, Ordering::Release);
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("cannot flush directory {}", dir.display())))
}

/// How reading a segment ended.
#[derive(Debug, PartialEq, Eq)]
enum SegmentEnd {
    /// The records end at `offset`: the end of the file, or an end mark.
    Clean { offset: u64 },
    /// The record at `offset` is bad for `reason`; nothing from there on was read.
    Bad { offset: u64, reason: String },
}

/// Reads the records of one segment in order, checking each; `f` gets every good record.
/// `expected` is the number the first record must have; returns the number after the last
/// good record and how the segment ended.
fn read_segment(
    path: &Path,
    mut expected: u64,
    f: &mut RecordFn<'_>,
) -> Result<(u64, SegmentEnd), LogError> {
    let file = File::open(path).map_err(io(format!("cannot open {}", path.display())))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut offset = 0u64;
    let mut payload = Vec::new();
    let reading = || io(format!("cannot read {}", path.display()));
    loop {
        let mut header = [0u8; HEADER];
        let bad = |reason: String| SegmentEnd::Bad { offset, reason };
        let clean = SegmentEnd::Clean { offset };
        match read_full(&mut r, &mut header).map_err(reading())? {
            0 => return Ok((expected, clean)),
            // An end mark, or its first bytes before the end of the file.
            n if header[..n] == END_MARK[..n] => return Ok((expected, clean)),
            n if n < HEADER => {
                return Ok((
                    expected,
                    bad(format!("a record header cut short after {n} bytes")),
                ))
            }
            _ => {}
        }
        let [l0, l1, l2, l3, c0, c1, c2, c3, n0, n1, n2, n3, n4, n5, n6, n7] = header;
        let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
        let crc = u32::from_le_bytes([c0, c1, c2, c3]);
        let lsn = u64::from_le_bytes([n0, n1, n2, n3, n4, n5, n6, n7]);
        if len == 0 || len > MAX_RECORD {
            return Ok((expected, bad(format!("a record length of {len} bytes"))));
        }
        payload.resize(len, 0);
        let n = read_full(&mut r, &mut payload).map_err(reading())?;
        if n < len {
            return Ok((
                expected,
                bad(format!("a record cut short ({n} of {len} bytes present)")),
            ));
        }
        let mut sum = crc32fast::Hasher::new();
        sum.update(&header[8..]);
        sum.update(&payload);
        if sum.finalize() != crc {
            return Ok((
                expected,
                bad("a record whose checksum does not match".into()),
            ));
        }
        if lsn != expected {
            return Ok((
                expected,
                bad(format!("record {lsn} where {expected} was due")),
            ));
        }
        f(lsn, &payload)?;
        expected += 1;
        offset += (HEADER + len) as u64;
    }
}

/// Reads until `buf` is full or the file ends; returns how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What recovery found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Recovery {
    /// Records handed to `apply` (those after `after`).
    pub(super) applied: u64,
    /// The torn tail that was cut off, described for the operator's log.
    pub(super) dropped: Option<String>,
}

/// Opens the log in `dir` for writing after reading it: every record numbered after `after`
/// goes to `apply`, in order; a torn tail is cut off (see the module doc). Fails on damage
/// that is not a torn tail, on missing records, and when `apply` fails.
pub(super) fn recover(
    dir: &Path,
    after: u64,
    sync: LogSync,
    apply: &mut RecordFn<'_>,
) -> Result<(LogWriter, Recovery), LogError> {
    std::fs::create_dir_all(dir)
        .map_err(io(format!("cannot create log directory {}", dir.display())))?;
    let all = segments(dir).map_err(io(format!("cannot list {}", dir.display())))?;
    let mut report = Recovery::default();
    // Segments whose successor starts at or before `after + 1` hold only applied records.
    let first_needed = all.windows(2).take_while(|w| w[1].0 <= after + 1).count();
    let needed = &all[first_needed..];
    let mut next = after + 1;
    let mut tail: Option<(PathBuf, u64, u64)> = None; // (path, good length, next lsn)
    for (i, (first, path)) in needed.iter().enumerate() {
        let last = i + 1 == needed.len();
        if i == 0 && *first > after + 1 {
            return Err(LogError::Damaged(format!(
                "the store's log starts at record {first} but the database has only records \
                 up to {after}: records {} to {} are missing from {}; restore the data \
                 directory from a backup",
                after + 1,
                first - 1,
                dir.display()
            )));
        }
        if i > 0 && *first != next {
            return Err(LogError::Damaged(format!(
                "log segment {} starts at record {first} where {next} was due: records are \
                 missing; restore the data directory from a backup",
                path.display()
            )));
        }
        let mut apply_new = |lsn: u64, payload: &[u8]| {
            if lsn > after {
                report.applied += 1;
                apply(lsn, payload)
            } else {
                Ok(())
            }
        };
        let (end_lsn, end) = read_segment(path, *first, &mut apply_new)?;
        let good_len = match end {
            SegmentEnd::Clean { offset } => offset,
            SegmentEnd::Bad { offset, reason } if last => {
                let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(offset);
                report.dropped = Some(format!(
                    "{} bytes at offset {offset} of {} ({reason}): the torn tail of a write \
                     that was never acknowledged",
                    size.saturating_sub(offset),
                    path.display()
                ));
                offset
            }
            SegmentEnd::Bad { offset, reason } => {
                return Err(LogError::Damaged(format!(
                    "log segment {} is damaged at offset {offset} ({reason}) and later \
                     segments follow it, so this is not a torn tail; move the data directory \
                     aside and restore it from a backup",
                    path.display()
                )))
            }
        };
        next = end_lsn.max(*first);
        if last {
            tail = Some((path.clone(), good_len, next));
        }
    }
    let next_lsn = next.max(after + 1);
    let segment_bytes = segment_bytes();
    if sync != LogSync::EveryCommit {
        // Left by a run under `sync = "full"`: only that setting uses spares.
        let _ = std::fs::remove_file(dir.join(SPARE_NAME));
    }
    let (file, len) = match tail {
        // Go on in the last segment when the next record continues it.
        Some((path, good_len, tail_next)) if tail_next == next_lsn => {
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io(format!("cannot open {}", path.display())))?;
            let size = file
                .metadata()
                .map_err(io(format!("cannot read {}", path.display())))?
                .len();
            // Cut after the last record, also behind an end mark (see the module doc).
            if size != good_len {
                file.set_len(good_len)
                    .and_then(|()| file.sync_all())
                    .map_err(io(format!(
                        "cannot cut {} after its last record",
                        path.display()
                    )))?;
            }
            (file, good_len)
        }
        _ => create_segment(dir, next_lsn, sync)?,
    };
    Ok((
        LogWriter {
            dir: dir.to_path_buf(),
            file,
            len,
            next_lsn,
            buf: Vec::with_capacity(1 << 20),
            buffered: 0,
            sync,
            broken: None,
            spare: (sync == LogSync::EveryCommit)
                .then(|| std::sync::Arc::new(Spare::open(dir, segment_bytes))),
            made_ahead: false,
            segment_bytes,
        },
        report,
    ))
}

/// Reads the records numbered after `after` without changing anything (a reader beside a
/// running gateway); stops quietly at a bad record, which a writer may still be writing.
pub(super) fn read_after(dir: &Path, after: u64, f: &mut RecordFn<'_>) -> Result<(), LogError> {
    let all = match segments(dir) {
        Ok(all) => all,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(format!("cannot list {}", dir.display()))(e)),
    };
    let skip = all.windows(2).take_while(|w| w[1].0 <= after + 1).count();
    for (first, path) in &all[skip..] {
        let mut newer = |lsn: u64, payload: &[u8]| {
            if lsn > after {
                f(lsn, payload)
            } else {
                Ok(())
            }
        };
        match read_segment(path, *first, &mut newer) {
            Ok((_, SegmentEnd::Clean { .. })) => {}
            Ok((_, SegmentEnd::Bad { .. })) => return Ok(()),
            // A segment removed by the gateway while we read: its records are in the database.
            Err(_) if !path.exists() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Removes the segments that hold only records up to `durable` (never the newest segment);
/// one may become the `spare` instead (see [`Spare`]). Returns how many went.
pub(super) fn remove_through(
    dir: &Path,
    durable: u64,
    spare: Option<&Spare>,
) -> Result<usize, LogError> {
    let all = segments(dir).map_err(io(format!("cannot list {}", dir.display())))?;
    let mut removed = 0;
    for w in all.windows(2) {
        let ((_, path), (next_first, _)) = (&w[0], &w[1]);
        if *next_first > durable + 1 {
            break;
        }
        if !spare.is_some_and(|s| s.reuse(path)) {
            std::fs::remove_file(path).map_err(io(format!("cannot remove {}", path.display())))?;
        }
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    fn collect(dir: &Path, after: u64) -> (Vec<(u64, Vec<u8>)>, LogWriter, Recovery) {
        let mut got = Vec::new();
        let (w, r) = recover(dir, after, LogSync::EveryCommit, &mut |lsn, p| {
            got.push((lsn, p.to_vec()));
            Ok(())
        })
        .expect("recover");
        (got, w, r)
    }

    fn write(dir: &Path, records: &[&[u8]]) -> LogWriter {
        let (_, mut w, _) = collect(dir, 0);
        for r in records {
            w.append(r);
        }
        w.commit().expect("commit");
        w
    }

    fn only_segment(dir: &Path) -> PathBuf {
        let all = segments(dir).expect("list");
        assert_eq!(all.len(), 1, "{all:?}");
        all[0].1.clone()
    }

    #[test]
    fn committed_records_come_back_in_order_and_numbering_goes_on() {
        let dir = tempfile::tempdir().expect("tmp");
        drop(write(dir.path(), &[b"one", b"two", b"three"]));
        let (got, mut w, report) = collect(dir.path(), 0);
        assert_eq!(
            got,
            vec![
                (1, b"one".to_vec()),
                (2, b"two".to_vec()),
                (3, b"three".to_vec())
            ]
        );
        assert_eq!(report.dropped, None);
        assert_eq!(w.append(b"four"), 4);
        w.commit().expect("commit");
        let (got, _, _) = collect(dir.path(), 2);
        assert_eq!(got, vec![(3, b"three".to_vec()), (4, b"four".to_vec())]);
    }

    #[test]
    fn records_discarded_before_commit_are_never_read() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut w = write(dir.path(), &[b"kept"]);
        w.append(b"refused");
        w.discard();
        assert_eq!(w.append(b"next"), 2);
        w.commit().expect("commit");
        let (got, _, _) = collect(dir.path(), 0);
        assert_eq!(got, vec![(1, b"kept".to_vec()), (2, b"next".to_vec())]);
    }

    #[test]
    fn a_truncated_tail_is_cut_off_reported_and_the_log_goes_on_after_it() {
        let dir = tempfile::tempdir().expect("tmp");
        drop(write(dir.path(), &[b"first", b"second record"]));
        let path = only_segment(dir.path());
        let full = std::fs::metadata(&path).expect("meta").len();
        // Lose the end mark and the last record's last 5 bytes, as a power cut in the middle
        // of the write would.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(full - HEADER as u64 - 5))
            .expect("truncate");
        let (got, mut w, report) = collect(dir.path(), 0);
        assert_eq!(got, vec![(1, b"first".to_vec())]);
        let dropped = report.dropped.expect("reported");
        assert!(dropped.contains("cut short"), "{dropped}");
        assert!(
            dropped.contains(&format!("{} bytes", 16 + 13 - 5)),
            "{dropped}"
        );
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 16 + 5);
        assert_eq!(w.append(b"after"), 2);
        w.commit().expect("commit");
        let (got, _, report) = collect(dir.path(), 0);
        assert_eq!(got, vec![(1, b"first".to_vec()), (2, b"after".to_vec())]);
        assert_eq!(report.dropped, None);
    }

    #[test]
    fn a_garbled_last_record_is_dropped_by_its_checksum() {
        let dir = tempfile::tempdir().expect("tmp");
        drop(write(dir.path(), &[b"first", b"second"]));
        let path = only_segment(dir.path());
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - HEADER - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let (got, _, report) = collect(dir.path(), 0);
        assert_eq!(got, vec![(1, b"first".to_vec())]);
        assert!(report
            .dropped
            .expect("reported")
            .contains("checksum does not match"));
    }

    #[test]
    fn garbage_after_the_last_record_is_dropped() {
        let dir = tempfile::tempdir().expect("tmp");
        drop(write(dir.path(), &[b"first"]));
        let path = only_segment(dir.path());
        let full = std::fs::metadata(&path).expect("meta").len();
        let mut f = OpenOptions::new().write(true).open(&path).expect("open");
        // A torn next write: garbage where the end mark was.
        f.set_len(full - HEADER as u64).expect("cut the end mark");
        std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)).expect("seek");
        f.write_all(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0])
            .expect("garbage");
        drop(f);
        let (got, _, report) = collect(dir.path(), 0);
        assert_eq!(got, vec![(1, b"first".to_vec())]);
        assert!(report.dropped.expect("reported").contains("7 bytes"));
    }

    #[test]
    fn damage_before_the_last_segment_refuses_to_start() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut w = write(dir.path(), &[b"first", b"second"]);
        w.roll().expect("roll");
        w.append(b"third");
        w.commit().expect("commit");
        let all = segments(dir.path()).expect("list");
        assert_eq!(all.len(), 2);
        let mut bytes = std::fs::read(&all[0].1).expect("read");
        bytes[20] ^= 0xff;
        std::fs::write(&all[0].1, &bytes).expect("write");
        let err =
            recover(dir.path(), 0, LogSync::EveryCommit, &mut |_, _| Ok(())).expect_err("refused");
        assert!(matches!(err, LogError::Damaged(_)), "{err}");
        assert!(err.to_string().contains("not a torn tail"), "{err}");
    }

    #[test]
    fn an_io_failure_keeps_its_error_as_the_source() {
        let dir = tempfile::tempdir().expect("tmp");
        let gone = dir.path().join("no-such-dir");
        let err = create_segment(&gone, 1, LogSync::EveryCommit).expect_err("no directory");
        let source = std::error::Error::source(&err).expect("the I/O error is kept");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("as an io::Error");
        assert_eq!(io.kind(), ErrorKind::NotFound);
        assert!(
            err.to_string().starts_with("cannot create log segment"),
            "{err}"
        );
    }

    #[test]
    fn missing_records_refuse_to_start() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut w = write(dir.path(), &[b"first", b"second"]);
        w.roll().expect("roll");
        w.append(b"third");
        w.commit().expect("commit");
        let all = segments(dir.path()).expect("list");
        std::fs::remove_file(&all[0].1).expect("remove");
        let err =
            recover(dir.path(), 0, LogSync::EveryCommit, &mut |_, _| Ok(())).expect_err("refused");
        assert!(
            err.to_string().contains("records 1 to 2 are missing"),
            "{err}"
        );
        // Once the database holds records 1 and 2, the segment is not needed.
        let (got, _, _) = collect(dir.path(), 2);
        assert_eq!(got, vec![(3, b"third".to_vec())]);
    }

    #[test]
    fn segments_holding_only_durable_records_are_removed_but_never_the_newest() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut w = write(dir.path(), &[b"1", b"2"]);
        w.roll().expect("roll");
        w.append(b"3");
        w.commit().expect("commit");
        w.roll().expect("roll");
        assert_eq!(segments(dir.path()).expect("list").len(), 3);
        assert_eq!(remove_through(dir.path(), 1, None).expect("remove"), 0);
        assert_eq!(remove_through(dir.path(), 2, None).expect("remove"), 1);
        assert_eq!(remove_through(dir.path(), 3, None).expect("remove"), 1);
        assert_eq!(remove_through(dir.path(), 100, None).expect("remove"), 0);
        let (got, mut w, _) = collect(dir.path(), 3);
        assert!(got.is_empty());
        assert_eq!(w.append(b"4"), 4);
    }

    #[test]
    fn a_database_ahead_of_the_log_starts_a_new_segment_after_it() {
        let dir = tempfile::tempdir().expect("tmp");
        drop(write(dir.path(), &[b"1", b"2"]));
        let (got, mut w, _) = collect(dir.path(), 10);
        assert!(got.is_empty());
        assert_eq!(w.append(b"11"), 11);
        w.commit().expect("commit");
        let (got, _, _) = collect(dir.path(), 10);
        assert_eq!(got, vec![(11, b"11".to_vec())]);
    }

    #[test]
    fn a_reader_beside_the_writer_sees_committed_records_only() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut w = write(dir.path(), &[b"a", b"b"]);
        w.append(b"not yet");
        let mut seen = Vec::new();
        read_after(dir.path(), 1, &mut |lsn, p| {
            seen.push((lsn, p.to_vec()));
            Ok(())
        })
        .expect("read");
        assert_eq!(seen, vec![(2, b"b".to_vec())]);
    }

    /// A record's bytes as the writer lays them out.
    fn record(lsn: u64, payload: &[u8]) -> Vec<u8> {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&lsn.to_le_bytes());
        crc.update(payload);
        let mut out = (payload.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&crc.finalize().to_le_bytes());
        out.extend_from_slice(&lsn.to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn an_applied_segment_becomes_the_spare_and_its_old_records_are_never_read() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut w = write(dir.path(), &[b"one", b"two", b"three", b"four"]);
        let spare = Arc::new(Spare::open(dir.path(), 64));
        w.spare = Some(spare.clone());
        w.roll().expect("roll");
        assert!(!w.made_ahead, "no spare yet: a new segment");
        w.append(b"five");
        w.commit().expect("commit");
        let first = dir.path().join(segment_name(1));
        // The first segment is applied: it becomes the spare instead of being removed.
        assert_eq!(
            remove_through(dir.path(), 4, Some(&spare)).expect("remove"),
            1
        );
        assert!(!first.exists());
        assert!(spare.ready.load(Ordering::SeqCst));
        // The writer's segment was not made ahead: its next commit moves onto the spare.
        w.append(b"six");
        w.commit().expect("commit");
        assert!(w.made_ahead);
        assert!(!dir.path().join(SPARE_NAME).exists());
        assert!(
            spare.wanted.load(Ordering::SeqCst),
            "the next one is wanted"
        );
        let reused = dir.path().join(segment_name(7));
        let size = std::fs::metadata(&reused).expect("meta").len();
        w.append(b"x");
        w.commit().expect("commit");
        assert_eq!(std::fs::metadata(&reused).expect("meta").len(), size);
        drop(w);
        // Records 1 to 4 are still in the file behind the end mark; they are not read.
        let (got, _, report) = collect(dir.path(), 4);
        assert_eq!(
            got,
            vec![
                (5, b"five".to_vec()),
                (6, b"six".to_vec()),
                (7, b"x".to_vec())
            ]
        );
        assert_eq!(report.dropped, None);
        assert_eq!(
            std::fs::metadata(&reused).expect("meta").len(),
            (HEADER + 1) as u64,
            "cut after its last record at open"
        );
    }

    #[test]
    fn records_behind_an_end_mark_are_cut_off_before_their_numbers_are_given_out_again() {
        let dir = tempfile::tempdir().expect("tmp");
        drop(write(dir.path(), &[b"first"]));
        let path = only_segment(dir.path());
        // A write of records 2 and 3 torn so that its first bytes (record 2, over the end
        // mark) never reached the disk, but record 3 did.
        let two = record(2, b"second");
        let mut bytes = std::fs::read(&path).expect("read");
        let good = bytes.len() - HEADER;
        bytes.resize(good + two.len(), 0);
        bytes.extend_from_slice(&record(3, b"third"));
        std::fs::write(&path, &bytes).expect("write");
        let (got, mut w, report) = collect(dir.path(), 0);
        assert_eq!(got, vec![(1, b"first".to_vec())]);
        assert_eq!(report.dropped, None, "the end mark was in place");
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), good as u64);
        // Record 2 again, as long as the lost one: where the old record 3 began, there is
        // only this write's end mark, and after a restart nothing at all.
        assert_eq!(w.append(b"SECOND"), 2);
        w.commit().expect("commit");
        drop(w);
        let (got, _, _) = collect(dir.path(), 0);
        assert_eq!(got, vec![(1, b"first".to_vec()), (2, b"SECOND".to_vec())]);
    }

    #[test]
    fn a_zero_filled_spare_is_made_only_when_wanted_a_chunk_at_a_time() {
        let dir = tempfile::tempdir().expect("tmp");
        let size = SPARE_CHUNK_BYTES as u64 + 4096;
        let spare = Spare::open(dir.path(), size);
        let temp = dir.path().join(SPARE_FILLING);
        let mut filling = Filling::default();
        spare.prepare(&mut filling, || 1).expect("prepare");
        assert!(!temp.exists(), "not wanted");
        spare.wanted.store(true, Ordering::SeqCst);
        spare.prepare(&mut filling, || 2).expect("prepare");
        assert!(!temp.exists(), "an applied segment will be reused");
        spare.prepare(&mut filling, || 1).expect("prepare");
        assert_eq!(
            std::fs::metadata(&temp).expect("meta").len(),
            SPARE_CHUNK_BYTES as u64
        );
        assert!(!spare.ready.load(Ordering::SeqCst));
        spare.prepare(&mut filling, || 1).expect("prepare");
        assert!(spare.ready.load(Ordering::SeqCst));
        assert!(!spare.wanted.load(Ordering::SeqCst));
        assert!(!temp.exists());
        let made = std::fs::read(dir.path().join(SPARE_NAME)).expect("read");
        assert_eq!(made.len() as u64, size);
        assert!(made.iter().all(|b| *b == 0));
        // A later open keeps a complete spare and removes a half-made one.
        std::fs::write(&temp, b"half").expect("write");
        let again = Spare::open(dir.path(), size);
        assert!(again.ready.load(Ordering::SeqCst));
        assert!(!temp.exists());
        // A failure pauses making spares instead of trying every round.
        std::fs::remove_file(dir.path().join(SPARE_NAME)).expect("take the spare away");
        spare.ready.store(false, Ordering::SeqCst);
        spare.wanted.store(true, Ordering::SeqCst);
        std::fs::create_dir(&temp).expect("a directory where the file goes");
        spare
            .prepare(&mut filling, || 1)
            .expect_err("cannot open a directory");
        assert!(filling.pause_until.is_some());
        spare
            .prepare(&mut filling, || 1)
            .expect("paused: not tried");
        std::fs::remove_dir(&temp).expect("remove the directory");
    }

    #[test]
    fn a_segment_not_made_ahead_asks_for_a_spare_once_it_has_grown() {
        let dir = tempfile::tempdir().expect("tmp");
        let (_, mut w, _) = collect(dir.path(), 0);
        let spare = w.spare().expect("a spare under EveryCommit");
        w.append(b"small");
        w.commit().expect("commit");
        assert!(!spare.wanted.load(Ordering::SeqCst));
        w.append(&vec![7u8; (SEGMENT_BYTES / SPARE_AFTER_SHARE) as usize]);
        w.commit().expect("commit");
        assert!(spare.wanted.load(Ordering::SeqCst));
        // Only a log flushed after every commit has spares; another setting removes one.
        let other = tempfile::tempdir().expect("tmp");
        std::fs::write(other.path().join(SPARE_NAME), b"left").expect("write");
        let (w, _) =
            recover(other.path(), 0, LogSync::SegmentEnds, &mut |_, _| Ok(())).expect("recover");
        assert!(w.spare().is_none());
        assert!(!other.path().join(SPARE_NAME).exists());
    }
}
