//! `starling-sensor-bench`: what the sensor costs the host (run as root).
//!
//! * Kernel cost: the sensor loads with the default watch list, the
//!   kernel's BPF statistics are switched on, and a mixed workload runs
//!   (execs, loopback TCP connects and accepts, opens of watched and
//!   unwatched files, unlinks) while a reader drains the ring buffer. Each
//!   program's average run time is its total run time over its run count,
//!   as the kernel measured them.
//! * Exec storm: execs per second of `/bin/true` from one thread of a
//!   child process pinned to one CPU, without the sensor and with it
//!   (draining), in rounds whose order alternates; the slowdown is the
//!   median of the rounds' ratios. The loop runs in a child because the
//!   process that loaded the sensor holds its ~115 descriptors, and each
//!   exec from it would pay for closing them, which no workload on a host
//!   does.
//!
//! Figures only; nothing asserts on speed.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use starling_bpf::{DropReason, Sensor, SensorConfig, SensorFilters, KIND_NAMES};

mod sustained;

/// The sensor's kernel cost per program and its exec-storm slowdown.
#[derive(Debug, Parser)]
struct Args {
    /// Seconds of mixed workload for the per-program kernel cost.
    #[arg(long, default_value_t = 10)]
    mixed_secs: u64,
    /// Seconds of each exec-storm phase (one without and one with the
    /// sensor per round).
    #[arg(long, default_value_t = 5)]
    storm_secs: u64,
    /// Exec-storm rounds; the order of the two phases alternates.
    #[arg(long, default_value_t = 6)]
    storm_rounds: u32,
    /// Seconds of the sustained-rate window.
    #[arg(long, default_value_t = 60)]
    sustained_secs: u64,
    /// Events per second the sustained load aims at.
    #[arg(long, default_value_t = 100_000.0)]
    rate: f64,
    /// Ring buffer size of the in-process sensor (kernel and storm phases).
    #[arg(long, default_value_t = SensorConfig::default().ring_buffer_bytes)]
    ring_buffer_bytes: u32,
    /// Kinds the storm's sensor does not report ("all" for every kind):
    /// with every kind off, the storm measures what attaching the hooks
    /// costs by itself.
    #[arg(long, value_delimiter = ',')]
    storm_disabled_kinds: Vec<String>,
    /// Internal: run the storm's exec loop for this many seconds and print
    /// its rate (the storm runs it as a child process).
    #[arg(long, hide = true)]
    exec_loop_secs: Option<u64>,
    /// Which measurements to run.
    #[arg(long, value_delimiter = ',', default_values_t = [Phase::Kernel, Phase::Storm, Phase::Sustained])]
    phases: Vec<Phase>,
}

/// One of the bench's measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    /// Per-program kernel cost under a mixed workload.
    Kernel,
    /// Exec-storm slowdown.
    Storm,
    /// Sustained rate through a real node and sink.
    Sustained,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        let v = self.to_possible_value().ok_or(std::fmt::Error)?;
        f.write_str(v.get_name())
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(secs) = args.exec_loop_secs {
        pin_to_first_cpu()?;
        println!("{}", exec_rate(Duration::from_secs(secs))?);
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    if args.phases.contains(&Phase::Kernel) {
        kernel_cost(
            &rt,
            Duration::from_secs(args.mixed_secs),
            args.ring_buffer_bytes,
        )?;
    }
    if args.phases.contains(&Phase::Storm) {
        exec_storm(
            &rt,
            Duration::from_secs(args.storm_secs),
            args.storm_rounds.max(1),
            args.ring_buffer_bytes,
            &args.storm_disabled_kinds,
        )?;
    }
    if args.phases.contains(&Phase::Sustained) {
        sustained::run(&sustained::Plan {
            rate: args.rate,
            duration: Duration::from_secs(args.sustained_secs),
        })?;
    }
    Ok(())
}

