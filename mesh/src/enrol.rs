//! Admission to the mesh: a peer is enrolled when it proves that the fleet
//! CA certified the very key its libp2p connection is authenticated with.
//!
//! A node's libp2p identity key *is* the private key of its enrolment
//! certificate (Ed25519; P-256 for certificates issued before), so its
//! PeerId follows from the certified key.
//! After a connection is up, each side presents its certificate chain; the
//! receiver verifies it against the fleet CA (rustls' webpki verifier) and
//! checks that the certificate's key yields the PeerId the transport
//! handshake authenticated. Sans-I/O: the swarm driver carries the bytes.

use std::sync::Arc;
use std::time::SystemTime;

use libp2p::identity::{ecdsa, ed25519, Keypair, PeerId, PublicKey};
use p256::pkcs8::DecodePrivateKey;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use thiserror::Error;

use crate::identity::{
    bad_pem as bad, identity_of, IdentityError, PeerIdentity, Revocations, TlsFiles,
};

/// Most certificates a presented chain may hold.
pub const MAX_CHAIN_LEN: usize = 4;
/// Largest single certificate accepted from a peer.
pub const MAX_CERT_BYTES: usize = starling_proto::limits::MAX_CERTIFICATE_BYTES;

/// Why a peer was not admitted.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum AdmissionError {
    #[error("presented no certificate")]
    Empty,
    #[error("chain of {0} certificates exceeds the limit of {MAX_CHAIN_LEN}")]
    ChainTooLong(usize),
    #[error("certificate of {0} bytes exceeds the limit of {MAX_CERT_BYTES}")]
    CertTooLarge(usize),
    #[error("certificate not issued by the fleet CA: {0}")]
    Untrusted(String),
    #[error("certificate key does not match the connection's peer id")]
    KeyMismatch,
    #[error("{0}")]
    NotStarling(String),
    #[error("certificate revoked by the fleet's revocation list")]
    Revoked,
}

/// Why a revocation list was not taken.
#[derive(Debug, Error)]
pub enum RevocationError {
    #[error("not a revocation list: {0}")]
    Malformed(String),
    #[error("not signed by this fleet's CA: {0}")]
    NotFromFleetCa(String),
    #[error("older than the list in force (number {offered} <= {current})")]
    Stale { offered: u64, current: u64 },
}

/// A revocation list that was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationsApplied {
    /// The list's number.
    pub number: u64,
    /// Certificates it revokes.
    pub revoked: usize,
    /// This host's own certificate is among them: its peers will drop it.
    pub self_revoked: bool,
}

/// This host's enrolment: its certified identity and libp2p keypair, and
/// the fleet CA to check others against.
pub struct Enrolment {
    verifier: Arc<dyn ClientCertVerifier>,
    roots: Arc<RootCertStore>,
    /// Number of the revocation list in force (0: none).
    revocations: u64,
    chain: Vec<CertificateDer<'static>>,
    keypair: Keypair,
    identity: PeerIdentity,
}

impl std::fmt::Debug for Enrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolment")
            .field("identity", &self.identity)
            .field("peer_id", &self.peer_id())
            .finish_non_exhaustive()
    }
}

/// The libp2p keypair of an enrolment key file (PKCS#8 Ed25519, as
/// written by `starlingctl cert issue`, or P-256 as it wrote before).
pub fn keypair_from_key_file(path: &std::path::Path) -> Result<Keypair, IdentityError> {
    let key = PrivateKeyDer::from_pem_file(path).map_err(|e| bad(path, e))?;
    let PrivateKeyDer::Pkcs8(pkcs8) = key else {
        return Err(bad(path, "expected a PKCS#8 private key"));
    };
    let info = p256::pkcs8::PrivateKeyInfo::try_from(pkcs8.secret_pkcs8_der())
        .map_err(|e| bad(path, format!("not a PKCS#8 key: {e}")))?;
    if info.algorithm.oid == ED25519_OID {
        // The private key is an OCTET STRING holding the 32-byte seed.
        let mut seed = match info.private_key {
            [0x04, 32, seed @ ..] if seed.len() == 32 => seed.to_vec(),
            _ => return Err(bad(path, "malformed Ed25519 private key")),
        };
        let secret = ed25519::SecretKey::try_from_bytes(&mut seed).map_err(|e| bad(path, e))?;
        return Ok(Keypair::from(ed25519::Keypair::from(secret)));
    }
    let secret = p256::SecretKey::from_pkcs8_der(pkcs8.secret_pkcs8_der())
        .map_err(|e| bad(path, format!("neither an Ed25519 nor a P-256 key: {e}")))?;
    let secret = ecdsa::SecretKey::try_from_bytes(secret.to_bytes()).map_err(|e| bad(path, e))?;
    Ok(Keypair::from(ecdsa::Keypair::from(secret)))
}

