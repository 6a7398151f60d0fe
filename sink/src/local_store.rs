//! The embedded local store: where the sink persists events when no Kafka
//! is configured (the demo default), and what `starlingctl events tail`
//! reads.
//!
//! Events are kept in arrival order under `a` + arrival number (big-endian
//! u64); the next arrival number is committed in the same write. An index
//! `h` + host id + 0 + arrival number (no value) finds one host's events
//! without reading the others'. Every write is fsynced before the sink
//! acks, so an ack means the events are on disk. Beyond `max_events` the
//! oldest are deleted; their index entries are deleted the next time their
//! host writes, and readers skip the ones still left.

use std::path::Path;
use std::sync::Mutex;

use prost::Message;
use rocksdb::{Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use starling_proto::v1::Event;

const PREFIX: u8 = b'a';
const HOST_PREFIX: u8 = b'h';
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

/// The index key of `host`'s event that arrived as number `n`. Host ids
/// hold no 0 byte (`check_host_id`), so the 0 ends the host's prefix.
fn host_key(host: &str, n: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(host.len() + 10);
    k.push(HOST_PREFIX);
    k.extend_from_slice(host.as_bytes());
    k.push(0);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// The arrival number of an index key of `host`.
fn host_arrival_of(host: &str, k: &[u8]) -> Option<u64> {
    let rest = k
        .strip_prefix(&[HOST_PREFIX])?
        .strip_prefix(host.as_bytes())?
        .strip_prefix(&[0])?;
    let b: [u8; 8] = rest.try_into().ok()?;
    Some(u64::from_be_bytes(b))
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

    /// Writes the encoded events of `host` durably (fsync) and applies
    /// retention.
    pub fn persist<'a>(
        &self,
        host: &str,
        events: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), StoreError> {
        let mut range = self.range.lock().unwrap_or_else(|p| p.into_inner());
        let (mut next, mut oldest) = *range;
        let mut batch = WriteBatch::default();
        for e in events {
            batch.put(key(next), e);
            batch.put(host_key(host, next), []);
            next += 1;
        }
        batch.put(NEXT_KEY, next.to_be_bytes());
        if next - oldest > self.max_events {
            let new_oldest = next - self.max_events;
            batch.delete_range(key(oldest), key(new_oldest));
            oldest = new_oldest;
        }
        // This host's index entries of events retention deleted.
        batch.delete_range(host_key(host, 0), host_key(host, oldest));
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
        self.tail_where(None, n, |_| true)
    }

    /// The last `n` events of `host` (any host when None) for which
    /// `keep` holds, oldest first, with their arrival numbers, and how many
    /// entries did not decode. It reads back from the newest only until it
    /// has found `n`, and a host's events through its index only; `n`
    /// sizes no allocation.
    pub fn tail_where(
        &self,
        host: Option<&str>,
        n: usize,
        mut keep: impl FnMut(&Event) -> bool,
    ) -> Result<(Vec<(u64, Event)>, usize), StoreError> {
        let mut out = Vec::new();
        let mut bad = 0;
        if n == 0 {
            return Ok((out, bad));
        }
        // Takes one entry; true once `n` are found.
        let mut take = |a: u64, v: &[u8]| {
            match Event::decode(v) {
                Ok(e) if keep(&e) => out.push((a, e)),
                Ok(_) => {}
                Err(_) => bad += 1,
            }
            out.len() >= n
        };
        match host {
            None => {
                let end = key(u64::MAX);
                for item in self
                    .db
                    .iterator(IteratorMode::From(&end, Direction::Reverse))
                {
                    let (k, v) = item?;
                    let Some(a) = arrival_of(&k) else { break };
                    if take(a, &v) {
                        break;
                    }
                }
            }
            Some(h) => {
                let end = host_key(h, u64::MAX);
                for item in self
                    .db
                    .iterator(IteratorMode::From(&end, Direction::Reverse))
                {
                    let (k, _) = item?;
                    let Some(a) = host_arrival_of(h, &k) else {
                        break;
                    };
                    // An entry whose event retention deleted is skipped.
                    if let Some(v) = self.db.get(key(a))? {
                        if take(a, &v) {
                            break;
                        }
                    }
                }
            }
        }
        out.reverse();
        Ok((out, bad))
    }

    /// Up to `max` events of `host` that arrived after arrival number
    /// `after`, as [`LocalStoreReader::after`] (for following one host).
    pub fn after_host(&self, host: &str, after: u64, max: usize) -> Result<AfterPage, StoreError> {
        let mut page = AfterPage {
            last_arrival: after,
            ..Default::default()
        };
        let start = host_key(host, after.saturating_add(1));
        for item in self
            .db
            .iterator(IteratorMode::From(&start, Direction::Forward))
        {
            if page.events.len() + page.undecodable >= max {
                break;
            }
            let (k, _) = item?;
            let Some(a) = host_arrival_of(host, &k) else {
                break;
            };
            page.last_arrival = a;
            if let Some(v) = self.db.get(key(a))? {
                match Event::decode(v.as_ref()) {
                    Ok(e) => page.events.push((a, e)),
                    Err(_) => page.undecodable += 1,
                }
            }
        }
        Ok(page)
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
    /// The events, with their arrival numbers, in arrival order.
    pub events: Vec<(u64, Event)>,
    /// Entries that did not decode (skipped).
    pub undecodable: usize,
    /// The last arrival number scanned: the next page starts after it.
    pub last_arrival: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_proto::v1::EventHeader;

    fn ev_of(host: &str, seq: u64) -> Vec<u8> {
        Event {
            header: Some(EventHeader {
                host_id: host.into(),
                seq,
                ..Default::default()
            }),
            body: None,
        }
        .encode_to_vec()
    }

    fn ev(seq: u64) -> Vec<u8> {
        ev_of("h", seq)
    }

    fn persist(store: &LocalStore, events: &[Vec<u8>]) {
        store
            .persist("h", events.iter().map(Vec::as_slice))
            .unwrap();
    }

    fn seqs(events: &[(u64, Event)]) -> Vec<u64> {
        events
            .iter()
            .map(|(_, e)| e.header.as_ref().map_or(0, |h| h.seq))
            .collect()
    }

    #[test]
    fn one_hosts_events_are_found_through_its_index_and_retention_cleans_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path(), 1000).unwrap();
        // Two hosts, interleaved; "b" writes 900, then "a" 300 more, so
        // retention deletes a's oldest.
        for round in 0..3u64 {
            let a: Vec<_> = (1..=100).map(|s| ev_of("a", round * 100 + s)).collect();
            store.persist("a", a.iter().map(Vec::as_slice)).unwrap();
            let b: Vec<_> = (1..=300).map(|s| ev_of("b", round * 300 + s)).collect();
            store.persist("b", b.iter().map(Vec::as_slice)).unwrap();
        }
        let reader = LocalStoreReader::open(dir.path()).unwrap();
        let (last, _) = reader.tail_where(Some("a"), 5, |_| true).unwrap();
        assert_eq!(seqs(&last), [296, 297, 298, 299, 300]);
        // Retention kept the newest 1000 of 1200: a's first 100 are gone,
        // and a huge count sizes nothing.
        let (all_a, bad) = reader.tail_where(Some("a"), usize::MAX, |_| true).unwrap();
        assert_eq!(bad, 0);
        assert_eq!(seqs(&all_a), (101..=300).collect::<Vec<_>>());
        let (odd, _) = reader
            .tail_where(Some("b"), 3, |e| {
                e.header.as_ref().is_some_and(|h| h.seq % 2 == 1)
            })
            .unwrap();
        assert_eq!(seqs(&odd), [895, 897, 899]);
        // Following one host from an arrival number.
        let page = reader.after_host("a", all_a[0].0, 10).unwrap();
        assert_eq!(seqs(&page.events), (102..=111).collect::<Vec<_>>());
        assert!(reader
            .tail_where(Some("nobody"), 10, |_| true)
            .unwrap()
            .0
            .is_empty());

        // Once "a" writes again, its index entries of deleted events go.
        let index_entries = |r: &LocalStoreReader| {
            r.db.iterator(IteratorMode::From(&host_key("a", 0), Direction::Forward))
                .filter_map(Result::ok)
                .take_while(|(k, _)| host_arrival_of("a", k).is_some())
                .count()
        };
        assert_eq!(index_entries(&reader), 300, "100 left dangling");
        store
            .persist("a", [ev_of("a", 301)].iter().map(Vec::as_slice))
            .unwrap();
        reader.refresh().unwrap();
        assert_eq!(
            index_entries(&reader),
            201,
            "only entries of events still stored"
        );
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
