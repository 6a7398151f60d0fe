//! The fleet's hosts, methods of [`Mesh`] (docs/tasks.md, "The fleet's
//! hosts"): each member's heartbeat rides on its task report to its cell's
//! aggregators; a cell's summary carries its hosts down and its versions;
//! and an operator's question for a cell's table (`starlingctl fleet
//! --cell`, a file in `data_dir/tasks/queries`) is asked of that cell's
//! aggregator over `/starling/fleet/2`. The logic is
//! `starling_task::fleet` and `starling_task::rollup`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use starling_task::fleet::{CellTable, Heartbeat};

use prost::Message;
use starling_proto::v1;
use starling_proto::v1::fleet_answer::Answer;

use super::file_writer::write_atomic;
use super::proto_codec::WireMessage;
use super::Mesh;
use crate::host_facts::{MachineFacts, ProcessUsage};

/// Protocol of a question for a cell's table.
/// (2: protobuf; 1 was CBOR.)
pub const FLEET_PROTOCOL: StreamProtocol = StreamProtocol::new("/starling/fleet/2");
/// Largest answer: a cell's table at its limits, or the fleet's view (a
/// summary of a cell holding a few tasks is 150-300 bytes, so 16 MiB is
/// room for some 50,000 cells; docs/tasks.md, "Limits").
pub const MAX_FLEET_ANSWER_BYTES: u64 = 16 * 1024 * 1024;
/// Most cells in a fleet view taken from a sink.
pub const MAX_VIEW_CELLS: usize = 100_000;
/// Directory (under the task state directory) of operators' questions.
pub const QUERIES_DIR: &str = "queries";
/// Prometheus counter of cell tables and fleet views asked of this
/// member, by `result` (`answered`, `view`, `not_here`, `not_admitted`).
pub const FLEET_QUERIES: &str = "starling_fleet_queries_total";
/// A member holding no task reports (its heartbeat) once its cell's
/// aggregators have stayed the same this long: while a fleet starts, cells
/// and their aggregators change every few seconds.
pub(super) const REPORT_SETTLE: Duration = Duration::from_secs(30);
/// A member that does not see three quarters of its expected cell size
/// counts its cell as formed (and reports its heartbeat) after running
/// this long: a fleet smaller than one cell never sees that much.
pub(super) const FORMED_AFTER: Duration = Duration::from_secs(120);
/// Questions taken from the queries directory per look, and the largest.
const QUERY_BATCH: usize = 16;
const MAX_QUERY_FILE: u64 = 4096;
/// A question refused because this member's admission was not finished
/// yet (the connection is new) is asked again after this, at most
/// `QUERY_TRIES` times in all.
const QUERY_RETRY: Duration = Duration::from_secs(2);
const QUERY_TRIES: u32 = 3;
/// A question for a cell this member has not heard of waits this long for
/// a sink's view of the fleet (members hold no view until asked).
const VIEW_FOR_QUERY: Duration = Duration::from_secs(6);

/// Largest question (a cell's name, and room).
const MAX_FLEET_QUERY_BYTES: u64 = 4096;

/// A question for a cell's table, or (`view`, asked of a sink) for the
/// fleet's view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetQuery {
    pub cell: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub view: bool,
}

/// The answer.
#[derive(Debug, Clone, PartialEq)]
pub enum FleetAnswer {
    Table(CellTable),
    /// Every cell's latest summary, from a sink.
    View(Vec<starling_task::rollup::CellSummary>),
    /// This member cannot answer for that cell (why).
    NotHere(String),
    /// The asker is not admitted (yet).
    NotAdmitted,
}

/// A question on the wire (`starling.v1.FleetQuery`).
impl WireMessage for FleetQuery {
    const MAX_BYTES: u64 = MAX_FLEET_QUERY_BYTES;

    fn to_wire(&self) -> Vec<u8> {
        v1::FleetQuery {
            cell: self.cell.clone(),
            view: self.view,
        }
        .encode_to_vec()
    }

