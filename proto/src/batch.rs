//! Encoding and checked decoding of data-plane batches and their acks.
//!
//! A batch's events are kept as already-encoded `Event` bytes from the
//! spool; [`EventListBuilder`] frames them into an `EventList` without
//! decoding and re-encoding them, and [`UnsignedBatch`] is what the origin
//! signs. A receiver checks in two steps: [`open_batch`] reads the envelope
//! and the signed header (cheap: a relay stops there), and
//! [`OpenedBatch::unseal`] decompresses the payload and checks it against
//! the header, after the caller has checked the signature.
//!
//! The signatures themselves are made and checked in
//! `starling_mesh::origin`; this module fixes the bytes they cover.

use prost::Message;

use crate::limits::{
    MAX_ACK_BYTES, MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_BATCH_HEADER_BYTES,
    MAX_BATCH_UNCOMPRESSED_BYTES, MAX_CERTIFICATE_BYTES, MAX_HOST_ID_LEN, MAX_RECEIPT_BYTES,
    MAX_SIGNATURE_BYTES,
};
use crate::v1::{Batch, BatchAck, BatchHeader, BatchReceipt, Compression};

mod event_list;
use event_list::check_event_list;

/// Prefix of what an origin signs for a batch: the header bytes follow.
pub const BATCH_SIGNING_DOMAIN: &[u8] = b"starling.v1.batch\0";
/// Prefix of what a sink signs for a receipt: the receipt bytes follow.
pub const RECEIPT_SIGNING_DOMAIN: &[u8] = b"starling.v1.receipt\0";

/// Why a batch, an ack or a receipt from the network was refused. Only the
/// message at fault is affected; nothing else in flight is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Larger than its limit; refused before it was decoded.
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Its size, or the size it declares.
        len: usize,
        /// The limit it broke.
        limit: usize,
    },
    /// Not valid protobuf for its message type.
    #[error("invalid protobuf: {0}")]
    Protobuf(String),
    /// A compression this version does not know.
    #[error("unknown compression {0}")]
    UnknownCompression(i32),
    /// The payload is not valid LZ4.
    #[error("decompression failed: {0}")]
    Decompress(String),
    /// The header contradicts itself or breaks a limit.
    #[error("bad batch header: {0}")]
    BadHeader(String),
    /// The payload is not what the signed header describes: altered on
    /// the way, if the signature was good.
    #[error("payload does not match the signed header: {0}")]
    PayloadMismatch(String),
    /// The list holds another number of events than its header declares.
    #[error("batch declares {declared} events but carries {actual}")]
    CountMismatch {
        /// What the header says.
        declared: usize,
        /// What the list holds.
        actual: usize,
    },
    /// A host id that is empty, too long or not printable.
    #[error("invalid host id {0:?}")]
    BadHostId(String),
    /// One event is malformed or does not belong in this batch.
    #[error("event {index}: {reason}")]
    BadEvent {
        /// Its position in the batch.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
}

impl DecodeError {
    /// True when a payload does not match its signed header's length or
    /// digest: once the signature is good, the payload was changed after
    /// signing, on the way. Other errors of [`OpenedBatch::unseal`] are the
    /// origin's own (the digest matched what it signed).
    pub fn is_altered(&self) -> bool {
        matches!(
            self,
            DecodeError::PayloadMismatch(_) | DecodeError::Decompress(_)
        )
    }
}

/// The bytes an origin signs for a batch header.
pub fn header_signing_bytes(header: &[u8]) -> Vec<u8> {
    [BATCH_SIGNING_DOMAIN, header].concat()
}

