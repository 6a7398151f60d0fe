//! A simulated network for many mesh members in one process: simulated
//! time, per-message latency and loss, partitions and kills, and byte
//! counters per member. It drives the same sans-I/O state machines that
//! production runs, deterministically from a seed.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use foca::Timer;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use starling_mesh::membership::{CellMembership, MemberId, MemberInfo, Output};

use crate::event_queue::EventQueue;

/// How often each member runs its catch-up tick.
const TICK: Duration = Duration::from_secs(5);

enum Event {
    Tick {
        member: usize,
    },
    Deliver {
        from: usize,
        to: usize,
        data: Bytes,
    },
    Timer {
        member: usize,
        timer: Timer<MemberId>,
    },
}

/// A member of the simulation.
struct SimMember {
    id: MemberId,
    state: CellMembership,
    alive: bool,
    /// A busy member reads each message this long after it arrives and
    /// runs its timers a tenth of it late (see [`SimNet::make_busy`]).
    backlog: Duration,
    bytes_in: u64,
    bytes_out: u64,
    /// Its uplink is in a loss burst.
    in_burst: bool,
    /// The cell size it was told to expect (kept for a restart).
    expected_size: u32,
}

/// What a simulated member says about itself, as large as what a daemon
/// says: a PeerId of an Ed25519 key (38 bytes: the identity multihash of
/// the protobuf-encoded key, the key drawn from the host's name), one QUIC
/// multiaddr in the 10/8 network, and a relay address. With bare host
/// names, as before, a simulated membership message weighed a fraction of
/// a real one, and bytes per host could not be set beside the real
/// stack's.
pub struct WireSized {
    pub id: MemberId,
    /// The advertised multiaddr, as the record carries it.
    pub advertise: String,
    /// host:port of the relay, as an eligible member's record carries it.
    pub relay: String,
}

impl WireSized {
    /// The identity and addresses of `host`, the same every time.
    pub fn of(host: &str) -> Self {
        let h = host.bytes().fold(mix(0x5157), |h, b| mix(h ^ u64::from(b)));
        // An Ed25519 PeerId: multihash "identity" (0x00), length 36, then
        // the protobuf public key: type Ed25519 (0x08 0x01), bytes (0x12,
        // length 32).
        let mut peer = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
        for i in 0..4 {
            peer.extend_from_slice(&mix(h ^ i).to_le_bytes());
        }
        let [a, b, c, ..] = h.to_le_bytes();
        let ip = format!("10.{a}.{b}.{c}");
        let advertise = format!("/ip4/{ip}/udp/7401/quic-v1");
        let addr = advertise
            .parse::<starling_mesh::Multiaddr>()
            .map(|m| m.to_vec())
            .unwrap_or_default();
        Self {
            id: MemberId::new(host, peer, addr, 0),
            advertise,
            relay: format!("{ip}:7402"),
        }
    }
}

/// A member-down notification: when, who noticed, whom (and which of its
/// lives: a restarted host rejoins with a higher bump).
#[derive(Debug, Clone)]
pub struct DownEvent {
    pub at: Duration,
    pub observer: String,
    pub member: String,
    pub bump: u16,
}

/// Bursty loss on each member's uplink (Gilbert-Elliott): a link in its
/// good state loses nothing beyond the network's independent loss, enters
/// a burst with probability `enter` per message, and in a burst loses each
/// message with probability `loss` until it leaves with probability `leave`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BurstLoss {
    pub enter: f64,
    pub leave: f64,
    pub loss: f64,
}

/// The simulated network.
pub struct SimNet {
    now: Duration,
    /// Events, each with how long a busy member held it back.
    queue: EventQueue<(Event, Duration)>,
    members: Vec<SimMember>,
    by_host: HashMap<String, usize>,
    rng: SmallRng,
    latency: Duration,
    /// Each message takes up to this fraction more than `latency`.
    jitter: f64,
    loss: f64,
    /// Members on the far side of a partition (None: no partition).
    partition: Option<HashSet<usize>>,
    burst: Option<BurstLoss>,
    /// Every member-down notification so far.
    pub downs: Vec<DownEvent>,
    out: Vec<Output>,
    /// A hash of every event handled, in order (see [`Self::trace_hash`]).
    trace: u64,
    /// Bytes sent by all members so far.
    bytes_sent: u64,
}

