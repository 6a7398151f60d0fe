//! A flood of forged tasks against honest delivery: a compromised member
//! (a genuine certificate, an agent that gossips whatever it is handed:
//! the `hostile` feature's test double) floods forgeries while the
//! operator publishes, and honest delivery is timed with and without the
//! flood (issue 19's goal: under 10 % slower at 10,000 forgeries a second).
//! The forger is a process of its own (this binary with `--forger DIR`),
//! as it would be another host: its CPU is reported apart from the honest
//! members'.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use prost::Message as _;
use starling_mesh::enrol::Enrolment;
use starling_mesh::identity::{FleetCa, Role, TlsFiles};
use starling_mesh::swarm::MeshCommand;
use starling_proto::v1::{SignedTask, TaskPayload};
use starling_sim::process::ProcessUsage;
use starling_sim::tasks::Operator;
use starling_task::OperatorKeyPair;
use tokio::sync::watch;

use super::{counter_sum, process_cpu, start, Member};

/// Honest tasks timed in each window.
const TASKS_PER_WINDOW: usize = 10;
/// The windows in the order they run: calm, flood, flood, calm, twice
/// over. Delivery drifts while a run goes on (members hold more tasks,
/// the forger is held off, then dead), and this order puts the two kinds
/// at the same mean position, so a drift cancels out instead of being
/// taken for the flood's cost.
const WINDOWS: [bool; 8] = [false, true, true, false, false, true, true, false];
/// The flood runs this long before the first honest task of its window.
const FLOOD_LEAD: Duration = Duration::from_secs(3);
/// After a flood pauses, this long before the first honest task of a
/// calm window (forgeries still in flight are refused or dropped).
const FLOOD_DRAIN: Duration = Duration::from_secs(2);
/// How often the flood hands the forger a batch.
const FLOOD_TICK: Duration = Duration::from_millis(10);

/// What the forger sends.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Forgery {
    /// Signed by a key the trust root does not list: cheap to refuse, but
    /// a newer root could list it, so a relay is held off only after a
    /// few (`FORGER_STRIKES`).
    UnknownKey,
    /// The operator's key on a signature that does not verify: a full
    /// signature check each, and its relay is held off at once.
    BadSignature,
}

/// The first forgery (the template the forger varies), of `kind`.
fn template(op: &Operator, kind: Forgery) -> anyhow::Result<Vec<u8>> {
    let signed = op.tag_task("template", "forged")?;
    Ok(match kind {
        Forgery::BadSignature => signed,
        Forgery::UnknownKey => {
            let envelope = SignedTask::decode(signed.as_slice())?;
            let payload = TaskPayload::decode(envelope.payload.as_slice())?;
            starling_task::sign::sign_task(
                &starling_task::sign::unsigned_task(&payload),
                &OperatorKeyPair::generate()?,
            )?
        }
    })
}

/// Makes forgery number `i`: the template's signatures on a payload with
/// a new task id (so no two are one gossip message).
struct Forger {
    payload: TaskPayload,
    template: SignedTask,
}

impl Forger {
    fn new(template: &[u8]) -> anyhow::Result<Self> {
        let template = SignedTask::decode(template)?;
        Ok(Self {
            payload: TaskPayload::decode(template.payload.as_slice())?,
            template,
        })
    }

    fn forgery(&mut self, i: u64) -> Vec<u8> {
        self.payload.task_id = format!("forged-{i}");
        SignedTask {
            payload: self.payload.encode_to_vec(),
            signatures: self.template.signatures.clone(),
        }
        .encode_to_vec()
    }
}

