//! The report of a fleet run: a directory with the figures as JSON and CSV
//! and the plots as PNG, and a summary table for the terminal.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;

use super::{RunResult, Sample, Scenario, TaskOutcome};

/// Share of live hosts that counts as converged or attached "all" (one
/// host in a thousand may be mid-join at any instant under churn).
pub const NEARLY_ALL: f64 = 0.999;

/// Quantiles of a sorted list of seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Quantiles {
    pub count: usize,
    pub p50: f32,
    pub p99: f32,
    pub p999: f32,
    pub max: f32,
}

impl Quantiles {
    /// `sorted` must be sorted.
    pub fn of(sorted: &[f32]) -> Self {
        let at = |q: f64| {
            if sorted.is_empty() {
                return 0.0;
            }
            let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
            sorted[i]
        };
        Self {
            count: sorted.len(),
            p50: at(0.5),
            p99: at(0.99),
            p999: at(0.999),
            max: sorted.last().copied().unwrap_or(0.0),
        }
    }
}

/// The headline figures of a run (summary.json).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub seed: u64,
    pub hosts: u64,
    pub cells: usize,
    pub shards: usize,
    pub virtual_s: u64,
    pub wall_s: f64,
    /// Virtual host-seconds simulated per wall-clock second.
    pub host_seconds_per_s: f64,
    pub peak_rss_bytes: u64,
    pub peak_rss_per_host_bytes: u64,
    pub trace_hash: String,
    /// Percent of live hosts converged and attached, and of cells agreeing, at the end.
    pub final_converged_pct: f64,
    pub final_attached_pct: f64,
    pub final_cells_agreeing_pct: f64,
    /// Percent of live hosts shipping straight to a sink (their cell has
    /// had no aggregator for a while), at the end and at most.
    pub final_direct_pct: f64,
    pub max_direct_pct: f64,
    /// Live hosts not attached at the end (exact, where a percentage
    /// would round a few hosts of a million away).
    pub final_unattached_hosts: u64,
    /// First sample from which at least 99.9 % of live hosts stayed
    /// converged (attached) to the end; None if never.
    pub converged_from_s: Option<u64>,
    pub attached_from_s: Option<u64>,
    /// Membership bytes each live host sent per second, over the run.
    pub control_bytes_per_host_s: f64,
    /// The same over the second half of the run only (past the start).
    pub steady_control_bytes_per_host_s: f64,
    pub crashes: u64,
    /// Crash to each observer's down notice, and to the first one.
    pub detection_by_observer_s: Quantiles,
    pub detection_first_s: Quantiles,
    /// Crash to the last observer's notice, per crashed host.
    pub detection_last_s: Quantiles,
    /// Down notices about a host alive in that life (under a partition,
    /// each side's notices about the other count here too).
    pub false_positives: u64,
    /// The scenario's task, if it has one.
    pub task: Option<TaskOutcome>,
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// From which sample on `ok` held to the end.
fn holds_from(samples: &[Sample], ok: impl Fn(&Sample) -> bool) -> Option<u64> {
    let mut from = None;
    for s in samples {
        match (ok(s), from) {
            (true, None) => from = Some(s.at_s),
            (false, _) => from = None,
            _ => {}
        }
    }
    from
}

