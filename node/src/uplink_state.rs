//! Sans-I/O uplink logic: which spool range to send next, what is in flight,
//! and what each answer or failure means for the spool and for the path
//! the batches take. The async driver in `uplink.rs` checks each ack's
//! receipt, feeds the verdict and connection events in, and carries out
//! the actions returned; tests drive it directly.
//!
//! The path to the sink may run through an aggregator that is not trusted
//! (docs/mesh.md, "Data-plane trust"): only a receipt a sink signed for the
//! very batch sent deletes events. An answer that proves the path is bad
//! (a forged receipt, or a sink saying the batch arrived altered) moves the
//! node to another path at once; answers nobody signed and batches that
//! get no answer do so after [`MAX_UNPROVEN_FAILURES`] in a row.

use std::collections::{BTreeMap, VecDeque};

use starling_proto::v1::batch_ack::Status;
use starling_proto::v1::RejectReason;

/// Failures in a row without a sink's word (a relay's own RETRY or
/// REJECTED, no answer in time, a broken stream) after which the node
/// stops trusting the path and moves on. A relay whose sink is briefly
/// away says RETRY a few times; one that drops batches keeps doing it.
pub const MAX_UNPROVEN_FAILURES: u32 = 3;

/// A contiguous spool range carried by one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub first: u64,
    pub last: u64,
}

/// What an answer to a batch turned out to be, once its receipt (if any)
/// was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A receipt a sink signed for exactly this batch.
    Signed {
        /// What the sink says became of the batch.
        status: Status,
        /// Why it refused it, for REJECTED.
        reason: RejectReason,
        /// The sink saw this node's own certificate beside the batch.
        own_certificate: bool,
        /// The sink's explanation.
        detail: String,
    },
    /// No receipt: the relay's own answer, or a sink that could not read
    /// the batch's header.
    Unsigned {
        /// The status it claims.
        status: Status,
        /// Its explanation.
        detail: String,
    },
    /// A receipt no sink signed for this batch: forged on the way.
    Forged(String),
}

/// Why the node leaves the path it sends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathFault {
    /// An ack with a receipt no sink signed for the batch sent.
    ForgedReceipt,
    /// A sink signed that the batch arrived altered (signature, payload or
    /// certificate not as sent).
    Altered,
    /// [`MAX_UNPROVEN_FAILURES`] failures in a row without a sink's word.
    Unproven,
}

impl PathFault {
    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            PathFault::ForgedReceipt => "forged_receipt",
            PathFault::Altered => "altered",
            PathFault::Unproven => "unproven",
        }
    }
}

