//! Sans-I/O admission bookkeeping of the swarm: which connected peers
//! are pending, admitted or blocked, and how many it admits at once
//! (docs/mesh.md, "Admission" and "Starting all at once").

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use crate::enrol::AdmissionError;
use crate::identity::PeerIdentity;

/// Peers a member admits at once. A connection that comes in beyond this
/// is kept only long enough to tell its dialer to come back later
/// ([`OnConnect::Defer`]): under a start-up storm the handshakes queue
/// behind each other, and one admitted late is worth more than two that
/// time out.
pub const MAX_ADMITTING: usize = 64;
/// Connections waiting for their enrolment proof at once, deferred ones
/// included. Each holds a connection and its buffers until it proves its
/// enrolment or its time runs out, so a flood of connections that never
/// prove anything must not grow this without bound; a start-up storm of
/// 500 members stays below it even at a seed that every member dials.
pub const MAX_PENDING_ADMISSIONS: usize = 1024;
/// The most a pending peer's wait grows between two looks at the table
/// ([`AdmissionTable::expired`]). The driver looks twice a second; when
/// its own loop runs late (a saturated host) the time it lost is not held
/// against the peer.
pub const MAX_WAIT_STEP: Duration = Duration::from_secs(1);

/// A peer awaiting its proof.
#[derive(Debug)]
struct Pending {
    /// Time the member has been able to wait for it (see [`MAX_WAIT_STEP`]).
    waited: Duration,
    /// Came in while the member was admitting its most: its request is
    /// to be answered with "busy".
    deferred: bool,
    /// This member dialled it (and so presented its chain first).
    dialer: bool,
}

/// A peer whose time to prove its enrolment ran out (see
/// [`AdmissionTable::expired`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// The peer.
    pub peer: PeerId,
    /// It had been told to come back later, so it is not refused.
    pub deferred: bool,
    /// This member dialled it.
    pub dialer: bool,
}

/// Sans-I/O admission bookkeeping: who is pending, admitted or blocked.
#[derive(Debug)]
pub struct AdmissionTable {
    max_admitting: usize,
    max_pending: usize,
    pending: HashMap<PeerId, Pending>,
    /// When the pending peers' waits last grew.
    aged: Option<Instant>,
    /// Admitted peers, with when they were first admitted.
    admitted: HashMap<PeerId, (PeerIdentity, Instant)>,
    blocked: HashMap<PeerId, Instant>,
}

impl Default for AdmissionTable {
    fn default() -> Self {
        Self::new(MAX_ADMITTING, MAX_PENDING_ADMISSIONS)
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
    /// New, but the member is admitting its most: answer the peer's
    /// enrolment request with "busy, come back later" (not a refusal).
    Defer,
    /// New, and even the deferred peers are at their bound: disconnect
    /// at once (not blocked; it may try again).
    Busy,
}

/// What the driver must do with a pending peer's enrolment request.
#[derive(Debug, PartialEq, Eq)]
pub enum OnRequest {
    /// Check its chain now.
    Check,
    /// Answer "busy": it was deferred.
    Busy,
}

impl AdmissionTable {
    /// A table that admits `max_admitting` peers at once and holds at
    /// most `max_pending` awaiting their proof, deferred ones included.
    pub fn new(max_admitting: usize, max_pending: usize) -> Self {
        Self {
            max_admitting,
            max_pending: max_pending.max(max_admitting),
            pending: HashMap::new(),
            aged: None,
            admitted: HashMap::new(),
            blocked: HashMap::new(),
        }
    }

