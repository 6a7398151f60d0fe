//! Gossip subscriptions that gossipsub lost, and what the mesh does about
//! them. gossipsub announces a member's subscriptions to a peer once, when
//! its first connection to the peer opens, and a peer's connections share
//! one send queue: when a second connection opens at the same moment (two
//! members dialling each other, a redial racing a dial) and closes at
//! once, its handler may take an announcement down with it. The peer then
//! never learns that this member subscribes to that topic and never sends
//! it that topic again, and rust-libp2p has no way to announce again while
//! connected. (Seen in `sim/tests/forger_release.rs`: a member held a
//! forger's connection for 30 s without one of its messages, the forger
//! knowing only the member's sink-advert topic.)
//!
//! So each member states its topics in its enrolment message, and the peer
//! that admits it compares them with what gossipsub heard: some but not
//! all after [`PARTIAL_GRACE`], or none after [`SILENT_GRACE`], and the
//! announcement was lost. The peer closes the connection
//! ([`SUBSCRIPTIONS_LOST`]); the next one, a first connection again on
//! both sides, announces afresh. The decisions are here, without I/O.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::gossipsub::{IdentTopic, TopicHash};
use libp2p::PeerId;

use super::Mesh;

/// Prometheus counter of peers whose gossip subscriptions this member
/// never heard, each closed so that the next connection announces them.
pub const SUBSCRIPTIONS_LOST: &str = "starling_mesh_gossip_subscriptions_lost_total";
/// Most topics a peer's statement is read for, and their longest name:
/// members subscribe to two; the rest of a longer statement is ignored.
pub const MAX_STATED_TOPICS: usize = 8;
pub const MAX_TOPIC_NAME: usize = 64;
/// After admission, how long a peer of which gossipsub heard some stated
/// topics has for the rest. A peer's announcements leave back to back as
/// its connection opens, before the enrolment exchange that admits it.
pub const PARTIAL_GRACE: Duration = Duration::from_secs(2);
/// How long one of which gossipsub heard no stated topic at all has: long
/// enough for a member whose event loop lags at a cold start.
pub const SILENT_GRACE: Duration = Duration::from_secs(30);

/// What one admitted peer stated, and since when.
#[derive(Debug)]
struct Stated {
    since: Instant,
    topics: Vec<TopicHash>,
}

/// The admitted peers whose stated subscriptions gossipsub has not heard
/// in full yet. Each is looked at until heard, lost or disconnected.
#[derive(Debug, Default)]
pub struct SubscriptionWatch {
    watched: HashMap<PeerId, Stated>,
}

impl SubscriptionWatch {
    /// `peer` was admitted, stating `topics` (untrusted input: bounded).
    pub fn on_admitted(&mut self, peer: PeerId, topics: &[String], now: Instant) {
        let topics: Vec<TopicHash> = topics
            .iter()
            .take(MAX_STATED_TOPICS)
            .filter(|t| !t.is_empty() && t.len() <= MAX_TOPIC_NAME)
            .map(|t| IdentTopic::new(t.as_str()).hash())
            .collect();
        if topics.is_empty() {
            // A member built before statements, or one subscribed to
            // nothing: nothing to compare.
            self.watched.remove(&peer);
        } else {
            self.watched.insert(peer, Stated { since: now, topics });
        }
    }

    /// `peer`'s last connection closed.
    pub fn forget(&mut self, peer: &PeerId) {
        self.watched.remove(peer);
    }

    /// Whether any peer is still looked at (so the caller can skip asking
    /// gossipsub what it heard).
    pub fn is_idle(&self) -> bool {
        self.watched.is_empty()
    }

    /// The peers whose announcements were lost, by `heard` (the topics
    /// gossipsub knows each connected peer subscribes to; a peer missing
    /// from it is no longer connected). A peer heard in full, lost or gone
    /// is no longer looked at.
    pub fn lost(
        &mut self,
        now: Instant,
        heard: &HashMap<PeerId, HashSet<TopicHash>>,
    ) -> Vec<PeerId> {
        let mut lost = Vec::new();
        self.watched.retain(|peer, stated| {
            let Some(heard) = heard.get(peer) else {
                return false;
            };
            let known = stated.topics.iter().filter(|t| heard.contains(t)).count();
            if known == stated.topics.len() {
                return false;
            }
            let waited = now.saturating_duration_since(stated.since);
            let grace = if known > 0 {
                PARTIAL_GRACE
            } else {
                SILENT_GRACE
            };
            if waited < grace {
                return true;
            }
            lost.push(*peer);
            false
        });
        lost
    }
}

