//! The fleet's view of every task, methods of [`Mesh`]: each member
//! reports its task states to its cell's aggregators over
//! `/starling/task-report/2`, the cell's publishing aggregator sends its
//! cell's summary to every sink over `/starling/cell-summary/1`, sinks
//! hold every cell's summary (`starling_task::rollup`), and a member whose
//! status someone reads asks a sink for them (`fleet_view`). No host hears
//! a message per host of the fleet, and a member hears a summary only
//! when someone asks it for the fleet's view (docs/tasks.md, "Status").

use std::time::{Duration, Instant, SystemTime};

use libp2p::request_response::{self, ResponseChannel};
use libp2p::{PeerId, StreamProtocol};
use starling_task::rollup::{CellSummary, HostReport, Taken};

use super::proto_codec::WireMessage;
use super::Mesh;

/// Protocol of a member's report to its aggregators.
/// (2: protobuf; 1 was CBOR.)
pub const TASK_REPORT_PROTOCOL: StreamProtocol = StreamProtocol::new("/starling/task-report/2");
/// Protocol of a cell's summary, from its publisher to each sink. (Until
/// 2026-12-07 summaries were gossiped to every host on
/// `starling/task-status/1`.)
pub const CELL_SUMMARY_PROTOCOL: StreamProtocol = StreamProtocol::new("/starling/cell-summary/1");
/// A member reports at once when its states change, and about this often
/// otherwise (so that a newly elected aggregator learns every member),
/// spread U[0.5, 1.5): every member of a fleet takes a task within a
/// second or two, and reports due in the same second from all of them
/// come in bursts.
pub(super) const REPORT_EVERY: Duration = Duration::from_secs(20);
/// Least time between two reports of a member (a changed state, or a
/// report that timed out, goes again after it).
const REPORT_RETRY: Duration = Duration::from_secs(2);
/// An aggregator sums its cell at most this often when a report came or
/// a member came or went, and at least this often otherwise.
const SUMMARY_MIN: Duration = Duration::from_secs(2);
const SUMMARY_MAX: Duration = Duration::from_secs(30);
/// A cell whose members hold no task (heartbeats only) is summed this
/// often.
const HOSTS_SUMMARY_EVERY: Duration = Duration::from_secs(60);
/// A member publishes its cell's summaries once it has been the cell's
/// first aggregator this long.
const PUBLISHER_SETTLE: Duration = Duration::from_secs(10);
/// A cell not heard from for this long is left out of the fleet's view.
pub(super) const CELL_EXPIRY: Duration = Duration::from_secs(75);
/// Prometheus counter of cell summaries, by `result`: at a publisher
/// `sent` and `send_failed`; at a sink `taken`, `not_admitted` (the sender
/// is not admitted yet), `not_author` (the summary does not name its
/// sender as its aggregator), and `not_a_sink` at a member that is not
/// one. And of member reports, by `result`.
pub const TASK_SUMMARIES: &str = "starling_task_summaries_total";
pub const TASK_REPORTS: &str = "starling_task_reports_total";

/// The name under which sink `sink` counts its own state in the fleet's
/// view, as the one host of a cell of its own.
pub fn sink_cell(sink: &str) -> String {
    format!("sink/{sink}")
}

/// A cell's summary on the wire (`starling.v1.CellSummary`).
impl WireMessage for CellSummary {
    const MAX_BYTES: u64 = starling_task::rollup::MAX_SUMMARY_BYTES as u64;

    fn to_wire(&self) -> Vec<u8> {
        starling_task::rollup::encode_summary(self)
    }

    fn from_wire(bytes: &[u8]) -> Result<Self, String> {
        starling_task::rollup::decode_summary(bytes)
    }
}

/// A member's report on the wire (`starling.v1.HostReport`).
impl WireMessage for HostReport {
    const MAX_BYTES: u64 = starling_task::rollup::MAX_REPORT_BYTES as u64;

    fn to_wire(&self) -> Vec<u8> {
        starling_task::rollup::encode_report(self)
    }