    fn from_wire(bytes: &[u8]) -> Result<Self, String> {
        let wire = v1::FleetQuery::decode(bytes).map_err(|e| e.to_string())?;
        Ok(FleetQuery {
            cell: wire.cell,
            view: wire.view,
        })
    }
}

/// An answer on the wire (`starling.v1.FleetAnswer`); one that says none
/// of the three (a later version's) is refused.
impl WireMessage for FleetAnswer {
    const MAX_BYTES: u64 = MAX_FLEET_ANSWER_BYTES;

    fn to_wire(&self) -> Vec<u8> {
        let answer = match self {
            FleetAnswer::Table(t) => Answer::Table(starling_task::fleet::table_to_wire(t)),
            FleetAnswer::View(cells) => Answer::View(v1::FleetView {
                cells: cells
                    .iter()
                    .map(starling_task::rollup::summary_to_wire)
                    .collect(),
            }),
            FleetAnswer::NotHere(why) => Answer::NotHere(why.clone()),
            FleetAnswer::NotAdmitted => Answer::NotAdmitted(true),
        };
        v1::FleetAnswer {
            answer: Some(answer),
        }
        .encode_to_vec()
    }

    fn from_wire(bytes: &[u8]) -> Result<Self, String> {
        match v1::FleetAnswer::decode(bytes)
            .map_err(|e| e.to_string())?
            .answer
        {
            Some(Answer::Table(t)) => Ok(FleetAnswer::Table(
                starling_task::fleet::table_from_wire(t)?,
            )),
            Some(Answer::View(v)) => {
                if v.cells.len() > MAX_VIEW_CELLS {
                    return Err(format!("a view of {} cells", v.cells.len()));
                }
                let cells = v
                    .cells
                    .into_iter()
                    .map(starling_task::rollup::summary_from_wire)
                    .collect::<Result<_, _>>()?;
                Ok(FleetAnswer::View(cells))
            }
            Some(Answer::NotHere(why)) => Ok(FleetAnswer::NotHere(why)),
            Some(Answer::NotAdmitted(_)) => Ok(FleetAnswer::NotAdmitted),
            None => Err("an answer that says nothing this version knows".into()),
        }
    }
}

/// What the heartbeat needs, and the operators' questions in flight.
pub(super) struct FleetHosts {
    facts: MachineFacts,
    usage: ProcessUsage,
    started_at_ms: u64,
    /// Events spooled and not acknowledged, as the node last said.
    pub(super) spool_backlog: u64,
    /// The aggregators last computed, and since when.
    aggregators: Vec<String>,
    aggregators_since: Option<Instant>,
    asked: HashMap<OutboundRequestId, Asked>,
    retries: Vec<(Instant, Asked)>,
    /// Questions for a cell not in this member's view yet, and since
    /// when: asked again once a sink's view came, for up to `VIEW_FOR_QUERY`.
    awaiting_view: Vec<(Instant, FleetQuery, PathBuf)>,
}

