//! A fleet scenario as a TOML file: how many hosts in which regions, the
//! network they sit on, how they boot, and what happens to them when.
//! Shipped scenarios live in `sim/scenarios/`; docs/simulator.md lists
//! every field.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::netsim::BurstLoss;

/// Most hosts a scenario may ask for (beyond it a run cannot fit in memory).
pub const MAX_HOSTS: u64 = 10_000_000;
/// Longest run in virtual time.
pub const MAX_DURATION_S: u64 = 7 * 24 * 3600;
/// Largest scenario file read.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// A whole scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used for the report directory.
    pub name: String,
    /// Seeds everything random: the same seed gives the same run.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Hosts in the whole fleet.
    pub hosts: u64,
    /// Largest cell: a region's hosts split into 2^k cells by the
    /// production hash until the mean cell is no larger.
    #[serde(default = "default_cell_size")]
    pub cell_size: u32,
    /// Virtual seconds to run.
    pub duration_s: u64,
    /// How often the fleet is measured (virtual seconds).
    #[serde(default = "default_sample")]
    pub sample_every_s: u64,
    /// Percent of hosts allowed to serve as aggregator.
    #[serde(default = "default_eligible")]
    pub eligible_pct: f64,
    /// Seconds a host's cell may have no aggregator before the host ships
    /// straight to a sink (the daemon's `mesh.direct_to_sink_after_secs`);
    /// 0: never.
    #[serde(default = "default_direct_to_sink_after")]
    pub direct_to_sink_after_s: u64,
    /// Regions the fleet spreads over (one region of 20 ms if none given).
    #[serde(default)]
    pub regions: Vec<Region>,
    /// Loss on every link.
    #[serde(default)]
    pub loss: Loss,
    /// How the fleet starts.
    #[serde(default)]
    pub boot: Boot,
    /// What happens during the run, in any order.
    #[serde(default)]
    pub events: Vec<FleetEvent>,
    /// An operator's task published to the whole fleet, if the scenario
    /// measures the task plane too.
    pub task: Option<TaskPublish>,
}

/// One signed task published at a random host and spread by the task
/// plane (gossip and anti-entropy) to every host of the fleet, over the
/// scenario's mean latency and independent loss
/// ([`crate::task_spread`]; bursts are not modelled there).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskPublish {
    /// The anti-entropy period (the mesh's `tasks.sync_interval_secs`).
    #[serde(default = "default_sync_interval")]
    pub sync_interval_s: u64,
    /// Members of other cells each host dials (the mesh's default is 2).
    #[serde(default = "default_cross_links")]
    pub cross_links: usize,
    /// Percent of hosts away while the task spreads: they come back once
    /// gossip's message caches have run out, so only anti-entropy can
    /// bring them the task.
    #[serde(default = "default_away_pct")]
    pub away_pct: f64,
    /// The task rolls out in waves, with a share of the hosts that apply
    /// it failing (`super::rollout`).
    pub rollout: Option<super::rollout::RolloutModel>,
}

fn default_sync_interval() -> u64 {
    10
}
fn default_cross_links() -> usize {
    2
}
fn default_away_pct() -> f64 {
    0.1
}

fn default_seed() -> u64 {
    1
}
fn default_cell_size() -> u32 {
    50
}
fn default_sample() -> u64 {
    10
}
fn default_eligible() -> f64 {
    20.0
}
fn default_direct_to_sink_after() -> u64 {
    starling_mesh::attach::DEFAULT_DIRECT_TO_SINK_AFTER.as_secs()
}

/// A region: a share of the fleet and the one-way latency between its
/// hosts (cells never span regions).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub name: String,
    /// Relative share of the fleet's hosts.
    #[serde(default = "default_share")]
    pub share: f64,
    /// Median one-way latency between two hosts of the region.
    pub latency_ms: f64,
    /// Each message takes up to this fraction more than `latency_ms`,
    /// uniformly (a spread like measured intra-region latency).
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

fn default_share() -> f64 {
    1.0
}
fn default_jitter() -> f64 {
    0.5
}

/// Loss on every link: independent, and optionally in bursts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Loss {
    /// Probability that any one message is lost.
    #[serde(default)]
    pub independent: f64,
    /// Bursts on each host's uplink (Gilbert-Elliott).
    pub burst: Option<Burst>,
}

