//! Trust for the QUIC data plane that follows the fleet's revocation list.
//!
//! The relay and the sink check a client's certificate, and the uplink a
//! server's, with verifiers that always consult the list in force: when
//! `starlingctl cert revoke` writes a newer list, [`DataPlaneTrust::reload`]
//! swaps the verifiers under every endpoint built from it (no endpoint is
//! rebuilt), so the next handshake of a revoked host fails. Connections
//! made before are closed by [`DataPlaneTrust::guard`]. The control plane
//! applies the same list to its admitted peers (`swarm::revocations`).

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error as TlsError, SignatureScheme};
use rustls_pki_types::CertificateRevocationListDer;
use tokio::sync::watch;

use crate::enrol::{
    build_client_verifier, check_revocation_list, RevocationError, RevocationsApplied,
};
use crate::identity::{load, serial_of, IdentityError, Revocations, TlsFiles, DATA_PLANE_ALPN};

/// How often [`DataPlaneTrust::watch`] looks at the list's file.
pub const REVOCATION_CHECK: Duration = Duration::from_secs(2);

/// QUIC application close code of a connection whose peer was revoked.
pub const REVOKED_CLOSE_CODE: u32 = 3;

/// Counter: data-plane handshakes refused because the peer's certificate
/// is revoked (`side`: which end refused).
pub const REVOKED_REFUSED: &str = "starling_data_plane_revoked_refused_total";
/// Counter: open data-plane connections closed because a newer list
/// revoked the peer.
pub const REVOKED_CLOSED: &str = "starling_data_plane_revoked_closed_total";

/// The revocation list file, read again only when its modification time
/// changes. Shared by the data plane and the mesh driver.
#[derive(Debug)]
pub struct RevocationFile {
    path: PathBuf,
    seen: Option<SystemTime>,
}

impl RevocationFile {
    /// The list at `path` (nothing read yet).
    pub fn new(path: PathBuf) -> Self {
        Self { path, seen: None }
    }

    /// Where the list is read from.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The list as DER if the file changed since the last call; None when
    /// it did not or does not exist (nothing is revoked then).
    pub fn read_if_changed(
        &mut self,
    ) -> Result<Option<CertificateRevocationListDer<'static>>, String> {
        let modified = match std::fs::metadata(&self.path).and_then(|m| m.modified()) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        if self.seen == Some(modified) {
            return Ok(None);
        }
        self.seen = Some(modified);
        let pem = std::fs::read(&self.path).map_err(|e| e.to_string())?;
        use rustls_pki_types::pem::PemObject;
        CertificateRevocationListDer::from_pem_slice(&pem)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// The verifiers in force and the list they check against.
struct InForce {
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<dyn ServerCertVerifier>,
    list: Revocations,
}

/// The fleet CA, this host's credentials and the revocation list in
/// force, from which the data plane's QUIC configurations are built.
/// Cloning shares the state: a reload is seen by every clone.
#[derive(Clone)]
pub struct DataPlaneTrust {
    inner: Arc<Inner>,
}

struct Inner {
    roots: Arc<rustls::RootCertStore>,
    /// The provider's signature algorithms (handshake signatures).
    algorithms: WebPkiSupportedAlgorithms,
    root_subjects: Vec<DistinguishedName>,
    chain: Vec<CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
    file: std::sync::Mutex<Option<RevocationFile>>,
    in_force: RwLock<Arc<InForce>>,
    /// Number of the list in force; changes when a newer one is taken.
    number: watch::Sender<u64>,
}

impl fmt::Debug for DataPlaneTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataPlaneTrust")
            .field("list", &*self.inner.number.borrow())
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build_server_verifier(
    roots: &Arc<rustls::RootCertStore>,
    crl: Option<CertificateRevocationListDer<'static>>,
) -> Result<Arc<dyn ServerCertVerifier>, IdentityError> {
    let builder = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider());
    let built = match crl {
        None => builder.build(),
        Some(crl) => builder
            .with_crls([crl])
            .only_check_end_entity_revocation()
            .build(),
    };
    Ok(built.map_err(|e| IdentityError::Verifier(e.to_string()))?)
}

