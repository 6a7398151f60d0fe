//! The exec probe against real processes (needs root to load BPF).

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use starling_bpf::{ExecRecord, RawRecord, Sensor, SensorConfig};

async fn find_exec(sensor: &mut Sensor, marker: &str) -> Option<ExecRecord> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut records = Vec::new();
    while tokio::time::Instant::now() < deadline {
        records.clear();
        let read =
            tokio::time::timeout(Duration::from_millis(500), sensor.read(1024, &mut records)).await;
        if read.is_err() {
            continue;
        }
        for r in records.drain(..) {
            let RawRecord::Exec(x) = r.expect("kernel records decode");
            if x.argv.iter().any(|a| a == marker) {
                return Some(x);
            }
        }
    }
    None
}

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
    assert!(
        is_root(),
        "this test loads BPF programs and must run as root"
    );
    let mut sensor = Sensor::load(&SensorConfig::default()).expect("sensor loads");
    let marker = format!("probe-marker-{}", std::process::id());
    let mut child = Command::new("/bin/echo")
        .args([marker.as_str(), "", "second arg"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn echo");
    let pid = child.id();
    child.wait().expect("echo ran");

    let x = find_exec(&mut sensor, &marker)
        .await
        .expect("exec record for the marker");
    assert_eq!(x.tgid, pid);
    assert_eq!(x.tid, pid, "single-threaded exec: tid == tgid");
    assert_eq!(x.ppid, std::process::id());
    assert_eq!(x.filename, "/bin/echo");
    assert_eq!(x.argv, ["/bin/echo", marker.as_str(), "", "second arg"]);
    assert!(!x.argv_truncated);
    assert_eq!(x.comm, "echo");
    assert_eq!(x.uid, 0);
    let id = own_cgroup_id().expect("this host has a cgroup2 hierarchy");
    assert_eq!(x.cgroup_id, id, "cgroup id is the cgroup2 directory inode");
    assert_eq!(sensor.ring_buffer_losses().expect("loss map"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_argv_is_cut_at_the_limit_and_flagged() {
    assert!(
        is_root(),
        "this test loads BPF programs and must run as root"
    );
    let mut sensor = Sensor::load(&SensorConfig::default()).expect("sensor loads");
    let marker = format!("long-argv-{}", std::process::id());
    let long = "x".repeat(10_000);
    Command::new("/bin/true")
        .args([marker.as_str(), long.as_str()])
        .status()
        .expect("spawn true");
    let x = find_exec(&mut sensor, &marker).await.expect("exec record");
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
    })
    .err()
    .expect("refused");
    assert!(err.to_string().contains("power of two"), "{err}");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ring_buffer_drops_in_the_kernel_and_counts_every_loss() {
    assert!(
        is_root(),
        "this test loads BPF programs and must run as root"
    );
    // One page holds only a handful of exec records; nothing reads it.
    let mut sensor = Sensor::load(&SensorConfig {
        ring_buffer_bytes: 4096,
    })
    .expect("sensor loads");
    let execs = 50;
    for i in 0..execs {
        Command::new("/bin/true")
            .arg(format!("fill-{i}"))
            .status()
            .expect("spawn true");
    }
    let lost = sensor.ring_buffer_losses().expect("loss map");
    // One read drains what the page holds (other tests' execs may add a
    // few, which only makes both sides larger).
    let mut records = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), sensor.read(1024, &mut records)).await;
    let delivered = records.len() as u64;
    assert!(lost > 0, "nothing was counted as lost");
    assert!(
        delivered < execs,
        "the page cannot have held {delivered} records"
    );
    assert!(
        lost + delivered >= execs,
        "every exec is either delivered or counted: {delivered} delivered + {lost} lost < {execs}"
    );
}
