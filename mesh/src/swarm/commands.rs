//! What the node tells its mesh, methods of [`Mesh`]: its load and
//! attached nodes (broadcast to the cell when they matter to attachment),
//! a sink's load, the spool backlog its heartbeat carries, and the
//! `hostile` test doubles' unchecked messages.

use std::time::Instant;

#[cfg(feature = "hostile")]
use libp2p::gossipsub;

#[cfg(feature = "hostile")]
use super::TASK_TOPIC;
use super::{Mesh, MeshCommand, LOAD_REFRESH};

impl Mesh {
    /// What the `hostile` test doubles gossip, as it is.
    #[cfg(feature = "hostile")]
    fn gossip_unchecked(&mut self, topic: &str, bytes: Vec<u8>) {
        let topic = gossipsub::IdentTopic::new(topic);
        if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
            tracing::debug!(error = %e, "hostile gossip not sent");
        }
    }

    pub(super) fn on_command(&mut self, command: MeshCommand) {
        match command {
            MeshCommand::SinkLoad(pct) => self.sink_load = pct.min(100),
            #[cfg(feature = "hostile")]
            MeshCommand::GossipTaskUnchecked(bytes) => self.gossip_unchecked(TASK_TOPIC, bytes),
            #[cfg(feature = "hostile")]
            MeshCommand::SendSummaryUnchecked(bytes) => self.send_summary_unchecked(&bytes),
            MeshCommand::SpoolBacklog(events) => {
                if let Some(d) = self.tasks.as_mut() {
                    d.fleet_hosts.spool_backlog = events;
                }
            }
            MeshCommand::Health(unhealthy) => {
                if let Some(d) = self.tasks.as_mut() {
                    if d.unhealthy != unhealthy {
                        tracing::info!(unhealthy = ?unhealthy, "host health changed");
                        d.unhealthy = unhealthy;
                    }
                }
            }
            MeshCommand::NodeLoad { attached, load_pct } => {
                let pct = load_pct.min(100);
                let version = self.version();
                let now = Instant::now();
                if let Some(cell) = self.cell.as_mut() {
                    // Load is broadcast to the whole cell: changes that
                    // matter to attachment go out at once, a changed count
                    // of attached nodes at most every LOAD_REFRESH.
                    let own = cell.membership.own();
                    let big = own.load_pct.abs_diff(pct) >= 10;
                    let stale = own.attached != attached
                        && now.duration_since(cell.load_sent) >= LOAD_REFRESH;
                    if big || stale {
                        cell.load_sent = now;
                        let _ = cell.membership.update_info(version, |info| {
                            info.load_pct = pct;
                            info.attached = attached;
                        });
                        self.drain_membership();
                    }
                }
            }
        }
    }
}