    /// A connection to `peer` came up; `dialer`: this member dialled it.
    /// A member's own dials are never deferred (it asked for them, and
    /// the peer it dialled decides whether it is busy).
    pub fn on_connected(&mut self, peer: PeerId, dialer: bool, now: Instant) -> OnConnect {
        self.blocked.retain(|_, until| *until > now);
        if self.blocked.contains_key(&peer) {
            return OnConnect::Refuse;
        }
        if self.admitted.contains_key(&peer) {
            return OnConnect::Known;
        }
        if let Some(p) = self.pending.get(&peer) {
            return if p.deferred {
                OnConnect::Defer
            } else {
                OnConnect::Pending
            };
        }
        if self.pending.len() >= self.max_pending {
            return OnConnect::Busy;
        }
        let admitting = self.pending.values().filter(|p| !p.deferred).count();
        let deferred = !dialer && admitting >= self.max_admitting;
        self.pending.insert(
            peer,
            Pending {
                waited: Duration::ZERO,
                deferred,
                dialer,
            },
        );
        if deferred {
            OnConnect::Defer
        } else {
            OnConnect::Pending
        }
    }

    /// `peer` sent its enrolment request: check it, or tell it to come
    /// back later. A deferred peer stays in the table until its dialer,
    /// told to come back, closes the connection (or its time runs out).
    pub fn on_request(&self, peer: &PeerId) -> OnRequest {
        match self.pending.get(peer) {
            Some(p) if p.deferred => OnRequest::Busy,
            _ => OnRequest::Check,
        }
    }

    /// The peer this member dialled answered "busy", or a deferred peer
    /// left: it is no longer pending, and not refused.
    pub fn on_busy(&mut self, peer: &PeerId) {
        self.pending.remove(peer);
    }

    /// Whether `peer` awaits its proof (its connection is up and not yet
    /// admitted).
    pub fn is_pending(&self, peer: &PeerId) -> bool {
        self.pending.contains_key(peer)
    }

    /// Peers awaiting their proof, and how many of them are deferred.
    pub fn pending_counts(&self) -> (usize, usize) {
        let deferred = self.pending.values().filter(|p| p.deferred).count();
        (self.pending.len(), deferred)
    }

