//! The libp2p swarm of a mesh member: its admission gate and the driver
//! that carries the sans-I/O control-plane logic over it.
//!
//! Transports: QUIC, with TCP + Noise + Yamux as fallback. Behaviours:
//! the enrolment exchange (`/starling/enrol/1`), identify, ping (RTT),
//! Kademlia (bootstrap from configured peers; only admitted peers enter
//! the routing table; cell rendezvous through provider records), gossipsub
//! (sink adverts; messages accepted only from admitted peers) and the
//! membership datagrams of a cell (`/starling/swim/1`). A peer that has not
//! proved its enrolment within the admission timeout is disconnected and
//! counted; one that failed the check is also blocked for a while.
//!
//! The driver's parts: `behaviour` (the libp2p behaviours and their
//! limits), `admit` (enrolment exchange and refusals),
//! `adverts` (sink adverts over gossipsub), `cell_driver` (membership
//! and election), `connections` (bootstrap and pruning), `dht` (the
//! routing table and Kademlia's queries), `dial_cause` (dials counted by
//! who asked), `redial` (dials held back), `revocations` (the revocation
//! list), `tasks`, `task_sync`, `task_status` and `task_config` (the
//! task plane: gossip, anti-entropy, the fleet view, configuration),
//! `fleet` (heartbeats and the cell tables of `starlingctl fleet`); this
//! file holds the swarm, its configuration, the tick, the published view
//! and the event dispatch.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use libp2p::futures::StreamExt;
use libp2p::swarm::{ListenError, SwarmEvent};
use libp2p::{
    gossipsub, identify, noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm,
};
use tokio::sync::{mpsc, watch};

mod admit;
mod adverts;
mod behaviour;
mod cell_driver;
mod commands;
mod connections;
mod datagram_links;
mod dht;
mod dial_cause;
mod file_writer;
mod fleet;
mod fleet_view;
mod forgers;
mod inbound_handshakes;
mod proto_codec;
mod redial;
mod revocations;
mod rollouts;
mod subscriptions;
mod task_config;
mod task_status;
mod task_sync;
mod tasks;
mod view_publish;

use behaviour::{build_behaviour, MeshBehaviourEvent};
pub use behaviour::{EnrolMessage, MeshBehaviour, SwimMessage};
use cell_driver::Cell;
pub use fleet::{FleetAnswer, FleetQuery, FLEET_PROTOCOL, FLEET_QUERIES, QUERIES_DIR};
pub use forgers::{FORGER_HOLD, FORGER_STRIKES, TASK_FORGERS};
pub use inbound_handshakes::DIALS_SPARED;
pub use proto_codec::WireMessage;
pub use redial::DIALS_HELD;
pub use subscriptions::SUBSCRIPTIONS_LOST;
pub use task_config::{task_state_dir, TaskSettings, TasksConfig};
pub use task_status::{
    sink_cell, CELL_SUMMARY_PROTOCOL, TASK_REPORTS, TASK_REPORT_PROTOCOL, TASK_SUMMARIES,
};
pub use task_sync::{
    SyncRequest, SyncResponse, MAX_TASK_SYNCS_IN_FLIGHT, TASK_SYNCS, TASK_SYNC_BYTES,
    TASK_SYNC_PROTOCOL, TASK_SYNC_TIMEOUT,
};
pub use tasks::{
    ask_for_status, RolloutLine, RolloutWaveLine, TaskLine, TaskPlaneError, TaskPlaneStatus,
    FLEET_VIEW_CHANGES, INBOX_DIR, LEDGER_FILE, STATUS_WANTED_FILE, TASKS_APPLIED, TASKS_HELD,
    TASKS_RECEIVED, TASKS_REFUSED, TASK_EVENTS_DROPPED, TASK_ROOT_VERSION, TASK_STATUS_FILE,
    TASK_TOPIC,
};

use crate::admission::AdmissionTable;
use crate::adverts::{SinkBook, SINK_TOPIC};
use crate::election::ElectionParams;
use crate::enrol::{Enrolment, MAX_CERT_BYTES, MAX_CHAIN_LEN};
use crate::rendezvous::{CellDirectory, Contact};
pub use crate::view::{CellView, ControlStats, MemberView, MeshCommand, MeshView, SinkView};

