//! Load for tests that need events flowing: a thread that runs short
//! marked processes until stopped.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Runs short processes in a loop until stopped: a steady stream of
/// execs, each with the marker as its argument (see `kafka::is_marked_exec`).
pub struct ExecLoad {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ExecLoad {
    /// Starts running `/bin/true MARKER` about every 5 ms.
    pub fn start(marker: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let (s, c, m) = (stop.clone(), count.clone(), marker.to_owned());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(mut child) = Command::new("/bin/true").arg(&m).spawn() {
                    let _ = child.wait();
                    c.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            stop,
            count,
            thread: Some(thread),
        }
    }

    /// Stops the load and returns how many processes it ran.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for ExecLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