    /// How long to tell a deferred peer to stay away: longer the more
    /// peers wait, so that they come back spread out rather than at once.
    pub fn retry_after(&self) -> Duration {
        let waiting = self.pending.len().max(1) as u32;
        let per_round = self.max_admitting.max(1) as u32;
        // A round of `max_admitting` admissions takes about a second on
        // a busy host; at least 2 s, at most 30 s.
        Duration::from_secs(u64::from(waiting.div_ceil(per_round).clamp(2, 30)))
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
    /// A peer's wait grows by the time since the last call, but by at most
    /// [`MAX_WAIT_STEP`]: when the member's own loop stalls, the peer is
    /// not blamed for it. Each comes with whether it was deferred (told to
    /// come back later) and which side dialled, for the count.
    pub fn expired(&mut self, now: Instant, timeout: Duration) -> Vec<Expired> {
        let step = self
            .aged
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
            .min(MAX_WAIT_STEP);
        self.aged = Some(now);
        for p in self.pending.values_mut() {
            p.waited += step;
        }
        let late: Vec<Expired> = self
            .pending
            .iter()
            .filter(|(_, p)| p.waited >= timeout)
            .map(|(peer, p)| Expired {
                peer: *peer,
                deferred: p.deferred,
                dialer: p.dialer,
            })
            .collect();
        for e in &late {
            self.pending.remove(&e.peer);
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

    /// Every admitted peer.
    pub fn admitted_peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.admitted.keys().copied()
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
        assert_eq!(t.on_connected(good, false, now), OnConnect::Pending);
        assert_eq!(t.on_connected(bad, false, now), OnConnect::Pending);
        assert_eq!(t.on_connected(slow, false, now), OnConnect::Pending);
        assert!(t.on_checked(good, Ok(id("good")), now, block).is_ok());
        assert!(t
            .on_checked(bad, Err(AdmissionError::KeyMismatch), now, block)
            .is_err());
        assert_eq!(t.admitted(&good).map(|i| i.name.as_str()), Some("good"));
        assert_eq!(t.on_connected(good, false, now), OnConnect::Known);
        assert_eq!(
            t.on_connected(bad, false, now),
            OnConnect::Refuse,
            "refused peers stay blocked"
        );
        let timeout = Duration::from_secs(5);
        // Looked at twice a second, as the driver does.
        let mut expired_at = None;
        for half_seconds in 0..=12u32 {
            let at = now + Duration::from_millis(500) * half_seconds;
            let late = t.expired(at, timeout);
            if !late.is_empty() {
                assert_eq!(
                    late,
                    [Expired {
                        peer: slow,
                        deferred: false,
                        dialer: false
                    }]
                );
                assert!(expired_at.is_none(), "expired once");
                expired_at = Some(at - now);
            }
        }
        assert_eq!(expired_at, Some(timeout));
        assert_eq!(
            t.on_connected(slow, false, now + Duration::from_secs(6)),
            OnConnect::Pending,
            "a slow peer may try again at once"
        );
        assert_eq!(
            t.on_connected(bad, false, now + block + Duration::from_secs(1)),
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
            t.on_connected(p, false, at);
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
    fn pending_peers_are_bounded_and_the_excess_deferred() {
        let now = Instant::now();
        let block = Duration::from_secs(60);
        let mut t = AdmissionTable::new(1, 2);
        let (a, b, c, d) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        assert_eq!(t.on_connected(a, false, now), OnConnect::Pending);
        assert_eq!(
            t.on_connected(b, false, now),
            OnConnect::Defer,
            "beyond the peers admitted at once"
        );
        assert_eq!(t.on_connected(c, false, now), OnConnect::Busy, "beyond all");
        assert_eq!(
            t.on_connected(a, false, now),
            OnConnect::Pending,
            "a second connection of a pending peer is no new entry"
        );
        assert_eq!(t.on_connected(b, false, now), OnConnect::Defer);
        assert_eq!(t.on_request(&a), OnRequest::Check);
        assert_eq!(t.on_request(&b), OnRequest::Busy, "told to come back");
        assert_eq!(t.pending_counts(), (2, 1));
        t.on_busy(&b);
        t.on_checked(a, Ok(id("a")), now, block).unwrap();
        assert_eq!(t.pending_counts(), (0, 0));
        assert_eq!(
            t.on_connected(c, false, now),
            OnConnect::Pending,
            "room again"
        );
        assert_eq!(
            t.on_connected(d, true, now),
            OnConnect::Pending,
            "a member's own dials are never deferred"
        );
    }

    #[test]
    fn a_stalled_member_does_not_blame_its_peers() {
        let now = Instant::now();
        let timeout = Duration::from_secs(10);
        let mut t = AdmissionTable::default();
        let peer = PeerId::random();
        t.on_connected(peer, false, now);
        assert!(t.expired(now, timeout).is_empty());
        // The member's loop ran only every 5 s for 45 s: it waited 9 s.
        for step in 1..=9u32 {
            let at = now + Duration::from_secs(5) * step;
            assert!(t.expired(at, timeout).is_empty(), "at {step}");
        }
        let later = now + Duration::from_secs(46);
        assert_eq!(
            t.expired(later, timeout),
            [Expired {
                peer,
                deferred: false,
                dialer: false
            }]
        );
    }

    #[test]
    fn the_wait_asked_of_deferred_peers_grows_with_the_queue() {
        let now = Instant::now();
        let mut t = AdmissionTable::new(4, 1000);
        assert_eq!(t.retry_after(), Duration::from_secs(2));
        for _ in 0..40 {
            t.on_connected(PeerId::random(), false, now);
        }
        assert_eq!(t.retry_after(), Duration::from_secs(10));
        for _ in 0..400 {
            t.on_connected(PeerId::random(), false, now);
        }
        assert_eq!(t.retry_after(), Duration::from_secs(30), "at most 30 s");
    }
}