/// The bytes a sink signs for a receipt.
pub fn receipt_signing_bytes(receipt: &[u8]) -> Vec<u8> {
    [RECEIPT_SIGNING_DOMAIN, receipt].concat()
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

/// Frames encoded `Event`s into an encoded `EventList` (field 1, repeated).
#[derive(Debug, Default)]
pub struct EventListBuilder {
    buf: Vec<u8>,
    count: usize,
    first_seq: u64,
    last_seq: u64,
}

impl EventListBuilder {
    /// Appends one encoded `Event` whose sequence number is `seq` (above
    /// every one appended before).
    pub fn push_encoded(&mut self, seq: u64, event: &[u8]) {
        frame_event(&mut self.buf, event);
        if self.count == 0 {
            self.first_seq = seq;
        }
        self.last_seq = seq;
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

    /// Compresses the list and writes the header the origin signs.
    pub fn finish(self, host_id: &str, batch_id: u64, signed_at_unix_ms: u64) -> UnsignedBatch {
        let payload = lz4_flex::block::compress(&self.buf);
        let header = BatchHeader {
            host_id: host_id.to_owned(),
            batch_id,
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            event_count: self.count as u32,
            list_len: self.buf.len() as u32,
            list_sha256: sha256(&self.buf),
            signed_at_unix_ms,
            payload_sha256: sha256(&payload),
        };
        UnsignedBatch {
            header_bytes: header.encode_to_vec(),
            header,
            payload,
        }
    }
}

/// Appends `event` to `list` as field 1 of an `EventList`: how a batch's
/// list is built, and how a consumer rebuilds it to check a signature.
pub fn frame_event(list: &mut Vec<u8>, event: &[u8]) {
    // Field 1, wire type 2 (length-delimited).
    list.push(0x0a);
    prost::encoding::encode_varint(event.len() as u64, list);
    list.extend_from_slice(event);
}

/// A batch with its header written and not yet signed.
#[derive(Debug, Clone)]
pub struct UnsignedBatch {
    header: BatchHeader,
    header_bytes: Vec<u8>,
    payload: Vec<u8>,
}

impl UnsignedBatch {
    /// The same events under another batch id and signing time, without
    /// compressing and hashing them again: for a sender that sends one
    /// list many times over (a benchmark).
    pub fn renumbered(&self, batch_id: u64, signed_at_unix_ms: u64) -> UnsignedBatch {
        let header = BatchHeader {
            batch_id,
            signed_at_unix_ms,
            ..self.header.clone()
        };
        UnsignedBatch {
            header_bytes: header.encode_to_vec(),
            header,
            payload: self.payload.clone(),
        }
    }

    /// The encoded header, as it will be signed and sent.
    pub fn header_bytes(&self) -> &[u8] {
        &self.header_bytes
    }

    /// What the origin signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        header_signing_bytes(&self.header_bytes)
    }

    /// The compressed event list, as it will be sent.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The encoded `Batch`, with the origin's signature and certificate.
    pub fn into_wire(self, signature: Vec<u8>, certificate: Vec<u8>) -> Vec<u8> {
        Batch {
            header: self.header_bytes,
            signature,
            certificate,
            compression: Compression::Lz4 as i32,
            payload: self.payload,
        }
        .encode_to_vec()
    }
}

/// A batch whose envelope and header passed their checks; its signature
/// and payload are not checked yet.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenedBatch {
    /// The signed header, decoded.
    pub header: BatchHeader,
    header_bytes: Vec<u8>,
    /// The origin's signature over [`OpenedBatch::signing_bytes`].
    pub signature: Vec<u8>,
    /// The origin's certificate (DER), as sent.
    pub certificate: Vec<u8>,
    compression: Compression,
    payload: Vec<u8>,
}

/// Reads a batch's envelope and signed header and checks them against
/// the limits; the payload stays compressed.
pub fn open_batch(bytes: &[u8]) -> Result<OpenedBatch, DecodeError> {
    if bytes.len() > MAX_BATCH_BYTES {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit: MAX_BATCH_BYTES,
        });
    }
    let batch = Batch::decode(bytes).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    for (len, limit) in [
        (batch.header.len(), MAX_BATCH_HEADER_BYTES),
        (batch.signature.len(), MAX_SIGNATURE_BYTES),
        (batch.certificate.len(), MAX_CERTIFICATE_BYTES),
    ] {
        if len > limit {
            return Err(DecodeError::TooLarge { len, limit });
        }
    }
    let header = BatchHeader::decode(batch.header.as_slice())
        .map_err(|e| DecodeError::BadHeader(e.to_string()))?;
    check_header(&header)?;
    let compression = Compression::try_from(batch.compression)
        .map_err(|_| DecodeError::UnknownCompression(batch.compression))?;
    Ok(OpenedBatch {
        header,
        header_bytes: batch.header,
        signature: batch.signature,
        certificate: batch.certificate,
        compression,
        payload: batch.payload,
    })
}

