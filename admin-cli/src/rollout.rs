//! Rollout plans as an operator writes and reads them
//! (`starlingctl task create --rollout`, docs/rollouts.md): a plan is a
//! comma-separated list of waves, each `SHARE[:SOAK][/TOLERATED]`, where
//! SHARE is the cumulative share of the targeted hosts (`1%`, `0.05%`) or
//! `canary` (one host per cell), SOAK how long each host must stay healthy
//! (`2m`, default 5m) and TOLERATED the share of the wave's hosts that may
//! fail (default 2%). `default` is the plan `starling_task::rollout`
//! recommends. The host checks every plan again; this only turns words
//! into the message and back.

use anyhow::{bail, Context};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use starling_mesh::swarm::{RolloutLine, RolloutWaveLine, TaskPlaneStatus};
use starling_proto::v1::{RolloutPlan, RolloutWave};
use starling_task::rollout::{default_plan, Control, Plan, WHOLE};

use crate::sanitize;
use crate::tasks::progress_bar;

/// A wave's soak when the plan does not say.
const DEFAULT_SOAK_SECS: u32 = 300;
/// A wave's tolerated failures when the plan does not say (basis points).
const DEFAULT_TOLERATED_BP: u32 = 200;

/// `spec` as a plan, checked as hosts check it.
pub fn parse_plan(spec: &str) -> anyhow::Result<RolloutPlan> {
    let plan = if spec.trim() == "default" {
        default_plan()
    } else {
        RolloutPlan {
            waves: spec
                .split(',')
                .map(|w| parse_wave(w.trim()).with_context(|| format!("wave {w:?}")))
                .collect::<anyhow::Result<_>>()?,
        }
    };
    Plan::from_proto(&plan).map_err(|e| anyhow::anyhow!("{spec:?}: {e}"))?;
    Ok(plan)
}

fn parse_wave(w: &str) -> anyhow::Result<RolloutWave> {
    let (rest, tolerated) = match w.split_once('/') {
        Some((rest, t)) => (rest, basis_points(t)?),
        None => (w, DEFAULT_TOLERATED_BP),
    };
    let (share, soak) = match rest.split_once(':') {
        Some((share, soak)) => {
            let d = humantime::parse_duration(soak)
                .with_context(|| format!("{soak:?}: not a soak time (2m, 1h)"))?;
            let secs = u32::try_from(d.as_secs()).context("soak too long")?;
            (share, secs)
        }
        None => (rest, DEFAULT_SOAK_SECS),
    };
    let (share_basis_points, cell_canary) = if share == "canary" {
        (0, true)
    } else {
        (basis_points(share)?, false)
    };
    Ok(RolloutWave {
        share_basis_points,
        cell_canary,
        soak_secs: soak,
        max_failed_basis_points: tolerated,
    })
}

/// `2%`, `0.05%` as basis points of the whole.
fn basis_points(s: &str) -> anyhow::Result<u32> {
    let Some(number) = s.strip_suffix('%') else {
        bail!("{s:?}: a share ends in % (1%, 0.05%)");
    };
    let p: f64 = number
        .parse()
        .with_context(|| format!("{s:?}: not a share"))?;
    if !(0.0..=100.0).contains(&p) {
        bail!("{s:?}: 0% to 100%");
    }
    let bp = (p * 100.0).round() as u32;
    if (f64::from(bp) - p * 100.0).abs() > 1e-6 {
        bail!("{s:?}: finer than 0.01%");
    }
    Ok(bp.min(WHOLE))
}

