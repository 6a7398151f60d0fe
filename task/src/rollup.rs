//! The fleet's view of every task, rolled up without a message per host:
//! each host reports its states to its cell's aggregators, each
//! aggregator sums its cell into a [`CellSummary`] that the mesh sends to
//! the sinks, and a host asked for the fleet's view adds up the summaries
//! of all cells a sink holds ([`FleetStatus`]). No host hears a message
//! per host of the fleet.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::fleet::{CellHosts, CellTable, DownHost, Heartbeat, HostRow, MAX_TABLE_HOSTS};
use crate::rollout::{self, RolloutCounts, WaveTally};

mod wire;
pub use wire::{
    decode_report, decode_summary, encode_report, encode_summary, summary_from_wire,
    summary_to_wire, MAX_DETAIL_TEXT, MAX_REPORT_BYTES, MAX_SUMMARY_BYTES,
};

/// Hosts named per state and cell in a summary; beyond it, a count.
pub const MAX_NAMED_HOSTS: usize = 64;
/// Tasks in one host report or cell summary.
pub const MAX_REPORTED_TASKS: usize = 256;
/// The state of a member whose report lacks a task it holds the cell's
/// view of: it has not answered (not received, or not reported yet).
pub const NO_ANSWER: &str = "no_answer";
/// A member the cell's view has not heard from at all.
pub const NOT_REPORTING: &str = "not_reporting";
/// A host that reported in the cell and is no longer a live member (down,
/// stopped or cut off) while the task had not reached a final state there.
pub const DOWN: &str = "down";
/// How long an aggregator remembers a host that left its cell, and how
/// many such hosts at most.
pub const DOWN_MEMORY_MS: u64 = 24 * 3600 * 1000;
pub const MAX_DOWN_HOSTS: usize = 4096;

/// Whether a host's state for a task is one it moves on from by itself
/// (a host that left in it counts as `down`, not in it).
fn is_under_way(state: &str) -> bool {
    matches!(state, "pending" | "waiting" | "soaking")
}

/// What one host says about its tasks (to its cell's aggregators).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostReport {
    pub host: String,
    /// Task id -> (state, detail).
    pub states: BTreeMap<String, (String, String)>,
    /// What the host says about itself (crate::fleet).
    #[serde(default)]
    pub heartbeat: Option<Heartbeat>,
}

/// One task's states across a cell (or, added up, the fleet).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounts {
    /// State -> hosts in it.
    pub counts: BTreeMap<String, u32>,
    /// State -> some of the hosts in it (all but `applied` and
    /// `not_targeted`, at most [`MAX_NAMED_HOSTS`] each per cell).
    pub hosts: BTreeMap<String, Vec<String>>,
    /// For a task with a rollout plan, its hosts wave by wave (one per
    /// wave of the plan; empty when the aggregator does not hold the
    /// task's plan).
    #[serde(default)]
    pub waves: Vec<WaveTally>,
}

impl TaskCounts {
    fn add(&mut self, state: &str, host: &str) {
        *self.counts.entry(state.to_owned()).or_default() += 1;
        if state != "applied" && state != "not_targeted" {
            let named = self.hosts.entry(state.to_owned()).or_default();
            if named.len() < MAX_NAMED_HOSTS {
                named.push(host.to_owned());
            }
        }
    }

    fn merge(&mut self, other: &TaskCounts) {
        for (s, n) in &other.counts {
            *self.counts.entry(s.clone()).or_default() += n;
        }
        for (s, hosts) in &other.hosts {
            self.hosts
                .entry(s.clone())
                .or_default()
                .extend(hosts.iter().cloned());
        }
        if self.waves.len() < other.waves.len() {
            self.waves.resize(other.waves.len(), WaveTally::default());
        }
        for (mine, theirs) in self.waves.iter_mut().zip(&other.waves) {
            mine.add(theirs);
        }
    }

    /// Hosts counted in every state.
    pub fn total(&self) -> u32 {
        self.counts.values().sum()
    }
}

/// A cell's states, from one of its aggregators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellSummary {
    pub cell: String,
    /// The aggregator that summed it.
    pub by: String,
    /// When (Unix ms, the aggregator's clock): a newer one replaces it.
    pub at_ms: u64,
    /// Live members of the cell in the aggregator's view.
    pub members: u32,
    /// Task id -> its states in the cell.
    pub tasks: BTreeMap<String, TaskCounts>,
    /// The cell's hosts: down, versions, whom to ask for the table.
    pub hosts: CellHosts,
}

