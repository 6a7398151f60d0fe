//! Staged rollouts: which wave of a task's plan each host is in, and the
//! decision, from the rolled-up counts of each wave, how many waves are
//! open and whether the rollout halts. Both are pure functions of the
//! signed plan and the counts, so every host, aggregator, sink and the
//! simulator that computes them from the same counts decides the same;
//! there is no coordinator (docs/rollouts.md).
//!
//! The rule that makes it safe to decide from counts that arrive late: a
//! wave is done only when enough of its hosts have soaked that even if
//! every other host of it failed, its threshold would not be crossed. So
//! a wave that is done can never halt the rollout afterwards, and a halt,
//! once its failures are counted, holds however the counts move on.

use std::time::Duration;

use starling_proto::v1::{RolloutPlan, RolloutWave};

mod decisions;
pub use decisions::{check_decision, combine, Decided, SinkDecisions, MAX_ANNOUNCED};

/// Most waves in a plan.
pub const MAX_WAVES: usize = 8;
/// Longest soak of a wave: a day.
pub const MAX_SOAK_SECS: u32 = 86_400;
/// Basis points in the whole (shares and thresholds).
pub const WHOLE: u32 = 10_000;

/// The plan `starlingctl` writes unless told otherwise (docs/rollouts.md):
/// 0.05 % of the targeted hosts, a canary in every cell, then 1 %, 10 %,
/// 50 % and every host, each wave tolerating 2 % failed. The first wave
/// comes before the cell canaries because one canary per cell is 2 % of
/// a fleet in cells of 50; a task that hurts every host that applies it
/// hurts the first wave's 0.05 % before it halts.
pub fn default_plan() -> RolloutPlan {
    let wave = |share, cell_canary, soak_secs| RolloutWave {
        share_basis_points: share,
        cell_canary,
        soak_secs,
        max_failed_basis_points: 200,
    };
    RolloutPlan {
        waves: vec![
            wave(5, false, 120),
            wave(0, true, 120),
            wave(100, false, 300),
            wave(1_000, false, 300),
            wave(5_000, false, 300),
            wave(WHOLE, false, 300),
        ],
    }
}

/// One wave of a checked plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wave {
    /// Cumulative share of the targeted hosts in this wave and the earlier
    /// ones, in basis points (ignored for a cell-canary wave).
    pub share_bp: u32,
    /// One host per cell, its canary, instead of a share.
    pub cell_canary: bool,
    /// How long each host must stay healthy after applying.
    pub soak: Duration,
    /// Failed hosts the wave tolerates, in basis points of its hosts.
    pub max_failed_bp: u32,
}

/// A task's waves, checked: at most [`MAX_WAVES`], shares that never
/// shrink, and a last wave that takes in every targeted host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    waves: Vec<Wave>,
}

impl Plan {
    /// Checks a plan from a task (untrusted until then).
    pub fn from_proto(plan: &RolloutPlan) -> Result<Self, String> {
        if plan.waves.is_empty() || plan.waves.len() > MAX_WAVES {
            return Err(format!(
                "a rollout of {} waves (1 to {MAX_WAVES})",
                plan.waves.len()
            ));
        }
        let mut share = 0;
        let mut waves = Vec::with_capacity(plan.waves.len());
        for (i, w) in plan.waves.iter().enumerate() {
            if w.soak_secs > MAX_SOAK_SECS {
                return Err(format!(
                    "wave {i} soaks {} s (at most {MAX_SOAK_SECS})",
                    w.soak_secs
                ));
            }
            if w.max_failed_basis_points > WHOLE {
                return Err(format!(
                    "wave {i} tolerates {} basis points of failures (at most {WHOLE})",
                    w.max_failed_basis_points
                ));
            }
            if !w.cell_canary {
                if w.share_basis_points > WHOLE || w.share_basis_points < share {
                    return Err(format!(
                        "wave {i} takes in {} basis points after {share} (shares are cumulative, at most {WHOLE})",
                        w.share_basis_points
                    ));
                }
                share = w.share_basis_points;
            }
            waves.push(Wave {
                share_bp: w.share_basis_points,
                cell_canary: w.cell_canary,
                soak: Duration::from_secs(u64::from(w.soak_secs)),
                max_failed_bp: w.max_failed_basis_points,
            });
        }
        let last = waves.last().ok_or("a rollout without waves")?;
        if last.cell_canary || last.share_bp != WHOLE {
            return Err(format!(
                "the last wave must take in every targeted host ({WHOLE} basis points)"
            ));
        }
        Ok(Self { waves })
    }

