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
}

/// A member-down notification: when, who noticed, whom.
#[derive(Debug, Clone)]
pub struct DownEvent {
    pub at: Duration,
    pub observer: String,
    pub member: String,
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
    loss: f64,
    /// Members on the far side of a partition (None: no partition).
    partition: Option<HashSet<usize>>,
    /// Every member-down notification so far.
    pub downs: Vec<DownEvent>,
    out: Vec<Output>,
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
            loss: 0.0,
            partition: None,
            downs: Vec::new(),
            out: Vec::new(),
        }
    }

    /// Simulated time since start.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Probability that a message is lost.
    pub fn set_loss(&mut self, loss: f64) {
        self.loss = loss.clamp(0.0, 1.0);
    }

    /// Adds a member that joins through the first member (if any).
    pub fn add_member(&mut self, host: &str, eligible: bool, expected_size: u32) -> usize {
        let id = MemberId::named(host);
        let info = MemberInfo {
            host: host.to_owned(),
            version: 1,
            eligible,
            aggregator: false,
            load_pct: 0,
            capacity: 500,
            attached: 0,
            agent_version: "sim".into(),
            tags: Vec::new(),
            addrs: Vec::new(),
            relay: String::new(),
        };
        let seed = self.rng.random::<u64>();
        let state = CellMembership::new(id.clone(), info, expected_size, seed)
            .expect("valid simulated member");
        let index = self.members.len();
        self.members.push(SimMember {
            id,
            state,
            alive: true,
            backlog: Duration::ZERO,
            bytes_in: 0,
            bytes_out: 0,
        });
        self.by_host.insert(host.to_owned(), index);
        if index > 0 {
            let via = self.members[0].id.clone();
            let _ = self.members[index].state.join(via);
        }
        self.flush(index);
        self.schedule(TICK, Event::Tick { member: index });
        index
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
                    let Some(&dest) = self.by_host.get(&to.host) else {
                        continue;
                    };
                    let lost = self.loss > 0.0 && self.rng.random::<f64>() < self.loss;
                    if !lost && self.reachable(index, dest) {
                        // Up to 50 % jitter on top of the base latency.
                        let jitter = self.latency.mul_f64(self.rng.random::<f64>() * 0.5);
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
                    observer: self.members[index].id.host.clone(),
                    member: id.host,
                }),
                Output::Up(_) => {}
            }
        }
        self.out = out;
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
            self.members[i].alive = false;
        }
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
            .map(|(id, _)| id.host)
            .collect();
        v.sort();
        v
    }

    /// Live members' hosts.
    pub fn live_hosts(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.alive)
            .map(|m| m.id.host.clone())
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
            .find(|(id, _)| id.host == about)
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
