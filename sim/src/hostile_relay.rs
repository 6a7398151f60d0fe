//! A compromised aggregator, for tests: an enrolled node (its certificate
//! is genuine) that relays batches to a real sink the way the node's relay
//! does, but misbehaves in one chosen way. It is a test double of an
//! intruder, not of any Starling part: the nodes and sinks it talks to are
//! the real ones, and they must find it out.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prost::Message;
use starling_mesh::identity::TlsFiles;
use starling_mesh::origin::HostKey;
use starling_mesh::trust::DataPlaneTrust;
use starling_proto::limits::MAX_BATCH_BYTES;
use starling_proto::v1::batch_ack::Status;
use starling_proto::v1::{Batch, BatchAck, BatchReceipt};
use tokio::sync::watch;

use crate::client::send_on;

/// What the relay does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Flips one bit of every batch's payload on the way to the sink and
    /// passes the sink's answer back.
    Alter,
    /// Answers PERSISTED at once with a receipt it signed itself (with its
    /// own node key), and forwards nothing.
    ForgeReceipt,
    /// Reads every batch and never answers.
    Drop,
    /// Relays honestly, then sends every batch to the sink a second time.
    Replay,
}

/// A running hostile relay.
pub struct HostileRelay {
    /// Where nodes reach it.
    pub address: SocketAddr,
    batches: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl HostileRelay {
    /// Starts a relay holding the node credentials `files` that forwards
    /// to the sink at `sink` (whose certificate names `sink_name`).
    pub async fn start(
        files: &TlsFiles,
        sink: SocketAddr,
        sink_name: &str,
        how: Misbehaviour,
    ) -> anyhow::Result<Self> {
        let trust = DataPlaneTrust::load(files, None)?;
        let key = trust.host_key()?;
        let server = quinn::Endpoint::server(trust.server_config()?, "127.0.0.1:0".parse()?)?;
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        client.set_default_client_config(trust.client_config()?);
        let upstream = client
            .connect(sink, sink_name)?
            .await
            .context("the hostile relay's connection to the sink")?;
        let address = server.local_addr()?;
        let batches = Arc::new(AtomicU64::new(0));
        let (stop, mut stopped) = watch::channel(false);
        let shared = Arc::new(Shared {
            upstream,
            key,
            how,
            batches: batches.clone(),
        });
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    incoming = server.accept() => {
                        let Some(incoming) = incoming else { break };
                        let shared = shared.clone();
                        tokio::spawn(async move { shared.serve(incoming).await });
                    }
                    _ = stopped.changed() => break,
                }
            }
            server.close(0u32.into(), b"done");
        });
        Ok(Self {
            address,
            batches,
            stop,
            task,
        })
    }

    /// Batches it has been handed so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Stops accepting and closes its listener.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct Shared {
    upstream: quinn::Connection,
    key: HostKey,
    how: Misbehaviour,
    batches: Arc<AtomicU64>,
}

impl Shared {
    async fn serve(self: Arc<Self>, incoming: quinn::Incoming) {
        let Ok(conn) = incoming.await else { return };
        while let Ok((send, recv)) = conn.accept_bi().await {
            let me = self.clone();
            tokio::spawn(async move { me.stream(send, recv).await });
        }
    }

    async fn stream(&self, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let Ok(bytes) = recv.read_to_end(MAX_BATCH_BYTES).await else {
            return;
        };
        self.batches.fetch_add(1, Ordering::Relaxed);
        let ack = match self.how {
            Misbehaviour::Alter => {
                let mut batch = match Batch::decode(bytes.as_slice()) {
                    Ok(b) => b,
                    Err(_) => return,
                };
                if let Some(last) = batch.payload.last_mut() {
                    *last ^= 1;
                }
                send_on(&self.upstream, &batch.encode_to_vec()).await.ok()
            }
            Misbehaviour::ForgeReceipt => self.forged(&bytes),
            Misbehaviour::Drop => {
                // Hold the stream open until the node gives up on it.
                let _ = tokio::time::timeout(Duration::from_secs(600), send.stopped()).await;
                return;
            }
            Misbehaviour::Replay => {
                let ack = send_on(&self.upstream, &bytes).await.ok();
                let _ = send_on(&self.upstream, &bytes).await;
                ack
            }
        };
        if let Some(ack) = ack {
            if send.write_all(&ack.encode_to_vec()).await.is_ok() {
                let _ = send.finish();
            }
        }
    }

    /// A PERSISTED answer with a receipt this relay signed itself, naming
    /// the batch exactly as a sink would.
    fn forged(&self, bytes: &[u8]) -> Option<BatchAck> {
        let batch = Batch::decode(bytes).ok()?;
        let header = starling_proto::v1::BatchHeader::decode(batch.header.as_slice()).ok()?;
        let receipt = BatchReceipt {
            host_id: header.host_id,
            batch_id: header.batch_id,
            header_sha256: starling_mesh::origin::sha256(&batch.header).to_vec(),
            status: Status::Persisted as i32,
            sink_time_unix_ms: crate::client::unix_ms(),
            certificate_sha256: starling_mesh::origin::sha256(&batch.certificate).to_vec(),
            ..Default::default()
        };
        let mut ack = BatchAck::unsigned(header.batch_id, Status::Persisted, String::new());
        self.key.sign_receipt(&receipt, &mut ack).ok()?;
        Some(ack)
    }
}
