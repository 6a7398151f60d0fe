//! The task plane's status file, `status.json`, and the fleet's view it
//! carries: what `starlingctl task status`, `task list` and `fleet` read.
//! Written off the event loop (`file_writer`), at once only while someone
//! reads it (`ask_for_status`), otherwise at most once a minute.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use starling_proto::v1::ConfigSetting;
use starling_task::rollup::ViewChange;

use super::TaskDriver;

/// Prometheus counter of cell summaries taken into this host's fleet view,
/// by `change`: the first part of what the view shows that changed
/// (`new_cell`, `publisher`, `members`, `tasks`, `down`, `versions`,
/// `contact`), `fresher` (the same again, later), `older` (older than the
/// one held).
pub const FLEET_VIEW_CHANGES: &str = "starling_task_fleet_view_changes_total";
/// While someone reads it, the status file is rewritten at most this
/// often.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// How often a read status is rewritten when only the times cells were
/// last heard from moved: each cell sends a summary every 2-60 s, and one
/// that says the same again need not be written at once.
const STATUS_REFRESH: Duration = Duration::from_secs(10);
/// A reader's ask ([`ask_for_status`]) keeps the status that fresh for
/// this long; unread, it is rewritten at most every `STATUS_UNREAD_EVERY`
/// when something in it changed. Nearly every host of a fleet is read by
/// nobody, and 300 members of one process rewriting theirs every second
/// while a task spread kept their timers late (docs/tasks.md).
const STATUS_READ_FOR: Duration = Duration::from_secs(30);
const STATUS_UNREAD_EVERY: Duration = Duration::from_secs(60);
/// The file a reader touches to ask for a fresh status (in the task
/// state directory, beside the status file).
pub const STATUS_WANTED_FILE: &str = "status.wanted";

/// Asks the task plane whose state directory is `state_dir` for a fresh
/// status file: it is rewritten within about a second, and kept fresh
/// while asks keep coming (`starlingctl task status`, `--watch`). Fails
/// when the directory cannot be written (a reader without the rights
/// then sees the status as last written).
pub fn ask_for_status(state_dir: &Path) -> std::io::Result<SystemTime> {
    let now = SystemTime::now();
    let file = std::fs::File::create(state_dir.join(STATUS_WANTED_FILE))?;
    file.set_modified(now)?;
    Ok(now)
}
/// What one task is on this host, for `starlingctl task list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskLine {
    pub task_id: String,
    pub kind: String,
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    pub not_after: u64,
    pub signers: Vec<String>,
}

/// The task plane on this host, written to `status.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskPlaneStatus {
    pub host: String,
    pub fleet: String,
    pub root_version: u64,
    pub root_expires: u64,
    pub tasks: Vec<TaskLine>,
    pub tags: Vec<String>,
    /// Fleet settings held: key, generation, value.
    pub settings: Vec<(String, u64, String)>,
    /// Copies refused since start, by reason.
    pub refused: BTreeMap<String, u64>,
    /// Every task across the fleet, from the cells' summaries.
    #[serde(default)]
    pub fleet_view: starling_task::rollup::FleetStatus,
    /// Each task with a rollout plan this host holds, and how far the
    /// sinks' decisions and the operators' control let it go.
    #[serde(default)]
    pub rollouts: BTreeMap<String, RolloutLine>,
    pub updated_unix_ms: u64,
}

/// A rollout as this host sees it (`starlingctl rollout show`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RolloutLine {
    /// The plan, as `starlingctl task create --rollout` writes it:
    /// share, soak and tolerated failures of each wave.
    pub waves: Vec<RolloutWaveLine>,
    /// Waves open by the sinks' decisions heard here (at least the first).
    pub open_waves: usize,
    /// Halted, and why (a sink's halt or an abort this host holds).
    pub halted: Option<String>,
    /// The operators' last control: running, paused or aborted.
    pub control: starling_task::rollout::Control,
}

/// One wave of a plan, for people.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RolloutWaveLine {
    /// Cumulative share in basis points (0 for a cell-canary wave).
    pub share_basis_points: u32,
    pub cell_canary: bool,
    pub soak_secs: u64,
    pub max_failed_basis_points: u32,
}

impl TaskDriver {
    /// Looks at the wanted file: a newer time than seen is a reader's ask.
    pub(super) fn check_status_asked(&mut self) {
        let asked = std::fs::metadata(self.settings.state_dir.join(STATUS_WANTED_FILE))
            .and_then(|m| m.modified())
            .ok();
        if asked.is_some() && asked != self.status_asked_at {
            self.status_asked_at = asked;
            self.status_ask_open = true;
        }
    }

    /// Whether someone asked for this host's status within
    /// `STATUS_READ_FOR`, or an operator's question waits for the
    /// fleet's view.
    pub(in crate::swarm) fn being_read(&self) -> bool {
        self.status_ask_open
            || self.fleet_hosts.wants_view()
            || self.status_asked_at.is_some_and(|at| {
                SystemTime::now()
                    .duration_since(at)
                    .is_ok_and(|ago| ago < STATUS_READ_FOR)
            })
    }

