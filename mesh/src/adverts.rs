//! Sink adverts: how sinks announce themselves fleet-wide over gossipsub,
//! and the book of sinks every member keeps from them.
//!
//! An advert carries the sink's certificate chain. Gossipsub signs each
//! message with its author's libp2p key, which is the author's enrolment
//! key, so a receiver that checks the chain against the fleet CA and the
//! author's PeerId knows which enrolled sink wrote the advert even when it
//! arrived through other members. Verified authors are remembered so the
//! chain is checked once, not on every advert. Sans-I/O.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

use crate::enrol::AdmissionError;
use crate::identity::{PeerIdentity, Role};

/// Gossipsub topic of sink adverts.
pub const SINK_TOPIC: &str = "starling/sinks/1";
/// Largest advert accepted (a chain at its limits plus a few fields).
pub const MAX_ADVERT_BYTES: usize = 20 * 1024;
/// Most sinks remembered (a fleet has a handful).
pub const MAX_SINKS: usize = 256;
/// Most mesh addresses kept of a sink, and the longest.
pub const MAX_SINK_ADDRS: usize = 8;
const MAX_ADDR_LEN: usize = 256;
/// How long a verified author is trusted before its chain is checked again.
const VERIFIED_FOR: Duration = Duration::from_secs(600);

/// What a sink says about itself: protobuf (`starling.v1.SinkAdvert`),
/// as everything gossiped fleet-wide is, since it crosses agent versions.
pub use starling_proto::v1::SinkAdvert;

/// Why an advert was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdvertError {
    #[error("advert of {0} bytes exceeds {MAX_ADVERT_BYTES}")]
    TooLarge(usize),
    #[error("advert does not decode: {0}")]
    Decode(String),
    #[error("advert author not enrolled: {0}")]
    Author(#[from] AdmissionError),
    #[error("advert author is {0}, not a sink")]
    NotASink(PeerIdentity),
    #[error("advert field out of bounds")]
    Bounds,
    #[error("too many sinks known")]
    Full,
}

/// A sink as a member knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownSink {
    /// The sink's name (from its certificate).
    pub name: String,
    pub peer: PeerId,
    /// host:port of its QUIC ingress.
    pub ingress: String,
    /// Its mesh addresses (at most [`MAX_SINK_ADDRS`]; ones that do not
    /// parse are left out), for members that send it their cell's
    /// summary or ask it for the fleet's view.
    pub mesh_addrs: Vec<Multiaddr>,
    pub load_pct: u8,
    /// What it decided for each rollout under way (checked:
    /// `starling_task::rollout::check_decision`).
    pub rollouts: Vec<starling_proto::v1::RolloutDecision>,
    seq: u64,
    last_heard: Instant,
}

impl KnownSink {
    /// Time since its last advert.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_heard)
    }
}

/// Sinks heard of recently.
#[derive(Debug, Default)]
pub struct SinkBook {
    sinks: BTreeMap<String, KnownSink>,
    verified: HashMap<PeerId, (PeerIdentity, Instant)>,
}

impl SinkBook {
    /// Takes in an advert authored by `author`. `verify` checks a chain for
    /// that author (`Enrolment::admit`); it runs only for authors not
    /// verified recently.
    pub fn on_advert(
        &mut self,
        author: PeerId,
        bytes: &[u8],
        now: Instant,
        verify: impl FnOnce(&PeerId, &[Vec<u8>]) -> Result<PeerIdentity, AdmissionError>,
    ) -> Result<(), AdvertError> {
        if bytes.len() > MAX_ADVERT_BYTES {
            return Err(AdvertError::TooLarge(bytes.len()));
        }
        let advert = <SinkAdvert as prost::Message>::decode(bytes)
            .map_err(|e| AdvertError::Decode(e.to_string()))?;
        if advert.load_pct > 100
            || advert.ingress.is_empty()
            || advert.ingress.len() > 256
            || advert.mesh_addrs.len() > MAX_SINK_ADDRS
            || advert.mesh_addrs.iter().any(|a| a.len() > MAX_ADDR_LEN)
            || advert.rollouts.len() > starling_task::rollout::MAX_ANNOUNCED
            || (advert.rollouts.iter()).any(|d| starling_task::rollout::check_decision(d).is_err())
        {
            return Err(AdvertError::Bounds);
        }
        let identity = match self.verified.get(&author) {
            Some((id, at)) if now.saturating_duration_since(*at) < VERIFIED_FOR => id.clone(),
            _ => {
                let id = verify(&author, &advert.chain)?;
                self.verified
                    .retain(|_, (_, at)| now.saturating_duration_since(*at) < VERIFIED_FOR);
                self.verified.insert(author, (id.clone(), now));
                id
            }
        };
        if identity.role != Role::Sink {
            return Err(AdvertError::NotASink(identity));
        }
        if !self.sinks.contains_key(&identity.name) && self.sinks.len() >= MAX_SINKS {
            return Err(AdvertError::Full);
        }
        let entry = self
            .sinks
            .entry(identity.name.clone())
            .or_insert_with(|| KnownSink {
                name: identity.name.clone(),
                peer: author,
                ingress: String::new(),
                mesh_addrs: Vec::new(),
                load_pct: 0,
                rollouts: Vec::new(),
                seq: 0,
                last_heard: now,
            });
        // A restarted sink starts its sequence again: a new author key or
        // a larger sequence number both count as news.
        if entry.peer == author && entry.seq >= advert.seq && !entry.ingress.is_empty() {
            return Ok(());
        }
        entry.peer = author;
        entry.ingress = advert.ingress;
        entry.mesh_addrs = advert
            .mesh_addrs
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        // Checked above: at most 100.
        entry.load_pct = advert.load_pct.min(100) as u8;
        entry.rollouts = advert.rollouts;
        entry.seq = advert.seq;
        entry.last_heard = now;
        Ok(())
    }

