//! Cell summaries and host reports on the wire: protobuf
//! (`starling.v1.CellSummary`, `starling.v1.HostReport`,
//! proto/proto/starling/v1/status.proto), because both cross agent
//! versions while a fleet rolls out, and the postcard and CBOR they were
//! before fail as a whole on the first field one side does not know or
//! lack one it needs. Decoding is bounded: the bytes by
//! [`MAX_SUMMARY_BYTES`] or [`MAX_REPORT_BYTES`], every list and text
//! before it is copied, then the value's own check.

use std::collections::BTreeMap;

use prost::Message;
use starling_proto::v1;

use super::{CellSummary, HostReport, TaskCounts, MAX_NAMED_HOSTS, MAX_REPORTED_TASKS};
use crate::fleet::{
    check_text, heartbeat_from_wire, heartbeat_to_wire, CellHosts, DownHost, MAX_FACT_ITEMS,
    MAX_VERSIONS,
};

/// Largest encoded summary taken.
pub const MAX_SUMMARY_BYTES: usize = 256 * 1024;
/// Largest encoded report taken (a host's tasks at their limit, each with
/// its detail at its limit, and a heartbeat).
pub const MAX_REPORT_BYTES: usize = 512 * 1024;
/// Longest detail of a task's state in a report (why it failed or was
/// refused); a longer one is cut to it when the report is encoded.
pub const MAX_DETAIL_TEXT: usize = 1024;
/// States of one task in one summary (there are seven; room for more).
const MAX_STATES: usize = 16;

/// `summary` as it is sent to the sinks.
pub fn encode_summary(summary: &CellSummary) -> Vec<u8> {
    summary_to_wire(summary).encode_to_vec()
}

/// `summary` as its protobuf message (also one cell of a fleet view).
pub fn summary_to_wire(summary: &CellSummary) -> v1::CellSummary {
    let tasks = summary
        .tasks
        .iter()
        .map(|(task_id, t)| {
            let mut states: Vec<&String> = t.counts.keys().chain(t.hosts.keys()).collect();
            states.sort();
            states.dedup();
            v1::CellTaskStates {
                task_id: task_id.clone(),
                states: states
                    .into_iter()
                    .map(|s| v1::StateCount {
                        state: s.clone(),
                        hosts: t.counts.get(s).copied().unwrap_or(0),
                        named: t.hosts.get(s).cloned().unwrap_or_default(),
                    })
                    .collect(),
                waves: (t.waves.iter())
                    .map(|w| v1::WaveCount {
                        hosts: w.hosts,
                        soaked: w.soaked,
                        failed: w.failed,
                    })
                    .collect(),
            }
        })
        .collect();
    let h = &summary.hosts;
    v1::CellSummary {
        cell: summary.cell.clone(),
        by: summary.by.clone(),
        at_ms: summary.at_ms,
        members: summary.members,
        tasks,
        hosts: Some(v1::CellHostsSummary {
            down_count: h.down_count,
            down: (h.down.iter())
                .map(|d| v1::DownHost {
                    host: d.host.clone(),
                    since_ms: d.since_ms,
                })
                .collect(),
            versions: (h.versions.iter())
                .map(|(version, n)| v1::VersionCount {
                    version: version.clone(),
                    hosts: *n,
                })
                .collect(),
            by_peer: h.by_peer.clone(),
            by_addrs: h.by_addrs.clone(),
        }),
    }
}

/// A summary from the network, or why it is refused.
pub fn decode_summary(bytes: &[u8]) -> Result<CellSummary, String> {
    if bytes.len() > MAX_SUMMARY_BYTES {
        return Err(format!("{} bytes", bytes.len()));
    }
    summary_from_wire(v1::CellSummary::decode(bytes).map_err(|e| e.to_string())?)
}

