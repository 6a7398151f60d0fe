//! A cell of members of two builds: most frame membership datagrams on
//! per-peer streams (`/starling/swim-stream/1`), two speak only the
//! request-response protocol that came before (`/starling/swim/1`; the
//! `legacy-member` test double of an older build). A fleet in the middle
//! of a rolling upgrade is such a cell: every member must see every
//! other, and keep seeing it, whichever build each one runs.

use std::time::Duration;

use starling_mesh::enrol::Enrolment;
use starling_mesh::identity::Role;
use starling_mesh::swarm::{Mesh, MeshConfig, MeshView};
use starling_mesh::Multiaddr;
use starling_sim::cell_settings::test_cell;
use starling_sim::Fleet;
use tokio::sync::watch;

const MEMBERS: usize = 6;
/// The members that run as the older build.
const LEGACY: [usize; 2] = [1, 4];

fn start(
    enrolment: Enrolment,
    bootstrap: Vec<Multiaddr>,
    legacy: bool,
    stop: &watch::Receiver<bool>,
) -> watch::Receiver<MeshView> {
    let config = MeshConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("multiaddr")],
        bootstrap,
        cell: Some(test_cell("mixed", MEMBERS as u32)),
        legacy_datagrams: legacy,
        ..Default::default()
    };
    let (mesh, view, _commands) = Mesh::start(enrolment, config).expect("mesh starts");
    tokio::spawn(mesh.run(stop.clone()));
    view
}

fn seen(v: &MeshView) -> usize {
    v.cell.as_ref().map_or(0, |c| c.members.len())
}

/// Names of the members whose view does not hold the whole cell.
fn behind(views: &[watch::Receiver<MeshView>]) -> Vec<String> {
    views
        .iter()
        .enumerate()
        .filter(|(_, v)| seen(&v.borrow()) != MEMBERS)
        .map(|(i, v)| format!("m{i} sees {}", seen(&v.borrow())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_the_older_build_and_the_newer_form_one_cell() {
    let fleet = Fleet::new().expect("fleet");
    let (stop_tx, stop) = watch::channel(false);
    let mut views = vec![start(
        fleet.enrolment(Role::Node, "m0").expect("enrolment"),
        Vec::new(),
        false,
        &stop,
    )];
    let seed = views[0]
        .wait_for(|v| !v.listen_addrs.is_empty())
        .await
        .expect("seed listens")
        .listen_addrs[0]
        .clone();
    for i in 1..MEMBERS {
        let name = format!("m{i}");
        views.push(start(
            fleet.enrolment(Role::Node, &name).expect("enrolment"),
            vec![seed.clone()],
            LEGACY.contains(&i),
            &stop,
        ));
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !behind(&views).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no whole cell within 90 s: {:?}",
            behind(&views)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A member that could not be reached would be suspected and declared
    // down within seconds (suspicion takes about 2.5 s here): the cell
    // must hold.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        behind(&views).is_empty(),
        "the cell fell apart: {:?}",
        behind(&views)
    );
    // The older build takes datagrams only by request-response, so what
    // reached it from the newer members came that way.
    for i in LEGACY {
        let stats = views[i].borrow().stats.clone();
        assert!(
            stats.swim_bytes_in > 0 && stats.swim_bytes_out > 0,
            "m{i} (older build) exchanged no membership datagrams: {stats:?}"
        );
    }
    let aggregators: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            v.borrow()
                .cell
                .as_ref()
                .map(|c| c.aggregators.clone())
                .unwrap_or_default()
        })
        .collect();
    assert!(
        aggregators.windows(2).all(|w| w[0] == w[1]) && !aggregators[0].is_empty(),
        "members disagree on the aggregators: {aggregators:?}"
    );
    let _ = stop_tx.send(true);
}
