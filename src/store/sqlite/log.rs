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
//!
//! Reading ([`recover`]): every segment is read in order and each record checked (length,
//! checksum, number). The first bad record of the *last* segment is where a crash tore the
//! tail: what follows it was never acknowledged (an acknowledgement waits for the sync of
//! the whole group), so the file is cut there and the cut is reported. A bad record in an
//! earlier segment is not a torn tail (the writer starts a segment only after the previous
//! one is complete and synced): recovery refuses to go on rather than lose acknowledged
//! records silently.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

/// Bytes before a record's payload.
const HEADER: usize = 16;

/// The largest payload a record may have (an event of `max_body_bytes` plus its answer fits
/// many times over); a larger length in a header can only be damage.
pub(super) const MAX_RECORD: usize = 64 << 20;

/// A segment past this size is closed and a new one started after the next commit.
pub(super) const SEGMENT_BYTES: u64 = 64 << 20;

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
        let written = self.file.write_all(&self.buf).and_then(|()| {
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
            self.discard();
            if let Err(cut) = cut {
                let why = format!("{doing}: {e}; the failed write could not be cut off ({cut})");
                self.broken = Some(why.clone());
                return Err(LogError::Broken(why));
            }
            return Err(LogError::Io { doing, source: e });
        }
        self.len += self.buf.len() as u64;
        self.buf.clear();
        self.buffered = 0;
        if self.len >= SEGMENT_BYTES {
            self.roll()?;
        }
        Ok(())
    }

    /// Closes the current segment and starts the next one at `next_lsn`.
    fn roll(&mut self) -> Result<(), LogError> {
        if self.sync == LogSync::SegmentEnds {
            self.file
                .sync_data()
                .map_err(io("cannot flush the store's log"))?;
        }
        let (file, len) = create_segment(&self.dir, self.next_lsn, self.sync)?;
        self.file = file;
        self.len = len;
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

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("cannot flush directory {}", dir.display())))
}

/// How reading a segment ended.
#[derive(Debug, PartialEq, Eq)]
enum SegmentEnd {
    /// Every byte belonged to a good record.
    Clean,
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
        match read_full(&mut r, &mut header).map_err(reading())? {
            0 => return Ok((expected, SegmentEnd::Clean)),
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
            SegmentEnd::Clean => std::fs::metadata(path)
                .map_err(io(format!("cannot read {}", path.display())))?
                .len(),
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
            if size != good_len {
                file.set_len(good_len)
                    .and_then(|()| file.sync_all())
                    .map_err(io(format!(
                        "cannot cut the torn tail of {}",
                        path.display()
                    )))?;
            }
            let mut file = file;
            std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(good_len))
                .map_err(io(format!("cannot open {}", path.display())))?;
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
            Ok((_, SegmentEnd::Clean)) => {}
            Ok((_, SegmentEnd::Bad { .. })) => return Ok(()),
            // A segment removed by the gateway while we read: its records are in the database.
            Err(_) if !path.exists() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Removes the segments that hold only records up to `durable` (never the newest segment).
/// Returns how many were removed.
pub(super) fn remove_through(dir: &Path, durable: u64) -> Result<usize, LogError> {
    let all = segments(dir).map_err(io(format!("cannot list {}", dir.display())))?;
    let mut removed = 0;
    for w in all.windows(2) {
        let ((_, path), (next_first, _)) = (&w[0], &w[1]);
        if *next_first > durable + 1 {
            break;
        }
        std::fs::remove_file(path).map_err(io(format!("cannot remove {}", path.display())))?;
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // Lose the last 5 bytes, as a power cut in the middle of the write would.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(full - 5))
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
        let last = bytes.len() - 1;
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
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
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
        assert_eq!(remove_through(dir.path(), 1).expect("remove"), 0);
        assert_eq!(remove_through(dir.path(), 2).expect("remove"), 1);
        assert_eq!(remove_through(dir.path(), 3).expect("remove"), 1);
        assert_eq!(remove_through(dir.path(), 100).expect("remove"), 0);
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
}
