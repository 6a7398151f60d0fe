//! A host's share of a rollout, methods of [`TaskPlane`]
//! (docs/rollouts.md, "On a host"): a task with a plan waits until the
//! sinks' decisions open its wave for this host, is applied while the
//! host is healthy, soaks for its wave's soak and is applied for good, or
//! is taken back by the host itself when the host turns unhealthy within
//! the soak (`failed`) or when the rollout halts (`rolled_back`, and
//! `stopped` where it still waited). No network is needed to take a task
//! back: what it replaced is in the ledger.

use std::collections::BTreeMap;

use super::TaskPlane;
use crate::check::CheckedTask;
use crate::ledger::TaskState;
use crate::rollout::{cell_canary, Control, Decided, Plan};

/// What a staging step asks of the driver.
#[derive(Debug, Default)]
pub struct Staged {
    /// Tasks whose wave opened: save the ledger, then apply them and call
    /// [`TaskPlane::applied`].
    pub apply: Vec<CheckedTask>,
    /// A task was taken back: the settings and tags in force changed.
    pub settings_changed: bool,
    /// Some task's state changed (save the ledger, report it).
    pub changed: bool,
}

impl TaskPlane {
    /// The checked plans of the tasks with one that this host holds, by
    /// task id (what an aggregator counts waves by and a sink decides).
    pub fn rollout_plans(&self) -> BTreeMap<String, Plan> {
        self.ledger
            .tasks()
            .filter_map(|(id, r)| {
                let plan = r.payload()?.rollout?;
                Some((id.clone(), Plan::from_proto(&plan).ok()?))
            })
            .collect()
    }

