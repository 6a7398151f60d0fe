//! `starlingctl events tail` against a real local store: a count from the
//! command line sizes no allocation, a host's events are found through the
//! store's host index, and `--kind` knows every kind.

use std::process::Command;

use prost::Message;
use starling_proto::v1::{event::Body, Event, EventHeader, ProcessExec};
use starling_sink::local_store::LocalStore;

fn exec(host: &str, seq: u64) -> Vec<u8> {
    Event {
        header: Some(EventHeader {
            host_id: host.into(),
            seq,
            ..Default::default()
        }),
        body: Some(Body::ProcessExec(ProcessExec {
            filename: format!("/bin/run-{host}-{seq}"),
            ..Default::default()
        })),
    }
    .encode_to_vec()
}

fn starlingctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_starlingctl"))
        .args(args)
        .output()
        .expect("starlingctl runs")
}

#[test]
fn huge_counts_and_host_filters_read_only_what_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    {
        let store = LocalStore::open(&path, 10_000).unwrap();
        for round in 0..10u64 {
            let a: Vec<_> = (1..=5).map(|s| exec("web-01", round * 5 + s)).collect();
            store
                .persist("web-01", a.iter().map(Vec::as_slice))
                .unwrap();
            let b: Vec<_> = (1..=100).map(|s| exec("db-01", round * 100 + s)).collect();
            store.persist("db-01", b.iter().map(Vec::as_slice)).unwrap();
        }
    }
    let store = path.to_str().unwrap();
    // Both used to abort with "memory allocation of ... bytes failed".
    let all = starlingctl(&[
        "events",
        "tail",
        "--store",
        store,
        "-n",
        "100000000",
        "--json",
    ]);
    assert!(
        all.status.success(),
        "{}",
        String::from_utf8_lossy(&all.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&all.stdout).lines().count(), 1050);
    let web = starlingctl(&[
        "events", "tail", "--store", store, "--host", "web-01", "-n", "1000000", "--json",
    ]);
    assert!(
        web.status.success(),
        "{}",
        String::from_utf8_lossy(&web.stderr)
    );
    let web = String::from_utf8_lossy(&web.stdout).into_owned();
    assert_eq!(
        web.lines().count(),
        50,
        "every event of web-01 and no other"
    );
    assert!(
        web.lines().all(|l| l.contains("\"host_id\":\"web-01\"")),
        "{web}"
    );
    let last = starlingctl(&[
        "events", "tail", "--store", store, "--host", "db-01", "-n", "2",
    ]);
    let rows = String::from_utf8_lossy(&last.stdout).into_owned();
    assert!(
        rows.contains("/bin/run-db-01-999") && rows.contains("/bin/run-db-01-1000"),
        "{rows}"
    );
    assert_eq!(
        rows.lines().count(),
        3,
        "a header and the two newest: {rows}"
    );
}

#[test]
fn the_kind_filter_knows_every_kind() {
    let help = starlingctl(&["events", "tail", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    for kind in starling_proto::EVENT_KINDS {
        assert!(help.contains(kind), "--help does not list {kind}:\n{help}");
    }
    let bad = starlingctl(&[
        "events",
        "tail",
        "--store",
        "/nonexistent",
        "--kind",
        "proces_exec",
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("process_exec"),
        "suggests the right names"
    );
}
