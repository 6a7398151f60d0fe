//! `starling-bench`: prints Starling's single-host throughput from the spool
//! to Kafka beside the raw producer ceiling measured the same way against
//! the same broker, with the CPU each used per event; and what origin
//! signatures cost per event at the node and at the sink. Figures only;
//! nothing here asserts on speed.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use starling_node::spool::{DropPolicy, Spool};
use starling_sim::process::ProcessUsage;
use starling_sim::{sample_exec_event, wait_for, Broker, Fleet, NodeProcess, SinkProcess};

mod signing;

// The sink's allocator, so that the raw producer pays for its messages what
// the sink pays (librdkafka's C allocations included).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Single-host throughput: spooled events -> sink -> Kafka, against the raw
/// librdkafka producer on the same broker.
#[derive(Debug, Parser)]
struct Args {
    /// Events per run.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// What to measure: `throughput` (spool to Kafka beside the raw
    /// producer), `signing` (origin signatures and receipts per event).
    #[arg(long, value_delimiter = ',', default_values_t = [String::from("throughput"), String::from("signing")])]
    phases: Vec<String>,
    /// Rounds of the throughput runs (1..=20). Each round runs everything
    /// once; rows show the median, and each share is the median of the
    /// rounds' own (this VM's figures vary by about a tenth between runs).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
}

/// Partitions of both topics (the harness's sinks create theirs with 3).
const PARTITIONS: i32 = 3;

const HOST: &str = "bench-host";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for p in &args.phases {
        if !["throughput", "signing"].contains(&p.as_str()) {
            anyhow::bail!("unknown phase {p:?} (throughput, signing)");
        }
    }
    if args.phases.iter().any(|p| p == "throughput") {
        throughput(&args)?;
    }
    if args.phases.iter().any(|p| p == "signing") {
        signing::run()?;
    }
    Ok(())
}

fn throughput(args: &Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
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
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        eprintln!("round {round} of {}", args.rounds);
        // A broker of its own, so a round does not pay for the messages
        // of the rounds before it (tansu keeps them in memory).
        let broker = Broker::start()?;
        let bootstrap = broker.bootstrap();
        for topic in ["bench.raw", "bench.raw-origin", "bench.raw-routing"] {
            rt.block_on(create_topic(&bootstrap, topic, PARTITIONS))?;
        }
        rounds.push(Round {
            raw: raw_producer(&bootstrap, "bench.raw", &payloads, Headers::None)?,
            raw_origin: raw_producer(&bootstrap, "bench.raw-origin", &payloads, Headers::Origin)?,
            raw_routing: raw_producer(
                &bootstrap,
                "bench.raw-routing",
                &payloads,
                Headers::Routing,
            )?,
            starling: spool_to_kafka(&broker, args.events, "starling.events", "")?,
            routing: spool_to_kafka(
                &broker,
                args.events,
                "starling.events-routing",
                "routing_headers = true",
            )?,
        });
    }
    drop(payloads);

    println!(
        "single-host throughput, {} events of {avg} bytes, {} partitions, tansu (memory storage) on loopback; medians of {} rounds",
        args.events,
        PARTITIONS,
        rounds.len()
    );
    println!(
        "  {:<52} {:>10} {:>13} {:>16}",
        "", "events/s", "CPU-s", "events/CPU-s"
    );
    let row = |name: &str, run: fn(&Round) -> &Run| {
        let per_sec = median(rounds.iter().map(|r| run(r).events_per_sec()));
        let cpu = median(rounds.iter().map(|r| run(r).cpu_secs));
        let per_cpu = median(rounds.iter().map(|r| run(r).events_per_cpu_sec()));
        println!("  {name:<52} {per_sec:>10.0} {cpu:>13.2} {per_cpu:>16.0}")
    };
    row("raw librdkafka producer (idempotent, acks=all, lz4)", |r| {
        &r.raw
    });
    row("  the same, with the sink's origin header", |r| {
        &r.raw_origin
    });
    row("  the same, with the five of routing_headers", |r| {
        &r.raw_routing
    });
    row("starling sink (QUIC in, checks, Kafka PERSISTED)", |r| {
        &r.starling.sink
    });
    row("starling node (spool, sign, QUIC out)", |r| {
        &r.starling.node
    });
    row("starling sink with kafka.routing_headers", |r| {
        &r.routing.sink
    });
    // Each share is taken within a round (the sink against the raw
    // producer of the same run), then the median over the rounds.
    let share = |sink: fn(&Round) -> &Run, raw: fn(&Round) -> &Run| {
        let each: Vec<f64> = rounds
            .iter()
            .map(|r| 100.0 * sink(r).events_per_cpu_sec() / raw(r).events_per_cpu_sec())
            .collect();
        let listed: Vec<String> = each.iter().map(|p| format!("{p:.0}")).collect();
        (median(each.iter().copied()), listed.join(", "))
    };
    let (raw, each) = share(|r| &r.starling.sink, |r| &r.raw);
    let (same, _) = share(|r| &r.starling.sink, |r| &r.raw_origin);
    println!(
        "  sink events per CPU-second: {raw:.0}% of the raw producer's (goal: 80%; rounds: {each}), {same:.0}% of the raw producer's with the same header"
    );
    let (raw, _) = share(|r| &r.routing.sink, |r| &r.raw);
    let (same, _) = share(|r| &r.routing.sink, |r| &r.raw_routing);
    println!(
        "  with kafka.routing_headers: {raw:.0}% of the raw producer's, {same:.0}% of the raw producer's with the same headers"
    );
    let end_to_end = median(
        rounds
            .iter()
            .map(|r| 100.0 * r.starling.sink.events_per_sec() / r.raw.events_per_sec()),
    );
    println!("  end to end: {end_to_end:.0}% of the raw producer's events/s");
    Ok(())
}

