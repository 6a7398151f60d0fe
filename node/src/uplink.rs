//! Async driver of the uplink: connects to a sink, or to the aggregator of
//! its cell, over QUIC with mutual TLS, sends spooled batches (one
//! bidirectional stream per batch, each signed with this host's key), and
//! applies the answers to the spool through [`UplinkState`]. Answers mean
//! the same through an aggregator: the sink signs a receipt, relayed
//! unchanged, and only such a receipt deletes events.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use starling_mesh::identity::{peer_identity, Role};
use starling_mesh::origin::{check_receipt, sha256, AckProof, CredentialCache, HostKey};
use starling_mesh::trust::DataPlaneTrust;
use starling_proto::batch::{decode_ack, EventListBuilder};
use starling_proto::limits::MAX_ACK_BYTES;
use starling_proto::v1::batch_ack::Status;
use starling_proto::v1::{BatchAck, RejectReason};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::{SinkAddress, UplinkSection};
use crate::metrics_names as m;
use crate::spool::Spool;
use crate::uplink_state::{AckAction, Answer, NextRead, PathFault, SeqRange, UplinkState};

/// Pause before re-sending a batch the sink rejected.
const REJECT_PAUSE: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long the uplink waits for the mesh to offer another target than
/// the one it just left for a fault (the chooser's first back-off).
const RETARGET_WAIT: Duration = Duration::from_secs(6);
/// Sink certificates remembered once verified.
const SINK_CREDENTIALS: usize = 64;

/// Why a single batch got no ack.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    #[error("read: {0}")]
    Read(#[from] quinn::ReadToEndError),
    #[error("bad ack: {0}")]
    Decode(#[from] starling_proto::batch::DecodeError),
    #[error("no ack within {0:?}")]
    Timeout(Duration),
}

/// Everything the uplink needs.
pub struct Uplink {
    /// This host's id: in every batch header, and what receipts must name.
    pub host_id: String,
    /// Batch sizes, window and timeouts.
    pub config: UplinkSection,
    /// Where the events wait until a sink persisted them.
    pub spool: Arc<Spool>,
    /// The fleet CA and revocation list the uplink checks servers and
    /// receipts with, and this host's key that signs batches.
    pub trust: DataPlaneTrust,
}

/// What became of one batch on the wire.
enum Outcome {
    /// An answer came; its receipt is checked.
    Answered {
        answer: Answer,
        /// The sink's clock, from a signed receipt.
        sink_time_ms: Option<u64>,
    },
    /// No answer (timeout, broken stream).
    Failed(SendError),
}

/// The sink's clock as this node estimates it from signed receipts: the
/// signing time in batch headers, so a host with a wrong clock is not
/// refused for ever (docs/mesh.md, "Data-plane trust").
#[derive(Debug, Default)]
struct SinkClock {
    offset_ms: i64,
}

impl SinkClock {
    fn local_ms() -> i64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }

    fn now_ms(&self) -> u64 {
        (Self::local_ms() + self.offset_ms).max(0) as u64
    }

    fn observe(&mut self, sink_ms: u64) {
        let offset = sink_ms as i64 - Self::local_ms();
        if (offset - self.offset_ms).abs() > 1000 {
            tracing::warn!(
                offset_ms = offset,
                "this host's clock differs from the sink's; batches are signed with the sink's time"
            );
        }
        self.offset_ms = offset;
        metrics::gauge!(m::SINK_CLOCK_OFFSET).set(offset as f64);
    }
}

/// Where the uplink sends: a sink, or the aggregator of the node's cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// host:port of its QUIC listener.
    pub address: String,
    /// The name its certificate must carry.
    pub server_name: String,
    /// The role its certificate must carry (Sink, or Node for an aggregator).
    pub role: Role,
}

/// How the uplink finds where to send.
pub enum Targets {
    /// Configured sinks, tried in turn.
    Static(Vec<SinkAddress>),
    /// Chosen by the mesh; the uplink reports targets it could not use,
    /// by name, so the chooser moves on to the next.
    Mesh {
        current: watch::Receiver<Option<Target>>,
        unavailable: mpsc::Sender<String>,
    },
}

