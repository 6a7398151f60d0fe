//! Fleet enrolment: who may talk to whom.
//!
//! The operator's fleet CA (made by `starlingctl ca init`) signs one
//! certificate per host. A certificate names its holder and role in a URI
//! subject-alternative name, `starling://<role>/<name>`, so that a sink can
//! tell a node from another sink without trusting anything the peer says
//! after the handshake. Both sides of every data-plane connection present a
//! certificate (mutual TLS, TLS 1.3 only); a peer whose chain does not lead
//! to the fleet CA never gets past the handshake.

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

/// ALPN protocol id of the Starling data plane, version 2 (origin-signed
/// batches and sink receipts; version 1 had neither). A peer of another
/// version fails the handshake instead of misreading batches.
pub const DATA_PLANE_ALPN: &[u8] = b"starling-data/2";

/// Errors while making, loading or checking fleet credentials.
#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no PEM {what} found")]
    MissingPem { path: PathBuf, what: &'static str },
    #[error("{path}: invalid PEM: {detail}")]
    BadPem { path: PathBuf, detail: String },
    #[error("invalid name {0:?}: use letters, digits, '-', '_' and '.', at most 253 characters")]
    BadName(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    #[error("peer certificate is not a Starling identity: {0}")]
    NotStarlingIdentity(String),
}

/// What a certificate's holder is allowed to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A host running `starling-node`.
    Node,
    /// A host running `starling-sink`.
    Sink,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Sink => "sink",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "node" => Some(Role::Node),
            "sink" => Some(Role::Sink),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::parse(s).ok_or_else(|| format!("unknown role {s:?} (expected node or sink)"))
    }
}

/// The enrolled identity of a peer, read from its verified certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    pub role: Role,
    pub name: String,
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.role, self.name)
    }
}

fn identity_uri(role: Role, name: &str) -> String {
    format!("starling://{}/{}", role.as_str(), name)
}

fn check_name(name: &str) -> Result<(), IdentityError> {
    starling_proto::batch::check_host_id(name).map_err(|_| IdentityError::BadName(name.into()))
}

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct PemPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl PemPair {
    /// Writes `<dir>/<stem>.pem` and `<dir>/<stem>.key` (the key with mode 0600).
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), IdentityError> {
        fs::create_dir_all(dir).map_err(|source| IdentityError::Io {
            path: dir.into(),
            source,
        })?;
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        write_file(&cert, self.cert_pem.as_bytes(), 0o644)?;
        write_file(&key, self.key_pem.as_bytes(), 0o600)?;
        Ok((cert, key))
    }
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| IdentityError::Io {
        path: path.into(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)
}

/// The fleet CA: signs the certificate of every enrolled host.
pub struct FleetCa {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
}

impl FleetCa {
    /// Makes a new CA valid for `days` days.
    pub fn generate(fleet_name: &str, days: u32) -> Result<Self, IdentityError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("Starling fleet CA {fleet_name}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, days);
        let key = KeyPair::generate()?;
        let cert = params.clone().self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            params,
            key,
        })
    }

    /// Loads a CA written by [`FleetCa::pem`].
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, IdentityError> {
        let cert_pem = read_to_string(cert_path)?;
        let key_pem = read_to_string(key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| IdentityError::BadPem {
            path: key_path.into(),
            detail: e.to_string(),
        })?;
        let params =
            CertificateParams::from_ca_cert_pem(&cert_pem).map_err(|e| IdentityError::BadPem {
                path: cert_path.into(),
                detail: e.to_string(),
            })?;
        Ok(Self {
            params,
            key,
            cert_pem,
        })
    }

    /// The CA certificate and key, PEM-encoded.
    pub fn pem(&self) -> PemPair {
        PemPair {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key.serialize_pem(),
        }
    }

    /// Issues a certificate for `name` in `role`, valid for `days` days.
    /// `dns` and `ips` are extra names a sink is reached by (nodes verify
    /// the sink's name against them).
    pub fn issue(
        &self,
        role: Role,
        name: &str,
        dns: &[String],
        ips: &[IpAddr],
        days: u32,
    ) -> Result<PemPair, IdentityError> {
        check_name(name)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationalUnitName, role.as_str());
        params.distinguished_name = dn;
        let mut sans = vec![
            SanType::URI(identity_uri(role, name).try_into()?),
            SanType::DnsName(name.try_into()?),
        ];
        for d in dns {
            sans.push(SanType::DnsName(d.as_str().try_into()?));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, days);
        // Host keys are Ed25519: the host key is also the libp2p identity,
        // and every mesh handshake checks a signature by it (libp2p-tls's
        // certificate extension). libp2p checks P-256 in the pure-Rust
        // `p256` crate, 14 % of all CPU in a 200-member start-up storm;
        // Ed25519 checks cost a fraction of that. Hosts keep keys issued
        // earlier (P-256) working.
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let issuer = self.params.clone().self_signed(&self.key)?;
        let cert = params.signed_by(&key, &issuer, &self.key)?;
        Ok(PemPair {
            cert_pem: cert.pem(),
            key_pem: ed25519_pkcs8_v1_pem(&key)?,
        })
    }
}

