//! The admission half of the mesh driver: a new connection's enrolment
//! exchange, the check of a peer's chain, refusing peers that fail it or
//! take too long. Methods of [`Mesh`]; the checks are in `enrol`, the
//! bookkeeping in `admission`.

use std::time::{Instant, SystemTime};

use libp2p::PeerId;

use super::{EnrolMessage, Mesh, PEERS_REFUSED};
use crate::admission::OnConnect;
use crate::enrol::AdmissionError;

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
        for peer in self.table.expired(now, self.config.admission_timeout) {
            self.refuse(peer, "timeout", "no enrolment proof in time");
        }
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
    /// presents its chain first), a refused or excess one is dropped.
    pub(super) fn on_connected(&mut self, peer: PeerId, dialer: bool) {
        match self.table.on_connected(peer, Instant::now()) {
            OnConnect::Refuse => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            OnConnect::Busy => {
                metrics::counter!(PEERS_REFUSED, "reason" => "busy").increment(1);
                tracing::debug!(%peer, "too many peers awaiting admission");
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            OnConnect::Known => {}
            OnConnect::Pending => {
                if dialer {
                    let chain = self.enrolment.chain_der();
                    self.swarm
                        .behaviour_mut()
                        .enrol
                        .send_request(&peer, EnrolMessage { chain });
                }
            }
        }
    }
}
