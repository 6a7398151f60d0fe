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

/// The sensor filters of a config, with "~/" expanded against this host's
/// accounts and the node's own pid.
pub fn filters_of(config: &crate::config::NodeConfig) -> SensorFilters {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let homes = crate::config::home_directories(&passwd);
    config.sensor.filters(&homes, std::process::id())
}

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
/// (a config reload) are applied to the kernel as they come, and `state`
/// says whether the kernel took them (the node's health).
pub async fn run(
    mut sensor: Sensor,
    spool: Arc<Spool>,
    spooled: watch::Sender<u64>,
    filters: watch::Receiver<SensorFilters>,
    hash_max_bytes: u64,
    state: watch::Sender<crate::health::SensorState>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let clock = BootClock::now();
    let mut cache = ProcessCache::seeded_from_proc(hash_max_bytes);
    tracing::info!(processes = cache.len(), "process cache seeded from /proc");
    let mut records = Vec::with_capacity(READ_CHUNK);
    let mut reported = DropCounts::default();
    // What the node matches itself: the paths the kernel left to it.
    let mut current = filters.borrow().clone();
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
                        current = new;
                        state.send_replace(crate::health::SensorState::Loaded);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "sensor filters refused; the previous ones stay");
                        state.send_replace(crate::health::SensorState::FiltersRefused(e.to_string()));
                    }
                }
                continue;
            }
            _ = shutdown.changed() => {
                // What the kernel already captured, and what it lost since
                // the last tick, goes to the spool too.
                sensor.read_available(usize::MAX, &mut records);
                if !records.is_empty() {
                    let events = to_events(&mut records, &clock, &mut cache, &current);
                    let out = append(&spool, events)?;
                    record_append(&spool, &out);
                }
                report_drops(&sensor, &spool, &mut reported)?;
                return Ok(());
            }
        }
        let events = to_events(&mut records, &clock, &mut cache, &current);
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

/// A rename or unlink the kernel could not match as written (".", ".."
/// or empty components): kept when the filters watch a path's lexical
/// form, which the event now carries.
fn unmatched_path_is_reported(event: &starling_proto::v1::Event, filters: &SensorFilters) -> bool {
    match &event.body {
        Some(Body::FileUnlink(u)) => filters.watches(&u.path),
        Some(Body::FileRename(r)) => filters.watches(&r.old_path) || filters.watches(&r.new_path),
        _ => true,
    }
}

