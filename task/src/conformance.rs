//! One case per refusal reason: each asserts the reason and that the host
//! applied nothing; and the honest paths (apply once, duplicates, cancel,
//! key revocation, generations, root rotation) beside them.

use prost::Message as _;
use starling_proto::v1::config_setting::Setting;
use starling_proto::v1::task_payload::Body;
use starling_proto::v1::{
    CancelTasks, ConfigSetting, FleetConfig, HostTags, RevokeOperatorKeys, RolloutPlan,
    RolloutWave, SensorKindSwitch, SignedRoot, SignedTask, TagChange, TargetSelector, TaskKind,
    TaskPayload,
};

use crate::check::{check_task, Blame, Refusal, RefusalReason, Verdict, CLOCK_SKEW_ALLOWANCE_SECS};
use crate::ledger::{Ledger, Plan, TaskState};
use crate::root::TrustedRoot;
use crate::target::HostFacts;
use crate::testkit::{root_of, Operators, NOW};

struct Host {
    ops: Operators,
    root: TrustedRoot,
    ledger: Ledger,
    facts: HostFacts,
}

impl Host {
    /// Three operators; every kind needs one signature except root and
    /// revoke-key, which need two (as `starlingctl root init` defaults).
    fn new() -> Self {
        let ops = Operators::new(4);
        let mut r = root_of(&ops, "fleet-a", 1, 1);
        // Key 3 exists but may sign tags only.
        for p in &mut r.policies {
            p.key_ids.retain(|k| *k != ops.id(3));
            if [TaskKind::Root as i32, TaskKind::RevokeKey as i32].contains(&p.kind) {
                p.threshold = 2;
            }
            if p.kind == TaskKind::Tags as i32 {
                p.key_ids.push(ops.id(3));
            }
        }
        let root = TrustedRoot::install(&ops.signed_root(&r, &[0, 1]), NOW).unwrap();
        Self {
            ops,
            root,
            ledger: Ledger::default(),
            facts: HostFacts {
                host_id: "h1".into(),
                tags: Default::default(),
                cell: "c1".into(),
            },
        }
    }

    fn check(&self, signed: &[u8]) -> Verdict {
        check_task(signed, &self.root, &self.ledger, NOW)
    }

    /// Checks, admits and applies; returns the task's state here.
    fn deliver(&mut self, signed: &[u8]) -> Result<TaskState, RefusalReason> {
        match self.check(signed) {
            Verdict::Accepted(t) => {
                if self.ledger.admit(&t, &self.facts) == Plan::Apply {
                    self.ledger.applied(&t, NOW);
                }
                Ok(self.ledger.task(&t.task_id).unwrap().state.clone())
            }
            Verdict::Duplicate => panic!("a duplicate where a new task was expected"),
            Verdict::Refused(r) => Err(r.reason),
        }
    }

    /// Asserts a refusal for `want` that changed nothing; returns it.
    fn refused(&mut self, signed: &[u8], want: RefusalReason) -> Refusal {
        let before = self.ledger.clone();
        let refusal = match self.check(signed) {
            Verdict::Refused(r) => {
                assert_eq!(r.reason, want, "{r}");
                assert!(!r.detail.is_empty());
                r
            }
            other => panic!("expected a refusal ({want:?}), got {other:?}"),
        };
        assert_eq!(self.ledger, before, "a refused task changed nothing");
        refusal
    }
}

fn task(id: &str, body: Body) -> TaskPayload {
    TaskPayload {
        fleet: "fleet-a".into(),
        task_id: id.into(),
        not_before: NOW - 60,
        not_after: NOW + 86_400,
        target: Some(TargetSelector {
            all: true,
            ..Default::default()
        }),
        reason: "test".into(),
        rollout: None,
        body: Some(body),
    }
}

fn kind_off(generation: u64, kind: &str) -> Body {
    Body::Config(FleetConfig {
        settings: vec![ConfigSetting {
            generation,
            reset: false,
            setting: Some(Setting::SensorKind(SensorKindSwitch {
                kind: kind.into(),
                enabled: false,
            })),
        }],
    })
}

fn tag(name: &str, generation: u64) -> Body {
    Body::Tags(HostTags {
        changes: vec![TagChange {
            tag: name.into(),
            generation,
            remove: false,
        }],
    })
}

