//! `starling-node` binary: wires config, spool, sensor and uplink together
//! and shuts them down cleanly on SIGINT/SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use starling_mesh::identity::{identity_of, Role};
use starling_mesh::trust::DataPlaneTrust;
use starling_node::config::NodeConfig;
use starling_node::health::{record_start, HealthWatch, SensorState};
use starling_node::metrics_names as m;
use starling_node::spool::Spool;
use starling_node::uplink::{Targets, Uplink};
use tokio::sync::watch;

/// Starling host daemon: eBPF sensor -> durable spool -> QUIC uplink to a
/// sink, directly or through the aggregator of its mesh cell.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML; see docs/configuration.md).
    #[arg(
        short,
        long,
        default_value = "/etc/starling/node.toml",
        env = "STARLING_NODE_CONFIG"
    )]
    config: PathBuf,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    limit_malloc_arenas();
    let config = NodeConfig::load(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(config, args.config))
}

/// Caps glibc's malloc arenas at two unless MALLOC_ARENA_MAX says
/// otherwise. glibc gives every thread that allocates an arena of its own
/// (up to eight per core), and memory freed in one stays there: with tokio
/// workers and RocksDB's threads all allocating, that held 27 MB more RSS
/// at 100k events/s (docs/sensor.md, "Cost"). Called before any thread
/// starts.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; no other
        // thread exists yet.
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) } != 1 {
            tracing::warn!("mallopt(M_ARENA_MAX) refused; memory use may be higher");
        }
    }
}

