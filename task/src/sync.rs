//! The anti-entropy exchange as a state machine (docs/tasks.md,
//! "Dissemination and catch-up"): a request or an answer in, the answer to
//! send, the requests that follow and the copies to check out. The mesh's
//! driver carries these messages over `/starling/tasks/2` (protobuf,
//! [`wire`]); the simulator delivers them itself. Neither decides anything
//! here.
//!
//! A host sends a peer a [`SyncRequest::Summary`]; the peer answers
//! [`SyncResponse::Same`] or [`SyncResponse::Held`] with the prefixes of
//! every task it holds; the host then fetches what it lacks and pushes
//! what the peer lacks.

use crate::plane::{ShortDigest, Summary, TaskPlane, MAX_SYNC_ITEMS};

mod wire;
pub use wire::{
    decode_request, decode_response, encode_request, encode_response, MAX_SYNC_MESSAGE_BYTES,
};

/// What a `Same` or `Taken` answer takes on the wire.
pub const SAME_BYTES: u64 = 2;

/// An anti-entropy request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncRequest {
    /// What the sender holds.
    Summary(Summary),
    /// Tasks the sender lacks, by 8-byte digest prefix (concatenated).
    Fetch(Vec<u8>),
    /// Tasks the receiver lacks (signed tasks, as signed).
    Push(Vec<Vec<u8>>),
}

/// An anti-entropy answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncResponse {
    /// The summaries match.
    Same,
    /// Prefixes of every task the responder holds (concatenated).
    Held(Vec<u8>),
    /// The tasks fetched.
    Tasks(Vec<Vec<u8>>),
    /// Pushed tasks were taken (each checked like any copy).
    Taken,
}

impl SyncRequest {
    /// The bytes this message carries, as the counters count them (the
    /// summary at its encoded size, prefixes and tasks at theirs, without
    /// their framing).
    pub fn payload_bytes(&self) -> u64 {
        match self {
            SyncRequest::Summary(s) => wire::summary_bytes(s),
            SyncRequest::Fetch(p) => p.len() as u64,
            SyncRequest::Push(tasks) => tasks.iter().map(|t| t.len() as u64).sum(),
        }
    }
}

impl SyncResponse {
    /// The bytes this answer carries, as the counters count them.
    pub fn payload_bytes(&self) -> u64 {
        match self {
            SyncResponse::Same => SAME_BYTES,
            SyncResponse::Held(p) => p.len() as u64,
            SyncResponse::Tasks(tasks) => tasks.iter().map(|t| t.len() as u64).sum(),
            SyncResponse::Taken => SAME_BYTES,
        }
    }
}

/// What the driver does after a message of the exchange: send `requests`
/// to the same peer and check `copies` as copies from a sync, each through
/// the same path as a copy from gossip.
#[derive(Debug, Default)]
pub struct SyncStep {
    /// Requests to send to the peer.
    pub requests: Vec<SyncRequest>,
    /// Signed tasks that arrived, at most [`MAX_SYNC_ITEMS`].
    pub copies: Vec<Vec<u8>>,
}

/// Starts an exchange: the summary to send a peer.
pub fn open(plane: &TaskPlane) -> SyncRequest {
    SyncRequest::Summary(plane.summary())
}

/// A peer's request: the answer, and the copies it pushed to check.
pub fn answer(plane: &TaskPlane, request: SyncRequest) -> (SyncResponse, Vec<Vec<u8>>) {
    match request {
        SyncRequest::Summary(theirs) => {
            let ours = plane.summary();
            let response =
                if theirs.set_hash == ours.set_hash && theirs.root_version == ours.root_version {
                    SyncResponse::Same
                } else {
                    SyncResponse::Held(plane.held().concat())
                };
            (response, Vec::new())
        }
        SyncRequest::Fetch(prefixes) => (
            SyncResponse::Tasks(plane.tasks_for(&split_prefixes(&prefixes))),
            Vec::new(),
        ),
        SyncRequest::Push(mut tasks) => {
            tasks.truncate(MAX_SYNC_ITEMS);
            (SyncResponse::Taken, tasks)
        }
    }
}

