//! The status a mesh member publishes for people: what `starlingctl mesh
//! status` reads on any host of the mesh. A node writes it as JSON into
//! its data directory every few seconds.

use serde::{Deserialize, Serialize};

use crate::swarm::{CellView, ControlStats, MeshView, SinkView};

/// File name of the status inside a node's data directory.
pub const STATUS_FILE: &str = "mesh-status.json";

/// Where this member's own events go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UplinkStatus {
    /// Name of the aggregator or sink.
    pub to: String,
    /// "node" (an aggregator) or "sink".
    pub role: String,
    pub address: String,
}

/// One member's view of the mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshStatus {
    /// When the status was written (Unix milliseconds).
    pub written_at_ms: u64,
    pub host: String,
    pub peer_id: String,
    pub is_aggregator: bool,
    /// Nodes attached to this member while it is aggregator.
    pub relay_nodes: usize,
    pub uplink: Option<UplinkStatus>,
    pub cell: Option<CellView>,
    pub sinks: Vec<SinkView>,
    pub admitted_peers: usize,
    pub refused_peers: u64,
    pub dht_peers: usize,
    pub control: ControlStats,
}

impl MeshStatus {
    /// The status of a member with this view.
    pub fn from_view(
        view: &MeshView,
        uplink: Option<UplinkStatus>,
        relay_nodes: usize,
        written_at_ms: u64,
    ) -> Self {
        Self {
            written_at_ms,
            host: view
                .identity
                .as_ref()
                .map(|i| i.name.clone())
                .unwrap_or_default(),
            peer_id: view
                .local_peer_id
                .map(|p| p.to_string())
                .unwrap_or_default(),
            is_aggregator: view.is_aggregator(),
            relay_nodes,
            uplink,
            cell: view.cell.clone(),
            sinks: view.sinks.clone(),
            admitted_peers: view.admitted.len(),
            refused_peers: view.refused,
            dht_peers: view.dht_peers,
            control: view.stats.clone(),
        }
    }
}
