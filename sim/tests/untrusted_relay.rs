//! Aggregators are untrusted relays (DESIGN.md, "Data-plane trust"): a
//! real sink files events only under the host that signed them, whoever
//! relays them, and a real node uplink finds out a relay that alters,
//! forges receipts, drops or replays, and still delivers every event once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use starling_mesh::identity::{Role, TlsFiles};
use starling_mesh::origin::{check_receipt, sha256, AckProof, CredentialCache};
use starling_mesh::trust::DataPlaneTrust;
use starling_node::config::UplinkSection;
use starling_node::spool::{DropPolicy, Spool};
use starling_node::uplink::{Target, Targets, Uplink};
use starling_proto::batch::{open_batch, EventListBuilder};
use starling_proto::v1::batch_ack::Status;
use starling_proto::v1::{Batch, BatchAck, Event, RejectReason};
use starling_sim::client::{host_key, signed_batch, unix_ms, Credentials, RawClient};
use starling_sim::hostile_relay::{HostileRelay, Misbehaviour};
use starling_sim::{local_metric, sample_exec_event, wait_for, Fleet, SinkProcess};
use starling_sink::local_store::LocalStoreReader;
use tokio::sync::{mpsc, watch};

fn files(fleet: &Fleet, name: &str) -> anyhow::Result<TlsFiles> {
    let (cert, key) = fleet.issue(Role::Node, name)?;
    Ok(TlsFiles {
        ca_cert: fleet.ca_cert(),
        cert,
        key,
    })
}

/// Exec events of `host` numbered `seqs`.
fn events(host: &str, seqs: std::ops::RangeInclusive<u64>) -> Vec<Event> {
    seqs.map(|seq| {
        let mut e = sample_exec_event(seq);
        if let Some(h) = e.header.as_mut() {
            h.host_id = host.into();
            h.seq = seq;
        }
        e
    })
    .collect()
}

/// Every stored event's (host, seq), with how often it was stored.
fn stored(sink: &SinkProcess) -> anyhow::Result<BTreeMap<(String, u64), usize>> {
    let reader = LocalStoreReader::open(&sink.store_path())?;
    let page = reader.after(0, 1_000_000)?;
    let mut out = BTreeMap::new();
    for (_, e) in page.events {
        let h = e.header.unwrap_or_default();
        *out.entry((h.host_id, h.seq)).or_insert(0) += 1;
    }
    Ok(out)
}

/// The receipt of `ack`, checked against the batch `sent` as a node would
/// check it; panics unless a sink signed it for that batch.
fn receipt(
    cache: &CredentialCache,
    ack: &BatchAck,
    sent: &[u8],
) -> starling_proto::v1::BatchReceipt {
    let opened = open_batch(sent).expect("the test's own batch opens");
    let digest = sha256(opened.header_bytes());
    match check_receipt(
        cache,
        ack,
        &opened.header.host_id,
        &digest,
        std::time::SystemTime::now(),
    ) {
        AckProof::Signed(r) => r,
        other => panic!("the sink's answer carries no valid receipt: {other:?}"),
    }
}

