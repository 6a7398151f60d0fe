//! Cell membership (SWIM via foca, plus member info) under the simulated
//! network: convergence, failure detection, loss tolerance, partitions,
//! agreeing elections, and per-member traffic as the cell grows. Time here
//! is simulated: the bounds are protocol behaviour, not machine speed.

use std::collections::BTreeSet;
use std::time::Duration;

use starling_mesh::election::{elect, ElectionParams};
use starling_sim::netsim::SimNet;

const CELL: &str = "zone:sim";

fn host(i: usize) -> String {
    format!("host-{i:04}")
}

fn cell(n: usize, seed: u64) -> SimNet {
    let mut net = SimNet::new(seed, Duration::from_millis(2));
    for i in 0..n {
        net.add_member(&host(i), true, n as u32);
        // Joins spread over time, as a fleet starting up.
        net.run_for(Duration::from_millis(20));
    }
    net
}

fn converged(net: &SimNet, n: usize) -> bool {
    net.live_hosts().iter().all(|h| net.view(h).len() == n - 1)
}

fn run_until(
    net: &mut SimNet,
    limit: Duration,
    mut done: impl FnMut(&SimNet) -> bool,
) -> Option<Duration> {
    let start = net.now();
    while net.now() - start < limit {
        if done(net) {
            return Some(net.now() - start);
        }
        net.run_for(Duration::from_millis(100));
    }
    done(net).then(|| net.now() - start)
}

#[test]
fn a_hundred_members_converge() {
    let n = 100;
    let mut net = cell(n, 1);
    let t = run_until(&mut net, Duration::from_secs(60), |net| converged(net, n));
    assert!(
        t.is_some(),
        "not converged: {} sees {}",
        host(n - 1),
        net.view(&host(n - 1)).len()
    );
}

#[test]
fn a_dead_member_is_noticed_by_everyone_within_seconds() {
    let n = 60;
    let mut net = cell(n, 2);
    assert!(run_until(&mut net, Duration::from_secs(60), |net| converged(net, n)).is_some());
    let dead = host(17);
    net.kill(&dead);
    let t = run_until(&mut net, Duration::from_secs(30), |net| {
        net.live_hosts()
            .iter()
            .all(|h| !net.view(h).contains(&dead))
    })
    .expect("every member noticed the death");
    eprintln!("{n} members: death noticed by all within {t:?} (simulated)");
    assert!(t <= Duration::from_secs(15), "took {t:?}");
    // Nobody else was declared dead.
    assert!(
        net.downs.iter().all(|d| d.member == dead),
        "{:?}",
        net.downs
    );
}

#[test]
fn a_lossy_network_does_not_kill_live_members() {
    let n = 40;
    let mut net = cell(n, 3);
    assert!(run_until(&mut net, Duration::from_secs(60), |net| converged(net, n)).is_some());
    net.set_loss(0.10);
    net.run_for(Duration::from_secs(120));
    assert!(
        net.downs.is_empty(),
        "10% loss declared live members dead: {:?}",
        &net.downs[..net.downs.len().min(5)]
    );
    assert!(converged(&net, n));
}

#[test]
fn a_busy_member_does_not_declare_live_members_dead() {
    // A member whose CPU is saturated reads its messages three seconds
    // late. Its probes fail and it reads refutations after its suspicions
    // expire, so without local health it declares live members down for
    // the whole cell (15 of 29 in this run). Its timers run late too,
    // which stretches its suspicion timeout. (The others do declare the
    // busy member itself down: three seconds behind, it cannot answer.)
    let n = 30;
    let mut net = cell(n, 5);
    assert!(run_until(&mut net, Duration::from_secs(60), |net| converged(net, n)).is_some());
    let busy = host(7);
    net.make_busy(&busy, Duration::from_secs(3));
    net.run_for(Duration::from_secs(120));
    let score = net.member(&busy).expect("busy member").local_health();
    assert!(score > 0, "late timers did not lower local health");
    let wrongly: Vec<_> = net.downs.iter().filter(|d| d.member != busy).collect();
    assert!(
        wrongly.is_empty(),
        "live members declared dead: {:?}",
        &wrongly[..wrongly.len().min(5)]
    );
    // Healthy again: the score recovers and the cell is whole.
    net.make_busy(&busy, Duration::ZERO);
    net.run_for(Duration::from_secs(60));
    assert_eq!(net.member(&busy).expect("m").local_health(), 0);
    assert!(converged(&net, n));
}

