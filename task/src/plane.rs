//! One host's task plane as a state machine: copies of tasks and
//! anti-entropy messages in, verdicts and what to apply out. The mesh's
//! driver carries it over gossipsub and a sync protocol; the simulator runs
//! the same code.
//!
//! Anti-entropy: every so often a host sends one peer a [`Summary`] of the
//! tasks it holds (a hash of their digests and their count, about 50
//! bytes). A peer holding the same set answers that it does; otherwise it
//! answers with the 8-byte prefixes of the digests it holds, and the first
//! host fetches what it lacks and pushes what the peer lacks. Steady state
//! costs one summary per period; catching up costs 8 bytes per task held
//! plus the tasks missing, in one round trip and one fetch.

use std::collections::{BTreeMap, BTreeSet};

use crate::check::{check_task, CheckedTask, Refusal, Verdict};
use crate::ledger::{Ledger, Plan};
use crate::root::TrustedRoot;
use crate::target::HostFacts;

mod staging;
pub use staging::Staged;

/// The first 8 bytes of a task's payload digest: how peers name tasks in
/// anti-entropy (a collision only makes a host fetch one task it holds).
pub type ShortDigest = [u8; 8];

/// Most task prefixes or tasks in one anti-entropy message: a host holds
/// only tasks still valid, so this is far above what a fleet has in flight.
pub const MAX_SYNC_ITEMS: usize = 4096;
/// Most bytes of tasks in one anti-entropy message; what does not fit
/// comes in the next exchange.
pub const MAX_SYNC_BYTES: usize = 4 * 1024 * 1024;

/// What a host holds, in a few bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// Version of its trust root.
    pub root_version: u64,
    /// SHA-256 over the sorted digests of the tasks it holds.
    pub set_hash: [u8; 32],
    /// How many tasks it holds.
    pub count: u32,
}

/// What became of one copy of a task.
#[derive(Debug)]
pub enum Received {
    /// New and valid: relay it; `apply` says whether this host applies it
    /// (then the driver does so and calls [`TaskPlane::applied`]).
    Accepted { task: Box<CheckedTask>, apply: bool },
    /// Already held.
    Duplicate,
    /// Refused: never relayed.
    Refused(Refusal),
}

/// A host's task plane.
#[derive(Debug)]
pub struct TaskPlane {
    root: TrustedRoot,
    ledger: Ledger,
    /// Tags from the host's own configuration.
    local_tags: BTreeSet<String>,
    host_id: String,
    cell: String,
    /// Tasks held, by short digest (rebuilt from the ledger).
    by_prefix: BTreeMap<ShortDigest, String>,
}

impl TaskPlane {
    /// A host holding `root` and `ledger` (both as persisted).
    pub fn new(
        root: TrustedRoot,
        ledger: Ledger,
        host_id: &str,
        local_tags: BTreeSet<String>,
    ) -> Self {
        let mut plane = Self {
            root,
            ledger,
            local_tags,
            host_id: host_id.into(),
            cell: String::new(),
            by_prefix: BTreeMap::new(),
        };
        plane.reindex();
        plane
    }

    /// The trust root in force.
    pub fn root(&self) -> &TrustedRoot {
        &self.root
    }

    /// The ledger, to persist and show.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Sets the cell the host is in (cell targets match it).
    pub fn set_cell(&mut self, cell: &str) {
        self.cell = cell.into();
    }

    /// What targets match against: the host's id, its cell, its local tags
    /// and the tags the fleet set (a tag the fleet removed is gone even if
    /// the local file sets it).
    pub fn facts(&self) -> HostFacts {
        let removed = self.ledger.removed_tags();
        let tags = self
            .local_tags
            .iter()
            .filter(|t| !removed.contains(*t))
            .cloned()
            .chain(self.ledger.tags())
            .collect();
        HostFacts {
            host_id: self.host_id.clone(),
            tags,
            cell: self.cell.clone(),
        }
    }

