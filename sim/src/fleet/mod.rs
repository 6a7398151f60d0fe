//! The fleet simulator: a whole fleet of cells in virtual time, each cell
//! running the production membership ([`CellMembership`]) and election
//! ([`CellElection`]) of every host on a simulated network
//! ([`crate::netsim`]), with regions, loss, partitions, churn, slow hosts
//! and failures from a [`Scenario`].
//!
//! Cells exchange no membership traffic, so each runs on its own queue and
//! random stream, seeded from the scenario's seed and the cell's name: a
//! run is the same whatever the number of shards (threads) that share the
//! cells, and its trace hash says so. For the same reason a shard need not
//! hold all its cells at once: it runs them in groups of a bounded number
//! of hosts ([`RunOptions::hosts_in_memory`]), each group through the
//! whole run, and adds up what each measured. The fleet is measured every
//! `sample_every_s` virtual seconds; docs/simulator.md states what each
//! figure means.

pub mod publish;
pub mod report;
pub mod rollout;
pub mod scenario;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use starling_mesh::attach::{Route, RouteChoice};
use starling_mesh::cell::cell_of;
use starling_mesh::election::{CellElection, ElectionParams};
use starling_mesh::membership::MemberId;

use crate::netsim::{mix, SimNet};
pub use publish::TaskOutcome;
pub use scenario::{FleetEvent, Scenario, ScenarioError, TaskPublish};

/// Virtual time between two rounds of elections and fleet events: what a
/// host's driver does between polls.
pub const STEP: Duration = Duration::from_secs(1);
/// How often a member that knows little of its cell looks it up (the
/// daemon's `CELL_FORMING_LOOKUP`).
pub const FORMING_LOOKUP: Duration = Duration::from_secs(15);
/// How often an aggregator looks its cell up (the daemon's
/// `CELL_LOOKUP_INTERVAL`, without its spread).
pub const AGGREGATOR_LOOKUP: Duration = Duration::from_secs(300);

/// A stable 64-bit hash of a name under a seed.
fn name_hash(seed: u64, name: &str) -> u64 {
    name.bytes().fold(mix(seed), |h, b| mix(h ^ u64::from(b)))
}

/// A hash as a uniform fraction in [0, 1).
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// One host as planned: its name, whether it may serve as aggregator,
/// and when it boots.
#[derive(Debug, Clone)]
pub struct HostPlan {
    pub name: String,
    pub eligible: bool,
    pub boot_at: Duration,
}

/// One cell as planned.
#[derive(Debug, Clone)]
pub struct CellPlan {
    pub name: String,
    pub region: usize,
    pub hosts: Vec<HostPlan>,
}

/// Lays the fleet out: each region's hosts, named `<region>-<n>` (seven
/// digits), split into cells by the production rule ([`cell_of`]) with as
/// many split bits as make the mean cell no larger than `cell_size`.
pub fn plan(scenario: &Scenario) -> Vec<CellPlan> {
    let total_share: f64 = scenario.regions.iter().map(|r| r.share).sum();
    let mut cells = Vec::new();
    let mut assigned = 0u64;
    for (ri, region) in scenario.regions.iter().enumerate() {
        let hosts = if ri + 1 == scenario.regions.len() {
            scenario.hosts - assigned
        } else {
            ((scenario.hosts as f64 * region.share / total_share).round() as u64)
                .min(scenario.hosts - assigned)
        };
        assigned += hosts;
        let mut bits = 0u8;
        while bits < starling_mesh::cell::MAX_SPLIT_BITS
            && hosts.div_ceil(1u64 << bits) > u64::from(scenario.cell_size)
        {
            bits += 1;
        }
        let mut by_cell: std::collections::BTreeMap<String, Vec<HostPlan>> = Default::default();
        for n in 0..hosts {
            // Seven digits (a fleet holds under MAX_HOSTS, 10^7), so that
            // names do not grow with the fleet: they travel in every
            // membership message.
            let name = format!("{}-{n:07}", region.name);
            let h = name_hash(scenario.seed, &name);
            let eligible = unit(mix(h ^ 1)) * 100.0 < scenario.eligible_pct;
            let boot_at = Duration::from_secs_f64(unit(mix(h ^ 2)) * scenario.boot.spread_s);
            let cell = cell_of(&region.name, &name, bits).to_string();
            by_cell.entry(cell).or_default().push(HostPlan {
                name,
                eligible,
                boot_at,
            });
        }
        for (name, mut hosts) in by_cell {
            hosts.sort_by_key(|h| h.boot_at);
            cells.push(CellPlan {
                name,
                region: ri,
                hosts,
            });
        }
    }
    cells
}

