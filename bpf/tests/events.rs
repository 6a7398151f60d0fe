//! Files, privilege, tampering and container context from the kernel
//! programs, against real files, processes and cgroups (needs root). Each
//! test does something real and asserts the fields of the record it made.

mod common;

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::{temp_dir, Seen, TestCgroup};
use starling_bpf::{
    cgroup, CredOp, CredRecord, FileOp, FileRecord, RawRecord, SensorConfig, SensorFilters,
};

fn watching(prefixes: &[&Path]) -> SensorConfig {
    SensorConfig {
        filters: SensorFilters {
            watched_paths: prefixes
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
            ..Default::default()
        },
        ..Default::default()
    }
}

impl Seen {
    async fn file(&mut self, op: FileOp, path: &Path) -> FileRecord {
        let want = path.to_string_lossy().into_owned();
        match self
            .find(|r| matches!(r, RawRecord::File(f) if f.op == op && f.path == want))
            .await
        {
            Some(RawRecord::File(f)) => f,
            _ => {
                let files: Vec<_> = self
                    .records
                    .iter()
                    .filter(|r| matches!(r, RawRecord::File(_)))
                    .collect();
                panic!("no {op:?} record for {want}; file records: {files:#?}")
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_reports_its_working_directory() {
    let dir = temp_dir();
    // Shallow and deep paths (the kernel walks the first components inline
    // and the rest in a loop), a directory on a mount below another mount
    // (/dev/shm on /dev), and the root.
    let deep = dir.path().join("a/b/c/d/e/f");
    let shm = tempfile::Builder::new()
        .prefix("starling-cwd-")
        .tempdir_in("/dev/shm")
        .expect("a directory on /dev/shm");
    let on_mount = shm.path().join("sub");
    for d in [&deep, &on_mount] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let cases = [
        dir.path(),
        deep.as_path(),
        on_mount.as_path(),
        Path::new("/"),
    ];
    let mut seen = Seen::load();
    for (i, cwd) in cases.iter().enumerate() {
        let marker = format!("cwd-marker-{}-{i}", std::process::id());
        Command::new("/bin/true")
            .arg(&marker)
            .current_dir(cwd)
            .status()
            .expect("spawn true");
        let x = seen.exec_with(&marker).await.expect("exec record");
        assert_eq!(Path::new(&x.cwd), *cwd);
        assert!(!x.cwd_truncated);
        assert_eq!((x.euid, x.egid), (0, 0));
        assert!(!x.exe_deleted && !x.exe_memfd);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_a_watched_file_is_reported_and_an_unwatched_one_is_not() {
    let dir = temp_dir();
    let watched = dir.path().join("watched");
    let unwatched = dir.path().join("unwatched");
    std::fs::create_dir(&watched).expect("mkdir");
    std::fs::create_dir(&unwatched).expect("mkdir");
    let secret = watched.join("shadow");
    let other = unwatched.join("shadow");
    std::fs::write(&secret, b"s").expect("write");
    std::fs::write(&other, b"o").expect("write");
    // The prefix ends in "/": "watched-not" beside it is not under it.
    let prefix = format!("{}/", watched.display());
    let mut seen = Seen::load_with(&watching(&[Path::new(&prefix)]));

    std::fs::read(&other).expect("read unwatched");
    std::fs::read(&secret).expect("read watched");
    let open = seen.file(FileOp::Open, &secret).await;
    assert_eq!(open.header.tgid, std::process::id());
    assert!(!open.write && !open.created);
    assert_eq!(open.mode & 0o170000, 0o100000, "a regular file");
    // Reached through a relative path and a symlink, it is the same file.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&secret, &link).expect("symlink");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&link)
        .expect("open through the link");
    let through_link = seen
        .find(|r| matches!(r, RawRecord::File(f) if f.op == FileOp::Open && f.write))
        .await
        .expect("write-open through the symlink");
    let RawRecord::File(through_link) = through_link else {
        unreachable!()
    };
    assert_eq!(Path::new(&through_link.path), secret);

    let created = watched.join("new");
    std::fs::write(&created, b"n").expect("create");
    let create = seen.file(FileOp::Open, &created).await;
    assert!(create.created && create.write);

    seen.barrier().await;
    let other = other.to_string_lossy().into_owned();
    assert!(
        !seen.any(|r| matches!(r, RawRecord::File(f) if f.path == other)),
        "the unwatched file was reported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_in_a_chroot_are_the_ones_the_process_sees() {
    let dir = temp_dir();
    let name = format!("starling-chroot-{}", std::process::id());
    std::fs::create_dir(dir.path().join("etc")).expect("mkdir");
    std::fs::write(dir.path().join("etc").join(&name), b"x").expect("write");
    // Watched as the chrooted process names it; the host path (under the
    // temporary directory) is not watched.
    let watched = format!("/etc/{name}");
    let mut seen = Seen::load_with(&watching(&[Path::new(&watched)]));
    let root = CString::new(dir.path().as_os_str().as_encoded_bytes()).expect("no NUL");
    let abs = CString::new(watched.clone()).expect("no NUL");
    let rel = CString::new(name.clone()).expect("no NUL");
    // SAFETY: the child makes only async-signal-safe calls, then _exit.
    let pid = unsafe {
        let pid = libc::fork();
        if pid == 0 {
            // Open by absolute path (the file's dentry is walked), then
            // unlink by a path relative to the cwd (the cwd is walked).
            let ok = libc::chroot(root.as_ptr()) == 0
                && libc::chdir(c"/etc".as_ptr()) == 0
                && libc::open(abs.as_ptr(), libc::O_RDONLY) >= 0
                && libc::unlink(rel.as_ptr()) == 0;
            libc::_exit(if ok { 0 } else { 1 });
        }
        pid
    };
    assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert_eq!(status, 0, "the child's chroot, open and unlink succeeded");
    let open = seen.file(FileOp::Open, Path::new(&watched)).await;
    assert_eq!(open.header.tgid, pid as u32);
    let unlink = seen.file(FileOp::Unlink, Path::new(&watched)).await;
    assert_eq!((unlink.header.tgid, unlink.result), (pid as u32, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_and_unlink_of_watched_paths_carry_both_paths_and_the_result() {
    let dir = temp_dir();
    let watched = dir.path().join("cron.d");
    std::fs::create_dir(&watched).expect("mkdir");
    let mut seen = Seen::load_with(&watching(&[&watched]));
    // Moving a file in from outside is reported: the new path is watched.
    let outside = dir.path().join("payload");
    std::fs::write(&outside, b"* * * * * root sh").expect("write");
    let inside = watched.join("payload");
    std::fs::rename(&outside, &inside).expect("rename");
    let rename = seen.file(FileOp::Rename, &outside).await;
    assert_eq!(Path::new(&rename.new_path), inside);
    assert_eq!(rename.result, 0);
    // A relative unlink, from inside the directory, resolves to the path.
    let status = Command::new("/bin/rm")
        .args(["payload", "missing"])
        .current_dir(&watched)
        .status()
        .expect("spawn rm");
    assert!(!status.success(), "rm of a missing file fails");
    let unlink = seen.file(FileOp::Unlink, &inside).await;
    assert_eq!(unlink.result, 0);
    assert_eq!(unlink.header.comm, "rm");
    let missing = seen.file(FileOp::Unlink, &watched.join("missing")).await;
    assert_eq!(missing.result, -libc::ENOENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_written_with_dots_or_double_slashes_are_left_to_the_node() {
    let dir = temp_dir();
    let keys = dir.path().join("keys");
    let other = dir.path().join("other");
    for d in [&keys, &other] {
        std::fs::create_dir(d).expect("mkdir");
    }
    for name in ["a", "b", "c"] {
        std::fs::write(keys.join(name), b"k").expect("write a key");
    }
    std::fs::write(other.join("d"), b"x").expect("write");
    // Watched as "~/.ssh/" is: the directory's contents.
    let prefix = format!("{}/", keys.display());
    let filters = SensorFilters {
        watched_paths: vec![prefix.clone()],
        ..Default::default()
    };
    let mut seen = Seen::load_with(&SensorConfig {
        filters: filters.clone(),
        ..Default::default()
    });
    let root = dir.path().display().to_string();
    // Neither starts with the prefix as written, both name a watched file.
    let dotted = format!("{root}/other/../keys/a");
    let doubled = format!("{root}//keys/b");
    std::fs::remove_file(&dotted).expect("unlink a");
    std::fs::remove_file(&doubled).expect("unlink b");
    // The kernel leaves an unwatched one to the node just the same.
    let unwatched = format!("{root}/keys/../other/d");
    std::fs::remove_file(&unwatched).expect("unlink d");
    for written in [&dotted, &doubled, &unwatched] {
        let r = seen.file(FileOp::Unlink, Path::new(written)).await;
        assert!(r.unmatched, "{r:#?}");
        let lexical = starling_bpf::lexical_path(&r.path);
        assert_eq!(
            filters.watches(&lexical),
            written != &unwatched,
            "{lexical}"
        );
    }
    // A leading "./" is dropped in the kernel: the path is plain.
    let status = Command::new("/bin/rm")
        .arg("./c")
        .current_dir(&keys)
        .status()
        .expect("spawn rm");
    assert!(status.success());
    let r = seen.file(FileOp::Unlink, &keys.join("c")).await;
    assert!(!r.unmatched);
    // The watched directory moved away, named without its slash.
    let moved = dir.path().join("moved");
    std::fs::rename(&keys, &moved).expect("rename the directory");
    let r = seen.file(FileOp::Rename, &keys).await;
    assert_eq!(
        (Path::new(&r.new_path), r.unmatched),
        (moved.as_path(), false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regular_file_written_on_dev_is_reported() {
    let mut seen = Seen::load();
    let path = Path::new("/dev").join(format!("starling-probe-{}", std::process::id()));
    std::fs::write(&path, b"payload").expect("create a file on /dev");
    let _ = std::fs::remove_file(&path);
    let r = seen.file(FileOp::DevWrite, &path).await;
    assert!(r.created && r.write);
    // Device nodes are what /dev is for: writing one is not reported.
    std::fs::write("/dev/null", b"x").expect("write /dev/null");
    seen.barrier().await;
    assert!(!seen.any(|r| matches!(r, RawRecord::File(f) if f.path == "/dev/null")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chmod_plus_x_reports_the_mode_and_for_fchmod_the_parent() {
    let dir = temp_dir();
    let open_dir = dir.path().join("world");
    std::fs::create_dir(&open_dir).expect("mkdir");
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let by_path = open_dir.join("by-path");
    let by_fd = open_dir.join("by-fd");
    std::fs::write(&by_path, b"#!/bin/sh").expect("write");
    let file = std::fs::File::create(&by_fd).expect("create");
    let mut seen = Seen::load();
    // chmod(2) on a path: the kernel leaves the parent to userspace.
    std::fs::set_permissions(&by_path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let r = seen.file(FileOp::Chmod, &by_path).await;
    assert_eq!(r.mode & 0o7777, 0o755);
    assert_eq!(r.parent_mode, None);
    // fchmod(2): the kernel knows the parent and that it is world-writable.
    file.set_permissions(std::fs::Permissions::from_mode(0o700))
        .expect("fchmod");
    let r = seen.file(FileOp::Chmod, &by_fd).await;
    assert_eq!(r.parent_mode.map(|m| m & 0o7777), Some(0o1777));
    // No execute bit, no record.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .expect("fchmod");
    seen.barrier().await;
    let n = seen
        .records
        .iter()
        .filter(
            |r| matches!(r, RawRecord::File(f) if f.op == FileOp::Chmod && f.mode & 0o777 == 0o600),
        )
        .count();
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setresuid_back_to_root_is_a_privilege_gain_and_the_drop_is_not() {
    let mut seen = Seen::load();
    let mut cmd = Command::new("/bin/true");
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // Drop to 1000 keeping root as the saved uid, then take it back.
            if libc::setresuid(1000, 1000, 0) != 0 || libc::setresuid(0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let r = seen
        .sole_privilege_record(&mut cmd, "dropping to 1000")
        .await;
    assert_eq!(r.op, CredOp::Setresuid);
    assert_eq!((r.old.uid, r.old.euid), (1000, 1000));
    assert_eq!((r.new.uid, r.new.euid), (0, 0));
}

impl Seen {
    /// Runs `cmd`, which must succeed, and returns the one privilege
    /// record its process made; `not_reported` names what it also did
    /// that must not have made a record.
    async fn sole_privilege_record(&mut self, cmd: &mut Command, not_reported: &str) -> CredRecord {
        let mut child = cmd.spawn().expect("spawn");
        let pid = child.id();
        assert!(child.wait().expect("ran").success());
        let Some(RawRecord::Cred(r)) = self
            .find(|r| matches!(r, RawRecord::Cred(c) if c.header.tgid == pid))
            .await
        else {
            panic!("no privilege record for the child")
        };
        self.barrier().await;
        let gains = self
            .records
            .iter()
            .filter(|r| matches!(r, RawRecord::Cred(c) if c.header.tgid == pid))
            .count();
        assert_eq!(gains, 1, "{not_reported} is not reported");
        r
    }
}

/// struct __user_cap_header_struct.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// struct __user_cap_data_struct (two of them in version 3).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// The effective capability set of this process, from /proc.
fn own_effective_caps() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff line");
    u64::from_str_radix(hex.trim(), 16).expect("hex")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capset_raising_effective_capabilities_is_a_gain_and_clearing_them_is_not() {
    let mut seen = Seen::load();
    let full = own_effective_caps();
    assert_ne!(full, 0, "runs as root with capabilities");
    let mut cmd = Command::new("/bin/true");
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // Clear the effective set (the permitted set stays), then
            // raise it back: what a process that dropped its
            // capabilities does to use them again.
            let mut header = CapHeader {
                version: CAP_VERSION_3,
                pid: 0,
            };
            let mut caps = [CapData::default(); 2];
            if libc::syscall(libc::SYS_capget, &mut header, caps.as_mut_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut cleared = caps;
            cleared[0].effective = 0;
            cleared[1].effective = 0;
            for set in [&cleared, &caps] {
                if libc::syscall(libc::SYS_capset, &header, set.as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let r = seen
        .sole_privilege_record(&mut cmd, "clearing the set")
        .await;
    assert_eq!(r.op, CredOp::Capset);
    assert_eq!((r.old_caps, r.new_caps), (0, full));
    assert_eq!((r.old.uid, r.new.uid), (0, 0), "ids did not change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_loads_are_reported_where_the_kernel_has_modules() {
    let mut seen = Seen::load();
    let missing = seen
        .sensor
        .missing_tracepoints()
        .iter()
        .any(|t| t == "module/module_load");
    if !Path::new("/proc/modules").exists() {
        // Built without module support: no module can ever load, the
        // tracepoint does not exist, and the sensor says it runs without.
        eprintln!("this kernel has no module support (no /proc/modules): no module load to watch");
        assert!(missing, "the module hook is reported missing");
        return;
    }
    assert!(
        !missing,
        "a kernel with modules has the module_load tracepoint"
    );
    // A module the kernel does not hold yet (STARLING_TEST_MODULE, or the
    // dummy network driver every distribution kernel builds).
    let module = std::env::var("STARLING_TEST_MODULE").unwrap_or_else(|_| "dummy".into());
    let loaded = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    assert!(
        !loaded
            .lines()
            .any(|l| l.split_whitespace().next() == Some(module.as_str())),
        "{module} is loaded already; set STARLING_TEST_MODULE to one that is not"
    );
    let status = Command::new("modprobe")
        .arg(&module)
        .status()
        .expect("run modprobe");
    assert!(status.success(), "modprobe {module} failed");
    let found = seen
        .find(|r| matches!(r, RawRecord::ModuleLoad(m) if m.name == module))
        .await;
    let _ = Command::new("modprobe").args(["-r", &module]).status();
    assert!(found.is_some(), "no module_load record for {module}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_of_a_setuid_root_file_by_a_user_is_a_privilege_gain() {
    let dir = temp_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let id = dir.path().join("id-suid");
    std::fs::copy("/usr/bin/id", &id).expect("copy id");
    std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o4755)).expect("setuid bit");
    let mut seen = Seen::load();
    let mut child = Command::new(&id)
        .uid(1000)
        .gid(1000)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    child.wait().expect("ran");
    let Some(RawRecord::Cred(r)) = seen
        .find(|r| matches!(r, RawRecord::Cred(c) if c.header.tgid == pid))
        .await
    else {
        panic!("no privilege record for the set-uid exec")
    };
    assert_eq!(r.op, CredOp::Exec);
    assert_eq!((r.old.uid, r.new.uid, r.new.euid), (1000, 1000, 0));
    let Some(RawRecord::Exec(x)) = seen
        .find(|r| matches!(r, RawRecord::Exec(x) if x.header.tgid == pid))
        .await
    else {
        panic!("no exec record")
    };
    assert_eq!((x.header.uid, x.euid), (1000, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ptrace_attach_names_the_target() {
    let mut seen = Seen::load();
    let mut target = Command::new("/bin/sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let pid = target.id() as libc::pid_t;
    // SAFETY: plain syscalls on a child this test owns.
    let attached = unsafe {
        let rc = libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
        rc
    };
    assert_eq!(attached, 0, "{}", std::io::Error::last_os_error());
    let _ = target.kill();
    let _ = target.wait();
    let Some(RawRecord::Ptrace(r)) = seen
        .find(|r| matches!(r, RawRecord::Ptrace(p) if p.target == pid as u32))
        .await
    else {
        panic!("no ptrace record")
    };
    assert_eq!((r.request, r.result), (libc::PTRACE_ATTACH as i64, 0));
    assert_eq!(r.header.tgid, std::process::id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_from_a_memfd_is_flagged_and_the_memfd_reported() {
    let mut seen = Seen::load();
    let name = CString::new(format!("starling-memfd-{}", std::process::id())).expect("name");
    // Without MFD_CLOEXEC, so that the child inherits it.
    // SAFETY: a valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: fd was just returned to us and is owned here.
    let mut memfd = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    memfd
        .write_all(&std::fs::read("/bin/true").expect("read /bin/true"))
        .expect("write the image");
    let marker = format!("memfd-marker-{}", std::process::id());
    let path = format!("/proc/self/fd/{}", memfd.as_raw_fd());
    let status = Command::new(&path)
        .arg(&marker)
        .status()
        .expect("exec the memfd");
    assert!(status.success());
    let x = seen.exec_with(&marker).await.expect("exec record");
    assert!(x.exe_memfd && x.exe_deleted, "{x:?}");
    let Some(RawRecord::Memfd(m)) = seen
        .find(|r| matches!(r, RawRecord::Memfd(m) if m.result == fd))
        .await
    else {
        panic!("no memfd record")
    };
    assert_eq!(m.name, name.to_str().expect("utf-8"));
    assert_eq!(m.header.tgid, std::process::id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bpf_program_load_is_reported_with_its_type_and_name() {
    let mut seen = Seen::load();
    // "r0 = 0; exit" as a socket filter, named starling_t.
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&1u32.to_ne_bytes()); // BPF_PROG_TYPE_SOCKET_FILTER
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[48..58].copy_from_slice(b"starling_t");
    // SAFETY: attr is a valid bpf_attr for BPF_PROG_LOAD of its size.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 5, attr.as_ptr(), attr.len()) };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: the fd was just returned and is closed once, here.
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    let Some(RawRecord::BpfLoad(b)) = seen
        .find(|r| matches!(r, RawRecord::BpfLoad(b) if b.prog_name == "starling_t"))
        .await
    else {
        panic!("no bpf load record")
    };
    assert_eq!((b.prog_type, b.insn_count), (1, 2));
    assert_eq!(b.result as i64, fd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_in_a_container_cgroup_carries_its_id() {
    let mount = cgroup::cgroup2_mount().expect("a cgroup2 hierarchy");
    let id = format!("{:064x}", u64::from(std::process::id()) * 0x9e37_79b9);
    let mut seen = Seen::load();
    // Laid out as Docker's systemd driver names them; made after the
    // sensor loaded, so its creation is reported too.
    let group = TestCgroup::create(&format!("docker-{id}.scope"));
    let ino = std::fs::metadata(&group.dir).expect("cgroup dir").ino();
    let marker = format!("container-marker-{}", std::process::id());
    let mut cmd = Command::new("/bin/true");
    cmd.arg(&marker);
    group.run_in(&mut cmd);
    assert!(cmd.status().expect("spawn in the cgroup").success());
    let x = seen.exec_with(&marker).await.expect("exec record");
    assert_eq!(x.header.cgroup_id, ino);
    let path = cgroup::path_of(&mount, x.header.cgroup_id).expect("the id's path");
    let container = cgroup::container_of(&path).expect("a container path");
    assert_eq!(
        (container.id.as_str(), container.runtime),
        (id.as_str(), "docker")
    );
    // The creation came first, with the id and the path the walk finds.
    let created = seen
        .records
        .iter()
        .position(|r| matches!(r, RawRecord::CgroupCreated(c) if c.id == ino))
        .expect("the cgroup's creation was reported");
    let exec = seen
        .records
        .iter()
        .position(|r| matches!(r, RawRecord::Exec(e) if e.argv.contains(&marker)))
        .expect("the exec record");
    assert!(created < exec, "the creation arrives before the exec in it");
    let RawRecord::CgroupCreated(c) = &seen.records[created] else {
        unreachable!()
    };
    assert_eq!(c.path.as_deref(), Some(path.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_cgroups_of_the_cgroup2_hierarchy_are_reported() {
    // On a hybrid host the v1 hierarchies fire the same tracepoint; their
    // ids are of another tree and must not be taken for cgroup2 ids.
    let v1 = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let target = f.nth(1)?;
            (f.next()? == "cgroup").then(|| std::path::PathBuf::from(target))
        })
        .find(|p| p.join("cgroup.procs").exists());
    let Some(v1) = v1 else {
        // A pure cgroup2 host (most production hosts): nothing to confuse.
        eprintln!("no cgroup v1 hierarchy mounted: only cgroup2 exists here");
        return;
    };
    let mut seen = Seen::load();
    let dir = v1.join(format!("starling-v1-{}", std::process::id()));
    std::fs::create_dir(&dir).expect("a v1 cgroup");
    let v2 = TestCgroup::create(&format!("starling-v2-{}", std::process::id()));
    let v2_ino = std::fs::metadata(&v2.dir).expect("cgroup dir").ino();
    let _ = std::fs::remove_dir(&dir);
    seen.find(|r| matches!(r, RawRecord::CgroupCreated(c) if c.id == v2_ino))
        .await
        .expect("the cgroup2 creation");
    let name = format!("/starling-v1-{}", std::process::id());
    assert!(
        !seen.any(|r| matches!(r, RawRecord::CgroupCreated(c) if c.path.as_deref() == Some(&name))),
        "a cgroup v1 creation was reported"
    );
}
