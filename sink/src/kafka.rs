//! Kafka delivery: one message per event, keyed by host id, with routing
//! headers. The producer is idempotent with acks=all, and a batch counts as
//! persisted only when every message's delivery report says PERSISTED
//! (librdkafka's `rd_kafka_message_status`), not merely "no error".

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use starling_proto::batch::CheckedBatch;
use tokio::sync::Notify;

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
}

/// Collects the delivery reports of one batch: the batch is persisted when
/// every message reported PERSISTED.
#[derive(Default)]
pub struct BatchReports {
    remaining: AtomicUsize,
    first_error: Mutex<Option<String>>,
    done: Notify,
}

impl BatchReports {
    fn new(messages: usize) -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(messages),
            ..Default::default()
        })
    }

    fn report(&self, outcome: Result<(), String>) {
        if let Err(e) = outcome {
            let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert(e);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            // notify_one keeps a permit if nobody waits yet.
            self.done.notify_one();
        }
    }

    async fn wait(&self) -> Result<(), KafkaWriteError> {
        if self.remaining.load(Ordering::Acquire) > 0 {
            self.done.notified().await;
        }
        let first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        match first.as_ref() {
            None => Ok(()),
            Some(e) => Err(KafkaWriteError::Delivery(e.clone())),
        }
    }
}

/// Routes librdkafka's delivery reports to the waiting batch.
pub struct DeliveryRouter;

impl ClientContext for DeliveryRouter {}

impl ProducerContext for DeliveryRouter {
    type DeliveryOpaque = Arc<BatchReports>;

    fn delivery(&self, result: &DeliveryResult<'_>, reports: Self::DeliveryOpaque) {
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
        reports.report(outcome);
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

    /// Produces every event of the batch (the node's own bytes) and waits
    /// until all are PERSISTED.
    pub async fn persist(&self, batch: &CheckedBatch) -> Result<(), KafkaWriteError> {
        let reports = BatchReports::new(batch.events.len());
        let mut seq_text = String::new();
        for (e, payload) in batch.iter_encoded() {
            let seq = e.header.as_ref().map_or(0, |h| h.seq);
            seq_text.clear();
            write!(seq_text, "{seq}").ok();
            let headers = OwnedHeaders::new_with_capacity(4)
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
                    value: Some(batch.host_id.as_str()),
                })
                .insert(Header {
                    key: HEADER_SEQ,
                    value: Some(seq_text.as_str()),
                });
            let mut record = BaseRecord::with_opaque_to(&self.topic, reports.clone())
                .key(batch.host_id.as_str())
                .payload(payload)
                .headers(headers);
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        // Back-pressure from librdkafka's queue: wait, then retry.
                        record = r;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    // Messages already queued still report into `reports`;
                    // the batch is answered RETRY and resent as a whole.
                    Err((e, _)) => return Err(e.into()),
                }
            }
        }
        reports.wait().await
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
