//! The task part of a scenario: an operator's task published at one host
//! and spread to the whole fleet by the production task plane and
//! anti-entropy, on the modelled gossipsub of [`crate::task_spread`], with
//! some hosts away while it spreads.
//!
//! Unlike membership, the task plane crosses cells, so the whole fleet is
//! held at once (about 14 KB a host at a million).

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::seq::index;
use rand::SeedableRng;
use serde::Serialize;

use super::report::Quantiles;
use super::scenario::{Scenario, TaskPublish};
use crate::task_spread::{SampleTask, SpreadConfig, TaskSpread, HEARTBEAT, HISTORY_LENGTH};

/// Unix time at the start of the task run: validity windows are read
/// against it, so a fixed one keeps runs the same.
const EPOCH: u64 = 1_800_000_000;
/// Time step while waiting for every host to hold the task.
const POLL: Duration = Duration::from_millis(100);

/// What spreading one task measured.
#[derive(Debug, Clone, Serialize)]
pub struct TaskOutcome {
    /// Hosts online while it spread, and how many held it.
    pub online_hosts: usize,
    pub online_held: usize,
    /// Seconds from publication until each online host held it (sorted).
    #[serde(skip)]
    pub delivery_s: Vec<f32>,
    /// Quantiles of `delivery_s`; `max` is the 100 % time when every
    /// online host held it.
    pub delivery: Quantiles,
    /// Hosts away while it spread, and how many held it after they came back.
    pub away_hosts: usize,
    pub away_held: usize,
    /// Seconds from a host's return until it held the task.
    pub away_catch_up: Quantiles,
    /// Task-plane bytes each host sent for the task (gossip copies,
    /// IHAVE/IWANT, anti-entropy beyond its steady rate).
    pub bytes_per_host: f64,
    /// Gossip copies each host received (1 is no duplicate).
    pub copies_per_host: f64,
    /// Anti-entropy bytes per host per second with nothing to spread.
    pub steady_bytes_per_host_s: f64,
    pub sync_interval_s: u64,
    /// Mean one-way latency used for every link, and the loss.
    pub latency_ms: f64,
    pub loss: f64,
    pub trace_hash: String,
    /// The task's rollout in waves, when the scenario has one.
    pub rollout: Option<super::rollout::RolloutOutcome>,
}

/// The scenario's mean one-way latency, jitter included (the task
/// model has one latency for every link).
fn mean_latency_ms(scenario: &Scenario) -> f64 {
    let total: f64 = scenario.regions.iter().map(|r| r.share).sum();
    scenario
        .regions
        .iter()
        .map(|r| r.share * r.latency_ms * (1.0 + r.jitter / 2.0))
        .sum::<f64>()
        / total.max(f64::MIN_POSITIVE)
}