impl CellSummary {
    /// Checks a summary from the network against the limits.
    pub fn check(&self) -> Result<(), String> {
        self.hosts.check()?;
        if self.tasks.len() > MAX_REPORTED_TASKS {
            return Err(format!("{} tasks", self.tasks.len()));
        }
        for t in self.tasks.values() {
            if t.counts.len() > 16 || t.hosts.len() > 16 {
                return Err("too many states".into());
            }
            if t.hosts.values().any(|h| h.len() > MAX_NAMED_HOSTS) {
                return Err("too many hosts named".into());
            }
            if t.waves.len() > rollout::MAX_WAVES {
                return Err(format!("{} waves", t.waves.len()));
            }
        }
        Ok(())
    }
}

/// What became of a host's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Taken, and the cell's summary changes with it.
    Changed,
    /// Taken; the summary stays as it was (only heartbeat figures moved).
    Same,
    /// It breaks the limits.
    Refused,
}

/// What an aggregator holds of its cell: the latest report of each host,
/// when it came, and when the aggregator last saw the host live.
#[derive(Debug, Default)]
pub struct CellRollup {
    reports: BTreeMap<String, Reported>,
}

#[derive(Debug)]
struct Reported {
    report: HostReport,
    received_ms: u64,
    seen_ms: u64,
}

impl CellRollup {
    /// Takes a host's report (replacing its last).
    pub fn take(&mut self, report: HostReport, now_ms: u64) -> Taken {
        if report.states.len() > MAX_REPORTED_TASKS
            || report
                .heartbeat
                .as_ref()
                .is_some_and(|h| h.check().is_err())
            || (!self.reports.contains_key(&report.host) && self.reports.len() >= MAX_DOWN_HOSTS)
        {
            return Taken::Refused;
        }
        // What a summary shows of a host: its states and its version. A
        // heartbeat's figures change with every report and are shown only
        // in the cell's table, so they alone do not make a new summary.
        let version = |r: &HostReport| r.heartbeat.as_ref().map(|h| h.agent_version.clone());
        let changed = self.reports.get(&report.host).is_none_or(|old| {
            old.report.states != report.states || version(&old.report) != version(&report)
        });
        self.reports.insert(
            report.host.clone(),
            Reported {
                report,
                received_ms: now_ms,
                seen_ms: now_ms,
            },
        );
        if changed {
            Taken::Changed
        } else {
            Taken::Same
        }
    }

    /// Whether any host reported a task.
    pub fn holds_tasks(&self) -> bool {
        self.reports.values().any(|r| !r.report.states.is_empty())
    }

    /// Marks `members` live at `at_ms` and forgets hosts not seen live
    /// for a day.
    fn refresh(&mut self, members: &[String], at_ms: u64) {
        let live: BTreeSet<&String> = members.iter().collect();
        for (host, r) in self.reports.iter_mut() {
            if live.contains(host) {
                r.seen_ms = at_ms;
            }
        }
        self.reports
            .retain(|_, r| at_ms.saturating_sub(r.seen_ms) <= DOWN_MEMORY_MS);
    }

    /// The table of the cell whose live members are `members`: each
    /// member with its last heartbeat, then every host that reported and
    /// left within a day.
    pub fn table(&mut self, cell: &str, by: &str, members: &[String], at_ms: u64) -> CellTable {
        self.refresh(members, at_ms);
        let live: BTreeSet<&String> = members.iter().collect();
        let row = |host: &String, r: Option<&Reported>| HostRow {
            host: host.clone(),
            alive: live.contains(host),
            last_seen_ms: r.map_or(at_ms, |r| r.seen_ms),
            heartbeat: r.and_then(|r| r.report.heartbeat.clone()),
            heartbeat_at_ms: r.map_or(0, |r| r.received_ms),
        };
        let mut hosts: Vec<HostRow> = members
            .iter()
            .map(|h| row(h, self.reports.get(h)))
            .chain(
                self.reports
                    .iter()
                    .filter(|(h, _)| !live.contains(h))
                    .map(|(h, r)| row(h, Some(r))),
            )
            .take(MAX_TABLE_HOSTS)
            .collect();
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        CellTable {
            cell: cell.into(),
            by: by.into(),
            at_ms,
            hosts,
        }
    }

