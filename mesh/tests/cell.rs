//! Real libp2p members on loopback form a cell over `/starling/swim/1`,
//! agree on its aggregators, learn a sink from its gossiped advert, and
//! notice a member that stops; members of a cell that start at different
//! seeds find each other through the seeds' referrals.

use std::time::Duration;

use libp2p::Multiaddr;
use starling_mesh::election::ElectionParams;
use starling_mesh::enrol::Enrolment;
use starling_mesh::identity::Role;
use starling_mesh::swarm::{CellSettings, Mesh, MeshConfig, MeshView};
use tokio::sync::watch;

mod common;
use common::Fleet;

struct Member {
    view: watch::Receiver<MeshView>,
    stop: watch::Sender<bool>,
}

fn start(enrolment: Enrolment, bootstrap: Vec<Multiaddr>, cell: bool) -> Member {
    start_in(enrolment, bootstrap, cell.then_some("test"))
}

/// Starts a member of the cell `zone`, or a sink when `zone` is None.
fn start_in(enrolment: Enrolment, bootstrap: Vec<Multiaddr>, zone: Option<&str>) -> Member {
    let cell = zone.is_some();
    let settings = CellSettings {
        zone: zone.map(str::to_owned),
        expected_size: 16,
        eligible: true,
        capacity: 100,
        relay: "127.0.0.1:1".into(),
        election: ElectionParams::default(),
        agent_version: "test".into(),
        tags: Vec::new(),
    };
    let config = MeshConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("multiaddr")],
        bootstrap,
        cell: cell.then_some(settings),
        sink_ingress: (!cell).then(|| "127.0.0.1:7400".to_owned()),
        ..Default::default()
    };
    let (mesh, view, _commands) = Mesh::start(enrolment, config).expect("mesh starts");
    let (stop, rx) = watch::channel(false);
    tokio::spawn(mesh.run(rx));
    Member { view, stop }
}

async fn wait_all(members: &mut [Member], what: &str, ok: impl Fn(&MeshView) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for (i, m) in members.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if tokio::time::timeout(left, m.view.wait_for(&ok))
            .await
            .is_err()
        {
            panic!(
                "member {i}: timed out waiting for {what}: {:#?}",
                m.view.borrow().cell
            );
        }
    }
}

/// The first address a member listens on, once it does.
async fn listen_addr(member: &mut Member) -> Multiaddr {
    member
        .view
        .wait_for(|v| !v.listen_addrs.is_empty())
        .await
        .expect("listening")
        .listen_addrs[0]
        .clone()
}

/// Starts `n` cell members (`n000`, `n001`, ...) that join through the
/// first; returns them and the first one's address.
async fn start_cell(fleet: &Fleet, n: usize) -> (Vec<Member>, Multiaddr) {
    let mut first = start(fleet.enrol(Role::Node, "n000"), vec![], true);
    let addr = listen_addr(&mut first).await;
    let mut members = vec![first];
    for i in 1..n {
        members.push(start(
            fleet.enrol(Role::Node, &format!("n{i:03}")),
            vec![addr.clone()],
            true,
        ));
    }
    (members, addr)
}

