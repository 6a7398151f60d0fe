//! Starling's harness for running the real system on one machine: a fleet
//! PKI, sink and node processes with their configs, a Kafka-protocol broker
//! (tansu), a Kafka reader, a raw data-plane client for adversarial
//! tests, and network namespaces for real partitions. Tests and benchmarks are built on it; later work grows it into
//! the many-node simulator.

pub mod broker;
pub mod client;
pub mod hostile_relay;
pub mod kafka;
pub mod netns;
pub mod netsim;
pub mod process;

pub use broker::Broker;
pub use process::{local_metric, Fleet, MeshOptions, NodeProcess, SinkProcess};

use std::time::{Duration, Instant};

use starling_proto::v1::{event::Body, Event, EventHeader, ProcessExec};

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

/// A realistic exec event (a curl download) for benchmarks, numbered `i`
/// so that payloads differ.
pub fn sample_exec_event(i: u64) -> Event {
    Event {
        header: Some(EventHeader {
            host_id: String::new(),
            seq: 0,
            ktime_ns: 1_000_000 + i,
            time_unix_ns: 1_790_000_000_000_000_000 + i,
            pid: 40_000 + (i % 1000) as u32,
            tid: 40_000 + (i % 1000) as u32,
            ppid: 1234,
            uid: 1000,
            gid: 1000,
            comm: "curl".into(),
            exe: "/usr/bin/curl".into(),
            cgroup_id: 4242,
            user: "ann".into(),
            cgroup_path: "/user.slice/user-1000.slice/session-3.scope".into(),
            container: None,
        }),
        body: Some(Body::ProcessExec(ProcessExec {
            filename: "/usr/bin/curl".into(),
            argv: vec![
                "curl".into(),
                "-fsSL".into(),
                format!("https://example.invalid/install.sh?n={i}"),
                "-o".into(),
                "/tmp/install.sh".into(),
            ],
            argv_truncated: false,
            parent_exe: "/usr/bin/bash".into(),
            cwd: "/home/ann".into(),
            tty: "pts0".into(),
            euid: 1000,
            egid: 1000,
            ancestry: vec![
                "1233:bash:/usr/bin/bash".into(),
                "1200:sshd:/usr/sbin/sshd".into(),
                "1:systemd:/usr/lib/systemd/systemd".into(),
            ],
            exe_sha256: "9f2c5b1e0d8a7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b".into(),
            ..Default::default()
        })),
    }
}