    /// Sums the cell whose live members are `members`: each member in the
    /// state it reported, `no_answer` for a task another member holds
    /// that it did not report, `not_reporting` when it sent nothing. A
    /// host that reported and is no longer live counts in its last final
    /// state (applied, failed, refused, stopped, not targeted) or as
    /// `down`, for a day. A task with a plan in `plans` (the rollouts this
    /// aggregator holds, by task id) is also counted wave by wave: each
    /// host in the wave the plan places it in (docs/rollouts.md).
    pub fn summary(
        &mut self,
        cell: &str,
        by: &str,
        members: &[String],
        at_ms: u64,
        plans: &BTreeMap<String, rollout::Plan>,
    ) -> CellSummary {
        self.refresh(members, at_ms);
        let live: BTreeSet<&String> = members.iter().collect();
        let gone: Vec<&String> = self
            .reports
            .keys()
            .filter(|h| !live.contains(h))
            .take(MAX_DOWN_HOSTS)
            .collect();
        let task_ids: BTreeSet<&String> = self
            .reports
            .values()
            .flat_map(|r| r.report.states.keys())
            .take(MAX_REPORTED_TASKS)
            .collect();
        let mut tasks: BTreeMap<String, TaskCounts> = BTreeMap::new();
        for id in task_ids {
            let counts = tasks.entry(id.clone()).or_default();
            let mut waves = plans.get(id).map(|plan| {
                let canary = rollout::cell_canary(id, members.iter().map(String::as_str));
                (plan, canary, vec![WaveTally::default(); plan.waves().len()])
            });
            let mut count = |state: &str, host: &str| {
                counts.add(state, host);
                if let Some((plan, canary, tallies)) = waves.as_mut() {
                    let wave = plan.wave_of(id, host, *canary == Some(host));
                    if let Some(t) = tallies.get_mut(wave) {
                        t.count(state);
                    }
                }
            };
            for host in members {
                match self.reports.get(host) {
                    Some(r) => match r.report.states.get(id) {
                        Some((state, _)) => count(state, host),
                        None => count(NO_ANSWER, host),
                    },
                    None => count(NOT_REPORTING, host),
                }
            }
            for host in &gone {
                let last = self
                    .reports
                    .get(*host)
                    .and_then(|r| r.report.states.get(id));
                match last {
                    Some((state, _)) if !is_under_way(state) => count(state, host),
                    _ => count(DOWN, host),
                }
            }
            if let Some((_, _, tallies)) = waves {
                counts.waves = tallies;
            }
        }
        let mut hosts = CellHosts {
            down_count: gone.len() as u32,
            ..Default::default()
        };
        let mut down: Vec<DownHost> = gone
            .iter()
            .filter_map(|h| self.reports.get(*h))
            .map(|r| DownHost {
                host: r.report.host.clone(),
                since_ms: r.seen_ms,
            })
            .collect();
        down.sort_by_key(|d| (d.since_ms, d.host.clone()));
        down.truncate(MAX_NAMED_HOSTS);
        hosts.down = down;
        for host in members {
            if let Some(h) = self
                .reports
                .get(host)
                .and_then(|r| r.report.heartbeat.as_ref())
            {
                hosts.count_version(&h.agent_version);
            }
        }
        CellSummary {
            cell: cell.into(),
            by: by.into(),
            at_ms,
            members: members.len() as u32,
            tasks,
            hosts,
        }
    }
}

/// The fleet as one host hears it: the newest summary of each cell.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct FleetStatus {
    pub cells: BTreeMap<String, CellSummary>,
}

/// What a summary changed in a host's view of the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewChange {
    /// Nothing: an older summary than the one held.
    None,
    /// Only when the cell was last heard from: the same counts again.
    Fresher,
    /// What the view shows (the first part that differs).
    Content(ContentChange),
}

/// The first part of a cell's summary that differs from the one held, in
/// the order they are compared: what makes a fleet's summaries change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentChange {
    /// A cell not in the view.
    NewCell,
    /// Another aggregator summed it.
    Publisher,
    /// Its live member count.
    Members,
    /// A task's counts or named hosts.
    Tasks,
    /// Its hosts down (how many, which, since when).
    Down,
    /// Its live hosts by agent version.
    Versions,
    /// Where to ask for its table.
    Contact,
}

