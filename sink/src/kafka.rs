//! Kafka delivery: one message per event, keyed by host id, with routing
//! headers. The producer is idempotent with acks=all, and a batch counts as
//! persisted only when every message's delivery report says PERSISTED
//! (librdkafka's `rd_kafka_message_status`), not merely "no error".

use std::time::Duration;

use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use starling_proto::v1::Event;
use tokio::sync::oneshot;

use crate::config::KafkaSection;

/// Kafka header naming the payload's protobuf message type.
pub const HEADER_SCHEMA: &str = "starling-schema";
/// Kafka header naming the event kind (see `starling_proto::event_kind`).
pub const HEADER_KIND: &str = "starling-kind";
/// Kafka header with the event's host id.
pub const HEADER_HOST: &str = "starling-host";
/// Kafka header with the event's per-host sequence number (decimal).
pub const HEADER_SEQ: &str = "starling-seq";

/// Why a batch could not be persisted to Kafka (the node will resend).
#[derive(Debug, thiserror::Error)]
pub enum KafkaWriteError {
    #[error("kafka client: {0}")]
    Client(#[from] KafkaError),
    #[error("delivery failed: {0}")]
    Delivery(String),
    #[error("producer dropped a delivery report")]
    ReportLost,
}

type Report = oneshot::Sender<Result<(), String>>;

/// Routes librdkafka's delivery reports to the waiting batch.
pub struct DeliveryRouter;

impl ClientContext for DeliveryRouter {}

impl ProducerContext for DeliveryRouter {
    type DeliveryOpaque = Box<Report>;

    fn delivery(&self, result: &DeliveryResult<'_>, report: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(msg) => {
                // SAFETY: msg.ptr() is the live rd_kafka_message_t of this
                // delivery report for the duration of the callback.
                let status = unsafe { rdkafka::bindings::rd_kafka_message_status(msg.ptr()) };
                if status == rdkafka::bindings::rd_kafka_msg_status_t::RD_KAFKA_MSG_STATUS_PERSISTED
                {
                    Ok(())
                } else {
                    Err(format!("message status {status:?}, not PERSISTED"))
                }
            }
            Err((e, _)) => Err(e.to_string()),
        };
        // The batch may have given up waiting (shutdown); nothing to do then.
        let _ = report.send(outcome);
    }
}

/// The sink's Kafka producer.
pub struct KafkaWriter {
    producer: ThreadedProducer<DeliveryRouter>,
    topic: String,
}

fn client_config(cfg: &KafkaSection) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &cfg.brokers);
    c
}

impl KafkaWriter {
    /// Creates the producer (and the topic, if configured and missing).
    /// The broker need not be up yet: batches get RETRY until it is.
    pub async fn new(cfg: &KafkaSection) -> Result<Self, KafkaWriteError> {
        let mut c = client_config(cfg);
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .set("message.timeout.ms", cfg.delivery_timeout_ms.to_string());
        let producer: ThreadedProducer<DeliveryRouter> = c.create_with_context(DeliveryRouter)?;
        if cfg.create_topic {
            if let Err(e) = ensure_topic(cfg).await {
                tracing::warn!(error = %e, topic = %cfg.topic, "could not create the topic; continuing (it may exist or be auto-created)");
            }
        }
        Ok(Self {
            producer,
            topic: cfg.topic.clone(),
        })
    }

    /// Produces every event and waits until all are PERSISTED.
    pub async fn persist(&self, events: &[Event]) -> Result<(), KafkaWriteError> {
        let mut waits = Vec::with_capacity(events.len());
        for e in events {
            let (host, seq) = e
                .header
                .as_ref()
                .map(|h| (h.host_id.as_str(), h.seq))
                .unwrap_or(("", 0));
            let payload = e.encode_to_vec();
            let seq_text = seq.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: HEADER_SCHEMA,
                    value: Some(starling_proto::SCHEMA_NAME),
                })
                .insert(Header {
                    key: HEADER_KIND,
                    value: Some(starling_proto::event_kind(e)),
                })
                .insert(Header {
                    key: HEADER_HOST,
                    value: Some(host),
                })
                .insert(Header {
                    key: HEADER_SEQ,
                    value: Some(&seq_text),
                });
            let (tx, rx) = oneshot::channel();
            let mut record = BaseRecord::with_opaque_to(&self.topic, Box::new(tx))
                .key(host)
                .payload(&payload)
                .headers(headers);
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        // Back-pressure from librdkafka's queue: wait, then retry.
                        record = r;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
            waits.push(rx);
        }
        let mut first_error = None;
        for w in waits {
            match w.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(KafkaWriteError::Delivery(e));
                }
                Err(_) => {
                    first_error.get_or_insert(KafkaWriteError::ReportLost);
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Waits up to `timeout` for queued messages to be delivered.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "kafka flush at shutdown incomplete; unacked batches will be resent by nodes");
        }
    }
}

async fn ensure_topic(cfg: &KafkaSection) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(cfg).create()?;
    let topic = NewTopic::new(
        &cfg.topic,
        cfg.partitions,
        TopicReplication::Fixed(cfg.replication_factor),
    );
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics([&topic], &opts).await? {
        match r {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %name, "topic exists")
            }
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code))
                    .inspect_err(|_| tracing::warn!(topic = %name, ?code, "topic creation failed"))
            }
        }
    }
    Ok(())
}
