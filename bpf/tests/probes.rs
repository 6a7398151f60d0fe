//! The sensor's kernel programs against real processes and sockets (needs
//! root to load BPF). Each test does something real and asserts the fields
//! of the record the kernel produced for it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

mod common;

use common::{count_memfds, is_root, make_memfds, Seen};
use starling_bpf::{DropReason, RawRecord, Sensor, SensorConfig, TcpOp};

/// ECONNREFUSED on Linux.
const ECONNREFUSED: i32 = 111;

/// cgroup v2 id of this process: the inode of its cgroup2 directory
/// (pure cgroup2 hosts mount it at /sys/fs/cgroup, hybrid ones at
/// /sys/fs/cgroup/unified).
fn own_cgroup_id() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .find_map(|root| std::fs::metadata(format!("{root}{path}")).ok())
        .map(|m| m.ino())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_record_has_argv_pid_parent_and_cgroup() {
    let mut seen = Seen::load();
    let marker = format!("probe-marker-{}", std::process::id());
    let mut child = Command::new("/bin/echo")
        .args([marker.as_str(), "", "second arg"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn echo");
    let pid = child.id();
    child.wait().expect("echo ran");

    let x = seen
        .exec_with(&marker)
        .await
        .expect("exec record for the marker");
    let h = &x.header;
    assert_eq!(h.tgid, pid);
    assert_eq!(h.tid, pid, "single-threaded exec: tid == tgid");
    assert_eq!(h.ppid, std::process::id());
    assert_eq!(x.filename, "/bin/echo");
    assert_eq!(x.argv, ["/bin/echo", marker.as_str(), "", "second arg"]);
    assert!(!x.argv_truncated);
    assert_eq!(h.comm, "echo");
    assert_eq!(h.uid, 0);
    let id = own_cgroup_id().expect("this host has a cgroup2 hierarchy");
    assert_eq!(h.cgroup_id, id, "cgroup id is the cgroup2 directory inode");
    let drops = seen.sensor.drop_counts().expect("drop map");
    assert_eq!(drops.total(DropReason::RingBufferFull), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_argv_is_cut_at_the_limit_and_flagged() {
    let mut seen = Seen::load();
    let marker = format!("long-argv-{}", std::process::id());
    let long = "x".repeat(10_000);
    Command::new("/bin/true")
        .args([marker.as_str(), long.as_str()])
        .status()
        .expect("spawn true");
    let x = seen.exec_with(&marker).await.expect("exec record");
    assert!(x.argv_truncated);
    let captured: usize = x.argv.iter().map(|a| a.len() + 1).sum();
    assert!(
        captured <= starling_bpf::raw::ARGV_MAX + 1,
        "captured {captured} bytes"
    );
    assert!(x.argv[2].len() > 1000 && x.argv[2].len() < 10_000);
}

#[test]
fn bad_ring_buffer_size_is_refused_before_loading() {
    let err = Sensor::load(&SensorConfig {
        ring_buffer_bytes: 5000,
        ..Default::default()
    })
    .err()
    .expect("refused");
    assert!(err.to_string().contains("power of two"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ring_buffer_drops_in_the_kernel_and_counts_every_loss() {
    assert!(
        is_root(),
        "this test loads BPF programs and must run as root"
    );
    // One page holds only a dozen memfd records, and nothing reads it
    // until the test is done: memfd_create is a kind only this test makes,
    // so what the kernel counts lost must be exactly the test's records
    // that are not in the ring.
    let made = 50;
    let kind = starling_bpf::kind_number("memfd_create").expect("a kind");
    for attempt in 0.. {
        let mut sensor = Sensor::load(&SensorConfig {
            ring_buffer_bytes: 4096,
            ..Default::default()
        })
        .expect("sensor loads");
        let prefix = format!("fill-{}-{attempt}-", std::process::id());
        make_memfds(&prefix, made);
        let lost = sensor
            .drop_counts()
            .expect("drop map")
            .get(DropReason::RingBufferFull, kind);
        let mut records = Vec::new();
        // Read until the ring stays empty for half a second.
        while let Ok(Ok(())) =
            tokio::time::timeout(Duration::from_millis(500), sensor.read(1024, &mut records)).await
        {
        }
        let records: Vec<RawRecord> = records.into_iter().filter_map(Result::ok).collect();
        let (delivered, others) = count_memfds(&records, &prefix);
        if others > 0 && attempt < 3 {
            continue;
        }
        assert!(lost > 0, "nothing was counted as lost");
        assert!(
            delivered < made,
            "the page cannot have held {delivered} records"
        );
        assert_eq!(
            lost + delivered,
            made,
            "every record is delivered or counted: {delivered} delivered, {lost} lost"
        );
        break;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_and_exit_records_carry_the_child_and_its_exit_code() {
    let mut seen = Seen::load();
    let me = std::process::id();
    let status = Command::new("/bin/sh")
        .args(["-c", "exit 7"])
        .spawn()
        .expect("spawn sh");
    let child = status.id();
    let mut status = status;
    assert_eq!(status.wait().expect("sh ran").code(), Some(7));

    let fork = seen
        .find(|r| matches!(r, RawRecord::Fork(f) if f.child_tgid == child))
        .await
        .expect("fork record for the child");
    assert_eq!(fork.header().tgid, me, "the fork record is the parent's");
    let exit = seen
        .find(|r| matches!(r, RawRecord::Exit(x) if x.header.tgid == child))
        .await
        .expect("exit record for the child");
    let RawRecord::Exit(exit) = exit else {
        unreachable!()
    };
    assert_eq!(exit.exit_code(), Some(7));
    assert_eq!(exit.signal(), None);
    assert_eq!(exit.header.ppid, me);
    assert_eq!(exit.header.comm, "sh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_exits_with_its_signal() {
    let mut seen = Seen::load();
    let mut child = Command::new("/bin/sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let pid = child.id();
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let Some(RawRecord::Exit(exit)) = seen
        .find(|r| matches!(r, RawRecord::Exit(x) if x.header.tgid == pid))
        .await
    else {
        panic!("no exit record for the killed child")
    };
    assert_eq!(exit.signal(), Some(9));
    assert_eq!(exit.exit_code(), None);
    assert!(!exit.core_dumped());
}

/// Listens on `ip`, connects to it and accepts, all in this process, and
/// checks the listen, connect and accept records name both ends.
async fn listen_connect_accept(ip: &str) {
    let mut seen = Seen::load();
    let me = std::process::id();
    let listener = TcpListener::bind(format!("{ip}:0")).expect("bind");
    let server: SocketAddr = listener.local_addr().expect("addr");
    let client = TcpStream::connect(server).expect("connect");
    let client_addr = client.local_addr().expect("client addr");
    let (_conn, peer) = listener.accept().expect("accept");
    assert_eq!(peer, client_addr);

    let listen = seen.tcp(TcpOp::Listen, |t| t.local == server).await;
    assert_eq!(listen.header.tgid, me);
    let connect = seen.tcp(TcpOp::Connect, |t| t.remote == server).await;
    assert_eq!(connect.header.tgid, me, "connect belongs to the caller");
    assert_eq!(connect.local, client_addr);
    assert_eq!(connect.result, 0);
    let accept = seen.tcp(TcpOp::Accept, |t| t.local == server).await;
    assert_eq!(accept.header.tgid, me);
    assert_eq!(accept.remote, client_addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listen_connect_and_accept_on_ipv4() {
    listen_connect_accept("127.0.0.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listen_connect_and_accept_on_ipv6() {
    listen_connect_accept("[::1]").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_reports_econnrefused() {
    let mut seen = Seen::load();
    // A port that was just free: nothing listens on it now.
    let closed = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let err = TcpStream::connect(closed).expect_err("nothing listens");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let connect = seen.tcp(TcpOp::Connect, |t| t.remote == closed).await;
    assert_eq!(connect.result, -ECONNREFUSED);
    assert_eq!(connect.header.tgid, std::process::id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_reports_a_socket_on_stdin_and_the_terminal() {
    use std::os::fd::OwnedFd;
    let mut seen = Seen::load();
    let marker = format!("stdio-marker-{}", std::process::id());
    let (sock, _peer) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    Command::new("/bin/true")
        .arg(&marker)
        .stdin(std::process::Stdio::from(OwnedFd::from(sock)))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("spawn true");
    let x = seen.exec_with(&marker).await.expect("exec record");
    assert!(x.stdin_is_socket, "stdin was a socket");
    assert!(!x.stdout_is_socket, "stdout was /dev/null");
    // The child's terminal is ours: none when this test runs without one.
    let own_tty = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.to_owned();
            after.split_whitespace().nth(4)?.parse::<i64>().ok()
        })
        .expect("tty_nr from /proc/self/stat");
    assert_eq!(x.tty.is_empty(), own_tty == 0, "tty {:?}", x.tty);
}