/// Bursty loss in a scenario file.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Burst {
    /// Probability per message that a burst starts.
    pub enter: f64,
    /// Probability per message that a burst ends.
    pub leave: f64,
    /// Loss within a burst.
    pub loss: f64,
}

impl From<Burst> for BurstLoss {
    fn from(b: Burst) -> Self {
        Self {
            enter: b.enter,
            leave: b.leave,
            loss: b.loss,
        }
    }
}

/// How the fleet starts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    /// Hosts start uniformly over this many virtual seconds (0: every
    /// host at the same instant, as after a power cut).
    #[serde(default)]
    pub spread_s: f64,
}

/// Something that happens to the fleet during a run.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FleetEvent {
    /// Every cell splits in two: `fraction` of its hosts (by a hash of
    /// the host) reach only each other until a `heal`.
    Partition { at_s: f64, fraction: f64 },
    /// Any partition ends.
    Heal { at_s: f64 },
    /// From `at_s` to `until_s`, `pct_per_min` percent of the fleet
    /// crashes each minute, each crashed host restarting after
    /// `restart_after_s` (never, if absent).
    Churn {
        at_s: f64,
        until_s: f64,
        pct_per_min: f64,
        restart_after_s: Option<f64>,
    },
    /// Every host serving as aggregator in `region` crashes at once.
    AggregatorRegionFailure { at_s: f64, region: String },
    /// `pct` percent of hosts become slow: they read each message
    /// `backlog_ms` late (a saturated CPU).
    Slow {
        at_s: f64,
        pct: f64,
        backlog_ms: u64,
    },
}

impl FleetEvent {
    /// When it starts.
    pub fn at(&self) -> Duration {
        let s = match self {
            Self::Partition { at_s, .. }
            | Self::Heal { at_s }
            | Self::Churn { at_s, .. }
            | Self::AggregatorRegionFailure { at_s, .. }
            | Self::Slow { at_s, .. } => *at_s,
        };
        Duration::from_secs_f64(s.max(0.0))
    }
}

/// Why a scenario cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: String },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("scenario {name}: {problem}")]
    Invalid { name: String, problem: String },
}

