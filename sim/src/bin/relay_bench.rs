//! `starling-relay-bench`: how much one aggregator relays. The node's real
//! [`Relay`] runs between enrolled node connections and a real sink (its
//! ingress and local store, fsync per batch), over loopback QUIC with
//! mutual TLS. The relay has a thread of its own (a current-thread tokio
//! runtime: its QUIC I/O, crypto and streams all run there), and its CPU
//! time is read from /proc, so the figures are per relay core whatever
//! the nodes and the sink cost the rest of the machine. Figures only;
//! nothing asserts on speed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use starling_mesh::identity::{Role, TlsFiles};
use starling_mesh::origin::HostKey;
use starling_mesh::trust::DataPlaneTrust;
use starling_node::relay::{self, Relay};
use starling_node::uplink;
use starling_proto::batch::{EventListBuilder, UnsignedBatch};
use starling_proto::v1::batch_ack::Status;
use starling_sim::client::{send_on, unix_ms};
use starling_sim::{sample_exec_event, Fleet};
use starling_sink::backend::Backend;
use starling_sink::config::OriginSection;
use starling_sink::ingress::{self, Ingress};
use starling_sink::local_store::LocalStore;
use tokio::sync::watch;

/// One aggregator's relay throughput and fan-in, per relay core.
#[derive(Debug, Parser)]
struct Args {
    /// Batch sizes (events per batch) of the throughput runs.
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 512, 2048])]
    batch_events: Vec<usize>,
    /// Nodes sending as fast as their window allows in the throughput runs.
    #[arg(long, default_value_t = 8)]
    senders: usize,
    /// Batches each node keeps in flight (the uplink's default).
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// Nodes attached in the fan-in run.
    #[arg(long, default_value_t = 1000)]
    fan_in_nodes: usize,
    /// Events per second each fan-in node sends, as one batch a second.
    #[arg(long, default_value_t = 100)]
    node_rate: usize,
    /// Seconds measured per run (each after a 2-second warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// The aggregator's name; nodes verify the relay's certificate against it.
const RELAY_NAME: &str = "relay-bench-agg";
const SINK_NAME: &str = "relay-bench-sink";
const WARM_UP: Duration = Duration::from_secs(2);
/// Events the sink's local store keeps (older ones are deleted).
const STORE_EVENTS: u64 = 2_000_000;

/// The relay on its own thread, and where to read that thread's CPU time.
struct RelayThread {
    addr: SocketAddr,
    schedstat: PathBuf,
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl RelayThread {
    fn start(files: TlsFiles, sink: SocketAddr, capacity: usize) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    // As the node sets it up (node/src/mesh.rs): one
                    // endpoint accepts nodes and dials the sink.
                    let trust = DataPlaneTrust::load(&files, None)?;
                    let mut server = trust.server_config()?;
                    server.transport_config(Arc::new(relay::transport()));
                    let mut endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse()?)?;
                    endpoint.set_default_client_config(trust.client_config()?);
                    let link = endpoint
                        .connect(sink, SINK_NAME)?
                        .await
                        .context("relay to sink handshake")?;
                    let me = std::fs::read_link("/proc/thread-self")
                        .context("finding the relay thread in /proc")?;
                    let schedstat = Path::new("/proc").join(me).join("schedstat");
                    let (_serving_tx, serving) = watch::channel(true);
                    let (_link_tx, link) = watch::channel(Some(link));
                    let relay = Relay::new(capacity, serving, link, trust);
                    let _ = ready_tx.send((endpoint.local_addr()?, schedstat));
                    relay.serve(endpoint, stop_rx).await;
                    anyhow::Ok(())
                })
            })?;
        let Ok((addr, schedstat)) = ready_rx.recv() else {
            return match thread.join() {
                Ok(Err(e)) => Err(e.context("starting the relay")),
                _ => Err(anyhow::anyhow!(
                    "the relay thread ended before it was ready"
                )),
            };
        };
        Ok(Self {
            addr,
            schedstat,
            stop,
            thread,
        })
    }

    /// CPU time the relay thread has used so far.
    fn cpu(&self) -> anyhow::Result<Duration> {
        let text = std::fs::read_to_string(&self.schedstat)
            .with_context(|| format!("reading {}", self.schedstat.display()))?;
        let ns = text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("unexpected {}: {text:?}", self.schedstat.display()))?;
        Ok(Duration::from_nanos(ns))
    }

    fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("relay thread panicked"))?
    }
}

/// Events acked PERSISTED and batches answered otherwise, across nodes.
#[derive(Default)]
struct Counts {
    events: AtomicU64,
    not_persisted: AtomicU64,
}

/// Wall time, relay CPU time and events over a measured window.
struct Window {
    wall: Duration,
    cpu: Duration,
    events: u64,
}

