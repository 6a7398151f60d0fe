//! Holding back dials to peers that asked to be left alone for a while.
//!
//! A peer that answered "busy" (or whose admission timed out) would be
//! dialled again at once by whichever behaviour wants it next: Kademlia
//! walking towards a key, a membership datagram, gossip. In a start-up
//! storm those immediate redials are what kept a saturated fleet from
//! settling (docs/mesh.md, "Starting all at once"). [`RedialGate`] is a
//! behaviour without protocols: every dial to a known peer passes its
//! `handle_pending_outbound_connection`, and a dial to a held peer is
//! denied and counted in `starling_mesh_dials_held_total`. The behaviour
//! that asked sees an ordinary dial failure and tries another peer or
//! later.

use std::collections::HashMap;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// Prometheus counter of dials not made because their peer asked to be
/// left alone for a while.
pub const DIALS_HELD: &str = "starling_mesh_dials_held_total";
/// Peers held at once; the oldest hold goes first beyond it (a hold only
/// spares work, so forgetting one is safe).
const MAX_HELD: usize = 4096;

/// A dial to a held peer was denied.
#[derive(Debug, thiserror::Error)]
#[error("peer asked to be left alone for {0:?} more")]
pub struct HeldBack(pub Duration);

/// Peers not to be dialled until a given time.
#[derive(Debug, Default)]
pub struct RedialGate {
    held: HashMap<PeerId, Instant>,
}

impl RedialGate {
    /// Holds dials to `peer` until `until` (a later hold wins).
    pub fn hold(&mut self, peer: PeerId, until: Instant) {
        if self.held.len() >= MAX_HELD && !self.held.contains_key(&peer) {
            let now = Instant::now();
            self.held.retain(|_, t| *t > now);
            if self.held.len() >= MAX_HELD {
                if let Some(first) = self.held.iter().min_by_key(|(_, t)| **t).map(|(p, _)| *p) {
                    self.held.remove(&first);
                }
            }
        }
        let t = self.held.entry(peer).or_insert(until);
        *t = (*t).max(until);
    }

    /// How much longer `peer` is held at `now`, if it is.
    pub fn held(&mut self, peer: &PeerId, now: Instant) -> Option<Duration> {
        match self.held.get(peer) {
            Some(until) if *until > now => Some(*until - now),
            Some(_) => {
                self.held.remove(peer);
                None
            }
            None => None,
        }
    }
}

impl NetworkBehaviour for RedialGate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        maybe_peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        if let Some(left) = maybe_peer.and_then(|p| self.held(&p, Instant::now())) {
            metrics::counter!(DIALS_HELD).increment(1);
            return Err(ConnectionDenied::new(HeldBack(left)));
        }
        Ok(Vec::new())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_end_and_the_later_one_wins() {
        let now = Instant::now();
        let mut gate = RedialGate::default();
        let peer = PeerId::random();
        assert_eq!(gate.held(&peer, now), None);
        gate.hold(peer, now + Duration::from_secs(5));
        gate.hold(peer, now + Duration::from_secs(2));
        assert_eq!(gate.held(&peer, now), Some(Duration::from_secs(5)));
        assert_eq!(gate.held(&peer, now + Duration::from_secs(5)), None);
        assert!(gate.held.is_empty(), "an ended hold is forgotten");
    }

    #[test]
    fn holds_are_bounded() {
        let now = Instant::now() + Duration::from_secs(60);
        let mut gate = RedialGate::default();
        let first = PeerId::random();
        gate.hold(first, now);
        for i in 1..=MAX_HELD as u64 {
            gate.hold(PeerId::random(), now + Duration::from_millis(i));
        }
        assert_eq!(gate.held.len(), MAX_HELD);
        assert_eq!(
            gate.held(&first, now - Duration::from_secs(1)),
            None,
            "oldest hold went first"
        );
    }
}
