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
use starling_proto::v1::{RolloutPlan, RolloutWave};
use starling_task::rollout::{default_plan, Plan, WHOLE};

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
