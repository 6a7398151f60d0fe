//! The node's part in the mesh: starts the libp2p member of its cell, the
//! relay it runs when elected aggregator, the chooser of its uplink
//! target, and the status file `starlingctl mesh status` reads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use starling_mesh::election::ElectionParams;
use starling_mesh::enrol::Enrolment;
use starling_mesh::net::{ip_of, primary_ip};
use starling_mesh::status::{MeshStatus, UplinkStatus, STATUS_FILE};
use starling_mesh::swarm::{CellSettings, FleetSettings, Mesh, MeshCommand, MeshConfig, MeshView};
use starling_mesh::trust::DataPlaneTrust;
use starling_mesh::Multiaddr;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::NodeConfig;
use crate::health::{HealthWatch, SensorState, HEALTHY};
use crate::relay::{self, Relay};
use crate::targets;
use crate::uplink::{Target, Targets};

/// What the rest of the node gets from the mesh.
pub struct MeshParts {
    /// Where the uplink sends.
    pub targets: Targets,
    /// The member's view (for status and tests).
    pub view: watch::Receiver<MeshView>,
    /// Background tasks; they end when shutdown turns true.
    pub tasks: Vec<JoinHandle<()>>,
    /// The fleet settings of the task plane (None when it is off).
    pub fleet_settings: Option<watch::Receiver<FleetSettings>>,
    /// Its state changes, to be written as events (None when it is off).
    pub task_events: Option<mpsc::Receiver<starling_proto::v1::TaskStateChange>>,
}

/// What the node's health is judged by (crate::health), handed to the
/// mesh every two seconds.
pub struct HealthInputs {
    /// The sensor as the node last saw it.
    pub sensor: watch::Receiver<SensorState>,
    pub watch: HealthWatch,
}

