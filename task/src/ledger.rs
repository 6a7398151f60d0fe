//! What one host remembers of the task plane: every task it has seen and
//! its state there, the generation of each setting and tag it holds, the
//! operator keys revoked and the tasks cancelled. The node persists it
//! (serde) and drives it; nothing here does I/O.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;
use starling_proto::v1::config_setting::Setting;
use starling_proto::v1::task_payload::Body;
use starling_proto::v1::{ConfigSetting, RolloutAction, RolloutControl};

use crate::check::{CheckedTask, RefusalReason, CLOCK_SKEW_ALLOWANCE_SECS};
use crate::keys::KeyId;
use crate::rollout::Control;
use crate::root::kind_name;
use crate::target::{targets, HostFacts};

/// A task's state on one host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TaskState {
    /// Targets this host; not applied yet.
    Pending,
    /// Targets this host under a rollout plan whose wave for this host is
    /// not open yet (docs/rollouts.md, "On a host").
    Waiting,
    /// Applied under a rollout plan at `since` (Unix seconds), and healthy
    /// since; `Applied` once its wave's soak has passed.
    Soaking { since: u64 },
    /// Applied (under a rollout plan: and soaked).
    Applied,
    /// Applying it failed.
    Failed { reason: String },
    /// Refused here (it still counts for this host in the task's status).
    Refused {
        reason: RefusalReason,
        detail: String,
    },
    /// Cancelled, or signed by a key revoked, before it was applied here.
    Stopped { why: String },
    /// Does not target this host (relayed only).
    NotTargeted,
    /// Applied, then taken back (its rollout halted, or this host turned
    /// unhealthy within its soak): what it replaced is in force again.
    RolledBack { why: String },
}

impl TaskState {
    /// Its short name, for metrics and views.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Waiting => "waiting",
            Self::Soaking { .. } => "soaking",
            Self::Applied => "applied",
            Self::Failed { .. } => "failed",
            Self::Refused { .. } => "refused",
            Self::Stopped { .. } => "stopped",
            Self::NotTargeted => "not_targeted",
            Self::RolledBack { .. } => "rolled_back",
        }
    }
}

/// One task as a host remembers it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskRecord {
    /// SHA-256 of its payload.
    pub digest: [u8; 32],
    /// Its kind's name.
    pub kind: String,
    /// End of its validity window: remembered until then.
    pub not_after: u64,
    /// The keys that signed it.
    pub signers: BTreeSet<KeyId>,
    /// Its state here.
    pub state: TaskState,
    /// The signed task, kept so peers that lack it can be given it.
    pub signed: Vec<u8>,
    /// What applying it replaced, kept for a task with a rollout plan
    /// until it is rolled back ([`Ledger::roll_back`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<Replaced>,
}

/// A setting as the ledger holds it: its generation and the encoded
/// `ConfigSetting`.
pub type HeldSetting = (u64, Vec<u8>);

/// The settings and tags a task replaced: for each, the entry this host
/// held before (none: the fleet did not set it).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Replaced {
    /// Setting key -> (generation, encoded setting) before.
    pub settings: Vec<(String, Option<HeldSetting>)>,
    /// Tag -> (generation, present) before.
    pub tags: Vec<(String, Option<(u64, bool)>)>,
}

impl TaskRecord {
    /// The payload of the signed task kept (None only if the bytes a
    /// check once passed no longer decode, which a ledger from a newer
    /// version could hold).
    pub fn payload(&self) -> Option<starling_proto::v1::TaskPayload> {
        let envelope = starling_proto::v1::SignedTask::decode(self.signed.as_slice()).ok()?;
        starling_proto::v1::TaskPayload::decode(envelope.payload.as_slice()).ok()
    }
}

/// What the host should do with a task it just accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Apply it, then call [`Ledger::applied`] (or [`Ledger::failed`]).
    Apply,
    /// Nothing now: it does not target this host, or was stopped or
    /// refused here, or it waits for its wave (the state says which).
    Nothing,
}

