//! Kafka delivery: one message per event, keyed by host id, with the
//! origin the sink checked in a header (and, as options, routing headers
//! and the origin's proof). The producer is idempotent with acks=all, and a
//! batch counts as persisted only when every message's delivery report
//! says PERSISTED (librdkafka's `rd_kafka_message_status`), not merely "no
//! error".

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use starling_proto::batch::CheckedBatch;
use tokio::sync::Notify;

use crate::backend::Provenance;
use crate::config::KafkaSection;

/// With `kafka.routing_headers`: the payload's protobuf message type.
pub const HEADER_SCHEMA: &str = "starling-schema";
/// With `kafka.routing_headers`: the event kind (see
/// `starling_proto::event_kind`).
pub const HEADER_KIND: &str = "starling-kind";
/// With `kafka.routing_headers`: the event's host id (also the key).
pub const HEADER_HOST: &str = "starling-host";
/// With `kafka.routing_headers`: the event's per-host sequence number
/// (decimal).
pub const HEADER_SEQ: &str = "starling-seq";
/// Kafka header with the lowercase hex SHA-256 of the certificate whose
/// signature over the event's batch the sink checked: the event is the
/// origin host's own (docs/events.md, "Checking the origin").
pub const HEADER_ORIGIN: &str = "starling-origin";
/// With `kafka.origin_proof`: the batch's signed header (an encoded
/// `starling.v1.BatchHeader`).
pub const HEADER_BATCH_HEADER: &str = "starling-batch-header";
/// With `kafka.origin_proof`: the origin's signature over the header.
pub const HEADER_BATCH_SIGNATURE: &str = "starling-batch-signature";
/// With `kafka.origin_proof`: the origin's certificate (DER).
pub const HEADER_ORIGIN_CERTIFICATE: &str = "starling-origin-certificate";

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
    /// A report said the producer's identity is no longer usable.
    identity_lost: AtomicBool,
    /// A report carried an error from the broker (not a local one such as
    /// a timeout or a broken connection).
    broker_refused: AtomicBool,
    done: Notify,
}

/// Delivery errors after which an idempotent producer keeps failing: its
/// producer id or epoch is fenced or unknown to the broker. librdkafka does
/// not always raise these as fatal for a non-transactional producer.
fn loses_producer_identity(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::UnknownProducerId
            | RDKafkaErrorCode::OutOfOrderSequenceNumber
            | RDKafkaErrorCode::InvalidProducerIdMapping
            | RDKafkaErrorCode::Fatal
    )
}

/// Whether `code` came from the broker: librdkafka's own (local) errors
/// are numbered from -200 to -100.
fn is_broker_error(code: RDKafkaErrorCode) -> bool {
    code as i32 > RDKafkaErrorCode::End as i32
}

/// Batches refused by the broker in a row after which the producer is
/// replaced even though librdkafka does not call it dead: a broker that
/// keeps refusing one producer's writes may be refusing its identity (for
/// example an epoch the producer bumped by itself), and a fresh producer
/// costs one InitProducerId request.
const REPLACE_AFTER_REFUSALS: u32 = 3;

impl BatchReports {
    fn new(messages: usize) -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(messages),
            ..Default::default()
        })
    }

    fn report(&self, outcome: Result<(), (String, Option<RDKafkaErrorCode>)>) {
        if let Err((e, code)) = outcome {
            if code.is_some_and(loses_producer_identity) {
                self.identity_lost.store(true, Ordering::Release);
            }
            if code.is_some_and(is_broker_error) {
                self.broker_refused.store(true, Ordering::Release);
            }
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
                    Err((format!("message status {status:?}, not PERSISTED"), None))
                }
            }
            Err((e, _)) => Err((e.to_string(), e.rdkafka_error_code())),
        };
        reports.report(outcome);
    }
}

type SinkProducer = ThreadedProducer<DeliveryRouter>;

/// Prometheus counter of producers replaced (see `KafkaWriter`).
pub const PRODUCER_RESTARTS: &str = "starling_sink_kafka_producer_restarts_total";

