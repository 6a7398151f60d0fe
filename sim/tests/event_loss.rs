//! Kernel losses reach the sink as events in the host's own stream: a real
//! node with a rate limit on one kind, a real sink. Every record the test
//! made either arrives or is counted in an `event_loss` event at the sink,
//! and the counts in those events equal the node's drop counter (what the
//! node counted is what it reported). Needs root (BPF).

use std::time::Duration;

use starling_proto::v1::event::Body;
use starling_proto::v1::event_loss::Reason;
use starling_sim::{is_root, wait_for, Fleet, NodeProcess, SinkProcess};
use starling_sink::local_store::LocalStoreReader;

/// What the sink holds for one host's memfd_create records.
#[derive(Debug, Default, PartialEq)]
struct Arrived {
    /// memfd_create events whose name starts with the test's prefix.
    ours: u64,
    /// memfd_create events of any other name (another process's).
    others: u64,
    /// The sum of `count` over RATE_LIMITED losses of memfd_create.
    lost: u64,
}

fn arrived(reader: &LocalStoreReader, host: &str, prefix: &str) -> Option<Arrived> {
    reader.refresh().ok()?;
    let page = reader.after(0, 1_000_000).ok()?;
    let mut a = Arrived::default();
    for (_, e) in page.events {
        if e.header.as_ref().map(|h| h.host_id.as_str()) != Some(host) {
            continue;
        }
        match e.body {
            Some(Body::MemfdCreate(m)) if m.name.starts_with(prefix) => a.ours += 1,
            Some(Body::MemfdCreate(_)) => a.others += 1,
            Some(Body::EventLoss(l))
                if l.reason == Reason::RateLimited as i32 && l.kind == "memfd_create" =>
            {
                a.lost += l.count
            }
            _ => {}
        }
    }
    Some(a)
}

#[test]
fn rate_limited_records_arrive_at_the_sink_as_counted_loss_events() -> anyhow::Result<()> {
    assert!(
        is_root(),
        "this test loads BPF programs and must run as root"
    );
    let fleet = Fleet::new()?;
    let sink = SinkProcess::start(&fleet, "sink-1", None)?;
    // memfd_create: a kind this test makes and the host hardly ever does.
    let node = NodeProcess::start_with_sensor_config(
        &fleet,
        "loss-host",
        &[(sink.address(), sink.name.clone())],
        "[sensor.rate_limits]\nmemfd_create = { per_second = 1, burst = 1 }\n",
    )?;
    let made = 20;
    let prefix = format!("loss-{}-", std::process::id());
    for i in 0..made {
        let name = std::ffi::CString::new(format!("{prefix}{i}"))?;
        // SAFETY: a valid NUL-terminated name; the fd is closed at once.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
        anyhow::ensure!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: fd was just returned to us.
        unsafe { libc::close(fd) };
    }

    let reader = wait_for(Duration::from_secs(10), || {
        LocalStoreReader::open(&sink.store_path()).ok()
    })
    .expect("the sink's store");
    let counter =
        "starling_node_events_dropped_total{reason=\"rate_limited\",kind=\"memfd_create\"}";
    // Settled: every record of ours is accounted for at the sink, and the
    // sink's loss counts have caught up with the node's counter.
    let settled = wait_for(Duration::from_secs(30), || {
        let a = arrived(&reader, &node.host_id, &prefix)?;
        let dropped = node.metric(counter)? as u64;
        (a.ours + a.lost >= made && a.lost == dropped).then_some((a, dropped))
    });
    let last = arrived(&reader, &node.host_id, &prefix);
    let (a, dropped) = settled.unwrap_or_else(|| {
        panic!(
            "losses not accounted for at the sink: {last:?}, node counted {:?}\n{}",
            node.metric(counter),
            node.log()
        )
    });
    assert!(a.ours < made, "{} of {made} passed a 1/s limit", a.ours);
    assert!(dropped >= 1, "the node counted no drop");
    if a.others == 0 {
        // Only our records were made: each one arrived or was counted once.
        assert_eq!(a.ours + a.lost, made, "{a:?}");
    }
    Ok(())
}
