//! End to end against a real Kafka-protocol broker: real exec events from
//! the kernel sensor, through the node's spool and the sink, read back with
//! a Kafka client. Needs root (BPF) and tansu (scripts/setup installs it).

use std::process::Command;
use std::time::Duration;

use starling_proto::v1::event::Body;
use starling_sim::kafka::{exec_argv, is_marked_exec, KafkaReader};
use starling_sim::{is_root, Broker, Fleet, NodeProcess, SinkProcess};

const TOPIC: &str = "starling.events";

#[test]
fn exec_events_reach_kafka_with_argv_pid_and_parent() -> anyhow::Result<()> {
    assert!(
        is_root(),
        "this test loads BPF programs and must run as root"
    );
    let broker = Broker::start()?;
    let fleet = Fleet::new()?;
    let sink = SinkProcess::start(&fleet, "sink-1", Some((&broker.bootstrap(), TOPIC)))?;
    let node = NodeProcess::start(
        &fleet,
        "e2e-host",
        &[(sink.address(), sink.name.clone())],
        true,
    )?;

    let marker = format!("starling-e2e-{}-{}", std::process::id(), rand_suffix());
    let mut expected = Vec::new();
    for i in 0..5 {
        let arg = format!("arg with spaces {i}");
        let mut child = Command::new("/bin/true").args([&marker, &arg]).spawn()?;
        expected.push((child.id(), arg));
        child.wait()?;
    }

    let mut reader = KafkaReader::new(&broker.bootstrap(), TOPIC)?;
    let found = reader.poll_until(Duration::from_secs(60), |recs| {
        recs.iter()
            .filter(|r| is_marked_exec(&r.event, &marker))
            .count()
            >= expected.len()
    });
    assert!(
        found,
        "exec events did not reach Kafka\nnode log:\n{}\nsink log:\n{}",
        node.log(),
        sink.log()
    );

    // The sink checked each batch's origin signature with this node's
    // certificate, and says so in every message.
    let cert = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_file(fleet.path().join("pki/e2e-host.pem"))?
    };
    let fingerprint = starling_mesh::origin::hex(&starling_mesh::origin::sha256(&cert));

    let me = std::process::id();
    let my_exe = std::env::current_exe()?.to_string_lossy().into_owned();
    for (pid, arg) in &expected {
        let rec = reader
            .records
            .iter()
            .find(|r| is_marked_exec(&r.event, &marker) && exec_argv(&r.event).get(2) == Some(arg))
            .unwrap_or_else(|| panic!("no event for {arg:?}"));
        let h = rec.event.header.as_ref().expect("header");
        let Some(Body::ProcessExec(x)) = &rec.event.body else {
            unreachable!()
        };
        assert_eq!(x.argv, ["/bin/true", marker.as_str(), arg.as_str()]);
        assert_eq!(x.filename, "/bin/true");
        assert_eq!(h.pid, *pid, "pid of the exec'd process");
        assert_eq!(h.ppid, me, "parent is this test process");
        assert_eq!(x.parent_exe, my_exe, "parent exe is this test binary");
        assert_eq!(h.comm, "true");
        assert_eq!(h.uid, 0);
        assert_eq!(h.host_id, "e2e-host");
        assert!(h.seq > 0 && h.time_unix_ns > 0 && h.ktime_ns > 0 && h.cgroup_id > 0);
        assert_eq!(rec.key, "e2e-host", "message key is the host id");
        assert_eq!(rec.header("starling-origin"), Some(fingerprint.as_str()));
        for routing in [
            "starling-kind",
            "starling-seq",
            "starling-host",
            "starling-schema",
        ] {
            assert!(
                !rec.headers.contains_key(routing),
                "{routing} only with kafka.routing_headers"
            );
        }
        assert!(
            !rec.headers.contains_key("starling-batch-signature"),
            "the proof itself only with kafka.origin_proof"
        );
    }
    assert_eq!(reader.undecodable, 0);
    Ok(())
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
