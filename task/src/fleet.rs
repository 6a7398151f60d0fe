//! The fleet's hosts, without a message per host: each host's heartbeat
//! (what Elkeid's agent heartbeat carries: version, facts, tags, the
//! configuration generation in force, the agent's own CPU, memory and
//! spool backlog) rides on its report to its cell's aggregators; the
//! cell's summary carries only counts and the hosts that are down; and
//! the table of a cell's hosts is asked of that cell's aggregator when an
//! operator wants it (docs/tasks.md, "The fleet's hosts").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod wire;
pub(crate) use wire::check_text;
pub use wire::{heartbeat_from_wire, heartbeat_to_wire, table_from_wire, table_to_wire};

/// Longest text in a heartbeat (a version, a kernel release, an address).
pub const MAX_FACT_TEXT: usize = 256;
/// Most addresses and tags in a heartbeat.
pub const MAX_FACT_ITEMS: usize = 64;
/// Agent versions counted by name in a cell's summary; the rest are
/// counted as [`OTHER_VERSIONS`].
pub const MAX_VERSIONS: usize = 16;
/// The name the versions beyond [`MAX_VERSIONS`] are counted under.
pub const OTHER_VERSIONS: &str = "(other)";
/// Most hosts in one cell's table.
pub const MAX_TABLE_HOSTS: usize = 4096;

/// What a host says about itself with each report. Every field is
/// defaulted when missing, so a heartbeat from another agent version
/// (fewer or more fields) still reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Heartbeat {
    /// The agent's version.
    pub agent_version: String,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// Distribution (`PRETTY_NAME` of os-release).
    pub os: String,
    /// Machine architecture.
    pub arch: String,
    /// Where its peers reach it.
    pub addrs: Vec<String>,
    /// Tags in force (its own and the fleet's).
    pub tags: Vec<String>,
    /// Highest generation among the fleet settings in force (0: none).
    pub config_generation: u64,
    /// The agent's CPU over the last interval, percent of one core.
    pub cpu_pct: f32,
    /// The agent's resident memory.
    pub rss_bytes: u64,
    /// Events spooled and not yet acknowledged by a sink.
    pub spool_backlog: u64,
    /// When the agent started (Unix ms).
    pub started_at_ms: u64,
}

impl Heartbeat {
    /// Checks a heartbeat from the network against the limits.
    pub fn check(&self) -> Result<(), String> {
        let texts = [&self.agent_version, &self.kernel, &self.os, &self.arch];
        if texts.iter().any(|t| t.len() > MAX_FACT_TEXT) {
            return Err("a fact longer than 256 bytes".into());
        }
        for (name, items) in [("addresses", &self.addrs), ("tags", &self.tags)] {
            if items.len() > MAX_FACT_ITEMS || items.iter().any(|t| t.len() > MAX_FACT_TEXT) {
                return Err(format!("{} {name}, or one too long", items.len()));
            }
        }
        if !self.cpu_pct.is_finite() || self.cpu_pct < 0.0 {
            return Err(format!("CPU {}", self.cpu_pct));
        }
        Ok(())
    }
}

/// A host that left its cell's live view, and since when (Unix ms: the
/// last time the aggregator saw it live).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownHost {
    pub host: String,
    pub since_ms: u64,
}

/// A cell's hosts in its summary: counts, the hosts down by name, and how
/// to ask for the whole table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellHosts {
    /// Hosts that reported and left the live view within a day.
    pub down_count: u32,
    /// Some of them (at most `MAX_NAMED_HOSTS`), longest down first.
    pub down: Vec<DownHost>,
    /// Live hosts by agent version (of those that sent a heartbeat).
    pub versions: BTreeMap<String, u32>,
    /// The aggregator that answers for the cell's table: its peer id and
    /// addresses.
    pub by_peer: String,
    pub by_addrs: Vec<String>,
}

impl CellHosts {
    /// Checks a cell's hosts from the network against the limits.
    pub fn check(&self) -> Result<(), String> {
        if self.down.len() > crate::rollup::MAX_NAMED_HOSTS {
            return Err(format!("{} hosts named down", self.down.len()));
        }
        if self.versions.len() > MAX_VERSIONS + 1
            || self.versions.keys().any(|v| v.len() > MAX_FACT_TEXT)
        {
            return Err(format!("{} versions, or one too long", self.versions.len()));
        }
        if self.by_addrs.len() > MAX_FACT_ITEMS
            || self.by_addrs.iter().any(|a| a.len() > MAX_FACT_TEXT)
            || self.by_peer.len() > MAX_FACT_TEXT
        {
            return Err("the aggregator's contact breaks the limits".into());
        }
        Ok(())
    }

    /// Counts `version` for one live host, folding versions beyond the
    /// first [`MAX_VERSIONS`] into [`OTHER_VERSIONS`].
    pub fn count_version(&mut self, version: &str) {
        let key = if self.versions.contains_key(version) || self.versions.len() < MAX_VERSIONS {
            version
        } else {
            OTHER_VERSIONS
        };
        *self.versions.entry(key.to_owned()).or_default() += 1;
    }
}

/// One host in a cell's table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRow {
    pub host: String,
    /// In the aggregator's live view now.
    pub alive: bool,
    /// When the aggregator last saw it live (Unix ms; for a live host,
    /// the time of the table).
    pub last_seen_ms: u64,
    /// Its last heartbeat, and when it came (None: it has not reported).
    pub heartbeat: Option<Heartbeat>,
    pub heartbeat_at_ms: u64,
}

/// A cell's hosts as its aggregator holds them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellTable {
    pub cell: String,
    /// The aggregator that answered.
    pub by: String,
    pub at_ms: u64,
    pub hosts: Vec<HostRow>,
}

impl CellTable {
    /// Checks a table from the network against the limits.
    pub fn check(&self) -> Result<(), String> {
        if self.hosts.len() > MAX_TABLE_HOSTS {
            return Err(format!("{} hosts", self.hosts.len()));
        }
        for row in &self.hosts {
            if let Some(h) = &row.heartbeat {
                h.check().map_err(|e| format!("{}: {e}", row.host))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_beyond_the_limit_fold_into_other() {
        let mut hosts = CellHosts::default();
        for i in 0..MAX_VERSIONS + 5 {
            hosts.count_version(&format!("1.{i}"));
        }
        hosts.count_version("1.0");
        assert_eq!(hosts.versions.len(), MAX_VERSIONS + 1);
        assert_eq!(hosts.versions["1.0"], 2);
        assert_eq!(hosts.versions[OTHER_VERSIONS], 5);
        assert!(hosts.check().is_ok());
    }

    #[test]
    fn heartbeats_over_the_limits_are_refused() {
        let ok = Heartbeat {
            agent_version: "0.1.0".into(),
            tags: vec!["web".into()],
            cpu_pct: 1.5,
            ..Default::default()
        };
        assert!(ok.check().is_ok());
        let long = Heartbeat {
            kernel: "x".repeat(MAX_FACT_TEXT + 1),
            ..ok.clone()
        };
        assert!(long.check().is_err());
        let many = Heartbeat {
            addrs: vec!["a".into(); MAX_FACT_ITEMS + 1],
            ..ok.clone()
        };
        assert!(many.check().is_err());
        let nan = Heartbeat {
            cpu_pct: f32::NAN,
            ..ok
        };
        assert!(nan.check().is_err());
    }
}