fn check_header(h: &BatchHeader) -> Result<(), DecodeError> {
    check_host_id(&h.host_id)?;
    let bad = |why: String| Err(DecodeError::BadHeader(why));
    let count = h.event_count as usize;
    if count == 0 || count > MAX_BATCH_EVENTS {
        return bad(format!("{count} events (1 to {MAX_BATCH_EVENTS} allowed)"));
    }
    if h.list_len as usize > MAX_BATCH_UNCOMPRESSED_BYTES {
        return Err(DecodeError::TooLarge {
            len: h.list_len as usize,
            limit: MAX_BATCH_UNCOMPRESSED_BYTES,
        });
    }
    if h.first_seq == 0 || h.last_seq < h.first_seq {
        return bad(format!(
            "sequence range {}..={} (numbers start at 1)",
            h.first_seq, h.last_seq
        ));
    }
    if h.last_seq - h.first_seq < count as u64 - 1 {
        return bad(format!(
            "{count} increasing sequence numbers cannot fit in {}..={}",
            h.first_seq, h.last_seq
        ));
    }
    if h.list_sha256.len() != 32 || h.payload_sha256.len() != 32 {
        return bad(format!(
            "digests of {} and {} bytes (32 expected)",
            h.list_sha256.len(),
            h.payload_sha256.len()
        ));
    }
    Ok(())
}

impl OpenedBatch {
    /// The header bytes exactly as signed.
    pub fn header_bytes(&self) -> &[u8] {
        &self.header_bytes
    }

    /// What the origin's signature must cover.
    pub fn signing_bytes(&self) -> Vec<u8> {
        header_signing_bytes(&self.header_bytes)
    }

    /// Checks the payload against the header's digest, decompresses it,
    /// and checks the list: its length, and every event's host, sequence
    /// number and kind. Call it once the signature is checked.
    ///
    /// The list's own digest (`list_sha256`) is not checked here: the
    /// payload digest already proves the list is what the origin sent, and
    /// the list digest is there for consumers that check events end to
    /// end. An origin that signs a list digest that does not fit its list
    /// only makes its own events fail that check.
    pub fn unseal(self) -> Result<CheckedBatch, DecodeError> {
        if sha256(&self.payload) != self.header.payload_sha256 {
            return Err(DecodeError::PayloadMismatch(
                "the payload's SHA-256 differs from the signed one".into(),
            ));
        }
        let declared = self.header.list_len as usize;
        let plain = match self.compression {
            Compression::None => self.payload,
            Compression::Lz4 => lz4_decompress(&self.payload, declared)?,
        };
        if plain.len() != declared {
            return Err(DecodeError::PayloadMismatch(format!(
                "{} bytes, the header says {declared}",
                plain.len()
            )));
        }
        let events = check_event_list(&plain, &self.header)?;
        Ok(CheckedBatch {
            host_id: self.header.host_id,
            batch_id: self.header.batch_id,
            first_seq: self.header.first_seq,
            last_seq: self.header.last_seq,
            events,
            plain,
            seal: Seal {
                header: self.header_bytes,
                signature: self.signature,
                certificate: self.certificate,
            },
        })
    }
}

/// Decompresses an LZ4 block into exactly `declared` bytes (bounded by
/// `check_header`). The buffer is allocated without asking for zeroed
/// memory and then filled: a zeroed allocation of this size (lz4_flex's
/// `decompress`) made the allocator hand back freshly purged pages, and
/// the page faults of touching them cost up to a tenth of the sink's CPU.
// `vec![0; declared]` is the zeroed allocation this avoids.
#[allow(clippy::slow_vector_initialization)]
fn lz4_decompress(payload: &[u8], declared: usize) -> Result<Vec<u8>, DecodeError> {
    let mut plain = Vec::with_capacity(declared);
    plain.resize(declared, 0);
    let written = lz4_flex::block::decompress_into(payload, &mut plain)
        .map_err(|e| DecodeError::Decompress(e.to_string()))?;
    plain.truncate(written);
    Ok(plain)
}

/// One event of a checked batch: what the sink routes it by, and where its
/// bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedEvent {
    /// Its sequence number (within the batch's signed range, increasing).
    pub seq: u64,
    /// Its kind (`starling-kind`), from the body's field number.
    pub kind: &'static str,
    start: usize,
    end: usize,
}

