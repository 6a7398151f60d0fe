//! Reads the Starling topic back with a real Kafka client (librdkafka), as a
//! downstream consumer would.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use starling_proto::v1::{event::Body, Event};

/// One message of the topic, decoded.
#[derive(Debug, Clone)]
pub struct ConsumedEvent {
    /// The message key (the host id).
    pub key: String,
    /// Every header, as the bytes the sink wrote.
    pub headers: BTreeMap<String, Vec<u8>>,
    /// The payload, decoded.
    pub event: Event,
    /// The payload as it arrived.
    pub payload: Vec<u8>,
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
}

impl ConsumedEvent {
    /// A header as text (None when absent or not UTF-8).
    pub fn header(&self, key: &str) -> Option<&str> {
        std::str::from_utf8(self.headers.get(key)?).ok()
    }
}

/// The argv of an exec event (empty for any other kind): tests find their
/// own processes by a marker argument.
pub fn exec_argv(event: &Event) -> &[String] {
    match &event.body {
        Some(Body::ProcessExec(x)) => &x.argv,
        _ => &[],
    }
}

/// True when `event` is an exec whose first argument is `marker`.
pub fn is_marked_exec(event: &Event, marker: &str) -> bool {
    exec_argv(event).get(1).map(String::as_str) == Some(marker)
}

/// A consumer assigned to every partition of a topic from the beginning.
pub struct KafkaReader {
    consumer: BaseConsumer,
    /// Everything read so far.
    pub records: Vec<ConsumedEvent>,
    /// Messages whose payload did not decode as an Event.
    pub undecodable: usize,
    /// Errors the consumer reported (a fetch that failed, a partition it
    /// could not read), the first [`KEPT_ERRORS`] of them, so a test that
    /// misses records can say why instead of only that they are missing.
    pub errors: Vec<String>,
    /// How many errors the consumer reported in all.
    pub error_count: usize,
    topic: String,
    partitions: i32,
}

/// How many consumer errors a [`KafkaReader`] keeps the text of.
pub const KEPT_ERRORS: usize = 20;

impl KafkaReader {
    /// Waits up to 30 s for the topic to exist, then assigns its partitions.
    pub fn new(bootstrap: &str, topic: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "starling-test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .context("creating the Kafka consumer")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let partitions = loop {
            let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5));
            if let Ok(md) = md {
                if let Some(t) = md.topics().iter().find(|t| t.name() == topic) {
                    if !t.partitions().is_empty() {
                        break t.partitions().len();
                    }
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!("topic {topic} did not appear on {bootstrap}");
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        Ok(Self {
            consumer,
            records: Vec::new(),
            undecodable: 0,
            errors: Vec::new(),
            error_count: 0,
            topic: topic.to_owned(),
            partitions: partitions as i32,
        })
    }

    /// Reads until every sequence number `1..=last` of `host` has arrived,
    /// for up to `timeout`. On failure returns the first missing numbers.
    pub fn wait_for_sequence(
        &mut self,
        host: &str,
        last: u64,
        timeout: Duration,
    ) -> Result<(), Vec<u64>> {
        let mut seqs = std::collections::BTreeSet::new();
        let complete = self.poll_until(timeout, |recs| {
            seqs = recs
                .iter()
                .filter(|r| r.key == host)
                .filter_map(|r| r.event.header.as_ref().map(|h| h.seq))
                .collect();
            (1..=last).all(|s| seqs.contains(&s))
        });
        if complete {
            Ok(())
        } else {
            Err((1..=last).filter(|s| !seqs.contains(s)).take(20).collect())
        }
    }

    /// What this reader saw, for a failure message: per partition the
    /// broker's low and high watermarks and the offsets read, and the
    /// consumer's errors.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "{} records read ({} undecodable), {} consumer errors",
            self.records.len(),
            self.undecodable,
            self.error_count
        );
        for p in 0..self.partitions {
            let marks = self
                .consumer
                .fetch_watermarks(&self.topic, p, Duration::from_secs(5))
                .map(|(lo, hi)| format!("watermarks {lo}..{hi}"))
                .unwrap_or_else(|e| format!("watermarks unknown ({e})"));
            let offsets = self.records.iter().filter(|r| r.partition == p);
            let (n, lo, hi) = offsets.fold((0, i64::MAX, i64::MIN), |(n, lo, hi), r| {
                (n + 1, lo.min(r.offset), hi.max(r.offset))
            });
            out.push_str(&format!("\n  partition {p}: {marks}, {n} read"));
            if n > 0 {
                out.push_str(&format!(" (offsets {lo}..={hi})"));
            }
        }
        for e in &self.errors {
            out.push_str(&format!("\n  error: {e}"));
        }
        out
    }

    /// Reads for up to `timeout`, stopping early once `done` holds.
    pub fn poll_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[ConsumedEvent]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if done(&self.records) {
                return true;
            }
            while let Some(r) = self.consumer.poll(Duration::from_millis(100)) {
                let m = match r {
                    Ok(m) => m,
                    Err(e) => {
                        self.error_count += 1;
                        if self.errors.len() < KEPT_ERRORS {
                            self.errors.push(e.to_string());
                        }
                        continue;
                    }
                };
                let key = m
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default();
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for hd in h.iter() {
                        headers.insert(hd.key.to_owned(), hd.value.unwrap_or_default().to_vec());
                    }
                }
                let payload = m.payload().unwrap_or_default();
                match Event::decode(payload) {
                    Ok(event) => self.records.push(ConsumedEvent {
                        key,
                        headers,
                        event,
                        payload: payload.to_vec(),
                        partition: m.partition(),
                        offset: m.offset(),
                    }),
                    Err(_) => self.undecodable += 1,
                }
            }
        }
        done(&self.records)
    }
}