async fn run(local: NodeConfig, config_path: PathBuf) -> anyhow::Result<()> {
    // Fleet settings the task plane took before this start (the spool
    // quota and ring buffer apply only now); the rest follow live.
    let fleet_at_start = starling_node::fleet::persisted_settings(&local.data_dir);
    let config = starling_node::fleet::apply(&local, &fleet_at_start);
    if !fleet_at_start.is_empty() {
        tracing::info!(
            settings = fleet_at_start.len(),
            "fleet settings applied over the local file"
        );
    }
    let host_id = config.resolve_host_id()?;
    check_certificate_names(&config, &host_id)?;
    let trust = DataPlaneTrust::load(&config.tls.files(), Some(config.tls.revocation_list()))
        .context("loading TLS credentials")?;

    if !config.metrics.listen.is_empty() {
        let addr: std::net::SocketAddr = config
            .metrics
            .listen
            .parse()
            .with_context(|| format!("metrics.listen {:?}", config.metrics.listen))?;
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .context("starting the metrics endpoint")?;
    }

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    // Every start is recorded: a restart loop makes the node unhealthy.
    let starts = record_start(&config.data_dir);
    let spool_path = config.data_dir.join("spool");
    let spool = Arc::new(
        Spool::open(
            &spool_path,
            &host_id,
            config.spool.quota_bytes,
            config.spool.drop_policy,
            config.spool.sync_writes,
        )
        .with_context(|| format!("opening the spool at {}", spool_path.display()))?,
    );
    let st = spool.stats();
    metrics::gauge!(m::SPOOL_EVENTS).set(st.events as f64);
    metrics::gauge!(m::SPOOL_BYTES).set(st.bytes as f64);
    metrics::gauge!(m::SPOOL_NEXT_SEQ).set(st.next_seq as f64);
    tracing::info!(
        %host_id,
        spooled = st.events,
        next_seq = st.next_seq,
        "spool open"
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (spooled_tx, spooled_rx) = watch::channel(st.next_seq);
    let audit_spooled = spooled_tx.clone();

    let (filters_tx, filters_rx) = watch::channel(starling_node::sensor::filters_of(&config));
    let (sensor_state, sensor_state_rx) = watch::channel(SensorState::Disabled);
    let sensor_task = if config.sensor.enabled {
        let filters = filters_rx.borrow().clone();
        let sensor_config = starling_bpf::SensorConfig {
            ring_buffer_bytes: config.sensor.ring_buffer_bytes,
            filters: filters.clone(),
        };
        match starling_bpf::Sensor::load(&sensor_config) {
            Ok(sensor) => {
                tracing::info!(
                    watched_paths = filters.watched_paths.len(),
                    missing_tracepoints = ?sensor.missing_tracepoints(),
                    "sensor loaded"
                );
                metrics::gauge!(m::SENSOR_UP).set(1.0);
                sensor_state.send_replace(SensorState::Loaded);
                let spool = spool.clone();
                let shutdown = shutdown_rx.clone();
                Some(tokio::spawn(starling_node::sensor::run(
                    sensor,
                    spool,
                    spooled_tx,
                    filters_rx.clone(),
                    config.sensor.hash_max_bytes,
                    sensor_state.clone(),
                    shutdown,
                )))
            }
            Err(e) => {
                metrics::gauge!(m::SENSOR_UP).set(0.0);
                sensor_state.send_replace(SensorState::Down(e.to_string()));
                tracing::error!(
                    error = %e,
                    "sensor-degraded: the kernel sensor could not load; the node keeps shipping its spool"
                );
                None
            }
        }
    } else {
        metrics::gauge!(m::SENSOR_UP).set(0.0);
        tracing::warn!("sensor disabled by config (sensor.enabled = false)");
        None
    };

    // Tasks that end by themselves once shutdown turns true.
    let mut background = vec![tokio::spawn(trust.clone().watch(shutdown_rx.clone()))];
    let (targets, fleet_settings) = if config.mesh.enabled {
        let health = starling_node::mesh::HealthInputs {
            sensor: sensor_state_rx,
            watch: HealthWatch::new(&starts, std::time::Instant::now()),
        };
        let parts = starling_node::mesh::start(
            &config,
            &trust,
            spool.clone(),
            health,
            shutdown_rx.clone(),
        )?;
        background.extend(parts.tasks);
        if let Some(changes) = parts.task_events {
            background.push(tokio::spawn(starling_node::fleet::write_audit_events(
                changes,
                spool.clone(),
                audit_spooled,
                shutdown_rx.clone(),
            )));
        }
        (parts.targets, parts.fleet_settings)
    } else {
        (Targets::Static(config.uplink.sinks.clone()), None)
    };
    // The sensor's filters follow the local file (SIGHUP) with the
    // fleet's settings over it.
    background.push(tokio::spawn(starling_node::fleet::keep_filters(
        config_path.clone(),
        local,
        fleet_at_start,
        fleet_settings,
        filters_tx,
        shutdown_rx.clone(),
    )));
    let uplink = Uplink {
        host_id: host_id.clone(),
        config: config.uplink.clone(),
        spool: spool.clone(),
        trust,
    };
    let mut uplink_task = tokio::spawn(uplink.run(targets, spooled_rx, shutdown_rx.clone()));

    let mut sensor_task = sensor_task;
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        r = &mut uplink_task => {
            r.context("uplink task panicked")?.context("uplink failed")?;
        }
        r = async {
            match sensor_task.as_mut() {
                Some(t) => t.await,
                None => std::future::pending().await,
            }
        } => {
            // The sensor failing is not fatal to shipping what is spooled,
            // but it is a degraded node: say so loudly.
            metrics::gauge!(m::SENSOR_UP).set(0.0);
            let why = match r {
                Ok(Ok(())) => "stopped".to_owned(),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "sensor stopped; node is sensor-degraded");
                    format!("stopped: {e}")
                }
                Err(e) => {
                    tracing::error!(error = %e, "sensor task panicked; node is sensor-degraded");
                    format!("panicked: {e}")
                }
            };
            sensor_state.send_replace(SensorState::Down(why));
            sensor_task = None;
            shutdown_signal().await;
            tracing::info!("shutting down");
        }
    }
    let _ = shutdown_tx.send(true);
    let grace = Duration::from_secs(5);
    if let Some(t) = sensor_task {
        let _ = tokio::time::timeout(grace, t).await;
    }
    if !uplink_task.is_finished() {
        let _ = tokio::time::timeout(grace, uplink_task).await;
    }
    for t in background {
        let _ = tokio::time::timeout(grace, t).await;
    }
    let st = spool.stats();
    tracing::info!(
        spooled = st.events,
        next_seq = st.next_seq,
        "stopped; unacknowledged events stay spooled"
    );
    Ok(())
}

/// The node's certificate must name it: the sink files events under the
/// certificate's name and refuses batches that claim another host.
fn check_certificate_names(config: &NodeConfig, host_id: &str) -> anyhow::Result<()> {
    use rustls_pki_types::pem::PemObject;
    let cert = rustls_pki_types::CertificateDer::from_pem_file(&config.tls.cert)
        .with_context(|| format!("reading tls.cert {}", config.tls.cert.display()))?;
    let id =
        identity_of(&cert).with_context(|| format!("tls.cert {}", config.tls.cert.display()))?;
    if id.role != Role::Node || id.name != host_id {
        anyhow::bail!(
            "tls.cert {} is for {id}, but this host is node/{host_id} (set host_id or issue a certificate with `starlingctl cert issue --role node --name {host_id}`)",
            config.tls.cert.display()
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