/// One host while the fleet runs.
struct HostRun {
    /// Its member index in the cell's network, once booted.
    index: Option<usize>,
    election: CellElection,
    /// The daemon's choice between its cell's aggregators and a sink.
    route: RouteChoice<Duration>,
    /// It ships straight to a sink (its cell has had no aggregator for
    /// the scenario's `direct_to_sink_after_s`), as of the last step.
    direct: bool,
    /// When each of its lives ended (index: the identity's bump).
    deaths: Vec<Duration>,
    restart_at: Option<Duration>,
    /// The current death was noticed by someone already.
    death_seen: bool,
    /// Seconds from its latest death to the latest notice of it so far.
    last_notice: Option<f32>,
}

/// The fleet measured at one instant: sums over cells, so that shards add up.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Sample {
    /// Virtual seconds since start.
    pub at_s: u64,
    pub hosts_alive: u64,
    /// Live hosts whose view of their cell is exactly its live hosts.
    pub hosts_converged: u64,
    /// Live hosts that have at least one live aggregator among the ones
    /// they elected, which itself took the role, or that ship straight to
    /// a sink because their cell has had no aggregator for a while.
    pub hosts_attached: u64,
    /// Live hosts that ship straight to a sink (counted in
    /// `hosts_attached` too); sinks are assumed reachable and not
    /// modelled.
    pub hosts_direct: u64,
    pub cells: u64,
    /// Cells whose live hosts all elected the same aggregators, all alive
    /// and serving.
    pub cells_agreeing: u64,
    /// Membership bytes all hosts sent since the previous sample.
    pub bytes_sent: u64,
}

impl Sample {
    fn add(&mut self, o: &Sample) {
        self.hosts_alive += o.hosts_alive;
        self.hosts_converged += o.hosts_converged;
        self.hosts_attached += o.hosts_attached;
        self.hosts_direct += o.hosts_direct;
        self.cells += o.cells;
        self.cells_agreeing += o.cells_agreeing;
        self.bytes_sent += o.bytes_sent;
    }
}

/// How quickly crashed hosts were declared down, and how often live ones were.
#[derive(Debug, Clone, Default)]
pub struct Detections {
    /// Seconds from a crash to each observer's down notice.
    pub by_observer: Vec<f32>,
    /// Seconds from a crash to the first down notice anywhere in its cell.
    pub first: Vec<f32>,
    /// Seconds from each host's latest crash to the last down notice of
    /// it in its cell (when every observer that noticed had: the real
    /// stack's bench measures this, "every member noticed").
    pub last: Vec<f32>,
    /// Down notices about a host that was alive in that life.
    pub false_positives: u64,
    /// Crashes during the run.
    pub crashes: u64,
}

impl Detections {
    fn append(&mut self, mut o: Detections) {
        self.by_observer.append(&mut o.by_observer);
        self.first.append(&mut o.first);
        self.last.append(&mut o.last);
        self.false_positives += o.false_positives;
        self.crashes += o.crashes;
    }
}

/// One cell while the fleet runs.
struct CellRun {
    plan: CellPlan,
    net: SimNet,
    hosts: Vec<HostRun>,
    /// Hosts booted so far (plan order is boot order).
    booted: usize,
    rng: SmallRng,
    bytes_at_sample: u64,
    /// Fleet events already applied.
    events_done: usize,
    /// Hosts currently partitioned off, by hash.
    partition_fraction: Option<f64>,
}

impl CellRun {
    fn new(scenario: &Scenario, plan: CellPlan) -> Self {
        let seed = name_hash(scenario.seed, &plan.name);
        let region = &scenario.regions[plan.region];
        let mut net = SimNet::new(seed, Duration::from_secs_f64(region.latency_ms / 1e3));
        net.set_jitter(region.jitter);
        net.set_loss(scenario.loss.independent);
        net.set_burst_loss(scenario.loss.burst.map(Into::into));
        let hosts = plan
            .hosts
            .iter()
            .map(|_| HostRun {
                index: None,
                election: CellElection::default(),
                route: RouteChoice::new(scenario.direct_to_sink_after()),
                direct: false,
                deaths: Vec::new(),
                restart_at: None,
                death_seen: false,
                last_notice: None,
            })
            .collect();
        Self {
            plan,
            net,
            hosts,
            booted: 0,
            rng: SmallRng::seed_from_u64(mix(seed)),
            bytes_at_sample: 0,
            events_done: 0,
            partition_fraction: None,
        }
    }