/// What the driver must do after an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckAction {
    /// A sink persisted the range: delete it from the spool.
    Delete(SeqRange),
    /// Temporary failure: the range was queued to be sent again.
    Resend(SeqRange),
    /// The sink refused the batch as this node sent it; it stays spooled
    /// and is sent again after a pause (operators see the reason in logs
    /// and metrics).
    Rejected(SeqRange, String),
    /// The sink refused the signing time; the range was queued to be sent
    /// again at once, signed with the sink's time.
    ClockRejected(SeqRange),
    /// The path is not to be trusted: the range (and everything else in
    /// flight) will be sent again on another one.
    MoveOn(SeqRange, PathFault, String),
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
    /// Failures in a row without a sink's word.
    unproven: u32,
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
            unproven: 0,
        }
    }

    /// A (re)connection: everything that was in flight is unacknowledged
    /// and will be sent again, starting from the spool's oldest entry.
    pub fn on_connected(&mut self, spool_first_seq: u64) {
        self.in_flight.clear();
        self.resend.clear();
        self.unproven = 0;
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

    /// Handles the answer to batch `batch_id`.
    pub fn on_answer(&mut self, batch_id: u64, answer: Answer) -> AckAction {
        let Some(range) = self.in_flight.remove(&batch_id) else {
            return AckAction::Ignore;
        };
        match answer {
            Answer::Signed {
                status,
                reason,
                own_certificate,
                detail,
            } => {
                self.unproven = 0;
                match status {
                    Status::Persisted => AckAction::Delete(range),
                    Status::Rejected if reason == RejectReason::RejectClock => {
                        self.resend.push_front(range);
                        AckAction::ClockRejected(range)
                    }
                    Status::Rejected if altered(reason, own_certificate) => {
                        AckAction::MoveOn(range, PathFault::Altered, detail)
                    }
                    Status::Rejected => {
                        self.resend.push_back(range);
                        AckAction::Rejected(range, detail)
                    }
                    Status::Retry | Status::Unspecified => {
                        self.resend.push_back(range);
                        AckAction::Resend(range)
                    }
                }
            }
            Answer::Forged(why) => AckAction::MoveOn(range, PathFault::ForgedReceipt, why),
            // A sink always signs what it persisted: this is a relay
            // claiming a delivery nobody vouches for.
            Answer::Unsigned {
                status: Status::Persisted,
                ..
            } => AckAction::MoveOn(
                range,
                PathFault::ForgedReceipt,
                "PERSISTED without a sink's receipt".into(),
            ),
            Answer::Unsigned { status, detail } => match self.unproven_failure(range) {
                Some(action) => action,
                None if status == Status::Rejected => AckAction::Rejected(range, detail),
                None => AckAction::Resend(range),
            },
        }
    }

    /// A batch's stream failed, or no answer came in time (but the
    /// connection may live): send its range again, and leave the path if
    /// that keeps happening.
    pub fn on_batch_failed(&mut self, batch_id: u64) -> Option<AckAction> {
        let range = self.in_flight.remove(&batch_id)?;
        self.unproven_failure(range)
    }

    /// Counts a failure without a sink's word; queues the range again, or,
    /// past the limit, says to move on.
    fn unproven_failure(&mut self, range: SeqRange) -> Option<AckAction> {
        self.unproven += 1;
        if self.unproven >= MAX_UNPROVEN_FAILURES {
            return Some(AckAction::MoveOn(
                range,
                PathFault::Unproven,
                format!(
                    "{} batches in a row without a sink's receipt",
                    self.unproven
                ),
            ));
        }
        self.resend.push_back(range);
        None
    }
}