/// A summary's protobuf message from the network (also one cell of a
/// fleet view), checked against the limits, or why it is refused.
pub fn summary_from_wire(wire: v1::CellSummary) -> Result<CellSummary, String> {
    let text = check_text;
    text("cell", &wire.cell)?;
    text("aggregator", &wire.by)?;
    if wire.tasks.len() > MAX_REPORTED_TASKS {
        return Err(format!("{} tasks", wire.tasks.len()));
    }
    let mut tasks = BTreeMap::new();
    for t in wire.tasks {
        text("task id", &t.task_id)?;
        if t.states.len() > MAX_STATES {
            return Err(format!("{} states of {}", t.states.len(), t.task_id));
        }
        let mut counts = TaskCounts::default();
        for s in t.states {
            text("state", &s.state)?;
            if s.named.len() > MAX_NAMED_HOSTS {
                return Err(format!("{} hosts named {}", s.named.len(), s.state));
            }
            for host in &s.named {
                text("host", host)?;
            }
            if counts.counts.insert(s.state.clone(), s.hosts).is_some() {
                return Err(format!("state {} twice", s.state));
            }
            if !s.named.is_empty() {
                counts.hosts.insert(s.state, s.named);
            }
        }
        if t.waves.len() > crate::rollout::MAX_WAVES {
            return Err(format!("{} waves of {}", t.waves.len(), t.task_id));
        }
        counts.waves = (t.waves.iter())
            .map(|w| crate::rollout::WaveTally {
                hosts: w.hosts,
                soaked: w.soaked,
                failed: w.failed,
            })
            .collect();
        if tasks.insert(t.task_id.clone(), counts).is_some() {
            return Err(format!("task {} twice", t.task_id));
        }
    }
    let h = wire.hosts.unwrap_or_default();
    if h.down.len() > MAX_NAMED_HOSTS
        || h.versions.len() > MAX_VERSIONS + 1
        || h.by_addrs.len() > MAX_FACT_ITEMS
    {
        return Err("the cell's hosts break the limits".into());
    }
    let mut down = Vec::with_capacity(h.down.len());
    for d in h.down {
        text("host", &d.host)?;
        down.push(DownHost {
            host: d.host,
            since_ms: d.since_ms,
        });
    }
    let mut versions = BTreeMap::new();
    for v in h.versions {
        if versions.insert(v.version, v.hosts).is_some() {
            return Err("a version twice".into());
        }
    }
    let summary = CellSummary {
        cell: wire.cell,
        by: wire.by,
        at_ms: wire.at_ms,
        members: wire.members,
        tasks,
        hosts: CellHosts {
            down_count: h.down_count,
            down,
            versions,
            by_peer: h.by_peer,
            by_addrs: h.by_addrs,
        },
    };
    summary.check()?;
    Ok(summary)
}

/// `report` as it is sent to the cell's aggregators; a detail longer
/// than [`MAX_DETAIL_TEXT`] is cut to it.
pub fn encode_report(report: &HostReport) -> Vec<u8> {
    v1::HostReport {
        host: report.host.clone(),
        states: (report.states.iter())
            .map(|(task_id, (state, detail))| v1::HostTaskState {
                task_id: task_id.clone(),
                state: state.clone(),
                detail: cut(detail, MAX_DETAIL_TEXT).to_owned(),
            })
            .collect(),
        heartbeat: report.heartbeat.as_ref().map(heartbeat_to_wire),
    }
    .encode_to_vec()
}

/// A report from the network, or why it is refused.
pub fn decode_report(bytes: &[u8]) -> Result<HostReport, String> {
    if bytes.len() > MAX_REPORT_BYTES {
        return Err(format!("{} bytes", bytes.len()));
    }
    let wire = v1::HostReport::decode(bytes).map_err(|e| e.to_string())?;
    check_text("host", &wire.host)?;
    if wire.states.len() > MAX_REPORTED_TASKS {
        return Err(format!("{} tasks", wire.states.len()));
    }
    let mut states = BTreeMap::new();
    for s in wire.states {
        check_text("task id", &s.task_id)?;
        check_text("state", &s.state)?;
        if s.detail.len() > MAX_DETAIL_TEXT {
            return Err(format!(
                "detail of {} over {MAX_DETAIL_TEXT} bytes",
                s.task_id
            ));
        }
        if states.contains_key(&s.task_id) {
            return Err(format!("task {} twice", s.task_id));
        }
        states.insert(s.task_id, (s.state, s.detail));
    }
    let heartbeat = wire.heartbeat.map(heartbeat_from_wire).transpose()?;
    Ok(HostReport {
        host: wire.host,
        states,
        heartbeat,
    })
}

