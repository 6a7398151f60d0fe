//! What origin signatures cost (docs/mesh.md, "Data-plane trust"), with
//! the production code and real fleet credentials: per batch, the SHA-256
//! of the event list (both ends), the origin's signature (node), its check
//! (sink), the sink's receipt signature and the node's check of it; per
//! event, those costs over the batch size.

use std::time::{Duration, Instant, SystemTime};

use prost::Message;
use starling_mesh::identity::{Role, TlsFiles};
use starling_mesh::origin::{check_receipt, sha256, verify_origin, CredentialCache};
use starling_mesh::trust::DataPlaneTrust;
use starling_proto::batch::{frame_event, open_batch, EventListBuilder};
use starling_proto::v1::batch_ack::Status;
use starling_proto::v1::{BatchAck, BatchReceipt};
use starling_sim::client::unix_ms;
use starling_sim::{sample_exec_event, Fleet};

/// Average time of `f` over repeated calls for about `budget`.
fn time<T>(budget: Duration, mut f: impl FnMut() -> T) -> Duration {
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < budget || n < 10 {
        std::hint::black_box(f());
        n += 1;
    }
    start.elapsed() / n
}

fn trust(fleet: &Fleet, role: Role, name: &str) -> anyhow::Result<DataPlaneTrust> {
    let (cert, key) = fleet.issue(role, name)?;
    Ok(DataPlaneTrust::load(
        &TlsFiles {
            ca_cert: fleet.ca_cert(),
            cert,
            key,
        },
        None,
    )?)
}

pub fn run() -> anyhow::Result<()> {
    let fleet = Fleet::new()?;
    let node = trust(&fleet, Role::Node, "bench-host")?;
    let sink = trust(&fleet, Role::Sink, "bench-sink")?;
    let (node_key, sink_key) = (node.host_key()?, sink.host_key()?);
    let origins = CredentialCache::new(sink.clone(), 16);
    let sinks = CredentialCache::new(node.clone(), 16);
    let budget = Duration::from_millis(400);

    // A chain check happens once per certificate (then it is cached).
    let cold = time(budget, || {
        CredentialCache::new(sink.clone(), 1).check(
            node_key.certificate(),
            Role::Node,
            SystemTime::now(),
        )
    });
    println!(
        "\norigin signatures (Ed25519 host keys, ring; SHA-256 of the list for consumers and of the compressed payload for the sink), per batch and per event:"
    );
    println!(
        "  certificate chain check, once per host and revocation list: {:.1} us",
        cold.as_secs_f64() * 1e6
    );
    println!(
        "  {:>7} {:>10} {:>12} {:>9} {:>9} {:>11} {:>11} {:>12} {:>12}",
        "events",
        "list hash",
        "payload hash",
        "sign",
        "verify",
        "rcpt sign",
        "rcpt check",
        "node/event",
        "sink/event"
    );
    for n in [1u64, 64, 512, 2048] {
        let encoded: Vec<Vec<u8>> = (1..=n)
            .map(|seq| {
                let mut e = sample_exec_event(seq);
                if let Some(h) = e.header.as_mut() {
                    h.host_id = "bench-host".into();
                    h.seq = seq;
                }
                e.encode_to_vec()
            })
            .collect();
        let mut plain = Vec::new();
        for e in &encoded {
            frame_event(&mut plain, e);
        }
        let mut list = EventListBuilder::default();
        for (i, e) in encoded.iter().enumerate() {
            list.push_encoded(i as u64 + 1, e);
        }
        let unsigned = list.finish("bench-host", 1, unix_ms());
        let signing = unsigned.signing_bytes();
        let sealed = node_key.seal(unsigned.clone())?;
        let opened = open_batch(&sealed.bytes)?;

        let hash = time(budget, || sha256(&plain));
        let payload_hash = time(budget, || sha256(unsigned.payload()));
        let sign = time(budget, || node_key.sign(&signing));
        let verify = time(budget, || {
            verify_origin(&origins, &opened, SystemTime::now())
        });
        let receipt = BatchReceipt {
            host_id: "bench-host".into(),
            batch_id: 1,
            header_sha256: sealed.header_digest.to_vec(),
            status: Status::Persisted as i32,
            sink_time_unix_ms: unix_ms(),
            certificate_sha256: sha256(node_key.certificate()).to_vec(),
            ..Default::default()
        };
        let mut ack = BatchAck::unsigned(1, Status::Persisted, String::new());
        let receipt_sign = time(budget, || {
            let mut a = ack.clone();
            sink_key.sign_receipt(&receipt, &mut a)
        });
        sink_key.sign_receipt(&receipt, &mut ack)?;
        let receipt_check = time(budget, || {
            check_receipt(
                &sinks,
                &ack,
                "bench-host",
                &sealed.header_digest,
                SystemTime::now(),
            )
        });
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let node_cost = hash + payload_hash + sign + receipt_check;
        let sink_cost = payload_hash + verify + receipt_sign;
        println!(
            "  {n:>7} {:>8.1}us {:>10.1}us {:>7.1}us {:>7.1}us {:>9.1}us {:>9.1}us {:>10.0}ns {:>10.0}ns",
            us(hash),
            us(payload_hash),
            us(sign),
            us(verify),
            us(receipt_sign),
            us(receipt_check),
            node_cost.as_secs_f64() * 1e9 / n as f64,
            sink_cost.as_secs_f64() * 1e9 / n as f64,
        );
    }
    println!(
        "  (node: both hashes + sign + receipt check; sink: payload hash + verify + receipt sign; events of {} bytes, LZ4)",
        sample_exec_event(1).encode_to_vec().len()
    );
    Ok(())
}