impl SimNet {
    /// An empty network with one-way `latency` and no loss.
    pub fn new(seed: u64, latency: Duration) -> Self {
        Self {
            now: Duration::ZERO,
            queue: EventQueue::default(),
            members: Vec::new(),
            by_host: HashMap::new(),
            rng: SmallRng::seed_from_u64(seed),
            latency,
            jitter: 0.5,
            loss: 0.0,
            partition: None,
            burst: None,
            downs: Vec::new(),
            out: Vec::new(),
            trace: 0,
            bytes_sent: 0,
        }
    }

    /// Simulated time since start.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Each message takes up to this fraction more than the base latency,
    /// uniformly (0.5 unless set).
    pub fn set_jitter(&mut self, jitter: f64) {
        self.jitter = jitter.max(0.0);
    }

    /// Probability that a message is lost.
    pub fn set_loss(&mut self, loss: f64) {
        self.loss = loss.clamp(0.0, 1.0);
    }

    /// Adds bursty loss on every member's uplink, on top of [`Self::set_loss`].
    pub fn set_burst_loss(&mut self, burst: Option<BurstLoss>) {
        self.burst = burst;
    }

    /// Adds a member that joins through the first live member (if any).
    pub fn add_member(&mut self, host: &str, eligible: bool, expected_size: u32) -> usize {
        let state = self.new_state(WireSized::of(host).id, eligible, expected_size);
        let index = self.members.len();
        self.members.push(SimMember {
            id: state.0,
            state: state.1,
            alive: true,
            backlog: Duration::ZERO,
            bytes_in: 0,
            bytes_out: 0,
            in_burst: false,
            expected_size,
        });
        self.by_host.insert(host.to_owned(), index);
        self.start(index);
        index
    }

    /// Restarts a member killed by [`Self::kill_member`] as a fresh process
    /// would: empty state, the next bump of its identity, joining again
    /// through a live member.
    pub fn restart_member(&mut self, index: usize) {
        let Some(member) = self.members.get(index) else {
            return;
        };
        if member.alive {
            return;
        }
        let Some(id) = foca::Identity::renew(&member.id) else {
            return;
        };
        let (eligible, expected) = (member.state.own().eligible, member.expected_size);
        let (id, state) = self.new_state(id, eligible, expected);
        let member = &mut self.members[index];
        member.id = id;
        member.state = state;
        member.alive = true;
        self.start(index);
    }

    fn new_state(
        &mut self,
        id: MemberId,
        eligible: bool,
        expected_size: u32,
    ) -> (MemberId, CellMembership) {
        let host = id.host.to_string();
        let wire = WireSized::of(&host);
        let info = MemberInfo {
            host,
            version: 1,
            eligible,
            aggregator: false,
            load_pct: 0,
            capacity: 500,
            attached: 0,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            tags: Vec::new(),
            addrs: vec![wire.advertise],
            relay: if eligible { wire.relay } else { String::new() },
        };
        let seed = self.rng.random::<u64>();
        let state = CellMembership::new(id.clone(), info, expected_size, seed)
            .expect("valid simulated member");
        (id, state)
    }

    /// Joins member `index` through the first live member (a seed every
    /// member knows), and starts its ticks.
    fn start(&mut self, index: usize) {
        let via = (0..self.members.len()).find(|&i| i != index && self.members[i].alive);
        if let Some(via) = via {
            let via = self.members[via].id.clone();
            let _ = self.members[index].state.join(via);
        }
        self.flush(index);
        self.schedule(TICK, Event::Tick { member: index });
    }

    fn schedule(&mut self, after: Duration, event: Event) {
        self.queue.push(self.now + after, (event, Duration::ZERO));
    }

    /// Makes a member busy, as a host whose CPU is saturated: it reads
    /// each message `backlog` after it arrives (its receive queue is that
    /// far behind) and runs its timers a tenth of it late, which it can
    /// notice. Zero makes it healthy again.
    pub fn make_busy(&mut self, host: &str, backlog: Duration) {
        if let Some(&i) = self.by_host.get(host) {
            self.members[i].backlog = backlog;
        }
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        match &self.partition {
            Some(side) => side.contains(&a) == side.contains(&b),
            None => true,
        }
    }