    /// Runs one [`STEP`] from `now`: boots, restarts and fleet events due,
    /// the network, then every live host's election.
    fn step(
        &mut self,
        scenario: &Scenario,
        events: &[FleetEvent],
        now: Duration,
        found: &mut Detections,
    ) {
        let expected = self.plan.hosts.len() as u32;
        while self.booted < self.plan.hosts.len() && self.plan.hosts[self.booted].boot_at <= now {
            let h = &self.plan.hosts[self.booted];
            let index = self.net.add_member(&h.name, h.eligible, expected);
            self.hosts[self.booted].index = Some(index);
            self.booted += 1;
        }
        for host in &mut self.hosts {
            if let (Some(index), Some(at)) = (host.index, host.restart_at) {
                if at <= now {
                    host.restart_at = None;
                    // A fresh process: nothing elected yet.
                    host.election = CellElection::default();
                    host.route = RouteChoice::new(scenario.direct_to_sink_after());
                    host.direct = false;
                    self.net.restart_member(index);
                }
            }
        }
        while let Some(event) = events.get(self.events_done).filter(|e| e.at() <= now) {
            self.apply(scenario, event, now, found);
            self.events_done += 1;
        }
        self.churn(scenario, events, now, found);
        self.find_cell(now);
        self.net.run_for(STEP);
        let version = (now + STEP).as_millis() as u64;
        let params = ElectionParams::default();
        for host in &mut self.hosts {
            let Some(index) = host.index.filter(|&i| self.net.is_alive(i)) else {
                continue;
            };
            if let Some(membership) = self.net.member_at(index) {
                host.election
                    .update(&self.plan.name, membership, &params, version);
                let route = host.route.route(
                    now + STEP,
                    membership.own().aggregator,
                    host.election.aggregators().len(),
                );
                host.direct = route == Route::Sink && !membership.own().aggregator;
                self.net.flush_member(index);
            }
        }
        self.note_downs(found);
    }

