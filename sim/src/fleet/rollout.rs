//! A staged rollout of the scenario's task over the times the task plane
//! delivered it to each host: which hosts apply it when and, for a task
//! that hurts the hosts that apply it (a poison task), how many it hurt
//! before the rollout halted and how long the halt took.
//!
//! The waves, each cell's canary and every decision are the production
//! code (`starling_task::rollout`). The status path that carries counts
//! to the sinks and decisions back is a model with the daemon's
//! intervals (docs/rollouts.md, "Where the decision is computed"): a
//! member reports a change within [`REPORT_WITHIN`], its cell's
//! aggregator sums the cell every [`SUM_EVERY`] while reports come and
//! sends the sum to the sink, the sink opens no wave beyond the first
//! until it has held the task for [`SINK_SETTLE`], advertises a changed
//! decision at most every [`ADVERT_MIN`], the advert reaches every host
//! by gossip in [`GOSSIP_HOPS`] hops, and a host acts on it at its next
//! rollout step, every [`STAGE_EVERY`]. The simulator runs the daemon's
//! code for the waves and decisions but not for this path yet.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use starling_task::rollout::{self, Control, Decision, Plan, RolloutCounts, WaveTally, WHOLE};

use super::report::Quantiles;
use crate::event_queue::EventQueue;
use crate::task_spread::host_name;

/// A member reports a change of its state within this.
pub const REPORT_WITHIN: Duration = Duration::from_secs(2);
/// A cell's aggregator sums its cell at most this often.
pub const SUM_EVERY: Duration = Duration::from_secs(2);
/// The sink opens no wave beyond the first before it has held the task
/// this long (the daemon's cell expiry: `SinkDecisions`).
pub const SINK_SETTLE: Duration = Duration::from_secs(75);
/// A sink advertises a changed decision at most this often.
pub const ADVERT_MIN: Duration = Duration::from_secs(1);
/// Gossip hops from the sink to the farthest host (gossipsub's mesh of
/// degree 6 spans a million hosts in 8).
pub const GOSSIP_HOPS: u32 = 8;
/// A host steps its rollouts this often.
pub const STAGE_EVERY: Duration = Duration::from_secs(1);
/// The task id the waves are drawn for (the draw depends on it).
const TASK_ID: &str = "sim-rollout";

/// The `[task.rollout]` section of a scenario: the task rolls out in the
/// default plan's waves, and a share of the hosts that apply it fail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutModel {
    /// Share of hosts (0 to 1) that fail once they apply the task: 1 is a
    /// poison task, 0 a healthy one.
    pub fail_share: f64,
    /// Seconds from applying until a failing host reports it failed (its
    /// health check noticing).
    #[serde(default = "default_fail_after")]
    pub fail_after_s: f64,
    /// Virtual seconds the rollout is followed for at most.
    #[serde(default = "default_horizon")]
    pub horizon_s: u64,
}

fn default_fail_after() -> f64 {
    5.0
}
fn default_horizon() -> u64 {
    3_600
}

impl RolloutModel {
    /// Checks the section's values.
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.fail_share) {
            return Err(format!("rollout.fail_share {} (0 to 1)", self.fail_share));
        }
        if !(0.0..=3_600.0).contains(&self.fail_after_s) {
            return Err(format!(
                "rollout.fail_after_s {} (0 to 3600)",
                self.fail_after_s
            ));
        }
        if self.horizon_s == 0 || self.horizon_s > 86_400 {
            return Err(format!("rollout.horizon_s {} (1 to 86400)", self.horizon_s));
        }
        Ok(())
    }
}

/// One wave, as it went.
#[derive(Debug, Clone, Serialize)]
pub struct WaveOutcome {
    /// Hosts in the wave.
    pub hosts: usize,
    /// Of them, how many applied the task, and how many failed.
    pub applied: usize,
    pub failed: usize,
    /// When (seconds after publication) the sink's decision opened it.
    pub opened_at_s: Option<f32>,
}

/// What the rollout came to.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutOutcome {
    pub hosts: usize,
    pub waves: Vec<WaveOutcome>,
    /// Hosts that applied the task and failed.
    pub hurt: usize,
    pub hurt_pct: f64,
    /// When failures on the hosts themselves first crossed a wave's
    /// threshold, and when the sink's decision halted the rollout
    /// (seconds after publication).
    pub crossed_at_s: Option<f32>,
    pub halted_at_s: Option<f32>,
    /// The wave whose failures halted it.
    pub halted_wave: Option<usize>,
    /// Seconds from the sink's halt until each host that held the task
    /// heard of it.
    pub halt_heard: Quantiles,
    /// When the last host applied, in a rollout that did not halt.
    pub all_applied_at_s: Option<f32>,
}