    /// Carries out everything member `index` asked for.
    fn flush(&mut self, index: usize) {
        let mut out = std::mem::take(&mut self.out);
        self.members[index].state.drain(&mut out);
        for o in out.drain(..) {
            match o {
                Output::Send { to, data } => {
                    self.members[index].bytes_out += data.len() as u64;
                    self.bytes_sent += data.len() as u64;
                    let Some(&dest) = self.by_host.get(&*to.host) else {
                        continue;
                    };
                    let lost = self.lost(index);
                    if !lost && self.reachable(index, dest) {
                        let jitter = self.latency.mul_f64(self.rng.random::<f64>() * self.jitter);
                        self.schedule(
                            self.latency + jitter,
                            Event::Deliver {
                                from: index,
                                to: dest,
                                data,
                            },
                        );
                    }
                }
                Output::Timer { after, timer } => {
                    self.schedule(
                        after,
                        Event::Timer {
                            member: index,
                            timer,
                        },
                    );
                }
                Output::Down(id) => self.downs.push(DownEvent {
                    at: self.now,
                    observer: self.members[index].id.host.to_string(),
                    member: id.host.to_string(),
                    bump: id.bump,
                }),
                Output::Up(_) => {}
            }
        }
        self.out = out;
    }

    /// Whether a message member `from` sends now is lost.
    fn lost(&mut self, from: usize) -> bool {
        if let Some(burst) = self.burst {
            let member = &mut self.members[from];
            let flip = if member.in_burst {
                burst.leave
            } else {
                burst.enter
            };
            if self.rng.random::<f64>() < flip {
                member.in_burst = !member.in_burst;
            }
            if self.members[from].in_burst && self.rng.random::<f64>() < burst.loss {
                return true;
            }
        }
        self.loss > 0.0 && self.rng.random::<f64>() < self.loss
    }