    /// Forgets sinks silent for longer than `max_age`.
    pub fn expire(&mut self, now: Instant, max_age: Duration) {
        self.sinks.retain(|_, s| s.age(now) <= max_age);
    }

    /// Forgets which authors were verified (the revocation list changed):
    /// each author's next advert is checked under the new list, so a
    /// revoked sink's adverts are rejected and it expires from the book.
    pub fn forget_verified(&mut self) {
        self.verified.clear();
    }

    /// The sinks known, by name.
    pub fn sinks(&self) -> impl Iterator<Item = &KnownSink> {
        self.sinks.values()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn advert(seq: u64, load: u8) -> Vec<u8> {
        SinkAdvert {
            chain: vec![vec![1, 2, 3]],
            ingress: "127.0.0.1:7400".into(),
            load_pct: u32::from(load),
            seq,
            mesh_addrs: vec![
                "/ip4/127.0.0.1/udp/7401/quic-v1".into(),
                "not an address".into(),
            ],
            rollouts: vec![starling_proto::v1::RolloutDecision {
                task_id: "t".into(),
                open_waves: 2,
                halted: false,
                halt_reason: String::new(),
            }],
        }
        .encode_to_vec()
    }

    fn sink(name: &str) -> PeerIdentity {
        PeerIdentity {
            role: Role::Sink,
            name: name.into(),
        }
    }

    #[test]
    fn adverts_are_verified_once_and_newer_ones_win() {
        let now = Instant::now();
        let mut book = SinkBook::default();
        let author = PeerId::random();
        let mut checks = 0;
        book.on_advert(author, &advert(1, 10), now, |_, _| {
            checks += 1;
            Ok(sink("s1"))
        })
        .unwrap();
        book.on_advert(author, &advert(2, 40), now, |_, _| {
            checks += 1;
            Ok(sink("s1"))
        })
        .unwrap();
        book.on_advert(author, &advert(1, 90), now, |_, _| unreachable!())
            .unwrap();
        assert_eq!(checks, 1, "the chain is checked once per author");
        let s: Vec<_> = book.sinks().collect();
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].name.as_str(), s[0].load_pct), ("s1", 40));
        assert_eq!(s[0].rollouts[0].open_waves, 2, "its rollout decisions kept");
        assert_eq!(
            s[0].mesh_addrs,
            vec!["/ip4/127.0.0.1/udp/7401/quic-v1"
                .parse::<Multiaddr>()
                .unwrap()],
            "addresses that parse are kept"
        );
        book.expire(now + Duration::from_secs(31), Duration::from_secs(30));
        assert_eq!(book.sinks().count(), 0, "silent sinks are forgotten");
    }

    #[test]
    fn hostile_adverts_are_refused() {
        let now = Instant::now();
        let mut book = SinkBook::default();
        let node = PeerIdentity {
            role: Role::Node,
            name: "n1".into(),
        };
        assert!(matches!(
            book.on_advert(PeerId::random(), &advert(1, 1), now, |_, _| Ok(node)),
            Err(AdvertError::NotASink(_))
        ));
        assert!(matches!(
            book.on_advert(PeerId::random(), &advert(1, 1), now, |_, _| Err(
                AdmissionError::KeyMismatch
            )),
            Err(AdvertError::Author(_))
        ));
        assert!(book
            .on_advert(PeerId::random(), &advert(1, 101), now, |_, _| Ok(sink("s")))
            .is_err());
        assert!(book
            .on_advert(PeerId::random(), &[0xff; 64], now, |_, _| Ok(sink("s")))
            .is_err());
        let mut wide = SinkAdvert::decode(advert(1, 1).as_slice()).unwrap();
        wide.rollouts[0].open_waves = 99;
        assert!(
            matches!(
                book.on_advert(PeerId::random(), &wide.encode_to_vec(), now, |_, _| Ok(
                    sink("s")
                )),
                Err(AdvertError::Bounds)
            ),
            "a decision out of bounds"
        );
        assert!(book
            .on_advert(
                PeerId::random(),
                &vec![0; MAX_ADVERT_BYTES + 1],
                now,
                |_, _| Ok(sink("s"))
            )
            .is_err());
        assert_eq!(book.sinks().count(), 0);
    }
}
