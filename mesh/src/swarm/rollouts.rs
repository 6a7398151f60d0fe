//! Staged rollouts, methods of [`Mesh`] (docs/rollouts.md): a sink
//! decides every rollout under way from the cells' summaries it holds and
//! puts the decisions in its advert, which gossipsub carries signed by the
//! sink's key to every member; each member takes the decisions of the
//! sinks it heard and steps its own share of each rollout
//! (`TaskPlane::stage`): apply when its wave opens, soak while healthy,
//! take the task back when unhealthy or when the rollout halts. The logic
//! is `starling_task::rollout` and `starling_task::plane::staging`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use starling_task::rollout::combine;

use super::Mesh;

/// A member steps its rollouts, and a sink decides them, this often.
const STAGE_EVERY: Duration = Duration::from_secs(1);
/// A sink whose decisions changed advertises them at once, but not more
/// often than this.
const DECISION_ADVERT_MIN: Duration = Duration::from_secs(1);
/// Prometheus counter of rollout steps on a host that changed a task's
/// state, by `to` (`pending`: its wave opened; `applied`: soaked;
/// `failed`: unhealthy within its soak; `rolled_back`, `stopped`: its
/// rollout halted).
pub const ROLLOUT_STEPS: &str = "starling_rollout_steps_total";
/// Prometheus gauge at a sink: rollouts it decides, and of them halted.
pub const ROLLOUTS_DECIDED: &str = "starling_rollouts_decided";
pub const ROLLOUTS_HALTED: &str = "starling_rollouts_halted";

impl Mesh {
    /// This member and the members of its cell as it sees them, sorted
    /// (a sink, outside cells, is alone).
    pub(super) fn cell_members_and_me(&self) -> Vec<String> {
        let me = self.enrolment.identity().name.clone();
        let mut members: Vec<String> = std::iter::once(me)
            .chain(self.cell.iter().flat_map(|c| {
                c.membership
                    .members()
                    .into_iter()
                    .map(|(id, _)| id.host.to_string())
            }))
            .collect();
        members.sort();
        members.dedup();
        members
    }

    /// The rollouts' share of the tick: at a sink, decide; at every
    /// member, step its own share of each rollout.
    pub(super) fn rollouts_tick(&mut self, now: Instant) {
        let Some(driver) = self.tasks.as_mut() else {
            return;
        };
        if driver
            .last_stage
            .is_some_and(|t| now.duration_since(t) < STAGE_EVERY)
        {
            return;
        }
        driver.last_stage = Some(now);
        if self.config.sink_ingress.is_some() {
            self.decide_rollouts(now);
        }
        let members = self.cell_members_and_me();
        let Some(driver) = self.tasks.as_mut() else {
            return;
        };
        let decided = combine(
            self.sinks
                .sinks()
                .flat_map(|s| s.rollouts.iter())
                .chain(driver.announced.iter()),
        );
        let before = states(driver);
        let staged = driver.plane.stage(
            super::tasks::unix_now(),
            &members,
            &decided,
            match &driver.unhealthy {
                None => Ok(()),
                Some(why) => Err(why.as_str()),
            },
        );
        if driver.decided != decided {
            driver.decided = decided;
            driver.status_dirty = true;
        }
        if !staged.changed {
            return;
        }
        for (id, to) in states(driver) {
            if before.get(&id) != Some(&to) {
                tracing::info!(task = %id, state = to, "rollout step");
                metrics::counter!(ROLLOUT_STEPS, "to" => to).increment(1);
            }
        }
        if staged.settings_changed {
            driver.hand_settings_to_node();
        }
        let saved_as = driver.persist();
        if !staged.apply.is_empty() {
            self.apply_once_saved(saved_as, staged.apply);
        }
    }

    /// At a sink: decides every rollout it holds a plan for from every
    /// cell's summary, and advertises the decisions soon when they
    /// changed.
    fn decide_rollouts(&mut self, now: Instant) {
        let Some(driver) = self.tasks.as_mut() else {
            return;
        };
        let plans = driver.plane.rollout_plans();
        let ledger = driver.plane.ledger();
        let decisions = driver.decisions.decide(
            &plans,
            &driver.fleet,
            super::tasks::unix_now() * 1000,
            |id| ledger.control(id),
        );
        metrics::gauge!(ROLLOUTS_DECIDED).set(decisions.len() as f64);
        metrics::gauge!(ROLLOUTS_HALTED).set(decisions.iter().filter(|d| d.halted).count() as f64);
        if decisions != driver.announced {
            for d in &decisions {
                if !driver.announced.contains(d) {
                    tracing::info!(task = %d.task_id, open_waves = d.open_waves, halted = d.halted, reason = %d.halt_reason, "rollout decided");
                }
            }
            driver.announced = decisions;
            driver.announce_due = true;
        }
        // The advert carries the decisions: one goes out as soon as the
        // last is a second old, rather than at the next regular one.
        if driver.announce_due
            && self
                .last_advert
                .is_none_or(|t| now.duration_since(t) >= DECISION_ADVERT_MIN)
        {
            driver.announce_due = false;
            self.last_advert = None;
        }
    }
}

/// Each task held and its state here, to log and count the steps.
fn states(driver: &super::tasks::TaskDriver) -> BTreeMap<String, &'static str> {
    driver
        .plane
        .ledger()
        .tasks()
        .map(|(id, r)| (id.clone(), r.state.as_str()))
        .collect()
}
