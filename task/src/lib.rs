//! The task plane's logic, without I/O: operator keys, the fleet's trust
//! root, the checks every host runs on every task before it applies or
//! relays it, target selection, and each host's ledger of tasks, settings
//! and tags. The node's driver and the simulator run exactly this code
//! (docs/tasks.md).

pub mod check;
pub mod fleet;
pub mod keys;
pub mod ledger;
pub mod plane;
pub mod rollout;
pub mod rollup;
pub mod root;
pub mod sign;
pub mod sync;
pub mod target;

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod testkit;

pub use check::{check_task, Blame, CheckedTask, Refusal, RefusalReason, Verdict};
pub use keys::{KeyId, OperatorKeyPair, OperatorPublicKey};
pub use ledger::{Ledger, Plan, TaskState};
pub use plane::{Received, Staged, Summary, TaskPlane};
pub use root::TrustedRoot;
pub use target::HostFacts;