/// Protocol of the enrolment exchange.
pub const ENROL_PROTOCOL: StreamProtocol = StreamProtocol::new("/starling/enrol/1");
/// Kademlia protocol of Starling fleets (keeps them apart from other DHTs).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/starling/kad/1");
/// Protocol carrying a cell's membership datagrams.
pub const SWIM_PROTOCOL: StreamProtocol = StreamProtocol::new("/starling/swim/1");
/// Largest encoded enrolment message (a chain at its limits, CBOR-encoded).
const MAX_ENROL_BYTES: u64 = (MAX_CHAIN_LEN * MAX_CERT_BYTES * 2 + 1024) as u64;
/// Largest membership datagram on the wire (an 8 KiB SWIM packet, framing
/// and the cell label).
const MAX_SWIM_BYTES: u64 = crate::datagram_frame::MAX_DATAGRAM as u64 + 256;
/// Datagrams held per peer while a connection to it is being admitted.
const MAX_PENDING_PER_PEER: usize = 16;
/// Peers with datagrams held.
const MAX_PENDING_PEERS: usize = 1024;
/// Gossipsub messages queued per connection before it drops (bounded:
/// an unbounded queue is how gossipsub ran nodes out of memory).
const GOSSIP_QUEUE_PER_CONNECTION: usize = 256;
/// A sink re-advertises this often, and is forgotten after three misses.
const SINK_ADVERT_INTERVAL: Duration = Duration::from_secs(10);
const SINK_EXPIRY: Duration = Duration::from_secs(35);
/// Least time between broadcasts of a changed attached-node count.
const LOAD_REFRESH: Duration = Duration::from_secs(10);
/// Pull-on-join catch-up and re-announcing of a lonely member.
const MEMBERSHIP_TICK: Duration = Duration::from_secs(5);
/// Ping interval on every connection. RTT only ranks aggregators and
/// sinks by proximity, so it need not be fresh; every ping costs a packet
/// and its ack on each of a member's connections.
const PING_INTERVAL: Duration = Duration::from_secs(15);
/// Once `REFERRAL_GRACE` has passed since it joined, a member that sees
/// less than three quarters of the cell size it expects looks its cell up
/// in the DHT every `CELL_FORMING_LOOKUP`, an aggregator of a cell it
/// mostly sees every `CELL_LOOKUP_INTERVAL` (spread per member), and a
/// lonely member every membership tick. Each lookup dials the peers
/// closest to the cell key, which pruning has closed since the last one.
/// Before the grace, a new member waits for referrals (`rendezvous`).
const CELL_FORMING_LOOKUP: Duration = Duration::from_secs(15);
const CELL_LOOKUP_INTERVAL: Duration = Duration::from_secs(300);
const REFERRAL_GRACE: Duration = Duration::from_secs(20);
/// An aggregator provides its cell's key in the DHT once it has been in
/// the cell this long (a cell that forms elects many at first, then steps
/// down to what it needs); a lonely member after `REFERRAL_GRACE`.
const PROVIDE_SETTLE: Duration = Duration::from_secs(30);
/// Referrals a listener gives a dialer: members of the dialer's cell, and
/// members of other cells (for links across cells).
const REFER_SAME_CELL: usize = 4;
const REFER_OTHER_CELLS: usize = 2;
/// Members of other cells held to dial when links across cells run short.
const MAX_CROSS_CANDIDATES: usize = 8;
/// On how many members closest to a cell's key its providers are stored,
/// and how many a lookup asks before it stops: Kademlia's 20 is sized for
/// open networks that lose peers all the time; every one of them is a
/// dial and an admission per member per lookup.
const KAD_REPLICATION: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(8) {
    Some(n) => n,
    None => unreachable!(),
};
/// How long a QUIC handshake may take. libp2p's 5 s is what a handshake
/// on loopback took at the height of a 500-member start-up storm on two
/// cores (4.5 s seen): a handshake timed out is work thrown away that
/// comes back as a new one.
const QUIC_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// QUIC keep-alive interval and idle timeout of mesh connections.
const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(10);
const QUIC_IDLE_TIMEOUT_MS: u32 = 30_000;
/// The cell part of the published view is rebuilt at least this often
/// (for the RTTs), and otherwise only when the membership changes.
const CELL_VIEW_REFRESH: Duration = Duration::from_secs(5);

