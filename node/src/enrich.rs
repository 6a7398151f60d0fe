//! Userspace enrichment of kernel records: the process's and its parent's
//! executables and its ancestry from a bounded process cache (seeded from
//! /proc at start, kept by exec, fork and exit records), the user's name,
//! the cgroup path and container, and a hash of each executed file.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use starling_proto::v1::{event::Body, Container, Event};

/// Most processes remembered; past this, entries of dead processes are swept.
const CAPACITY: usize = 65_536;
/// Ancestors listed in an exec event, nearest first.
const ANCESTRY_DEPTH: usize = 8;
/// Most cgroups and executables remembered.
const SIDE_CACHE_CAPACITY: usize = 16_384;
/// How often /etc/passwd is checked for changes, at most.
const PASSWD_RECHECK: Duration = Duration::from_secs(10);

/// What the cache knows about a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ProcessInfo {
    exe: String,
    comm: String,
    ppid: u32,
}

fn read_exe(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Reads /proc/<pid>: exe, comm and ppid. None when the process is gone.
fn read_proc(pid: u32) -> Option<ProcessInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let ppid = stat
        .get(close + 2..)?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let exe = read_exe(pid).unwrap_or_default();
    Some(ProcessInfo { exe, comm, ppid })
}

/// tgid -> what is known about the process, and the side caches.
#[derive(Debug)]
pub struct ProcessCache {
    procs: HashMap<u32, ProcessInfo>,
    users: UserNames,
    cgroups: CgroupResolver,
    hashes: ExeHashes,
}

impl Default for ProcessCache {
    fn default() -> Self {
        Self {
            procs: HashMap::new(),
            users: UserNames::default(),
            cgroups: CgroupResolver::new(),
            hashes: ExeHashes::new(64 << 20),
        }
    }
}

impl ProcessCache {
    /// Seeds the cache from the processes running now. Executables larger
    /// than `hash_max_bytes` are not hashed.
    pub fn seeded_from_proc(hash_max_bytes: u64) -> Self {
        let mut cache = Self {
            hashes: ExeHashes::new(hash_max_bytes),
            ..Self::default()
        };
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                    if let Some(info) = read_proc(pid) {
                        cache.procs.insert(pid, info);
                    }
                }
            }
        }
        cache
    }

    /// Number of processes known.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// True when no process is known.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    fn info(&mut self, pid: u32) -> Option<ProcessInfo> {
        if let Some(i) = self.procs.get(&pid) {
            return Some(i.clone());
        }
        let info = read_proc(pid)?;
        self.insert(pid, info.clone());
        Some(info)
    }

    fn lookup(&mut self, pid: u32) -> String {
        self.info(pid).map(|i| i.exe).unwrap_or_default()
    }

    fn insert(&mut self, pid: u32, info: ProcessInfo) {
        if self.procs.len() >= CAPACITY {
            self.procs
                .retain(|pid, _| Path::new(&format!("/proc/{pid}")).exists());
            if self.procs.len() >= CAPACITY {
                self.procs.clear();
            }
        }
        self.procs.insert(pid, info);
    }

    /// "pid:comm:exe" of the ancestors of a process whose parent is
    /// `ppid`, nearest first, up to init or what the cache knows.
    fn ancestry(&mut self, ppid: u32) -> Vec<String> {
        let mut out = Vec::new();
        let mut pid = ppid;
        while pid != 0 && out.len() < ANCESTRY_DEPTH {
            let Some(info) = self.info(pid) else { break };
            out.push(format!("{pid}:{}:{}", info.comm, info.exe));
            if pid == info.ppid {
                break;
            }
            pid = info.ppid;
        }
        out
    }

    /// Remembers the path of a cgroup the kernel reported created.
    pub fn learn_cgroup(&mut self, record: starling_bpf::CgroupRecord) {
        if let Some(path) = record.path {
            self.cgroups.learn(record.id, path);
        }
    }

    /// Fills the header's exe, user, cgroup path and container; for execs,
    /// the parent's exe, the ancestry and the exe hash; and keeps the
    /// cache right for execs, forks and exits.
    pub fn enrich(&mut self, event: &mut Event) {
        let Some(h) = event.header.as_mut() else {
            return;
        };
        h.user = self.users.name(h.uid);
        let (path, container) = self.cgroups.resolve(h.cgroup_id);
        h.cgroup_path = path;
        h.container = container;
        if let Some(Body::ProcessExec(x)) = event.body.as_mut() {
            // The parent's image is what it was before this exec (the
            // parent may be the same tgid only for a thread that exec'd,
            // which replaces the whole group).
            x.parent_exe = self.lookup(h.ppid);
            x.ancestry = self.ancestry(h.ppid);
            // An absolute filename is the image; only a relative one needs
            // the kernel's view (one readlink, not on every exec).
            let exe = if x.filename.starts_with('/') {
                x.filename.clone()
            } else {
                read_exe(h.pid).unwrap_or_else(|| x.filename.clone())
            };
            x.exe_sha256 = self.hashes.sha256(h.pid, &exe);
            self.insert(
                h.pid,
                ProcessInfo {
                    exe: exe.clone(),
                    comm: h.comm.clone(),
                    ppid: h.ppid,
                },
            );
            h.exe = exe;
        } else if h.exe.is_empty() && h.pid != 0 {
            h.exe = self.lookup(h.pid);
        }
        match event.body.as_ref() {
            // A forked child runs its parent's image until it execs.
            Some(Body::ProcessFork(f)) => {
                let info = ProcessInfo {
                    exe: h.exe.clone(),
                    comm: h.comm.clone(),
                    ppid: h.pid,
                };
                self.insert(f.child_pid, info);
            }
            // The pid may be reused; the next process under it is new.
            Some(Body::ProcessExit(_)) => {
                self.procs.remove(&h.pid);
            }
            _ => {}
        }
    }
}