/// Whether a sink's refusal means the batch was changed after this node
/// signed it: a bad signature or payload is never what this node sends,
/// and neither is another certificate than its own.
fn altered(reason: RejectReason, own_certificate: bool) -> bool {
    !own_certificate
        || matches!(
            reason,
            RejectReason::RejectBadSignature | RejectReason::RejectPayloadMismatch
        )
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

    fn signed(status: Status) -> Answer {
        Answer::Signed {
            status,
            reason: RejectReason::Unspecified,
            own_certificate: true,
            detail: String::new(),
        }
    }

    fn refused(reason: RejectReason, own_certificate: bool) -> Answer {
        Answer::Signed {
            status: Status::Rejected,
            reason,
            own_certificate,
            detail: "no".into(),
        }
    }

    fn unsigned(status: Status) -> Answer {
        Answer::Unsigned {
            status,
            detail: "relay says".into(),
        }
    }

    #[test]
    fn persisted_ack_deletes_and_frees_the_window() {
        let mut u = UplinkState::new(1);
        u.on_connected(1);
        let id = u.on_sent(NextRead::From(1), r(1, 5));
        assert_eq!(
            u.on_answer(id, signed(Status::Persisted)),
            AckAction::Delete(r(1, 5))
        );
        assert_eq!(u.next_read(), Some(NextRead::From(6)));
        assert_eq!(
            u.on_answer(id, signed(Status::Persisted)),
            AckAction::Ignore
        );
    }

    #[test]
    fn retry_resends_the_same_range_first() {
        let mut u = UplinkState::new(4);
        u.on_connected(1);
        let a = u.on_sent(NextRead::From(1), r(1, 5));
        u.on_sent(NextRead::From(6), r(6, 9));
        assert_eq!(
            u.on_answer(a, signed(Status::Retry)),
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
        assert_eq!(u.on_batch_failed(id), None);
        assert_eq!(u.next_read(), Some(NextRead::Range(r(1, 5))));
    }

    #[test]
    fn a_delivery_no_sink_signed_never_deletes_and_leaves_the_path() {
        let mut u = UplinkState::new(4);
        u.on_connected(1);
        let forged = u.on_sent(NextRead::From(1), r(1, 5));
        let bare = u.on_sent(NextRead::From(6), r(6, 9));
        assert!(matches!(
            u.on_answer(forged, Answer::Forged("bad signature".into())),
            AckAction::MoveOn(_, PathFault::ForgedReceipt, _)
        ));
        assert!(matches!(
            u.on_answer(bare, unsigned(Status::Persisted)),
            AckAction::MoveOn(_, PathFault::ForgedReceipt, _)
        ));
    }

    #[test]
    fn a_batch_the_sink_saw_altered_leaves_the_path_and_a_true_refusal_does_not() {
        let mut u = UplinkState::new(8);
        u.on_connected(1);
        for (i, (reason, own, altered)) in [
            (RejectReason::RejectBadSignature, true, true),
            (RejectReason::RejectPayloadMismatch, true, true),
            (RejectReason::RejectOriginMismatch, false, true),
            (RejectReason::RejectOriginUntrusted, true, false),
            (RejectReason::RejectMalformed, true, false),
        ]
        .into_iter()
        .enumerate()
        {
            let first = i as u64 * 10 + 1;
            let id = u.on_sent(NextRead::From(first), r(first, first + 9));
            let action = u.on_answer(id, refused(reason, own));
            if altered {
                assert!(
                    matches!(action, AckAction::MoveOn(_, PathFault::Altered, _)),
                    "{reason:?}: {action:?}"
                );
            } else {
                assert!(
                    matches!(action, AckAction::Rejected(..)),
                    "{reason:?}: {action:?}"
                );
            }
        }
    }

    #[test]
    fn a_clock_refusal_is_sent_again_first() {
        let mut u = UplinkState::new(4);
        u.on_connected(1);
        let a = u.on_sent(NextRead::From(1), r(1, 5));
        let b = u.on_sent(NextRead::From(6), r(6, 9));
        u.on_answer(b, signed(Status::Retry));
        assert_eq!(
            u.on_answer(a, refused(RejectReason::RejectClock, true)),
            AckAction::ClockRejected(r(1, 5))
        );
        assert_eq!(u.next_read(), Some(NextRead::Range(r(1, 5))));
    }

    #[test]
    fn failures_without_a_sinks_word_leave_the_path_after_a_few_in_a_row() {
        let mut u = UplinkState::new(8);
        u.on_connected(1);
        let ids: Vec<u64> = (0..6)
            .map(|i| u.on_sent(NextRead::From(i * 10 + 1), r(i * 10 + 1, i * 10 + 10)))
            .collect();
        assert_eq!(
            u.on_answer(ids[0], unsigned(Status::Retry)),
            AckAction::Resend(r(1, 10))
        );
        assert_eq!(u.on_batch_failed(ids[1]), None);
        // A sink's signed RETRY proves the path works: the count restarts.
        assert_eq!(
            u.on_answer(ids[2], signed(Status::Retry)),
            AckAction::Resend(r(21, 30))
        );
        assert_eq!(
            u.on_answer(ids[3], unsigned(Status::Retry)),
            AckAction::Resend(r(31, 40))
        );
        assert_eq!(u.on_batch_failed(ids[4]), None);
        assert!(matches!(
            u.on_answer(ids[5], unsigned(Status::Rejected)),
            AckAction::MoveOn(_, PathFault::Unproven, _)
        ));
    }
}