impl ContentChange {
    /// The label of `starling_task_fleet_view_changes_total{change}`.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentChange::NewCell => "new_cell",
            ContentChange::Publisher => "publisher",
            ContentChange::Members => "members",
            ContentChange::Tasks => "tasks",
            ContentChange::Down => "down",
            ContentChange::Versions => "versions",
            ContentChange::Contact => "contact",
        }
    }
}

impl FleetStatus {
    /// Keeps `summary` when it is the newest of its cell.
    pub fn take(&mut self, summary: CellSummary) -> ViewChange {
        let change = match self.cells.get(&summary.cell) {
            None => ViewChange::Content(ContentChange::NewCell),
            Some(old) if old.at_ms >= summary.at_ms => return ViewChange::None,
            Some(old) => {
                let (h, o) = (&summary.hosts, &old.hosts);
                let differs = [
                    (old.by != summary.by, ContentChange::Publisher),
                    (old.members != summary.members, ContentChange::Members),
                    (old.tasks != summary.tasks, ContentChange::Tasks),
                    (
                        o.down_count != h.down_count || o.down != h.down,
                        ContentChange::Down,
                    ),
                    (o.versions != h.versions, ContentChange::Versions),
                    (
                        o.by_peer != h.by_peer || o.by_addrs != h.by_addrs,
                        ContentChange::Contact,
                    ),
                ];
                match differs.into_iter().find(|(d, _)| *d) {
                    Some((_, what)) => ViewChange::Content(what),
                    None => ViewChange::Fresher,
                }
            }
        };
        self.cells.insert(summary.cell.clone(), summary);
        change
    }

    /// Forgets cells not heard from since `before_ms` (gone, or cut off);
    /// true when any went.
    pub fn expire(&mut self, before_ms: u64) -> bool {
        let before = self.cells.len();
        self.cells.retain(|_, s| s.at_ms >= before_ms);
        self.cells.len() != before
    }

    /// Task `id` across the fleet.
    pub fn task(&self, id: &str) -> TaskCounts {
        let mut total = TaskCounts::default();
        for s in self.cells.values() {
            if let Some(t) = s.tasks.get(id) {
                total.merge(t);
            }
        }
        total
    }

    /// Task `id`'s rollout of `waves` waves across the fleet: each cell's
    /// wave counts added up, complete when every cell in the view counted
    /// the task wave by wave and every live member in some state.
    pub fn rollout_counts(&self, id: &str, waves: usize) -> RolloutCounts {
        let mut counts = RolloutCounts {
            waves: vec![WaveTally::default(); waves],
            complete: !self.cells.is_empty(),
        };
        for s in self.cells.values() {
            match s.tasks.get(id) {
                Some(t) if t.waves.len() == waves => {
                    for (total, cell) in counts.waves.iter_mut().zip(&t.waves) {
                        total.add(cell);
                    }
                    if t.total() < s.members {
                        counts.complete = false;
                    }
                }
                _ => counts.complete = false,
            }
        }
        counts
    }

    /// Every task any cell reports.
    pub fn task_ids(&self) -> BTreeSet<String> {
        self.cells
            .values()
            .flat_map(|s| s.tasks.keys().cloned())
            .collect()
    }