#[test]
fn an_honest_task_is_applied_once_and_its_copies_are_duplicates() {
    let mut h = Host::new();
    let t = h
        .ops
        .signed_task(&task("t1", kind_off(1, "dns_query")), &[0]);
    assert_eq!(h.deliver(&t), Ok(TaskState::Applied));
    assert_eq!(h.ledger.settings()["sensor.kinds.dns_query"].0, 1);
    assert!(matches!(h.check(&t), Verdict::Duplicate));
    // The same payload with more signatures is the same task.
    let t2 = h
        .ops
        .signed_task(&task("t1", kind_off(1, "dns_query")), &[0, 1]);
    assert!(matches!(h.check(&t2), Verdict::Duplicate));
}

#[test]
fn oversized() {
    let mut h = Host::new();
    let mut t = task("t", tag("x", 1));
    t.reason = "r".repeat(300 * 1024);
    let signed = SignedTask {
        payload: t.encode_to_vec(),
        signatures: vec![],
    }
    .encode_to_vec();
    h.refused(&signed, RefusalReason::Oversized);
}

#[test]
fn malformed() {
    let mut h = Host::new();
    // Not protobuf: no honest relay passes it on, whatever its version.
    let garbage = h.refused(b"\x0a\xff\xff\xff\xff\x0f", RefusalReason::Malformed);
    assert_eq!(garbage.blame, Blame::Certain);
    let mut no_body = task("t", tag("x", 1));
    no_body.body = None;
    h.refused(&h.ops.signed_task(&no_body, &[0]), RefusalReason::Malformed);
    let mut no_target = task("t", tag("x", 1));
    no_target.target = None;
    h.refused(
        &h.ops.signed_task(&no_target, &[0]),
        RefusalReason::Malformed,
    );
    let mut backwards = task("t", tag("x", 1));
    backwards.not_after = backwards.not_before - 1;
    h.refused(
        &h.ops.signed_task(&backwards, &[0]),
        RefusalReason::Malformed,
    );
    // A key revocation must reach the whole fleet.
    let mut partial = task(
        "t",
        Body::RevokeKeys(RevokeOperatorKeys {
            key_ids: vec![h.ops.id(2)],
        }),
    );
    partial.target = Some(TargetSelector {
        hosts: vec!["h1".into()],
        ..Default::default()
    });
    h.refused(
        &h.ops.signed_task(&partial, &[0, 1]),
        RefusalReason::Malformed,
    );
    // A rollout plan on a task that must reach every host at once, or
    // out of bounds.
    let wave = |share| RolloutWave {
        share_basis_points: share,
        soak_secs: 60,
        ..Default::default()
    };
    let mut planned_revocation = task(
        "t",
        Body::RevokeKeys(RevokeOperatorKeys {
            key_ids: vec![h.ops.id(2)],
        }),
    );
    planned_revocation.rollout = Some(RolloutPlan {
        waves: vec![wave(10_000)],
    });
    let r = h.refused(
        &h.ops.signed_task(&planned_revocation, &[0, 1]),
        RefusalReason::Malformed,
    );
    assert!(r.detail.contains("takes no rollout plan"), "{}", r.detail);
    let mut unfinished = task("t", tag("x", 1));
    unfinished.rollout = Some(RolloutPlan {
        waves: vec![wave(100), wave(5_000)],
    });
    let r = h.refused(
        &h.ops.signed_task(&unfinished, &[0]),
        RefusalReason::Malformed,
    );
    assert!(r.detail.contains("last wave"), "{}", r.detail);
    // A plan within bounds: the task waits for its wave.
    let mut planned = task("t", tag("x", 1));
    planned.rollout = Some(RolloutPlan {
        waves: vec![wave(100), wave(10_000)],
    });
    assert_eq!(
        h.deliver(&h.ops.signed_task(&planned, &[0])),
        Ok(TaskState::Waiting)
    );
    // A kind a newer version may know: the relay is only suspect.
    let unknown_kind = task("t", kind_off(1, "no_such_kind"));
    let newer = h.refused(
        &h.ops.signed_task(&unknown_kind, &[0]),
        RefusalReason::Malformed,
    );
    assert_eq!(newer.blame, Blame::Suspect);
}

#[test]
fn another_fleet() {
    let mut h = Host::new();
    let mut t = task("t", tag("x", 1));
    t.fleet = "fleet-b".into();
    let other = h.refused(&h.ops.signed_task(&t, &[0]), RefusalReason::OtherFleet);
    assert_eq!(other.blame, Blame::Nobody);
}

