//! A fleet of task planes in virtual time: how fast a task reaches every
//! host, and what it costs, for fleets far larger than this machine holds
//! as real members (docs/tasks.md, "Simulated dissemination").
//!
//! Every host runs the production `TaskPlane` (each copy is checked, its
//! signature verified, and applied) and the production anti-entropy
//! exchange (`starling_task::sync`). What carries them is modelled:
//!
//! - **Connections**, as the mesh keeps them: every member of the host's
//!   cell, and `cross_links` members of other cells that the host dialled
//!   (plus those that dialled it).
//! - **Gossipsub**, as rust-libp2p runs it with the mesh's settings (a
//!   model, not the crate: libp2p's behaviour cannot run in virtual
//!   time). The publisher sends to every connected peer (flood publish); a
//!   host forwards a copy it accepted to its mesh peers (each host grafts
//!   [`MESH_N`] connected peers, and takes grafts up to [`MESH_N_HIGH`]);
//!   a duplicate or a refusal is not forwarded; every heartbeat (1 s) a
//!   host that received messages in the last [`HISTORY_GOSSIP`] heartbeats
//!   announces their ids (IHAVE) to `max(6, a quarter)` of its other
//!   peers, which ask (IWANT) for what they lack.
//! - **Links**: a fixed one-way latency and independent loss of each
//!   message. Hosts take no time to process a message.
//!
//! Bytes are counted by kind: gossip copies (the task and an estimated
//! gossipsub envelope), IHAVE and IWANT (estimated sizes), anti-entropy
//! (as the node's `starling_task_sync_bytes_total` counts them).

use std::collections::BTreeSet;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use starling_proto::v1::config_setting::Setting;
use starling_proto::v1::task_payload::Body;
use starling_proto::v1::{
    ConfigSetting, FleetConfig, SensorKindSwitch, TargetSelector, TaskPayload,
};
use starling_task::root::new_root;
use starling_task::sign::{sign_root, sign_task, unsigned_root, unsigned_task};
use starling_task::sync::{self, SyncRequest, SyncResponse};
use starling_task::{Ledger, OperatorKeyPair, Received, TaskPlane, TrustedRoot};

use crate::event_queue::EventQueue;

/// Mesh peers a host grafts (gossipsub's `mesh_n`).
pub const MESH_N: usize = 6;
/// Most mesh peers a host keeps (gossipsub's `mesh_n_high`).
pub const MESH_N_HIGH: usize = 12;
/// Least peers a heartbeat's IHAVE goes to (gossipsub's `gossip_lazy`).
pub const GOSSIP_LAZY: usize = 6;
/// Share of non-mesh peers a heartbeat's IHAVE goes to
/// (gossipsub's `gossip_factor`).
pub const GOSSIP_FACTOR: f64 = 0.25;
/// Heartbeats a message is announced for (`history_gossip`).
pub const HISTORY_GOSSIP: u8 = 3;
/// Heartbeats a message is kept to answer IWANT (`history_length`).
pub const HISTORY_LENGTH: u8 = 5;
/// Gossipsub's heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Estimated gossipsub envelope around a task: the origin's peer id,
/// sequence number, topic and signature, and framing.
pub const GOSSIP_ENVELOPE_BYTES: u64 = 150;
/// Estimated size of a message id in IHAVE and IWANT (peer id and
/// sequence number).
pub const MESSAGE_ID_BYTES: u64 = 46;
/// Estimated fixed part of an IHAVE or IWANT (topic, framing).
pub const CONTROL_BYTES: u64 = 24;
/// An anti-entropy request unanswered this long has failed
/// (the mesh's `TASK_SYNC_TIMEOUT`).
pub const SYNC_TIMEOUT: Duration = starling_mesh::swarm::TASK_SYNC_TIMEOUT;
/// Anti-entropy requests a host keeps open at once (the mesh's
/// `MAX_TASK_SYNCS_IN_FLIGHT`).
pub const MAX_SYNCS_IN_FLIGHT: u32 = starling_mesh::swarm::MAX_TASK_SYNCS_IN_FLIGHT as u32;

/// A simulated fleet's trust root and the task its operator publishes:
/// one live setting changed on every host (the common case), signed by
/// the root's one operator key.
pub struct SampleTask {
    /// The fleet's signed trust root, valid for 30 days from `epoch`.
    pub signed_root: Vec<u8>,
    /// The signed task.
    pub signed_task: Vec<u8>,
}