    /// Checks one copy of a task (from gossip, a sync or the operator) at
    /// `now` (Unix seconds) and records it when valid.
    pub fn receive(&mut self, signed: &[u8], now: u64) -> Received {
        match check_task(signed, &self.root, &self.ledger, now) {
            Verdict::Accepted(task) => {
                let plan = self.ledger.admit(&task, &self.facts());
                self.by_prefix
                    .insert(short(&task.digest), task.task_id.clone());
                Received::Accepted {
                    apply: plan == Plan::Apply,
                    task,
                }
            }
            Verdict::Duplicate => Received::Duplicate,
            Verdict::Refused(r) => Received::Refused(r),
        }
    }

    /// The driver applied `task` at `now` (Unix seconds): the ledger takes
    /// on what it set, and a root task replaces the root.
    pub fn applied(&mut self, task: &CheckedTask, now: u64) {
        let pending = self
            .ledger
            .task(&task.task_id)
            .is_some_and(|r| r.state == crate::ledger::TaskState::Pending);
        self.ledger.applied(task, now);
        if pending {
            if let Some(next) = &task.new_root {
                if next.version == self.root.version + 1 {
                    self.root = next.clone();
                }
            }
        }
    }

    /// The driver could not apply task `id`.
    pub fn failed(&mut self, id: &str, reason: String) {
        self.ledger.failed(id, reason);
    }

    /// Tasks admitted but not applied (after a restart: the ones a crash
    /// interrupted), to apply again; applying is idempotent.
    pub fn pending(&self, now: u64) -> Vec<CheckedTask> {
        let ids: Vec<Vec<u8>> = self
            .ledger
            .tasks()
            .filter(|(_, r)| r.state == crate::ledger::TaskState::Pending)
            .map(|(_, r)| r.signed.clone())
            .collect();
        // Re-check each against a ledger without it, so it comes back as
        // the checked task it was.
        ids.iter()
            .filter_map(|signed| {
                let mut without = self.ledger.clone();
                without.remove_pending(signed);
                match check_task(signed, &self.root, &without, now) {
                    Verdict::Accepted(t) => Some(*t),
                    _ => None,
                }
            })
            .collect()
    }

    /// Forgets tasks whose window closed; true when it forgot any.
    pub fn forget_expired(&mut self, now: u64) -> bool {
        let forgot = self.ledger.forget_expired(now);
        if forgot {
            self.reindex();
        }
        forgot
    }

    /// What this host holds, for a peer to compare.
    pub fn summary(&self) -> Summary {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for (_, r) in self.ledger.tasks() {
            ctx.update(&r.digest);
        }
        let mut set_hash = [0u8; 32];
        set_hash.copy_from_slice(ctx.finish().as_ref());
        Summary {
            root_version: self.root.version,
            set_hash,
            count: self.by_prefix.len() as u32,
        }
    }

    /// Prefixes of every task held (answer to a summary that differs).
    pub fn held(&self) -> Vec<ShortDigest> {
        self.by_prefix
            .keys()
            .take(MAX_SYNC_ITEMS)
            .copied()
            .collect()
    }

    /// Of a peer's prefixes, those this host lacks; and the tasks this host
    /// holds that the peer lacks (root tasks first, so the peer can check
    /// what the new root's keys signed).
    pub fn compare(&self, theirs: &[ShortDigest]) -> (Vec<ShortDigest>, Vec<Vec<u8>>) {
        let theirs: BTreeSet<&ShortDigest> = theirs.iter().take(MAX_SYNC_ITEMS).collect();
        let wanted = theirs
            .iter()
            .filter(|p| !self.by_prefix.contains_key(**p))
            .map(|p| **p)
            .collect();
        let lacking: Vec<ShortDigest> = self
            .by_prefix
            .keys()
            .filter(|p| !theirs.contains(p))
            .copied()
            .collect();
        (wanted, self.tasks_for(&lacking))
    }

