//! The sink's Kafka writer survives a fatal producer error (an idempotent
//! producer fenced after timeouts never recovers by itself): the failing
//! batch is answered RETRY, the producer is replaced, and every event of a
//! resent batch arrives. Needs tansu (scripts/setup installs it).

use std::time::Duration;

use prost::Message;
use starling_proto::batch::{decode_batch, CheckedBatch, EventListBuilder};
use starling_proto::v1::{event::Body, Event, EventHeader, ProcessExec};
use starling_sim::kafka::KafkaReader;
use starling_sim::Broker;
use starling_sink::config::KafkaSection;
use starling_sink::kafka::KafkaWriter;

const TOPIC: &str = "fatal.recovery";

fn batch(seqs: std::ops::RangeInclusive<u64>) -> CheckedBatch {
    let mut b = EventListBuilder::default();
    for seq in seqs {
        let e = Event {
            header: Some(EventHeader {
                host_id: "h1".into(),
                seq,
                ..Default::default()
            }),
            body: Some(Body::ProcessExec(ProcessExec {
                filename: "/bin/true".into(),
                ..Default::default()
            })),
        };
        b.push_encoded(&e.encode_to_vec());
    }
    decode_batch(&b.finish("h1", 1)).expect("valid batch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_is_recovered_and_nothing_is_lost() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let writer = KafkaWriter::new(&KafkaSection {
        brokers: broker.bootstrap(),
        topic: TOPIC.into(),
        create_topic: true,
        partitions: 1,
        replication_factor: 1,
        delivery_timeout_ms: 10_000,
        properties: Default::default(),
    })
    .await?;

    writer.persist(&batch(1..=5)).await?;
    writer.simulate_fatal_error();
    let second = batch(6..=10);
    let failed = writer.persist(&second).await;
    assert!(failed.is_err(), "a dead producer cannot persist");
    // The node resends the batch it got RETRY for.
    writer.persist(&second).await?;

    let mut reader = KafkaReader::new(&broker.bootstrap(), TOPIC)?;
    let mut seqs = std::collections::BTreeSet::new();
    let all = tokio::task::block_in_place(|| {
        reader.poll_until(Duration::from_secs(30), |recs| {
            seqs = recs
                .iter()
                .filter_map(|r| r.event.header.as_ref().map(|h| h.seq))
                .collect();
            (1..=10).all(|s| seqs.contains(&s))
        })
    });
    assert!(all, "events missing after recovery: have {seqs:?}");
    Ok(())
}
