//! Which connections a member holds: dialling the bootstrap peers until
//! some peer is admitted, and letting go of the connections a cell member
//! does not need (docs/mesh.md, "Connections a member keeps").

use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::{Mesh, DIALS, PEERS_PRUNED};
use crate::identity::{PeerIdentity, Role};

/// Bounds of the wait before the bootstrap peers are dialled again by a
/// member that has no admitted peer.
pub(super) const BOOTSTRAP_RETRY_MIN: Duration = Duration::from_secs(5);
const BOOTSTRAP_RETRY_MAX: Duration = Duration::from_secs(30);
/// How often a cell member looks for connections it does not need, how
/// many links outside its cell it keeps, and how long a new connection
/// is left alone first.
const PRUNE_INTERVAL: Duration = Duration::from_secs(10);
const CROSS_CELL_LINKS: usize = 8;
const PRUNE_SETTLE: Duration = Duration::from_secs(30);

impl Mesh {
    /// Dials a bootstrap peer at start, and the next one in turn while no
    /// peer is admitted: a first dial can fail (the peer not up yet, or too busy
    /// to finish the handshake and admission in time), and a member that
    /// never retried would stay alone for good. The wait doubles up to
    /// `BOOTSTRAP_RETRY_MAX`, spread per member so that a fleet started
    /// together does not retry in step.
    pub(super) fn dial_bootstrap(&mut self, now: Instant) {
        if now < self.next_bootstrap || self.config.bootstrap.is_empty() {
            return;
        }
        if !self.view.borrow().admitted.is_empty() {
            self.bootstrap_backoff = BOOTSTRAP_RETRY_MIN;
            self.next_bootstrap = now + BOOTSTRAP_RETRY_MIN;
            return;
        }
        // One bootstrap peer per attempt, starting from one picked at
        // random: a fleet started together spreads over its seeds
        // instead of every member handshaking with every seed at once.
        let seeds = &self.config.bootstrap;
        let addr = seeds[self.bootstrap_turn % seeds.len()].clone();
        self.bootstrap_turn = self.bootstrap_turn.wrapping_add(1);
        match self.swarm.dial(addr.clone()) {
            Ok(()) => metrics::counter!(DIALS, "cause" => "bootstrap").increment(1),
            Err(e) => tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer"),
        }
        let wait = self.bootstrap_backoff.mul_f64(1.0 + self.spread());
        self.next_bootstrap = now + wait;
        self.bootstrap_backoff = (self.bootstrap_backoff * 2).min(BOOTSTRAP_RETRY_MAX);
    }

    /// A fraction in [0, 0.5] fixed per member (from its PeerId), to
    /// stretch its periodic waits so that a fleet started together does
    /// not act in step.
    pub(super) fn spread(&self) -> f64 {
        let byte = self
            .swarm
            .local_peer_id()
            .to_bytes()
            .last()
            .copied()
            .unwrap_or(0);
        f64::from(byte) / 255.0 / 2.0
    }

    /// Lets go of the connections a cell member does not need (see
    /// [`AdmissionTable::surplus`]): it keeps its cell, the sinks and a
    /// few links across cells.
    pub(super) fn prune_connections(&mut self, now: Instant) {
        if now.duration_since(self.last_prune) < PRUNE_INTERVAL {
            return;
        }
        self.last_prune = now;
        let Some(cell) = self.cell.as_ref() else {
            return;
        };
        let in_view: std::collections::HashSet<&[u8]> = cell.membership.peers().collect();
        let cell_peers = &self.cell_peers;
        let needed = |peer: &PeerId, id: &PeerIdentity| {
            id.role == Role::Sink
                || cell_peers.contains(peer)
                || in_view.contains(peer.to_bytes().as_slice())
        };
        let surplus = self
            .table
            .surplus(now, needed, CROSS_CELL_LINKS, PRUNE_SETTLE);
        if !surplus.is_empty() {
            tracing::debug!(
                peers = surplus.len(),
                "closing connections outside the cell"
            );
            metrics::counter!(PEERS_PRUNED).increment(surplus.len() as u64);
        }
        for peer in surplus {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }
}
