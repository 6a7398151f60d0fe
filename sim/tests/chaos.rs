//! Chaos: a marked exec load flows from a real node through a local mesh
//! (the node ships through an elected aggregator to two sinks, which write
//! to a broker) while the node's aggregator, each sink, the node itself and
//! the broker are killed with SIGKILL and restarted, one after another in
//! a random order. Every sequence number the node assigned reaches Kafka.
//!
//! The order comes from a seed that the test prints; STARLING_CHAOS_SEED=N
//! replays it. Needs root (BPF) and tansu with SQLite storage (a broker
//! whose acknowledged writes survive its own crash, as Kafka's do).

use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use starling_sim::kafka::{is_marked_exec, KafkaReader};
use starling_sim::{
    free_port, is_root, predicted_aggregators, wait_for, Broker, ExecLoad, Fleet, MeshOptions,
    NodeProcess, SinkProcess,
};

const TOPIC: &str = "starling.events";
const ZONE: &str = "chaos";
const MEMBERS: usize = 4;
const MARKER: &str = "chaos-load";
/// How long a wedged test broker is left before it is restarted: long
/// enough for each sink to see 3 batches refused and replace its producer.
const WEDGED_BROKER_RESTART: Duration = Duration::from_secs(10);

/// What is killed, in the order the seed draws.
#[derive(Debug, Clone, Copy)]
enum Victim {
    /// Whichever aggregator the loaded node ships through at that moment.
    Aggregator,
    Sink(usize),
    Node,
    Broker,
}

struct Mesh {
    broker: Broker,
    members: Vec<NodeProcess>,
    sinks: Vec<SinkProcess>,
    /// Index in `members` of the node with the sensor and the load.
    loaded: usize,
}

impl Mesh {
    fn node(&self) -> &NodeProcess {
        &self.members[self.loaded]
    }

    fn acked(&self) -> f64 {
        self.node()
            .metric("starling_node_events_acked_total")
            .unwrap_or(0.0)
    }

    /// The aggregator the loaded node ships through, once it ships through
    /// one (not straight to a sink).
    fn current_aggregator(&self) -> Option<usize> {
        let to = self.node().mesh_status()?.uplink?.to;
        self.members.iter().position(|m| m.host_id == to)
    }

    fn logs(&self) -> String {
        let mut out = format!("node log:\n{}\n", self.node().log());
        for s in &self.sinks {
            out.push_str(&format!("{} log:\n{}\n", s.name, s.log()));
        }
        out
    }

    /// Kills `victim` with SIGKILL, leaves it down for `down`, starts it
    /// again, and returns what was killed.
    fn kill_and_restart(&mut self, victim: Victim, down: Duration) -> anyhow::Result<String> {
        match victim {
            Victim::Aggregator => {
                let at = wait_for(Duration::from_secs(60), || self.current_aggregator())
                    .ok_or_else(|| {
                        anyhow::anyhow!("the node ships through no aggregator\n{}", self.logs())
                    })?;
                let m = &mut self.members[at];
                m.kill9();
                std::thread::sleep(down);
                m.restart()?;
                Ok(format!("aggregator {}", m.host_id))
            }
            Victim::Sink(i) => {
                let s = &mut self.sinks[i];
                s.kill9();
                std::thread::sleep(down);
                s.restart()?;
                Ok(s.name.clone())
            }
            Victim::Node => {
                let n = &mut self.members[self.loaded];
                n.kill9();
                std::thread::sleep(down);
                n.restart()?;
                Ok(format!("node {}", n.host_id))
            }
            Victim::Broker => {
                self.broker.kill9();
                std::thread::sleep(down);
                self.broker.restart()?;
                Ok("broker".into())
            }
        }
    }
}

