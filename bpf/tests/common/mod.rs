//! What every sensor integration test needs: a loaded sensor that keeps
//! what it has read, so a test can wait for several records in any order.
#![allow(dead_code)] // each test binary uses its own part

use std::time::Duration;

use starling_bpf::{ExecRecord, RawRecord, Sensor, SensorConfig, TcpOp, TcpRecord};

/// Everything the sensor delivered so far, so that one test can wait for
/// several records in any order without dropping the ones it has not
/// asked for yet.
pub struct Seen {
    pub sensor: Sensor,
    pub records: Vec<RawRecord>,
}

impl Seen {
    pub fn load() -> Self {
        Self::load_with(&SensorConfig::default())
    }

    pub fn load_with(config: &SensorConfig) -> Self {
        assert!(
            is_root(),
            "this test loads BPF programs and must run as root"
        );
        Self {
            sensor: Sensor::load(config).expect("sensor loads"),
            records: Vec::new(),
        }
    }

    /// The first record `want` accepts, reading for up to 10 s.
    pub async fn find(&mut self, mut want: impl FnMut(&RawRecord) -> bool) -> Option<RawRecord> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut checked = 0;
        loop {
            if let Some(r) = self.records[checked..].iter().find(|r| want(r)) {
                return Some(r.clone());
            }
            checked = self.records.len();
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            let mut batch = Vec::new();
            let _ = tokio::time::timeout(
                Duration::from_millis(500),
                self.sensor.read(1024, &mut batch),
            )
            .await;
            for r in batch {
                self.records.push(r.expect("kernel records decode"));
            }
        }
    }

    pub async fn exec_with(&mut self, marker: &str) -> Option<ExecRecord> {
        match self
            .find(|r| matches!(r, RawRecord::Exec(x) if x.argv.iter().any(|a| a == marker)))
            .await
        {
            Some(RawRecord::Exec(x)) => Some(x),
            _ => None,
        }
    }

    pub async fn tcp(&mut self, op: TcpOp, mut want: impl FnMut(&TcpRecord) -> bool) -> TcpRecord {
        match self
            .find(|r| matches!(r, RawRecord::Tcp(t) if t.op == op && want(t)))
            .await
        {
            Some(RawRecord::Tcp(t)) => t,
            _ => panic!("no {op:?} record"),
        }
    }
}

/// Runs `/bin/true marker` to its end: an exec a test can find by its argv.
pub fn run_true(marker: &str) {
    let status = std::process::Command::new("/bin/true")
        .arg(marker)
        .status()
        .expect("spawn /bin/true");
    assert!(status.success(), "/bin/true {marker} failed");
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

impl Seen {
    /// Runs a process and waits for its exit record. The ring buffer is
    /// ordered, so every record made before that exit has then been read:
    /// a test can assert that something did not come.
    pub async fn barrier(&mut self) {
        let mut child = std::process::Command::new("/bin/true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        child.wait().expect("true ran");
        self.find(|r| matches!(r, RawRecord::Exit(x) if x.header.tgid == pid))
            .await
            .expect("the barrier's exit record");
    }

    /// Whether any record read so far matches.
    pub fn any(&self, want: impl FnMut(&RawRecord) -> bool) -> bool {
        self.records.iter().any(want)
    }
}

/// A directory for one test, removed at the end.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("starling-probe-")
        .tempdir()
        .expect("a temporary directory")
}

/// A cgroup made under the cgroup2 hierarchy for one test, removed on drop
/// (once the processes put in it are gone).
pub struct TestCgroup {
    pub dir: std::path::PathBuf,
}

impl TestCgroup {
    /// Creates `name` at the top of the cgroup2 hierarchy.
    pub fn create(name: &str) -> Self {
        let mount = starling_bpf::cgroup::cgroup2_mount().expect("a cgroup2 hierarchy");
        let dir = mount.join(name);
        std::fs::create_dir(&dir).expect("create the cgroup");
        Self { dir }
    }

    /// Makes `cmd`'s process join this cgroup before it execs.
    pub fn run_in(&self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let procs =
            std::ffi::CString::new(self.dir.join("cgroup.procs").to_string_lossy().into_owned())
                .expect("path");
        // SAFETY: open/write/close only, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Creates (and closes) `n` memfds named `prefix0`, `prefix1`, ...:
/// records of a kind no other process on these hosts makes, so a test can
/// count exactly what became of its own.
pub fn make_memfds(prefix: &str, n: u64) {
    for i in 0..n {
        let name = std::ffi::CString::new(format!("{prefix}{i}")).expect("name");
        // SAFETY: a valid NUL-terminated name; the fd is closed at once.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: fd was just returned to us.
        unsafe { libc::close(fd) };
    }
}

/// Of the memfd records in `records`: how many are this process's with a
/// name starting with `prefix`, and how many are anyone else's.
pub fn count_memfds<'a>(
    records: impl IntoIterator<Item = &'a RawRecord>,
    prefix: &str,
) -> (u64, u64) {
    let me = std::process::id();
    let (mut ours, mut others) = (0, 0);
    for r in records {
        if let RawRecord::Memfd(m) = r {
            if m.header.tgid == me && m.name.starts_with(prefix) {
                ours += 1;
            } else {
                others += 1;
            }
        }
    }
    (ours, others)
}
