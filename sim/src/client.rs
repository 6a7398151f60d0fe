//! A raw data-plane client that sends whatever bytes a test gives it: the
//! tool for checking how the sink treats hostile or broken peers. Batches
//! are signed with [`signed_batch`], by the production signing code, with
//! whatever key a test holds (its own host's, or another's to forge).

use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use prost::Message;
use starling_mesh::identity::{TlsFiles, DATA_PLANE_ALPN};
use starling_mesh::origin::HostKey;
use starling_mesh::trust::DataPlaneTrust;
use starling_proto::batch::{decode_ack, EventListBuilder};
use starling_proto::v1::{BatchAck, Event};

/// The signing key of the host whose credentials are `files`.
pub fn host_key(files: &TlsFiles) -> anyhow::Result<HostKey> {
    Ok(DataPlaneTrust::load(files, None)?.host_key()?)
}

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An encoded batch of `events` naming `host`, signed with `key` now, as
/// the node's uplink makes them. Events go in as given (their own host ids
/// and sequence numbers).
pub fn signed_batch(
    key: &HostKey,
    host: &str,
    batch_id: u64,
    events: &[Event],
) -> anyhow::Result<Vec<u8>> {
    let mut list = EventListBuilder::default();
    for e in events {
        let seq = e.header.as_ref().map_or(0, |h| h.seq);
        list.push_encoded(seq, &e.encode_to_vec());
    }
    signed_list(key, host, batch_id, list)
}

/// Signs an event list that a caller built itself.
pub fn signed_list(
    key: &HostKey,
    host: &str,
    batch_id: u64,
    list: EventListBuilder,
) -> anyhow::Result<Vec<u8>> {
    Ok(key.seal(list.finish(host, batch_id, unix_ms()))?.bytes)
}

/// Which credentials the client presents.
pub enum Credentials {
    /// A certificate and key (from any CA) and the CA it trusts.
    Certificate(TlsFiles),
    /// No client certificate at all; trusts `ca_cert` for the server.
    None { ca_cert: std::path::PathBuf },
}

/// One QUIC connection to a sink.
pub struct RawClient {
    endpoint: quinn::Endpoint,
    /// The connection, for tests that open streams themselves.
    pub conn: quinn::Connection,
}

fn anonymous_config(ca_cert: &std::path::Path) -> anyhow::Result<quinn::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca_cert)? {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![DATA_PLANE_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

impl RawClient {
    /// Connects and completes the handshake (or returns its error).
    pub async fn connect(
        address: &str,
        server_name: &str,
        creds: Credentials,
    ) -> anyhow::Result<Self> {
        let config = match creds {
            Credentials::Certificate(files) => {
                DataPlaneTrust::load(&files, None)?.client_config()?
            }
            Credentials::None { ca_cert } => anonymous_config(&ca_cert)?,
        };
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(config);
        let conn = endpoint
            .connect(address.parse()?, server_name)?
            .await
            .context("handshake")?;
        Ok(Self { endpoint, conn })
    }

    /// Sends `bytes` on a new stream and reads the sink's ack.
    pub async fn send(&self, bytes: &[u8]) -> anyhow::Result<BatchAck> {
        send_on(&self.conn, bytes).await
    }
}

/// Sends `bytes` on a new stream of `conn` and reads the sink's ack. A free
/// function so tests can run many at once on clones of one connection.
pub async fn send_on(conn: &quinn::Connection, bytes: &[u8]) -> anyhow::Result<BatchAck> {
    let (mut send, mut recv) = conn.open_bi().await?;
    // The sink may stop reading early (oversized batch) and still answer.
    if send.write_all(bytes).await.is_ok() {
        let _ = send.finish();
    }
    let ack = recv.read_to_end(64 * 1024).await?;
    Ok(decode_ack(&ack)?)
}

impl RawClient {
    /// Waits for the connection to be usable for at least one stream; an
    /// error here means the server refused the connection.
    pub async fn probe(&self) -> anyhow::Result<()> {
        // With TLS 1.3 the server verifies the client certificate after the
        // client considers the handshake done, so a refusal shows up on the
        // first use of the connection.
        self.send(b"").await.map(|_| ())
    }

    /// Closes the connection and waits for the endpoint to go idle.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        self.endpoint.wait_idle().await;
    }
}
