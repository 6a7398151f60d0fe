//! Checking a task before it is applied or relayed: every host runs these
//! checks on every copy it receives, so a forged task is never forwarded.

use std::collections::BTreeSet;

use prost::Message as _;
use starling_proto::limits::{
    MAX_OPERATOR_SIGNATURES, MAX_SIGNED_TASK_BYTES, MAX_TASK_LIST_ITEMS, MAX_TASK_NAME_LEN,
};
use starling_proto::task::signing_bytes;
use starling_proto::v1::task_payload::Body;
use starling_proto::v1::{SignedTask, TaskKind, TaskPayload};

use crate::keys::KeyId;
use crate::ledger::Ledger;
use crate::root::{kind_name, TrustedRoot};
use crate::target::check_selector;

/// How far a host's clock may be from the operator's: a task is valid from
/// `not_before - allowance` to `not_after + allowance`.
pub const CLOCK_SKEW_ALLOWANCE_SECS: u64 = 600;
/// Longest validity window: a host remembers a task id until its window
/// closes, so this bounds how long it remembers (and a host away for
/// longer catches up with what is still valid).
pub const MAX_VALIDITY_SECS: u64 = 400 * 24 * 3600;

/// Why a host refused a task. Each is a metric label and a state in the
/// task's status.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum RefusalReason {
    /// Larger than the limit.
    Oversized,
    /// Not a well-formed task.
    Malformed,
    /// Bound to another fleet.
    OtherFleet,
    /// A signature that does not verify, or by a key the root does not list.
    Forged,
    /// Signed by a revoked operator key.
    RevokedKey,
    /// Signed by a key that may not sign its kind.
    KindNotAllowed,
    /// Fewer valid signatures than its kind needs.
    TooFewSignatures,
    /// Its window has not opened yet.
    NotYetValid,
    /// Its window has closed.
    Expired,
    /// The trust root has expired: only a new root is taken.
    RootExpired,
    /// Another task already used its id.
    Replayed,
    /// Cancelled before it was applied.
    Cancelled,
    /// A setting it carries is older than the one the host holds.
    OlderGeneration,
    /// A new trust root that does not follow the rotation rule.
    RootRefused,
}

impl RefusalReason {
    /// Every reason, for metrics and views.
    pub const ALL: [RefusalReason; 14] = [
        Self::Oversized,
        Self::Malformed,
        Self::OtherFleet,
        Self::Forged,
        Self::RevokedKey,
        Self::KindNotAllowed,
        Self::TooFewSignatures,
        Self::NotYetValid,
        Self::Expired,
        Self::RootExpired,
        Self::Replayed,
        Self::Cancelled,
        Self::OlderGeneration,
        Self::RootRefused,
    ];

    /// Its metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oversized => "oversized",
            Self::Malformed => "malformed",
            Self::OtherFleet => "other_fleet",
            Self::Forged => "forged",
            Self::RevokedKey => "revoked_key",
            Self::KindNotAllowed => "kind_not_allowed",
            Self::TooFewSignatures => "too_few_signatures",
            Self::NotYetValid => "not_yet_valid",
            Self::Expired => "expired",
            Self::RootExpired => "root_expired",
            Self::Replayed => "replayed",
            Self::Cancelled => "cancelled",
            Self::OlderGeneration => "older_generation",
            Self::RootRefused => "root_refused",
        }
    }

    /// Whom a refusal for this reason blames, when nothing more precise
    /// is known (see [`Refusal::blame`]).
    fn blame(self) -> Blame {
        match self {
            Self::Oversized
            | Self::Malformed
            | Self::Forged
            | Self::TooFewSignatures
            | Self::KindNotAllowed => Blame::Suspect,
            _ => Blame::Nobody,
        }
    }
}

/// Whom a refusal blames: what a dissemination layer should think of the
/// peer that relayed the copy (docs/tasks.md, "Forgers are ignored").
/// Every honest host checks a copy before it relays it, so a relayed
/// refusal is the relay's fault unless the two hosts judge by different
/// rules: another trust root (one side has a rotation the other has not
/// received yet) or another agent version (a limit or a kind one side
/// does not know).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Blame {
    /// Nobody: the copy is late, early, replayed, cancelled, for another
    /// fleet, or signed by a key this host has revoked since.
    Nobody,
    /// The relay, unless it judges by another root or version: a key this
    /// root does not list, a kind the key may not sign, too few
    /// signatures, a limit or a body this version refuses. An honest relay
    /// passes on a few such copies during a rotation; a forger, many.
    Suspect,
    /// The relay, whatever it holds: bytes that are no protobuf task, or
    /// a signature by a key this root lists that does not verify (the
    /// relay checked the same signature with the same key).
    Certain,
}

