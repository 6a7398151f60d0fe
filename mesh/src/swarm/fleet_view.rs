//! The fleet's view at a member, methods of [`Mesh`]: cells' summaries
//! go up to the sinks (`task_status`), and a member whose status someone
//! reads asks a sink for every cell's summary over `/starling/fleet/2`,
//! at most once a second while it is read (docs/tasks.md, "Status"). A
//! member nobody asks hears no summary at all, so what a host pays for the
//! fleet's view does not grow with the fleet.

use std::time::{Duration, Instant};

use libp2p::request_response::OutboundRequestId;
use libp2p::{Multiaddr, PeerId};

use super::fleet::{FleetAnswer, FleetQuery};
use super::Mesh;

/// A read status asks a sink for the fleet's view this often.
const VIEW_EVERY: Duration = Duration::from_secs(1);
/// A reader's ask waits this long for the view it set off before the
/// status is written without it.
pub(super) const VIEW_WAIT: Duration = Duration::from_secs(2);

/// The member's question for the fleet's view, if one is out.
#[derive(Debug, Default)]
pub(super) struct ViewFetch {
    in_flight: Option<OutboundRequestId>,
    last_asked: Option<Instant>,
    /// Which of the known sinks to ask next (moves on after a failure).
    next_sink: usize,
}

impl ViewFetch {
    /// Whether a question set off less than [`VIEW_WAIT`] ago is still out.
    pub(super) fn waiting(&self, now: Instant) -> bool {
        self.in_flight.is_some()
            && self
                .last_asked
                .is_some_and(|t| now.duration_since(t) < VIEW_WAIT)
    }
}

impl Mesh {
    /// Asks a sink for the fleet's view when this member's status is read
    /// and the last answer is a second old. Sinks hold the view themselves.
    pub(super) fn fleet_view_tick(&mut self, now: Instant) {
        if self.config.sink_ingress.is_some() {
            return;
        }
        let Some(d) = self.tasks.as_ref() else {
            return;
        };
        let recent = d
            .view_fetch
            .last_asked
            .is_some_and(|t| now.duration_since(t) < VIEW_EVERY);
        if !d.being_read() || d.view_fetch.in_flight.is_some() || recent {
            return;
        }
        let sinks = self.reachable_sinks();
        let Some(d) = self.tasks.as_mut() else {
            return;
        };
        if sinks.is_empty() {
            return;
        }
        let peer = sinks[d.view_fetch.next_sink % sinks.len()];
        d.view_fetch.last_asked = Some(now);
        let id = self.swarm.behaviour_mut().fleet_query.send_request(
            &peer,
            FleetQuery {
                cell: String::new(),
                view: true,
            },
        );
        if let Some(d) = self.tasks.as_mut() {
            d.view_fetch.in_flight = Some(id);
        }
    }

    /// The sinks known, with the mesh addresses their adverts carry handed
    /// to the swarm, so that a request to one dials it.
    pub(super) fn reachable_sinks(&mut self) -> Vec<PeerId> {
        let sinks: Vec<(PeerId, Vec<Multiaddr>)> = self
            .sinks
            .sinks()
            .map(|s| (s.peer, s.mesh_addrs.clone()))
            .collect();
        sinks
            .into_iter()
            .map(|(peer, addrs)| {
                for addr in addrs {
                    self.swarm.add_peer_address(peer, addr);
                }
                peer
            })
            .collect()
    }

    /// Whether question `id` is this member's for the fleet's view.
    pub(super) fn is_view_question(&self, id: OutboundRequestId) -> bool {
        self.tasks
            .as_ref()
            .is_some_and(|d| d.view_fetch.in_flight == Some(id))
    }

    /// Takes the answer to question `id` when it was for the fleet's view
    /// (`None`: it failed); false when `id` was another question.
    pub(super) fn on_view_answer(
        &mut self,
        id: OutboundRequestId,
        answer: Option<FleetAnswer>,
    ) -> bool {
        let Some(d) = self.tasks.as_mut() else {
            return false;
        };
        if d.view_fetch.in_flight != Some(id) {
            return false;
        }
        d.view_fetch.in_flight = None;
        match answer {
            Some(FleetAnswer::View(cells)) => {
                for summary in cells {
                    d.take_summary(summary);
                }
                // Answered: the ask is served with it at the next tick.
                d.status_dirty = true;
            }
            other => {
                tracing::debug!(answer = ?other.map(|a| match a {
                    FleetAnswer::NotHere(why) => why,
                    _ => "not admitted yet".into(),
                }), "fleet view not had from this sink; the next is asked");
                d.view_fetch.next_sink = d.view_fetch.next_sink.wrapping_add(1);
            }
        }
        true
    }

    /// A member's question for the fleet's view: answered by a sink.
    pub(super) fn answer_view(&self) -> (FleetAnswer, &'static str) {
        match self.tasks.as_ref() {
            Some(d) if self.config.sink_ingress.is_some() => (
                FleetAnswer::View(d.fleet.cells.values().cloned().collect()),
                "view",
            ),
            _ => (
                FleetAnswer::NotHere("not a sink: the fleet's view is asked of sinks".into()),
                "not_here",
            ),
        }
    }
}
