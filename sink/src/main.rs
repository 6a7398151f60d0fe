//! `starling-sink` binary.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use starling_mesh::enrol::Enrolment;
use starling_mesh::net::primary_ip;
use starling_mesh::swarm::{Mesh, MeshCommand, MeshConfig};
use starling_mesh::trust::DataPlaneTrust;
use starling_mesh::Multiaddr;
use starling_sink::backend::Backend;
use starling_sink::config::SinkConfig;
use starling_sink::ingress::{transport, Ingress};
use starling_sink::kafka::KafkaWriter;
use starling_sink::local_store::LocalStore;
use tokio::sync::watch;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Starling sink: QUIC ingress from nodes -> Kafka (or the embedded local store).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML; see docs/configuration.md).
    #[arg(
        short,
        long,
        default_value = "/etc/starling/sink.toml",
        env = "STARLING_SINK_CONFIG"
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
    let config = SinkConfig::load(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(config))
}

async fn run(config: SinkConfig) -> anyhow::Result<()> {
    let trust = DataPlaneTrust::load(&config.tls.files(), Some(config.tls.revocation_list()))
        .context("loading TLS credentials")?;
    let mut server = trust.server_config().context("loading TLS credentials")?;
    server.transport_config(Arc::new(transport(
        config.limits.max_streams_per_connection,
    )));

    if !config.metrics.listen.is_empty() {
        let addr: std::net::SocketAddr = config.metrics.listen.parse()?;
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .context("starting the metrics endpoint")?;
    }

    let backend = match &config.kafka {
        Some(k) => Backend::Kafka(
            KafkaWriter::new(k)
                .await
                .context("creating the Kafka producer")?,
        ),
        None => {
            let path = config.data_dir.join("store");
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
            Backend::Local(
                LocalStore::open(&path, config.local_store.max_events)
                    .with_context(|| format!("opening the local store at {}", path.display()))?,
            )
        }
    };
    let backend = Arc::new(backend);
    let listen: std::net::SocketAddr = config.listen.parse()?;
    let endpoint = quinn::Endpoint::server(server, listen)
        .with_context(|| format!("listening on {listen} (listen)"))?;
    tracing::info!(%listen, backend = backend.describe(), "sink ready");

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let trust_task = tokio::spawn(trust.clone().watch(shutdown_rx.clone()));
    let ingress = Ingress::new(
        backend.clone(),
        config.limits.max_connections,
        trust,
        &config.origin,
    )
    .context("loading this sink's key to sign receipts")?;
    let mesh_task = if config.mesh.enabled {
        Some(start_mesh(
            &config,
            endpoint.local_addr()?,
            &ingress,
            shutdown_rx.clone(),
        )?)
    } else {
        None
    };
    let serve = {
        let endpoint = endpoint.clone();
        let ingress = ingress.clone();
        tokio::spawn(async move {
            ingress
                .serve(&endpoint, shutdown_rx, Duration::from_secs(10))
                .await
        })
    };
    shutdown_signal().await;
    tracing::info!("shutting down: finishing batches in progress");
    let _ = shutdown_tx.send(true);
    let _ = serve.await;
    if let Some(t) = mesh_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    let _ = trust_task.await;
    backend.flush(Duration::from_secs(10));
    endpoint.wait_idle().await;
    tracing::info!("stopped");
    Ok(())
}

/// Joins the mesh and advertises the ingress (with its load) to aggregators.
fn start_mesh(
    config: &SinkConfig,
    bound: std::net::SocketAddr,
    ingress: &Arc<Ingress>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let parse = |a: &String| {
        a.parse::<Multiaddr>()
            .with_context(|| format!("multiaddr {a:?}"))
    };
    let advertised = if !config.mesh.ingress_advertise.is_empty() {
        config.mesh.ingress_advertise.clone()
    } else if bound.ip().is_unspecified() {
        std::net::SocketAddr::new(primary_ip(), bound.port()).to_string()
    } else {
        bound.to_string()
    };
    let enrolment =
        Enrolment::load(&config.tls.files()).context("loading the enrolment credentials")?;
    let mesh_config = MeshConfig {
        listen: config
            .mesh
            .listen
            .iter()
            .map(parse)
            .collect::<Result<_, _>>()?,
        bootstrap: config
            .mesh
            .bootstrap
            .iter()
            .map(parse)
            .collect::<Result<_, _>>()?,
        sink_ingress: Some(advertised.clone()),
        revocations: Some(config.tls.revocation_list()),
        tasks: config.tasks.settings(&config.tls.ca_cert, &config.data_dir),
        ..Default::default()
    };
    let (mut mesh, _view, commands) =
        Mesh::start(enrolment, mesh_config).context("starting the mesh")?;
    // A sink keeps no spool, so no audit trail of its own task states
    // (they are counted as `no_reader` in starling_task_events_dropped_total).
    drop(mesh.take_task_events());
    tracing::info!(ingress = %advertised, "advertising this sink to the mesh");
    let ingress = ingress.clone();
    let mut stop = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => { let _ = commands.try_send(MeshCommand::SinkLoad(ingress.load_pct())); }
                _ = stop.changed() => return,
            }
        }
    });
    Ok(tokio::spawn(mesh.run(shutdown)))
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