/// The sink's Kafka producer. An idempotent producer that hits a fatal
/// error (fenced after timeouts, sequence gaps) never recovers by itself;
/// the writer replaces it (also after the broker refused several batches
/// in a row), and the batches that failed are answered RETRY so their
/// nodes send them again.
pub struct KafkaWriter {
    producer: RwLock<Arc<SinkProducer>>,
    config: ClientConfig,
    topic: String,
    /// Write kind, sequence number, host and schema into every message's
    /// headers.
    routing_headers: bool,
    /// Write the origin's seal into every message's headers.
    origin_proof: bool,
    /// Batches in a row the broker refused (see [`REPLACE_AFTER_REFUSALS`]).
    refusals_in_a_row: AtomicU32,
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
            .set("linger.ms", "20")
            .set("message.timeout.ms", cfg.delivery_timeout_ms.to_string());
        let producer: SinkProducer = c.create_with_context(DeliveryRouter)?;
        if cfg.create_topic {
            if let Err(e) = ensure_topic(cfg).await {
                tracing::warn!(error = %e, topic = %cfg.topic, "could not create the topic; continuing (it may exist or be auto-created)");
            }
        }
        Ok(Self {
            producer: RwLock::new(Arc::new(producer)),
            config: c,
            topic: cfg.topic.clone(),
            routing_headers: cfg.routing_headers,
            origin_proof: cfg.origin_proof,
            refusals_in_a_row: AtomicU32::new(0),
        })
    }

    fn current(&self) -> Arc<SinkProducer> {
        self.producer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces `failed` if it is dead: librdkafka reports a fatal error,
    /// a delivery report said its producer identity is gone
    /// (`identity_lost`), or the broker refused [`REPLACE_AFTER_REFUSALS`]
    /// batches in a row (`refused_too_often`). Returns true when it was
    /// replaced (or already had been by another batch).
    fn replace_if_dead(
        &self,
        failed: &Arc<SinkProducer>,
        identity_lost: bool,
        refused_too_often: bool,
    ) -> bool {
        let (code, reason) = match failed.client().fatal_error() {
            Some(fatal) => fatal,
            None if identity_lost => (
                RDKafkaErrorCode::ProducerFenced,
                "producer identity fenced or unknown to the broker".to_owned(),
            ),
            None if refused_too_often => (
                RDKafkaErrorCode::Unknown,
                format!("the broker refused {REPLACE_AFTER_REFUSALS} batches in a row"),
            ),
            None => return false,
        };
        let mut slot = self.producer.write().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&slot, failed) {
            return true;
        }
        match self
            .config
            .create_with_context::<_, SinkProducer>(DeliveryRouter)
        {
            Ok(fresh) => {
                tracing::warn!(?code, %reason, "kafka producer replaced");
                self.refusals_in_a_row.store(0, Ordering::Release);
                metrics::counter!(PRODUCER_RESTARTS).increment(1);
                let old = std::mem::replace(&mut *slot, Arc::new(fresh));
                // Dropping a producer waits for its queue; keep that off
                // the async workers.
                std::thread::spawn(move || drop(old));
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "kafka producer is dead and a new one could not be made");
                false
            }
        }
    }

    /// Test aid: raises a librdkafka fatal error on the current producer
    /// (`rd_kafka_test_fatal_error`), to exercise the recovery path.
    pub fn simulate_fatal_error(&self) {
        let producer = self.current();
        let reason = c"simulated by a test";
        // SAFETY: the producer's native handle is live while we hold the Arc;
        // the reason is a valid NUL-terminated string.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                producer.client().native_ptr(),
                rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__FENCED,
                reason.as_ptr(),
            );
        }
    }

    /// Produces every event of the batch (the node's own bytes) and waits
    /// until all are PERSISTED.
    pub async fn persist(
        &self,
        batch: &CheckedBatch,
        provenance: &Provenance<'_>,
    ) -> Result<(), KafkaWriteError> {
        let producer = self.current();
        let reports = BatchReports::new(batch.len());
        let result = self.produce(&producer, batch, provenance, &reports).await;
        if result.is_ok() {
            self.refusals_in_a_row.store(0, Ordering::Release);
        } else {
            let lost = reports.identity_lost.load(Ordering::Acquire);
            let refused = reports.broker_refused.load(Ordering::Acquire)
                && self.refusals_in_a_row.fetch_add(1, Ordering::AcqRel) + 1
                    >= REPLACE_AFTER_REFUSALS;
            self.replace_if_dead(&producer, lost, refused);
        }
        result
    }

    async fn produce(
        &self,
        producer: &SinkProducer,
        batch: &CheckedBatch,
        provenance: &Provenance<'_>,
        reports: &Arc<BatchReports>,
    ) -> Result<(), KafkaWriteError> {
        // Each header costs librdkafka about 0.1 us per message to copy,
        // write and free, and the broker its bytes (docs/decisions.md,
        // "Kafka"): the origin always, the rest when asked for.
        let capacity =
            1 + 4 * usize::from(self.routing_headers) + 3 * usize::from(self.origin_proof);
        // The messages' timestamp (CreateTime), read once per batch:
        // librdkafka otherwise reads the clock for every message.
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut seq_text = String::new();
        for (e, payload) in batch.iter_encoded() {
            let mut headers = OwnedHeaders::new_with_capacity(capacity).insert(Header {
                key: HEADER_ORIGIN,
                value: Some(provenance.fingerprint),
            });
            if self.routing_headers {
                seq_text.clear();
                write!(seq_text, "{}", e.seq).ok();
                headers = headers
                    .insert(Header {
                        key: HEADER_KIND,
                        value: Some(e.kind),
                    })
                    .insert(Header {
                        key: HEADER_SEQ,
                        value: Some(seq_text.as_str()),
                    })
                    .insert(Header {
                        key: HEADER_HOST,
                        value: Some(batch.host_id.as_str()),
                    })
                    .insert(Header {
                        key: HEADER_SCHEMA,
                        value: Some(starling_proto::SCHEMA_NAME),
                    });
            }
            if self.origin_proof {
                let seal = provenance.seal;
                headers = headers
                    .insert(Header {
                        key: HEADER_BATCH_HEADER,
                        value: Some(seal.header.as_slice()),
                    })
                    .insert(Header {
                        key: HEADER_BATCH_SIGNATURE,
                        value: Some(seal.signature.as_slice()),
                    })
                    .insert(Header {
                        key: HEADER_ORIGIN_CERTIFICATE,
                        value: Some(seal.certificate.as_slice()),
                    });
            }
            let mut record = BaseRecord::with_opaque_to(&self.topic, reports.clone())
                .key(batch.host_id.as_str())
                .payload(payload)
                .headers(headers)
                .timestamp(now_ms);
            loop {
                match producer.send(record) {
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
        if let Err(e) = self.current().flush(timeout) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_tell_a_lost_identity_and_a_broker_refusal_from_a_timeout() {
        let timeout = BatchReports::new(1);
        timeout.report(Err((
            "timed out".into(),
            Some(RDKafkaErrorCode::MessageTimedOut),
        )));
        assert!(timeout.wait().await.is_err());
        assert!(!timeout.identity_lost.load(Ordering::Acquire));

        let fenced = BatchReports::new(2);
        fenced.report(Ok(()));
        fenced.report(Err((
            "fenced".into(),
            Some(RDKafkaErrorCode::ProducerFenced),
        )));
        assert!(fenced.wait().await.is_err());
        assert!(fenced.identity_lost.load(Ordering::Acquire));

        let refused = BatchReports::new(1);
        refused.report(Err(("unknown".into(), Some(RDKafkaErrorCode::Unknown))));
        assert!(refused.wait().await.is_err());
        assert!(refused.broker_refused.load(Ordering::Acquire));
        assert!(!timeout.broker_refused.load(Ordering::Acquire));

        let fine = BatchReports::new(2);
        fine.report(Ok(()));
        fine.report(Ok(()));
        assert!(fine.wait().await.is_ok());
    }
}