/// Decodes and enriches kernel records, leaves out what the node filters
/// (counted by kind); undecodable ones become one loss event (and a
/// counter).
fn to_events(
    records: &mut Vec<Result<RawRecord, starling_bpf::RawError>>,
    clock: &BootClock,
    cache: &mut ProcessCache,
    filters: &SensorFilters,
) -> Vec<starling_proto::v1::Event> {
    let mut events = Vec::with_capacity(records.len() + 1);
    let mut decode_errors = 0u64;
    let mut filtered = 0u64;
    for r in records.drain(..) {
        match r {
            Ok(RawRecord::CgroupCreated(c)) => {
                // Not an event: the resolver remembers the path.
                metrics::counter!(m::CGROUPS_LEARNED).increment(1);
                cache.learn_cgroup(c);
            }
            Ok(record) => {
                let unmatched = matches!(&record, RawRecord::File(f) if f.unmatched);
                let Some(mut e) = starling_bpf::to_event(record, clock) else {
                    continue;
                };
                let reported = if unmatched {
                    unmatched_path_is_reported(&e, filters)
                } else {
                    chmod_is_reported(&mut e)
                };
                if !reported {
                    let kind = starling_proto::event_kind(&e);
                    metrics::counter!(m::EVENTS_FILTERED, "kind" => kind, "by" => "node")
                        .increment(1);
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
    if decode_errors > 0 {
        metrics::counter!(m::EVENTS_DROPPED, "reason" => "decode_error").increment(decode_errors);
        events.push(loss_event(Reason::DecodeError, decode_errors, 0, 0));
    }
    events
}

pub(crate) fn append(
    spool: &Spool,
    events: Vec<starling_proto::v1::Event>,
) -> anyhow::Result<AppendOutcome> {
    // RocksDB writes block (an fsync with sync_writes); keep them off the
    // async workers' fast path.
    Ok(tokio::task::block_in_place(|| spool.append(events))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_bpf::{FileOp, FileRecord, RecordHeader};

    fn file_event(
        op: FileOp,
        path: &str,
        new_path: &str,
        unmatched: bool,
    ) -> starling_proto::v1::Event {
        let record = RawRecord::File(FileRecord {
            header: RecordHeader {
                tgid: 1,
                tid: 1,
                ppid: 0,
                uid: 0,
                gid: 0,
                ktime_ns: 0,
                cgroup_id: 0,
                comm: "rm".into(),
            },
            op,
            result: 0,
            write: false,
            created: false,
            truncated: false,
            unmatched,
            mode: 0,
            parent_mode: None,
            path: path.into(),
            new_path: new_path.into(),
        });
        starling_bpf::to_event(record, &BootClock::now()).expect("a file record is an event")
    }

    fn watching_cron() -> SensorFilters {
        SensorFilters {
            watched_paths: vec!["/etc/cron".into(), "/root/.ssh/".into()],
            ..Default::default()
        }
    }

    #[test]
    fn chmod_by_path_is_kept_only_in_a_world_writable_or_vanished_directory() {
        let chmod = |path: &str| starling_proto::v1::Event {
            body: Some(Body::FileChmod(starling_proto::v1::FileChmod {
                path: path.into(),
                mode: 0o755,
                ..Default::default()
            })),
            ..Default::default()
        };
        let mut e = chmod("/tmp/payload");
        assert!(chmod_is_reported(&mut e));
        let Some(Body::FileChmod(c)) = &e.body else {
            panic!("not a chmod: {e:?}");
        };
        assert_eq!(c.parent_mode & 0o002, 0o002, "/tmp's mode was filled in");
        assert!(!chmod_is_reported(&mut chmod("/etc/payload")));
        // A parent gone by the time the node looks keeps the event.
        assert!(chmod_is_reported(&mut chmod("/nonexistent-starling-dir/x")));
    }

    #[test]
    fn unmatched_unlinks_are_kept_when_their_lexical_path_is_watched() {
        let filters = watching_cron();
        let e = file_event(FileOp::Unlink, "/tmp/../etc//cron.d/job", "", true);
        let Some(Body::FileUnlink(u)) = &e.body else {
            panic!("not an unlink: {e:?}");
        };
        assert_eq!(u.path, "/etc/cron.d/job");
        assert_eq!(u.written_path, "/tmp/../etc//cron.d/job");
        assert!(unmatched_path_is_reported(&e, &filters));
        let e = file_event(FileOp::Unlink, "/etc/cron.d/../passwd", "", true);
        assert!(!unmatched_path_is_reported(&e, &filters));
    }

    #[test]
    fn unmatched_renames_are_kept_when_either_lexical_path_is_watched() {
        let filters = watching_cron();
        // A directory moved into place under a watched "dir/" prefix.
        let e = file_event(FileOp::Rename, "/tmp/./keys", "/root/x/../.ssh", true);
        let Some(Body::FileRename(r)) = &e.body else {
            panic!("not a rename: {e:?}");
        };
        assert_eq!(
            (r.old_path.as_str(), r.new_path.as_str()),
            ("/tmp/keys", "/root/.ssh")
        );
        assert_eq!(r.written_new_path, "/root/x/../.ssh");
        assert!(unmatched_path_is_reported(&e, &filters));
        let e = file_event(FileOp::Rename, "/tmp/./a", "/tmp/b", true);
        assert!(!unmatched_path_is_reported(&e, &filters));
        // A plain path is left as written.
        let Some(Body::FileRename(r)) = &e.body else {
            panic!("not a rename: {e:?}");
        };
        assert_eq!(
            (r.written_old_path.as_str(), r.written_new_path.as_str()),
            ("/tmp/./a", "")
        );
    }
}