    /// One step of this host's rollouts at `now` (Unix seconds):
    /// `members` is its cell as it sees it (itself included; for its
    /// cell's canary), `decided` what the sinks decided, `health` this
    /// host's health (`Err(why)` when unhealthy).
    ///
    /// A waiting task is applied once its wave is open and the host is
    /// healthy (a host unhealthy before the task cannot judge it, so it
    /// keeps waiting); a soaking one is applied for good after its wave's
    /// soak, or taken back as failed when the host is unhealthy; when the
    /// rollout halted, every task that was applied here is taken back and
    /// one still waiting stops.
    pub fn stage(
        &mut self,
        now: u64,
        members: &[String],
        decided: &BTreeMap<String, Decided>,
        health: Result<(), &str>,
    ) -> Staged {
        let mut out = Staged::default();
        let host = self.host_id.clone();
        let mut opened = Vec::new();
        for (id, plan) in self.rollout_plans() {
            let Some(state) = self.ledger.task(&id).map(|r| r.state.clone()) else {
                continue;
            };
            let decision = decided.get(&id);
            // An abort the host holds halts as a sink's halt does, without
            // waiting for one.
            let aborted = (self.ledger.control(&id) == Control::Aborted)
                .then_some("aborted by the operators");
            if let Some(why) = aborted.or(decision.and_then(|d| d.halted.as_deref())) {
                let why = format!("its rollout halted ({why})");
                let changed = match state {
                    TaskState::Waiting | TaskState::Pending => {
                        self.ledger.halted_unapplied(&id, why)
                    }
                    TaskState::Soaking { .. } | TaskState::Applied => {
                        let before = self.ledger.task(&id).map(|r| r.state.clone());
                        out.settings_changed |= self.ledger.roll_back(&id, why);
                        self.ledger.task(&id).map(|r| r.state.clone()) != before
                    }
                    _ => false,
                };
                out.changed |= changed;
                continue;
            }
            let wave = || {
                let canary = cell_canary(&id, members.iter().map(String::as_str));
                plan.wave_of(&id, &host, canary == Some(host.as_str()))
            };
            match state {
                TaskState::Waiting => {
                    let open = decision.map_or(1, |d| d.open.max(1));
                    if wave() < open && health.is_ok() && self.ledger.open(&id) {
                        out.changed = true;
                        opened.push(id);
                    }
                }
                TaskState::Soaking { since } => {
                    if let Err(why) = health {
                        let reason = format!("unhealthy within its soak: {why}");
                        out.settings_changed |= self.ledger.failed_in_soak(&id, reason);
                        out.changed |= self.ledger.task(&id).map(|r| &r.state) != Some(&state);
                    } else {
                        let soak = plan.waves().get(wave()).map_or(0, |w| w.soak.as_secs());
                        if now >= since.saturating_add(soak) && self.ledger.soaked(&id) {
                            out.changed = true;
                        }
                    }
                }
                _ => {}
            }
        }
        if !opened.is_empty() {
            out.apply = self
                .pending(now)
                .into_iter()
                .filter(|t| opened.contains(&t.task_id))
                .collect();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use starling_proto::v1::{RolloutPlan, RolloutWave, TargetSelector};

    use super::*;
    use crate::plane::Received;
    use crate::rollout::rollout_point;
    use crate::testkit::{plane, tag_payload, Operators, NOW};

    /// Two waves, half the hosts each, soaking 60 s.
    fn planned_tag_task(ops: &Operators, id: &str) -> Vec<u8> {
        let mut t = tag_payload(
            id,
            "canary-test",
            TargetSelector {
                all: true,
                ..Default::default()
            },
        );
        let wave = |share| RolloutWave {
            share_basis_points: share,
            soak_secs: 60,
            max_failed_basis_points: 1_000,
            ..Default::default()
        };
        t.rollout = Some(RolloutPlan {
            waves: vec![wave(5_000), wave(10_000)],
        });
        ops.signed_task(&t, &[0])
    }

    /// A host of wave `wave` (0 or 1) of task `id`.
    fn host_in(id: &str, wave: usize) -> String {
        (0..)
            .map(|i| format!("h{i}"))
            .find(|h| (rollout_point(id, h) < 5_000) == (wave == 0))
            .expect("some host")
    }

    fn state(p: &TaskPlane, id: &str) -> &'static str {
        p.ledger().task(id).expect("held").state.as_str()
    }

    fn receive(p: &mut TaskPlane, signed: &[u8]) {
        match p.receive(signed, NOW) {
            Received::Accepted { apply, .. } => assert!(!apply, "a planned task waits"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_host_applies_in_its_wave_soaks_and_keeps_it() {
        let ops = Operators::new(1);
        let signed = planned_tag_task(&ops, "t");
        let host = host_in("t", 1);
        let mut p = plane(&ops, &host);
        receive(&mut p, &signed);
        assert_eq!(state(&p, "t"), "waiting");
        let members = vec![host.clone()];
        let none = BTreeMap::new();
        // No decision heard: only wave 0 is open, and this host is in 1.
        let s = p.stage(NOW, &members, &none, Ok(()));
        assert!(s.apply.is_empty() && !s.changed);
        let open = |n| -> BTreeMap<String, Decided> {
            [(
                "t".to_string(),
                Decided {
                    open: n,
                    halted: None,
                },
            )]
            .into()
        };
        // Unhealthy: it keeps waiting even with its wave open.
        let s = p.stage(NOW, &members, &open(2), Err("sensor not loaded"));
        assert!(s.apply.is_empty());
        let s = p.stage(NOW, &members, &open(2), Ok(()));
        assert_eq!(s.apply.len(), 1);
        assert_eq!(state(&p, "t"), "pending");
        p.applied(&s.apply[0], NOW);
        assert_eq!(state(&p, "t"), "soaking");
        assert!(p.facts().tags.contains("canary-test"));
        assert!(!p.stage(NOW + 59, &members, &open(2), Ok(())).changed);
        assert!(p.stage(NOW + 60, &members, &open(2), Ok(())).changed);
        assert_eq!(state(&p, "t"), "applied");
        // Soaked, and still taken back when the rollout halts later.
        let halted: BTreeMap<String, Decided> = [(
            "t".to_string(),
            Decided {
                open: 2,
                halted: Some("wave 1: 9 of 40 hosts failed".into()),
            },
        )]
        .into();
        let s = p.stage(NOW + 61, &members, &halted, Ok(()));
        assert!(s.changed && s.settings_changed);
        assert_eq!(state(&p, "t"), "rolled_back");
        assert!(!p.facts().tags.contains("canary-test"));
    }

    #[test]
    fn an_unhealthy_host_takes_the_task_back_and_a_halt_stops_the_waiting() {
        let ops = Operators::new(1);
        let signed = planned_tag_task(&ops, "t");
        let first = host_in("t", 0);
        let mut p = plane(&ops, &first);
        receive(&mut p, &signed);
        let members = vec![first.clone()];
        let s = p.stage(NOW, &members, &BTreeMap::new(), Ok(()));
        assert_eq!(s.apply.len(), 1, "wave 0 is open from the start");
        p.applied(&s.apply[0], NOW);
        let s = p.stage(NOW + 5, &members, &BTreeMap::new(), Err("spool growing"));
        assert!(s.changed && s.settings_changed);
        let r = p.ledger().task("t").expect("held");
        assert_eq!(r.state.as_str(), "failed");
        assert!(
            matches!(&r.state, TaskState::Failed { reason } if reason.contains("spool growing"))
        );
        assert!(!p.facts().tags.contains("canary-test"));

        // A host of wave 1 still waiting when the rollout halts: stopped.
        let later = host_in("t", 1);
        let mut q = plane(&ops, &later);
        receive(&mut q, &signed);
        let halted: BTreeMap<String, Decided> = [(
            "t".to_string(),
            Decided {
                open: 1,
                halted: Some("wave 0".into()),
            },
        )]
        .into();
        let s = q.stage(NOW, std::slice::from_ref(&later), &halted, Ok(()));
        assert!(s.changed && !s.settings_changed && s.apply.is_empty());
        assert_eq!(state(&q, "t"), "stopped");
    }

    #[test]
    fn an_abort_the_host_holds_halts_without_a_sink() {
        let ops = Operators::new(1);
        let signed = planned_tag_task(&ops, "t");
        let first = host_in("t", 0);
        let mut p = plane(&ops, &first);
        receive(&mut p, &signed);
        let members = vec![first.clone()];
        let s = p.stage(NOW, &members, &BTreeMap::new(), Ok(()));
        p.applied(&s.apply[0], NOW);
        let mut abort = tag_payload(
            "abort-t",
            "unused",
            TargetSelector {
                all: true,
                ..Default::default()
            },
        );
        abort.body = Some(starling_proto::v1::task_payload::Body::RolloutControl(
            starling_proto::v1::RolloutControl {
                task_ids: vec!["t".into()],
                action: starling_proto::v1::RolloutAction::Abort as i32,
                generation: 1,
            },
        ));
        match p.receive(&ops.signed_task(&abort, &[0]), NOW) {
            Received::Accepted { task, apply } => {
                assert!(apply);
                p.applied(&task, NOW);
            }
            other => panic!("{other:?}"),
        }
        let s = p.stage(NOW + 1, &members, &BTreeMap::new(), Ok(()));
        assert!(s.changed && s.settings_changed);
        let r = p.ledger().task("t").expect("held");
        assert!(
            matches!(&r.state, TaskState::RolledBack { why } if why.contains("aborted by the operators")),
            "{:?}",
            r.state
        );
    }
}
