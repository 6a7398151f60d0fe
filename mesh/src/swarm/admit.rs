//! The admission half of the mesh driver: a new connection's enrolment
//! exchange, the check of a peer's chain, refusing peers that fail it or
//! take too long, telling dialers to come back when the member is
//! admitting its most. Methods of [`Mesh`]; the checks are in `enrol`,
//! the bookkeeping in `admission`.

use std::time::{Duration, Instant, SystemTime};

use libp2p::request_response::{self, OutboundFailure};
use libp2p::PeerId;
use rand::RngExt;

use super::{
    EnrolMessage, Mesh, ADMISSIONS_ABANDONED, ADMISSIONS_DEFERRED, ADMISSIONS_PENDING,
    ENROL_RETRIES, MAX_CROSS_CANDIDATES, MAX_PENDING_PEERS, PEERS_REFUSED, REFERRALS,
    REFER_OTHER_CELLS, REFER_SAME_CELL,
};
use crate::admission::{OnConnect, OnRequest};
use crate::enrol::AdmissionError;
use crate::identity::Role;
use crate::rendezvous::{CellCard, Contact, Referral, MAX_REFERRALS};

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
        self.drop_pending(&peer, "refused");
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
        for late in self.table.expired(now, self.config.admission_timeout) {
            let (low, high) = TIMEOUT_HOLD;
            let hold = self.rng.random_range(low..high);
            self.swarm
                .behaviour_mut()
                .redial
                .hold(late.peer, now + hold);
            if late.deferred {
                // Told to come back later and did not leave: not refused.
                let _ = self.swarm.disconnect_peer_id(late.peer);
            } else {
                // Not refused, not blocked: free to come back (or be
                // dialled again) after the hold.
                let side = if late.dialer { "dialer" } else { "listener" };
                metrics::counter!(ADMISSIONS_ABANDONED, "side" => side).increment(1);
                tracing::info!(peer = %late.peer, side, ?hold, "no enrolment answer in time: connection closed");
                let _ = self.swarm.disconnect_peer_id(late.peer);
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
                        card: None,
                        referrals: self.referrals_while_busy(peer, &request),
                        topics: Vec::new(),
                    };
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .enrol
                        .send_response(channel, busy);
                    return;
                }
                self.check(peer, &request);
                if self.table.admitted(&peer).is_some() {
                    let mut answer = self.own_message();
                    answer.referrals = self.referrals_for(&peer);
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
                Some(ms) => {
                    self.follow_referrals(&response.referrals);
                    self.told_busy(peer, Duration::from_millis(u64::from(ms)))
                }
                None => {
                    self.check(peer, &response);
                    if self.table.admitted(&peer).is_some() {
                        self.follow_referrals(&response.referrals);
                        let own = self.cell.as_ref().map(|c| c.name.as_str());
                        let cellmate = self.peer_cells.get(&peer).map(String::as_str) == own;
                        if self.referral_only.remove(&peer) && !cellmate {
                            tracing::debug!(%peer, "referrals received: closing the connection");
                            let _ = self.swarm.disconnect_peer_id(peer);
                        }
                    }
                }
            },
            // The answer is late, or the connection the request went out
            // on was lost while another to the peer is up (two members
            // that dialled each other at once hold two, and one may
            // close): ask again rather than throw away the handshake (the
            // admission timeout decides when to give up). Before this, a
            // request lost with its connection left the peer pending
            // until it was refused for a timeout, 43 times in one
            // 300-member start.
            request_response::Event::OutboundFailure { peer, error, .. }
                if self.table.is_pending(&peer) && self.swarm.is_connected(&peer) =>
            {
                let reason = match error {
                    OutboundFailure::Timeout => "late",
                    _ => "lost",
                };
                tracing::debug!(%peer, %error, "enrolment answer {reason}: asking again");
                metrics::counter!(ENROL_RETRIES, "reason" => reason).increment(1);
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

    /// This member's chain and cell card, as it presents them to a peer.
    fn own_message(&self) -> EnrolMessage {
        EnrolMessage {
            chain: self.enrolment.chain_der(),
            busy_ms: None,
            card: self.cell.as_ref().map(|c| c.card.clone()),
            referrals: Vec::new(),
            topics: self.topics.clone(),
        }
    }

    /// What this member tells a newly admitted dialer about where to find
    /// its cell: members of the dialer's cell it knows, and a few of other
    /// cells. A dialer of this member's own cell announces itself here and
    /// the answer to that announce lists this member's view, so it is
    /// referred only to the cell-mates the view lacks: members that this
    /// one admitted but does not count, which is how two fragments of a
    /// cell (members that started at different seeds) learn of each other.
    fn referrals_for(&mut self, peer: &PeerId) -> Vec<Referral> {
        let cell = self.peer_cells.get(peer).cloned();
        self.referrals_to(cell.as_deref(), peer, Admitted::Yes)
    }

    /// Referrals for a dialer of `cell` (or of none: a sink, or a member
    /// that predates cards, gets members of other cells only); see
    /// [`Mesh::referrals_for`] for a dialer this member admits, and
    /// [`Mesh::referrals_while_busy`] for one it turns away.
    fn referrals_to(
        &mut self,
        cell: Option<&str>,
        peer: &PeerId,
        admitted: Admitted,
    ) -> Vec<Referral> {
        let own = self.cell.as_ref().map(|c| c.name.as_str());
        let cell_name = cell.unwrap_or("");
        // Cell-mates the view lacks come first; a dialer of this cell that
        // is turned away gets no answer to an announce, so the view's
        // members may follow.
        let lacking = match (&self.cell, cell) {
            (Some(c), Some(asked)) if asked == c.name => self.directory.lacking(
                asked,
                peer,
                |p| c.membership.has_peer(&p.to_bytes()),
                REFER_SAME_CELL,
            ),
            _ => Vec::new(),
        };
        let same = match cell {
            None => 0,
            Some(_) if cell == own && admitted == Admitted::Yes => lacking.len(),
            Some(_) => REFER_SAME_CELL,
        };
        let rng = &mut self.rng;
        let referrals =
            self.directory
                .referrals(cell_name, peer, lacking, same, REFER_OTHER_CELLS, |n| {
                    rng.random_range(0..n.max(1))
                });
        self.stats.referrals_given += referrals
            .iter()
            .filter(|r| Some(r.cell.as_str()) == cell)
            .count() as u64;
        referrals
    }

    /// Referrals for a dialer this member is too busy to admit. Its
    /// handshake is done and checking its chain costs little next to it,
    /// so an enrolled dialer is told where else to go (members of its
    /// cell, a few of other cells) along with when to come back: in a
    /// fleet that starts at once the first members a seed admitted take
    /// the rest in, instead of every member queueing at the seeds (at 500
    /// in-process members, a hundred were still waiting for a seed after
    /// a minute). A dialer whose chain fails gets no referrals; it is
    /// checked as usual when it comes back.
    fn referrals_while_busy(&mut self, peer: PeerId, request: &EnrolMessage) -> Vec<Referral> {
        let Ok(identity) = self
            .enrolment
            .admit(&peer, &request.chain, SystemTime::now())
        else {
            return Vec::new();
        };
        let card = request
            .card
            .as_ref()
            .filter(|_| identity.role == Role::Node)
            .and_then(CellCard::checked)
            .map(|(cell, addr)| (cell.to_owned(), addr));
        match card {
            Some((cell, addr)) => {
                self.directory.learn(&cell, Contact { peer, addr });
                self.referrals_to(Some(&cell), &peer, Admitted::No)
            }
            None => self.referrals_to(None, &peer, Admitted::No),
        }
    }

    /// Referrals a listener gave this member: it announces itself to the
    /// members of its cell it does not see yet (dialling those it is not
    /// connected to; the announce goes out at admission), and keeps the
    /// others as candidates for links across cells, and for a first
    /// admission when the seeds are busy.
    fn follow_referrals(&mut self, referrals: &[Referral]) {
        // A member outside cells (a sink) keeps them all as peers to try
        // instead of a busy seed.
        let own = self.cell.as_ref().map(|c| c.name.clone());
        let local = *self.swarm.local_peer_id();
        for referral in referrals.iter().take(MAX_REFERRALS) {
            let Some((cell, contact)) = referral.checked() else {
                metrics::counter!(REFERRALS, "kind" => "invalid").increment(1);
                continue;
            };
            if contact.peer == local {
                continue;
            }
            if Some(cell) != own.as_deref() {
                metrics::counter!(REFERRALS, "kind" => "other_cell").increment(1);
                if self.cross_candidates.len() >= MAX_CROSS_CANDIDATES {
                    self.cross_candidates.pop_front();
                }
                self.cross_candidates.push_back(contact);
                continue;
            }
            let known = self
                .cell
                .as_ref()
                .is_some_and(|c| c.membership.has_peer(&contact.peer.to_bytes()));
            if known {
                metrics::counter!(REFERRALS, "kind" => "known").increment(1);
                continue;
            }
            metrics::counter!(REFERRALS, "kind" => "same_cell").increment(1);
            self.stats.referred_to += 1;
            if let Some(c) = self.cell.as_mut() {
                c.referred = true;
            }
            if let Some(identity) = self.table.admitted(&contact.peer).cloned() {
                self.announce_to(contact.peer, &identity);
            } else if self.announce_on_admit.len() < MAX_PENDING_PEERS
                && self.announce_on_admit.insert(contact.peer)
            {
                self.dial_member(contact.peer, Some(contact.addr), "referral");
            }
        }
    }

    pub(super) fn send_chain(&mut self, peer: PeerId) {
        let request = self.own_message();
        self.swarm
            .behaviour_mut()
            .enrol
            .send_request(&peer, request);
    }

    /// Checks the chain of a peer's enrolment message and, when it passes,
    /// admits the peer: its cell card (if any) goes into the directory, a
    /// peer of this member's cell that the view lacks gets an announce,
    /// and the topics it states are watched for (`subscriptions`).
    pub(super) fn check(&mut self, peer: PeerId, message: &EnrolMessage) {
        let (chain, card) = (message.chain.as_slice(), message.card.as_ref());
        let result = self.enrolment.admit(&peer, chain, SystemTime::now());
        match self
            .table
            .on_checked(peer, result, Instant::now(), self.config.block_for)
        {
            Ok(id) => {
                tracing::info!(%peer, identity = %id, "peer admitted");
                self.subscriptions
                    .on_admitted(peer, &message.topics, Instant::now());
                self.chains.insert(peer, chain.to_vec());
                if let Some(addrs) = self.identified.remove(&peer) {
                    self.add_to_dht(peer, addrs);
                }
                self.view.send_modify(|v| {
                    v.admitted.insert(peer, id.clone());
                });
                let stated = card
                    .filter(|_| id.role == Role::Node)
                    .and_then(CellCard::checked)
                    .map(|(cell, addr)| (cell.to_owned(), addr));
                if let Some((cell, addr)) = stated {
                    self.directory.learn(&cell, Contact { peer, addr });
                    self.peer_cells.insert(peer, cell);
                }
                self.flush_pending(peer);
                let (own_cell, lonely, in_view) = match self.cell.as_ref() {
                    Some(c) => (
                        Some(c.name.as_str()),
                        c.membership.is_lonely(),
                        c.membership.has_peer(&peer.to_bytes()),
                    ),
                    None => (None, false, false),
                };
                // A peer that named its cell gets an announce when it is
                // this member's and missing from the view; one that named
                // none (it predates cards) when this member is alone.
                let cellmate = match self.peer_cells.get(&peer) {
                    Some(cell) => own_cell == Some(cell.as_str()) && !in_view,
                    None => lonely,
                };
                if self.announce_on_admit.remove(&peer) || cellmate {
                    self.announce_to(peer, &id);
                }
            }
            Err(e @ AdmissionError::Revoked) => {
                self.directory.forget(&peer);
                self.refuse(peer, "revoked", &e.to_string())
            }
            Err(e) => {
                self.directory.forget(&peer);
                self.refuse(peer, "enrolment", &e.to_string())
            }
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

/// Whether the dialer a referral answer goes to is admitted (and so gets
/// this member's view in answer to its announce) or turned away busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admitted {
    Yes,
    No,
}