/// The DER of an Ed25519 private key in PKCS#8 version 1 (RFC 8410: the
/// 32-byte seed, no public key) is this prefix and the seed.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// An Ed25519 key as PEM in PKCS#8 version 1. rcgen (through ring) writes
/// version 2, with the public key, which OpenSSL 3.0 and other common
/// stacks refuse; every reader takes version 1, ring and rustls included.
fn ed25519_pkcs8_v1_pem(key: &KeyPair) -> Result<String, IdentityError> {
    // In ring's version-2 encoding the seed is the OCTET STRING inside the
    // privateKey OCTET STRING: `04 22 04 20` and 32 bytes.
    let der = key.serialize_der();
    let seed = der
        .windows(4)
        .position(|w| w == [0x04, 0x22, 0x04, 0x20])
        .and_then(|i| der.get(i + 4..i + 36))
        .ok_or_else(|| IdentityError::Verifier("unexpected Ed25519 private key encoding".into()))?;
    let mut v1 = ED25519_PKCS8_V1_PREFIX.to_vec();
    v1.extend_from_slice(seed);
    Ok(pem::encode(&pem::Pem::new("PRIVATE KEY", v1)))
}

/// Serial numbers revoked so far and the number of the list that says
/// so, read back from a revocation list this CA signed earlier.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    /// Increases with every list; nodes keep the newest.
    pub number: u64,
    /// Revoked certificate serial numbers (big-endian bytes).
    pub serials: Vec<Vec<u8>>,
}

impl Revocations {
    /// Reads a DER revocation list: its number (0 if it has none) and the
    /// serials it names.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        use x509_parser::prelude::FromDer;
        let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der)
            .map_err(|e| e.to_string())?;
        let number = crl
            .crl_number()
            .and_then(|n| u64::try_from(n.clone()).ok())
            .unwrap_or(0);
        let serials = crl
            .iter_revoked_certificates()
            .map(|r| r.raw_serial().to_vec())
            .collect();
        Ok(Self { number, serials })
    }

    /// Reads the PEM revocation list at `path` (as written by
    /// [`FleetCa::revoke`]); a missing file is an empty list.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        use rustls_pki_types::CertificateRevocationListDer;
        let pem = match fs::read(path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(IdentityError::Io {
                    path: path.into(),
                    source,
                })
            }
        };
        let der =
            CertificateRevocationListDer::from_pem_slice(&pem).map_err(|e| bad_pem(path, e))?;
        Self::from_der(&der).map_err(|e| bad_pem(path, e))
    }
}

/// Where a host reads the fleet's revocation list: the configured path,
/// or `crl.pem` beside the fleet CA certificate.
pub fn revocation_list_path(configured: Option<&Path>, ca_cert: &Path) -> PathBuf {
    configured
        .map(Path::to_path_buf)
        .unwrap_or_else(|| ca_cert.parent().unwrap_or(Path::new(".")).join("crl.pem"))
}

pub(crate) fn bad_pem(path: &Path, detail: impl ToString) -> IdentityError {
    IdentityError::BadPem {
        path: path.into(),
        detail: detail.to_string(),
    }
}

