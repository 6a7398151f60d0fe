//! The libp2p swarm of a mesh member and its admission gate.
//!
//! Transports: QUIC, with TCP + Noise + Yamux as fallback. Behaviours:
//! the enrolment exchange (`/starling/enrol/1`), identify, ping (RTT),
//! Kademlia (bootstrap from configured peers; only admitted peers enter
//! the routing table) and gossipsub (messages are accepted only from
//! admitted peers). A peer that has not proved its enrolment within the
//! admission timeout is disconnected, blocked for a while, and counted.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use libp2p::futures::StreamExt;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    gossipsub, identify, kad, noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::enrol::{AdmissionError, Enrolment, MAX_CERT_BYTES, MAX_CHAIN_LEN};
use crate::identity::PeerIdentity;

/// Protocol of the enrolment exchange.
pub const ENROL_PROTOCOL: StreamProtocol = StreamProtocol::new("/starling/enrol/1");
/// Kademlia protocol of Starling fleets (keeps them apart from other DHTs).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/starling/kad/1");
/// Largest encoded enrolment message (a chain at its limits, CBOR-encoded).
const MAX_ENROL_BYTES: u64 = (MAX_CHAIN_LEN * MAX_CERT_BYTES * 2 + 1024) as u64;

/// Most listen addresses kept per peer (identify input is untrusted).
const MAX_ADDRS_PER_PEER: usize = 16;

/// Prometheus counter of refused peers, by `reason`.
pub const PEERS_REFUSED: &str = "starling_mesh_peers_refused_total";

/// A certificate chain, as each side presents it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrolMessage {
    pub chain: Vec<Vec<u8>>,
}

/// Everything a mesh member runs on each connection.
#[derive(NetworkBehaviour)]
pub struct MeshBehaviour {
    enrol: request_response::cbor::Behaviour<EnrolMessage, EnrolMessage>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    gossipsub: gossipsub::Behaviour,
}

/// Errors while building or starting the swarm.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("building the swarm: {0}")]
    Build(String),
    #[error("listening on {addr}: {detail}")]
    Listen { addr: Multiaddr, detail: String },
}

/// Swarm settings.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Addresses to listen on (e.g. `/ip4/0.0.0.0/udp/7401/quic-v1`).
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start.
    pub bootstrap: Vec<Multiaddr>,
    /// Time a new peer has to prove its enrolment.
    pub admission_timeout: Duration,
    /// How long a refused peer stays blocked.
    pub block_for: Duration,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            bootstrap: Vec::new(),
            admission_timeout: Duration::from_secs(5),
            block_for: Duration::from_secs(60),
        }
    }
}

/// What a member knows, published after every change.
#[derive(Debug, Clone, Default)]
pub struct MeshView {
    pub local_peer_id: Option<PeerId>,
    pub listen_addrs: Vec<Multiaddr>,
    /// Peers that proved their enrolment, with their identities.
    pub admitted: BTreeMap<PeerId, PeerIdentity>,
    /// Peers refused since start.
    pub refused: u64,
    /// Latest ping RTT per admitted peer.
    pub rtt: BTreeMap<PeerId, Duration>,
    /// Peers in the Kademlia routing table (admitted ones only).
    pub dht_peers: usize,
}

/// Sans-I/O admission bookkeeping: who is pending, admitted or blocked.
#[derive(Debug, Default)]
pub struct AdmissionTable {
    pending: HashMap<PeerId, Instant>,
    admitted: HashMap<PeerId, PeerIdentity>,
    blocked: HashMap<PeerId, Instant>,
}

/// What the driver must do with a newly connected peer.
#[derive(Debug, PartialEq, Eq)]
pub enum OnConnect {
    /// Blocked: disconnect at once.
    Refuse,
    /// Already admitted (another connection).
    Known,
    /// New: wait for (or ask for) its chain.
    Pending,
}

impl AdmissionTable {
    /// A connection to `peer` came up.
    pub fn on_connected(&mut self, peer: PeerId, now: Instant) -> OnConnect {
        self.blocked.retain(|_, until| *until > now);
        if self.blocked.contains_key(&peer) {
            return OnConnect::Refuse;
        }
        if self.admitted.contains_key(&peer) {
            return OnConnect::Known;
        }
        self.pending.entry(peer).or_insert(now);
        OnConnect::Pending
    }

    /// The peer's chain was checked.
    pub fn on_checked(
        &mut self,
        peer: PeerId,
        result: Result<PeerIdentity, AdmissionError>,
        now: Instant,
        block_for: Duration,
    ) -> Result<PeerIdentity, AdmissionError> {
        self.pending.remove(&peer);
        match result {
            Ok(id) => {
                self.admitted.insert(peer, id.clone());
                Ok(id)
            }
            Err(e) => {
                self.admitted.remove(&peer);
                self.blocked.insert(peer, now + block_for);
                Err(e)
            }
        }
    }

