//! Not dialling a peer whose own connection to this member is still in
//! its handshake.
//!
//! Two cell-mates that learn of each other in the same gossip round each
//! have a membership datagram for the other, and each dials. On saturated
//! cores a QUIC handshake takes seconds, so the second dial starts while
//! the first is still under way and both complete: in a 500-member start
//! most of the ~5,000 second connections a dialer made were such dials
//! (docs/mesh.md, "Second connections"). A listener learns an inbound
//! handshake's source address at its first packet, long before the peer's
//! PeerId; with QUIC's port reuse that address is the peer's listen
//! address, which its membership identity carries. [`InboundHandshakes`]
//! remembers the inbound handshakes under way by source address. A member
//! about to dial a peer that one of them comes from waits for it instead,
//! and dials only if that handshake fails or turns out to be another peer.
//! Behind NAT the addresses differ and nothing is spared, which is safe.

use std::collections::HashMap;

use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};

/// Prometheus counter of dials not made because the peer's own connection
/// was in its handshake, by `outcome` when that handshake ended:
/// `connected` (it was the peer: one connection instead of two) or
/// `dialled` (it failed or was another peer, so this member dialled).
pub const DIALS_SPARED: &str = "starling_mesh_dials_spared_total";

/// Inbound handshakes remembered at once; beyond it new ones are not
/// (sparing a dial is only an optimisation).
const MAX_HANDSHAKES: usize = 1024;
/// Dials that may wait on one handshake (one address is one peer, so
/// more is a misconfiguration, not a reason to grow).
const MAX_WAITING: usize = 4;

/// A dial put off until an inbound handshake ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingDial {
    pub peer: PeerId,
    pub addr: Multiaddr,
    /// Why the member wanted to dial (`CONNECTIONS_SECOND`'s `cause`).
    pub why: &'static str,
}

/// Inbound handshakes under way, by source address, and the dials
/// waiting for them.
#[derive(Debug, Default)]
pub struct InboundHandshakes {
    from: HashMap<ConnectionId, Multiaddr>,
    waiting: HashMap<ConnectionId, Vec<WaitingDial>>,
}

impl InboundHandshakes {
    /// An inbound handshake began on `connection` from `send_back_addr`.
    pub fn started(&mut self, connection: ConnectionId, send_back_addr: &Multiaddr) {
        if self.from.len() < MAX_HANDSHAKES {
            self.from
                .insert(connection, without_peer_id(send_back_addr));
        }
    }

    /// Whether a dial to `peer` at `addr` should wait: true when an
    /// inbound handshake from `addr` is under way (the dial is then
    /// remembered and handed back by [`Self::ended`]).
    pub fn wait_for(&mut self, peer: PeerId, addr: &Multiaddr, why: &'static str) -> bool {
        let addr = without_peer_id(addr);
        let Some(connection) = self
            .from
            .iter()
            .find(|(_, from)| **from == addr)
            .map(|(c, _)| *c)
        else {
            return false;
        };
        let waiting = self.waiting.entry(connection).or_default();
        if waiting.iter().any(|w| w.peer == peer) {
            return true;
        }
        if waiting.len() >= MAX_WAITING {
            return false;
        }
        waiting.push(WaitingDial { peer, addr, why });
        true
    }

    /// The handshake on `connection` ended, as `peer` when it succeeded:
    /// the dials that waited for it, split into those the connection
    /// answered and those still to be made.
    pub fn ended(
        &mut self,
        connection: ConnectionId,
        peer: Option<PeerId>,
    ) -> (usize, Vec<WaitingDial>) {
        self.from.remove(&connection);
        let waiting = self.waiting.remove(&connection).unwrap_or_default();
        let before = waiting.len();
        let to_dial: Vec<_> = waiting
            .into_iter()
            .filter(|w| Some(w.peer) != peer)
            .collect();
        (before - to_dial.len(), to_dial)
    }
}

/// `addr` without a trailing `/p2p/...`, as a source address has none.
fn without_peer_id(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/udp/{port}/quic-v1")
            .parse()
            .unwrap()
    }

    #[test]
    fn a_dial_waits_for_the_handshake_from_its_address_and_is_spared_when_it_is_the_peer() {
        let mut h = InboundHandshakes::default();
        let (c, peer) = (ConnectionId::new_unchecked(1), PeerId::random());
        assert!(
            !h.wait_for(peer, &addr(4001), "datagram"),
            "nothing under way"
        );
        h.started(c, &addr(4001));
        assert!(
            !h.wait_for(peer, &addr(4002), "datagram"),
            "another address"
        );
        let with_id = addr(4001).with(Protocol::P2p(peer));
        assert!(h.wait_for(peer, &with_id, "datagram"));
        assert!(
            h.wait_for(peer, &addr(4001), "datagram"),
            "asked twice, waits once"
        );
        assert_eq!(h.ended(c, Some(peer)), (1, vec![]));
        assert!(
            !h.wait_for(peer, &addr(4001), "datagram"),
            "ended handshakes are forgotten"
        );
    }

    #[test]
    fn a_failed_handshake_or_another_peer_hands_the_dial_back() {
        let mut h = InboundHandshakes::default();
        let peer = PeerId::random();
        for (n, answered_by) in [(1, None), (2, Some(PeerId::random()))] {
            let c = ConnectionId::new_unchecked(n);
            h.started(c, &addr(4001));
            assert!(h.wait_for(peer, &addr(4001), "referral"));
            let want = WaitingDial {
                peer,
                addr: addr(4001),
                why: "referral",
            };
            assert_eq!(h.ended(c, answered_by), (0, vec![want]));
        }
    }

    #[test]
    fn what_is_remembered_is_bounded() {
        let mut h = InboundHandshakes::default();
        for n in 0..(MAX_HANDSHAKES + 10) {
            h.started(ConnectionId::new_unchecked(n), &addr(4001));
        }
        assert_eq!(h.from.len(), MAX_HANDSHAKES);
        let c = *h.from.keys().next().unwrap();
        h.from.retain(|k, _| *k == c);
        let waited = (0..MAX_WAITING + 3)
            .filter(|_| h.wait_for(PeerId::random(), &addr(4001), "datagram"))
            .count();
        assert_eq!(waited, MAX_WAITING);
    }
}