fn refused(sink: &SinkProcess, reason: &str) -> f64 {
    sink.metric(&format!(
        "starling_sink_batches_refused_total{{reason=\"{reason}\"}}"
    ))
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_files_events_only_under_the_host_that_signed_them() -> anyhow::Result<()> {
    let fleet = Fleet::new()?;
    let sink = SinkProcess::start(&fleet, "sink-1", None)?;
    let mallory = files(&fleet, "mallory")?;
    let victim = files(&fleet, "victim")?;
    let (mallory_key, victim_key) = (host_key(&mallory)?, host_key(&victim)?);
    let receipts = CredentialCache::new(DataPlaneTrust::load(&mallory, None)?, 16);
    // Mallory is enrolled; its connection is what an aggregator's is.
    let conn = RawClient::connect(
        &sink.address(),
        "sink-1",
        Credentials::Certificate(mallory.clone()),
    )
    .await?;

    // Signed by mallory, for the victim.
    let forged = signed_batch(&mallory_key, "victim", 1, &events("victim", 1..=3))?;
    let ack = conn.send(&forged).await?;
    assert_eq!(ack.status(), Status::Rejected, "{}", ack.detail);
    let r = receipt(&receipts, &ack, &forged);
    assert_eq!(r.reason(), RejectReason::RejectOriginMismatch);

    // Signed by mallory, presented with the victim's certificate.
    let mut swapped = Batch::decode(forged.as_slice())?;
    swapped.certificate = victim_key.certificate().to_vec();
    let swapped = swapped.encode_to_vec();
    let ack = conn.send(&swapped).await?;
    assert_eq!(ack.status(), Status::Rejected, "{}", ack.detail);
    assert_eq!(
        receipt(&receipts, &ack, &swapped).reason(),
        RejectReason::RejectBadSignature
    );

    // The victim's own batch, relayed on mallory's connection: accepted.
    let genuine = signed_batch(&victim_key, "victim", 2, &events("victim", 1..=3))?;
    let ack = conn.send(&genuine).await?;
    assert_eq!(ack.status(), Status::Persisted, "{}", ack.detail);
    assert!(!receipt(&receipts, &ack, &genuine).duplicate);
    // The same bytes again: recognised, answered, not written twice.
    let ack = conn.send(&genuine).await?;
    assert_eq!(ack.status(), Status::Persisted, "{}", ack.detail);
    assert!(receipt(&receipts, &ack, &genuine).duplicate);

    // Signed an hour ago: refused, with the sink's time to sign with.
    let mut list = EventListBuilder::default();
    for e in events("victim", 4..=4) {
        list.push_encoded(4, &e.encode_to_vec());
    }
    let stale = victim_key
        .seal(list.finish("victim", 3, unix_ms() - 3_600_000))?
        .bytes;
    let ack = conn.send(&stale).await?;
    assert_eq!(ack.status(), Status::Rejected, "{}", ack.detail);
    let r = receipt(&receipts, &ack, &stale);
    assert_eq!(r.reason(), RejectReason::RejectClock);
    assert!(r.sink_time_unix_ms.abs_diff(unix_ms()) < 60_000);

    // Once the victim's revocation is in force at the sink, batches it
    // signed are refused, whoever relays them.
    fleet.revoke("victim")?;
    let in_force = tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(15), || {
            sink.log()
                .contains("data plane: revocation list in force")
                .then_some(())
        })
    });
    assert!(
        in_force.is_some(),
        "the sink never took the list\n{}",
        sink.log()
    );
    let late = signed_batch(&victim_key, "victim", 11, &events("victim", 5..=5))?;
    let ack = conn.send(&late).await?;
    assert_eq!(ack.status(), Status::Rejected, "{}", ack.detail);
    assert_eq!(
        receipt(&receipts, &ack, &late).reason(),
        RejectReason::RejectOriginUntrusted
    );
    assert!(ack.detail.contains("revoked"), "{}", ack.detail);

    let have = stored(&sink)?;
    let expected: BTreeMap<(String, u64), usize> =
        (1..=3).map(|s| (("victim".to_string(), s), 1)).collect();
    assert_eq!(have, expected, "only the victim's own events, once each");
    assert_eq!(refused(&sink, "origin_mismatch"), 1.0);
    assert_eq!(refused(&sink, "bad_signature"), 1.0);
    assert_eq!(refused(&sink, "clock"), 1.0);
    assert!(refused(&sink, "revoked") >= 1.0);
    assert_eq!(
        sink.metric("starling_sink_batches_replayed_total"),
        Some(1.0)
    );
    conn.close().await;
    Ok(())
}

const HOST: &str = "web-01";
const EVENTS: u64 = 300;

