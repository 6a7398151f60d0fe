//! A node's choice of aggregator: the cheapest by measured proximity and
//! load, sticky so that small changes do not move it, and skipping for a
//! back-off any aggregator that refused (over capacity) or failed; and,
//! when its cell has had no aggregator for a while, the way straight to a
//! sink ([`RouteChoice`]). Sans-I/O: time and observations in, a choice out.

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

/// How long a node's cell must have had no aggregator before the node
/// ships straight to a sink by default: longer than a forming cell takes to
/// elect one (5 s for cells of 30 at a million simulated hosts), so a fleet
/// that starts at once does not land on the sinks.
pub const DEFAULT_DIRECT_TO_SINK_AFTER: Duration = Duration::from_secs(30);

/// Where a node's batches go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Through an aggregator of its cell (the normal way).
    Aggregator,
    /// Straight to a sink: the node is an aggregator itself, or its cell
    /// has had no aggregator for the configured while.
    Sink,
    /// Nowhere yet: its cell has no aggregator, not for long enough; the
    /// events stay spooled.
    Wait,
}

/// A node's choice between its cell's aggregators and a sink. A cell can
/// have no aggregator for good: none of its members may serve (about one
/// cell in 450 when a fifth of hosts may, at cells of 30), or every one
/// that may has failed. Its hosts would spool until their disks filled;
/// instead, after `direct_after` without one, they ship straight to a sink,
/// and go back through an aggregator as soon as the cell elects one, so
/// the sinks see few such connections and only for as long as needed. The
/// sinks' connection limit bounds the rest (a refusal backs the node off
/// like an aggregator's). Generic over the clock: the daemon passes
/// [`Instant`], the simulator virtual time as a [`Duration`].
#[derive(Debug, Clone)]
pub struct RouteChoice<T> {
    /// None: never ship straight to a sink (the sinks take only
    /// aggregators' connections, say).
    direct_after: Option<Duration>,
    without_aggregator_since: Option<T>,
}

impl<T> RouteChoice<T>
where
    T: Copy + Ord + std::ops::Sub<Output = Duration>,
{
    /// A node that ships straight to a sink once its cell has had no
    /// aggregator for `direct_after` (None: never).
    pub fn new(direct_after: Option<Duration>) -> Self {
        Self {
            direct_after,
            without_aggregator_since: None,
        }
    }

    /// The route now, for a node that is (or is not) an aggregator itself
    /// and sees this many aggregators elected in its cell.
    pub fn route(&mut self, now: T, is_aggregator: bool, cell_aggregators: usize) -> Route {
        if is_aggregator {
            self.without_aggregator_since = None;
            return Route::Sink;
        }
        if cell_aggregators > 0 {
            self.without_aggregator_since = None;
            return Route::Aggregator;
        }
        let since = *self.without_aggregator_since.get_or_insert(now);
        match self.direct_after {
            // `since <= now` unless the clock went back; then wait again.
            Some(after) if since <= now && now - since >= after => Route::Sink,
            _ => Route::Wait,
        }
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

    #[test]
    fn a_cell_without_aggregators_ships_straight_to_a_sink_after_the_wait() {
        let after = Duration::from_secs(30);
        let mut r = RouteChoice::new(Some(after));
        let t0 = Duration::from_secs(100);
        assert_eq!(r.route(t0, false, 2), Route::Aggregator);
        assert_eq!(r.route(t0, false, 0), Route::Wait, "not yet");
        assert_eq!(
            r.route(t0 + after - Duration::from_millis(1), false, 0),
            Route::Wait
        );
        assert_eq!(r.route(t0 + after, false, 0), Route::Sink);
        // An aggregator elected at last: back through it at once.
        assert_eq!(r.route(t0 + after * 2, false, 1), Route::Aggregator);
        // And the wait starts over when it is gone again.
        assert_eq!(r.route(t0 + after * 3, false, 0), Route::Wait);
        assert_eq!(r.route(t0 + after * 4, false, 0), Route::Sink);
    }

    #[test]
    fn an_aggregator_ships_to_a_sink_and_never_means_never() {
        let mut r = RouteChoice::new(None);
        let now = Instant::now();
        assert_eq!(
            r.route(now, true, 1),
            Route::Sink,
            "aggregators ship to sinks"
        );
        assert_eq!(r.route(now, false, 0), Route::Wait);
        assert_eq!(
            r.route(now + Duration::from_secs(86_400), false, 0),
            Route::Wait
        );
    }

    #[test]
    fn a_clock_that_goes_back_waits_instead_of_panicking() {
        let mut r = RouteChoice::new(Some(Duration::from_secs(1)));
        assert_eq!(r.route(Duration::from_secs(10), false, 0), Route::Wait);
        assert_eq!(r.route(Duration::from_secs(5), false, 0), Route::Wait);
    }
}
