//! `starling-spread-bench`: how fast a task reaches every host of a
//! simulated fleet, and what it costs, at sizes this machine cannot hold
//! as real members. The hosts run the production task plane and
//! anti-entropy; gossipsub and the links are modelled
//! (sim/src/task_spread.rs, docs/tasks.md "Simulated dissemination").
//!
//! For each fleet size: the steady task-plane bytes per host per second
//! with nothing to spread, then one task published at a random host: the
//! time until 50 %, 99 %, 99.9 % and 100 % of hosts hold it, the bytes per
//! host it cost, and how long a host that was away while it spread takes
//! to catch up once it is back.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use rand::{RngExt, SeedableRng};
use starling_sim::task_spread::{SampleTask, SpreadConfig, TaskSpread, HEARTBEAT, HISTORY_LENGTH};

#[derive(Parser)]
#[command(about = "Task dissemination in a simulated fleet: times, bytes per host")]
struct Args {
    /// Fleet sizes to simulate, one after another.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    hosts: Vec<usize>,
    /// Members per cell.
    #[arg(long, default_value_t = 50)]
    cell_size: usize,
    /// One-way latency of every link, in milliseconds.
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
    /// Share of messages lost (0.01 is 1 %).
    #[arg(long, default_value_t = 0.01)]
    loss: f64,
    /// Anti-entropy period, in seconds.
    #[arg(long, default_value_t = 10)]
    sync_secs: u64,
    /// Virtual seconds of steady state measured before the task.
    #[arg(long, default_value_t = 60)]
    steady_secs: u64,
    /// Seed of the run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (0.0..1.0).contains(&args.loss),
        "--loss is a share: at least 0 and below 1"
    );
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let SampleTask {
        signed_root,
        signed_task: task,
    } = SampleTask::new(epoch)?;
    println!(
        "task: a fleet configuration change, {} bytes signed; {} ms links, {:.1} % loss, \
         anti-entropy every {} s",
        task.len(),
        args.latency_ms,
        args.loss * 100.0,
        args.sync_secs
    );
    for &hosts in &args.hosts {
        run(&args, hosts, &signed_root, &task, epoch)?;
    }
    Ok(())
}

fn run(args: &Args, hosts: usize, root: &[u8], task: &[u8], epoch: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let config = SpreadConfig {
        hosts,
        cell_size: args.cell_size,
        latency: Duration::from_millis(args.latency_ms),
        loss: args.loss,
        sync_interval: Duration::from_secs(args.sync_secs),
        seed: args.seed,
        ..Default::default()
    };
    let mut spread = TaskSpread::new(config, root, epoch)?;
    let built = started.elapsed();
    println!(
        "\n{hosts} hosts in {} cells of {}: built in {:.1} s",
        hosts.div_ceil(args.cell_size),
        args.cell_size,
        built.as_secs_f64()
    );

    let steady = Duration::from_secs(args.steady_secs);
    // Start-up exchanges first, then the steady window.
    spread.run_for(Duration::from_secs(args.sync_secs * 2));
    let before = spread.bytes();
    spread.run_for(steady);
    let after = spread.bytes();
    let steady_rate = (after.total() - before.total()) as f64 / hosts as f64 / steady.as_secs_f64();
    let sync_rate = (after.sync - before.sync) as f64 / steady.as_secs_f64();
    println!(
        "  steady state: {steady_rate:.1} B/s sent per host (anti-entropy summaries and answers)"
    );

    let mut rng = rand::rngs::SmallRng::seed_from_u64(args.seed);
    let publisher = rng.random_range(0..hosts);
    let away = (publisher + hosts / 2) % hosts;
    spread.take_offline(away);
    let before = spread.bytes();
    let published = spread.now();
    let t = spread.publish(publisher, task.to_vec());
    let limit = Duration::from_secs(args.sync_secs * 6);
    let deadline = published + limit;
    while spread.held_by(t) < hosts - 1 && spread.now() < deadline {
        spread.run_for(Duration::from_millis(100));
    }
    let window = spread.now() - published;
    let cost = spread.bytes();
    let share = |s: f64| {
        // Of the hosts online: the one away is measured separately.
        let wanted = s * (hosts - 1) as f64 / hosts as f64;
        spread
            .time_to_share(t, wanted)
            .map_or("never".to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
    };
    println!(
        "  held by 50 % in {}, 99 % in {}, 99.9 % in {}, 100 % of hosts online in {}",
        share(0.5),
        share(0.99),
        share(0.999),
        share(1.0)
    );
    let gossip = (cost.gossip - before.gossip) as f64 / hosts as f64;
    let control = (cost.gossip_control - before.gossip_control) as f64 / hosts as f64;
    let sync_extra = ((cost.sync - before.sync) as f64 - sync_rate * window.as_secs_f64()).max(0.0)
        / hosts as f64;
    let (_, duplicates) = spread.refused_and_duplicates();
    println!(
        "  bytes per host for the task: {:.0} (gossip copies {gossip:.0}, IHAVE/IWANT {control:.0}, \
         anti-entropy beyond steady {sync_extra:.0}); {:.1} gossip copies received per host",
        gossip + control + sync_extra,
        (duplicates as f64 + hosts as f64) / hosts as f64
    );

    // Let gossipsub's message cache run out first (IHAVE would otherwise
    // bring the host level): what is left is anti-entropy, as for a host
    // away for days.
    spread.run_for(HEARTBEAT * (u32::from(HISTORY_LENGTH) + 1));
    spread.bring_online(away);
    let back = spread.now();
    spread.run_for(Duration::from_secs(args.sync_secs * 3));
    match spread.held_at(t, away) {
        Some(at) => println!(
            "  a host away while it spread held it {:.2} s after it came back",
            (at - back).as_secs_f64()
        ),
        None => println!(
            "  a host away while it spread did not hold it {} s after it came back",
            args.sync_secs * 3
        ),
    }
    println!(
        "  wall time {:.1} s, peak resident memory {} MiB",
        started.elapsed().as_secs_f64(),
        peak_rss_mib()
    );
    Ok(())
}

/// This process's peak resident memory (VmHWM), in MiB.
fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}
