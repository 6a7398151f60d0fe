//! Where rollout decisions are made and how a host takes them
//! (docs/rollouts.md, "Where the decision is computed"): a sink holds
//! every cell's summary, so it decides every rollout under way from them
//! ([`SinkDecisions`]) and puts the decisions in its advert, which the
//! mesh gossips signed by the sink's key. A host hears the adverts of a
//! few sinks and takes, for each rollout, the most waves any of them
//! opened and a halt when any of them halted ([`combine`]): a sink whose
//! counts are older opens fewer waves, never a wave the done rule would
//! not open, and a halt is final.

use std::collections::BTreeMap;

use starling_proto::v1::RolloutDecision;

use super::{decide, Control, Halt, Plan, MAX_WAVES};
use crate::fleet::check_text;
use crate::rollup::FleetStatus;

/// Most rollouts one sink announces (the advert's size is bounded); a
/// fleet has a handful under way. Halts go first; a host whose rollout is
/// not announced keeps its first wave only until it is.
pub const MAX_ANNOUNCED: usize = 64;

/// The decisions of one sink, computed anew from its fleet view; a halt
/// it once decided stays (failures counted are failures, and the hosts'
/// rollbacks must not reopen the rollout).
///
/// A sink knows the cells that summarised to it lately, not the cells
/// that exist: a cell that has not summarised yet (it formed a moment
/// ago, or its publisher is new) is missing from counts that look
/// complete. So the sink opens no wave beyond the first until it has held
/// the task for `settle_ms`, the time within which every live cell sends
/// a summary (a cell not heard from for that long is left out of the
/// fleet's view anyway).
#[derive(Debug, Default)]
pub struct SinkDecisions {
    settle_ms: u64,
    halted: BTreeMap<String, String>,
    /// Task id -> when this sink first decided it (Unix ms).
    first_seen: BTreeMap<String, u64>,
}

impl SinkDecisions {
    /// A sink's decisions, opening waves beyond the first only for tasks
    /// it has held for `settle_ms`.
    pub fn new(settle_ms: u64) -> Self {
        Self {
            settle_ms,
            ..Default::default()
        }
    }

    /// Decides each rollout of `plans` (task id -> its checked plan, the
    /// tasks with a plan this sink holds) from `fleet` at `now_ms` and the
    /// operators' `control` of each (signed rollout tasks, as this sink's
    /// ledger holds them): at most [`MAX_ANNOUNCED`] of them, the halted
    /// first, each part in task id order.
    pub fn decide(
        &mut self,
        plans: &BTreeMap<String, Plan>,
        fleet: &FleetStatus,
        now_ms: u64,
        control: impl Fn(&str) -> Control,
    ) -> Vec<RolloutDecision> {
        self.halted.retain(|id, _| plans.contains_key(id));
        self.first_seen.retain(|id, _| plans.contains_key(id));
        let mut decisions: Vec<RolloutDecision> = plans
            .iter()
            .map(|(id, plan)| {
                let mut counts = fleet.rollout_counts(id, plan.waves().len());
                let since = *self.first_seen.entry(id.clone()).or_insert(now_ms);
                if now_ms.saturating_sub(since) < self.settle_ms {
                    counts.complete = false;
                }
                let decision = decide(plan, &counts, control(id));
                if let Some(halt) = decision.halt {
                    self.halted
                        .entry(id.clone())
                        .or_insert_with(|| halt_reason(&halt));
                }
                let halt_reason = self.halted.get(id).cloned();
                RolloutDecision {
                    task_id: id.clone(),
                    open_waves: decision.open as u32,
                    halted: halt_reason.is_some(),
                    halt_reason: halt_reason.unwrap_or_default(),
                }
            })
            .collect();
        // Halts first: when not every decision fits, the ones that stop
        // harm go out.
        decisions.sort_by_key(|d| !d.halted);
        decisions.truncate(MAX_ANNOUNCED);
        decisions
    }
}

/// Why a rollout halted, for people.
fn halt_reason(halt: &Halt) -> String {
    match halt {
        Halt::Failures {
            wave,
            failed,
            hosts,
        } => format!("wave {wave}: {failed} of {hosts} hosts failed"),
        Halt::Aborted => "aborted by the operators".into(),
    }
}

/// How far one rollout may go as a host has heard it from the sinks.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Decided {
    /// Waves `0..open` are open.
    pub open: usize,
    /// Set when a sink halted it: why.
    pub halted: Option<String>,
}

/// Checks a decision from the network (a sink's advert).
pub fn check_decision(d: &RolloutDecision) -> Result<(), String> {
    check_text("task id", &d.task_id)?;
    check_text("halt reason", &d.halt_reason)?;
    if d.open_waves as usize > MAX_WAVES {
        return Err(format!("{} waves open", d.open_waves));
    }
    Ok(())
}

