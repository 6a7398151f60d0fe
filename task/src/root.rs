//! The fleet's trust root: which operator keys may sign which kinds of
//! task, and how many must. A host installs the first root from a file
//! beside ca.pem; later roots arrive as tasks and are accepted only under
//! TUF's rotation rule (a threshold of the current root's root keys and of
//! the new root's own signed it, and its version is the next one).

use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;
use starling_proto::limits::{
    MAX_OPERATOR_KEYS, MAX_OPERATOR_SIGNATURES, MAX_SIGNED_ROOT_BYTES, MAX_TASK_NAME_LEN,
};
use starling_proto::task::root_signing_bytes;
use starling_proto::v1::{
    KindPolicy, OperatorKey, OperatorSignature, SignedRoot, TaskKind, TrustRoot,
};

use crate::keys::{KeyId, OperatorPublicKey};

/// Why a trust root was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootError {
    #[error("the signed root is {0} bytes (at most {MAX_SIGNED_ROOT_BYTES})")]
    Oversized(usize),
    #[error("malformed root: {0}")]
    Malformed(String),
    #[error("root of fleet {got:?}, this host's fleet is {want:?}")]
    OtherFleet { want: String, got: String },
    #[error(
        "root version {got} does not follow version {have} (roots are taken one version at a time)"
    )]
    NotNext { have: u64, got: u64 },
    #[error("root version {version} expired at {expires} (now {now})")]
    Expired {
        version: u64,
        expires: u64,
        now: u64,
    },
    #[error("a signature by key {0} does not verify")]
    BadSignature(String),
    #[error("{which}: {have} valid root-key signatures, {need} needed")]
    TooFewSignatures {
        which: &'static str,
        have: usize,
        need: usize,
    },
}

/// The keys allowed to sign one kind and how many must.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Keys whose signatures count for the kind.
    pub keys: BTreeSet<KeyId>,
    /// Distinct allowed keys needed.
    pub threshold: usize,
}

/// A trust root whose signatures and contents were checked.
#[derive(Debug, Clone)]
pub struct TrustedRoot {
    /// The fleet every task must name.
    pub fleet: String,
    /// Its version (rotation goes one at a time).
    pub version: u64,
    /// Unix seconds after which it verifies only its successor.
    pub expires: u64,
    keys: BTreeMap<KeyId, (OperatorPublicKey, String)>,
    policies: BTreeMap<TaskKind, Policy>,
    signed: Vec<u8>,
}

/// The signatures of one message sorted by what they prove.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Distinct keys of the root whose signature verified.
    pub valid: BTreeSet<KeyId>,
    /// Keys of the root whose signature did not verify.
    pub bad: Vec<KeyId>,
    /// Key ids the root does not list.
    pub unknown: Vec<String>,
}

impl TrustedRoot {
    /// Installs `signed` as the first root: it must be well formed, not
    /// expired, and signed by a threshold of its own root keys.
    pub fn install(signed: &[u8], now: u64) -> Result<Self, RootError> {
        let root = Self::parse(signed)?;
        root.not_expired(now)?;
        let (message, signatures) = decode_signed(signed)?;
        let message = root_signing_bytes(&message);
        root.require(&message, &signatures, "the root's own keys")?;
        Ok(root)
    }

    /// Loads a root this host took before (its first, or one it accepted
    /// by rotation): signed by a threshold of its own root keys, whether
    /// or not it has expired since (an expired root verifies only its
    /// successor, see [`crate::check::check_task`]).
    pub fn reload(signed: &[u8]) -> Result<Self, RootError> {
        let root = Self::parse(signed)?;
        let (message, signatures) = decode_signed(signed)?;
        let message = root_signing_bytes(&message);
        root.require(&message, &signatures, "the root's own keys")?;
        Ok(root)
    }

    /// Accepts `signed` as the successor of this root (TUF's rule): the
    /// same fleet, version + 1, not expired, signed by a threshold of this
    /// root's root keys and of its own.
    pub fn successor(&self, signed: &[u8], now: u64) -> Result<Self, RootError> {
        let next = Self::parse(signed)?;
        if next.fleet != self.fleet {
            return Err(RootError::OtherFleet {
                want: self.fleet.clone(),
                got: next.fleet,
            });
        }
        if next.version != self.version.saturating_add(1) {
            return Err(RootError::NotNext {
                have: self.version,
                got: next.version,
            });
        }
        next.not_expired(now)?;
        let (message, signatures) = decode_signed(signed)?;
        let message = root_signing_bytes(&message);
        self.require(&message, &signatures, "the current root's keys")?;
        next.require(&message, &signatures, "the new root's own keys")?;
        Ok(next)
    }