/// Most listen addresses kept per peer (identify input is untrusted).
const MAX_ADDRS_PER_PEER: usize = 16;

/// Prometheus counter of refused peers, by `reason`.
pub const PEERS_REFUSED: &str = "starling_mesh_peers_refused_total";
/// Prometheus counter of connections established, by `side` (`dialer`,
/// `listener`): with the pruned and refused counters it shows churn.
pub const CONNECTIONS_OPENED: &str = "starling_mesh_connections_opened_total";
/// Prometheus counter of connections established to a peer this member
/// was already connected to, by `side` and, for its own dials, `cause`
/// (`datagram`: membership datagrams waited for the peer; `referral`,
/// `provider`: a cell-mate named by a peer or by the DHT; `cross`,
/// `candidate`: a member of another cell; `bootstrap`; `behaviour` for
/// dials Kademlia or request-response asked for; `remote` on the
/// listening side); two members that dial each other at once each count
/// one.
pub const CONNECTIONS_SECOND: &str = "starling_mesh_connections_second_total";
/// Prometheus counter of dials, by `cause`: the member's own (`bootstrap`,
/// or `member` to reach a cell member) and those its behaviours ask for
/// (`kad` for DHT queries, `swim` for a datagram to an unconnected peer,
/// `gossip`).
pub const DIALS: &str = "starling_mesh_dials_total";
/// Prometheus counter of dials that made no connection, by `error`:
/// `transport` (unreachable, or the handshake timed out), `denied` (held
/// back, see [`DIALS_HELD`]), `other`.
pub const DIAL_FAILURES: &str = "starling_mesh_dial_failures_total";
/// Prometheus counter of inbound connections that never became one, by
/// `error`: `denied` (a peer held off, for example a forger, or over a
/// limit), `transport` (the handshake failed or timed out) or `other`:
/// how often a refused peer keeps dialling shows here.
pub const INBOUND_FAILURES: &str = "starling_mesh_inbound_failures_total";
/// Prometheus counter of connections closed because the member did not
/// need them (outside its cell, beyond its links across cells).
pub const PEERS_PRUNED: &str = "starling_mesh_connections_pruned_total";
/// Prometheus counter of admitted peers left out of the DHT routing
/// table because their bucket was full.
pub const DHT_FULL: &str = "starling_mesh_dht_bucket_full_total";
/// Prometheus counters of finished Kademlia queries and of the requests
/// they sent, by `kind` (`bootstrap`, `provide`, `providers`, ...): the
/// DHT's share of a member's dials and handshakes.
pub const KAD_QUERIES: &str = "starling_mesh_kad_queries_total";
pub const KAD_REQUESTS: &str = "starling_mesh_kad_requests_total";
/// Prometheus counter of membership datagrams dropped, by `reason`.
pub const SWIM_DROPPED: &str = "starling_mesh_swim_dropped_total";
/// Prometheus counters of membership bytes, by `direction`.
pub const SWIM_BYTES: &str = "starling_mesh_swim_bytes_total";
/// Prometheus counter of membership datagrams, by `direction`.
pub const SWIM_DATAGRAMS: &str = "starling_mesh_swim_datagrams_total";
/// Prometheus counter of cell members this member's membership declared
/// down (a crash, or a member whose acks came too late) and up again.
pub const MEMBER_CHANGES: &str = "starling_mesh_member_changes_total";
/// Prometheus gauge of the member's local-health score (0 healthy, up to
/// 8: its timers run late, so it gives suspects longer to refute).
pub const LOCAL_HEALTH: &str = "starling_mesh_local_health";
/// Prometheus counter of gossip messages rejected, by `reason`.
pub const GOSSIP_REJECTED: &str = "starling_mesh_gossip_rejected_total";