impl Summary {
    /// The figures of `result`.
    pub fn new(
        scenario: &Scenario,
        result: &RunResult,
        shards: usize,
        wall_s: f64,
        peak_rss_bytes: u64,
    ) -> Self {
        let last = result.samples.last().copied().unwrap_or_default();
        let nearly = |part: u64, whole: u64| whole > 0 && part as f64 >= whole as f64 * NEARLY_ALL;
        let rate = |from_s: u64| {
            let (mut host_seconds, mut bytes, mut prev) = (0.0, 0u64, 0);
            for s in &result.samples {
                if s.at_s > from_s {
                    host_seconds += s.hosts_alive as f64 * (s.at_s - prev) as f64;
                    bytes += s.bytes_sent;
                }
                prev = s.at_s;
            }
            if host_seconds > 0.0 {
                bytes as f64 / host_seconds
            } else {
                0.0
            }
        };
        Self {
            scenario: scenario.name.clone(),
            seed: scenario.seed,
            hosts: result.hosts,
            cells: result.cells,
            shards,
            virtual_s: scenario.duration_s,
            wall_s,
            host_seconds_per_s: result.hosts as f64 * scenario.duration_s as f64 / wall_s.max(1e-9),
            peak_rss_bytes,
            peak_rss_per_host_bytes: peak_rss_bytes / result.hosts.max(1),
            trace_hash: format!("{:016x}", result.trace_hash),
            final_converged_pct: pct(last.hosts_converged, last.hosts_alive),
            final_attached_pct: pct(last.hosts_attached, last.hosts_alive),
            final_cells_agreeing_pct: pct(last.cells_agreeing, last.cells),
            final_direct_pct: pct(last.hosts_direct, last.hosts_alive),
            final_unattached_hosts: last.hosts_alive.saturating_sub(last.hosts_attached),
            max_direct_pct: result
                .samples
                .iter()
                .map(|s| pct(s.hosts_direct, s.hosts_alive))
                .fold(0.0, f64::max),
            converged_from_s: holds_from(&result.samples, |s| {
                nearly(s.hosts_converged, s.hosts_alive)
            }),
            attached_from_s: holds_from(&result.samples, |s| {
                nearly(s.hosts_attached, s.hosts_alive)
            }),
            control_bytes_per_host_s: rate(0),
            steady_control_bytes_per_host_s: rate(scenario.duration_s / 2),
            crashes: result.detections.crashes,
            detection_by_observer_s: Quantiles::of(&result.detections.by_observer),
            detection_first_s: Quantiles::of(&result.detections.first),
            detection_last_s: Quantiles::of(&result.detections.last),
            false_positives: result.detections.false_positives,
            task: result.task.clone(),
        }
    }

