//! What one host remembers of the task plane: every task it has seen and
//! its state there, the generation of each setting and tag it holds, the
//! operator keys revoked and the tasks cancelled. The node persists it
//! (serde) and drives it; nothing here does I/O.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;
use starling_proto::v1::config_setting::Setting;
use starling_proto::v1::task_payload::Body;
use starling_proto::v1::ConfigSetting;

use crate::check::{CheckedTask, RefusalReason, CLOCK_SKEW_ALLOWANCE_SECS};
use crate::keys::KeyId;
use crate::root::kind_name;
use crate::target::{targets, HostFacts};

/// A task's state on one host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TaskState {
    /// Targets this host; not applied yet.
    Pending,
    /// Applied.
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
}

impl TaskState {
    /// Its short name, for metrics and views.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Applied => "applied",
            Self::Failed { .. } => "failed",
            Self::Refused { .. } => "refused",
            Self::Stopped { .. } => "stopped",
            Self::NotTargeted => "not_targeted",
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
}

/// What the host should do with a task it just accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Apply it, then call [`Ledger::applied`] (or [`Ledger::failed`]).
    Apply,
    /// Nothing: it does not target this host, or was stopped or refused
    /// here (the state says which).
    Nothing,
}

/// The host's memory of the task plane.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ledger {
    tasks: BTreeMap<String, TaskRecord>,
    /// Setting key -> (generation, encoded ConfigSetting) applied.
    settings: BTreeMap<String, (u64, Vec<u8>)>,
    /// Tag -> (generation, present).
    tags: BTreeMap<String, (u64, bool)>,
    /// Generation of the revocation list applied.
    revocations_generation: u64,
    revoked_keys: BTreeSet<KeyId>,
    /// Task ids cancelled -> until when to remember them.
    cancelled: BTreeMap<String, u64>,
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
            },
        );
        plan
    }

    /// Marks task `id` applied and takes on what it set. Applying it again
    /// changes nothing.
    pub fn applied(&mut self, task: &CheckedTask) {
        let Some(record) = self.tasks.get_mut(&task.task_id) else {
            return;
        };
        if record.state != TaskState::Pending {
            return;
        }
        record.state = TaskState::Applied;
        match &task.payload.body {
            Some(Body::Config(c)) => {
                for s in &c.settings {
                    if let Ok(key) = setting_key(s) {
                        self.settings.insert(key, (s.generation, s.encode_to_vec()));
                    }
                }
            }
            Some(Body::Tags(t)) => {
                for c in &t.changes {
                    self.tags.insert(c.tag.clone(), (c.generation, !c.remove));
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
            Some(Body::Root(_)) | None => {}
        }
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
        let before = (self.tasks.len(), self.cancelled.len());
        self.tasks.retain(|_, r| !gone(r.not_after));
        self.cancelled.retain(|_, until| !gone(*until));
        before != (self.tasks.len(), self.cancelled.len())
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
    use starling_proto::v1::{KindRateLimit, SensorKindSwitch, StringList};

    use super::*;

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
