//! The kernel-side filters, each against real activity (needs root): every
//! test fails when its filter is off, because the record it forbids would
//! then arrive.

mod common;

use std::net::TcpListener;
use std::process::Command;

use common::{count_memfds, make_memfds, run_true, temp_dir, Seen, TestCgroup};
use starling_bpf::{
    kind_number, DropReason, FileOp, RateLimit, RawRecord, SensorConfig, SensorFilters,
};

fn has_exec_with(seen: &Seen, marker: &str) -> bool {
    seen.any(|r| matches!(r, RawRecord::Exec(x) if x.argv.iter().any(|a| a == marker)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_kind_is_not_reported_and_comes_back_when_enabled_at_runtime() {
    let mut seen = Seen::load();
    let off = SensorFilters {
        disabled_kinds: vec!["process_exec".into()],
        ..Default::default()
    };
    seen.sensor.apply_filters(&off).expect("filters apply");
    let hidden = format!("kind-off-{}", std::process::id());
    run_true(&hidden);
    seen.barrier().await;
    assert!(!has_exec_with(&seen, &hidden), "exec records were off");

    seen.sensor
        .apply_filters(&SensorFilters::default())
        .expect("filters apply");
    let shown = format!("kind-on-{}", std::process::id());
    run_true(&shown);
    assert!(
        seen.exec_with(&shown).await.is_some(),
        "exec records are on again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_kind_is_cut_and_every_cut_record_counted() {
    // memfd_create: a kind only this test makes, so the kernel's counter
    // of cut records must equal exactly the test's records that did not
    // arrive (an exec limit would share its count with the host's execs).
    let config = SensorConfig {
        filters: SensorFilters {
            rate_limits: vec![RateLimit {
                kind: "memfd_create".into(),
                per_second: 1,
                burst: 1,
            }],
            ..Default::default()
        },
        ..Default::default()
    };
    let made = 20;
    let kind = kind_number("memfd_create").expect("a kind");
    for attempt in 0.. {
        let mut seen = Seen::load_with(&config);
        let prefix = format!("limited-{}-{attempt}-", std::process::id());
        make_memfds(&prefix, made);
        seen.barrier().await;
        let (delivered, others) = count_memfds(&seen.records, &prefix);
        if others > 0 && attempt < 3 {
            // Another process made memfds meanwhile: measure again.
            continue;
        }
        let limited = seen
            .sensor
            .drop_counts()
            .expect("drop map")
            .get(DropReason::RateLimited, kind);
        assert!(delivered < made, "{delivered} of {made} passed a 1/s limit");
        assert_eq!(
            delivered + limited,
            made,
            "every record is delivered or counted as cut: {delivered} delivered, {limited} counted"
        );
        break;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_own_activity_is_filtered_and_counted_but_its_children_are_not() {
    let me = std::process::id();
    let config = SensorConfig {
        filters: SensorFilters {
            own_pid: Some(me),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut seen = Seen::load_with(&config);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let marker = format!("own-child-{me}");
    run_true(&marker);
    assert!(
        seen.exec_with(&marker).await.is_some(),
        "a child's exec is not the node's own"
    );
    seen.barrier().await;
    assert!(
        !seen.any(|r| matches!(r, RawRecord::Tcp(t) if t.local.port() == port)),
        "the node's own listen was reported"
    );
    let listen = kind_number("tcp_listen").expect("a kind");
    let filtered = seen
        .sensor
        .drop_counts()
        .expect("drop map")
        .get(DropReason::Filtered, listen);
    assert_eq!(filtered, 1, "the one filtered listen was counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_listed_executable_is_not_reported() {
    let dir = temp_dir();
    // A copy: a new inode that only this test runs.
    let quiet = dir.path().join("quiet-true");
    std::fs::copy("/bin/true", &quiet).expect("copy true");
    let config = SensorConfig {
        filters: SensorFilters {
            quiet_exes: vec![quiet.clone()],
            ..Default::default()
        },
        ..Default::default()
    };
    let mut seen = Seen::load_with(&config);
    let hidden = format!("quiet-exe-{}", std::process::id());
    Command::new(&quiet).arg(&hidden).status().expect("spawn");
    let shown = format!("loud-exe-{}", std::process::id());
    run_true(&shown);
    assert!(seen.exec_with(&shown).await.is_some());
    assert!(
        !has_exec_with(&seen, &hidden),
        "the allow-listed exe was reported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_in_a_quiet_cgroup_is_not_reported() {
    let name = format!("starling-quiet-{}", std::process::id());
    let group = TestCgroup::create(&name);
    let config = SensorConfig {
        filters: SensorFilters {
            quiet_cgroups: vec![format!("/{name}")],
            ..Default::default()
        },
        ..Default::default()
    };
    let mut seen = Seen::load_with(&config);
    let hidden = format!("quiet-cgroup-{}", std::process::id());
    let mut cmd = Command::new("/bin/true");
    cmd.arg(&hidden);
    group.run_in(&mut cmd);
    assert!(cmd.status().expect("spawn in the cgroup").success());
    let shown = format!("loud-cgroup-{}", std::process::id());
    run_true(&shown);
    assert!(seen.exec_with(&shown).await.is_some());
    assert!(
        !has_exec_with(&seen, &hidden),
        "a process in the quiet cgroup was reported"
    );
    let filtered = seen.sensor.drop_counts().expect("drop counts").get(
        DropReason::Filtered,
        kind_number("process_exec").expect("kind"),
    );
    // Only this test puts processes in its quiet cgroup.
    assert_eq!(filtered, 1, "the one filtered exec was counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_prefix_inside_a_watched_one_is_not_reported() {
    let dir = temp_dir();
    let watched = dir.path().join("etc");
    let quiet = watched.join("cache");
    std::fs::create_dir_all(&quiet).expect("mkdir");
    let loud_file = watched.join("passwd");
    let quiet_file = quiet.join("passwd");
    std::fs::write(&loud_file, b"l").expect("write");
    std::fs::write(&quiet_file, b"q").expect("write");
    let config = SensorConfig {
        filters: SensorFilters {
            watched_paths: vec![watched.to_string_lossy().into_owned()],
            quiet_paths: vec![quiet.to_string_lossy().into_owned()],
            ..Default::default()
        },
        ..Default::default()
    };
    let mut seen = Seen::load_with(&config);
    std::fs::read(&quiet_file).expect("read");
    std::fs::read(&loud_file).expect("read");
    let loud = loud_file.to_string_lossy().into_owned();
    seen.find(|r| matches!(r, RawRecord::File(f) if f.op == FileOp::Open && f.path == loud))
        .await
        .expect("the watched file's open");
    let quiet = quiet_file.to_string_lossy().into_owned();
    assert!(!seen.any(|r| matches!(r, RawRecord::File(f) if f.path == quiet)));
    let open = kind_number("file_open").expect("a kind");
    let filtered = seen
        .sensor
        .drop_counts()
        .expect("drops")
        .get(DropReason::Filtered, open);
    assert_eq!(filtered, 1, "the one quiet open was counted once");
}

#[test]
fn unknown_kinds_and_relative_prefixes_are_refused_by_the_loader() {
    let bad_kind = SensorConfig {
        filters: SensorFilters {
            disabled_kinds: vec!["exec".into()],
            ..Default::default()
        },
        ..Default::default()
    };
    let err = starling_bpf::Sensor::load(&bad_kind)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("unknown event kind"), "{err}");
    let relative = SensorConfig {
        filters: SensorFilters {
            watched_paths: vec!["etc/shadow".into()],
            ..Default::default()
        },
        ..Default::default()
    };
    let err = starling_bpf::Sensor::load(&relative)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("absolute path"), "{err}");
}
