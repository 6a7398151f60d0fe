//! Anti-entropy between peers, methods of [`Mesh`]: every
//! `sync_interval` a member compares notes with one admitted peer over
//! `/starling/tasks/1` and fetches what it lacks and pushes what the peer
//! lacks (docs/tasks.md, "Dissemination and catch-up"). The logic is
//! `starling_task::TaskPlane`.

use std::time::{Duration, Instant};

use libp2p::request_response::{self, ResponseChannel};
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use starling_task::plane::{ShortDigest, Summary};

use super::Mesh;

/// Protocol of the anti-entropy exchange.
pub const TASK_SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/starling/tasks/1");
/// Largest anti-entropy message (tasks up to `MAX_SYNC_BYTES`, framing).
pub const MAX_TASK_SYNC_BYTES: u64 = 5 * 1024 * 1024;
/// A member with no admitted peer looks again for one to sync with this
/// often.
pub(super) const NO_PEER_RETRY: Duration = Duration::from_secs(1);
/// An anti-entropy request (or a fetch) not answered in this long has
/// failed; the next exchange goes to another peer. Generous: 300 members
/// sharing two cores answer in seconds, and an exchange given up early
/// is one more to make.
pub const TASK_SYNC_TIMEOUT: Duration = Duration::from_secs(20);
/// Prometheus counter of anti-entropy exchanges this host started, by
/// `outcome` (`same`, `differ`, `failed`).
pub const TASK_SYNCS: &str = "starling_task_syncs_total";
/// Prometheus counter of anti-entropy bytes, by `direction`.
pub const TASK_SYNC_BYTES: &str = "starling_task_sync_bytes_total";
/// About what a summary and a `Same` answer take on the wire (CBOR: a
/// version, a 32-byte hash, a count; one byte), for the byte counters.
pub(super) const SUMMARY_BYTES: u64 = 48;
const SAME_BYTES: u64 = 1;
/// An anti-entropy request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SyncRequest {
    /// What the sender holds.
    Summary(Summary),
    /// Tasks the sender lacks, by 8-byte digest prefix (concatenated).
    Fetch(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Tasks the receiver lacks.
    Push(Vec<serde_bytes::ByteBuf>),
}

/// An anti-entropy answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SyncResponse {
    /// The summaries match.
    Same,
    /// Prefixes of every task the responder holds (concatenated).
    Held(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The tasks fetched.
    Tasks(Vec<serde_bytes::ByteBuf>),
    /// Pushed tasks were taken (each checked like any copy).
    Taken,
}

impl Mesh {
    /// Every `sync_interval`, compares notes with one admitted peer.
    pub(super) fn start_sync(&mut self, now: Instant) {
        let Some(driver) = self.tasks.as_mut() else {
            return;
        };
        if now < driver.next_sync || !driver.in_flight.is_empty() {
            return;
        }
        let peers: Vec<PeerId> = self.table.admitted_peers().collect();
        if peers.is_empty() {
            // A member that has just started (or lost every peer) asks
            // as soon as it has one: that is when it has most to catch up.
            driver.next_sync = now + NO_PEER_RETRY;
            return;
        }
        // Spread: U[0.5, 1.5) of the interval.
        let spread = rand::RngExt::random_range(&mut self.rng, 0.5..1.5);
        driver.next_sync = now + driver.settings.sync_interval.mul_f64(spread);
        let peer = peers[rand::RngExt::random_range(&mut self.rng, 0..peers.len())];
        let summary = driver.plane.summary();
        let id = self
            .swarm
            .behaviour_mut()
            .tasks_sync
            .send_request(&peer, SyncRequest::Summary(summary));
        metrics::counter!(TASK_SYNC_BYTES, "direction" => "out").increment(SUMMARY_BYTES);
        if let Some(driver) = self.tasks.as_mut() {
            driver.in_flight.insert(id);
        }
    }

