//! The view a member publishes on every tick: its cell's members and
//! aggregators (rebuilt only when the membership changed, or for fresh
//! RTTs now and then), the sinks it heard of, and its control traffic.

use std::time::Instant;

use libp2p::PeerId;

use super::{millis, Mesh, CELL_VIEW_REFRESH};
use crate::membership::MemberInfo;
use crate::view::{CellView, MemberView, MeshView, SinkView};

impl Mesh {
    /// Publishes what this member sees (its cell, the sinks, its traffic)
    /// to the watchers of [`MeshView`], on every tick.
    pub(super) fn publish_view(&mut self, now: Instant) {
        let rtt = |peer: &PeerId, v: &MeshView| v.rtt.get(peer).map(|d| millis(*d));
        // Copying every member record is the costliest part of a tick, so
        // the cell view is rebuilt only when the membership changed, and
        // now and then for the RTTs.
        let stale = self.cell.as_ref().is_some_and(|c| {
            c.published.is_none_or(|(generation, at)| {
                generation != c.membership.generation()
                    || now.duration_since(at) >= CELL_VIEW_REFRESH
            })
        });
        let cell = self.cell.as_ref().filter(|_| stale).map(|c| {
            let v = self.view.borrow();
            let own = c.membership.own();
            let mut members = vec![MemberView {
                host: own.host.clone(),
                peer: self.swarm.local_peer_id().to_string(),
                known: true,
                eligible: own.eligible,
                aggregator: own.aggregator,
                load_pct: own.load_pct,
                capacity: own.capacity,
                attached: own.attached,
                relay: own.relay.clone(),
                agent_version: own.agent_version.clone(),
                rtt_ms: None,
            }];
            for (id, info) in c.membership.members() {
                let peer = PeerId::from_bytes(&id.peer).ok();
                let info = info.unwrap_or(MemberInfo {
                    host: id.host.to_string(),
                    version: 0,
                    eligible: false,
                    aggregator: false,
                    load_pct: 0,
                    capacity: 0,
                    attached: 0,
                    agent_version: String::new(),
                    tags: Vec::new(),
                    addrs: Vec::new(),
                    relay: String::new(),
                });
                members.push(MemberView {
                    host: id.host.to_string(),
                    peer: peer.map(|p| p.to_string()).unwrap_or_default(),
                    known: info.version > 0,
                    eligible: info.eligible,
                    aggregator: info.aggregator,
                    load_pct: info.load_pct,
                    capacity: info.capacity,
                    attached: info.attached,
                    relay: info.relay,
                    agent_version: info.agent_version,
                    rtt_ms: peer.and_then(|p| rtt(&p, &v)),
                });
            }
            members.sort_by(|a, b| a.host.cmp(&b.host));
            CellView {
                name: c.name.clone(),
                members,
                aggregators: c.election.aggregators().to_vec(),
            }
        });
        let sinks: Vec<SinkView> = {
            let v = self.view.borrow();
            self.sinks
                .sinks()
                .map(|s| SinkView {
                    name: s.name.clone(),
                    peer: s.peer.to_string(),
                    ingress: s.ingress.clone(),
                    load_pct: s.load_pct,
                    rtt_ms: rtt(&s.peer, &v),
                    heard_secs_ago: s.age(now).as_secs_f64(),
                })
                .collect()
        };
        let stats = self.stats.clone();
        if let Some(c) = self.cell.as_mut().filter(|_| stale) {
            c.published = Some((c.membership.generation(), now));
        }
        self.view.send_modify(|v| {
            if cell.is_some() {
                v.cell = cell;
            }
            v.sinks = sinks;
            v.stats = stats;
        });
    }
}
