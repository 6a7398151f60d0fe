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
}

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
                let Ok(m) = r else { continue };
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
                    }),
                    Err(_) => self.undecodable += 1,
                }
            }
        }
        done(&self.records)
    }
}
