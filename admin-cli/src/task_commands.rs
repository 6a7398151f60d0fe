//! `starlingctl task`: signed tasks as files an operator can create, read,
//! pass on and sign, handed to a node and followed across the fleet.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use starling_admin::tasks::{render_task, task_json};
use starling_admin::NodeDataDir;
use starling_proto::v1::config_setting::Setting;
use starling_proto::v1::task_payload::Body;
use starling_proto::v1::{
    CancelTasks, ConfigSetting, FleetConfig, HostTags, KindRateLimit, RevocationList,
    RevokeOperatorKeys, RolloutAction, RolloutControl, SensorKindSwitch, SignedRoot, StringList,
    TagChange, TargetSelector, TaskPayload,
};
use starling_task::keys::OperatorKeyPair;
use starling_task::sign::{sign_task, unsigned_task};

use crate::files::{now, read, replace, unix_ms, unix_secs, write_new};
use crate::root_commands::load_root;

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Write a new, unsigned task; then operators sign it with `task sign`.
    Create {
        #[command(subcommand)]
        kind: Box<CreateKind>,
    },
    /// Add your signature to a task file.
    Sign {
        #[arg(long)]
        key: PathBuf,
        task: PathBuf,
    },
    /// Hand a signed task to this host's node, which checks it, applies it
    /// if it targets this host, and gossips it to the fleet.
    Publish {
        task: PathBuf,
        #[command(flatten)]
        node: NodeDataDir,
        /// How long to wait for the node's verdict.
        #[arg(long, default_value = "15s")]
        wait: humantime::Duration,
    },
    /// The fleet's progress on a task (or on every task), from any node:
    /// hosts per state, and with --hosts who they are (including those
    /// that have not answered).
    Status {
        /// The task's id; without it, every task.
        task_id: Option<String>,
        #[command(flatten)]
        node: NodeDataDir,
        /// Name the hosts in each state but applied and not targeted.
        #[arg(long)]
        hosts: bool,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Redraw every two seconds.
        #[arg(short, long)]
        watch: bool,
    },
    /// The tasks this host's node holds and their state here.
    List {
        #[command(flatten)]
        node: NodeDataDir,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Show a task and, given the fleet's root, whether hosts will take it.
    Show {
        task: PathBuf,
        /// The fleet's trust root.
        #[arg(long)]
        root: Option<PathBuf>,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

/// What every task carries.
#[derive(Debug, Args)]
pub struct Common {
    /// The fleet's trust root (names the fleet).
    #[arg(long)]
    root: PathBuf,
    /// The task's id (default: KIND-<unix ms>).
    #[arg(long)]
    id: Option<String>,
    /// Why, for the status views and the audit trail.
    #[arg(long, default_value = "")]
    reason: String,
    /// How long hosts take it (e.g. 7d, 12h); a host away longer misses it.
    #[arg(long, default_value = "7d")]
    valid_for: humantime::Duration,
    /// Where to write it.
    #[arg(long, short)]
    out: PathBuf,
    #[command(flatten)]
    target: Target,
    /// Roll it out in waves (config and tags tasks): `default` (0.05%,
    /// a canary per cell, 1%, 10%, 50%, 100%, each tolerating 2% failed)
    /// or waves such as `1%:2m,canary:2m,10%:5m,100%:5m/1%`
    /// (SHARE[:SOAK][/TOLERATED]; docs/rollouts.md).
    #[arg(long, value_parser = starling_admin::rollout::parse_plan)]
    rollout: Option<starling_proto::v1::RolloutPlan>,
}

/// Which hosts apply it (every host relays it).
#[derive(Debug, Args)]
pub struct Target {
    /// Every host.
    #[arg(long)]
    all: bool,
    /// A host id; repeatable.
    #[arg(long)]
    host: Vec<String>,
    /// Hosts with this tag; repeatable.
    #[arg(long)]
    tag: Vec<String>,
    /// Hosts in this cell; repeatable.
    #[arg(long)]
    cell: Vec<String>,
    /// Only this share of the matching hosts, chosen by a stable hash.
    #[arg(long, value_parser = parse_percent)]
    percent: Option<u32>,
    /// Seed of that hash: the same seed picks the same hosts.
    #[arg(long, default_value = "")]
    sample_seed: String,
    /// Never this host; repeatable.
    #[arg(long)]
    exclude_host: Vec<String>,
    /// Never hosts with this tag; repeatable.
    #[arg(long)]
    exclude_tag: Vec<String>,
}

fn parse_percent(s: &str) -> Result<u32, String> {
    let p: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|e| format!("{s:?}: {e}"))?;
    if !(0.01..=100.0).contains(&p) {
        return Err(format!("{p}: must be 0.01 to 100"));
    }
    Ok((p * 100.0).round() as u32)
}

#[derive(Debug, Subcommand)]
pub enum CreateKind {
    /// Fleet configuration: settings hosts take over their local file.
    Config {
        #[command(flatten)]
        common: Common,
        /// Turn an event kind off; repeatable.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(starling_proto::SENSOR_KINDS))]
        disable_kind: Vec<String>,
        /// Turn an event kind on; repeatable.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(starling_proto::SENSOR_KINDS))]
        enable_kind: Vec<String>,
        /// sensor.watch_paths (comma-separated).
        #[arg(long, value_delimiter = ',')]
        watch_paths: Option<Vec<String>>,
        /// sensor.quiet_paths (comma-separated).
        #[arg(long, value_delimiter = ',')]
        quiet_paths: Option<Vec<String>>,
        /// sensor.quiet_exes (comma-separated).
        #[arg(long, value_delimiter = ',')]
        quiet_exes: Option<Vec<String>>,
        /// sensor.quiet_cgroups (comma-separated).
        #[arg(long, value_delimiter = ',')]
        quiet_cgroups: Option<Vec<String>>,
        /// KIND=PER_SECOND[/BURST]; repeatable.
        #[arg(long)]
        rate_limit: Vec<String>,
        /// spool.quota_bytes (taken at the next restart).
        #[arg(long)]
        spool_quota_bytes: Option<u64>,
        /// sensor.ring_buffer_bytes (taken at the next restart).
        #[arg(long)]
        ring_buffer_bytes: Option<u32>,
        /// Generation of every setting (default: now in Unix milliseconds,
        /// so a later task always wins).
        #[arg(long)]
        generation: Option<u64>,
    },
    /// Set or remove host tags (then usable as --tag targets).
    Tags {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        set: Vec<String>,
        #[arg(long)]
        remove: Vec<String>,
        #[arg(long)]
        generation: Option<u64>,
    },
    /// Deliver the fleet CA's revocation list (`cert revoke` writes it).
    Revocations {
        #[command(flatten)]
        common: Common,
        /// The list (PEM or DER).
        #[arg(long)]
        crl: PathBuf,
        #[arg(long)]
        generation: Option<u64>,
    },
    /// Rotate the trust root to a new version (signed by both roots' keys).
    Root {
        #[command(flatten)]
        common: Common,
        /// The new root, signed.
        #[arg(long)]
        new_root: PathBuf,
    },
    /// Stop trusting operator keys; their unapplied tasks stop too.
    RevokeKey {
        #[command(flatten)]
        common: Common,
        /// Key id (as `key list` shows); repeatable.
        #[arg(long = "key-id", required = true)]
        key_ids: Vec<String>,
    },
    /// Stop tasks where they have not been applied yet.
    Cancel {
        #[command(flatten)]
        common: Common,
        /// Task id; repeatable.
        #[arg(long = "task", required = true)]
        task_ids: Vec<String>,
    },
    /// Pause, resume or abort the rollout of tasks with a plan
    /// (docs/rollouts.md); target the whole fleet (--all).
    Rollout {
        #[command(flatten)]
        common: Common,
        /// What to do with the rollouts.
        #[arg(long, value_enum)]
        action: RolloutActionArg,
        /// Task id; repeatable.
        #[arg(long = "task", required = true)]
        task_ids: Vec<String>,
    },
}

/// The body of a rollout task doing `action` to the rollouts of
/// `task_ids`, made at `at` (its generation: later controls win).
pub(crate) fn rollout_control(
    action: RolloutActionArg,
    task_ids: Vec<String>,
    at: std::time::SystemTime,
) -> Body {
    let action = match action {
        RolloutActionArg::Pause => RolloutAction::Pause,
        RolloutActionArg::Resume => RolloutAction::Resume,
        RolloutActionArg::Abort => RolloutAction::Abort,
    };
    Body::RolloutControl(RolloutControl {
        task_ids,
        action: action as i32,
        generation: unix_ms(at),
    })
}

/// What a rollout task does.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RolloutActionArg {
    /// No further wave opens; hosts of open waves keep what they applied.
    Pause,
    /// Waves open again as the counts allow.
    Resume,
    /// Halt for good: every host that applied the task takes it back.
    Abort,
}