/// The host's memory of the task plane.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ledger {
    tasks: BTreeMap<String, TaskRecord>,
    /// Setting key -> (generation, encoded ConfigSetting) applied.
    settings: BTreeMap<String, HeldSetting>,
    /// Tag -> (generation, present).
    tags: BTreeMap<String, (u64, bool)>,
    /// Generation of the revocation list applied.
    revocations_generation: u64,
    revoked_keys: BTreeSet<KeyId>,
    /// Task ids cancelled -> until when to remember them.
    cancelled: BTreeMap<String, u64>,
    /// Task id -> the operators' last control of its rollout: its
    /// generation, the control, and until when to remember it.
    #[serde(default)]
    controls: BTreeMap<String, (u64, Control, u64)>,
}

/// The control a `RolloutControl` carries (None: no action this version
/// knows).
pub fn control_of(c: &RolloutControl) -> Option<Control> {
    match RolloutAction::try_from(c.action).ok()? {
        RolloutAction::Pause => Some(Control::Paused),
        RolloutAction::Resume => Some(Control::Running),
        RolloutAction::Abort => Some(Control::Aborted),
        RolloutAction::Unspecified => None,
    }
}

impl Ledger {
    /// The record of task `id`, if this host has seen it.
    pub fn task(&self, id: &str) -> Option<&TaskRecord> {
        self.tasks.get(id)
    }

    /// Every task this host holds, by id.
    pub fn tasks(&self) -> impl Iterator<Item = (&String, &TaskRecord)> {
        self.tasks.iter()
    }

    /// True when operator key `id` was revoked by a task.
    pub fn is_revoked(&self, id: &KeyId) -> bool {
        self.revoked_keys.contains(id)
    }

    /// True when a cancel task named task `id`.
    pub fn is_cancelled(&self, id: &str) -> bool {
        self.cancelled.contains_key(id)
    }

    /// The operators' last word on task `id`'s rollout (running unless a
    /// rollout task said otherwise).
    pub fn control(&self, id: &str) -> Control {
        self.controls
            .get(id)
            .map_or(Control::Running, |(_, c, _)| *c)
    }

