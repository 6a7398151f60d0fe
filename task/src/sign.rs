//! Making and signing tasks and roots: what `starlingctl` does at the
//! operator's desk. Operators sign one after another, each adding a
//! signature to the same file, so M of N can sign without sharing keys.

use prost::Message as _;
use starling_proto::limits::{MAX_SIGNED_ROOT_BYTES, MAX_SIGNED_TASK_BYTES};
use starling_proto::task::{root_signing_bytes, signing_bytes};
use starling_proto::v1::{OperatorSignature, SignedRoot, SignedTask, TaskPayload, TrustRoot};

use crate::keys::OperatorKeyPair;

/// Why a file could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{0} bytes (at most {1})")]
    Oversized(usize, usize),
    #[error("not a signed {what}: {source}")]
    Malformed {
        what: &'static str,
        #[source]
        source: prost::DecodeError,
    },
}

/// A root with no signatures yet, from its contents.
pub fn unsigned_root(root: &TrustRoot) -> Vec<u8> {
    SignedRoot {
        root: root.encode_to_vec(),
        signatures: Vec::new(),
    }
    .encode_to_vec()
}

/// Adds `key`'s signature to a signed root; an earlier signature by the
/// same key is replaced.
pub fn sign_root(signed: &[u8], key: &OperatorKeyPair) -> Result<Vec<u8>, SignError> {
    if signed.len() > MAX_SIGNED_ROOT_BYTES {
        return Err(SignError::Oversized(signed.len(), MAX_SIGNED_ROOT_BYTES));
    }
    let mut s = SignedRoot::decode(signed).map_err(|source| SignError::Malformed {
        what: "root",
        source,
    })?;
    add_signature(&mut s.signatures, key, &root_signing_bytes(&s.root));
    Ok(s.encode_to_vec())
}

/// A task with no signatures yet.
pub fn unsigned_task(payload: &TaskPayload) -> Vec<u8> {
    SignedTask {
        payload: payload.encode_to_vec(),
        signatures: Vec::new(),
    }
    .encode_to_vec()
}

/// Adds `key`'s signature to a signed task; an earlier signature by the
/// same key is replaced.
pub fn sign_task(signed: &[u8], key: &OperatorKeyPair) -> Result<Vec<u8>, SignError> {
    if signed.len() > MAX_SIGNED_TASK_BYTES {
        return Err(SignError::Oversized(signed.len(), MAX_SIGNED_TASK_BYTES));
    }
    let mut s = SignedTask::decode(signed).map_err(|source| SignError::Malformed {
        what: "task",
        source,
    })?;
    add_signature(&mut s.signatures, key, &signing_bytes(&s.payload));
    Ok(s.encode_to_vec())
}

fn add_signature(signatures: &mut Vec<OperatorSignature>, key: &OperatorKeyPair, message: &[u8]) {
    let id = key.id().0;
    signatures.retain(|x| x.key_id != id);
    signatures.push(OperatorSignature {
        key_id: id,
        signature: key.sign(message).to_vec(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_twice_with_one_key_keeps_one_signature() {
        let k = OperatorKeyPair::from_seed([3; 32]);
        let t = unsigned_task(&TaskPayload::default());
        let once = sign_task(&t, &k).unwrap();
        let twice = sign_task(&once, &k).unwrap();
        assert_eq!(
            SignedTask::decode(twice.as_slice())
                .unwrap()
                .signatures
                .len(),
            1
        );
        let other = sign_task(&twice, &OperatorKeyPair::from_seed([4; 32])).unwrap();
        assert_eq!(
            SignedTask::decode(other.as_slice())
                .unwrap()
                .signatures
                .len(),
            2
        );
        assert!(sign_task(b"\xff", &k).is_err());
        assert!(sign_root(&vec![0; MAX_SIGNED_ROOT_BYTES + 1], &k).is_err());
    }
}
