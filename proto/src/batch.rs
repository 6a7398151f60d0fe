//! Encoding and checked decoding of data-plane batches.
//!
//! A batch's events are kept as already-encoded `Event` bytes from the
//! spool; [`EventListBuilder`] frames them into an `EventList` without
//! decoding and re-encoding them.

use prost::Message;

use crate::limits::{
    MAX_ACK_BYTES, MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_BATCH_UNCOMPRESSED_BYTES,
    MAX_EVENT_BYTES, MAX_HOST_ID_LEN,
};
use crate::v1::{Batch, BatchAck, Compression, Event};

/// Why a batch or ack from the network was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("invalid protobuf: {0}")]
    Protobuf(String),
    #[error("unknown compression {0}")]
    UnknownCompression(i32),
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("decompressed size {actual} differs from the declared {declared}")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("batch declares {declared} events but carries {actual}")]
    CountMismatch { declared: usize, actual: usize },
    #[error("batch carries {0} events, more than the limit of {MAX_BATCH_EVENTS}")]
    TooManyEvents(usize),
    #[error("invalid host id {0:?}")]
    BadHostId(String),
    #[error("event {index}: {reason}")]
    BadEvent { index: usize, reason: String },
}

/// A batch that passed every check: all events belong to `host_id`, carry a
/// header and a non-zero sequence number, and fit the size limits.
///
/// It keeps each event's bytes exactly as the node encoded them, so a sink
/// forwards what the node spooled without re-encoding it (fields added by a
/// newer node survive an older sink).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedBatch {
    pub host_id: String,
    pub batch_id: u64,
    pub events: Vec<Event>,
    plain: Vec<u8>,
    spans: Vec<(usize, usize)>,
}

impl CheckedBatch {
    /// The encoded bytes of event `i`, as the node sent them.
    pub fn encoded(&self, i: usize) -> Option<&[u8]> {
        self.spans.get(i).map(|&(a, b)| &self.plain[a..b])
    }

    /// Every event with its encoded bytes.
    pub fn iter_encoded(&self) -> impl Iterator<Item = (&Event, &[u8])> {
        self.events
            .iter()
            .zip(self.spans.iter().map(|&(a, b)| &self.plain[a..b]))
    }
}

/// Frames encoded `Event`s into an encoded `EventList` (field 1, repeated).
#[derive(Debug, Default)]
pub struct EventListBuilder {
    buf: Vec<u8>,
    count: usize,
}

impl EventListBuilder {
    /// Appends one encoded `Event`.
    pub fn push_encoded(&mut self, event: &[u8]) {
        // Field 1, wire type 2 (length-delimited).
        self.buf.push(0x0a);
        prost::encoding::encode_varint(event.len() as u64, &mut self.buf);
        self.buf.extend_from_slice(event);
        self.count += 1;
    }

    /// Number of events appended so far.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when no event was appended.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded size of the `EventList` so far.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// Compresses the list and wraps it into an encoded `Batch`.
    pub fn finish(self, host_id: &str, batch_id: u64) -> Vec<u8> {
        let compressed = lz4_flex::block::compress(&self.buf);
        let batch = Batch {
            host_id: host_id.to_owned(),
            batch_id,
            compression: Compression::Lz4 as i32,
            uncompressed_len: self.buf.len() as u32,
            event_count: self.count as u32,
            payload: compressed,
        };
        batch.encode_to_vec()
    }
}

