//! QUIC ingress: accepts connections from enrolled nodes only, reads one
//! batch per bidirectional stream, persists it, and answers with a BatchAck.
//! A node's connection carries its own batches, or, when it is an
//! aggregator, the batches of the nodes it relays for.
//!
//! Relays are not trusted: a batch is persisted only when the host it
//! names signed it (`starling_mesh::origin`), and every answer about a
//! batch whose header could be read carries a receipt this sink signs, so
//! the origin can tell the sink's word from a relay's.
//!
//! Each stream is independent: a malformed or oversized batch is answered
//! REJECTED on its own stream and affects nothing else in flight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prost::Message;
use starling_mesh::identity::{peer_identity, PeerIdentity, Role};
use starling_mesh::origin::{
    sha256, verify_origin, CredentialCache, CredentialError, HostKey, OriginError,
};
use starling_mesh::trust::DataPlaneTrust;
use starling_proto::batch::open_batch;
use starling_proto::limits::MAX_BATCH_BYTES;
use starling_proto::v1::{batch_ack::Status, BatchAck, BatchReceipt, RejectReason};
use tokio::sync::watch;

use crate::backend::{Backend, Provenance};
use crate::config::OriginSection;
use crate::metrics_names as m;
use crate::replay::ReplayWindow;

/// Shared state of the ingress.
pub struct Ingress {
    backend: Arc<Backend>,
    max_connections: usize,
    connections: AtomicUsize,
    streams: AtomicUsize,
    /// Closes a node's connection when its certificate is revoked.
    trust: DataPlaneTrust,
    /// Origin certificates already checked.
    credentials: CredentialCache,
    /// Signs receipts.
    key: HostKey,
    /// Batches persisted lately, to recognise replays.
    replays: Mutex<ReplayWindow>,
    /// Oldest (and farthest ahead) a batch's signing time may be.
    max_batch_age: Duration,
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
    /// revocation list names and refusing batches their origin did not
    /// sign, as `origin` says.
    pub fn new(
        backend: Arc<Backend>,
        max_connections: usize,
        trust: DataPlaneTrust,
        origin: &OriginSection,
    ) -> Result<Arc<Self>, starling_mesh::origin::SignError> {
        let max_batch_age = Duration::from_secs(origin.max_batch_age_secs);
        Ok(Arc::new(Self {
            backend,
            max_connections,
            connections: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            key: trust.host_key()?,
            credentials: CredentialCache::new(trust.clone(), origin.credential_cache),
            trust,
            replays: Mutex::new(ReplayWindow::new(
                max_batch_age,
                origin.replay_window_batches,
                Instant::now(),
            )),
            max_batch_age,
        }))
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
        if send.write_all(&ack.encode_to_vec()).await.is_ok() {
            let _ = send.finish();
        }
    }

    async fn handle_batch(&self, peer: &PeerIdentity, bytes: &[u8]) -> BatchAck {
        let opened = match open_batch(bytes) {
            Ok(b) => b,
            Err(e) => {
                // No header to sign a receipt about: a plain rejection.
                metrics::counter!(m::BATCHES_REFUSED, "reason" => "malformed").increment(1);
                tracing::warn!(identity = %peer, error = %e, "unreadable batch refused");
                return reject(0, e.to_string());
            }
        };
        let digest = sha256(opened.header_bytes());
        let answer = Answer {
            ingress: self,
            host_id: opened.header.host_id.clone(),
            batch_id: opened.header.batch_id,
            digest,
            certificate: sha256(&opened.certificate),
            peer,
        };
        let now = SystemTime::now();
        let credential = match verify_origin(&self.credentials, &opened, now) {
            Ok(c) => c,
            Err(e) => {
                let (reason, label) = match &e {
                    OriginError::Credential(CredentialError::Revoked) => {
                        (RejectReason::RejectOriginUntrusted, "revoked")
                    }
                    OriginError::Credential(_) => {
                        (RejectReason::RejectOriginUntrusted, "origin_untrusted")
                    }
                    OriginError::HostMismatch { .. } => {
                        (RejectReason::RejectOriginMismatch, "origin_mismatch")
                    }
                    OriginError::BadSignature => {
                        (RejectReason::RejectBadSignature, "bad_signature")
                    }
                };
                metrics::counter!(m::BATCHES_REFUSED, "reason" => label).increment(1);
                return answer.refuse(reason, e.to_string());
            }
        };
        if let Some(skew) = self.clock_skew(opened.header.signed_at_unix_ms, now) {
            metrics::counter!(m::BATCHES_REFUSED, "reason" => "clock").increment(1);
            return answer.refuse(RejectReason::RejectClock, skew);
        }
        if self.replayed(&digest) {
            metrics::counter!(m::BATCHES_REPLAYED).increment(1);
            return answer.persisted(true);
        }
        if opened.header.host_id != peer.name {
            // Relayed by an aggregator; the origin's signature, not the
            // relay, vouches for the host.
            metrics::counter!(m::BATCHES_RELAYED).increment(1);
        }
        let seqs = (opened.header.first_seq, opened.header.last_seq);
        let batch = match opened.unseal() {
            Ok(b) => b,
            Err(e) => {
                let (reason, label) = if e.is_altered() {
                    (RejectReason::RejectPayloadMismatch, "payload_mismatch")
                } else {
                    (RejectReason::RejectMalformed, "malformed")
                };
                metrics::counter!(m::BATCHES_REFUSED, "reason" => label).increment(1);
                return answer.refuse(reason, e.to_string());
            }
        };
        let fingerprint = credential.fingerprint_hex();
        let provenance = Provenance {
            fingerprint: &fingerprint,
            seal: &batch.seal,
        };
        match self.backend.persist(&batch, &provenance).await {
            Ok(()) => {
                tracing::debug!(
                    host = %answer.host_id,
                    batch = answer.batch_id,
                    seqs = %format_args!("{}..={}", seqs.0, seqs.1),
                    "batch persisted"
                );
                metrics::counter!(m::EVENTS_PERSISTED).increment(batch.len() as u64);
                self.remember(&digest);
                answer.persisted(false)
            }
            Err(e) => {
                tracing::warn!(identity = %peer, error = %e, "persist failed; asking the node to retry");
                answer.sign(
                    Status::Retry,
                    RejectReason::Unspecified,
                    e.to_string(),
                    false,
                )
            }
        }
    }

