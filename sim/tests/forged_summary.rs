//! Cell summaries trace to the member that sent them: a member that
//! sends the sinks a summary naming another member as its aggregator is
//! refused (`not_author`), while one it sends under its own name travels
//! the same path and is taken (summaries are advisory; the audit trail is
//! the record). The liar is the `hostile` test double of a modified
//! agent; the honest members see the sink's view of the fleet.

use std::time::{Duration, Instant};

use starling_mesh::enrol::Enrolment;
use starling_mesh::identity::Role;
use starling_mesh::swarm::{MeshCommand, MeshConfig, MeshView};
use starling_mesh::Multiaddr;
use starling_sim::cell_settings::test_cell;
use starling_sim::in_process::{spawn_member, start_seeded, wait_until};
use starling_sim::process::local_metric;
use starling_sim::tasks::Operator;
use starling_sim::Fleet;
use starling_task::fleet::CellHosts;
use starling_task::rollup::{encode_summary, CellSummary, TaskCounts};
use tokio::sync::{mpsc, watch};

const HONEST: [&str; 3] = ["h0", "h1", "h2"];
const NOT_AUTHOR: &str = "starling_task_summaries_total{result=\"not_author\"}";

/// A member of the cell, or (with `sink`) a sink.
fn start(
    enrolment: Enrolment,
    bootstrap: Vec<Multiaddr>,
    op: &Operator,
    stop: &watch::Receiver<bool>,
) -> (watch::Receiver<MeshView>, mpsc::Sender<MeshCommand>) {
    let host = enrolment.identity().name.clone();
    let sink = enrolment.identity().role == Role::Sink;
    let config = MeshConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("multiaddr")],
        bootstrap,
        cell: (!sink).then(|| test_cell("liars", HONEST.len() as u32 + 1)),
        sink_ingress: sink.then(|| "127.0.0.1:1".to_string()),
        tasks: Some(op.settings(&host, Duration::from_secs(10))),
        ..Default::default()
    };
    spawn_member(enrolment, config, stop).expect("mesh starts")
}

/// A summary of cell `cell` that says `by` (at `by_peer`) summed it and
/// that 999 hosts applied `task`.
fn made_up(cell: &str, by: &str, by_peer: String, task: &str) -> Vec<u8> {
    let mut counts = TaskCounts::default();
    counts.counts.insert("applied".into(), 999);
    let summary = CellSummary {
        cell: cell.into(),
        by: by.into(),
        at_ms: u64::MAX / 2,
        members: 999,
        tasks: [(task.to_owned(), counts)].into_iter().collect(),
        hosts: CellHosts {
            by_peer,
            ..Default::default()
        },
    };
    encode_summary(&summary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_that_names_another_member_as_its_author_is_refused() {
    let fleet = Fleet::new().expect("fleet");
    let dir = tempfile::tempdir().expect("tempdir");
    let op = Operator::new(dir.path(), "sim").expect("operator");
    let (_stop_tx, stop) = watch::channel(false);
    let (views, seed) = start_seeded(&HONEST, |host, bootstrap| {
        let enrolment = fleet.enrolment(Role::Node, host).expect("enrolment");
        start(enrolment, bootstrap, &op, &stop).0
    })
    .await
    .expect("members start");
    let (liar_view, liar) = start(
        fleet.enrolment(Role::Node, "liar").expect("enrolment"),
        vec![seed.clone()],
        &op,
        &stop,
    );
    let _sink = start(
        fleet.enrolment(Role::Sink, "sink").expect("enrolment"),
        vec![seed.clone()],
        &op,
        &stop,
    );
    let cell_size = HONEST.len() + 1;
    let whole = |v: &watch::Receiver<MeshView>| {
        v.borrow()
            .cell
            .as_ref()
            .is_some_and(|c| c.members.len() == cell_size)
    };
    wait_until("a cell of every member", Duration::from_secs(90), || {
        views.iter().all(whole) && whole(&liar_view)
    })
    .await;

    // The fleet view works: a task applied by every member and by the
    // sink (which counts itself) is counted.
    op.publish(HONEST[0], "t1", &op.tag_task("t1", "x").expect("task"))
        .expect("publish");
    let hosts = cell_size as u32 + 1;
    let applied = |host: &str| {
        op.status(host)
            .is_some_and(|s| s.fleet_view.task("t1").counts.get("applied") == Some(&hosts))
    };
    wait_until(
        "the fleet view counts t1 applied everywhere",
        Duration::from_secs(60),
        || HONEST.iter().all(|h| applied(h)),
    )
    .await;

    // The liar sends the sink a summary of a cell in h1's name, then one
    // in its own: the same path, only the author differs.
    let peer_of =
        |v: &watch::Receiver<MeshView>| v.borrow().local_peer_id.expect("a peer id").to_string();
    let forged = made_up("forged-cell", HONEST[1], peer_of(&views[1]), "t1");
    let own = made_up("liars-cell", "liar", peer_of(&liar_view), "t1");
    let refused_before = local_metric(NOT_AUTHOR).unwrap_or(0.0);
    let holds = |host: &str, cell: &str| {
        op.status(host)
            .is_some_and(|s| s.fleet_view.cells.contains_key(cell))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !HONEST.iter().all(|h| holds(h, "liars-cell")) {
        assert!(
            Instant::now() < deadline,
            "the liar's own summary never arrived, so the refusal below would prove nothing"
        );
        for bytes in [&forged, &own] {
            liar.send(MeshCommand::SendSummaryUnchecked(bytes.clone()))
                .await
                .expect("liar runs");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    wait_until(
        "summaries refused as not their author's",
        Duration::from_secs(10),
        || local_metric(NOT_AUTHOR).unwrap_or(0.0) > refused_before,
    )
    .await;
    for host in HONEST {
        assert!(
            !holds(host, "forged-cell"),
            "{host} was shown a summary the liar sent in h1's name"
        );
        let counts = op.status(host).expect("status").fleet_view.task("t1");
        assert_eq!(
            counts.counts.get("applied"),
            Some(&(hosts + 999)),
            "{host}: the real cell, the sink and the liar's own (advisory) summary, nothing else"
        );
    }
}
