//! The sink survives a fatal producer error (an idempotent producer fenced
//! after timeouts never recovers by itself): the batch that hit it is
//! answered RETRY on the wire, the producer is replaced and counted, and
//! the node's resend arrives. The sink runs in this process (its real
//! ingress and Kafka writer on a real QUIC endpoint), because the fault is
//! injected with librdkafka's test hook on its producer; the node is a
//! real process. Needs tansu (scripts/setup installs it).

use std::sync::Arc;
use std::time::Duration;

use starling_mesh::identity::{Role, TlsFiles};
use starling_mesh::trust::DataPlaneTrust;
use starling_node::spool::{DropPolicy, Spool};
use starling_sim::kafka::KafkaReader;
use starling_sim::{local_metric, sample_exec_event, wait_for, Broker, Fleet, NodeProcess};
use starling_sink::backend::Backend;
use starling_sink::config::{KafkaSection, OriginSection};
use starling_sink::ingress::{self, Ingress};
use starling_sink::kafka::{KafkaWriter, PRODUCER_RESTARTS};
use tokio::sync::watch;

const TOPIC: &str = "fatal.recovery";
const HOST: &str = "recovery-host";
const EVENTS: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_is_answered_retry_and_recovered() -> anyhow::Result<()> {
    // Installs this process's recorder before the sink's first metric.
    assert_eq!(local_metric(PRODUCER_RESTARTS), None);
    let broker = Broker::start()?;
    let fleet = Fleet::new()?;

    // The sink, in process.
    let (cert, key) = fleet.issue(Role::Sink, "sink-1")?;
    let trust = DataPlaneTrust::load(
        &TlsFiles {
            ca_cert: fleet.ca_cert(),
            cert,
            key,
        },
        None,
    )?;
    let mut server = trust.server_config()?;
    server.transport_config(Arc::new(ingress::transport(64)));
    let writer = KafkaWriter::new(&KafkaSection {
        brokers: broker.bootstrap(),
        topic: TOPIC.into(),
        create_topic: true,
        partitions: 1,
        replication_factor: 1,
        delivery_timeout_ms: 10_000,
        routing_headers: false,
        origin_proof: false,
        properties: Default::default(),
    })
    .await?;
    let backend = Arc::new(Backend::Kafka(writer));
    let sink = Ingress::new(backend.clone(), 16, trust, &OriginSection::default())?;
    let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse()?)?;
    let address = endpoint.local_addr()?.to_string();
    let (stop, stop_rx) = watch::channel(false);
    let serving = {
        let endpoint = endpoint.clone();
        tokio::spawn(async move { sink.serve(&endpoint, stop_rx, Duration::from_secs(5)).await })
    };

    // The node's events wait in its spool before it starts.
    let spool_dir = fleet.path().join(HOST).join("data/spool");
    std::fs::create_dir_all(&spool_dir)?;
    {
        let spool = Spool::open(&spool_dir, HOST, u64::MAX, DropPolicy::DropNewest, false)?;
        spool.append((0..EVENTS).map(sample_exec_event).collect())?;
    }
    // The producer dies before the first batch arrives.
    let Backend::Kafka(writer) = &*backend else {
        unreachable!()
    };
    writer.simulate_fatal_error();

    let node = NodeProcess::start(&fleet, HOST, &[(address, "sink-1".into())], false)?;
    let acked = tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(60), || {
            let n = node.metric("starling_node_events_acked_total")?;
            (n as u64 >= EVENTS).then_some(())
        })
    });
    assert!(
        acked.is_some(),
        "the node's events were never acked\n{}",
        node.log()
    );
    let retried = node
        .metric("starling_node_batches_total{result=\"retry\"}")
        .unwrap_or(0.0);
    assert!(
        retried >= 1.0,
        "the batch that hit the dead producer was answered RETRY on the wire"
    );
    assert_eq!(
        local_metric(PRODUCER_RESTARTS),
        Some(1.0),
        "one producer replaced, and counted"
    );

    let mut reader = KafkaReader::new(&broker.bootstrap(), TOPIC)?;
    let all = tokio::task::block_in_place(|| {
        reader.wait_for_sequence(HOST, EVENTS, Duration::from_secs(30))
    });
    assert_eq!(all, Ok(()), "sequence numbers missing from Kafka");
    let _ = stop.send(true);
    let _ = serving.await;
    Ok(())
}
