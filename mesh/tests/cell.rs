//! Real libp2p members on loopback form a cell over `/starling/swim/1`,
//! agree on its aggregators, learn a sink from its gossiped advert, and
//! notice a member that stops.

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
    let settings = CellSettings {
        zone: Some("test".into()),
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

/// Starts `n` cell members (`n000`, `n001`, ...) that join through the
/// first; returns them and the first one's address.
async fn start_cell(fleet: &Fleet, n: usize) -> (Vec<Member>, Multiaddr) {
    let mut first = start(fleet.enrol(Role::Node, "n000"), vec![], true);
    let addr = first
        .view
        .wait_for(|v| !v.listen_addrs.is_empty())
        .await
        .expect("listening")
        .listen_addrs[0]
        .clone();
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
