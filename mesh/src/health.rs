//! Local health, after Lifeguard (Dadgar et al., 2018): a member that is
//! itself slow must not declare others dead.
//!
//! SWIM blames the probed member when an ack is late, but on a host whose
//! CPU is saturated the ack is usually on time and it is the observer that
//! reads it late. Lifeguard keeps a small saturating score of evidence that
//! the observer is unhealthy and stretches its timeouts by it. Our evidence
//! is the one a busy process cannot hide: timers that fire late. Each late
//! firing raises the score by one, up to [`MAX_SCORE`]; every
//! [`RECOVERY_FIRINGS`] punctual firings in a row lower it by one. The
//! suspicion timeout is the healthy one times `1 + score`.
//!
//! Sans-I/O: the driver reports how late each timer ran.

use std::time::Duration;

/// Highest score (Lifeguard's maximum local-health multiplier).
pub const MAX_SCORE: u8 = 8;
/// A timer that runs this much after its deadline is evidence of a busy
/// member (the probe round-trip budget is 500 ms).
pub const LATE: Duration = Duration::from_millis(200);
/// Punctual firings in a row that lower the score by one. Timers fire
/// several times a second (probes each second, gossip every 500 ms), so
/// this is about two seconds of good health.
pub const RECOVERY_FIRINGS: u32 = 10;

/// The local-health score of one member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalHealth {
    score: u8,
    punctual: u32,
}

impl LocalHealth {
    /// 0 when healthy, up to [`MAX_SCORE`].
    pub fn score(&self) -> u8 {
        self.score
    }

    /// Records a timer that ran `late` after its deadline; returns whether
    /// the score changed.
    pub fn observe(&mut self, late: Duration) -> bool {
        if late >= LATE {
            self.punctual = 0;
            if self.score < MAX_SCORE {
                self.score += 1;
                return true;
            }
            return false;
        }
        self.punctual += 1;
        if self.punctual >= RECOVERY_FIRINGS && self.score > 0 {
            self.punctual = 0;
            self.score -= 1;
            return true;
        }
        false
    }

    /// `healthy` stretched by the score.
    pub fn scale(&self, healthy: Duration) -> Duration {
        healthy * (1 + u32::from(self.score))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_timers_raise_the_score_up_to_the_limit() {
        let mut h = LocalHealth::default();
        assert!(h.observe(Duration::from_millis(300)));
        assert_eq!(h.score(), 1);
        for _ in 0..20 {
            h.observe(Duration::from_secs(1));
        }
        assert_eq!(h.score(), MAX_SCORE);
        assert_eq!(
            h.scale(Duration::from_secs(2)),
            Duration::from_secs(2) * (1 + u32::from(MAX_SCORE))
        );
    }

    #[test]
    fn punctual_timers_lower_it_slowly_and_a_late_one_restarts_the_count() {
        let mut h = LocalHealth::default();
        h.observe(LATE);
        h.observe(LATE);
        assert_eq!(h.score(), 2);
        for _ in 0..RECOVERY_FIRINGS - 1 {
            assert!(!h.observe(Duration::ZERO));
        }
        // One late firing before the tenth punctual one: no recovery.
        h.observe(LATE);
        assert_eq!(h.score(), 3);
        for _ in 0..RECOVERY_FIRINGS {
            h.observe(Duration::from_millis(10));
        }
        assert_eq!(h.score(), 2);
        for _ in 0..2 * RECOVERY_FIRINGS {
            h.observe(Duration::ZERO);
        }
        assert_eq!(h.score(), 0);
        assert_eq!(h.scale(Duration::from_secs(3)), Duration::from_secs(3));
    }
}
