//! Which connections a member holds: dialling the bootstrap peers until
//! some peer is admitted, and letting go of the connections a cell member
//! does not need (docs/mesh.md, "Connections a member keeps").

use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use rand::RngExt;

use super::{Mesh, SecondSeed, DIALS, PEERS_PRUNED};
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
/// Bounds of the wait before a member asks a second bootstrap peer for
/// referrals (see [`Mesh::ask_second_seed`]).
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
            self.ask_second_seed(now);
            return;
        }
        // Referrals from a busy seed come first: members of this member's
        // cell being dialled will take it in, and a member of another cell
        // can refer it as well as a seed can.
        if !self.announce_on_admit.is_empty() {
            tracing::debug!("waiting for referred cell-mates rather than a seed");
        } else if let Some(contact) = self.cross_candidates.pop_front() {
            self.dial_member(contact.peer, Some(contact.addr));
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
    fn dial_next_seed(&mut self) -> Option<Multiaddr> {
        let seeds = &self.config.bootstrap;
        let addr = seeds[self.bootstrap_turn % seeds.len()].clone();
        self.bootstrap_turn = self.bootstrap_turn.wrapping_add(1);
        match self.swarm.dial(addr.clone()) {
            Ok(()) => {
                metrics::counter!(DIALS, "cause" => "bootstrap").increment(1);
                Some(addr)
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
    /// one fragment per seed. The connection is closed once the seed has
    /// answered (unless it is of this member's cell): a seed that kept
    /// every member's second connection held hundreds, and answered its
    /// own cell's datagrams seconds late.
    fn ask_second_seed(&mut self, now: Instant) {
        if self.config.bootstrap.len() < 2 || self.cell.is_none() {
            return;
        }
        match self.second_seed {
            SecondSeed::NotYet => {
                let wait = self
                    .rng
                    .random_range(SECOND_SEED_WAIT.0..SECOND_SEED_WAIT.1);
                self.second_seed = SecondSeed::At(now + wait);
            }
            SecondSeed::At(at) if now >= at => {
                self.second_seed = match self.dial_next_seed() {
                    Some(addr) => SecondSeed::Dialled(addr),
                    None => SecondSeed::Done,
                };
            }
            // A dial that failed is not tried again: referrals are a
            // shortcut, and the DHT finds what they miss.
            SecondSeed::Dialled(_) if now >= self.next_bootstrap + BOOTSTRAP_RETRY_MAX => {
                self.second_seed = SecondSeed::Done;
            }
            _ => {}
        }
    }

    /// Keeps at least `MIN_CROSS_LINKS` connections to members of other
    /// cells, for sink adverts to reach every cell over gossip: once it
    /// sees most of its cell, a member holding fewer dials one member of
    /// another cell per tick, from those peers referred it to or, failing
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
            self.dial_member(contact.peer, Some(contact.addr));
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
