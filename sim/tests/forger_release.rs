//! A forger is held off again as soon as its hold ends and it forges
//! again. A compromised member (the `hostile` test double: a genuine
//! certificate, an agent that gossips whatever it is handed) floods tasks
//! with a bad signature by the operator's key; every honest member holds
//! it off at its first copy, and again at its first copy after the hold:
//! the task plane looks at that copy. (When gossipsub's own penalty for
//! invalid messages scored the topic, the forger came back graylisted,
//! since gossipsub does not decay the score of a peer that is away:
//! connected, every message's signature checked, none looked at, for the
//! 11 s the penalty took to decay.)

use std::time::{Duration, Instant};

use prost::Message as _;
use starling_mesh::enrol::Enrolment;
use starling_mesh::identity::Role;
use starling_mesh::swarm::{MeshCommand, MeshConfig, MeshView};
use starling_mesh::Multiaddr;
use starling_proto::v1::{SignedTask, TaskPayload};
use starling_sim::cell_settings::test_cell;
use starling_sim::in_process::{spawn_member, start_seeded, wait_until};
use starling_sim::process::local_metric;
use starling_sim::tasks::Operator;
use starling_sim::Fleet;
use tokio::sync::{mpsc, watch};

const HONEST: [&str; 3] = ["h0", "h1", "h2"];
/// The honest members' hold, short so the test sees its end.
const HOLD: Duration = Duration::from_secs(4);
const HELD: &str = "starling_task_forgers_total{via=\"gossip\"}";
const CHECKED: &str = "starling_tasks_refused_total{reason=\"forged\"}";

/// An honest member (with a task plane), or the forger (without one: it
/// gossips what it is handed).
fn start(
    enrolment: Enrolment,
    bootstrap: Vec<Multiaddr>,
    op: Option<&Operator>,
    stop: &watch::Receiver<bool>,
) -> (watch::Receiver<MeshView>, mpsc::Sender<MeshCommand>) {
    let host = enrolment.identity().name.clone();
    let tasks = op.map(|op| {
        let mut settings = op.settings(&host, Duration::from_secs(10));
        settings.forger_hold = HOLD;
        settings
    });
    let config = MeshConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("multiaddr")],
        bootstrap,
        cell: Some(test_cell("release", HONEST.len() as u32 + 1)),
        tasks,
        ..Default::default()
    };
    spawn_member(enrolment, config, stop).expect("mesh starts")
}

fn metric(series: &str) -> f64 {
    local_metric(series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forger_is_held_off_again_at_its_first_forgery_after_its_hold() {
    // The recorder before any member counts.
    let _ = local_metric(HELD);
    let fleet = Fleet::new().expect("fleet");
    let dir = tempfile::tempdir().expect("tempdir");
    let op = Operator::new(dir.path(), "sim").expect("operator");
    let (_stop_tx, stop) = watch::channel(false);
    let (views, seed) = start_seeded(&HONEST, |host, bootstrap| {
        let enrolment = fleet.enrolment(Role::Node, host).expect("enrolment");
        start(enrolment, bootstrap, Some(&op), &stop).0
    })
    .await
    .expect("members start");
    let (forger_view, forger) = start(
        fleet.enrolment(Role::Node, "forger").expect("enrolment"),
        vec![seed.clone()],
        None,
        &stop,
    );
    let whole = |v: &watch::Receiver<MeshView>| {
        v.borrow()
            .cell
            .as_ref()
            .is_some_and(|c| c.members.len() == HONEST.len() + 1)
    };
    wait_until("a cell of every member", Duration::from_secs(90), || {
        views.iter().all(whole) && whole(&forger_view)
    })
    .await;

    // Forgeries: the operator's signature on another payload, 100 a
    // second for the rest of the test.
    let template =
        SignedTask::decode(op.tag_task("t", "x").expect("task").as_slice()).expect("decodes");
    let mut payload = TaskPayload::decode(template.payload.as_slice()).expect("decodes");
    let flood = tokio::spawn(async move {
        for i in 0u64.. {
            payload.task_id = format!("forged-{i}");
            let forgery = SignedTask {
                payload: payload.encode_to_vec(),
                signatures: template.signatures.clone(),
            }
            .encode_to_vec();
            if forger
                .send(MeshCommand::GossipTaskUnchecked(forgery))
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let honest = HONEST.len() as f64;
    // Each member, not the count of holds: with a hold of 4 s, a member
    // that holds the forger off twice while a slow one has not yet would
    // make the count without every member.
    let forger_peer = forger_view.borrow().local_peer_id.expect("a peer id");
    let admitted = |v: &watch::Receiver<MeshView>| v.borrow().admitted.contains_key(&forger_peer);
    let mut has_held = vec![false; views.len()];
    wait_until(
        "every honest member holds the forger off",
        Duration::from_secs(30),
        || {
            for (held, v) in has_held.iter_mut().zip(&views) {
                *held |= !admitted(v);
            }
            has_held.iter().all(|h| *h) && metric(HELD) >= honest
        },
    )
    .await;
    let first_checks = metric(CHECKED);
    assert!(
        first_checks <= 2.0 * honest,
        "a bad signature is certain: each member checks one copy or two in flight, checked {first_checks}"
    );

    // The hold ends; the forger comes back and forges again. Each member
    // looks at its first copy after the forger is admitted again and holds
    // it off at once: the forger stays admitted for a moment (the view is
    // published about once a second), not until gossipsub's penalty has
    // decayed (about 11 s with the topic scored).
    let mut back_since: Vec<Option<Instant>> = vec![None; views.len()];
    let mut stayed: Vec<Duration> = vec![Duration::ZERO; views.len()];
    let started = Instant::now();
    let deadline = started + HOLD + Duration::from_secs(30);
    loop {
        let now = Instant::now();
        for (i, v) in views.iter().enumerate() {
            match (admitted(v), back_since[i]) {
                (true, None) => back_since[i] = Some(now),
                (false, Some(since)) => {
                    stayed[i] = stayed[i].max(now - since);
                    back_since[i] = None;
                }
                _ => {}
            }
        }
        if metric(HELD) >= 2.0 * honest && back_since.iter().all(Option::is_none) {
            break;
        }
        assert!(
            now < deadline,
            "the forger was not held off again by every member: held {} times, admitted for {stayed:?}",
            metric(HELD)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let checked = metric(CHECKED) - first_checks;
    eprintln!(
        "held off again {:?} after the first holds; admitted meanwhile for {stayed:?}; {checked} more copies checked",
        started.elapsed()
    );
    assert!(
        stayed.iter().all(|d| *d < Duration::from_secs(4)),
        "a member kept the forger admitted for {stayed:?} after its hold without looking at its forgeries"
    );
    assert!(
        checked >= honest && checked <= 2.0 * honest,
        "each member looked at the forger's first copy after the hold: {checked} checked"
    );
    flood.abort();
}
