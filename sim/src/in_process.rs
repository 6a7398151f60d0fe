//! Mesh members started inside a test's own process (real libp2p on
//! loopback), and waiting for their state: what the in-process task-plane
//! tests share.

use std::time::{Duration, Instant};

use starling_mesh::enrol::Enrolment;
use starling_mesh::swarm::{Mesh, MeshCommand, MeshConfig, MeshView};
use starling_mesh::Multiaddr;
use tokio::sync::{mpsc, watch};

/// Starts a member (or sink) with `config` on the current runtime; it runs
/// until `stop` turns true. Its view, and the commands it takes.
pub fn spawn_member(
    enrolment: Enrolment,
    config: MeshConfig,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<(watch::Receiver<MeshView>, mpsc::Sender<MeshCommand>)> {
    let (mesh, view, commands) = Mesh::start(enrolment, config)?;
    tokio::spawn(mesh.run(stop.clone()));
    Ok((view, commands))
}

/// Starts `hosts` with `start(host, bootstrap)`: the first with no
/// bootstrap, the others from the first's listen address. Their views, in
/// order, and that address.
pub async fn start_seeded(
    hosts: &[&str],
    mut start: impl FnMut(&str, Vec<Multiaddr>) -> watch::Receiver<MeshView>,
) -> anyhow::Result<(Vec<watch::Receiver<MeshView>>, Multiaddr)> {
    let (first, rest) = hosts
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("no hosts to start"))?;
    let mut seed_view = start(first, Vec::new());
    let seed = seed_view
        .wait_for(|v| !v.listen_addrs.is_empty())
        .await?
        .listen_addrs[0]
        .clone();
    let mut views = vec![seed_view];
    for host in rest {
        views.push(start(host, vec![seed.clone()]));
    }
    Ok((views, seed))
}

/// Polls `ok` every 50 ms until it holds; panics naming `what` when it
/// does not within `within`. How long it took.
pub async fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}
