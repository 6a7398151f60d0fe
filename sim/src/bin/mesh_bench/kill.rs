//! The bench's last phase: an aggregator killed (aborted, no goodbye),
//! timed until every member of its cell saw it gone and agreed on a
//! replacement. With the task plane the kill is done twice: once right
//! after the tasks went out, and once the members' local health is back
//! to 0, because Lifeguard stretches suspicion by it and the two figures
//! answer different questions (a kill during a task's burst, and a kill
//! in a quiet fleet that holds tasks).

use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;

use super::{counters, health_scores, Member};

/// Kills the first aggregator of the cell of the first member in `zone`
/// and times its cell until the victim is gone from every view and
/// replaced; prints the figures, labelled `when`.
pub(super) async fn kill_aggregator(
    members: &mut Vec<Member>,
    zone: &str,
    metrics: &PrometheusHandle,
    when: &str,
) -> anyhow::Result<()> {
    let victim_host = members
        .iter()
        .find(|m| m.zone == zone)
        .and_then(|m| {
            m.view
                .borrow()
                .cell
                .as_ref()
                .and_then(|c| c.aggregators.first().cloned())
        })
        .ok_or_else(|| anyhow::anyhow!("no aggregator known in zone {zone}"))?;
    let victim = members
        .iter()
        .position(|m| m.host == victim_host)
        .ok_or_else(|| anyhow::anyhow!("aggregator {victim_host} is not a member here"))?;
    // Lifeguard's local health stretches suspicion timeouts: how the
    // members stand at the kill explains a slow figure.
    eprintln!(
        "members by local-health score 0..8 at the kill {when}: {:?}",
        health_scores(members)
    );
    let killed = members.remove(victim);
    killed.task.abort();
    let at = Instant::now();
    let peers: Vec<&Member> = members.iter().filter(|m| m.zone == zone).collect();
    let mut noticed = None;
    // When each member of the cell first saw it gone: a slow figure is a
    // few stragglers or the whole cell.
    let mut each: Vec<Option<Duration>> = vec![None; peers.len()];
    loop {
        for (m, seen) in peers.iter().zip(each.iter_mut()) {
            let gone = m
                .view
                .borrow()
                .cell
                .as_ref()
                .is_some_and(|c| !c.members.iter().any(|x| x.host == victim_host));
            if gone && seen.is_none() {
                *seen = Some(at.elapsed());
            }
        }
        let gone = each.iter().all(Option::is_some);
        if gone && noticed.is_none() {
            noticed = Some(at.elapsed());
        }
        let replaced =
            peers.iter().all(|m| {
                m.view.borrow().cell.as_ref().is_some_and(|c| {
                    c.aggregators.len() >= 2 && !c.aggregators.contains(&victim_host)
                })
            });
        if gone && replaced {
            break;
        }
        if at.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("the killed aggregator was not replaced within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("counters: {}", counters(metrics));
    let mut times: Vec<(Duration, &str)> = (each.iter().zip(&peers))
        .filter_map(|(t, m)| t.map(|t| (t, m.host.as_str())))
        .collect();
    times.sort();
    if let (Some(first), Some(median)) = (times.first(), times.get(times.len() / 2)) {
        eprintln!(
            "first member to notice {:.1} s, median {:.1} s; the last: {}",
            first.0.as_secs_f64(),
            median.0.as_secs_f64(),
            (times.iter().rev().take(3))
                .map(|(t, h)| format!("{h} {:.1} s", t.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "killed aggregator {victim_host} {when}: every member of its cell ({}) noticed in {:.1} s and agreed on a replacement in {:.1} s",
        peers.len(),
        noticed.unwrap_or_default().as_secs_f64(),
        at.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Waits until no member's local health is above 0, up to `limit`;
/// prints how long it took (or how the members stood at the limit).
pub(super) async fn settle(members: &[Member], limit: Duration) {
    let at = Instant::now();
    loop {
        let scores = health_scores(members);
        if scores[0] == members.len() {
            println!(
                "every member's local health back to 0 {:.1} s later",
                at.elapsed().as_secs_f64()
            );
            return;
        }
        if at.elapsed() >= limit {
            println!(
                "local health not back to 0 for every member after {} s: {scores:?} by score 0..8",
                limit.as_secs()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