/// Object identifier of Ed25519 keys (RFC 8410).
const ED25519_OID: p256::pkcs8::ObjectIdentifier =
    p256::pkcs8::ObjectIdentifier::new_unwrap("1.3.101.112");

/// The PeerId that the key certified by `cert` has on the mesh.
pub fn peer_id_of(cert: &CertificateDer<'_>) -> Result<PeerId, AdmissionError> {
    use x509_parser::prelude::*;
    let (_, parsed) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| AdmissionError::NotStarling(e.to_string()))?;
    let spki = parsed.public_key();
    let key = if spki.algorithm.algorithm.to_id_string() == ED25519_OID.to_string() {
        ed25519::PublicKey::try_from_bytes(&spki.subject_public_key.data)
            .map(PublicKey::from)
            .map_err(|_| AdmissionError::NotStarling("malformed Ed25519 key".into()))?
    } else {
        ecdsa::PublicKey::try_decode_der(spki.raw)
            .map(PublicKey::from)
            .map_err(|_| {
                AdmissionError::NotStarling("certificate key is neither Ed25519 nor P-256".into())
            })?
    };
    Ok(key.to_peer_id())
}

/// The fleet CA's verifier, checking end-entity certificates against the
/// revocation lists given (none: no revocation check).
pub(crate) fn build_client_verifier(
    roots: &Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<dyn ClientCertVerifier>, rustls::server::VerifierBuilderError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider);
    if crls.is_empty() {
        return builder.build();
    }
    builder
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .build()
}

/// A revocation list that passed [`check_revocation_list`].
pub(crate) struct CheckedRevocations {
    /// What the list says.
    pub list: Revocations,
    /// A verifier of the fleet CA that applies it.
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// Its summary, for logs and callers.
    pub applied: RevocationsApplied,
}

/// Checks a revocation list (DER CRL) before it is put in force: newer
/// than list number `current`, and signed by the fleet CA. The signature
/// is proven by checking this host's own `chain` with the list: webpki
/// verifies a list's signature before it looks a serial up, so only
/// "revoked" or "fine" mean the list is genuine.
pub(crate) fn check_revocation_list(
    roots: &Arc<RootCertStore>,
    chain: &[CertificateDer<'static>],
    crl_der: &[u8],
    current: u64,
) -> Result<CheckedRevocations, RevocationError> {
    let list = Revocations::from_der(crl_der).map_err(RevocationError::Malformed)?;
    let number = list.number;
    if number <= current {
        return Err(RevocationError::Stale {
            offered: number,
            current,
        });
    }
    let crl = CertificateRevocationListDer::from(crl_der.to_vec());
    let verifier = build_client_verifier(roots, vec![crl])
        .map_err(|e| RevocationError::Malformed(e.to_string()))?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| RevocationError::Malformed("this host has no certificate".into()))?;
    let self_revoked = match verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
        Ok(_) => false,
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) => true,
        Err(e) => return Err(RevocationError::NotFromFleetCa(e.to_string())),
    };
    let applied = RevocationsApplied {
        number,
        revoked: list.serials.len(),
        self_revoked,
    };
    Ok(CheckedRevocations {
        list,
        verifier,
        applied,
    })
}

impl Enrolment {
    /// Loads this host's credentials and checks that they belong together.
    pub fn load(files: &TlsFiles) -> Result<Self, IdentityError> {
        let mut roots = RootCertStore::empty();
        for ca in
            CertificateDer::pem_file_iter(&files.ca_cert).map_err(|e| bad(&files.ca_cert, e))?
        {
            roots.add(ca.map_err(|e| bad(&files.ca_cert, e))?)?;
        }
        let roots = Arc::new(roots);
        let verifier = build_client_verifier(&roots, Vec::new())
            .map_err(|e| IdentityError::Verifier(e.to_string()))?;
        let chain = CertificateDer::pem_file_iter(&files.cert)
            .map_err(|e| bad(&files.cert, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&files.cert, e))?;
        let leaf = chain.first().ok_or_else(|| IdentityError::MissingPem {
            path: files.cert.clone(),
            what: "certificate",
        })?;
        let identity = identity_of(leaf)?;
        let keypair = keypair_from_key_file(&files.key)?;
        let certified = peer_id_of(leaf).map_err(|e| bad(&files.cert, e))?;
        if certified != keypair.public().to_peer_id() {
            return Err(bad(
                &files.key,
                "this key does not belong to the certificate",
            ));
        }
        Ok(Self {
            verifier,
            roots,
            revocations: 0,
            chain,
            keypair,
            identity,
        })
    }