/// The serial number of a certificate (what a revocation list names).
pub fn serial_of(cert: &CertificateDer<'_>) -> Result<Vec<u8>, IdentityError> {
    use x509_parser::prelude::FromDer;
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref())
        .map_err(|e| IdentityError::NotStarlingIdentity(e.to_string()))?;
    Ok(parsed.raw_serial().to_vec())
}

impl FleetCa {
    /// Signs a revocation list (an X.509 CRL, PEM) naming `previous`'s
    /// serials plus `add`, numbered one above `previous`, valid for `days`.
    /// Members refuse a revoked certificate at admission and drop peers
    /// that hold one (docs/mesh.md, "Revocation").
    pub fn revocation_list(
        &self,
        previous: &Revocations,
        add: &[Vec<u8>],
        days: u32,
    ) -> Result<(String, Revocations), IdentityError> {
        use rcgen::{
            CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber,
        };
        let mut serials = previous.serials.clone();
        for serial in add {
            if !serials.contains(serial) {
                serials.push(serial.clone());
            }
        }
        let now = time::OffsetDateTime::now_utc();
        let number = previous.number + 1;
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(5),
            next_update: now + time::Duration::days(i64::from(days.max(1))),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let issuer = self.params.clone().self_signed(&self.key)?;
        let crl = params.signed_by(&issuer, &self.key)?;
        Ok((crl.pem()?, Revocations { number, serials }))
    }

    /// Revokes `certs`: signs the list at `path` plus their serials and
    /// replaces the file atomically. Returns what the new list holds.
    pub fn revoke(
        &self,
        path: &Path,
        certs: &[CertificateDer<'_>],
        days: u32,
    ) -> Result<Revocations, IdentityError> {
        let previous = Revocations::load(path)?;
        let serials = certs.iter().map(serial_of).collect::<Result<Vec<_>, _>>()?;
        let (pem, next) = self.revocation_list(&previous, &serials, days)?;
        let tmp = path.with_extension("pem.tmp");
        let io = |source| IdentityError::Io {
            path: path.into(),
            source,
        };
        fs::write(&tmp, pem).map_err(io)?;
        fs::rename(&tmp, path).map_err(io)?;
        Ok(next)
    }
}

fn set_validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // Back-date a little so hosts with slightly slow clocks accept it.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

fn read_to_string(path: &Path) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(|source| IdentityError::Io {
        path: path.into(),
        source,
    })
}

/// The files a daemon needs for mutual TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The fleet CA certificate (trust anchor).
    pub ca_cert: PathBuf,
    /// This host's certificate.
    pub cert: PathBuf,
    /// This host's private key.
    pub key: PathBuf,
}

/// A daemon's TLS credentials, read from [`TlsFiles`].
pub(crate) struct Loaded {
    pub roots: RootCertStore,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| IdentityError::BadPem {
            path: path.into(),
            detail: e.to_string(),
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::BadPem {
            path: path.into(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(IdentityError::MissingPem {
            path: path.into(),
            what: "certificate",
        });
    }
    Ok(certs)
}

pub(crate) fn load(files: &TlsFiles) -> Result<Loaded, IdentityError> {
    for p in [&files.ca_cert, &files.cert, &files.key] {
        if !p.exists() {
            return Err(IdentityError::Io {
                path: p.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not found (issue credentials with `starlingctl cert issue`)",
                ),
            });
        }
    }
    let mut roots = RootCertStore::empty();
    for ca in load_certs(&files.ca_cert)? {
        roots.add(ca)?;
    }
    let chain = load_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| IdentityError::BadPem {
        path: files.key.clone(),
        detail: e.to_string(),
    })?;
    Ok(Loaded { roots, chain, key })
}