/// The decisions of every sink a host heard, rollout by rollout: the
/// most waves any opened, and halted when any halted (the first reason
/// heard). Decisions out of bounds are left out.
pub fn combine<'a>(
    decisions: impl IntoIterator<Item = &'a RolloutDecision>,
) -> BTreeMap<String, Decided> {
    let mut out: BTreeMap<String, Decided> = BTreeMap::new();
    for d in decisions {
        if check_decision(d).is_err() {
            continue;
        }
        let entry = out.entry(d.task_id.clone()).or_default();
        entry.open = entry.open.max(d.open_waves as usize);
        if d.halted && entry.halted.is_none() {
            entry.halted = Some(d.halt_reason.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollup::{CellRollup, HostReport};
    use starling_proto::v1::{RolloutPlan, RolloutWave};

    fn plan() -> Plan {
        let wave = |share| RolloutWave {
            share_basis_points: share,
            soak_secs: 60,
            max_failed_basis_points: 1_000,
            ..Default::default()
        };
        Plan::from_proto(&RolloutPlan {
            waves: vec![wave(5_000), wave(10_000)],
        })
        .expect("valid")
    }

    fn report(host: &str, state: &str) -> HostReport {
        HostReport {
            host: host.into(),
            states: [("t".to_string(), (state.to_string(), String::new()))].into(),
            heartbeat: None,
        }
    }

    /// A fleet of one cell whose hosts are in `state` in wave 0 and
    /// waiting in wave 1.
    fn fleet(hosts: usize, wave0: &str, plans: &BTreeMap<String, Plan>) -> FleetStatus {
        let p = &plans["t"];
        let members: Vec<String> = (0..hosts).map(|i| format!("h{i}")).collect();
        let mut cell = CellRollup::default();
        for m in &members {
            let state = if p.wave_of("t", m, false) == 0 {
                wave0
            } else {
                "waiting"
            };
            cell.take(report(m, state), 0);
        }
        let mut fleet = FleetStatus::default();
        fleet.take(cell.summary("c", "h0", &members, 1, plans));
        fleet
    }

    #[test]
    fn a_sink_opens_the_next_wave_once_the_first_soaked_and_a_halt_stays() {
        let plans: BTreeMap<String, Plan> = [("t".to_string(), plan())].into();
        let mut sink = SinkDecisions::new(1_000);
        let d = sink.decide(&plans, &fleet(40, "soaking", &plans), 0, running);
        assert_eq!((d[0].open_waves, d[0].halted), (1, false));
        let d = sink.decide(&plans, &fleet(40, "applied", &plans), 999, running);
        assert_eq!(
            (d[0].open_waves, d[0].halted),
            (1, false),
            "not before the sink held the task for its settle time"
        );
        let d = sink.decide(&plans, &fleet(40, "applied", &plans), 1_000, running);
        assert_eq!((d[0].open_waves, d[0].halted), (2, false));
        let d = sink.decide(&plans, &fleet(40, "failed", &plans), 1_001, running);
        assert!(d[0].halted);
        assert!(
            d[0].halt_reason.starts_with("wave 0: "),
            "{}",
            d[0].halt_reason
        );
        // The hosts roll back; the sink stays halted.
        let d = sink.decide(&plans, &fleet(40, "rolled_back", &plans), 1_002, running);
        assert!(d[0].halted, "a halt is final");
        // A cell not counted yet: incomplete, only the first wave open.
        let empty = FleetStatus::default();
        assert_eq!(
            SinkDecisions::new(0).decide(&plans, &empty, 5_000, running)[0].open_waves,
            1
        );
    }

    fn running(_: &str) -> Control {
        Control::Running
    }

    #[test]
    fn the_operators_pause_and_abort_a_rollout() {
        let plans: BTreeMap<String, Plan> = [("t".to_string(), plan())].into();
        let soaked = fleet(40, "applied", &plans);
        let mut sink = SinkDecisions::new(0);
        let d = sink.decide(&plans, &soaked, 0, |_| Control::Paused);
        assert_eq!(
            (d[0].open_waves, d[0].halted),
            (1, false),
            "paused: no next wave"
        );
        let d = sink.decide(&plans, &soaked, 1, running);
        assert_eq!(d[0].open_waves, 2, "resumed");
        let d = sink.decide(&plans, &soaked, 2, |_| Control::Aborted);
        assert!(d[0].halted);
        assert_eq!(d[0].halt_reason, "aborted by the operators");
    }

    #[test]
    fn halts_are_announced_first_when_not_all_fit() {
        let plans: BTreeMap<String, Plan> = (0..MAX_ANNOUNCED + 5)
            .map(|i| (format!("t{i:03}"), plan()))
            .collect();
        let last = format!("t{:03}", MAX_ANNOUNCED + 4);
        let mut sink = SinkDecisions::new(0);
        let d = sink.decide(&plans, &FleetStatus::default(), 0, |id| {
            if id == last {
                Control::Aborted
            } else {
                Control::Running
            }
        });
        assert_eq!(d.len(), MAX_ANNOUNCED);
        assert_eq!(d[0].task_id, last, "the halt first");
        assert!(d[1..].iter().all(|d| !d.halted));
    }

    #[test]
    fn a_host_takes_the_most_waves_opened_and_any_halt() {
        let d = |id: &str, open, halted| RolloutDecision {
            task_id: id.into(),
            open_waves: open,
            halted,
            halt_reason: if halted {
                "wave 0".into()
            } else {
                String::new()
            },
        };
        let heard = [
            d("t", 2, false),
            d("t", 3, false),
            d("u", 1, false),
            d("u", 1, true),
            d("bad", 99, false),
        ];
        let c = combine(&heard);
        assert_eq!(
            c["t"],
            Decided {
                open: 3,
                halted: None
            }
        );
        assert_eq!(c["u"].halted.as_deref(), Some("wave 0"));
        assert!(!c.contains_key("bad"), "out of bounds: left out");
    }
}