/// The peer's answer to one of this host's requests: what to do next.
pub fn on_response(plane: &TaskPlane, response: SyncResponse) -> SyncStep {
    match response {
        SyncResponse::Same | SyncResponse::Taken => SyncStep::default(),
        SyncResponse::Held(prefixes) => {
            let (wanted, lacking) = plane.compare(&split_prefixes(&prefixes));
            let mut requests = Vec::new();
            if !wanted.is_empty() {
                requests.push(SyncRequest::Fetch(wanted.concat()));
            }
            if !lacking.is_empty() {
                requests.push(SyncRequest::Push(lacking));
            }
            SyncStep {
                requests,
                copies: Vec::new(),
            }
        }
        SyncResponse::Tasks(mut tasks) => {
            tasks.truncate(MAX_SYNC_ITEMS);
            SyncStep {
                requests: Vec::new(),
                copies: tasks,
            }
        }
    }
}

/// Splits concatenated 8-byte prefixes (a trailing partial one is dropped).
fn split_prefixes(bytes: &[u8]) -> Vec<ShortDigest> {
    bytes
        .chunks_exact(8)
        .take(MAX_SYNC_ITEMS)
        .map(|c| {
            let mut p = [0u8; 8];
            p.copy_from_slice(c);
            p
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{plane, tag_task, Operators, NOW};
    use starling_proto::v1::TargetSelector;

    fn everyone() -> TargetSelector {
        TargetSelector {
            all: true,
            ..Default::default()
        }
    }

    #[test]
    fn prefixes_split_whole_and_bounded() {
        let bytes: Vec<u8> = (0..8 * 3 + 5).map(|i| i as u8).collect();
        let p = split_prefixes(&bytes);
        assert_eq!(p.len(), 3);
        assert_eq!(p[1], [8, 9, 10, 11, 12, 13, 14, 15]);
        let many = vec![0u8; 8 * (MAX_SYNC_ITEMS + 10)];
        assert_eq!(split_prefixes(&many).len(), MAX_SYNC_ITEMS);
    }

    /// Runs one whole exchange from `a` to `b`, delivering pushed and
    /// fetched copies through `receive`; returns the bytes each way.
    fn exchange(a: &mut TaskPlane, b: &mut TaskPlane, now: u64) -> (u64, u64) {
        let (mut a_out, mut b_out) = (0, 0);
        let mut to_b = vec![open(a)];
        while let Some(request) = to_b.pop() {
            a_out += request.payload_bytes();
            let (response, copies) = answer(b, request);
            for c in copies {
                b.receive(&c, now);
            }
            b_out += response.payload_bytes();
            let step = on_response(a, response);
            for c in step.copies {
                a.receive(&c, now);
            }
            to_b.extend(step.requests);
        }
        (a_out, b_out)
    }

    #[test]
    fn one_exchange_brings_both_sides_level() {
        let ops = Operators::new(1);
        let mut a = plane(&ops, "a");
        let mut b = plane(&ops, "b");
        let only_a = tag_task(&ops, "only-a", "a", everyone());
        let only_b = tag_task(&ops, "only-b", "b", everyone());
        let both = tag_task(&ops, "both", "x", everyone());
        for (plane, tasks) in [(&mut a, [&only_a, &both]), (&mut b, [&only_b, &both])] {
            for t in tasks {
                assert!(matches!(
                    plane.receive(t, NOW),
                    crate::Received::Accepted { .. }
                ));
            }
        }
        assert_ne!(a.summary(), b.summary());
        let (a_out, b_out) = exchange(&mut a, &mut b, NOW);
        assert_eq!(a.summary(), b.summary());
        assert_eq!(a.summary().count, 3);
        // The summary, one prefix to fetch and one task pushed; back the
        // prefixes held, one task and the push taken.
        let summary = wire::summary_bytes(&a.summary());
        assert_eq!(a_out, summary + 8 + only_a.len() as u64);
        assert_eq!(b_out, 2 * 8 + only_b.len() as u64 + SAME_BYTES);
        // Level: the next exchange costs a summary and a `Same`.
        assert_eq!(exchange(&mut a, &mut b, NOW), (summary, SAME_BYTES));
    }
}