struct Asked {
    peer: PeerId,
    query: FleetQuery,
    result: PathBuf,
    tries: u32,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl FleetHosts {
    pub(super) fn new() -> Self {
        // The first heartbeat's CPU is then the average since start.
        let mut usage = ProcessUsage::default();
        usage.sample();
        Self {
            facts: MachineFacts::read(),
            usage,
            started_at_ms: unix_ms(),
            spool_backlog: 0,
            aggregators: Vec::new(),
            aggregators_since: None,
            asked: HashMap::new(),
            retries: Vec::new(),
            awaiting_view: Vec::new(),
        }
    }

    /// Whether a question waits for the fleet's view from a sink.
    pub(super) fn wants_view(&self) -> bool {
        !self.awaiting_view.is_empty()
    }

    /// Whether the cell's aggregators have been `aggregators` for
    /// [`REPORT_SETTLE`].
    pub(super) fn settled(&mut self, aggregators: &[String], now: Instant) -> bool {
        if self.aggregators != aggregators || self.aggregators_since.is_none() {
            self.aggregators = aggregators.to_vec();
            self.aggregators_since = Some(now);
        }
        self.aggregators_since
            .is_some_and(|since| now.duration_since(since) >= REPORT_SETTLE)
    }
}

impl Mesh {
    /// What this member says about itself with its report.
    pub(super) fn heartbeat(&mut self) -> Option<Heartbeat> {
        let agent_version = self
            .config
            .cell
            .as_ref()
            .map(|c| c.agent_version.clone())
            // A sink has no cell settings: it is of this build.
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned());
        let addrs = self.contact_addrs();
        let driver = self.tasks.as_mut()?;
        let (cpu_pct, rss_bytes) = driver.fleet_hosts.usage.sample();
        let facts = &driver.fleet_hosts.facts;
        let clip = |s: &str| -> String {
            s.chars()
                .take(starling_task::fleet::MAX_FACT_TEXT / 4)
                .collect()
        };
        let heartbeat = Heartbeat {
            agent_version: clip(&agent_version),
            kernel: clip(&facts.kernel),
            os: clip(&facts.os),
            arch: clip(&facts.arch),
            addrs,
            tags: driver
                .plane
                .facts()
                .tags
                .into_iter()
                .take(starling_task::fleet::MAX_FACT_ITEMS)
                .collect(),
            config_generation: driver
                .plane
                .ledger()
                .settings()
                .values()
                .map(|(generation, _)| *generation)
                .max()
                .unwrap_or(0),
            cpu_pct,
            rss_bytes,
            spool_backlog: driver.fleet_hosts.spool_backlog,
            started_at_ms: driver.fleet_hosts.started_at_ms,
        };
        heartbeat.check().is_ok().then_some(heartbeat)
    }

    /// Where peers reach this member: its external addresses (the
    /// advertised one first), or, before it has any, the addresses it
    /// listens on (see [`listen_contacts`]).
    pub(super) fn contact_addrs(&self) -> Vec<String> {
        let external: Vec<String> = self
            .swarm
            .external_addresses()
            .take(starling_task::fleet::MAX_FACT_ITEMS)
            .map(|a| a.to_string())
            .collect();
        if !external.is_empty() {
            return external;
        }
        listen_contacts(&self.view.borrow().listen_addrs)
    }

    /// The table of this member's cell, when it is one of its aggregators.
    fn own_cell_table(&mut self, cell: &str) -> Result<CellTable, String> {
        let me = self.enrolment.identity().name.clone();
        let (name, aggregators, mut members) = match self.cell.as_ref() {
            Some(c) => (
                c.name.clone(),
                c.election.aggregators().to_vec(),
                c.membership
                    .members()
                    .into_iter()
                    .map(|(id, _)| id.host.to_string())
                    .collect::<Vec<String>>(),
            ),
            None if self.config.sink_ingress.is_some() => (
                super::task_status::sink_cell(&me),
                vec![me.clone()],
                Vec::new(),
            ),
            None => return Err("this member is in no cell".into()),
        };
        if name != cell {
            return Err(format!("this member is in cell {name}"));
        }
        if !aggregators.contains(&me) {
            return Err("this member is not an aggregator of the cell".into());
        }
        members.push(me.clone());
        members.sort();
        let driver = self.tasks.as_mut().ok_or("no task plane")?;
        Ok(driver.rollup.table(cell, &me, &members, unix_ms()))
    }