/// The sensor as the node loads it: the default watch list, the bench's
/// own activity filtered (its reader), its workload children reported.
fn load_sensor(
    rt: &tokio::runtime::Runtime,
    ring_buffer_bytes: u32,
    disabled_kinds: &[String],
) -> anyhow::Result<Sensor> {
    let watched = ["/etc/shadow", "/etc/sudoers", "/etc/cron", "/root/.ssh/"];
    let disabled_kinds = if disabled_kinds.iter().any(|k| k == "all") {
        KIND_NAMES
            .iter()
            .map(|(_, name)| name.to_string())
            .collect()
    } else {
        disabled_kinds.to_vec()
    };
    let config = SensorConfig {
        filters: SensorFilters {
            watched_paths: watched.iter().map(|s| s.to_string()).collect(),
            disabled_kinds,
            ..Default::default()
        },
        ring_buffer_bytes,
    };
    let _guard = rt.enter();
    Sensor::load(&config).context("loading the sensor (run as root)")
}

/// Drains the ring buffer until `stop`, counting records.
fn spawn_reader(
    rt: &tokio::runtime::Runtime,
    mut sensor: Sensor,
    stop: Arc<AtomicBool>,
    read: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Sensor> {
    rt.spawn(async move {
        let mut batch = Vec::with_capacity(4096);
        while !stop.load(Ordering::Relaxed) {
            batch.clear();
            let _ = tokio::time::timeout(Duration::from_millis(100), sensor.read(4096, &mut batch))
                .await;
            read.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        sensor
    })
}

fn kernel_cost(
    rt: &tokio::runtime::Runtime,
    duration: Duration,
    ring_buffer_bytes: u32,
) -> anyhow::Result<()> {
    let sensor = load_sensor(rt, ring_buffer_bytes, &[])?;
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling the kernel's BPF run-time statistics")?;
    let before = sensor.program_stats()?;
    let stop = Arc::new(AtomicBool::new(false));
    let read = Arc::new(AtomicU64::new(0));
    let reader = spawn_reader(rt, sensor, stop.clone(), read.clone());

    let dir = tempfile::tempdir()?;
    let unwatched = dir.path().join("plain");
    std::fs::write(&unwatched, b"x")?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let server = listener.local_addr()?;
    let end = Instant::now() + duration;
    let accepting = Arc::new(AtomicBool::new(true));
    let acceptor = {
        let accepting = accepting.clone();
        std::thread::spawn(move || {
            listener.set_nonblocking(true).ok();
            while accepting.load(Ordering::Relaxed) {
                if listener.accept().is_err() {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        })
    };
    // UDP: datagrams to a local receiver (the send program's cheap path),
    // and DNS queries to port 53, where nothing answers (its full path).
    let udp_receiver = UdpSocket::bind("127.0.0.1:0")?;
    let udp = UdpSocket::bind("127.0.0.1:0")?;
    let dns_query: &[u8] =
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05bench\x08starling\x04test\x00\x00\x01\x00\x01";
    let mut counts = [0u64; 6];
    while Instant::now() < end {
        Command::new("/bin/true").arg("bench").status()?;
        counts[0] += 1;
        for _ in 0..10 {
            drop(TcpStream::connect(server)?);
            counts[1] += 1;
        }
        for _ in 0..50 {
            drop(std::fs::File::open(&unwatched)?);
            let _ = std::fs::File::open("/etc/shadow");
            counts[2] += 2;
        }
        let f = dir.path().join("gone");
        std::fs::write(&f, b"x")?;
        std::fs::remove_file(&f)?;
        counts[3] += 1;
        for _ in 0..10 {
            udp.send_to(b"datagram", udp_receiver.local_addr()?)?;
            counts[4] += 1;
        }
        udp.send_to(dns_query, "127.0.0.1:53")?;
        counts[5] += 1;
    }
    accepting.store(false, Ordering::Relaxed);
    let _ = acceptor.join();
    stop.store(true, Ordering::Relaxed);
    let sensor = rt.block_on(reader)?;
    let after = sensor.program_stats()?;
    println!(
        "kernel cost over {:.0} s of mixed workload: {} execs, {} connects, {} opens, {} unlinks, {} UDP sends, {} DNS queries; {} records read",
        duration.as_secs_f64(),
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4],
        counts[5],
        read.load(Ordering::Relaxed)
    );
    println!("{:<28} {:>10} {:>12}", "PROGRAM", "RUNS", "AVG NS/RUN");
    for (a, b) in after.iter().zip(&before) {
        let runs = a.run_count - b.run_count;
        let ns = (a.run_time - b.run_time).as_nanos() as f64;
        let avg = if runs > 0 { ns / runs as f64 } else { 0.0 };
        println!("{:<28} {:>10} {:>12.0}", a.program, runs, avg);
    }
    let drops = sensor.drop_counts()?;
    println!(
        "ring buffer losses: {}",
        drops.total(DropReason::RingBufferFull)
    );
    Ok(())
}

/// Execs of /bin/true per second from one thread for `duration`.
fn exec_rate(duration: Duration) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        Command::new("/bin/true").status()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Keeps this process and the children it starts on the first CPU it may
/// use. Unpinned, the loop and its children spread over the vCPUs
/// differently from one round to the next, which moved a round's rate by
/// ±5 % on this VM.
fn pin_to_first_cpu() -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is plain data; the calls get and set this
    // process's own affinity mask through valid pointers of its size.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(0, size, &mut allowed) != 0 {
            return Err(std::io::Error::last_os_error()).context("reading the CPU affinity");
        }
        let first = (0..libc::CPU_SETSIZE as usize)
            .find(|&cpu| libc::CPU_ISSET(cpu, &allowed))
            .context("no CPU in this process's affinity mask")?;
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(first, &mut one);
        if libc::sched_setaffinity(0, size, &one) != 0 {
            return Err(std::io::Error::last_os_error()).context("pinning the exec loop");
        }
    }
    Ok(())
}

