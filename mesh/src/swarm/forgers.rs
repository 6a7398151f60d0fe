//! Peers that relay forged tasks, and what the mesh does about them
//! (docs/tasks.md, "Forgers are ignored"). Every honest member checks a
//! task before it relays it, so a refused copy blames its relay
//! ([`starling_task::Blame`]): at once when no honest host could have
//! relayed it, after [`FORGER_STRIKES`] copies when a newer trust root or
//! agent version could explain it. A forger is held off for
//! [`FORGER_HOLD`]: its connections closed and refused, no anti-entropy
//! with it, its gossip graylisted. Only that stops a flood: gossipsub
//! checks every message's libp2p signature before it looks at the
//! sender's score, so a graylisted peer still costs a check per message.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::{gossipsub, PeerId};
use starling_task::{Blame, Refusal};

use super::Mesh;

/// The application score of a peer held off: below [`FORGER_GRAYLIST`].
const FORGERY_PENALTY: f64 = -100.0;
/// Score below which gossipsub ignores a peer (its gossip and publish
/// thresholds sit above, at their defaults).
const FORGER_GRAYLIST: f64 = -80.0;
/// How long a forger is held off.
pub const FORGER_HOLD: Duration = Duration::from_secs(60);
/// Copies a peer may relay within [`FORGER_HOLD`] that this host refuses
/// for a reason another root or version could explain, before it is held
/// off as a forger. An honest peer relays one or two such copies while a
/// rotation reaches this host; anti-entropy then brings the root.
pub const FORGER_STRIKES: u32 = 3;
/// Prometheus counter of peers held off as forgers, by `via` (`gossip`,
/// `sync`).
pub const TASK_FORGERS: &str = "starling_task_forgers_total";

/// Gossipsub peer scoring as the mesh uses it: only a hold costs score,
/// through the application's score (0, or [`FORGERY_PENALTY`] while held
/// off), so a peer is graylisted exactly while it is held off. No topic
/// component: gossipsub's own count of invalid messages does not decay
/// while the peer is away, so a forger released after its hold came back
/// still graylisted: connected, every message's signature checked, none
/// looked at by the task plane (which would hold it off again) until the
/// count had decayed, about 11 s of 1 to 1.5 cores for the members of a
/// cell under a flood (docs/tasks.md, "Forgers are ignored"). Every other
/// component is off as well: members on one address (a test, a NAT)
/// must not be penalised for it, nor quiet mesh peers for delivering few
/// messages (tasks are rare), nor members slowed by a busy host.
pub(super) fn gossip_scoring() -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let params = gossipsub::PeerScoreParams {
        topics: Default::default(),
        app_specific_weight: 1.0,
        ip_colocation_factor_weight: 0.0,
        behaviour_penalty_weight: 0.0,
        slow_peer_weight: 0.0,
        ..Default::default()
    };
    let thresholds = gossipsub::PeerScoreThresholds {
        graylist_threshold: FORGER_GRAYLIST,
        ..Default::default()
    };
    (params, thresholds)
}

/// Which peers are held off as forgers and which are suspect: the
/// decisions, without I/O (the [`Mesh`] methods below act on them).
#[derive(Debug)]
pub struct ForgerWatch {
    /// How long a forger is held off (and how long strikes count).
    hold: Duration,
    /// Held off until.
    held: HashMap<PeerId, Instant>,
    /// Suspect copies relayed, and since when they are counted.
    strikes: HashMap<PeerId, (u32, Instant)>,
}

impl ForgerWatch {
    /// Holds forgers off for `hold` ([`FORGER_HOLD`] in production).
    pub fn new(hold: Duration) -> Self {
        Self {
            hold,
            held: HashMap::new(),
            strikes: HashMap::new(),
        }
    }

    /// Whether `peer` is held off now.
    pub fn is_held(&self, peer: &PeerId) -> bool {
        self.held.contains_key(peer)
    }