    /// The signed root exactly as received, to persist and hand on.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.signed
    }

    /// Who may sign `kind`, if anyone.
    pub fn policy(&self, kind: TaskKind) -> Option<&Policy> {
        self.policies.get(&kind)
    }

    /// Every policy, for views.
    pub fn policies(&self) -> impl Iterator<Item = (TaskKind, &Policy)> {
        self.policies.iter().map(|(k, p)| (*k, p))
    }

    /// Every key with its name, for views.
    pub fn keys(&self) -> impl Iterator<Item = (&KeyId, &str)> {
        self.keys.iter().map(|(id, (_, name))| (id, name.as_str()))
    }

    /// True when the root has expired at `now` (Unix seconds).
    pub fn expired_at(&self, now: u64) -> bool {
        now > self.expires
    }

    /// Sorts `signatures` of `message` by what they prove against this
    /// root's keys.
    pub(crate) fn tally(&self, message: &[u8], signatures: &[OperatorSignature]) -> Tally {
        let mut t = Tally::default();
        for s in signatures {
            let id = KeyId(s.key_id.clone());
            match self.keys.get(&id) {
                None => t.unknown.push(s.key_id.clone()),
                Some((key, _)) if key.verifies(message, &s.signature) => {
                    t.valid.insert(id);
                }
                Some(_) => t.bad.push(id),
            }
        }
        t
    }

    fn require(
        &self,
        message: &[u8],
        signatures: &[OperatorSignature],
        which: &'static str,
    ) -> Result<(), RootError> {
        let t = self.tally(message, signatures);
        if let Some(bad) = t.bad.first() {
            return Err(RootError::BadSignature(bad.0.clone()));
        }
        let policy = self
            .policy(TaskKind::Root)
            .ok_or_else(|| RootError::Malformed("no policy for root changes".into()))?;
        let have = t.valid.intersection(&policy.keys).count();
        if have < policy.threshold {
            return Err(RootError::TooFewSignatures {
                which,
                have,
                need: policy.threshold,
            });
        }
        Ok(())
    }

    fn not_expired(&self, now: u64) -> Result<(), RootError> {
        if self.expired_at(now) {
            return Err(RootError::Expired {
                version: self.version,
                expires: self.expires,
                now,
            });
        }
        Ok(())
    }

    /// Decodes and checks a root's contents (not its signatures).
    fn parse(signed: &[u8]) -> Result<Self, RootError> {
        let (message, _) = decode_signed(signed)?;
        let root = TrustRoot::decode(message.as_slice())
            .map_err(|e| RootError::Malformed(format!("root: {e}")))?;
        let bad = |s: String| Err(RootError::Malformed(s));
        if root.fleet.is_empty() || root.fleet.len() > MAX_TASK_NAME_LEN {
            return bad(format!("fleet name of {} bytes", root.fleet.len()));
        }
        if root.keys.len() > MAX_OPERATOR_KEYS {
            return bad(format!(
                "{} keys (at most {MAX_OPERATOR_KEYS})",
                root.keys.len()
            ));
        }
        let mut keys = BTreeMap::new();
        for k in &root.keys {
            let key = OperatorPublicKey::from_bytes(&k.public_key)
                .map_err(|e| RootError::Malformed(e.to_string()))?;
            if k.name.len() > MAX_TASK_NAME_LEN {
                return bad(format!("key name of {} bytes", k.name.len()));
            }
            let id = key.id().clone();
            if keys.insert(id.clone(), (key, k.name.clone())).is_some() {
                return bad(format!("key {id} listed twice"));
            }
        }
        let mut policies = BTreeMap::new();
        for p in &root.policies {
            let kind = TaskKind::try_from(p.kind)
                .ok()
                .filter(|k| *k != TaskKind::Unspecified)
                .ok_or_else(|| {
                    RootError::Malformed(format!("policy for unknown kind {}", p.kind))
                })?;
            if p.key_ids.len() > MAX_OPERATOR_KEYS {
                return bad(format!(
                    "{} keys in the {} policy",
                    p.key_ids.len(),
                    kind_name(kind)
                ));
            }
            let mut allowed = BTreeSet::new();
            for id in &p.key_ids {
                let id = KeyId(id.clone());
                if !keys.contains_key(&id) {
                    return bad(format!(
                        "the {} policy names key {id}, which the root does not list",
                        kind_name(kind)
                    ));
                }
                allowed.insert(id);
            }
            let threshold = p.threshold as usize;
            if threshold == 0 || threshold > allowed.len() {
                return bad(format!(
                    "the {} policy needs {threshold} of {} keys",
                    kind_name(kind),
                    allowed.len()
                ));
            }
            if policies
                .insert(
                    kind,
                    Policy {
                        keys: allowed,
                        threshold,
                    },
                )
                .is_some()
            {
                return bad(format!("two policies for {}", kind_name(kind)));
            }
        }
        if !policies.contains_key(&TaskKind::Root) {
            return bad("no policy for root changes (nobody could ever rotate it)".into());
        }
        Ok(Self {
            fleet: root.fleet,
            version: root.version,
            expires: root.expires,
            keys,
            policies,
            signed: signed.to_vec(),
        })
    }
}

