//! `starling-mesh-bench`: many real mesh members (libp2p over loopback
//! QUIC, enrolment, SWIM, election, gossip) in one process. Prints the
//! time until every member knows its cell's aggregators, the control
//! traffic per member in steady state, and the time until a killed
//! aggregator is noticed and replaced; with `--tasks`, also how long a
//! signed task takes to be applied by every member, until the fleet view
//! counts it, and until a member that was away has caught up; with
//! `--forgeries N`, how much N forged tasks a second from a compromised
//! member slow honest delivery. Figures only; nothing asserts.

use std::time::{Duration, Instant};

use clap::Parser;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use starling_mesh::election::ElectionParams;
use starling_mesh::enrol::Enrolment;
use starling_mesh::identity::{FleetCa, Role, TlsFiles};
use starling_mesh::swarm::{CellSettings, Mesh, MeshCommand, MeshConfig, MeshView};
use starling_sim::process::ProcessUsage;
use starling_sim::tasks::Operator;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

#[derive(Debug, Parser)]
struct Args {
    /// Members to run.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Members per cell (zones are assigned round-robin).
    #[arg(long, default_value_t = 50)]
    cell_size: usize,
    /// Seconds of steady state to measure traffic over.
    #[arg(long, default_value_t = 20)]
    window: u64,
    /// Seconds to wait after convergence before measuring: the start-up
    /// storm (handshakes, suspicions, DHT lookups) outlasts convergence.
    #[arg(long, default_value_t = 60)]
    settle: u64,
    /// Members started per second (0: all at once). A fleet rarely starts
    /// in one instant, and here all members share two cores.
    #[arg(long, default_value_t = 0.0)]
    ramp: f64,
    /// The first SEEDS members are every later member's bootstrap peers,
    /// as a fleet's configuration lists a few seed hosts.
    #[arg(long, default_value_t = 1)]
    seeds: usize,
    /// Members started one by one into the running mesh after the
    /// traffic window, as hosts boot into a fleet that is already up:
    /// each one's time to attach is measured.
    #[arg(long, default_value_t = 5)]
    joiners: usize,
    /// Seconds to wait for convergence before giving up and naming the
    /// members still behind.
    #[arg(long, default_value_t = 300)]
    limit: u64,
    /// Run the task plane on every member and measure it.
    #[arg(long)]
    tasks: bool,
    /// With --tasks: a compromised member then floods this many forged
    /// tasks a second, and honest delivery is timed with and without it.
    #[arg(long, default_value_t = 0)]
    forgeries: u32,
    /// What the forgeries are.
    #[arg(long, value_enum, default_value_t = forgeries::Forgery::UnknownKey)]
    forgery: forgeries::Forgery,
    /// Run as the forger of `--forgeries` (started by the bench itself).
    #[arg(long, hide = true)]
    forger: Option<std::path::PathBuf>,
}

mod forgeries;
mod kill;
mod tasks;

/// How many members have each local-health score, 0 to 8: a busy
/// process stretches suspicion (mesh/src/health.rs).
fn health_scores(members: &[Member]) -> [usize; 9] {
    let mut health = [0usize; 9];
    for m in members {
        health[usize::from(m.view.borrow().stats.local_health).min(8)] += 1;
    }
    health
}

/// One member running in this process.
struct Member {
    host: String,
    zone: String,
    view: watch::Receiver<MeshView>,
    task: JoinHandle<()>,
}

fn enrol(ca: &FleetCa, dir: &std::path::Path, role: Role, name: &str) -> anyhow::Result<Enrolment> {
    let (cert, key) = ca.issue(role, name, &[], &[], 30)?.write(dir, name)?;
    Ok(Enrolment::load(&TlsFiles {
        ca_cert: dir.join("ca.pem"),
        cert,
        key,
    })?)
}