    /// The fleet's tags present on this host.
    pub fn tags(&self) -> BTreeSet<String> {
        self.tags
            .iter()
            .filter(|(_, (_, present))| *present)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Tags the fleet removed from this host (they win over the local
    /// file's tags).
    pub fn removed_tags(&self) -> BTreeSet<String> {
        self.tags
            .iter()
            .filter(|(_, (_, present))| !*present)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Forgets a pending task whose signed bytes are `signed` (to check it
    /// again after a restart).
    pub(crate) fn remove_pending(&mut self, signed: &[u8]) {
        self.tasks
            .retain(|_, r| !(r.state == TaskState::Pending && r.signed == signed));
    }

    /// The fleet settings this host holds (generation, setting), by key.
    pub fn settings(&self) -> BTreeMap<String, (u64, ConfigSetting)> {
        self.settings
            .iter()
            .filter_map(|(k, (g, bytes))| {
                ConfigSetting::decode(bytes.as_slice())
                    .ok()
                    .map(|s| (k.clone(), (*g, s)))
            })
            .collect()
    }

    /// The generation of the revocation list applied here (0: none).
    pub fn revocations_generation(&self) -> u64 {
        self.revocations_generation
    }

    /// Records a task that passed [`crate::check::check_task`] and says
    /// whether to apply it here.
    pub fn admit(&mut self, task: &CheckedTask, facts: &HostFacts) -> Plan {
        let target = task.payload.target.clone().unwrap_or_default();
        let state = if !targets(&target, facts) {
            TaskState::NotTargeted
        } else if let Some(stale) = self.stale_part(task) {
            TaskState::Refused {
                reason: RefusalReason::OlderGeneration,
                detail: stale,
            }
        } else if task.payload.rollout.is_some() {
            TaskState::Waiting
        } else {
            TaskState::Pending
        };
        let plan = if state == TaskState::Pending {
            Plan::Apply
        } else {
            Plan::Nothing
        };
        self.tasks.insert(
            task.task_id.clone(),
            TaskRecord {
                digest: task.digest,
                kind: kind_name(task.kind).into(),
                not_after: task.payload.not_after,
                signers: task.signers.clone(),
                state,
                signed: task.signed.clone(),
                replaced: None,
            },
        );
        plan
    }

    /// Task `id`, waiting for its wave, may be applied now: it becomes
    /// pending (the driver saves the ledger, then applies it). False when
    /// it was not waiting.
    pub fn open(&mut self, id: &str) -> bool {
        match self.tasks.get_mut(id) {
            Some(r) if r.state == TaskState::Waiting => {
                r.state = TaskState::Pending;
                true
            }
            _ => false,
        }
    }

    /// Marks task `id` applied at `now` (Unix seconds) and takes on what
    /// it set; a task with a rollout plan soaks first. Applying it again
    /// changes nothing.
    pub fn applied(&mut self, task: &CheckedTask, now: u64) {
        let Some(record) = self.tasks.get_mut(&task.task_id) else {
            return;
        };
        if record.state != TaskState::Pending {
            return;
        }
        let planned = task.payload.rollout.is_some();
        record.state = if planned {
            TaskState::Soaking { since: now }
        } else {
            TaskState::Applied
        };
        let mut replaced = planned.then(Replaced::default);
        match &task.payload.body {
            Some(Body::Config(c)) => {
                for s in &c.settings {
                    if let Ok(key) = setting_key(s) {
                        let before = self
                            .settings
                            .insert(key.clone(), (s.generation, s.encode_to_vec()));
                        if let Some(r) = replaced.as_mut() {
                            r.settings.push((key, before));
                        }
                    }
                }
            }
            Some(Body::Tags(t)) => {
                for c in &t.changes {
                    let before = self.tags.insert(c.tag.clone(), (c.generation, !c.remove));
                    if let Some(r) = replaced.as_mut() {
                        r.tags.push((c.tag.clone(), before));
                    }
                }
            }
            Some(Body::Revocations(r)) => self.revocations_generation = r.generation,
            Some(Body::RevokeKeys(r)) => {
                let revoked: Vec<KeyId> = r.key_ids.iter().cloned().map(KeyId).collect();
                for (_, other) in self.tasks.iter_mut() {
                    if other.state == TaskState::Pending
                        && revoked.iter().any(|k| other.signers.contains(k))
                    {
                        other.state = TaskState::Stopped {
                            why: format!("signed by a key that task {} revoked", task.task_id),
                        };
                    }
                }
                self.revoked_keys.extend(revoked);
            }
            Some(Body::Cancel(c)) => {
                for id in &c.task_ids {
                    self.cancelled.insert(id.clone(), task.payload.not_after);
                    if let Some(other) = self.tasks.get_mut(id) {
                        if other.state == TaskState::Pending {
                            other.state = TaskState::Stopped {
                                why: format!("cancelled by task {}", task.task_id),
                            };
                        }
                    }
                }
            }
            Some(Body::RolloutControl(c)) => {
                if let Some(control) = control_of(c) {
                    for id in &c.task_ids {
                        let newer = self
                            .controls
                            .get(id)
                            .is_none_or(|(generation, _, _)| c.generation > *generation);
                        // An abort is final, as a halt by failures is.
                        let aborted = self.control(id) == Control::Aborted;
                        if newer && !aborted {
                            self.controls.insert(
                                id.clone(),
                                (c.generation, control, task.payload.not_after),
                            );
                        }
                    }
                }
            }
            Some(Body::Root(_)) | None => {}
        }
        if let Some(record) = self.tasks.get_mut(&task.task_id) {
            record.replaced = replaced;
        }
    }

    /// Takes back task `id`, applied here with a rollout plan: each
    /// setting and tag it set, unless a newer task has set it since, holds
    /// what it held before again (a setting the fleet did not set before
    /// goes back to the local file's), at the task's own generation, so
    /// neither this task nor an older one can set it again. True when
    /// anything changed (the host then applies its settings anew).
    pub fn roll_back(&mut self, id: &str, why: String) -> bool {
        self.take_back(id, TaskState::RolledBack { why })
    }

    /// Task `id` turned this host unhealthy within its soak: it is rolled
    /// back as by [`Ledger::roll_back`] and counts as failed here.
    pub fn failed_in_soak(&mut self, id: &str, reason: String) -> bool {
        self.take_back(id, TaskState::Failed { reason })
    }

    /// Task `id` has not been applied here (waiting for its wave, or
    /// opened and not applied yet) and its rollout halted: it is never
    /// applied here. False when it was neither.
    pub fn halted_unapplied(&mut self, id: &str, why: String) -> bool {
        match self.tasks.get_mut(id) {
            Some(r) if matches!(r.state, TaskState::Waiting | TaskState::Pending) => {
                r.state = TaskState::Stopped { why };
                true
            }
            _ => false,
        }
    }

    /// Task `id` soaked its wave here: it is applied, and what it
    /// replaced is still kept (a halt of a later wave takes it back on
    /// every host that took it).
    pub fn soaked(&mut self, id: &str) -> bool {
        match self.tasks.get_mut(id) {
            Some(r) if matches!(r.state, TaskState::Soaking { .. }) => {
                r.state = TaskState::Applied;
                true
            }
            _ => false,
        }
    }

    /// Rolls back task `id` (applied or soaking, with what it replaced
    /// kept) and leaves it in `state`; true when a setting or tag changed.
    fn take_back(&mut self, id: &str, state: TaskState) -> bool {
        let Some(record) = self.tasks.get_mut(id) else {
            return false;
        };
        if !matches!(record.state, TaskState::Applied | TaskState::Soaking { .. }) {
            return false;
        }
        let Some(replaced) = record.replaced.take() else {
            return false;
        };
        record.state = state;
        let Some(payload) = record.payload() else {
            return false;
        };
        let mut changed = false;
        match payload.body {
            Some(Body::Config(c)) => {
                for s in &c.settings {
                    let Ok(key) = setting_key(s) else { continue };
                    let ours = self.settings.get(&key).is_some_and(|(g, bytes)| {
                        *g == s.generation && *bytes == s.encode_to_vec()
                    });
                    if !ours {
                        continue;
                    }
                    let before = replaced
                        .settings
                        .iter()
                        .find(|(k, _)| *k == key)
                        .and_then(|(_, before)| before.clone());
                    let restored = match before {
                        Some((_, bytes)) => bytes,
                        None => ConfigSetting {
                            generation: s.generation,
                            reset: true,
                            setting: s.setting.clone(),
                        }
                        .encode_to_vec(),
                    };
                    self.settings.insert(key, (s.generation, restored));
                    changed = true;
                }
            }
            Some(Body::Tags(t)) => {
                for c in &t.changes {
                    let ours = self.tags.get(&c.tag) == Some(&(c.generation, !c.remove));
                    if !ours {
                        continue;
                    }
                    let present = replaced
                        .tags
                        .iter()
                        .find(|(tag, _)| *tag == c.tag)
                        .and_then(|(_, before)| *before)
                        .is_some_and(|(_, present)| present);
                    self.tags.insert(c.tag.clone(), (c.generation, present));
                    changed = true;
                }
            }
            _ => {}
        }
        changed
    }

    /// Marks task `id` failed with `reason` (it may be applied again by a
    /// newer task; this one is not retried).
    pub fn failed(&mut self, id: &str, reason: String) {
        if let Some(r) = self.tasks.get_mut(id) {
            if r.state == TaskState::Pending {
                r.state = TaskState::Failed { reason };
            }
        }
    }

    /// Forgets tasks and cancellations whose window closed before `now`:
    /// a copy arriving later is refused as expired, so memory stays
    /// bounded by the tasks still valid. True when anything went.
    pub fn forget_expired(&mut self, now: u64) -> bool {
        let gone = |not_after: u64| not_after.saturating_add(CLOCK_SKEW_ALLOWANCE_SECS) < now;
        let before = (self.tasks.len(), self.cancelled.len(), self.controls.len());
        self.tasks.retain(|_, r| !gone(r.not_after));
        self.cancelled.retain(|_, until| !gone(*until));
        self.controls.retain(|_, (_, _, until)| !gone(*until));
        before != (self.tasks.len(), self.cancelled.len(), self.controls.len())
    }

    /// Names the first setting or tag of `task` that is not newer than
    /// what this host holds.
    fn stale_part(&self, task: &CheckedTask) -> Option<String> {
        match &task.payload.body {
            Some(Body::Config(c)) => c.settings.iter().find_map(|s| {
                let key = setting_key(s).ok()?;
                let held = self.settings.get(&key).map_or(0, |(g, _)| *g);
                (s.generation <= held).then(|| {
                    format!(
                        "setting {key} at generation {}, this host holds {held}",
                        s.generation
                    )
                })
            }),
            Some(Body::Tags(t)) => t.changes.iter().find_map(|c| {
                let held = self.tags.get(&c.tag).map_or(0, |(g, _)| *g);
                (c.generation <= held).then(|| {
                    format!(
                        "tag {} at generation {}, this host holds {held}",
                        c.tag, c.generation
                    )
                })
            }),
            Some(Body::Revocations(r)) => {
                (r.generation <= self.revocations_generation).then(|| {
                    format!(
                        "revocation list generation {}, this host holds {}",
                        r.generation, self.revocations_generation
                    )
                })
            }
            _ => None,
        }
    }
}

/// The name of the setting a [`ConfigSetting`] sets: generations are
/// counted per name, and the node maps each to its TOML field.
pub fn setting_key(s: &ConfigSetting) -> Result<String, String> {
    let kind = |k: &str| -> Result<String, String> {
        if starling_proto::SENSOR_KINDS.contains(&k) {
            Ok(k.to_owned())
        } else {
            Err(format!("{k:?} is not a kind the sensor produces"))
        }
    };
    // The sensor's own limits (starling_proto::sensor_limits): a setting
    // every host accepts is one every sensor can load.
    let list = |name: &str, values: &[String], check: fn(&[String]) -> Result<(), String>| {
        check(values)
            .map(|()| name.to_owned())
            .map_err(|e| format!("{name}: {e}"))
    };
    use starling_proto::sensor_limits as limits;
    match s.setting.as_ref().ok_or("a setting with no value")? {
        Setting::SensorKind(k) => Ok(format!("sensor.kinds.{}", kind(&k.kind)?)),
        Setting::WatchPaths(l) => list("sensor.watch_paths", &l.values, limits::check_prefixes),
        Setting::QuietPaths(l) => list("sensor.quiet_paths", &l.values, limits::check_prefixes),
        Setting::QuietExes(l) => list("sensor.quiet_exes", &l.values, limits::check_quiet_exes),
        Setting::QuietCgroups(l) => list(
            "sensor.quiet_cgroups",
            &l.values,
            limits::check_quiet_cgroups,
        ),
        Setting::RateLimit(r) if !s.reset && r.per_second == 0 => {
            Err(format!("rate limit of {} at 0 per second", r.kind))
        }
        Setting::RateLimit(r) => Ok(format!("sensor.rate_limits.{}", kind(&r.kind)?)),
        Setting::SpoolQuotaBytes(0) if !s.reset => Err("a spool quota of 0 bytes".into()),
        Setting::SpoolQuotaBytes(_) => Ok("spool.quota_bytes".into()),
        Setting::RingBufferBytes(b) if !s.reset && (!b.is_power_of_two() || *b < 4096) => Err(
            format!("a ring buffer of {b} bytes (a power of two, at least 4096)"),
        ),
        Setting::RingBufferBytes(_) => Ok("sensor.ring_buffer_bytes".into()),
    }
}

#[cfg(test)]
mod tests {
    use starling_proto::v1::{
        FleetConfig, HostTags, KindRateLimit, SensorKindSwitch, SignedTask, StringList, TagChange,
        TargetSelector, TaskKind, TaskPayload,
    };

    use super::*;

    /// A task as the check would pass it, with a rollout plan or not.
    fn checked(id: &str, body: Body, planned: bool) -> CheckedTask {
        let payload = TaskPayload {
            fleet: "f".into(),
            task_id: id.into(),
            not_before: 0,
            not_after: u64::MAX / 2,
            target: Some(TargetSelector {
                all: true,
                ..Default::default()
            }),
            reason: String::new(),
            rollout: planned.then(crate::rollout::default_plan),
            body: Some(body),
        };
        let signed = SignedTask {
            payload: payload.encode_to_vec(),
            signatures: Vec::new(),
        }
        .encode_to_vec();
        CheckedTask {
            task_id: id.into(),
            kind: TaskKind::Config,
            payload,
            digest: crate::check::sha256(&signed),
            signers: BTreeSet::new(),
            signed,
            new_root: None,
        }
    }

    fn kind_setting(generation: u64, kind: &str, enabled: bool) -> Body {
        Body::Config(FleetConfig {
            settings: vec![ConfigSetting {
                generation,
                reset: false,
                setting: Some(Setting::SensorKind(SensorKindSwitch {
                    kind: kind.into(),
                    enabled,
                })),
            }],
        })
    }

    /// Admits and applies `task`; one with a plan waits until its wave
    /// is opened.
    fn apply(ledger: &mut Ledger, task: &CheckedTask) {
        let facts = HostFacts::default();
        let plan = ledger.admit(task, &facts);
        if task.payload.rollout.is_some() {
            assert_eq!(plan, Plan::Nothing);
            assert_eq!(
                ledger.task(&task.task_id).unwrap().state,
                TaskState::Waiting
            );
            assert!(ledger.open(&task.task_id));
        } else {
            assert_eq!(plan, Plan::Apply);
        }
        ledger.applied(task, 100);
    }

    #[test]
    fn a_planned_task_waits_soaks_and_is_let_go_or_taken_back() {
        let mut ledger = Ledger::default();
        let key = "sensor.kinds.dns_query";
        let task =
            |id: &str, generation| checked(id, kind_setting(generation, "dns_query", false), true);
        let first = task("first", 1);
        apply(&mut ledger, &first);
        assert_eq!(
            ledger.task("first").unwrap().state,
            TaskState::Soaking { since: 100 }
        );
        assert!(!ledger.open("first"), "only a waiting task opens");
        // Soaked: applied, and what it replaced still kept.
        assert!(ledger.soaked("first"));
        assert_eq!(ledger.task("first").unwrap().state, TaskState::Applied);
        assert!(ledger.task("first").unwrap().replaced.is_some());
        // Unhealthy within its soak: taken back, and failed.
        apply(&mut ledger, &task("second", 2));
        assert!(ledger.failed_in_soak("second", "sensor not loaded".into()));
        assert_eq!(ledger.task("second").unwrap().state.as_str(), "failed");
        assert_eq!(setting(&ledger, key).0, 2, "held at the task's generation");
        assert!(
            matches!(
                setting(&ledger, key).1.setting,
                Some(Setting::SensorKind(SensorKindSwitch { enabled: false, .. }))
            ),
            "what the first task set is in force again"
        );
        // Halted while waiting: never applied.
        let third = task("third", 3);
        assert_eq!(ledger.admit(&third, &HostFacts::default()), Plan::Nothing);
        assert!(ledger.halted_unapplied("third", "halted at wave 0".into()));
        assert_eq!(ledger.task("third").unwrap().state.as_str(), "stopped");
        assert!(!ledger.open("third"));
        ledger.applied(&third, 200);
        assert_eq!(ledger.task("third").unwrap().state.as_str(), "stopped");
        assert_eq!(setting(&ledger, key).0, 2);
    }

    fn setting(ledger: &Ledger, key: &str) -> (u64, ConfigSetting) {
        ledger.settings().remove(key).expect("set")
    }

    #[test]
    fn a_rolled_back_task_restores_what_it_replaced_at_its_own_generation() {
        let mut ledger = Ledger::default();
        let key = "sensor.kinds.dns_query";
        apply(
            &mut ledger,
            &checked("on", kind_setting(1, "dns_query", true), false),
        );
        let off = checked("off", kind_setting(5, "dns_query", false), true);
        apply(&mut ledger, &off);
        assert!(matches!(
            setting(&ledger, key).1.setting,
            Some(Setting::SensorKind(SensorKindSwitch { enabled: false, .. }))
        ));
        assert!(ledger.roll_back("off", "halted".into()));
        assert_eq!(ledger.task("off").unwrap().state.as_str(), "rolled_back");
        let (generation, restored) = setting(&ledger, key);
        assert_eq!(generation, 5, "the task's generation stays");
        assert!(matches!(
            restored.setting,
            Some(Setting::SensorKind(SensorKindSwitch { enabled: true, .. }))
        ));
        // Neither an older task nor this one can set it again.
        let older = checked("older", kind_setting(4, "dns_query", false), false);
        assert_eq!(ledger.admit(&older, &HostFacts::default()), Plan::Nothing);
        assert!(!ledger.roll_back("off", "again".into()), "rolled back once");
        // A newer task sets it as usual.
        apply(
            &mut ledger,
            &checked("newer", kind_setting(6, "dns_query", false), false),
        );
        assert_eq!(setting(&ledger, key).0, 6);
    }

    #[test]
    fn a_setting_the_fleet_did_not_set_goes_back_to_the_local_file() {
        let mut ledger = Ledger::default();
        let task = checked("off", kind_setting(3, "process_exec", false), true);
        apply(&mut ledger, &task);
        assert!(ledger.roll_back("off", "unhealthy".into()));
        let (generation, restored) = setting(&ledger, "sensor.kinds.process_exec");
        assert_eq!(generation, 3);
        assert!(restored.reset, "the local file's value rules again");
    }

    #[test]
    fn a_rollback_leaves_what_a_newer_task_set_since_and_tags_too() {
        let mut ledger = Ledger::default();
        let key = "sensor.kinds.process_exec";
        apply(
            &mut ledger,
            &checked("a", kind_setting(2, "process_exec", false), true),
        );
        apply(
            &mut ledger,
            &checked("b", kind_setting(3, "process_exec", true), false),
        );
        assert!(!ledger.roll_back("a", "halted".into()));
        assert_eq!(setting(&ledger, key).0, 3);
        // Tags: one added by a planned task goes away again; one it
        // removed comes back.
        let tags = |changes: Vec<(&str, u64, bool)>| {
            Body::Tags(HostTags {
                changes: changes
                    .into_iter()
                    .map(|(tag, generation, remove)| TagChange {
                        tag: tag.into(),
                        generation,
                        remove,
                    })
                    .collect(),
            })
        };
        apply(
            &mut ledger,
            &checked("t1", tags(vec![("old", 1, false)]), false),
        );
        apply(
            &mut ledger,
            &checked("t2", tags(vec![("new", 2, false), ("old", 2, true)]), true),
        );
        assert_eq!(ledger.tags(), BTreeSet::from(["new".to_string()]));
        assert!(ledger.roll_back("t2", "halted".into()));
        assert_eq!(ledger.tags(), BTreeSet::from(["old".to_string()]));
        // A task without a plan keeps nothing to roll back with.
        apply(
            &mut ledger,
            &checked("t3", tags(vec![("x", 3, false)]), false),
        );
        assert!(!ledger.roll_back("t3", "halted".into()));
    }

    fn control(id: &str, generation: u64, action: RolloutAction) -> CheckedTask {
        let mut t = checked(
            id,
            Body::RolloutControl(RolloutControl {
                task_ids: vec!["roll".into()],
                action: action as i32,
                generation,
            }),
            false,
        );
        t.kind = TaskKind::Rollout;
        t.payload.not_after = 1_000;
        t
    }

    #[test]
    fn the_newest_control_of_a_rollout_wins_and_an_abort_is_final() {
        let mut ledger = Ledger::default();
        assert_eq!(ledger.control("roll"), Control::Running);
        apply(&mut ledger, &control("c1", 5, RolloutAction::Pause));
        assert_eq!(ledger.control("roll"), Control::Paused);
        apply(&mut ledger, &control("c2", 4, RolloutAction::Resume));
        assert_eq!(ledger.control("roll"), Control::Paused, "an older control");
        apply(&mut ledger, &control("c3", 6, RolloutAction::Resume));
        assert_eq!(ledger.control("roll"), Control::Running);
        apply(&mut ledger, &control("c4", 7, RolloutAction::Abort));
        apply(&mut ledger, &control("c5", 8, RolloutAction::Resume));
        assert_eq!(ledger.control("roll"), Control::Aborted, "final");
        // Remembered while the control task is valid.
        assert!(ledger.forget_expired(1_000 + CLOCK_SKEW_ALLOWANCE_SECS + 1));
        assert_eq!(ledger.control("roll"), Control::Running);
    }

    fn switch(kind: &str) -> ConfigSetting {
        ConfigSetting {
            generation: 1,
            reset: false,
            setting: Some(Setting::SensorKind(SensorKindSwitch {
                kind: kind.into(),
                enabled: false,
            })),
        }
    }

    #[test]
    fn only_kinds_the_sensor_produces_can_be_switched_or_limited() {
        assert_eq!(
            setting_key(&switch("dns_query")).as_deref(),
            Ok("sensor.kinds.dns_query")
        );
        for own in ["event_loss", "task_state", "no_such_kind"] {
            assert!(setting_key(&switch(own)).is_err(), "{own} switched");
            let limit = ConfigSetting {
                generation: 1,
                reset: false,
                setting: Some(Setting::RateLimit(KindRateLimit {
                    kind: own.into(),
                    per_second: 10,
                    burst: 0,
                })),
            };
            assert!(setting_key(&limit).is_err(), "{own} limited");
        }
    }

    #[test]
    fn path_lists_are_held_to_what_the_sensor_loads() {
        let with = |setting: fn(StringList) -> Setting, values: Vec<String>| ConfigSetting {
            generation: 1,
            reset: false,
            setting: Some(setting(StringList { values })),
        };
        let ok = vec!["/etc/".to_string(), "~/.ssh/".to_string()];
        assert!(setting_key(&with(Setting::WatchPaths, ok.clone())).is_ok());
        assert!(setting_key(&with(Setting::QuietPaths, ok)).is_ok());
        for bad in [
            vec!["etc/shadow".to_string()],
            vec![format!("/{}", "a".repeat(300))],
            vec!["/x".to_string(); 1025],
        ] {
            let e = setting_key(&with(Setting::WatchPaths, bad.clone())).unwrap_err();
            assert!(e.starts_with("sensor.watch_paths: "), "{e}");
            assert!(setting_key(&with(Setting::QuietPaths, bad)).is_err());
        }
        let exes = |v: &[&str]| {
            with(
                Setting::QuietExes,
                v.iter().map(|s| s.to_string()).collect(),
            )
        };
        assert!(setting_key(&exes(&["/usr/bin/updatedb"])).is_ok());
        assert!(setting_key(&exes(&["updatedb"])).is_err());
        let cgroups = with(Setting::QuietCgroups, vec!["/a".to_string(); 1025]);
        assert!(setting_key(&cgroups).is_err());
    }
}
