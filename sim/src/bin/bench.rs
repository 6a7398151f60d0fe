//! `starling-bench`: prints Starling's single-host throughput from the spool
//! to Kafka beside the raw producer ceiling measured the same way against
//! the same broker. Figures only; nothing here asserts on speed.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use starling_node::spool::{DropPolicy, Spool};
use starling_sim::{sample_exec_event, wait_for, Broker, Fleet, NodeProcess, SinkProcess};

/// Single-host throughput: spooled events -> sink -> Kafka, against the raw
/// librdkafka producer on the same broker.
#[derive(Debug, Parser)]
struct Args {
    /// Events per run.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
}

/// Partitions of both topics (the harness's sinks create theirs with 3).
const PARTITIONS: i32 = 3;

const HOST: &str = "bench-host";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new()?;
    let broker = Broker::start()?;
    rt.block_on(create_topic(&broker.bootstrap(), "bench.raw", PARTITIONS))?;

    // Same payloads (encoded with host id and sequence), same producer settings.
    let payloads: Vec<Vec<u8>> = (0..args.events)
        .map(|i| {
            let mut e = sample_exec_event(i);
            if let Some(h) = e.header.as_mut() {
                h.host_id = HOST.into();
                h.seq = i + 1;
            }
            prost::Message::encode_to_vec(&e)
        })
        .collect();
    let avg = payloads.iter().map(Vec::len).sum::<usize>() / payloads.len().max(1);
    let raw = raw_producer(&broker.bootstrap(), "bench.raw", &payloads)?;

    let starling = spool_to_kafka(&broker, args.events)?;
    println!("single-host throughput, {} events of {avg} bytes, {} partitions, tansu (memory storage) on loopback", args.events, PARTITIONS);
    println!(
        "  raw librdkafka producer (idempotent, acks=all, lz4)  {:>10.0} events/s",
        raw
    );
    println!(
        "  starling spool -> QUIC -> sink -> Kafka (PERSISTED)   {:>10.0} events/s",
        starling
    );
    println!(
        "  ratio                                                   {:>9.0}%",
        100.0 * starling / raw
    );
    Ok(())
}

async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    admin.create_topics([&t], &AdminOptions::new()).await?;
    Ok(())
}

fn raw_producer(bootstrap: &str, topic: &str, payloads: &[Vec<u8>]) -> anyhow::Result<f64> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .create()?;
    let start = Instant::now();
    for p in payloads {
        let mut rec = BaseRecord::to(topic).key(HOST).payload(p);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .context("flushing the raw producer")?;
    Ok(payloads.len() as f64 / start.elapsed().as_secs_f64())
}

fn spool_to_kafka(broker: &Broker, events: u64) -> anyhow::Result<f64> {
    let fleet = Fleet::new()?;
    let topic = "starling.events";
    let sink = SinkProcess::start(&fleet, "bench-sink", Some((&broker.bootstrap(), topic)))?;
    // Fill the node's spool before it starts, so the figure is shipping only.
    let spool_dir = fleet.path().join(HOST).join("data/spool");
    std::fs::create_dir_all(&spool_dir)?;
    {
        let spool = Spool::open(&spool_dir, HOST, u64::MAX, DropPolicy::DropNewest, false)?;
        let chunk = 10_000;
        let mut i = 0;
        while i < events {
            let n = chunk.min(events - i);
            spool.append((i..i + n).map(sample_exec_event).collect())?;
            i += n;
        }
    }
    let start = Instant::now();
    let node = NodeProcess::start(&fleet, HOST, &[(sink.address(), sink.name.clone())], false)?;
    let done = wait_for(Duration::from_secs(600), || {
        let acked = node.metric("starling_node_events_acked_total")?;
        (acked as u64 >= events).then_some(())
    });
    let secs = start.elapsed().as_secs_f64();
    done.with_context(|| format!("node did not drain its spool\n{}", node.log()))?;
    Ok(events as f64 / secs)
}
