//! What the kernel side reports about itself: records it dropped and how
//! long its programs ran.

use crate::raw::KINDS;

/// Why a record was dropped in the kernel (enum starling_drop_reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The ring buffer was full: userspace fell behind. A loss.
    RingBufferFull = 0,
    /// Over its kind's configured rate. A loss by configuration.
    RateLimited = 1,
    /// The node's own activity or an allow-list: not wanted.
    Filtered = 2,
}

impl DropReason {
    /// Every reason, in the kernel's slot order.
    pub const ALL: [DropReason; 3] = [Self::RingBufferFull, Self::RateLimited, Self::Filtered];

    /// The reason's name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::RingBufferFull => "ring_buffer_full",
            Self::RateLimited => "rate_limited",
            Self::Filtered => "filtered",
        }
    }
}

/// How often one kernel program ran and for how long in total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    pub program: &'static str,
    pub run_count: u64,
    pub run_time: std::time::Duration,
}

/// Records dropped in the kernel since load, by reason and kind (index:
/// the kind number of [`crate::KIND_NAMES`]), summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounts {
    pub counts: [[u64; KINDS]; 3],
}

impl DropCounts {
    /// Records of `kind` dropped for `reason`.
    pub fn get(&self, reason: DropReason, kind: u32) -> u64 {
        self.counts[reason as usize]
            .get(kind as usize)
            .copied()
            .unwrap_or(0)
    }

    /// All records dropped for `reason`.
    pub fn total(&self, reason: DropReason) -> u64 {
        self.counts[reason as usize].iter().sum()
    }
}
