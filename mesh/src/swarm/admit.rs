//! The admission half of the mesh driver: a new connection's enrolment
//! exchange, the check of a peer's chain, refusing peers that fail it or
//! take too long, telling dialers to come back when the member is
//! admitting its most. Methods of [`Mesh`]; the checks are in `enrol`,
//! the bookkeeping in `admission`.

use std::time::{Duration, Instant, SystemTime};

use libp2p::request_response::{self, OutboundFailure};
use libp2p::PeerId;
use rand::RngExt;

use super::{EnrolMessage, Mesh, ADMISSIONS_DEFERRED, ADMISSIONS_PENDING, PEERS_REFUSED};
use crate::admission::{OnConnect, OnRequest};
use crate::enrol::AdmissionError;

/// How long a peer whose admission timed out is not dialled again: a
/// random time in this range, so that a fleet that timed out together
/// does not come back together.
const TIMEOUT_HOLD: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(6));
/// Longest stay-away a listener's "busy" answer is obeyed for.
const MAX_BUSY_HOLD: Duration = Duration::from_secs(60);

impl Mesh {
    pub(super) fn refuse(&mut self, peer: PeerId, reason: &'static str, detail: &str) {
        self.chains.remove(&peer);
        metrics::counter!(PEERS_REFUSED, "reason" => reason).increment(1);
        self.identified.remove(&peer);
        for _ in self.pending.remove(&peer).unwrap_or_default() {
            self.drop_swim("refused");
        }
        tracing::warn!(%peer, reason, detail, "peer refused");
        self.swarm.behaviour_mut().kad.remove_peer(&peer);
        self.publish_dht_size();
        let _ = self.swarm.disconnect_peer_id(peer);
        self.view.send_modify(|v| {
            v.refused += 1;
            v.admitted.remove(&peer);
            v.rtt.remove(&peer);
        });
    }

    pub(super) fn expire_pending(&mut self) {
        let now = Instant::now();
        for (peer, deferred) in self.table.expired(now, self.config.admission_timeout) {
            let (low, high) = TIMEOUT_HOLD;
            let hold = self.rng.random_range(low..high);
            self.swarm.behaviour_mut().redial.hold(peer, now + hold);
            if deferred {
                // Told to come back later and did not leave: not refused.
                let _ = self.swarm.disconnect_peer_id(peer);
            } else {
                self.refuse(peer, "timeout", "no enrolment proof in time");
            }
        }
        let (pending, deferred) = self.table.pending_counts();
        metrics::gauge!(ADMISSIONS_PENDING, "state" => "admitting")
            .set((pending - deferred) as f64);
        metrics::gauge!(ADMISSIONS_PENDING, "state" => "deferred").set(deferred as f64);
    }

    /// Events of the enrolment exchange.
    pub(super) fn on_enrol(&mut self, event: request_response::Event<EnrolMessage, EnrolMessage>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                if self.table.on_request(&peer) == OnRequest::Busy {
                    let wait = self.table.retry_after();
                    metrics::counter!(ADMISSIONS_DEFERRED, "side" => "listener").increment(1);
                    tracing::debug!(%peer, ?wait, "admitting the most at once: told to come back");
                    let busy = EnrolMessage {
                        chain: Vec::new(),
                        busy_ms: Some(wait.as_millis().min(u128::from(u32::MAX)) as u32),
                    };
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .enrol
                        .send_response(channel, busy);
                    return;
                }
                self.check(peer, &request.chain);
                if self.table.admitted(&peer).is_some() {
                    let answer = self.own_chain();
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .enrol
                        .send_response(channel, answer);
                }
            }
            request_response::Event::Message {
                peer,
                message: request_response::Message::Response { response, .. },
                ..
            } => match response.busy_ms {
                Some(ms) => self.told_busy(peer, Duration::from_millis(u64::from(ms))),
                None => self.check(peer, &response.chain),
            },
            // The answer is late, but the connection is up: ask again
            // rather than throw away the handshake (the admission
            // timeout decides when to give up).
            request_response::Event::OutboundFailure {
                peer,
                error: OutboundFailure::Timeout,
                ..
            } if self.table.is_pending(&peer) && self.swarm.is_connected(&peer) => {
                tracing::debug!(%peer, "enrolment answer late: asking again");
                self.send_chain(peer);
            }
            _ => {}
        }
    }

    /// A peer this member dialled is admitting its most: leave it alone
    /// for the time it asked (stretched at random by up to half, so that
    /// those it turned away do not all come back at once).
    fn told_busy(&mut self, peer: PeerId, wait: Duration) {
        let now = Instant::now();
        let wait = wait.min(MAX_BUSY_HOLD);
        let hold = wait.mul_f64(1.0 + self.rng.random_range(0.0..0.5));
        metrics::counter!(ADMISSIONS_DEFERRED, "side" => "dialer").increment(1);
        tracing::debug!(%peer, ?hold, "peer is busy: coming back later");
        self.table.on_busy(&peer);
        self.swarm.behaviour_mut().redial.hold(peer, now + hold);
        if self.view.borrow().admitted.is_empty() {
            // A bootstrap peer: the next bootstrap dial waits too.
            self.next_bootstrap = self.next_bootstrap.max(now + hold);
        }
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// This member's chain, as it presents it to a peer.
    fn own_chain(&self) -> EnrolMessage {
        EnrolMessage {
            chain: self.enrolment.chain_der(),
            busy_ms: None,
        }
    }

    fn send_chain(&mut self, peer: PeerId) {
        let request = self.own_chain();
        self.swarm
            .behaviour_mut()
            .enrol
            .send_request(&peer, request);
    }

    pub(super) fn check(&mut self, peer: PeerId, chain: &[Vec<u8>]) {
        let result = self.enrolment.admit(&peer, chain, SystemTime::now());
        match self
            .table
            .on_checked(peer, result, Instant::now(), self.config.block_for)
        {
            Ok(id) => {
                tracing::info!(%peer, identity = %id, "peer admitted");
                self.chains.insert(peer, chain.to_vec());
                if let Some(addrs) = self.identified.remove(&peer) {
                    self.add_to_dht(peer, addrs);
                }
                self.view.send_modify(|v| {
                    v.admitted.insert(peer, id.clone());
                });
                self.flush_pending(peer);
                let lonely = self.cell.as_ref().is_some_and(|c| c.membership.is_lonely());
                if self.announce_on_admit.remove(&peer) || lonely {
                    self.announce_to(peer, &id);
                }
            }
            Err(e @ AdmissionError::Revoked) => self.refuse(peer, "revoked", &e.to_string()),
            Err(e) => self.refuse(peer, "enrolment", &e.to_string()),
        }
    }

    /// A connection is up: a new peer starts its admission (the dialer
    /// presents its chain first), a refused one is dropped, one beyond
    /// what the member admits at once is told to come back when its
    /// request arrives, and one beyond every bound is dropped.
    pub(super) fn on_connected(&mut self, peer: PeerId, dialer: bool) {
        match self.table.on_connected(peer, dialer, Instant::now()) {
            OnConnect::Refuse => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            OnConnect::Busy => {
                metrics::counter!(PEERS_REFUSED, "reason" => "busy").increment(1);
                tracing::debug!(%peer, "too many peers awaiting admission");
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            OnConnect::Known | OnConnect::Defer => {}
            OnConnect::Pending => {
                if dialer {
                    self.send_chain(peer);
                }
            }
        }
    }
}