    /// Peers whose time to prove enrolment ran out; they are now blocked.
    pub fn expired(&mut self, now: Instant, timeout: Duration, block_for: Duration) -> Vec<PeerId> {
        let late: Vec<PeerId> = self
            .pending
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= timeout)
            .map(|(p, _)| *p)
            .collect();
        for p in &late {
            self.pending.remove(p);
            self.blocked.insert(*p, now + block_for);
        }
        late
    }

    /// The last connection to `peer` closed.
    pub fn on_disconnected(&mut self, peer: &PeerId) {
        self.pending.remove(peer);
        self.admitted.remove(peer);
    }

    /// The identity of an admitted peer.
    pub fn admitted(&self, peer: &PeerId) -> Option<&PeerIdentity> {
        self.admitted.get(peer)
    }
}

/// A running mesh member.
pub struct Mesh {
    swarm: Swarm<MeshBehaviour>,
    enrolment: Enrolment,
    config: MeshConfig,
    table: AdmissionTable,
    /// Listen addresses from identify of peers not admitted yet.
    identified: HashMap<PeerId, Vec<Multiaddr>>,
    view: watch::Sender<MeshView>,
}

fn build_behaviour(key: &libp2p::identity::Keypair) -> Result<MeshBehaviour, String> {
    let peer_id = key.public().to_peer_id();
    let codec = request_response::cbor::codec::Codec::default()
        .set_request_size_maximum(MAX_ENROL_BYTES)
        .set_response_size_maximum(MAX_ENROL_BYTES);
    let enrol = request_response::Behaviour::with_codec(
        codec,
        [(ENROL_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
    );
    let identify =
        identify::Behaviour::new(identify::Config::new("/starling/1".into(), key.public()));
    let ping = ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(5)));
    let mut kad_config = kad::Config::new(KAD_PROTOCOL);
    kad_config.set_kbucket_inserts(kad::BucketInserts::Manual);
    let kad =
        kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
    let gossip_config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(64 * 1024)
        .build()
        .map_err(|e| e.to_string())?;
    let gossipsub = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Signed(key.clone()),
        gossip_config,
    )?;
    Ok(MeshBehaviour {
        enrol,
        identify,
        ping,
        kad,
        gossipsub,
    })
}

