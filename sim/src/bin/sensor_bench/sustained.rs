//! Sustained rate: a real `starling-node` (sensor, decode, enrichment,
//! RocksDB spool, QUIC uplink) shipping to a real `starling-sink` (local
//! store) while this process generates a steady mixed load. The node's
//! own counters say what it observed, lost and shipped; its CPU time and
//! RSS come from /proc.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use starling_sim::process::{scrape_sum, ProcessUsage};
use starling_sim::{wait_for, Fleet, NodeProcess, SinkProcess};

/// Execs per second in the mix (each is a fork, an exec and an exit).
const EXECS_PER_SEC: f64 = 100.0;
/// Loopback connects per second in the mix (each a connect and an accept).
const CONNECTS_PER_SEC: f64 = 1000.0;
/// Load before the measured window, so caches and the spool are warm.
const WARM_UP: Duration = Duration::from_secs(5);

/// Seconds between progress lines in the measured window.
const REPORT_EVERY: u64 = 10;

/// What the bench asks of the load.
pub struct Plan {
    /// Events per second in all (opens fill what the mix leaves).
    pub rate: f64,
    /// Length of the measured window.
    pub duration: Duration,
}

/// The node's counters at one moment.
#[derive(Debug, Clone, Copy)]
struct Counters {
    observed: f64,
    ring_lost: f64,
    rate_limited: f64,
    spooled: f64,
    acked: f64,
}

impl Counters {
    fn read(node: &NodeProcess) -> anyhow::Result<Self> {
        let port = node.metrics_port;
        let get = |prefix: &str| {
            scrape_sum(port, prefix).with_context(|| format!("reading {prefix} from the node"))
        };
        Ok(Self {
            observed: get("starling_node_events_observed_total")?,
            ring_lost: get("starling_node_events_dropped_total{reason=\"ring_buffer_full\"")?,
            rate_limited: get("starling_node_events_dropped_total{reason=\"rate_limited\"")?,
            spooled: get("starling_node_events_spooled_total")?,
            acked: get("starling_node_events_acked_total")?,
        })
    }
}

/// Threads generating the mixed load until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    opens: Arc<AtomicU64>,
    execs: Arc<AtomicU64>,
    connects: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
    listener_addr: std::net::SocketAddr,
}

/// Calls `act` `rate` times a second until `stop`, catching up when it
/// falls behind (so the achieved rate is what `act` allows), counting
/// into `count`.
fn paced(rate: f64, stop: &AtomicBool, count: &AtomicU64, mut act: impl FnMut()) {
    let start = Instant::now();
    let mut done = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        if done >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let n = (due - done).min(256);
        for _ in 0..n {
            act();
        }
        done += n;
        count.fetch_add(n, Ordering::Relaxed);
    }
}

