//! cgroup v2 ids and paths, and the container a cgroup path belongs to.
//!
//! `bpf_get_current_cgroup_id()` is the inode number of the task's
//! directory in the cgroup2 hierarchy. That hierarchy is mounted at
//! /sys/fs/cgroup on pure cgroup2 hosts and at /sys/fs/cgroup/unified on
//! hybrid ones (cgroup v1 controllers beside it); the mount table says
//! which.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Directories searched at most when looking up an id (a host with more
/// cgroups than this has its deepest ones reported without a path).
const SEARCH_LIMIT: usize = 100_000;

/// Where the cgroup2 hierarchy is mounted, from /proc/self/mounts.
pub fn cgroup2_mount() -> io::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let target = f.nth(1)?;
            (f.next()? == "cgroup2").then(|| PathBuf::from(unescape_mount_path(target)))
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup2 mount"))
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup id of a path in the cgroup2 hierarchy ("/system.slice/x").
pub fn id_of(path: &str) -> io::Result<u64> {
    let dir = cgroup2_mount()?.join(path.trim_start_matches('/'));
    Ok(std::fs::metadata(dir)?.ino())
}

/// The path (from the hierarchy's root, "/" for the root) of cgroup `id`,
/// found by walking the hierarchy under `mount`.
pub fn path_of(mount: &Path, id: u64) -> Option<String> {
    if std::fs::metadata(mount).ok()?.ino() == id {
        return Some("/".into());
    }
    let mut stack = vec![mount.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            if !ft.is_dir() {
                continue;
            }
            seen += 1;
            if seen > SEARCH_LIMIT {
                return None;
            }
            let path = entry.path();
            if entry.metadata().map(|m| m.ino()).ok() == Some(id) {
                let rel = path.strip_prefix(mount).ok()?;
                return Some(format!("/{}", rel.display()));
            }
            stack.push(path);
        }
    }
    None
}

/// The container a cgroup path names, as container runtimes lay them out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    /// The container id (64 hex digits for every runtime named here).
    pub id: String,
    /// docker, containerd, cri-o, podman, or "unknown" for a bare id.
    pub runtime: &'static str,
    /// The Kubernetes pod uid, when the path is under kubepods.
    pub pod_uid: Option<String>,
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// Recognises the layouts of the systemd and cgroupfs drivers:
/// `docker-<id>.scope`, `/docker/<id>`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope`, and a bare `<id>` (cgroupfs
/// kubepods). Pod uids come from `pod<uid>` or `...-pod<uid>.slice`.
/// Conmon and other monitor scopes are not containers.
pub fn container_of(cgroup_path: &str) -> Option<ContainerRef> {
    let mut found = None;
    let mut pod_uid = None;
    let mut parent = "";
    for seg in cgroup_path.split('/').filter(|s| !s.is_empty()) {
        let name = seg.strip_suffix(".scope").unwrap_or(seg);
        let hit = [
            ("docker-", "docker"),
            ("cri-containerd-", "containerd"),
            ("crio-", "cri-o"),
            ("libpod-", "podman"),
        ]
        .iter()
        .find_map(|(prefix, runtime)| {
            name.strip_prefix(prefix)
                .filter(|id| is_container_id(id))
                .map(|id| (id.to_owned(), *runtime))
        });
        if let Some(hit) = hit {
            found = Some(hit);
        } else if is_container_id(seg) {
            let runtime = match parent {
                "docker" => "docker",
                _ => "unknown",
            };
            found = Some((seg.to_owned(), runtime));
        }
        let slice = seg.strip_suffix(".slice").unwrap_or(seg);
        if let Some(i) = slice.rfind("pod") {
            let uid = &slice[i + 3..];
            if uid.len() >= 32
                && uid
                    .bytes()
                    .all(|c| c.is_ascii_hexdigit() || c == b'-' || c == b'_')
            {
                pod_uid = Some(uid.replace('_', "-"));
            }
        }
        parent = seg;
    }
    found.map(|(id, runtime)| ContainerRef {
        id,
        runtime,
        pod_uid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4c1b2e3f4c1b2e3f4c1b2e3f4c1b2e3f4c1b2e3f4c1b2e3f4c1b2e3f4c1b2e3f";

    #[test]
    fn runtimes_are_recognised_from_their_layouts() {
        let c = container_of(&format!("/system.slice/docker-{ID}.scope")).unwrap();
        assert_eq!((c.id.as_str(), c.runtime, c.pod_uid), (ID, "docker", None));
        assert_eq!(
            container_of(&format!("/docker/{ID}")).unwrap().runtime,
            "docker"
        );
        let c = container_of(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1f2e3d4c_5b6a_7980_a1b2_c3d4e5f6a7b8.slice/cri-containerd-{ID}.scope"
        ))
        .unwrap();
        assert_eq!(c.runtime, "containerd");
        assert_eq!(
            c.pod_uid.as_deref(),
            Some("1f2e3d4c-5b6a-7980-a1b2-c3d4e5f6a7b8")
        );
        let c = container_of(&format!(
            "/kubepods/burstable/pod1f2e3d4c-5b6a-7980-a1b2-c3d4e5f6a7b8/{ID}"
        ))
        .unwrap();
        assert_eq!((c.runtime, c.id.as_str()), ("unknown", ID));
        assert!(c.pod_uid.is_some());
        assert_eq!(
            container_of(&format!("/machine.slice/libpod-{ID}.scope"))
                .unwrap()
                .runtime,
            "podman"
        );
        assert_eq!(
            container_of(&format!("/system.slice/crio-{ID}.scope"))
                .unwrap()
                .runtime,
            "cri-o"
        );
    }

    #[test]
    fn host_paths_and_monitors_are_not_containers() {
        assert_eq!(
            container_of("/user.slice/user-0.slice/session-1.scope"),
            None
        );
        assert_eq!(container_of("/"), None);
        assert_eq!(
            container_of(&format!("/system.slice/crio-conmon-{ID}.scope")),
            None
        );
        assert_eq!(container_of("/system.slice/docker-abc.scope"), None);
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }

    #[test]
    fn this_process_has_a_cgroup2_path() {
        let mount = cgroup2_mount().expect("cgroup2 is mounted");
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("a cgroup2 line");
        let id = std::fs::metadata(mount.join(rel.trim_start_matches('/')))
            .unwrap()
            .ino();
        assert_eq!(path_of(&mount, id).as_deref(), Some(rel));
    }
}