impl Targets {
    /// The next target to try; waits while the mesh offers none.
    async fn next(
        &mut self,
        index: &mut usize,
        avoid: Option<&Target>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Target> {
        match self {
            Targets::Static(sinks) => {
                let sink = &sinks[*index % sinks.len()];
                *index += 1;
                Some(Target {
                    address: sink.address.clone(),
                    server_name: sink.server_name.clone(),
                    role: Role::Sink,
                })
            }
            Targets::Mesh { current, .. } => {
                let mut warned = None::<Instant>;
                let patience = tokio::time::sleep(RETARGET_WAIT);
                tokio::pin!(patience);
                let mut avoid = avoid;
                loop {
                    let offered = current.borrow_and_update().clone();
                    if let Some(t) = offered.filter(|t| Some(t) != avoid) {
                        return Some(t);
                    }
                    if avoid.is_some() {
                        // Left for a fault: give the chooser time to offer
                        // another before going back to the same one.
                        tokio::select! {
                            r = current.changed() => if r.is_err() { return None },
                            _ = &mut patience => avoid = None,
                            _ = shutdown.changed() => return None,
                        }
                        continue;
                    }
                    if let Some(t) = current.borrow().clone() {
                        return Some(t);
                    }
                    metrics::gauge!(m::UPLINK_CONNECTED).set(0.0);
                    if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                        tracing::warn!("no aggregator or sink known yet; events stay spooled");
                        warned = Some(Instant::now());
                    }
                    tokio::select! {
                        r = current.changed() => if r.is_err() { return None },
                        _ = shutdown.changed() => return None,
                    }
                }
            }
        }
    }

    fn retry_same(&self, index: &mut usize) {
        if let Targets::Static(_) = self {
            *index -= 1;
        }
    }

    async fn report_unavailable(&self, target: &Target) {
        if let Targets::Mesh { unavailable, .. } = self {
            let _ = unavailable.send(target.server_name.clone()).await;
        }
    }

    /// Resolves when the mesh picks another target.
    async fn changed_from(&mut self, target: &Target) {
        match self {
            Targets::Static(_) => std::future::pending().await,
            Targets::Mesh { current, .. } => loop {
                if current.borrow_and_update().as_ref() != Some(target) {
                    return;
                }
                if current.changed().await.is_err() {
                    return std::future::pending().await;
                }
            },
        }
    }
}

