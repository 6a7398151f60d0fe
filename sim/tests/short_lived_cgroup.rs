//! A process in a cgroup that is removed right after it ran (a Kubernetes
//! Job's pod lives for seconds) still arrives with its cgroup path and
//! container: the node learns the path when the kernel reports the cgroup
//! created, not later when it may be gone. A real node with its sensor,
//! a real sink. Needs root (BPF, cgroups).

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use starling_proto::v1::Event;
use starling_sim::kafka::is_marked_exec;
use starling_sim::{is_root, wait_for, Fleet, NodeProcess, SinkProcess};
use starling_sink::local_store::LocalStoreReader;

#[test]
fn an_exec_in_a_cgroup_removed_at_once_keeps_its_cgroup_path_and_container() -> anyhow::Result<()> {
    assert!(
        is_root(),
        "this test loads BPF programs and must run as root"
    );
    let fleet = Fleet::new()?;
    let sink = SinkProcess::start(&fleet, "sink-1", None)?;
    let node = NodeProcess::start(
        &fleet,
        "cg-host",
        &[(sink.address(), sink.name.clone())],
        true,
    )?;

    let mount = starling_bpf::cgroup::cgroup2_mount()?;
    let container = format!("{:064x}", u64::from(std::process::id()) * 0x51_7cc1);
    let name = format!("docker-{container}.scope");
    let dir = mount.join(&name);
    let marker = format!("short-cgroup-{}", std::process::id());
    std::fs::create_dir(&dir)?;
    let procs = std::ffi::CString::new(dir.join("cgroup.procs").to_string_lossy().into_owned())?;
    let mut cmd = Command::new("/bin/true");
    cmd.arg(&marker);
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
    let status = cmd.status();
    // Gone as soon as its one process is.
    let removed = std::fs::remove_dir(&dir);
    assert!(status?.success());
    removed?;

    let reader = wait_for(Duration::from_secs(10), || {
        LocalStoreReader::open(&sink.store_path()).ok()
    })
    .expect("the sink's store");
    let exec: Option<Event> = wait_for(Duration::from_secs(30), || {
        reader.refresh().ok()?;
        let page = reader.after(0, 1_000_000).ok()?;
        page.events
            .into_iter()
            .map(|(_, e)| e)
            .find(|e| is_marked_exec(e, &marker))
    });
    let exec = exec.unwrap_or_else(|| panic!("the exec never arrived\n{}", node.log()));
    let h = exec.header.expect("header");
    assert_eq!(h.cgroup_path, format!("/{name}"));
    let c = h.container.expect("the container, from the cgroup path");
    assert_eq!(
        (c.id.as_str(), c.runtime.as_str()),
        (container.as_str(), "docker")
    );
    assert!(
        node.metric("starling_node_cgroups_learned_total")
            .unwrap_or(0.0)
            >= 1.0,
        "learned from the kernel's report, not from a walk"
    );
    Ok(())
}
