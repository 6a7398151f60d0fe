//! Recognising a batch the sink persisted before: a relay that replays a
//! captured batch gets the receipt the first copy earned (PERSISTED,
//! marked duplicate) and nothing is written twice.
//!
//! Sans-I/O: time comes in as an argument. The sink remembers the header
//! digests of the batches it persisted in two generations that turn over
//! every `span`, so a digest is remembered for at least `span` and at most
//! twice that. The ingress refuses batches signed longer ago than the
//! span (`origin.max_batch_age_secs`), so any replay it would still accept
//! is recognised, as long as the memory bound holds: a generation that
//! fills before its time is turned over early, which shortens what is
//! remembered, and is counted.

use std::collections::HashSet;
use std::time::{Duration, Instant};

/// The part of a header digest that is remembered (128 bits: collisions
/// among honest batches are out of reach).
type Key = [u8; 16];

/// Digests of recently persisted batches.
#[derive(Debug)]
pub struct ReplayWindow {
    span: Duration,
    capacity: usize,
    started: Instant,
    young: HashSet<Key>,
    old: HashSet<Key>,
    early_turns: u64,
}

impl ReplayWindow {
    /// Remembers each digest for at least `span`, holding at most
    /// `capacity` digests (about 40 bytes each) in all.
    pub fn new(span: Duration, capacity: usize, now: Instant) -> Self {
        Self {
            span,
            capacity: (capacity / 2).max(1),
            started: now,
            young: HashSet::new(),
            old: HashSet::new(),
            early_turns: 0,
        }
    }

    fn key(digest: &[u8; 32]) -> Key {
        let mut k = [0u8; 16];
        k.copy_from_slice(&digest[..16]);
        k
    }

    fn turn_if_due(&mut self, now: Instant) {
        if now.saturating_duration_since(self.started) >= self.span {
            self.old = std::mem::take(&mut self.young);
            self.started = now;
        }
    }

    /// Whether a batch with this header digest was persisted recently.
    pub fn seen(&mut self, digest: &[u8; 32], now: Instant) -> bool {
        self.turn_if_due(now);
        let k = Self::key(digest);
        self.young.contains(&k) || self.old.contains(&k)
    }

    /// Remembers that the batch with this header digest was persisted.
    pub fn remember(&mut self, digest: &[u8; 32], now: Instant) {
        self.turn_if_due(now);
        if self.young.len() >= self.capacity {
            self.old = std::mem::take(&mut self.young);
            self.started = now;
            self.early_turns += 1;
        }
        self.young.insert(Self::key(digest));
    }

    /// How often a full generation was turned over before its time (each
    /// time, digests were remembered for less than the span).
    pub fn early_turns(&self) -> u64 {
        self.early_turns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> [u8; 32] {
        [n; 32]
    }

    #[test]
    fn a_digest_is_remembered_for_at_least_the_span() {
        let t0 = Instant::now();
        let span = Duration::from_secs(60);
        let mut w = ReplayWindow::new(span, 1000, t0);
        w.remember(&d(1), t0 + Duration::from_secs(59));
        // It moves to the old generation at 60 s and stays until 120 s.
        assert!(w.seen(&d(1), t0 + Duration::from_secs(61)));
        assert!(w.seen(&d(1), t0 + Duration::from_secs(119)));
        assert!(!w.seen(&d(1), t0 + Duration::from_secs(180)));
        assert!(!w.seen(&d(2), t0), "never persisted");
    }

    #[test]
    fn memory_stays_bounded_and_early_turns_are_counted() {
        let t0 = Instant::now();
        let mut w = ReplayWindow::new(Duration::from_secs(600), 4, t0);
        for n in 0..10 {
            w.remember(&d(n), t0);
        }
        assert!(w.young.len() + w.old.len() <= 4);
        assert!(w.early_turns() >= 3);
        assert!(w.seen(&d(9), t0), "the newest are kept");
        assert!(!w.seen(&d(0), t0), "the oldest gave way");
    }
}