impl Window {
    async fn measure(relay: &RelayThread, counts: &Counts, secs: u64) -> anyhow::Result<Self> {
        let (t0, c0, e0) = (
            Instant::now(),
            relay.cpu()?,
            counts.events.load(Ordering::Relaxed),
        );
        tokio::time::sleep(Duration::from_secs(secs)).await;
        Ok(Self {
            wall: t0.elapsed(),
            cpu: relay.cpu()?.saturating_sub(c0),
            events: counts.events.load(Ordering::Relaxed) - e0,
        })
    }

    fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.wall.as_secs_f64()
    }

    /// Share of one core the relay used.
    fn relay_load(&self) -> f64 {
        self.cpu.as_secs_f64() / self.wall.as_secs_f64()
    }

    fn events_per_core_sec(&self) -> f64 {
        self.events as f64 / self.cpu.as_secs_f64().max(1e-9)
    }
}

/// `n` sample events from `host`, compressed and ready to sign. Each
/// carries a random 64-character argument (a token, a hash), so that LZ4
/// cannot squeeze the batch much further than it would a real host's
/// events.
fn batch(host: &str, n: usize) -> UnsignedBatch {
    use rand::{RngExt, SeedableRng};
    use std::fmt::Write;
    let seed = host
        .bytes()
        .fold(n as u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut list = EventListBuilder::default();
    for i in 0..n as u64 {
        let mut e = sample_exec_event(i);
        if let Some(h) = e.header.as_mut() {
            h.host_id = host.to_owned();
            h.seq = i + 1;
        }
        if let Some(starling_proto::v1::event::Body::ProcessExec(x)) = e.body.as_mut() {
            let mut token = String::with_capacity(64);
            for b in rng.random::<[u8; 32]>() {
                let _ = write!(token, "{b:02x}");
            }
            x.argv.push(token);
        }
        list.push_encoded(i + 1, &prost::Message::encode_to_vec(&e));
    }
    list.finish(host, 1, unix_ms())
}

/// One sender: its key, and the list it sends again and again, each time
/// under a new batch id and signature as a node's uplink would (the sink
/// answers a batch it already persisted without writing it again).
struct Sender {
    key: HostKey,
    list: UnsignedBatch,
    next_id: AtomicU64,
}

impl Sender {
    fn next(&self) -> anyhow::Result<Vec<u8>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(self.key.seal(self.list.renumbered(id, unix_ms()))?.bytes)
    }
}

