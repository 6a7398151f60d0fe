//! The aggregator role: a node elected aggregator of its cell relays the
//! batches of the cell's nodes to a sink over one QUIC connection, and
//! relays each sink ack back on the stream the batch came in on.
//!
//! The relay holds no state: a batch is acked to its node only when the
//! sink acked it, with the sink's own ack, so durability stays at the
//! origin (DESIGN.md). If the sink connection fails mid-batch the node
//! gets RETRY, or a broken stream, and resends from its spool. Relaying
//! multiplexes many nodes' batches as streams of one sink connection: the
//! sink sees one connection per aggregator, not one per host.
//!
//! Trust: the relay is not trusted by either end. Every batch carries its
//! origin's signature, which the sink checks, and every sink answer a
//! receipt the sink signed, which the node checks (`starling_mesh::origin`),
//! so a relay that drops, forges or alters is found out and left. The
//! relay still refuses a batch that names another host than the
//! connection it came in on: it would be refused at the sink anyway.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use starling_mesh::attach::{Attachment, Candidate};
use starling_mesh::identity::{peer_identity, PeerIdentity, Role};
use starling_mesh::swarm::MeshView;
use starling_mesh::trust::DataPlaneTrust;
use starling_proto::batch::{decode_ack, open_batch};
use starling_proto::limits::{MAX_ACK_BYTES, MAX_BATCH_BYTES};
use starling_proto::v1::{batch_ack::Status, BatchAck};
use tokio::sync::watch;

use crate::metrics_names as m;

/// Time a relayed batch may wait for the sink's ack.
const SINK_ACK_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Shared state of the relay.
pub struct Relay {
    /// Most nodes served at once; more are refused and go elsewhere.
    capacity: usize,
    connections: AtomicUsize,
    /// Whether this node is currently elected aggregator.
    serving: watch::Receiver<bool>,
    /// The connection to the chosen sink, when there is one.
    sink: watch::Receiver<Option<quinn::Connection>>,
    /// Closes a node's connection when its certificate is revoked.
    trust: DataPlaneTrust,
}

/// QUIC transport settings of the relay's listener: keep-alives and idle
/// timeout as the uplink's, so both ends notice a dead peer within seconds.
pub fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(64u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    if let Ok(idle) = Duration::from_secs(4).try_into() {
        t.max_idle_timeout(Some(idle));
    }
    t
}