/// Spreads one task over the scenario's fleet in cells of the mean size
/// that `cells` gives.
pub fn run(scenario: &Scenario, task: &TaskPublish, cells: usize) -> anyhow::Result<TaskOutcome> {
    let hosts = usize::try_from(scenario.hosts)?;
    let sync = Duration::from_secs(task.sync_interval_s);
    let latency_ms = mean_latency_ms(scenario);
    let config_cell_size = hosts.div_ceil(cells.max(1)).max(2);
    let config = SpreadConfig {
        hosts,
        cell_size: config_cell_size,
        cross_links: task.cross_links,
        latency: Duration::from_secs_f64(latency_ms / 1e3),
        loss: scenario.loss.independent,
        sync_interval: sync,
        seed: scenario.seed,
    };
    let sample = SampleTask::new(EPOCH)?;
    let mut spread = TaskSpread::new(config, &sample.signed_root, EPOCH)?;

    // Start-up exchanges, then a steady window of two periods.
    spread.run_for(sync * 2);
    let before = spread.bytes();
    let steady = sync * 2;
    spread.run_for(steady);
    let sync_rate = (spread.bytes().sync - before.sync) as f64 / steady.as_secs_f64();
    let steady_bytes_per_host_s = sync_rate / hosts as f64;

    let mut rng = SmallRng::seed_from_u64(scenario.seed ^ 0x7a5c);
    let away_count = ((task.away_pct / 100.0 * hosts as f64).round() as usize).min(hosts - 1);
    let chosen = index::sample(&mut rng, hosts, away_count + 1).into_vec();
    let (publisher, away) = (chosen[0], &chosen[1..]);
    for &h in away {
        spread.take_offline(h);
    }
    let online_hosts = hosts - away.len();
    let before = spread.bytes();
    let (_, duplicates_before) = spread.refused_and_duplicates();
    let published = spread.now();
    let t = spread.publish(publisher, sample.signed_task);
    let deadline = published + sync * 6;
    while spread.held_by(t) < online_hosts && spread.now() < deadline {
        spread.run_for(POLL);
    }
    let window = spread.now() - published;
    let cost = spread.bytes();
    let (_, duplicates) = spread.refused_and_duplicates();
    let mut delivery_s: Vec<f32> = (0..hosts)
        .filter_map(|h| spread.held_at(t, h))
        .map(|at| (at - published).as_secs_f32())
        .collect();
    delivery_s.sort_by(f32::total_cmp);
    let sync_extra = ((cost.sync - before.sync) as f64 - sync_rate * window.as_secs_f64()).max(0.0);
    let bytes_per_host = ((cost.gossip - before.gossip)
        + (cost.gossip_control - before.gossip_control)) as f64
        / hosts as f64
        + sync_extra / hosts as f64;

    // The hosts away come back once gossip's caches ran out.
    spread.run_for(HEARTBEAT * (u32::from(HISTORY_LENGTH) + 1));
    let back = spread.now();
    for &h in away {
        spread.bring_online(h);
    }
    spread.run_for(sync * 3);
    let mut catch_up: Vec<f32> = away
        .iter()
        .filter_map(|&h| spread.held_at(t, h))
        .map(|at| at.saturating_sub(back).as_secs_f32())
        .collect();
    catch_up.sort_by(f32::total_cmp);

    let rollout = match &task.rollout {
        Some(model) => {
            let held: Vec<Option<Duration>> = (0..hosts)
                .map(|h| spread.held_at(t, h).map(|at| at.saturating_sub(published)))
                .collect();
            let latency = Duration::from_secs_f64(latency_ms / 1e3);
            Some(super::rollout::run(
                &held,
                config_cell_size,
                latency,
                model,
                scenario.seed,
            )?)
        }
        None => None,
    };
    let held = delivery_s.len() as u64;
    Ok(TaskOutcome {
        online_hosts,
        online_held: delivery_s.len(),
        delivery: Quantiles::of(&delivery_s),
        delivery_s,
        away_hosts: away.len(),
        away_held: catch_up.len(),
        away_catch_up: Quantiles::of(&catch_up),
        bytes_per_host,
        // First copies (one per host that held it) and duplicates.
        copies_per_host: (duplicates - duplicates_before + held) as f64 / online_hosts as f64,
        steady_bytes_per_host_s,
        sync_interval_s: task.sync_interval_s,
        latency_ms,
        loss: scenario.loss.independent,
        trace_hash: format!("{:016x}", spread.trace_hash()),
        rollout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_the_share_weighted_mean_with_jitter() {
        let s = Scenario::parse(
            "name=\"x\"\nhosts=10\nduration_s=1\n[[regions]]\nname=\"a\"\nlatency_ms=10\njitter=0\nshare=3\n[[regions]]\nname=\"b\"\nlatency_ms=20\njitter=1\n",
        )
        .unwrap();
        assert!((mean_latency_ms(&s) - (3.0 * 10.0 + 30.0) / 4.0).abs() < 1e-9);
    }
}