    /// Takes the blame of one refused copy `peer` relayed; true when that
    /// makes it a forger, held off from now (it was not before).
    pub fn on_refusal(&mut self, peer: PeerId, blame: Blame, now: Instant) -> bool {
        if self.is_held(&peer) {
            return false;
        }
        let forger = match blame {
            Blame::Nobody => false,
            Blame::Certain => true,
            Blame::Suspect => {
                let (count, since) = self.strikes.entry(peer).or_insert((0, now));
                if now.duration_since(*since) > self.hold {
                    (*count, *since) = (0, now);
                }
                *count += 1;
                *count >= FORGER_STRIKES
            }
        };
        if forger {
            self.strikes.remove(&peer);
            self.held.insert(peer, now + self.hold);
        }
        forger
    }

    /// The peers whose hold ends by `now`, no longer held; stale strikes
    /// are forgotten.
    pub fn release(&mut self, now: Instant) -> Vec<PeerId> {
        let hold = self.hold;
        self.strikes
            .retain(|_, (_, since)| now.duration_since(*since) <= hold);
        let released: Vec<PeerId> = self
            .held
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in &released {
            self.held.remove(peer);
        }
        released
    }
}

impl Mesh {
    /// Whether `peer` is held off as a forger.
    pub(super) fn is_forger(&self, peer: &PeerId) -> bool {
        self.tasks.as_ref().is_some_and(|d| d.forgers.is_held(peer))
    }

    /// Takes the blame of a copy `peer` relayed (`via` gossip or sync)
    /// that this host refused; holds the peer off when that makes it a
    /// forger. Whether it is held off now.
    pub(super) fn blame_relay(
        &mut self,
        peer: PeerId,
        refusal: &Refusal,
        via: &'static str,
    ) -> bool {
        let Some(driver) = self.tasks.as_mut() else {
            return false;
        };
        if !driver
            .forgers
            .on_refusal(peer, refusal.blame, Instant::now())
        {
            return driver.forgers.is_held(&peer);
        }
        metrics::counter!(TASK_FORGERS, "via" => via).increment(1);
        tracing::warn!(%peer, via, error = %refusal, "a peer relayed forged tasks; held off for {} s", driver.forgers.hold.as_secs());
        let behaviour = self.swarm.behaviour_mut();
        behaviour
            .gossipsub
            .set_application_score(&peer, FORGERY_PENALTY);
        // Closes its connections and refuses new ones until released.
        behaviour.blocked.block_peer(peer);
        true
    }

    /// Lets forgers back once their hold is over.
    pub(super) fn release_forgers(&mut self, now: Instant) {
        let Some(driver) = self.tasks.as_mut() else {
            return;
        };
        for peer in driver.forgers.release(now) {
            tracing::info!(%peer, "a forger's hold is over");
            let behaviour = self.swarm.behaviour_mut();
            behaviour.gossipsub.set_application_score(&peer, 0.0);
            behaviour.blocked.unblock_peer(peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certain_forgers_are_held_at_once_and_suspects_after_three_strikes() {
        let now = Instant::now();
        let mut watch = ForgerWatch::new(FORGER_HOLD);
        let (forger, rotated, late) = (PeerId::random(), PeerId::random(), PeerId::random());
        assert!(watch.on_refusal(forger, Blame::Certain, now));
        assert!(watch.is_held(&forger));
        assert!(!watch.on_refusal(forger, Blame::Certain, now), "held once");
        for _ in 0..FORGER_STRIKES - 1 {
            assert!(!watch.on_refusal(rotated, Blame::Suspect, now));
        }
        assert!(
            !watch.is_held(&rotated),
            "a rotation's few copies are forgiven"
        );
        assert!(watch.on_refusal(rotated, Blame::Suspect, now));
        for _ in 0..10 {
            assert!(!watch.on_refusal(late, Blame::Nobody, now));
        }
        assert!(!watch.is_held(&late));
    }

    #[test]
    fn strikes_are_counted_within_a_hold_and_holds_end() {
        let now = Instant::now();
        let mut watch = ForgerWatch::new(FORGER_HOLD);
        let peer = PeerId::random();
        for i in 0..5u64 {
            // One suspect copy every 40 s never adds up to a forger.
            let at = now + Duration::from_secs(40 * i);
            assert!(!watch.on_refusal(peer, Blame::Suspect, at));
            watch.release(at);
        }
        assert!(watch.on_refusal(peer, Blame::Certain, now));
        assert!(watch.release(now + FORGER_HOLD / 2).is_empty());
        assert_eq!(watch.release(now + FORGER_HOLD), vec![peer]);
        assert!(!watch.is_held(&peer));
    }
}