/// The longest prefix of `text` within `max` bytes that ends on a
/// character.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::MAX_FACT_TEXT;

    fn summary() -> CellSummary {
        let mut tasks = BTreeMap::new();
        let mut t = TaskCounts::default();
        t.counts.insert("applied".into(), 40);
        t.counts.insert("failed".into(), 2);
        t.hosts
            .insert("failed".into(), vec!["h1".into(), "h2".into()]);
        t.waves = vec![
            crate::rollout::WaveTally {
                hosts: 2,
                soaked: 1,
                failed: 1,
            },
            crate::rollout::WaveTally {
                hosts: 40,
                soaked: 39,
                failed: 1,
            },
        ];
        tasks.insert("tag-web".into(), t);
        let mut versions = BTreeMap::new();
        versions.insert("0.1.0".into(), 41);
        CellSummary {
            cell: "z1-10.0.0.0".into(),
            by: "agg-1".into(),
            at_ms: 1_700_000_000_000,
            members: 42,
            tasks,
            hosts: CellHosts {
                down_count: 1,
                down: vec![DownHost {
                    host: "h9".into(),
                    since_ms: 5,
                }],
                versions,
                by_peer: "12D3Koo".into(),
                by_addrs: vec!["/ip4/10.0.0.1/udp/7401/quic-v1".into()],
            },
        }
    }

    #[test]
    fn a_summary_comes_back_as_it_went() {
        let s = summary();
        assert_eq!(decode_summary(&encode_summary(&s)).unwrap(), s);
    }

    /// What a later version might add: a field this one does not know.
    #[derive(Clone, PartialEq, prost::Message)]
    struct LaterSummary {
        #[prost(string, tag = "1")]
        cell: String,
        #[prost(string, tag = "2")]
        by: String,
        #[prost(uint32, tag = "4")]
        members: u32,
        #[prost(string, tag = "99")]
        region: String,
    }

    #[test]
    fn fields_of_other_versions_are_skipped_or_defaulted() {
        let later = LaterSummary {
            cell: "c".into(),
            by: "a".into(),
            members: 3,
            region: "eu-west".into(),
        }
        .encode_to_vec();
        let s = decode_summary(&later).expect("an unknown field is skipped");
        assert_eq!((s.cell.as_str(), s.by.as_str(), s.members), ("c", "a", 3));
        assert!(s.tasks.is_empty() && s.hosts.versions.is_empty());
    }

    #[test]
    fn summaries_beyond_the_limits_are_refused() {
        assert!(decode_summary(&vec![0u8; MAX_SUMMARY_BYTES + 1]).is_err());
        assert!(decode_summary(&[0xff, 0xff, 0xff]).is_err());
        let mut many = summary();
        let t = many.tasks["tag-web"].clone();
        for i in 0..=MAX_REPORTED_TASKS {
            many.tasks.insert(format!("t{i}"), t.clone());
        }
        assert!(decode_summary(&encode_summary(&many)).is_err());
        let mut named = summary();
        (named.tasks.get_mut("tag-web").unwrap().hosts)
            .insert("refused".into(), vec!["h".into(); MAX_NAMED_HOSTS + 1]);
        assert!(decode_summary(&encode_summary(&named)).is_err());
        let mut long = summary();
        long.by = "a".repeat(MAX_FACT_TEXT + 1);
        assert!(decode_summary(&encode_summary(&long)).is_err());
        let mut waves = summary();
        waves.tasks.get_mut("tag-web").unwrap().waves =
            vec![crate::rollout::WaveTally::default(); crate::rollout::MAX_WAVES + 1];
        assert!(decode_summary(&encode_summary(&waves)).is_err());
        // The same state twice (no encoder of ours writes it).
        let twice = v1::CellSummary {
            tasks: vec![v1::CellTaskStates {
                task_id: "t".into(),
                states: vec![
                    v1::StateCount {
                        state: "applied".into(),
                        hosts: 1,
                        named: vec![],
                    };
                    2
                ],
                waves: vec![],
            }],
            ..Default::default()
        };
        assert!(decode_summary(&twice.encode_to_vec())
            .unwrap_err()
            .contains("twice"));
    }

    fn report() -> HostReport {
        let mut states = BTreeMap::new();
        states.insert("tag-web".into(), ("applied".into(), String::new()));
        states.insert(
            "cfg-7".into(),
            ("refused".into(), "older_generation: 6 < 7".into()),
        );
        HostReport {
            host: "h1".into(),
            states,
            heartbeat: Some(crate::fleet::Heartbeat {
                agent_version: "0.1.0".into(),
                tags: vec!["web".into()],
                cpu_pct: 0.5,
                spool_backlog: 3,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_report_comes_back_as_it_went_and_a_long_detail_is_cut() {
        let r = report();
        assert_eq!(decode_report(&encode_report(&r)).unwrap(), r);
        let mut long = report();
        // A multi-byte character across the limit is not split.
        let detail = format!("{}é and more", "x".repeat(MAX_DETAIL_TEXT - 1));
        long.states
            .insert("t".into(), ("failed".into(), detail.clone()));
        let back = decode_report(&encode_report(&long)).unwrap();
        assert_eq!(back.states["t"].1, detail[..MAX_DETAIL_TEXT - 1]);
        let bare = HostReport {
            heartbeat: None,
            ..report()
        };
        assert_eq!(decode_report(&encode_report(&bare)).unwrap(), bare);
    }

    #[test]
    fn reports_beyond_the_limits_are_refused() {
        assert!(decode_report(&vec![0u8; MAX_REPORT_BYTES + 1]).is_err());
        assert!(decode_report(&[0xff, 0xff, 0xff]).is_err());
        let mut many = report();
        for i in 0..=MAX_REPORTED_TASKS {
            many.states
                .insert(format!("t{i}"), ("applied".into(), String::new()));
        }
        assert!(decode_report(&encode_report(&many))
            .unwrap_err()
            .contains("tasks"));
        let mut hostile = report();
        hostile.host = "h".repeat(MAX_FACT_TEXT + 1);
        assert!(decode_report(&encode_report(&hostile)).is_err());
        let mut beat = report();
        if let Some(h) = beat.heartbeat.as_mut() {
            h.cpu_pct = -1.0;
        }
        assert!(decode_report(&encode_report(&beat)).is_err());
        let twice = v1::HostReport {
            states: vec![
                v1::HostTaskState {
                    task_id: "t".into(),
                    state: "applied".into(),
                    detail: String::new(),
                };
                2
            ],
            ..Default::default()
        };
        assert!(decode_report(&twice.encode_to_vec())
            .unwrap_err()
            .contains("twice"));
        let detail = v1::HostReport {
            states: vec![v1::HostTaskState {
                task_id: "t".into(),
                state: "failed".into(),
                detail: "d".repeat(MAX_DETAIL_TEXT + 1),
            }],
            ..Default::default()
        };
        assert!(decode_report(&detail.encode_to_vec()).is_err());
    }
}