/// The encoded root and its signatures, with size limits.
fn decode_signed(signed: &[u8]) -> Result<(Vec<u8>, Vec<OperatorSignature>), RootError> {
    if signed.len() > MAX_SIGNED_ROOT_BYTES {
        return Err(RootError::Oversized(signed.len()));
    }
    let s = SignedRoot::decode(signed).map_err(|e| RootError::Malformed(e.to_string()))?;
    if s.signatures.len() > MAX_OPERATOR_SIGNATURES {
        return Err(RootError::Malformed(format!(
            "{} signatures (at most {MAX_OPERATOR_SIGNATURES})",
            s.signatures.len()
        )));
    }
    Ok((s.root, s.signatures))
}

/// Kinds that need `root_threshold` signatures by default: changing who
/// may sign, and taking a key's trust away.
pub const GUARDED_KINDS: [TaskKind; 2] = [TaskKind::Root, TaskKind::RevokeKey];

/// A root listing `keys` (public key, name), every kind signable by each
/// key (what `starlingctl root init` writes); `threshold` signatures for most kinds, `root_threshold` for the
/// guarded ones.
pub fn new_root(
    fleet: &str,
    version: u64,
    expires: u64,
    keys: &[([u8; 32], String)],
    threshold: u32,
    root_threshold: u32,
) -> Result<TrustRoot, String> {
    let ids: Vec<String> = keys.iter().map(|(k, _)| KeyId::of(k).0).collect();
    let distinct: BTreeSet<&String> = ids.iter().collect();
    if distinct.len() != ids.len() {
        return Err("the same key is listed twice".into());
    }
    for (what, t) in [("threshold", threshold), ("root threshold", root_threshold)] {
        if t == 0 || t as usize > ids.len() {
            return Err(format!(
                "{what} {t}: must be 1 to {} (the number of keys)",
                ids.len()
            ));
        }
    }
    Ok(TrustRoot {
        fleet: fleet.into(),
        version,
        expires,
        keys: keys
            .iter()
            .map(|(k, name)| OperatorKey {
                public_key: k.to_vec(),
                name: name.clone(),
            })
            .collect(),
        policies: TASK_KINDS
            .iter()
            .map(|kind| KindPolicy {
                kind: *kind as i32,
                key_ids: ids.clone(),
                threshold: if GUARDED_KINDS.contains(kind) {
                    root_threshold
                } else {
                    threshold
                },
            })
            .collect(),
    })
}

/// The short name of a kind, as metrics, views and the CLI spell it.
pub fn kind_name(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Unspecified => "unspecified",
        TaskKind::Config => "config",
        TaskKind::Tags => "tags",
        TaskKind::Revocations => "revocations",
        TaskKind::Root => "root",
        TaskKind::RevokeKey => "revoke-key",
        TaskKind::Cancel => "cancel",
        TaskKind::Rollout => "rollout",
    }
}