/// `starlingctl task ...`
pub fn task(cmd: TaskCommand) -> anyhow::Result<()> {
    match cmd {
        TaskCommand::Create { kind } => create(*kind),
        TaskCommand::Sign { key, task } => {
            let k = OperatorKeyPair::load(&key)?;
            let signed = sign_task(&read(&task)?, &k)?;
            replace(&task, &signed)?;
            print!("{}", render_task(&signed, None, unix_secs(now()))?);
            Ok(())
        }
        TaskCommand::Publish { task, node, wait } => publish(&task, &node.data_dir, wait.into()),
        TaskCommand::List { node, json } => list(&node.data_dir, json),
        TaskCommand::Status {
            task_id,
            node,
            hosts,
            json,
            watch,
        } => loop {
            let status = read_status(&node.data_dir)?;
            if json {
                let body = match &task_id {
                    Some(id) => serde_json::json!({
                        "task_id": id,
                        "hosts": status.fleet_view.members(),
                        "cells": status.fleet_view.cells.len(),
                        "states": status.fleet_view.task(id),
                    }),
                    None => serde_json::to_value(&status.fleet_view)?,
                };
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                if watch {
                    print!("\x1b[2J\x1b[H");
                }
                print!(
                    "{}",
                    starling_admin::tasks::render_fleet_status(
                        &status.fleet_view,
                        task_id.as_deref(),
                        hosts
                    )
                );
            }
            if !watch {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(2));
        },
        TaskCommand::Show { task, root, json } => {
            let bytes = read(&task)?;
            let root = root.as_deref().map(load_root).transpose()?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&task_json(
                        &bytes,
                        root.as_ref(),
                        unix_secs(now())
                    )?)?
                );
            } else {
                print!("{}", render_task(&bytes, root.as_ref(), unix_secs(now()))?);
            }
            Ok(())
        }
    }
}