/// A refusal with what made it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task {}refused ({}): {detail}", task_id.as_deref().map(|t| format!("{t} ")).unwrap_or_default(), reason.as_str())]
pub struct Refusal {
    /// Why, as a label.
    pub reason: RefusalReason,
    /// Why, for a person.
    pub detail: String,
    /// The task's id, when it could be read.
    pub task_id: Option<String>,
    /// Whom it blames.
    pub blame: Blame,
}

/// A task that passed every check.
#[derive(Debug, Clone)]
pub struct CheckedTask {
    /// Its id.
    pub task_id: String,
    /// Its kind.
    pub kind: TaskKind,
    /// What it asks for.
    pub payload: TaskPayload,
    /// SHA-256 of the signed payload bytes (one task, however many copies
    /// or signature sets travel).
    pub digest: [u8; 32],
    /// The root keys whose signatures counted.
    pub signers: BTreeSet<KeyId>,
    /// The signed task as received, to relay and persist.
    pub signed: Vec<u8>,
    /// For a root task: the new root, checked against the current one.
    pub new_root: Option<TrustedRoot>,
}

/// What a host makes of a copy of a task.
#[derive(Debug)]
pub enum Verdict {
    /// New and valid: relay it, then decide whether to apply it.
    Accepted(Box<CheckedTask>),
    /// A task this host already holds (same id, same payload): drop it.
    Duplicate,
    /// Refused: never relayed, counted by reason.
    Refused(Refusal),
}

/// The kind of a task's body.
pub fn kind_of(body: &Body) -> TaskKind {
    match body {
        Body::Config(_) => TaskKind::Config,
        Body::Tags(_) => TaskKind::Tags,
        Body::Revocations(_) => TaskKind::Revocations,
        Body::Root(_) => TaskKind::Root,
        Body::RevokeKeys(_) => TaskKind::RevokeKey,
        Body::Cancel(_) => TaskKind::Cancel,
        Body::RolloutControl(_) => TaskKind::Rollout,
    }
}

/// Checks one copy of a signed task against the host's root and ledger at
/// `now` (Unix seconds). Cheap checks come first, signatures last but one,
/// so a flood of forgeries costs a host one signature check each at most.
pub fn check_task(signed: &[u8], root: &TrustedRoot, ledger: &Ledger, now: u64) -> Verdict {
    match check(signed, root, ledger, now) {
        Ok(Some(t)) => Verdict::Accepted(Box::new(t)),
        Ok(None) => Verdict::Duplicate,
        Err(r) => Verdict::Refused(r),
    }
}

