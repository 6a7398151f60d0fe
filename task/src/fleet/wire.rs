//! Heartbeats and cell tables on the wire: protobuf
//! (`starling.v1.Heartbeat`, `starling.v1.CellTable`,
//! proto/proto/starling/v1/status.proto), because a table is asked of an
//! aggregator that may run another agent version while a fleet rolls out.
//! Decoding checks every list and text against the limits before the
//! value is handed on; the byte limits are the callers' (the stream
//! codecs read no more than theirs).

use starling_proto::v1;

use super::{CellTable, Heartbeat, HostRow, MAX_FACT_TEXT, MAX_TABLE_HOSTS};

/// `heartbeat` as its protobuf message.
pub fn heartbeat_to_wire(heartbeat: &Heartbeat) -> v1::Heartbeat {
    v1::Heartbeat {
        agent_version: heartbeat.agent_version.clone(),
        kernel: heartbeat.kernel.clone(),
        os: heartbeat.os.clone(),
        arch: heartbeat.arch.clone(),
        addrs: heartbeat.addrs.clone(),
        tags: heartbeat.tags.clone(),
        config_generation: heartbeat.config_generation,
        cpu_pct: heartbeat.cpu_pct,
        rss_bytes: heartbeat.rss_bytes,
        spool_backlog: heartbeat.spool_backlog,
        started_at_ms: heartbeat.started_at_ms,
    }
}

/// A heartbeat from the network, or why it is refused
/// ([`Heartbeat::check`]).
pub fn heartbeat_from_wire(wire: v1::Heartbeat) -> Result<Heartbeat, String> {
    let heartbeat = Heartbeat {
        agent_version: wire.agent_version,
        kernel: wire.kernel,
        os: wire.os,
        arch: wire.arch,
        addrs: wire.addrs,
        tags: wire.tags,
        config_generation: wire.config_generation,
        cpu_pct: wire.cpu_pct,
        rss_bytes: wire.rss_bytes,
        spool_backlog: wire.spool_backlog,
        started_at_ms: wire.started_at_ms,
    };
    heartbeat.check()?;
    Ok(heartbeat)
}

/// `table` as its protobuf message.
pub fn table_to_wire(table: &CellTable) -> v1::CellTable {
    v1::CellTable {
        cell: table.cell.clone(),
        by: table.by.clone(),
        at_ms: table.at_ms,
        hosts: (table.hosts.iter())
            .map(|row| v1::HostRow {
                host: row.host.clone(),
                alive: row.alive,
                last_seen_ms: row.last_seen_ms,
                heartbeat: row.heartbeat.as_ref().map(heartbeat_to_wire),
                heartbeat_at_ms: row.heartbeat_at_ms,
            })
            .collect(),
    }
}

/// A cell's table from the network, or why it is refused.
pub fn table_from_wire(wire: v1::CellTable) -> Result<CellTable, String> {
    for (what, text) in [("cell", &wire.cell), ("aggregator", &wire.by)] {
        check_text(what, text)?;
    }
    if wire.hosts.len() > MAX_TABLE_HOSTS {
        return Err(format!("{} hosts", wire.hosts.len()));
    }
    let mut hosts = Vec::with_capacity(wire.hosts.len());
    for row in wire.hosts {
        check_text("host", &row.host)?;
        let heartbeat = match row.heartbeat {
            Some(h) => Some(heartbeat_from_wire(h).map_err(|e| format!("{}: {e}", row.host))?),
            None => None,
        };
        hosts.push(HostRow {
            host: row.host,
            alive: row.alive,
            last_seen_ms: row.last_seen_ms,
            heartbeat,
            heartbeat_at_ms: row.heartbeat_at_ms,
        });
    }
    let table = CellTable {
        cell: wire.cell,
        by: wire.by,
        at_ms: wire.at_ms,
        hosts,
    };
    table.check()?;
    Ok(table)
}

/// Refuses a name or label longer than [`MAX_FACT_TEXT`].
pub(crate) fn check_text(what: &str, text: &str) -> Result<(), String> {
    if text.len() > MAX_FACT_TEXT {
        Err(format!("{what} over {MAX_FACT_TEXT} bytes"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::MAX_FACT_ITEMS;

    fn table() -> CellTable {
        CellTable {
            cell: "z1-10.0.0.0".into(),
            by: "agg-1".into(),
            at_ms: 1_700_000_000_000,
            hosts: vec![
                HostRow {
                    host: "h1".into(),
                    alive: true,
                    last_seen_ms: 1_700_000_000_000,
                    heartbeat: Some(Heartbeat {
                        agent_version: "0.1.0".into(),
                        kernel: "6.1.0-28-amd64".into(),
                        os: "Debian GNU/Linux 12 (bookworm)".into(),
                        arch: "x86_64".into(),
                        addrs: vec!["10.0.0.1".into()],
                        tags: vec!["web".into()],
                        config_generation: 7,
                        cpu_pct: 1.5,
                        rss_bytes: 40 << 20,
                        spool_backlog: 12,
                        started_at_ms: 1_699_000_000_000,
                    }),
                    heartbeat_at_ms: 1_699_999_990_000,
                },
                HostRow {
                    host: "h2".into(),
                    alive: false,
                    last_seen_ms: 5,
                    heartbeat: None,
                    heartbeat_at_ms: 0,
                },
            ],
        }
    }

    #[test]
    fn a_table_comes_back_as_it_went() {
        let t = table();
        assert_eq!(table_from_wire(table_to_wire(&t)).unwrap(), t);
    }

    #[test]
    fn tables_beyond_the_limits_are_refused() {
        let mut many = table();
        many.hosts = vec![many.hosts[1].clone(); MAX_TABLE_HOSTS + 1];
        assert!(table_from_wire(table_to_wire(&many))
            .unwrap_err()
            .contains("hosts"));
        let mut tags = table();
        if let Some(h) = tags.hosts[0].heartbeat.as_mut() {
            h.tags = vec!["t".into(); MAX_FACT_ITEMS + 1];
        }
        assert!(table_from_wire(table_to_wire(&tags))
            .unwrap_err()
            .starts_with("h1: "));
        let mut long = table();
        long.hosts[1].host = "h".repeat(MAX_FACT_TEXT + 1);
        assert!(table_from_wire(table_to_wire(&long)).is_err());
        let mut nan = table();
        if let Some(h) = nan.hosts[0].heartbeat.as_mut() {
            h.cpu_pct = f32::NAN;
        }
        assert!(table_from_wire(table_to_wire(&nan)).is_err());
    }
}