fn start(
    enrolment: Enrolment,
    bootstrap: Vec<starling_mesh::Multiaddr>,
    cell: Option<(&str, u32)>,
    stop: &watch::Receiver<bool>,
    operator: Option<&Operator>,
) -> anyhow::Result<(
    watch::Receiver<MeshView>,
    JoinHandle<()>,
    mpsc::Sender<MeshCommand>,
)> {
    let tasks = operator.map(|o| o.settings(&enrolment.identity().name, Duration::from_secs(10)));
    let config = MeshConfig {
        tasks,
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse()?],
        bootstrap,
        cell: cell.map(|(zone, size)| CellSettings {
            zone: Some(zone.to_owned()),
            expected_size: size,
            eligible: true,
            capacity: 1000,
            relay: "127.0.0.1:1".into(),
            election: ElectionParams::default(),
            agent_version: "bench".into(),
            tags: Vec::new(),
        }),
        sink_ingress: cell.is_none().then(|| "127.0.0.1:7400".to_owned()),
        ..Default::default()
    };
    let span = tracing::info_span!("member", host = %enrolment.identity().name);
    let (mesh, view, commands) = Mesh::start(enrolment, config)?;
    Ok((
        view,
        tokio::spawn(tracing::Instrument::instrument(
            mesh.run(stop.clone()),
            span,
        )),
        commands,
    ))
}

/// Whether every member of each zone sees its whole zone and the same
/// aggregators as the others.
fn converged(members: &[Member], sizes: &std::collections::BTreeMap<String, usize>) -> bool {
    let mut agreed: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    members.iter().all(|m| {
        let v = m.view.borrow();
        let Some(c) = &v.cell else { return false };
        if c.members.len() != sizes[&m.zone] || c.aggregators.is_empty() || v.sinks.is_empty() {
            return false;
        }
        let first = agreed
            .entry(m.zone.as_str())
            .or_insert_with(|| c.aggregators.clone());
        *first == c.aggregators
    })
}