    /// The waves, in order.
    pub fn waves(&self) -> &[Wave] {
        &self.waves
    }

    /// The wave `host_id` is in for `task_id`: the first cell-canary wave
    /// when it is its cell's canary (`is_cell_canary`, from
    /// [`cell_canary`]), else the first wave whose share takes it in.
    pub fn wave_of(&self, task_id: &str, host_id: &str, is_cell_canary: bool) -> usize {
        let point = rollout_point(task_id, host_id);
        self.waves
            .iter()
            .position(|w| {
                if w.cell_canary {
                    is_cell_canary
                } else {
                    point < w.share_bp
                }
            })
            // The last wave takes in every host (checked).
            .unwrap_or(self.waves.len() - 1)
    }
}

/// A host's place in a task's draw, in basis points: a stable hash of the
/// task and the host, so every host and every counter agree on it, a
/// larger share takes in a superset, and each task draws anew (a host
/// that was in the first wave once is not in it every time).
pub fn rollout_point(task_id: &str, host_id: &str) -> u32 {
    crate::target::draw_point(b"starling.v1.wave\0", task_id, host_id)
}

/// A cell's canary for `task_id`: of `members` (the cell's targeted
/// members, as the caller's view has them), the one with the lowest
/// [`rollout_point`], ties broken by name.
pub fn cell_canary<'a>(
    task_id: &str,
    members: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    members
        .into_iter()
        .min_by_key(|m| (rollout_point(task_id, m), *m))
}

/// What the counts say of one wave's hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WaveTally {
    /// Hosts of the wave the counts know of, in any state (waiting,
    /// applying, soaking, not answering, down, soaked, failed).
    pub hosts: u32,
    /// Applied and healthy for the wave's soak since.
    pub soaked: u32,
    /// Could not apply, or unhealthy within the soak.
    pub failed: u32,
}

impl WaveTally {
    /// Counts one host the plan places in this wave, in `state` (its
    /// state for the task as the rolled-up status has it). A host that
    /// will never apply the task (not targeted, refused, stopped) is not
    /// one of the wave's hosts; `applied` is soaked (a planned task is
    /// `soaking` until then); every other state (waiting, pending,
    /// soaking, no answer, down, rolled back) is a host of the wave that
    /// neither soaked nor failed.
    pub fn count(&mut self, state: &str) {
        match state {
            "not_targeted" | "refused" | "stopped" => return,
            "applied" => self.soaked += 1,
            "failed" => self.failed += 1,
            _ => {}
        }
        self.hosts += 1;
    }

    /// Adds another cell's tally of the same wave.
    pub fn add(&mut self, other: &WaveTally) {
        self.hosts = self.hosts.saturating_add(other.hosts);
        self.soaked = self.soaked.saturating_add(other.soaked);
        self.failed = self.failed.saturating_add(other.failed);
    }
}

/// What the operator said of a rollout last (signed control tasks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    #[default]
    Running,
    /// No further wave opens; hosts of open waves keep what they applied.
    Paused,
    /// Stop and roll back wherever it applied.
    Aborted,
}

/// Why a rollout halted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    /// A wave's failures crossed its threshold.
    Failures {
        wave: usize,
        failed: u32,
        hosts: u32,
    },
    /// The operator aborted it.
    Aborted,
}

/// How far a rollout may go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Waves `0..open` are open: their hosts apply the task.
    pub open: usize,
    /// Set: the rollout stops, and every host that applied the task rolls
    /// it back.
    pub halt: Option<Halt>,
}

/// Whether `tally` crosses `wave`'s threshold.
fn crossed(wave: &Wave, tally: &WaveTally) -> bool {
    u64::from(tally.failed) * u64::from(WHOLE)
        > u64::from(wave.max_failed_bp) * u64::from(tally.hosts)
}

/// Whether `wave` is done: so many of its hosts soaked that even if all
/// the rest failed, its threshold would hold (an empty wave is done).
fn done(wave: &Wave, tally: &WaveTally) -> bool {
    u64::from(tally.soaked) * u64::from(WHOLE)
        >= u64::from(WHOLE.saturating_sub(wave.max_failed_bp)) * u64::from(tally.hosts)
}

