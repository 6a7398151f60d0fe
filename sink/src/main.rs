//! `starling-sink` binary.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use starling_mesh::identity::quic_server_config;
use starling_sink::backend::Backend;
use starling_sink::config::SinkConfig;
use starling_sink::ingress::{transport, Ingress};
use starling_sink::kafka::KafkaWriter;
use starling_sink::local_store::LocalStore;
use tokio::sync::watch;

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
    let mut server = quic_server_config(&config.tls.files()).context("loading TLS credentials")?;
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
    let ingress = Ingress::new(backend.clone(), config.limits.max_connections);
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
    backend.flush(Duration::from_secs(10));
    endpoint.wait_idle().await;
    tracing::info!("stopped");
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