impl Mesh {
    /// Builds the swarm, starts listening and dials the bootstrap peers.
    pub fn start(
        enrolment: Enrolment,
        config: MeshConfig,
    ) -> Result<(Self, watch::Receiver<MeshView>), MeshError> {
        let build = |e: &dyn std::fmt::Display| MeshError::Build(e.to_string());
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(enrolment.keypair().clone())
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| build(&e))?
            .with_quic()
            .with_behaviour(|key| build_behaviour(key).map_err(|e| e.into()))
            .map_err(|e| build(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| MeshError::Listen {
                    addr: addr.clone(),
                    detail: e.to_string(),
                })?;
        }
        for addr in &config.bootstrap {
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
            }
        }
        let (view, rx) = watch::channel(MeshView {
            local_peer_id: Some(*swarm.local_peer_id()),
            ..Default::default()
        });
        Ok((
            Self {
                swarm,
                enrolment,
                config,
                table: AdmissionTable::default(),
                identified: HashMap::new(),
                view,
            },
            rx,
        ))
    }

    /// Runs the swarm until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_event(event),
                _ = tick.tick() => self.expire_pending(),
                _ = shutdown.changed() => break,
            }
        }
    }

    fn refuse(&mut self, peer: PeerId, reason: &'static str, detail: &str) {
        metrics::counter!(PEERS_REFUSED, "reason" => reason).increment(1);
        self.identified.remove(&peer);
        tracing::warn!(%peer, reason, detail, "peer refused");
        self.swarm.behaviour_mut().gossipsub.blacklist_peer(&peer);
        self.swarm.behaviour_mut().kad.remove_peer(&peer);
        self.publish_dht_size();
        let _ = self.swarm.disconnect_peer_id(peer);
        self.view.send_modify(|v| {
            v.refused += 1;
            v.admitted.remove(&peer);
            v.rtt.remove(&peer);
        });
    }

    /// Only admitted peers are offered to others through the DHT.
    fn add_to_dht(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        for addr in addrs {
            self.swarm.behaviour_mut().kad.add_address(&peer, addr);
        }
        self.publish_dht_size();
    }

    fn publish_dht_size(&mut self) {
        let n = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|b| b.num_entries())
            .sum();
        self.view.send_modify(|v| v.dht_peers = n);
    }

    fn expire_pending(&mut self) {
        let now = Instant::now();
        for peer in self
            .table
            .expired(now, self.config.admission_timeout, self.config.block_for)
        {
            self.refuse(peer, "timeout", "no enrolment proof in time");
        }
    }

    fn check(&mut self, peer: PeerId, chain: &[Vec<u8>]) {
        let result = self.enrolment.admit(&peer, chain, SystemTime::now());
        match self
            .table
            .on_checked(peer, result, Instant::now(), self.config.block_for)
        {
            Ok(id) => {
                tracing::info!(%peer, identity = %id, "peer admitted");
                if let Some(addrs) = self.identified.remove(&peer) {
                    self.add_to_dht(peer, addrs);
                }
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .remove_blacklisted_peer(&peer);
                self.view.send_modify(|v| {
                    v.admitted.insert(peer, id);
                });
            }
            Err(e) => self.refuse(peer, "enrolment", &e.to_string()),
        }
    }

    fn on_event(&mut self, event: SwarmEvent<MeshBehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                self.view.send_modify(|v| v.listen_addrs.push(address));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => match self.table.on_connected(peer_id, Instant::now()) {
                OnConnect::Refuse => {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                }
                OnConnect::Known => {}
                OnConnect::Pending => {
                    if endpoint.is_dialer() {
                        let chain = self.enrolment.chain_der();
                        self.swarm
                            .behaviour_mut()
                            .enrol
                            .send_request(&peer_id, EnrolMessage { chain });
                    }
                }
            },
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.table.on_disconnected(&peer_id);
                self.identified.remove(&peer_id);
                self.view.send_modify(|v| {
                    v.admitted.remove(&peer_id);
                    v.rtt.remove(&peer_id);
                });
            }
            SwarmEvent::Behaviour(MeshBehaviourEvent::Enrol(
                request_response::Event::Message { peer, message, .. },
            )) => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    self.check(peer, &request.chain);
                    if self.table.admitted(&peer).is_some() {
                        let chain = self.enrolment.chain_der();
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .enrol
                            .send_response(channel, EnrolMessage { chain });
                    }
                }
                request_response::Message::Response { response, .. } => {
                    self.check(peer, &response.chain);
                }
            },
            SwarmEvent::Behaviour(MeshBehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                // Identify usually answers before admission completes; the
                // addresses enter the DHT only once the peer is admitted.
                let mut addrs = info.listen_addrs;
                addrs.truncate(MAX_ADDRS_PER_PEER);
                if self.table.admitted(&peer_id).is_some() {
                    self.add_to_dht(peer_id, addrs);
                } else {
                    self.identified.insert(peer_id, addrs);
                }
            }
            SwarmEvent::Behaviour(MeshBehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) if self.table.admitted(&peer).is_some() => {
                self.view.send_modify(|v| {
                    v.rtt.insert(peer, rtt);
                });
            }
            SwarmEvent::Behaviour(MeshBehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                let from_admitted = self.table.admitted(&propagation_source).is_some()
                    && message.source.is_some_and(|s| {
                        s == *self.swarm.local_peer_id() || self.table.admitted(&s).is_some()
                    });
                let verdict = if from_admitted {
                    gossipsub::MessageAcceptance::Accept
                } else {
                    gossipsub::MessageAcceptance::Reject
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, verdict);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Role;

    fn id(name: &str) -> PeerIdentity {
        PeerIdentity {
            role: Role::Node,
            name: name.into(),
        }
    }

    #[test]
    fn admission_table_admits_refuses_and_blocks() {
        let now = Instant::now();
        let block = Duration::from_secs(60);
        let mut t = AdmissionTable::default();
        let (good, bad, slow) = (PeerId::random(), PeerId::random(), PeerId::random());
        assert_eq!(t.on_connected(good, now), OnConnect::Pending);
        assert_eq!(t.on_connected(bad, now), OnConnect::Pending);
        assert_eq!(t.on_connected(slow, now), OnConnect::Pending);
        assert!(t.on_checked(good, Ok(id("good")), now, block).is_ok());
        assert!(t
            .on_checked(bad, Err(AdmissionError::KeyMismatch), now, block)
            .is_err());
        assert_eq!(t.admitted(&good).map(|i| i.name.as_str()), Some("good"));
        assert_eq!(t.on_connected(good, now), OnConnect::Known);
        assert_eq!(
            t.on_connected(bad, now),
            OnConnect::Refuse,
            "refused peers stay blocked"
        );
        assert!(t
            .expired(now + Duration::from_secs(1), Duration::from_secs(5), block)
            .is_empty());
        assert_eq!(
            t.expired(now + Duration::from_secs(5), Duration::from_secs(5), block),
            [slow]
        );
        assert_eq!(
            t.on_connected(bad, now + block + Duration::from_secs(1)),
            OnConnect::Pending,
            "blocks expire"
        );
        t.on_disconnected(&good);
        assert!(t.admitted(&good).is_none());
    }
}