#[test]
fn member_info_changes_reach_every_member() {
    let n = 50;
    let mut net = cell(n, 4);
    assert!(run_until(&mut net, Duration::from_secs(60), |net| converged(net, n)).is_some());
    let who = host(7);
    let version = 1_000;
    net.member(&who)
        .expect("member")
        .update_info(version, |i| {
            i.load_pct = 42;
            i.tags = vec!["rack=r7".into()];
        })
        .expect("valid info");
    net.flush_host(&who);
    let t = run_until(&mut net, Duration::from_secs(30), |net| {
        all_see_load(net, &who, 42)
    });
    assert!(t.is_some(), "the update did not reach everyone");
}

fn all_see_load(net: &SimNet, who: &str, load: u8) -> bool {
    net.live_hosts()
        .iter()
        .filter(|h| h.as_str() != who)
        .all(|h| net.info_seen_by(h, who).is_some_and(|i| i.load_pct == load))
}

#[test]
fn every_member_computes_the_same_aggregators() {
    let n = 80;
    let mut net = cell(n, 5);
    assert!(run_until(&mut net, Duration::from_secs(60), |net| converged(net, n)).is_some());
    // Let every member's info record spread too.
    net.run_for(Duration::from_secs(10));
    let params = ElectionParams {
        nodes_per_aggregator: 30,
        ..Default::default()
    };
    let results: BTreeSet<Vec<String>> = net
        .live_hosts()
        .iter()
        .map(|h| elect(CELL, &net.election_view(h), &params))
        .collect();
    assert_eq!(results.len(), 1, "members disagree: {results:?}");
    let chosen = results.into_iter().next().unwrap_or_default();
    assert_eq!(chosen.len(), 3, "80 members at 30 per aggregator");
}

#[test]
fn a_partition_heals() {
    let n = 30;
    let mut net = cell(n, 6);
    assert!(run_until(&mut net, Duration::from_secs(60), |net| converged(net, n)).is_some());
    let side: Vec<String> = (0..10).map(host).collect();
    let side_refs: Vec<&str> = side.iter().map(String::as_str).collect();
    net.partition(&side_refs);
    let split = run_until(&mut net, Duration::from_secs(60), |net| {
        net.view(&host(0)).len() == 9
    });
    assert!(
        split.is_some(),
        "the partition was not noticed: {:?}",
        net.view(&host(0)).len()
    );
    net.heal();
    let healed = run_until(&mut net, Duration::from_secs(180), |net| converged(net, n));
    assert!(
        healed.is_some(),
        "still split after healing: host-0000 sees {}",
        net.view(&host(0)).len()
    );
}

#[test]
fn per_member_traffic_does_not_grow_with_the_cell() {
    let rate = |n: usize| {
        let mut net = cell(n, 7);
        assert!(run_until(&mut net, Duration::from_secs(90), |net| converged(net, n)).is_some());
        net.run_for(Duration::from_secs(30)); // let join gossip die down
        let before: u64 = net.live_hosts().iter().map(|h| net.traffic(h).0).sum();
        let window = Duration::from_secs(60);
        net.run_for(window);
        let after: u64 = net.live_hosts().iter().map(|h| net.traffic(h).0).sum();
        (after - before) as f64 / n as f64 / window.as_secs_f64()
    };
    let small = rate(100);
    let large = rate(200);
    eprintln!("bytes/s received per member: {small:.0} at 100 members, {large:.0} at 200");
    assert!(
        large < small * 1.3,
        "traffic grew with the cell: {small:.0} -> {large:.0} B/s"
    );
    assert!(large < 1024.0, "over 1 KB/s per member: {large:.0}");
}

/// The probabilistic properties (no false deaths on a lossy network, every
/// update reaches every member) hold over many seeds, not just one.
#[test]
fn loss_tolerance_and_dissemination_hold_across_seeds() {
    let (mut false_deaths, mut stragglers) = (0, 0);
    for seed in 100..112 {
        let n = 40;
        let mut net = cell(n, seed);
        assert!(run_until(&mut net, Duration::from_secs(60), |net| converged(net, n)).is_some());
        let who = host(3);
        net.member(&who)
            .expect("m")
            .update_info(1_000, |i| i.load_pct = 42)
            .expect("ok");
        net.flush_host(&who);
        if run_until(&mut net, Duration::from_secs(30), |net| {
            all_see_load(net, &who, 42)
        })
        .is_none()
        {
            stragglers += 1;
        }
        net.set_loss(0.10);
        net.run_for(Duration::from_secs(120));
        false_deaths += net.downs.len();
    }
    eprintln!("12 seeds: {false_deaths} false deaths at 10% loss, {stragglers} runs with an update straggler");
    assert_eq!(false_deaths, 0, "live members declared dead at 10% loss");
    assert_eq!(stragglers, 0, "updates that missed a member");
}
