//! The cell half of the mesh driver: starting and finding the cell,
//! carrying membership datagrams over `/starling/swim/1` (held while a
//! peer is being admitted), foca's timers, and the election over the
//! live view. Methods of [`Mesh`]; the sans-I/O logic is in
//! `membership` and `election`.

use std::collections::BTreeMap;
use std::time::Instant;

use libp2p::request_response;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{kad, Multiaddr, PeerId};

use super::datagram_links::{LinkEvent, Sent};
use super::{
    CellSettings, Mesh, SwimMessage, CELL_FORMING_LOOKUP, CELL_LOOKUP_INTERVAL, DIALS,
    LOCAL_HEALTH, MAX_PENDING_PEERS, MAX_PENDING_PER_PEER, MEMBERSHIP_TICK, MEMBER_CHANGES,
    PROVIDE_SETTLE, REFERRAL_GRACE, SWIM_BYTES, SWIM_DATAGRAMS, SWIM_DROPPED,
};
use crate::election::{CellElection, RoleChange};
use crate::identity::{PeerIdentity, Role};
use crate::membership::{CellMembership, MemberId, MemberInfo, Output};
use crate::net::ip_of;
use crate::rendezvous::CellCard;

/// The cell part of a running node.
pub(super) struct Cell {
    pub(super) name: String,
    /// The cell and address this member states in its enrolment messages.
    pub(super) card: CellCard,
    /// Whether a peer referred this member to cell-mates (then it gives
    /// the referrals `REFERRAL_GRACE` before it turns to the DHT).
    pub(super) referred: bool,
    pub(super) settings: CellSettings,
    pub(super) membership: CellMembership,
    /// Timers foca asked for, by deadline.
    pub(super) timers: BTreeMap<(Instant, u64), foca::Timer<MemberId>>,
    pub(super) timer_seq: u64,
    pub(super) providing: bool,
    pub(super) last_tick: Instant,
    /// When the member joined the cell, and last looked up its providers.
    pub(super) joined: Instant,
    pub(super) last_lookup: Option<Instant>,
    pub(super) election: CellElection,
    /// The generation and time of the cell view last published.
    pub(super) published: Option<(u64, Instant)>,
    /// When the load in the own record last changed.
    pub(super) load_sent: Instant,
}

/// The Kademlia key under which the members of a cell find each other.
fn cell_key(cell: &str) -> kad::RecordKey {
    kad::RecordKey::new(&format!("starling/cell/{cell}"))
}

impl Mesh {
    /// Starts cell membership once the member knows the address it is
    /// reached at (its identity in the cell carries it).
    pub(super) fn start_cell(&mut self) {
        let Some(settings) = self.config.cell.clone() else {
            return;
        };
        let listen = self.view.borrow().listen_addrs.clone();
        let advertise = self.config.advertise.clone().or_else(|| {
            listen
                .iter()
                .find(|a| ip_of(a).is_some_and(|ip| !ip.is_loopback()))
                .or_else(|| listen.first())
                .cloned()
        });
        let Some(advertise) = advertise else {
            return;
        };
        let Some(ip) = ip_of(&advertise) else {
            tracing::error!(%advertise, "advertised address has no IP; cannot join a cell");
            return;
        };
        // Kademlia puts only confirmed external addresses in the provider
        // records it publishes; without one a member that finds this cell
        // in the DHT gets a PeerId it cannot dial.
        self.swarm.add_external_address(advertise.clone());
        let name = crate::cell::base_cell(settings.zone.as_deref(), ip);
        let host = self.enrolment.identity().name.clone();
        let id = MemberId::new(
            host.as_str(),
            self.swarm.local_peer_id().to_bytes(),
            advertise.to_vec(),
            0,
        );
        let info = MemberInfo {
            host: host.clone(),
            version: self.version(),
            eligible: settings.eligible,
            aggregator: false,
            load_pct: 0,
            capacity: settings.capacity,
            attached: 0,
            agent_version: settings.agent_version.clone(),
            tags: settings.tags.clone(),
            addrs: vec![advertise.to_string()],
            relay: settings.relay.clone(),
        };
        // The PeerId's first bytes are its multihash and key-type prefix,
        // alike in every member: the member's own random source instead.
        let seed: u64 = rand::RngExt::random(&mut self.rng);
        match CellMembership::new(id, info, settings.expected_size, seed) {
            Ok(membership) => {
                tracing::info!(cell = %name, %advertise, "joining cell");
                self.cell = Some(Cell {
                    card: CellCard::new(&name, &advertise),
                    referred: false,
                    name,
                    settings,
                    membership,
                    timers: BTreeMap::new(),
                    timer_seq: 0,
                    providing: false,
                    last_tick: Instant::now() - MEMBERSHIP_TICK,
                    joined: Instant::now(),
                    last_lookup: None,
                    election: CellElection::default(),
                    published: None,
                    load_sent: Instant::now(),
                });
                // Peers admitted before the cell started are worth asking.
                self.announce_to_admitted();
            }
            Err(e) => tracing::error!(error = %e, "cannot start cell membership"),
        }
    }

