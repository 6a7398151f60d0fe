//! Writing the task plane's files off the event loop.
//!
//! A write, a rename and above all an fsync are blocking syscalls that can
//! wait on the filesystem's journal. On a member's event loop they delay
//! its SWIM timers, and late timers raise its local health score, which
//! stretches suspicion up to nine-fold. With 300 members in one process
//! the status file rewritten every second held every member's score at
//! its maximum (a killed aggregator took 28-32 s to leave its cell's views
//! instead of 6-7 s), and the ledger synced twice per task by each member
//! (accepted, applied) came in bursts of 1,200 fsyncs (docs/tasks.md).
//!
//! The loop hands each new value to a [`FileWriter`], which encodes and
//! writes it on tokio's blocking pool: one write at a time, and the newest
//! value wins over one still waiting. Each value gets a sequence number;
//! [`FileWriter::written`] says the highest one whose write has finished,
//! so a caller can act once what it recorded is on disk (the task plane
//! applies a task only after the ledger that admitted it is saved).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::watch;

/// How much a write must survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Durability {
    /// A view rewritten on every change: renamed into place but not
    /// synced (a crash loses only a view the next change writes again).
    View,
    /// State a restart reads: synced, renamed and the directory synced.
    Synced,
}

/// The newest value not yet written, whether a write is running, and the
/// last sequence number handed out.
#[derive(Debug)]
struct Slot<T> {
    next: Option<(u64, T)>,
    writing: bool,
    last: u64,
}

/// Writes one file, newest value first, away from the caller's thread.
#[derive(Debug)]
pub(super) struct FileWriter<T> {
    path: PathBuf,
    durability: Durability,
    encode: fn(&T) -> std::io::Result<Vec<u8>>,
    slot: Arc<Mutex<Slot<T>>>,
    /// The sequence number of the last value whose write finished (well
    /// or not: a failed write is logged, and waiting would not mend it).
    written: Arc<watch::Sender<u64>>,
}

impl<T> Clone for FileWriter<T> {
    fn clone(&self) -> Self {
        Self {
            path: self.path.clone(),
            durability: self.durability,
            encode: self.encode,
            slot: self.slot.clone(),
            written: self.written.clone(),
        }
    }
}

/// Pretty JSON, for the views people and `starlingctl` read.
pub(super) fn pretty_json<T: Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    serde_json::to_vec_pretty(value).map_err(std::io::Error::other)
}

impl<T: Send + 'static> FileWriter<T> {
    /// A writer of `path` (written through `path.tmp` and a rename) that
    /// turns each value into bytes with `encode` on the blocking pool.
    pub(super) fn new(
        path: PathBuf,
        durability: Durability,
        encode: fn(&T) -> std::io::Result<Vec<u8>>,
    ) -> Self {
        Self {
            path,
            durability,
            encode,
            slot: Arc::new(Mutex::new(Slot {
                next: None,
                writing: false,
                last: 0,
            })),
            written: Arc::new(watch::channel(0).0),
        }
    }

    /// Writes `value` soon; a later call before it is written replaces
    /// it. Returns its sequence number (see [`Self::written`]).
    pub(super) fn write(&self, value: T) -> u64 {
        let seq = {
            let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            slot.last += 1;
            let seq = slot.last;
            slot.next = Some((seq, value));
            if slot.writing {
                return seq;
            }
            slot.writing = true;
            seq
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.drain());
        seq
    }

    /// The sequence number of the last value whose write finished: a
    /// value replaced before it was written counts as finished with the
    /// one that replaced it.
    pub(super) fn written(&self) -> watch::Receiver<u64> {
        self.written.subscribe()
    }

    /// Waits until every value handed over so far has been written.
    pub(super) async fn flush(&self) {
        let last = self.slot.lock().unwrap_or_else(|p| p.into_inner()).last;
        let mut written = self.written();
        let _ = written.wait_for(|w| *w >= last).await;
    }

    fn drain(&self) {
        loop {
            let (seq, value) = {
                let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
                match slot.next.take() {
                    Some(v) => v,
                    None => {
                        slot.writing = false;
                        return;
                    }
                }
            };
            let result = (self.encode)(&value).and_then(|bytes| match self.durability {
                Durability::Synced => write_atomic(&self.path, &bytes),
                Durability::View => {
                    let tmp = self.path.with_extension("tmp");
                    std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &self.path))
                }
            });
            if let Err(e) = result {
                match self.durability {
                    Durability::View => {
                        tracing::debug!(path = %self.path.display(), error = %e, "view not written")
                    }
                    Durability::Synced => {
                        tracing::error!(path = %self.path.display(), error = %e, "state not saved")
                    }
                }
            }
            self.written.send_replace(seq);
        }
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename,
/// so a crash leaves the old contents or the new, never half. Blocking:
/// on the event loop only for rare writes an operator caused.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_text(n: &u32) -> std::io::Result<Vec<u8>> {
        Ok(n.to_string().into_bytes())
    }

    #[tokio::test]
    async fn the_newest_value_is_the_one_left_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let writer = FileWriter::new(path.clone(), Durability::View, as_text);
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

    #[tokio::test]
    async fn written_says_when_a_value_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        let writer = FileWriter::new(path.clone(), Durability::Synced, as_text);
        let mut written = writer.written();
        assert_eq!(*written.borrow_and_update(), 0, "nothing written yet");
        let first = writer.write(7);
        let second = writer.write(8);
        assert!(second > first);
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            written.wait_for(|w| *w >= second),
        )
        .await
        .expect("written within 10 s")
        .expect("the writer lives");
        assert_eq!(std::fs::read(&path).unwrap(), b"8");
        // A flush with nothing outstanding returns at once.
        tokio::time::timeout(std::time::Duration::from_secs(1), writer.flush())
            .await
            .expect("flushed");
        assert!(!path.with_extension("tmp").exists(), "no temporary left");
    }
}
