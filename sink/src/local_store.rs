//! The embedded local store: where the sink persists events when no Kafka
//! is configured (the demo default), and what `starlingctl events tail`
//! reads.
//!
//! Events are kept in arrival order under `a` + arrival number (big-endian
//! u64); the next arrival number is committed in the same write. Every
//! write is fsynced before the sink acks, so an ack means the events are on
//! disk. Beyond `max_events` the oldest are deleted.

use std::path::Path;
use std::sync::Mutex;

use prost::Message;
use rocksdb::{Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use starling_proto::v1::Event;

const PREFIX: u8 = b'a';
const NEXT_KEY: &[u8] = b"m:next";

/// Local store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("local store: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("creating a scratch directory for the reader: {0}")]
    Scratch(#[source] std::io::Error),
    #[error("local store at {0} does not exist (has the sink run with this data_dir?)")]
    Missing(String),
}

fn key(n: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = PREFIX;
    k[1..].copy_from_slice(&n.to_be_bytes());
    k
}

fn arrival_of(k: &[u8]) -> Option<u64> {
    (k.len() == 9 && k[0] == PREFIX).then(|| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&k[1..]);
        u64::from_be_bytes(b)
    })
}

/// The writer side, owned by the sink.
pub struct LocalStore {
    db: DB,
    max_events: u64,
    /// (next arrival number, oldest arrival number kept)
    range: Mutex<(u64, u64)>,
}

impl LocalStore {
    /// Opens or creates the store.
    pub fn open(path: &Path, max_events: u64) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_keep_log_file_num(4);
        let db = DB::open(&opts, path)?;
        let next = match db.get(NEXT_KEY)? {
            Some(v) if v.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v);
                u64::from_be_bytes(b)
            }
            _ => 1,
        };
        let oldest = db
            .iterator(IteratorMode::From(&[PREFIX], Direction::Forward))
            .next()
            .transpose()?
            .and_then(|(k, _)| arrival_of(&k))
            .unwrap_or(next);
        Ok(Self {
            db,
            max_events,
            range: Mutex::new((next, oldest)),
        })
    }

    /// Writes encoded events durably (fsync) and applies retention.
    pub fn persist<'a>(
        &self,
        events: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), StoreError> {
        let mut range = self.range.lock().unwrap_or_else(|p| p.into_inner());
        let (mut next, mut oldest) = *range;
        let mut batch = WriteBatch::default();
        for e in events {
            batch.put(key(next), e);
            next += 1;
        }
        batch.put(NEXT_KEY, next.to_be_bytes());
        if next - oldest > self.max_events {
            let new_oldest = next - self.max_events;
            batch.delete_range(key(oldest), key(new_oldest));
            oldest = new_oldest;
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        *range = (next, oldest);
        Ok(())
    }
}

/// A read-only view of a store that a running sink may be writing
/// (a RocksDB secondary instance that catches up on demand).
pub struct LocalStoreReader {
    db: DB,
    _scratch: tempfile::TempDir,
}

impl LocalStoreReader {
    /// Opens the store at `path` for reading.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if !path.join("CURRENT").exists() {
            return Err(StoreError::Missing(path.display().to_string()));
        }
        let scratch = tempfile::tempdir().map_err(StoreError::Scratch)?;
        let mut opts = Options::default();
        opts.set_max_open_files(-1);
        let db = DB::open_as_secondary(&opts, path, scratch.path())?;
        Ok(Self {
            db,
            _scratch: scratch,
        })
    }

    /// Brings the view up to date with the writer.
    pub fn refresh(&self) -> Result<(), StoreError> {
        Ok(self.db.try_catch_up_with_primary()?)
    }

    /// The last `n` events, oldest first, with their arrival numbers.
    /// Entries that do not decode are skipped and counted in the result.
    pub fn tail(&self, n: usize) -> Result<(Vec<(u64, Event)>, usize), StoreError> {
        let end = key(u64::MAX);
        let mut out = Vec::with_capacity(n);
        let mut bad = 0;
        for item in self
            .db
            .iterator(IteratorMode::From(&end, Direction::Reverse))
        {
            let (k, v) = item?;
            let Some(a) = arrival_of(&k) else { break };
            match Event::decode(v.as_ref()) {
                Ok(e) => out.push((a, e)),
                Err(_) => bad += 1,
            }
            if out.len() >= n {
                break;
            }
        }
        out.reverse();
        Ok((out, bad))
    }

    /// Up to `max` entries that arrived after arrival number `after`: the
    /// events, how many entries did not decode, and the last arrival number
    /// scanned (pass it as `after` next time).
    pub fn after(&self, after: u64, max: usize) -> Result<AfterPage, StoreError> {
        let mut out = Vec::new();
        let mut bad = 0;
        let mut last = after;
        for item in self.db.iterator(IteratorMode::From(
            &key(after.saturating_add(1)),
            Direction::Forward,
        )) {
            let (k, v) = item?;
            let Some(a) = arrival_of(&k) else { break };
            last = a;
            match Event::decode(v.as_ref()) {
                Ok(e) => out.push((a, e)),
                Err(_) => bad += 1,
            }
            if out.len() + bad >= max {
                break;
            }
        }
        Ok(AfterPage {
            events: out,
            undecodable: bad,
            last_arrival: last,
        })
    }
}

/// One page of [`LocalStoreReader::after`].
#[derive(Debug, Default)]
pub struct AfterPage {
    pub events: Vec<(u64, Event)>,
    pub undecodable: usize,
    pub last_arrival: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_proto::v1::EventHeader;

    fn ev(seq: u64) -> Vec<u8> {
        Event {
            header: Some(EventHeader {
                host_id: "h".into(),
                seq,
                ..Default::default()
            }),
            body: None,
        }
        .encode_to_vec()
    }

    fn persist(store: &LocalStore, events: &[Vec<u8>]) {
        store.persist(events.iter().map(Vec::as_slice)).unwrap();
    }

    #[test]
    fn reader_sees_writes_and_retention_applies() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path(), 1000).unwrap();
        persist(&store, &(1..=10).map(ev).collect::<Vec<_>>());
        let reader = LocalStoreReader::open(dir.path()).unwrap();
        let (tail, bad) = reader.tail(3).unwrap();
        assert_eq!(bad, 0);
        let seqs: Vec<u64> = tail
            .iter()
            .map(|(_, e)| e.header.as_ref().unwrap().seq)
            .collect();
        assert_eq!(seqs, [8, 9, 10]);

        persist(&store, &(11..=1005).map(ev).collect::<Vec<_>>());
        reader.refresh().unwrap();
        let after = reader.after(tail[2].0, 10_000).unwrap().events;
        assert_eq!(after.len(), 995);
        let all = reader.after(0, 10_000).unwrap().events;
        assert_eq!(all.len(), 1000, "retention keeps max_events");
        assert_eq!(all[0].1.header.as_ref().unwrap().seq, 6);
    }

    #[test]
    fn arrival_numbers_continue_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = LocalStore::open(dir.path(), 1000).unwrap();
            persist(&s, &[ev(1), ev(2)]);
        }
        let s = LocalStore::open(dir.path(), 1000).unwrap();
        persist(&s, &[ev(3)]);
        drop(s);
        let r = LocalStoreReader::open(dir.path()).unwrap();
        let all = r.after(0, 10).unwrap().events;
        let arrivals: Vec<u64> = all.iter().map(|(a, _)| *a).collect();
        assert_eq!(arrivals, [1, 2, 3]);
    }

    #[test]
    fn missing_store_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = LocalStoreReader::open(&dir.path().join("nope"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
