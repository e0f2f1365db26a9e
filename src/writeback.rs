//! Starting a file's write-back early, so that the disk gets a steady stream instead of
//! bursts. Bytes an appender hands the kernel stay in the page cache until something
//! flushes them; a flush of many megabytes at once (the checkpointer's of the bodies' files,
//! once a second) fills the device's queue, and the log's `fdatasync` behind it waits for
//! all of it: on the benchmark machine a burst of ~60 MB a second held acknowledgements for
//! 4–5 ms, the tail of a run at saturation (bench/README.md, fifty-fourth session).
//!
//! A leaf: it imports nothing of the crate.

use std::fs::File;
use std::io::{self, Write};

/// An appender starts the write-back of what it has written once this many bytes wait.
pub const EVERY_BYTES: u64 = 256 << 10;

/// The page size write-back is started in: only whole pages, so that the last, partial page
/// an append will write again is not written twice.
const PAGE: u64 = 4096;

/// A file appended to, whose write-back is started each time [`EVERY_BYTES`] of whole pages
/// wait.
#[derive(Debug)]
pub struct Appender {
    file: File,
    len: u64,
    /// Where the write-back started so far ends (a page boundary).
    started: u64,
}

impl Appender {
    /// Appends to `file` (opened for appending) from its present end; what it holds already
    /// is left to the kernel.
    pub fn new(file: File) -> io::Result<Appender> {
        let len = file.metadata()?.len();
        Ok(Appender {
            file,
            len,
            started: len - len % PAGE,
        })
    }
}

impl Write for Appender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.len += n as u64;
        // Only a hint: it does not wait, and a failure is left to the flush that makes the
        // bytes durable.
        let end = self.len - self.len % PAGE;
        if end >= self.started + EVERY_BYTES {
            start(&self.file, self.started, end - self.started);
            self.started = end;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Asks the kernel to start writing `len` bytes of `file` from `offset` to the disk, without
/// waiting for them (Linux's `sync_file_range` with `SYNC_FILE_RANGE_WRITE`; nothing
/// elsewhere). Pages already being written are passed over.
#[allow(unsafe_code)]
pub fn start(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: the descriptor belongs to `file`, open for the call's length; the call
        // reads no memory of this process.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_appender_keeps_every_byte_and_starts_write_back_in_whole_pages_past_the_threshold() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("f");
        std::fs::write(&path, vec![b'x'; 5000]).expect("write");
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        let mut a = Appender::new(file).expect("appender");
        // What was there before is a page and a bit: only the page counts as started.
        assert_eq!((a.len, a.started), (5000, 4096));
        let piece = vec![b'y'; 100_000];
        a.write_all(&piece).expect("write");
        a.write_all(&piece).expect("write");
        // 205,000 bytes: 200,904 past the start, under the threshold.
        assert_eq!(a.started, 4096);
        a.write_all(&piece).expect("write");
        // 305,000 bytes: its whole pages (74 of them) are started.
        assert_eq!(a.len, 305_000);
        assert_eq!(a.started, 74 * 4096);
        a.flush().expect("flush");
        let written = std::fs::read(&path).expect("read");
        assert_eq!(written.len(), 305_000);
        assert!(written[..5000].iter().all(|b| *b == b'x'));
        assert!(written[5000..].iter().all(|b| *b == b'y'));
    }
}