    /// Runs the simulation for `duration` of simulated time.
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        while let Some((at, (event, held))) = self.queue.pop_until(end) {
            self.now = at;
            let target = match &event {
                Event::Deliver { to, .. } => *to,
                Event::Tick { member } | Event::Timer { member, .. } => *member,
            };
            let backlog = self.members[target].backlog;
            if held.is_zero() && !backlog.is_zero() {
                let hold = match event {
                    Event::Deliver { .. } => backlog,
                    _ => backlog / 10,
                };
                self.queue.push(self.now + hold, (event, hold));
                continue;
            }
            let late = held;
            self.trace = trace_step(self.trace, at, &event);
            match event {
                Event::Deliver { from, to, data } => {
                    if !self.members[to].alive {
                        continue;
                    }
                    self.members[to].bytes_in += data.len() as u64;
                    let sender = self.members[from].id.clone();
                    // Hostile or stale input is an error for that message only.
                    let _ = self.members[to].state.handle_data(&sender, &data);
                    self.flush(to);
                }
                Event::Tick { member } => {
                    if !self.members[member].alive {
                        continue;
                    }
                    self.members[member].state.handle_tick();
                    self.flush(member);
                    self.schedule(TICK, Event::Tick { member });
                }
                Event::Timer { member, timer } => {
                    if !self.members[member].alive {
                        continue;
                    }
                    let _ = self.members[member].state.handle_timer(timer, late);
                    self.flush(member);
                }
            }
        }
        self.now = end;
    }

    /// Stops a member dead: it sends and receives nothing more.
    pub fn kill(&mut self, host: &str) {
        if let Some(&i) = self.by_host.get(host) {
            self.kill_member(i);
        }
    }

    /// [`Self::kill`] by index.
    pub fn kill_member(&mut self, index: usize) {
        if let Some(m) = self.members.get_mut(index) {
            m.alive = false;
        }
    }

    /// Number of members, dead or alive (indices run below it).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the network has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether member `index` runs.
    pub fn is_alive(&self, index: usize) -> bool {
        self.members.get(index).is_some_and(|m| m.alive)
    }

    /// The current identity of member `index`.
    pub fn id_of(&self, index: usize) -> Option<&MemberId> {
        self.members.get(index).map(|m| &m.id)
    }

    /// The membership state of member `index`, to query or update; call
    /// [`Self::flush_member`] after an update.
    pub fn member_at(&mut self, index: usize) -> Option<&mut CellMembership> {
        self.members.get_mut(index).map(|m| &mut m.state)
    }

    /// Read-only [`Self::member_at`].
    pub fn member_ref(&self, index: usize) -> Option<&CellMembership> {
        self.members.get(index).map(|m| &m.state)
    }

    /// Carries out what member `index` asked for after an update.
    pub fn flush_member(&mut self, index: usize) {
        if index < self.members.len() {
            self.flush(index);
        }
    }

    /// Index of the member on `host`.
    pub fn index_of(&self, host: &str) -> Option<usize> {
        self.by_host.get(host).copied()
    }

    /// Makes member `index` busy (see [`Self::make_busy`]).
    pub fn make_member_busy(&mut self, index: usize, backlog: Duration) {
        if let Some(m) = self.members.get_mut(index) {
            m.backlog = backlog;
        }
    }

    /// Splits the network by index: members for which `far` is true talk
    /// only among themselves.
    pub fn partition_by(&mut self, far: impl Fn(usize) -> bool) {
        self.partition = Some((0..self.members.len()).filter(|&i| far(i)).collect());
    }

    /// A hash of every event this network handled, in order, with its
    /// time: two runs that did the same thing have the same hash.
    pub fn trace_hash(&self) -> u64 {
        self.trace
    }

    /// Bytes all members have sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Splits the network: `side` can talk only among itself.
    pub fn partition(&mut self, side: &[&str]) {
        self.partition = Some(
            side.iter()
                .filter_map(|h| self.by_host.get(*h).copied())
                .collect(),
        );
    }

    /// Heals any partition.
    pub fn heal(&mut self) {
        self.partition = None;
    }

    /// Hosts that `host` currently sees alive (itself excluded).
    pub fn view(&self, host: &str) -> Vec<String> {
        let Some(&i) = self.by_host.get(host) else {
            return Vec::new();
        };
        let mut v: Vec<String> = self.members[i]
            .state
            .members()
            .into_iter()
            .map(|(id, _)| id.host.to_string())
            .collect();
        v.sort();
        v
    }

    /// Live members' hosts.
    pub fn live_hosts(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.alive)
            .map(|m| m.id.host.to_string())
            .collect()
    }

    /// The membership state of a member, to query or update.
    pub fn member(&mut self, host: &str) -> Option<&mut CellMembership> {
        let i = *self.by_host.get(host)?;
        Some(&mut self.members[i].state)
    }

    /// Applies pending outputs of a member changed through [`Self::member`].
    pub fn flush_host(&mut self, host: &str) {
        if let Some(&i) = self.by_host.get(host) {
            self.flush(i);
        }
    }

    /// The info record `observer` holds about `about`.
    pub fn info_seen_by(&self, observer: &str, about: &str) -> Option<MemberInfo> {
        let &i = self.by_host.get(observer)?;
        self.members[i]
            .state
            .members()
            .into_iter()
            .find(|(id, _)| *id.host == *about)
            .and_then(|(_, info)| info)
    }

    /// The election input as `host` sees its cell.
    pub fn election_view(&self, host: &str) -> Vec<starling_mesh::election::Member> {
        self.by_host
            .get(host)
            .map(|&i| self.members[i].state.election_view())
            .unwrap_or_default()
    }

    /// Bytes a member has received and sent so far.
    pub fn traffic(&self, host: &str) -> (u64, u64) {
        self.by_host
            .get(host)
            .map(|&i| (self.members[i].bytes_in, self.members[i].bytes_out))
            .unwrap_or((0, 0))
    }
}

/// One step of the trace hash: the event's time, kind, members and size.
fn trace_step(trace: u64, at: Duration, event: &Event) -> u64 {
    let (kind, a, b, len) = match event {
        Event::Tick { member } => (1u64, *member, 0, 0),
        Event::Deliver { from, to, data } => (2, *from, *to, data.len()),
        Event::Timer { member, .. } => (3, *member, 0, 0),
    };
    let mut h = trace;
    for word in [at.as_nanos() as u64, kind, a as u64, b as u64, len as u64] {
        h = mix(h ^ word);
    }
    h
}

/// splitmix64's finaliser: every input bit moves every output bit.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
