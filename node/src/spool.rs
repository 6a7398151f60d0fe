//! The node's durable spool (RocksDB).
//!
//! Every event is written here before anything else happens to it; it
//! leaves only when the sink acknowledges that Kafka (or the sink's local
//! store) persisted it, or when the disk quota forces a drop under the
//! configured [`DropPolicy`]. Sequence numbers are assigned here and the
//! next one is committed in the same atomic write as the events, so a
//! restarted node continues the sequence and never reuses a number.
//!
//! Key layout: `e` + seq (big-endian u64) -> encoded `Event`;
//! `m:next_seq` -> next sequence number (big-endian u64).

use std::path::Path;
use std::sync::Mutex;

use prost::Message;
use rocksdb::{
    BlockBasedOptions, Cache, Direction, IteratorMode, Options, ReadOptions, WriteBatch,
    WriteOptions, DB,
};
use starling_proto::v1::{event::Body, event_loss::Reason, Event, EventLoss};

const EVENT_PREFIX: u8 = b'e';
const NEXT_SEQ_KEY: &[u8] = b"m:next_seq";
/// Size of one RocksDB memtable (see [`Spool::open`]).
const MEMTABLE_BYTES: usize = 4 << 20;
/// RocksDB's block cache. The spool reads each event once, in order, so
/// cached blocks are seldom read again; scans do not fill it (see
/// [`scan_options`]) and it stays small.
const BLOCK_CACHE_BYTES: usize = 1 << 20;
/// Per-entry overhead counted against the quota besides the value bytes.
const ENTRY_OVERHEAD: u64 = 9 + 16;

/// What to do when an append would exceed the disk quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DropPolicy {
    /// Delete the oldest spooled events to make room (a ring buffer). Keeps
    /// what happens now; the sequence gap shows downstream what was lost.
    DropOldest,
    /// Refuse new events until space frees up. Keeps the oldest evidence.
    DropNewest,
}

/// Spool errors (all from RocksDB or a corrupt entry).
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool database: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("corrupt spool entry: {0}")]
    Corrupt(String),
}

/// Counts returned by an append, for metrics and loss events.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Events written (each got a sequence number).
    pub spooled: u64,
    /// Events refused under [`DropPolicy::DropNewest`].
    pub refused: u64,
    /// Events deleted under [`DropPolicy::DropOldest`], with their range.
    pub evicted: u64,
    pub evicted_first_seq: u64,
    pub evicted_last_seq: u64,
}

/// Point-in-time spool figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    pub events: u64,
    pub bytes: u64,
    /// Lowest sequence number still spooled (0 when empty).
    pub first_seq: u64,
    /// Next sequence number to be assigned.
    pub next_seq: u64,
}

struct State {
    next_seq: u64,
    first_seq: u64,
    events: u64,
    bytes: u64,
}

/// The spool. Safe to share between the sensor (appends) and the uplink
/// (reads and acks).
pub struct Spool {
    db: DB,
    host_id: String,
    quota_bytes: u64,
    policy: DropPolicy,
    write_opts: WriteOptions,
    state: Mutex<State>,
}

fn event_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = EVENT_PREFIX;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of_key(key: &[u8]) -> Option<u64> {
    if key.len() == 9 && key[0] == EVENT_PREFIX {
        let mut b = [0u8; 8];
        b.copy_from_slice(&key[1..]);
        Some(u64::from_be_bytes(b))
    } else {
        None
    }
}

/// Read options of the spool's scans: blocks read once are not cached (at
/// 100k events/s the default cache filled with them, RSS grew by its size).
fn scan_options() -> ReadOptions {
    let mut r = ReadOptions::default();
    r.fill_cache(false);
    r
}

fn entry_cost(value_len: usize) -> u64 {
    value_len as u64 + ENTRY_OVERHEAD
}