    /// The summary as a table for people.
    pub fn table(&self) -> String {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
        t.set_header(["figure", "value"]);
        let secs = |s: Option<u64>| s.map_or("never".to_string(), |s| format!("{s} s"));
        let q = |q: &Quantiles| {
            if q.count == 0 {
                "none".to_string()
            } else {
                format!(
                    "p50 {:.2} s, p99 {:.2} s, p99.9 {:.2} s, max {:.2} s ({})",
                    q.p50, q.p99, q.p999, q.max, q.count
                )
            }
        };
        let rows = [
            (
                "scenario",
                format!("{} (seed {})", self.scenario, self.seed),
            ),
            ("hosts / cells", format!("{} / {}", self.hosts, self.cells)),
            (
                "virtual / wall",
                format!(
                    "{} s / {:.1} s on {} shards",
                    self.virtual_s, self.wall_s, self.shards
                ),
            ),
            (
                "host-seconds per second",
                format!("{:.0}", self.host_seconds_per_s),
            ),
            (
                "peak memory",
                format!(
                    "{:.2} GiB ({:.1} KB per host)",
                    self.peak_rss_bytes as f64 / (1u64 << 30) as f64,
                    self.peak_rss_per_host_bytes as f64 / 1e3
                ),
            ),
            (
                "converged at end",
                format!("{:.2} % of live hosts", self.final_converged_pct),
            ),
            (
                "attached at end",
                format!(
                    "{:.2} % of live hosts ({} not attached)",
                    self.final_attached_pct, self.final_unattached_hosts
                ),
            ),
            (
                "straight to a sink",
                format!(
                    "{:.2} % of live hosts at end ({:.2} % at most)",
                    self.final_direct_pct, self.max_direct_pct
                ),
            ),
            (
                "cells agreeing at end",
                format!("{:.2} %", self.final_cells_agreeing_pct),
            ),
            ("99.9 % converged from", secs(self.converged_from_s)),
            ("99.9 % attached from", secs(self.attached_from_s)),
            (
                "control bytes per host",
                format!(
                    "{:.0} B/s ({:.0} B/s in the second half)",
                    self.control_bytes_per_host_s, self.steady_control_bytes_per_host_s
                ),
            ),
            ("crashes", self.crashes.to_string()),
            ("detection, first notice", q(&self.detection_first_s)),
            ("detection, each observer", q(&self.detection_by_observer_s)),
            ("detection, whole cell", q(&self.detection_last_s)),
            (
                "down notices of live hosts",
                self.false_positives.to_string(),
            ),
            ("trace hash", self.trace_hash.clone()),
        ];
        for (k, v) in rows {
            t.add_row([k.to_string(), v]);
        }
        if let Some(task) = &self.task {
            let all = |held: usize, of: usize, max: f32| {
                if held == of {
                    format!("{max:.2} s")
                } else {
                    format!("never ({held} of {of})")
                }
            };
            let rows = [
                (
                    "task: network",
                    format!(
                        "{:.0} ms links, {:.1} % loss, anti-entropy every {} s",
                        task.latency_ms,
                        task.loss * 100.0,
                        task.sync_interval_s
                    ),
                ),
                (
                    "task: held by online hosts",
                    format!(
                        "p50 {:.2} s, p99 {:.2} s, p99.9 {:.2} s, 100 % {}",
                        task.delivery.p50,
                        task.delivery.p99,
                        task.delivery.p999,
                        all(task.online_held, task.online_hosts, task.delivery.max)
                    ),
                ),
                (
                    "task: hosts away, after return",
                    format!(
                        "{} hosts: p50 {:.2} s, 100 % {}",
                        task.away_hosts,
                        task.away_catch_up.p50,
                        all(task.away_held, task.away_hosts, task.away_catch_up.max)
                    ),
                ),
                (
                    "task: bytes per host",
                    format!(
                        "{:.0} B for the task ({:.1} copies received), {:.1} B/s steady",
                        task.bytes_per_host, task.copies_per_host, task.steady_bytes_per_host_s
                    ),
                ),
                ("task: trace hash", task.trace_hash.clone()),
            ];
            for (k, v) in rows {
                t.add_row([k.to_string(), v]);
            }
            if let Some(r) = &task.rollout {
                for (k, v) in r.summary_rows() {
                    t.add_row([k.to_string(), v]);
                }
            }
        }
        t.to_string()
    }
}

/// Writes the report of a run into `dir`: summary.json, timeline.csv,
/// detection_cdf.csv (and task_delivery_cdf.csv with a task) and, when a
/// font can be found, convergence.png, control_bytes.png,
/// detection_cdf.png and task_delivery_cdf.png. Returns the files written.
pub fn write(dir: &Path, summary: &Summary, result: &RunResult) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let mut put = |name: &str, body: String| -> anyhow::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    put(
        "summary.json",
        serde_json::to_string_pretty(summary)? + "\n",
    )?;
    let mut csv = String::from(
        "t_s,hosts_alive,converged_pct,attached_pct,cells_agreeing_pct,control_bytes_per_host_s,direct_to_sink_pct\n",
    );
    let mut prev = 0;
    for s in &result.samples {
        let dt = (s.at_s - prev).max(1);
        prev = s.at_s;
        let _ = writeln!(
            csv,
            "{},{},{:.3},{:.3},{:.3},{:.1},{:.3}",
            s.at_s,
            s.hosts_alive,
            pct(s.hosts_converged, s.hosts_alive),
            pct(s.hosts_attached, s.hosts_alive),
            pct(s.cells_agreeing, s.cells),
            s.bytes_sent as f64 / (s.hosts_alive.max(1) * dt) as f64,
            pct(s.hosts_direct, s.hosts_alive)
        );
    }
    put("timeline.csv", csv)?;
    let mut cdf = String::from("delay_s,first_notice_fraction,observer_fraction\n");
    for (delay, first, each) in cdf_points(&result.detections.first, &result.detections.by_observer)
    {
        let _ = writeln!(cdf, "{delay:.3},{first:.5},{each:.5}");
    }
    put("detection_cdf.csv", cdf)?;
    if let Some(task) = &result.task {
        let mut csv = String::from("delay_s,held_fraction_of_online\n");
        for (delay, held) in delivery_points(task) {
            let _ = writeln!(csv, "{delay:.3},{held:.6}");
        }
        put("task_delivery_cdf.csv", csv)?;
    }
    match font() {
        Some(()) => {
            let path = dir.join("convergence.png");
            plot_convergence(&path, &summary.scenario, &result.samples)?;
            written.push(path);
            let path = dir.join("control_bytes.png");
            plot_bytes(&path, &summary.scenario, &result.samples)?;
            written.push(path);
            if let Some(task) = &result.task {
                let path = dir.join("task_delivery_cdf.png");
                plot_delivery(&path, &summary.scenario, task)?;
                written.push(path);
            }
            if !result.detections.first.is_empty() {
                let path = dir.join("detection_cdf.png");
                plot_cdf(&path, &summary.scenario, &result.detections.first, &result.detections.by_observer)?;
                written.push(path);
            }
        }
        None => tracing::warn!(
            "no font for plots (install fonts-dejavu-core or set STARLING_SIM_FONT): PNG plots skipped"
        ),
    }
    Ok(written)
}