fn check(
    signed: &[u8],
    root: &TrustedRoot,
    ledger: &Ledger,
    now: u64,
) -> Result<Option<CheckedTask>, Refusal> {
    let refuse = |reason: RefusalReason, detail: String, task_id: Option<&str>| Refusal {
        reason,
        detail,
        task_id: task_id.map(str::to_owned),
        blame: reason.blame(),
    };
    // Bytes no version of Starling wrote: protobuf decodes whatever a
    // newer schema adds.
    let undecodable = |detail: String| Refusal {
        blame: Blame::Certain,
        ..refuse(RefusalReason::Malformed, detail, None)
    };
    if signed.len() > MAX_SIGNED_TASK_BYTES {
        return Err(refuse(
            RefusalReason::Oversized,
            format!("{} bytes (at most {MAX_SIGNED_TASK_BYTES})", signed.len()),
            None,
        ));
    }
    let envelope = SignedTask::decode(signed).map_err(|e| undecodable(e.to_string()))?;
    let payload = TaskPayload::decode(envelope.payload.as_slice())
        .map_err(|e| undecodable(format!("payload: {e}")))?;
    let id = payload.task_id.clone();
    let task_id = Some(id.as_str());
    let body = check_payload(&payload, envelope.signatures.len())
        .map_err(|d| refuse(RefusalReason::Malformed, d, task_id))?;
    let kind = kind_of(body);
    if payload.fleet != root.fleet {
        return Err(refuse(
            RefusalReason::OtherFleet,
            format!(
                "for fleet {:?}, this host is in {:?}",
                payload.fleet, root.fleet
            ),
            task_id,
        ));
    }
    let digest = sha256(&envelope.payload);
    if let Some(known) = ledger.task(&id) {
        if known.digest == digest {
            return Ok(None);
        }
        return Err(refuse(
            RefusalReason::Replayed,
            "another task already used this id".into(),
            task_id,
        ));
    }
    if ledger.is_cancelled(&id) {
        return Err(refuse(
            RefusalReason::Cancelled,
            "cancelled before it arrived".into(),
            task_id,
        ));
    }
    if now.saturating_add(CLOCK_SKEW_ALLOWANCE_SECS) < payload.not_before {
        return Err(refuse(
            RefusalReason::NotYetValid,
            format!(
                "valid from {}, this host's clock says {now}",
                payload.not_before
            ),
            task_id,
        ));
    }
    if now > payload.not_after.saturating_add(CLOCK_SKEW_ALLOWANCE_SECS) {
        return Err(refuse(
            RefusalReason::Expired,
            format!(
                "valid until {}, this host's clock says {now}",
                payload.not_after
            ),
            task_id,
        ));
    }
    if kind != TaskKind::Root && root.expired_at(now) {
        return Err(refuse(
            RefusalReason::RootExpired,
            format!(
                "trust root version {} expired at {}",
                root.version, root.expires
            ),
            task_id,
        ));
    }
    let signers = check_signatures(&envelope, kind, root, ledger).map_err(|failed| Refusal {
        blame: failed.blame.unwrap_or(failed.reason.blame()),
        ..refuse(failed.reason, failed.detail, task_id)
    })?;
    let new_root = match body {
        Body::Root(next) => Some(
            root.successor(&next.encode_to_vec(), now)
                .map_err(|e| refuse(RefusalReason::RootRefused, e.to_string(), task_id))?,
        ),
        _ => None,
    };
    Ok(Some(CheckedTask {
        task_id: id,
        kind,
        payload,
        digest,
        signers,
        signed: signed.to_vec(),
        new_root,
    }))
}

/// Why the signatures fall short, and whom that blames when the reason
/// alone does not say.
struct SignaturesRefused {
    reason: RefusalReason,
    detail: String,
    blame: Option<Blame>,
}

impl From<(RefusalReason, String)> for SignaturesRefused {
    fn from((reason, detail): (RefusalReason, String)) -> Self {
        Self {
            reason,
            detail,
            blame: None,
        }
    }
}

/// Counts the signatures that matter for `kind`.
fn check_signatures(
    envelope: &SignedTask,
    kind: TaskKind,
    root: &TrustedRoot,
    ledger: &Ledger,
) -> Result<BTreeSet<KeyId>, SignaturesRefused> {
    let tally = root.tally(&signing_bytes(&envelope.payload), &envelope.signatures);
    if let Some(unknown) = tally.unknown.first() {
        return Err((
            RefusalReason::Forged,
            format!(
                "signed by key {unknown:.12}, which trust root version {} does not list",
                root.version
            ),
        )
            .into());
    }
    if let Some(bad) = tally.bad.first() {
        return Err(SignaturesRefused {
            reason: RefusalReason::Forged,
            detail: format!("the signature of key {} does not verify", bad.short()),
            blame: Some(Blame::Certain),
        });
    }
    if let Some(revoked) = tally.valid.iter().find(|k| ledger.is_revoked(k)) {
        return Err((
            RefusalReason::RevokedKey,
            format!("signed by revoked key {}", revoked.short()),
        )
            .into());
    }
    let policy = root.policy(kind).ok_or_else(|| -> SignaturesRefused {
        (
            RefusalReason::KindNotAllowed,
            format!("the trust root lets no key sign {} tasks", kind_name(kind)),
        )
            .into()
    })?;
    if let Some(stranger) = tally.valid.iter().find(|k| !policy.keys.contains(*k)) {
        return Err((
            RefusalReason::KindNotAllowed,
            format!(
                "key {} may not sign {} tasks",
                stranger.short(),
                kind_name(kind)
            ),
        )
            .into());
    }
    if tally.valid.len() < policy.threshold {
        return Err((
            RefusalReason::TooFewSignatures,
            format!(
                "{} of the {} signatures {} tasks need",
                tally.valid.len(),
                policy.threshold,
                kind_name(kind)
            ),
        )
            .into());
    }
    Ok(tally.valid)
}