/// uid -> user name from /etc/passwd, re-read when the file changes.
#[derive(Debug, Default)]
struct UserNames {
    names: HashMap<u32, String>,
    mtime: Option<std::time::SystemTime>,
    checked: Option<Instant>,
}

impl UserNames {
    fn name(&mut self, uid: u32) -> String {
        let due = self.checked.is_none_or(|t| t.elapsed() >= PASSWD_RECHECK);
        if due {
            self.checked = Some(Instant::now());
            let mtime = std::fs::metadata("/etc/passwd")
                .and_then(|m| m.modified())
                .ok();
            if mtime != self.mtime {
                self.mtime = mtime;
                self.names =
                    parse_passwd(&std::fs::read_to_string("/etc/passwd").unwrap_or_default());
            }
        }
        self.names.get(&uid).cloned().unwrap_or_default()
    }
}

fn parse_passwd(text: &str) -> HashMap<u32, String> {
    let mut names = HashMap::new();
    for line in text.lines() {
        let mut f = line.split(':');
        let (Some(name), Some(_), Some(uid)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if let Ok(uid) = uid.parse() {
            names.entry(uid).or_insert_with(|| name.to_owned());
        }
    }
    names
}

/// cgroup id -> (path, container), from the cgroup2 hierarchy and, for
/// Kubernetes, the kubelet's /var/log/containers names.
#[derive(Debug)]
struct CgroupResolver {
    mount: Option<PathBuf>,
    known: HashMap<u64, (String, Option<Container>)>,
}

/// The container a cgroup path belongs to, with its Kubernetes names when
/// the kubelet's log links give them.
fn container_of(path: &str) -> Option<Container> {
    starling_bpf::cgroup::container_of(path).map(|c| {
        let mut out = Container {
            id: c.id,
            runtime: c.runtime.to_owned(),
            pod_uid: c.pod_uid.unwrap_or_default(),
            ..Default::default()
        };
        if let Some((pod, ns, name)) = kubelet_names(Path::new(KUBELET_CONTAINER_LOGS), &out.id) {
            out.pod_name = pod;
            out.pod_namespace = ns;
            out.container_name = name;
        }
        out
    })
}

/// Where the kubelet links container logs, named
/// `<pod>_<namespace>_<container>-<container id>.log`.
const KUBELET_CONTAINER_LOGS: &str = "/var/log/containers";

impl CgroupResolver {
    fn new() -> Self {
        Self {
            mount: starling_bpf::cgroup::cgroup2_mount().ok(),
            known: HashMap::new(),
        }
    }

    fn resolve(&mut self, id: u64) -> (String, Option<Container>) {
        if id == 0 {
            return (String::new(), None);
        }
        if let Some(v) = self.known.get(&id) {
            return v.clone();
        }
        let Some(mount) = &self.mount else {
            return (String::new(), None);
        };
        // A cgroup already gone stays unknown; ids are not reused, so the
        // miss is remembered like a hit (no second walk of the hierarchy).
        let Some(path) = starling_bpf::cgroup::path_of(mount, id) else {
            self.remember(id, (String::new(), None));
            return (String::new(), None);
        };
        let container = container_of(&path);
        self.remember(id, (path.clone(), container.clone()));
        (path, container)
    }

    /// A cgroup the kernel reported created: remembered while it exists,
    /// so a process that ran in it is named even after it is gone.
    fn learn(&mut self, id: u64, path: String) {
        let container = container_of(&path);
        self.remember(id, (path, container));
    }

    fn remember(&mut self, id: u64, v: (String, Option<Container>)) {
        if self.known.len() >= SIDE_CACHE_CAPACITY {
            self.known.clear();
        }
        self.known.insert(id, v);
    }
}

/// (pod, namespace, container) of a container id from the kubelet's log
/// link names, when the host runs Kubernetes.
fn kubelet_names(dir: &Path, container_id: &str) -> Option<(String, String, String)> {
    let suffix = format!("-{container_id}.log");
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        let stem = name.strip_suffix(&suffix)?;
        let mut parts = stem.splitn(3, '_');
        let (pod, ns, container) = (parts.next()?, parts.next()?, parts.next()?);
        Some((pod.to_owned(), ns.to_owned(), container.to_owned()))
    })
}