/// Joins the mesh as configured; the relay checks peers with `trust`, the
/// member's heartbeat carries `spool`'s backlog, and its rollouts soak by
/// `health`. Must run inside the runtime.
pub fn start(
    config: &NodeConfig,
    trust: &DataPlaneTrust,
    spool: Arc<crate::spool::Spool>,
    health: HealthInputs,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<MeshParts> {
    let section = &config.mesh;
    let files = config.tls.files();
    let enrolment = Enrolment::load(&files).context("loading the enrolment credentials")?;
    let parse = |a: &String| {
        a.parse::<Multiaddr>()
            .with_context(|| format!("multiaddr {a:?}"))
    };
    let advertise = if section.advertise.is_empty() {
        None
    } else {
        Some(parse(&section.advertise)?)
    };
    let mut tasks = Vec::new();

    // The relay listener is bound first: its address goes into the
    // member's record.
    let (serving_tx, serving_rx) = watch::channel(false);
    let (link_tx, link_rx) = watch::channel(None);
    let mut relay_parts = None;
    let mut relay_address = String::new();
    if section.aggregator {
        let mut server = trust.server_config().context("loading TLS credentials")?;
        server.transport_config(Arc::new(relay::transport()));
        let listen: SocketAddr = section.relay_listen.parse().context("mesh.relay_listen")?;
        let mut endpoint = quinn::Endpoint::server(server, listen)
            .with_context(|| format!("relay listening on {listen} (mesh.relay_listen)"))?;
        endpoint.set_default_client_config(trust.client_config()?);
        let bound = endpoint.local_addr()?;
        relay_address = if !section.relay_advertise.is_empty() {
            section.relay_advertise.clone()
        } else if bound.ip().is_unspecified() {
            let ip = advertise
                .as_ref()
                .and_then(ip_of)
                .unwrap_or_else(primary_ip);
            SocketAddr::new(ip, bound.port()).to_string()
        } else {
            bound.to_string()
        };
        let relay = Relay::new(
            section.capacity as usize,
            serving_rx,
            link_rx,
            trust.clone(),
        );
        relay_parts = Some((relay, endpoint));
    }

    let mesh_config = MeshConfig {
        listen: section.listen.iter().map(parse).collect::<Result<_, _>>()?,
        advertise,
        bootstrap: section
            .bootstrap
            .iter()
            .map(parse)
            .collect::<Result<_, _>>()?,
        cell: Some(CellSettings {
            zone: (!section.zone.is_empty()).then(|| section.zone.clone()),
            expected_size: section.expected_cell_size,
            eligible: section.aggregator,
            capacity: section.capacity,
            relay: relay_address.clone(),
            election: ElectionParams::default(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            tags: config.tasks.tags.clone(),
        }),
        revocations: Some(config.tls.revocation_list()),
        tasks: config.tasks.settings(&config.tls.ca_cert, &config.data_dir),
        ..Default::default()
    };
    let (mut mesh, view, commands) =
        Mesh::start(enrolment, mesh_config).context("starting the mesh")?;
    let fleet_settings = mesh.fleet_settings();
    let task_events = mesh.take_task_events();
    tracing::info!(relay = %relay_address, "mesh member started");
    tasks.push(tokio::spawn(mesh.run(shutdown.clone())));

    let relay = relay_parts.map(|(relay, endpoint)| {
        tasks.push(tokio::spawn({
            let relay = relay.clone();
            let endpoint = endpoint.clone();
            let shutdown = shutdown.clone();
            async move { relay.serve(endpoint, shutdown).await }
        }));
        tasks.push(tokio::spawn(relay::sink_link(
            endpoint,
            trust.clone(),
            view.clone(),
            link_tx,
            shutdown.clone(),
        )));
        relay
    });

    let (target_tx, target_rx) = watch::channel(None);
    let (unavailable_tx, unavailable_rx) = mpsc::channel(16);
    tasks.push(tokio::spawn(targets::run(
        section.direct_to_sink_after(),
        view.clone(),
        target_tx,
        unavailable_rx,
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(report(
        view.clone(),
        serving_tx,
        LocalLoad {
            relay,
            spool,
            health,
        },
        commands,
        target_rx.clone(),
        config.data_dir.join(STATUS_FILE),
        shutdown,
    )));
    Ok(MeshParts {
        targets: Targets::Mesh {
            current: target_rx,
            unavailable: unavailable_tx,
        },
        view,
        tasks,
        fleet_settings,
        task_events,
    })
}

/// What this node tells the mesh about itself: its relay's load (when it
/// may relay), its spool's backlog (for its heartbeat) and its health
/// (for its rollouts).
struct LocalLoad {
    relay: Option<Arc<Relay>>,
    spool: Arc<crate::spool::Spool>,
    health: HealthInputs,
}

/// Every two seconds: tells the relay whether it serves, tells the mesh
/// the relay's load, the spool's backlog and the node's health, and
/// writes the status file.
async fn report(
    view: watch::Receiver<MeshView>,
    serving: watch::Sender<bool>,
    mut load: LocalLoad,
    commands: mpsc::Sender<MeshCommand>,
    target: watch::Receiver<Option<Target>>,
    status_path: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut view_changes = view.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = view_changes.changed() => if r.is_err() { return },
            _ = shutdown.changed() => {
                let _ = std::fs::remove_file(&status_path);
                return;
            }
        }
        let is_aggregator = view.borrow().is_aggregator();
        serving.send_if_modified(|s| std::mem::replace(s, is_aggregator) != is_aggregator);
        let relay_nodes = load.relay.as_ref().map_or(0, |r| r.nodes());
        let spooled = load.spool.stats();
        let _ = commands.try_send(MeshCommand::SpoolBacklog(spooled.events));
        let sensor = load.health.sensor.borrow().clone();
        let unhealthy = load
            .health
            .watch
            .observe(std::time::Instant::now(), &sensor, &spooled);
        metrics::gauge!(HEALTHY).set(if unhealthy.is_none() { 1.0 } else { 0.0 });
        let _ = commands.try_send(MeshCommand::Health(unhealthy));
        if let Some(r) = &load.relay {
            let _ = commands.try_send(MeshCommand::NodeLoad {
                attached: r.nodes() as u32,
                load_pct: r.load_pct(),
            });
        }
        let uplink = target.borrow().as_ref().map(|t| UplinkStatus {
            to: t.server_name.clone(),
            role: t.role.to_string(),
            address: t.address.clone(),
        });
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let status = MeshStatus::from_view(&view.borrow(), uplink, relay_nodes, now);
        if let Err(e) = write_status(&status_path, &status) {
            tracing::debug!(error = %e, "cannot write the mesh status");
        }
    }
}

fn write_status(path: &Path, status: &MeshStatus) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(status)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
