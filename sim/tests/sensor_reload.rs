//! The node applies new sensor filters from its config file on SIGHUP,
//! without a restart: a real node process with its real sensor, shipping
//! to a real sink's local store. Needs root (BPF).

use std::path::{Path, PathBuf};
use std::time::Duration;

use starling_proto::v1::{event::Body, Event};
use starling_sim::{is_root, wait_for, Fleet, NodeProcess, SinkProcess};
use starling_sink::local_store::LocalStoreReader;

/// Paths of the file_open events the sink has stored so far.
fn opened_paths(reader: &LocalStoreReader) -> Vec<String> {
    if reader.refresh().is_err() {
        return Vec::new();
    }
    let Ok(page) = reader.after(0, 1_000_000) else {
        return Vec::new();
    };
    page.events
        .iter()
        .filter_map(|(_, e): &(u64, Event)| match e.body.as_ref() {
            Some(Body::FileOpen(f)) => Some(f.path.clone()),
            _ => None,
        })
        .collect()
}

/// Opens `file` until the sink has a file_open of it (the first open may
/// race the sensor's start); panics with the node's log after 30 s.
fn open_until_stored(reader: &LocalStoreReader, file: &Path, node: &NodeProcess) {
    let want = file.display().to_string();
    let stored = wait_for(Duration::from_secs(30), || {
        drop(std::fs::File::open(file));
        opened_paths(reader).contains(&want).then_some(())
    });
    assert!(
        stored.is_some(),
        "no file_open of {want} arrived\n{}",
        node.log()
    );
}

fn sensor_toml(watched: &Path) -> String {
    format!("watch_paths = [\"{}/\"]", watched.display())
}

/// Replaces the node's `[sensor]` watch list in its config file.
fn rewrite_watch_list(config: &Path, from: &Path, to: &Path) {
    let text = std::fs::read_to_string(config).expect("reading the node config");
    let old = sensor_toml(from);
    assert!(text.contains(&old), "config without {old}:\n{text}");
    std::fs::write(config, text.replace(&old, &sensor_toml(to))).expect("rewriting the config");
}

#[test]
fn sighup_applies_a_new_watch_list_without_a_restart() -> anyhow::Result<()> {
    assert!(
        is_root(),
        "this test loads BPF programs and must run as root"
    );
    let fleet = Fleet::new()?;
    let first: PathBuf = fleet.path().join("first");
    let second: PathBuf = fleet.path().join("second");
    for d in [&first, &second] {
        std::fs::create_dir_all(d)?;
        for name in ["secret", "later"] {
            std::fs::write(d.join(name), b"x")?;
        }
    }
    let sink = SinkProcess::start(&fleet, "reload-sink", None)?;
    let sinks = [(sink.address(), sink.name.clone())];
    let mut node =
        NodeProcess::start_with_sensor_config(&fleet, "reload-host", &sinks, &sensor_toml(&first))?;
    let reader = LocalStoreReader::open(&sink.store_path())?;

    // Only the first directory is watched.
    drop(std::fs::File::open(second.join("secret")));
    open_until_stored(&reader, &first.join("secret"), &node);

    rewrite_watch_list(node.config_path(), &first, &second);
    let pid = node.pid().expect("node running") as i32;
    // SAFETY: sending a signal to the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let applied = wait_for(Duration::from_secs(10), || {
        node.log()
            .contains("SIGHUP: reloading the sensor filters")
            .then_some(())
    });
    assert!(applied.is_some(), "no reload logged\n{}", node.log());

    // Now the second is watched and the first is not: an open of the
    // first, then one of the second; once the second's is stored, the
    // first's would have been too (one reader, in order).
    let second_later = second.join("later");
    let mut first_opened_after = 0;
    let stored = wait_for(Duration::from_secs(30), || {
        drop(std::fs::File::open(first.join("later")));
        first_opened_after += 1;
        drop(std::fs::File::open(&second_later));
        opened_paths(&reader)
            .contains(&second_later.display().to_string())
            .then_some(())
    });
    assert!(
        stored.is_some(),
        "the new watch list was not applied\n{}",
        node.log()
    );
    let paths = opened_paths(&reader);
    let first_later = first.join("later").display().to_string();
    assert!(
        !paths.contains(&first_later),
        "{first_later} was reported after it left the watch list ({first_opened_after} opens)"
    );
    // Before the reload the second directory was not watched.
    let second_secret = second.join("secret").display().to_string();
    assert!(!paths.contains(&second_secret), "{paths:?}");

    assert!(node.terminate()?.success(), "{}", node.log());
    Ok(())
}