/// Reads the Starling identity (`starling://role/name`) from a certificate
/// that the TLS handshake already verified.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<PeerIdentity, IdentityError> {
    use x509_parser::prelude::*;
    let (_, parsed) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| IdentityError::NotStarlingIdentity(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| IdentityError::NotStarlingIdentity(e.to_string()))?
        .ok_or_else(|| IdentityError::NotStarlingIdentity("no subjectAltName".into()))?;
    for name in &san.value.general_names {
        if let GeneralName::URI(uri) = name {
            if let Some(rest) = uri.strip_prefix("starling://") {
                if let Some((role, name)) = rest.split_once('/') {
                    let role = Role::parse(role).ok_or_else(|| {
                        IdentityError::NotStarlingIdentity(format!("unknown role {role:?}"))
                    })?;
                    check_name(name)?;
                    return Ok(PeerIdentity {
                        role,
                        name: name.to_owned(),
                    });
                }
            }
        }
    }
    Err(IdentityError::NotStarlingIdentity(
        "no starling:// URI in subjectAltName".into(),
    ))
}

/// The verified identity of the peer of a QUIC connection.
pub fn peer_identity(conn: &quinn::Connection) -> Result<PeerIdentity, IdentityError> {
    let any = conn
        .peer_identity()
        .ok_or(IdentityError::NoPeerCertificate)?;
    let certs = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| IdentityError::NoPeerCertificate)?;
    let leaf = certs.first().ok_or(IdentityError::NoPeerCertificate)?;
    identity_of(leaf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificate_carries_role_and_name() {
        let ca = FleetCa::generate("test", 30).unwrap();
        let pair = ca.issue(Role::Node, "web-01", &[], &[], 30).unwrap();
        let der = CertificateDer::from_pem_slice(pair.cert_pem.as_bytes()).unwrap();
        let id = identity_of(&der).unwrap();
        assert_eq!(
            id,
            PeerIdentity {
                role: Role::Node,
                name: "web-01".into()
            }
        );
    }

    #[test]
    fn openssl_reads_issued_keys_and_finds_the_certificates_key() {
        // OpenSSL 3.0 refused the PKCS#8 version 2 that rcgen writes.
        let dir = tempfile::tempdir().unwrap();
        let ca = FleetCa::generate("test", 30).unwrap();
        let pair = ca.issue(Role::Node, "web-01", &[], &[], 30).unwrap();
        let (cert, key) = pair.write(dir.path(), "web-01").unwrap();
        let out = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(&key)
            .output()
            .expect("openssl is installed (scripts/setup)");
        assert!(
            out.status.success(),
            "openssl pkey refused the key: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        use x509_parser::prelude::FromDer;
        let der = CertificateDer::from_pem_file(&cert).unwrap();
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
        assert_eq!(
            out.stdout, parsed.tbs_certificate.subject_pki.raw,
            "the key's public half is the certificate's"
        );
        // rustls (which the data plane signs with) takes it too.
        let key = PrivateKeyDer::from_pem_file(&key).unwrap();
        assert!(rustls::crypto::ring::sign::any_supported_type(&key).is_ok());
    }

    #[test]
    fn keys_written_in_pkcs8_version_2_before_still_load() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let v2 = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
        let v1 = ed25519_pkcs8_v1_pem(&key).unwrap();
        let v1 = PrivateKeyDer::from_pem_slice(v1.as_bytes()).unwrap();
        for der in [v2, v1] {
            let signer = rustls::crypto::ring::sign::any_supported_type(&der).unwrap();
            assert_eq!(
                signer.public_key().map(|k| k.as_ref().to_vec()),
                Some(key.public_key_der()),
                "both encodings hold the same key"
            );
        }
    }

    #[test]
    fn bad_names_are_refused() {
        let ca = FleetCa::generate("test", 30).unwrap();
        assert!(matches!(
            ca.issue(Role::Node, "a/b", &[], &[], 30),
            Err(IdentityError::BadName(_))
        ));
    }

    #[test]
    fn ca_round_trips_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let ca = FleetCa::generate("test", 30).unwrap();
        let (c, k) = ca.pem().write(dir.path(), "ca").unwrap();
        let again = FleetCa::load(&c, &k).unwrap();
        let pair = again.issue(Role::Sink, "sink-1", &[], &[], 1).unwrap();
        let der = CertificateDer::from_pem_slice(pair.cert_pem.as_bytes()).unwrap();
        assert_eq!(identity_of(&der).unwrap().role, Role::Sink);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&k).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