/// A plan as its spec (what `parse_plan` reads back).
pub fn describe_plan(plan: &RolloutPlan) -> String {
    plan.waves
        .iter()
        .map(|w| {
            let share = if w.cell_canary {
                "canary".to_owned()
            } else {
                percent(w.share_basis_points)
            };
            let soak =
                humantime::format_duration(std::time::Duration::from_secs(u64::from(w.soak_secs)));
            format!("{share}:{soak}/{}", percent(w.max_failed_basis_points))
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn percent(bp: u32) -> String {
    let p = f64::from(bp) / 100.0;
    format!("{p}%")
}

/// The rollouts a node sees (`starlingctl rollout show`): each one's
/// state (running, paused, halted and why), then wave by wave its plan,
/// whether the sinks opened it, its hosts, those soaked and failed; the
/// hosts failed by name where the cells named them.
pub fn render_rollouts(status: &TaskPlaneStatus, id: Option<&str>) -> String {
    let mut out = String::new();
    let shown: Vec<(&String, &RolloutLine)> = status
        .rollouts
        .iter()
        .filter(|(t, _)| id.is_none_or(|id| *t == id))
        .collect();
    if shown.is_empty() {
        out.push_str(match id {
            Some(_) => "this node holds no rollout of that task\n",
            None => "no rollout under way\n",
        });
        return out;
    }
    for (task, line) in shown {
        let counts = status.fleet_view.task(task);
        let state = match (&line.halted, line.control) {
            (Some(why), _) => format!("HALTED: {}", sanitize(why)),
            (None, Control::Paused) => "paused by the operators".to_owned(),
            (None, _) => "running".to_owned(),
        };
        out.push_str(&format!(
            "rollout of {}: {}, {} of {} waves open\n",
            sanitize(task),
            state,
            line.open_waves.min(line.waves.len()),
            line.waves.len()
        ));
        let mut table = Table::new();
        table
            .load_preset(UTF8_FULL_CONDENSED)
            .set_header(["WAVE", "PLAN", "OPEN", "HOSTS", "SOAKED", "FAILED"]);
        for (k, w) in line.waves.iter().enumerate() {
            let tally = counts.waves.get(k).copied().unwrap_or_default();
            table.add_row([
                k.to_string(),
                describe_wave(w),
                if k < line.open_waves { "yes" } else { "no" }.to_owned(),
                tally.hosts.to_string(),
                progress_bar(tally.soaked, tally.hosts),
                tally.failed.to_string(),
            ]);
        }
        out.push_str(&format!("{table}\n"));
        let n = |s: &str| counts.counts.get(s).copied().unwrap_or(0);
        out.push_str(&format!(
            "{} waiting, {} soaking, {} applied, {} failed, {} rolled back, {} stopped, {} not answering\n",
            n("waiting"),
            n("soaking"),
            n("applied"),
            n("failed"),
            n("rolled_back"),
            n("stopped"),
            n(starling_task::rollup::NO_ANSWER) + n(starling_task::rollup::NOT_REPORTING),
        ));
        if let Some(failed) = counts.hosts.get("failed") {
            let mut names: Vec<String> = failed.iter().map(|h| sanitize(h)).collect();
            names.sort();
            out.push_str(&format!("failed: {}\n", names.join(" ")));
        }
    }
    out
}

/// The same as JSON: each rollout's line and its counts wave by wave.
pub fn rollouts_json(status: &TaskPlaneStatus, id: Option<&str>) -> serde_json::Value {
    let rollouts: serde_json::Map<String, serde_json::Value> = status
        .rollouts
        .iter()
        .filter(|(t, _)| id.is_none_or(|id| *t == id))
        .map(|(task, line)| {
            let counts = status.fleet_view.task(task);
            (
                task.clone(),
                serde_json::json!({ "rollout": line, "states": counts }),
            )
        })
        .collect();
    serde_json::Value::Object(rollouts)
}

fn describe_wave(w: &RolloutWaveLine) -> String {
    describe_plan(&RolloutPlan {
        waves: vec![RolloutWave {
            share_basis_points: w.share_basis_points,
            cell_canary: w.cell_canary,
            soak_secs: u32::try_from(w.soak_secs).unwrap_or(u32::MAX),
            max_failed_basis_points: w.max_failed_basis_points,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_becomes_a_plan_and_reads_back_the_same() {
        let plan = parse_plan("0.05%:2m, canary:2m, 10%, 100%:10m/5%").expect("valid");
        assert_eq!(plan.waves.len(), 4);
        assert_eq!(plan.waves[0].share_basis_points, 5);
        assert_eq!(plan.waves[0].soak_secs, 120);
        assert!(plan.waves[1].cell_canary);
        assert_eq!(plan.waves[2].soak_secs, DEFAULT_SOAK_SECS);
        assert_eq!(plan.waves[2].max_failed_basis_points, DEFAULT_TOLERATED_BP);
        assert_eq!(plan.waves[3].max_failed_basis_points, 500);
        let spec = describe_plan(&plan);
        assert_eq!(parse_plan(&spec).expect("reads back"), plan, "{spec}");
        assert_eq!(parse_plan("default").expect("default"), default_plan());
    }

    #[test]
    fn a_rollout_is_shown_wave_by_wave_with_its_state() {
        use starling_task::rollout::WaveTally;
        use starling_task::rollup::{CellSummary, TaskCounts};
        let plan = parse_plan("25%:30s,100%:1m/5%").expect("valid");
        let line = RolloutLine {
            waves: (plan.waves.iter())
                .map(|w| RolloutWaveLine {
                    share_basis_points: w.share_basis_points,
                    cell_canary: w.cell_canary,
                    soak_secs: u64::from(w.soak_secs),
                    max_failed_basis_points: w.max_failed_basis_points,
                })
                .collect(),
            open_waves: 1,
            halted: Some("wave 0: 2 of 3 hosts failed".into()),
            control: Control::Running,
        };
        let mut counts = TaskCounts::default();
        counts.counts.insert("failed".into(), 2);
        counts.counts.insert("stopped".into(), 9);
        counts
            .hosts
            .insert("failed".into(), vec!["h2".into(), "h1".into()]);
        counts.waves = vec![
            WaveTally {
                hosts: 3,
                soaked: 1,
                failed: 2,
            },
            WaveTally::default(),
        ];
        let mut status = TaskPlaneStatus::default();
        status.fleet_view.take(CellSummary {
            cell: "c".into(),
            by: "a".into(),
            at_ms: 1,
            members: 12,
            tasks: [("roll".to_string(), counts)].into(),
            hosts: Default::default(),
        });
        status.rollouts.insert("roll".into(), line);
        let out = render_rollouts(&status, Some("roll"));
        assert!(
            out.contains("rollout of roll: HALTED: wave 0: 2 of 3 hosts failed, 1 of 2 waves open"),
            "{out}"
        );
        assert!(
            out.contains("25%:30s/2%") && out.contains("100%:1m/5%"),
            "{out}"
        );
        assert!(out.contains("33% of 3"), "{out}");
        assert!(out.contains("failed: h1 h2"), "{out}");
        assert!(out.contains("9 stopped"), "{out}");
        let json = rollouts_json(&status, None);
        assert_eq!(json["roll"]["rollout"]["open_waves"], 1);
        assert_eq!(json["roll"]["states"]["waves"][0]["failed"], 2);
        assert!(render_rollouts(&status, Some("other")).contains("no rollout of that task"));
    }

    #[test]
    fn specs_hosts_would_refuse_are_refused_here_with_the_reason() {
        for (spec, why) in [
            ("10%", "last wave"),
            ("50%,10%,100%", "cumulative"),
            ("canary", "last wave"),
            ("5", "ends in %"),
            ("150%", "0% to 100%"),
            ("0.001%,100%", "finer"),
            ("10%:soon,100%", "soak time"),
        ] {
            let e = format!("{:#}", parse_plan(spec).expect_err(spec));
            assert!(e.contains(why), "{spec}: {e}");
        }
    }
}
