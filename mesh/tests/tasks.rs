//! The task plane on real libp2p members on loopback: a task handed to
//! one member reaches every member by gossip and is applied by exactly the
//! targeted ones; a member that was away catches up by anti-entropy after
//! it restarts and applies nothing twice; a revocation list delivered as a
//! task is enforced by every member; a forged task goes nowhere, and a
//! member that relays forgeries is soon ignored.

use std::path::PathBuf;
use std::time::Duration;

use starling_mesh::identity::Role;
use starling_mesh::swarm::{
    ask_for_status, MeshCommand, TaskPlaneStatus, FORGER_STRIKES, INBOX_DIR, LEDGER_FILE,
    QUERIES_DIR, TASK_STATUS_FILE,
};
use starling_proto::v1::task_payload::Body;
use starling_proto::v1::{RevocationList, TargetSelector, TaskPayload};
use starling_task::sign::{sign_task, unsigned_task};
use starling_task::OperatorKeyPair;

mod common;
use common::task_plane::*;
use common::Fleet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_reaches_every_member_and_only_the_targeted_apply_it() {
    const N: usize = 50;
    let fleet = Fleet::new();
    let op = Operator::new();
    let states = tempfile::tempdir().expect("tempdir");
    let tags_of = |i: usize| {
        if i.is_multiple_of(5) {
            vec!["web"]
        } else {
            vec![]
        }
    };
    let mut members = start_group(
        &fleet,
        &op,
        states.path(),
        &named("n", N, 3),
        50,
        tags_of,
        |_| None,
    )
    .await;
    let seed = listen_addr(&mut members[0]).await;
    let _sink = start_sink(&fleet, &op, &states.path().join("sink"), vec![seed]);
    wait_all(&members, "every member's task plane", 60, |m| {
        status(m).is_some()
    })
    .await;
    wait_all(&members, "a cell of every member", 120, |m| {
        m.view
            .borrow()
            .cell
            .as_ref()
            .is_some_and(|c| c.members.len() >= N / 2)
    })
    .await;

    // Targeted: hosts tagged web, and n001 by name; never n010.
    let target = TargetSelector {
        tags: vec!["web".into()],
        hosts: vec!["n001".into(), "n010".into()],
        exclude_hosts: vec!["n010".into()],
        ..Default::default()
    };
    let verdict = publish(&members[7], "dns", &op.task("dns-off", target, dns_off())).await;
    assert_eq!(verdict["verdict"], "accepted", "{verdict}");
    wait_all(&members, "the task on every member", 60, |m| {
        state_of(m, "dns-off").is_some()
    })
    .await;
    for (i, m) in members.iter().enumerate() {
        let targeted = (i.is_multiple_of(5) && i != 10) || i == 1;
        let want = if targeted { "applied" } else { "not_targeted" };
        assert_eq!(
            state_of(m, "dns-off").as_deref(),
            Some(want),
            "member n{i:03}"
        );
        let s = status(m).expect("status");
        let held = s
            .settings
            .iter()
            .any(|(k, _, v)| k == "sensor.kinds.dns_query" && v == "off");
        assert_eq!(
            held, targeted,
            "member n{i:03} holds the setting only when targeted"
        );
    }

    // Any member's fleet view counts every member once: the ten targeted
    // applied it, the other forty were not targeted, nor was the sink
    // (summed by the cell's aggregator and handed out by the sink, not
    // from a message per member).
    wait_all(&members, "the fleet view of the task", 60, |m| {
        status(m).is_some_and(|s| {
            let t = s.fleet_view.task("dns-off");
            t.counts.get("applied") == Some(&10) && t.counts.get("not_targeted") == Some(&41)
        })
    })
    .await;

    // A tag set by the fleet is a target from then on.
    let tag = set_tag("db");
    let db_hosts = TargetSelector {
        hosts: vec!["n002".into(), "n003".into()],
        ..Default::default()
    };
    assert_eq!(
        publish(&members[0], "tag", &op.task("tag-db", db_hosts, tag)).await["verdict"],
        "accepted"
    );
    let to_db = TargetSelector {
        tags: vec!["db".into()],
        ..Default::default()
    };
    assert_eq!(
        publish(&members[0], "dbcfg", &op.task("db-cfg", to_db, dns_off())).await["verdict"],
        "accepted"
    );
    wait_all(&members, "the tag-targeted task everywhere", 60, |m| {
        state_of(m, "db-cfg").is_some()
    })
    .await;
    for (i, m) in members.iter().enumerate() {
        let want = if i == 2 || i == 3 {
            "applied"
        } else {
            "not_targeted"
        };
        assert_eq!(
            state_of(m, "db-cfg").as_deref(),
            Some(want),
            "member n{i:03}"
        );
    }

    // A forged task is refused where it is handed in and never spreads.
    let forger = OperatorKeyPair::from_seed([7; 32]);
    let payload = TaskPayload {
        fleet: "test".into(),
        task_id: "forged".into(),
        not_before: now() - 60,
        not_after: now() + 3600,
        target: Some(every_host()),
        reason: String::new(),
        rollout: None,
        body: Some(dns_off()),
    };
    let forged = sign_task(&unsigned_task(&payload), &forger).expect("signed");
    let verdict = publish(&members[4], "forged", &forged).await;
    assert_eq!(verdict["verdict"], "refused");
    assert_eq!(verdict["reason"], "forged");
    // Anti-entropy runs every ~2 s: after several rounds nobody holds it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for m in &members {
        assert!(state_of(m, "forged").is_none());
    }
    assert_eq!(
        status(&members[4]).expect("status").refused.get("forged"),
        Some(&1)
    );
    for m in members {
        let _ = m.stop.send(true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_member_catches_up_and_revocations_are_enforced() {
    const N: usize = 8;
    let fleet = Fleet::new();
    let op = Operator::new();
    let states = tempfile::tempdir().expect("tempdir");
    let crl_of = |name: &str| Some(states.path().join(name).join("crl.pem"));
    let mut members = start_group(
        &fleet,
        &op,
        states.path(),
        &named("m", N, 1),
        50,
        |_| vec![],
        crl_of,
    )
    .await;
    let addr = listen_addr(&mut members[0]).await;
    let _sink = start_sink(&fleet, &op, &states.path().join("sink"), vec![addr.clone()]);
    wait_all(&members, "the whole cell", 60, |m| {
        m.view
            .borrow()
            .cell
            .as_ref()
            .is_some_and(|c| c.members.len() == N)
    })
    .await;

    // A first task: every member then holds one and reports to the cell's
    // aggregators, so the cell knows each (and can name one that leaves).
    assert_eq!(
        publish(
            &members[3],
            "first",
            &op.task("first", every_host(), set_tag("first"),),
        )
        .await["verdict"],
        "accepted"
    );
    wait_all(
        &members[..1],
        "the first task counted on every member",
        60,
        |m| {
            status(m).is_some_and(|s| {
                // Every member, and the sink (it counts itself).
                s.fleet_view.task("first").counts.get("applied") == Some(&(N as u32 + 1))
            })
        },
    )
    .await;

    // A member that is not an aggregator stops (an aggregator's leaving
    // would move the cell's summary to a new one that never heard from
    // it); two tasks go out while it is away.
    let aggregators = members[0]
        .view
        .borrow()
        .cell
        .as_ref()
        .map(|c| c.aggregators.clone())
        .unwrap_or_default();
    let away_name = (1..N)
        .rev()
        .map(|i| format!("m{i}"))
        .find(|n| !aggregators.contains(n))
        .expect("a member that is not an aggregator");
    let away_index: usize = away_name[1..].parse().expect("index");
    let mut away = members.remove(away_index);
    let _ = away.stop.send(true);
    // Wait until it has stopped (its audit trail closes with it): one still
    // running could take the next task by gossip first, and then report
    // nothing for it after its restart (seen once under the full suite).
    tokio::time::timeout(Duration::from_secs(30), async {
        while away.audit.recv().await.is_some() {}
    })
    .await
    .expect("the member sent away stopped");
    let away_state = away.state.clone();
    let a = publish(
        &members[1],
        "a",
        &op.task("while-away-1", every_host(), dns_off()),
    )
    .await;
    assert_eq!(a["verdict"], "accepted", "{a}");
    let tag = set_tag("late");
    assert_eq!(
        publish(
            &members[2],
            "b",
            &op.task("while-away-2", every_host(), tag)
        )
        .await["verdict"],
        "accepted"
    );
    wait_all(&members, "both tasks on the members present", 60, |m| {
        state_of(m, "while-away-2").as_deref() == Some("applied")
            && state_of(m, "while-away-1").as_deref() == Some("applied")
    })
    .await;
    // The fleet view names the member that is away as down.
    wait_all(&members[..1], "the absent member reported down", 60, |m| {
        status(m).is_some_and(|s| {
            let t = s.fleet_view.task("while-away-1");
            // The seven members present and the sink.
            t.counts.get("applied") == Some(&8)
                && t.hosts
                    .get(starling_task::rollup::DOWN)
                    .is_some_and(|h| h == std::slice::from_ref(&away_name))
        })
    })
    .await;
    // Longer than gossipsub keeps messages to resend: only anti-entropy
    // can bring them now.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let back = start(
        fleet.enrol(Role::Node, &away_name),
        vec![addr.clone()],
        &op,
        &away_state,
        &[],
        crl_of(&away_name),
    );
    let back = vec![back];
    wait_all(&back, "the returning member caught up", 60, |m| {
        state_of(m, "while-away-1").as_deref() == Some("applied")
            && state_of(m, "while-away-2").as_deref() == Some("applied")
    })
    .await;
    assert!(status(&back[0])
        .expect("status")
        .tags
        .contains(&"late".to_owned()));
    wait_all(
        &members[..1],
        "the returning member counted as applied",
        60,
        |m| {
            status(m).is_some_and(|s| {
                s.fleet_view.task("while-away-1").counts.get("applied") == Some(&9)
            })
        },
    )
    .await;
    // Each application is one audit event, naming the signer.
    let mut back = back;
    let mut changes = Vec::new();
    while let Ok(c) = back[0].audit.try_recv() {
        changes.push(c);
    }
    let mut applied: Vec<&str> = changes
        .iter()
        .filter(|c| c.state == "applied")
        .map(|c| c.task_id.as_str())
        .collect();
    applied.sort();
    assert_eq!(applied, ["while-away-1", "while-away-2"], "{changes:?}");
    assert!(changes
        .iter()
        .all(|c| c.signers == [op.key.id().0] && c.root_version == 1));
    members.push(back.pop().expect("member"));

    // A revocation list delivered as a task: every member writes it and
    // drops the revoked member.
    fleet.revoke("m3");
    let pem_text = std::fs::read_to_string(fleet.revocation_list()).expect("crl");
    let der = pem::parse(pem_text).expect("pem").into_contents();
    let revoke = Body::Revocations(RevocationList {
        generation: 1,
        crl_der: der,
    });
    assert_eq!(
        publish(&members[0], "crl", &op.task("crl-1", every_host(), revoke)).await["verdict"],
        "accepted"
    );
    let others: Vec<Member> = members
        .into_iter()
        .filter(|m| !m.state.ends_with("m3"))
        .collect();
    wait_all(
        &others,
        "the revocation list applied and written",
        60,
        |m| {
            state_of(m, "crl-1").as_deref() == Some("applied")
                && std::fs::read_to_string(m.state.join("crl.pem"))
                    .is_ok_and(|t| t.contains("X509 CRL"))
        },
    )
    .await;
    wait_all(
        &others,
        "the revoked member dropped from every view",
        60,
        |m| {
            m.view
                .borrow()
                .cell
                .as_ref()
                .is_some_and(|c| c.members.iter().all(|x| x.host != "m3"))
        },
    )
    .await;

    // A restart re-applies nothing and keeps every setting.
    let m1 = others
        .iter()
        .find(|m| m.state.ends_with("m1"))
        .expect("m1 runs");
    let before = status(m1).expect("status");
    let _ = m1.stop.send(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::remove_file(m1.state.join(TASK_STATUS_FILE)).expect("status removed");
    let mut again = vec![start(
        fleet.enrol(Role::Node, "m1"),
        vec![addr.clone()],
        &op,
        &m1.state,
        &[],
        crl_of("m1"),
    )];
    wait_all(&again, "the restarted member's status", 30, |m| {
        status(m).is_some()
    })
    .await;
    // A new task after the restart is the only state change reported: the
    // tasks applied before it are not reported again.
    let tag = set_tag("after");
    assert_eq!(
        publish(
            &again[0],
            "after",
            &op.task("after-restart", every_host(), tag)
        )
        .await["verdict"],
        "accepted"
    );
    let first = tokio::time::timeout(Duration::from_secs(10), again[0].audit.recv())
        .await
        .expect("an audit event")
        .expect("the plane runs");
    assert_eq!(
        (first.task_id.as_str(), first.state.as_str()),
        ("after-restart", "applied")
    );
    assert!(again[0].audit.try_recv().is_err(), "nothing else reported");
    let after = status(&again[0]).expect("status");
    assert_eq!(after.settings, before.settings);
    let after_states: Vec<(String, String)> = after
        .tasks
        .iter()
        .filter(|t| t.task_id != "after-restart")
        .map(|t| (t.task_id.clone(), t.state.clone()))
        .collect();
    let states_of = |s: &TaskPlaneStatus| -> Vec<(String, String)> {
        s.tasks
            .iter()
            .map(|t| (t.task_id.clone(), t.state.clone()))
            .collect()
    };
    assert_eq!(after_states, states_of(&before));
    for m in others.into_iter().chain(again) {
        let _ = m.stop.send(true);
    }
}

/// A ledger that no longer decodes does not stop the member: it is set
/// aside for a person to look at, the member starts with an empty one, and
/// the tasks still in their window come back from a peer and are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_ledger_is_set_aside_and_caught_up_from_peers() {
    let fleet = Fleet::new();
    let op = Operator::new();
    let states = tempfile::tempdir().expect("tempdir");
    let mut members = start_plain(&fleet, &op, states.path(), "l", 2, 2).await;
    let addr = listen_addr(&mut members[0]).await;
    assert_eq!(
        publish(
            &members[0],
            "tag",
            &op.task("tagged", every_host(), set_tag("kept"))
        )
        .await["verdict"],
        "accepted"
    );
    wait_all(&members, "the task applied on both", 60, |m| {
        state_of(m, "tagged").as_deref() == Some("applied")
    })
    .await;

    let gone = members.pop().expect("l1");
    let _ = gone.stop.send(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ledger = gone.state.join(LEDGER_FILE);
    let garbage = b"{\"tasks\": [truncated by a disk fault";
    std::fs::write(&ledger, garbage).expect("ledger overwritten");
    std::fs::remove_file(gone.state.join(TASK_STATUS_FILE)).expect("status removed");

    let back = vec![start(
        fleet.enrol(Role::Node, "l1"),
        vec![addr],
        &op,
        &gone.state,
        &[],
        None,
    )];
    wait_all(
        &back,
        "the task caught up after the ledger was set aside",
        60,
        |m| state_of(m, "tagged").as_deref() == Some("applied"),
    )
    .await;
    let aside: Vec<PathBuf> = std::fs::read_dir(&gone.state)
        .expect("state dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ledger.json.unreadable-"))
        })
        .collect();
    assert_eq!(aside.len(), 1, "one ledger set aside: {aside:?}");
    assert_eq!(
        std::fs::read(&aside[0]).expect("set-aside ledger"),
        garbage,
        "kept as it was"
    );
    let rewritten = std::fs::read(&ledger).expect("a new ledger");
    assert!(serde_json::from_slice::<serde_json::Value>(&rewritten).is_ok());
    for m in members.into_iter().chain(back) {
        let _ = m.stop.send(true);
    }
}