impl Load {
    fn start(watched_file: PathBuf, open_rate: f64) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let opens = Arc::new(AtomicU64::new(0));
        let execs = Arc::new(AtomicU64::new(0));
        let connects = Arc::new(AtomicU64::new(0));
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let listener_addr = listener.local_addr()?;
        let mut threads = Vec::new();
        {
            let (stop, opens) = (stop.clone(), opens.clone());
            threads.push(std::thread::spawn(move || {
                paced(open_rate, &stop, &opens, || {
                    drop(std::fs::File::open(&watched_file));
                })
            }));
        }
        {
            let (stop, execs) = (stop.clone(), execs.clone());
            threads.push(std::thread::spawn(move || {
                paced(EXECS_PER_SEC, &stop, &execs, || {
                    let _ = Command::new("/bin/true").arg("sustained").status();
                })
            }));
        }
        {
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Dropped at once: the peer sees the close.
                    let _ = listener.accept();
                }
            }));
        }
        {
            let (stop, connects) = (stop.clone(), connects.clone());
            threads.push(std::thread::spawn(move || {
                paced(CONNECTS_PER_SEC, &stop, &connects, || {
                    drop(TcpStream::connect(listener_addr));
                })
            }));
        }
        Ok(Self {
            stop,
            opens,
            execs,
            connects,
            threads,
            listener_addr,
        })
    }

    fn counts(&self) -> [u64; 3] {
        [&self.opens, &self.execs, &self.connects].map(|c| c.load(Ordering::Relaxed))
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the acceptor blocked in accept().
        drop(TcpStream::connect(self.listener_addr));
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Runs the sustained-rate measurement and prints its figures.
pub fn run(plan: &Plan) -> anyhow::Result<()> {
    let fleet = Fleet::new()?;
    let watched_dir = fleet.path().join("watched");
    std::fs::create_dir_all(&watched_dir)?;
    let watched_file = watched_dir.join("secret");
    std::fs::write(&watched_file, b"x")?;
    let sink = SinkProcess::start(&fleet, "sustained-sink", None)?;
    let sensor_toml = format!(
        "watch_paths = [\"/etc/shadow\", \"/etc/sudoers\", \"/root/.ssh/\", \"{}/\"]",
        watched_dir.display()
    );
    let node = NodeProcess::start_with_sensor_config(
        &fleet,
        "sustained-host",
        &[(sink.address(), sink.name.clone())],
        &sensor_toml,
    )?;
    let node_pid = node.pid().context("node not running")?;
    let sink_pid = sink.pid().context("sink not running")?;

    let mix_rate = EXECS_PER_SEC * 3.0 + CONNECTS_PER_SEC * 2.0;
    let open_rate = (plan.rate - mix_rate).max(0.0);
    println!(
        "sustained load: {:.0} s measured after {} s warm-up, target {:.0} events/s: {open_rate:.0} opens/s of a watched file, {EXECS_PER_SEC:.0} execs/s, {CONNECTS_PER_SEC:.0} loopback connects/s",
        plan.duration.as_secs_f64(),
        WARM_UP.as_secs(),
        plan.rate
    );
    let load = Load::start(watched_file, open_rate)?;
    std::thread::sleep(WARM_UP);

    let c0 = Counters::read(&node)?;
    let n0 = ProcessUsage::read(node_pid)?;
    let s0 = ProcessUsage::read(sink_pid)?;
    let l0 = load.counts();
    let t0 = Instant::now();
    let mut peak_rss = n0.rss_bytes;
    let mut last = (c0, t0);
    let mut next_report = REPORT_EVERY;
    while t0.elapsed() < plan.duration {
        std::thread::sleep(Duration::from_secs(1));
        let usage = ProcessUsage::read(node_pid)?;
        peak_rss = peak_rss.max(usage.rss_bytes);
        let secs = t0.elapsed().as_secs();
        if secs >= next_report {
            next_report += REPORT_EVERY;
            let c = Counters::read(&node)?;
            let dt = last.1.elapsed().as_secs_f64();
            println!(
                "  {secs:>3} s: {:>8.0} events/s observed, {:>8.0}/s acknowledged, {} lost in the ring, node RSS {:.1} MB",
                (c.observed - last.0.observed) / dt,
                (c.acked - last.0.acked) / dt,
                c.ring_lost - c0.ring_lost,
                mb(usage.rss_bytes)
            );
            last = (c, Instant::now());
        }
    }
    let c1 = Counters::read(&node)?;
    let n1 = ProcessUsage::read(node_pid)?;
    let s1 = ProcessUsage::read(sink_pid)?;
    let l1 = load.counts();
    let secs = t0.elapsed().as_secs_f64();
    load.stop();

    // What was spooled in the window reaches the sink once the load stops.
    let drain_start = Instant::now();
    let drained = wait_for(Duration::from_secs(120), || {
        let c = Counters::read(&node).ok()?;
        (c.acked >= c.spooled).then_some(())
    });
    let drain = drain_start.elapsed();

    let rate = |a: f64, b: f64| (b - a) / secs;
    let observed = c1.observed - c0.observed;
    println!(
        "  load generated: {:.0} opens/s, {:.0} execs/s, {:.0} connects/s",
        (l1[0] - l0[0]) as f64 / secs,
        (l1[1] - l0[1]) as f64 / secs,
        (l1[2] - l0[2]) as f64 / secs
    );
    println!(
        "  node observed {:.0} events/s ({observed:.0} in {secs:.0} s); lost in the ring buffer: {:.0}; rate-limited: {:.0}",
        observed / secs,
        c1.ring_lost - c0.ring_lost,
        c1.rate_limited - c0.rate_limited
    );
    println!(
        "  spooled {:.0}/s, acknowledged by the sink {:.0}/s; backlog {} {:.1} s after the load stopped",
        rate(c0.spooled, c1.spooled),
        rate(c0.acked, c1.acked),
        if drained.is_some() {
            "drained"
        } else {
            "NOT drained"
        },
        drain.as_secs_f64()
    );
    print_usage("node", &n0, &n1, secs, peak_rss);
    print_usage("sink", &s0, &s1, secs, s1.rss_bytes);
    println!(
        "  node data dir: {:.1} MB on disk at the end",
        mb(dir_bytes(node.data_dir()))
    );
    Ok(())
}

fn print_usage(name: &str, a: &ProcessUsage, b: &ProcessUsage, secs: f64, peak: u64) {
    let user = (b.user - a.user) / secs;
    let system = (b.system - a.system) / secs;
    println!(
        "  {name} CPU: {:.2} cores (user {user:.2}, system {system:.2}); RSS {:.1} MB at the end, {:.1} MB peak in the window ({:.1} MB peak since start)",
        user + system,
        mb(b.rss_bytes),
        mb(peak),
        mb(b.peak_rss_bytes)
    );
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
