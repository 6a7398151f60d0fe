//! Keys, roots and tasks for the crate's own tests.

use starling_proto::v1::task_payload::Body;
use starling_proto::v1::{HostTags, TagChange, TargetSelector, TaskPayload, TrustRoot};

use crate::keys::OperatorKeyPair;
use crate::ledger::Ledger;
use crate::plane::TaskPlane;
use crate::root::new_root;
use crate::root::TrustedRoot;
use crate::sign::{sign_root, sign_task, unsigned_root, unsigned_task};

/// `n` operator keys from fixed seeds.
pub struct Operators(pub Vec<OperatorKeyPair>);

impl Operators {
    pub fn new(n: u8) -> Self {
        Self(
            (0..n)
                .map(|i| OperatorKeyPair::from_seed([i + 1; 32]))
                .collect(),
        )
    }

    pub fn id(&self, i: usize) -> String {
        self.0[i].id().0
    }

    /// `root` signed by the keys at `signers`.
    pub fn signed_root(&self, root: &TrustRoot, signers: &[usize]) -> Vec<u8> {
        let mut signed = unsigned_root(root);
        for &i in signers {
            signed = sign_root(&signed, &self.0[i]).unwrap();
        }
        signed
    }

    /// `payload` signed by the keys at `signers`.
    pub fn signed_task(&self, payload: &TaskPayload, signers: &[usize]) -> Vec<u8> {
        let mut signed = unsigned_task(payload);
        for &i in signers {
            signed = sign_task(&signed, &self.0[i]).unwrap();
        }
        signed
    }
}

/// A root listing every operator, each kind signable by all of them with
/// `threshold` signatures.
pub fn root_of(ops: &Operators, fleet: &str, version: u64, threshold: u32) -> TrustRoot {
    let keys: Vec<([u8; 32], String)> = ops
        .0
        .iter()
        .enumerate()
        .map(|(i, k)| (k.public_key(), format!("op{i}")))
        .collect();
    new_root(fleet, version, 1_000_000, &keys, threshold, threshold).expect("a valid root")
}

/// The time the plane and tag-task helpers below work at.
pub const NOW: u64 = 100_000;

/// A host's task plane in fleet "f" whose root lists `ops` (one
/// signature each).
pub fn plane(ops: &Operators, host: &str) -> TaskPlane {
    let root = TrustedRoot::install(&ops.signed_root(&root_of(ops, "f", 1, 1), &[0]), NOW)
        .expect("a valid root");
    TaskPlane::new(root, Ledger::default(), host, Default::default())
}

/// A task of fleet "f" setting tag `tag` (generation 1) on `target`,
/// valid around [`NOW`], unsigned.
pub fn tag_payload(id: &str, tag: &str, target: TargetSelector) -> TaskPayload {
    TaskPayload {
        fleet: "f".into(),
        task_id: id.into(),
        not_before: NOW - 10,
        not_after: NOW + 1000,
        target: Some(target),
        reason: String::new(),
        rollout: None,
        body: Some(Body::Tags(HostTags {
            changes: vec![TagChange {
                tag: tag.into(),
                generation: 1,
                remove: false,
            }],
        })),
    }
}

/// [`tag_payload`] signed by the first operator.
pub fn tag_task(ops: &Operators, id: &str, tag: &str, target: TargetSelector) -> Vec<u8> {
    ops.signed_task(&tag_payload(id, tag, target), &[0])
}
