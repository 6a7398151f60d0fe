//! The task plane's driver, methods of [`Mesh`]: signed tasks over
//! gossipsub (checked before gossipsub forwards them), the operator's
//! inbox, applying what targets this host, the audit trail, and the state
//! kept across restarts (docs/tasks.md). Anti-entropy is in `task_sync`,
//! reports and summaries in `task_status`, the fleet's view at a member in
//! `fleet_view`, the status file in `status_file`, configuration in
//! `task_config`. The logic is `starling_task::TaskPlane`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use libp2p::request_response::OutboundRequestId;
use libp2p::{gossipsub, PeerId};
use starling_proto::v1::task_payload::Body;
use starling_proto::v1::TaskKind;
use starling_task::{CheckedTask, Ledger, Received, TaskPlane, TrustedRoot};
use tokio::sync::{mpsc, watch};

use super::file_writer::{pretty_json, write_atomic, Durability, FileWriter};
use super::task_config::TaskSettings;
use super::Mesh;

mod status_file;
pub(in crate::swarm) use status_file::detail_of;
pub use status_file::{
    ask_for_status, RolloutLine, RolloutWaveLine, TaskLine, TaskPlaneStatus, FLEET_VIEW_CHANGES,
    STATUS_WANTED_FILE,
};

/// Gossipsub topic of signed tasks.
pub const TASK_TOPIC: &str = "starling/tasks/1";
/// The operator's inbox is looked at this often.
const INBOX_CHECK: Duration = Duration::from_secs(1);
/// Most files taken from the inbox per look, and the largest taken.
const INBOX_BATCH: usize = 16;
const MAX_INBOX_FILE: u64 = starling_proto::limits::MAX_SIGNED_TASK_BYTES as u64;
/// State changes waiting for the node to spool them as events.
const AUDIT_QUEUE: usize = 4096;
/// Prometheus counter of task state changes not handed to the node (its
/// queue was full or gone): holes in the audit trail, by `reason`.
pub const TASK_EVENTS_DROPPED: &str = "starling_task_events_dropped_total";
/// Tasks whose window closed are forgotten this often.
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// Prometheus counter of task copies received, by `source` (`gossip`,
/// `sync`, `operator`) and `verdict` (`accepted`, `duplicate`, `refused`;
/// by gossip also `not_admitted` and `held_off`: not looked at, from a
/// peer not admitted yet or held off as a forger).
pub const TASKS_RECEIVED: &str = "starling_tasks_received_total";
/// Prometheus counter of task copies refused, by `reason`.
pub const TASKS_REFUSED: &str = "starling_tasks_refused_total";
/// Prometheus counter of tasks applied here, by `kind` and `result`
/// (`applied`, `failed`).
pub const TASKS_APPLIED: &str = "starling_tasks_applied_total";
/// Prometheus counter of ledgers that could not be read at start and were
/// set aside (see [`set_aside_ledger`]).
pub const LEDGERS_SET_ASIDE: &str = "starling_tasks_ledgers_set_aside_total";
/// Prometheus gauges: tasks held, and the trust root's version.
pub const TASKS_HELD: &str = "starling_tasks_held";
pub const TASK_ROOT_VERSION: &str = "starling_task_root_version";

/// File names in the task plane's state directory.
pub const LEDGER_FILE: &str = "ledger.json";
pub const ROOT_FILE: &str = "root.bin";
pub const INBOX_DIR: &str = "inbox";
pub const TASK_STATUS_FILE: &str = "status.json";

