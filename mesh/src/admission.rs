//! Sans-I/O admission bookkeeping of the swarm: which connected peers
//! are pending, admitted or blocked (docs/mesh.md, "Admission").

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use crate::enrol::AdmissionError;
use crate::identity::PeerIdentity;

/// Connections waiting for their enrolment proof at once. Each holds a
/// connection and its buffers for up to the admission timeout, so a flood
/// of connections that never prove anything must not grow this without
/// bound; a real start-up storm stays far below it (a member is connected
/// to its cell, about 50 peers, and a few more).
pub const MAX_PENDING_ADMISSIONS: usize = 512;

/// Sans-I/O admission bookkeeping: who is pending, admitted or blocked.
#[derive(Debug)]
pub struct AdmissionTable {
    max_pending: usize,
    pending: HashMap<PeerId, Instant>,
    /// Admitted peers, with when they were first admitted.
    admitted: HashMap<PeerId, (PeerIdentity, Instant)>,
    blocked: HashMap<PeerId, Instant>,
}

impl Default for AdmissionTable {
    fn default() -> Self {
        Self::new(MAX_PENDING_ADMISSIONS)
    }
}

/// What the driver must do with a newly connected peer.
#[derive(Debug, PartialEq, Eq)]
pub enum OnConnect {
    /// Blocked: disconnect at once.
    Refuse,
    /// Already admitted (another connection).
    Known,
    /// New: wait for (or ask for) its chain.
    Pending,
    /// New, but too many peers are pending already: disconnect (not
    /// blocked; it may try again).
    Busy,
}

impl AdmissionTable {
    /// A table that holds at most `max_pending` peers awaiting their proof.
    pub fn new(max_pending: usize) -> Self {
        Self {
            max_pending,
            pending: HashMap::new(),
            admitted: HashMap::new(),
            blocked: HashMap::new(),
        }
    }

    /// A connection to `peer` came up.
    pub fn on_connected(&mut self, peer: PeerId, now: Instant) -> OnConnect {
        self.blocked.retain(|_, until| *until > now);
        if self.blocked.contains_key(&peer) {
            return OnConnect::Refuse;
        }
        if self.admitted.contains_key(&peer) {
            return OnConnect::Known;
        }
        if !self.pending.contains_key(&peer) && self.pending.len() >= self.max_pending {
            return OnConnect::Busy;
        }
        self.pending.entry(peer).or_insert(now);
        OnConnect::Pending
    }

    /// The peer's chain was checked.
    pub fn on_checked(
        &mut self,
        peer: PeerId,
        result: Result<PeerIdentity, AdmissionError>,
        now: Instant,
        block_for: Duration,
    ) -> Result<PeerIdentity, AdmissionError> {
        self.pending.remove(&peer);
        match result {
            Ok(id) => {
                // A check again (new revocations) keeps the first time.
                self.admitted
                    .entry(peer)
                    .and_modify(|(known, _)| *known = id.clone())
                    .or_insert((id.clone(), now));
                Ok(id)
            }
            Err(e) => {
                self.admitted.remove(&peer);
                self.blocked.insert(peer, now + block_for);
                Err(e)
            }
        }
    }

