//! A real Kafka-protocol broker for tests: tansu with in-memory storage,
//! installed by scripts/setup (`cargo install tansu`).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::{free_port, wait_for};

/// A running broker, killed when dropped.
pub struct Broker {
    child: Child,
    port: u16,
    _log_dir: tempfile::TempDir,
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
    pub fn start() -> anyhow::Result<Self> {
        let bin = tansu_binary()?;
        let port = free_port();
        let log_dir = tempfile::tempdir()?;
        let log = std::fs::File::create(log_dir.path().join("tansu.log"))?;
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut broker = Self {
            child,
            port,
            _log_dir: log_dir,
        };
        let up = wait_for(Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        if up.is_none() {
            let _ = broker.child.kill();
            bail!("tansu did not start listening on port {port}");
        }
        Ok(broker)
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

impl Drop for Broker {
    fn drop(&mut self) {
        self.thaw();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