/// Checks the payload's sizes and shape; returns its body.
fn check_payload(p: &TaskPayload, signatures: usize) -> Result<&Body, String> {
    if signatures > MAX_OPERATOR_SIGNATURES {
        return Err(format!(
            "{signatures} signatures (at most {MAX_OPERATOR_SIGNATURES})"
        ));
    }
    if p.task_id.is_empty() || p.task_id.len() > MAX_TASK_NAME_LEN {
        return Err(format!("a task id of {} bytes", p.task_id.len()));
    }
    if p.reason.len() > 1024 {
        return Err(format!(
            "a reason of {} bytes (at most 1024)",
            p.reason.len()
        ));
    }
    if p.not_after < p.not_before || p.not_after - p.not_before > MAX_VALIDITY_SECS {
        return Err(format!(
            "a validity window from {} to {} (at most {} days)",
            p.not_before,
            p.not_after,
            MAX_VALIDITY_SECS / 86_400
        ));
    }
    let target = p.target.as_ref().ok_or("no target")?;
    check_selector(target)?;
    let body = p.body.as_ref().ok_or("no body")?;
    let fleet_wide = target.all
        && target.sample_basis_points == 0
        && target.exclude_hosts.is_empty()
        && target.exclude_tags.is_empty();
    // A rollout's control must reach the sinks, which decide it, and
    // every host that may have applied the task.
    let needs_whole_fleet = matches!(
        body,
        Body::Root(_) | Body::RevokeKeys(_) | Body::Revocations(_) | Body::RolloutControl(_)
    );
    if needs_whole_fleet && !fleet_wide {
        return Err(format!(
            "a {} task must target the whole fleet",
            kind_name(kind_of(body))
        ));
    }
    if let Some(plan) = &p.rollout {
        if !matches!(body, Body::Config(_) | Body::Tags(_)) {
            return Err(format!(
                "a {} task takes no rollout plan (it reaches every host at once)",
                kind_name(kind_of(body))
            ));
        }
        crate::rollout::Plan::from_proto(plan)?;
    }
    let count = |n: usize, what: &str| {
        if n == 0 || n > MAX_TASK_LIST_ITEMS {
            Err(format!("{n} {what} (1 to {MAX_TASK_LIST_ITEMS})"))
        } else {
            Ok(())
        }
    };
    match body {
        Body::Config(c) => {
            count(c.settings.len(), "settings")?;
            let mut keys = BTreeSet::new();
            for s in &c.settings {
                let key = crate::ledger::setting_key(s)?;
                if s.generation == 0 {
                    return Err(format!(
                        "setting {key} at generation 0 (generations start at 1)"
                    ));
                }
                if !keys.insert(key.clone()) {
                    return Err(format!("setting {key} twice"));
                }
            }
        }
        Body::Tags(t) => {
            count(t.changes.len(), "tag changes")?;
            let mut seen = BTreeSet::new();
            for c in &t.changes {
                if c.tag.is_empty() || c.tag.len() > MAX_TASK_NAME_LEN || c.generation == 0 {
                    return Err(format!("tag {:?} at generation {}", c.tag, c.generation));
                }
                if !seen.insert(&c.tag) {
                    return Err(format!("tag {:?} twice", c.tag));
                }
            }
        }
        Body::Revocations(r) => {
            if r.generation == 0 || r.crl_der.is_empty() {
                return Err("a revocation list needs a generation and a CRL".into());
            }
        }
        Body::Root(r) => {
            if r.root.is_empty() {
                return Err("an empty root".into());
            }
        }
        Body::RevokeKeys(r) => count(r.key_ids.len(), "key ids")?,
        Body::Cancel(c) => count(c.task_ids.len(), "task ids")?,
        Body::RolloutControl(r) => {
            count(r.task_ids.len(), "task ids")?;
            if let Some(id) =
                (r.task_ids.iter()).find(|id| id.is_empty() || id.len() > MAX_TASK_NAME_LEN)
            {
                return Err(format!("task id {id:?}"));
            }
            if crate::ledger::control_of(r).is_none() || r.generation == 0 {
                return Err(format!(
                    "a rollout control with action {} at generation {} (pause, resume or abort; generations start at 1)",
                    r.action, r.generation
                ));
            }
        }
    }
    Ok(body)
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