    /// Peers whose time to prove enrolment ran out. They are dropped but
    /// not blocked: under a reconnect storm (a rack restarting) a slow
    /// handshake is far likelier than an attacker, and blocking an
    /// enrolled member would cut it off its cell for the whole block.
    pub fn expired(&mut self, now: Instant, timeout: Duration) -> Vec<PeerId> {
        let late: Vec<PeerId> = self
            .pending
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= timeout)
            .map(|(p, _)| *p)
            .collect();
        for p in &late {
            self.pending.remove(p);
        }
        late
    }

    /// The last connection to `peer` closed.
    pub fn on_disconnected(&mut self, peer: &PeerId) {
        self.pending.remove(peer);
        self.admitted.remove(peer);
    }

    /// The identity of an admitted peer.
    pub fn admitted(&self, peer: &PeerId) -> Option<&PeerIdentity> {
        self.admitted.get(peer).map(|(id, _)| id)
    }

    /// Admitted peers whose connections a cell member can let go. Every
    /// mesh protocol keeps its connections open for good (gossipsub holds
    /// a stream on each), so the peers a DHT walk or a bootstrap dialled
    /// across the fleet would stay connected forever, each costing
    /// keep-alives, pings and gossip. Kept: the peers `needed` says are
    /// needed (cell members, sinks), the `spare` longest admitted others
    /// (links across cells, for the DHT and for gossip to reach every
    /// cell), and any admitted less than `settle` ago (a query may still
    /// be using it). The rest are surplus.
    pub fn surplus(
        &self,
        now: Instant,
        needed: impl Fn(&PeerId, &PeerIdentity) -> bool,
        spare: usize,
        settle: Duration,
    ) -> Vec<PeerId> {
        let mut others: Vec<(Instant, PeerId)> = self
            .admitted
            .iter()
            .filter(|(peer, (id, _))| !needed(peer, id))
            .map(|(peer, (_, since))| (*since, *peer))
            .collect();
        others.sort();
        others
            .into_iter()
            .skip(spare)
            .filter(|(since, _)| now.duration_since(*since) >= settle)
            .map(|(_, peer)| peer)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Role;

    fn id(name: &str) -> PeerIdentity {
        PeerIdentity {
            role: Role::Node,
            name: name.into(),
        }
    }

    #[test]
    fn admission_table_admits_refuses_and_blocks() {
        let now = Instant::now();
        let block = Duration::from_secs(60);
        let mut t = AdmissionTable::default();
        let (good, bad, slow) = (PeerId::random(), PeerId::random(), PeerId::random());
        assert_eq!(t.on_connected(good, now), OnConnect::Pending);
        assert_eq!(t.on_connected(bad, now), OnConnect::Pending);
        assert_eq!(t.on_connected(slow, now), OnConnect::Pending);
        assert!(t.on_checked(good, Ok(id("good")), now, block).is_ok());
        assert!(t
            .on_checked(bad, Err(AdmissionError::KeyMismatch), now, block)
            .is_err());
        assert_eq!(t.admitted(&good).map(|i| i.name.as_str()), Some("good"));
        assert_eq!(t.on_connected(good, now), OnConnect::Known);
        assert_eq!(
            t.on_connected(bad, now),
            OnConnect::Refuse,
            "refused peers stay blocked"
        );
        assert!(t
            .expired(now + Duration::from_secs(1), Duration::from_secs(5))
            .is_empty());
        assert_eq!(
            t.expired(now + Duration::from_secs(5), Duration::from_secs(5)),
            [slow]
        );
        assert!(t
            .expired(now + Duration::from_secs(6), Duration::from_secs(5))
            .is_empty());
        assert_eq!(
            t.on_connected(slow, now + Duration::from_secs(6)),
            OnConnect::Pending,
            "a slow peer may try again at once"
        );
        assert_eq!(
            t.on_connected(bad, now + block + Duration::from_secs(1)),
            OnConnect::Pending,
            "blocks expire"
        );
        t.on_disconnected(&good);
        assert!(t.admitted(&good).is_none());
    }

    #[test]
    fn surplus_keeps_needed_peers_the_oldest_spares_and_new_ones() {
        let t0 = Instant::now();
        let block = Duration::from_secs(60);
        let settle = Duration::from_secs(30);
        let mut t = AdmissionTable::default();
        let admit = |t: &mut AdmissionTable, name: &str, at: Instant| {
            let p = PeerId::random();
            t.on_connected(p, at);
            t.on_checked(p, Ok(id(name)), at, block).unwrap();
            p
        };
        let cell = admit(&mut t, "cell-1", t0);
        let old = admit(&mut t, "other-1", t0 + Duration::from_secs(1));
        let older_spare = admit(&mut t, "other-0", t0);
        let extra = admit(&mut t, "other-2", t0 + Duration::from_secs(2));
        let fresh = admit(&mut t, "other-3", t0 + Duration::from_secs(50));
        let now = t0 + Duration::from_secs(60);
        let needed = |_: &PeerId, i: &PeerIdentity| i.name.starts_with("cell");

        let surplus = t.surplus(now, needed, 2, settle);
        assert_eq!(
            surplus,
            vec![extra],
            "beyond the two oldest spares, settled"
        );
        assert!(!surplus.contains(&cell) && !surplus.contains(&old));
        assert!(!surplus.contains(&older_spare) && !surplus.contains(&fresh));

        // A second check (new revocations) does not make a peer younger.
        t.on_checked(older_spare, Ok(id("other-0")), now, block)
            .unwrap();
        assert_eq!(t.surplus(now, needed, 2, settle), vec![extra]);

        let later = now + settle;
        assert_eq!(
            t.surplus(later, needed, 2, settle),
            vec![extra, fresh],
            "new peers are let go once settled"
        );
        assert!(t.surplus(later, needed, 10, settle).is_empty());
    }

    #[test]
    fn pending_peers_are_bounded() {
        let now = Instant::now();
        let block = Duration::from_secs(60);
        let mut t = AdmissionTable::new(2);
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        assert_eq!(t.on_connected(a, now), OnConnect::Pending);
        assert_eq!(t.on_connected(b, now), OnConnect::Pending);
        assert_eq!(t.on_connected(c, now), OnConnect::Busy);
        assert_eq!(
            t.on_connected(a, now),
            OnConnect::Pending,
            "a second connection of a pending peer is no new entry"
        );
        t.on_checked(a, Ok(id("a")), now, block).unwrap();
        assert_eq!(t.on_connected(c, now), OnConnect::Pending, "room again");
    }
}