/// The plane and what drives it.
pub(super) struct TaskDriver {
    pub(super) plane: TaskPlane,
    pub(super) settings: TaskSettings,
    topic: gossipsub::IdentTopic,
    pub(super) next_sync: Instant,
    last_inbox: Instant,
    last_forget: Instant,
    /// Fleet settings held, handed to the node (which applies them).
    fleet_settings: watch::Sender<super::FleetSettings>,
    pub(super) refused: BTreeMap<String, u64>,
    /// Anti-entropy requests in flight.
    pub(super) in_flight: std::collections::HashSet<OutboundRequestId>,
    /// Peers held off for relaying forgeries, and suspects.
    pub(super) forgers: super::forgers::ForgerWatch,
    /// This member's heartbeat and the operators' questions (`fleet`).
    pub(super) fleet_hosts: super::fleet::FleetHosts,
    pub(super) status_dirty: bool,
    last_status: Option<Instant>,
    /// Only when cells were last heard from changed (`STATUS_REFRESH`).
    status_stale: bool,
    /// When a reader last asked for the status (the wanted file's time),
    /// and whether the ask is not answered yet.
    status_asked_at: Option<SystemTime>,
    status_ask_open: bool,
    /// Writes the status file off the event loop.
    status_writer: FileWriter<TaskPlaneStatus>,
    /// Saves the ledger off the event loop (synced), and says which save
    /// finished last.
    ledger_writer: FileWriter<Vec<u8>>,
    pub(super) ledger_saved: watch::Receiver<u64>,
    /// Tasks admitted here, to apply once the ledger that holds them is
    /// saved (the save's sequence number): a crash before then loses the
    /// task (peers have it), a crash after leaves it pending in the
    /// ledger, applied again at the next start. Never applied unrecorded.
    awaiting_save: Vec<(u64, CheckedTask)>,
    /// Tasks a restart interrupted (pending in the ledger) are applied at
    /// the first tick.
    resume_pending: bool,
    /// Each task's state as last reported to the audit trail.
    reported: std::collections::HashMap<String, String>,
    audit: mpsc::Sender<starling_proto::v1::TaskStateChange>,
    /// The states changed since this member last reported to its cell's
    /// aggregators, and when it did (`task_status`).
    pub(super) report_dirty: bool,
    pub(super) last_report: Option<Instant>,
    /// When the next periodic report is due after the last (spread).
    pub(super) report_every: Duration,
    /// The aggregators it last reported to.
    pub(super) reported_to: Vec<String>,
    /// As an aggregator: the latest report of each cell member, whether
    /// one came since the last summary, and when that was.
    pub(super) rollup: starling_task::rollup::CellRollup,
    pub(super) rollup_dirty: bool,
    pub(super) last_summary: Option<Instant>,
    /// The live members the last summary counted.
    pub(super) summary_members: Vec<String>,
    /// Since when this member has been its cell's publisher.
    pub(super) publisher_since: Option<Instant>,
    /// The newest summary of every cell: at a sink every cell's, at an
    /// aggregator its own cell's, and at any member the view a sink gave
    /// it while its status was read.
    pub(super) fleet: starling_task::rollup::FleetStatus,
    /// Its question to a sink for the fleet's view.
    pub(super) view_fetch: super::fleet_view::ViewFetch,
    /// This host's health as the node last said (None: healthy, or no
    /// node to say otherwise, as at a sink).
    pub(super) unhealthy: Option<String>,
    /// At a sink: its rollout decisions, and the ones it last computed
    /// (what its advert carries).
    pub(super) decisions: starling_task::rollout::SinkDecisions,
    pub(super) announced: Vec<starling_proto::v1::RolloutDecision>,
    /// The decisions changed since the last advert went out.
    pub(super) announce_due: bool,
    /// When this host last stepped its rollouts, and the sinks'
    /// decisions it stepped them by.
    pub(super) last_stage: Option<Instant>,
    pub(super) decided: BTreeMap<String, starling_task::rollout::Decided>,
}

/// Why the task plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum TaskPlaneError {
    #[error("{path}: {detail}")]
    State { path: PathBuf, detail: String },
    #[error("trust root {path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: starling_task::root::RootError,
    },
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A ledger that does not decode (a disk fault, a file edited by hand, one
/// written by a newer build) is renamed to `ledger.json.unreadable-<unix
/// seconds>` and the task plane starts with an empty one, so that the node
/// keeps shipping telemetry: the tasks still in their window come back
/// from peers at the first anti-entropy exchange and are applied again
/// (applying is idempotent). Until then the host holds no fleet settings,
/// cancellations or operator-key revocations of its own (docs/tasks.md).
/// The file is kept for a person to look at.
fn set_aside_ledger(path: &Path, error: &str) -> std::io::Result<Ledger> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".unreadable-{secs}"));
    std::fs::rename(path, &aside)?;
    metrics::counter!(LEDGERS_SET_ASIDE).increment(1);
    tracing::error!(
        path = %path.display(),
        set_aside = %Path::new(&aside).display(),
        error,
        "task ledger unreadable: set aside; starting with an empty ledger, tasks in their window come back from peers"
    );
    Ok(Ledger::default())
}