    pub(super) fn write_status(&mut self, host: &str, now: Instant) {
        let since = self.last_status.map(|t| now.duration_since(t));
        let read = self.being_read();
        let changed = self.status_dirty || self.status_stale;
        let due = match since {
            None => true,
            // An ask is answered with the fleet's view it set off, unless
            // the sink takes longer than `VIEW_WAIT`.
            _ if self.status_ask_open => !self.view_fetch.waiting(now),
            Some(s) if read => {
                (self.status_dirty && s >= STATUS_EVERY)
                    || (self.status_stale && s >= STATUS_REFRESH)
            }
            Some(s) => changed && s >= STATUS_UNREAD_EVERY,
        };
        if !due {
            return;
        }
        self.status_dirty = false;
        self.status_stale = false;
        self.status_ask_open = false;
        self.last_status = Some(now);
        let root = self.plane.root();
        let ledger = self.plane.ledger();
        let status = TaskPlaneStatus {
            host: host.into(),
            fleet: root.fleet.clone(),
            root_version: root.version,
            root_expires: root.expires,
            tasks: ledger
                .tasks()
                .map(|(id, r)| TaskLine {
                    task_id: id.clone(),
                    kind: r.kind.clone(),
                    state: r.state.as_str().into(),
                    detail: detail_of(&r.state),
                    not_after: r.not_after,
                    signers: r.signers.iter().map(|k| k.0.clone()).collect(),
                })
                .collect(),
            tags: self.plane.facts().tags.into_iter().collect(),
            settings: ledger
                .settings()
                .into_iter()
                .map(|(k, (g, s))| (k, g, setting_value(&s)))
                .collect(),
            refused: self.refused.clone(),
            fleet_view: self.fleet.clone(),
            rollouts: self.rollout_lines(),
            updated_unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        self.status_writer.write(status);
    }

    /// Each rollout this host holds, with the decisions it last heard.
    fn rollout_lines(&self) -> BTreeMap<String, RolloutLine> {
        let ledger = self.plane.ledger();
        self.plane
            .rollout_plans()
            .into_iter()
            .map(|(id, plan)| {
                let decided = self.decided.get(&id);
                let control = ledger.control(&id);
                let halted = match control {
                    starling_task::rollout::Control::Aborted => {
                        Some("aborted by the operators".to_owned())
                    }
                    _ => decided.and_then(|d| d.halted.clone()),
                };
                let line = RolloutLine {
                    waves: (plan.waves().iter())
                        .map(|w| RolloutWaveLine {
                            share_basis_points: w.share_bp,
                            cell_canary: w.cell_canary,
                            soak_secs: w.soak.as_secs(),
                            max_failed_basis_points: w.max_failed_bp,
                        })
                        .collect(),
                    open_waves: decided.map_or(1, |d| d.open.max(1)),
                    halted,
                    control,
                };
                (id, line)
            })
            .collect()
    }

    /// Takes a cell summary into the fleet view: a change of what it
    /// shows is written within a second, a summary that only says the
    /// cell is still there within `STATUS_REFRESH`.
    pub(in crate::swarm) fn take_summary(&mut self, summary: starling_task::rollup::CellSummary) {
        let change = self.fleet.take(summary);
        let label = match change {
            ViewChange::Content(what) => what.as_str(),
            ViewChange::Fresher => "fresher",
            ViewChange::None => "older",
        };
        metrics::counter!(FLEET_VIEW_CHANGES, "change" => label).increment(1);
        match change {
            ViewChange::Content(_) => self.status_dirty = true,
            ViewChange::Fresher => self.status_stale = true,
            ViewChange::None => {}
        }
    }
}

/// Why a task is in its state here, for people (empty when applied,
/// pending or not targeted).
pub(in crate::swarm) fn detail_of(state: &starling_task::TaskState) -> String {
    use starling_task::TaskState;
    match state {
        TaskState::Failed { reason } => reason.clone(),
        TaskState::Refused { reason, detail } => format!("{}: {detail}", reason.as_str()),
        TaskState::Stopped { why } | TaskState::RolledBack { why } => why.clone(),
        TaskState::Soaking { since } => format!("applied at {since} (Unix s), soaking"),
        TaskState::Pending | TaskState::Waiting | TaskState::Applied | TaskState::NotTargeted => {
            String::new()
        }
    }
}

/// A setting's value as text, for views.
fn setting_value(s: &ConfigSetting) -> String {
    use starling_proto::v1::config_setting::Setting;
    if s.reset {
        return "(local file)".into();
    }
    match &s.setting {
        Some(Setting::SensorKind(k)) => if k.enabled { "on" } else { "off" }.into(),
        Some(Setting::WatchPaths(l))
        | Some(Setting::QuietPaths(l))
        | Some(Setting::QuietExes(l))
        | Some(Setting::QuietCgroups(l)) => l.values.join(","),
        Some(Setting::RateLimit(r)) => format!("{}/s burst {}", r.per_second, r.burst),
        Some(Setting::SpoolQuotaBytes(b)) => b.to_string(),
        Some(Setting::RingBufferBytes(b)) => b.to_string(),
        None => String::new(),
    }
}