/// The least-squares slope of log10(y) against log10(x): 0 is flat,
/// 1 grows in proportion.
pub fn log_log_slope(points: &[(f64, f64)]) -> Option<f64> {
    let logs: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| p.0 > 0.0 && p.1 > 0.0)
        .map(|p| (p.0.log10(), p.1.log10()))
        .collect();
    if logs.len() < 2 {
        return None;
    }
    let n = logs.len() as f64;
    let mx = logs.iter().map(|p| p.0).sum::<f64>() / n;
    let my = logs.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = logs.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = logs.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// Writes a sweep over fleet sizes into `dir`: scale.csv and, when a font
/// can be found, scale.png (steady control bytes per host against hosts,
/// log-log). Returns the files written and the slope.
pub fn write_sweep(
    dir: &Path,
    name: &str,
    runs: &[Summary],
) -> anyhow::Result<(Vec<PathBuf>, Option<f64>)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut csv = String::from(
        "hosts,cells,steady_control_bytes_per_host_s,control_bytes_per_host_s,wall_s,host_seconds_per_s\n",
    );
    for r in runs {
        let _ = writeln!(
            csv,
            "{},{},{:.2},{:.2},{:.1},{:.0}",
            r.hosts,
            r.cells,
            r.steady_control_bytes_per_host_s,
            r.control_bytes_per_host_s,
            r.wall_s,
            r.host_seconds_per_s
        );
    }
    let path = dir.join("scale.csv");
    std::fs::write(&path, csv).with_context(|| format!("writing {}", path.display()))?;
    let mut written = vec![path];
    let points: Vec<(f64, f64)> = runs
        .iter()
        .map(|r| (r.hosts as f64, r.steady_control_bytes_per_host_s))
        .collect();
    let slope = log_log_slope(&points);
    if font().is_some() && points.len() >= 2 {
        let path = dir.join("scale.png");
        plot_scale(&path, name, &points, slope)?;
        written.push(path);
    }
    Ok((written, slope))
}