/// A batch that passed every check: signed by its origin (checked by the
/// caller before [`OpenedBatch::unseal`]), payload as signed, every event
/// of `host_id` with an increasing sequence number in the signed range,
/// a known kind, and within the size limits.
///
/// It keeps each event's bytes exactly as the node encoded them, so a sink
/// forwards what the node spooled without re-encoding it (fields added by a
/// newer node survive an older sink), and a consumer can check the
/// origin's signature over them.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedBatch {
    /// The origin host.
    pub host_id: String,
    /// The sender's batch id.
    pub batch_id: u64,
    /// The signed sequence range.
    pub first_seq: u64,
    /// The signed sequence range.
    pub last_seq: u64,
    /// The events, in order.
    pub events: Vec<CheckedEvent>,
    plain: Vec<u8>,
    /// What proves its origin, for consumers that check it themselves.
    pub seal: Seal,
}

/// The origin's signed header, its signature and its certificate, as they
/// arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    /// The encoded `BatchHeader`.
    pub header: Vec<u8>,
    /// The signature over [`header_signing_bytes`] of it.
    pub signature: Vec<u8>,
    /// The origin's certificate (DER).
    pub certificate: Vec<u8>,
}

impl CheckedBatch {
    /// The encoded bytes of event `i`, as the node sent them.
    pub fn encoded(&self, i: usize) -> Option<&[u8]> {
        self.events.get(i).map(|e| &self.plain[e.start..e.end])
    }