/// Prometheus counter of enrolment requests sent again to a connected,
/// still pending peer, by `reason`: `late` (no answer within the request
/// timeout), `lost` (the connection it went out on closed).
pub const ENROL_RETRIES: &str = "starling_mesh_enrol_retries_total";

/// Prometheus counter of referrals received, by `kind`: `same_cell`
/// (followed: the member announces itself there), `other_cell` (kept
/// for links across cells), `known` (already in the view), `invalid`.
pub const REFERRALS: &str = "starling_mesh_referrals_total";

/// Prometheus counter of admissions put off because the listener was
/// admitting its most, by `side`: `listener` (told a dialer to come back),
/// `dialer` (was told so).
pub const ADMISSIONS_DEFERRED: &str = "starling_mesh_admissions_deferred_total";
/// Prometheus counter of admissions given up after the admission timeout,
/// by `side`: `dialer` (this member dialled the peer, which did not answer
/// its enrolment request) or `listener` (the dialer did not present its
/// chain). Seen when a peer's own loop lags, as a seed of a fleet starting
/// at once can. Not a refusal: the connection closes, and the peer may
/// come back, or be dialled again, after a short hold.
pub const ADMISSIONS_ABANDONED: &str = "starling_mesh_admissions_abandoned_total";
/// Prometheus gauge of connected peers awaiting admission, by `state`:
/// `admitting` (their chains are being exchanged), `deferred` (to be told
/// to come back later).
pub const ADMISSIONS_PENDING: &str = "starling_mesh_admissions_pending";

/// Errors while building or starting the swarm.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("building the swarm: {0}")]
    Build(String),
    #[error("listening on {addr}: {detail}")]
    Listen { addr: Multiaddr, detail: String },
    #[error("membership: {0}")]
    Membership(#[from] crate::membership::MembershipError),
    #[error("task plane: {0}")]
    Tasks(#[from] tasks::TaskPlaneError),
}

/// Swarm settings.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Addresses to listen on (e.g. `/ip4/0.0.0.0/udp/7401/quic-v1`).
    pub listen: Vec<Multiaddr>,
    /// The address other members dial; default: the first listen address
    /// that is not loopback (or loopback when that is all there is).
    pub advertise: Option<Multiaddr>,
    /// Peers to dial at start.
    pub bootstrap: Vec<Multiaddr>,
    /// Time a new peer has to prove its enrolment.
    pub admission_timeout: Duration,
    /// How long a refused peer stays blocked.
    pub block_for: Duration,
    /// Cell membership of a node; None for members outside cells (sinks).
    pub cell: Option<CellSettings>,
    /// A sink's QUIC ingress address, advertised fleet-wide; None for nodes.
    pub sink_ingress: Option<String>,
    /// The fleet's revocation list (PEM CRL from `starlingctl cert
    /// revoke`), re-read when it changes; None: nothing is revoked.
    pub revocations: Option<std::path::PathBuf>,
    /// The task plane; None: this member neither applies nor relays
    /// tasks (docs/tasks.md).
    pub tasks: Option<TaskSettings>,
    /// Speak membership as members built before the datagram streams did
    /// (test double of an older build, for mixed-fleet tests).
    #[cfg(feature = "legacy-member")]
    pub legacy_datagrams: bool,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            advertise: None,
            bootstrap: Vec::new(),
            admission_timeout: Duration::from_secs(30),
            block_for: Duration::from_secs(60),
            cell: None,
            sink_ingress: None,
            revocations: None,
            tasks: None,
            #[cfg(feature = "legacy-member")]
            legacy_datagrams: false,
        }
    }
}

