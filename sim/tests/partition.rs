//! A real partition heals: one cell of real libp2p members spread over two
//! network namespaces joined by a veth link. Cutting the link splits the
//! cell in two that each carry on (own views, own aggregators); a task
//! published on each side during the partition reaches only its side;
//! restoring the link merges the halves into one cell again with one set
//! of aggregators, and each side's task reaches the other. Needs root
//! (network namespaces).

use std::time::Duration;

use starling_mesh::enrol::Enrolment;
use starling_mesh::identity::Role;
use starling_mesh::swarm::{Mesh, MeshConfig, MeshView};
use starling_mesh::Multiaddr;
use starling_sim::cell_settings::test_cell;
use starling_sim::netns::{NamespacePair, Side};
use starling_sim::tasks::Operator;
use starling_sim::{is_root, Fleet};
use tokio::sync::watch;

const PER_SIDE: usize = 5;

struct Member {
    name: String,
    side: Side,
    view: watch::Receiver<MeshView>,
}

/// Starts a member whose sockets live in `side`'s namespace.
fn start(
    pair: &NamespacePair,
    side: Side,
    enrolment: Enrolment,
    bootstrap: Vec<Multiaddr>,
    stop: &watch::Receiver<bool>,
    operator: &Operator,
) -> watch::Receiver<MeshView> {
    let tasks = Some(operator.settings(&enrolment.identity().name, Duration::from_secs(2)));
    let listen = format!("/ip4/{}/udp/0/quic-v1", NamespacePair::addr(side));
    let config = MeshConfig {
        listen: vec![listen.parse().expect("multiaddr")],
        bootstrap,
        cell: Some(test_cell("split", (2 * PER_SIDE) as u32)),
        tasks,
        ..Default::default()
    };
    let runtime = tokio::runtime::Handle::current();
    let (mesh, view, _commands) = pair
        .run_in(side, || {
            // quinn binds its socket and spawns its driver here.
            let _entered = runtime.enter();
            Mesh::start(enrolment, config)
        })
        .expect("entering the namespace")
        .expect("mesh starts");
    tokio::spawn(mesh.run(stop.clone()));
    view
}

fn cell_members(v: &MeshView) -> Vec<String> {
    v.cell
        .as_ref()
        .map(|c| c.members.iter().map(|m| m.host.clone()).collect())
        .unwrap_or_default()
}

fn aggregators(v: &MeshView) -> Vec<String> {
    v.cell
        .as_ref()
        .map(|c| c.aggregators.clone())
        .unwrap_or_default()
}

