//! Sensor -> spool: reads kernel records, enriches them, writes them to the
//! spool and turns every loss into a counted, spooled loss event.

use std::sync::Arc;
use std::time::Duration;

use starling_bpf::{BootClock, RawRecord, Sensor};
use starling_proto::v1::event_loss::Reason;
use tokio::sync::watch;

use crate::enrich::ProcessCache;
use crate::metrics_names as m;
use crate::spool::{loss_event, AppendOutcome, Spool};

/// Most records taken from the ring buffer per spool write.
const READ_CHUNK: usize = 1024;

/// Records what an append did in the metrics.
pub fn record_append(spool: &Spool, outcome: &AppendOutcome) {
    let st = spool.stats();
    metrics::gauge!(m::SPOOL_NEXT_SEQ).set(st.next_seq as f64);
    metrics::gauge!(m::SPOOL_EVENTS).set(st.events as f64);
    metrics::gauge!(m::SPOOL_BYTES).set(st.bytes as f64);
    metrics::counter!(m::EVENTS_SPOOLED).increment(outcome.spooled);
    if outcome.evicted > 0 || outcome.refused > 0 {
        metrics::counter!(m::EVENTS_DROPPED, "reason" => "spool_quota")
            .increment(outcome.evicted + outcome.refused);
        tracing::warn!(
            evicted = outcome.evicted,
            refused = outcome.refused,
            "spool quota reached; events dropped by the drop policy"
        );
    }
}

/// Runs until `shutdown` turns true. `spooled` is bumped after every write
/// so the uplink knows there is more to send.
pub async fn run(
    mut sensor: Sensor,
    spool: Arc<Spool>,
    spooled: watch::Sender<u64>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let clock = BootClock::now();
    let mut cache = ProcessCache::seeded_from_proc();
    tracing::info!(processes = cache.len(), "process cache seeded from /proc");
    let mut records = Vec::with_capacity(READ_CHUNK);
    let mut reported_ring_losses = 0u64;
    let mut loss_tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        records.clear();
        tokio::select! {
            r = sensor.read(READ_CHUNK, &mut records) => r?,
            _ = loss_tick.tick() => {
                report_ring_losses(&sensor, &spool, &mut reported_ring_losses)?;
                spooled.send_replace(spool.stats().next_seq);
                continue;
            }
            _ = shutdown.changed() => {
                // What the kernel already captured, and what it lost since
                // the last tick, goes to the spool too.
                sensor.read_available(usize::MAX, &mut records);
                if !records.is_empty() {
                    let events = to_events(&mut records, &clock, &mut cache);
                    let out = append(&spool, events)?;
                    record_append(&spool, &out);
                }
                report_ring_losses(&sensor, &spool, &mut reported_ring_losses)?;
                return Ok(());
            }
        }
        let events = to_events(&mut records, &clock, &mut cache);
        let out = append(&spool, events)?;
        record_append(&spool, &out);
        spooled.send_replace(spool.stats().next_seq);
    }
}

/// Spools a loss event for records the kernel dropped since `reported`.
fn report_ring_losses(sensor: &Sensor, spool: &Spool, reported: &mut u64) -> anyhow::Result<()> {
    let lost = sensor.ring_buffer_losses()?;
    if lost > *reported {
        let delta = lost - *reported;
        *reported = lost;
        metrics::counter!(m::EVENTS_DROPPED, "reason" => "ring_buffer_full").increment(delta);
        tracing::warn!(lost = delta, "kernel ring buffer full; records dropped");
        let out = append(spool, vec![loss_event(Reason::RingBufferFull, delta, 0, 0)])?;
        record_append(spool, &out);
    }
    Ok(())
}

/// Decodes and enriches kernel records; undecodable ones become one loss
/// event (and a counter).
fn to_events(
    records: &mut Vec<Result<RawRecord, starling_bpf::RawError>>,
    clock: &BootClock,
    cache: &mut ProcessCache,
) -> Vec<starling_proto::v1::Event> {
    let mut events = Vec::with_capacity(records.len() + 1);
    let mut decode_errors = 0u64;
    for r in records.drain(..) {
        match r {
            Ok(record) => {
                let mut e = starling_bpf::to_event(record, clock);
                cache.enrich(&mut e);
                events.push(e);
            }
            Err(err) => {
                decode_errors += 1;
                tracing::warn!(%err, "undecodable kernel record");
            }
        }
    }
    metrics::counter!(m::EVENTS_OBSERVED).increment(events.len() as u64 + decode_errors);
    if decode_errors > 0 {
        metrics::counter!(m::EVENTS_DROPPED, "reason" => "decode_error").increment(decode_errors);
        events.push(loss_event(Reason::DecodeError, decode_errors, 0, 0));
    }
    events
}

fn append(spool: &Spool, events: Vec<starling_proto::v1::Event>) -> anyhow::Result<AppendOutcome> {
    // RocksDB writes block (an fsync with sync_writes); keep them off the
    // async workers' fast path.
    Ok(tokio::task::block_in_place(|| spool.append(events))?)
}
