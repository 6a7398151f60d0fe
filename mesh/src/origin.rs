//! Origin signatures on data-plane batches, and the receipts sinks sign
//! for them.
//!
//! Aggregators are untrusted relays (DESIGN.md, "Data-plane trust"). A
//! node signs the header of every batch it sends with its enrolment key
//! and attaches its certificate; the header names the host, the sequence
//! range and the SHA-256 of the event list. A sink files events under a
//! host only when a certificate of that host, issued by the fleet CA and
//! not revoked, verifies the signature, whoever relayed the batch.
//!
//! The answer travels back through the same relays, so it is signed too:
//! a sink's receipt names the batch by the digest of its signed header and
//! says what became of it. A node deletes events only on a receipt that a
//! sink certificate verifies and that names the batch it sent, so a relay
//! can neither answer PERSISTED for a batch it dropped nor pass an altered
//! batch off as delivered. docs/mesh.md, "Data-plane trust", has the whole
//! protocol.
//!
//! Checking a certificate chain costs far more than checking a signature,
//! so [`CredentialCache`] remembers verified certificates by fingerprint
//! until the revocation list in force changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ring::signature::{UnparsedPublicKey, VerificationAlgorithm};
use rustls::sign::Signer;
use rustls::SignatureScheme;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use starling_proto::batch::{self, OpenedBatch, UnsignedBatch};
use starling_proto::v1::{BatchAck, BatchReceipt};
use thiserror::Error;

use crate::enrol::MAX_CERT_BYTES;
use crate::identity::{identity_of, PeerIdentity, Role};
use crate::trust::DataPlaneTrust;

/// SHA-256 of a certificate's DER: how the Kafka headers and the logs name
/// the credential that signed.
pub type Fingerprint = [u8; 32];

/// The SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Why something could not be signed.
#[derive(Debug, Error)]
pub enum SignError {
    /// The key file holds a key type the data plane cannot sign with.
    #[error("this host's key cannot sign data-plane messages (Ed25519 or ECDSA P-256 expected)")]
    UnsupportedKey,
    /// The crypto provider failed; nothing was sent.
    #[error("signing failed: {0}")]
    Provider(#[from] rustls::Error),
}

/// This host's enrolment key and certificate: nodes sign batches with it,
/// sinks sign receipts. Clones share the key.
#[derive(Clone)]
pub struct HostKey {
    signer: Arc<dyn Signer>,
    certificate: CertificateDer<'static>,
}

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKey")
            .field("scheme", &self.signer.scheme())
            .finish_non_exhaustive()
    }
}

impl HostKey {
    /// The signing key for `key` (PKCS#8 Ed25519 or P-256) whose
    /// certificate is `certificate`.
    pub fn new(
        key: &PrivateKeyDer<'_>,
        certificate: CertificateDer<'static>,
    ) -> Result<Self, SignError> {
        let key = rustls::crypto::ring::sign::any_supported_type(key)
            .map_err(|_| SignError::UnsupportedKey)?;
        let signer = key
            .choose_scheme(&[
                SignatureScheme::ED25519,
                SignatureScheme::ECDSA_NISTP256_SHA256,
            ])
            .ok_or(SignError::UnsupportedKey)?;
        Ok(Self {
            signer: Arc::from(signer),
            certificate,
        })
    }

    /// This host's certificate (DER), sent beside every signature.
    pub fn certificate(&self) -> &[u8] {
        self.certificate.as_ref()
    }

    /// Signs `message` as it is (the caller adds the domain prefix).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        Ok(self.signer.sign(message)?)
    }

    /// Signs a batch and encodes it for the wire.
    pub fn seal(&self, batch: UnsignedBatch) -> Result<SealedBatch, SignError> {
        let signature = self.sign(&batch.signing_bytes())?;
        let header_digest = sha256(batch.header_bytes());
        Ok(SealedBatch {
            bytes: batch.into_wire(signature, self.certificate().to_vec()),
            header_digest,
        })
    }

    /// Signs `receipt` and puts it, with this host's certificate, into
    /// `ack`.
    pub fn sign_receipt(
        &self,
        receipt: &BatchReceipt,
        ack: &mut BatchAck,
    ) -> Result<(), SignError> {
        let bytes = prost::Message::encode_to_vec(receipt);
        ack.receipt_signature = self.sign(&batch::receipt_signing_bytes(&bytes))?;
        ack.receipt = bytes;
        ack.sink_certificate = self.certificate().to_vec();
        Ok(())
    }
}

/// A signed batch ready to send, and the digest a receipt must name.
#[derive(Debug, Clone)]
pub struct SealedBatch {
    /// The encoded `Batch`.
    pub bytes: Vec<u8>,
    /// SHA-256 of its signed header.
    pub header_digest: [u8; 32],
}