impl Uplink {
    /// Ships spooled events until `shutdown` turns true.
    pub async fn run(
        self,
        mut targets: Targets,
        mut spooled: watch::Receiver<u64>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let bind: SocketAddr = "[::]:0".parse()?;
        let mut endpoint = match quinn::Endpoint::client(bind) {
            Ok(e) => e,
            Err(_) => quinn::Endpoint::client("0.0.0.0:0".parse()?)?,
        };
        let mut client = self.trust.client_config()?;
        client.transport_config(Arc::new(transport()));
        endpoint.set_default_client_config(client);

        let key = Arc::new(self.trust.host_key()?);
        let sinks = Arc::new(CredentialCache::new(self.trust.clone(), SINK_CREDENTIALS));
        let mut clock = SinkClock::default();
        let mut backoff = Duration::from_millis(200);
        let mut index = 0;
        let mut warned_since = None::<Instant>;
        let mut faulty: Option<Target> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let Some(target) = targets
                .next(&mut index, faulty.take().as_ref(), &mut shutdown)
                .await
            else {
                break;
            };
            match connect(&endpoint, &target).await {
                Ok(conn) => {
                    self.trust.spawn_guard(&conn);
                    backoff = Duration::from_millis(200);
                    warned_since = None;
                    tracing::info!(to = %target.server_name, address = %target.address, role = %target.role, "uplink connected");
                    metrics::gauge!(m::UPLINK_CONNECTED).set(1.0);
                    let via = Path {
                        conn: &conn,
                        key: &key,
                        sinks: &sinks,
                    };
                    let done = tokio::select! {
                        done = self.serve(via, &mut clock, &mut spooled, &mut shutdown) => done,
                        _ = targets.changed_from(&target) => Ok(Stop::Retarget),
                    };
                    metrics::gauge!(m::UPLINK_CONNECTED).set(0.0);
                    conn.close(0u32.into(), b"bye");
                    match done {
                        Ok(Stop::Shutdown) => break,
                        Ok(Stop::Retarget) => {
                            tracing::info!(from = %target.server_name, "uplink moving to a better target; unacknowledged events will be resent");
                        }
                        Ok(Stop::ConnectionLost(reason)) => {
                            tracing::warn!(to = %target.server_name, %reason, "uplink connection lost; spooling and reconnecting");
                            targets.retry_same(&mut index);
                            targets.report_unavailable(&target).await;
                        }
                        Ok(Stop::PathFault(fault, why)) => {
                            metrics::counter!(m::PATH_FAULTS, "kind" => fault.as_str())
                                .increment(1);
                            tracing::warn!(
                                to = %target.server_name,
                                role = %target.role,
                                fault = fault.as_str(),
                                %why,
                                "path to the sink not trusted; unacknowledged events will be resent another way"
                            );
                            targets.report_unavailable(&target).await;
                            faulty = Some(target.clone());
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => {
                    targets.report_unavailable(&target).await;
                    let stats = self.spool.stats();
                    if warned_since.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                        tracing::warn!(
                            to = %target.server_name,
                            address = %target.address,
                            error = %e,
                            spooled = stats.events,
                            "uplink target unreachable; events stay spooled"
                        );
                        warned_since = Some(Instant::now());
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => break,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        endpoint.close(0u32.into(), b"shutdown");
        endpoint.wait_idle().await;
        Ok(())
    }

    async fn serve(
        &self,
        via: Path<'_>,
        clock: &mut SinkClock,
        spooled: &mut watch::Receiver<u64>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Stop> {
        let conn = via.conn;
        let own_certificate = sha256(via.key.certificate());
        let cfg = &self.config;
        let mut state = UplinkState::new(cfg.max_in_flight);
        state.on_connected(self.spool.stats().first_seq);
        let (ack_tx, mut ack_rx) = mpsc::channel::<(u64, Outcome)>(cfg.max_in_flight * 2);
        let ack_timeout = Duration::from_secs(cfg.ack_timeout_secs);
        let mut paused_until: Option<Instant> = None;
        loop {
            // Fill the window.
            while paused_until.is_none_or(|t| Instant::now() >= t) {
                paused_until = None;
                let Some(read) = state.next_read() else { break };
                let (from, until) = match read {
                    NextRead::Range(r) => (r.first, r.last),
                    NextRead::From(s) => (s, u64::MAX),
                };
                let spool = self.spool.clone();
                let (max_events, max_bytes) = (cfg.max_batch_events, cfg.max_batch_bytes);
                let entries =
                    tokio::task::block_in_place(|| spool.read_from(from, max_events, max_bytes))?;
                let mut builder = EventListBuilder::default();
                let (mut first, mut last) = (0, 0);
                for (seq, bytes) in entries.iter().filter(|(s, _)| *s <= until) {
                    if first == 0 {
                        first = *seq;
                    }
                    last = *seq;
                    builder.push_encoded(*seq, bytes);
                }
                if builder.is_empty() {
                    match read {
                        NextRead::Range(_) => {
                            state.on_resend_empty();
                            continue;
                        }
                        NextRead::From(_) => break,
                    }
                }
                let range = SeqRange { first, last };
                let id = state.on_sent(read, range);
                let sealed = via
                    .key
                    .seal(builder.finish(&self.host_id, id, clock.now_ms()))?;
                let conn = conn.clone();
                let tx = ack_tx.clone();
                let sinks = via.sinks.clone();
                let host = self.host_id.clone();
                tokio::spawn(async move {
                    let sent = tokio::time::timeout(ack_timeout, send_batch(&conn, &sealed.bytes));
                    let outcome = match sent.await {
                        Ok(Ok(ack)) => classify(
                            &sinks,
                            &ack,
                            id,
                            &host,
                            &sealed.header_digest,
                            &own_certificate,
                        ),
                        Ok(Err(e)) => Outcome::Failed(e),
                        Err(_) => Outcome::Failed(SendError::Timeout(ack_timeout)),
                    };
                    let _ = tx.send((id, outcome)).await;
                });
            }

            let pause = async {
                match paused_until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some((id, outcome)) = ack_rx.recv() => {
                    let action = match outcome {
                        Outcome::Answered { answer, sink_time_ms } => {
                            if let Some(t) = sink_time_ms {
                                clock.observe(t);
                            }
                            state.on_answer(id, answer)
                        }
                        Outcome::Failed(e) => {
                            metrics::counter!(m::BATCHES, "result" => "failed").increment(1);
                            if let Some(reason) = conn.close_reason() {
                                state.on_connection_lost();
                                return Ok(Stop::ConnectionLost(reason.to_string()));
                            }
                            tracing::warn!(batch = id, error = %e, "batch got no ack; will resend");
                            match state.on_batch_failed(id) {
                                Some(action) => action,
                                None => continue,
                            }
                        }
                    };
                    match action {
                        AckAction::Delete(r) => {
                            let spool = self.spool.clone();
                            let n = tokio::task::block_in_place(|| spool.ack(r.first, r.last))?;
                            metrics::counter!(m::EVENTS_ACKED).increment(n);
                            metrics::counter!(m::BATCHES, "result" => "persisted").increment(1);
                            let st = self.spool.stats();
                            metrics::gauge!(m::SPOOL_EVENTS).set(st.events as f64);
                            metrics::gauge!(m::SPOOL_BYTES).set(st.bytes as f64);
                        }
                        AckAction::Resend(r) => {
                            metrics::counter!(m::BATCHES, "result" => "retry").increment(1);
                            tracing::debug!(first = r.first, last = r.last, "sink or relay asked to retry");
                            paused_until = Some(Instant::now() + Duration::from_millis(500));
                        }
                        AckAction::ClockRejected(r) => {
                            metrics::counter!(m::BATCHES, "result" => "retry").increment(1);
                            tracing::warn!(first = r.first, last = r.last, "sink refused the signing time; signing again with the sink's");
                        }
                        AckAction::Rejected(r, detail) => {
                            metrics::counter!(m::BATCHES, "result" => "rejected").increment(1);
                            tracing::error!(first = r.first, last = r.last, %detail, "sink rejected a batch; it stays spooled");
                            paused_until = Some(Instant::now() + REJECT_PAUSE);
                        }
                        AckAction::MoveOn(_, fault, why) => {
                            metrics::counter!(m::BATCHES, "result" => "failed").increment(1);
                            state.on_connection_lost();
                            return Ok(Stop::PathFault(fault, why));
                        }
                        AckAction::Ignore => {}
                    }
                }
                r = spooled.changed() => {
                    if r.is_err() {
                        // The sensor is gone; keep draining what is spooled.
                        std::future::pending::<()>().await;
                    }
                }
                _ = pause => {}
                reason = conn.closed() => {
                    state.on_connection_lost();
                    return Ok(Stop::ConnectionLost(reason.to_string()));
                }
                _ = shutdown.changed() => return Ok(Stop::Shutdown),
            }
        }
    }
}

enum Stop {
    Shutdown,
    Retarget,
    ConnectionLost(String),
    /// The path proved untrustworthy: leave it for another.
    PathFault(PathFault, String),
}

/// The connection batches go out on, the key that signs them, and the
/// sink certificates receipts are checked with.
#[derive(Clone, Copy)]
struct Path<'a> {
    conn: &'a quinn::Connection,
    key: &'a Arc<HostKey>,
    sinks: &'a Arc<CredentialCache>,
}

/// What an ack to batch `id` amounts to, once its receipt is checked.
fn classify(
    sinks: &CredentialCache,
    ack: &BatchAck,
    id: u64,
    host: &str,
    header_digest: &[u8; 32],
    own_certificate: &[u8; 32],
) -> Outcome {
    let status = Status::try_from(ack.status).unwrap_or(Status::Unspecified);
    match check_receipt(sinks, ack, host, header_digest, SystemTime::now()) {
        AckProof::Signed(receipt) => Outcome::Answered {
            answer: Answer::Signed {
                status,
                reason: RejectReason::try_from(receipt.reason).unwrap_or_default(),
                own_certificate: receipt.certificate_sha256.as_slice() == own_certificate,
                detail: ack.detail.clone(),
            },
            sink_time_ms: Some(receipt.sink_time_unix_ms),
        },
        AckProof::Unsigned if ack.batch_id != id => Outcome::Answered {
            answer: Answer::Unsigned {
                status: Status::Retry,
                detail: format!("ack for batch {} instead of {id}", ack.batch_id),
            },
            sink_time_ms: None,
        },
        AckProof::Unsigned => Outcome::Answered {
            answer: Answer::Unsigned {
                status,
                detail: ack.detail.clone(),
            },
            sink_time_ms: None,
        },
        AckProof::Invalid(why) => Outcome::Answered {
            answer: Answer::Forged(why),
            sink_time_ms: None,
        },
    }
}

/// Keep-alives make a dead sink or aggregator visible within four seconds
/// (four missed keep-alives) rather than at the default 30-second idle
/// timeout, so a node moves on within the 5-second goal.
pub fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    if let Ok(idle) = Duration::from_secs(4).try_into() {
        t.max_idle_timeout(Some(idle));
    }
    t
}

async fn connect(endpoint: &quinn::Endpoint, target: &Target) -> anyhow::Result<quinn::Connection> {
    let addr = tokio::net::lookup_host(&target.address)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{} resolves to no address", target.address))?;
    let connecting = endpoint.connect(addr, &target.server_name)?;
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| anyhow::anyhow!("handshake timed out after {CONNECT_TIMEOUT:?}"))??;
    let id = peer_identity(&conn)?;
    if id.role != target.role || id.name != target.server_name && target.role == Role::Node {
        conn.close(1u32.into(), b"unexpected identity");
        anyhow::bail!(
            "{} presented identity {id}, expected {}/{}",
            target.address,
            target.role,
            target.server_name
        );
    }
    Ok(conn)
}

async fn send_batch(conn: &quinn::Connection, bytes: &[u8]) -> Result<BatchAck, SendError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(bytes).await?;
    send.finish()?;
    let buf = recv.read_to_end(MAX_ACK_BYTES).await?;
    Ok(decode_ack(&buf)?)
}
