//! The task plane's phase of the bench: a signed task handed to one
//! member, timed to every member's application and to the fleet view's
//! count, then a member stopped while three tasks go out and timed to its
//! catch-up after it restarts.

use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use starling_mesh::identity::{FleetCa, Role};
use starling_sim::tasks::Operator;
use tokio::sync::watch;

use super::{counter_sum, enrol, health_scores, start, Member};

/// Publishes a task at one member and times it to every member's
/// application and to the fleet view's count; then stops a member,
/// publishes three tasks, restarts it after gossip's resend window and
/// times its catch-up (anti-entropy).
#[allow(clippy::too_many_arguments)]
pub(super) async fn tasks_phase(
    op: &Operator,
    members: &mut Vec<Member>,
    metrics: &PrometheusHandle,
    ca: &FleetCa,
    dir: &std::path::Path,
    seeds: &[starling_mesh::Multiaddr],
    cell_size: usize,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let applied_series = "starling_tasks_applied_total{kind=\"tags\",result=\"applied\"}";
    // The sink applies tasks too (and counts itself in the fleet's view).
    let hosts = members.len() + 1;
    let n = hosts as f64;
    let base = counter_sum(metrics, applied_series);
    op.publish(&members[0].host, "bench-1", &op.tag_task("bench-1", "b1")?)?;
    let at = Instant::now();
    let (mut p999, mut all) = (None, None);
    let mut fleet_view = None;
    while all.is_none() || fleet_view.is_none() {
        let applied = counter_sum(metrics, applied_series) - base;
        if p999.is_none() && applied >= (n * 0.999).ceil() {
            p999 = Some(at.elapsed());
        }
        if all.is_none() && applied >= n {
            all = Some(at.elapsed());
        }
        if fleet_view.is_none()
            && op.status(&members[0].host).is_some_and(|s| {
                s.fleet_view.task("bench-1").counts.get("applied").copied() == Some(hosts as u32)
            })
        {
            fleet_view = Some(at.elapsed());
        }
        if at.elapsed() > Duration::from_secs(120) {
            anyhow::bail!(
                "task not applied everywhere within 120 s ({applied} of {n}; fleet view: {:?})",
                op.status(&members[0].host)
                    .map(|s| s.fleet_view.task("bench-1"))
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "members by local-health score 0..8 once the fleet view counted the task: {:?}",
        health_scores(members)
    );
    eprintln!(
        "task counters: {}",
        metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("starling_task"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let secs = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
    println!(
        "a task handed to one member: applied by 99.9 % of the {} members and the sink in {:.2} s, by all in {:.2} s; the fleet view at that member counted all of them applied {:.2} s after the publish",
        members.len(),
        secs(p999),
        secs(all),
        secs(fleet_view)
    );

    // A member that is not an aggregator goes away; three tasks go out.
    let aggregators = members[0]
        .view
        .borrow()
        .cell
        .as_ref()
        .map(|c| c.aggregators.clone())
        .unwrap_or_default();
    let away = members
        .iter()
        .rposition(|m| !aggregators.contains(&m.host))
        .ok_or_else(|| anyhow::anyhow!("no member to stop"))?;
    let gone = members.remove(away);
    gone.task.abort();
    let base = counter_sum(metrics, applied_series);
    for i in 0..3 {
        let id = format!("while-away-{i}");
        op.publish(&members[0].host, &id, &op.tag_task(&id, &format!("w{i}"))?)?;
    }
    let at = Instant::now();
    while counter_sum(metrics, applied_series) - base < 3.0 * (members.len() + 1) as f64 {
        if at.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("the three tasks did not reach the members present within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past gossipsub's resend window: only anti-entropy brings them now.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let enrolment = enrol(ca, dir, Role::Node, &gone.host)?;
    let back_at = Instant::now();
    let (view, task, _) = start(
        enrolment,
        seeds.to_vec(),
        Some((&gone.zone, cell_size as u32)),
        stop,
        Some(op),
    )?;
    loop {
        let caught_up = op.status(&gone.host).is_some_and(|s| {
            (0..3).all(|i| {
                s.tasks
                    .iter()
                    .any(|t| t.task_id == format!("while-away-{i}") && t.state == "applied")
            })
        });
        if caught_up {
            break;
        }
        if back_at.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("{} did not catch up within 120 s of its restart", gone.host);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "a member away while 3 tasks went out had applied all 3 {:.1} s after it restarted (anti-entropy every 10 s, spread +-50 %)",
        back_at.elapsed().as_secs_f64()
    );
    members.push(Member {
        host: gone.host,
        zone: gone.zone,
        view,
        task,
    });
    Ok(())
}