impl DataPlaneTrust {
    /// Loads the fleet CA and this host's credentials, and the revocation
    /// list at `revocations` if there is one (a list that cannot be taken
    /// is logged and nothing is revoked until a good one appears).
    pub fn load(files: &TlsFiles, revocations: Option<PathBuf>) -> Result<Self, IdentityError> {
        let loaded = load(files)?;
        let roots = Arc::new(loaded.roots);
        let client = build_client_verifier(&roots, Vec::new())
            .map_err(|e| IdentityError::Verifier(e.to_string()))?;
        let server = build_server_verifier(&roots, None)?;
        let trust = Self {
            inner: Arc::new(Inner {
                root_subjects: roots.subjects(),
                algorithms: provider().signature_verification_algorithms,
                roots,
                chain: loaded.chain,
                key: loaded.key,
                file: std::sync::Mutex::new(revocations.map(RevocationFile::new)),
                in_force: RwLock::new(Arc::new(InForce {
                    client,
                    server,
                    list: Revocations::default(),
                })),
                number: watch::Sender::new(0),
            }),
        };
        trust.reload();
        Ok(trust)
    }

    fn in_force(&self) -> Arc<InForce> {
        match self.inner.in_force.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the revocation list if its file changed and puts it in force
    /// when the fleet CA signed it and it is newer. Logs what happened;
    /// returns the list taken, if one was.
    pub fn reload(&self) -> Option<RevocationsApplied> {
        let mut file = match self.inner.file.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let file = file.as_mut()?;
        let der = match file.read_if_changed() {
            Ok(Some(der)) => der,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(path = %file.path().display(), error = %e, "data plane: revocation list unreadable; the one in force stays");
                return None;
            }
        };
        match self.apply(der) {
            Ok(applied) => {
                tracing::info!(
                    number = applied.number,
                    revoked = applied.revoked,
                    "data plane: revocation list in force"
                );
                Some(applied)
            }
            Err(e @ RevocationError::Stale { .. }) => {
                tracing::debug!(error = %e, "data plane: revocation list not newer");
                None
            }
            Err(e) => {
                tracing::error!(path = %file.path().display(), error = %e, "data plane: revocation list refused; the one in force stays");
                None
            }
        }
    }

    fn apply(
        &self,
        der: CertificateRevocationListDer<'static>,
    ) -> Result<RevocationsApplied, RevocationError> {
        let current = *self.inner.number.borrow();
        let checked = check_revocation_list(&self.inner.roots, &self.inner.chain, &der, current)?;
        let server = build_server_verifier(&self.inner.roots, Some(der))
            .map_err(|e| RevocationError::Malformed(e.to_string()))?;
        let applied = checked.applied;
        let next = Arc::new(InForce {
            client: checked.verifier,
            server,
            list: checked.list,
        });
        match self.inner.in_force.write() {
            Ok(mut g) => *g = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        self.inner.number.send_replace(applied.number);
        Ok(applied)
    }

    /// Re-reads the list every [`REVOCATION_CHECK`] until `shutdown` turns
    /// true.
    pub async fn watch(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(REVOCATION_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => { self.reload(); }
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Number of the revocation list in force (0: none yet).
    pub fn list_number(&self) -> u64 {
        *self.inner.number.borrow()
    }

    /// Checks a certificate chain presented beside a signature (not in a
    /// handshake) as the handshakes check it: issued by the fleet CA,
    /// valid at `now`, for TLS client and server use, and not revoked by
    /// the list in force.
    pub fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), TlsError> {
        self.in_force()
            .client
            .verify_client_cert(end_entity, intermediates, now)
            .map(|_| ())
    }

    /// This host's enrolment key and certificate, for signing batches
    /// (nodes) and receipts (sinks).
    pub fn host_key(&self) -> Result<crate::origin::HostKey, crate::origin::SignError> {
        let leaf = self
            .inner
            .chain
            .first()
            .cloned()
            .ok_or(crate::origin::SignError::UnsupportedKey)?;
        crate::origin::HostKey::new(&self.inner.key, leaf)
    }

    /// Whether the list in force names `cert`.
    pub fn is_revoked(&self, cert: &CertificateDer<'_>) -> bool {
        let Ok(serial) = serial_of(cert) else {
            return false;
        };
        self.in_force().list.serials.contains(&serial)
    }

    /// Closes `conn` as soon as the list in force names its peer's
    /// certificate; returns when the connection closes for any reason.
    /// Returns whether it closed the connection.
    pub async fn guard(&self, conn: quinn::Connection) -> bool {
        let mut number = self.inner.number.subscribe();
        loop {
            let leaf_revoked = conn
                .peer_identity()
                .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
                .and_then(|certs| certs.first().map(|leaf| self.is_revoked(leaf)))
                .unwrap_or(false);
            if leaf_revoked {
                conn.close(REVOKED_CLOSE_CODE.into(), b"certificate revoked");
                metrics::counter!(REVOKED_CLOSED).increment(1);
                tracing::warn!(remote = %conn.remote_address(), "closed a connection: the peer's certificate is revoked");
                return true;
            }
            tokio::select! {
                _ = conn.closed() => return false,
                changed = number.changed() => if changed.is_err() { return false },
            }
        }
    }

    /// Runs [`Self::guard`] for `conn` in the background.
    pub fn spawn_guard(&self, conn: &quinn::Connection) {
        let trust = self.clone();
        let conn = conn.clone();
        tokio::spawn(async move { trust.guard(conn).await });
    }

    /// QUIC server configuration that admits only peers holding an
    /// unrevoked certificate from the fleet CA.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, IdentityError> {
        let verifier = Arc::new(FollowingClientVerifier(self.clone()));
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.inner.chain.clone(), self.inner.key.clone_key())?;
        // No session resumption: a resumed session skips the certificate
        // check, so a client revoked since its first handshake would get
        // back in.
        tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        tls.send_tls13_tickets = 0;
        tls.alpn_protocols = vec![DATA_PLANE_ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| IdentityError::Verifier(e.to_string()))?;
        Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
    }