impl Relay {
    /// A relay serving up to `capacity` nodes while `serving` is true,
    /// dropping nodes that `trust`'s revocation list names.
    pub fn new(
        capacity: usize,
        serving: watch::Receiver<bool>,
        sink: watch::Receiver<Option<quinn::Connection>>,
        trust: DataPlaneTrust,
    ) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            connections: AtomicUsize::new(0),
            serving,
            sink,
            trust,
        })
    }

    /// Nodes attached now.
    pub fn nodes(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Nodes attached now, as a percentage of capacity.
    pub fn load_pct(&self) -> u8 {
        let n = self.nodes();
        ((n * 100) / self.capacity.max(1)).min(100) as u8
    }

    /// Accepts node connections until `shutdown` turns true.
    pub async fn serve(
        self: &Arc<Self>,
        endpoint: quinn::Endpoint,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut serving = self.serving.clone();
        loop {
            tokio::select! {
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    if !*serving.borrow() {
                        metrics::counter!(m::RELAY_REFUSED, "reason" => "not_aggregator").increment(1);
                        incoming.refuse();
                        continue;
                    }
                    if self.connections.load(Ordering::Relaxed) >= self.capacity {
                        metrics::counter!(m::RELAY_REFUSED, "reason" => "capacity").increment(1);
                        incoming.refuse();
                        continue;
                    }
                    let me = self.clone();
                    tokio::spawn(async move { me.connection(incoming).await });
                }
                r = serving.changed() => {
                    if r.is_err() { break }
                    if !*serving.borrow() {
                        // Each connection closes itself (below); the
                        // endpoint stays, for a later election.
                        tracing::info!("no longer aggregator; closing relayed connections");
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        endpoint.close(0u32.into(), b"node shutting down");
    }

    async fn connection(self: Arc<Self>, incoming: quinn::Incoming) {
        let remote = incoming.remote_address();
        let conn = match incoming.await {
            Ok(c) => c,
            Err(e) => {
                metrics::counter!(m::RELAY_REFUSED, "reason" => "handshake").increment(1);
                tracing::info!(%remote, error = %e, "relay handshake refused");
                return;
            }
        };
        let peer = match peer_identity(&conn) {
            Ok(id) if id.role == Role::Node => id,
            other => {
                metrics::counter!(m::RELAY_REFUSED, "reason" => "role").increment(1);
                tracing::warn!(%remote, identity = ?other.ok(), "relay refused: not a node");
                conn.close(2u32.into(), b"role not allowed");
                return;
            }
        };
        self.trust.spawn_guard(&conn);
        self.connections.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(m::RELAY_NODES).increment(1.0);
        tracing::debug!(%remote, identity = %peer, "node attached");
        let peer = Arc::new(peer);
        let mut serving = self.serving.clone();
        loop {
            tokio::select! {
                accepted = conn.accept_bi() => {
                    let Ok((send, recv)) = accepted else { break };
                    let me = self.clone();
                    let peer = peer.clone();
                    tokio::spawn(async move { me.stream(&peer, send, recv).await });
                }
                // Stepped down: send the node elsewhere.
                _ = serving.wait_for(|s| !*s) => {
                    conn.close(3u32.into(), b"not an aggregator");
                    break;
                }
            }
        }
        self.connections.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(m::RELAY_NODES).decrement(1.0);
    }

    async fn stream(
        &self,
        peer: &PeerIdentity,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let ack = match recv.read_to_end(MAX_BATCH_BYTES).await {
            Ok(bytes) => self.relay(peer, bytes).await,
            Err(quinn::ReadToEndError::TooLong) => {
                let _ = recv.stop(1u32.into());
                ack(
                    0,
                    Status::Rejected,
                    format!("batch exceeds {MAX_BATCH_BYTES} bytes"),
                )
            }
            Err(_) => return,
        };
        let status = Status::try_from(ack.status).unwrap_or(Status::Unspecified);
        metrics::counter!(m::RELAY_BATCHES, "status" => status.as_str_name()).increment(1);
        if send.write_all(&ack.encode_to_vec()).await.is_ok() {
            let _ = send.finish();
        }
    }

    async fn relay(&self, peer: &PeerIdentity, bytes: Vec<u8>) -> BatchAck {
        // The envelope and header only: the payload goes on to the sink
        // unopened, and the sink checks the signature.
        let (batch_id, host_id, events) = match open_batch(&bytes) {
            Ok(b) => (b.header.batch_id, b.header.host_id, b.header.event_count),
            Err(e) => return ack(0, Status::Rejected, format!("batch does not decode: {e}")),
        };
        if host_id != peer.name {
            return ack(
                batch_id,
                Status::Rejected,
                format!("batch for host {host_id:?} on a connection of {peer}"),
            );
        }
        let Some(sink) = self.sink.borrow().clone() else {
            return ack(
                batch_id,
                Status::Retry,
                "aggregator has no sink connection".into(),
            );
        };
        match tokio::time::timeout(SINK_ACK_TIMEOUT, forward(&sink, &bytes)).await {
            Ok(Ok(a)) if a.batch_id == batch_id => {
                if a.status == Status::Persisted as i32 {
                    metrics::counter!(m::RELAY_EVENTS).increment(u64::from(events));
                }
                a
            }
            Ok(Ok(a)) => ack(
                batch_id,
                Status::Retry,
                format!("sink acked batch {} for {batch_id}", a.batch_id),
            ),
            Ok(Err(e)) => ack(batch_id, Status::Retry, format!("relay to sink: {e}")),
            Err(_) => ack(
                batch_id,
                Status::Retry,
                "sink ack timed out at the aggregator".into(),
            ),
        }
    }
}

/// The relay's own answer: it signs nothing, so the node treats it as
/// unproven.
fn ack(batch_id: u64, status: Status, detail: String) -> BatchAck {
    BatchAck::unsigned(batch_id, status, detail)
}

async fn forward(sink: &quinn::Connection, bytes: &[u8]) -> anyhow::Result<BatchAck> {
    let (mut send, mut recv) = sink.open_bi().await?;
    send.write_all(bytes).await?;
    send.finish()?;
    let reply = recv.read_to_end(MAX_ACK_BYTES).await?;
    Ok(decode_ack(&reply)?)
}

/// Keeps a connection to the best sink the mesh knows while this node is
/// aggregator, choosing by RTT and advertised load and failing over when
/// a sink goes away or its certificate is revoked.
pub async fn sink_link(
    endpoint: quinn::Endpoint,
    trust: DataPlaneTrust,
    mut view: watch::Receiver<MeshView>,
    link: watch::Sender<Option<quinn::Connection>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut attachment = Attachment::new();
    loop {
        let choice = {
            let v = view.borrow_and_update();
            let candidates = sink_candidates(&v);
            attachment
                .choose(Instant::now(), &candidates)
                .and_then(|name| v.sinks.iter().find(|s| s.name == name))
                .map(|s| (s.name.clone(), s.ingress.clone()))
        };
        let Some((name, ingress)) = choice else {
            tokio::select! {
                r = view.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
            continue;
        };
        match connect_sink(&endpoint, &ingress, &name).await {
            Ok(conn) => {
                trust.spawn_guard(&conn);
                attachment.on_success(&name);
                tracing::info!(sink = %name, %ingress, "relay connected to sink");
                link.send_replace(Some(conn.clone()));
                tokio::select! {
                    reason = conn.closed() => {
                        tracing::warn!(sink = %name, %reason, "relay lost its sink");
                        attachment.on_unavailable(Instant::now(), &name);
                    }
                    _ = shutdown.changed() => {
                        link.send_replace(None);
                        return;
                    }
                }
                link.send_replace(None);
            }
            Err(e) => {
                tracing::warn!(sink = %name, %ingress, error = %e, "relay cannot reach sink");
                attachment.on_unavailable(Instant::now(), &name);
            }
        }
    }
}

/// The sinks the mesh knows, as attachment candidates.
pub fn sink_candidates(view: &MeshView) -> Vec<Candidate> {
    view.sinks
        .iter()
        .map(|s| Candidate {
            id: s.name.clone(),
            rtt: s.rtt_ms.map(|ms| Duration::from_secs_f64(ms / 1000.0)),
            load: f64::from(s.load_pct) / 100.0,
        })
        .collect()
}

async fn connect_sink(
    endpoint: &quinn::Endpoint,
    address: &str,
    name: &str,
) -> anyhow::Result<quinn::Connection> {
    let addr = tokio::net::lookup_host(address)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{address} resolves to no address"))?;
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect(addr, name)?)
        .await
        .map_err(|_| anyhow::anyhow!("handshake timed out"))??;
    let id = peer_identity(&conn)?;
    if id.role != Role::Sink || id.name != name {
        conn.close(1u32.into(), b"unexpected identity");
        anyhow::bail!("{address} presented {id}, expected sink/{name}");
    }
    Ok(conn)
}
