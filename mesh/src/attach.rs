//! A node's choice of aggregator: the cheapest by measured proximity and
//! load, sticky so that small changes do not move it, and skipping for a
//! back-off any aggregator that refused (over capacity) or failed.
//! Sans-I/O: time and observations in, a choice out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Milliseconds of RTT one unit of load (a full aggregator) is worth.
const LOAD_WEIGHT_MS: f64 = 50.0;
/// A candidate must be this much cheaper to take over from the current one.
const SWITCH_MARGIN: f64 = 0.30;
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// An aggregator of the node's cell, as the node measures it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: String,
    /// Round-trip time measured by ping; None when not measured yet.
    pub rtt: Option<Duration>,
    /// Advertised load as a fraction of capacity (0..1).
    pub load: f64,
}

impl Candidate {
    fn cost(&self) -> f64 {
        // Unmeasured candidates rank behind any measured one within reason.
        let rtt_ms = self.rtt.map_or(500.0, |d| d.as_secs_f64() * 1000.0);
        rtt_ms + LOAD_WEIGHT_MS * self.load.clamp(0.0, 1.0)
    }
}

#[derive(Debug, Clone, Copy)]
struct Penalty {
    until: Instant,
    backoff: Duration,
}

/// The node's attachment state.
#[derive(Debug, Default)]
pub struct Attachment {
    current: Option<String>,
    penalties: HashMap<String, Penalty>,
}

impl Attachment {
    /// A node attached to nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The aggregator in use, if any.
    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// Picks the aggregator to use now from the cell's current aggregators.
    /// Returns None when every candidate is backing off (the node keeps
    /// spooling and says so).
    pub fn choose(&mut self, now: Instant, candidates: &[Candidate]) -> Option<&str> {
        // A penalty is remembered (for doubling) until a full maximum
        // back-off has passed since it expired.
        self.penalties.retain(|_, p| p.until + MAX_BACKOFF > now);
        let usable = |c: &&Candidate| self.penalties.get(&c.id).is_none_or(|p| p.until <= now);
        let best = candidates
            .iter()
            .filter(usable)
            .min_by(|a, b| a.cost().total_cmp(&b.cost()).then_with(|| a.id.cmp(&b.id)));
        let current = self
            .current
            .as_ref()
            .and_then(|id| candidates.iter().filter(usable).find(|c| &c.id == id));
        let next = match (current, best) {
            (Some(cur), Some(best)) if best.cost() < cur.cost() * (1.0 - SWITCH_MARGIN) => {
                Some(best)
            }
            (Some(cur), _) => Some(cur),
            (None, best) => best,
        };
        self.current = next.map(|c| c.id.clone());
        self.current.as_deref()
    }

    /// The aggregator refused the node (over capacity) or the connection to
    /// it failed: skip it for a back-off that doubles on each repeat.
    pub fn on_unavailable(&mut self, now: Instant, id: &str) {
        let backoff = self
            .penalties
            .get(id)
            .map_or(FIRST_BACKOFF, |p| (p.backoff * 2).min(MAX_BACKOFF));
        self.penalties.insert(
            id.to_owned(),
            Penalty {
                until: now + backoff,
                backoff,
            },
        );
        if self.current.as_deref() == Some(id) {
            self.current = None;
        }
    }

    /// The node worked with this aggregator: forget its past failures.
    pub fn on_success(&mut self, id: &str) {
        self.penalties.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, rtt_ms: u64, load: f64) -> Candidate {
        Candidate {
            id: id.into(),
            rtt: Some(Duration::from_millis(rtt_ms)),
            load,
        }
    }

    #[test]
    fn picks_the_nearest_least_loaded() {
        let now = Instant::now();
        let mut a = Attachment::new();
        let cands = [c("far", 40, 0.0), c("near-busy", 2, 0.9), c("near", 3, 0.1)];
        assert_eq!(a.choose(now, &cands), Some("near"));
    }

    #[test]
    fn small_changes_do_not_move_the_node() {
        let now = Instant::now();
        let mut a = Attachment::new();
        assert_eq!(
            a.choose(now, &[c("a", 10, 0.2), c("b", 12, 0.2)]),
            Some("a")
        );
        // b becomes a little cheaper: stay on a.
        assert_eq!(a.choose(now, &[c("a", 10, 0.3), c("b", 9, 0.2)]), Some("a"));
        // b becomes much cheaper: move.
        assert_eq!(a.choose(now, &[c("a", 30, 0.9), c("b", 5, 0.1)]), Some("b"));
    }

    #[test]
    fn a_refusing_aggregator_is_skipped_then_retried() {
        let now = Instant::now();
        let mut a = Attachment::new();
        let cands = [c("a", 1, 0.0), c("b", 5, 0.0)];
        assert_eq!(a.choose(now, &cands), Some("a"));
        a.on_unavailable(now, "a");
        assert_eq!(a.choose(now, &cands), Some("b"), "goes to the next");
        // After the back-off a is usable again, and much cheaper: back to a.
        let later = now + FIRST_BACKOFF + Duration::from_millis(1);
        assert_eq!(a.choose(later, &cands), Some("a"));
    }

    #[test]
    fn repeated_failures_back_off_longer() {
        let now = Instant::now();
        let mut a = Attachment::new();
        let cands = [c("a", 1, 0.0)];
        a.on_unavailable(now, "a");
        let t1 = now + FIRST_BACKOFF + Duration::from_millis(1);
        assert_eq!(a.choose(t1, &cands), Some("a"));
        a.on_unavailable(t1, "a");
        assert_eq!(
            a.choose(t1 + FIRST_BACKOFF + Duration::from_millis(1), &cands),
            None,
            "doubled"
        );
        assert_eq!(
            a.choose(t1 + FIRST_BACKOFF * 2 + Duration::from_millis(1), &cands),
            Some("a")
        );
        a.on_success("a");
        a.on_unavailable(now, "a");
        assert_eq!(
            a.choose(now + FIRST_BACKOFF + Duration::from_millis(1), &cands),
            Some("a"),
            "success resets"
        );
    }

    #[test]
    fn old_penalties_are_forgotten() {
        let now = Instant::now();
        let mut a = Attachment::new();
        let cands = [c("a", 1, 0.0)];
        a.on_unavailable(now, "a");
        let much_later = now + FIRST_BACKOFF + MAX_BACKOFF + Duration::from_secs(1);
        assert_eq!(a.choose(much_later, &cands), Some("a"));
        a.on_unavailable(much_later, "a");
        let t = much_later + FIRST_BACKOFF + Duration::from_millis(1);
        assert_eq!(a.choose(t, &cands), Some("a"), "the back-off started over");
    }

    #[test]
    fn a_vanished_aggregator_is_left_at_once() {
        let now = Instant::now();
        let mut a = Attachment::new();
        assert_eq!(a.choose(now, &[c("a", 1, 0.0), c("b", 9, 0.0)]), Some("a"));
        assert_eq!(a.choose(now, &[c("b", 9, 0.0)]), Some("b"));
        assert_eq!(a.choose(now, &[]), None);
    }
}