    /// Why a batch signed at `signed_at_ms` is too old or too far ahead of
    /// this sink's clock, if it is.
    fn clock_skew(&self, signed_at_ms: u64, now: SystemTime) -> Option<String> {
        let now_ms = unix_ms(now);
        let limit = self.max_batch_age.as_millis() as u64;
        let (ahead, by) = if signed_at_ms > now_ms {
            (true, signed_at_ms - now_ms)
        } else {
            (false, now_ms - signed_at_ms)
        };
        (by > limit).then(|| {
            format!(
                "signed {:.0} s {} this sink's clock (at most {} s allowed); sign with the receipt's time",
                by as f64 / 1000.0,
                if ahead { "ahead of" } else { "behind" },
                limit / 1000
            )
        })
    }

    fn replayed(&self, digest: &[u8; 32]) -> bool {
        let mut w = self.replays.lock().unwrap_or_else(|p| p.into_inner());
        w.seen(digest, Instant::now())
    }

    fn remember(&self, digest: &[u8; 32]) {
        let mut w = self.replays.lock().unwrap_or_else(|p| p.into_inner());
        let before = w.early_turns();
        w.remember(digest, Instant::now());
        if w.early_turns() > before {
            metrics::counter!(m::REPLAY_WINDOW_SHORTENED).increment(1);
        }
    }
}

/// Unix milliseconds of `t`.
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The sink's answer about one batch whose header it could read: always
/// with a signed receipt.
struct Answer<'a> {
    ingress: &'a Ingress,
    host_id: String,
    batch_id: u64,
    /// SHA-256 of the batch's header bytes.
    digest: [u8; 32],
    /// SHA-256 of the certificate that came with it.
    certificate: [u8; 32],
    peer: &'a PeerIdentity,
}

impl Answer<'_> {
    fn persisted(&self, duplicate: bool) -> BatchAck {
        self.sign(
            Status::Persisted,
            RejectReason::Unspecified,
            String::new(),
            duplicate,
        )
    }

    fn refuse(&self, reason: RejectReason, detail: String) -> BatchAck {
        tracing::warn!(
            identity = %self.peer,
            host = %self.host_id,
            reason = reason.as_str_name(),
            %detail,
            "batch refused"
        );
        self.sign(Status::Rejected, reason, detail, false)
    }

    fn sign(
        &self,
        status: Status,
        reason: RejectReason,
        detail: String,
        duplicate: bool,
    ) -> BatchAck {
        let receipt = BatchReceipt {
            host_id: self.host_id.clone(),
            batch_id: self.batch_id,
            header_sha256: self.digest.to_vec(),
            status: status as i32,
            reason: reason as i32,
            sink_time_unix_ms: unix_ms(SystemTime::now()),
            duplicate,
            certificate_sha256: self.certificate.to_vec(),
        };
        let mut ack = BatchAck {
            batch_id: self.batch_id,
            status: status as i32,
            detail,
            ..Default::default()
        };
        if let Err(e) = self.ingress.key.sign_receipt(&receipt, &mut ack) {
            // Without a receipt the node treats the answer as unproven and
            // sends the batch again.
            tracing::error!(error = %e, "could not sign a receipt");
            metrics::counter!(m::RECEIPTS_UNSIGNED).increment(1);
        }
        ack
    }
}

fn reject(batch_id: u64, detail: String) -> BatchAck {
    BatchAck::unsigned(batch_id, Status::Rejected, detail)
}
