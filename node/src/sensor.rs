//! Sensor -> spool: reads kernel records, enriches them, writes them to the
//! spool and turns every loss into a counted, spooled loss event.

use std::sync::Arc;
use std::time::Duration;

use starling_bpf::{BootClock, DropCounts, DropReason, RawRecord, Sensor, SensorFilters};
use starling_proto::v1::event::Body;
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
/// so the uplink knows there is more to send. New values of `filters`
/// (a config reload) are applied to the kernel as they come.
pub async fn run(
    mut sensor: Sensor,
    spool: Arc<Spool>,
    spooled: watch::Sender<u64>,
    filters: watch::Receiver<SensorFilters>,
    hash_max_bytes: u64,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let clock = BootClock::now();
    let mut cache = ProcessCache::seeded_from_proc(hash_max_bytes);
    tracing::info!(processes = cache.len(), "process cache seeded from /proc");
    let mut records = Vec::with_capacity(READ_CHUNK);
    let mut reported = DropCounts::default();
    let mut reloads = Some(filters);
    let mut loss_tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        records.clear();
        tokio::select! {
            r = sensor.read(READ_CHUNK, &mut records) => r?,
            _ = loss_tick.tick() => {
                report_drops(&sensor, &spool, &mut reported)?;
                spooled.send_replace(spool.stats().next_seq);
                continue;
            }
            changed = wait_for_filters(&mut reloads) => {
                let Some(new) = changed else {
                    // The sender is gone: no more reloads, keep running.
                    reloads = None;
                    continue;
                };
                match sensor.apply_filters(&new) {
                    Ok(warnings) => {
                        for w in warnings {
                            tracing::warn!("sensor filter: {w}");
                        }
                        tracing::info!(
                            watched = new.watched_paths.len(),
                            disabled = ?new.disabled_kinds,
                            "sensor filters applied"
                        );
                    }
                    Err(e) => tracing::error!(error = %e, "sensor filters refused; the previous ones stay"),
                }
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
                report_drops(&sensor, &spool, &mut reported)?;
                return Ok(());
            }
        }
        let events = to_events(&mut records, &clock, &mut cache);
        let out = append(&spool, events)?;
        record_append(&spool, &out);
        spooled.send_replace(spool.stats().next_seq);
    }
}

/// The next filters sent, or None once the sender is gone; waits forever
/// when there is no receiver any more.
async fn wait_for_filters(
    reloads: &mut Option<watch::Receiver<SensorFilters>>,
) -> Option<SensorFilters> {
    match reloads {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(rx.borrow_and_update().clone()),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}

/// Spools a loss event for every kind whose records the kernel lost (ring
/// buffer full) or rate-limited since `reported`, and counts what it
/// filtered (not a loss: the config asked for it).
fn report_drops(sensor: &Sensor, spool: &Spool, reported: &mut DropCounts) -> anyhow::Result<()> {
    let now = sensor.drop_counts()?;
    let mut losses = Vec::new();
    for reason in DropReason::ALL {
        for (kind, name) in starling_bpf::KIND_NAMES {
            let delta = now
                .get(reason, kind)
                .saturating_sub(reported.get(reason, kind));
            if delta == 0 {
                continue;
            }
            match reason {
                DropReason::Filtered => {
                    metrics::counter!(m::EVENTS_FILTERED, "kind" => name, "by" => "kernel")
                        .increment(delta);
                }
                DropReason::RingBufferFull | DropReason::RateLimited => {
                    metrics::counter!(m::EVENTS_DROPPED, "reason" => reason.name(), "kind" => name)
                        .increment(delta);
                    tracing::warn!(
                        lost = delta,
                        kind = name,
                        reason = reason.name(),
                        "kernel dropped records"
                    );
                    let proto_reason = if reason == DropReason::RateLimited {
                        Reason::RateLimited
                    } else {
                        Reason::RingBufferFull
                    };
                    let mut e = loss_event(proto_reason, delta, 0, 0);
                    if let Some(Body::EventLoss(l)) = e.body.as_mut() {
                        l.kind = name.to_owned();
                    }
                    losses.push(e);
                }
            }
        }
    }
    *reported = now;
    if !losses.is_empty() {
        let out = append(spool, losses)?;
        record_append(spool, &out);
    }
    Ok(())
}

/// A chmod +x whose parent the kernel did not know (a path, not an fd):
/// kept only when the parent directory is world-writable. A parent that
/// cannot be read any more keeps the event (a race must not hide it).
fn chmod_is_reported(event: &mut starling_proto::v1::Event) -> bool {
    let Some(Body::FileChmod(c)) = event.body.as_mut() else {
        return true;
    };
    if c.parent_mode != 0 {
        return true;
    }
    let parent = std::path::Path::new(&c.path).parent();
    match parent.map(std::fs::metadata) {
        Some(Ok(m)) => {
            use std::os::unix::fs::PermissionsExt;
            c.parent_mode = m.permissions().mode();
            c.parent_mode & 0o002 != 0
        }
        _ => true,
    }
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
    let mut filtered = 0u64;
    for r in records.drain(..) {
        match r {
            Ok(record) => {
                let mut e = starling_bpf::to_event(record, clock);
                if !chmod_is_reported(&mut e) {
                    filtered += 1;
                    continue;
                }
                cache.enrich(&mut e);
                events.push(e);
            }
            Err(err) => {
                decode_errors += 1;
                tracing::warn!(%err, "undecodable kernel record");
            }
        }
    }
    metrics::counter!(m::EVENTS_OBSERVED).increment(events.len() as u64 + decode_errors + filtered);
    if filtered > 0 {
        metrics::counter!(m::EVENTS_FILTERED, "kind" => "file_chmod", "by" => "node")
            .increment(filtered);
    }
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