impl TaskDriver {
    /// Loads the root in force (the installed one, or a later one taken
    /// by rotation) and the ledger.
    pub(super) fn load(
        settings: TaskSettings,
        host_id: &str,
    ) -> Result<
        (
            Self,
            watch::Receiver<super::FleetSettings>,
            mpsc::Receiver<starling_proto::v1::TaskStateChange>,
        ),
        TaskPlaneError,
    > {
        let state_err = |path: &Path, detail: String| TaskPlaneError::State {
            path: path.into(),
            detail,
        };
        for dir in [INBOX_DIR, super::fleet::QUERIES_DIR] {
            std::fs::create_dir_all(settings.state_dir.join(dir))
                .map_err(|e| state_err(&settings.state_dir, e.to_string()))?;
        }
        let read_root =
            |path: &Path| -> Result<Option<TrustedRoot>, TaskPlaneError> {
                match std::fs::read(path) {
                    Ok(bytes) => TrustedRoot::reload(&bytes).map(Some).map_err(|source| {
                        TaskPlaneError::Root {
                            path: path.into(),
                            source,
                        }
                    }),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(state_err(path, e.to_string())),
                }
            };
        let installed = read_root(&settings.root_file)?.ok_or_else(|| {
            state_err(
                &settings.root_file,
                "no trust root (create one with `starlingctl root init`)".into(),
            )
        })?;
        let rotated = read_root(&settings.state_dir.join(ROOT_FILE))?;
        let root = match rotated {
            Some(r) if r.fleet == installed.fleet && r.version > installed.version => r,
            _ => installed,
        };
        let ledger_path = settings.state_dir.join(LEDGER_FILE);
        let ledger = match std::fs::read(&ledger_path) {
            Ok(bytes) => match serde_json::from_slice::<Ledger>(&bytes) {
                Ok(ledger) => ledger,
                Err(e) => set_aside_ledger(&ledger_path, &e.to_string()).map_err(|io| {
                    state_err(
                        &ledger_path,
                        format!("unreadable ledger ({e}) that cannot be set aside: {io}"),
                    )
                })?,
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ledger::default(),
            Err(e) => return Err(state_err(&ledger_path, e.to_string())),
        };
        let plane = TaskPlane::new(
            root,
            ledger,
            host_id,
            settings.local_tags.iter().cloned().collect(),
        );
        let (fleet_settings, rx) = watch::channel(plane.ledger().settings());
        let ledger_writer = FileWriter::new(ledger_path, Durability::Synced, |bytes: &Vec<u8>| {
            Ok(bytes.clone())
        });
        let (audit, audit_rx) = mpsc::channel(AUDIT_QUEUE);
        // What the ledger already says was reported before the restart.
        let reported = plane
            .ledger()
            .tasks()
            .map(|(id, r)| (id.clone(), r.state.as_str().to_owned()))
            .collect();
        metrics::gauge!(TASK_ROOT_VERSION).set(plane.root().version as f64);
        Ok((
            Self {
                reported,
                audit,
                report_dirty: true,
                last_report: None,
                report_every: super::task_status::REPORT_EVERY,
                reported_to: Vec::new(),
                rollup: Default::default(),
                rollup_dirty: false,
                last_summary: None,
                summary_members: Vec::new(),
                publisher_since: None,
                fleet: Default::default(),
                view_fetch: Default::default(),
                unhealthy: None,
                decisions: starling_task::rollout::SinkDecisions::new(
                    super::task_status::CELL_EXPIRY.as_millis() as u64,
                ),
                announced: Vec::new(),
                announce_due: false,
                last_stage: None,
                decided: BTreeMap::new(),
                plane,
                topic: gossipsub::IdentTopic::new(TASK_TOPIC),
                // The first exchange comes early: a member that starts
                // (or restarts) has the most to catch up on.
                next_sync: Instant::now() + super::task_sync::NO_PEER_RETRY,
                last_inbox: Instant::now(),
                last_forget: Instant::now(),
                fleet_settings,
                refused: BTreeMap::new(),
                in_flight: Default::default(),
                forgers: super::forgers::ForgerWatch::new(settings.forger_hold),
                fleet_hosts: super::fleet::FleetHosts::new(),
                status_dirty: true,
                last_status: None,
                status_stale: false,
                status_asked_at: None,
                status_ask_open: false,
                status_writer: FileWriter::new(
                    settings.state_dir.join(TASK_STATUS_FILE),
                    Durability::View,
                    pretty_json,
                ),
                ledger_saved: ledger_writer.written(),
                ledger_writer,
                awaiting_save: Vec::new(),
                resume_pending: true,
                settings,
            },
            rx,
            audit_rx,
        ))
    }

    /// Hands every state change since the last call to the audit trail:
    /// soaking, applied, failed, refused, stopped and rolled back
    /// (pending, waiting and not targeted are not news).
    fn report_changes(&mut self) {
        let root_version = self.plane.root().version;
        for (id, r) in self.plane.ledger().tasks() {
            let state = r.state.as_str();
            if self.reported.get(id).is_some_and(|s| s == state) {
                continue;
            }
            self.reported.insert(id.clone(), state.to_owned());
            if matches!(
                r.state,
                starling_task::TaskState::Pending
                    | starling_task::TaskState::Waiting
                    | starling_task::TaskState::NotTargeted
            ) {
                continue;
            }
            let detail = detail_of(&r.state);
            let change = starling_proto::v1::TaskStateChange {
                task_id: id.clone(),
                kind: r.kind.clone(),
                state: state.to_owned(),
                detail,
                signers: r.signers.iter().map(|k| k.0.clone()).collect(),
                root_version,
            };
            match self.audit.try_send(change) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics::counter!(TASK_EVENTS_DROPPED, "reason" => "queue_full").increment(1);
                    tracing::warn!(task = %id, state, "task state change not written to the audit trail: its queue is full");
                }
                // A member that keeps no audit trail (a sink): counted only.
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    metrics::counter!(TASK_EVENTS_DROPPED, "reason" => "no_reader").increment(1);
                }
            }
        }
        let held: std::collections::HashSet<&String> =
            self.plane.ledger().tasks().map(|(id, _)| id).collect();
        self.reported.retain(|id, _| held.contains(id));
    }

    /// Hands the fleet settings the ledger holds to the node, which
    /// applies them.
    pub(super) fn hand_settings_to_node(&self) {
        let settings = self.plane.ledger().settings();
        self.fleet_settings.send_replace(settings);
    }

    /// Saves the ledger (off the event loop); returns the save's sequence
    /// number, which `ledger_saved` reaches once it is on disk.
    pub(super) fn persist(&mut self) -> u64 {
        let seq = match serde_json::to_vec(self.plane.ledger()) {
            Ok(bytes) => self.ledger_writer.write(bytes),
            Err(e) => {
                tracing::error!(error = %e, "task ledger not encoded; a restart would apply the latest tasks again");
                0
            }
        };
        metrics::gauge!(TASKS_HELD).set(self.plane.summary().count as f64);
        self.status_dirty = true;
        self.report_dirty = true;
        self.report_changes();
        seq
    }

    /// Waits until every ledger save handed over so far is on disk (at
    /// shutdown).
    pub(super) async fn flush_ledger(&self) {
        self.ledger_writer.flush().await;
    }
}