/// The forger process (`--forger DIR`): joins the mesh as `DIR/job.json`
/// says, floods while the last line on its standard input was `flood`
/// (pauses on `pause`), and when the input closes prints how many
/// forgeries it handed to its mesh member and over how long it flooded.
pub async fn run_forger(dir: &Path) -> anyhow::Result<()> {
    let job: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("job.json"))?)?;
    let field = |k: &str| {
        job.get(k)
            .ok_or_else(|| anyhow::anyhow!("job.json lacks {k}"))
    };
    let seeds = field("seeds")?
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str()?.parse().ok())
        .collect();
    let zone = field("zone")?.as_str().unwrap_or_default().to_owned();
    let cell_size = field("cell_size")?.as_u64().unwrap_or(50) as u32;
    let rate = field("rate")?.as_u64().unwrap_or(0);
    let enrolment = Enrolment::load(&TlsFiles {
        ca_cert: dir.join("ca.pem"),
        cert: dir.join("forger.pem"),
        key: dir.join("forger.key"),
    })?;
    let mut forger = Forger::new(&std::fs::read(dir.join("forgery.bin"))?)?;
    let (_stop_tx, stop) = watch::channel(false);
    // No task plane of its own: it gossips what it is handed.
    let (_view, _task, commands) = start(enrolment, seeds, Some((&zone, cell_size)), &stop, None)?;
    let (input_tx, mut input) = tokio::sync::mpsc::channel(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if input_tx.blocking_send(line.trim() == "flood").is_err() {
                break;
            }
        }
    });
    let per_tick = (rate * FLOOD_TICK.as_millis() as u64 / 1000).max(1);
    let mut flooding: Option<Instant> = None;
    let mut flooded = Duration::ZERO;
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(FLOOD_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        tokio::select! {
            _ = tick.tick(), if flooding.is_some() => {}
            line = input.recv() => {
                let now_flooding = line == Some(true);
                match (flooding, now_flooding) {
                    (Some(since), false) => {
                        flooded += since.elapsed();
                        flooding = None;
                    }
                    (None, true) => {
                        flooding = Some(Instant::now());
                        tick.reset_immediately();
                    }
                    _ => {}
                }
                if line.is_none() {
                    break;
                }
                continue;
            }
        }
        for _ in 0..per_tick {
            commands
                .send(MeshCommand::GossipTaskUnchecked(forger.forgery(sent)))
                .await?;
            sent += 1;
        }
    }
    println!("{sent} {}", flooded.as_secs_f64());
    Ok(())
}

/// The forger process, killed if the bench stops early.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One honest task's times: from the publish to every member applying
/// it, and from the first member applying it to the last (the spread,
/// without the wait for the publisher's inbox).
#[derive(Debug, Clone, Copy)]
struct Delivery {
    publish_to_all: Duration,
    first_to_all: Duration,
}