    fn from_wire(bytes: &[u8]) -> Result<Self, String> {
        starling_task::rollup::decode_report(bytes)
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Mesh {
    /// This member's report: every task it holds and its state here, and
    /// its heartbeat.
    fn own_report(&mut self) -> Option<HostReport> {
        let heartbeat = self.heartbeat();
        let driver = self.tasks.as_ref()?;
        Some(HostReport {
            heartbeat,
            host: self.enrolment.identity().name.clone(),
            states: driver
                .plane
                .ledger()
                .tasks()
                .take(starling_task::rollup::MAX_REPORTED_TASKS)
                .map(|(id, r)| {
                    (
                        id.clone(),
                        (
                            r.state.as_str().to_owned(),
                            super::tasks::detail_of(&r.state),
                        ),
                    )
                })
                .collect(),
        })
    }

    /// The task-status share of the tick: report to the cell's
    /// aggregators, sum the cell when this member is one, forget silent
    /// cells.
    pub(super) fn task_status_tick(&mut self, now: Instant) {
        if let Some(d) = self.tasks.as_mut() {
            let before = unix_ms().saturating_sub(CELL_EXPIRY.as_millis() as u64);
            if d.fleet.expire(before) {
                d.status_dirty = true;
            }
        }
        let Some(cell) = self.cell.as_ref() else {
            if self.config.sink_ingress.is_some() {
                self.count_sink_itself(now);
            }
            return;
        };
        let me = self.enrolment.identity().name.clone();
        let aggregators = cell.election.aggregators().to_vec();
        let cell_name = cell.name.clone();
        let Some(driver) = self.tasks.as_mut() else {
            return;
        };
        // A new aggregator hears from every member at once; a change (or a
        // report that did not get through) goes out within a second.
        let since = driver.last_report.map(|t| now.duration_since(t));
        let due = driver.reported_to != aggregators
            || since.is_none_or(|s| {
                s >= driver.report_every || (driver.report_dirty && s >= REPORT_RETRY)
            });
        // A member holding a task reports at once; one holding none (its
        // heartbeat only) once its cell's aggregators have settled: while
        // a fleet starts, cells and their aggregators change every few
        // seconds, and reports to each would slow the start (docs/tasks.md).
        let holds_any = driver.plane.ledger().tasks().next().is_some();
        let settled = driver.fleet_hosts.settled(&aggregators, now);
        let formed = self.cell_formed(now);
        let Some(driver) = self.tasks.as_mut() else {
            return;
        };
        let settled = settled && formed;
        if due && !aggregators.is_empty() && (holds_any || driver.last_report.is_some() || settled)
        {
            driver.report_dirty = false;
            driver.last_report = Some(now);
            driver.report_every =
                REPORT_EVERY.mul_f64(rand::RngExt::random_range(&mut self.rng, 0.5..1.5));
            driver.reported_to.clone_from(&aggregators);
            if let Some(report) = self.own_report() {
                let mut peers = self.peers_of(&aggregators);
                if report.states.is_empty() {
                    // A heartbeat alone never dials: only aggregators this
                    // member is connected to and admitted by hear it (in a
                    // formed cell, all of them). Dials for heartbeats while
                    // cells form multiplied the start-up storm's
                    // admissions and refusals.
                    peers.retain(|p| self.table.admitted(p).is_some());
                }
                for peer in peers {
                    self.swarm
                        .behaviour_mut()
                        .task_reports
                        .send_request(&peer, report.clone());
                }
                if aggregators.contains(&me) {
                    if let Some(d) = self.tasks.as_mut() {
                        if d.rollup.take(report, unix_ms()) == Taken::Changed {
                            d.rollup_dirty = true;
                        }
                    }
                }
            }
        }
        // One publisher per cell (the first aggregator every member
        // computes), so the fleet hears one summary of it, not two that
        // may differ; the others keep reports to take over. It starts
        // once it has been the publisher for a while: while a cell forms,
        // every fragment elects itself, and hundreds of would-be
        // publishers would flood the fleet with summaries of fragments.
        let publisher = aggregators.first() == Some(&me);
        let settled = match self.tasks.as_mut() {
            Some(d) if publisher => {
                let since = *d.publisher_since.get_or_insert(now);
                now.duration_since(since) >= PUBLISHER_SETTLE
            }
            Some(d) => {
                d.publisher_since = None;
                false
            }
            None => false,
        };
        if settled {
            self.publish_summary(now, &cell_name, &me);
        }
    }

    /// A sink has no cell, so no aggregator counts it: it sums its own
    /// report as the one host of the cell [`sink_cell`] and sends that to
    /// the other sinks like any cell's summary, so that its own state for
    /// a task (a revocation list it applied) and its heartbeat are in the
    /// fleet's view.
    fn count_sink_itself(&mut self, now: Instant) {
        let me = self.enrolment.identity().name.clone();
        let due = self.tasks.as_ref().is_some_and(|d| {
            d.last_report
                .map(|t| now.duration_since(t))
                .is_none_or(|s| s >= d.report_every || (d.report_dirty && s >= REPORT_RETRY))
        });
        if due {
            let report = self.own_report();
            if let (Some(report), Some(d)) = (report, self.tasks.as_mut()) {
                d.report_dirty = false;
                d.last_report = Some(now);
                if d.rollup.take(report, unix_ms()) == Taken::Changed {
                    d.rollup_dirty = true;
                }
            }
        }
        self.publish_summary(now, &sink_cell(&me), &me);
    }

    /// Whether this member's cell has formed, as far as heartbeats go: it
    /// sees three quarters of the expected cell size, or it has run for
    /// [`super::fleet::FORMED_AFTER`] (a fleet smaller than one cell).
    fn cell_formed(&self, now: Instant) -> bool {
        self.cell_mostly_known() || now.duration_since(self.started) >= super::fleet::FORMED_AFTER
    }

    /// PeerIds of the cell members named `hosts` (this member left out).
    fn peers_of(&self, hosts: &[String]) -> Vec<PeerId> {
        let Some(cell) = self.cell.as_ref() else {
            return Vec::new();
        };
        cell.membership
            .members()
            .into_iter()
            .filter(|(id, _)| hosts.iter().any(|h| **h == *id.host))
            .filter_map(|(id, _)| PeerId::from_bytes(&id.peer).ok())
            .filter(|p| p != self.swarm.local_peer_id())
            .collect()
    }

    fn publish_summary(&mut self, now: Instant, cell_name: &str, me: &str) {
        // A sink is the one host of its own "cell" (`sink_cell`).
        if self.cell.is_none() && self.config.sink_ingress.is_none() {
            return;
        }
        let members = self.cell_members_and_me();
        let Some(d) = self.tasks.as_mut() else {
            return;
        };
        let changed = d.rollup_dirty || d.summary_members != members;
        let since = d.last_summary.map(|t| now.duration_since(t));
        // A cell holding tasks is summed within seconds of a change; one
        // with heartbeats alone every HOSTS_SUMMARY_EVERY: every summary
        // goes to every sink, and while cells form their members come
        // and go every second.
        let due = match since {
            None => true,
            Some(s) if d.rollup.holds_tasks() => (changed && s >= SUMMARY_MIN) || s >= SUMMARY_MAX,
            Some(s) => s >= HOSTS_SUMMARY_EVERY,
        };
        if !due {
            return;
        }
        d.rollup_dirty = false;
        d.summary_members.clone_from(&members);
        d.last_summary = Some(now);
        let plans = d.plane.rollout_plans();
        let mut summary = d.rollup.summary(cell_name, me, &members, unix_ms(), &plans);
        let has_hosts = !summary.hosts.versions.is_empty() || summary.hosts.down_count > 0;
        if summary.tasks.is_empty() && !has_hosts && !d.fleet.cells.contains_key(cell_name) {
            // No task, no heartbeat and nobody down in the cell, and none
            // of that before: nothing to say.
            return;
        }
        if summary.tasks.is_empty() && !self.cell_formed(now) {
            // Heartbeats alone: not from a fragment of a forming cell
            // (each would publish, and the summaries of hundreds of
            // fragments slow the cells' forming).
            return;
        }
        // Whom to ask for the cell's table: this member.
        summary.hosts.by_peer = self.swarm.local_peer_id().to_string();
        summary.hosts.by_addrs = self.contact_addrs();
        let Some(d) = self.tasks.as_mut() else {
            return;
        };
        d.take_summary(summary.clone());
        self.send_summary(&summary);
    }

    /// Sends `summary` to every sink known (a fleet has a handful).
    fn send_summary(&mut self, summary: &CellSummary) {
        let sinks = self.reachable_sinks();
        if sinks.is_empty() {
            tracing::debug!(cell = %summary.cell, "no sink known: cell summary not sent");
        }
        for peer in sinks {
            self.swarm
                .behaviour_mut()
                .cell_summaries
                .send_request(&peer, summary.clone());
            metrics::counter!(TASK_SUMMARIES, "result" => "sent").increment(1);
        }
    }

    /// Sends `bytes` to every sink as a summary, whatever it says (the
    /// `hostile` test double).
    #[cfg(feature = "hostile")]
    pub(super) fn send_summary_unchecked(&mut self, bytes: &[u8]) {
        match starling_task::rollup::decode_summary(bytes) {
            Ok(summary) => self.send_summary(&summary),
            Err(e) => tracing::warn!(error = %e, "hostile summary does not decode"),
        }
    }

    /// Events of `/starling/cell-summary/1`: at a sink, a cell's summary
    /// from its publisher, taken only when it names its sender (the
    /// identity its admission proved) as its aggregator.
    pub(super) fn on_cell_summary(&mut self, event: request_response::Event<CellSummary, ()>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .cell_summaries
                    .send_response(channel, ());
                let result = self.take_cell_summary(peer, request);
                metrics::counter!(TASK_SUMMARIES, "result" => result).increment(1);
            }
            request_response::Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "cell summary not delivered to a sink");
                metrics::counter!(TASK_SUMMARIES, "result" => "send_failed").increment(1);
            }
            _ => {}
        }
    }

    fn take_cell_summary(&mut self, peer: PeerId, summary: CellSummary) -> &'static str {
        if self.config.sink_ingress.is_none() {
            return "not_a_sink";
        }
        let Some(proven) = self.table.admitted(&peer).map(|id| id.name.clone()) else {
            return "not_admitted";
        };
        if proven != summary.by || peer.to_string() != summary.hosts.by_peer {
            tracing::debug!(%peer, %proven, by = %summary.by, "cell summary refused: not its author's");
            return "not_author";
        }
        match self.tasks.as_mut() {
            Some(d) => {
                d.take_summary(summary);
                "taken"
            }
            None => "not_a_sink",
        }
    }

    pub(super) fn on_task_report(&mut self, event: request_response::Event<HostReport, ()>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.take_report(peer, request, channel),
            request_response::Event::OutboundFailure { error, .. } => {
                metrics::counter!(TASK_REPORTS, "result" => "send_failed").increment(1);
                tracing::debug!(%error, "task report not delivered");
                // A report lost on the way goes again soon; an aggregator
                // that cannot be reached is not dialled every few seconds
                // by its whole cell (the periodic report tries again).
                if !matches!(error, request_response::OutboundFailure::DialFailure) {
                    if let Some(d) = self.tasks.as_mut() {
                        d.report_dirty = true;
                    }
                }
            }
            _ => {}
        }
    }

    fn take_report(&mut self, peer: PeerId, report: HostReport, channel: ResponseChannel<()>) {
        let _ = self
            .swarm
            .behaviour_mut()
            .task_reports
            .send_response(channel, ());
        // A member reports only for itself: the name its admission proved.
        let proven = self.table.admitted(&peer).map(|id| id.name.clone());
        let result = match (proven, self.tasks.as_mut()) {
            (Some(name), Some(d)) if name == report.host => {
                match d.rollup.take(report, unix_ms()) {
                    Taken::Changed => {
                        d.rollup_dirty = true;
                        "taken"
                    }
                    Taken::Same => "taken",
                    Taken::Refused => "oversized",
                }
            }
            (Some(_), Some(_)) => "not_its_own",
            _ => "not_admitted",
        };
        metrics::counter!(TASK_REPORTS, "result" => result).increment(1);
    }
}
