//! Fleet configuration over the local file: the task plane's settings win
//! for the settings they name, a reset hands a setting back to the file,
//! and the sensor's filters follow both live (docs/tasks.md, "Fleet
//! configuration").

use std::path::{Path, PathBuf};

use std::sync::Arc;

use starling_mesh::swarm::{task_state_dir, FleetSettings, LEDGER_FILE};
use starling_proto::v1::config_setting::Setting;
use starling_proto::v1::{event::Body, Event, EventHeader, TaskStateChange};
use tokio::sync::{mpsc, watch};

use crate::spool::Spool;

use crate::config::{NodeConfig, RateLimitConfig};

/// The fleet settings persisted by the task plane (none when it never
/// ran): read at start, so settings taken at the next restart (the spool
/// quota, the ring buffer) apply before the spool and the sensor open.
pub fn persisted_settings(data_dir: &Path) -> FleetSettings {
    let path = task_state_dir(data_dir).join(LEDGER_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice::<starling_task::Ledger>(&bytes) {
            Ok(ledger) => ledger.settings(),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "task ledger unreadable; fleet settings ignored until the task plane rewrites it");
                FleetSettings::new()
            }
        },
        Err(_) => FleetSettings::new(),
    }
}

/// `local` with the fleet's settings applied over it.
pub fn apply(local: &NodeConfig, fleet: &FleetSettings) -> NodeConfig {
    let mut c = local.clone();
    for (_, setting) in fleet.values() {
        if setting.reset {
            continue;
        }
        let sensor = &mut c.sensor;
        match &setting.setting {
            Some(Setting::SensorKind(k)) => {
                sensor.disabled_kinds.retain(|d| *d != k.kind);
                if !k.enabled && starling_bpf::kind_number(&k.kind).is_some() {
                    sensor.disabled_kinds.push(k.kind.clone());
                }
            }
            Some(Setting::WatchPaths(l)) => sensor.watch_paths = l.values.clone(),
            Some(Setting::QuietPaths(l)) => sensor.quiet_paths = l.values.clone(),
            Some(Setting::QuietExes(l)) => {
                sensor.quiet_exes = l.values.iter().map(PathBuf::from).collect()
            }
            Some(Setting::QuietCgroups(l)) => sensor.quiet_cgroups = l.values.clone(),
            Some(Setting::RateLimit(r)) if starling_bpf::kind_number(&r.kind).is_some() => {
                sensor.rate_limits.insert(
                    r.kind.clone(),
                    RateLimitConfig {
                        per_second: r.per_second.max(1),
                        burst: (r.burst > 0).then_some(r.burst),
                    },
                );
            }
            Some(Setting::SpoolQuotaBytes(b)) => c.spool.quota_bytes = *b,
            Some(Setting::RingBufferBytes(b)) => c.sensor.ring_buffer_bytes = *b,
            Some(Setting::RateLimit(_)) | None => {}
        }
    }
    c
}

