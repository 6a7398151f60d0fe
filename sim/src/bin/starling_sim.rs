//! `starling-sim`: runs a fleet scenario (sim/scenarios/*.toml) in virtual
//! time with the production membership and election of every host, and
//! writes a report directory with the figures (JSON, CSV) and plots (PNG).
//! docs/simulator.md says what each figure means and what it costs.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use starling_sim::fleet::{self, report, Progress, Scenario};
use starling_sim::process::ProcessUsage;

// Simulated members allocate and free small buffers for every message
// (decoded identities, encoded datagrams): glibc's malloc and free took
// about a fifth of a run (docs/simulator.md, "What it costs").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(about = "Simulate a Starling fleet in virtual time and report on it")]
struct Args {
    /// The scenario file (TOML; sim/scenarios/ has the shipped ones).
    scenario: PathBuf,
    /// Where the report goes (default: reports/<scenario name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Threads that share the cells; the result does not depend on it.
    #[arg(long, default_value_t = default_shards())]
    shards: usize,
    /// Hosts held in memory at once (about 60 KB each): cells run in
    /// groups of this many hosts, each group through the whole run; the
    /// result does not depend on it.
    #[arg(long, default_value_t = fleet::DEFAULT_HOSTS_IN_MEMORY)]
    hosts_in_memory: u64,
    /// Overrides the scenario's host count.
    #[arg(long)]
    hosts: Option<u64>,
    /// Overrides the scenario's virtual duration, in seconds.
    #[arg(long)]
    duration: Option<u64>,
    /// Overrides the scenario's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Prints the summary as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Runs the scenario at each of these fleet sizes instead (e.g.
    /// 1000,10000,100000): a report per size under the output directory,
    /// and scale.csv and scale.png with the steady membership bytes per
    /// host against fleet size and their log-log slope.
    #[arg(long, value_delimiter = ',')]
    sweep: Vec<u64>,
}

impl Args {
    fn run_options(&self) -> fleet::RunOptions {
        fleet::RunOptions {
            shards: self.shards,
            hosts_in_memory: self.hosts_in_memory,
        }
    }
}

fn default_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut scenario = Scenario::load(&args.scenario)?;
    if let Some(h) = args.hosts {
        scenario.hosts = h;
    }
    if let Some(d) = args.duration {
        scenario.duration_s = d;
    }
    if let Some(s) = args.seed {
        scenario.seed = s;
    }
    // Overrides go through the same checks as the file.
    let scenario = checked(&scenario, &args.scenario)?;
    anyhow::ensure!(args.shards >= 1, "--shards must be at least 1");
    anyhow::ensure!(
        args.hosts_in_memory >= 1,
        "--hosts-in-memory must be at least 1"
    );
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("reports").join(&scenario.name));
    if args.sweep.is_empty() {
        let summary = run_one(&scenario, &args, &out)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        return Ok(());
    }
    let mut runs = Vec::new();
    for &hosts in &args.sweep {
        let mut sized = scenario.clone();
        sized.hosts = hosts;
        let sized = checked(&sized, &args.scenario)?;
        runs.push(run_one(&sized, &args, &out.join(hosts.to_string()))?);
    }
    let (written, slope) = report::write_sweep(&out, &scenario.name, &runs)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(());
    }
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header([
        "hosts",
        "cells",
        "steady B/s per host",
        "wall",
        "host-s per s",
    ]);
    for r in &runs {
        table.add_row([
            r.hosts.to_string(),
            r.cells.to_string(),
            format!("{:.1}", r.steady_control_bytes_per_host_s),
            format!("{:.1} s", r.wall_s),
            format!("{:.0}", r.host_seconds_per_s),
        ]);
    }
    println!("{table}");
    match slope {
        Some(s) => println!("log-log slope of bytes per host against hosts: {s:.3}"),
        None => println!("log-log slope: needs two sizes with traffic"),
    }
    for path in written {
        println!("  {}", path.display());
    }
    Ok(())
}

/// The scenario with the command line's overrides, through the file's checks.
fn checked(scenario: &Scenario, path: &std::path::Path) -> anyhow::Result<Scenario> {
    Scenario::parse(&toml_of(scenario, path)?)
        .context("the scenario with the command line's overrides")
}

/// Runs one scenario with a progress line, writes its report into `out`
/// and, unless JSON was asked for, prints its table.
fn run_one(
    scenario: &Scenario,
    args: &Args,
    out: &std::path::Path,
) -> anyhow::Result<report::Summary> {
    let progress = Progress::default();
    let bar = indicatif::ProgressBar::new(scenario.hosts.saturating_mul(scenario.duration_s));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {percent}% of host-seconds, {elapsed} wall, eta {eta}",
        )
        .context("progress template")?,
    );
    bar.set_message(format!("{}: {} hosts", scenario.name, scenario.hosts));
    let started = Instant::now();
    let result = std::thread::scope(|scope| {
        let run = scope.spawn(|| fleet::run(scenario, args.run_options(), &progress));
        let mut spreading = false;
        while !run.is_finished() {
            bar.set_position(progress.done_host_s.load(Ordering::Relaxed));
            if !spreading && progress.task_running.load(Ordering::Relaxed) {
                spreading = true;
                bar.set_message(format!(
                    "{}: {} hosts, membership done, spreading the task",
                    scenario.name, scenario.hosts
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        run.join()
    })
    .map_err(|_| anyhow::anyhow!("the simulation panicked"))??;
    bar.finish_and_clear();
    let wall = started.elapsed().as_secs_f64();
    let peak = ProcessUsage::read(std::process::id())
        .map(|u| u.peak_rss_bytes)
        .unwrap_or(0);
    let summary = report::Summary::new(scenario, &result, args.shards, wall, peak);
    let written = report::write(out, &summary, &result)?;
    if !args.json {
        println!("{}", summary.table());
        println!("report: {}", out.display());
        for path in written {
            println!("  {}", path.display());
        }
    }
    Ok(summary)
}

/// The scenario as TOML again, for checking overrides the same way.
fn toml_of(scenario: &Scenario, path: &std::path::Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    doc.insert(
        "hosts".into(),
        toml::Value::Integer(scenario.hosts.min(i64::MAX as u64) as i64),
    );
    doc.insert(
        "duration_s".into(),
        toml::Value::Integer(scenario.duration_s.min(i64::MAX as u64) as i64),
    );
    doc.insert("seed".into(), toml::Value::Integer(scenario.seed as i64));
    Ok(toml::to_string(&doc)?)
}
