//! The events of a decompressed batch, read without decoding them: the
//! `EventList` split into its events, and each event's host id, sequence
//! number and kind read off its top-level protobuf fields, checked against
//! the signed header. The sink routes by these and passes the origin's
//! bytes on (docs/decisions.md, "Kafka").

use super::{CheckedEvent, DecodeError};
use crate::limits::{MAX_BATCH_EVENTS, MAX_EVENT_BYTES};
use crate::v1::BatchHeader;

/// Splits an encoded `EventList` into its events and checks each against
/// the header. Only field 1 (length-delimited) is allowed in the list.
pub(super) fn check_event_list(
    plain: &[u8],
    header: &BatchHeader,
) -> Result<Vec<CheckedEvent>, DecodeError> {
    let declared = header.event_count as usize;
    let mut events = Vec::with_capacity(declared.min(MAX_BATCH_EVENTS));
    let mut rest = plain;
    let mut previous = 0u64;
    while !rest.is_empty() {
        let index = events.len();
        let tag = prost::encoding::decode_varint(&mut rest)
            .map_err(|e| DecodeError::Protobuf(e.to_string()))?;
        if tag != 0x0a {
            return Err(DecodeError::Protobuf(format!(
                "unexpected field tag {tag} in EventList"
            )));
        }
        if index == declared {
            return Err(DecodeError::CountMismatch {
                declared,
                actual: index + 1,
            });
        }
        let len = prost::encoding::decode_varint(&mut rest)
            .map_err(|e| DecodeError::Protobuf(e.to_string()))?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= rest.len())
            .ok_or_else(|| DecodeError::Protobuf("event length beyond the list".into()))?;
        let start = plain.len() - rest.len();
        let bad = |reason: String| DecodeError::BadEvent { index, reason };
        if len > MAX_EVENT_BYTES {
            return Err(bad(format!("{len} bytes, limit {MAX_EVENT_BYTES}")));
        }
        let keys = scan_event(&rest[..len]).map_err(bad)?;
        if keys.host_id != header.host_id.as_bytes() {
            return Err(bad(format!(
                "host id {:?} differs from the batch's",
                String::from_utf8_lossy(&keys.host_id[..keys.host_id.len().min(64)])
            )));
        }
        let seq = keys.seq;
        let in_range = seq >= header.first_seq && seq <= header.last_seq && seq > previous;
        let at_ends = (index != 0 || seq == header.first_seq)
            && (index + 1 != declared || seq == header.last_seq);
        if !in_range || !at_ends {
            return Err(bad(format!(
                "sequence number {seq} out of place in {}..={}",
                header.first_seq, header.last_seq
            )));
        }
        previous = seq;
        events.push(CheckedEvent {
            seq,
            kind: keys.kind,
            start,
            end: start + len,
        });
        rest = &rest[len..];
    }
    if events.len() != declared {
        return Err(DecodeError::CountMismatch {
            declared,
            actual: events.len(),
        });
    }
    Ok(events)
}

/// The fields of an encoded `Event` a sink routes by.
pub(super) struct EventKeys<'a> {
    pub(super) host_id: &'a [u8],
    pub(super) seq: u64,
    pub(super) kind: &'static str,
}

/// Reads an encoded `Event`'s host id, sequence number and kind without
/// decoding the rest: every top-level field must be well-formed protobuf,
/// the header present, the sequence number above 0, and exactly one body
/// of a known kind. The body's contents are the origin's signed bytes and
/// are passed on as they are.
pub(super) fn scan_event(mut buf: &[u8]) -> Result<EventKeys<'_>, String> {
    let (mut host_id, mut seq, mut kind) = (None, 0u64, None);
    while !buf.is_empty() {
        let (field, value) = next_field(&mut buf)?;
        match (field, value) {
            (1, FieldValue::Bytes(mut header)) => {
                // The node writes host_id and seq first; the rest of the
                // header is the origin's, passed on as it is.
                let (mut host, mut number) = (None, None);
                while !header.is_empty() && (host.is_none() || number.is_none()) {
                    match next_field(&mut header)? {
                        (1, FieldValue::Bytes(h)) => host = Some(h),
                        (2, FieldValue::Varint(s)) => number = Some(s),
                        (1 | 2, _) => return Err("header field of the wrong type".into()),
                        _ => {}
                    }
                }
                host_id = Some(host.unwrap_or(&[]));
                seq = number.unwrap_or(0);
            }
            (1, _) => return Err("header of the wrong type".into()),
            (f, v) => {
                if let Some(k) = crate::kind_of_body_field(f) {
                    if !matches!(v, FieldValue::Bytes(_)) {
                        return Err(format!("body {k} of the wrong type"));
                    }
                    if kind.replace(k).is_some_and(|was| was != k) {
                        return Err("more than one body".into());
                    }
                }
            }
        }
    }
    let host_id = host_id.ok_or("missing header")?;
    if seq == 0 {
        return Err("sequence number 0".into());
    }
    let kind = kind.ok_or("missing body")?;
    Ok(EventKeys { host_id, seq, kind })
}

/// A top-level protobuf field's value, as far as [`scan_event`] cares.
enum FieldValue<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Reads one field (key and value) off `buf`.
fn next_field<'a>(buf: &mut &'a [u8]) -> Result<(u32, FieldValue<'a>), String> {
    let key = prost::encoding::decode_varint(buf).map_err(|e| e.to_string())?;
    let field = u32::try_from(key >> 3)
        .ok()
        .filter(|&f| f > 0)
        .ok_or("invalid field number")?;
    let value = match key & 7 {
        0 => FieldValue::Varint(prost::encoding::decode_varint(buf).map_err(|e| e.to_string())?),
        1 => {
            take(buf, 8)?;
            FieldValue::Fixed
        }
        2 => {
            let len = prost::encoding::decode_varint(buf).map_err(|e| e.to_string())?;
            let len = usize::try_from(len).map_err(|_| "length overflows")?;
            FieldValue::Bytes(take(buf, len)?)
        }
        5 => {
            take(buf, 4)?;
            FieldValue::Fixed
        }
        w => return Err(format!("wire type {w} not allowed")),
    };
    Ok((field, value))
}

/// Takes the next `n` bytes off `buf`.
fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if buf.len() < n {
        return Err("field runs past the event".into());
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Ok(head)
}
