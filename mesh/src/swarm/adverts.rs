//! Sink adverts over gossipsub, methods of [`Mesh`]: a sink publishes
//! its ingress address and load every `SINK_ADVERT_INTERVAL`, and every
//! member checks an advert (forwarder admitted, author's chain valid)
//! before its sink book takes it (docs/mesh.md, "Attachment").

use std::time::{Instant, SystemTime};

use libp2p::{gossipsub, PeerId};

use super::{Mesh, GOSSIP_REJECTED, SINK_ADVERT_INTERVAL};
use crate::adverts::SinkAdvert;

impl Mesh {
    pub(super) fn advertise_sink(&mut self, now: Instant) {
        let Some(ingress) = self.config.sink_ingress.clone() else {
            return;
        };
        if self
            .last_advert
            .is_some_and(|t| now.duration_since(t) < SINK_ADVERT_INTERVAL)
        {
            return;
        }
        self.last_advert = Some(now);
        self.advert_seq += 1;
        let mut advert = SinkAdvert {
            chain: self.enrolment.chain_der(),
            ingress,
            load_pct: u32::from(self.sink_load),
            seq: self.advert_seq,
            mesh_addrs: self
                .contact_addrs()
                .into_iter()
                .take(crate::adverts::MAX_SINK_ADDRS)
                .collect(),
            rollouts: self
                .tasks
                .as_ref()
                .map(|d| d.announced.clone())
                .unwrap_or_default(),
        };
        // Receivers refuse an advert over the limit, ingress and all:
        // rollout decisions that do not fit wait (the hosts of those
        // rollouts keep their first wave until they are announced).
        while prost::Message::encoded_len(&advert) > crate::adverts::MAX_ADVERT_BYTES
            && advert.rollouts.pop().is_some()
        {
            tracing::warn!("sink advert over its limit: a rollout decision left out");
        }
        let topic = self.sink_topic.clone();
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic, prost::Message::encode_to_vec(&advert))
        {
            // Usually no gossip peers yet: try again on the next tick
            // rather than a whole interval later.
            tracing::debug!(error = %e, "sink advert not published");
            self.last_advert = None;
        }
    }

    pub(super) fn on_gossip(
        &mut self,
        source: PeerId,
        id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) {
        self.stats.gossip_bytes_in += message.data.len() as u64;
        if message.topic == gossipsub::IdentTopic::new(super::TASK_TOPIC).hash() {
            return self.on_task_gossip(source, id, &message.data);
        }
        // The forwarding peer must be admitted; the author is checked by
        // what the message carries.
        let verdict = if self.table.admitted(&source).is_none() {
            Err("forwarder_not_admitted".to_owned())
        } else if message.topic != self.sink_topic.hash() {
            Err("unknown_topic".to_owned())
        } else {
            match message.source {
                None => Err("anonymous".to_owned()),
                Some(author) => {
                    let enrolment = &self.enrolment;
                    self.sinks
                        .on_advert(author, &message.data, Instant::now(), |p, chain| {
                            enrolment.admit(p, chain, SystemTime::now())
                        })
                        .map_err(|e| e.to_string())
                }
            }
        };
        let acceptance = match verdict {
            Ok(()) => gossipsub::MessageAcceptance::Accept,
            Err(reason) => {
                tracing::debug!(%source, %reason, "gossip message rejected");
                metrics::counter!(GOSSIP_REJECTED).increment(1);
                gossipsub::MessageAcceptance::Reject
            }
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id, &source, acceptance);
    }
}
