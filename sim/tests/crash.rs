//! Durability at the origin: killing the sink or the node with SIGKILL
//! loses no sequence number, and a restarted node never reuses one.
//! Needs root (BPF) and, for the sink test, tansu.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use prost::Message;
use starling_proto::v1::Event;
use starling_sim::kafka::{is_marked_exec, KafkaReader};
use starling_sim::{is_root, wait_for, Broker, ExecLoad, Fleet, NodeProcess, SinkProcess};
use starling_sink::local_store::LocalStoreReader;

const TOPIC: &str = "starling.events";

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
    // Each phase waits for the state it needs: events acknowledged before
    // the kill, events spooled while the sink is gone, and acknowledged
    // again after it is back.
    let acked = || node.metric("starling_node_events_acked_total");
    let flowing = wait_for(Duration::from_secs(30), || (acked()? >= 20.0).then_some(()));
    assert!(flowing.is_some(), "no events acknowledged\n{}", node.log());
    sink.kill9();
    let observed_at_kill = node
        .metric("starling_node_events_observed_total")
        .unwrap_or(0.0);
    let spooled_while_down = wait_for(Duration::from_secs(30), || {
        let disconnected = node.metric("starling_node_uplink_connected")? == 0.0;
        let observed = node.metric("starling_node_events_observed_total")?;
        (disconnected && observed >= observed_at_kill + 20.0).then_some(())
    });
    assert!(
        spooled_while_down.is_some(),
        "the node neither lost its sink nor kept spooling\n{}",
        node.log()
    );
    sink.restart()?;
    let acked_at_restart = acked().unwrap_or(0.0);
    let resumed = wait_for(Duration::from_secs(60), || {
        (acked()? >= acked_at_restart + 20.0).then_some(())
    });
    assert!(
        resumed.is_some(),
        "nothing acknowledged after the sink came back\nnode log:\n{}\nsink log:\n{}",
        node.log(),
        sink.log()
    );
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

/// Waits until the node has written to its spool every record the kernel
/// made before this call (the test's execs just before it).
///
/// The sensor reads the ring buffer in the order records were reserved, so
/// once the node has handled a record made after the execs, it has read
/// the execs too. That record is an unlink through `..` of an unwatched
/// file: the kernel leaves such a path to the node, which drops it and
/// counts it (`events_filtered_total{kind="file_unlink",by="node"}`). Then
/// the node's counters must show everything it read in the spool.
fn wait_spooled(node: &NodeProcess) {
    let series = "starling_node_events_filtered_total{kind=\"file_unlink\",by=\"node\"}";
    let before = node.metric(series).unwrap_or(0.0);
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("a")).expect("mkdir");
    std::fs::write(dir.path().join("b"), b"x").expect("write");
    std::fs::remove_file(dir.path().join("a/../b")).expect("unlink through ..");
    let spooled = wait_for(Duration::from_secs(20), || {
        (node.metric(series)? > before && node.spool_caught_up()?).then_some(())
    });
    assert!(
        spooled.is_some(),
        "node did not read and spool the execs\n{}",
        node.log()
    );
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

    exec_marked("first-life", 5)?;
    wait_spooled(&node);
    let last_first_life = node.last_seq().expect("node metrics");
    node.kill9();

    node.restart()?;
    exec_marked("second-life", 5)?;
    wait_spooled(&node);
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
    exec_marked("while-kafka-is-down", 5)?;
    wait_spooled(&node);
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
