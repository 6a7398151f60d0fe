//! `starlingctl fleet`: the fleet's cells as a node hears them, and with
//! `--cell` one cell's hosts, asked of that cell's aggregator through the
//! node (a question file in its `data_dir/tasks/queries`, the answer
//! beside it).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use starling_admin::fleet::{render_cell_table, render_cells};
use starling_admin::NodeDataDir;
use starling_task::fleet::CellTable;

use crate::files::{now, unix_ms};
use crate::task_commands::{read_status, task_dir};

/// How long `--cell` waits for the aggregator's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(30);

/// Arguments of `starlingctl fleet`.
#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    /// Show this cell's hosts (asked of its aggregator) instead of the
    /// cells.
    #[arg(long)]
    cell: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Redraw every 2 s.
    #[arg(long)]
    watch: bool,
    #[command(flatten)]
    node: NodeDataDir,
}

/// Runs `starlingctl fleet`.
pub fn fleet(args: FleetArgs) -> anyhow::Result<()> {
    loop {
        let text = match &args.cell {
            None => {
                let status = read_status(&args.node.data_dir)?;
                if args.json {
                    serde_json::to_string_pretty(&status.fleet_view)? + "\n"
                } else {
                    render_cells(&status.fleet_view, unix_ms(now()))
                }
            }
            Some(cell) => {
                let table = ask_cell(&args.node.data_dir, cell)?;
                if args.json {
                    serde_json::to_string_pretty(&table)? + "\n"
                } else {
                    render_cell_table(&table, unix_ms(now()))
                }
            }
        };
        if args.watch {
            print!("\x1b[2J\x1b[H");
        }
        print!("{text}");
        if !args.watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Hands the node a question for `cell`'s table and waits for the answer.
fn ask_cell(data_dir: &Path, cell: &str) -> anyhow::Result<CellTable> {
    let dir = task_dir(data_dir).join(starling_mesh::swarm::QUERIES_DIR);
    if !dir.is_dir() {
        bail!(
            "{} does not exist: is starling-node running with a task plane ([tasks] root), and is --data-dir its data_dir?",
            dir.display()
        );
    }
    let name = format!("{}-{}", std::process::id(), unix_ms(now()));
    let tmp = dir.join(format!("{name}.part"));
    let query = serde_json::json!({ "cell": cell });
    std::fs::write(&tmp, query.to_string())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(format!("{name}.query")))
        .with_context(|| format!("handing the question to the node in {}", dir.display()))?;
    let answer = dir.join(format!("{name}.result"));
    let deadline = Instant::now() + ANSWER_WAIT;
    loop {
        if let Ok(bytes) = std::fs::read(&answer) {
            let _ = std::fs::remove_file(&answer);
            let value: serde_json::Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not an answer", answer.display()))?;
            if let Some(e) = value.get("error").and_then(|e| e.as_str()) {
                bail!("cell {cell}: {}", starling_admin::sanitize(e));
            }
            return serde_json::from_value(value["table"].clone())
                .with_context(|| format!("{} holds no cell table", answer.display()));
        }
        if Instant::now() > deadline {
            let _ = std::fs::remove_file(dir.join(format!("{name}.query")));
            bail!(
                "no answer for cell {cell} within {} (is the node running?)",
                humantime::format_duration(ANSWER_WAIT)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