    /// Hosts counted in all cells.
    pub fn members(&self) -> u32 {
        self.cells.values().map(|s| s.members).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_PLANS: &BTreeMap<String, rollout::Plan> = &BTreeMap::new();

    fn report(host: &str, states: &[(&str, &str)]) -> HostReport {
        HostReport {
            host: host.into(),
            states: states
                .iter()
                .map(|(t, s)| (t.to_string(), (s.to_string(), String::new())))
                .collect(),
            heartbeat: None,
        }
    }

    #[test]
    fn a_cell_counts_every_member_once_and_names_who_has_not_applied() {
        let mut cell = CellRollup::default();
        cell.take(report("a", &[("t1", "applied")]), 0);
        cell.take(report("b", &[("t1", "failed")]), 0);
        cell.take(report("c", &[]), 0);
        cell.take(report("gone", &[("t1", "applied")]), 0);
        cell.take(report("stopped", &[("t1", "pending")]), 0);
        let members: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let s = cell.summary("c1", "a", &members, 10, NO_PLANS);
        let t = &s.tasks["t1"];
        assert_eq!(
            t.total(),
            6,
            "every member and every departed reporter once"
        );
        assert_eq!(
            t.counts["applied"], 2,
            "a departed host that applied counts as applied"
        );
        assert_eq!(t.hosts["failed"], ["b"]);
        assert_eq!(t.hosts[NO_ANSWER], ["c"]);
        assert_eq!(t.hosts[NOT_REPORTING], ["d"]);
        assert_eq!(t.hosts[DOWN], ["stopped"]);
        assert!(!t.hosts.contains_key("applied"));
        // A day later the departed are forgotten.
        let later = cell.summary("c1", "a", &members, 10 + DOWN_MEMORY_MS + 1, NO_PLANS);
        assert_eq!(later.tasks["t1"].total(), 4);
    }

    #[test]
    fn the_fleet_adds_the_newest_summary_of_each_cell() {
        let mut fleet = FleetStatus::default();
        let mut one = CellRollup::default();
        one.take(report("a", &[("t1", "applied")]), 0);
        let mut two = CellRollup::default();
        two.take(report("x", &[("t1", "pending")]), 0);
        let old = one.summary("c1", "a", &["a".into()], 5, NO_PLANS);
        let mut newer = old.clone();
        newer.at_ms = 9;
        assert_eq!(
            fleet.take(old.clone()),
            ViewChange::Content(ContentChange::NewCell)
        );
        assert_eq!(
            fleet.take(newer),
            ViewChange::Fresher,
            "the same counts, later"
        );
        assert_eq!(fleet.take(old), ViewChange::None, "older than the one held");
        assert_eq!(
            fleet.take(two.summary("c2", "x", &["x".into(), "y".into()], 7, NO_PLANS)),
            ViewChange::Content(ContentChange::NewCell)
        );
        let t = fleet.task("t1");
        assert_eq!(t.counts["applied"], 1);
        assert_eq!(t.counts["pending"], 1);
        assert_eq!(t.counts[NOT_REPORTING], 1);
        assert_eq!(fleet.members(), 3);
        assert_eq!(
            fleet.cells["c1"].at_ms, 9,
            "an older summary does not replace a newer one"
        );
        assert!(fleet.expire(8), "c2 was last heard at 7");
        assert!(!fleet.expire(8), "nothing more to forget");
        assert_eq!(fleet.task("t1").total(), 1);
    }

    #[test]
    fn a_change_is_named_by_the_first_part_that_differs() {
        let mut fleet = FleetStatus::default();
        let mut cell = CellRollup::default();
        cell.take(report("a", &[("t1", "applied")]), 0);
        let first = cell.summary("c1", "a", &["a".into()], 5, NO_PLANS);
        fleet.take(first.clone());
        let mut next = first.clone();
        let mut at = 5;
        let mut change = |f: &mut FleetStatus, s: &mut CellSummary| {
            at += 1;
            s.at_ms = at;
            f.take(s.clone())
        };
        next.hosts.by_addrs = vec!["/ip4/10.0.0.9/udp/1/quic-v1".into()];
        assert_eq!(
            change(&mut fleet, &mut next),
            ViewChange::Content(ContentChange::Contact),
            "where to ask for the table is part of what the view shows"
        );
        next.hosts.versions.insert("1.0".into(), 1);
        assert_eq!(
            change(&mut fleet, &mut next),
            ViewChange::Content(ContentChange::Versions)
        );
        next.hosts.down_count = 1;
        assert_eq!(
            change(&mut fleet, &mut next),
            ViewChange::Content(ContentChange::Down)
        );
        next.members = 2;
        next.tasks.clear();
        assert_eq!(
            change(&mut fleet, &mut next),
            ViewChange::Content(ContentChange::Members),
            "the members are compared before the tasks"
        );
        next.by = "b".into();
        assert_eq!(
            change(&mut fleet, &mut next),
            ViewChange::Content(ContentChange::Publisher)
        );
        assert_eq!(change(&mut fleet, &mut next), ViewChange::Fresher);
    }

    #[test]
    fn named_hosts_are_bounded_and_oversized_input_refused() {
        let mut cell = CellRollup::default();
        let members: Vec<String> = (0..200).map(|i| format!("h{i}")).collect();
        for m in &members {
            cell.take(report(m, &[("t", "failed")]), 0);
        }
        let s = cell.summary("c", "h0", &members, 1, NO_PLANS);
        assert_eq!(s.tasks["t"].counts["failed"], 200);
        assert_eq!(s.tasks["t"].hosts["failed"].len(), MAX_NAMED_HOSTS);
        assert!(s.check().is_ok());
        let many: Vec<(String, &str)> = (0..MAX_REPORTED_TASKS + 1)
            .map(|i| (format!("t{i}"), "applied"))
            .collect();
        let big = HostReport {
            host: "h".into(),
            states: many
                .iter()
                .map(|(t, s)| (t.clone(), (s.to_string(), String::new())))
                .collect(),
            heartbeat: None,
        };
        assert_eq!(cell.take(big, 0), Taken::Refused);
    }

    fn beat(host: &str, version: &str) -> HostReport {
        HostReport {
            heartbeat: Some(Heartbeat {
                agent_version: version.into(),
                kernel: "6.1.0".into(),
                spool_backlog: 7,
                ..Default::default()
            }),
            ..report(host, &[])
        }
    }

    #[test]
    fn a_cell_names_its_hosts_down_since_they_left_and_counts_versions() {
        let mut cell = CellRollup::default();
        for (h, v) in [("a", "1.0"), ("b", "1.0"), ("c", "1.1"), ("d", "1.0")] {
            assert_eq!(cell.take(beat(h, v), 100), Taken::Changed);
        }
        // New figures alone do not change the summary; a new version does.
        let mut busier = beat("a", "1.0");
        if let Some(h) = busier.heartbeat.as_mut() {
            h.spool_backlog = 9_000;
        }
        assert_eq!(cell.take(busier, 100), Taken::Same);
        assert_eq!(cell.take(beat("a", "1.1"), 100), Taken::Changed);
        assert_eq!(cell.take(beat("a", "1.0"), 100), Taken::Changed);
        let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let s = cell.summary("c1", "a", &all, 1_000, NO_PLANS);
        assert_eq!(s.hosts.down_count, 0);
        assert_eq!(s.hosts.versions["1.0"], 3);
        assert_eq!(s.hosts.versions["1.1"], 1);
        // d leaves at 1,000 (last seen live), c at 5,000.
        let three = &all[..3];
        cell.summary("c1", "a", three, 5_000, NO_PLANS);
        let two = &all[..2];
        let s = cell.summary("c1", "a", two, 9_000, NO_PLANS);
        assert_eq!(s.hosts.down_count, 2);
        let down: Vec<(&str, u64)> = s
            .hosts
            .down
            .iter()
            .map(|d| (d.host.as_str(), d.since_ms))
            .collect();
        assert_eq!(down, [("d", 1_000), ("c", 5_000)], "longest down first");
        assert_eq!(s.hosts.versions["1.0"], 2, "only live hosts counted");
        assert!(!s.hosts.versions.contains_key("1.1"));
        assert!(s.check().is_ok());

        // The table: every host, live or not, with its last heartbeat;
        // a live member that never reported has none.
        let mut members = two.to_vec();
        members.push("e".into());
        let t = cell.table("c1", "a", &members, 10_000);
        let rows: Vec<(&str, bool, u64)> = t
            .hosts
            .iter()
            .map(|r| (r.host.as_str(), r.alive, r.last_seen_ms))
            .collect();
        assert_eq!(
            rows,
            [
                ("a", true, 10_000),
                ("b", true, 10_000),
                ("c", false, 5_000),
                ("d", false, 1_000),
                ("e", true, 10_000)
            ]
        );
        assert_eq!(
            t.hosts[0].heartbeat.as_ref().map(|h| h.spool_backlog),
            Some(7)
        );
        assert_eq!(t.hosts[0].heartbeat_at_ms, 100);
        assert!(t.hosts[4].heartbeat.is_none());
        assert!(t.check().is_ok());
    }

    #[test]
    fn a_report_with_a_heartbeat_over_the_limits_is_refused() {
        let mut cell = CellRollup::default();
        let mut bad = beat("a", "1.0");
        if let Some(h) = bad.heartbeat.as_mut() {
            h.tags = vec!["t".into(); crate::fleet::MAX_FACT_ITEMS + 1];
        }
        assert_eq!(cell.take(bad, 0), Taken::Refused);
        assert_eq!(cell.take(beat("a", "1.0"), 0), Taken::Changed);
    }
}