#[test]
fn forged() {
    let mut h = Host::new();
    // A key the root does not list: a forger's, or one a newer root
    // lists (the relay may have it already), so the relay is suspect.
    let stranger = Operators(vec![crate::keys::OperatorKeyPair::from_seed([99; 32])]);
    let unknown = h.refused(
        &stranger.signed_task(&task("t", tag("x", 1)), &[0]),
        RefusalReason::Forged,
    );
    assert_eq!(unknown.blame, Blame::Suspect);
    // A listed key's id on a signature it did not make (payload changed
    // after signing).
    let signed = h.ops.signed_task(&task("t", tag("x", 1)), &[0]);
    let mut env = SignedTask::decode(signed.as_slice()).unwrap();
    env.payload = task("t", tag("y", 1)).encode_to_vec();
    // The relay checked the same signature with the same key.
    let bad = h.refused(&env.encode_to_vec(), RefusalReason::Forged);
    assert_eq!(bad.blame, Blame::Certain);
}

#[test]
fn a_kind_the_key_may_not_sign() {
    let mut h = Host::new();
    // Key 3 may sign tags, not configuration.
    assert_eq!(
        h.deliver(&h.ops.signed_task(&task("ok", tag("x", 1)), &[3])),
        Ok(TaskState::Applied)
    );
    h.refused(
        &h.ops
            .signed_task(&task("t", kind_off(1, "dns_query")), &[3]),
        RefusalReason::KindNotAllowed,
    );
}

#[test]
fn too_few_signatures() {
    let mut h = Host::new();
    let t = task(
        "t",
        Body::RevokeKeys(RevokeOperatorKeys {
            key_ids: vec![h.ops.id(2)],
        }),
    );
    h.refused(
        &h.ops.signed_task(&t, &[0]),
        RefusalReason::TooFewSignatures,
    );
    // The same key twice counts once.
    let once = h.ops.signed_task(&t, &[0]);
    let mut env = SignedTask::decode(once.as_slice()).unwrap();
    env.signatures.push(env.signatures[0].clone());
    h.refused(&env.encode_to_vec(), RefusalReason::TooFewSignatures);
    assert_eq!(
        h.deliver(&h.ops.signed_task(&t, &[0, 1])),
        Ok(TaskState::Applied)
    );
}

#[test]
fn expired_and_not_yet_valid_with_the_skew_allowance() {
    let mut h = Host::new();
    let mut late = task("late", tag("x", 1));
    late.not_after = NOW - CLOCK_SKEW_ALLOWANCE_SECS - 1;
    late.not_before = late.not_after - 10;
    h.refused(&h.ops.signed_task(&late, &[0]), RefusalReason::Expired);
    let mut early = task("early", tag("x", 1));
    early.not_before = NOW + CLOCK_SKEW_ALLOWANCE_SECS + 1;
    early.not_after = early.not_before + 10;
    h.refused(&h.ops.signed_task(&early, &[0]), RefusalReason::NotYetValid);
    // Within the allowance both ways: taken.
    let mut skewed = task("skewed", tag("x", 1));
    skewed.not_before = NOW + CLOCK_SKEW_ALLOWANCE_SECS - 1;
    skewed.not_after = skewed.not_before + 10;
    assert_eq!(
        h.deliver(&h.ops.signed_task(&skewed, &[0])),
        Ok(TaskState::Applied)
    );
}