/// How a node takes part in its cell.
#[derive(Debug, Clone)]
pub struct CellSettings {
    /// Zone label from config; None: the cell follows from the advertised
    /// address (its /24 or /48).
    pub zone: Option<String>,
    /// Expected cell size (tunes SWIM's suspicion time).
    pub expected_size: u32,
    /// May be elected aggregator.
    pub eligible: bool,
    /// Nodes it serves as aggregator.
    pub capacity: u32,
    /// host:port of its relay listener (empty if it cannot relay).
    pub relay: String,
    pub election: ElectionParams,
    pub agent_version: String,
    pub tags: Vec<String>,
}

/// A running mesh member.
pub struct Mesh {
    swarm: Swarm<MeshBehaviour>,
    pub(super) enrolment: Enrolment,
    pub(super) config: MeshConfig,
    pub(super) table: AdmissionTable,
    /// Listen addresses from identify of peers not admitted yet.
    identified: HashMap<PeerId, Vec<Multiaddr>>,
    view: watch::Sender<MeshView>,
    commands: mpsc::Receiver<MeshCommand>,
    cell: Option<Cell>,
    /// Membership datagrams waiting for their peer's admission.
    pending: HashMap<PeerId, Vec<SwimMessage>>,
    /// Why this member dialled, by connection, until the dial ends (for
    /// `CONNECTIONS_SECOND`). Bounded by `MAX_PENDING_PEERS`.
    pub(super) dial_causes: HashMap<libp2p::swarm::ConnectionId, &'static str>,
    /// Inbound handshakes under way, which dials to their peers wait for.
    pub(super) inbound: inbound_handshakes::InboundHandshakes,
    /// Membership datagrams' streams, and what their tasks report.
    pub(super) links: datagram_links::DatagramLinks,
    link_events: mpsc::Receiver<datagram_links::LinkEvent>,
    pub(super) sinks: SinkBook,
    sink_topic: gossipsub::IdentTopic,
    /// The gossip topics this member subscribes to, stated to every peer
    /// in its enrolment messages.
    topics: Vec<String>,
    /// Admitted peers' stated topics, until gossipsub has heard them.
    subscriptions: subscriptions::SubscriptionWatch,
    sink_load: u8,
    advert_seq: u64,
    last_advert: Option<Instant>,
    stats: ControlStats,
    started: Instant,
    /// Chains of admitted peers, checked again when revocations change.
    pub(super) chains: HashMap<PeerId, Vec<Vec<u8>>>,
    /// The revocation list's file, re-read when it changes.
    pub(super) revocation_file: Option<crate::trust::RevocationFile>,
    pub(super) last_revocation_check: Option<Instant>,
    /// When the bootstrap peers are dialled next while no peer is
    /// admitted, and the wait after that (doubling up to a limit).
    pub(super) next_bootstrap: Instant,
    pub(super) bootstrap_backoff: Duration,
    /// Which configured bootstrap peer is dialled next: counts up from a
    /// random start, so members take the seeds in turn from different ones.
    pub(super) bootstrap_turn: usize,
    pub(super) last_prune: Instant,
    /// When this member last dialled a member of another cell to keep a
    /// link across cells (`keep_cross_links`).
    pub(super) last_cross_dial: Option<Instant>,
    /// Connected peers that sent or were sent datagrams of this member's
    /// cell: cell members whether or not the view counts them now.
    pub(super) cell_peers: std::collections::HashSet<PeerId>,
    /// Cell-key providers missing from the view, dialled so that they get
    /// an announce once admitted (an announce must name its addressee,
    /// and only admission tells the name). Bounded by
    /// `MAX_PENDING_PEERS`.
    pub(super) announce_on_admit: std::collections::HashSet<PeerId>,
    /// The member's random source: jitter of its redial waits, its first
    /// bootstrap peer, its membership's seed.
    pub(super) rng: rand::rngs::SmallRng,
    /// Members of each cell this member admitted lately, to refer dialers
    /// to (`rendezvous`).
    pub(super) directory: CellDirectory,
    /// The cell each admitted peer stated in its enrolment message.
    pub(super) peer_cells: HashMap<PeerId, String>,
    /// Members of other cells that peers referred this member to, dialled
    /// when it holds too few links across cells. Bounded by
    /// `MAX_CROSS_CANDIDATES`.
    pub(super) cross_candidates: std::collections::VecDeque<Contact>,
    /// Where asking the other bootstrap peers for referrals stands (the
    /// next one after the first admitted this member, then the next in
    /// turn while the cell is short), so that members of one cell who
    /// started at different seeds meet; and how many asks went out.
    pub(super) seed_ask: SeedAsk,
    pub(super) seed_asks: u32,
    /// Peers dialled only for their referrals: the connection is closed
    /// once they answered, unless they are of this member's cell.
    pub(super) referral_only: std::collections::HashSet<PeerId>,
    /// The task plane, when configured.
    tasks: Option<tasks::TaskDriver>,
    /// The fleet settings the task plane holds, for the node to apply.
    fleet_settings: Option<watch::Receiver<FleetSettings>>,
    /// Task state changes for the node's audit trail, until taken.
    task_events: Option<mpsc::Receiver<starling_proto::v1::TaskStateChange>>,
}

