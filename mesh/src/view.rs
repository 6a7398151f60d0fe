//! What a mesh member publishes about itself and what it sees: the view
//! the driver keeps current, and the commands that change what it
//! advertises.

use std::collections::BTreeMap;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::identity::PeerIdentity;

/// A member of the local cell, as this member sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    pub host: String,
    pub peer: String,
    /// Record not heard yet when false (the rest is then defaults).
    pub known: bool,
    pub eligible: bool,
    pub aggregator: bool,
    pub load_pct: u8,
    pub capacity: u32,
    /// Nodes attached while aggregator (refreshed at most every 10 s).
    pub attached: u32,
    pub relay: String,
    pub agent_version: String,
    /// Ping round trip when connected, milliseconds.
    pub rtt_ms: Option<f64>,
}

/// The local cell.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CellView {
    pub name: String,
    /// Live members, this one included, by host.
    pub members: Vec<MemberView>,
    /// Hosts elected aggregator, as this member computes it.
    pub aggregators: Vec<String>,
}

/// A sink, as adverts describe it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkView {
    pub name: String,
    pub peer: String,
    pub ingress: String,
    pub load_pct: u8,
    pub rtt_ms: Option<f64>,
    pub heard_secs_ago: f64,
}

/// Control-plane traffic since start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlStats {
    pub swim_bytes_in: u64,
    pub swim_bytes_out: u64,
    pub swim_dropped: u64,
    pub gossip_bytes_in: u64,
    /// Local-health score of the cell membership (0: healthy).
    #[serde(default)]
    pub local_health: u8,
    /// Members of its own cell that peers referred this member to and it
    /// announced itself to (`rendezvous`).
    #[serde(default)]
    pub referred_to: u64,
    /// Referrals this member gave dialers (members of their cells).
    #[serde(default)]
    pub referrals_given: u64,
}

/// What a member knows, published after every change.
#[derive(Debug, Clone, Default)]
pub struct MeshView {
    pub local_peer_id: Option<PeerId>,
    /// This member's enrolled identity.
    pub identity: Option<PeerIdentity>,
    pub listen_addrs: Vec<Multiaddr>,
    /// Peers that proved their enrolment, with their identities.
    pub admitted: BTreeMap<PeerId, PeerIdentity>,
    /// Peers refused since start.
    pub refused: u64,
    /// Latest ping RTT per admitted peer.
    pub rtt: BTreeMap<PeerId, Duration>,
    /// Peers in the Kademlia routing table (admitted ones only).
    pub dht_peers: usize,
    /// The local cell, once membership started (nodes only).
    pub cell: Option<CellView>,
    /// Sinks heard of, by name.
    pub sinks: Vec<SinkView>,
    pub stats: ControlStats,
}

impl MeshView {
    /// Whether this member is currently elected aggregator of its cell.
    pub fn is_aggregator(&self) -> bool {
        match (&self.cell, &self.identity) {
            (Some(c), Some(id)) => c.aggregators.contains(&id.name),
            _ => false,
        }
    }
}

/// Changes a member makes to what it advertises.
#[derive(Debug, Clone)]
pub enum MeshCommand {
    /// A node's relay load: nodes attached, and percent of capacity.
    NodeLoad { attached: u32, load_pct: u8 },
    /// A sink's load (percent of its connection limit).
    SinkLoad(u8),
    /// A node's events spooled and not yet acknowledged (its heartbeat
    /// carries them to the fleet view).
    SpoolBacklog(u64),
    /// The node's health (docs/rollouts.md, "Health"): None when healthy,
    /// else why not. A task under a rollout plan soaks only while its
    /// host is healthy, and is taken back when it turns unhealthy.
    Health(Option<String>),
    /// Gossips these bytes on the task topic without checking them, as a
    /// compromised host's modified agent would: a test double of a forger
    /// for benchmarks (feature `hostile`).
    #[cfg(feature = "hostile")]
    GossipTaskUnchecked(Vec<u8>),
    /// Sends this encoded cell summary to every sink as it is, whatever
    /// cell and aggregator it names: a test double of a member that makes
    /// summaries up (feature `hostile`).
    #[cfg(feature = "hostile")]
    SendSummaryUnchecked(Vec<u8>),
}