/// Waits until every member's view satisfies `ok(member, view)`.
async fn wait_all(
    members: &[Member],
    what: &str,
    limit: Duration,
    ok: impl Fn(&Member, &MeshView) -> bool,
) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let behind: Vec<&str> = members
            .iter()
            .filter(|m| !ok(m, &m.view.borrow()))
            .map(|m| m.name.as_str())
            .collect();
        if behind.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let views: Vec<(String, Vec<String>)> = members
                .iter()
                .map(|m| (m.name.clone(), cell_members(&m.view.borrow())))
                .collect();
            panic!("timed out waiting for {what}; behind: {behind:?}; views: {views:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_cell_carries_on_in_two_halves_and_merges_when_it_heals() {
    assert!(
        is_root(),
        "this test creates network namespaces and must run as root"
    );
    let pair = NamespacePair::create("heal").expect("network namespaces");
    let fleet = Fleet::new().expect("fleet");
    let operator = Operator::new(fleet.path(), "split").expect("operator");
    let (stop_tx, stop) = watch::channel(false);

    let mut members = Vec::new();
    let mut seed: Option<Multiaddr> = None;
    for i in 0..2 * PER_SIDE {
        let side = if i < PER_SIDE { Side::A } else { Side::B };
        let name = format!("{}{i:02}", if side == Side::A { "a" } else { "b" });
        let mut view = start(
            &pair,
            side,
            fleet.enrolment(Role::Node, &name).expect("enrolment"),
            seed.iter().cloned().collect(),
            &stop,
            &operator,
        );
        if seed.is_none() {
            let v = view
                .wait_for(|v| !v.listen_addrs.is_empty())
                .await
                .expect("listening");
            seed = Some(v.listen_addrs[0].clone());
        }
        members.push(Member { name, side, view });
    }
    let everyone: Vec<String> = {
        let mut n: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
        n.sort();
        n
    };
    let side_of = |side: Side| -> Vec<String> {
        let mut n: Vec<String> = members
            .iter()
            .filter(|m| m.side == side)
            .map(|m| m.name.clone())
            .collect();
        n.sort();
        n
    };
    let (side_a, side_b) = (side_of(Side::A), side_of(Side::B));

    wait_all(
        &members,
        "one cell across both namespaces",
        Duration::from_secs(90),
        |_, v| cell_members(v) == everyone,
    )
    .await;
    let agreed = aggregators(&members[0].view.borrow());
    wait_all(
        &members,
        "the same aggregators everywhere",
        Duration::from_secs(30),
        |_, v| aggregators(v) == agreed,
    )
    .await;

    // Cut: each half goes on alone, with aggregators of its own.
    pair.cut().expect("cutting the link");
    let cut = std::time::Instant::now();
    wait_all(
        &members,
        "each half sees only itself",
        Duration::from_secs(60),
        |m, v| {
            let own = if m.side == Side::A { &side_a } else { &side_b };
            cell_members(v) == *own
        },
    )
    .await;
    eprintln!(
        "partition: halves saw only themselves after {:.1?}",
        cut.elapsed()
    );
    wait_all(
        &members,
        "each half elects its own aggregators",
        Duration::from_secs(30),
        |m, v| {
            let own = if m.side == Side::A { &side_a } else { &side_b };
            let aggs = aggregators(v);
            !aggs.is_empty() && aggs.iter().all(|a| own.contains(a))
        },
    )
    .await;

    // A task published on each side reaches that side only.
    let on_side = |side: Side| members.iter().find(|m| m.side == side).expect("a member");
    for (side, id) in [(Side::A, "during-a"), (Side::B, "during-b")] {
        let task = operator.tag_task(id, id).expect("task");
        operator
            .publish(&on_side(side).name, id, &task)
            .expect("published");
    }
    let applied = |m: &Member, id: &str| operator.state(&m.name, id).as_deref() == Some("applied");
    wait_all(
        &members,
        "each side's task on its side",
        Duration::from_secs(30),
        |m, _| {
            applied(
                m,
                if m.side == Side::A {
                    "during-a"
                } else {
                    "during-b"
                },
            )
        },
    )
    .await;
    // Several anti-entropy rounds (every 2 s) later, still not across.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for m in &members {
        let other = if m.side == Side::A {
            "during-b"
        } else {
            "during-a"
        };
        assert!(
            operator.state(&m.name, other).is_none(),
            "{} holds {other} across the partition",
            m.name
        );
    }

    // Heal: one cell again, one set of aggregators.
    pair.restore().expect("restoring the link");
    let healed = std::time::Instant::now();
    wait_all(
        &members,
        "the cell whole again",
        Duration::from_secs(90),
        |_, v| cell_members(v) == everyone,
    )
    .await;
    eprintln!(
        "partition: the cell was whole {:.1?} after the heal",
        healed.elapsed()
    );
    let merged = aggregators(&members[0].view.borrow());
    wait_all(
        &members,
        "one set of aggregators again",
        Duration::from_secs(30),
        |_, v| aggregators(v) == merged,
    )
    .await;
    wait_all(
        &members,
        "both tasks everywhere after the heal",
        Duration::from_secs(60),
        |m, _| applied(m, "during-a") && applied(m, "during-b"),
    )
    .await;
    eprintln!(
        "partition: both sides' tasks applied everywhere {:.1?} after the heal",
        healed.elapsed()
    );
    let _ = stop_tx.send(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
}
