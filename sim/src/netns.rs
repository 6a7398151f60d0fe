//! Two Linux network namespaces joined by a veth pair, for real network
//! faults between real mesh members in one test process: cut the link and
//! the two sides are partitioned at the IP layer (packets towards the far
//! side vanish or fail to send), restore it and they can talk again.
//!
//! A socket stays in the namespace it was created in, so a member whose
//! sockets are made inside a namespace ([`NamespacePair::run_in`]) keeps
//! all its traffic there while its tasks run on the test's runtime.
//! Needs root (CAP_SYS_ADMIN) and iproute2's `ip`.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;

use anyhow::{bail, Context};

/// One side of a [`NamespacePair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// Two namespaces, `A` at 10.77.0.1 and `B` at 10.77.0.2 on a /24 veth
/// link. Both are deleted on drop (which also deletes the link). The link
/// is made inside the new namespaces, so its names and addresses cannot
/// clash with the host's or another pair's.
pub struct NamespacePair {
    names: [String; 2],
}

/// The link's end in each namespace.
const LINKS: [&str; 2] = ["stl-a", "stl-b"];

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl NamespacePair {
    /// Creates the namespaces and the link, up. Namespace names carry the
    /// process id and `tag`, so concurrent tests do not collide.
    pub fn create(tag: &str) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let pair = Self {
            names: [format!("stl-{tag}-{pid}-a"), format!("stl-{tag}-{pid}-b")],
        };
        for name in &pair.names {
            ip(&["netns", "add", name])?;
        }
        let [a, b] = &pair.names;
        let [la, lb] = LINKS;
        ip(&[
            "link", "add", la, "netns", a, "type", "veth", "peer", "name", lb, "netns", b,
        ])?;
        for side in [Side::A, Side::B] {
            let (ns, link) = (&pair.names[Self::index(side)], LINKS[Self::index(side)]);
            let addr = format!("{}/24", Self::addr(side));
            ip(&["-n", ns, "addr", "add", &addr, "dev", link])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", link, "up"])?;
        }
        Ok(pair)
    }

    /// The address of a side on the link.
    pub fn addr(side: Side) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, if side == Side::A { 1 } else { 2 })
    }

    fn index(side: Side) -> usize {
        match side {
            Side::A => 0,
            Side::B => 1,
        }
    }

    /// Partitions the sides: B's end of the link goes down, so A's packets
    /// to B vanish and B's sends to A fail. Traffic within a side goes on.
    pub fn cut(&self) -> anyhow::Result<()> {
        ip(&["-n", &self.names[1], "link", "set", LINKS[1], "down"])
    }

    /// Restores the link.
    pub fn restore(&self) -> anyhow::Result<()> {
        ip(&["-n", &self.names[1], "link", "set", LINKS[1], "up"])
    }

    /// Runs `f` on a thread that has entered the side's namespace: the
    /// sockets `f` creates belong to it for good. The thread ends with
    /// `f`; the caller's threads stay where they were.
    pub fn run_in<T: Send>(&self, side: Side, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let path = format!("/var/run/netns/{}", self.names[Self::index(side)]);
        let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns with a namespace fd we own; it changes
                    // only this thread's network namespace.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        bail!("setns {path}: {}", std::io::Error::last_os_error());
                    }
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("thread in {path} panicked"))?
        })
    }
}

impl Drop for NamespacePair {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = ip(&["netns", "delete", name]);
        }
    }
}