/// The mesh counters summed over all members, one `name{labels} value`
/// per series, for a line of progress: connections opened, refused,
/// pruned, and membership datagrams dropped show where the work goes.
fn counters(metrics: &PrometheusHandle) -> String {
    metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("starling_mesh_") && !l.starts_with("starling_mesh_swim_bytes"))
        .map(|l| l.trim_start_matches("starling_mesh_").replace("_total", ""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The value of one rendered metric series (0 when absent).
fn counter_sum(metrics: &PrometheusHandle, series: &str) -> f64 {
    metrics
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix(series))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

/// One line on how far the members are: how many see their whole cell,
/// how many know aggregators and a sink, and the smallest view.
fn progress(members: &[Member], sizes: &std::collections::BTreeMap<String, usize>) -> String {
    let (mut whole, mut with_aggs, mut with_sink, mut smallest) = (0, 0, 0, usize::MAX);
    let (mut dropped, mut fewest_peers, mut refused, mut alone) = (0, usize::MAX, 0, 0);
    // Each member's view as a share of its cell, to tell a few members
    // left behind from views that are all partial.
    let mut shares = Vec::with_capacity(members.len());
    // Cell-mates a member is connected to and admitted but does not count
    // in its view: links its membership has not used.
    let zone_of: std::collections::HashMap<&str, &str> = members
        .iter()
        .map(|m| (m.host.as_str(), m.zone.as_str()))
        .collect();
    let mut unused_links = Vec::with_capacity(members.len());
    for m in members {
        let v = m.view.borrow();
        dropped += v.stats.swim_dropped;
        refused += v.refused;
        fewest_peers = fewest_peers.min(v.admitted.len());
        alone += usize::from(v.admitted.is_empty());
        let known = v.cell.as_ref().map_or(0, |c| c.members.len());
        whole += usize::from(known == sizes[&m.zone]);
        smallest = smallest.min(known);
        shares.push(known as f64 / sizes[&m.zone].max(1) as f64);
        let seen: std::collections::HashSet<&str> = v
            .cell
            .as_ref()
            .map(|c| c.members.iter().map(|x| x.host.as_str()).collect())
            .unwrap_or_default();
        unused_links.push(
            v.admitted
                .values()
                .filter(|i| zone_of.get(i.name.as_str()) == Some(&m.zone.as_str()))
                .filter(|i| !seen.contains(i.name.as_str()))
                .count(),
        );
        with_aggs += usize::from(v.cell.as_ref().is_some_and(|c| !c.aggregators.is_empty()));
        with_sink += usize::from(!v.sinks.is_empty());
    }
    // When only a few are behind, who they are and whom they miss: the
    // tail of a start is usually one member declared down by a few.
    let mut stragglers = Vec::new();
    if whole + 3 >= members.len() {
        for m in members {
            let v = m.view.borrow();
            let seen: std::collections::HashSet<&str> = v
                .cell
                .iter()
                .flat_map(|c| c.members.iter().map(|x| x.host.as_str()))
                .collect();
            if seen.len() == sizes[&m.zone] {
                continue;
            }
            let missing: Vec<&str> = members
                .iter()
                .filter(|o| o.zone == m.zone && !seen.contains(o.host.as_str()))
                .map(|o| o.host.as_str())
                .take(3)
                .collect();
            stragglers.push(format!("{} misses {}", m.host, missing.join(" ")));
        }
    }
    let stragglers = if stragglers.is_empty() {
        String::new()
    } else {
        format!("; behind: {}", stragglers.join(", "))
    };
    shares.sort_by(f64::total_cmp);
    unused_links.sort_unstable();
    let unused = unused_links
        .get(unused_links.len() / 2)
        .copied()
        .unwrap_or(0);
    let share = |q: f64| {
        let i = ((shares.len() as f64 - 1.0) * q).round() as usize;
        shares.get(i).map_or(0.0, |s| s * 100.0)
    };
    format!(
        "{whole}/{n} see their whole cell (smallest view {smallest}; view as % of the cell: p10 {p10:.0}, median {p50:.0}; admitted cell-mates missing from the view, median {unused}), {with_aggs} know aggregators, {with_sink} know a sink; fewest admitted peers {fewest_peers} ({alone} with none), membership datagrams dropped {dropped}, peers refused {refused}{stragglers}",
        n = members.len(),
        p10 = share(0.1),
        p50 = share(0.5),
    )
}

/// The cells' fragments: per cell, the sizes of the groups of members
/// linked by "sees" (A's view holds B), largest first. A cell of one
/// group whose members see only part of it is still forming; several
/// groups are fragments that do not know of each other.
fn fragments(members: &[Member]) -> String {
    use std::collections::BTreeMap;
    let index: std::collections::HashMap<&str, usize> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (m.host.as_str(), i))
        .collect();
    let mut parent: Vec<usize> = (0..members.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for (i, m) in members.iter().enumerate() {
        let v = m.view.borrow();
        for seen in v.cell.iter().flat_map(|c| c.members.iter()) {
            if let Some(&j) = index.get(seen.host.as_str()) {
                let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                parent[a] = b;
            }
        }
    }
    let mut groups: BTreeMap<&str, BTreeMap<usize, usize>> = BTreeMap::new();
    for (i, m) in members.iter().enumerate() {
        let r = root(&mut parent, i);
        *groups
            .entry(m.zone.as_str())
            .or_default()
            .entry(r)
            .or_default() += 1;
    }
    groups
        .iter()
        .map(|(zone, g)| {
            let mut sizes: Vec<usize> = g.values().copied().collect();
            sizes.sort_unstable_by(|a, b| b.cmp(a));
            format!("{zone} {sizes:?}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// CPU time (user and system, all threads) this process has used.
fn process_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Starts each remaining enrolment as a new member of the running mesh,
/// one at a time, and returns how long each took until it saw its whole
/// cell, the same aggregators as an older member of that cell, and a sink.
async fn join_one_by_one(
    enrolments: impl Iterator<Item = (String, Enrolment)>,
    members: &mut Vec<Member>,
    sizes: &mut std::collections::BTreeMap<String, usize>,
    seeds: &[starling_mesh::Multiaddr],
    cell_size: usize,
    stop: &watch::Receiver<bool>,
    operator: Option<&Operator>,
) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::new();
    for (j, (host, enrolment)) in enrolments.enumerate() {
        let zone = format!("cell-{}", j % sizes.len().max(1));
        *sizes.entry(zone.clone()).or_insert(0) += 1;
        let elder = members
            .iter()
            .position(|m| m.zone == zone)
            .ok_or_else(|| anyhow::anyhow!("no member in {zone}"))?;
        let at = Instant::now();
        let (view, task, _) = start(
            enrolment,
            seeds.to_vec(),
            Some((&zone, cell_size as u32)),
            stop,
            operator,
        )?;
        loop {
            let attached = {
                let v = view.borrow();
                let elder_aggs = members[elder]
                    .view
                    .borrow()
                    .cell
                    .as_ref()
                    .map(|c| c.aggregators.clone())
                    .unwrap_or_default();
                v.cell.as_ref().is_some_and(|c| {
                    c.members.len() == sizes[&zone]
                        && !c.aggregators.is_empty()
                        && c.aggregators == elder_aggs
                }) && !v.sinks.is_empty()
            };
            if attached {
                break;
            }
            if at.elapsed() > Duration::from_secs(120) {
                anyhow::bail!("{host} did not attach within 120 s of its start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        times.push(at.elapsed());
        members.push(Member {
            host,
            zone,
            view,
            task,
        });
    }
    Ok(times)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Members' logs, each line under its member's span; off unless
    // RUST_LOG asks (e.g. RUST_LOG=starling_mesh=info).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Some(job) = &args.forger {
        return forgeries::run_forger(job).await;
    }
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let dir = tempfile::tempdir()?;
    let ca = FleetCa::generate("bench", 30)?;
    ca.pem().write(dir.path(), "ca")?;
    let (_stop_tx, stop) = watch::channel(false);
    let operator = args
        .tasks
        .then(|| Operator::new(dir.path(), "bench"))
        .transpose()?;
    let cells = args.nodes.div_ceil(args.cell_size.max(1));
    let enrolments: Vec<(String, Enrolment)> = (0..args.nodes + args.joiners)
        .map(|i| {
            let name = format!("b{i:04}");
            enrol(&ca, dir.path(), Role::Node, &name).map(|e| (name, e))
        })
        .collect::<anyhow::Result<_>>()?;
    println!(
        "{} members in {cells} cells of about {}",
        args.nodes, args.cell_size
    );

    let started = Instant::now();
    let mut members: Vec<Member> = Vec::new();
    let mut seed_addrs: Vec<starling_mesh::Multiaddr> = Vec::new();
    let mut sizes = std::collections::BTreeMap::new();
    let mut enrolments = enrolments.into_iter();
    for (i, (host, enrolment)) in enrolments.by_ref().take(args.nodes).enumerate() {
        let zone = format!("cell-{}", i % cells);
        *sizes.entry(zone.clone()).or_insert(0) += 1;
        if args.ramp > 0.0 {
            tokio::time::sleep_until(
                (started + Duration::from_secs_f64(i as f64 / args.ramp)).into(),
            )
            .await;
        }
        let (mut view, task, _) = start(
            enrolment,
            seed_addrs.clone(),
            Some((&zone, args.cell_size as u32)),
            &stop,
            operator.as_ref(),
        )?;
        if i < args.seeds.max(1) {
            seed_addrs.push(
                view.wait_for(|v| !v.listen_addrs.is_empty())
                    .await?
                    .listen_addrs[0]
                    .clone(),
            );
        }
        members.push(Member {
            host,
            zone,
            view,
            task,
        });
    }
    let sink = enrol(&ca, dir.path(), Role::Sink, "bench-sink")?;
    // With the task plane the sink holds the fleet's view (every cell's summary).
    let (_sink_view, _sink_task, _) =
        start(sink, seed_addrs.clone(), None, &stop, operator.as_ref())?;
    let all_started = started.elapsed();
    eprintln!(
        "  {:>5.1} s  all {} members started",
        all_started.as_secs_f64(),
        args.nodes
    );

    let deadline = Instant::now() + Duration::from_secs(args.limit);
    let mut next_report = Instant::now();
    while !converged(&members, &sizes) {
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(5);
            eprintln!(
                "  {:>5.1} s  {}",
                started.elapsed().as_secs_f64(),
                progress(&members, &sizes)
            );
            eprintln!("          {}", counters(&metrics));
            eprintln!("          fragments per cell: {}", fragments(&members));
        }
        if Instant::now() > deadline {
            let behind: Vec<String> = members
                .iter()
                .filter_map(|m| {
                    let v = m.view.borrow();
                    let seen = v.cell.as_ref().map_or(0, |c| c.members.len());
                    (seen != sizes[&m.zone]).then(|| {
                        format!(
                            "{} ({}: sees {seen}, {} admitted peers, {} in its DHT table, {} sinks)",
                            m.host,
                            m.zone,
                            v.admitted.len(),
                            v.dht_peers,
                            v.sinks.len()
                        )
                    })
                })
                .collect();
            let shown = behind
                .iter()
                .take(8)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ");
            anyhow::bail!(
                "no convergence within {} s ({} members with partial views: {shown})",
                args.limit,
                behind.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let converge = started.elapsed();
    println!("started all members in {:.1} s; every member knew its cell and its aggregators, and a sink, {:.1} s after the first start ({:.1} s after the last)", all_started.as_secs_f64(), converge.as_secs_f64(), (converge - all_started).as_secs_f64());
    let opened = counter_sum(
        &metrics,
        "starling_mesh_connections_opened_total{side=\"dialer\"}",
    );
    println!(
        "until then the process used {:.1} CPU-s ({:.1} per member) and opened {opened:.0} connections ({:.1} per member)",
        process_cpu().as_secs_f64(),
        process_cpu().as_secs_f64() / args.nodes as f64,
        opened / args.nodes as f64,
    );

    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let bytes = |ms: &[Member]| -> (u64, u64) {
        ms.iter().fold((0, 0), |(s, g), m| {
            let st = &m.view.borrow().stats;
            (s + st.swim_bytes_in, g + st.gossip_bytes_in)
        })
    };
    let (s0, g0) = bytes(&members);
    let sync_series = "starling_task_sync_bytes_total{direction=\"in\"}";
    let t0 = counter_sum(&metrics, sync_series);
    let cpu0 = process_cpu();
    tokio::time::sleep(Duration::from_secs(args.window)).await;
    let (s1, g1) = bytes(&members);
    let t1 = counter_sum(&metrics, sync_series);
    let cores = (process_cpu() - cpu0).as_secs_f64() / args.window as f64;
    let per = |a: u64, b: u64| (b - a) as f64 / members.len() as f64 / args.window as f64;
    let peers = members
        .iter()
        .map(|m| m.view.borrow().admitted.len())
        .sum::<usize>() as f64
        / members.len() as f64;
    let rss_mb = ProcessUsage::read(std::process::id()).map_or(0, |u| u.rss_bytes) as f64 / 1e6;
    println!(
        "steady state ({} s after convergence), received per member: membership {:.0} B/s, gossip {:.0} B/s (payload bytes, before libp2p/QUIC framing); {peers:.1} connected peers per member; the process used {cores:.2} cores ({:.1} ms of CPU per member-second) and {rss_mb:.0} MB resident ({:.1} MB per member)",
        args.settle,
        per(s0, s1),
        per(g0, g1),
        cores * 1000.0 / members.len() as f64,
        rss_mb / members.len() as f64,
    );

    eprintln!(
        "members by local-health score 0..8 at the end of the window: {:?}",
        health_scores(&members)
    );
    if let Some(op) = &operator {
        println!(
            "task plane in steady state: anti-entropy {:.1} B/s received per member (summaries, answers); cell summaries go to the sink, not to members",
            (t1 - t0) / members.len() as f64 / args.window as f64
        );
        tasks::tasks_phase(
            op,
            &mut members,
            &metrics,
            &ca,
            dir.path(),
            &seed_addrs,
            args.cell_size,
            &stop,
        )
        .await?;
        if args.forgeries > 0 {
            forgeries::flood_phase(
                op,
                &members,
                &metrics,
                &ca,
                dir.path(),
                &seed_addrs,
                args.cell_size,
                args.forgeries,
                args.forgery,
            )
            .await?;
        }
    }

    let joined = join_one_by_one(
        enrolments,
        &mut members,
        &mut sizes,
        &seed_addrs,
        args.cell_size,
        &stop,
        operator.as_ref(),
    )
    .await?;
    if !joined.is_empty() {
        println!(
            "{} members started one by one into the running mesh: each knew its whole cell, its aggregators and a sink after {} s",
            joined.len(),
            joined
                .iter()
                .map(|t| format!("{:.1}", t.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    // Kill (abort, no goodbye) an aggregator of the first cell; with the
    // task plane, again in another cell once local health is back to 0.
    let zone = members[0].zone.clone();
    if operator.is_none() {
        kill::kill_aggregator(&mut members, &zone, &metrics, "after the window").await?;
    } else {
        kill::kill_aggregator(&mut members, &zone, &metrics, "right after the tasks").await?;
        kill::settle(&members, Duration::from_secs(120)).await;
        let other = members
            .iter()
            .map(|m| m.zone.clone())
            .find(|z| *z != zone)
            .unwrap_or(zone);
        kill::kill_aggregator(&mut members, &other, &metrics, "once local health is 0").await?;
    }
    Ok(())
}