impl Mesh {
    /// Takes one copy of a task from `source` and applies it when it
    /// targets this host; true when it was new and valid.
    pub(super) fn take_task(
        &mut self,
        signed: &[u8],
        source: &'static str,
    ) -> Result<bool, starling_task::Refusal> {
        let Some(driver) = self.tasks.as_mut() else {
            return Ok(false);
        };
        match driver.plane.receive(signed, unix_now()) {
            Received::Accepted { task, apply } => {
                metrics::counter!(TASKS_RECEIVED, "source" => source, "verdict" => "accepted")
                    .increment(1);
                tracing::info!(task = %task.task_id, kind = starling_task::root::kind_name(task.kind), apply, source, "task accepted");
                let saved_as = driver.persist();
                if apply {
                    self.apply_once_saved(saved_as, vec![*task]);
                }
                Ok(true)
            }
            Received::Duplicate => {
                metrics::counter!(TASKS_RECEIVED, "source" => source, "verdict" => "duplicate")
                    .increment(1);
                Ok(false)
            }
            Received::Refused(r) => {
                metrics::counter!(TASKS_RECEIVED, "source" => source, "verdict" => "refused")
                    .increment(1);
                metrics::counter!(TASKS_REFUSED, "reason" => r.reason.as_str()).increment(1);
                *driver.refused.entry(r.reason.as_str().into()).or_default() += 1;
                driver.status_dirty = true;
                tracing::debug!(source, error = %r, "task refused");
                Err(r)
            }
        }
    }