impl RolloutOutcome {
    /// Its lines in the run's summary table.
    pub fn summary_rows(&self) -> Vec<(&'static str, String)> {
        let r = self;
        let secs = |t: Option<f32>| t.map_or("never".to_string(), |t| format!("{t:.1} s"));
        let waves = r
            .waves
            .iter()
            .map(|w| format!("{}/{}", w.applied, w.hosts))
            .collect::<Vec<_>>()
            .join(", ");
        let mut rows = vec![
            ("rollout: applied per wave", waves),
            (
                "rollout: hosts hurt",
                format!("{} ({:.3} % of {})", r.hurt, r.hurt_pct, r.hosts),
            ),
        ];
        match r.halted_at_s {
            Some(halted) => {
                let after = r.crossed_at_s.map_or(String::new(), |c| {
                    format!(", {:.1} s after failures crossed the threshold", halted - c)
                });
                rows.push((
                    "rollout: halted",
                    format!(
                        "at {halted:.1} s in wave {}{after}",
                        r.halted_wave.map_or("-".to_string(), |w| w.to_string())
                    ),
                ));
                rows.push((
                    "rollout: halt heard by hosts",
                    format!(
                        "p50 {:.1} s, p99.9 {:.1} s, 100 % {:.1} s after the halt ({} hosts)",
                        r.halt_heard.p50, r.halt_heard.p999, r.halt_heard.max, r.halt_heard.count
                    ),
                ));
            }
            None => rows.push(("rollout: every host applied", secs(r.all_applied_at_s))),
        }
        rows
    }
}

#[derive(Debug, Clone, Copy)]
enum Event {
    /// The host holds the task.
    Held(u32),
    /// The host's health verdict on the task: failed or soaked.
    Verdict(u32),
    /// The host's report of its verdict reaches its aggregator.
    Report(u32),
    /// The cell's aggregator sums the cell.
    Sum(u32),
    /// The cell's sum reaches the sink.
    Summary(u32),
    /// The sink decides again (its settle time is over).
    Decide,
    /// The sink advertises its decision.
    Advert,
    /// A host acts on advert `advert` (an index into the adverts sent).
    Hear { host: u32, advert: u16 },
}

/// A sink's advert of its decision, and when it left.
#[derive(Debug, Clone, Copy)]
struct Advert {
    at: Duration,
    open: usize,
    halted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostState {
    /// Not holding the task yet.
    Away,
    Waiting,
    /// Applied; its verdict is to come.
    Applied,
    Failed,
    Soaked,
}

struct Cell {
    /// The aggregator's counts, wave by wave.
    counts: Vec<WaveTally>,
    /// What the sink holds of this cell, and what is on the way to it.
    at_sink: Option<Vec<WaveTally>>,
    sent: Vec<WaveTally>,
    changed: bool,
}

/// Rolls the task out over `held` (for each host, when it held the task,
/// counted from publication), in cells of `cell_size` consecutive hosts,
/// with `latency` on every link.
pub fn run(
    held: &[Option<Duration>],
    cell_size: usize,
    latency: Duration,
    model: &RolloutModel,
    seed: u64,
) -> anyhow::Result<RolloutOutcome> {
    model.check().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(cell_size >= 1, "cells need a member");
    let plan = Plan::from_proto(&rollout::default_plan()).map_err(anyhow::Error::msg)?;
    let waves = plan.waves().len();
    let hosts = held.len();
    let cells = hosts.div_ceil(cell_size);
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed_a110);

    // Waves, each cell's canary, and who the task hurts.
    let names: Vec<String> = (0..hosts).map(host_name).collect();
    let mut wave_of = vec![0u8; hosts];
    for c in 0..cells {
        let members = c * cell_size..((c + 1) * cell_size).min(hosts);
        let canary =
            rollout::cell_canary(TASK_ID, names[members.clone()].iter().map(String::as_str));
        for h in members {
            let is_canary = canary == Some(names[h].as_str());
            wave_of[h] = plan.wave_of(TASK_ID, &names[h], is_canary) as u8;
        }
    }
    drop(names);
    let poisoned: Vec<bool> = (0..hosts)
        .map(|_| rng.random_bool(model.fail_share))
        .collect();
    let mut wave_hosts = vec![0usize; waves];
    for &w in &wave_of {
        wave_hosts[usize::from(w)] += 1;
    }

