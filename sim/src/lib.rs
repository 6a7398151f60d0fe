//! Starling's harness for running the real system on one machine: a fleet
//! PKI, sink and node processes with their configs, a Kafka-protocol broker
//! (tansu), a Kafka reader, a raw data-plane client for adversarial
//! tests, and network namespaces for real partitions. Tests and benchmarks are built on it; later work grows it into
//! the many-node simulator.

pub mod broker;
pub mod cell_settings;
pub mod client;
pub mod event_queue;
pub mod fleet;
pub mod hostile_relay;
pub mod in_process;
pub mod kafka;
pub mod load;
pub mod netns;
pub mod netsim;
pub mod process;
pub mod task_spread;
pub mod tasks;

pub use broker::Broker;
pub use load::ExecLoad;
pub use process::{
    local_metric, predicted_aggregators, Fleet, MeshOptions, NodeProcess, SinkProcess,
};

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

/// A free port on 127.0.0.1 for a child process to listen on, TCP and UDP
/// both unused when asked.
///
/// Asking the kernel for port 0 and handing the number on races: the kernel
/// gives the same ephemeral range to every outgoing connection and every
/// other `bind(0)` on the host, so the port can be taken before the child
/// binds it. Ports here come from below the ephemeral range (which the
/// kernel never hands out by itself), start at an offset drawn from the
/// process id so two test binaries rarely probe the same ports, and are
/// never handed out twice by one process.
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    // 20000..32768: under Linux's default ip_local_port_range (32768-60999).
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_768;
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    let mut offset = next.unwrap_or_else(|| (std::process::id() % u32::from(SPAN)) as u16);
    for _ in 0..SPAN {
        let port = FIRST + offset;
        offset = (offset + 1) % SPAN;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            *next = Some(offset);
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN);
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