/// Publishes `TASKS_PER_WINDOW` tag tasks one after another at the
/// first member and times each to every member's application.
async fn honest_deliveries(
    op: &Operator,
    members: &[Member],
    metrics: &PrometheusHandle,
    phase: &str,
) -> anyhow::Result<Vec<Delivery>> {
    let series = "starling_tasks_applied_total{kind=\"tags\",result=\"applied\"}";
    // The sink applies the tasks too.
    let n = members.len() as f64 + 1.0;
    let mut out = Vec::new();
    for i in 0..TASKS_PER_WINDOW {
        let id = format!("{phase}-{i}");
        let base = counter_sum(metrics, series);
        op.publish(&members[0].host, &id, &op.tag_task(&id, &id)?)?;
        let at = Instant::now();
        let mut first = None;
        loop {
            let applied = counter_sum(metrics, series) - base;
            if first.is_none() && applied >= 1.0 {
                first = Some(at.elapsed());
            }
            if applied >= n {
                let all = at.elapsed();
                out.push(Delivery {
                    publish_to_all: all,
                    first_to_all: all - first.unwrap_or(all),
                });
                break;
            }
            if at.elapsed() > Duration::from_secs(60) {
                anyhow::bail!("{phase} task {i}: {applied} of {n} members applied it within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(out)
}

/// A metric summed over all its labels.
fn every_label_sum(metrics: &PrometheusHandle, name: &str) -> f64 {
    metrics
        .render()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// The honest tasks of one kind of window (calm or under the flood),
/// and the CPU used meanwhile.
#[derive(Default)]
struct Phase {
    deliveries: Vec<Delivery>,
    secs: f64,
    cpu: f64,
    forger_cpu: f64,
    /// Inbound connections the honest members denied (the held-off
    /// forger dialling again).
    denied: f64,
}

impl Phase {
    fn all(&self) -> f64 {
        median(self.deliveries.iter().map(|d| d.publish_to_all).collect()).as_secs_f64()
    }

    fn spread(&self) -> f64 {
        median(self.deliveries.iter().map(|d| d.first_to_all).collect()).as_secs_f64()
    }

    fn cores(&self) -> f64 {
        self.cpu / self.secs
    }

    fn forger_cores(&self) -> f64 {
        self.forger_cpu / self.secs
    }

    /// Times one window's honest tasks into this phase; its figures as a
    /// line of the per-window table.
    async fn window(
        &mut self,
        op: &Operator,
        members: &[Member],
        metrics: &PrometheusHandle,
        name: &str,
        forger_cpu: &dyn Fn() -> f64,
    ) -> anyhow::Result<String> {
        let counts = |series: &str| counter_sum(metrics, series);
        let before = UNCHECKED_SERIES.map(counts);
        let denied = counts(DENIED_SERIES);
        let (cpu, forger0, clock) = (process_cpu(), forger_cpu(), Instant::now());
        let deliveries = honest_deliveries(op, members, metrics, name).await?;
        let secs = clock.elapsed().as_secs_f64();
        let cpu = (process_cpu() - cpu).as_secs_f64();
        let denied = counts(DENIED_SERIES) - denied;
        let unchecked: Vec<f64> = UNCHECKED_SERIES
            .iter()
            .zip(before)
            .map(|(series, before)| counts(series) - before)
            .collect();
        let spread = median(deliveries.iter().map(|d| d.first_to_all).collect()).as_secs_f64();
        self.secs += secs;
        self.cpu += cpu;
        self.denied += denied;
        self.forger_cpu += forger_cpu() - forger0;
        self.deliveries.extend(deliveries);
        Ok(format!(
            "    {name:<9} {spread:>7.3} s {:>6.2} cores {:>9.0} {:>9.0} {:>7.1}/s",
            cpu / secs,
            unchecked[0],
            unchecked[1],
            denied / secs,
        ))
    }
}

/// Inbound connections denied, summed over the honest members.
const DENIED_SERIES: &str = "starling_mesh_inbound_failures_total{error=\"denied\"}";
/// Task copies by gossip the honest members did not look at: from a peer
/// not admitted yet, and from a peer held off.
const UNCHECKED_SERIES: [&str; 2] = [
    "starling_tasks_received_total{source=\"gossip\",verdict=\"not_admitted\"}",
    "starling_tasks_received_total{source=\"gossip\",verdict=\"held_off\"}",
];

/// Starts the forger in the first member's cell, times honest delivery
/// in calm windows and in windows under `rate` forgeries a second
/// (interleaved, see [`WINDOWS`]), and prints both.
#[allow(clippy::too_many_arguments)]
pub async fn flood_phase(
    op: &Operator,
    members: &[Member],
    metrics: &PrometheusHandle,
    ca: &FleetCa,
    dir: &Path,
    seeds: &[starling_mesh::Multiaddr],
    cell_size: usize,
    rate: u32,
    kind: Forgery,
) -> anyhow::Result<()> {
    let zone = members[0].zone.clone();
    let job = dir.join("forger");
    ca.issue(Role::Node, "forger", &[], &[], 30)?
        .write(&job, "forger")?;
    std::fs::copy(dir.join("ca.pem"), job.join("ca.pem"))?;
    std::fs::write(job.join("forgery.bin"), template(op, kind)?)?;
    std::fs::write(
        job.join("job.json"),
        serde_json::json!({
            "seeds": seeds.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "zone": zone,
            "cell_size": cell_size,
            "rate": rate,
        })
        .to_string(),
    )?;
    // At the lowest priority: the forger stands for another host, and
    // its own CPU (a libp2p signature on every message it floods) must
    // not come out of the honest members' share of this machine's cores.
    let mut child = ChildGuard(
        Command::new("nice")
            .args(["-n", "19"])
            .arg(std::env::current_exe()?)
            .arg("--forger")
            .arg(&job)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let at = Instant::now();
    while !members[0]
        .view
        .borrow()
        .cell
        .as_ref()
        .is_some_and(|c| c.members.iter().any(|m| m.host == "forger"))
    {
        if at.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("the forger did not join cell {zone} within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the gossip meshes take the forger in.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let pid = child.0.id();
    let forger_cpu = move || ProcessUsage::read(pid).map_or(0.0, |u| u.user + u.system);
    let refused_series = "starling_tasks_refused_total{reason=\"forged\"}";
    let held_series = "starling_task_forgers_total";
    let (refused0, held0) = (
        counter_sum(metrics, refused_series),
        every_label_sum(metrics, held_series),
    );
    let mut input = child
        .0
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    let (mut calm, mut flood) = (Phase::default(), Phase::default());
    let mut was_flooding = false;
    let mut table = Vec::new();
    for (i, &flooding) in WINDOWS.iter().enumerate() {
        if flooding != was_flooding {
            writeln!(input, "{}", if flooding { "flood" } else { "pause" })?;
            tokio::time::sleep(if flooding { FLOOD_LEAD } else { FLOOD_DRAIN }).await;
            was_flooding = flooding;
        }
        let (phase, name) = if flooding {
            (&mut flood, format!("flood-{i}"))
        } else {
            (&mut calm, format!("calm-{i}"))
        };
        table.push(
            phase
                .window(op, members, metrics, &name, &forger_cpu)
                .await?,
        );
    }
    drop(input);
    let mut line = String::new();
    std::io::BufReader::new(
        child
            .0
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
    )
    .read_line(&mut line)?;
    drop(child);
    let mut words = line.split_whitespace().map(str::parse::<f64>);
    let (sent, lasted) = match (words.next(), words.next()) {
        (Some(Ok(n)), Some(Ok(s))) => (n, s),
        _ => anyhow::bail!("the forger said {line:?}"),
    };
    let checked = counter_sum(metrics, refused_series) - refused0;
    let held = every_label_sum(metrics, held_series) - held0;

    println!(
        "forged-task flood ({kind:?}): the forger (a process of its own) was handed {sent:.0} forgeries in {lasted:.1} s of flooding ({:.0}/s, asked {rate}/s); the {} honest members checked {checked:.0} of them ({:.1} each) and held the forger off {held:.0} times",
        sent / lasted.max(f64::MIN_POSITIVE),
        members.len(),
        checked / members.len() as f64,
    );
    let per_kind = WINDOWS.len() / 2 * TASKS_PER_WINDOW;
    println!(
        "honest delivery, median of {per_kind} tasks each: publisher to last member {:.3} s calm, {:.3} s under the flood ({:+.0} %), in windows of {TASKS_PER_WINDOW} tasks, calm and flood interleaved; publish to applied by all (with the wait for the publisher's inbox, read every second) {:.2} and {:.2} s; the honest members used {:.2} and {:.2} cores and denied {:.1} and {:.1} connections a second, the forger used {:.2} and {:.2} cores (at the lowest priority)",
        calm.spread(),
        flood.spread(),
        (flood.spread() / calm.spread() - 1.0) * 100.0,
        calm.all(),
        flood.all(),
        calm.cores(),
        flood.cores(),
        calm.denied / calm.secs,
        flood.denied / flood.secs,
        calm.forger_cores(),
        flood.forger_cores(),
    );
    println!(
        "  window    spread    honest CPU  copies not looked at: not admitted, held off; connections denied"
    );
    for line in table {
        println!("{line}");
    }
    Ok(())
}