/// Keeps the sensor's filters equal to the local file (re-read on SIGHUP)
/// with the fleet's settings over it (those of `fleet` as they change, or
/// `at_start` without a task plane), until shutdown.
pub async fn keep_filters(
    config_path: PathBuf,
    mut local: NodeConfig,
    at_start: FleetSettings,
    mut fleet: Option<watch::Receiver<FleetSettings>>,
    filters: watch::Sender<starling_bpf::SensorFilters>,
    mut shutdown: watch::Receiver<bool>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: the local file's filters reload only on restart");
            None
        }
    };
    loop {
        let settings = fleet
            .as_ref()
            .map_or_else(|| at_start.clone(), |f| f.borrow().clone());
        let effective = apply(&local, &settings);
        let new = crate::sensor::filters_of(&effective);
        if filters.send_if_modified(|f| std::mem::replace(f, new.clone()) != new) {
            tracing::info!(
                fleet_settings = settings.len(),
                disabled = ?effective.sensor.disabled_kinds,
                "sensor filters updated"
            );
        }
        tokio::select! {
            changed = async {
                match fleet.as_mut() {
                    Some(f) => f.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => if !changed {
                // The task plane stopped: keep what it last held.
                let last = fleet.take().map(|f| f.borrow().clone());
                return keep_last(config_path, local, last.unwrap_or(at_start), filters, shutdown).await;
            },
            Some(()) = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => match NodeConfig::load(&config_path) {
                Ok(c) => {
                    tracing::info!(config = %config_path.display(), "SIGHUP: reloading the sensor filters (other settings need a restart)");
                    local = c;
                }
                Err(e) => tracing::error!(error = %e, "SIGHUP: config not reloaded"),
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// Writes each task state change the task plane reports into the spool as
/// a `task_state` event, so the audit trail (which host applied what,
/// signed by whom) reaches Kafka like every other event. Runs until the
/// plane stops or shutdown.
pub async fn write_audit_events(
    mut changes: mpsc::Receiver<TaskStateChange>,
    spool: Arc<Spool>,
    spooled: watch::Sender<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let change = tokio::select! {
            c = changes.recv() => match c {
                Some(c) => c,
                None => return,
            },
            _ = shutdown.changed() => return,
        };
        let mut batch = vec![audit_event(change)];
        while let Ok(more) = changes.try_recv() {
            batch.push(audit_event(more));
        }
        match crate::sensor::append(&spool, batch) {
            Ok(out) => {
                crate::sensor::record_append(&spool, &out);
                spooled.send_replace(spool.stats().next_seq);
            }
            Err(e) => tracing::error!(error = %e, "task state changes not spooled"),
        }
    }
}

/// A task state change as an event (the spool stamps host and sequence).
fn audit_event(change: TaskStateChange) -> Event {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    Event {
        header: Some(EventHeader {
            time_unix_ns: now,
            ..Default::default()
        }),
        body: Some(Body::TaskState(change)),
    }
}

/// [`keep_filters`] once the task plane is gone.
fn keep_last(
    config_path: PathBuf,
    local: NodeConfig,
    settings: FleetSettings,
    filters: watch::Sender<starling_bpf::SensorFilters>,
    shutdown: watch::Receiver<bool>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(keep_filters(
        config_path,
        local,
        settings,
        None,
        filters,
        shutdown,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_proto::v1::{ConfigSetting, KindRateLimit, SensorKindSwitch, StringList};

    fn setting(generation: u64, reset: bool, s: Setting) -> (u64, ConfigSetting) {
        (
            generation,
            ConfigSetting {
                generation,
                reset,
                setting: Some(s),
            },
        )
    }

    #[test]
    fn the_fleet_wins_where_it_speaks_and_a_reset_hands_back() {
        let mut local = NodeConfig::default();
        local.sensor.disabled_kinds = vec!["tcp_accept".into()];
        local.sensor.quiet_paths = vec!["/var/log/".into()];
        let mut fleet = FleetSettings::new();
        fleet.insert(
            "sensor.kinds.tcp_accept".into(),
            setting(
                2,
                false,
                Setting::SensorKind(SensorKindSwitch {
                    kind: "tcp_accept".into(),
                    enabled: true,
                }),
            ),
        );
        fleet.insert(
            "sensor.kinds.dns_query".into(),
            setting(
                2,
                false,
                Setting::SensorKind(SensorKindSwitch {
                    kind: "dns_query".into(),
                    enabled: false,
                }),
            ),
        );
        fleet.insert(
            "sensor.watch_paths".into(),
            setting(
                3,
                false,
                Setting::WatchPaths(StringList {
                    values: vec!["/srv/".into()],
                }),
            ),
        );
        fleet.insert(
            "sensor.quiet_paths".into(),
            setting(4, true, Setting::QuietPaths(StringList::default())),
        );
        fleet.insert(
            "sensor.rate_limits.process_exec".into(),
            setting(
                5,
                false,
                Setting::RateLimit(KindRateLimit {
                    kind: "process_exec".into(),
                    per_second: 50,
                    burst: 0,
                }),
            ),
        );
        fleet.insert(
            "spool.quota_bytes".into(),
            setting(6, false, Setting::SpoolQuotaBytes(4096)),
        );
        let c = apply(&local, &fleet);
        assert_eq!(c.sensor.disabled_kinds, ["dns_query"]);
        assert_eq!(c.sensor.watch_paths, ["/srv/"]);
        assert_eq!(
            c.sensor.quiet_paths,
            ["/var/log/"],
            "reset: the local file's value"
        );
        assert_eq!(c.sensor.rate_limits["process_exec"].per_second, 50);
        assert_eq!(c.spool.quota_bytes, 4096);
        assert_eq!(
            apply(&local, &FleetSettings::new()).sensor.disabled_kinds,
            ["tcp_accept"]
        );
    }

    #[test]
    fn persisted_settings_of_a_missing_or_broken_ledger_are_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(persisted_settings(dir.path()).is_empty());
        std::fs::create_dir_all(task_state_dir(dir.path())).unwrap();
        std::fs::write(task_state_dir(dir.path()).join(LEDGER_FILE), b"{not json").unwrap();
        assert!(persisted_settings(dir.path()).is_empty());
    }
}