    /// Events of `/starling/fleet/2`.
    pub(super) fn on_fleet_query(
        &mut self,
        event: request_response::Event<FleetQuery, FleetAnswer>,
    ) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.answer_fleet_query(peer, request, channel),
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if self.is_view_question(request_id) {
                    self.on_view_answer(request_id, Some(response));
                    return;
                }
                let Some(asked) = self
                    .tasks
                    .as_mut()
                    .and_then(|d| d.fleet_hosts.asked.remove(&request_id))
                else {
                    return;
                };
                let result = match response {
                    FleetAnswer::Table(table) => match table.check() {
                        Ok(()) => serde_json::json!({ "table": table }),
                        Err(e) => {
                            serde_json::json!({ "error": format!("a table over the limits: {e}") })
                        }
                    },
                    FleetAnswer::NotHere(why) => serde_json::json!({ "error": why }),
                    FleetAnswer::View(_) => {
                        serde_json::json!({ "error": "the aggregator answered with the fleet's view, not the cell's table" })
                    }
                    FleetAnswer::NotAdmitted if asked.tries < QUERY_TRIES => {
                        if let Some(d) = self.tasks.as_mut() {
                            d.fleet_hosts
                                .retries
                                .push((Instant::now() + QUERY_RETRY, asked));
                        }
                        return;
                    }
                    FleetAnswer::NotAdmitted => {
                        serde_json::json!({ "error": "the aggregator has not admitted this member" })
                    }
                };
                write_result(&asked.result, &result);
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if self.on_view_answer(request_id, None) {
                    return;
                }
                if let Some(asked) = self
                    .tasks
                    .as_mut()
                    .and_then(|d| d.fleet_hosts.asked.remove(&request_id))
                {
                    write_result(
                        &asked.result,
                        &serde_json::json!({ "error": format!("asking {}: {error}", asked.peer) }),
                    );
                }
            }
            _ => {}
        }
    }

    fn answer_fleet_query(
        &mut self,
        peer: PeerId,
        query: FleetQuery,
        channel: ResponseChannel<FleetAnswer>,
    ) {
        let (answer, result) = if self.table.admitted(&peer).is_none() {
            (FleetAnswer::NotAdmitted, "not_admitted")
        } else if query.view {
            self.answer_view()
        } else {
            match self.own_cell_table(&query.cell) {
                Ok(table) => (FleetAnswer::Table(table), "answered"),
                Err(why) => (FleetAnswer::NotHere(why), "not_here"),
            }
        };
        metrics::counter!(FLEET_QUERIES, "result" => result).increment(1);
        let _ = self
            .swarm
            .behaviour_mut()
            .fleet_query
            .send_response(channel, answer);
    }

    /// Operators' questions: answered here when this member is an
    /// aggregator of the cell asked for, else asked of the aggregator that
    /// published the cell's summary.
    pub(super) fn read_fleet_queries(&mut self, now: Instant) {
        let Some(driver) = self.tasks.as_mut() else {
            return;
        };
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut driver.fleet_hosts.retries)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        driver.fleet_hosts.retries = later;
        for (_, mut asked) in due {
            asked.tries += 1;
            self.ask(asked);
        }
        let waiting = match self.tasks.as_mut() {
            Some(d) => std::mem::take(&mut d.fleet_hosts.awaiting_view),
            None => return,
        };
        for (since, query, result) in waiting {
            self.take_fleet_query(query, result, since, now);
        }
        let Some(driver) = self.tasks.as_ref() else {
            return;
        };
        let dir = driver.settings.state_dir.join(QUERIES_DIR);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "query"))
            .take(QUERY_BATCH)
            .collect();
        for path in files {
            let query = read_query(&path);
            let _ = std::fs::remove_file(&path);
            let result = path.with_extension("result");
            match query {
                Ok(query) => self.take_fleet_query(query, result, now, now),
                Err(e) => write_result(&result, &serde_json::json!({ "error": e })),
            }
        }
    }

    /// An operator's question, asked at `since`.
    fn take_fleet_query(
        &mut self,
        query: FleetQuery,
        result: PathBuf,
        since: Instant,
        now: Instant,
    ) {
        if let Ok(table) = self.own_cell_table(&query.cell) {
            write_result(&result, &serde_json::json!({ "table": table }));
            return;
        }
        let can_ask_a_sink =
            self.config.sink_ingress.is_none() && self.sinks.sinks().next().is_some();
        let Some(driver) = self.tasks.as_mut() else {
            return;
        };
        if !driver.fleet.cells.contains_key(&query.cell)
            && can_ask_a_sink
            && now.duration_since(since) < VIEW_FOR_QUERY
        {
            driver
                .fleet_hosts
                .awaiting_view
                .push((since, query, result));
            return;
        }
        let Some(summary) = driver.fleet.cells.get(&query.cell) else {
            let known: Vec<&String> = driver.fleet.cells.keys().take(32).collect();
            write_result(
                &result,
                &serde_json::json!({ "error": format!("no summary of cell {} heard here (cells heard: {known:?})", query.cell) }),
            );
            return;
        };
        let Ok(peer) = summary.hosts.by_peer.parse::<PeerId>() else {
            write_result(
                &result,
                &serde_json::json!({ "error": format!("the summary of cell {} names no aggregator to ask", query.cell) }),
            );
            return;
        };
        let addrs: Vec<Multiaddr> = summary
            .hosts
            .by_addrs
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        for addr in addrs {
            self.swarm.add_peer_address(peer, addr);
        }
        self.ask(Asked {
            peer,
            query,
            result,
            tries: 1,
        });
    }

    fn ask(&mut self, asked: Asked) {
        let id = self
            .swarm
            .behaviour_mut()
            .fleet_query
            .send_request(&asked.peer, asked.query.clone());
        if let Some(d) = self.tasks.as_mut() {
            d.fleet_hosts.asked.insert(id, asked);
        }
    }
}