    /// The signed tasks named by `prefixes` that this host holds, root
    /// tasks first.
    pub fn tasks_for(&self, prefixes: &[ShortDigest]) -> Vec<Vec<u8>> {
        let mut out: Vec<(bool, Vec<u8>)> = prefixes
            .iter()
            .take(MAX_SYNC_ITEMS)
            .filter_map(|p| self.by_prefix.get(p))
            .filter_map(|id| self.ledger.task(id))
            .map(|r| (r.kind != "root", r.signed.clone()))
            .collect();
        out.sort_by_key(|(not_root, _)| *not_root);
        let mut total = 0;
        out.into_iter()
            .map(|(_, s)| s)
            .take_while(|s| {
                total += s.len();
                total <= MAX_SYNC_BYTES
            })
            .collect()
    }

    fn reindex(&mut self) {
        self.by_prefix = self
            .ledger
            .tasks()
            .map(|(id, r)| (short(&r.digest), id.clone()))
            .collect();
    }
}

fn short(digest: &[u8; 32]) -> ShortDigest {
    let mut s = [0u8; 8];
    s.copy_from_slice(&digest[..8]);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{plane, tag_task, Operators, NOW};
    use starling_proto::v1::TargetSelector;

    fn deliver(p: &mut TaskPlane, signed: &[u8]) -> bool {
        match p.receive(signed, NOW) {
            Received::Accepted { task, apply } => {
                if apply {
                    p.applied(&task, NOW);
                }
                true
            }
            _ => false,
        }
    }

    #[test]
    fn two_hosts_converge_in_one_exchange_and_equal_sets_compare_equal() {
        let ops = Operators::new(1);
        let mut a = plane(&ops, "a");
        let mut b = plane(&ops, "b");
        let all = TargetSelector {
            all: true,
            ..Default::default()
        };
        for i in 0..5 {
            assert!(deliver(
                &mut a,
                &tag_task(&ops, &format!("a{i}"), "x", all.clone())
            ));
        }
        assert!(deliver(&mut b, &tag_task(&ops, "b0", "y", all.clone())));
        assert_ne!(a.summary(), b.summary());
        // b sent its summary; a answers with what it holds.
        let (wanted_by_b, pushed_to_a) = b.compare(&a.held());
        assert_eq!(wanted_by_b.len(), 5);
        assert_eq!(pushed_to_a.len(), 1);
        for t in a.tasks_for(&wanted_by_b) {
            assert!(deliver(&mut b, &t));
        }
        for t in pushed_to_a {
            assert!(deliver(&mut a, &t));
        }
        assert_eq!(a.summary(), b.summary());
        assert_eq!(a.summary().count, 6);
    }

    #[test]
    fn fleet_tags_change_what_targets_match() {
        let ops = Operators::new(1);
        let mut p = plane(&ops, "h");
        let tagged = TargetSelector {
            tags: vec!["web".into()],
            ..Default::default()
        };
        // Not targeted before the tag: relayed, not applied.
        match p.receive(&tag_task(&ops, "t1", "z", tagged.clone()), NOW) {
            Received::Accepted { apply, .. } => assert!(!apply),
            other => panic!("{other:?}"),
        }
        assert!(deliver(
            &mut p,
            &tag_task(
                &ops,
                "t2",
                "web",
                TargetSelector {
                    all: true,
                    ..Default::default()
                }
            )
        ));
        assert!(p.facts().tags.contains("web"));
        match p.receive(&tag_task(&ops, "t3", "z", tagged), NOW) {
            Received::Accepted { apply, .. } => assert!(apply),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pending_tasks_come_back_after_a_restart_and_apply_once() {
        let ops = Operators::new(1);
        let mut p = plane(&ops, "h");
        let all = TargetSelector {
            all: true,
            ..Default::default()
        };
        match p.receive(&tag_task(&ops, "t1", "web", all), NOW) {
            Received::Accepted { apply, .. } => assert!(apply),
            other => panic!("{other:?}"),
        }
        // The host stopped before applying: the persisted ledger holds it
        // as pending.
        let persisted = p.ledger().clone();
        let mut again = TaskPlane::new(p.root().clone(), persisted, "h", BTreeSet::new());
        let pending = again.pending(NOW);
        assert_eq!(pending.len(), 1);
        again.applied(&pending[0], NOW);
        again.applied(&pending[0], NOW);
        assert!(again.pending(NOW).is_empty());
        assert!(again.facts().tags.contains("web"));
    }
}