    pub(super) fn on_task_sync(
        &mut self,
        event: request_response::Event<SyncRequest, SyncResponse>,
    ) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.answer_sync(peer, request, channel),
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(d) = self.tasks.as_mut() {
                    d.in_flight.remove(&request_id);
                }
                self.on_sync_response(peer, response);
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(d) = self.tasks.as_mut() {
                    d.in_flight.remove(&request_id);
                }
                metrics::counter!(TASK_SYNCS, "outcome" => "failed").increment(1);
                tracing::debug!(%error, "task sync failed");
            }
            _ => {}
        }
    }

    fn answer_sync(
        &mut self,
        peer: PeerId,
        request: SyncRequest,
        channel: ResponseChannel<SyncResponse>,
    ) {
        if self.table.admitted(&peer).is_none() {
            return;
        }
        let Some(driver) = self.tasks.as_ref() else {
            return;
        };
        let response = match request {
            SyncRequest::Summary(theirs) => {
                metrics::counter!(TASK_SYNC_BYTES, "direction" => "in").increment(SUMMARY_BYTES);
                let ours = driver.plane.summary();
                if theirs.set_hash == ours.set_hash && theirs.root_version == ours.root_version {
                    metrics::counter!(TASK_SYNC_BYTES, "direction" => "out").increment(SAME_BYTES);
                    SyncResponse::Same
                } else {
                    let held = driver.plane.held().concat();
                    metrics::counter!(TASK_SYNC_BYTES, "direction" => "out")
                        .increment(held.len() as u64);
                    SyncResponse::Held(held)
                }
            }
            SyncRequest::Fetch(prefixes) => SyncResponse::Tasks(
                driver
                    .plane
                    .tasks_for(&split_prefixes(&prefixes))
                    .into_iter()
                    .map(serde_bytes::ByteBuf::from)
                    .collect(),
            ),
            SyncRequest::Push(tasks) => {
                for t in tasks.iter().take(starling_task::plane::MAX_SYNC_ITEMS) {
                    metrics::counter!(TASK_SYNC_BYTES, "direction" => "in")
                        .increment(t.len() as u64);
                    let _ = self.take_task(t, "sync");
                }
                SyncResponse::Taken
            }
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .tasks_sync
            .send_response(channel, response);
    }

    fn on_sync_response(&mut self, peer: PeerId, response: SyncResponse) {
        match response {
            SyncResponse::Same => {
                metrics::counter!(TASK_SYNCS, "outcome" => "same").increment(1);
                metrics::counter!(TASK_SYNC_BYTES, "direction" => "in").increment(SAME_BYTES);
            }
            SyncResponse::Held(prefixes) => {
                metrics::counter!(TASK_SYNCS, "outcome" => "differ").increment(1);
                metrics::counter!(TASK_SYNC_BYTES, "direction" => "in")
                    .increment(prefixes.len() as u64);
                let Some(driver) = self.tasks.as_ref() else {
                    return;
                };
                let (wanted, lacking) = driver.plane.compare(&split_prefixes(&prefixes));
                if !wanted.is_empty() {
                    let id = self
                        .swarm
                        .behaviour_mut()
                        .tasks_sync
                        .send_request(&peer, SyncRequest::Fetch(wanted.concat()));
                    if let Some(d) = self.tasks.as_mut() {
                        d.in_flight.insert(id);
                    }
                }
                if !lacking.is_empty() {
                    let bytes: usize = lacking.iter().map(Vec::len).sum();
                    metrics::counter!(TASK_SYNC_BYTES, "direction" => "out")
                        .increment(bytes as u64);
                    let id = self.swarm.behaviour_mut().tasks_sync.send_request(
                        &peer,
                        SyncRequest::Push(
                            lacking
                                .into_iter()
                                .map(serde_bytes::ByteBuf::from)
                                .collect(),
                        ),
                    );
                    if let Some(d) = self.tasks.as_mut() {
                        d.in_flight.insert(id);
                    }
                }
            }
            SyncResponse::Tasks(tasks) => {
                for t in tasks.iter().take(starling_task::plane::MAX_SYNC_ITEMS) {
                    metrics::counter!(TASK_SYNC_BYTES, "direction" => "in")
                        .increment(t.len() as u64);
                    let _ = self.take_task(t, "sync");
                }
            }
            SyncResponse::Taken => {}
        }
    }
}

/// Splits concatenated 8-byte prefixes (a trailing partial one is dropped).
fn split_prefixes(bytes: &[u8]) -> Vec<ShortDigest> {
    bytes
        .chunks_exact(8)
        .take(starling_task::plane::MAX_SYNC_ITEMS)
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

    #[test]
    fn prefixes_split_whole_and_bounded() {
        let bytes: Vec<u8> = (0..8 * 3 + 5).map(|i| i as u8).collect();
        let p = split_prefixes(&bytes);
        assert_eq!(p.len(), 3);
        assert_eq!(p[1], [8, 9, 10, 11, 12, 13, 14, 15]);
        let many = vec![0u8; 8 * (starling_task::plane::MAX_SYNC_ITEMS + 10)];
        assert_eq!(
            split_prefixes(&many).len(),
            starling_task::plane::MAX_SYNC_ITEMS
        );
    }
}
