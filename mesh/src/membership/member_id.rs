//! A cell member's identity, and the cheap comparison foca needs of it.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A member of a cell: its host id, where to reach it, and a bump that a
/// restarted host increments to rejoin under a fresh identity.
///
/// Identities travel in every SWIM message, so a member that learns of
/// another from gossip can reach it without a lookup. foca copies them
/// freely (every update it applies, every probe target it draws), so the
/// parts are shared, not owned: a copy is three reference counts, not two
/// allocations and their bytes (copying, allocating and freeing
/// identities led a simulated host's profile; docs/simulator.md).
#[derive(Clone, Debug, Eq, PartialOrd, Ord, Serialize)]
pub struct MemberId {
    /// The enrolled host name: what makes two identities the same member.
    pub host: Arc<str>,
    /// libp2p PeerId bytes. As bytes, not a sequence of numbers: postcard
    /// writes both the same (a length, then the bytes), but a sequence one
    /// element at a time, which was a tenth of a simulated host's CPU.
    #[serde(serialize_with = "as_bytes")]
    pub peer: Arc<[u8]>,
    /// One dialable libp2p multiaddr, as bytes (may be empty).
    #[serde(serialize_with = "as_bytes")]
    pub addr: Arc<[u8]>,
    pub bump: u16,
    /// A keyed hash of `host`, computed once: foca compares members by
    /// [`foca::Identity::addr`] in a linear scan of the cell for every
    /// update it applies, and comparing host names there was most of a
    /// member's CPU (docs/simulator.md). Last, so ordering never needs it.
    #[serde(skip_serializing)]
    pub(super) key: HostKey,
}

fn as_bytes<S: Serializer>(bytes: &Arc<[u8]>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

/// How a [`MemberId`] travels: everything but its local key, borrowed from
/// the datagram where the decoder allows, so that decoding allocates each
/// part once.
#[derive(Deserialize)]
struct MemberIdWire<'a> {
    #[serde(borrow)]
    host: Cow<'a, str>,
    #[serde(borrow, with = "serde_bytes")]
    peer: Cow<'a, [u8]>,
    #[serde(borrow, with = "serde_bytes")]
    addr: Cow<'a, [u8]>,
    bump: u16,
}

impl<'de> Deserialize<'de> for MemberId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = MemberIdWire::deserialize(d)?;
        Ok(Self::new(&*w.host, &*w.peer, &*w.addr, w.bump))
    }
}

/// The address foca compares members by: a 64-bit hash of the host name
/// under a key chosen at random per process, so nobody can make up a name
/// that collides with a member's (two names colliding by chance in a cell
/// of a thousand: about 3 in 10^14).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostKey(u64);

impl HostKey {
    fn of(host: &str) -> Self {
        use std::hash::BuildHasher;
        static KEYS: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
        Self(KEYS.get_or_init(std::hash::RandomState::new).hash_one(host))
    }
}

/// The same fields as a derived comparison, cheapest first: foca compares
/// identities once per update it applies.
impl PartialEq for MemberId {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
            && self.bump == other.bump
            && shared_eq(&self.host, &other.host)
            && shared_eq(&self.peer, &other.peer)
            && shared_eq(&self.addr, &other.addr)
    }
}

/// Hashes what [`PartialEq`] compares.
impl std::hash::Hash for MemberId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state);
        self.bump.hash(state);
        self.host.hash(state);
        self.peer.hash(state);
        self.addr.hash(state);
    }
}

/// Shared parts compared without calling `memcmp` where it cannot differ:
/// copies of one identity share their parts, and empty ones are equal.
fn shared_eq<T: ?Sized + AsRef<[u8]>>(a: &Arc<T>, b: &Arc<T>) -> bool {
    let (x, y): (&[u8], &[u8]) = ((**a).as_ref(), (**b).as_ref());
    Arc::ptr_eq(a, b) || (x.len() == y.len() && (x.is_empty() || x == y))
}

impl MemberId {
    /// Whether `claimed` (a datagram's SWIM sender) is the member this
    /// identity (the connection's, from its certificate) belongs to: the
    /// same host and, where the connection's side carries one, the same
    /// PeerId. Address and bump may differ: the transport knows neither.
    pub fn same_sender(&self, claimed: &MemberId) -> bool {
        self.key == claimed.key
            && self.host == claimed.host
            && (self.peer.is_empty() || shared_eq(&self.peer, &claimed.peer))
    }

    /// An identity from its parts.
    pub fn new(
        host: impl Into<Arc<str>>,
        peer: impl Into<Arc<[u8]>>,
        addr: impl Into<Arc<[u8]>>,
        bump: u16,
    ) -> Self {
        let (host, peer, addr) = (host.into(), peer.into(), addr.into());
        let key = HostKey::of(&host);
        Self {
            host,
            peer,
            addr,
            bump,
            key,
        }
    }

    /// An identity known only by host name (simulations, tests, and the
    /// authenticated sender of a datagram, whose name is all that counts).
    pub fn named(host: &str) -> Self {
        Self::new(host, &[][..], &[][..], 0)
    }
}

impl foca::Identity for MemberId {
    type Addr = HostKey;

    fn renew(&self) -> Option<Self> {
        self.bump.checked_add(1).map(|bump| Self {
            bump,
            ..self.clone()
        })
    }

    fn addr(&self) -> HostKey {
        self.key
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}
