//! Only enrolled nodes get in, and hostile batches get an error without
//! disturbing anything else in flight.

use std::time::Duration;

use prost::Message;
use starling_mesh::identity::{Role, TlsFiles};
use starling_mesh::origin::HostKey;
use starling_proto::v1::batch_ack::Status;
use starling_proto::v1::{
    event::Body, Batch, BatchHeader, Compression, Event, EventHeader, ProcessExec,
};
use starling_sim::client::{host_key, send_on, signed_batch, Credentials, RawClient};
use starling_sim::{wait_for, Fleet, SinkProcess};
use starling_sink::local_store::LocalStoreReader;

fn files(fleet: &Fleet, cert: (std::path::PathBuf, std::path::PathBuf)) -> TlsFiles {
    TlsFiles {
        ca_cert: fleet.ca_cert(),
        cert: cert.0,
        key: cert.1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_admits_only_enrolled_nodes() -> anyhow::Result<()> {
    let fleet = Fleet::new()?;
    let sink = SinkProcess::start(&fleet, "sink-1", None)?;
    let addr = sink.address();

    // No client certificate at all.
    let anonymous = async {
        let c = RawClient::connect(
            &addr,
            "sink-1",
            Credentials::None {
                ca_cert: fleet.ca_cert(),
            },
        )
        .await?;
        c.probe().await
    }
    .await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate was served"
    );

    // A certificate from another CA, naming a real-looking node.
    let other = Fleet::new()?;
    let intruder = other.issue(Role::Node, "web-01")?;
    let foreign = async {
        let c = RawClient::connect(
            &addr,
            "sink-1",
            Credentials::Certificate(files(&fleet, intruder)),
        )
        .await?;
        c.probe().await
    }
    .await;
    assert!(
        foreign.is_err(),
        "a certificate from a foreign CA was accepted"
    );

    // An enrolled sink is not allowed to send batches as a node.
    let sink_cert = fleet.issue(Role::Sink, "sink-2")?;
    let wrong_role = async {
        let c = RawClient::connect(
            &addr,
            "sink-1",
            Credentials::Certificate(files(&fleet, sink_cert)),
        )
        .await?;
        c.probe().await
    }
    .await;
    assert!(
        wrong_role.is_err(),
        "a sink certificate was accepted as a node"
    );

    // An enrolled node is served (its empty batch is answered REJECTED).
    let node = fleet.issue(Role::Node, "web-01")?;
    let c = RawClient::connect(
        &addr,
        "sink-1",
        Credentials::Certificate(files(&fleet, node)),
    )
    .await?;
    let ack = c.send(b"").await?;
    assert_eq!(ack.status(), Status::Rejected);
    c.close().await;

    let refused = |reason: &str| {
        sink.metric(&format!(
            "starling_sink_connections_refused_total{{reason=\"{reason}\"}}"
        ))
        .unwrap_or(0.0)
    };
    assert!(
        refused("handshake") >= 2.0,
        "handshake refusals are counted"
    );
    assert!(refused("role") >= 1.0, "role refusals are counted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_cuts_off_a_node_when_its_certificate_is_revoked() -> anyhow::Result<()> {
    let fleet = Fleet::new()?;
    let sink = SinkProcess::start(&fleet, "sink-1", None)?;
    let addr = sink.address();
    let web01 = files(&fleet, fleet.issue(Role::Node, "web-01")?);
    let web02 = files(&fleet, fleet.issue(Role::Node, "web-02")?);
    let connect =
        |creds: TlsFiles| RawClient::connect(&addr, "sink-1", Credentials::Certificate(creds));

    let web01_key = host_key(&web01)?;
    let web02_key = host_key(&web02)?;
    let revoked = connect(web01.clone()).await?;
    let ack = revoked
        .send(&batch(&web01_key, "web-01", 1, 1..=3)?)
        .await?;
    assert_eq!(ack.status(), Status::Persisted);

    fleet.revoke("web-01")?;
    // The sink re-reads the list within seconds and closes the connection.
    let reason = tokio::time::timeout(Duration::from_secs(15), revoked.conn.closed())
        .await
        .map_err(|_| anyhow::anyhow!("the revoked node's connection stayed open"))?;
    assert!(
        matches!(&reason, quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == starling_mesh::trust::REVOKED_CLOSE_CODE.into()),
        "closed for another reason: {reason}"
    );
    let again = async { connect(web01).await?.probe().await }.await;
    assert!(again.is_err(), "a revoked node was served again");

    let other = connect(web02).await?;
    let ack = other.send(&batch(&web02_key, "web-02", 1, 1..=1)?).await?;
    assert_eq!(
        ack.status(),
        Status::Persisted,
        "an unrevoked node is served"
    );
    other.close().await;
    assert_eq!(
        sink.metric("starling_data_plane_revoked_closed_total"),
        Some(1.0)
    );
    assert!(
        sink.metric("starling_data_plane_revoked_refused_total{side=\"server\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
    Ok(())
}

fn exec_event(host: &str, seq: u64) -> Event {
    Event {
        header: Some(EventHeader {
            host_id: host.into(),
            seq,
            pid: 1000 + seq as u32,
            ..Default::default()
        }),
        body: Some(Body::ProcessExec(ProcessExec {
            filename: "/bin/true".into(),
            argv: vec!["true".into(), format!("valid-{seq}")],
            ..Default::default()
        })),
    }
}

/// A batch of exec events numbered `seqs`, signed by `key` for `host`.
fn batch(
    key: &HostKey,
    host: &str,
    id: u64,
    seqs: std::ops::RangeInclusive<u64>,
) -> anyhow::Result<Vec<u8>> {
    let events: Vec<Event> = seqs.map(|s| exec_event(host, s)).collect();
    signed_batch(key, host, id, &events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_batches_are_rejected_and_lose_nothing_else() -> anyhow::Result<()>
{
    let fleet = Fleet::new()?;
    let sink = SinkProcess::start(&fleet, "sink-1", None)?;
    let node = files(&fleet, fleet.issue(Role::Node, "fuzz-host")?);
    let key = host_key(&node)?;
    let client =
        RawClient::connect(&sink.address(), "sink-1", Credentials::Certificate(node)).await?;

    let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let oversized = vec![0x42u8; 5 * 1024 * 1024];
    let bomb = Batch {
        header: BatchHeader {
            host_id: "fuzz-host".into(),
            batch_id: 99,
            first_seq: 1,
            last_seq: 1,
            event_count: 1,
            list_len: u32::MAX,
            list_sha256: vec![0; 32],
            signed_at_unix_ms: starling_sim::client::unix_ms(),
            payload_sha256: vec![0; 32],
        }
        .encode_to_vec(),
        compression: Compression::Lz4 as i32,
        payload: vec![0xff; 64],
        ..Default::default()
    }
    .encode_to_vec();
    // Signed by the host, but its event's sequence number is 0.
    let bad_seq = batch(&key, "fuzz-host", 97, 0..=0)?;

    // Valid batches are interleaved with the hostile ones, all in flight at once.
    let valid: Vec<Vec<u8>> = (0..8)
        .map(|i| batch(&key, "fuzz-host", i + 1, (i * 10 + 1)..=(i * 10 + 10)))
        .collect::<anyhow::Result<_>>()?;
    let hostile = [garbage, oversized, bomb, bad_seq];
    let (valid_acks, hostile_acks) = tokio::join!(
        futures_join(&client, &valid),
        futures_join(&client, &hostile),
    );
    for (i, ack) in valid_acks.into_iter().enumerate() {
        let ack = ack?;
        assert_eq!(
            ack.status(),
            Status::Persisted,
            "valid batch {i}: {}",
            ack.detail
        );
        assert_eq!(ack.batch_id, i as u64 + 1);
    }
    for (i, ack) in hostile_acks.into_iter().enumerate() {
        let ack = ack?;
        assert_eq!(
            ack.status(),
            Status::Rejected,
            "hostile batch {i} was not rejected"
        );
        assert!(!ack.detail.is_empty(), "a rejection says why");
    }

    // Exactly the valid events were stored, and the sink is still serving.
    let reader = LocalStoreReader::open(&sink.store_path())?;
    let stored = wait_for(Duration::from_secs(10), || {
        reader.refresh().ok()?;
        let page = reader.after(0, 10_000).ok()?;
        (page.events.len() >= 80).then_some(page)
    })
    .expect("valid events stored");
    let mut seqs: Vec<u64> = stored
        .events
        .iter()
        .map(|(_, e)| e.header.as_ref().map_or(0, |h| h.seq))
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=80).collect::<Vec<u64>>());
    assert!(stored
        .events
        .iter()
        .all(|(_, e)| e.header.as_ref().is_some_and(|h| h.host_id == "fuzz-host")));
    let again = client.send(&batch(&key, "fuzz-host", 50, 81..=81)?).await?;
    assert_eq!(again.status(), Status::Persisted);
    client.close().await;
    Ok(())
}

/// Sends every batch on its own task, so all are in flight together, and
/// returns the acks in input order.
async fn futures_join(
    client: &RawClient,
    batches: &[Vec<u8>],
) -> Vec<anyhow::Result<starling_proto::v1::BatchAck>> {
    let tasks: Vec<_> = batches
        .iter()
        .map(|b| {
            let conn = client.conn.clone();
            let b = b.clone();
            tokio::spawn(async move { send_on(&conn, &b).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(
            t.await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("task failed: {e}"))),
        );
    }
    out
}