    /// Every event with its encoded bytes.
    pub fn iter_encoded(&self) -> impl Iterator<Item = (&CheckedEvent, &[u8])> {
        self.events.iter().map(|e| (e, &self.plain[e.start..e.end]))
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True when it holds no event (never, once checked).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

impl BatchAck {
    /// An answer without a receipt: what a relay says of its own accord,
    /// or a sink about a batch whose header it could not read. An origin
    /// never deletes events on such an answer.
    pub fn unsigned(batch_id: u64, status: crate::v1::batch_ack::Status, detail: String) -> Self {
        BatchAck {
            batch_id,
            status: status as i32,
            detail,
            ..Default::default()
        }
    }
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

/// Decodes a receipt carried in an ack (after its signature was checked).
pub fn decode_receipt(bytes: &[u8]) -> Result<BatchReceipt, DecodeError> {
    if bytes.len() > MAX_RECEIPT_BYTES {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit: MAX_RECEIPT_BYTES,
        });
    }
    BatchReceipt::decode(bytes).map_err(|e| DecodeError::Protobuf(e.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{event::Body, Event, EventHeader, ProcessExec};

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

    /// A batch as the origin builds it, with a placeholder signature (the
    /// signature is checked in `starling_mesh::origin`, not here).
    fn wire(list: EventListBuilder, host: &str) -> Vec<u8> {
        list.finish(host, 7, 1).into_wire(vec![1; 64], vec![2; 100])
    }

    fn encode(events: &[Event], host: &str) -> Vec<u8> {
        let mut b = EventListBuilder::default();
        for e in events {
            let seq = e.header.as_ref().map_or(0, |h| h.seq);
            b.push_encoded(seq, &e.encode_to_vec());
        }
        wire(b, host)
    }

    fn unseal(bytes: &[u8]) -> Result<CheckedBatch, DecodeError> {
        open_batch(bytes)?.unseal()
    }

    /// Re-encodes `bytes` with its header changed by `edit`.
    fn with_header(bytes: &[u8], edit: impl FnOnce(&mut BatchHeader)) -> Vec<u8> {
        let mut batch = Batch::decode(bytes).unwrap();
        let mut header = BatchHeader::decode(batch.header.as_slice()).unwrap();
        edit(&mut header);
        batch.header = header.encode_to_vec();
        batch.encode_to_vec()
    }

    #[test]
    fn round_trip_keeps_every_event() {
        let events: Vec<_> = (1..=100).map(|s| event("h1", s)).collect();
        let bytes = encode(&events, "h1");
        let opened = open_batch(&bytes).expect("valid envelope");
        assert_eq!(opened.header.first_seq, 1);
        assert_eq!(opened.header.last_seq, 100);
        assert_eq!(opened.signature, vec![1; 64]);
        assert!(opened.signing_bytes().starts_with(BATCH_SIGNING_DOMAIN));
        let checked = opened.unseal().expect("valid batch");
        assert_eq!(checked.batch_id, 7);
        assert_eq!(checked.host_id, "h1");
        assert_eq!(checked.len(), 100);
        for (i, e) in events.iter().enumerate() {
            assert_eq!(checked.encoded(i), Some(e.encode_to_vec().as_slice()));
            assert_eq!(checked.events[i].seq, i as u64 + 1);
            assert_eq!(checked.events[i].kind, "process_exec");
        }
    }

    #[test]
    fn the_signed_digest_covers_the_list_a_consumer_rebuilds() {
        let events: Vec<_> = (5..=9).map(|s| event("h1", s)).collect();
        let opened = open_batch(&encode(&events, "h1")).unwrap();
        let mut list = Vec::new();
        for e in &events {
            frame_event(&mut list, &e.encode_to_vec());
        }
        assert_eq!(opened.header.list_sha256, sha256(&list));
        assert_eq!(opened.header.list_len as usize, list.len());
    }

    #[test]
    fn unknown_event_fields_are_forwarded_untouched() {
        // An event from a newer node: a field this version does not know.
        let mut bytes = event("h1", 1).encode_to_vec();
        bytes.extend_from_slice(&[0xb8, 0x3e, 0x07]); // field 999, varint 7
        let mut b = EventListBuilder::default();
        b.push_encoded(1, &bytes);
        let checked = unseal(&wire(b, "h1")).expect("valid batch");
        assert_eq!(checked.encoded(0), Some(bytes.as_slice()));
    }

    #[test]
    fn an_altered_payload_is_refused_as_a_mismatch() {
        let events: Vec<_> = (1..=3).map(|s| event("h1", s)).collect();
        let mut batch = Batch::decode(encode(&events, "h1").as_slice()).unwrap();
        let header = BatchHeader::decode(batch.header.as_slice()).unwrap();
        let mut plain =
            lz4_flex::block::decompress(&batch.payload, header.list_len as usize).unwrap();
        let last = plain.len() - 1;
        plain[last] ^= 1;
        batch.payload = lz4_flex::block::compress(&plain);
        let err = unseal(&batch.encode_to_vec()).unwrap_err();
        assert!(matches!(err, DecodeError::PayloadMismatch(_)), "{err}");
        assert!(err.is_altered());
    }

    #[test]
    fn foreign_fields_in_the_list_are_rejected() {
        // A list with a stray field 2 after the event, signed as it is.
        let mut plain = Vec::new();
        frame_event(&mut plain, &event("h1", 1).encode_to_vec());
        plain.extend_from_slice(&[0x10, 0x01]); // field 2, varint
        let header = BatchHeader {
            host_id: "h1".into(),
            batch_id: 1,
            first_seq: 1,
            last_seq: 1,
            event_count: 1,
            list_len: plain.len() as u32,
            list_sha256: sha256(&plain),
            signed_at_unix_ms: 1,
            payload_sha256: sha256(&lz4_flex::block::compress(&plain)),
        };
        let bytes = Batch {
            header: header.encode_to_vec(),
            compression: Compression::Lz4 as i32,
            payload: lz4_flex::block::compress(&plain),
            ..Default::default()
        }
        .encode_to_vec();
        let err = unseal(&bytes).unwrap_err();
        assert!(matches!(err, DecodeError::Protobuf(_)), "{err}");
    }

    #[test]
    fn event_of_another_host_is_rejected() {
        let events = vec![event("h1", 1), event("h2", 2)];
        let err = unseal(&encode(&events, "h1")).unwrap_err();
        assert!(
            matches!(err, DecodeError::BadEvent { index: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn sequence_numbers_must_match_the_signed_range() {
        // Zero, a repeat, a decrease, and one outside the signed range.
        let cases: [(&[u64], u64, u64); 4] = [
            (&[0], 1, 1),
            (&[3, 3], 3, 4),
            (&[4, 3], 3, 4),
            (&[1, 9], 1, 5),
        ];
        for (seqs, first, last) in cases {
            let mut b = EventListBuilder::default();
            for &s in seqs {
                b.push_encoded(s, &event("h1", s).encode_to_vec());
            }
            let bytes = with_header(&wire(b, "h1"), |h| {
                h.first_seq = first;
                h.last_seq = last;
            });
            // The list digest still matches; the events do not fit.
            let err = open_batch(&bytes)
                .and_then(OpenedBatch::unseal)
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    DecodeError::BadEvent { .. } | DecodeError::BadHeader(_)
                ),
                "{seqs:?} in {first}..={last}: {err}"
            );
        }
    }

    #[test]
    fn oversized_input_is_rejected_before_decoding() {
        let big = vec![0u8; MAX_BATCH_BYTES + 1];
        assert!(matches!(
            open_batch(&big),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn declared_length_bomb_is_rejected() {
        let bytes = with_header(&encode(&[event("h1", 1)], "h1"), |h| h.list_len = u32::MAX);
        let err = open_batch(&bytes).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn count_mismatch_is_rejected() {
        let bytes = with_header(&encode(&[event("h1", 1)], "h1"), |h| {
            h.event_count = 2;
            h.last_seq = 2;
        });
        let err = unseal(&bytes).unwrap_err();
        assert!(matches!(err, DecodeError::CountMismatch { .. }), "{err}");
        assert!(!err.is_altered(), "the list is as signed");
    }

    #[test]
    fn header_limits_are_enforced() {
        let ok = encode(&[event("h1", 1)], "h1");
        let mut batch = Batch::decode(ok.as_slice()).unwrap();
        batch.certificate = vec![0; MAX_CERTIFICATE_BYTES + 1];
        assert!(matches!(
            open_batch(&batch.encode_to_vec()),
            Err(DecodeError::TooLarge { .. })
        ));
        let empty = with_header(&ok, |h| h.event_count = 0);
        assert!(matches!(open_batch(&empty), Err(DecodeError::BadHeader(_))));
        let short = with_header(&ok, |h| h.list_sha256.truncate(16));
        assert!(matches!(open_batch(&short), Err(DecodeError::BadHeader(_))));
        let host = with_header(&ok, |h| h.host_id = "a b".into());
        assert!(matches!(open_batch(&host), Err(DecodeError::BadHostId(_))));
    }

    #[test]
    fn events_without_header_or_body_are_rejected() {
        let no_body = Event {
            body: None,
            ..event("h1", 1)
        };
        let no_header = Event {
            header: None,
            ..event("h1", 1)
        };
        for e in [no_body, no_header] {
            let mut b = EventListBuilder::default();
            b.push_encoded(1, &e.encode_to_vec());
            let err = unseal(&wire(b, "h1")).unwrap_err();
            assert!(
                matches!(err, DecodeError::BadEvent { index: 0, .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        // Junk as a whole batch, as an event list under a valid header, and
        // as an ack: each must be refused with an error.
        for seed in 1u8..=255 {
            let junk: Vec<u8> = (0..512u32)
                .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
                .collect();
            let as_batch = open_batch(&junk).and_then(OpenedBatch::unseal);
            assert!(as_batch.is_err(), "seed {seed}: junk batch accepted");
            let mut b = EventListBuilder::default();
            b.push_encoded(1, &junk);
            let as_event = unseal(&wire(b, "h1"));
            assert!(as_event.is_err(), "seed {seed}: junk event accepted");
            if let Ok(ack) = decode_ack(&junk) {
                // Junk that happens to parse must not look like a receipt
                // a node would act on without checking its signature.
                assert!(ack.receipt.len() <= junk.len());
            }
        }
        assert!(decode_ack(&vec![0u8; MAX_ACK_BYTES + 1]).is_err());
        assert!(decode_receipt(&vec![0u8; MAX_RECEIPT_BYTES + 1]).is_err());
    }

    #[test]
    fn every_body_field_maps_to_its_kind() {
        // Decode an empty body under each field number with prost, and
        // check the scanner names the same kind: a kind added to the schema
        // but not to the table fails here.
        for field in 2u32..=200 {
            let mut bytes = Vec::new();
            let header = EventHeader {
                host_id: "h1".into(),
                seq: 1,
                ..Default::default()
            };
            prost::encoding::message::encode(1, &header, &mut bytes);
            prost::encoding::encode_key(
                field,
                prost::encoding::WireType::LengthDelimited,
                &mut bytes,
            );
            bytes.push(0);
            let decoded = Event::decode(bytes.as_slice()).unwrap();
            let scanned = event_list::scan_event(&bytes).map(|k| k.kind);
            match decoded.body {
                Some(_) => assert_eq!(scanned, Ok(crate::event_kind(&decoded)), "field {field}"),
                None => assert!(scanned.is_err(), "field {field} is no body"),
            }
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