    /// The daemon's cell lookup, with the DHT modelled: a member that
    /// knows under three quarters of its cell looks every
    /// [`FORMING_LOOKUP`], an aggregator every [`AGGREGATOR_LOOKUP`], and
    /// each announces itself to the cell's providers (its serving
    /// aggregators and its lonely members) missing from its view, as
    /// `Mesh::find_cell` and `Mesh::on_cell_providers` do. A join lost on
    /// the way, or fragments formed at once, merge this way and no other.
    fn find_cell(&mut self, now: Duration) {
        let secs = now.as_secs();
        let forming = secs.is_multiple_of(FORMING_LOOKUP.as_secs());
        let periodic = secs.is_multiple_of(AGGREGATOR_LOOKUP.as_secs());
        if !forming && !periodic {
            return;
        }
        let expected = self.plan.hosts.len();
        let live: Vec<usize> = self
            .hosts
            .iter()
            .filter_map(|h| h.index.filter(|&i| self.net.is_alive(i)))
            .collect();
        let providers: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&i| {
                self.net
                    .member_ref(i)
                    .is_some_and(|m| m.own().aggregator || m.is_lonely())
            })
            .collect();
        for &i in &live {
            let Some(m) = self.net.member_ref(i) else {
                continue;
            };
            let known = m.member_ids().count() + 1;
            let short = known * 4 < expected * 3;
            if !((forming && short) || (periodic && m.own().aggregator)) {
                continue;
            }
            let missing: Vec<MemberId> = providers
                .iter()
                .filter(|&&p| p != i)
                .filter_map(|&p| self.net.id_of(p))
                .filter(|id| !m.member_ids().any(|k| k.host == id.host))
                .take(3)
                .cloned()
                .collect();
            if let Some(m) = self.net.member_at(i) {
                for id in missing {
                    let _ = m.join(id);
                }
            }
            self.net.flush_member(i);
        }
    }

    fn crash(
        &mut self,
        host: usize,
        now: Duration,
        restart_after: Option<f64>,
        found: &mut Detections,
    ) {
        let Some(index) = self.hosts[host].index.filter(|&i| self.net.is_alive(i)) else {
            return;
        };
        self.net.kill_member(index);
        let bump = self.net.id_of(index).map_or(0, |id| id.bump) as usize;
        let run = &mut self.hosts[host];
        run.deaths.resize(bump + 1, now);
        run.deaths[bump] = now;
        run.death_seen = false;
        run.last_notice = None;
        run.restart_at = restart_after.map(|s| now + Duration::from_secs_f64(s.max(0.0)));
        found.crashes += 1;
    }

    fn apply(
        &mut self,
        scenario: &Scenario,
        event: &FleetEvent,
        now: Duration,
        found: &mut Detections,
    ) {
        match event {
            FleetEvent::Partition { fraction, .. } => self.partition_fraction = Some(*fraction),
            FleetEvent::Heal { .. } => {
                self.partition_fraction = None;
                self.net.heal();
            }
            FleetEvent::AggregatorRegionFailure { region, .. } => {
                if scenario.regions[self.plan.region].name == *region {
                    let serving: Vec<usize> = (0..self.hosts.len())
                        .filter(|&h| {
                            self.hosts[h]
                                .index
                                .and_then(|i| self.net.member_ref(i).map(|m| (i, m)))
                                .is_some_and(|(i, m)| self.net.is_alive(i) && m.own().aggregator)
                        })
                        .collect();
                    for h in serving {
                        self.crash(h, now, None, found);
                    }
                }
            }
            FleetEvent::Slow {
                pct, backlog_ms, ..
            } => {
                for (h, plan) in self.plan.hosts.iter().enumerate() {
                    let slow = unit(mix(name_hash(scenario.seed, &plan.name) ^ 3)) * 100.0 < *pct;
                    if let (true, Some(index)) = (slow, self.hosts[h].index) {
                        self.net
                            .make_member_busy(index, Duration::from_millis(*backlog_ms));
                    }
                }
            }
            FleetEvent::Churn { .. } => {}
        }
        self.repartition(scenario);
    }

    /// Keeps a partition in force over members booted since it began.
    fn repartition(&mut self, scenario: &Scenario) {
        let Some(fraction) = self.partition_fraction else {
            return;
        };
        let far: std::collections::HashSet<usize> = self
            .plan
            .hosts
            .iter()
            .zip(&self.hosts)
            .filter(|(plan, _)| unit(mix(name_hash(scenario.seed, &plan.name) ^ 4)) < fraction)
            .filter_map(|(_, run)| run.index)
            .collect();
        self.net.partition_by(|i| far.contains(&i));
    }

    fn churn(
        &mut self,
        scenario: &Scenario,
        events: &[FleetEvent],
        now: Duration,
        found: &mut Detections,
    ) {
        for event in events {
            let FleetEvent::Churn {
                at_s,
                until_s,
                pct_per_min,
                restart_after_s,
            } = event
            else {
                continue;
            };
            let t = now.as_secs_f64();
            if t < *at_s || t >= *until_s {
                continue;
            }
            let p = pct_per_min / 100.0 / 60.0 * STEP.as_secs_f64();
            for h in 0..self.hosts.len() {
                if self.rng.random::<f64>() < p {
                    self.crash(h, now, *restart_after_s, found);
                }
            }
        }
        if self.partition_fraction.is_some() && self.booted > 0 {
            self.repartition(scenario);
        }
    }

    /// Turns the network's down notices into detection times and false
    /// positives.
    fn note_downs(&mut self, found: &mut Detections) {
        for down in std::mem::take(&mut self.net.downs) {
            // Hosts boot in plan order, so a member's index is its host's.
            let Some(h) = self.net.index_of(&down.member) else {
                continue;
            };
            let run = &mut self.hosts[h];
            let current = run
                .index
                .and_then(|i| self.net.id_of(i))
                .map_or(0, |id| id.bump);
            let alive = run.index.is_some_and(|i| self.net.is_alive(i));
            match run.deaths.get(usize::from(down.bump)) {
                Some(&died) if !(alive && down.bump == current) => {
                    let delay = down.at.saturating_sub(died).as_secs_f32();
                    found.by_observer.push(delay);
                    // The first notice of its latest death, even if it
                    // restarted since.
                    let latest = if alive {
                        current.checked_sub(1)
                    } else {
                        Some(current)
                    };
                    if latest == Some(down.bump) {
                        if !run.death_seen {
                            run.death_seen = true;
                            found.first.push(delay);
                        }
                        run.last_notice = Some(run.last_notice.map_or(delay, |l| l.max(delay)));
                    }
                }
                _ => found.false_positives += 1,
            }
        }
    }

    fn sample(&mut self, at_s: u64) -> Sample {
        let live: std::collections::HashSet<&str> = self
            .hosts
            .iter()
            .filter_map(|h| h.index.filter(|&i| self.net.is_alive(i)))
            .filter_map(|i| self.net.id_of(i).map(|id| &*id.host))
            .collect();
        let serving = |name: &str| {
            self.net
                .index_of(name)
                .filter(|&i| self.net.is_alive(i))
                .and_then(|i| self.net.member_ref(i))
                .is_some_and(|m| m.own().aggregator)
        };
        let mut s = Sample {
            at_s,
            cells: 1,
            ..Sample::default()
        };
        let mut agreed: Option<&[String]> = None;
        let mut agreeing = true;
        for host in &self.hosts {
            let Some(index) = host.index.filter(|&i| self.net.is_alive(i)) else {
                continue;
            };
            let Some(m) = self.net.member_ref(index) else {
                continue;
            };
            s.hosts_alive += 1;
            let (mut seen, mut all_live) = (0, true);
            for id in m.member_ids() {
                seen += 1;
                all_live &= live.contains(&*id.host);
            }
            if all_live && seen + 1 == live.len() {
                s.hosts_converged += 1;
            }
            let mine = host.election.aggregators();
            if host.direct {
                s.hosts_direct += 1;
            }
            if host.direct || mine.iter().any(|a| serving(a)) {
                s.hosts_attached += 1;
            }
            match agreed {
                None => agreed = Some(mine),
                Some(a) => agreeing &= a == mine,
            }
        }
        let all_serving = agreed.is_some_and(|a| !a.is_empty() && a.iter().all(|h| serving(h)));
        if s.hosts_alive > 0 && agreeing && all_serving {
            s.cells_agreeing = 1;
        }
        let sent = self.net.bytes_sent();
        s.bytes_sent = sent - self.bytes_at_sample;
        self.bytes_at_sample = sent;
        s
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub samples: Vec<Sample>,
    pub detections: Detections,
    /// The trace hashes of all cells combined in cell order.
    pub trace_hash: u64,
    pub cells: usize,
    pub hosts: u64,
    /// The scenario's task, spread once membership has run.
    pub task: Option<TaskOutcome>,
}

