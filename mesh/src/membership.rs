//! Membership of one cell: SWIM (foca) for liveness, plus a small versioned
//! record per member (roles, load, capacity, version, tags, addresses)
//! disseminated as a custom broadcast only when it changes.
//!
//! Sans-I/O: the driver hands in received bytes and fired timers and
//! carries out the sends and timers this returns. Per-member traffic is one
//! probe per period plus piggybacked updates, so it does not grow with the
//! cell (docs/mesh.md).

use std::num::NonZeroU32;
use std::time::Duration;

use bytes::Bytes;
use foca::{AccumulatingRuntime, BroadcastHandler, Foca, OwnedNotification, PostcardCodec, Timer};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::election;

mod info;
mod member_id;
use crate::health::LocalHealth;
use info::InfoBook;
pub use info::{InfoKey, MemberInfo, MAX_ADDRS, MAX_TAGS, MAX_TEXT};
pub use member_id::{HostKey, MemberId};

/// First byte of every membership datagram: what follows.
const KIND_SWIM: u8 = 0;
const KIND_INFO_REQUEST: u8 = 1;
const KIND_INFO: u8 = 2;
/// Largest SWIM packet. Members talk over libp2p streams, not raw UDP, so
/// the 1,400-byte MTU default does not apply; larger packets let a joining
/// member learn a big cell from a few Feed replies.
const MAX_PACKET: usize = 8 * 1024;
/// Suspicion timeout of a healthy member, in probe periods per decade of
/// cell size: at 50 members and 1 s probes, 2.55 s. foca's LAN default is
/// 4 (6.8 s), which with the probe round puts detection near 9 s; 2 put
/// it at 5.7 s. A busy observer stretches its own timeout (local health)
/// and five indirect probes carry a lossy link (no false death at 20 %
/// loss in the simulator). The price is the lag a live member may have:
/// one that answers everything 2 s late is now declared down (at 2, 2.5 s
/// was tolerated). docs/mesh.md has the measurements.
const SUSPICION_PERIODS: f64 = 1.5;
/// How often a member with news gossips it to three random members
/// (foca's LAN default: every 200 ms). Every datagram here is a QUIC
/// stream of its own, and at cold start every member has news for tens
/// of seconds (fifty joins and their records, each sent 20 times). A
/// 300-member start at once converged in 105 s at 500 ms, 120 s at
/// 200 ms; at 1 s in 85-107 s, but a dead member then left every view
/// about half a second later (docs/mesh.md).
const GOSSIP_INTERVAL: Duration = Duration::from_millis(500);
/// Most info requests sent per tick (bounds the catch-up burst).
const MAX_INFO_REQUESTS_PER_TICK: usize = 8;

/// Errors of the membership layer (all from hostile or broken input).
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("member info does not decode: {0}")]
    Decode(String),
    #[error("member info out of bounds")]
    BadInfo,
    #[error("swim: {0}")]
    Swim(String),
    /// A datagram whose SWIM header names another member than the one
    /// whose connection (certificate) it came over.
    #[error("a datagram from {sender} claims to come from {claimed}")]
    Impersonation { sender: String, claimed: String },
}

/// What the driver must do.
#[derive(Debug)]
pub enum Output {
    /// Send these bytes to that member.
    Send { to: MemberId, data: Bytes },
    /// Call [`CellMembership::handle_timer`] with this timer after a delay.
    Timer {
        after: Duration,
        timer: Timer<MemberId>,
    },
    /// A member became reachable.
    Up(MemberId),
    /// A member was declared down.
    Down(MemberId),
}