impl Spool {
    /// Opens (or creates) the spool and recovers its counters.
    pub fn open(
        path: &Path,
        host_id: &str,
        quota_bytes: u64,
        policy: DropPolicy,
        sync_writes: bool,
    ) -> Result<Self, SpoolError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_keep_log_file_num(4);
        opts.set_max_log_file_size(8 << 20);
        // Small memtables: events usually leave within milliseconds (the
        // sink acknowledges them), so a memtable holds mostly deleted
        // entries, and RocksDB's 64 MiB default would be the node's largest
        // use of memory. Two of 4 MiB hold over a second of 100k events/s.
        opts.set_write_buffer_size(MEMTABLE_BYTES);
        opts.set_max_write_buffer_number(2);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&Cache::new_lru_cache(BLOCK_CACHE_BYTES)?);
        opts.set_block_based_table_factory(&table);
        let db = DB::open(&opts, path)?;
        let mut state = State {
            next_seq: 1,
            first_seq: 0,
            events: 0,
            bytes: 0,
        };
        if let Some(v) = db.get(NEXT_SEQ_KEY)? {
            let b: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| SpoolError::Corrupt("next_seq is not 8 bytes".into()))?;
            state.next_seq = u64::from_be_bytes(b).max(1);
        }
        let mut last = 0;
        for item in db.iterator_opt(
            IteratorMode::From(&[EVENT_PREFIX], Direction::Forward),
            scan_options(),
        ) {
            let (k, v) = item?;
            let Some(seq) = seq_of_key(&k) else { break };
            if state.first_seq == 0 {
                state.first_seq = seq;
            }
            last = seq;
            state.events += 1;
            state.bytes += entry_cost(v.len());
        }
        // Never reuse a number, even if the counter were somehow behind.
        state.next_seq = state.next_seq.max(last + 1);
        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(sync_writes);
        Ok(Self {
            db,
            host_id: host_id.to_owned(),
            quota_bytes,
            policy,
            write_opts,
            state: Mutex::new(state),
        })
    }

    /// Current figures.
    pub fn stats(&self) -> SpoolStats {
        let s = self.lock();
        SpoolStats {
            events: s.events,
            bytes: s.bytes,
            first_seq: s.first_seq,
            next_seq: s.next_seq,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves only counters behind; they
        // are still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Assigns sequence numbers, stamps the host id and writes the events.
    /// Applies the quota policy; a loss event describing any drop is
    /// appended in the same write so the loss travels with the data.
    pub fn append(&self, events: Vec<Event>) -> Result<AppendOutcome, SpoolError> {
        let mut out = AppendOutcome::default();
        if events.is_empty() {
            return Ok(out);
        }
        let mut st = self.lock();
        // Stamp and encode each event once: the numbers follow arrival
        // order, evictions consume none, and a refused tail simply never
        // gets its numbers, so they are known before the policy runs.
        let mut encoded: Vec<Vec<u8>> = events
            .into_iter()
            .zip(st.next_seq..)
            .map(|(e, seq)| self.stamp(e, seq))
            .collect();
        let incoming: u64 = encoded.iter().map(|v| entry_cost(v.len())).sum();
        let mut batch = WriteBatch::default();
        let over = (st.bytes + incoming).saturating_sub(self.quota_bytes);
        if over > 0 {
            match self.policy {
                DropPolicy::DropOldest => {
                    let (n, first, last, freed) = self.evict_oldest(&mut st, over, &mut batch)?;
                    out.evicted = n;
                    out.evicted_first_seq = first;
                    out.evicted_last_seq = last;
                    st.bytes -= freed;
                }
                DropPolicy::DropNewest => {
                    let room = self.quota_bytes.saturating_sub(st.bytes);
                    let mut used = 0;
                    let keep = encoded
                        .iter()
                        .take_while(|v| {
                            used += entry_cost(v.len());
                            used <= room
                        })
                        .count();
                    out.refused = (encoded.len() - keep) as u64;
                    encoded.truncate(keep);
                }
            }
        }
        if out.evicted > 0 || out.refused > 0 {
            // The loss record itself may exceed the quota by its few bytes:
            // a loss must never go unreported.
            let loss = loss_event(
                Reason::SpoolQuota,
                out.evicted + out.refused,
                out.evicted_first_seq,
                out.evicted_last_seq,
            );
            let seq = st.next_seq + encoded.len() as u64;
            encoded.push(self.stamp(loss, seq));
        }
        let mut seq = st.next_seq;
        let mut bytes = 0;
        for v in encoded {
            bytes += entry_cost(v.len());
            batch.put(event_key(seq), v);
            seq += 1;
        }
        let written = seq - st.next_seq;
        batch.put(NEXT_SEQ_KEY, seq.to_be_bytes());
        self.db.write_opt(batch, &self.write_opts)?;
        if st.first_seq == 0 && written > 0 {
            st.first_seq = st.next_seq;
        }
        st.next_seq = seq;
        st.events = st.events + written - out.evicted;
        st.bytes += bytes;
        out.spooled = written;
        Ok(out)
    }

    /// Gives an event this host's id and sequence number `seq`, encoded.
    fn stamp(&self, mut event: Event, seq: u64) -> Vec<u8> {
        let h = event.header.get_or_insert_with(Default::default);
        h.host_id.clone_from(&self.host_id);
        h.seq = seq;
        event.encode_to_vec()
    }

    /// Deletes the oldest entries until at least `need` bytes are freed.
    /// Returns (count, first seq, last seq, bytes freed).
    fn evict_oldest(
        &self,
        st: &mut State,
        need: u64,
        batch: &mut WriteBatch,
    ) -> Result<(u64, u64, u64, u64), SpoolError> {
        let (mut n, mut first, mut last, mut freed) = (0, 0, 0, 0);
        for item in self.db.iterator_opt(
            IteratorMode::From(&event_key(st.first_seq), Direction::Forward),
            scan_options(),
        ) {
            if freed >= need {
                break;
            }
            let (k, v) = item?;
            let Some(seq) = seq_of_key(&k) else { break };
            if first == 0 {
                first = seq;
            }
            last = seq;
            n += 1;
            freed += entry_cost(v.len());
        }
        if n > 0 {
            batch.delete_range(event_key(first), event_key(last + 1));
            st.first_seq = last + 1;
        }
        Ok((n, first, last, freed))
    }

    /// Reads up to `max_events` encoded events (and about `max_bytes`)
    /// starting at sequence number `from`. Returns (seq, bytes) pairs.
    pub fn read_from(
        &self,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, SpoolError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for item in self.db.iterator_opt(
            IteratorMode::From(&event_key(from), Direction::Forward),
            scan_options(),
        ) {
            let (k, v) = item?;
            let Some(seq) = seq_of_key(&k) else { break };
            if !out.is_empty() && bytes + v.len() > max_bytes {
                break;
            }
            bytes += v.len();
            out.push((seq, v.into_vec()));
            if out.len() >= max_events {
                break;
            }
        }
        Ok(out)
    }

    /// Removes the events `first..=last` after the sink persisted them.
    /// Returns how many were still spooled (the rest were evicted earlier or
    /// acknowledged twice).
    pub fn ack(&self, first: u64, last: u64) -> Result<u64, SpoolError> {
        let mut st = self.lock();
        let (mut n, mut freed) = (0, 0);
        for item in self.db.iterator_opt(
            IteratorMode::From(&event_key(first), Direction::Forward),
            scan_options(),
        ) {
            let (k, v) = item?;
            match seq_of_key(&k) {
                Some(seq) if seq <= last => {
                    n += 1;
                    freed += entry_cost(v.len());
                }
                _ => break,
            }
        }
        if n == 0 {
            return Ok(0);
        }
        let mut batch = WriteBatch::default();
        batch.delete_range(event_key(first), event_key(last + 1));
        self.db.write_opt(batch, &self.write_opts)?;
        st.events -= n;
        st.bytes -= freed;
        if first <= st.first_seq {
            st.first_seq = self.first_key_from(last + 1)?;
        }
        Ok(n)
    }

    fn first_key_from(&self, from: u64) -> Result<u64, SpoolError> {
        match self
            .db
            .iterator_opt(
                IteratorMode::From(&event_key(from), Direction::Forward),
                scan_options(),
            )
            .next()
        {
            Some(item) => Ok(seq_of_key(&item?.0).unwrap_or(0)),
            None => Ok(0),
        }
    }
}

/// Builds a loss event (header without host id and sequence; the spool
/// fills those).
pub fn loss_event(reason: Reason, count: u64, first_seq: u64, last_seq: u64) -> Event {
    Event {
        header: Some(Default::default()),
        body: Some(Body::EventLoss(EventLoss {
            reason: reason as i32,
            count,
            first_seq,
            last_seq,
            kind: String::new(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_proto::v1::ProcessExec;

    fn exec(arg: &str) -> Event {
        Event {
            header: Some(Default::default()),
            body: Some(Body::ProcessExec(ProcessExec {
                filename: "/bin/true".into(),
                argv: vec!["true".into(), arg.into()],
                ..Default::default()
            })),
        }
    }

    fn open(dir: &Path, quota: u64, policy: DropPolicy) -> Spool {
        Spool::open(dir, "h1", quota, policy, false).unwrap()
    }

    #[test]
    fn sequence_numbers_survive_reopen_and_acks() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path(), 1 << 30, DropPolicy::DropOldest);
            s.append((0..10).map(|i| exec(&i.to_string())).collect())
                .unwrap();
            assert_eq!(s.ack(1, 10).unwrap(), 10);
            assert_eq!(s.stats().events, 0);
        }
        let s = open(dir.path(), 1 << 30, DropPolicy::DropOldest);
        assert_eq!(
            s.stats().next_seq,
            11,
            "numbers are not reused after a full ack"
        );
        s.append(vec![exec("x")]).unwrap();
        let read = s.read_from(0, 100, 1 << 20).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].0, 11);
        let e = Event::decode(read[0].1.as_slice()).unwrap();
        let h = e.header.unwrap();
        assert_eq!((h.host_id.as_str(), h.seq), ("h1", 11));
    }

    #[test]
    fn unacked_events_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path(), 1 << 30, DropPolicy::DropOldest);
            s.append((0..5).map(|i| exec(&i.to_string())).collect())
                .unwrap();
            s.ack(1, 2).unwrap();
        }
        let s = open(dir.path(), 1 << 30, DropPolicy::DropOldest);
        let st = s.stats();
        assert_eq!((st.events, st.first_seq, st.next_seq), (3, 3, 6));
        let seqs: Vec<u64> = s
            .read_from(0, 100, 1 << 20)
            .unwrap()
            .iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(seqs, [3, 4, 5]);
        assert!(st.bytes > 0);
    }

    #[test]
    fn drop_oldest_evicts_and_reports_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 2_000, DropPolicy::DropOldest);
        let mut evicted = 0;
        for i in 0..100 {
            let o = s.append(vec![exec(&format!("{i:040}"))]).unwrap();
            evicted += o.evicted;
        }
        assert!(evicted > 0);
        let st = s.stats();
        // Quota holds, allowing for the small loss records.
        assert!(st.bytes <= 2_000 + 200, "{st:?}");
        let all = s.read_from(0, 1000, 1 << 20).unwrap();
        let losses: u64 = all
            .iter()
            .filter_map(|(_, v)| match Event::decode(v.as_slice()).unwrap().body {
                Some(Body::EventLoss(l)) => Some(l.count),
                _ => None,
            })
            .sum();
        // Every eviction is reported; the oldest loss records may themselves
        // have been evicted, so the spool holds at most the total.
        assert!(losses > 0 && losses <= evicted);
        // Sequence numbers still strictly increase.
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn drop_newest_refuses_and_keeps_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 1_000, DropPolicy::DropNewest);
        let mut refused = 0;
        for i in 0..100 {
            refused += s.append(vec![exec(&format!("{i:040}"))]).unwrap().refused;
        }
        assert!(refused > 0);
        let first = s.read_from(0, 1, 1 << 20).unwrap();
        assert_eq!(first[0].0, 1, "the oldest event is kept");
    }

    #[test]
    fn ack_of_a_middle_range_keeps_first_seq() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 1 << 30, DropPolicy::DropOldest);
        s.append((0..9).map(|i| exec(&i.to_string())).collect())
            .unwrap();
        assert_eq!(s.ack(4, 6).unwrap(), 3);
        assert_eq!(s.stats().first_seq, 1);
        assert_eq!(s.ack(1, 3).unwrap(), 3);
        assert_eq!(s.stats().first_seq, 7);
        assert_eq!(s.ack(1, 3).unwrap(), 0, "a repeated ack is harmless");
        assert_eq!(s.stats().events, 3);
    }
}