fn start_mesh(fleet: &Fleet) -> anyhow::Result<Mesh> {
    // The broker is killed too: its records must be on disk.
    let broker = Broker::start_durable()?;
    let names: Vec<String> = (0..MEMBERS).map(|i| format!("chaos-{i:02}")).collect();
    // The election is deterministic: the loaded node is one that is not
    // elected, so its events cross an aggregator.
    let predicted = predicted_aggregators(ZONE, &names);
    let loaded = names
        .iter()
        .position(|n| !predicted.contains(n))
        .expect("a member that is not an aggregator");
    let seed = MeshOptions {
        bootstrap: Vec::new(),
        zone: ZONE.into(),
        aggregator: true,
        listen_port: free_port(),
        expected_cell_size: MEMBERS as u32,
        direct_to_sink_after_secs: None,
    };
    let seed_addr = seed.listen_addr();
    let others = MeshOptions {
        bootstrap: vec![seed_addr.clone()],
        listen_port: 0,
        ..seed.clone()
    };
    let mut members = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let opts = if i == 0 { &seed } else { &others };
        members.push(NodeProcess::start_in_mesh(fleet, name, opts, i == loaded)?);
    }
    let kafka = Some((broker.bootstrap(), TOPIC));
    let sinks = ["chaos-sink-a", "chaos-sink-b"]
        .into_iter()
        .map(|name| {
            SinkProcess::start_in_mesh(
                fleet,
                name,
                kafka.as_ref().map(|(b, t)| (b.as_str(), *t)),
                std::slice::from_ref(&seed_addr),
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Mesh {
        broker,
        members,
        sinks,
        loaded,
    })
}

#[test]
fn every_sequence_number_reaches_kafka_while_each_part_is_killed_and_restarted(
) -> anyhow::Result<()> {
    assert!(
        is_root(),
        "this test loads BPF programs and must run as root"
    );
    let seed: u64 = match std::env::var("STARLING_CHAOS_SEED") {
        Ok(s) => s.parse()?,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64,
    };
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut order = vec![
        Victim::Aggregator,
        Victim::Sink(0),
        Victim::Sink(1),
        Victim::Node,
        Victim::Broker,
    ];
    order.shuffle(&mut rng);
    println!("chaos seed {seed} (STARLING_CHAOS_SEED={seed} replays it): {order:?}");

    let fleet = Fleet::new()?;
    let mut mesh = start_mesh(&fleet)?;
    let attached = wait_for(Duration::from_secs(120), || {
        let s = mesh.node().mesh_status()?;
        (s.sinks.len() == 2 && mesh.current_aggregator().is_some()).then_some(())
    });
    assert!(
        attached.is_some(),
        "the loaded node never shipped through an aggregator with both sinks known: {:#?}\n{}",
        mesh.node().mesh_status(),
        mesh.logs()
    );

    let load = ExecLoad::start(MARKER);
    let flowing = wait_for(Duration::from_secs(60), || {
        (mesh.acked() >= 20.0).then_some(())
    });
    assert!(flowing.is_some(), "no events acknowledged\n{}", mesh.logs());

    let started = Instant::now();
    let mut tender = BrokerTender::default();
    for victim in order {
        // The outage itself is the chaos: random, not a synchronisation.
        let down = Duration::from_millis(rng.random_range(500..3000));
        let what = mesh.kill_and_restart(victim, down)?;
        // Before the next kill, events must be acknowledged again: each
        // failure is recovered from on its own, not hidden by the next.
        let base = mesh.acked();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut resumed = None;
        while Instant::now() < deadline {
            if mesh.acked() >= base + 20.0 {
                resumed = Some(());
                break;
            }
            tender.tend(&mut mesh.broker)?;
            std::thread::sleep(Duration::from_millis(100));
        }
        if resumed.is_none() {
            panic!(
                "nothing acknowledged after {what} was killed and restarted\n{}\n{}",
                keep_broker_storage(&mesh.broker, seed),
                mesh.logs()
            );
        }
        println!(
            "{:>6.1} s  {what} killed, down {} ms, restarted; events acknowledged again",
            started.elapsed().as_secs_f64(),
            down.as_millis()
        );
    }
    let execs = load.stop();
    let last = mesh.node().last_seq().expect("node metrics");
    let host_id = mesh.node().host_id.clone();

    let mut tries = 0;
    let mut reader = loop {
        tender.tend(&mut mesh.broker)?;
        match KafkaReader::new(&mesh.broker.bootstrap(), TOPIC) {
            Ok(reader) => break reader,
            Err(e) if tries >= 3 => return Err(e),
            Err(_) => tries += 1,
        }
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let delivered = loop {
        match reader.wait_for_sequence(&host_id, last, Duration::from_secs(15)) {
            Ok(()) => break Ok(()),
            Err(missing) if Instant::now() >= deadline => break Err(missing),
            Err(_) => tender.tend(&mut mesh.broker)?,
        }
    };
    let node = mesh.node();
    if let Err(missing) = delivered {
        // Keep what the broker stored, to tell a record it lost from one it
        // holds but did not serve.
        let kept = keep_broker_storage(&mesh.broker, seed);
        panic!(
            "sequence numbers missing from Kafka (last {last}; first missing {missing:?})\nreader: {}\n{kept}\n{}",
            reader.describe(),
            mesh.logs()
        );
    }
    // Kafka holds some events twice (a batch resent after a kill, at least
    // once by design): count each marked exec once.
    let marked: std::collections::BTreeSet<u64> = reader
        .records
        .iter()
        .filter(|r| r.key == node.host_id && is_marked_exec(&r.event, MARKER))
        .filter_map(|r| r.event.header.as_ref().map(|h| h.seq))
        .collect();
    let marked = marked.len();
    let copies = reader
        .records
        .iter()
        .filter(|r| r.key == node.host_id)
        .count();
    assert!(
        marked > 100,
        "the load reached Kafka ({marked} marked execs of {execs} run)"
    );
    println!(
        "{last} sequence numbers from {} all in Kafka ({copies} records: the rest are resent copies); \
         {marked} marked execs of {execs} run (the rest ran while the node was down)",
        node.host_id
    );
    Ok(())
}

/// Restarts the test broker once its storage task has been dead for
/// [`WEDGED_BROKER_RESTART`]: a defect of the test broker, not of Starling
/// (see `Broker::storage_panicked`), met as an operator would meet it. The
/// wait gives the sinks time to give up the producers it refuses. Nothing
/// may be lost meanwhile.
#[derive(Default)]
struct BrokerTender {
    wedged_since: Option<Instant>,
}

impl BrokerTender {
    fn tend(&mut self, broker: &mut Broker) -> anyhow::Result<()> {
        if !broker.storage_panicked() {
            return Ok(());
        }
        let since = *self.wedged_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= WEDGED_BROKER_RESTART {
            println!(
                "         the test broker's storage task panicked (tansu 0.6 refuses \
                 librdkafka's own epoch bump); restarted it"
            );
            broker.restart()?;
            self.wedged_since = None;
        }
        Ok(())
    }
}

/// Copies the broker's storage and log where a failed run can be read, and
/// says where.
fn keep_broker_storage(broker: &Broker, seed: u64) -> String {
    let kept = std::env::temp_dir().join(format!("starling-chaos-{seed}"));
    match broker.keep_storage(&kept) {
        Ok(()) => format!("broker storage and log kept in {}", kept.display()),
        Err(e) => format!("broker storage not kept: {e:#}"),
    }
}
