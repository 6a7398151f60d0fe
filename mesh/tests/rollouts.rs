//! Staged rollouts on real libp2p members and a sink on loopback
//! (docs/rollouts.md): a task with a plan is applied wave by wave, a wave
//! only once every host of the one before soaked; a task that makes the
//! hosts that take it unhealthy halts after its first wave, the hosts
//! that took it take it back by themselves, and no later wave applies it;
//! a rollout the operators abort (a signed rollout task) is taken back
//! the same way.
//!
//! The hosts' health is what the node tells its mesh
//! (`MeshCommand::Health`); here the test tells it, turning a host
//! unhealthy as soon as it applied the poison task, in place of a node
//! whose sensor or uplink the task broke.

use std::collections::BTreeSet;
use std::time::Duration;

use starling_mesh::swarm::MeshCommand;
use starling_proto::v1::{RolloutPlan, RolloutWave};
use starling_task::rollout::rollout_point;
use starling_task::sign::{sign_task, unsigned_task};

mod common;
use common::task_plane::*;
use common::Fleet;

const N: usize = 12;
/// The first wave's share, in basis points: a quarter of the hosts.
const FIRST_WAVE: u32 = 2_500;

/// Two waves (a quarter, then everyone), each soaking `soak_secs` and
/// tolerating no failure.
fn plan(soak_secs: u32) -> RolloutPlan {
    let wave = |share| RolloutWave {
        share_basis_points: share,
        soak_secs,
        max_failed_basis_points: 0,
        ..Default::default()
    };
    RolloutPlan {
        waves: vec![wave(FIRST_WAVE), wave(10_000)],
    }
}

/// A task id whose first wave takes in 2 to 4 of `names` (the draw is per
/// task, so the test picks one that makes both waves non-empty).
fn task_id_with_small_first_wave(prefix: &str, names: &[String]) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| {
            let first = names
                .iter()
                .filter(|n| rollout_point(id, n) < FIRST_WAVE)
                .count();
            (2..=4).contains(&first)
        })
        .expect("some id")
}