impl SampleTask {
    /// The root and task of fleet "sim" at Unix time `epoch`.
    pub fn new(epoch: u64) -> anyhow::Result<Self> {
        let key = OperatorKeyPair::from_seed([1; 32]);
        let root = new_root(
            "sim",
            1,
            epoch + 30 * 86_400,
            &[(key.public_key(), "operator".into())],
            1,
            1,
        )
        .map_err(anyhow::Error::msg)?;
        let signed_root = sign_root(&unsigned_root(&root), &key)?;
        let payload = TaskPayload {
            fleet: "sim".into(),
            task_id: "dns-off".into(),
            not_before: epoch.saturating_sub(60),
            not_after: epoch + 7 * 86_400,
            target: Some(TargetSelector {
                all: true,
                ..Default::default()
            }),
            reason: "turn the DNS collector off fleet-wide".into(),
            rollout: None,
            body: Some(Body::Config(FleetConfig {
                settings: vec![ConfigSetting {
                    generation: 1,
                    reset: false,
                    setting: Some(Setting::SensorKind(SensorKindSwitch {
                        kind: "dns_query".into(),
                        enabled: false,
                    })),
                }],
            })),
        };
        let signed_task = sign_task(&unsigned_task(&payload), &key)?;
        Ok(Self {
            signed_root,
            signed_task,
        })
    }
}

/// The simulated fleet's shape.
#[derive(Debug, Clone)]
pub struct SpreadConfig {
    /// Hosts in the fleet.
    pub hosts: usize,
    /// Members per cell.
    pub cell_size: usize,
    /// Members of other cells each host dials.
    pub cross_links: usize,
    /// One-way latency of every link.
    pub latency: Duration,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Anti-entropy period (each exchange spread over [0.5, 1.5) of it).
    pub sync_interval: Duration,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for SpreadConfig {
    fn default() -> Self {
        Self {
            hosts: 1000,
            cell_size: 50,
            cross_links: 2,
            latency: Duration::from_millis(50),
            loss: 0.0,
            sync_interval: Duration::from_secs(10),
            seed: 1,
        }
    }
}

/// Bytes sent, by what carried them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpreadBytes {
    /// Gossip copies (eager push, flood publish, IWANT answers).
    pub gossip: u64,
    /// IHAVE and IWANT.
    pub gossip_control: u64,
    /// Anti-entropy requests and answers.
    pub sync: u64,
}

impl SpreadBytes {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.gossip + self.gossip_control + self.sync
    }
}

/// Messages that carry one task copy by gossip, by index in the fleet's
/// store of published tasks.
type MessageId = u32;

enum Event {
    Gossip {
        to: u32,
        from: u32,
        message: MessageId,
    },
    IHave {
        to: u32,
        from: u32,
        messages: Vec<MessageId>,
    },
    IWant {
        to: u32,
        from: u32,
        messages: Vec<MessageId>,
    },
    Heartbeat {
        host: u32,
    },
    SyncTick {
        host: u32,
    },
    SyncRequest {
        to: u32,
        from: u32,
        request: SyncRequest,
    },
    SyncResponse {
        to: u32,
        from: u32,
        response: SyncResponse,
    },
    SyncTimedOut {
        host: u32,
    },
}

struct Host {
    plane: TaskPlane,
    /// Connected members of other cells.
    cross: Vec<u32>,
    /// Gossipsub mesh peers.
    mesh: Vec<u32>,
    /// Gossip messages seen (gossipsub's seen cache).
    seen: Vec<MessageId>,
    /// Messages in the message cache, with the heartbeats they have left.
    history: Vec<(MessageId, u8)>,
    heartbeat_scheduled: bool,
    /// When in each second this host's heartbeat runs.
    phase: Duration,
    syncs_in_flight: u32,
    online: bool,
}

