//! Durability at the origin: killing the sink or the node with SIGKILL
//! loses no sequence number, and a restarted node never reuses one.
//! Needs root (BPF) and, for the sink test, tansu.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use starling_proto::v1::Event;
use starling_sim::kafka::{is_marked_exec, KafkaReader};
use starling_sim::{is_root, wait_for, Broker, Fleet, NodeProcess, SinkProcess};
use starling_sink::local_store::LocalStoreReader;

const TOPIC: &str = "starling.events";

/// Runs short processes in a loop until stopped: a steady stream of execs.
struct ExecLoad {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ExecLoad {
    fn start(marker: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let (s, c, m) = (stop.clone(), count.clone(), marker.to_owned());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(mut child) = Command::new("/bin/true").arg(&m).spawn() {
                    let _ = child.wait();
                    c.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            stop,
            count,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.count.load(Ordering::Relaxed)
    }
}

fn missing(seqs: &BTreeSet<u64>, last: u64) -> Vec<u64> {
    (1..=last).filter(|s| !seqs.contains(s)).take(20).collect()
}

#[test]
fn sink_killed_while_events_flow_loses_no_sequence_number() -> anyhow::Result<()> {
    assert!(
        is_root(),
        "this test loads BPF programs and must run as root"
    );
    let broker = Broker::start()?;
    let fleet = Fleet::new()?;
    let mut sink = SinkProcess::start(&fleet, "sink-1", Some((&broker.bootstrap(), TOPIC)))?;
    let node = NodeProcess::start(
        &fleet,
        "crash-sink-host",
        &[(sink.address(), sink.name.clone())],
        true,
    )?;

    let load = ExecLoad::start("sink-crash-load");
    std::thread::sleep(Duration::from_secs(2));
    sink.kill9();
    std::thread::sleep(Duration::from_secs(2));
    sink.restart()?;
    std::thread::sleep(Duration::from_secs(2));
    let execs = load.stop();
    assert!(execs > 50, "the load ran ({execs} execs)");
    let last = node.last_seq().expect("node metrics");

    let mut reader = KafkaReader::new(&broker.bootstrap(), TOPIC)?;
    let delivered = reader.wait_for_sequence(&node.host_id, last, Duration::from_secs(90));
    assert!(
        delivered.is_ok(),
        "sequence numbers missing from Kafka after a sink crash (last {last}): {:?}\nnode log:\n{}\nsink log:\n{}",
        delivered.err(),
        node.log(),
        sink.log()
    );
    assert!(
        node.log().contains("uplink connection lost"),
        "the node never lost its sink connection, so the crash was not exercised\n{}",
        node.log()
    );
    let host_seqs: Vec<u64> = reader
        .records
        .iter()
        .filter(|r| r.key == node.host_id)
        .filter_map(|r| r.event.header.as_ref().map(|h| h.seq))
        .collect();
    let distinct: BTreeSet<u64> = host_seqs.iter().copied().collect();
    eprintln!(
        "{last} sequence numbers delivered; {} duplicates around the crash",
        host_seqs.len() - distinct.len()
    );
    Ok(())
}

fn exec_marked(marker: &str, n: usize) -> anyhow::Result<()> {
    for i in 0..n {
        Command::new("/bin/true")
            .args([marker, &i.to_string()])
            .status()?;
    }
    Ok(())
}

/// Waits until the node has observed at least `n` more records than `before`,
/// then a little longer for the spool write to land.
fn wait_spooled(node: &NodeProcess, before: f64, n: usize) {
    let seen = wait_for(Duration::from_secs(20), || {
        let now = node.metric("starling_node_events_observed_total")?;
        (now >= before + n as f64).then_some(())
    });
    assert!(
        seen.is_some(),
        "node did not observe the execs\n{}",
        node.log()
    );
    std::thread::sleep(Duration::from_millis(500));
}

#[test]
fn node_killed_keeps_its_spool_and_never_reuses_a_sequence_number() -> anyhow::Result<()> {
    assert!(
        is_root(),
        "this test loads BPF programs and must run as root"
    );
    let fleet = Fleet::new()?;
    // The sink exists (credentials, port) but is down: everything spools.
    let mut sink = SinkProcess::create(&fleet, "sink-1", None)?;
    let sinks = [(sink.address(), sink.name.clone())];
    let mut node = NodeProcess::start(&fleet, "crash-node-host", &sinks, true)?;

    let before = node
        .metric("starling_node_events_observed_total")
        .unwrap_or(0.0);
    exec_marked("first-life", 5)?;
    wait_spooled(&node, before, 5);
    let last_first_life = node.last_seq().expect("node metrics");
    node.kill9();

    node.restart()?;
    let before = node
        .metric("starling_node_events_observed_total")
        .unwrap_or(0.0);
    exec_marked("second-life", 5)?;
    wait_spooled(&node, before, 5);
    node.kill9();

    sink.restart()?;
    node.restart()?;
    let reader = LocalStoreReader::open(&sink.store_path())?;
    let mut by_seq: BTreeMap<u64, Vec<Event>> = BTreeMap::new();
    let mut next = 0;
    let marker_seqs = |by_seq: &BTreeMap<u64, Vec<Event>>, marker: &str| -> Vec<u64> {
        by_seq
            .iter()
            .filter(|(_, evs)| is_marked_exec(&evs[0], marker))
            .map(|(s, _)| *s)
            .collect()
    };
    let done = wait_for(Duration::from_secs(60), || {
        reader.refresh().ok()?;
        let page = reader.after(next, 100_000).ok()?;
        next = page.last_arrival;
        for (_, e) in page.events {
            if let Some(h) = e.header.as_ref().filter(|h| h.host_id == node.host_id) {
                by_seq.entry(h.seq).or_default().push(e);
            }
        }
        let second = marker_seqs(&by_seq, "second-life");
        let ok = marker_seqs(&by_seq, "first-life").len() == 5
            && second.len() == 5
            && (1..=*second.iter().max()?).all(|s| by_seq.contains_key(&s));
        ok.then_some(())
    });
    let seqs: BTreeSet<u64> = by_seq.keys().copied().collect();
    assert!(
        done.is_some(),
        "spooled events did not all arrive after restarts (missing {:?})\nnode log:\n{}\nsink log:\n{}",
        missing(&seqs, seqs.last().copied().unwrap_or(0)),
        node.log(),
        sink.log()
    );

    let first = marker_seqs(&by_seq, "first-life");
    let second = marker_seqs(&by_seq, "second-life");
    assert!(first.iter().all(|s| *s <= last_first_life));
    assert!(
        second.iter().all(|s| *s > last_first_life),
        "the restarted node continued the sequence: first life ended at {last_first_life}, second life used {second:?}"
    );
    // No reuse: every copy of a sequence number is the same event.
    for (seq, copies) in &by_seq {
        let bytes = copies[0].encode_to_vec();
        assert!(
            copies.iter().all(|c| c.encode_to_vec() == bytes),
            "sequence number {seq} was used for different events"
        );
    }
    Ok(())
}

#[test]
fn kafka_unavailable_means_retry_and_nothing_is_lost() -> anyhow::Result<()> {
    assert!(
        is_root(),
        "this test loads BPF programs and must run as root"
    );
    let broker = Broker::start()?;
    let fleet = Fleet::new()?;
    let sink = SinkProcess::start(&fleet, "sink-1", Some((&broker.bootstrap(), TOPIC)))?;
    let node = NodeProcess::start(
        &fleet,
        "kafka-down-host",
        &[(sink.address(), sink.name.clone())],
        true,
    )?;

    broker.freeze();
    let before = node
        .metric("starling_node_events_observed_total")
        .unwrap_or(0.0);
    exec_marked("while-kafka-is-down", 5)?;
    wait_spooled(&node, before, 5);
    // The harness's sinks give up on a delivery after 10 s: the batch is
    // answered RETRY and must stay in the node's spool.
    let retried = wait_for(Duration::from_secs(40), || {
        let r = sink.metric("starling_sink_batches_total{status=\"RETRY\"}")?;
        (r >= 1.0).then_some(())
    });
    assert!(
        retried.is_some(),
        "the sink never answered RETRY\n{}",
        sink.log()
    );
    let spooled = node.metric("starling_node_spool_events").unwrap_or(0.0);
    assert!(
        spooled >= 5.0,
        "unpersisted events left the spool ({spooled} spooled)"
    );
    broker.thaw();

    let last = node.last_seq().expect("node metrics");
    let mut reader = KafkaReader::new(&broker.bootstrap(), TOPIC)?;
    let delivered = reader.wait_for_sequence(&node.host_id, last, Duration::from_secs(90));
    assert!(
        delivered.is_ok(),
        "sequence numbers missing after Kafka came back (last {last}): {:?}\nnode log:\n{}\nsink log:\n{}",
        delivered.err(),
        node.log(),
        sink.log()
    );
    let marked = reader
        .records
        .iter()
        .filter(|r| is_marked_exec(&r.event, "while-kafka-is-down"))
        .count();
    assert!(marked >= 5, "the events from the outage arrived ({marked})");
    Ok(())
}

#[test]
fn a_node_stopped_with_sigterm_exits_cleanly_and_keeps_what_it_captured() -> anyhow::Result<()> {
    assert!(
        is_root(),
        "this test loads BPF programs and must run as root"
    );
    let fleet = Fleet::new()?;
    let mut sink = SinkProcess::create(&fleet, "sink-1", None)?;
    let sinks = [(sink.address(), sink.name.clone())];
    let mut node = NodeProcess::start(&fleet, "sigterm-host", &sinks, true)?;
    exec_marked("before-sigterm", 5)?;
    let status = node.terminate()?;
    assert!(
        status.success(),
        "node exited with {status}\n{}",
        node.log()
    );

    sink.restart()?;
    node.restart()?;
    let reader = LocalStoreReader::open(&sink.store_path())?;
    let arrived = wait_for(Duration::from_secs(30), || {
        reader.refresh().ok()?;
        let page = reader.after(0, 100_000).ok()?;
        let n = page
            .events
            .iter()
            .filter(|(_, e)| is_marked_exec(e, "before-sigterm"))
            .count();
        (n == 5).then_some(())
    });
    assert!(
        arrived.is_some(),
        "events captured before SIGTERM were lost\n{}",
        node.log()
    );
    Ok(())
}
