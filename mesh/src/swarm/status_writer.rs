//! Writing the task plane's status file off the event loop.
//!
//! The status is rewritten up to once a second whenever anything in it
//! changed (a summary from any cell does). A write and a rename are
//! blocking syscalls that can wait on the filesystem's journal; on the
//! member's event loop they delayed its SWIM timers. With 300 members in
//! one process, every member's local health sat at its maximum, which
//! stretched suspicion nine-fold: a killed aggregator took 28-32 s to
//! leave its cell's views instead of 6-7 s (docs/tasks.md). The loop now
//! hands the status to a [`StatusWriter`], which encodes (pretty JSON,
//! the costlier part) and writes it on tokio's blocking pool: one write
//! at a time, and the newest status wins over one still waiting.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// The newest value not yet written, and whether a write is running.
#[derive(Debug)]
struct Slot<T> {
    next: Option<T>,
    writing: bool,
}

/// Writes one file as pretty JSON, newest value first, away from the
/// caller's thread.
#[derive(Debug)]
pub(super) struct StatusWriter<T> {
    path: PathBuf,
    slot: Arc<Mutex<Slot<T>>>,
}

impl<T> Clone for StatusWriter<T> {
    fn clone(&self) -> Self {
        Self {
            path: self.path.clone(),
            slot: self.slot.clone(),
        }
    }
}

impl<T: Serialize + Send + 'static> StatusWriter<T> {
    /// A writer of `path` (written through `path.tmp` and a rename).
    pub(super) fn new(path: PathBuf) -> Self {
        Self {
            path,
            slot: Arc::new(Mutex::new(Slot {
                next: None,
                writing: false,
            })),
        }
    }

    /// Writes `value` soon; a later call before it is written replaces it.
    pub(super) fn write(&self, value: T) {
        {
            let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            slot.next = Some(value);
            if slot.writing {
                return;
            }
            slot.writing = true;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.drain());
    }

    fn drain(&self) {
        loop {
            let value = {
                let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
                match slot.next.take() {
                    Some(v) => v,
                    None => {
                        slot.writing = false;
                        return;
                    }
                }
            };
            // A view, rewritten on every change: renamed into place but
            // not synced (a crash loses only a view the next tick writes
            // again).
            let tmp = self.path.with_extension("tmp");
            if let Err(e) = serde_json::to_vec_pretty(&value)
                .map_err(std::io::Error::other)
                .and_then(|bytes| std::fs::write(&tmp, bytes))
                .and_then(|()| std::fs::rename(&tmp, &self.path))
            {
                tracing::debug!(path = %self.path.display(), error = %e, "task status not written");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_newest_status_is_the_one_left_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let writer = StatusWriter::new(path.clone());
        for i in 0..200u32 {
            writer.write(i);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if std::fs::read(&path).ok().as_deref() == Some(b"199".as_slice()) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the last status never landed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // Nothing older overwrites it afterwards.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(std::fs::read(&path).unwrap(), b"199");
        assert!(!writer.slot.lock().unwrap().writing, "the writer is done");
    }
}
