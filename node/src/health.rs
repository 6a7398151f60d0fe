//! The node's health, as a rollout judges a task by it (docs/rollouts.md,
//! "Health"): a task under a rollout plan soaks only while its host is
//! healthy, and the host takes it back by itself when it turns unhealthy
//! within the soak. Healthy means:
//!
//! - the process is not in a restart loop (fewer than [`RESTART_LOOP`]
//!   starts within [`RESTART_WINDOW`], counted in a small file in the
//!   data directory; a loop counts until the process has stayed up for
//!   the rest of that window);
//! - the sensor is loaded (when enabled) and took the last filters it
//!   was given;
//! - events are acknowledged: while the spool holds events, its oldest
//!   one moves on within [`ACK_STALL`].
//!
//! Sans-I/O except [`record_start`]: the node's status loop feeds
//! [`HealthWatch::observe`] every two seconds and tells its mesh the
//! verdict.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use crate::spool::SpoolStats;

/// Starts within [`RESTART_WINDOW`] that make a restart loop.
pub const RESTART_LOOP: usize = 3;
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);
/// How long the spool may hold events without any acknowledged.
pub const ACK_STALL: Duration = Duration::from_secs(60);
/// The file of recent starts, in the data directory.
pub const STARTS_FILE: &str = "starts.json";
/// Prometheus gauge: 1 when the node is healthy, 0 when not.
pub const HEALTHY: &str = "starling_node_healthy";

/// The kernel sensor as the node last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SensorState {
    /// Disabled by the local configuration: not a fault.
    Disabled,
    /// Loaded, and the last filters were taken.
    Loaded,
    /// Loaded, and the kernel refused the last filters (why).
    FiltersRefused(String),
    /// Did not load, or stopped (why).
    Down(String),
}

/// What the node has seen of its own health over time.
#[derive(Debug)]
pub struct HealthWatch {
    /// A restart loop, and until when it counts (once the window has
    /// passed since the oldest of the starts that made it, the process
    /// has stayed up long enough).
    restart_loop: Option<(String, Instant)>,
    /// The spool's oldest event when last seen, and since when it is.
    oldest: Option<(u64, Instant)>,
}

impl HealthWatch {
    /// A watch for a process started at `started` whose recent starts
    /// (Unix seconds, oldest first, this one last) are `starts`.
    pub fn new(starts: &[u64], started: Instant) -> Self {
        let window = RESTART_WINDOW.as_secs();
        let this_start = starts.last().copied().unwrap_or(0);
        let recent: Vec<u64> = starts
            .iter()
            .copied()
            .filter(|s| this_start.saturating_sub(*s) < window)
            .collect();
        let restart_loop = (recent.len() >= RESTART_LOOP).then(|| {
            // It counts until the window has passed since the oldest
            // start that made it.
            let oldest = recent.first().copied().unwrap_or(this_start);
            let left = window.saturating_sub(this_start.saturating_sub(oldest));
            (
                format!(
                    "restart loop: {} starts within {} minutes",
                    recent.len(),
                    window / 60
                ),
                started + Duration::from_secs(left),
            )
        });
        Self {
            restart_loop,
            oldest: None,
        }
    }

    /// The verdict at `now`: None when healthy, else why not.
    pub fn observe(
        &mut self,
        now: Instant,
        sensor: &SensorState,
        spool: &SpoolStats,
    ) -> Option<String> {
        if let Some((why, until)) = &self.restart_loop {
            if now < *until {
                return Some(why.clone());
            }
        }
        match sensor {
            SensorState::Down(why) => return Some(format!("sensor not loaded: {why}")),
            SensorState::FiltersRefused(why) => {
                return Some(format!("sensor filters refused: {why}"))
            }
            SensorState::Disabled | SensorState::Loaded => {}
        }
        if spool.events == 0 {
            self.oldest = None;
            return None;
        }
        let since = match self.oldest {
            Some((seq, since)) if seq == spool.first_seq => since,
            _ => {
                self.oldest = Some((spool.first_seq, now));
                now
            }
        };
        let stalled = now.duration_since(since);
        (stalled >= ACK_STALL).then(|| {
            format!(
                "no event acknowledged for {} s ({} spooled)",
                stalled.as_secs(),
                spool.events
            )
        })
    }
}