/// Decodes and checks a batch received from the network.
pub fn decode_batch(bytes: &[u8]) -> Result<CheckedBatch, DecodeError> {
    if bytes.len() > MAX_BATCH_BYTES {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit: MAX_BATCH_BYTES,
        });
    }
    let batch = Batch::decode(bytes).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    check_host_id(&batch.host_id)?;
    let declared = batch.uncompressed_len as usize;
    if declared > MAX_BATCH_UNCOMPRESSED_BYTES {
        return Err(DecodeError::TooLarge {
            len: declared,
            limit: MAX_BATCH_UNCOMPRESSED_BYTES,
        });
    }
    if batch.event_count as usize > MAX_BATCH_EVENTS {
        return Err(DecodeError::TooManyEvents(batch.event_count as usize));
    }
    let plain = match Compression::try_from(batch.compression) {
        Ok(Compression::None) => batch.payload,
        Ok(Compression::Lz4) => {
            // decompress() allocates exactly `declared` bytes, which is bounded above.
            lz4_flex::block::decompress(&batch.payload, declared)
                .map_err(|e| DecodeError::Decompress(e.to_string()))?
        }
        Err(_) => return Err(DecodeError::UnknownCompression(batch.compression)),
    };
    if plain.len() != declared {
        return Err(DecodeError::LengthMismatch {
            declared,
            actual: plain.len(),
        });
    }
    let declared_count = batch.event_count as usize;
    let spans = split_event_list(&plain, declared_count)?;
    let mut events = Vec::with_capacity(spans.len());
    for (index, &(a, b)) in spans.iter().enumerate() {
        let event = Event::decode(&plain[a..b]).map_err(|e| DecodeError::BadEvent {
            index,
            reason: e.to_string(),
        })?;
        check_event(&event, &batch.host_id, b - a)
            .map_err(|reason| DecodeError::BadEvent { index, reason })?;
        events.push(event);
    }
    Ok(CheckedBatch {
        host_id: batch.host_id,
        batch_id: batch.batch_id,
        events,
        plain,
        spans,
    })
}

/// Splits an encoded `EventList` into the byte ranges of its events. Only
/// field 1 (length-delimited) is allowed; anything else is malformed.
fn split_event_list(plain: &[u8], declared: usize) -> Result<Vec<(usize, usize)>, DecodeError> {
    let mut spans = Vec::with_capacity(declared.min(MAX_BATCH_EVENTS));
    let mut rest = plain;
    while !rest.is_empty() {
        let tag = prost::encoding::decode_varint(&mut rest)
            .map_err(|e| DecodeError::Protobuf(e.to_string()))?;
        if tag != 0x0a {
            return Err(DecodeError::Protobuf(format!(
                "unexpected field tag {tag} in EventList"
            )));
        }
        let len = prost::encoding::decode_varint(&mut rest)
            .map_err(|e| DecodeError::Protobuf(e.to_string()))?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= rest.len())
            .ok_or_else(|| DecodeError::Protobuf("event length beyond the list".into()))?;
        let start = plain.len() - rest.len();
        spans.push((start, start + len));
        if spans.len() > declared {
            break;
        }
        rest = &rest[len..];
    }
    if spans.len() != declared {
        return Err(DecodeError::CountMismatch {
            declared,
            actual: spans.len(),
        });
    }
    Ok(spans)
}

/// Decodes an ack received from the network.
pub fn decode_ack(bytes: &[u8]) -> Result<BatchAck, DecodeError> {
    if bytes.len() > MAX_ACK_BYTES {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit: MAX_ACK_BYTES,
        });
    }
    BatchAck::decode(bytes).map_err(|e| DecodeError::Protobuf(e.to_string()))
}

/// Checks that a host id is printable, bounded and non-empty. Host ids end up
/// in Kafka keys, file names of certificates and terminal output.
pub fn check_host_id(host_id: &str) -> Result<(), DecodeError> {
    let ok = !host_id.is_empty()
        && host_id.len() <= MAX_HOST_ID_LEN
        && host_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(DecodeError::BadHostId(host_id.chars().take(64).collect()))
    }
}

