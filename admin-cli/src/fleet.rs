//! `starlingctl fleet` for people: the fleet's cells from the summaries a
//! node hears, and one cell's hosts as its aggregator holds them
//! (docs/tasks.md, "The fleet's hosts").

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::Table;
use starling_task::fleet::CellTable;
use starling_task::rollup::FleetStatus;

use crate::sanitize;

/// How long ago `then_ms` was, for people ("3m 12s ago"; "now" within a
/// second; a time ahead of `now_ms` shows as "now").
pub fn ago(then_ms: u64, now_ms: u64) -> String {
    let secs = now_ms.saturating_sub(then_ms) / 1000;
    if secs == 0 {
        return "now".into();
    }
    format!(
        "{} ago",
        humantime::format_duration(std::time::Duration::from_secs(secs))
    )
}

/// One line per cell: live and down hosts, the agent versions live hosts
/// run, who summed it and when; then the hosts that are down.
pub fn render_cells(fleet: &FleetStatus, now_ms: u64) -> String {
    let live: u32 = fleet.members();
    let down: u32 = fleet.cells.values().map(|c| c.hosts.down_count).sum();
    let mut out = format!(
        "{} cells: {live} hosts live, {down} down\n",
        fleet.cells.len()
    );
    if fleet.cells.is_empty() {
        out.push_str("no cell summary heard yet (cells publish once their members report)\n");
        return out;
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "CELL",
        "LIVE",
        "DOWN",
        "AGENT VERSIONS",
        "SUMMED BY",
        "SUMMARY",
    ]);
    for (name, cell) in &fleet.cells {
        let versions: Vec<String> = cell
            .hosts
            .versions
            .iter()
            .map(|(v, n)| format!("{} ({n})", sanitize(v)))
            .collect();
        table.add_row([
            sanitize(name),
            cell.members.to_string(),
            cell.hosts.down_count.to_string(),
            versions.join(", "),
            sanitize(&cell.by),
            ago(cell.at_ms, now_ms),
        ]);
    }
    out.push_str(&format!("{table}\n"));
    for (name, cell) in &fleet.cells {
        for d in &cell.hosts.down {
            out.push_str(&format!(
                "{} down: {} since {} ({})\n",
                sanitize(name),
                sanitize(&d.host),
                unix_ms_time(d.since_ms),
                ago(d.since_ms, now_ms)
            ));
        }
        let named = cell.hosts.down.len() as u32;
        if cell.hosts.down_count > named {
            out.push_str(&format!(
                "{} down: {} more\n",
                sanitize(name),
                cell.hosts.down_count - named
            ));
        }
    }
    out
}

/// A cell's hosts: alive or down and since when, version, facts, tags,
/// the configuration generation in force, the agent's CPU, memory and
/// spool backlog, and how old its heartbeat is.
pub fn render_cell_table(table: &CellTable, now_ms: u64) -> String {
    let alive = table.hosts.iter().filter(|h| h.alive).count();
    let mut out = format!(
        "cell {}: {alive} hosts live, {} down (from {}, {})\n",
        sanitize(&table.cell),
        table.hosts.len() - alive,
        sanitize(&table.by),
        ago(table.at_ms, now_ms)
    );
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header([
        "HOST", "STATE", "VERSION", "KERNEL", "OS", "ARCH", "TAGS", "CONFIG", "CPU", "MEMORY",
        "BACKLOG", "HEARD",
    ]);
    for row in &table.hosts {
        let state = if row.alive {
            "alive".to_owned()
        } else {
            format!("down {}", ago(row.last_seen_ms, now_ms))
        };
        let mut cells = vec![sanitize(&row.host), state];
        match &row.heartbeat {
            Some(h) => cells.extend([
                sanitize(&h.agent_version),
                sanitize(&h.kernel),
                sanitize(&h.os),
                sanitize(&h.arch),
                sanitize(&h.tags.join(",")),
                if h.config_generation == 0 {
                    "-".into()
                } else {
                    format!("gen {}", h.config_generation)
                },
                format!("{:.1} %", h.cpu_pct),
                format!("{:.1} MiB", h.rss_bytes as f64 / (1024.0 * 1024.0)),
                h.spool_backlog.to_string(),
                ago(row.heartbeat_at_ms, now_ms),
            ]),
            None => {
                cells.extend(std::iter::repeat_n("-".to_owned(), 9));
                cells.push("never".into());
            }
        }
        t.add_row(cells);
    }
    out.push_str(&format!("{t}\n"));
    out
}

fn unix_ms_time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.min(253_402_300_799_000)),
    )
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_task::fleet::{CellHosts, DownHost, Heartbeat, HostRow};
    use starling_task::rollup::CellSummary;

    #[test]
    fn cells_show_counts_versions_and_who_is_down_since_when() {
        let mut fleet = FleetStatus::default();
        let mut hosts = CellHosts {
            down_count: 1,
            down: vec![DownHost {
                host: "web-7\x1b[2J".into(),
                since_ms: 40_000,
            }],
            ..Default::default()
        };
        hosts.count_version("0.1.0");
        hosts.count_version("0.1.0");
        fleet.take(CellSummary {
            cell: "eu-1".into(),
            by: "web-1".into(),
            at_ms: 100_000,
            members: 2,
            tasks: Default::default(),
            hosts,
        });
        let text = render_cells(&fleet, 100_000);
        assert!(
            text.starts_with("1 cells: 2 hosts live, 1 down\n"),
            "{text}"
        );
        assert!(text.contains("0.1.0 (2)"), "{text}");
        assert!(
            text.contains("eu-1 down: web-7\\x1b[2J since 1970-01-01T00:00:40Z (1m ago)"),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "control characters are escaped");
    }

    #[test]
    fn a_cell_table_shows_each_host_and_a_host_that_never_reported() {
        let table = CellTable {
            cell: "eu-1".into(),
            by: "web-1".into(),
            at_ms: 10_000,
            hosts: vec![
                HostRow {
                    host: "web-1".into(),
                    alive: true,
                    last_seen_ms: 10_000,
                    heartbeat: Some(Heartbeat {
                        agent_version: "0.1.0".into(),
                        kernel: "6.1.0-18-amd64".into(),
                        os: "Debian GNU/Linux 12 (bookworm)".into(),
                        arch: "x86_64".into(),
                        tags: vec!["web".into(), "eu".into()],
                        config_generation: 3,
                        cpu_pct: 2.5,
                        rss_bytes: 30 * 1024 * 1024,
                        spool_backlog: 12,
                        ..Default::default()
                    }),
                    heartbeat_at_ms: 5_000,
                },
                HostRow {
                    host: "web-2".into(),
                    alive: false,
                    last_seen_ms: 4_000,
                    heartbeat: None,
                    heartbeat_at_ms: 0,
                },
            ],
        };
        let text = render_cell_table(&table, 10_000);
        assert!(
            text.starts_with("cell eu-1: 1 hosts live, 1 down"),
            "{text}"
        );
        for want in [
            "6.1.0-18-amd64",
            "web,eu",
            "gen 3",
            "2.5 %",
            "30.0 MiB",
            "5s ago",
            "down 6s ago",
            "never",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
    }
}