/// Every kind a task can be, in the order views list them.
pub const TASK_KINDS: [TaskKind; 7] = [
    TaskKind::Config,
    TaskKind::Tags,
    TaskKind::Revocations,
    TaskKind::Root,
    TaskKind::RevokeKey,
    TaskKind::Cancel,
    TaskKind::Rollout,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{root_of, Operators};

    #[test]
    fn a_root_signed_by_its_threshold_installs() {
        let ops = Operators::new(3);
        let signed = ops.signed_root(&root_of(&ops, "f", 1, 2), &[0, 1]);
        let root = TrustedRoot::install(&signed, 10).unwrap();
        assert_eq!(root.version, 1);
        assert_eq!(root.policy(TaskKind::Root).unwrap().threshold, 2);
    }

    #[test]
    fn too_few_or_bad_signatures_are_refused() {
        let ops = Operators::new(3);
        let one = ops.signed_root(&root_of(&ops, "f", 1, 2), &[0]);
        assert!(matches!(
            TrustedRoot::install(&one, 10),
            Err(RootError::TooFewSignatures {
                have: 1,
                need: 2,
                ..
            })
        ));
        // The same key twice counts once.
        let mut s = SignedRoot::decode(one.as_slice()).unwrap();
        s.signatures.push(s.signatures[0].clone());
        assert!(TrustedRoot::install(&s.encode_to_vec(), 10).is_err());
        // A signature over other bytes.
        let mut s = SignedRoot::decode(
            ops.signed_root(&root_of(&ops, "f", 1, 2), &[0, 1])
                .as_slice(),
        )
        .unwrap();
        s.signatures[1].signature[0] ^= 1;
        assert!(matches!(
            TrustedRoot::install(&s.encode_to_vec(), 10),
            Err(RootError::BadSignature(_))
        ));
    }

    #[test]
    fn rotation_needs_the_next_version_and_both_thresholds() {
        let ops = Operators::new(4);
        // Version 1: keys 0 and 1 control the root.
        let mut r1 = root_of(&ops, "f", 1, 2);
        for p in &mut r1.policies {
            if p.kind == TaskKind::Root as i32 {
                p.key_ids = vec![ops.id(0), ops.id(1)];
            }
        }
        let v1 = TrustedRoot::install(&ops.signed_root(&r1, &[0, 1]), 10).unwrap();
        // Version 2 hands root control to keys 2 and 3.
        let mut r2 = root_of(&ops, "f", 2, 2);
        for p in &mut r2.policies {
            if p.kind == TaskKind::Root as i32 {
                p.key_ids = vec![ops.id(2), ops.id(3)];
            }
        }
        // Signed by the new keys only: the old root did not agree.
        let new_only = ops.signed_root(&r2, &[2, 3]);
        assert!(matches!(
            v1.successor(&new_only, 10),
            Err(RootError::TooFewSignatures {
                which: "the current root's keys",
                ..
            })
        ));
        // Signed by the old keys only: the new keys did not agree.
        let old_only = ops.signed_root(&r2, &[0, 1]);
        assert!(matches!(
            v1.successor(&old_only, 10),
            Err(RootError::TooFewSignatures {
                which: "the new root's own keys",
                ..
            })
        ));
        let both = ops.signed_root(&r2, &[0, 1, 2, 3]);
        let v2 = v1.successor(&both, 10).unwrap();
        assert_eq!(v2.version, 2);
        // Skipping a version, going back, or another fleet: refused.
        let v3 = ops.signed_root(&root_of(&ops, "f", 3, 2), &[0, 1, 2, 3]);
        assert!(matches!(
            v1.successor(&v3, 10),
            Err(RootError::NotNext { .. })
        ));
        assert!(matches!(
            v2.successor(&both, 10),
            Err(RootError::NotNext { .. })
        ));
        let other = ops.signed_root(&root_of(&ops, "g", 2, 2), &[0, 1, 2, 3]);
        assert!(matches!(
            v1.successor(&other, 10),
            Err(RootError::OtherFleet { .. })
        ));
    }

    #[test]
    fn expired_and_malformed_roots_are_refused() {
        let ops = Operators::new(2);
        let mut r = root_of(&ops, "f", 1, 1);
        r.expires = 5;
        assert!(matches!(
            TrustedRoot::install(&ops.signed_root(&r, &[0]), 10),
            Err(RootError::Expired { .. })
        ));
        let mut r = root_of(&ops, "f", 1, 1);
        r.policies.retain(|p| p.kind != TaskKind::Root as i32);
        assert!(matches!(
            TrustedRoot::install(&ops.signed_root(&r, &[0]), 10),
            Err(RootError::Malformed(_))
        ));
        let mut r = root_of(&ops, "f", 1, 1);
        r.policies[0].threshold = 9;
        assert!(TrustedRoot::install(&ops.signed_root(&r, &[0, 1]), 10).is_err());
        assert!(TrustedRoot::install(b"\xff\xff", 10).is_err());
        assert!(matches!(
            TrustedRoot::install(&vec![0; MAX_SIGNED_ROOT_BYTES + 1], 10),
            Err(RootError::Oversized(_))
        ));
    }
}