/// How far a running simulation is, for a progress line.
#[derive(Debug, Default)]
pub struct Progress {
    /// Host-seconds of virtual time done (planned hosts of the cells run
    /// times seconds), out of the scenario's hosts times its duration.
    pub done_host_s: AtomicU64,
    /// Membership is done and the scenario's task is spreading.
    pub task_running: AtomicBool,
}

/// Hosts held in memory at once by default: about 6 GiB at the 60 KB a
/// simulated host takes (docs/simulator.md, "Cost").
pub const DEFAULT_HOSTS_IN_MEMORY: u64 = 100_000;

/// How a run is spread over this machine. Neither changes the result.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Threads that share the cells.
    pub shards: usize,
    /// Hosts held in memory at once over all shards: each shard runs its
    /// cells in groups of at most its share (and at least one cell).
    pub hosts_in_memory: u64,
}

impl RunOptions {
    /// `shards` threads with the default memory bound.
    pub fn shards(shards: usize) -> Self {
        Self {
            shards,
            hosts_in_memory: DEFAULT_HOSTS_IN_MEMORY,
        }
    }
}

/// Runs a scenario as `options` say: membership, then the task if it
/// has one. The result does not depend on `options`.
pub fn run(
    scenario: &Scenario,
    options: RunOptions,
    progress: &Progress,
) -> anyhow::Result<RunResult> {
    let plans = plan(scenario);
    let cells = plans.len();
    let mut events = scenario.events.clone();
    events.sort_by_key(FleetEvent::at);
    let shards = options.shards.clamp(1, cells.max(1));
    let group_hosts = (options.hosts_in_memory / shards as u64).max(1);
    let mut by_shard: Vec<Vec<(usize, CellPlan)>> = (0..shards).map(|_| Vec::new()).collect();
    for (i, p) in plans.into_iter().enumerate() {
        by_shard[i % shards].push((i, p));
    }
    let outcomes: Vec<ShardOutcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = by_shard
            .into_iter()
            .map(|cells| {
                let events = &events;
                scope.spawn(move || run_shard(scenario, events, cells, group_hosts, progress))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut total = ShardOutcome::default();
    for o in outcomes {
        total.add(o);
    }
    let ShardOutcome {
        samples,
        mut detections,
        mut traces,
    } = total;
    traces.sort_unstable();
    let trace_hash = traces.iter().fold(0u64, |h, (_, t)| mix(h ^ t));
    // Shards filled their lists in their own order: sort so the result is
    // the same whatever the shard count.
    detections.by_observer.sort_by(f32::total_cmp);
    detections.first.sort_by(f32::total_cmp);
    detections.last.sort_by(f32::total_cmp);
    let task = match &scenario.task {
        Some(t) => {
            progress.task_running.store(true, Ordering::Relaxed);
            Some(publish::run(scenario, t, cells)?)
        }
        None => None,
    };
    Ok(RunResult {
        samples,
        detections,
        trace_hash,
        cells,
        hosts: scenario.hosts,
        task,
    })
}

#[derive(Default)]
struct ShardOutcome {
    samples: Vec<Sample>,
    detections: Detections,
    traces: Vec<(usize, u64)>,
}

impl ShardOutcome {
    fn add(&mut self, mut o: ShardOutcome) {
        for (i, s) in o.samples.iter().enumerate() {
            match self.samples.get_mut(i) {
                Some(total) => total.add(s),
                None => self.samples.push(*s),
            }
        }
        self.detections.append(o.detections);
        self.traces.append(&mut o.traces);
    }
}

/// Runs a shard's cells in groups of at most `group_hosts` planned hosts
/// (at least one cell each).
fn run_shard(
    scenario: &Scenario,
    events: &[FleetEvent],
    plans: Vec<(usize, CellPlan)>,
    group_hosts: u64,
    progress: &Progress,
) -> ShardOutcome {
    let mut total = ShardOutcome::default();
    let mut plans = plans.into_iter().peekable();
    while let Some(first) = plans.next() {
        let mut hosts = first.1.hosts.len() as u64;
        let mut group = vec![first];
        while let Some(next) = plans.next_if(|(_, p)| hosts + p.hosts.len() as u64 <= group_hosts) {
            hosts += next.1.hosts.len() as u64;
            group.push(next);
        }
        total.add(run_group(scenario, events, group, progress));
    }
    total
}

/// Runs one group of cells through the whole scenario.
fn run_group(
    scenario: &Scenario,
    events: &[FleetEvent],
    plans: Vec<(usize, CellPlan)>,
    progress: &Progress,
) -> ShardOutcome {
    let group_hosts: u64 = plans.iter().map(|(_, p)| p.hosts.len() as u64).sum();
    let (order, mut cells): (Vec<usize>, Vec<CellRun>) = plans
        .into_iter()
        .map(|(i, p)| (i, CellRun::new(scenario, p)))
        .unzip();
    let mut found = Detections::default();
    let mut samples = Vec::new();
    let end = Duration::from_secs(scenario.duration_s);
    let mut now = Duration::ZERO;
    while now < end {
        for cell in &mut cells {
            cell.step(scenario, events, now, &mut found);
        }
        now += STEP;
        progress
            .done_host_s
            .fetch_add(group_hosts * STEP.as_secs(), Ordering::Relaxed);
        if now.as_secs().is_multiple_of(scenario.sample_every_s) || now >= end {
            let mut total = Sample {
                at_s: now.as_secs(),
                ..Sample::default()
            };
            for cell in &mut cells {
                total.add(&cell.sample(now.as_secs()));
            }
            samples.push(total);
        }
    }
    found.last.extend(
        cells
            .iter()
            .flat_map(|c| c.hosts.iter().filter_map(|h| h.last_notice)),
    );
    let traces = order
        .into_iter()
        .zip(&cells)
        .map(|(i, c)| (i, c.net.trace_hash()))
        .collect();
    ShardOutcome {
        samples,
        detections: found,
        traces,
    }
}