fn check_event(event: &Event, host_id: &str, len: usize) -> Result<(), String> {
    let header = event.header.as_ref().ok_or("missing header")?;
    if header.host_id != host_id {
        return Err(format!(
            "host id {:?} differs from the batch's",
            header.host_id.chars().take(64).collect::<String>()
        ));
    }
    if header.seq == 0 {
        return Err("sequence number 0".into());
    }
    if event.body.is_none() {
        return Err("missing body".into());
    }
    if len > MAX_EVENT_BYTES {
        return Err(format!("{len} bytes, limit {MAX_EVENT_BYTES}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{event::Body, EventHeader, ProcessExec};

    fn event(host: &str, seq: u64) -> Event {
        Event {
            header: Some(EventHeader {
                host_id: host.into(),
                seq,
                pid: 42,
                ..Default::default()
            }),
            body: Some(Body::ProcessExec(ProcessExec {
                filename: "/bin/true".into(),
                argv: vec!["true".into(), format!("arg{seq}")],
                ..Default::default()
            })),
        }
    }

    fn encode(events: &[Event], host: &str) -> Vec<u8> {
        let mut b = EventListBuilder::default();
        for e in events {
            b.push_encoded(&e.encode_to_vec());
        }
        b.finish(host, 7)
    }

    #[test]
    fn round_trip_keeps_every_event() {
        let events: Vec<_> = (1..=100).map(|s| event("h1", s)).collect();
        let checked = decode_batch(&encode(&events, "h1")).expect("valid batch");
        assert_eq!(checked.batch_id, 7);
        assert_eq!(checked.host_id, "h1");
        assert_eq!(checked.events, events);
        for (i, e) in events.iter().enumerate() {
            assert_eq!(checked.encoded(i), Some(e.encode_to_vec().as_slice()));
        }
    }

    #[test]
    fn unknown_event_fields_are_forwarded_untouched() {
        // An event from a newer node: a field this version does not know.
        let mut bytes = event("h1", 1).encode_to_vec();
        bytes.extend_from_slice(&[0xb8, 0x3e, 0x07]); // field 999, varint 7
        let mut b = EventListBuilder::default();
        b.push_encoded(&bytes);
        let checked = decode_batch(&b.finish("h1", 1)).expect("valid batch");
        assert_eq!(checked.encoded(0), Some(bytes.as_slice()));
    }

    #[test]
    fn foreign_fields_in_the_list_are_rejected() {
        let mut b = EventListBuilder::default();
        b.push_encoded(&event("h1", 1).encode_to_vec());
        let mut batch = Batch::decode(b.finish("h1", 1).as_slice()).unwrap();
        let mut plain =
            lz4_flex::block::decompress(&batch.payload, batch.uncompressed_len as usize).unwrap();
        plain.extend_from_slice(&[0x10, 0x01]); // field 2, varint
        batch.uncompressed_len = plain.len() as u32;
        batch.event_count = 1;
        batch.payload = lz4_flex::block::compress(&plain);
        let err = decode_batch(&batch.encode_to_vec()).unwrap_err();
        assert!(matches!(err, DecodeError::Protobuf(_)), "{err}");
    }

    #[test]
    fn event_of_another_host_is_rejected() {
        let events = vec![event("h1", 1), event("h2", 2)];
        let err = decode_batch(&encode(&events, "h1")).unwrap_err();
        assert!(
            matches!(err, DecodeError::BadEvent { index: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn zero_sequence_is_rejected() {
        let err = decode_batch(&encode(&[event("h1", 0)], "h1")).unwrap_err();
        assert!(
            matches!(err, DecodeError::BadEvent { index: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn oversized_input_is_rejected_before_decoding() {
        let big = vec![0u8; MAX_BATCH_BYTES + 1];
        assert!(matches!(
            decode_batch(&big),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn declared_length_bomb_is_rejected() {
        let batch = Batch {
            host_id: "h1".into(),
            batch_id: 1,
            compression: Compression::Lz4 as i32,
            uncompressed_len: u32::MAX,
            event_count: 1,
            payload: vec![0; 10],
        };
        let err = decode_batch(&batch.encode_to_vec()).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn count_mismatch_is_rejected() {
        let mut b = EventListBuilder::default();
        b.push_encoded(&event("h1", 1).encode_to_vec());
        let mut batch = Batch::decode(b.finish("h1", 1).as_slice()).unwrap();
        batch.event_count = 2;
        let err = decode_batch(&batch.encode_to_vec()).unwrap_err();
        assert!(matches!(err, DecodeError::CountMismatch { .. }), "{err}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for seed in 0u8..=255 {
            let junk: Vec<u8> = (0..512u32)
                .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
                .collect();
            let _ = decode_batch(&junk);
            let _ = decode_ack(&junk);
        }
    }

    #[test]
    fn host_ids_are_restricted() {
        assert!(check_host_id("web-01.prod_eu").is_ok());
        assert!(check_host_id("").is_err());
        assert!(check_host_id("a b").is_err());
        assert!(check_host_id("x\u{1b}[2J").is_err());
        assert!(check_host_id(&"a".repeat(254)).is_err());
    }
}
