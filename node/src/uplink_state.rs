//! Sans-I/O uplink logic: which spool range to send next, what is in flight,
//! and what each ack or failure means for the spool. The async driver in
//! `uplink.rs` feeds it acks and connection events and carries out the
//! actions it returns; tests drive it directly.

use std::collections::{BTreeMap, VecDeque};

use starling_proto::v1::batch_ack::Status;

/// A contiguous spool range carried by one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub first: u64,
    pub last: u64,
}

/// What the driver must do after an ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckAction {
    /// The sink persisted the range: delete it from the spool.
    Delete(SeqRange),
    /// Temporary failure: the range was queued to be sent again.
    Resend(SeqRange),
    /// The sink refused the batch; it stays spooled and is sent again after
    /// a pause (operators see the reason in logs and metrics).
    Rejected(SeqRange, String),
    /// Ack for a batch that is not in flight (late, after a reconnect).
    Ignore,
}

/// Where the next batch should start reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextRead {
    /// Re-send exactly this range (after RETRY or REJECTED).
    Range(SeqRange),
    /// Read new events from this sequence number on.
    From(u64),
}

/// In-flight bookkeeping for one connection to the sink side.
#[derive(Debug)]
pub struct UplinkState {
    max_in_flight: usize,
    next_batch_id: u64,
    /// Next sequence number not yet handed to any batch.
    cursor: u64,
    in_flight: BTreeMap<u64, SeqRange>,
    resend: VecDeque<SeqRange>,
}

impl UplinkState {
    /// A state with at most `max_in_flight` unacknowledged batches.
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            max_in_flight: max_in_flight.max(1),
            next_batch_id: 1,
            cursor: 0,
            in_flight: BTreeMap::new(),
            resend: VecDeque::new(),
        }
    }

    /// A (re)connection: everything that was in flight is unacknowledged
    /// and will be sent again, starting from the spool's oldest entry.
    pub fn on_connected(&mut self, spool_first_seq: u64) {
        self.in_flight.clear();
        self.resend.clear();
        self.cursor = spool_first_seq;
    }

    /// The connection failed; nothing in flight will be acknowledged.
    pub fn on_connection_lost(&mut self) {
        self.in_flight.clear();
        self.resend.clear();
    }

    /// Number of batches awaiting an ack.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Where to read the next batch from, if the window has room.
    pub fn next_read(&self) -> Option<NextRead> {
        if self.in_flight.len() >= self.max_in_flight {
            return None;
        }
        Some(match self.resend.front() {
            Some(r) => NextRead::Range(*r),
            None => NextRead::From(self.cursor),
        })
    }

    /// Records that a batch covering `range` was sent; returns its id.
    pub fn on_sent(&mut self, read: NextRead, range: SeqRange) -> u64 {
        match read {
            NextRead::Range(_) => {
                self.resend.pop_front();
            }
            NextRead::From(_) => self.cursor = self.cursor.max(range.last + 1),
        }
        let id = self.next_batch_id;
        self.next_batch_id += 1;
        self.in_flight.insert(id, range);
        id
    }

    /// A range that was to be re-sent turned out to be empty (evicted by the
    /// quota meanwhile): forget it.
    pub fn on_resend_empty(&mut self) {
        self.resend.pop_front();
    }

    /// Handles an ack from the sink.
    pub fn on_ack(&mut self, batch_id: u64, status: Status, detail: &str) -> AckAction {
        let Some(range) = self.in_flight.remove(&batch_id) else {
            return AckAction::Ignore;
        };
        match status {
            Status::Persisted => AckAction::Delete(range),
            Status::Rejected => {
                self.resend.push_back(range);
                AckAction::Rejected(range, detail.to_owned())
            }
            Status::Retry | Status::Unspecified => {
                self.resend.push_back(range);
                AckAction::Resend(range)
            }
        }
    }

    /// A batch's stream failed without an ack (but the connection may live):
    /// send its range again.
    pub fn on_batch_failed(&mut self, batch_id: u64) {
        if let Some(range) = self.in_flight.remove(&batch_id) {
            self.resend.push_back(range);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(first: u64, last: u64) -> SeqRange {
        SeqRange { first, last }
    }

    #[test]
    fn window_limits_batches_in_flight() {
        let mut u = UplinkState::new(2);
        u.on_connected(1);
        let a = u.next_read().unwrap();
        assert_eq!(a, NextRead::From(1));
        u.on_sent(a, r(1, 10));
        let b = u.next_read().unwrap();
        assert_eq!(b, NextRead::From(11));
        u.on_sent(b, r(11, 20));
        assert_eq!(u.next_read(), None);
    }

    #[test]
    fn persisted_ack_deletes_and_frees_the_window() {
        let mut u = UplinkState::new(1);
        u.on_connected(1);
        let id = u.on_sent(NextRead::From(1), r(1, 5));
        assert_eq!(
            u.on_ack(id, Status::Persisted, ""),
            AckAction::Delete(r(1, 5))
        );
        assert_eq!(u.next_read(), Some(NextRead::From(6)));
        assert_eq!(u.on_ack(id, Status::Persisted, ""), AckAction::Ignore);
    }

    #[test]
    fn retry_resends_the_same_range_first() {
        let mut u = UplinkState::new(4);
        u.on_connected(1);
        let a = u.on_sent(NextRead::From(1), r(1, 5));
        u.on_sent(NextRead::From(6), r(6, 9));
        assert_eq!(
            u.on_ack(a, Status::Retry, "kafka down"),
            AckAction::Resend(r(1, 5))
        );
        let next = u.next_read().unwrap();
        assert_eq!(next, NextRead::Range(r(1, 5)));
        u.on_sent(next, r(1, 5));
        assert_eq!(u.next_read(), Some(NextRead::From(10)));
    }

    #[test]
    fn reconnect_restarts_from_the_spool_head() {
        let mut u = UplinkState::new(4);
        u.on_connected(1);
        u.on_sent(NextRead::From(1), r(1, 5));
        u.on_sent(NextRead::From(6), r(6, 9));
        u.on_connection_lost();
        assert_eq!(u.in_flight(), 0);
        u.on_connected(1);
        assert_eq!(u.next_read(), Some(NextRead::From(1)));
    }

    #[test]
    fn failed_stream_is_resent() {
        let mut u = UplinkState::new(4);
        u.on_connected(1);
        let id = u.on_sent(NextRead::From(1), r(1, 5));
        u.on_batch_failed(id);
        assert_eq!(u.next_read(), Some(NextRead::Range(r(1, 5))));
    }
}