impl Mesh {
    /// Closes the connections of peers whose stated subscriptions
    /// gossipsub never heard, so that the next connection announces them.
    pub(super) fn close_lost_subscriptions(&mut self, now: Instant) {
        if self.subscriptions.is_idle() {
            return;
        }
        let heard: HashMap<PeerId, HashSet<TopicHash>> = self
            .swarm
            .behaviour()
            .gossipsub
            .all_peers()
            .map(|(peer, topics)| (*peer, topics.into_iter().cloned().collect()))
            .collect();
        for peer in self.subscriptions.lost(now, &heard) {
            metrics::counter!(SUBSCRIPTIONS_LOST).increment(1);
            tracing::info!(%peer, "gossip subscriptions of a peer lost: reconnecting to hear them");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heard(entries: &[(PeerId, &[&str])]) -> HashMap<PeerId, HashSet<TopicHash>> {
        entries
            .iter()
            .map(|(p, topics)| {
                let set = topics.iter().map(|t| IdentTopic::new(*t).hash()).collect();
                (*p, set)
            })
            .collect()
    }

    #[test]
    fn a_peer_heard_in_part_is_lost_after_the_short_grace_and_only_once() {
        let mut watch = SubscriptionWatch::default();
        let t0 = Instant::now();
        let peer = PeerId::random();
        let stated = ["sinks".to_string(), "tasks".to_string()];
        watch.on_admitted(peer, &stated, t0);
        let partial = heard(&[(peer, &["sinks"])]);
        assert!(watch.lost(t0 + PARTIAL_GRACE / 2, &partial).is_empty());
        assert_eq!(watch.lost(t0 + PARTIAL_GRACE, &partial), vec![peer]);
        assert!(watch.is_idle(), "a lost peer is closed once, not again");
    }

    #[test]
    fn a_peer_heard_in_full_or_gone_is_no_longer_looked_at() {
        let mut watch = SubscriptionWatch::default();
        let t0 = Instant::now();
        let (full, gone) = (PeerId::random(), PeerId::random());
        let stated = ["sinks".to_string(), "tasks".to_string()];
        watch.on_admitted(full, &stated, t0);
        watch.on_admitted(gone, &stated, t0);
        let now = heard(&[(full, &["tasks", "sinks", "other"])]);
        assert!(watch.lost(t0, &now).is_empty());
        assert!(watch.is_idle());
        // Heard in full later: never lost, however long it took.
        watch.on_admitted(full, &stated, t0);
        assert!(watch.lost(t0 + SILENT_GRACE * 2, &now).is_empty());
    }

    #[test]
    fn a_peer_heard_in_nothing_gets_the_long_grace() {
        let mut watch = SubscriptionWatch::default();
        let t0 = Instant::now();
        let peer = PeerId::random();
        watch.on_admitted(peer, &["tasks".to_string()], t0);
        let nothing = heard(&[(peer, &[])]);
        assert!(watch.lost(t0 + PARTIAL_GRACE * 2, &nothing).is_empty());
        assert_eq!(watch.lost(t0 + SILENT_GRACE, &nothing), vec![peer]);
    }

    #[test]
    fn statements_are_bounded_and_an_empty_one_is_not_watched() {
        let mut watch = SubscriptionWatch::default();
        let t0 = Instant::now();
        let peer = PeerId::random();
        watch.on_admitted(peer, &[], t0);
        assert!(watch.is_idle());
        // Over-long names are ignored, and only the first few count: a
        // peer stating hundreds of topics it never announces is not
        // looked at for more than those.
        let mut stated = vec!["x".repeat(MAX_TOPIC_NAME + 1)];
        stated.extend((0..1000).map(|i| format!("t{i}")));
        watch.on_admitted(peer, &stated, t0);
        let first: Vec<String> = (0..MAX_STATED_TOPICS - 1)
            .map(|i| format!("t{i}"))
            .collect();
        let names: Vec<&str> = first.iter().map(String::as_str).collect();
        let now = heard(&[(peer, &names)]);
        assert!(watch.lost(t0 + SILENT_GRACE, &now).is_empty());
        assert!(watch.is_idle());
    }
}