/// SHA-256 of executables, cached by (device, inode, mtime, size), so an
/// exec storm of one binary hashes it once.
#[derive(Debug)]
struct ExeHashes {
    max_bytes: u64,
    known: HashMap<(u64, u64, i64, u64), String>,
}

impl ExeHashes {
    fn new(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            known: HashMap::new(),
        }
    }

    /// The hash of the image process `pid` runs (read through
    /// /proc/<pid>/exe, so a replaced or deleted path still gives the
    /// running file), falling back to `path`. Empty when unreadable or too
    /// large.
    fn sha256(&mut self, pid: u32, path: &str) -> String {
        let proc_exe = format!("/proc/{pid}/exe");
        // A stat decides: a known file is not opened again.
        let (source, m) = match std::fs::metadata(&proc_exe) {
            Ok(m) => (proc_exe.as_str(), m),
            Err(_) => match std::fs::metadata(path) {
                Ok(m) => (path, m),
                Err(_) => return String::new(),
            },
        };
        if m.len() > self.max_bytes {
            return String::new();
        }
        let key = (m.dev(), m.ino(), m.mtime(), m.len());
        if let Some(h) = self.known.get(&key) {
            return h.clone();
        }
        let Ok(mut file) = std::fs::File::open(source) else {
            return String::new();
        };
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => ctx.update(&buf[..n]),
                Err(_) => return String::new(),
            }
        }
        let hex: String = ctx
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if self.known.len() >= SIDE_CACHE_CAPACITY {
            self.known.clear();
        }
        self.known.insert(key, hex.clone());
        hex
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_proto::v1::{EventHeader, ProcessExec, ProcessExit, ProcessFork};

    #[test]
    fn exec_records_the_new_image_and_finds_the_parent_and_ancestry() {
        let me = std::process::id();
        let mut cache = ProcessCache::seeded_from_proc(64 << 20);
        assert!(!cache.is_empty());
        let mut e = Event {
            header: Some(EventHeader {
                pid: 9_999_991,
                ppid: me,
                comm: "env".into(),
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
        assert!(
            x.ancestry[0].starts_with(&format!("{me}:")),
            "{:?}",
            x.ancestry
        );
        assert!(x.ancestry.len() >= 2, "the test runner has a parent too");
        // The pid does not exist: the hash is of the file named.
        let expected = {
            let bytes = std::fs::read("/usr/bin/env").unwrap();
            let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
            d.as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        assert_eq!(x.exe_sha256, expected);
        let h = e.header.as_ref().unwrap();
        assert_eq!(h.exe, "/usr/bin/env");
        assert_eq!(h.user, "root");
        assert_eq!(cache.lookup(9_999_991), "/usr/bin/env");
    }

    #[test]
    fn a_fork_inherits_the_parent_image_and_an_exit_forgets_the_pid() {
        let mut cache = ProcessCache::default();
        let sshd = ProcessInfo {
            exe: "/usr/sbin/sshd".into(),
            comm: "sshd".into(),
            ppid: 1,
        };
        cache.insert(500, sshd);
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
        assert_eq!(cache.procs[&501].ppid, 500);
        let mut exit = event(501, Body::ProcessExit(ProcessExit::default()));
        cache.enrich(&mut exit);
        assert_eq!(exit.header.as_ref().unwrap().exe, "/usr/sbin/sshd");
        assert!(
            !cache.procs.contains_key(&501),
            "the exited pid is forgotten"
        );
    }

    #[test]
    fn passwd_lines_give_names_and_bad_lines_are_skipped() {
        let names = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\nbroken\nann:x:1000:1000::/home/ann:/bin/sh\n",
        );
        assert_eq!(names[&0], "root");
        assert_eq!(names[&1000], "ann");
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn kubelet_log_links_name_the_pod_namespace_and_container() {
        let dir = tempfile::tempdir().unwrap();
        let id = "a".repeat(64);
        std::fs::write(
            dir.path().join(format!("web-7d9f_shop_nginx-{id}.log")),
            b"",
        )
        .unwrap();
        std::fs::write(dir.path().join("other_ns_c-0000.log"), b"").unwrap();
        assert_eq!(
            kubelet_names(dir.path(), &id),
            Some(("web-7d9f".into(), "shop".into(), "nginx".into()))
        );
        assert_eq!(kubelet_names(dir.path(), &"b".repeat(64)), None);
    }

    #[test]
    fn a_host_process_has_a_cgroup_path_and_no_container() {
        let mut r = CgroupResolver::new();
        let Some(mount) = r.mount.clone() else {
            panic!("no cgroup2 hierarchy on this host")
        };
        let id = std::fs::metadata(&mount).unwrap().ino();
        assert_eq!(r.resolve(id), ("/".to_owned(), None));
        assert_eq!(r.resolve(0), (String::new(), None));
    }
}