    let mut state = vec![HostState::Away; hosts];
    let mut heard_halt: Vec<Option<Duration>> = vec![None; hosts];
    let mut applied_at: Vec<Option<Duration>> = vec![None; hosts];
    let mut cell_state: Vec<Cell> = (0..cells)
        .map(|_| Cell {
            counts: vec![WaveTally::default(); waves],
            at_sink: None,
            sent: Vec::new(),
            changed: true,
        })
        .collect();
    // Every member counts in its wave from its cell's first sum.
    for (h, &w) in wave_of.iter().enumerate() {
        cell_state[h / cell_size].counts[usize::from(w)].hosts += 1;
    }
    let mut sink_totals = vec![WaveTally::default(); waves];
    let mut sink_cells = 0usize;
    let mut decision = Decision {
        open: 1,
        halt: None,
    };
    let mut opened_at: Vec<Option<Duration>> = vec![None; waves];
    opened_at[0] = Some(Duration::ZERO);
    let mut halted_at = None;
    let mut crossed_at = None;
    let mut true_failed = vec![0usize; waves];

    let mut queue = EventQueue::default();
    for (h, at) in held.iter().enumerate() {
        if let Some(at) = at {
            queue.push(*at, Event::Held(h as u32));
        }
    }
    // Each cell's aggregator starts summing once it holds the task (its
    // first member to hold it, in the model).
    for c in 0..cells {
        let members = c * cell_size..((c + 1) * cell_size).min(hosts);
        if let Some(first) = members.filter_map(|h| held[h]).min() {
            let sum_phase = SUM_EVERY.mul_f64(rng.random::<f64>());
            queue.push(first + sum_phase, Event::Sum(c as u32));
        }
    }
    // The sink holds the task about when the first host does.
    let sink_held = held.iter().flatten().min().copied().unwrap_or_default();
    queue.push(sink_held + SINK_SETTLE, Event::Decide);
    let spread = latency * GOSSIP_HOPS;
    let mut adverts: Vec<Advert> = Vec::new();