impl Scenario {
    /// How long a cell may have no aggregator before its hosts ship
    /// straight to a sink; None: never.
    pub fn direct_to_sink_after(&self) -> Option<Duration> {
        (self.direct_to_sink_after_s > 0).then(|| Duration::from_secs(self.direct_to_sink_after_s))
    }

    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| ScenarioError::Read {
            path: shown.clone(),
            source,
        })?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(ScenarioError::TooLarge { path: shown });
        }
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ScenarioError::Parse { source, .. } => ScenarioError::Parse {
                path: shown,
                source,
            },
            other => other,
        })
    }

    /// Parses and checks a scenario.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let mut s: Scenario = toml::from_str(text).map_err(|source| ScenarioError::Parse {
            path: "scenario".into(),
            source,
        })?;
        if s.regions.is_empty() {
            s.regions.push(Region {
                name: "region".into(),
                share: 1.0,
                latency_ms: 20.0,
                jitter: default_jitter(),
            });
        }
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> Result<(), ScenarioError> {
        let bad = |problem: String| {
            Err(ScenarioError::Invalid {
                name: self.name.clone(),
                problem,
            })
        };
        let probability = |p: f64| (0.0..=1.0).contains(&p);
        if self.hosts == 0 || self.hosts > MAX_HOSTS {
            return bad(format!("hosts must be 1 to {MAX_HOSTS}"));
        }
        if !(2..=5_000).contains(&self.cell_size) {
            return bad("cell_size must be 2 to 5000".into());
        }
        if self.duration_s == 0 || self.duration_s > MAX_DURATION_S {
            return bad(format!("duration_s must be 1 to {MAX_DURATION_S}"));
        }
        if self.sample_every_s == 0 {
            return bad("sample_every_s must be at least 1".into());
        }
        if !(0.0..=100.0).contains(&self.eligible_pct) {
            return bad("eligible_pct must be 0 to 100".into());
        }
        if self.direct_to_sink_after_s > 86_400 {
            return bad("direct_to_sink_after_s must be at most 86400 (0: never)".into());
        }
        for r in &self.regions {
            if !(r.share > 0.0 && r.share.is_finite()) {
                return bad(format!("region {}: share must be positive", r.name));
            }
            if !(r.latency_ms >= 0.0 && r.latency_ms <= 10_000.0) {
                return bad(format!("region {}: latency_ms must be 0 to 10000", r.name));
            }
            if !(0.0..=10.0).contains(&r.jitter) {
                return bad(format!("region {}: jitter must be 0 to 10", r.name));
            }
        }
        if !probability(self.loss.independent) {
            return bad("loss.independent must be 0 to 1".into());
        }
        if let Some(b) = self.loss.burst {
            if !(probability(b.enter) && probability(b.leave) && probability(b.loss)) {
                return bad("loss.burst probabilities must be 0 to 1".into());
            }
        }
        if !(self.boot.spread_s >= 0.0 && self.boot.spread_s <= self.duration_s as f64) {
            return bad("boot.spread_s must be 0 to duration_s".into());
        }
        if let Some(t) = &self.task {
            if !(1..=3600).contains(&t.sync_interval_s) {
                return bad("task.sync_interval_s must be 1 to 3600".into());
            }
            if t.cross_links > 64 {
                return bad("task.cross_links must be 0 to 64".into());
            }
            if !(0.0..=50.0).contains(&t.away_pct) {
                return bad("task.away_pct must be 0 to 50".into());
            }
            if self.hosts < 2 {
                return bad("a task needs at least 2 hosts".into());
            }
            if let Some(r) = &t.rollout {
                if let Err(problem) = r.check() {
                    return bad(problem);
                }
            }
        }
        for e in &self.events {
            let at = e.at().as_secs_f64();
            if at > self.duration_s as f64 {
                return bad(format!("an event at {at} s is after the run ends"));
            }
            match e {
                FleetEvent::Partition { fraction, .. } if !probability(*fraction) => {
                    return bad("partition fraction must be 0 to 1".into())
                }
                FleetEvent::Churn {
                    pct_per_min,
                    until_s,
                    at_s,
                    ..
                } if !(0.0..=100.0).contains(pct_per_min) || until_s < at_s => {
                    return bad("churn needs pct_per_min 0 to 100 and until_s after at_s".into())
                }
                FleetEvent::AggregatorRegionFailure { region, .. }
                    if !self.regions.iter().any(|r| &r.name == region) =>
                {
                    return bad(format!("no region named {region}"))
                }
                FleetEvent::Slow { pct, .. } if !(0.0..=100.0).contains(pct) => {
                    return bad("slow pct must be 0 to 100".into())
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_scenario_gets_defaults() {
        let s = Scenario::parse("name = \"x\"\nhosts = 100\nduration_s = 60\n").unwrap();
        assert_eq!(s.cell_size, 50);
        assert_eq!(s.regions.len(), 1);
        assert!(s.events.is_empty());
    }

    #[test]
    fn events_parse_by_kind() {
        let s = Scenario::parse(
            r#"
name = "x"
hosts = 100
duration_s = 120
[[regions]]
name = "eu"
latency_ms = 10
[[events]]
kind = "partition"
at_s = 10
fraction = 0.5
[[events]]
kind = "aggregator_region_failure"
at_s = 20
region = "eu"
"#,
        )
        .unwrap();
        assert!(matches!(s.events[0], FleetEvent::Partition { .. }));
        assert_eq!(s.events[1].at(), Duration::from_secs(20));
    }

    #[test]
    fn nonsense_is_refused_with_the_reason() {
        for (text, needle) in [
            ("name=\"x\"\nhosts=0\nduration_s=1", "hosts"),
            ("name=\"x\"\nhosts=10\nduration_s=1\nloss={independent=2.0}", "loss"),
            ("name=\"x\"\nhosts=10\nduration_s=1\nbogus=1", "unknown field"),
            (
                "name=\"x\"\nhosts=10\nduration_s=1\n[task]\naway_pct=60",
                "away_pct",
            ),
            (
                "name=\"x\"\nhosts=10\nduration_s=10\n[[events]]\nkind=\"heal\"\nat_s=20",
                "after the run",
            ),
            (
                "name=\"x\"\nhosts=10\nduration_s=10\ndirect_to_sink_after_s=100000",
                "direct_to_sink_after_s",
            ),
            (
                "name=\"x\"\nhosts=10\nduration_s=10\n[[events]]\nkind=\"aggregator_region_failure\"\nat_s=1\nregion=\"mars\"",
                "mars",
            ),
        ] {
            let e = Scenario::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} should mention {needle}");
        }
    }

    #[test]
    fn every_shipped_scenario_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("sim/scenarios") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 10, "only {n} scenarios in {}", dir.display());
    }
}
