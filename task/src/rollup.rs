//! The fleet's view of every task, rolled up without a message per host:
//! each host reports its states to its cell's aggregators, each
//! aggregator sums its cell into a [`CellSummary`] that the mesh gossips,
//! and every host adds up the summaries of all cells ([`FleetStatus`]).
//! A host hears one message per cell, never one per host of the fleet.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

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

/// What one host says about its tasks (to its cell's aggregators).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    pub host: String,
    /// Task id -> (state, detail).
    pub states: BTreeMap<String, (String, String)>,
}

/// One task's states across a cell (or, added up, the fleet).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounts {
    /// State -> hosts in it.
    pub counts: BTreeMap<String, u32>,
    /// State -> some of the hosts in it (all but `applied` and
    /// `not_targeted`, at most [`MAX_NAMED_HOSTS`] each per cell).
    pub hosts: BTreeMap<String, Vec<String>>,
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
}

impl CellSummary {
    /// Checks a summary from the network against the limits.
    pub fn check(&self) -> Result<(), String> {
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
        }
        Ok(())
    }
}

/// What an aggregator holds of its cell: the latest report of each host,
/// and when it last saw the host live.
#[derive(Debug, Default)]
pub struct CellRollup {
    reports: BTreeMap<String, (HostReport, u64)>,
}

impl CellRollup {
    /// Takes a host's report (replacing its last); false when it breaks
    /// the limits.
    pub fn take(&mut self, report: HostReport, now_ms: u64) -> bool {
        if report.states.len() > MAX_REPORTED_TASKS {
            return false;
        }
        self.reports.insert(report.host.clone(), (report, now_ms));
        true
    }

    /// Sums the cell whose live members are `members`: each member in the
    /// state it reported, `no_answer` for a task another member holds
    /// that it did not report, `not_reporting` when it sent nothing. A
    /// host that reported and is no longer live counts in its last final
    /// state (applied, failed, refused, stopped, not targeted) or as
    /// `down`, for a day.
    pub fn summary(&mut self, cell: &str, by: &str, members: &[String], at_ms: u64) -> CellSummary {
        let live: BTreeSet<&String> = members.iter().collect();
        for (host, (_, seen)) in self.reports.iter_mut() {
            if live.contains(host) {
                *seen = at_ms;
            }
        }
        self.reports
            .retain(|_, (_, seen)| at_ms.saturating_sub(*seen) <= DOWN_MEMORY_MS);
        let gone: Vec<&String> = self
            .reports
            .keys()
            .filter(|h| !live.contains(h))
            .take(MAX_DOWN_HOSTS)
            .collect();
        let task_ids: BTreeSet<&String> = self
            .reports
            .values()
            .flat_map(|(r, _)| r.states.keys())
            .take(MAX_REPORTED_TASKS)
            .collect();
        let mut tasks: BTreeMap<String, TaskCounts> = BTreeMap::new();
        for id in task_ids {
            let counts = tasks.entry(id.clone()).or_default();
            for host in members {
                match self.reports.get(host) {
                    Some((r, _)) => match r.states.get(id) {
                        Some((state, _)) => counts.add(state, host),
                        None => counts.add(NO_ANSWER, host),
                    },
                    None => counts.add(NOT_REPORTING, host),
                }
            }
            for host in &gone {
                let last = self.reports.get(*host).and_then(|(r, _)| r.states.get(id));
                match last {
                    Some((state, _)) if state != "pending" => counts.add(state, host),
                    _ => counts.add(DOWN, host),
                }
            }
        }
        CellSummary {
            cell: cell.into(),
            by: by.into(),
            at_ms,
            members: members.len() as u32,
            tasks,
        }
    }
}

/// The fleet as one host hears it: the newest summary of each cell.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct FleetStatus {
    pub cells: BTreeMap<String, CellSummary>,
}

impl FleetStatus {
    /// Keeps `summary` when it is the newest of its cell.
    pub fn take(&mut self, summary: CellSummary) {
        match self.cells.get(&summary.cell) {
            Some(old) if old.at_ms >= summary.at_ms => {}
            _ => {
                self.cells.insert(summary.cell.clone(), summary);
            }
        }
    }

    /// Forgets cells not heard from since `before_ms` (gone, or cut off).
    pub fn expire(&mut self, before_ms: u64) {
        self.cells.retain(|_, s| s.at_ms >= before_ms);
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

    fn report(host: &str, states: &[(&str, &str)]) -> HostReport {
        HostReport {
            host: host.into(),
            states: states
                .iter()
                .map(|(t, s)| (t.to_string(), (s.to_string(), String::new())))
                .collect(),
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
        let s = cell.summary("c1", "a", &members, 10);
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
        let later = cell.summary("c1", "a", &members, 10 + DOWN_MEMORY_MS + 1);
        assert_eq!(later.tasks["t1"].total(), 4);
    }

    #[test]
    fn the_fleet_adds_the_newest_summary_of_each_cell() {
        let mut fleet = FleetStatus::default();
        let mut one = CellRollup::default();
        one.take(report("a", &[("t1", "applied")]), 0);
        let mut two = CellRollup::default();
        two.take(report("x", &[("t1", "pending")]), 0);
        let old = one.summary("c1", "a", &["a".into()], 5);
        let mut newer = old.clone();
        newer.at_ms = 9;
        fleet.take(newer);
        fleet.take(old);
        fleet.take(two.summary("c2", "x", &["x".into(), "y".into()], 7));
        let t = fleet.task("t1");
        assert_eq!(t.counts["applied"], 1);
        assert_eq!(t.counts["pending"], 1);
        assert_eq!(t.counts[NOT_REPORTING], 1);
        assert_eq!(fleet.members(), 3);
        assert_eq!(
            fleet.cells["c1"].at_ms, 9,
            "an older summary does not replace a newer one"
        );
        fleet.expire(8);
        assert_eq!(fleet.task("t1").total(), 1);
    }

    #[test]
    fn named_hosts_are_bounded_and_oversized_input_refused() {
        let mut cell = CellRollup::default();
        let members: Vec<String> = (0..200).map(|i| format!("h{i}")).collect();
        for m in &members {
            cell.take(report(m, &[("t", "failed")]), 0);
        }
        let s = cell.summary("c", "h0", &members, 1);
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
        };
        assert!(!cell.take(big, 0));
    }
}