/// A fleet of task planes on a simulated network.
pub struct TaskSpread {
    config: SpreadConfig,
    now: Duration,
    /// Unix time at virtual time zero (what validity windows are read
    /// against).
    epoch: u64,
    queue: EventQueue<Event>,
    hosts: Vec<Host>,
    rng: SmallRng,
    /// Published tasks.
    messages: Vec<Vec<u8>>,
    /// When each host first held each task (`[message][host]`).
    held_at: Vec<Vec<Option<Duration>>>,
    /// When each task was published.
    published_at: Vec<Duration>,
    bytes: SpreadBytes,
    /// Copies refused, and duplicates received by gossip.
    refused: u64,
    duplicates: u64,
    trace: u64,
}

impl TaskSpread {
    /// A fleet of `config.hosts` hosts holding `root` (a signed root) at
    /// Unix time `epoch`, connected and meshed, anti-entropy running.
    pub fn new(config: SpreadConfig, signed_root: &[u8], epoch: u64) -> anyhow::Result<Self> {
        anyhow::ensure!(config.cell_size >= 2, "cells need at least 2 members");
        anyhow::ensure!(config.hosts >= 2, "a fleet needs at least 2 hosts");
        let root = TrustedRoot::install(signed_root, epoch)
            .map_err(|e| anyhow::anyhow!("the root: {e}"))?;
        let mut rng = SmallRng::seed_from_u64(config.seed);
        let n = config.hosts;
        let mut hosts: Vec<Host> = (0..n)
            .map(|i| {
                let mut plane = TaskPlane::new(
                    root.clone(),
                    Ledger::default(),
                    &host_name(i),
                    BTreeSet::new(),
                );
                plane.set_cell(&format!("cell-{}", i / config.cell_size));
                Host {
                    plane,
                    cross: Vec::new(),
                    mesh: Vec::new(),
                    seen: Vec::new(),
                    history: Vec::new(),
                    heartbeat_scheduled: false,
                    phase: Duration::from_micros(rng.random_range(0..1_000_000)),
                    syncs_in_flight: 0,
                    online: true,
                }
            })
            .collect();
        // Links across cells, both ways.
        if n > config.cell_size {
            for i in 0..n {
                for _ in 0..config.cross_links {
                    let j = loop {
                        let j = rng.random_range(0..n);
                        if j / config.cell_size != i / config.cell_size {
                            break j;
                        }
                    };
                    if !hosts[i].cross.contains(&(j as u32)) {
                        hosts[i].cross.push(j as u32);
                        hosts[j].cross.push(i as u32);
                    }
                }
            }
        }
        let mut spread = Self {
            config,
            now: Duration::ZERO,
            epoch,
            queue: EventQueue::default(),
            hosts,
            rng,
            messages: Vec::new(),
            held_at: Vec::new(),
            published_at: Vec::new(),
            bytes: SpreadBytes::default(),
            refused: 0,
            duplicates: 0,
            trace: 0xcbf2_9ce4_8422_2325,
        };
        // Gossipsub meshes: each host grafts peers until it has MESH_N;
        // a peer takes a graft while it has fewer than MESH_N_HIGH.
        for i in 0..n as u32 {
            let mut tries = 0;
            while spread.hosts[i as usize].mesh.len() < MESH_N && tries < 64 {
                tries += 1;
                let j = spread.random_peer(i);
                let (a, b) = (&spread.hosts[i as usize], &spread.hosts[j as usize]);
                if a.mesh.contains(&j) || b.mesh.len() >= MESH_N_HIGH {
                    continue;
                }
                spread.hosts[i as usize].mesh.push(j);
                spread.hosts[j as usize].mesh.push(i);
            }
        }
        for i in 0..n as u32 {
            let first = spread
                .config
                .sync_interval
                .mul_f64(spread.rng.random_range(0.0..1.0));
            spread.schedule(first, Event::SyncTick { host: i });
        }
        Ok(spread)
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Bytes sent so far, by kind.
    pub fn bytes(&self) -> SpreadBytes {
        self.bytes
    }

    /// Copies refused, and gossip copies that arrived at a host that had
    /// seen them.
    pub fn refused_and_duplicates(&self) -> (u64, u64) {
        (self.refused, self.duplicates)
    }

    /// A hash of every (time, host, task) at which a host first held a
    /// task: the same scenario and seed give the same hash.
    pub fn trace_hash(&self) -> u64 {
        self.trace
    }

    /// Hands `signed` to `host`, as an operator would, and gossips it.
    /// Returns the task's index for [`Self::held_by`] and
    /// [`Self::time_to_share`].
    pub fn publish(&mut self, host: usize, signed: Vec<u8>) -> usize {
        let message = self.messages.len() as MessageId;
        self.messages.push(signed);
        self.held_at.push(vec![None; self.hosts.len()]);
        self.published_at.push(self.now);
        let h = host as u32;
        self.hosts[host].seen.push(message);
        if self.take(h, message) {
            // Flood publish: every connected peer.
            for peer in self.connected(h) {
                self.send_gossip(h, peer, message);
            }
        }
        message as usize
    }

    /// A hostile `host` sends `signed` to every peer it is connected to,
    /// unchecked (it does not take it itself). Returns the copy's index.
    pub fn inject(&mut self, host: usize, signed: Vec<u8>) -> usize {
        let message = self.messages.len() as MessageId;
        self.messages.push(signed);
        self.held_at.push(vec![None; self.hosts.len()]);
        self.published_at.push(self.now);
        for peer in self.connected(host as u32) {
            self.send_gossip(host as u32, peer, message);
        }
        message as usize
    }

    /// Takes `host` off the network: it drops what arrives and starts
    /// nothing.
    pub fn take_offline(&mut self, host: usize) {
        self.hosts[host].online = false;
    }

    /// Brings `host` back as it was, with an anti-entropy exchange at once
    /// (as a restarted member asks as soon as it has a peer).
    pub fn bring_online(&mut self, host: usize) {
        self.hosts[host].online = true;
        self.hosts[host].syncs_in_flight = 0;
        self.schedule(Duration::ZERO, Event::SyncTick { host: host as u32 });
    }

    /// How many hosts hold task `task`.
    pub fn held_by(&self, task: usize) -> usize {
        self.held_at[task].iter().filter(|t| t.is_some()).count()
    }

    /// When (virtual time) `host` first held `task`.
    pub fn held_at(&self, task: usize, host: usize) -> Option<Duration> {
        self.held_at[task][host]
    }

    /// How many peers `host` is connected to.
    pub fn peers_of(&self, host: usize) -> usize {
        self.connected(host as u32).len()
    }

    /// Time from publication until `share` (0 to 1] of the hosts held
    /// `task`, if they have.
    pub fn time_to_share(&self, task: usize, share: f64) -> Option<Duration> {
        let mut times: Vec<Duration> = self.held_at[task].iter().flatten().copied().collect();
        times.sort();
        let needed = ((share * self.hosts.len() as f64).ceil() as usize).max(1);
        times.get(needed - 1).map(|t| *t - self.published_at[task])
    }

    /// Runs the network for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration;
        while let Some((at, event)) = self.queue.pop_until(until) {
            self.now = at;
            self.handle(event);
        }
        self.now = until;
    }

