//! Keys, roots and tasks for the crate's own tests.

use starling_proto::v1::{TaskPayload, TrustRoot};

use crate::keys::OperatorKeyPair;
use crate::root::new_root;
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
