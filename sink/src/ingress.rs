//! QUIC ingress: accepts connections from enrolled nodes only, reads one
//! batch per bidirectional stream, persists it, and answers with a BatchAck.
//! A node's connection carries its own batches, or, when it is an
//! aggregator, the batches of the nodes it relays for.
//!
//! Each stream is independent: a malformed or oversized batch is answered
//! REJECTED on its own stream and affects nothing else in flight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use starling_mesh::identity::{peer_identity, PeerIdentity, Role};
use starling_mesh::trust::DataPlaneTrust;
use starling_proto::batch::decode_batch;
use starling_proto::limits::MAX_BATCH_BYTES;
use starling_proto::v1::{batch_ack::Status, Batch, BatchAck};
use tokio::sync::watch;

use crate::backend::Backend;
use crate::metrics_names as m;

/// Shared state of the ingress.
pub struct Ingress {
    backend: Arc<Backend>,
    max_connections: usize,
    connections: AtomicUsize,
    streams: AtomicUsize,
    /// Closes a node's connection when its certificate is revoked.
    trust: DataPlaneTrust,
}

/// QUIC transport settings of the sink.
pub fn transport(max_streams_per_connection: u32) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(max_streams_per_connection.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    if let Ok(idle) = Duration::from_secs(8).try_into() {
        t.max_idle_timeout(Some(idle));
    }
    t
}

impl Ingress {
    /// An ingress persisting to `backend`, dropping nodes that `trust`'s
    /// revocation list names.
    pub fn new(backend: Arc<Backend>, max_connections: usize, trust: DataPlaneTrust) -> Arc<Self> {
        Arc::new(Self {
            backend,
            max_connections,
            connections: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            trust,
        })
    }

    /// Connections in use, as a percentage of the limit.
    pub fn load_pct(&self) -> u8 {
        let n = self.connections.load(Ordering::Relaxed);
        ((n * 100) / self.max_connections.max(1)).min(100) as u8
    }

    /// Accepts connections until `shutdown` turns true, then stops accepting
    /// and waits up to `grace` for batches being persisted to be acked.
    pub async fn serve(
        self: &Arc<Self>,
        endpoint: &quinn::Endpoint,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) {
        loop {
            tokio::select! {
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    if self.connections.load(Ordering::Relaxed) >= self.max_connections {
                        metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "limit").increment(1);
                        incoming.refuse();
                        continue;
                    }
                    let me = self.clone();
                    tokio::spawn(async move { me.connection(incoming).await });
                }
                _ = shutdown.changed() => break,
            }
        }
        // Refuse new connections; let batches in progress finish.
        endpoint.set_server_config(None);
        let deadline = tokio::time::Instant::now() + grace;
        while self.streams.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        endpoint.close(0u32.into(), b"sink shutting down");
    }

    async fn connection(self: Arc<Self>, incoming: quinn::Incoming) {
        let remote = incoming.remote_address();
        let conn = match incoming.await {
            Ok(c) => c,
            Err(e) => {
                // Includes clients without a certificate from the fleet CA.
                metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "handshake").increment(1);
                tracing::info!(%remote, error = %e, "handshake refused");
                return;
            }
        };
        let peer = match peer_identity(&conn) {
            Ok(id) if id.role == Role::Node => id,
            Ok(id) => {
                metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "role").increment(1);
                tracing::warn!(%remote, identity = %id, "refused: only nodes may send batches");
                conn.close(2u32.into(), b"role not allowed");
                return;
            }
            Err(e) => {
                metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "identity").increment(1);
                tracing::warn!(%remote, error = %e, "refused: no Starling identity");
                conn.close(2u32.into(), b"no identity");
                return;
            }
        };
        self.trust.spawn_guard(&conn);
        self.connections.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(m::CONNECTIONS_ACTIVE).increment(1.0);
        tracing::info!(%remote, identity = %peer, "node connected");
        let peer = Arc::new(peer);
        loop {
            match conn.accept_bi().await {
                Ok((send, recv)) => {
                    let me = self.clone();
                    let peer = peer.clone();
                    me.streams.fetch_add(1, Ordering::AcqRel);
                    tokio::spawn(async move {
                        me.stream(&peer, send, recv).await;
                        me.streams.fetch_sub(1, Ordering::AcqRel);
                    });
                }
                Err(e) => {
                    tracing::info!(%remote, identity = %peer, reason = %e, "node disconnected");
                    break;
                }
            }
        }
        self.connections.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(m::CONNECTIONS_ACTIVE).decrement(1.0);
    }

    async fn stream(
        &self,
        peer: &PeerIdentity,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let ack = match recv.read_to_end(MAX_BATCH_BYTES).await {
            Ok(bytes) => self.handle_batch(peer, &bytes).await,
            Err(quinn::ReadToEndError::TooLong) => {
                let _ = recv.stop(1u32.into());
                reject(0, format!("batch exceeds {MAX_BATCH_BYTES} bytes"))
            }
            Err(e) => {
                tracing::debug!(identity = %peer, error = %e, "stream ended before a full batch");
                return;
            }
        };
        let status = Status::try_from(ack.status).unwrap_or(Status::Unspecified);
        metrics::counter!(m::BATCHES, "status" => status.as_str_name()).increment(1);
        if status == Status::Rejected {
            tracing::warn!(identity = %peer, detail = %ack.detail, "batch rejected");
        }
        if send.write_all(&ack.encode_to_vec()).await.is_ok() {
            let _ = send.finish();
        }
    }

    async fn handle_batch(&self, peer: &PeerIdentity, bytes: &[u8]) -> BatchAck {
        let batch = match decode_batch(bytes) {
            Ok(b) => b,
            Err(e) => {
                // Echo the id if the envelope is readable, so the sender can
                // tell which batch failed.
                let id = Batch::decode(bytes).map(|b| b.batch_id).unwrap_or(0);
                return reject(id, e.to_string());
            }
        };
        if batch.host_id != peer.name {
            // Relayed by an aggregator, which checked the host against the
            // certificate of the node's own connection (docs/mesh.md).
            metrics::counter!(m::BATCHES_RELAYED).increment(1);
        }
        match self.backend.persist(&batch).await {
            Ok(()) => {
                metrics::counter!(m::EVENTS_PERSISTED).increment(batch.events.len() as u64);
                BatchAck {
                    batch_id: batch.batch_id,
                    status: Status::Persisted as i32,
                    detail: String::new(),
                }
            }
            Err(e) => {
                tracing::warn!(identity = %peer, error = %e, "persist failed; asking the node to retry");
                BatchAck {
                    batch_id: batch.batch_id,
                    status: Status::Retry as i32,
                    detail: e.to_string(),
                }
            }
        }
    }
}

fn reject(batch_id: u64, detail: String) -> BatchAck {
    BatchAck {
        batch_id,
        status: Status::Rejected as i32,
        detail,
    }
}