/// Fleet configuration settings held by the task plane, by setting name
/// (docs/tasks.md, "Fleet configuration"): generation and setting.
pub type FleetSettings =
    std::collections::BTreeMap<String, (u64, starling_proto::v1::ConfigSetting)>;

/// Where asking a bootstrap peer for referrals stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SeedAsk {
    /// No peer has admitted this member yet.
    NotYet,
    /// The next seed is dialled at this time.
    At(Instant),
    /// It was dialled on this connection, which is not up yet.
    Dialled(libp2p::swarm::ConnectionId),
    /// The last ask went out (or gave up) at this time.
    Asked(Instant),
}

/// A random source for jitter, different per member and per start.
fn jitter_rng(peer: &PeerId) -> rand::rngs::SmallRng {
    use rand::SeedableRng;
    let mut seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    for b in peer.to_bytes() {
        seed = seed.rotate_left(5) ^ u64::from(b);
    }
    rand::rngs::SmallRng::seed_from_u64(seed)
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Mesh {
    /// Builds the swarm, starts listening and dials the bootstrap peers.
    /// Returns the member, the view it publishes, and the sender of
    /// commands that change what it advertises.
    pub fn start(
        enrolment: Enrolment,
        config: MeshConfig,
    ) -> Result<(Self, watch::Receiver<MeshView>, mpsc::Sender<MeshCommand>), MeshError> {
        let build = |e: &dyn std::fmt::Display| MeshError::Build(e.to_string());
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(enrolment.keypair().clone())
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| build(&e))?
            .with_quic_config(|mut c| {
                // A cell member holds a connection to most of its cell, so
                // what an idle connection costs is paid fifty times over:
                // keep-alives every 10 s instead of 5 (pings and SWIM
                // datagrams keep most connections busy anyway). A dead
                // peer is found by SWIM, not by the connection timing out.
                c.keep_alive_interval = QUIC_KEEP_ALIVE;
                c.max_idle_timeout = QUIC_IDLE_TIMEOUT_MS;
                c.handshake_timeout = QUIC_HANDSHAKE_TIMEOUT;
                c
            })
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
        let sink_topic = gossipsub::IdentTopic::new(SINK_TOPIC);
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&sink_topic)
            .map_err(|e| build(&e))?;
        let mut topics = vec![SINK_TOPIC.to_string()];
        let (tasks, fleet_settings, task_events) = match config.tasks.clone() {
            Some(settings) => {
                let (driver, settings_rx, events_rx) =
                    tasks::TaskDriver::load(settings, &enrolment.identity().name)?;
                swarm
                    .behaviour_mut()
                    .gossipsub
                    .subscribe(&gossipsub::IdentTopic::new(TASK_TOPIC))
                    .map_err(|e| build(&e))?;
                topics.push(TASK_TOPIC.to_string());
                (Some(driver), Some(settings_rx), Some(events_rx))
            }
            None => (None, None, None),
        };
        let (view, rx) = watch::channel(MeshView {
            local_peer_id: Some(*swarm.local_peer_id()),
            identity: Some(enrolment.identity().clone()),
            ..Default::default()
        });
        let (command_tx, commands) = mpsc::channel(64);
        let revocation_file = config
            .revocations
            .clone()
            .map(crate::trust::RevocationFile::new);
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(build(&"a mesh member starts inside a tokio runtime"));
        }
        let control = swarm.behaviour().datagrams.new_control();
        #[cfg(feature = "legacy-member")]
        let legacy = config.legacy_datagrams;
        #[cfg(not(feature = "legacy-member"))]
        let legacy = false;
        let (links, link_events) =
            datagram_links::DatagramLinks::start(control, legacy).map_err(|e| build(&e))?;
        let mut rng = jitter_rng(swarm.local_peer_id());
        let bootstrap_turn = rand::RngExt::random_range(&mut rng, 0..1usize << 16);
        Ok((
            Self {
                swarm,
                enrolment,
                config,
                table: AdmissionTable::default(),
                identified: HashMap::new(),
                view,
                commands,
                cell: None,
                pending: HashMap::new(),
                dial_causes: HashMap::new(),
                inbound: Default::default(),
                links,
                link_events,
                sinks: SinkBook::default(),
                sink_topic,
                topics,
                subscriptions: Default::default(),
                sink_load: 0,
                advert_seq: 0,
                last_advert: None,
                stats: ControlStats::default(),
                started: Instant::now(),
                chains: HashMap::new(),
                revocation_file,
                last_revocation_check: None,
                next_bootstrap: Instant::now(),
                bootstrap_backoff: connections::BOOTSTRAP_RETRY_MIN,
                bootstrap_turn,
                last_prune: Instant::now(),
                last_cross_dial: None,
                cell_peers: Default::default(),
                announce_on_admit: Default::default(),
                rng,
                directory: CellDirectory::default(),
                peer_cells: HashMap::new(),
                cross_candidates: Default::default(),
                seed_ask: SeedAsk::NotYet,
                seed_asks: 0,
                referral_only: Default::default(),
                tasks,
                fleet_settings,
                task_events,
            },
            rx,
            command_tx,
        ))
    }

    /// The fleet settings the task plane holds, kept current (None
    /// without a task plane). The node applies them over its own file.
    pub fn fleet_settings(&self) -> Option<watch::Receiver<FleetSettings>> {
        self.fleet_settings.clone()
    }

    /// The task plane's state changes (applied, failed, refused,
    /// stopped), for the node to write as events: the audit trail in
    /// Kafka. None without a task plane, or once taken.
    pub fn take_task_events(
        &mut self,
    ) -> Option<mpsc::Receiver<starling_proto::v1::TaskStateChange>> {
        self.task_events.take()
    }

    /// Runs the swarm until `shutdown` turns true; a cell member leaves its
    /// cell on the way out so the others learn at once.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_timer = self
                .cell
                .as_ref()
                .and_then(|c| c.timers.keys().next().map(|(at, _)| *at));
            let timer = async {
                match next_timer {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            // A clone sees what the driver's receiver has seen.
            let mut ledger_saved = self.tasks.as_ref().map(|d| d.ledger_saved.clone());
            let ledger_saved = async move {
                let Some(saved) = ledger_saved.as_mut() else {
                    return std::future::pending().await;
                };
                if saved.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_event(event),
                _ = timer => self.fire_timers(),
                Some(command) = self.commands.recv() => self.on_command(command),
                Some(event) = self.link_events.recv() => self.on_link_event(event),
                _ = tick.tick() => self.on_tick(),
                _ = ledger_saved => self.on_ledger_saved(),
                _ = shutdown.changed() => break,
            }
        }
        self.leave().await;
        if let Some(driver) = self.tasks.as_ref() {
            if tokio::time::timeout(Duration::from_secs(5), driver.flush_ledger())
                .await
                .is_err()
            {
                tracing::error!("task ledger not saved within 5 s of shutdown");
            }
        }
    }

    /// Gives the UDP socket behind a new QUIC listen address a receive
    /// buffer of `net::UDP_RECV_BUFFER` (once per port).
    fn raise_recv_buffer(&mut self, address: &Multiaddr) {
        let Some(port) = crate::net::udp_port(address) else {
            return;
        };
        if self
            .view
            .borrow()
            .listen_addrs
            .iter()
            .any(|a| crate::net::udp_port(a) == Some(port))
        {
            return;
        }
        match crate::net::raise_udp_recv_buffer(port, crate::net::UDP_RECV_BUFFER) {
            Ok(sizes) => tracing::debug!(port, ?sizes, "UDP receive buffer raised"),
            Err(e) => tracing::warn!(port, error = %e, "cannot raise the UDP receive buffer"),
        }
    }

    async fn leave(&mut self) {
        let Some(cell) = self.cell.as_mut() else {
            return;
        };
        if cell.membership.leave().is_err() {
            return;
        }
        self.drain_membership();
        // Give the goodbye a moment to go out.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Ok(event) = tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await
        {
            self.on_event(event);
        }
    }

    /// Monotonic version numbers for the member's own record.
    fn version(&self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        wall.max(self.started.elapsed().as_millis() as u64)
    }

    fn on_tick(&mut self) {
        self.expire_pending();
        let now = Instant::now();
        // The cell first: a member's enrolment messages name its cell, so
        // that the peers it dials can refer it to its cell-mates.
        if self.cell.is_none() && self.config.cell.is_some() {
            self.start_cell();
        }
        self.cut_bootstraps();
        self.dial_bootstrap(now);
        self.prune_connections(now);
        self.keep_cross_links();
        self.reload_revocations(now);
        self.close_lost_subscriptions(now);
        if let Some(cell) = self.cell.as_mut() {
            if now.duration_since(cell.last_tick) >= MEMBERSHIP_TICK {
                cell.last_tick = now;
                cell.membership.handle_tick();
                self.find_cell();
            }
        }
        self.elect();
        self.drain_membership();
        self.advertise_sink(now);
        self.tasks_tick(now);
        self.sinks.expire(now, SINK_EXPIRY);
        self.publish_view(now);
    }

    fn on_event(&mut self, event: SwarmEvent<MeshBehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                self.raise_recv_buffer(&address);
                self.view.send_modify(|v| v.listen_addrs.push(address));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                num_established,
                ..
            } => self.on_connection_established(
                peer_id,
                &endpoint,
                connection_id,
                num_established.get(),
            ),
            SwarmEvent::IncomingConnection {
                connection_id,
                send_back_addr,
                ..
            } => self.inbound.started(connection_id, &send_back_addr),
            SwarmEvent::IncomingConnectionError {
                connection_id,
                error,
                ..
            } => {
                let error = match error {
                    ListenError::Denied { .. } => "denied",
                    ListenError::Transport(_) => "transport",
                    _ => "other",
                };
                metrics::counter!(INBOUND_FAILURES, "error" => error).increment(1);
                self.on_inbound_handshake_ended(connection_id, None)
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => self.on_last_connection_closed(peer_id),
            SwarmEvent::OutgoingConnectionError {
                peer_id,
                error,
                connection_id,
            } => self.on_dial_failed(peer_id, &error, connection_id),
            SwarmEvent::Behaviour(MeshBehaviourEvent::Enrol(event)) => self.on_enrol(event),
            SwarmEvent::Behaviour(MeshBehaviourEvent::Swim(event)) => self.on_legacy_swim(event),
            SwarmEvent::Behaviour(MeshBehaviourEvent::Kad(event)) => self.on_kad(event),
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
            })) => self.on_gossip(propagation_source, message_id, message),
            SwarmEvent::Behaviour(MeshBehaviourEvent::TasksSync(event)) => self.on_task_sync(event),
            SwarmEvent::Behaviour(MeshBehaviourEvent::TaskReports(event)) => {
                self.on_task_report(event)
            }
            SwarmEvent::Behaviour(MeshBehaviourEvent::CellSummaries(event)) => {
                self.on_cell_summary(event)
            }
            SwarmEvent::Behaviour(MeshBehaviourEvent::FleetQuery(event)) => {
                self.on_fleet_query(event)
            }
            _ => {}
        }
    }
}
