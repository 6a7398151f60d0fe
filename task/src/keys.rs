//! Operator keys: ed25519, written as PKCS#8 v1 PEM (what `openssl pkey`
//! reads), named by the SHA-256 of their public key.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use ring::rand::SecureRandom as _;

/// Why an operator key could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an ed25519 private key in PKCS#8 PEM ({why})")]
    NotAKey { path: PathBuf, why: String },
    #[error("{path} already exists; pass --force to replace it")]
    Exists { path: PathBuf },
    #[error("the system's random source failed")]
    Random,
    #[error("not an ed25519 public key ({0} bytes, 32 expected, or not a curve point)")]
    BadPublicKey(usize),
}

/// An operator key's id: lowercase hex SHA-256 of its 32-byte public key.
/// Trust roots and signatures name keys by it.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct KeyId(pub String);

impl KeyId {
    /// The id of `public_key`.
    pub fn of(public_key: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
        let mut s = String::with_capacity(64);
        for b in digest.as_ref() {
            s.push_str(&format!("{b:02x}"));
        }
        KeyId(s)
    }

    /// The first 12 hex digits, for tables.
    pub fn short(&self) -> &str {
        self.0.get(..12).unwrap_or(&self.0)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The DER prefix of an Ed25519 private key in PKCS#8 v1 (RFC 8410): the
/// 32-byte seed follows.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The DER prefix of an Ed25519 public key in SubjectPublicKeyInfo (RFC
/// 8410): the 32-byte key follows.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// An operator's signing key. Never logged: its Debug shows the id only.
pub struct OperatorKeyPair {
    key: SigningKey,
}

impl fmt::Debug for OperatorKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperatorKeyPair({})", self.id())
    }
}

impl OperatorKeyPair {
    /// A new key from the system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| KeyError::Random)?;
        Ok(Self::from_seed(seed))
    }

    /// The key whose 32-byte seed is `seed` (tests and the simulator).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Its id.
    pub fn id(&self) -> KeyId {
        KeyId::of(&self.public_key())
    }

    /// An ed25519 signature over `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// PKCS#8 v1 PEM ("PRIVATE KEY"), which OpenSSL 3 and other common
    /// stacks read.
    pub fn to_pem(&self) -> String {
        let mut der = Vec::with_capacity(48);
        der.extend_from_slice(&PKCS8_V1_PREFIX);
        der.extend_from_slice(self.key.as_bytes());
        pem::encode(&pem::Pem::new("PRIVATE KEY", der))
    }

    /// Reads a key written by [`OperatorKeyPair::to_pem`] (or by
    /// `openssl genpkey -algorithm ed25519`).
    pub fn from_pem(text: &str, path: &Path) -> Result<Self, KeyError> {
        let bad = |why: String| KeyError::NotAKey {
            path: path.into(),
            why,
        };
        let p = pem::parse(text).map_err(|e| bad(e.to_string()))?;
        if p.tag() != "PRIVATE KEY" {
            return Err(bad(format!("a {:?} block", p.tag())));
        }
        let der = p.contents();
        if der.len() != 48 || der[..16] != PKCS8_V1_PREFIX {
            return Err(bad(format!(
                "{} bytes of DER that are not an Ed25519 PKCS#8 v1 key",
                der.len()
            )));
        }
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&der[16..]);
        Ok(Self::from_seed(seed))
    }

    /// Reads the key at `path`.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.into(),
            source,
        })?;
        Self::from_pem(&text, path)
    }

    /// Writes the key to `path`, readable by its owner only (0600);
    /// refuses to replace a file unless `force`.
    pub fn write(&self, path: &Path, force: bool) -> Result<(), KeyError> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| KeyError::Io {
            path: path.into(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).mode(0o600);
        if force {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        let mut f = options.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists { path: path.into() }
            } else {
                io(e)
            }
        })?;
        f.write_all(self.to_pem().as_bytes()).map_err(io)
    }
}