fn member_count(v: &MeshView) -> usize {
    v.cell.as_ref().map_or(0, |c| c.members.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_forms_elects_and_notices_a_departure() {
    const N: usize = 12;
    let fleet = Fleet::new();
    let (mut members, addr) = start_cell(&fleet, N).await;
    let _sink = start(fleet.enrol(Role::Sink, "sink-a"), vec![addr.clone()], false);

    wait_all(&mut members, "every member sees the whole cell", |v| {
        member_count(v) == N
            && v.cell
                .as_ref()
                .is_some_and(|c| c.members.iter().all(|m| m.known))
    })
    .await;
    // Views agree, so elections agree: the same two aggregators everywhere.
    let expected = members[0]
        .view
        .borrow()
        .cell
        .clone()
        .expect("cell")
        .aggregators;
    assert_eq!(expected.len(), 2, "a small cell keeps min_aggregators");
    wait_all(&mut members, "the same aggregators everywhere", |v| {
        v.cell.as_ref().is_some_and(|c| c.aggregators == expected)
    })
    .await;
    wait_all(&mut members, "the sink's advert", |v| {
        v.sinks
            .iter()
            .any(|s| s.name == "sink-a" && s.ingress == "127.0.0.1:7400")
    })
    .await;

    // A member that leaves is gone from everyone's view.
    let gone = members.pop().expect("a member");
    let _ = gone.stop.send(true);
    wait_all(&mut members, "the departure noticed", |v| {
        member_count(v) == N - 1
    })
    .await;
    for m in &members {
        let _ = m.stop.send(true);
    }
}

/// Starts a cell of `n` members and returns the membership bytes each
/// received per second, on average, over `window` once it converged.
async fn steady_bytes_per_member(n: usize, window: Duration) -> f64 {
    let fleet = Fleet::new();
    let (mut members, _) = start_cell(&fleet, n).await;
    wait_all(&mut members, "the whole cell", |v| member_count(v) == n).await;
    // Let the join traffic settle, then measure.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let received =
        |ms: &[Member]| -> u64 { ms.iter().map(|m| m.view.borrow().stats.swim_bytes_in).sum() };
    let before = received(&members);
    tokio::time::sleep(window).await;
    let after = received(&members);
    for m in &members {
        let _ = m.stop.send(true);
    }
    (after - before) as f64 / n as f64 / window.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_traffic_per_member_stays_flat_when_the_cell_doubles() {
    let window = Duration::from_secs(15);
    let small = steady_bytes_per_member(12, window).await;
    let large = steady_bytes_per_member(24, window).await;
    println!("membership bytes/s received per member: {small:.0} at 12, {large:.0} at 24");
    assert!(small > 0.0, "members exchange membership traffic");
    assert!(
        large < small * 1.5,
        "per-member traffic grew with the cell: {small:.0} -> {large:.0} B/s"
    );
}

/// Two seeds of one cell, and six members of another cell given both
/// seeds: each seed refers the members that dial it to the members of
/// their cell it admitted before, and a member that asks its second seed
/// too joins the group that started there, so the cell forms as one.
/// The seeds' own cell never takes the others in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_starting_at_different_seeds_are_referred_to_each_other() {
    const N: usize = 6;
    let fleet = Fleet::new();
    let mut s0 = start_in(fleet.enrol(Role::Node, "seed-0"), vec![], Some("seeds"));
    let a0 = listen_addr(&mut s0).await;
    let mut s1 = start_in(
        fleet.enrol(Role::Node, "seed-1"),
        vec![a0.clone()],
        Some("seeds"),
    );
    let a1 = listen_addr(&mut s1).await;
    let mut members: Vec<Member> = (0..N)
        .map(|i| {
            start_in(
                fleet.enrol(Role::Node, &format!("x{i}")),
                vec![a0.clone(), a1.clone()],
                Some("x"),
            )
        })
        .collect();
    wait_all(&mut members, "the whole cell x", |v| member_count(v) == N).await;
    let mut seeds = [s0, s1];
    wait_all(&mut seeds, "the seeds' own cell", |v| member_count(v) == 2).await;

    let referred = members
        .iter()
        .filter(|m| m.view.borrow().stats.referred_to > 0)
        .count();
    let given: u64 = seeds
        .iter()
        .map(|s| s.view.borrow().stats.referrals_given)
        .sum();
    println!(
        "{referred} of {N} members were referred to cell-mates; the seeds gave {given} referrals"
    );
    // Only the first member of x at each seed finds no one to be
    // referred to there, and its second seed usually refers it too.
    assert!(
        referred >= N - 2,
        "only {referred} of {N} members were referred"
    );
    assert!(given >= (N - 2) as u64, "the seeds gave {given} referrals");
    for s in &seeds {
        let v = s.view.borrow();
        let cell = v.cell.as_ref().expect("a seed's cell");
        assert!(
            cell.members.iter().all(|m| m.host.starts_with("seed-")),
            "cells mixed: {:?}",
            cell.members.iter().map(|m| &m.host).collect::<Vec<_>>()
        );
    }
    for m in members.iter().chain(seeds.iter()) {
        let _ = m.stop.send(true);
    }
}