/// The counts of a rollout, wave by wave, as the rolled-up status has
/// them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutCounts {
    /// One per wave; missing ones count as empty.
    pub waves: Vec<WaveTally>,
    /// Every live member of every cell the status holds is counted, in
    /// some state (a cell that has not summed the task yet is not). Only
    /// complete counts open a wave: before every cell has counted its
    /// hosts, a wave's hosts seen so far may all have soaked while most
    /// of them have not applied yet, and an empty wave may be one whose
    /// hosts are in cells not heard from.
    pub complete: bool,
}

/// How far the rollout of `plan` may go, from `counts` and the operator's
/// `control`. Wave 0 is open from the start; each next one once the
/// counts are complete, the one before is done and the rollout is not
/// paused; any wave crossing its threshold halts it.
pub fn decide(plan: &Plan, counts: &RolloutCounts, control: Control) -> Decision {
    let tally = |k: usize| counts.waves.get(k).copied().unwrap_or_default();
    let waves = plan.waves();
    let halt = match control {
        Control::Aborted => Some(Halt::Aborted),
        _ => waves.iter().enumerate().find_map(|(k, w)| {
            let t = tally(k);
            crossed(w, &t).then_some(Halt::Failures {
                wave: k,
                failed: t.failed,
                hosts: t.hosts,
            })
        }),
    };
    let mut open = 1;
    if control == Control::Running && counts.complete {
        while open < waves.len() && done(&waves[open - 1], &tally(open - 1)) {
            open += 1;
        }
    }
    Decision { open, halt }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(share: u32, soak: u32, max_failed: u32) -> RolloutWave {
        RolloutWave {
            share_basis_points: share,
            cell_canary: false,
            soak_secs: soak,
            max_failed_basis_points: max_failed,
        }
    }

    fn canary(soak: u32) -> RolloutWave {
        RolloutWave {
            cell_canary: true,
            soak_secs: soak,
            ..Default::default()
        }
    }

    fn plan(waves: Vec<RolloutWave>) -> Plan {
        Plan::from_proto(&RolloutPlan { waves }).expect("a valid plan")
    }

    #[test]
    fn the_default_plan_is_valid() {
        let p = Plan::from_proto(&default_plan()).expect("valid");
        assert_eq!(p.waves().len(), 6);
        assert!(p.waves()[1].cell_canary);
    }

    #[test]
    fn plans_out_of_bounds_are_refused_with_the_reason() {
        let refused = |waves: Vec<RolloutWave>| {
            Plan::from_proto(&RolloutPlan { waves }).expect_err("refused")
        };
        assert!(refused(vec![]).contains("0 waves"));
        assert!(refused(vec![wave(10_000, 0, 0); MAX_WAVES + 1]).contains("9 waves"));
        assert!(refused(vec![wave(5_000, 0, 0)]).contains("last wave"));
        assert!(refused(vec![wave(10_000, 0, 0), canary(60)]).contains("last wave"));
        assert!(
            refused(vec![wave(500, 0, 0), wave(100, 0, 0), wave(10_000, 0, 0)])
                .contains("cumulative")
        );
        assert!(refused(vec![wave(20_000, 0, 0)]).contains("cumulative"));
        assert!(refused(vec![wave(10_000, MAX_SOAK_SECS + 1, 0)]).contains("soaks"));
        assert!(refused(vec![wave(10_000, 0, WHOLE + 1)]).contains("failures"));
    }

    #[test]
    fn hosts_fall_in_waves_by_their_cumulative_share() {
        let p = plan(vec![
            wave(100, 60, 0),
            canary(60),
            wave(1_000, 60, 500),
            wave(10_000, 0, 500),
        ]);
        let mut per_wave = [0u32; 4];
        for i in 0..20_000 {
            let host = format!("host-{i}");
            let k = p.wave_of("t1", &host, false);
            assert_ne!(k, 1, "only canaries are in a canary wave");
            per_wave[k] += 1;
            // The same host, as its cell's canary: in the canary wave
            // unless the first wave's share took it in before.
            let as_canary = p.wave_of("t1", &host, true);
            assert_eq!(as_canary, if k == 0 { 0 } else { 1 });
        }
        // 1 %, then 9 %, then the rest, within sampling noise.
        assert!((150..=250).contains(&per_wave[0]), "{per_wave:?}");
        assert!((1_600..=2_000).contains(&per_wave[2]), "{per_wave:?}");
        assert_eq!(per_wave.iter().sum::<u32>(), 20_000);
        // Each task draws anew.
        let first_of = |task: &str| -> Vec<usize> {
            (0..2_000)
                .filter(|i| p.wave_of(task, &format!("host-{i}"), false) == 0)
                .collect()
        };
        assert_ne!(first_of("t1"), first_of("t2"));
    }

    #[test]
    fn a_cells_canary_is_the_same_whoever_computes_it() {
        let members = ["a", "b", "c", "d", "e"];
        let one = cell_canary("t", members.iter().copied());
        let reversed = cell_canary("t", members.iter().rev().copied());
        assert!(one.is_some());
        assert_eq!(one, reversed);
        assert_eq!(cell_canary("t", std::iter::empty()), None);
    }

    fn counts(waves: &[(u32, u32, u32)]) -> RolloutCounts {
        RolloutCounts {
            waves: waves
                .iter()
                .map(|&(hosts, soaked, failed)| WaveTally {
                    hosts,
                    soaked,
                    failed,
                })
                .collect(),
            complete: true,
        }
    }

    #[test]
    fn waves_open_one_after_another_as_the_ones_before_soak() {
        let p = plan(vec![
            wave(100, 60, 0),
            wave(5_000, 60, 1_000),
            wave(10_000, 0, 1_000),
        ]);
        let running = Control::Running;
        let open = |c: &RolloutCounts| decide(&p, c, running).open;
        // Nothing counted yet, or not every cell: only the first wave.
        assert_eq!(open(&RolloutCounts::default()), 1);
        let partial = RolloutCounts {
            complete: false,
            ..counts(&[(10, 10, 0), (400, 400, 0)])
        };
        assert_eq!(open(&partial), 1);
        // Counted everywhere, an empty wave is done (a wave of 1 % in a
        // fleet of 30 may have no host).
        assert_eq!(open(&counts(&[])), 3);
        assert_eq!(open(&counts(&[(10, 9, 0), (400, 0, 0)])), 1);
        assert_eq!(open(&counts(&[(10, 10, 0), (400, 0, 0)])), 2);
        // The second tolerates 10 %: 360 of 400 soaked is enough.
        assert_eq!(open(&counts(&[(10, 10, 0), (400, 359, 0), (600, 0, 0)])), 2);
        let second = counts(&[(10, 10, 0), (400, 360, 40), (600, 0, 0)]);
        assert_eq!(
            decide(&p, &second, running),
            Decision {
                open: 3,
                halt: None
            }
        );
        // Paused: no further wave opens; the first stays open.
        assert_eq!(decide(&p, &second, Control::Paused).open, 1);
    }

    #[test]
    fn failures_over_a_waves_threshold_halt_the_rollout() {
        let p = plan(vec![wave(100, 60, 0), wave(10_000, 60, 500)]);
        let halt = |c: RolloutCounts| decide(&p, &c, Control::Running).halt;
        // A first wave that tolerates nothing halts at its first failure,
        // counted everywhere or not.
        let first = RolloutCounts {
            complete: false,
            ..counts(&[(10, 3, 1)])
        };
        assert_eq!(
            halt(first),
            Some(Halt::Failures {
                wave: 0,
                failed: 1,
                hosts: 10
            })
        );
        // 5 % of 1,000 is tolerated, 51 is not.
        assert_eq!(halt(counts(&[(10, 10, 0), (1_000, 0, 50)])), None);
        assert!(halt(counts(&[(10, 10, 0), (1_000, 0, 51)])).is_some());
        assert_eq!(
            decide(&p, &counts(&[(10, 10, 0)]), Control::Aborted).halt,
            Some(Halt::Aborted)
        );
    }

    /// The property that lets every host decide from late counts: once a
    /// wave is done, no later count of its failures (its hosts that had
    /// not soaked failing after all) halts the rollout.
    #[test]
    fn a_done_wave_never_halts_afterwards() {
        for max_failed in [0, 1, 250, 500, 1_000, 3_333, 5_000, 9_999, 10_000] {
            let p = plan(vec![wave(10_000, 0, max_failed)]);
            let w = &p.waves()[0];
            for hosts in 0..=60u32 {
                for soaked in 0..=hosts {
                    let before = WaveTally {
                        hosts,
                        soaked,
                        failed: 0,
                    };
                    if !done(w, &before) {
                        continue;
                    }
                    for failed in 0..=hosts - soaked {
                        let after = WaveTally { failed, ..before };
                        assert!(
                            !crossed(w, &after),
                            "{max_failed} bp, {hosts} hosts, {soaked} soaked, {failed} failed"
                        );
                    }
                }
            }
        }
    }
}