/// Task `id` doing `body` on every host, in the waves of [`plan`].
fn planned(
    op: &Operator,
    id: &str,
    soak_secs: u32,
    body: starling_proto::v1::task_payload::Body,
) -> Vec<u8> {
    let payload = starling_proto::v1::TaskPayload {
        fleet: "test".into(),
        task_id: id.into(),
        not_before: now() - 60,
        not_after: now() + 3600,
        target: Some(every_host()),
        reason: "rollout test".into(),
        rollout: Some(plan(soak_secs)),
        body: Some(body),
    };
    sign_task(&unsigned_task(&payload), &op.key).expect("signed task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waves_open_in_turn_a_poison_task_halts_and_an_abort_rolls_back() {
    let fleet = Fleet::new();
    let op = Operator::new();
    let states = tempfile::tempdir().expect("tempdir");
    let names = named("r", N, 2);
    let mut members = start_group(
        &fleet,
        &op,
        states.path(),
        &names,
        N as u32,
        |_| vec![],
        |_| None,
    )
    .await;
    let seed = listen_addr(&mut members[0]).await;
    let _sink = start_sink(&fleet, &op, &states.path().join("sink"), vec![seed]);
    wait_all(&members, "a whole cell", 120, |m| {
        m.view
            .borrow()
            .cell
            .as_ref()
            .is_some_and(|c| c.members.len() >= N)
    })
    .await;

    // A healthy task: wave 1 applies only once every host of wave 0
    // soaked, and in the end every host applied it.
    let id = task_id_with_small_first_wave("tag", &names);
    let first: BTreeSet<usize> = (0..N)
        .filter(|i| rollout_point(&id, &names[*i]) < FIRST_WAVE)
        .collect();
    let verdict = publish(&members[0], "tag", &planned(&op, &id, 3, set_tag("rolled"))).await;
    assert_eq!(verdict["verdict"], "accepted", "{verdict}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let states: Vec<Option<String>> = members.iter().map(|m| state_of(m, &id)).collect();
        let later_took_it = (0..N).filter(|i| !first.contains(i)).any(|i| {
            matches!(
                states[i].as_deref(),
                Some("pending" | "soaking" | "applied")
            )
        });
        if later_took_it {
            for i in &first {
                assert_eq!(
                    states[*i].as_deref(),
                    Some("applied"),
                    "{}: wave 1 opened before wave 0 soaked ({states:?})",
                    names[*i]
                );
            }
        }
        if states.iter().all(|s| s.as_deref() == Some("applied")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rollout did not finish: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for m in &members {
        let s = status(m).expect("status");
        assert!(s.tags.iter().any(|t| t == "rolled"), "the tag is in force");
    }

    // A poison task: every host that applies it turns unhealthy (told so
    // while it soaks; the soak is long enough for the test to see it).
    let id = task_id_with_small_first_wave("poison", &names);
    let first: BTreeSet<usize> = (0..N)
        .filter(|i| rollout_point(&id, &names[*i]) < FIRST_WAVE)
        .collect();
    let verdict = publish(&members[0], "poison", &planned(&op, &id, 20, dns_off())).await;
    assert_eq!(verdict["verdict"], "accepted", "{verdict}");
    let mut poisoned = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let states: Vec<Option<String>> = members.iter().map(|m| state_of(m, &id)).collect();
        for (i, s) in states.iter().enumerate() {
            if s.as_deref() == Some("soaking") && poisoned.insert(i) {
                members[i]
                    .commands
                    .send(MeshCommand::Health(Some("sensor not loaded".into())))
                    .await
                    .expect("member running");
            }
        }
        for (i, s) in states.iter().enumerate() {
            if !first.contains(&i) {
                assert!(
                    !matches!(
                        s.as_deref(),
                        Some("pending" | "soaking" | "applied" | "failed")
                    ),
                    "{} of wave 1 took the poison task ({states:?})",
                    names[i]
                );
            }
        }
        let done = states.iter().enumerate().all(|(i, s)| {
            let want = if first.contains(&i) {
                "failed"
            } else {
                "stopped"
            };
            s.as_deref() == Some(want)
        });
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the poison task did not halt: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(poisoned, first, "exactly the first wave took it");
    for (i, m) in members.iter().enumerate() {
        let s = status(m).expect("status");
        let off = s
            .settings
            .iter()
            .any(|(k, _, v)| k == "sensor.kinds.dns_query" && v == "off");
        assert!(!off, "{}: the poison setting is taken back", names[i]);
        let task = s.tasks.iter().find(|t| t.task_id == id).expect("held");
        if !first.contains(&i) {
            assert!(
                task.detail.contains("rollout halted"),
                "{}: {}",
                names[i],
                task.detail
            );
        } else {
            assert!(
                task.detail.contains("sensor not loaded"),
                "{}: {}",
                names[i],
                task.detail
            );
        }
    }

    // The operators abort a rollout whose first wave soaks: its hosts
    // take the task back, the rest never apply it.
    for m in &members {
        let _ = m.commands.send(MeshCommand::Health(None)).await;
    }
    let id = task_id_with_small_first_wave("aborted", &names);
    let first: BTreeSet<usize> = (0..N)
        .filter(|i| rollout_point(&id, &names[*i]) < FIRST_WAVE)
        .collect();
    let verdict = publish(
        &members[0],
        "long",
        &planned(&op, &id, 600, set_tag("long")),
    )
    .await;
    assert_eq!(verdict["verdict"], "accepted", "{verdict}");
    let soaking = |i: usize| state_of(&members[i], &id).as_deref() == Some("soaking");
    wait_each(&members, "the first wave soaking", 60, |i, _| {
        !first.contains(&i) || soaking(i)
    })
    .await;
    let abort = op.task(
        "abort-it",
        every_host(),
        starling_proto::v1::task_payload::Body::RolloutControl(
            starling_proto::v1::RolloutControl {
                task_ids: vec![id.clone()],
                action: starling_proto::v1::RolloutAction::Abort as i32,
                generation: 1,
            },
        ),
    );
    let verdict = publish(&members[5], "abort", &abort).await;
    assert_eq!(verdict["verdict"], "accepted", "{verdict}");
    wait_each(&members, "the aborted rollout taken back", 60, |i, m| {
        let want = if first.contains(&i) {
            "rolled_back"
        } else {
            "stopped"
        };
        state_of(m, &id).as_deref() == Some(want)
    })
    .await;
    for m in &members {
        let s = status(m).expect("status");
        assert!(!s.tags.iter().any(|t| t == "long"), "the tag is taken back");
    }
    for m in members {
        let _ = m.stop.send(true);
    }
}