/// The public key of `text`: a "PUBLIC KEY" PEM (what `starlingctl key
/// new` writes beside the private key, and `openssl pkey -pubout`), or a
/// private key, whose public half is taken.
pub fn public_key_from_pem(text: &str, path: &Path) -> Result<[u8; 32], KeyError> {
    let p = pem::parse(text).map_err(|e| KeyError::NotAKey {
        path: path.into(),
        why: e.to_string(),
    })?;
    if p.tag() == "PRIVATE KEY" {
        return Ok(OperatorKeyPair::from_pem(text, path)?.public_key());
    }
    let der = p.contents();
    if p.tag() != "PUBLIC KEY" || der.len() != 44 || der[..12] != SPKI_PREFIX {
        return Err(KeyError::NotAKey {
            path: path.into(),
            why: format!("a {:?} block that is not an Ed25519 public key", p.tag()),
        });
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&der[12..]);
    Ok(key)
}

/// `public_key` as a "PUBLIC KEY" PEM (SubjectPublicKeyInfo).
pub fn public_key_pem(public_key: &[u8; 32]) -> String {
    let mut der = Vec::with_capacity(44);
    der.extend_from_slice(&SPKI_PREFIX);
    der.extend_from_slice(public_key);
    pem::encode(&pem::Pem::new("PUBLIC KEY", der))
}

/// A public key as a trust root lists it, ready to check signatures.
#[derive(Debug, Clone)]
pub struct OperatorPublicKey {
    key: VerifyingKey,
    id: KeyId,
}

impl OperatorPublicKey {
    /// Parses 32 bytes from the network or a file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let array: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::BadPublicKey(bytes.len()))?;
        let key = VerifyingKey::from_bytes(&array).map_err(|_| KeyError::BadPublicKey(32))?;
        Ok(Self {
            key,
            id: KeyId::of(&array),
        })
    }

    /// Its id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// The 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// True when `signature` is this key's (strict ed25519: no malleable
    /// or small-order forms) over `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        self.key.verify_strict(message, &sig).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips_and_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("op.key");
        let k = OperatorKeyPair::generate().unwrap();
        k.write(&path, false).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let back = OperatorKeyPair::load(&path).unwrap();
        assert_eq!(back.public_key(), k.public_key());
        assert!(matches!(
            k.write(&path, false),
            Err(KeyError::Exists { .. })
        ));
        k.write(&path, true).unwrap();
    }

    #[test]
    fn public_pems_round_trip_from_either_half() {
        let k = OperatorKeyPair::from_seed([5; 32]);
        let p = Path::new("k");
        assert_eq!(
            public_key_from_pem(&public_key_pem(&k.public_key()), p).unwrap(),
            k.public_key()
        );
        assert_eq!(public_key_from_pem(&k.to_pem(), p).unwrap(), k.public_key());
        assert!(
            public_key_from_pem(&pem::encode(&pem::Pem::new("PUBLIC KEY", vec![0; 44])), p)
                .is_err()
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let k = OperatorKeyPair::from_seed([7; 32]);
        let shown = format!("{k:?}");
        assert!(shown.contains(&k.id().0));
        assert!(!shown.contains("0707"));
    }

    #[test]
    fn signatures_check_and_fail_on_change() {
        let k = OperatorKeyPair::from_seed([1; 32]);
        let public = OperatorPublicKey::from_bytes(&k.public_key()).unwrap();
        let sig = k.sign(b"hello");
        assert!(public.verifies(b"hello", &sig));
        assert!(!public.verifies(b"hellp", &sig));
        assert!(!public.verifies(b"hello", &sig[..63]));
        assert_eq!(public.id(), &k.id());
        assert!(OperatorPublicKey::from_bytes(&[1; 31]).is_err());
    }

    #[test]
    fn other_pem_blocks_are_refused_with_a_reason() {
        let p = Path::new("x.pem");
        let cert = pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2, 3]));
        assert!(matches!(
            OperatorKeyPair::from_pem(&cert, p),
            Err(KeyError::NotAKey { .. })
        ));
        let short = pem::encode(&pem::Pem::new("PRIVATE KEY", vec![0x30; 40]));
        assert!(matches!(
            OperatorKeyPair::from_pem(&short, p),
            Err(KeyError::NotAKey { .. })
        ));
        assert!(OperatorKeyPair::from_pem("garbage", p).is_err());
    }
}