    /// This host's libp2p keypair (its enrolment key).
    pub fn keypair(&self) -> &Keypair {
        &self.keypair
    }

    /// This host's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    /// This host's enrolled identity.
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    /// The chain to present to peers, DER-encoded.
    pub fn chain_der(&self) -> Vec<Vec<u8>> {
        self.chain.iter().map(|c| c.as_ref().to_vec()).collect()
    }

    /// Puts a revocation list (DER CRL) in force for every later check,
    /// if the fleet CA signed it and it is newer than the one in force
    /// (see [`check_revocation_list`]).
    pub fn set_revocations(
        &mut self,
        crl_der: &[u8],
    ) -> Result<RevocationsApplied, RevocationError> {
        let checked = check_revocation_list(&self.roots, &self.chain, crl_der, self.revocations)?;
        self.verifier = checked.verifier;
        self.revocations = checked.applied.number;
        Ok(checked.applied)
    }

    /// Checks a chain presented by `remote`: issued by the fleet CA, valid
    /// at `now`, a Starling identity, and certifying `remote`'s key.
    pub fn admit(
        &self,
        remote: &PeerId,
        chain: &[Vec<u8>],
        now: SystemTime,
    ) -> Result<PeerIdentity, AdmissionError> {
        if chain.is_empty() {
            return Err(AdmissionError::Empty);
        }
        if chain.len() > MAX_CHAIN_LEN {
            return Err(AdmissionError::ChainTooLong(chain.len()));
        }
        if let Some(big) = chain.iter().find(|c| c.len() > MAX_CERT_BYTES) {
            return Err(AdmissionError::CertTooLarge(big.len()));
        }
        let certs: Vec<CertificateDer<'_>> = chain
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(UnixTime::since_unix_epoch)
            .map_err(|_| AdmissionError::Untrusted("clock before 1970".into()))?;
        self.verifier
            .verify_client_cert(&certs[0], &certs[1..], now)
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked) => {
                    AdmissionError::Revoked
                }
                e => AdmissionError::Untrusted(e.to_string()),
            })?;
        if peer_id_of(&certs[0])? != *remote {
            return Err(AdmissionError::KeyMismatch);
        }
        identity_of(&certs[0]).map_err(|e| AdmissionError::NotStarling(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{FleetCa, Role};

    fn enrolled(ca: &FleetCa, ca_dir: &std::path::Path, name: &str) -> Enrolment {
        let (cert, key) = ca
            .issue(Role::Node, name, &[], &[], 30)
            .unwrap()
            .write(ca_dir, name)
            .unwrap();
        Enrolment::load(&TlsFiles {
            ca_cert: ca_dir.join("ca.pem"),
            cert,
            key,
        })
        .unwrap()
    }

    fn fleet() -> (tempfile::TempDir, FleetCa) {
        let dir = tempfile::tempdir().unwrap();
        let ca = FleetCa::generate("t", 30).unwrap();
        ca.pem().write(dir.path(), "ca").unwrap();
        (dir, ca)
    }

    #[test]
    fn enrolled_peers_admit_each_other() {
        let (dir, ca) = fleet();
        let a = enrolled(&ca, dir.path(), "a");
        let b = enrolled(&ca, dir.path(), "b");
        let id = a
            .admit(&b.peer_id(), &b.chain_der(), SystemTime::now())
            .unwrap();
        assert_eq!(id.name, "b");
        assert_eq!(id.role, Role::Node);
    }

    fn crl_der(pem: &str) -> Vec<u8> {
        CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn only_the_fleet_cas_newer_revocation_lists_are_taken() {
        use crate::identity::{serial_of, Revocations};
        let (dir, ca) = fleet();
        let (_other_dir, other_ca) = fleet();
        let mut a = enrolled(&ca, dir.path(), "a");
        let b = enrolled(&ca, dir.path(), "b");
        let b_serial = serial_of(&CertificateDer::from(b.chain_der()[0].clone())).unwrap();

        let (forged, _) = other_ca
            .revocation_list(&Revocations::default(), std::slice::from_ref(&b_serial), 7)
            .unwrap();
        assert!(matches!(
            a.set_revocations(&crl_der(&forged)),
            Err(RevocationError::NotFromFleetCa(_))
        ));
        assert!(a.set_revocations(b"junk").is_err());
        assert!(a
            .admit(&b.peer_id(), &b.chain_der(), SystemTime::now())
            .is_ok());

        let (first, state) = ca
            .revocation_list(&Revocations::default(), &[b_serial], 7)
            .unwrap();
        let applied = a.set_revocations(&crl_der(&first)).unwrap();
        assert_eq!(
            (applied.number, applied.revoked, applied.self_revoked),
            (1, 1, false)
        );
        assert_eq!(
            a.admit(&b.peer_id(), &b.chain_der(), SystemTime::now()),
            Err(AdmissionError::Revoked)
        );
        assert!(matches!(
            a.set_revocations(&crl_der(&first)),
            Err(RevocationError::Stale {
                offered: 1,
                current: 1
            })
        ));

        let a_serial = serial_of(&CertificateDer::from(a.chain_der()[0].clone())).unwrap();
        let (second, _) = ca.revocation_list(&state, &[a_serial], 7).unwrap();
        let applied = a.set_revocations(&crl_der(&second)).unwrap();
        assert_eq!(
            (applied.number, applied.revoked, applied.self_revoked),
            (2, 2, true)
        );
    }

    #[test]
    fn a_foreign_ca_is_refused() {
        let (dir, ca) = fleet();
        let (other_dir, other_ca) = fleet();
        let a = enrolled(&ca, dir.path(), "a");
        let intruder = enrolled(&other_ca, other_dir.path(), "a");
        let err = a
            .admit(
                &intruder.peer_id(),
                &intruder.chain_der(),
                SystemTime::now(),
            )
            .unwrap_err();
        assert!(matches!(err, AdmissionError::Untrusted(_)), "{err}");
    }

    #[test]
    fn a_stolen_certificate_does_not_admit_another_key() {
        let (dir, ca) = fleet();
        let a = enrolled(&ca, dir.path(), "a");
        let b = enrolled(&ca, dir.path(), "b");
        let thief = PeerId::random();
        let err = a
            .admit(&thief, &b.chain_der(), SystemTime::now())
            .unwrap_err();
        assert_eq!(err, AdmissionError::KeyMismatch);
    }

    #[test]
    fn expired_certificates_and_junk_are_refused() {
        let (dir, ca) = fleet();
        let a = enrolled(&ca, dir.path(), "a");
        let b = enrolled(&ca, dir.path(), "b");
        let later = SystemTime::now() + std::time::Duration::from_secs(90 * 86_400);
        assert!(matches!(
            a.admit(&b.peer_id(), &b.chain_der(), later),
            Err(AdmissionError::Untrusted(_))
        ));
        let p = b.peer_id();
        assert_eq!(
            a.admit(&p, &[], SystemTime::now()),
            Err(AdmissionError::Empty)
        );
        assert_eq!(
            a.admit(&p, &vec![vec![1u8]; 5], SystemTime::now()),
            Err(AdmissionError::ChainTooLong(5))
        );
        assert!(matches!(
            a.admit(&p, &[vec![0u8; MAX_CERT_BYTES + 1]], SystemTime::now()),
            Err(AdmissionError::CertTooLarge(_))
        ));
        assert!(matches!(
            a.admit(&p, &[vec![0x30, 0x03, 0x02, 0x01, 0x00]], SystemTime::now()),
            Err(AdmissionError::Untrusted(_))
        ));
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_at_load() {
        let (dir, ca) = fleet();
        let a = ca.issue(Role::Node, "a", &[], &[], 30).unwrap();
        let b = ca.issue(Role::Node, "b", &[], &[], 30).unwrap();
        let (cert, _) = a.write(dir.path(), "a").unwrap();
        let (_, key) = b.write(dir.path(), "b").unwrap();
        let err = Enrolment::load(&TlsFiles {
            ca_cert: dir.path().join("ca.pem"),
            cert,
            key,
        })
        .unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[test]
    fn ed25519_keys_and_the_p256_keys_issued_before_both_yield_their_peer_id() {
        let (dir, ca) = fleet();
        let issued = ca.issue(Role::Node, "new", &[], &[], 30).unwrap();
        assert!(issued.key_pem.contains("PRIVATE KEY"));
        let (cert, key) = issued.write(dir.path(), "new").unwrap();
        let keypair = keypair_from_key_file(&key).unwrap();
        assert!(
            keypair.clone().try_into_ed25519().is_ok(),
            "new keys are Ed25519"
        );
        let der = CertificateDer::from_pem_file(&cert).unwrap();
        assert_eq!(peer_id_of(&der).unwrap(), keypair.public().to_peer_id());

        // A P-256 host key, as `cert issue` wrote before.
        let legacy = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec!["old".into()]).unwrap();
        let cert = params.self_signed(&legacy).unwrap();
        let key = dir.path().join("old-key.pem");
        std::fs::write(&key, legacy.serialize_pem()).unwrap();
        let keypair = keypair_from_key_file(&key).unwrap();
        assert!(keypair.clone().try_into_ecdsa().is_ok());
        assert_eq!(
            peer_id_of(cert.der()).unwrap(),
            keypair.public().to_peer_id()
        );

        // Anything else is refused with a reason.
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(keypair_from_key_file(&key).is_err());
    }
}