    /// Looks for the rest of the cell. A lonely member asks every admitted
    /// node and the DHT's providers of its cell key to let it in, and makes
    /// itself findable there in turn. A member with company still looks
    /// the providers up now and then (often while the cell forms or while
    /// it sees less than three quarters of the cell size it expects,
    /// rarely after): members that joined through different peers at the
    /// same moment can form separate fragments, and SWIM alone never
    /// merges them. Any provider missing from the view gets an announce
    /// ([`Mesh::on_cell_providers`]).
    pub(super) fn find_cell(&mut self) {
        let spread = self.spread();
        // A short cell asks the seeds first (`ask_seeds`): they know the
        // members that started at them, and a walk through the DHT dials a
        // dozen peers all over the fleet (at 500 members started at once,
        // 16,600 dials, a third of the start's CPU). The DHT is for cells
        // the seeds did not bring together.
        let seeds_asked = self.seed_asks as usize >= self.config.bootstrap.len();
        let short = !self.cell_mostly_known() && seeds_asked;
        let Some(cell) = self.cell.as_mut() else {
            return;
        };
        let key = cell_key(&cell.name);
        let dht_peers = self.view.borrow().dht_peers;
        let lonely = cell.membership.is_lonely();
        let now = Instant::now();
        // Referrals come first (`rendezvous`); the DHT is for a member
        // they did not bring company to within `REFERRAL_GRACE`, and for
        // the cell's aggregators, whose provider records are how such a
        // member finds the cell. Every member of a cell providing its key
        // cost each one a walk and a dozen dials at start.
        let settled = !cell.referred || now.duration_since(cell.joined) >= REFERRAL_GRACE;
        let aggregator = cell.membership.own().aggregator;
        let provide = (lonely && settled)
            || (aggregator && now.duration_since(cell.joined) >= PROVIDE_SETTLE);
        if provide && !cell.providing && dht_peers > 0 {
            match self.swarm.behaviour_mut().kad.start_providing(key.clone()) {
                Ok(_) => {
                    tracing::debug!(lonely, aggregator, "providing the cell key in the DHT");
                    cell.providing = true;
                }
                Err(e) => tracing::debug!(error = %e, "cannot provide the cell key yet"),
            }
        }
        // A member that sees most of its cell leaves the periodic lookup
        // (which merges fragments that found each other nowhere else) to
        // the aggregators; one in a small fragment looks often.
        let every = if short {
            Some(CELL_FORMING_LOOKUP)
        } else if aggregator {
            Some(CELL_LOOKUP_INTERVAL.mul_f64(1.0 + spread))
        } else {
            None
        };
        let due = settled
            && (lonely
                || every.is_some_and(|every| {
                    cell.last_lookup
                        .is_none_or(|t| now.duration_since(t) >= every)
                }));
        if due && dht_peers > 0 {
            tracing::debug!(lonely, "looking the cell up in the DHT");
            cell.last_lookup = Some(now);
            self.swarm.behaviour_mut().kad.get_providers(key);
        }
        if lonely {
            self.announce_to_admitted();
        }
    }

