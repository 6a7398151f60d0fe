//! Where a node's uplink sends, chosen from its mesh view: an aggregator
//! of its cell (by RTT and load, sticky, skipping refusals for a back-off),
//! or a sink when the node is an aggregator itself or its cell has had no
//! aggregator for a while ([`RouteChoice`]).

use std::time::{Duration, Instant};

use starling_mesh::attach::{Attachment, Candidate, Route, RouteChoice};
use starling_mesh::identity::Role;
use starling_mesh::swarm::MeshView;
use tokio::sync::{mpsc, watch};

use crate::relay::sink_candidates;
use crate::uplink::Target;

/// The chooser's memory: one attachment among aggregators, one among
/// sinks, and how long the cell has been without an aggregator.
#[derive(Debug)]
pub struct TargetChooser {
    aggregators: Attachment,
    sinks: Attachment,
    route: RouteChoice<Instant>,
    /// The route of the last choice, for the log and the gauge.
    last_route: Option<Route>,
}

impl TargetChooser {
    /// A chooser that ships straight to a sink once the cell has had no
    /// aggregator for `direct_after` (None: never).
    pub fn new(direct_after: Option<Duration>) -> Self {
        Self {
            aggregators: Attachment::default(),
            sinks: Attachment::default(),
            route: RouteChoice::new(direct_after),
            last_route: None,
        }
    }

    /// The target for a node with this view, now.
    pub fn choose(&mut self, view: &MeshView, now: Instant) -> Option<Target> {
        let cell = view.cell.as_ref()?;
        let is_aggregator = view.is_aggregator();
        let route = self.route.route(now, is_aggregator, cell.aggregators.len());
        if self.last_route != Some(route) {
            match route {
                Route::Sink if !is_aggregator => tracing::warn!(
                    cell = %cell.name,
                    "the cell has no aggregator; shipping straight to a sink until it elects one"
                ),
                Route::Wait => tracing::info!(
                    cell = %cell.name,
                    "the cell has no aggregator yet; events stay spooled"
                ),
                _ => {}
            }
            self.last_route = Some(route);
        }
        match route {
            Route::Sink => self.sink(view, now),
            Route::Aggregator => self.aggregator(view, cell, now),
            Route::Wait => None,
        }
    }

    /// Whether the last choice sent a node that is not an aggregator
    /// straight to a sink.
    pub fn is_direct(&self, view: &MeshView) -> bool {
        self.last_route == Some(Route::Sink) && !view.is_aggregator()
    }

    fn sink(&mut self, view: &MeshView, now: Instant) -> Option<Target> {
        let candidates = sink_candidates(view);
        let name = self.sinks.choose(now, &candidates)?;
        let sink = view.sinks.iter().find(|s| s.name == name)?;
        Some(Target {
            address: sink.ingress.clone(),
            server_name: sink.name.clone(),
            role: Role::Sink,
        })
    }

    fn aggregator(
        &mut self,
        view: &MeshView,
        cell: &starling_mesh::swarm::CellView,
        now: Instant,
    ) -> Option<Target> {
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
/// fails, or a back-off (or the wait for an aggregator) may have run out.
pub async fn run(
    direct_after: Option<Duration>,
    mut view: watch::Receiver<MeshView>,
    target: watch::Sender<Option<Target>>,
    mut unavailable: mpsc::Receiver<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut chooser = TargetChooser::new(direct_after);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            r = view.changed() => if r.is_err() { return },
            Some(name) = unavailable.recv() => chooser.on_unavailable(Instant::now(), &name),
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let next = chooser.choose(&view.borrow_and_update(), Instant::now());
        let flag = |on: bool| if on { 1.0 } else { 0.0 };
        metrics::gauge!(crate::metrics_names::AGGREGATOR).set(flag(view.borrow().is_aggregator()));
        metrics::gauge!(crate::metrics_names::DIRECT_TO_SINK)
            .set(flag(chooser.is_direct(&view.borrow())));
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

#[cfg(test)]
mod tests {
    use super::*;
    use starling_mesh::identity::PeerIdentity;
    use starling_mesh::swarm::{CellView, MemberView, SinkView};

    fn member(host: &str, eligible: bool) -> MemberView {
        MemberView {
            host: host.into(),
            peer: String::new(),
            known: true,
            eligible,
            aggregator: false,
            load_pct: 0,
            capacity: 100,
            attached: 0,
            relay: if eligible {
                format!("{host}:7402")
            } else {
                String::new()
            },
            agent_version: String::new(),
            rtt_ms: Some(1.0),
        }
    }

    /// What "me" sees of a cell of `hosts` that elected `aggregators`, with
    /// one sink known.
    fn view(aggregators: &[&str]) -> MeshView {
        let hosts = ["me", "b", "c"];
        MeshView {
            identity: Some(PeerIdentity {
                role: Role::Node,
                name: "me".into(),
            }),
            cell: Some(CellView {
                name: "zone:test".into(),
                members: hosts
                    .iter()
                    .map(|h| member(h, aggregators.contains(h)))
                    .collect(),
                aggregators: aggregators.iter().map(|a| a.to_string()).collect(),
            }),
            sinks: vec![SinkView {
                name: "sink-1".into(),
                peer: String::new(),
                ingress: "10.0.0.9:7400".into(),
                load_pct: 0,
                rtt_ms: Some(1.0),
                heard_secs_ago: 1.0,
            }],
            ..MeshView::default()
        }
    }

    #[test]
    fn a_node_ships_through_its_aggregator_and_an_aggregator_to_a_sink() {
        let now = Instant::now();
        let mut chooser = TargetChooser::new(Some(Duration::from_secs(30)));
        let t = chooser.choose(&view(&["b"]), now).expect("a target");
        assert_eq!((t.server_name.as_str(), t.role), ("b", Role::Node));
        assert!(!chooser.is_direct(&view(&["b"])));
        let t = chooser.choose(&view(&["me"]), now).expect("a target");
        assert_eq!((t.server_name.as_str(), t.role), ("sink-1", Role::Sink));
        assert!(
            !chooser.is_direct(&view(&["me"])),
            "an aggregator is not a node going direct"
        );
    }

    #[test]
    fn a_cell_without_aggregators_goes_straight_to_a_sink_after_the_wait_and_back() {
        let start = Instant::now();
        let after = Duration::from_secs(30);
        let mut chooser = TargetChooser::new(Some(after));
        let none = view(&[]);
        assert_eq!(chooser.choose(&none, start), None, "waits first");
        assert_eq!(chooser.choose(&none, start + after / 2), None);
        let t = chooser.choose(&none, start + after).expect("a sink");
        assert_eq!((t.server_name.as_str(), t.role), ("sink-1", Role::Sink));
        assert!(chooser.is_direct(&none));
        // The cell elects an aggregator: back through it at once.
        let t = chooser
            .choose(&view(&["c"]), start + after * 2)
            .expect("the aggregator");
        assert_eq!((t.server_name.as_str(), t.role), ("c", Role::Node));
        assert!(!chooser.is_direct(&view(&["c"])));
    }

    #[test]
    fn turned_off_it_keeps_spooling() {
        let start = Instant::now();
        let mut chooser = TargetChooser::new(None);
        assert_eq!(chooser.choose(&view(&[]), start), None);
        assert_eq!(
            chooser.choose(&view(&[]), start + Duration::from_secs(3600)),
            None
        );
    }
}