    /// Runs until every host holds every task or `limit` passes; whether
    /// they all do.
    pub fn run_until_all_hold(&mut self, limit: Duration) -> bool {
        let deadline = self.now + limit;
        let step = Duration::from_millis(100);
        while self.now < deadline {
            if (0..self.messages.len()).all(|t| self.held_by(t) == self.hosts.len()) {
                return true;
            }
            self.run_for(step);
        }
        (0..self.messages.len()).all(|t| self.held_by(t) == self.hosts.len())
    }

    fn unix_now(&self) -> u64 {
        self.epoch + self.now.as_secs()
    }

    fn schedule(&mut self, after: Duration, event: Event) {
        self.queue.push(self.now + after, event);
    }

    /// Sends over a link: lost with the configured probability, else
    /// delivered after the latency.
    fn send(&mut self, event: Event) -> bool {
        if self.config.loss > 0.0 && self.rng.random_bool(self.config.loss) {
            return false;
        }
        self.schedule(self.config.latency, event);
        true
    }

    fn send_gossip(&mut self, from: u32, to: u32, message: MessageId) {
        self.bytes.gossip += self.messages[message as usize].len() as u64 + GOSSIP_ENVELOPE_BYTES;
        self.send(Event::Gossip { to, from, message });
    }

    fn cell_of(&self, host: u32) -> std::ops::Range<u32> {
        let size = self.config.cell_size as u32;
        let start = host / size * size;
        start..(start + size).min(self.hosts.len() as u32)
    }