    /// Providers of the cell key found in the DHT: announce to each one
    /// this member does not count as a member (see [`Mesh::find_cell`]).
    /// foca takes an announce only when it names its addressee, so an
    /// admitted provider gets one now, under its enrolled name, and any
    /// other is dialled and gets one at admission. Returns whether there
    /// was any.
    pub(super) fn on_cell_providers(
        &mut self,
        providers: impl IntoIterator<Item = PeerId>,
    ) -> bool {
        let Some(cell) = self.cell.as_ref() else {
            return false;
        };
        let local = *self.swarm.local_peer_id();
        let missing: Vec<PeerId> = providers
            .into_iter()
            .filter(|p| *p != local && !cell.membership.has_peer(&p.to_bytes()))
            .collect();
        let news = !missing.is_empty();
        tracing::debug!(missing = missing.len(), "cell providers found in the DHT");
        for peer in missing {
            if let Some(identity) = self.table.admitted(&peer).cloned() {
                self.announce_to(peer, &identity);
            } else if self.announce_on_admit.len() < MAX_PENDING_PEERS
                && self.announce_on_admit.insert(peer)
            {
                self.dial_member(peer, None, "provider");
            }
        }
        news
    }

    /// Whether this member sees at least three quarters of the cell size
    /// it was configured to expect (so it is not in a small fragment).
    pub(super) fn cell_mostly_known(&self) -> bool {
        self.cell.as_ref().is_some_and(|c| {
            let known = c.membership.peers().count() + 1;
            known * 4 >= c.settings.expected_size as usize * 3
        })
    }

    /// Announces this member to every admitted peer that may be of its
    /// cell: those whose enrolment message named it, and those that named
    /// none (members that predate cell cards).
    pub(super) fn announce_to_admitted(&mut self) {
        let Some(own) = self.cell.as_ref().map(|c| c.name.clone()) else {
            return;
        };
        let peers: Vec<(PeerId, PeerIdentity)> = self
            .view
            .borrow()
            .admitted
            .iter()
            .filter(|(p, _)| self.peer_cells.get(*p).is_none_or(|c| *c == own))
            .map(|(p, i)| (*p, i.clone()))
            .collect();
        for (peer, id) in peers {
            self.announce_to(peer, &id);
        }
    }

    pub(super) fn announce_to(&mut self, peer: PeerId, identity: &PeerIdentity) {
        if identity.role != Role::Node {
            return;
        }
        let Some(cell) = self.cell.as_mut() else {
            return;
        };
        let via = MemberId::new(identity.name.as_str(), peer.to_bytes(), Vec::new(), 0);
        if let Err(e) = cell.membership.join(via) {
            tracing::debug!(%peer, error = %e, "announce failed");
        }
        self.drain_membership();
    }

