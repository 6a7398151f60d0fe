//! The anti-entropy exchange (`/starling/tasks/2`) as a peer's bytes reach
//! it: decoded as the mesh's request-response codec decodes it (protobuf,
//! `starling_task::sync::decode_request`/`decode_response`), then answered
//! or followed up by a host holding one task. No input may panic, make a
//! host send more than a fetch and a push, or hand it more copies than the
//! limit; what decodes encodes back to itself.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use starling_proto::v1::task_payload::Body;
use starling_proto::v1::{HostTags, TagChange, TargetSelector, TaskPayload};
use starling_task::plane::MAX_SYNC_ITEMS;
use starling_task::root::new_root;
use starling_task::sign::{sign_root, sign_task, unsigned_root, unsigned_task};
use starling_task::sync;
use starling_task::{Ledger, OperatorKeyPair, TaskPlane, TrustedRoot};

fn plane() -> &'static TaskPlane {
    static PLANE: OnceLock<TaskPlane> = OnceLock::new();
    PLANE.get_or_init(|| {
        let key = OperatorKeyPair::from_seed([1; 32]);
        let root = new_root("fuzz", 1, u64::MAX, &[(key.public_key(), "k".into())], 1, 1)
            .expect("a valid root");
        let signed = sign_root(&unsigned_root(&root), &key).expect("signs");
        let root = TrustedRoot::install(&signed, 0).expect("valid root");
        let mut plane = TaskPlane::new(root, Ledger::default(), "h", Default::default());
        let task = TaskPayload {
            fleet: "fuzz".into(),
            task_id: "t".into(),
            not_before: 0,
            not_after: 2_000_000,
            target: Some(TargetSelector {
                all: true,
                ..Default::default()
            }),
            reason: String::new(),
            rollout: None,
            body: Some(Body::Tags(HostTags {
                changes: vec![TagChange {
                    tag: "x".into(),
                    generation: 1,
                    remove: false,
                }],
            })),
        };
        let signed = sign_task(&unsigned_task(&task), &key).expect("signs");
        plane.receive(&signed, 1_000_000);
        plane
    })
}

fuzz_target!(|data: &[u8]| {
    let plane = plane();
    if let Ok(request) = sync::decode_request(data) {
        let again = sync::decode_request(&sync::encode_request(&request));
        assert_eq!(again.as_ref(), Ok(&request));
        let (_, copies) = sync::answer(plane, request);
        assert!(copies.len() <= MAX_SYNC_ITEMS);
    }
    if let Ok(response) = sync::decode_response(data) {
        let again = sync::decode_response(&sync::encode_response(&response));
        assert_eq!(again.as_ref(), Ok(&response));
        let step = sync::on_response(plane, response);
        assert!(step.copies.len() <= MAX_SYNC_ITEMS);
        assert!(step.requests.len() <= 2);
    }
});
