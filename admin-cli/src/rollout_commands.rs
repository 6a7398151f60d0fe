//! `starlingctl rollout`: staged rollouts as an operator follows and
//! steers them (docs/rollouts.md): check a plan, see each rollout wave by
//! wave with the sinks' decisions, and pause, resume or abort one in a
//! single step (a signed rollout task made, signed and handed to a node).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use starling_admin::rollout::{describe_plan, parse_plan, render_rollouts, rollouts_json};
use starling_admin::NodeDataDir;
use starling_proto::v1::{TargetSelector, TaskPayload};
use starling_task::keys::OperatorKeyPair;
use starling_task::sign::{sign_task, unsigned_task};

use crate::files::{now, unix_ms, unix_secs};
use crate::root_commands::load_root;
use crate::task_commands::{publish_bytes, read_status, rollout_control, RolloutActionArg};

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Check a plan as hosts will and print its waves (what `task create
    /// --rollout` takes: `default`, or e.g. `1%:2m,canary:2m,100%/5%`).
    Plan {
        spec: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Each rollout, from any node: running, paused or halted (and why),
    /// and wave by wave its plan, whether it is open, its hosts, soaked
    /// and failed.
    Show {
        /// The task's id; without it, every rollout the node holds.
        task_id: Option<String>,
        #[command(flatten)]
        node: NodeDataDir,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Redraw every two seconds.
        #[arg(short, long)]
        watch: bool,
    },
    /// No further wave opens; hosts of open waves keep what they applied.
    Pause(Steer),
    /// Waves open again as the counts allow.
    Resume(Steer),
    /// Halt for good: every host that applied the task takes it back.
    Abort(Steer),
}

/// What pausing, resuming or aborting needs.
#[derive(Debug, Args)]
pub struct Steer {
    /// The task whose rollout to steer.
    task_id: String,
    /// The fleet's trust root.
    #[arg(long)]
    root: PathBuf,
    /// An operator key to sign with; repeat when the root asks for more
    /// than one signature (others may also sign the file later).
    #[arg(long, required = true)]
    key: Vec<PathBuf>,
    #[command(flatten)]
    node: NodeDataDir,
    /// Why, for the status views and the audit trail.
    #[arg(long, default_value = "")]
    reason: String,
    /// How long to wait for the node's verdict.
    #[arg(long, default_value = "15s")]
    wait: humantime::Duration,
}

/// How long a control task stays valid (a host away longer misses it;
/// the sinks' halt still reaches it).
const STEER_VALID_FOR: Duration = Duration::from_secs(7 * 86_400);

/// `starlingctl rollout ...`
pub fn rollout(cmd: RolloutCommand) -> anyhow::Result<()> {
    match cmd {
        RolloutCommand::Plan { spec, json } => {
            let plan = parse_plan(&spec)?;
            if json {
                let waves: Vec<serde_json::Value> = (plan.waves.iter())
                    .map(|w| {
                        serde_json::json!({
                            "share_basis_points": w.share_basis_points,
                            "cell_canary": w.cell_canary,
                            "soak_secs": w.soak_secs,
                            "max_failed_basis_points": w.max_failed_basis_points,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&waves)?);
            } else {
                for (k, wave) in describe_plan(&plan).split(',').enumerate() {
                    println!("wave {k}: {wave}");
                }
            }
            Ok(())
        }
        RolloutCommand::Show {
            task_id,
            node,
            json,
            watch,
        } => loop {
            let status = read_status(&node.data_dir)?;
            if json {
                let body = rollouts_json(&status, task_id.as_deref());
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                if watch {
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", render_rollouts(&status, task_id.as_deref()));
            }
            if !watch {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(2));
        },
        RolloutCommand::Pause(s) => steer(RolloutActionArg::Pause, s),
        RolloutCommand::Resume(s) => steer(RolloutActionArg::Resume, s),
        RolloutCommand::Abort(s) => steer(RolloutActionArg::Abort, s),
    }
}

/// Makes the rollout task, signs it with every key given and hands it to
/// the node.
fn steer(action: RolloutActionArg, s: Steer) -> anyhow::Result<()> {
    let root = load_root(&s.root)?;
    let at = now();
    let start = unix_secs(at);
    let name = match action {
        RolloutActionArg::Pause => "pause",
        RolloutActionArg::Resume => "resume",
        RolloutActionArg::Abort => "abort",
    };
    let payload = TaskPayload {
        fleet: root.fleet.clone(),
        task_id: format!("rollout-{name}-{}", unix_ms(at)),
        not_before: start,
        not_after: start.saturating_add(STEER_VALID_FOR.as_secs()),
        target: Some(TargetSelector {
            all: true,
            ..Default::default()
        }),
        reason: s.reason,
        rollout: None,
        body: Some(rollout_control(action, vec![s.task_id.clone()], at)),
    };
    let mut signed = unsigned_task(&payload);
    for path in &s.key {
        let key = OperatorKeyPair::load(path)?;
        signed =
            sign_task(&signed, &key).with_context(|| format!("signing with {}", path.display()))?;
    }
    println!(
        "{name} the rollout of {} (task {})",
        s.task_id, payload.task_id
    );
    publish_bytes(&signed, &s.node.data_dir, s.wait.into())
}