/// Why a certificate presented with a signature was not accepted.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum CredentialError {
    /// Larger than any certificate the fleet CA issues.
    #[error("certificate of {0} bytes exceeds the limit of {MAX_CERT_BYTES}")]
    TooLarge(usize),
    /// The revocation list in force names it.
    #[error("certificate revoked by the fleet's revocation list")]
    Revoked,
    /// Not from the fleet CA, expired, not yet valid, or malformed.
    #[error("certificate not accepted: {0}")]
    Untrusted(String),
    /// Carries no Starling identity, or one of another role.
    #[error("{0}")]
    NotStarling(String),
    /// Its key is neither Ed25519 nor ECDSA P-256.
    #[error("certificate key is neither Ed25519 nor ECDSA P-256")]
    UnsupportedKey,
}

/// A certificate that the fleet CA issued and that is not revoked: who it
/// names and the key that verifies that host's signatures.
#[derive(Debug)]
pub struct Credential {
    /// The host and role the certificate names.
    pub identity: PeerIdentity,
    /// SHA-256 of the certificate's DER.
    pub fingerprint: Fingerprint,
    algorithm: &'static dyn VerificationAlgorithm,
    public_key: Vec<u8>,
    not_after: SystemTime,
}

impl Credential {
    /// Whether `signature` is this credential's over `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(self.algorithm, &self.public_key)
            .verify(message, signature)
            .is_ok()
    }

    /// The fingerprint as lowercase hex (Kafka headers, logs).
    pub fn fingerprint_hex(&self) -> String {
        hex(&self.fingerprint)
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn parse_credential(der: &[u8], fingerprint: Fingerprint) -> Result<Credential, CredentialError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let cert = CertificateDer::from(der);
    let identity = identity_of(&cert).map_err(|e| CredentialError::NotStarling(e.to_string()))?;
    let (_, parsed) =
        X509Certificate::from_der(der).map_err(|e| CredentialError::Untrusted(e.to_string()))?;
    let spki = &parsed.tbs_certificate.subject_pki;
    let oid = spki.algorithm.algorithm.to_id_string();
    let algorithm: &'static dyn VerificationAlgorithm = match oid.as_str() {
        "1.3.101.112" => &ring::signature::ED25519,
        // id-ecPublicKey; the curve must be P-256.
        "1.2.840.10045.2.1" => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            if curve.as_deref() != Some("1.2.840.10045.3.1.7") {
                return Err(CredentialError::UnsupportedKey);
            }
            &ring::signature::ECDSA_P256_SHA256_ASN1
        }
        _ => return Err(CredentialError::UnsupportedKey),
    };
    let not_after = u64::try_from(parsed.validity().not_after.timestamp())
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(Credential {
        identity,
        fingerprint,
        algorithm,
        public_key: spki.subject_public_key.data.to_vec(),
        not_after,
    })
}

/// Verified certificates by fingerprint, in two generations: lookups
/// search both, inserts go to the newer, and when the newer is full the
/// older is dropped. Memory stays bounded and hosts that keep sending stay
/// cached.
struct Generations {
    /// Number of the revocation list the entries were checked against.
    list: u64,
    young: HashMap<Fingerprint, Arc<Credential>>,
    old: HashMap<Fingerprint, Arc<Credential>>,
}

/// Checks certificates presented with signatures against the fleet CA and
/// the revocation list in force, and remembers the ones that passed.
pub struct CredentialCache {
    trust: DataPlaneTrust,
    /// Most entries per generation.
    capacity: usize,
    inner: Mutex<Generations>,
}

/// Default entries per generation: a sink behind aggregators hears from
/// every host they serve; 65,536 credentials are a few megabytes.
pub const DEFAULT_CREDENTIAL_CACHE: usize = 65_536;

impl CredentialCache {
    /// A cache of up to twice `capacity` credentials, checked with `trust`.
    pub fn new(trust: DataPlaneTrust, capacity: usize) -> Self {
        Self {
            trust,
            capacity: capacity.max(1),
            inner: Mutex::new(Generations {
                list: 0,
                young: HashMap::new(),
                old: HashMap::new(),
            }),
        }
    }

