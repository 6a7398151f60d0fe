//! Real libp2p connections on loopback: enrolled members admit each other
//! over QUIC and over TCP; a member of another fleet is refused and counted;
//! a member whose certificate the operator revokes is dropped and stays out.

use std::time::Duration;

use libp2p::Multiaddr;
use starling_mesh::enrol::Enrolment;
use starling_mesh::swarm::{Mesh, MeshConfig, MeshView};
use tokio::sync::watch;

mod common;
use common::Fleet;
use starling_mesh::identity::Role;

fn start(
    enrolment: Enrolment,
    listen: &[&str],
    bootstrap: Vec<Multiaddr>,
    stop: &watch::Receiver<bool>,
) -> watch::Receiver<MeshView> {
    start_with(enrolment, listen, bootstrap, None, stop)
}

/// How long a refused peer is blocked in these tests: short, so that a
/// test sees a refused peer come back and be refused again.
const BLOCK_FOR: Duration = Duration::from_secs(2);

fn start_with(
    enrolment: Enrolment,
    listen: &[&str],
    bootstrap: Vec<Multiaddr>,
    revocations: Option<std::path::PathBuf>,
    stop: &watch::Receiver<bool>,
) -> watch::Receiver<MeshView> {
    let config = MeshConfig {
        listen: listen
            .iter()
            .map(|a| a.parse().expect("multiaddr"))
            .collect(),
        bootstrap,
        admission_timeout: Duration::from_secs(3),
        block_for: BLOCK_FOR,
        revocations,
        ..Default::default()
    };
    let (mesh, view, _commands) = Mesh::start(enrolment, config).expect("mesh starts");
    tokio::spawn(mesh.run(stop.clone()));
    view
}

async fn wait_view(
    view: &mut watch::Receiver<MeshView>,
    what: &str,
    ok: impl Fn(&MeshView) -> bool,
) -> MeshView {
    let found = match tokio::time::timeout(Duration::from_secs(20), view.wait_for(|v| ok(v))).await
    {
        Ok(Ok(v)) => Some(v.clone()),
        _ => None,
    };
    found.unwrap_or_else(|| panic!("timed out waiting for {what}: {:?}", *view.borrow()))
}

fn names(v: &MeshView) -> Vec<String> {
    let mut n: Vec<String> = v.admitted.values().map(|i| i.name.clone()).collect();
    n.sort();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_members_are_admitted_and_strangers_refused() {
    let fleet = Fleet::new();
    let stranger_fleet = Fleet::new();
    let (stop_tx, stop) = watch::channel(false);

    let mut a = start(
        fleet.enrol(Role::Node, "a"),
        &["/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/tcp/0"],
        vec![],
        &stop,
    );
    let listening = wait_view(&mut a, "a listening", |v| v.listen_addrs.len() >= 2).await;
    let quic = listening
        .listen_addrs
        .iter()
        .find(|m| m.to_string().contains("quic"))
        .cloned()
        .expect("quic addr");
    let tcp = listening
        .listen_addrs
        .iter()
        .find(|m| m.to_string().contains("/tcp/"))
        .cloned()
        .expect("tcp addr");

    let mut b = start(
        fleet.enrol(Role::Node, "b"),
        &["/ip4/127.0.0.1/udp/0/quic-v1"],
        vec![quic],
        &stop,
    );
    let mut c = start(
        fleet.enrol(Role::Node, "c"),
        &["/ip4/127.0.0.1/tcp/0"],
        vec![tcp.clone()],
        &stop,
    );
    let stranger = start(stranger_fleet.enrol(Role::Node, "d"), &[], vec![tcp], &stop);

    let va = wait_view(&mut a, "a admits b and c and refuses the stranger", |v| {
        names(v) == ["b", "c"] && v.refused >= 1
    })
    .await;
    assert!(!names(&va).contains(&"d".to_string()));
    // (b and c may also find each other through a's DHT.)
    let has_a = |v: &MeshView| names(v).contains(&"a".to_string());
    wait_view(&mut b, "b admits a over QUIC", has_a).await;
    wait_view(&mut c, "c admits a over TCP", has_a).await;
    // a refused the stranger by disconnecting without proving itself, so the
    // stranger admitted nobody.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let vs = stranger.borrow().clone();
    assert!(
        vs.admitted.is_empty(),
        "the stranger admitted {:?}",
        names(&vs)
    );

    // Admitted peers enter each other's DHT routing table; strangers never.
    wait_view(&mut a, "a's DHT holds b and c", |v| v.dht_peers == 2).await;
    wait_view(&mut b, "b's DHT holds a", |v| v.dht_peers >= 1).await;

    // Admitted peers get RTT measurements.
    wait_view(&mut b, "b measures its RTT to a", |v| !v.rtt.is_empty()).await;
    let _ = stop_tx.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_dropped_and_stays_out() {
    let fleet = Fleet::new();
    let list = Some(fleet.revocation_list());
    let (stop_tx, stop) = watch::channel(false);
    let quic = ["/ip4/127.0.0.1/udp/0/quic-v1"];
    let mut a = start_with(
        fleet.enrol(Role::Node, "a"),
        &quic,
        vec![],
        list.clone(),
        &stop,
    );
    let seed = wait_view(&mut a, "a listening", |v| !v.listen_addrs.is_empty())
        .await
        .listen_addrs[0]
        .clone();
    let mut b = start_with(
        fleet.enrol(Role::Node, "b"),
        &quic,
        vec![seed.clone()],
        list.clone(),
        &stop,
    );
    let mut c = start_with(
        fleet.enrol(Role::Node, "c"),
        &quic,
        vec![seed],
        list.clone(),
        &stop,
    );
    wait_view(&mut a, "a admits b and c", |v| names(v) == ["b", "c"]).await;
    wait_view(&mut b, "b admits a and c", |v| names(v) == ["a", "c"]).await;

    fleet.revoke("c");
    let dropped = wait_view(&mut a, "a drops the revoked c", |v| {
        names(v) == ["b"] && v.refused >= 1
    })
    .await;
    wait_view(&mut b, "b drops the revoked c", |v| {
        names(v) == ["a"] && v.refused >= 1
    })
    .await;
    wait_view(&mut c, "c admitted by nobody", |v| v.admitted.is_empty()).await;
    // c keeps its addresses of a and b and dials its bootstrap peer again
    // once alone; after the block runs out (2 s here) a hears from it
    // again, and refuses it again on the revocation list.
    let again = wait_view(&mut a, "a refuses the returning c again", |v| {
        v.refused > dropped.refused
    })
    .await;
    assert_eq!(names(&again), ["b"], "c came back into a's view");
    assert_eq!(names(&b.borrow()), ["a"], "c came back into b's view");
    assert!(c.borrow().admitted.is_empty(), "c was admitted again");
    let _ = stop_tx.send(true);
}
