//! Consumers can check the origin's signature themselves: with
//! `kafka.origin_proof`, an independent checker (tests/verify_origin.py:
//! Python's confluent-kafka and cryptography, no Starling code) rebuilds
//! every batch from the events in Kafka and verifies it, and finds an event
//! injected into the topic with a copied proof. Needs tansu and the Python
//! packages (scripts/setup installs them).

use std::time::Duration;

use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use starling_node::spool::{DropPolicy, Spool};
use starling_proto::v1::event::Body;
use starling_sim::kafka::KafkaReader;
use starling_sim::{sample_exec_event, wait_for, Broker, Fleet, NodeProcess, SinkProcess};

const TOPIC: &str = "origin.proof";
const HOST: &str = "origin-host";
const EVENTS: u64 = 5000;

#[test]
fn an_independent_consumer_verifies_every_event_and_finds_an_injected_one() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let fleet = Fleet::new()?;
    let sink = SinkProcess::start_with_kafka_config(
        &fleet,
        "sink-1",
        (&broker.bootstrap(), TOPIC),
        "origin_proof = true\nrouting_headers = true",
    )?;
    let spool_dir = fleet.path().join(HOST).join("data/spool");
    std::fs::create_dir_all(&spool_dir)?;
    {
        let spool = Spool::open(&spool_dir, HOST, u64::MAX, DropPolicy::DropNewest, false)?;
        spool.append((0..EVENTS).map(sample_exec_event).collect())?;
    }
    let node = NodeProcess::start(&fleet, HOST, &[(sink.address(), sink.name.clone())], false)?;
    let acked = wait_for(Duration::from_secs(60), || {
        let n = node.metric("starling_node_events_acked_total")?;
        (n as u64 >= EVENTS).then_some(())
    });
    assert!(acked.is_some(), "events not acked\n{}", node.log());

    // Someone with write access to the topic injects an event for the
    // host, carrying the proof headers of a genuine one.
    let mut reader = KafkaReader::new(&broker.bootstrap(), TOPIC)?;
    reader
        .wait_for_sequence(HOST, EVENTS, Duration::from_secs(30))
        .map_err(|missing| anyhow::anyhow!("missing from Kafka: {missing:?}"))?;
    let genuine = reader.records[10].clone();
    let genuine_seq = genuine.event.header.as_ref().map_or(0, |h| h.seq);
    assert_eq!(
        genuine.header("starling-seq"),
        Some(genuine_seq.to_string().as_str()),
        "kafka.routing_headers writes the sequence number"
    );
    assert_eq!(genuine.header("starling-kind"), Some("process_exec"));
    let mut fake = genuine.event.clone();
    if let Some(Body::ProcessExec(x)) = fake.body.as_mut() {
        x.argv = vec!["curl".into(), "http://harmless.invalid/".into()];
    }
    let mut headers = OwnedHeaders::new();
    for (k, v) in &genuine.headers {
        headers = headers.insert(Header {
            key: k,
            value: Some(v.as_slice()),
        });
    }
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()?;
    let payload = fake.encode_to_vec();
    producer
        .send(
            BaseRecord::to(TOPIC)
                .key(HOST)
                .payload(&payload)
                .headers(headers),
        )
        .map_err(|(e, _)| e)?;
    producer.flush(Duration::from_secs(10))?;

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/verify_origin.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args(["--bootstrap", &broker.bootstrap(), "--topic", TOPIC])
        .args(["--expect", &(EVENTS + 1).to_string(), "--timeout", "60"])
        .output()?;
    assert!(
        out.status.success(),
        "the checker failed (scripts/setup installs confluent-kafka and cryptography):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let failures: Vec<String> = result["failures"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(result["messages"], EVENTS + 1, "{result}");
    assert_eq!(
        result["verified_events"].as_u64().unwrap_or(0)
            + result["incomplete"].as_u64().unwrap_or(0),
        EVENTS,
        "every genuine event verified: {result}"
    );
    assert!(result["batches"].as_u64().unwrap_or(0) >= 3, "{result}");
    assert_eq!(
        failures.len(),
        1,
        "only the injected event fails: {failures:?}"
    );
    assert!(
        failures[0].contains(&format!("seq {genuine_seq} ")),
        "the failure names the injected event: {failures:?}"
    );
    Ok(())
}