    /// The credential of `der` if it is a certificate of `role` from the
    /// fleet CA, valid at `now` and not revoked.
    pub fn check(
        &self,
        der: &[u8],
        role: Role,
        now: SystemTime,
    ) -> Result<Arc<Credential>, CredentialError> {
        if der.len() > MAX_CERT_BYTES {
            return Err(CredentialError::TooLarge(der.len()));
        }
        let fingerprint = sha256(der);
        let list = self.trust.list_number();
        let cached = {
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if g.list != list {
                g.young.clear();
                g.old.clear();
                g.list = list;
            }
            g.young
                .get(&fingerprint)
                .or_else(|| g.old.get(&fingerprint))
                .cloned()
        };
        let credential = match cached {
            Some(c) if now <= c.not_after => c,
            _ => {
                let c = Arc::new(self.verify(der, fingerprint, now)?);
                let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                if g.list == list {
                    if g.young.len() >= self.capacity {
                        g.old = std::mem::take(&mut g.young);
                    }
                    g.young.insert(fingerprint, c.clone());
                }
                c
            }
        };
        if credential.identity.role != role {
            return Err(CredentialError::NotStarling(format!(
                "certificate of {}, expected a {role}",
                credential.identity
            )));
        }
        Ok(credential)
    }

    fn verify(
        &self,
        der: &[u8],
        fingerprint: Fingerprint,
        now: SystemTime,
    ) -> Result<Credential, CredentialError> {
        let cert = CertificateDer::from(der);
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        match self.trust.verify_chain(
            &cert,
            &[],
            UnixTime::since_unix_epoch(Duration::from_secs(secs)),
        ) {
            Ok(()) => {}
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) => {
                return Err(CredentialError::Revoked)
            }
            Err(e) => return Err(CredentialError::Untrusted(e.to_string())),
        }
        parse_credential(der, fingerprint)
    }
}

/// Why a batch's origin signature was not accepted.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum OriginError {
    /// The certificate beside the signature was not accepted.
    #[error("origin certificate: {0}")]
    Credential(#[from] CredentialError),
    /// A valid certificate of another host: an enrolled host (or a relay)
    /// trying to file events under someone else's name.
    #[error("batch for host {header:?} carries the certificate of {certificate:?}")]
    HostMismatch {
        /// The host the batch header names.
        header: String,
        /// The host the certificate names.
        certificate: String,
    },
    /// The signature is not the certificate's over the header: the header
    /// was altered after signing, or signed with another key.
    #[error("origin signature does not verify")]
    BadSignature,
}

/// Checks that the host a batch names signed it; returns its credential.
pub fn verify_origin(
    cache: &CredentialCache,
    batch: &OpenedBatch,
    now: SystemTime,
) -> Result<Arc<Credential>, OriginError> {
    let credential = cache.check(&batch.certificate, Role::Node, now)?;
    if credential.identity.name != batch.header.host_id {
        return Err(OriginError::HostMismatch {
            header: batch.header.host_id.chars().take(64).collect(),
            certificate: credential.identity.name.clone(),
        });
    }
    if !credential.verifies(&batch.signing_bytes(), &batch.signature) {
        return Err(OriginError::BadSignature);
    }
    Ok(credential)
}

/// What an ack carries, once its receipt (if any) has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckProof {
    /// A sink signed this receipt for exactly the batch that was sent.
    Signed(BatchReceipt),
    /// No receipt: an answer of the relay itself (or of a sink that could
    /// not read the batch at all).
    Unsigned,
    /// A receipt that no sink signed, or one for another batch or host.
    Invalid(String),
}

/// Checks the receipt in `ack` against the batch it answers: signed by an
/// enrolled, unrevoked sink, for `host`, naming `header_digest`.
pub fn check_receipt(
    cache: &CredentialCache,
    ack: &BatchAck,
    host: &str,
    header_digest: &[u8; 32],
    now: SystemTime,
) -> AckProof {
    if ack.receipt.is_empty() {
        return AckProof::Unsigned;
    }
    let credential = match cache.check(&ack.sink_certificate, Role::Sink, now) {
        Ok(c) => c,
        Err(e) => return AckProof::Invalid(format!("receipt certificate: {e}")),
    };
    if !credential.verifies(
        &batch::receipt_signing_bytes(&ack.receipt),
        &ack.receipt_signature,
    ) {
        return AckProof::Invalid(format!(
            "receipt signature does not verify for sink {}",
            credential.identity.name
        ));
    }
    let receipt = match batch::decode_receipt(&ack.receipt) {
        Ok(r) => r,
        Err(e) => return AckProof::Invalid(format!("receipt: {e}")),
    };
    if receipt.host_id != host || receipt.header_sha256.as_slice() != header_digest.as_slice() {
        return AckProof::Invalid(format!(
            "sink {} signed a receipt for another batch",
            credential.identity.name
        ));
    }
    if receipt.status != ack.status || receipt.batch_id != ack.batch_id {
        return AckProof::Invalid("the ack says otherwise than its receipt".into());
    }
    AckProof::Signed(receipt)
}