/// Signs the sender's next batch, sends it and counts the outcome.
async fn send_counted(conn: &quinn::Connection, sender: &Sender, events: u64, counts: &Counts) {
    let bytes = match sender.next() {
        Ok(b) => b,
        Err(_) => {
            counts.not_persisted.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    match send_on(conn, &bytes).await {
        Ok(ack) if ack.status == Status::Persisted as i32 => {
            counts.events.fetch_add(events, Ordering::Relaxed);
        }
        _ => {
            counts.not_persisted.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Enrols `n` nodes and connects each to the relay, all through one
/// client endpoint (each connection with its node's certificate).
async fn attach_nodes(
    fleet: &Fleet,
    endpoint: &quinn::Endpoint,
    relay: SocketAddr,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<(String, quinn::Connection, HostKey)>> {
    let mut connecting = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("{prefix}-{i:05}");
        let (cert, key) = fleet.issue(Role::Node, &name)?;
        let files = TlsFiles {
            ca_cert: fleet.ca_cert(),
            cert,
            key,
        };
        let trust = DataPlaneTrust::load(&files, None)?;
        let mut config = trust.client_config()?;
        config.transport_config(Arc::new(uplink::transport()));
        let key = trust.host_key()?;
        connecting.push((name, endpoint.connect_with(config, relay, RELAY_NAME)?, key));
    }
    let mut nodes = Vec::with_capacity(n);
    for (name, c, key) in connecting {
        let conn = c.await.with_context(|| format!("{name}: handshake"))?;
        nodes.push((name, conn, key));
    }
    Ok(nodes)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let fleet = Fleet::new()?;
    let files = |role, name: &str| -> anyhow::Result<TlsFiles> {
        let (cert, key) = fleet.issue(role, name)?;
        Ok(TlsFiles {
            ca_cert: fleet.ca_cert(),
            cert,
            key,
        })
    };

    // The sink, on this (multi-threaded) runtime, with its default limits.
    let store = LocalStore::open(&fleet.path().join("sink-store"), STORE_EVENTS)?;
    let sink_trust = DataPlaneTrust::load(&files(Role::Sink, SINK_NAME)?, None)?;
    let mut server = sink_trust.server_config()?;
    let sink = Ingress::new(
        Arc::new(Backend::Local(store)),
        10_000,
        sink_trust,
        &OriginSection::default(),
    )?;
    server.transport_config(Arc::new(ingress::transport(64)));
    let sink_endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse()?)?;
    let sink_addr = sink_endpoint.local_addr()?;
    let (sink_stop, sink_stop_rx) = watch::channel(false);
    let sink_task = tokio::spawn(async move {
        sink.serve(&sink_endpoint, sink_stop_rx, Duration::from_secs(5))
            .await
    });

    let capacity = args.fan_in_nodes + args.senders + 16;
    let relay = RelayThread::start(files(Role::Node, RELAY_NAME)?, sink_addr, capacity)?;
    let nodes_endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;

    println!(
        "one aggregator relay on its own thread -> sink (local store, fsync per batch); \
         loopback QUIC, mutual TLS; {} cores shared by nodes, relay and sink",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "\nthroughput: {} nodes, {} batches in flight each, {} s per run",
        args.senders, args.in_flight, args.seconds
    );
    println!(
        "  {:>12}  {:>11}  {:>14}  {:>10}  {:>24}  {:>8}",
        "events/batch",
        "wire B/event",
        "events/s",
        "relay CPU",
        "events/s per relay core",
        "errors"
    );
    let senders = attach_nodes(&fleet, &nodes_endpoint, relay.addr, "sender", args.senders).await?;
    for &n in &args.batch_events {
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        let mut wire = 0;
        for (name, conn, key) in &senders {
            let sender = Arc::new(Sender {
                key: key.clone(),
                list: batch(name, n),
                next_id: AtomicU64::new(1),
            });
            wire = sender.next()?.len() / n.max(1);
            for _ in 0..args.in_flight {
                let (conn, sender, counts, stop) =
                    (conn.clone(), sender.clone(), counts.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        send_counted(&conn, &sender, n as u64, &counts).await;
                    }
                }));
            }
        }
        tokio::time::sleep(WARM_UP).await;
        let w = Window::measure(&relay, &counts, args.seconds).await?;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        println!(
            "  {n:>12}  {wire:>11}  {:>14.0}  {:>9.0}%  {:>24.0}  {:>8}",
            w.events_per_sec(),
            100.0 * w.relay_load(),
            w.events_per_core_sec(),
            counts.not_persisted.load(Ordering::Relaxed)
        );
    }
    for (_, conn, _) in &senders {
        conn.close(0u32.into(), b"done");
    }

    // Fan-in: many nodes, each at a modest rate.
    let cpu0 = relay.cpu()?;
    let t0 = Instant::now();
    let nodes = attach_nodes(
        &fleet,
        &nodes_endpoint,
        relay.addr,
        "node",
        args.fan_in_nodes,
    )
    .await?;
    println!(
        "\nfan-in: {} nodes attached in {:.1} s; the relay spent {:.2} CPU-s on their handshakes",
        nodes.len(),
        t0.elapsed().as_secs_f64(),
        relay.cpu()?.saturating_sub(cpu0).as_secs_f64()
    );
    let counts = Arc::new(Counts::default());
    tokio::time::sleep(WARM_UP).await;
    let idle = Window::measure(&relay, &counts, args.seconds).await?;
    println!(
        "  connected, idle (1 s keep-alives):     relay CPU {:>5.1}%",
        100.0 * idle.relay_load()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, (name, conn, key)) in nodes.iter().enumerate() {
        let sender = Sender {
            key: key.clone(),
            list: batch(name, args.node_rate),
            next_id: AtomicU64::new(1),
        };
        let (conn, counts, stop) = (conn.clone(), counts.clone(), stop.clone());
        let events = args.node_rate as u64;
        // Spread the nodes over the second, as independent hosts would be.
        let offset = Duration::from_secs(1).mul_f64(i as f64 / nodes.len().max(1) as f64);
        tasks.push(tokio::spawn(async move {
            let start = tokio::time::Instant::now() + offset;
            let mut every = tokio::time::interval_at(start, Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                every.tick().await;
                send_counted(&conn, &sender, events, &counts).await;
            }
        }));
    }
    tokio::time::sleep(WARM_UP).await;
    let busy = Window::measure(&relay, &counts, args.seconds).await?;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let offered = (args.fan_in_nodes * args.node_rate) as f64;
    println!(
        "  {} events/s each, one batch a second:  relay CPU {:>5.1}%, {:.0} events/s delivered of {:.0} offered, {} batches not persisted",
        args.node_rate,
        100.0 * busy.relay_load(),
        busy.events_per_sec(),
        offered,
        counts.not_persisted.load(Ordering::Relaxed)
    );
    println!(
        "  nodes one relay core serves at this rate (linear from the load above): {:.0}",
        args.fan_in_nodes as f64 / busy.relay_load().max(1e-9)
    );

    for (_, conn, _) in &nodes {
        conn.close(0u32.into(), b"done");
    }
    relay.stop()?;
    let _ = sink_stop.send(true);
    let _ = sink_task.await;
    Ok(())
}
