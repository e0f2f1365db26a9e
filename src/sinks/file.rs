//! `file` sink: appends each event as one JSON line and flushes it (for local use).

use std::path::PathBuf;

use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::spec::FileTarget;
use super::{Delivery, SendFuture, Sink, SinkError};

pub struct FileSink {
    path: PathBuf,
    /// Serialises appends so lines never interleave.
    lock: Mutex<()>,
}

impl FileSink {
    pub fn new(target: &FileTarget) -> Result<FileSink, super::BuildError> {
        let path = target.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(super::BuildError::failed(format!(
                "cannot create {}",
                dir.display()
            )))?;
        }
        Ok(FileSink {
            path,
            lock: Mutex::new(()),
        })
    }
}

impl Sink for FileSink {
    fn send<'a>(&'a self, d: &'a Delivery<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let _guard = self.lock.lock().await;
            let mut line = Vec::with_capacity(d.body.len() + 1);
            line.extend_from_slice(d.body);
            line.push(b'\n');
            let io = |e: std::io::Error| {
                SinkError::transient(format!("cannot append to {}: {e}", self.path.display()))
            };
            let mut f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await
                .map_err(io)?;
            f.write_all(&line).await.map_err(io)?;
            f.flush().await.map_err(io)?;
            f.sync_data().await.map_err(io)?;
            Ok(())
        })
    }
}