fn plot_scale(
    path: &Path,
    name: &str,
    points: &[(f64, f64)],
    slope: Option<f64>,
) -> anyhow::Result<()> {
    let err = |e: &dyn std::fmt::Debug| anyhow::anyhow!("plotting {}: {e:?}", path.display());
    let x = (
        points.iter().map(|p| p.0).fold(f64::MAX, f64::min) / 2.0,
        points.iter().map(|p| p.0).fold(1.0, f64::max) * 2.0,
    );
    let y_top = points.iter().map(|p| p.1).fold(1.0, f64::max).max(1000.0) * 2.0;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let caption = match slope {
        Some(s) => format!("{name}: membership bytes per host against fleet size (slope {s:.3})"),
        None => format!("{name}: membership bytes per host against fleet size"),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x.0..x.1).log_scale(), (1.0..y_top).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("hosts")
        .y_desc("bytes per host per second")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            [(x.0, 1000.0), (x.1, 1000.0)],
            RED.stroke_width(1),
        ))
        .map_err(|e| err(&e))?
        .label("goal: under 1 KB/s")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(1)));
    chart
        .draw_series(LineSeries::new(
            points.iter().copied(),
            BLUE.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label("steady, measured")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .draw_series(points.iter().map(|p| Circle::new(*p, 4, BLUE.filled())))
        .map_err(|e| err(&e))?;
    draw_legend(&mut chart).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// The legend of a chart's labelled series, at its lower right.
fn draw_legend<'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
) -> Result<(), DrawingAreaErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
}

/// Up to 400 points of the task's delivery CDF over the online hosts.
fn delivery_points(task: &TaskOutcome) -> Vec<(f32, f64)> {
    let sorted = &task.delivery_s;
    let Some(&max) = sorted.last() else {
        return Vec::new();
    };
    let online = task.online_hosts.max(1) as f64;
    (0..=400)
        .map(|i| {
            let x = max * i as f32 / 400.0;
            (x, sorted.partition_point(|&v| v <= x) as f64 / online)
        })
        .collect()
}

/// Up to 200 points of both CDFs, at the same delays.
fn cdf_points(first: &[f32], each: &[f32]) -> Vec<(f32, f64, f64)> {
    let max = first
        .last()
        .copied()
        .unwrap_or(0.0)
        .max(each.last().copied().unwrap_or(0.0));
    if first.is_empty() && each.is_empty() {
        return Vec::new();
    }
    let frac = |sorted: &[f32], x: f32| {
        if sorted.is_empty() {
            0.0
        } else {
            sorted.partition_point(|&v| v <= x) as f64 / sorted.len() as f64
        }
    };
    (0..=200)
        .map(|i| {
            let x = max * i as f32 / 200.0;
            (x, frac(first, x), frac(each, x))
        })
        .collect()
}

/// Registers a sans-serif font for the plots, once; None if none found.
fn font() -> Option<()> {
    static FONT: std::sync::OnceLock<Option<()>> = std::sync::OnceLock::new();
    *FONT.get_or_init(|| {
        let candidates = [
            std::env::var("STARLING_SIM_FONT").unwrap_or_default(),
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into(),
            "/usr/share/fonts/TTF/DejaVuSans.ttf".into(),
        ];
        let bytes = candidates
            .iter()
            .filter(|p| !p.is_empty())
            .find_map(|p| std::fs::read(p).ok())?;
        // Registered once for the process, so leaking it is the lifetime it needs.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).ok()
    })
}

const SIZE: (u32, u32) = (900, 500);