/// A crash between admitting a task and applying it leaves the task in
/// the ledger as pending (it is saved before it is applied): the next
/// start applies it, once, without waiting for a peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_admitted_but_not_applied_before_a_crash_is_applied_at_the_next_start() {
    let fleet = Fleet::new();
    let op = Operator::new();
    let states = tempfile::tempdir().expect("tempdir");
    let state = states.path().join("c0");
    std::fs::create_dir_all(&state).expect("state dir");
    // The ledger as the crash left it: the task admitted, not applied.
    let root = starling_task::TrustedRoot::reload(&std::fs::read(&op.root_file).expect("root"))
        .expect("root loads");
    let mut plane = starling_task::TaskPlane::new(
        root,
        starling_task::Ledger::default(),
        "c0",
        Default::default(),
    );
    let task = op.task("interrupted", every_host(), set_tag("resumed"));
    assert!(matches!(
        plane.receive(&task, now()),
        starling_task::Received::Accepted { apply: true, .. }
    ));
    std::fs::write(
        state.join(LEDGER_FILE),
        serde_json::to_vec(plane.ledger()).expect("ledger encodes"),
    )
    .expect("ledger written");

    let mut alone = vec![start(
        fleet.enrol(Role::Node, "c0"),
        vec![],
        &op,
        &state,
        &[],
        None,
    )];
    let change = tokio::time::timeout(Duration::from_secs(20), alone[0].audit.recv())
        .await
        .expect("an audit event within 20 s")
        .expect("the plane runs");
    assert_eq!(
        (change.task_id.as_str(), change.state.as_str()),
        ("interrupted", "applied")
    );
    wait_all(&alone, "the tag in force", 20, |m| {
        status(m).is_some_and(|s| s.tags.contains(&"resumed".to_string()))
    })
    .await;
    assert!(alone[0].audit.try_recv().is_err(), "applied once");

    // Stopped and started again: the ledger says applied, nothing is
    // applied again.
    let m = alone.pop().expect("c0");
    let _ = m.stop.send(true);
    let mut closed = m.audit;
    tokio::time::timeout(Duration::from_secs(10), async {
        while closed.recv().await.is_some() {}
    })
    .await
    .expect("stopped");
    let mut again = start(
        fleet.enrol(Role::Node, "c0"),
        vec![],
        &op,
        &state,
        &[],
        None,
    );
    wait_all(
        std::slice::from_ref(&again),
        "the status after the restart",
        20,
        |m| state_of(m, "interrupted").as_deref() == Some("applied"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(again.audit.try_recv().is_err(), "nothing applied again");
    let _ = again.stop.send(true);
}

/// The status file is kept fresh only while someone reads it: a task
/// applied on a host nobody asks about does not rewrite it at once (every
/// host of a fleet rewriting it each second cost 300 members of one
/// process their timers), and an ask brings it up to date within a
/// couple of seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_is_rewritten_at_once_only_when_asked_for() {
    let fleet = Fleet::new();
    let op = Operator::new();
    let states = tempfile::tempdir().expect("tempdir");
    let members = start_plain(&fleet, &op, states.path(), "s", 1, 1).await;
    let m = &members[0];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(s) = status_unasked(m) {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "no first status");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(first.tasks.is_empty());
    assert_eq!(
        publish(m, "tag", &op.task("quiet", every_host(), set_tag("q"))).await["verdict"],
        "accepted"
    );
    // Unread, the status stays as it was for seconds after the change
    // (read, it is rewritten within one).
    for _ in 0..30 {
        let s = status_unasked(m).expect("status");
        assert_eq!(
            s.updated_unix_ms, first.updated_unix_ms,
            "rewritten though nobody asked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let asked = ask_for_status(&m.state).expect("ask");
    let asked_ms = asked
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = status_unasked(m).expect("status");
        if s.updated_unix_ms >= asked_ms {
            assert!(
                s.tasks.iter().any(|t| t.task_id == "quiet"),
                "the fresh status shows the task: {:?}",
                s.tasks
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not rewritten within 5 s of the ask"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for m in members {
        let _ = m.stop.send(true);
    }
}

/// A compromised member (its certificate is genuine; its trust root was
/// replaced by an intruder's, so it takes the intruder's tasks as valid and
/// relays them) floods forged tasks by gossip and offers them by
/// anti-entropy. Every honest member refuses them, checks only the first
/// few it is sent (a key its root does not list could be a rotation it has
/// not heard of, so the forger is held off after `FORGER_STRIKES` of
/// them), shuts the forger out (it drops from every honest member's
/// cell), and the operator's task still reaches all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_relaying_forgeries_is_ignored_and_honest_tasks_arrive() {
    const HONEST: usize = 7;
    const FORGED: usize = 64;
    let fleet = Fleet::new();
    let op = Operator::new();
    let intruder = Operator::with_seed(66);
    let states = tempfile::tempdir().expect("tempdir");
    let mut honest = start_plain(&fleet, &op, states.path(), "h", HONEST, 50).await;
    let addr = listen_addr(&mut honest[0]).await;
    let forger = start(
        fleet.enrol(Role::Node, "forger"),
        vec![addr.clone()],
        &intruder,
        &states.path().join("forger"),
        &[],
        None,
    );
    let everyone = |m: &Member| {
        m.view
            .borrow()
            .cell
            .as_ref()
            .is_some_and(|c| c.members.len() == HONEST + 1)
    };
    wait_all(&honest, "a cell of every member", 120, everyone).await;
    wait_all(
        std::slice::from_ref(&forger),
        "the forger in the cell",
        60,
        everyone,
    )
    .await;

    // The flood: every forgery handed to the forger at once (its inbox
    // takes 16 a second), and the operator's task in the middle of it.
    let inbox = states.path().join("forger").join(INBOX_DIR);
    for i in 0..FORGED {
        let task = intruder.task(&format!("forged-{i:02}"), every_host(), dns_off());
        let tmp = inbox.join(format!("f{i:02}.part"));
        std::fs::write(&tmp, task).expect("inbox write");
        std::fs::rename(&tmp, inbox.join(format!("f{i:02}.task"))).expect("inbox rename");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let honest_task = op.task("honest", every_host(), dns_off());
    let verdict = publish(&honest[3], "honest", &honest_task).await;
    assert_eq!(verdict["verdict"], "accepted", "{verdict}");
    wait_all(&honest, "the honest task applied", 30, |m| {
        state_of(m, "honest").as_deref() == Some("applied")
    })
    .await;
    // The forger took all of its own forgeries, so it offered each.
    wait_all(
        std::slice::from_ref(&forger),
        "the forger's flood",
        30,
        |m| status(m).is_some_and(|s| s.tasks.len() >= FORGED),
    )
    .await;
    // Held off, the forger's connections are refused: every honest
    // member's membership finds it gone.
    wait_all(&honest, "the forger out of every honest cell", 40, |m| {
        m.view
            .borrow()
            .cell
            .as_ref()
            .is_some_and(|c| c.members.iter().all(|p| p.host != "forger"))
    })
    .await;
    // Anti-entropy every ~2 s: several exchanges with the forger, had it
    // not been shut out.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut checked = Vec::new();
    for m in &honest {
        let s = status(m).expect("status");
        assert!(
            s.tasks.iter().all(|t| !t.task_id.starts_with("forged")),
            "an honest member took a forgery"
        );
        checked.push(s.refused.get("forged").copied().unwrap_or(0));
    }
    eprintln!("forgeries checked per honest member: {checked:?}");
    // Unprotected, each would check every forgery at least once (by
    // gossip from the forger) and again at each exchange with it. Held
    // off after FORGER_STRIKES suspect copies: at most that many less one
    // by gossip, and one exchange's worth.
    let total: u64 = checked.iter().sum();
    let most = 2 * u64::from(FORGER_STRIKES) - 1;
    assert!(
        checked.iter().all(|&n| n <= most),
        "forgeries checked per honest member: {checked:?} (at most {most} each)"
    );
    assert!(total > 0, "the forger did send: {checked:?}");
    let _ = forger.stop.send(true);
    for m in honest {
        let _ = m.stop.send(true);
    }
}

/// Asks `m` for `cell`'s table as `starlingctl fleet --cell` does (a
/// question file, the answer beside it).
async fn ask_cell(m: &Member, cell: &str) -> starling_task::fleet::CellTable {
    let dir = m.state.join(QUERIES_DIR);
    let tmp = dir.join("q.part");
    std::fs::write(&tmp, serde_json::json!({ "cell": cell }).to_string()).expect("question");
    std::fs::rename(&tmp, dir.join("q.query")).expect("question handed over");
    let answer = dir.join("q.result");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(bytes) = std::fs::read(&answer) {
            std::fs::remove_file(&answer).expect("answer taken");
            let value: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
            return serde_json::from_value(value["table"].clone())
                .unwrap_or_else(|e| panic!("no table in {value}: {e}"));
        }
        assert!(tokio::time::Instant::now() < deadline, "no answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The fleet's hosts without a task in sight: every member's heartbeat
/// (version, machine facts, the spool backlog its node gives it) reaches
/// its cell's aggregator, every member hears the cell's summary counting
/// each live host's version, a member that is not the aggregator gets the
/// cell's whole table by asking it, and a stopped member is named down,
/// with since when, in the summary and in the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_view_shows_every_host_its_heartbeat_and_who_is_down() {
    const N: usize = 6;
    let fleet = Fleet::new();
    let op = Operator::new();
    let states = tempfile::tempdir().expect("tempdir");
    let mut members = start_group(
        &fleet,
        &op,
        states.path(),
        &named("f", N, 1),
        N as u32,
        |_| vec!["rack-1"],
        |_| None,
    )
    .await;
    let seed = listen_addr(&mut members[0]).await;
    let _sink = start_sink(&fleet, &op, &states.path().join("sink"), vec![seed]);
    // What f3's node would say of its spool.
    members[3]
        .commands
        .send(MeshCommand::SpoolBacklog(1234))
        .await
        .expect("command taken");
    wait_all(&members, "a cell of every member", 120, |m| {
        m.view
            .borrow()
            .cell
            .as_ref()
            .is_some_and(|c| c.members.len() == N)
    })
    .await;
    // The members' cell; the sink counts itself in a cell of its own
    // (once it has run for two minutes, as it holds no task).
    let sink_cell = starling_mesh::swarm::sink_cell("sink");
    let versions_counted = |m: &Member| -> u32 {
        status(m).map_or(0, |s| {
            s.fleet_view
                .cells
                .iter()
                .filter(|(name, _)| **name != sink_cell)
                .map(|(_, c)| c.hosts.versions.values().sum::<u32>())
                .sum()
        })
    };
    // Members report once their cell's aggregators have settled (30 s).
    wait_all(
        &members,
        "a summary counting every host's version",
        120,
        |m| versions_counted(m) == N as u32,
    )
    .await;
    let s = status(&members[0]).expect("status");
    let cells: Vec<_> = (s.fleet_view.cells.iter())
        .filter(|(name, _)| **name != sink_cell)
        .collect();
    assert_eq!(cells.len(), 1, "{:?}", s.fleet_view.cells.keys());
    let (cell, summary) = cells[0];
    assert_eq!(summary.hosts.versions.get("test"), Some(&(N as u32)));
    assert_eq!(summary.hosts.down_count, 0);

    // A member that is not an aggregator asks the one that summed the cell.
    let asker = members
        .iter()
        .position(|m| !m.view.borrow().is_aggregator())
        .expect("a member that is not an aggregator");
    let table = ask_cell(&members[asker], cell).await;
    assert_eq!(table.hosts.len(), N);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("kernel");
    for row in &table.hosts {
        assert!(row.alive, "{}", row.host);
        let beat = row.heartbeat.as_ref().expect("a heartbeat");
        assert_eq!(beat.agent_version, "test");
        assert_eq!(beat.kernel, kernel.trim());
        assert_eq!(beat.arch, std::env::consts::ARCH);
        assert_eq!(beat.tags, ["rack-1"]);
        assert!(beat.rss_bytes > 0);
        assert!(!beat.addrs.is_empty());
        let backlog = if row.host == "f3" { 1234 } else { 0 };
        assert_eq!(beat.spool_backlog, backlog, "{}", row.host);
    }

    // A member stops: the summary names it down, and so does the table.
    let gone = (0..N)
        .rev()
        .find(|&i| i != asker && !members[i].view.borrow().is_aggregator())
        .expect("another member that is not an aggregator");
    let gone_name = format!("f{gone}");
    let stopped_at = now() * 1000;
    let _ = members[gone].stop.send(true);
    let others: Vec<&Member> = (0..N).filter(|&i| i != gone).map(|i| &members[i]).collect();
    let down_named = |m: &Member| {
        status(m).is_some_and(|s| {
            s.fleet_view
                .cells
                .values()
                .any(|c| c.hosts.down.iter().any(|d| d.host == gone_name))
        })
    };
    // Noticed by SWIM, then in the next summary (heartbeats alone: every
    // 60 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !others.iter().all(|m| down_named(m)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{gone_name} not named down"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = status(&members[asker]).expect("status");
    let down = &s.fleet_view.cells[cell].hosts.down;
    assert_eq!(down.len(), 1);
    // Down since it was last seen live: around when it stopped.
    assert!(
        down[0].since_ms + 30_000 >= stopped_at && down[0].since_ms <= stopped_at + 30_000,
        "down since {} for a stop at {stopped_at}",
        down[0].since_ms
    );
    let table = ask_cell(&members[asker], cell).await;
    let row = table
        .hosts
        .iter()
        .find(|r| r.host == gone_name)
        .expect("the stopped host is still in the table");
    assert!(!row.alive);
    assert_eq!(table.hosts.iter().filter(|r| r.alive).count(), N - 1);
    for m in members {
        let _ = m.stop.send(true);
    }
}