    /// Every peer `host` is connected to.
    fn connected(&self, host: u32) -> Vec<u32> {
        self.cell_of(host)
            .filter(|&p| p != host)
            .chain(self.hosts[host as usize].cross.iter().copied())
            .collect()
    }

    fn random_peer(&mut self, host: u32) -> u32 {
        let cell = self.cell_of(host);
        let in_cell = cell.len() as u32 - 1;
        let cross = self.hosts[host as usize].cross.len() as u32;
        let pick = self.rng.random_range(0..in_cell + cross);
        if pick < in_cell {
            let p = cell.start + pick;
            if p >= host {
                p + 1
            } else {
                p
            }
        } else {
            self.hosts[host as usize].cross[(pick - in_cell) as usize]
        }
    }

    /// A copy of `message` reached `host` (from a peer, or from the
    /// operator): checked and applied by the task plane. Whether it was
    /// new and valid (then gossip relays it).
    fn take(&mut self, host: u32, message: MessageId) -> bool {
        let signed = &self.messages[message as usize];
        let now = self.unix_now();
        let accepted = self.take_copy(host, &signed.clone(), now);
        if accepted {
            let h = &mut self.hosts[host as usize];
            h.history.push((message, HISTORY_LENGTH));
            if !h.heartbeat_scheduled {
                h.heartbeat_scheduled = true;
                let phase = h.phase;
                let into_second =
                    Duration::from_nanos((self.now.as_nanos() % HEARTBEAT.as_nanos()) as u64);
                let wait = if phase > into_second {
                    phase - into_second
                } else {
                    HEARTBEAT - into_second + phase
                };
                self.schedule(wait, Event::Heartbeat { host });
            }
        }
        accepted
    }