/// The node's task-plane state directory under its data directory.
/// The task plane's directory in a node's data directory.
pub(crate) fn task_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tasks")
}

fn publish(task: &Path, data_dir: &Path, wait: Duration) -> anyhow::Result<()> {
    publish_bytes(&read(task)?, data_dir, wait)
}

/// Hands the signed task `bytes` to the node at `data_dir` and prints its
/// verdict (waiting up to `wait`).
pub(crate) fn publish_bytes(bytes: &[u8], data_dir: &Path, wait: Duration) -> anyhow::Result<()> {
    let inbox = task_dir(data_dir).join(starling_mesh::swarm::INBOX_DIR);
    if !inbox.is_dir() {
        bail!(
            "{} does not exist: is starling-node running with the mesh on and a trust root installed (tasks.root), and is --data-dir its data_dir?",
            inbox.display()
        );
    }
    let name = format!("publish-{}-{}", std::process::id(), unix_ms(now()));
    let tmp = inbox.join(format!("{name}.part"));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, inbox.join(format!("{name}.task")))
        .with_context(|| format!("handing the task to the node in {}", inbox.display()))?;
    let result = inbox.join(format!("{name}.result"));
    let deadline = std::time::Instant::now() + wait;
    loop {
        if let Ok(text) = std::fs::read(&result) {
            let _ = std::fs::remove_file(&result);
            let v: serde_json::Value = serde_json::from_slice(&text)
                .with_context(|| format!("{} is not the node's verdict", result.display()))?;
            return match v["verdict"].as_str() {
                Some("accepted") => {
                    println!(
                        "accepted by this host and {}",
                        if v["gossiped"] == true {
                            "gossiped to the fleet"
                        } else {
                            "held for anti-entropy (no gossip peer yet)"
                        }
                    );
                    Ok(())
                }
                Some("duplicate") => {
                    println!("this host already holds the task");
                    Ok(())
                }
                _ => bail!(
                    "refused by this host ({}): {}",
                    v["reason"].as_str().unwrap_or("?"),
                    v["detail"].as_str().unwrap_or("")
                ),
            };
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "no verdict from the node within {}; the task stays in {} for it to take",
                humantime::format_duration(wait),
                inbox.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How long `read_status` waits for the node to answer an ask with a
/// fresh status (it looks every second).
const STATUS_ASK_WAIT: Duration = Duration::from_secs(3);

/// The task plane's status of the node at `data_dir`, fresh: the node
/// rewrites its status file at once only while someone asks for it
/// (`starling_mesh::swarm::ask_for_status`), so this asks and waits up to
/// [`STATUS_ASK_WAIT`] for the answer; without one (no rights to ask, or
/// the node is stopped) it shows the file as last written and says how
/// old it is.
pub(crate) fn read_status(
    data_dir: &Path,
) -> anyhow::Result<starling_mesh::swarm::TaskPlaneStatus> {
    let dir = task_dir(data_dir);
    let path = dir.join(starling_mesh::swarm::TASK_STATUS_FILE);
    let asked = match starling_mesh::swarm::ask_for_status(&dir) {
        Ok(at) => Some(unix_ms(at)),
        Err(e) => {
            eprintln!(
                "note: cannot ask the node for a fresh status ({e}); showing the last one written"
            );
            None
        }
    };
    let deadline = std::time::Instant::now() + STATUS_ASK_WAIT;
    loop {
        let text = read(&path).with_context(|| {
            "is starling-node running with a task plane, and is --data-dir its data_dir?"
        })?;
        let status: starling_mesh::swarm::TaskPlaneStatus = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a task status", path.display()))?;
        let fresh = asked.is_none_or(|at| status.updated_unix_ms >= at);
        if fresh {
            return Ok(status);
        }
        if std::time::Instant::now() >= deadline {
            let age = unix_ms(now()).saturating_sub(status.updated_unix_ms) / 1000;
            eprintln!(
                "note: the node did not refresh its status within {} s (is it running?); this one is {age} s old",
                STATUS_ASK_WAIT.as_secs()
            );
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn list(data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let status = read_status(data_dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!(
        "host {} of fleet {}, trust root version {}",
        starling_admin::sanitize(&status.host),
        starling_admin::sanitize(&status.fleet),
        status.root_version
    );
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(["TASK", "KIND", "STATE HERE", "DETAIL"]);
    for line in &status.tasks {
        t.add_row([
            starling_admin::sanitize(&line.task_id),
            line.kind.clone(),
            line.state.clone(),
            starling_admin::sanitize(&line.detail),
        ]);
    }
    println!("{t}");
    if !status.settings.is_empty() {
        let mut s = Table::new();
        s.load_preset(UTF8_FULL_CONDENSED).set_header([
            "FLEET SETTING (over the local file)",
            "GENERATION",
            "VALUE",
        ]);
        for (k, g, v) in &status.settings {
            s.add_row([k.clone(), g.to_string(), starling_admin::sanitize(v)]);
        }
        println!("{s}");
    }
    if !status.tags.is_empty() {
        println!("tags: {}", status.tags.join(", "));
    }
    if !status.refused.is_empty() {
        let refused: Vec<String> = status
            .refused
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        println!("copies refused since start: {}", refused.join(", "));
    }
    Ok(())
}

fn create(kind: CreateKind) -> anyhow::Result<()> {
    let at = now();
    let generation_or_now = |g: Option<u64>| g.unwrap_or_else(|| unix_ms(at));
    let (common, name, body) = match kind {
        CreateKind::Config {
            common,
            disable_kind,
            enable_kind,
            watch_paths,
            quiet_paths,
            quiet_exes,
            quiet_cgroups,
            rate_limit,
            spool_quota_bytes,
            ring_buffer_bytes,
            generation,
        } => {
            let mut settings = Vec::new();
            for (kinds, enabled) in [(disable_kind, false), (enable_kind, true)] {
                for kind in kinds {
                    settings.push(Setting::SensorKind(SensorKindSwitch { kind, enabled }));
                }
            }
            for (values, make) in [
                (
                    watch_paths,
                    Setting::WatchPaths as fn(StringList) -> Setting,
                ),
                (quiet_paths, Setting::QuietPaths),
                (quiet_exes, Setting::QuietExes),
                (quiet_cgroups, Setting::QuietCgroups),
            ] {
                if let Some(values) = values {
                    settings.push(make(StringList { values }));
                }
            }
            for r in rate_limit {
                settings.push(Setting::RateLimit(parse_rate_limit(&r)?));
            }
            if let Some(b) = spool_quota_bytes {
                settings.push(Setting::SpoolQuotaBytes(b));
            }
            if let Some(b) = ring_buffer_bytes {
                settings.push(Setting::RingBufferBytes(b));
            }
            if settings.is_empty() {
                bail!("no setting given (see `starlingctl task create config --help`)");
            }
            let generation = generation_or_now(generation);
            let settings: Vec<ConfigSetting> = settings
                .into_iter()
                .map(|s| ConfigSetting {
                    generation,
                    reset: false,
                    setting: Some(s),
                })
                .collect();
            // What every host would refuse as malformed is refused here.
            for s in &settings {
                starling_task::ledger::setting_key(s).map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            (common, "config", Body::Config(FleetConfig { settings }))
        }
        CreateKind::Tags {
            common,
            set,
            remove,
            generation,
        } => {
            if set.is_empty() && remove.is_empty() {
                bail!("no tag given (--set TAG or --remove TAG)");
            }
            let generation = generation_or_now(generation);
            let changes = set
                .into_iter()
                .map(|t| (t, false))
                .chain(remove.into_iter().map(|t| (t, true)))
                .map(|(tag, remove)| TagChange {
                    tag,
                    generation,
                    remove,
                })
                .collect();
            (common, "tags", Body::Tags(HostTags { changes }))
        }
        CreateKind::Revocations {
            common,
            crl,
            generation,
        } => {
            let bytes = read(&crl)?;
            let der = match pem::parse(&bytes) {
                Ok(p) if p.tag() == "X509 CRL" => p.into_contents(),
                Ok(p) => bail!("{}: a {:?} block, not an X509 CRL", crl.display(), p.tag()),
                Err(_) => bytes,
            };
            let body = Body::Revocations(RevocationList {
                generation: generation_or_now(generation),
                crl_der: der,
            });
            (common, "revocations", body)
        }
        CreateKind::Root { common, new_root } => {
            use prost::Message as _;
            let bytes = read(&new_root)?;
            let signed = SignedRoot::decode(bytes.as_slice())
                .with_context(|| format!("{} is not a signed root", new_root.display()))?;
            (common, "root", Body::Root(signed))
        }
        CreateKind::RevokeKey { common, key_ids } => (
            common,
            "revoke-key",
            Body::RevokeKeys(RevokeOperatorKeys { key_ids }),
        ),
        CreateKind::Cancel { common, task_ids } => {
            (common, "cancel", Body::Cancel(CancelTasks { task_ids }))
        }
        CreateKind::Rollout {
            common,
            action,
            task_ids,
        } => (common, "rollout", rollout_control(action, task_ids, at)),
    };
    let root = load_root(&common.root)?;
    let t = &common.target;
    let target = TargetSelector {
        all: t.all,
        hosts: t.host.clone(),
        tags: t.tag.clone(),
        cells: t.cell.clone(),
        sample_basis_points: t.percent.unwrap_or(0),
        sample_seed: t.sample_seed.clone(),
        exclude_hosts: t.exclude_host.clone(),
        exclude_tags: t.exclude_tag.clone(),
    };
    if !target.all && target.hosts.is_empty() && target.tags.is_empty() && target.cells.is_empty() {
        bail!("no target: pass --all, --host, --tag or --cell");
    }
    let start = unix_secs(at);
    let payload = TaskPayload {
        fleet: root.fleet.clone(),
        task_id: common
            .id
            .unwrap_or_else(|| format!("{name}-{}", unix_ms(at))),
        not_before: start,
        not_after: start.saturating_add(Duration::from(common.valid_for).as_secs()),
        target: Some(target),
        reason: common.reason,
        rollout: common.rollout,
        body: Some(body),
    };
    let unsigned = unsigned_task(&payload);
    write_new(&common.out, &unsigned, false)?;
    print!("{}", render_task(&unsigned, None, start)?);
    println!(
        "written to {} (unsigned): sign it with `starlingctl task sign --key NAME.key {}`",
        common.out.display(),
        common.out.display()
    );
    Ok(())
}

fn parse_rate_limit(s: &str) -> anyhow::Result<KindRateLimit> {
    let (kind, rest) = s
        .split_once('=')
        .with_context(|| format!("{s:?}: expected KIND=PER_SECOND[/BURST]"))?;
    if !starling_proto::SENSOR_KINDS.contains(&kind) {
        bail!(
            "{kind:?} is not a kind the sensor produces ({})",
            starling_proto::SENSOR_KINDS.join(", ")
        );
    }
    let (rate, burst) = rest.split_once('/').unwrap_or((rest, "0"));
    Ok(KindRateLimit {
        kind: kind.into(),
        per_second: rate
            .parse()
            .with_context(|| format!("{rate:?}: not a rate"))?,
        burst: burst
            .parse()
            .with_context(|| format!("{burst:?}: not a burst"))?,
    })
}