/// Everything measured once.
struct Round {
    raw: Run,
    raw_origin: Run,
    raw_routing: Run,
    starling: StarlingRun,
    routing: StarlingRun,
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Events moved, the wall time it took and the CPU one process used.
struct Run {
    events: u64,
    secs: f64,
    cpu_secs: f64,
}

impl Run {
    fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.secs
    }
    fn events_per_cpu_sec(&self) -> f64 {
        self.events as f64 / self.cpu_secs.max(1e-9)
    }
}

/// CPU seconds (user + system) of process `pid` so far.
fn cpu_of(pid: u32) -> anyhow::Result<f64> {
    let u = ProcessUsage::read(pid)?;
    Ok(u.user + u.system)
}

/// Both ends of the Starling run.
struct StarlingRun {
    sink: Run,
    node: Run,
}

async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    admin.create_topics([&t], &AdminOptions::new()).await?;
    Ok(())
}

/// The Kafka headers a raw producer run writes, as the sink would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Headers {
    None,
    /// The origin fingerprint, as the sink writes by default.
    Origin,
    /// The origin and the four of `kafka.routing_headers`.
    Routing,
}

/// Produces `payloads` with librdkafka directly, with the sink's settings
/// and the sink's `headers`.
fn raw_producer(
    bootstrap: &str,
    topic: &str,
    payloads: &[Vec<u8>],
    headers: Headers,
) -> anyhow::Result<Run> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .create()?;
    let cpu0 = cpu_of(std::process::id())?;
    let start = Instant::now();
    let fingerprint = "f".repeat(64);
    let mut seq = String::new();
    for (i, p) in payloads.iter().enumerate() {
        let mut rec = BaseRecord::to(topic).key(HOST).payload(p);
        if headers != Headers::None {
            let mut h = OwnedHeaders::new_with_capacity(5).insert(Header {
                key: "starling-origin",
                value: Some(fingerprint.as_str()),
            });
            if headers == Headers::Routing {
                use std::fmt::Write;
                seq.clear();
                let _ = write!(seq, "{}", i + 1);
                h = h
                    .insert(Header {
                        key: "starling-kind",
                        value: Some("process_exec"),
                    })
                    .insert(Header {
                        key: "starling-seq",
                        value: Some(seq.as_str()),
                    })
                    .insert(Header {
                        key: "starling-host",
                        value: Some(HOST),
                    })
                    .insert(Header {
                        key: "starling-schema",
                        value: Some(starling_proto::SCHEMA_NAME),
                    });
            }
            rec = rec.headers(h);
        }
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
    Ok(Run {
        events: payloads.len() as u64,
        secs: start.elapsed().as_secs_f64(),
        cpu_secs: cpu_of(std::process::id())? - cpu0,
    })
}

/// Ships `events` from a prefilled spool through a sink to `topic`, the
/// sink's `[kafka]` table given `kafka_toml` too.
fn spool_to_kafka(
    broker: &Broker,
    events: u64,
    topic: &str,
    kafka_toml: &str,
) -> anyhow::Result<StarlingRun> {
    let fleet = Fleet::new()?;
    let sink = SinkProcess::start_with_kafka_config(
        &fleet,
        "bench-sink",
        (&broker.bootstrap(), topic),
        kafka_toml,
    )?;
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
    let sink_pid = sink.pid().context("the sink is not running")?;
    let sink_cpu0 = cpu_of(sink_pid)?;
    let start = Instant::now();
    let node = NodeProcess::start(&fleet, HOST, &[(sink.address(), sink.name.clone())], false)?;
    let node_pid = node.pid().context("the node is not running")?;
    let done = wait_for(Duration::from_secs(600), || {
        let acked = node.metric("starling_node_events_acked_total")?;
        (acked as u64 >= events).then_some(())
    });
    let secs = start.elapsed().as_secs_f64();
    done.with_context(|| format!("node did not drain its spool\n{}", node.log()))?;
    // The node's CPU includes its start (opening the spool, the TLS key).
    Ok(StarlingRun {
        sink: Run {
            events,
            secs,
            cpu_secs: cpu_of(sink_pid)? - sink_cpu0,
        },
        node: Run {
            events,
            secs,
            cpu_secs: cpu_of(node_pid)?,
        },
    })
}
