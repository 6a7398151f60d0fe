//! Starling's harness for running the real system on one machine: a fleet
//! PKI, sink and node processes with their configs, a Kafka-protocol broker
//! (tansu), a Kafka reader, and a raw data-plane client for adversarial
//! tests. Tests and benchmarks are built on it; later work grows it into
//! the many-node simulator.

pub mod broker;
pub mod client;
pub mod kafka;
pub mod netsim;
pub mod process;

pub use broker::Broker;
pub use process::{Fleet, MeshOptions, NodeProcess, SinkProcess};

use std::time::{Duration, Instant};

/// Polls `check` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A free port on 127.0.0.1 (TCP and UDP both unused at the time of asking).
pub fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let port = tcp.local_addr().expect("local addr").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// True when the tests run as root (needed to load BPF programs).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