    let horizon = Duration::from_secs(model.horizon_s);
    let fail_after = Duration::from_secs_f64(model.fail_after_s);
    let apply = |h: usize,
                 now: Duration,
                 state: &mut [HostState],
                 applied_at: &mut [Option<Duration>],
                 queue: &mut EventQueue<Event>| {
        state[h] = HostState::Applied;
        applied_at[h] = Some(now);
        let verdict_after = if poisoned[h] {
            fail_after
        } else {
            plan.waves()[usize::from(wave_of[h])].soak
        };
        queue.push(now + verdict_after, Event::Verdict(h as u32));
    };
    let online_held = held.iter().filter(|h| h.is_some()).count();
    let mut heard = 0usize;
    // Hosts with a verdict (failed or soaked).
    let mut settled = 0usize;
    while let Some((now, event)) = queue.pop_until(horizon) {
        match event {
            Event::Held(h) => {
                let h = h as usize;
                state[h] = HostState::Waiting;
                // It acts on the sink's latest advert (adverts are
                // kept, not tied to the task) once that reached it; wave
                // 0 is open from the start.
                if wave_of[h] == 0 {
                    apply(h, now, &mut state, &mut applied_at, &mut queue);
                }
                if let Some(last) = adverts.last() {
                    let step = STAGE_EVERY.mul_f64(rng.random::<f64>());
                    queue.push(
                        (last.at + spread).max(now) + step,
                        Event::Hear {
                            host: h as u32,
                            advert: (adverts.len() - 1) as u16,
                        },
                    );
                }
            }
            Event::Verdict(h) => {
                let h = h as usize;
                if state[h] != HostState::Applied {
                    continue;
                }
                let w = usize::from(wave_of[h]);
                if poisoned[h] {
                    state[h] = HostState::Failed;
                    true_failed[w] += 1;
                    let threshold = plan.waves()[w].max_failed_bp as usize;
                    if crossed_at.is_none()
                        && true_failed[w] * WHOLE as usize > threshold * wave_hosts[w]
                    {
                        crossed_at = Some(now);
                    }
                } else {
                    state[h] = HostState::Soaked;
                }
                settled += 1;
                let delay = REPORT_WITHIN.mul_f64(rng.random::<f64>()) + latency;
                queue.push(now + delay, Event::Report(h as u32));
            }
            Event::Report(h) => {
                let h = h as usize;
                let cell = &mut cell_state[h / cell_size];
                let tally = &mut cell.counts[usize::from(wave_of[h])];
                match state[h] {
                    HostState::Failed => tally.failed += 1,
                    HostState::Soaked => tally.soaked += 1,
                    _ => {}
                }
                cell.changed = true;
            }
            Event::Sum(c) => {
                let cell = &mut cell_state[c as usize];
                if cell.changed {
                    cell.sent = cell.counts.clone();
                    cell.changed = false;
                    queue.push(now + latency, Event::Summary(c));
                }
                queue.push(now + SUM_EVERY, Event::Sum(c));
            }
            Event::Summary(c) => {
                let cell = &mut cell_state[c as usize];
                if let Some(old) = &cell.at_sink {
                    for (total, o) in sink_totals.iter_mut().zip(old) {
                        total.hosts -= o.hosts;
                        total.soaked -= o.soaked;
                        total.failed -= o.failed;
                    }
                } else {
                    sink_cells += 1;
                }
                for (total, n) in sink_totals.iter_mut().zip(&cell.sent) {
                    total.hosts += n.hosts;
                    total.soaked += n.soaked;
                    total.failed += n.failed;
                }
                cell.at_sink = Some(cell.sent.clone());
                queue.push(now, Event::Decide);
            }
            Event::Decide => {
                let changed = sink_decides(
                    &plan,
                    &sink_totals,
                    sink_cells == cells && now >= sink_held + SINK_SETTLE,
                    now,
                    &mut decision,
                    &mut opened_at,
                    &mut halted_at,
                );
                if changed {
                    let next = adverts.last().map_or(now, |a| (a.at + ADVERT_MIN).max(now));
                    queue.push(next, Event::Advert);
                }
            }
            Event::Advert => {
                let advert = Advert {
                    at: now,
                    open: decision.open,
                    halted: decision.halt.is_some(),
                };
                if adverts
                    .last()
                    .is_some_and(|a| a.open == advert.open && a.halted == advert.halted)
                {
                    continue;
                }
                adverts.push(advert);
                let index = (adverts.len() - 1) as u16;
                for (h, s) in state.iter().enumerate() {
                    if *s == HostState::Away {
                        continue;
                    }
                    let hops = latency * rng.random_range(1..=GOSSIP_HOPS);
                    let step = STAGE_EVERY.mul_f64(rng.random::<f64>());
                    queue.push(
                        now + hops + step,
                        Event::Hear {
                            host: h as u32,
                            advert: index,
                        },
                    );
                }
            }
            Event::Hear { host, advert } => {
                let h = host as usize;
                let Some(a) = adverts.get(usize::from(advert)).copied() else {
                    continue;
                };
                if a.halted {
                    if heard_halt[h].is_none() {
                        heard_halt[h] = Some(now);
                        heard += 1;
                    }
                    // Halted: it rolls back (if it applied) and stops.
                    continue;
                }
                if state[h] == HostState::Waiting && usize::from(wave_of[h]) < a.open {
                    apply(h, now, &mut state, &mut applied_at, &mut queue);
                }
            }
        }
        if heard == online_held && decision.halt.is_some() {
            break;
        }
        if decision.halt.is_none() && settled == online_held {
            break;
        }
    }

