//! Userspace enrichment of kernel records: executable paths of the process
//! and its parent from a bounded process cache, seeded from /proc at start
//! and updated by every exec the sensor sees.

use std::collections::HashMap;
use std::path::Path;

use starling_proto::v1::{event::Body, Event};

/// Most processes remembered; past this, entries of dead processes are swept.
const CAPACITY: usize = 65_536;

/// tgid -> executable path.
#[derive(Debug, Default)]
pub struct ProcessCache {
    exe: HashMap<u32, String>,
}

fn read_exe(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

impl ProcessCache {
    /// Seeds the cache from the processes running now.
    pub fn seeded_from_proc() -> Self {
        let mut cache = Self::default();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                    if let Some(exe) = read_exe(pid) {
                        cache.exe.insert(pid, exe);
                    }
                }
            }
        }
        cache
    }

    /// Number of processes known.
    pub fn len(&self) -> usize {
        self.exe.len()
    }

    /// True when no process is known.
    pub fn is_empty(&self) -> bool {
        self.exe.is_empty()
    }

    fn lookup(&mut self, pid: u32) -> String {
        if let Some(e) = self.exe.get(&pid) {
            return e.clone();
        }
        let exe = read_exe(pid).unwrap_or_default();
        if !exe.is_empty() {
            self.insert(pid, exe.clone());
        }
        exe
    }

    fn insert(&mut self, pid: u32, exe: String) {
        if self.exe.len() >= CAPACITY {
            self.exe
                .retain(|pid, _| Path::new(&format!("/proc/{pid}")).exists());
            if self.exe.len() >= CAPACITY {
                self.exe.clear();
            }
        }
        self.exe.insert(pid, exe);
    }

    /// Fills `exe` and, for execs, `parent_exe`, and remembers the new image.
    pub fn enrich(&mut self, event: &mut Event) {
        let Some(h) = event.header.as_mut() else {
            return;
        };
        if let Some(Body::ProcessExec(x)) = event.body.as_mut() {
            // The parent's image is what it was before this exec (the
            // parent may be the same tgid only for a thread that exec'd,
            // which replaces the whole group).
            x.parent_exe = self.lookup(h.ppid);
            let exe = if x.filename.starts_with('/') {
                x.filename.clone()
            } else {
                read_exe(h.pid).unwrap_or_else(|| x.filename.clone())
            };
            self.insert(h.pid, exe.clone());
            h.exe = exe;
        } else if h.exe.is_empty() && h.pid != 0 {
            h.exe = self.lookup(h.pid);
        }
        match event.body.as_ref() {
            // A forked child runs its parent's image until it execs.
            Some(Body::ProcessFork(f)) => self.insert(f.child_pid, h.exe.clone()),
            // The pid may be reused; the next process under it is new.
            Some(Body::ProcessExit(_)) => {
                self.exe.remove(&h.pid);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_proto::v1::{EventHeader, ProcessExec, ProcessExit, ProcessFork};

    #[test]
    fn exec_records_the_new_image_and_finds_the_parent() {
        let me = std::process::id();
        let mut cache = ProcessCache::seeded_from_proc();
        assert!(!cache.is_empty());
        let mut e = Event {
            header: Some(EventHeader {
                pid: 9_999_991,
                ppid: me,
                ..Default::default()
            }),
            body: Some(Body::ProcessExec(ProcessExec {
                filename: "/usr/bin/env".into(),
                ..Default::default()
            })),
        };
        cache.enrich(&mut e);
        let Some(Body::ProcessExec(x)) = &e.body else {
            unreachable!()
        };
        let own_exe = std::env::current_exe().unwrap();
        assert_eq!(x.parent_exe, own_exe.to_string_lossy());
        assert_eq!(e.header.as_ref().unwrap().exe, "/usr/bin/env");
        assert_eq!(cache.lookup(9_999_991), "/usr/bin/env");
    }

    #[test]
    fn a_fork_inherits_the_parent_image_and_an_exit_forgets_the_pid() {
        let mut cache = ProcessCache::default();
        cache.insert(500, "/usr/sbin/sshd".into());
        let event = |pid: u32, body: Body| Event {
            header: Some(EventHeader {
                pid,
                ..Default::default()
            }),
            body: Some(body),
        };
        let mut fork = event(500, Body::ProcessFork(ProcessFork { child_pid: 501 }));
        cache.enrich(&mut fork);
        assert_eq!(fork.header.as_ref().unwrap().exe, "/usr/sbin/sshd");
        let mut exit = event(501, Body::ProcessExit(ProcessExit::default()));
        cache.enrich(&mut exit);
        assert_eq!(exit.header.as_ref().unwrap().exe, "/usr/sbin/sshd");
        assert!(!cache.exe.contains_key(&501), "the exited pid is forgotten");
    }
}