/// One member's view of its cell.
pub struct CellMembership {
    foca: Foca<MemberId, PostcardCodec, SmallRng, InfoBook>,
    runtime: AccumulatingRuntime<MemberId>,
    own: MemberInfo,
    book: InfoBook,
    /// Point-to-point sends of the info exchange, prefixed already.
    direct: Vec<(MemberId, Bytes)>,
    /// Members that came up and have not answered for their record since:
    /// asked again every tick until they do, since a lost request or
    /// answer would leave a record from before their absence for good.
    unanswered: std::collections::HashSet<HostKey>,
    /// Membership changes and own record updates so far.
    changes: u64,
    /// foca's configuration as last set, and the suspicion timeout of a
    /// healthy member, which local health stretches.
    config: foca::Config,
    healthy_suspicion: Duration,
    health: LocalHealth,
}

fn swim(e: foca::Error) -> MembershipError {
    MembershipError::Swim(e.to_string())
}

impl CellMembership {
    /// A member with identity `id` advertising `info`, in a cell expected
    /// to hold about `expected_size` members. `seed` seeds the random
    /// choice of probe targets.
    pub fn new(
        id: MemberId,
        info: MemberInfo,
        expected_size: u32,
        seed: u64,
    ) -> Result<Self, MembershipError> {
        info.check()?;
        let size = NonZeroU32::new(expected_size.max(2)).unwrap_or(NonZeroU32::MIN);
        let mut config = foca::Config::new_lan(size);
        let healthy_suspicion = config
            .probe_period
            .mul_f64(f64::from(size.get()).log10().max(1.0) * SUSPICION_PERIODS);
        config.suspect_to_down_after = healthy_suspicion;
        config.max_packet_size =
            std::num::NonZeroUsize::new(MAX_PACKET).unwrap_or(config.max_packet_size);
        // Piggybacked updates reach every member only with high
        // probability; twice the default transmissions makes a straggler
        // rare, and costs bytes only while there is news.
        config.max_transmissions = config
            .max_transmissions
            .checked_mul(std::num::NonZeroU8::new(2).unwrap_or(std::num::NonZeroU8::MIN))
            .unwrap_or(std::num::NonZeroU8::MAX);
        // Five indirect probes: a live member behind a lossy link is
        // suspected about ten times less often than with three.
        config.num_indirect_probes =
            std::num::NonZeroUsize::new(5).unwrap_or(config.num_indirect_probes);
        // No periodic announce to live members: each answer is a Feed of the
        // whole membership, traffic that grows with the cell. Joins announce
        // once, and a healed partition is found by the periodic announce to
        // members seen down (foca's default, kept).
        config.periodic_announce = None;
        // A member wrongly declared down (an overloaded host, a start-up
        // storm of handshakes) stays out of the views of those who
        // declared it until someone announces to it. foca's default asks
        // two down members every 65 s, which left 100-member benches with
        // partial views for two minutes; every 10 s costs one small
        // datagram per down member and interval, and only while there are
        // down members.
        config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(10),
            num_members: std::num::NonZeroUsize::new(2).unwrap_or(std::num::NonZeroUsize::MIN),
        });
        config.periodic_gossip = Some(foca::PeriodicParams {
            frequency: GOSSIP_INTERVAL,
            num_members: std::num::NonZeroUsize::new(3).unwrap_or(std::num::NonZeroUsize::MIN),
        });
        let book = InfoBook::default();
        let mut foca = Foca::with_custom_broadcast(
            id,
            config.clone(),
            SmallRng::seed_from_u64(seed),
            PostcardCodec,
            book.clone(),
        );
        let me = Self {
            foca: {
                let data = postcard::to_allocvec(&info)
                    .map_err(|e| MembershipError::Decode(e.to_string()))?;
                foca.add_broadcast(&data).map_err(swim)?;
                foca
            },
            runtime: AccumulatingRuntime::new(),
            own: info,
            book,
            direct: Vec::new(),
            unanswered: Default::default(),
            changes: 0,
            config,
            healthy_suspicion,
            health: LocalHealth::default(),
        };
        Ok(me)
    }

    /// Asks `via` to let this member in (bootstrap).
    pub fn join(&mut self, via: MemberId) -> Result<(), MembershipError> {
        self.foca.announce(via, &mut self.runtime).map_err(swim)
    }

    /// Bytes received from another member (`from` is the sender the
    /// transport authenticated).
    pub fn handle_data(&mut self, from: &MemberId, data: &[u8]) -> Result<(), MembershipError> {
        match data.split_first() {
            Some((&KIND_SWIM, rest)) => {
                // foca believes the sender its header names; the transport
                // knows who sent it. Unchecked, any admitted member could
                // speak for another: refute a dead member's suspicion,
                // answer probes for it, or suspect others in its name.
                let header = foca::Codec::<MemberId>::decode_header(&mut PostcardCodec, rest)
                    .map_err(|e| MembershipError::Decode(e.to_string()))?;
                if !from.same_sender(&header.src) {
                    return Err(MembershipError::Impersonation {
                        sender: from.host.to_string(),
                        claimed: header.src.host.chars().take(64).collect(),
                    });
                }
                self.foca.handle_data(rest, &mut self.runtime).map_err(swim)
            }
            Some((&KIND_INFO_REQUEST, _)) => {
                let record = self.encoded_own()?;
                self.direct.push((from.clone(), record));
                Ok(())
            }
            Some((&KIND_INFO, rest)) => {
                let info: MemberInfo = postcard::from_bytes(rest)
                    .map_err(|e| MembershipError::Decode(e.to_string()))?;
                // A member answers only for itself.
                if *info.host != *from.host {
                    return Err(MembershipError::BadInfo);
                }
                self.unanswered.remove(&from.key);
                self.book.clone().receive_item(rest, Some(from)).map(|_| ())
            }
            _ => Err(MembershipError::Decode("unknown membership message".into())),
        }
    }

    fn encoded_own(&self) -> Result<Bytes, MembershipError> {
        let mut out = vec![KIND_INFO];
        out.extend(
            postcard::to_allocvec(&self.own).map_err(|e| MembershipError::Decode(e.to_string()))?,
        );
        Ok(Bytes::from(out))
    }

    /// Periodic catch-up (every few seconds): asks live members whose info
    /// record this member lacks, or who came up and have not answered for
    /// it since, a few at a time, for it directly.
    pub fn handle_tick(&mut self) {
        let infos = self.book.lock();
        let missing: Vec<MemberId> = self
            .foca
            .iter_members()
            .map(|m| m.id())
            .filter(|id| self.unanswered.contains(&id.key) || !infos.contains_key(&*id.host))
            .take(MAX_INFO_REQUESTS_PER_TICK)
            .cloned()
            .collect();
        drop(infos);
        for id in missing {
            self.direct
                .push((id, Bytes::from_static(&[KIND_INFO_REQUEST])));
        }
    }

    /// A timer returned earlier fired, `late` after the delay it asked
    /// for (the member's local health: a busy member gives the members it
    /// suspects longer to refute).
    pub fn handle_timer(
        &mut self,
        timer: Timer<MemberId>,
        late: Duration,
    ) -> Result<(), MembershipError> {
        let fired = self.foca.handle_timer(timer, &mut self.runtime);
        if self.health.observe(late) {
            self.config.suspect_to_down_after = self.health.scale(self.healthy_suspicion);
            self.foca.set_config(self.config.clone()).map_err(swim)?;
        }
        fired.map_err(swim)
    }

    /// The local-health score (0: healthy; see [`crate::health`]).
    pub fn local_health(&self) -> u8 {
        self.health.score()
    }

    /// How long a suspected member has to refute before this member
    /// declares it down, local health included.
    pub fn suspicion_timeout(&self) -> Duration {
        self.config.suspect_to_down_after
    }

    /// Changes this member's info; `version` must increase (the driver
    /// passes its clock in milliseconds).
    pub fn update_info(
        &mut self,
        version: u64,
        change: impl FnOnce(&mut MemberInfo),
    ) -> Result<(), MembershipError> {
        let mut next = self.own.clone();
        change(&mut next);
        next.version = version.max(self.own.version + 1);
        next.check()?;
        let data =
            postcard::to_allocvec(&next).map_err(|e| MembershipError::Decode(e.to_string()))?;
        self.foca.add_broadcast(&data).map_err(swim)?;
        self.own = next;
        self.changes += 1;
        Ok(())
    }

    /// Leaves the cell cleanly (others learn at once instead of suspecting).
    pub fn leave(&mut self) -> Result<(), MembershipError> {
        self.foca.leave_cluster(&mut self.runtime).map_err(swim)
    }

    /// Takes everything the driver must do now.
    pub fn drain(&mut self, out: &mut Vec<Output>) {
        while let Some((to, data)) = self.runtime.to_send() {
            let mut framed = Vec::with_capacity(data.len() + 1);
            framed.push(KIND_SWIM);
            framed.extend_from_slice(&data);
            out.push(Output::Send {
                to,
                data: Bytes::from(framed),
            });
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            // Lifeguard's probe half of local health: a busy member probes
            // less often and waits longer for the direct ack before it
            // asks others to probe. Every failed probe costs five
            // indirect probes and their acks, so a saturated member that
            // kept probing at full rate made more of the load that
            // starved it (a 200-member in-process start spun at two full
            // cores for minutes).
            let after = match timer {
                Timer::ProbeRandomMember(_) | Timer::SendIndirectProbe { .. } => {
                    self.health.scale(after)
                }
                _ => after,
            };
            out.push(Output::Timer { after, timer });
        }
        while let Some(n) = self.runtime.to_notify() {
            self.changes += 1;
            match n {
                OwnedNotification::MemberUp(id) => {
                    // A newcomer, or one back from the dead: fetch its
                    // record. One back may have changed it while it was
                    // out of reach (the other side of a partition took up
                    // the aggregator role), and the change was broadcast
                    // only to those who could hear it: a record kept from
                    // before left half of a healed cell electing other
                    // aggregators than the rest for good (found by
                    // starling-sim's partition scenario).
                    self.unanswered.insert(id.key);
                    out.push(Output::Send {
                        to: id.clone(),
                        data: Bytes::from_static(&[KIND_INFO_REQUEST]),
                    });
                    out.push(Output::Up(id));
                }
                OwnedNotification::MemberDown(id) => {
                    self.unanswered.remove(&id.key);
                    out.push(Output::Down(id));
                }
                _ => {}
            }
        }
        for (to, data) in self.direct.drain(..) {
            out.push(Output::Send { to, data });
        }
    }

    /// Changes whenever the live members or any record (this member's
    /// included) change: what is derived from the view (the election, the
    /// published status) need not be recomputed while it stays the same.
    pub fn generation(&self) -> u64 {
        self.changes + self.book.taken.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This member's own info.
    pub fn own(&self) -> &MemberInfo {
        &self.own
    }

    /// Whether this member knows no other live member (it must look for
    /// its cell). Cheaper than `members().is_empty()`.
    pub fn is_lonely(&self) -> bool {
        self.foca.num_members() == 0
    }

    /// Whether a live member has this libp2p PeerId (as bytes).
    pub fn has_peer(&self, peer: &[u8]) -> bool {
        self.foca.iter_members().any(|m| *m.id().peer == *peer)
    }

    /// The libp2p PeerIds (as bytes) of the live members.
    pub fn peers(&self) -> impl Iterator<Item = &[u8]> {
        self.foca.iter_members().map(|m| &*m.id().peer)
    }

    /// Live members other than this one, with their info when known.
    pub fn members(&self) -> Vec<(MemberId, Option<MemberInfo>)> {
        let infos = self.book.lock();
        self.foca
            .iter_members()
            .map(|m| {
                let id = m.id().clone();
                let info = infos.get(&*id.host).cloned();
                (id, info)
            })
            .collect()
    }

    /// The identities of the members this one sees alive (itself
    /// excluded), without copying anything.
    pub fn member_ids(&self) -> impl Iterator<Item = &MemberId> {
        self.foca.iter_members().map(|m| m.id())
    }

    /// The election's input: every live member (this one included).
    pub fn election_view(&self) -> Vec<election::Member> {
        let to_member = |info: &MemberInfo| election::Member {
            id: info.host.clone(),
            eligible: info.eligible,
            incumbent: info.aggregator,
            load: f64::from(info.load_pct) / 100.0,
        };
        // Reads the records in place: copying every member's whole record
        // (tags, addresses) for each election was 2 % of a 300-member
        // start-up's CPU.
        let infos = self.book.lock();
        let mut view: Vec<election::Member> = self
            .foca
            .iter_members()
            .map(|m| match infos.get(&*m.id().host) {
                Some(i) => to_member(i),
                // Not heard its record yet: a member, but not a candidate.
                None => election::Member {
                    id: m.id().host.to_string(),
                    eligible: false,
                    incumbent: false,
                    load: 0.0,
                },
            })
            .collect();
        drop(infos);
        view.push(to_member(&self.own));
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(host: &str) -> MemberInfo {
        MemberInfo {
            host: host.into(),
            version: 1,
            eligible: true,
            aggregator: false,
            load_pct: 0,
            capacity: 100,
            attached: 0,
            agent_version: "t".into(),
            tags: Vec::new(),
            addrs: Vec::new(),
            relay: String::new(),
        }
    }

    fn member(host: &str) -> CellMembership {
        CellMembership::new(MemberId::named(host), info(host), 10, 1).unwrap()
    }

    fn from(host: &str) -> MemberId {
        MemberId::named(host)
    }

    #[test]
    fn identities_compare_by_host_after_a_round_trip() {
        use foca::Identity;
        let id = MemberId::new("a", vec![1, 2], vec![3], 4);
        let back: MemberId = postcard::from_bytes(&postcard::to_allocvec(&id).unwrap()).unwrap();
        assert_eq!(back, id, "the local key is computed again, not lost");
        assert_eq!(back.addr(), id.addr());
        let renewed = id.renew().unwrap();
        assert_ne!(renewed, id);
        assert_eq!(
            renewed.addr(),
            id.addr(),
            "a restarted host is the same member"
        );
        assert_ne!(MemberId::named("b").addr(), id.addr());
        assert_ne!(MemberId::new("a", vec![1, 2], vec![], 4), id);
    }

    /// Peer and address travel as bytes; members built when they
    /// travelled as sequences of numbers write and read the same bytes.
    #[test]
    fn identities_encode_as_members_built_before_did() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Before {
            host: String,
            peer: Vec<u8>,
            addr: Vec<u8>,
            bump: u16,
        }
        let peer: Vec<u8> = (0..38).collect();
        let addr = vec![4, 10, 0, 0, 1, 0x91, 0x02, 0x1c, 0xe9];
        let id = MemberId::new("host-1", peer.clone(), addr.clone(), 7);
        let old = Before {
            host: "host-1".into(),
            peer,
            addr,
            bump: 7,
        };
        let now = postcard::to_allocvec(&id).unwrap();
        assert_eq!(now, postcard::to_allocvec(&old).unwrap());
        let read: MemberId = postcard::from_bytes(&now).unwrap();
        assert_eq!(read, id);
        let back: Before = postcard::from_bytes(&now).unwrap();
        assert_eq!(
            (back.peer.as_slice(), back.addr.as_slice(), back.bump),
            (&*id.peer, &*id.addr, 7)
        );
        // A decoder that cannot lend its input (JSON's byte arrays) gives
        // the same identity as postcard's borrowing one.
        let json = serde_json::to_vec(&id).unwrap();
        assert_eq!(serde_json::from_slice::<MemberId>(&json).unwrap(), id);
    }

    #[test]
    fn hostile_bytes_are_errors_not_panics() {
        let mut m = member("a");
        assert!(m.handle_data(&from("b"), &[]).is_err());
        assert!(m.handle_data(&from("b"), &[9, 1, 2]).is_err());
        for seed in 0u8..=255 {
            let junk: Vec<u8> = (0..300u32)
                .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
                .collect();
            for kind in [KIND_SWIM, KIND_INFO] {
                let mut msg = vec![kind];
                msg.extend_from_slice(&junk);
                let _ = m.handle_data(&from("b"), &msg);
            }
        }
    }

    #[test]
    fn a_member_answers_only_for_itself() {
        let mut m = member("a");
        let mut forged = vec![KIND_INFO];
        forged.extend(postcard::to_allocvec(&info("c")).unwrap());
        assert!(matches!(
            m.handle_data(&from("b"), &forged),
            Err(MembershipError::BadInfo)
        ));
    }

    #[test]
    fn a_swim_datagram_must_come_from_the_member_it_names() {
        let (mut a, mut c) = (member("a"), member("c"));
        c.join(from("a")).unwrap();
        let mut out = Vec::new();
        c.drain(&mut out);
        let datagram = out
            .iter()
            .find_map(|o| match o {
                Output::Send { data, .. } if data.first() == Some(&KIND_SWIM) => Some(data.clone()),
                _ => None,
            })
            .expect("c's join sends a to SWIM datagram");
        // b relays c's datagram as its own: refused, and a learns nothing.
        assert!(matches!(
            a.handle_data(&from("b"), &datagram),
            Err(MembershipError::Impersonation { .. })
        ));
        assert!(a.members().iter().all(|(id, _)| &*id.host != "c"));
        // From c itself it is taken.
        a.handle_data(&from("c"), &datagram).unwrap();
        assert!(a.members().iter().any(|(id, _)| &*id.host == "c"));
        // Production identities also carry the PeerId: the same name over
        // another peer's connection is refused too.
        let real = |peer: u8| MemberId::new("c", vec![peer; 4], Vec::new(), 0);
        assert!(real(1).same_sender(&real(1)));
        assert!(!real(1).same_sender(&real(2)));
    }

    #[test]
    fn info_out_of_bounds_is_refused() {
        let mut big = info("a");
        big.tags = vec!["t".into(); MAX_TAGS + 1];
        assert!(big.check().is_err());
        let mut long = info("a");
        long.addrs = vec!["x".repeat(MAX_TEXT + 1)];
        assert!(long.check().is_err());
        let mut over = info("a");
        over.load_pct = 101;
        assert!(over.check().is_err());
        let mut m = member("a");
        assert!(m
            .update_info(2, |i| i.tags = vec!["t".into(); MAX_TAGS + 1])
            .is_err());
        assert!(m.own().tags.is_empty(), "a refused update changes nothing");
    }

    #[test]
    fn an_info_request_is_answered_with_the_own_record() {
        let mut m = member("a");
        m.handle_data(&from("b"), &[KIND_INFO_REQUEST]).unwrap();
        let mut out = Vec::new();
        m.drain(&mut out);
        let reply = out.iter().find_map(|o| match o {
            Output::Send { to, data } if &*to.host == "b" && data.first() == Some(&KIND_INFO) => {
                Some(data.clone())
            }
            _ => None,
        });
        let reply = reply.expect("a reply to b");
        let record: MemberInfo = postcard::from_bytes(&reply[1..]).unwrap();
        assert_eq!(record.host, "a");
    }

    /// Delivers every datagram between two members until none is left
    /// (timers are not run).
    fn exchange(a: &mut CellMembership, b: &mut CellMembership) {
        fn deliver(src: &mut CellMembership, dst: &mut CellMembership) -> bool {
            let mut out = Vec::new();
            src.drain(&mut out);
            let sender = from(&src.own().host);
            let mut moved = false;
            for o in out {
                if let Output::Send { data, .. } = o {
                    moved = true;
                    dst.handle_data(&sender, &data).unwrap();
                }
            }
            moved
        }
        for _ in 0..20 {
            let moved = deliver(a, b) | deliver(b, a);
            if !moved {
                return;
            }
        }
    }

    #[test]
    fn the_generation_moves_with_members_and_records_only() {
        let (mut a, mut b) = (member("a"), member("b"));
        let start = a.generation();
        a.join(from("b")).unwrap();
        exchange(&mut a, &mut b);
        assert!(a
            .members()
            .iter()
            .any(|(id, info)| &*id.host == "b" && info.is_some()));
        let joined = a.generation();
        assert!(joined > start, "a new member and its record change it");

        a.handle_tick();
        exchange(&mut a, &mut b);
        assert_eq!(a.generation(), joined, "nothing new, same generation");

        b.update_info(5, |i| i.load_pct = 70).unwrap();
        // As when a asks for the record (the answer is direct).
        b.handle_data(&from("a"), &[KIND_INFO_REQUEST]).unwrap();
        exchange(&mut a, &mut b);
        assert!(a
            .members()
            .iter()
            .any(|(_, i)| i.as_ref().is_some_and(|i| i.load_pct == 70)));
        assert!(a.generation() > joined, "a newer record changes it");
    }

    /// a's next probe timers after draining its output (datagrams to b
    /// are delivered): the probe, and the wait for its direct ack with
    /// the timer that ends it.
    type ProbeTimers = (Duration, Duration, Timer<MemberId>, Timer<MemberId>);
    fn probe_timers(a: &mut CellMembership, b: &mut CellMembership) -> ProbeTimers {
        let (mut probe, mut ack_wait) = (None, None);
        let mut out = Vec::new();
        a.drain(&mut out);
        for o in out {
            match o {
                Output::Send { data, .. } => b.handle_data(&from("a"), &data).unwrap(),
                Output::Timer { after, timer } => match timer {
                    Timer::ProbeRandomMember(_) => probe = Some((after, timer)),
                    Timer::SendIndirectProbe { .. } => ack_wait = Some((after, timer)),
                    _ => {}
                },
                _ => {}
            }
        }
        let (probe_after, probe) = probe.expect("a probe scheduled");
        let (wait, ack_timer) = ack_wait.expect("an ack wait scheduled");
        (probe_after, wait, probe, ack_timer)
    }

    #[test]
    fn a_busy_member_probes_less_often_and_waits_longer_for_acks() {
        let (mut a, mut b) = (member("a"), member("b"));
        let (period, rtt) = (a.config.probe_period, a.config.probe_rtt);
        a.join(from("b")).unwrap();
        // Until a is in: its first probe timer comes with the join.
        let mut probe = None;
        for _ in 0..20 {
            let mut out = Vec::new();
            a.drain(&mut out);
            for o in out {
                match o {
                    Output::Send { data, .. } => b.handle_data(&from("a"), &data).unwrap(),
                    Output::Timer {
                        timer: timer @ Timer::ProbeRandomMember(_),
                        ..
                    } => probe = Some(timer),
                    _ => {}
                }
            }
            let mut out = Vec::new();
            b.drain(&mut out);
            for o in out {
                if let Output::Send { data, .. } = o {
                    a.handle_data(&from("b"), &data).unwrap();
                }
            }
        }
        let mut timer = probe.expect("a probes once it has joined");
        // Punctual: the configured probe period and ack wait.
        a.handle_timer(timer, Duration::ZERO).unwrap();
        let (after, wait, next, ack_timer) = probe_timers(&mut a, &mut b);
        assert_eq!((after, wait), (period, rtt));
        a.handle_timer(ack_timer, Duration::ZERO).unwrap();
        timer = next;
        // Each late probe raises the score by one and stretches both.
        for score in 1..=3u32 {
            a.handle_timer(timer, Duration::from_secs(1)).unwrap();
            assert_eq!(u32::from(a.local_health()), score);
            let (after, wait, next, ack_timer) = probe_timers(&mut a, &mut b);
            assert_eq!(after, period * (1 + score));
            assert_eq!(wait, rtt * (1 + score));
            a.handle_timer(ack_timer, Duration::ZERO).unwrap();
            timer = next;
        }
    }
}