    let mut outcome_waves: Vec<WaveOutcome> = (0..waves)
        .map(|k| WaveOutcome {
            hosts: wave_hosts[k],
            applied: 0,
            failed: true_failed[k],
            opened_at_s: opened_at[k].map(|t| t.as_secs_f32()),
        })
        .collect();
    for (h, at) in applied_at.iter().enumerate() {
        if at.is_some() {
            outcome_waves[usize::from(wave_of[h])].applied += 1;
        }
    }
    let hurt = true_failed.iter().sum::<usize>();
    let mut halt_heard: Vec<f32> = match halted_at {
        Some(halt) => heard_halt
            .iter()
            .flatten()
            .map(|t| t.saturating_sub(halt).as_secs_f32())
            .collect(),
        None => Vec::new(),
    };
    halt_heard.sort_by(f32::total_cmp);
    let all_applied_at_s = (decision.halt.is_none()
        && applied_at
            .iter()
            .zip(held)
            .all(|(a, h)| a.is_some() || h.is_none()))
    .then(|| applied_at.iter().flatten().max().map(|t| t.as_secs_f32()))
    .flatten();
    Ok(RolloutOutcome {
        hosts,
        waves: outcome_waves,
        hurt,
        hurt_pct: 100.0 * hurt as f64 / hosts.max(1) as f64,
        crossed_at_s: crossed_at.map(|t| t.as_secs_f32()),
        halted_at_s: halted_at.map(|t| t.as_secs_f32()),
        halted_wave: match decision.halt {
            Some(rollout::Halt::Failures { wave, .. }) => Some(wave),
            _ => None,
        },
        halt_heard: Quantiles::of(&halt_heard),
        all_applied_at_s,
    })
}

/// The sink decides from its totals (`complete`: every cell counted and
/// its settle time over) and keeps a halt; true when what it would
/// advertise changed.
fn sink_decides(
    plan: &Plan,
    totals: &[WaveTally],
    complete: bool,
    now: Duration,
    decision: &mut Decision,
    opened_at: &mut [Option<Duration>],
    halted_at: &mut Option<Duration>,
) -> bool {
    let counts = RolloutCounts {
        waves: totals.to_vec(),
        complete,
    };
    let next = rollout::decide(plan, &counts, Control::Running);
    for opened in opened_at.iter_mut().take(next.open) {
        opened.get_or_insert(now);
    }
    if next.halt.is_some() && decision.halt.is_none() {
        *halted_at = Some(now);
    }
    let before = (decision.open, decision.halt.is_some());
    *decision = Decision {
        open: next.open.max(decision.open),
        // A halt holds.
        halt: decision.halt.or(next.halt),
    };
    before != (decision.open, decision.halt.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_at_once(hosts: usize) -> Vec<Option<Duration>> {
        (0..hosts)
            .map(|h| Some(Duration::from_millis((h % 300) as u64)))
            .collect()
    }

    #[test]
    fn a_poison_task_halts_in_its_first_wave_and_every_host_hears_it() {
        let model = RolloutModel {
            fail_share: 1.0,
            fail_after_s: 5.0,
            horizon_s: 600,
        };
        let out = run(
            &all_at_once(20_000),
            50,
            Duration::from_millis(20),
            &model,
            1,
        )
        .unwrap();
        assert_eq!(out.halted_wave, Some(0), "{out:?}");
        // Only the first wave (0.05 %) applied it: nothing else opened.
        assert_eq!(out.hurt, out.waves[0].hosts);
        assert!(out.waves[1..]
            .iter()
            .all(|w| w.applied == 0 && w.opened_at_s.is_none()));
        let halted = out.halted_at_s.unwrap();
        assert!(halted >= out.crossed_at_s.unwrap());
        // Every host that held the task heard of the halt.
        assert_eq!(out.halt_heard.count, 20_000);
    }

    #[test]
    fn a_healthy_task_opens_every_wave_in_order_and_reaches_every_host() {
        let model = RolloutModel {
            fail_share: 0.0,
            fail_after_s: 5.0,
            horizon_s: 4_000,
        };
        let out = run(
            &all_at_once(5_000),
            50,
            Duration::from_millis(20),
            &model,
            2,
        )
        .unwrap();
        assert_eq!(out.halted_at_s, None);
        assert_eq!(out.hurt, 0);
        let opened: Vec<f32> = out
            .waves
            .iter()
            .map(|w| w.opened_at_s.expect("opened"))
            .collect();
        // Each wave opened only after the one before soaked.
        let plan = Plan::from_proto(&rollout::default_plan()).unwrap();
        for k in 1..opened.len() {
            let soak = plan.waves()[k - 1].soak.as_secs_f32();
            let before = if out.waves[k - 1].hosts > 0 {
                soak
            } else {
                0.0
            };
            assert!(opened[k] >= opened[k - 1] + before, "{opened:?}");
        }
        assert!(
            out.waves.iter().all(|w| w.applied == w.hosts),
            "{:?}",
            out.waves
        );
        assert!(out.all_applied_at_s.is_some());
    }
}
