//! Where a node's uplink sends, chosen from its mesh view: an aggregator
//! of its cell (by RTT and load, sticky, skipping refusals for a back-off),
//! or a sink when the node is an aggregator itself.

use std::time::Instant;

use starling_mesh::attach::{Attachment, Candidate};
use starling_mesh::identity::Role;
use starling_mesh::swarm::MeshView;
use tokio::sync::{mpsc, watch};

use crate::relay::sink_candidates;
use crate::uplink::Target;

/// The chooser's memory: one attachment among aggregators, one among sinks.
#[derive(Debug, Default)]
pub struct TargetChooser {
    aggregators: Attachment,
    sinks: Attachment,
}

impl TargetChooser {
    /// The target for a node with this view, now.
    pub fn choose(&mut self, view: &MeshView, now: Instant) -> Option<Target> {
        if view.is_aggregator() {
            let candidates = sink_candidates(view);
            let name = self.sinks.choose(now, &candidates)?;
            let sink = view.sinks.iter().find(|s| s.name == name)?;
            return Some(Target {
                address: sink.ingress.clone(),
                server_name: sink.name.clone(),
                role: Role::Sink,
            });
        }
        let cell = view.cell.as_ref()?;
        let me = view.identity.as_ref().map(|i| i.name.as_str());
        let relays: Vec<_> = cell
            .members
            .iter()
            .filter(|m| cell.aggregators.contains(&m.host))
            .filter(|m| Some(m.host.as_str()) != me && !m.relay.is_empty())
            .collect();
        let candidates: Vec<Candidate> = relays
            .iter()
            .map(|m| Candidate {
                id: m.host.clone(),
                rtt: m
                    .rtt_ms
                    .map(|ms| std::time::Duration::from_secs_f64(ms / 1000.0)),
                load: f64::from(m.load_pct) / 100.0,
            })
            .collect();
        let name = self.aggregators.choose(now, &candidates)?;
        let m = relays.iter().find(|m| m.host == name)?;
        Some(Target {
            address: m.relay.clone(),
            server_name: m.host.clone(),
            role: Role::Node,
        })
    }

    /// The uplink could not use the target of this name.
    pub fn on_unavailable(&mut self, now: Instant, name: &str) {
        self.aggregators.on_unavailable(now, name);
        self.sinks.on_unavailable(now, name);
    }
}

/// Republishes the chosen target whenever the view changes, a target
/// fails, or a back-off may have run out.
pub async fn run(
    mut view: watch::Receiver<MeshView>,
    target: watch::Sender<Option<Target>>,
    mut unavailable: mpsc::Receiver<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut chooser = TargetChooser::default();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            r = view.changed() => if r.is_err() { return },
            Some(name) = unavailable.recv() => chooser.on_unavailable(Instant::now(), &name),
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let next = chooser.choose(&view.borrow_and_update(), Instant::now());
        metrics::gauge!(crate::metrics_names::AGGREGATOR).set(if view.borrow().is_aggregator() {
            1.0
        } else {
            0.0
        });
        target.send_if_modified(|t| {
            if *t != next {
                match &next {
                    Some(n) => {
                        tracing::info!(to = %n.server_name, role = %n.role, "uplink target chosen")
                    }
                    None => tracing::warn!("no aggregator or sink available; events stay spooled"),
                }
                *t = next;
                true
            } else {
                false
            }
        });
    }
}