fn read_query(path: &Path) -> Result<FleetQuery, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > MAX_QUERY_FILE {
        return Err(format!("a question of {} bytes", meta.len()));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| format!("not a question: {e}"))
}

fn write_result(path: &Path, result: &serde_json::Value) {
    if let Err(e) = write_atomic(path, result.to_string().as_bytes()) {
        tracing::warn!(path = %path.display(), error = %e, "fleet answer not written");
    }
}

/// The listen addresses another host can use, as swarm events reported
/// them (one per interface for a wildcard listener, never `0.0.0.0`
/// itself): those on a routable interface first, loopback last, at most
/// `MAX_FACT_ITEMS`.
fn listen_contacts(listening: &[libp2p::Multiaddr]) -> Vec<String> {
    use libp2p::multiaddr::Protocol;
    let ip = |a: &libp2p::Multiaddr| {
        a.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(std::net::IpAddr::V4(ip)),
            Protocol::Ip6(ip) => Some(std::net::IpAddr::V6(ip)),
            _ => None,
        })
    };
    let mut usable: Vec<&libp2p::Multiaddr> = listening
        .iter()
        .filter(|a| ip(a).is_some_and(|ip| !ip.is_unspecified()))
        .collect();
    usable.sort_by_key(|a| ip(a).is_some_and(|ip| ip.is_loopback()));
    usable
        .into_iter()
        .take(starling_task::fleet::MAX_FACT_ITEMS)
        .map(ToString::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_contacts_leave_out_wildcards_and_put_loopback_last() {
        let addrs: Vec<libp2p::Multiaddr> = [
            "/ip4/127.0.0.1/udp/4001/quic-v1",
            "/ip4/0.0.0.0/udp/4001/quic-v1",
            "/ip4/10.1.2.3/udp/4001/quic-v1",
            "/ip6/::/udp/4001/quic-v1",
            "/ip6/fd00::7/udp/4001/quic-v1",
        ]
        .iter()
        .map(|a| a.parse().expect("multiaddr"))
        .collect();
        assert_eq!(
            listen_contacts(&addrs),
            [
                "/ip4/10.1.2.3/udp/4001/quic-v1",
                "/ip6/fd00::7/udp/4001/quic-v1",
                "/ip4/127.0.0.1/udp/4001/quic-v1",
            ]
        );
    }
}
