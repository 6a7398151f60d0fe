//! A real Kafka-protocol broker for tests: tansu with in-memory storage,
//! or SQLite storage on disk for tests that kill and restart it, installed
//! by scripts/setup (`cargo install tansu`).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::{free_port, wait_for};

/// A running broker, killed when dropped.
pub struct Broker {
    child: Child,
    port: u16,
    bin: PathBuf,
    storage: String,
    dir: tempfile::TempDir,
    /// Where the running process's part of tansu.log begins (the log is
    /// appended to across restarts).
    log_start: usize,
}

fn tansu_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("STARLING_TANSU") {
        return Ok(p.into());
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("tansu")).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/tansu"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .context("tansu (the test Kafka broker) is not installed: run scripts/setup")
}

impl Broker {
    /// Starts a broker on a free loopback port and waits until it listens.
    /// What it stores is in memory: gone when it stops.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with("memory://tansu/")
    }

    /// Starts a broker that keeps its records in a SQLite file, meant to
    /// survive [`Broker::kill9`] and [`Broker::restart`] as a real Kafka
    /// broker's log does.
    ///
    /// tansu 0.6's schema has no index on its `header` table, and it looks
    /// up each fetched record's headers: every record a consumer fetches
    /// scans every header of the topic. Starling's sink writes five headers
    /// per event: with 36,649 events in the topic, a consumer reading from
    /// the start got nothing back in 120 s, and since tansu serves its
    /// storage from one task, produce and metadata requests timed out
    /// behind the fetch. The index is added once tansu has created its
    /// tables. (A copy taken by [`Broker::keep_storage`] while the broker
    /// runs may miss its last writes.)
    pub fn start_durable() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        // tansu reads the URL's path as relative: it runs in `dir`.
        let broker = Self::start_in(dir, "sqlite://tansu.db".into())?;
        broker.index_headers()?;
        Ok(broker)
    }

    /// Adds the index tansu's SQLite schema lacks (see
    /// [`Broker::start_durable`]) with the sqlite3 shell.
    fn index_headers(&self) -> anyhow::Result<()> {
        const INDEX: &str = "create index if not exists starling_header_record \
                             on header (topition, offset_id);";
        let db = self.dir.path().join("tansu.db");
        let mut last = String::new();
        let made = wait_for(Duration::from_secs(20), || {
            let out = Command::new("sqlite3")
                .args(["-cmd", ".timeout 5000"])
                .arg(&db)
                .arg(INDEX)
                .output();
            match out {
                Ok(o) if o.status.success() => Some(()),
                // "no such table" until tansu has run its schema.
                Ok(o) => {
                    last = String::from_utf8_lossy(&o.stderr).into_owned();
                    None
                }
                Err(e) => {
                    last = format!("running sqlite3 (scripts/setup installs it): {e}");
                    None
                }
            }
        });
        made.with_context(|| format!("indexing tansu's header table in {}: {last}", db.display()))
    }

    fn start_with(storage: &str) -> anyhow::Result<Self> {
        Self::start_in(tempfile::tempdir()?, storage.to_owned())
    }

    fn start_in(dir: tempfile::TempDir, storage: String) -> anyhow::Result<Self> {
        let bin = tansu_binary()?;
        let port = free_port();
        let log_start = log_len(dir.path());
        let child = spawn(&bin, port, &storage, dir.path())?;
        let mut broker = Self {
            child,
            port,
            bin,
            storage,
            dir,
            log_start,
        };
        broker.wait_listening()?;
        Ok(broker)
    }

    fn wait_listening(&mut self) -> anyhow::Result<()> {
        let port = self.port;
        let up = wait_for(Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        if up.is_none() {
            let _ = self.child.kill();
            bail!(
                "tansu did not start listening on port {port}:\n{}",
                self.log()
            );
        }
        Ok(())
    }

    /// Kills the broker with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        self.thaw();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the broker again on the same port and storage after
    /// [`Broker::kill9`], and waits until it listens.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.log_start = log_len(self.dir.path());
        self.child = spawn(&self.bin, self.port, &self.storage, self.dir.path())?;
        self.wait_listening()
    }

    /// Whether the running broker's storage task panicked: tansu then keeps
    /// listening but answers every produce with UNKNOWN_SERVER_ERROR until
    /// it is restarted.
    ///
    /// tansu 0.6 does this after a crash of its own: a librdkafka idempotent
    /// producer whose messages timed out while the broker was down bumps
    /// its epoch by itself (legal since KIP-360, and what librdkafka does
    /// for a non-transactional producer), and tansu's SQLite engine panics
    /// on a produce with an epoch it never issued ("more or less than one
    /// row", tansu-storage lite.rs). A real Kafka broker accepts the bump.
    /// Tests that crash the broker restart it when this happens, as an
    /// operator would restart a wedged broker, and say so.
    pub fn storage_panicked(&self) -> bool {
        self.log()
            .get(self.log_start..)
            .is_some_and(|since_start| since_start.contains("panicked at"))
    }

    /// Copies the broker's storage directory (its SQLite file, its log) to
    /// `to`, so that a failed test leaves the records for a person to
    /// inspect (`sqlite3 to/tansu.db`) after the broker's own directory is
    /// removed.
    pub fn keep_storage(&self, to: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
        for entry in std::fs::read_dir(self.dir.path())? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                let dest = to.join(entry.file_name());
                std::fs::copy(entry.path(), &dest)
                    .with_context(|| format!("copying to {}", dest.display()))?;
            }
        }
        Ok(())
    }

    /// What the broker logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }

    /// bootstrap.servers for clients.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Freezes the broker (SIGSTOP): connections stay open but nothing is
    /// answered, like a hung or partitioned broker.
    pub fn freeze(&self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGSTOP) };
    }

    /// Resumes a frozen broker (SIGCONT).
    pub fn thaw(&self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
    }
}

fn log_len(dir: &Path) -> usize {
    std::fs::metadata(dir.join("tansu.log")).map_or(0, |m| m.len() as usize)
}

fn spawn(bin: &Path, port: u16, storage: &str, dir: &Path) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("tansu.log"))?;
    let url = format!("tcp://127.0.0.1:{port}");
    Command::new(bin)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            storage,
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.thaw();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
