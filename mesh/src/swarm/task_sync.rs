//! Anti-entropy between peers, methods of [`Mesh`]: every
//! `sync_interval` a member compares notes with one admitted peer over
//! `/starling/tasks/2` and fetches what it lacks and pushes what the peer
//! lacks (docs/tasks.md, "Dissemination and catch-up"). The logic is
//! `starling_task::TaskPlane`.

use std::time::{Duration, Instant};

use libp2p::request_response::{self, ResponseChannel};
use libp2p::{PeerId, StreamProtocol};
use starling_task::{sync, Blame};

use super::forgers::FORGER_STRIKES;
use super::proto_codec::WireMessage;
use super::Mesh;

/// Protocol of the anti-entropy exchange.
/// (2: protobuf; 1 was CBOR.)
pub const TASK_SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/starling/tasks/2");
/// A member with no admitted peer looks again for one to sync with this
/// often.
pub(super) const NO_PEER_RETRY: Duration = Duration::from_secs(1);
/// An anti-entropy request (or a fetch) not answered in this long has
/// failed; the next exchange goes to another peer. Generous: 300 members
/// sharing two cores answer in seconds, and an exchange given up early
/// is one more to make.
pub const TASK_SYNC_TIMEOUT: Duration = Duration::from_secs(20);
/// Anti-entropy requests a member keeps open at once. One more than one:
/// an exchange lost on the way would otherwise hold the next one off for
/// the whole [`TASK_SYNC_TIMEOUT`], two periods, instead of one period
/// (the fleet simulator's hosts that were away took 20.9 s to catch up at
/// 1 % loss, not the 10-15 s of one more period).
pub const MAX_TASK_SYNCS_IN_FLIGHT: usize = 2;
/// Prometheus counter of anti-entropy exchanges this host started, by
/// `outcome` (`same`, `differ`, `failed`).
pub const TASK_SYNCS: &str = "starling_task_syncs_total";
/// Prometheus counter of anti-entropy bytes, by `direction`.
pub const TASK_SYNC_BYTES: &str = "starling_task_sync_bytes_total";
pub use starling_task::sync::{SyncRequest, SyncResponse};

/// An anti-entropy request on the wire (`starling.v1.SyncRequest`).
impl WireMessage for SyncRequest {
    const MAX_BYTES: u64 = sync::MAX_SYNC_MESSAGE_BYTES as u64;

    fn to_wire(&self) -> Vec<u8> {
        sync::encode_request(self)
    }

    fn from_wire(bytes: &[u8]) -> Result<Self, String> {
        sync::decode_request(bytes)
    }
}

/// An anti-entropy answer on the wire (`starling.v1.SyncResponse`).
impl WireMessage for SyncResponse {
    const MAX_BYTES: u64 = sync::MAX_SYNC_MESSAGE_BYTES as u64;

    fn to_wire(&self) -> Vec<u8> {
        sync::encode_response(self)
    }

    fn from_wire(bytes: &[u8]) -> Result<Self, String> {
        sync::decode_response(bytes)
    }
}

impl Mesh {
    /// Every `sync_interval`, compares notes with one admitted peer.
    pub(super) fn start_sync(&mut self, now: Instant) {
        let Some(driver) = self.tasks.as_mut() else {
            return;
        };
        if now < driver.next_sync || driver.in_flight.len() >= MAX_TASK_SYNCS_IN_FLIGHT {
            return;
        }
        let peers: Vec<PeerId> = self
            .table
            .admitted_peers()
            .filter(|p| !driver.forgers.is_held(p))
            .collect();
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
        let request = sync::open(&driver.plane);
        self.send_sync(peer, request);
    }

    /// Checks copies `peer` handed over by anti-entropy, up to the one
    /// that makes it a forger: then it is held off (`forgers`) and the
    /// rest go unchecked. Copies refused for a reason another root could
    /// explain are checked again at the end if the others brought a new
    /// root (an honest peer sends root tasks first); they blame the peer
    /// once per exchange, and after [`FORGER_STRIKES`] of them the rest go
    /// unchecked. Whether the peer is still trusted.
    fn take_synced(&mut self, peer: PeerId, copies: &[Vec<u8>]) -> bool {
        let root_before = self.tasks.as_ref().map(|d| d.plane.root().version);
        let mut suspect = Vec::new();
        for copy in copies {
            match self.take_task(copy, "sync") {
                Err(r) if r.blame == Blame::Certain => {
                    return !self.blame_relay(peer, &r, "sync");
                }
                Err(r) if r.blame == Blame::Suspect => {
                    suspect.push((copy, r));
                    if suspect.len() >= FORGER_STRIKES as usize {
                        break;
                    }
                }
                _ => {}
            }
        }
        let root_after = self.tasks.as_ref().map(|d| d.plane.root().version);
        if root_after != root_before {
            suspect = suspect
                .into_iter()
                .filter_map(|(copy, _)| self.take_task(copy, "sync").err().map(|r| (copy, r)))
                .filter(|(_, r)| r.blame != Blame::Nobody)
                .collect();
        }
        match suspect.first() {
            Some((_, r)) => !self.blame_relay(peer, r, "sync"),
            None => true,
        }
    }

    fn send_sync(&mut self, peer: PeerId, request: SyncRequest) {
        metrics::counter!(TASK_SYNC_BYTES, "direction" => "out").increment(request.payload_bytes());
        let id = self
            .swarm
            .behaviour_mut()
            .tasks_sync
            .send_request(&peer, request);
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
        if driver.forgers.is_held(&peer) {
            return;
        }
        metrics::counter!(TASK_SYNC_BYTES, "direction" => "in").increment(request.payload_bytes());
        let (response, copies) = sync::answer(&driver.plane, request);
        self.take_synced(peer, &copies);
        metrics::counter!(TASK_SYNC_BYTES, "direction" => "out")
            .increment(response.payload_bytes());
        let _ = self
            .swarm
            .behaviour_mut()
            .tasks_sync
            .send_response(channel, response);
    }

    fn on_sync_response(&mut self, peer: PeerId, response: SyncResponse) {
        let outcome = match response {
            SyncResponse::Same => Some("same"),
            SyncResponse::Held(_) => Some("differ"),
            SyncResponse::Tasks(_) | SyncResponse::Taken => None,
        };
        if let Some(outcome) = outcome {
            metrics::counter!(TASK_SYNCS, "outcome" => outcome).increment(1);
        }
        metrics::counter!(TASK_SYNC_BYTES, "direction" => "in").increment(response.payload_bytes());
        let Some(driver) = self.tasks.as_ref() else {
            return;
        };
        if driver.forgers.is_held(&peer) {
            return;
        }
        let step = sync::on_response(&driver.plane, response);
        if !self.take_synced(peer, &step.copies) {
            return;
        }
        for request in step.requests {
            self.send_sync(peer, request);
        }
    }
}