    pub(super) fn fire_timers(&mut self) {
        let Some(cell) = self.cell.as_mut() else {
            return;
        };
        let now = Instant::now();
        while let Some(entry) = cell.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let late = now.duration_since(entry.key().0);
            let timer = entry.remove();
            if let Err(e) = cell.membership.handle_timer(timer, late) {
                tracing::debug!(error = %e, "membership timer");
            }
        }
        let health = cell.membership.local_health();
        if health != self.stats.local_health {
            let suspicion_ms = cell.membership.suspicion_timeout().as_millis() as u64;
            if health == 0 || self.stats.local_health == 0 {
                tracing::info!(
                    score = health,
                    suspicion_ms,
                    "local health changed (timers running late stretch the suspicion timeout)"
                );
            } else {
                tracing::debug!(score = health, suspicion_ms, "local health score");
            }
            self.stats.local_health = health;
            metrics::gauge!(LOCAL_HEALTH).set(f64::from(health));
        }
        self.drain_membership();
    }

    /// Carries out what the membership state machine asked for.
    pub(super) fn drain_membership(&mut self) {
        let Some(cell) = self.cell.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        cell.membership.drain(&mut out);
        let cell_name = cell.name.clone();
        let now = Instant::now();
        for o in out {
            match o {
                Output::Send { to, data } => {
                    let Ok(peer) = PeerId::from_bytes(&to.peer) else {
                        continue;
                    };
                    let addr = Multiaddr::try_from(to.addr.to_vec()).ok();
                    self.send_swim(
                        peer,
                        addr,
                        SwimMessage {
                            cell: cell_name.clone(),
                            data: data.to_vec(),
                        },
                    );
                }
                Output::Timer { after, timer } => {
                    if let Some(cell) = self.cell.as_mut() {
                        cell.timer_seq += 1;
                        cell.timers.insert((now + after, cell.timer_seq), timer);
                    }
                }
                Output::Up(id) => {
                    metrics::counter!(MEMBER_CHANGES, "change" => "up").increment(1);
                    tracing::debug!(member = %id.host, "member up");
                }
                Output::Down(id) => {
                    metrics::counter!(MEMBER_CHANGES, "change" => "down").increment(1);
                    tracing::info!(member = %id.host, "member down");
                }
            }
        }
    }

    pub(super) fn drop_swim(&mut self, reason: &'static str) {
        self.stats.swim_dropped += 1;
        metrics::counter!(SWIM_DROPPED, "reason" => reason).increment(1);
    }

    /// Sends a datagram now if the peer is admitted; otherwise holds it
    /// (bounded) and dials the peer, and it goes out at admission.
    pub(super) fn send_swim(
        &mut self,
        peer: PeerId,
        addr: Option<Multiaddr>,
        message: SwimMessage,
    ) {
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        if self.table.admitted(&peer).is_some() {
            tracing::trace!(%peer, bytes = message.data.len(), "membership datagram out");
            self.cell_peers.insert(peer);
            self.stats.swim_bytes_out += message.data.len() as u64;
            metrics::counter!(SWIM_BYTES, "direction" => "out")
                .increment(message.data.len() as u64);
            metrics::counter!(SWIM_DATAGRAMS, "direction" => "out").increment(1);
            match self.links.send(peer, &message) {
                Sent::Framed => {}
                Sent::Legacy => {
                    self.swarm.behaviour_mut().swim.send_request(&peer, message);
                }
                Sent::Dropped(reason) => self.drop_swim(reason),
            }
            return;
        }
        if !self.pending.contains_key(&peer) && self.pending.len() >= MAX_PENDING_PEERS {
            self.drop_swim("pending_full");
            return;
        }
        let queue = self.pending.entry(peer).or_default();
        if queue.len() >= MAX_PENDING_PER_PEER {
            queue.remove(0);
            self.drop_swim("pending_full");
        }
        let queue = self.pending.entry(peer).or_default();
        queue.push(message);
        self.dial_member(peer, addr, "datagram");
    }

    /// Dials a cell member (or a peer that may be one) unless connected
    /// or dialling already; `addr` adds to what the DHT knows of it, and
    /// `why` is kept for `CONNECTIONS_SECOND`.
    pub(super) fn dial_member(&mut self, peer: PeerId, addr: Option<Multiaddr>, why: &'static str) {
        if self.swarm.is_connected(&peer) {
            return;
        }
        // The peer may be dialling this member right now: its connection
        // would make this one a second (`inbound_handshakes`).
        if addr
            .as_ref()
            .is_some_and(|a| self.inbound.wait_for(peer, a, why))
        {
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addr.into_iter().collect())
            .extend_addresses_through_behaviour()
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                metrics::counter!(DIALS, "cause" => "member").increment(1);
                self.note_dial(id, why);
            }
            Err(e) => tracing::debug!(%peer, error = %e, "cannot dial member"),
        }
    }

    /// Drops the datagrams held for `peer`'s admission, counted as `reason`.
    pub(super) fn drop_pending(&mut self, peer: &PeerId, reason: &'static str) {
        for _ in self.pending.remove(peer).unwrap_or_default() {
            self.drop_swim(reason);
        }
    }

    /// Events of the request-response datagram protocol, spoken with
    /// members built before the datagram streams.
    pub(super) fn on_legacy_swim(&mut self, event: request_response::Event<SwimMessage, ()>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let _ = self.swarm.behaviour_mut().swim.send_response(channel, ());
                self.on_swim(peer, request);
            }
            // The exchange failed: the datagram may not have arrived (a
            // timeout can also be an answer that came too late, so this
            // counts at most what was lost).
            request_response::Event::OutboundFailure { error, .. } => self.drop_swim(match error {
                request_response::OutboundFailure::Timeout => "stream_timeout",
                request_response::OutboundFailure::ConnectionClosed => "stream_closed",
                request_response::OutboundFailure::DialFailure => "unreachable",
                request_response::OutboundFailure::UnsupportedProtocols => "unsupported",
                _ => "stream_error",
            }),
            _ => {}
        }
    }

    pub(super) fn flush_pending(&mut self, peer: PeerId) {
        for message in self.pending.remove(&peer).unwrap_or_default() {
            self.send_swim(peer, None, message);
        }
    }

    /// What the datagram streams' tasks report.
    pub(super) fn on_link_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Datagram(peer, message) => self.on_swim(peer, message),
            LinkEvent::Legacy(peer) => {
                tracing::debug!(%peer, "peer predates datagram streams: request-response it is");
                self.links.mark_legacy(peer);
            }
            LinkEvent::Dropped(reason, n) => {
                for _ in 0..n {
                    self.drop_swim(reason);
                }
            }
        }
    }

    pub(super) fn on_swim(&mut self, peer: PeerId, message: SwimMessage) {
        let Some(identity) = self.table.admitted(&peer).cloned() else {
            self.drop_swim("not_admitted");
            return;
        };
        self.stats.swim_bytes_in += message.data.len() as u64;
        metrics::counter!(SWIM_BYTES, "direction" => "in").increment(message.data.len() as u64);
        metrics::counter!(SWIM_DATAGRAMS, "direction" => "in").increment(1);
        let Some(cell) = self.cell.as_mut() else {
            self.drop_swim("no_cell");
            return;
        };
        if message.cell != cell.name || identity.role != Role::Node {
            self.drop_swim("other_cell");
            return;
        }
        self.cell_peers.insert(peer);
        tracing::trace!(%peer, bytes = message.data.len(), "membership datagram in");
        let from = MemberId::new(identity.name.as_str(), peer.to_bytes(), Vec::new(), 0);
        match cell.membership.handle_data(&from, &message.data) {
            Ok(()) => {}
            Err(e @ crate::membership::MembershipError::Impersonation { .. }) => {
                tracing::debug!(%peer, error = %e, "membership datagram refused");
                self.drop_swim("impersonation");
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "bad membership datagram");
                self.drop_swim("invalid");
            }
        }
        self.drain_membership();
    }

    /// Recomputes the cell's aggregators from this member's view, when
    /// the view changed, and takes up or gives up the role accordingly.
    pub(super) fn elect(&mut self) {
        let version = self.version();
        let Some(cell) = self.cell.as_mut() else {
            return;
        };
        let change = cell.election.update(
            &cell.name,
            &mut cell.membership,
            &cell.settings.election,
            version,
        );
        if change != RoleChange::None {
            tracing::info!(cell = %cell.name, ?change, "aggregator role changed");
        }
    }
}
