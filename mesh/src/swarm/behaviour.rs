//! The mesh's libp2p behaviours in one place: which protocols a member
//! speaks, with their size limits and timeouts, and the enrolment and
//! membership messages they carry. The driver (`Mesh`) reacts to their
//! events.

use std::time::Duration;

use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{allow_block_list, gossipsub, identify, kad, ping};
use serde::{Deserialize, Serialize};

use super::dial_cause::DialCause;
use super::proto_codec::{ProtoBehaviour, ProtoCodec};
use super::redial;
use super::{
    fleet, forgers, task_sync, CELL_SUMMARY_PROTOCOL, ENROL_PROTOCOL, GOSSIP_QUEUE_PER_CONNECTION,
    KAD_PROTOCOL, KAD_REPLICATION, MAX_ENROL_BYTES, MAX_SWIM_BYTES, PING_INTERVAL, SWIM_PROTOCOL,
    TASK_REPORT_PROTOCOL, TASK_SYNC_PROTOCOL,
};
use crate::rendezvous::{CellCard, Referral};

/// A certificate chain, as each side presents it, with the sender's cell
/// and, in a listener's answer, whom of the dialer's cell (and of a few
/// others) it knows; or, from a listener admitting its most, no chain and
/// how long to stay away.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrolMessage {
    /// The sender's certificate chain, end entity first (DER).
    pub chain: Vec<Vec<u8>>,
    /// "Busy, come back after this many milliseconds" (absent in every
    /// other message, and from members that predate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_ms: Option<u32>,
    /// The sender's cell and address (absent from sinks, from members
    /// whose cell has not started, and from members that predate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<CellCard>,
    /// In a listener's answer: members of the dialer's cell, then of other
    /// cells, that the listener knows (`rendezvous`). Hints only: each is
    /// admitted like any peer before it is used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub referrals: Vec<Referral>,
    /// The gossip topics the sender subscribes to, so that the receiver
    /// can tell when gossipsub lost the sender's announcement of one
    /// (`subscriptions`; absent from members that predate it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
}

/// One membership datagram, labelled with the sender's cell so that
/// members of different cells never mix: a frame on the datagram streams,
/// and the request of the request-response protocol that came before.
pub type SwimMessage = crate::datagram_frame::FramedDatagram;

/// Everything a mesh member runs on each connection.
#[derive(NetworkBehaviour)]
pub struct MeshBehaviour {
    /// Peers held off (forgers): their connections closed and refused.
    pub(super) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(super) redial: redial::RedialGate,
    pub(super) enrol: request_response::cbor::Behaviour<EnrolMessage, EnrolMessage>,
    /// Membership datagrams of members built before the datagram streams.
    pub(super) swim: DialCause<request_response::cbor::Behaviour<SwimMessage, ()>>,
    /// Membership datagrams framed on long-lived streams
    /// (`datagram_links`).
    pub(super) datagrams: libp2p_stream::Behaviour,
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
    pub(super) kad: DialCause<kad::Behaviour<kad::store::MemoryStore>>,
    pub(super) gossipsub: DialCause<gossipsub::Behaviour>,
    pub(super) tasks_sync: ProtoBehaviour<task_sync::SyncRequest, task_sync::SyncResponse>,
    pub(super) task_reports: ProtoBehaviour<starling_task::rollup::HostReport, ()>,
    /// A cell's summary, from its publishing aggregator to each sink.
    pub(super) cell_summaries: DialCause<ProtoBehaviour<starling_task::rollup::CellSummary, ()>>,
    pub(super) fleet_query: DialCause<ProtoBehaviour<fleet::FleetQuery, fleet::FleetAnswer>>,
}

/// Every behaviour of a member, configured.
pub(super) fn build_behaviour(key: &libp2p::identity::Keypair) -> Result<MeshBehaviour, String> {
    let peer_id = key.public().to_peer_id();
    let codec = request_response::cbor::codec::Codec::default()
        .set_request_size_maximum(MAX_ENROL_BYTES)
        .set_response_size_maximum(MAX_ENROL_BYTES);
    let enrol = request_response::Behaviour::with_codec(
        codec,
        [(ENROL_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
    );
    let swim_codec = request_response::cbor::codec::Codec::default()
        .set_request_size_maximum(MAX_SWIM_BYTES)
        .set_response_size_maximum(64);
    let swim = request_response::Behaviour::with_codec(
        swim_codec,
        [(SWIM_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(Duration::from_secs(5))
            .with_max_concurrent_streams(64),
    );
    let identify =
        identify::Behaviour::new(identify::Config::new("/starling/1".into(), key.public()));
    let ping = ping::Behaviour::new(ping::Config::new().with_interval(PING_INTERVAL));
    let mut kad_config = kad::Config::new(KAD_PROTOCOL);
    kad_config.set_kbucket_inserts(kad::BucketInserts::Manual);
    // No periodic walks of the whole key space: each one dials peers all
    // over the fleet. Members look up only their cell's key (find_cell),
    // and the routing table fills with the peers they are admitted by.
    kad_config.set_periodic_bootstrap_interval(None);
    kad_config.set_replication_factor(KAD_REPLICATION);
    let mut kad =
        kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
    // Members answer DHT queries whether or not they have a confirmed
    // external address: within a fleet every member is reachable.
    kad.set_mode(Some(kad::Mode::Server));
    let gossip_config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        // Signed tasks go up to 256 KiB (a revocation list); every other
        // message is far smaller, and each is checked before it is relayed.
        .max_transmit_size(288 * 1024)
        .connection_handler_queue_len(GOSSIP_QUEUE_PER_CONNECTION)
        .build()
        .map_err(|e| e.to_string())?;
    let mut gossipsub = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Signed(key.clone()),
        gossip_config,
    )?;
    let (score_params, score_thresholds) = forgers::gossip_scoring();
    gossipsub.with_peer_score(score_params, score_thresholds)?;
    let tasks_sync = request_response::Behaviour::with_codec(
        ProtoCodec::default(),
        [(TASK_SYNC_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(task_sync::TASK_SYNC_TIMEOUT),
    );
    let task_reports = request_response::Behaviour::with_codec(
        ProtoCodec::default(),
        [(TASK_REPORT_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
    );
    let cell_summaries = request_response::Behaviour::with_codec(
        ProtoCodec::default(),
        [(CELL_SUMMARY_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
    );
    let fleet_query = request_response::Behaviour::with_codec(
        ProtoCodec::default(),
        [(fleet::FLEET_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
    );
    Ok(MeshBehaviour {
        tasks_sync,
        task_reports,
        fleet_query: DialCause::new(fleet_query, "fleet"),
        cell_summaries: DialCause::new(cell_summaries, "summary"),
        blocked: Default::default(),
        redial: Default::default(),
        enrol,
        swim: DialCause::new(swim, "swim"),
        datagrams: libp2p_stream::Behaviour::new(),
        identify,
        ping,
        kad: DialCause::new(kad, "kad"),
        gossipsub: DialCause::new(gossipsub, "gossip"),
    })
}