/// [`exec_rate`] in a child process of this binary: the workload is not
/// the process that loaded the sensor.
fn exec_rate_in_child(duration: Duration) -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let out = Command::new(exe)
        .arg("--exec-loop-secs")
        .arg(duration.as_secs().to_string())
        .output()
        .context("running the exec loop")?;
    anyhow::ensure!(
        out.status.success(),
        "the exec loop failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("reading the exec loop's rate from {text:?}"))
}

/// Exec rate without and with the sensor (and its reader), in rounds of
/// one phase each. This VM's speed drifts by several percent over tens
/// of seconds, so the phases alternate in order (without first, then with
/// first) and the slowdown is the median of the rounds' ratios.
fn exec_storm(
    rt: &tokio::runtime::Runtime,
    duration: Duration,
    rounds: u32,
    ring_buffer_bytes: u32,
    disabled_kinds: &[String],
) -> anyhow::Result<()> {
    println!(
        "exec storm: {rounds} rounds of {} s without and {} s with the sensor, one thread on one CPU",
        duration.as_secs(),
        duration.as_secs()
    );
    let mut ratios = Vec::new();
    let (mut read_total, mut lost_total) = (0, 0);
    for round in 0..rounds {
        let with_first = round % 2 == 1;
        let mut without = 0.0;
        if !with_first {
            without = exec_rate_in_child(duration)?;
        }
        let sensor = load_sensor(rt, ring_buffer_bytes, disabled_kinds)?;
        let stop = Arc::new(AtomicBool::new(false));
        let read = Arc::new(AtomicU64::new(0));
        let reader = spawn_reader(rt, sensor, stop.clone(), read.clone());
        let with = exec_rate_in_child(duration)?;
        stop.store(true, Ordering::Relaxed);
        let sensor = rt.block_on(reader)?;
        lost_total += sensor.drop_counts()?.total(DropReason::RingBufferFull);
        read_total += read.load(Ordering::Relaxed);
        drop(sensor);
        if with_first {
            without = exec_rate_in_child(duration)?;
        }
        let slowdown = (1.0 - with / without) * 100.0;
        println!(
            "  round {}: {without:.0}/s without, {with:.0}/s with: {slowdown:+.1} %",
            round + 1
        );
        ratios.push(slowdown);
    }
    ratios.sort_by(f64::total_cmp);
    let median = if ratios.len() % 2 == 1 {
        ratios[ratios.len() / 2]
    } else {
        (ratios[ratios.len() / 2 - 1] + ratios[ratios.len() / 2]) / 2.0
    };
    println!(
        "  slowdown: median {median:.1} % fewer execs per second (rounds from {:.1} to {:.1} %; {read_total} records read, {lost_total} lost)",
        ratios[0],
        ratios[ratios.len() - 1]
    );
    Ok(())
}