/// A real node uplink (in this process, with a real spool) ships through
/// a relay that misbehaves as `how` says; the test stands in for the
/// mesh's choice of target: it offers the relay first, and the sink once
/// the uplink reports the relay unusable. Returns the sink, the relay,
/// and whether the uplink left the relay.
async fn ship_past(how: Misbehaviour) -> anyhow::Result<(SinkProcess, HostileRelay, bool)> {
    // Install this process's metrics recorder before the uplink counts.
    let _ = local_metric("starling_node_uplink_path_faults_total");
    let fleet = Fleet::new()?;
    let sink = SinkProcess::start(&fleet, "sink-1", None)?;
    let relay = HostileRelay::start(
        &files(&fleet, "mallory")?,
        sink.address().parse()?,
        "sink-1",
        how,
    )
    .await?;
    let node = files(&fleet, HOST)?;
    let spool_dir = fleet.path().join("node-spool");
    let spool = Arc::new(Spool::open(
        &spool_dir,
        HOST,
        u64::MAX,
        DropPolicy::DropNewest,
        false,
    )?);
    spool.append((1..=EVENTS).map(sample_exec_event).collect())?;
    let uplink = Uplink {
        host_id: HOST.into(),
        config: UplinkSection {
            max_batch_events: 50,
            ack_timeout_secs: 2,
            ..Default::default()
        },
        spool: spool.clone(),
        trust: DataPlaneTrust::load(&node, None)?,
    };
    let (target, current) = watch::channel(Some(Target {
        address: relay.address.to_string(),
        server_name: "mallory".into(),
        role: Role::Node,
    }));
    let (unavailable, mut reports) = mpsc::channel(16);
    let (_spooled, spooled_rx) = watch::channel(spool.stats().next_seq);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(uplink.run(
        Targets::Mesh {
            current,
            unavailable,
        },
        spooled_rx,
        stop_rx,
    ));

    let drained = || spool.stats().events == 0;
    let mut left = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !drained() && tokio::time::Instant::now() < deadline {
        tokio::select! {
            Some(name) = reports.recv() => {
                if name == "mallory" && !left {
                    left = true;
                    target.send_replace(Some(Target {
                        address: sink.address(),
                        server_name: "sink-1".into(),
                        role: Role::Sink,
                    }));
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    assert!(
        drained(),
        "{} events still spooled after 60 s ({how:?}, left the relay: {left})",
        spool.stats().events
    );
    let _ = stop.send(true);
    task.await??;
    let have = stored(&sink)?;
    assert_eq!(have.len() as u64, EVENTS, "every event arrived");
    assert!(
        have.iter().all(|((h, _), n)| h == HOST && *n == 1),
        "each event once, under its own host"
    );
    assert!(relay.batches() >= 1, "the relay was used");
    Ok((sink, relay, left))
}

fn path_faults(kind: &str) -> f64 {
    local_metric(&format!(
        "starling_node_uplink_path_faults_total{{kind=\"{kind}\"}}"
    ))
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_alters_batches_is_left_and_nothing_altered_is_stored() -> anyhow::Result<()> {
    let (sink, relay, left) = ship_past(Misbehaviour::Alter).await?;
    assert!(left, "the uplink left the relay");
    assert!(path_faults("altered") >= 1.0);
    assert!(refused(&sink, "payload_mismatch") >= 1.0);
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_forges_receipts_is_left_and_no_event_is_deleted_on_its_word(
) -> anyhow::Result<()> {
    let (_sink, relay, left) = ship_past(Misbehaviour::ForgeReceipt).await?;
    assert!(left, "the uplink left the relay");
    assert!(path_faults("forged_receipt") >= 1.0);
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_drops_batches_is_left() -> anyhow::Result<()> {
    let (_sink, relay, left) = ship_past(Misbehaviour::Drop).await?;
    assert!(left, "the uplink left the relay");
    assert!(path_faults("unproven") >= 1.0);
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_replays_batches_gets_nothing_stored_twice() -> anyhow::Result<()> {
    let (sink, relay, left) = ship_past(Misbehaviour::Replay).await?;
    assert!(!left, "an honest-looking relay is kept");
    let replayed = sink
        .metric("starling_sink_batches_replayed_total")
        .unwrap_or(0.0);
    assert!(
        replayed >= relay.batches() as f64 - 1.0 && replayed >= 1.0,
        "every replay recognised ({replayed} of {})",
        relay.batches()
    );
    relay.stop().await;
    Ok(())
}