/// A line of a plot: its label, colour and points.
type Line = (&'static str, RGBColor, Vec<(f64, f64)>);

/// Draws `lines` on one chart from 0 to the largest x and y, with a legend
/// when there is more than one line.
fn line_chart(
    path: &Path,
    caption: &str,
    axes: (&str, &str),
    lines: &[Line],
) -> anyhow::Result<()> {
    let err = |e: &dyn std::fmt::Debug| anyhow::anyhow!("plotting {}: {e:?}", path.display());
    let points = || lines.iter().flat_map(|l| l.2.iter());
    let x_end = points().map(|p| p.0).fold(1e-3, f64::max);
    let y_end = points().map(|p| p.1).fold(1e-3, f64::max) * 1.05;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_end, 0f64..y_end)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(axes.0)
        .y_desc(axes.1)
        .draw()
        .map_err(|e| err(&e))?;
    for (label, color, points) in lines {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    if lines.len() > 1 {
        draw_legend(&mut chart).map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn plot_convergence(path: &Path, name: &str, samples: &[Sample]) -> anyhow::Result<()> {
    let alive_max = samples
        .iter()
        .map(|s| s.hosts_alive)
        .max()
        .unwrap_or(1)
        .max(1);
    let line = |f: &dyn Fn(&Sample) -> f64| -> Vec<(f64, f64)> {
        samples.iter().map(|s| (s.at_s as f64, f(s))).collect()
    };
    line_chart(
        path,
        &format!("{name}: convergence"),
        ("virtual seconds", "percent"),
        &[
            (
                "hosts alive",
                BLACK,
                line(&|s| pct(s.hosts_alive, alive_max)),
            ),
            (
                "converged",
                BLUE,
                line(&|s| pct(s.hosts_converged, s.hosts_alive)),
            ),
            (
                "attached",
                GREEN,
                line(&|s| pct(s.hosts_attached, s.hosts_alive)),
            ),
            (
                "cells agreeing",
                RED,
                line(&|s| pct(s.cells_agreeing, s.cells)),
            ),
        ],
    )
}

fn plot_bytes(path: &Path, name: &str, samples: &[Sample]) -> anyhow::Result<()> {
    let mut prev = 0;
    let points = samples
        .iter()
        .map(|s| {
            let dt = (s.at_s - prev).max(1);
            prev = s.at_s;
            (
                s.at_s as f64,
                s.bytes_sent as f64 / (s.hosts_alive.max(1) * dt) as f64,
            )
        })
        .collect();
    line_chart(
        path,
        &format!("{name}: membership bytes sent per live host"),
        ("virtual seconds", "bytes per second"),
        &[("sent", BLUE, points)],
    )
}

fn plot_cdf(path: &Path, name: &str, first: &[f32], each: &[f32]) -> anyhow::Result<()> {
    let points = cdf_points(first, each);
    line_chart(
        path,
        &format!("{name}: crash to down notice"),
        ("seconds after the crash", "fraction"),
        &[
            (
                "first notice in the cell",
                BLUE,
                points.iter().map(|p| (f64::from(p.0), p.1)).collect(),
            ),
            (
                "each observer",
                RED,
                points.iter().map(|p| (f64::from(p.0), p.2)).collect(),
            ),
        ],
    )
}

fn plot_delivery(path: &Path, name: &str, task: &TaskOutcome) -> anyhow::Result<()> {
    let q = &task.delivery;
    line_chart(
        path,
        &format!(
            "{name}: task held (p50 {:.2} s, p99 {:.2} s, p99.9 {:.2} s)",
            q.p50, q.p99, q.p999
        ),
        ("seconds after publication", "fraction of online hosts"),
        &[(
            "held",
            BLUE,
            delivery_points(task)
                .into_iter()
                .map(|(x, y)| (f64::from(x), y))
                .collect(),
        )],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_log_slope_is_the_growth_exponent() {
        let flat = [(1e3, 50.0), (1e4, 50.0), (1e5, 50.0)];
        assert!(log_log_slope(&flat).unwrap().abs() < 1e-9);
        let linear = [(1e3, 1.0), (1e4, 10.0), (1e5, 100.0)];
        assert!((log_log_slope(&linear).unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(log_log_slope(&[(1e3, 5.0)]), None);
    }

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let v: Vec<f32> = (1..=1000).map(|i| i as f32).collect();
        let q = Quantiles::of(&v);
        assert_eq!((q.p50, q.p99, q.p999, q.max), (500.0, 990.0, 999.0, 1000.0));
        assert_eq!(Quantiles::of(&[]).count, 0);
    }

    #[test]
    fn a_figure_holds_from_its_last_recovery() {
        let s = |at_s, ok: bool| Sample {
            at_s,
            hosts_alive: 10,
            hosts_converged: if ok { 10 } else { 5 },
            ..Sample::default()
        };
        let samples = [s(10, true), s(20, false), s(30, true), s(40, true)];
        assert_eq!(
            holds_from(&samples, |s| s.hosts_converged == s.hosts_alive),
            Some(30)
        );
        assert_eq!(
            holds_from(&samples[..2], |s| s.hosts_converged == s.hosts_alive),
            None
        );
    }
}
