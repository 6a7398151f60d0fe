//! Which connections a member holds: dialling the bootstrap peers until
//! some peer is admitted, and letting go of the connections a cell member
//! does not need (docs/mesh.md, "Connections a member keeps").

use std::time::{Duration, Instant};

use libp2p::core::ConnectedPoint;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, DialError};
use libp2p::PeerId;
use rand::RngExt;

use super::{
    Mesh, SeedAsk, CELL_FORMING_LOOKUP, CELL_LOOKUP_INTERVAL, CONNECTIONS_OPENED,
    CONNECTIONS_SECOND, DIALS, DIALS_SPARED, DIAL_FAILURES, MAX_PENDING_PEERS, PEERS_PRUNED,
    REFERRAL_GRACE,
};
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
/// Connections to members of other cells a cell member keeps up by
/// itself (see [`Mesh::keep_cross_links`]).
const MIN_CROSS_LINKS: usize = 2;
/// How long a dial for a link across cells is given to become an admitted
/// peer before the next one: under a start-up storm an admission takes
/// seconds, and dialling one more every tick made 4,000 such dials in a
/// 500-member start (8 per member for 2 links), in the middle of which
/// the views of 70-170 members fell apart again.
const CROSS_DIAL_WAIT: Duration = Duration::from_secs(10);
/// Bounds of the wait before a member asks a second bootstrap peer for
/// referrals (see [`Mesh::ask_seeds`]).
const SECOND_SEED_WAIT: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(4));

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
        // A cell member waits until it knows its cell (a tick or two), so
        // that its first enrolment message names it and the seed can refer
        // it to its cell-mates.
        if self.config.cell.is_some() && self.cell.is_none() {
            return;
        }
        if !self.view.borrow().admitted.is_empty() {
            self.bootstrap_backoff = BOOTSTRAP_RETRY_MIN;
            self.next_bootstrap = now + BOOTSTRAP_RETRY_MIN;
            self.ask_seeds(now);
            return;
        }
        // Referrals from a busy seed come first: members of this member's
        // cell being dialled will take it in, and a member of another cell
        // can refer it as well as a seed can.
        if !self.announce_on_admit.is_empty() {
            tracing::debug!("waiting for referred cell-mates rather than a seed");
        } else if let Some(contact) = self.cross_candidates.pop_front() {
            self.dial_member(contact.peer, Some(contact.addr), "candidate");
        } else {
            // One bootstrap peer per attempt, starting from one picked at
            // random: a fleet started together spreads over its seeds
            // instead of every member handshaking with every seed at once.
            let _ = self.dial_next_seed();
        }
        let wait = self.bootstrap_backoff.mul_f64(1.0 + self.spread());
        self.next_bootstrap = now + wait;
        self.bootstrap_backoff = (self.bootstrap_backoff * 2).min(BOOTSTRAP_RETRY_MAX);
    }

    /// Dials the next configured bootstrap peer in turn; returns its
    /// address if the dial started.
    fn dial_next_seed(&mut self) -> Option<ConnectionId> {
        let seeds = &self.config.bootstrap;
        let addr = seeds[self.bootstrap_turn % seeds.len()].clone();
        self.bootstrap_turn = self.bootstrap_turn.wrapping_add(1);
        // Known by its connection id: the connection's remote address may
        // carry the seed's PeerId, which the configured address lacks.
        let opts = DialOpts::unknown_peer_id().address(addr.clone()).build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                metrics::counter!(DIALS, "cause" => "bootstrap").increment(1);
                self.note_dial(id, "bootstrap");
                Some(id)
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
                None
            }
        }
    }

    /// Once some peer has admitted this cell member, it asks one more
    /// bootstrap peer (the next in turn, a random 1-4 s later) for
    /// referrals, when more than one is configured. Each seed refers a
    /// new member to the members of its cell that started at that seed;
    /// a member that has heard from two seeds joins those groups, so a
    /// cell whose members spread over the seeds forms as one rather than
    /// one fragment per seed. At a fleet's start the seeds are the busiest
    /// members and an ask can fail, or come before the seed met the
    /// cell's other members; so while the member still sees less than
    /// three quarters of its cell after `REFERRAL_GRACE`, it asks the next
    /// seed in turn again, `CELL_FORMING_LOOKUP` after the last ask and
    /// twice as long each time (up to `CELL_LOOKUP_INTERVAL`): at 500
    /// members started at once, without it, every cell stayed in one
    /// fragment per seed. The connection is closed once the seed has
    /// answered (unless it is of this member's cell): a seed that kept
    /// every member's second connection held hundreds, and answered its
    /// own cell's datagrams seconds late.
    fn ask_seeds(&mut self, now: Instant) {
        if self.config.bootstrap.is_empty() || self.cell.is_none() {
            return;
        }
        match self.seed_ask {
            SeedAsk::NotYet if self.config.bootstrap.len() < 2 => {
                // One seed: it was asked by the first dial.
                self.seed_ask = SeedAsk::Asked(now);
            }
            SeedAsk::NotYet => {
                let wait = self
                    .rng
                    .random_range(SECOND_SEED_WAIT.0..SECOND_SEED_WAIT.1);
                self.seed_ask = SeedAsk::At(now + wait);
            }
            SeedAsk::At(at) if now >= at => {
                self.seed_asks = self.seed_asks.saturating_add(1);
                self.seed_ask = match self.dial_next_seed() {
                    Some(addr) => SeedAsk::Dialled(addr),
                    None => SeedAsk::Asked(now),
                };
            }
            // A dial that failed is left to the next ask.
            SeedAsk::Dialled(_) if now >= self.next_bootstrap + BOOTSTRAP_RETRY_MAX => {
                self.seed_ask = SeedAsk::Asked(now);
            }
            SeedAsk::Asked(at) => {
                let formed = self.cell_mostly_known();
                let Some(cell) = self.cell.as_ref() else {
                    return;
                };
                if formed || now.duration_since(cell.joined) < REFERRAL_GRACE {
                    return;
                }
                let wait = seed_ask_wait(self.seed_asks).mul_f64(1.0 + self.spread());
                if now >= at + wait {
                    self.seed_ask = SeedAsk::At(now);
                }
            }
            _ => {}
        }
    }

    /// A connection is up: counted, recognised when it is a seed ask, and
    /// its peer's admission started.
    pub(super) fn on_connection_established(
        &mut self,
        peer: PeerId,
        endpoint: &ConnectedPoint,
        connection: ConnectionId,
        established: u32,
    ) {
        let side = if endpoint.is_dialer() {
            "dialer"
        } else {
            "listener"
        };
        metrics::counter!(CONNECTIONS_OPENED, "side" => side).increment(1);
        if !endpoint.is_dialer() {
            self.on_inbound_handshake_ended(connection, Some(peer));
        }
        let cause = match self.dial_causes.remove(&connection) {
            Some(cause) => cause,
            None if endpoint.is_dialer() => "behaviour",
            None => "remote",
        };
        if established > 1 {
            metrics::counter!(CONNECTIONS_SECOND, "side" => side, "cause" => cause).increment(1);
        }
        let asked = self.seed_ask == SeedAsk::Dialled(connection);
        if asked {
            self.referral_only.insert(peer);
            self.seed_ask = SeedAsk::Asked(Instant::now());
        }
        self.on_connected(peer, endpoint.is_dialer());
        // A seed that admitted this member already answers a second
        // enrolment message with referrals.
        if asked && self.table.admitted(&peer).is_some() {
            self.send_chain(peer);
        }
    }

    /// An inbound handshake ended (as `peer` when it succeeded): the dials
    /// that waited for it are counted, and made when it was not their peer.
    pub(super) fn on_inbound_handshake_ended(
        &mut self,
        connection: ConnectionId,
        peer: Option<PeerId>,
    ) {
        let (answered, to_dial) = self.inbound.ended(connection, peer);
        if answered > 0 {
            metrics::counter!(DIALS_SPARED, "outcome" => "connected").increment(answered as u64);
        }
        for dial in to_dial {
            metrics::counter!(DIALS_SPARED, "outcome" => "dialled").increment(1);
            self.dial_member(dial.peer, Some(dial.addr), dial.why);
        }
    }

    /// Remembers why this member dialled `connection`, until the dial
    /// ends.
    pub(super) fn note_dial(&mut self, connection: ConnectionId, cause: &'static str) {
        if self.dial_causes.len() < MAX_PENDING_PEERS {
            self.dial_causes.insert(connection, cause);
        }
    }

    /// The last connection to `peer` closed: everything held for it goes.
    pub(super) fn on_last_connection_closed(&mut self, peer: PeerId) {
        self.table.on_disconnected(&peer);
        self.links.forget(&peer);
        self.cell_peers.remove(&peer);
        self.announce_on_admit.remove(&peer);
        self.chains.remove(&peer);
        self.peer_cells.remove(&peer);
        self.referral_only.remove(&peer);
        self.identified.remove(&peer);
        self.subscriptions.forget(&peer);
        self.drop_pending(&peer, "disconnected");
        self.view.send_modify(|v| {
            v.admitted.remove(&peer);
            v.rtt.remove(&peer);
        });
    }

    /// A dial failed: counted; a seed ask on it is over, and what waited
    /// for a peer still not connected goes.
    pub(super) fn on_dial_failed(
        &mut self,
        peer: Option<PeerId>,
        error: &DialError,
        connection: ConnectionId,
    ) {
        if self.seed_ask == SeedAsk::Dialled(connection) {
            self.seed_ask = SeedAsk::Asked(Instant::now());
        }
        self.dial_causes.remove(&connection);
        let kind = match error {
            DialError::Denied { .. } => "denied",
            DialError::Transport(_) => "transport",
            _ => "other",
        };
        metrics::counter!(DIAL_FAILURES, "error" => kind).increment(1);
        let Some(peer) = peer.filter(|p| !self.swarm.is_connected(p)) else {
            return;
        };
        self.announce_on_admit.remove(&peer);
        self.drop_pending(&peer, "unreachable");
    }

    /// Keeps at least `MIN_CROSS_LINKS` connections to members of other
    /// cells, for sink adverts to reach every cell over gossip: once it
    /// sees most of its cell, a member holding fewer dials one member of
    /// another cell at a time (`CROSS_DIAL_WAIT` apart), from those peers
    /// referred it to or, failing
    /// that, from its directory. Seeds close most of the connections new
    /// members opened to them, so without this a cell's only ways out
    /// could all be gone.
    pub(super) fn keep_cross_links(&mut self) {
        // Only once the member sees most of its cell: while the cell
        // forms, its connections go to its cell-mates first.
        if !self.cell_mostly_known() {
            return;
        }
        let Some(cell) = self.cell.as_ref() else {
            return;
        };
        let own = cell.name.clone();
        let cross = self
            .peer_cells
            .iter()
            .filter(|(peer, c)| **c != own && self.table.admitted(peer).is_some())
            .count();
        if cross >= MIN_CROSS_LINKS {
            return;
        }
        let now = Instant::now();
        if self
            .last_cross_dial
            .is_some_and(|t| now.duration_since(t) < CROSS_DIAL_WAIT)
        {
            return;
        }
        let local = *self.swarm.local_peer_id();
        let next = loop {
            match self.cross_candidates.pop_front() {
                Some(c) if c.peer != local && !self.swarm.is_connected(&c.peer) => break Some(c),
                Some(_) => continue,
                None => break None,
            }
        };
        let next = next.or_else(|| {
            let rng = &mut self.rng;
            self.directory
                .others(&own, &local, 1, |n| rng.random_range(0..n.max(1)))
                .into_iter()
                .map(|(_, c)| c)
                .find(|c| !self.swarm.is_connected(&c.peer))
        });
        if let Some(contact) = next {
            tracing::debug!(peer = %contact.peer, "dialling a member of another cell");
            self.last_cross_dial = Some(now);
            self.dial_member(contact.peer, Some(contact.addr), "cross");
        }
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

/// How long after its `asks`-th ask a member whose cell is still short
/// asks the next seed: `CELL_FORMING_LOOKUP`, doubling with each ask after
/// the first, up to `CELL_LOOKUP_INTERVAL` (a cell smaller than the size
/// its members expect stays short for good, and must not cost its seeds
/// a dial per member every few seconds).
fn seed_ask_wait(asks: u32) -> Duration {
    let doublings = asks.saturating_sub(1).min(16);
    CELL_FORMING_LOOKUP
        .saturating_mul(1 << doublings)
        .min(CELL_LOOKUP_INTERVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_asks_back_off_to_the_lookup_interval() {
        assert_eq!(seed_ask_wait(0), CELL_FORMING_LOOKUP);
        assert_eq!(seed_ask_wait(1), CELL_FORMING_LOOKUP);
        assert_eq!(seed_ask_wait(2), CELL_FORMING_LOOKUP * 2);
        assert_eq!(seed_ask_wait(3), CELL_FORMING_LOOKUP * 4);
        assert_eq!(seed_ask_wait(10), CELL_LOOKUP_INTERVAL);
        assert_eq!(seed_ask_wait(u32::MAX), CELL_LOOKUP_INTERVAL);
    }
}
