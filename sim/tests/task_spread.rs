//! The task plane's production state machines on a simulated network of
//! 1,000 hosts (sim/src/task_spread.rs): every host comes to hold every
//! task despite loss, a host that was away catches up in one exchange,
//! a forgery reaches nobody, and a run is reproducible from its seed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use starling_proto::v1::task_payload::Body;
use starling_proto::v1::{HostTags, TagChange, TargetSelector, TaskPayload};
use starling_sim::task_spread::{SpreadConfig, TaskSpread};
use starling_task::root::new_root;
use starling_task::sign::{sign_root, sign_task, unsigned_root, unsigned_task};
use starling_task::OperatorKeyPair;

const FLEET: &str = "sim";

fn epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn signed_root(key: &OperatorKeyPair, epoch: u64) -> Vec<u8> {
    let root = new_root(
        FLEET,
        1,
        epoch + 86_400,
        &[(key.public_key(), "operator".into())],
        1,
        1,
    )
    .expect("a root");
    sign_root(&unsigned_root(&root), key).expect("signed root")
}

fn tag_task(key: &OperatorKeyPair, epoch: u64, id: &str, target: TargetSelector) -> Vec<u8> {
    let payload = TaskPayload {
        fleet: FLEET.into(),
        task_id: id.into(),
        not_before: epoch - 60,
        not_after: epoch + 3600,
        target: Some(target),
        reason: "simulation".into(),
        rollout: None,
        body: Some(Body::Tags(HostTags {
            changes: vec![TagChange {
                tag: id.into(),
                generation: 1,
                remove: false,
            }],
        })),
    };
    sign_task(&unsigned_task(&payload), key).expect("signed task")
}

fn everyone() -> TargetSelector {
    TargetSelector {
        all: true,
        ..Default::default()
    }
}

fn fleet(seed: u64, loss: f64) -> (TaskSpread, OperatorKeyPair, u64) {
    let key = OperatorKeyPair::from_seed([9; 32]);
    let epoch = epoch();
    let spread = TaskSpread::new(
        SpreadConfig {
            hosts: 1000,
            loss,
            seed,
            ..Default::default()
        },
        &signed_root(&key, epoch),
        epoch,
    )
    .expect("a fleet");
    (spread, key, epoch)
}

#[test]
fn every_host_holds_every_task_despite_loss_within_two_sync_periods() {
    let (mut spread, key, epoch) = fleet(7, 0.05);
    spread.run_for(Duration::from_secs(15));
    let all = spread.publish(3, tag_task(&key, epoch, "all", everyone()));
    // A task for one host is still relayed to, and held by, every host.
    let one = spread.publish(
        700,
        tag_task(
            &key,
            epoch,
            "one",
            TargetSelector {
                hosts: vec!["host-0000042".into()],
                ..Default::default()
            },
        ),
    );
    assert!(
        spread.run_until_all_hold(Duration::from_secs(20)),
        "held by {} and {} of 1000 after 20 s",
        spread.held_by(all),
        spread.held_by(one)
    );
    for task in [all, one] {
        let p99 = spread.time_to_share(task, 0.99).expect("99 %");
        // Gossip, not anti-entropy, carries the bulk: a few hops of 50 ms.
        assert!(p99 < Duration::from_secs(2), "p99 {p99:?}");
    }
    let (refused, duplicates) = spread.refused_and_duplicates();
    assert_eq!(refused, 0);
    assert!(duplicates > 0, "eager push sends copies that cross");
}

#[test]
fn a_host_that_was_away_catches_up_in_one_exchange() {
    let (mut spread, key, epoch) = fleet(11, 0.0);
    spread.take_offline(500);
    let tasks: Vec<usize> = (0..20)
        .map(|i| spread.publish(i * 37, tag_task(&key, epoch, &format!("t{i}"), everyone())))
        .collect();
    spread.run_for(Duration::from_secs(30));
    for &t in &tasks {
        assert_eq!(spread.held_by(t), 999, "all but the host away");
    }
    // Gossip has moved on: only anti-entropy can bring it level.
    spread.bring_online(500);
    let back = spread.now();
    spread.run_for(Duration::from_secs(1));
    for &t in &tasks {
        let at = spread.held_at(t, 500).expect("caught up within a second");
        // Summary and answer, fetch and tasks: two round trips of 100 ms.
        assert_eq!(at - back, Duration::from_millis(200), "task {t}");
    }
}

#[test]
fn a_forged_task_is_refused_by_the_first_hosts_and_reaches_nobody() {
    let (mut spread, _key, epoch) = fleet(3, 0.0);
    let forger = OperatorKeyPair::from_seed([66; 32]);
    let forged = spread.inject(10, tag_task(&forger, epoch, "forged", everyone()));
    spread.run_for(Duration::from_secs(30));
    assert_eq!(spread.held_by(forged), 0);
    let (refused, _) = spread.refused_and_duplicates();
    // Refused by each of the forger's peers once, relayed by none; then
    // anti-entropy offers it nowhere, since nobody holds it.
    assert_eq!(refused, spread.peers_of(10) as u64);
}

#[test]
fn the_same_seed_gives_the_same_trace_and_another_seed_another() {
    let run = |seed| {
        let (mut spread, key, epoch) = fleet(seed, 0.01);
        spread.run_for(Duration::from_secs(5));
        spread.publish(1, tag_task(&key, epoch, "a", everyone()));
        spread.run_for(Duration::from_secs(25));
        (spread.trace_hash(), spread.bytes())
    };
    let first = run(5);
    assert_eq!(first, run(5));
    assert_ne!(first.0, run(6).0);
}