/// Records this start in `data_dir` and returns the recent starts (Unix
/// seconds, this one included, at most ten). A file that cannot be read
/// or written counts as no earlier start: health must not fail on it.
pub fn record_start(data_dir: &Path) -> Vec<u64> {
    let path = data_dir.join(STARTS_FILE);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut starts: Vec<u64> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    starts.push(now);
    let keep = starts.len().saturating_sub(10);
    starts.drain(..keep);
    if let Ok(bytes) = serde_json::to_vec(&starts) {
        let tmp = path.with_extension("json.tmp");
        if let Err(e) = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &path)) {
            tracing::warn!(path = %path.display(), error = %e, "start not recorded; restart loops go unnoticed");
        }
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool(events: u64, first_seq: u64) -> SpoolStats {
        SpoolStats {
            events,
            bytes: events * 100,
            first_seq,
            next_seq: first_seq + events,
        }
    }

    #[test]
    fn a_stalled_spool_is_unhealthy_and_acks_make_it_healthy_again() {
        let t0 = Instant::now();
        let mut w = HealthWatch::new(&[1_000], t0);
        let ok = SensorState::Loaded;
        assert_eq!(w.observe(t0, &ok, &spool(5, 10)), None);
        let late = t0 + ACK_STALL - Duration::from_secs(1);
        assert_eq!(w.observe(late, &ok, &spool(50, 10)), None);
        let stalled = w.observe(t0 + ACK_STALL, &ok, &spool(80, 10));
        assert!(
            stalled.as_deref().is_some_and(|w| w.contains("80 spooled")),
            "{stalled:?}"
        );
        // An ack moves the oldest event on: healthy, and the clock starts
        // again from there.
        let later = t0 + ACK_STALL + Duration::from_secs(1);
        assert_eq!(w.observe(later, &ok, &spool(70, 20)), None);
        assert_eq!(w.observe(later + ACK_STALL / 2, &ok, &spool(90, 20)), None);
        // An empty spool is never stalled.
        assert_eq!(w.observe(later + ACK_STALL * 3, &ok, &spool(0, 0)), None);
    }

    #[test]
    fn the_sensor_and_restart_loops_count() {
        let t0 = Instant::now();
        let mut w = HealthWatch::new(&[100, 200], t0);
        let empty = spool(0, 0);
        assert_eq!(w.observe(t0, &SensorState::Disabled, &empty), None);
        let down = SensorState::Down("BPF program refused".into());
        assert!(w
            .observe(t0, &down, &empty)
            .is_some_and(|w| w.contains("BPF")));
        let refused = SensorState::FiltersRefused("map full".into());
        assert!(w.observe(t0, &refused, &empty).is_some());
        let mut looping = HealthWatch::new(&[100, 200, 300], t0);
        let why = looping.observe(t0, &SensorState::Loaded, &empty);
        assert!(why.is_some_and(|w| w.starts_with("restart loop")));
        // Up for the rest of the window since the oldest of those starts
        // (600 - 200 s): the loop is over.
        let later = t0 + Duration::from_secs(399);
        assert!(looping
            .observe(later, &SensorState::Loaded, &empty)
            .is_some());
        let over = t0 + Duration::from_secs(400);
        assert_eq!(looping.observe(over, &SensorState::Loaded, &empty), None);
        // Starts older than the window do not count.
        let mut old = HealthWatch::new(&[1, 2, 1_000], t0);
        assert_eq!(old.observe(t0, &SensorState::Loaded, &empty), None);
    }

    #[test]
    fn starts_are_recorded_and_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        for _ in 0..12 {
            record_start(dir.path());
        }
        let starts = record_start(dir.path());
        assert_eq!(starts.len(), 10);
        std::fs::write(dir.path().join(STARTS_FILE), b"not json").expect("write");
        assert_eq!(
            record_start(dir.path()).len(),
            1,
            "a broken file: this start only"
        );
    }
}