    /// QUIC client configuration that presents this host's certificate and
    /// trusts only servers with an unrevoked certificate from the fleet CA.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, IdentityError> {
        let verifier = Arc::new(FollowingServerVerifier(self.clone()));
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.inner.chain.clone(), self.inner.key.clone_key())?;
        // No session resumption (see `server_config`): every connection
        // checks the server's certificate against the list in force.
        tls.resumption = rustls::client::Resumption::disabled();
        tls.alpn_protocols = vec![DATA_PLANE_ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| IdentityError::Verifier(e.to_string()))?;
        Ok(quinn::ClientConfig::new(Arc::new(crypto)))
    }
}

/// Counts a handshake refused because the peer's certificate is revoked
/// (`side`: the end that refused) and passes the result on.
fn count_revoked<T>(verified: Result<T, TlsError>, side: &'static str) -> Result<T, TlsError> {
    if matches!(
        verified,
        Err(TlsError::InvalidCertificate(
            rustls::CertificateError::Revoked
        ))
    ) {
        metrics::counter!(REVOKED_REFUSED, "side" => side).increment(1);
    }
    verified
}

/// Checks clients with the verifier in force at the time of the handshake.
/// Handshake signatures do not depend on the list: they are checked with
/// the crypto provider's algorithms directly.
struct FollowingClientVerifier(DataPlaneTrust);

impl fmt::Debug for FollowingClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FollowingClientVerifier")
    }
}

impl ClientCertVerifier for FollowingClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.0.inner.root_subjects
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let in_force = self.0.in_force();
        count_revoked(
            in_force
                .client
                .verify_client_cert(end_entity, intermediates, now),
            "server",
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(message, cert, dss, &self.0.inner.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(message, cert, dss, &self.0.inner.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.inner.algorithms.supported_schemes()
    }
}

/// Checks servers with the verifier in force at the time of the handshake
/// (signatures as [`FollowingClientVerifier`]).
struct FollowingServerVerifier(DataPlaneTrust);

impl fmt::Debug for FollowingServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FollowingServerVerifier")
    }
}

impl ServerCertVerifier for FollowingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let in_force = self.0.in_force();
        count_revoked(
            in_force.server.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ),
            "client",
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(message, cert, dss, &self.0.inner.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(message, cert, dss, &self.0.inner.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.inner.algorithms.supported_schemes()
    }
}