    /// The task plane's verdict on one copy, and the bookkeeping of when
    /// the host first held it.
    fn take_copy(&mut self, host: u32, signed: &[u8], now: u64) -> bool {
        let plane = &mut self.hosts[host as usize].plane;
        match plane.receive(signed, now) {
            Received::Accepted { task, apply } => {
                if apply {
                    plane.applied(&task, now);
                }
                if let Some(index) = self.messages.iter().position(|m| m == signed) {
                    if self.held_at[index][host as usize].is_none() {
                        self.held_at[index][host as usize] = Some(self.now);
                        self.trace = fnv(self.trace, self.now.as_nanos() as u64);
                        self.trace = fnv(self.trace, u64::from(host));
                        self.trace = fnv(self.trace, index as u64);
                    }
                }
                true
            }
            Received::Duplicate => false,
            Received::Refused(_) => {
                self.refused += 1;
                false
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Gossip { to, from, message } => {
                if !self.hosts[to as usize].online {
                    return;
                }
                if self.hosts[to as usize].seen.contains(&message) {
                    self.duplicates += 1;
                    return;
                }
                self.hosts[to as usize].seen.push(message);
                if self.take(to, message) {
                    let mesh = self.hosts[to as usize].mesh.clone();
                    for peer in mesh.into_iter().filter(|&p| p != from) {
                        self.send_gossip(to, peer, message);
                    }
                }
            }
            Event::Heartbeat { host } => self.heartbeat(host),
            Event::IHave { to, from, messages } => {
                if !self.hosts[to as usize].online {
                    return;
                }
                let wanted: Vec<MessageId> = messages
                    .into_iter()
                    .filter(|m| !self.hosts[to as usize].seen.contains(m))
                    .collect();
                if !wanted.is_empty() {
                    self.bytes.gossip_control +=
                        CONTROL_BYTES + MESSAGE_ID_BYTES * wanted.len() as u64;
                    self.send(Event::IWant {
                        to: from,
                        from: to,
                        messages: wanted,
                    });
                }
            }
            Event::IWant { to, from, messages } => {
                if !self.hosts[to as usize].online {
                    return;
                }
                for m in messages {
                    let cached = self.hosts[to as usize].history.iter().any(|(h, _)| *h == m);
                    if cached {
                        self.send_gossip(to, from, m);
                    }
                }
            }
            Event::SyncTick { host } => self.sync_tick(host),
            Event::SyncRequest { to, from, request } => {
                if !self.hosts[to as usize].online {
                    return;
                }
                let (response, copies) = sync::answer(&self.hosts[to as usize].plane, request);
                let now = self.unix_now();
                for copy in copies {
                    self.take_copy(to, &copy, now);
                }
                self.bytes.sync += response.payload_bytes();
                if !self.send(Event::SyncResponse {
                    to: from,
                    from: to,
                    response,
                }) {
                    self.schedule(
                        SYNC_TIMEOUT - self.config.latency,
                        Event::SyncTimedOut { host: from },
                    );
                }
            }
            Event::SyncResponse { to, from, response } => {
                let h = &mut self.hosts[to as usize];
                h.syncs_in_flight = h.syncs_in_flight.saturating_sub(1);
                if !h.online {
                    return;
                }
                let step = sync::on_response(&h.plane, response);
                let now = self.unix_now();
                for copy in step.copies {
                    self.take_copy(to, &copy, now);
                }
                for request in step.requests {
                    self.send_sync(to, from, request);
                }
            }
            Event::SyncTimedOut { host } => {
                let h = &mut self.hosts[host as usize];
                h.syncs_in_flight = h.syncs_in_flight.saturating_sub(1);
            }
        }
    }

    fn send_sync(&mut self, from: u32, to: u32, request: SyncRequest) {
        self.bytes.sync += request.payload_bytes();
        self.hosts[from as usize].syncs_in_flight += 1;
        if !self.send(Event::SyncRequest { to, from, request }) {
            self.schedule(SYNC_TIMEOUT, Event::SyncTimedOut { host: from });
        }
    }

    fn sync_tick(&mut self, host: u32) {
        if !self.hosts[host as usize].online {
            return;
        }
        if self.hosts[host as usize].syncs_in_flight >= MAX_SYNCS_IN_FLIGHT {
            // As the driver: no new exchange while too many are open.
            self.schedule(Duration::from_secs(1), Event::SyncTick { host });
            return;
        }
        let spread = self.rng.random_range(0.5..1.5);
        let next = self.config.sync_interval.mul_f64(spread);
        self.schedule(next, Event::SyncTick { host });
        let peer = self.random_peer(host);
        let request = sync::open(&self.hosts[host as usize].plane);
        self.send_sync(host, peer, request);
    }

    fn heartbeat(&mut self, host: u32) {
        let h = &mut self.hosts[host as usize];
        h.heartbeat_scheduled = false;
        if !h.online || h.history.is_empty() {
            h.history.clear();
            return;
        }
        let announce: Vec<MessageId> = h
            .history
            .iter()
            .filter(|(_, left)| *left > HISTORY_LENGTH - HISTORY_GOSSIP)
            .map(|(m, _)| *m)
            .collect();
        for (_, left) in h.history.iter_mut() {
            *left -= 1;
        }
        h.history.retain(|(_, left)| *left > 0);
        let keep_beating = !h.history.is_empty();
        if !announce.is_empty() {
            let mesh = h.mesh.clone();
            let others: Vec<u32> = self
                .connected(host)
                .into_iter()
                .filter(|p| !mesh.contains(p))
                .collect();
            let count = GOSSIP_LAZY
                .max((GOSSIP_FACTOR * others.len() as f64) as usize)
                .min(others.len());
            let chosen = pick(&mut self.rng, &others, count);
            for peer in chosen {
                self.bytes.gossip_control +=
                    CONTROL_BYTES + MESSAGE_ID_BYTES * announce.len() as u64;
                self.send(Event::IHave {
                    to: peer,
                    from: host,
                    messages: announce.clone(),
                });
            }
        }
        if keep_beating {
            self.hosts[host as usize].heartbeat_scheduled = true;
            self.schedule(HEARTBEAT, Event::Heartbeat { host });
        }
    }
}

/// `count` distinct items of `from`, chosen at random.
fn pick(rng: &mut SmallRng, from: &[u32], count: usize) -> Vec<u32> {
    let mut items = from.to_vec();
    for i in 0..count.min(items.len()) {
        let j = rng.random_range(i..items.len());
        items.swap(i, j);
    }
    items.truncate(count);
    items
}

/// The simulated host at index `i`.
pub fn host_name(i: usize) -> String {
    format!("host-{i:07}")
}

fn fnv(hash: u64, value: u64) -> u64 {
    value.to_le_bytes().iter().fold(hash, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}