#[test]
fn an_expired_root_takes_nothing_but_a_new_root() {
    let h = Host::new();
    let later = h.root.expires + 1;
    let mut t = task("t", tag("x", 1));
    t.not_before = later - 10;
    t.not_after = later + 10;
    match check_task(&h.ops.signed_task(&t, &[0]), &h.root, &h.ledger, later) {
        Verdict::Refused(r) => assert_eq!(r.reason, RefusalReason::RootExpired),
        other => panic!("{other:?}"),
    }
    // Its successor is still taken.
    let mut next = root_of(&h.ops, "fleet-a", 2, 2);
    next.expires = later + 1_000_000;
    let signed_root = h.ops.signed_root(&next, &[0, 1]);
    let mut rotate = task(
        "root-2",
        Body::Root(SignedRoot::decode(signed_root.as_slice()).unwrap()),
    );
    rotate.not_before = later - 10;
    rotate.not_after = later + 10;
    match check_task(
        &h.ops.signed_task(&rotate, &[0, 1]),
        &h.root,
        &h.ledger,
        later,
    ) {
        Verdict::Accepted(c) => assert_eq!(c.new_root.map(|r| r.version), Some(2)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_reused_task_id_is_a_replay() {
    let mut h = Host::new();
    assert_eq!(
        h.deliver(&h.ops.signed_task(&task("t", tag("x", 1)), &[0])),
        Ok(TaskState::Applied)
    );
    h.refused(
        &h.ops.signed_task(&task("t", tag("y", 1)), &[0]),
        RefusalReason::Replayed,
    );
}

#[test]
fn a_revoked_key_signs_nothing_and_its_pending_tasks_stop() {
    let mut h = Host::new();
    // A task for another host is held as not targeted; one for this host
    // is admitted but not applied yet.
    let mut pending = task("pending", kind_off(1, "ptrace"));
    pending.target = Some(TargetSelector {
        all: true,
        ..Default::default()
    });
    let checked = match h.check(&h.ops.signed_task(&pending, &[2])) {
        Verdict::Accepted(t) => t,
        other => panic!("{other:?}"),
    };
    assert_eq!(h.ledger.admit(&checked, &h.facts), Plan::Apply);
    let revoke = task(
        "revoke",
        Body::RevokeKeys(RevokeOperatorKeys {
            key_ids: vec![h.ops.id(2)],
        }),
    );
    assert_eq!(
        h.deliver(&h.ops.signed_task(&revoke, &[0, 1])),
        Ok(TaskState::Applied)
    );
    assert!(matches!(
        h.ledger.task("pending").unwrap().state,
        TaskState::Stopped { .. }
    ));
    // Applying it after the revocation changes nothing.
    h.ledger.applied(&checked, 0);
    assert!(h.ledger.settings().is_empty());
    h.refused(
        &h.ops.signed_task(&task("new", tag("x", 1)), &[2]),
        RefusalReason::RevokedKey,
    );
}

#[test]
fn cancel_stops_pending_tasks_and_refuses_later_copies() {
    let mut h = Host::new();
    let held = task("held", kind_off(1, "ptrace"));
    let checked = match h.check(&h.ops.signed_task(&held, &[0])) {
        Verdict::Accepted(t) => t,
        other => panic!("{other:?}"),
    };
    h.ledger.admit(&checked, &h.facts);
    let cancel = task(
        "cancel",
        Body::Cancel(CancelTasks {
            task_ids: vec!["held".into(), "not-yet-seen".into()],
        }),
    );
    assert_eq!(
        h.deliver(&h.ops.signed_task(&cancel, &[0])),
        Ok(TaskState::Applied)
    );
    assert!(matches!(
        h.ledger.task("held").unwrap().state,
        TaskState::Stopped { .. }
    ));
    h.refused(
        &h.ops.signed_task(&task("not-yet-seen", tag("x", 1)), &[0]),
        RefusalReason::Cancelled,
    );
}

#[test]
fn an_older_generation_never_comes_back() {
    let mut h = Host::new();
    assert_eq!(
        h.deliver(
            &h.ops
                .signed_task(&task("g2", kind_off(2, "dns_query")), &[0])
        ),
        Ok(TaskState::Applied)
    );
    let stale = h.deliver(
        &h.ops
            .signed_task(&task("g1", kind_off(1, "dns_query")), &[0]),
    );
    assert!(
        matches!(
            &stale,
            Ok(TaskState::Refused {
                reason: RefusalReason::OlderGeneration,
                ..
            })
        ),
        "{stale:?}"
    );
    assert_eq!(h.ledger.settings()["sensor.kinds.dns_query"].0, 2);
    // The same for tags.
    assert_eq!(
        h.deliver(&h.ops.signed_task(&task("tag5", tag("web", 5)), &[0])),
        Ok(TaskState::Applied)
    );
    let mut remove = task("tag4", tag("web", 4));
    if let Some(Body::Tags(t)) = remove.body.as_mut() {
        t.changes[0].remove = true;
    }
    assert!(matches!(
        h.deliver(&h.ops.signed_task(&remove, &[0])),
        Ok(TaskState::Refused {
            reason: RefusalReason::OlderGeneration,
            ..
        })
    ));
    assert!(h.ledger.tags().contains("web"));
}

#[test]
fn a_root_task_must_follow_the_rotation_rule() {
    let mut h = Host::new();
    let next = root_of(&h.ops, "fleet-a", 2, 2);
    // Signed by only one key of the current root: refused.
    let one = h.ops.signed_root(&next, &[0]);
    let t = task(
        "root-2",
        Body::Root(SignedRoot::decode(one.as_slice()).unwrap()),
    );
    h.refused(&h.ops.signed_task(&t, &[0, 1]), RefusalReason::RootRefused);
    // Signed by two: the task carries the checked successor.
    let two = h.ops.signed_root(&next, &[0, 1]);
    let t = task(
        "root-2b",
        Body::Root(SignedRoot::decode(two.as_slice()).unwrap()),
    );
    match h.check(&h.ops.signed_task(&t, &[0, 1])) {
        Verdict::Accepted(c) => assert_eq!(c.new_root.unwrap().version, 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn hosts_not_targeted_relay_but_never_apply() {
    let mut h = Host::new();
    let mut t = task("other", kind_off(1, "dns_query"));
    t.target = Some(TargetSelector {
        hosts: vec!["h2".into()],
        ..Default::default()
    });
    assert_eq!(
        h.deliver(&h.ops.signed_task(&t, &[0])),
        Ok(TaskState::NotTargeted)
    );
    assert!(h.ledger.settings().is_empty());
    // A tag set by the fleet makes tag targets match.
    assert_eq!(
        h.deliver(&h.ops.signed_task(&task("tag", tag("db", 1)), &[0])),
        Ok(TaskState::Applied)
    );
    h.facts.tags = h.ledger.tags();
    let mut by_tag = task("by-tag", kind_off(1, "dns_query"));
    by_tag.target = Some(TargetSelector {
        tags: vec!["db".into()],
        ..Default::default()
    });
    assert_eq!(
        h.deliver(&h.ops.signed_task(&by_tag, &[0])),
        Ok(TaskState::Applied)
    );
}

#[test]
fn expired_tasks_are_forgotten_and_the_ledger_survives_serde() {
    let mut h = Host::new();
    assert_eq!(
        h.deliver(&h.ops.signed_task(&task("t", tag("x", 1)), &[0])),
        Ok(TaskState::Applied)
    );
    let text = serde_json::to_string(&h.ledger).unwrap();
    let back: Ledger = serde_json::from_str(&text).unwrap();
    assert_eq!(back, h.ledger);
    assert!(!h.ledger.forget_expired(NOW), "nothing expired yet");
    assert!(h
        .ledger
        .forget_expired(NOW + 86_400 + CLOCK_SKEW_ALLOWANCE_SECS + 1));
    assert!(h.ledger.task("t").is_none());
    // The tag it set stays.
    assert!(h.ledger.tags().contains("x"));
}

#[test]
fn rollout_controls_reach_the_whole_fleet_and_need_a_root_that_lists_them() {
    use starling_proto::v1::{RolloutAction, RolloutControl};
    let control = |action: RolloutAction, generation| {
        Body::RolloutControl(RolloutControl {
            task_ids: vec!["roll".into()],
            action: action as i32,
            generation,
        })
    };
    let mut h = Host::new();
    let mut tagged = task("t", control(RolloutAction::Pause, 1));
    tagged.target = Some(TargetSelector {
        tags: vec!["web".into()],
        ..Default::default()
    });
    let r = h.refused(&h.ops.signed_task(&tagged, &[0]), RefusalReason::Malformed);
    assert!(r.detail.contains("whole fleet"), "{}", r.detail);
    for bad in [
        control(RolloutAction::Unspecified, 1),
        control(RolloutAction::Pause, 0),
    ] {
        h.refused(
            &h.ops.signed_task(&task("t", bad), &[0]),
            RefusalReason::Malformed,
        );
    }
    assert_eq!(
        h.deliver(
            &h.ops
                .signed_task(&task("pause", control(RolloutAction::Pause, 1)), &[0])
        ),
        Ok(TaskState::Applied)
    );
    assert_eq!(h.ledger.control("roll"), crate::rollout::Control::Paused);

    // A root written before the kind existed lists no policy for it.
    let mut old = Host::new();
    let mut r = root_of(&old.ops, "fleet-a", 1, 1);
    r.policies.retain(|p| p.kind != TaskKind::Rollout as i32);
    old.root = TrustedRoot::install(&old.ops.signed_root(&r, &[0, 1]), NOW).unwrap();
    old.refused(
        &old.ops
            .signed_task(&task("abort", control(RolloutAction::Abort, 2)), &[0]),
        RefusalReason::KindNotAllowed,
    );
}