    /// Applies `tasks` once the ledger save `saved_as` that records them
    /// as pending is on disk.
    pub(super) fn apply_once_saved(&mut self, saved_as: u64, tasks: Vec<CheckedTask>) {
        let Some(driver) = self.tasks.as_mut() else {
            return;
        };
        driver
            .awaiting_save
            .extend(tasks.into_iter().map(|t| (saved_as, t)));
        // A save already finished (or none was made: the ledger did not
        // encode) sends no further news.
        if saved_as <= *driver.ledger_saved.borrow() {
            self.on_ledger_saved();
        }
    }

    /// A ledger save finished: applies the tasks it recorded.
    pub(super) fn on_ledger_saved(&mut self) {
        let Some(driver) = self.tasks.as_mut() else {
            return;
        };
        let saved = *driver.ledger_saved.borrow_and_update();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut driver.awaiting_save)
            .into_iter()
            .partition(|(seq, _)| *seq <= saved);
        driver.awaiting_save = waiting;
        for (_, task) in ready {
            self.apply_task(&task);
        }
    }

    /// Applies the tasks the ledger holds as admitted but not applied: a
    /// restart came between the two (applying is idempotent).
    fn resume_pending(&mut self) {
        let Some(driver) = self.tasks.as_mut() else {
            return;
        };
        driver.resume_pending = false;
        for task in driver.plane.pending(unix_now()) {
            tracing::info!(task = %task.task_id, "applying a task a restart interrupted");
            self.apply_task(&task);
        }
    }

    /// Applies a task that targets this host, then records the outcome.
    fn apply_task(&mut self, task: &CheckedTask) {
        let kind = starling_task::root::kind_name(task.kind);
        // Between its admission and the save that lets it apply, a task
        // can be stopped (a cancel, a revoked signer, its rollout halted):
        // then there is nothing to apply.
        let pending = self.tasks.as_ref().is_some_and(|d| {
            d.plane
                .ledger()
                .task(&task.task_id)
                .is_some_and(|r| r.state == starling_task::TaskState::Pending)
        });
        if !pending {
            tracing::debug!(task = %task.task_id, "not applied: no longer pending here");
            return;
        }
        let outcome = match &task.payload.body {
            Some(Body::Revocations(r)) => self.apply_revocations(&r.crl_der),
            _ => Ok(()),
        };
        let Some(driver) = self.tasks.as_mut() else {
            return;
        };
        match outcome {
            Ok(()) => {
                driver.plane.applied(task, unix_now());
                metrics::counter!(TASKS_APPLIED, "kind" => kind, "result" => "applied")
                    .increment(1);
                tracing::info!(task = %task.task_id, kind, "task applied");
            }
            Err(reason) => {
                tracing::error!(task = %task.task_id, kind, %reason, "task failed");
                driver.plane.failed(&task.task_id, reason);
                metrics::counter!(TASKS_APPLIED, "kind" => kind, "result" => "failed").increment(1);
            }
        }
        if task.kind == TaskKind::Config {
            driver.hand_settings_to_node();
        }
        if task.kind == TaskKind::Root {
            let path = driver.settings.state_dir.join(ROOT_FILE);
            if let Err(e) = write_atomic(&path, driver.plane.root().signed_bytes()) {
                tracing::error!(path = %path.display(), error = %e, "new trust root not saved");
            }
            metrics::gauge!(TASK_ROOT_VERSION).set(driver.plane.root().version as f64);
        }
        driver.persist();
    }

    /// Puts a revocation list in force here and writes it where the data
    /// plane re-reads it.
    fn apply_revocations(&mut self, der: &[u8]) -> Result<(), String> {
        match self.enrolment.set_revocations(der) {
            Ok(_) => {}
            Err(e @ crate::enrol::RevocationError::Stale { .. }) => {
                tracing::debug!(error = %e, "revocation list from a task is not newer than the one in force")
            }
            Err(e) => return Err(format!("revocation list refused: {e}")),
        }
        if let Some(path) = &self.config.revocations {
            let pem = pem::encode(&pem::Pem::new("X509 CRL", der.to_vec()));
            write_atomic(path, pem.as_bytes())
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        Ok(())
    }

    pub(super) fn on_task_gossip(&mut self, source: PeerId, id: gossipsub::MessageId, data: &[u8]) {
        // A peer not admitted yet may be in a moment: its copy is not
        // used, without blame. A forger's copies are not even looked at.
        let unchecked = if self.table.admitted(&source).is_none() {
            Some("not_admitted")
        } else if self.is_forger(&source) {
            Some("held_off")
        } else {
            None
        };
        let acceptance = if let Some(verdict) = unchecked {
            metrics::counter!(TASKS_RECEIVED, "source" => "gossip", "verdict" => verdict)
                .increment(1);
            gossipsub::MessageAcceptance::Ignore
        } else {
            match self.take_task(data, "gossip") {
                Ok(true) => gossipsub::MessageAcceptance::Accept,
                Ok(false) => gossipsub::MessageAcceptance::Ignore,
                // Neither is relayed. A copy no honest host relays is
                // invalid to gossipsub (which scores no topic: holding a
                // forger off is `forgers`' job alone); one that is merely
                // late or early here, or that another root could explain,
                // is ignored.
                Err(r) => {
                    self.blame_relay(source, &r, "gossip");
                    if r.blame == starling_task::Blame::Certain {
                        gossipsub::MessageAcceptance::Reject
                    } else {
                        gossipsub::MessageAcceptance::Ignore
                    }
                }
            }
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id, &source, acceptance);
    }

    /// The task plane's share of the tick: the inbox, anti-entropy,
    /// forgetting, the status file.
    pub(super) fn tasks_tick(&mut self, now: Instant) {
        let Some(driver) = self.tasks.as_mut() else {
            return;
        };
        if let Some(cell) = self.cell.as_ref() {
            driver.plane.set_cell(&cell.name);
        }
        if driver.resume_pending {
            self.resume_pending();
        }
        let Some(driver) = self.tasks.as_mut() else {
            return;
        };
        if now.duration_since(driver.last_forget) >= FORGET_EVERY {
            driver.last_forget = now;
            // Written only when something went: every member of a fleet
            // started together would otherwise sync its ledger to disk in
            // the same second each minute, for nothing.
            if driver.plane.forget_expired(unix_now()) {
                driver.persist();
            }
        }
        if now.duration_since(driver.last_inbox) >= INBOX_CHECK {
            driver.last_inbox = now;
            driver.check_status_asked();
            // The operator's two directories, looked at as often.
            self.read_inbox();
            self.read_fleet_queries(now);
        }
        self.release_forgers(now);
        self.start_sync(now);
        self.task_status_tick(now);
        self.rollouts_tick(now);
        self.fleet_view_tick(now);
        let host = self.enrolment.identity().name.clone();
        if let Some(driver) = self.tasks.as_mut() {
            driver.write_status(&host, now);
        }
    }

    /// Takes the tasks the operator handed to this host, publishes the
    /// valid ones and leaves a `.result` beside each.
    fn read_inbox(&mut self) {
        let Some(driver) = self.tasks.as_ref() else {
            return;
        };
        let inbox = driver.settings.state_dir.join(INBOX_DIR);
        let Ok(entries) = std::fs::read_dir(&inbox) else {
            return;
        };
        let files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "task"))
            .take(INBOX_BATCH)
            .collect();
        for path in files {
            let result = match std::fs::metadata(&path) {
                Ok(m) if m.len() > MAX_INBOX_FILE => {
                    serde_json::json!({"verdict": "refused", "reason": "oversized", "detail": format!("{} bytes", m.len())})
                }
                Ok(_) => match std::fs::read(&path) {
                    Ok(bytes) => self.publish_task(&bytes),
                    Err(e) => serde_json::json!({"verdict": "unreadable", "detail": e.to_string()}),
                },
                Err(e) => serde_json::json!({"verdict": "unreadable", "detail": e.to_string()}),
            };
            let _ = std::fs::remove_file(&path);
            let _ = write_atomic(
                &path.with_extension("result"),
                result.to_string().as_bytes(),
            );
        }
    }

    /// Takes a task from the operator and, when valid and new, gossips it.
    fn publish_task(&mut self, signed: &[u8]) -> serde_json::Value {
        match self.take_task(signed, "operator") {
            Ok(new) => {
                let Some(driver) = self.tasks.as_ref() else {
                    return serde_json::json!({"verdict": "no task plane"});
                };
                let topic = driver.topic.clone();
                let published = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(topic, signed.to_vec());
                if let Err(e) = &published {
                    // No gossip peer yet, or the same bytes went out
                    // before: anti-entropy carries it.
                    tracing::info!(error = %e, "task not gossiped now; anti-entropy will carry it");
                }
                serde_json::json!({
                    "verdict": if new { "accepted" } else { "duplicate" },
                    "gossiped": published.is_ok(),
                })
            }
            Err(r) => serde_json::json!({
                "verdict": "refused",
                "reason": r.reason.as_str(),
                "detail": r.detail,
            }),
        }
    }
}
