//! Membership datagrams framed on a long-lived stream: one stream per
//! peer and direction carries every datagram a member sends that peer, as
//! `length (u32, big-endian) | postcard(cell, datagram)`.
//!
//! A datagram used to be a request-response exchange on a QUIC stream of
//! its own (open, protocol negotiation, CBOR, an empty answer, a timeout
//! timer). At 500 members started at once on two cores a fifth of them
//! never arrived: the exchange timed out, or the peer refused the stream,
//! and SWIM took the lost probes for dead members. Framed on one stream,
//! a datagram costs its bytes and a QUIC frame.
//!
//! Sans-I/O: the driver reads the 4-byte header, checks the length with
//! [`frame_length`], reads that many bytes and decodes them with
//! [`decode_payload`]. Nothing read from the wire sizes an allocation
//! beyond [`MAX_FRAME_PAYLOAD`].

use serde::{Deserialize, Serialize};

/// Largest membership datagram taken from a peer (a SWIM packet is at
/// most 8 KiB, a member's record less), as the request-response protocol
/// before the framing took it.
pub const MAX_DATAGRAM: usize = 12 * 1024;

/// Largest payload a frame may carry: a datagram and its cell's name, with
/// room for postcard's length prefixes.
pub const MAX_FRAME_PAYLOAD: usize = MAX_DATAGRAM + crate::membership::MAX_TEXT + 16;

/// Bytes of a frame's header.
pub const HEADER_LEN: usize = 4;

/// What a frame carries: a membership datagram and the sender's cell, so
/// that members of different cells never mix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FramedDatagram {
    /// The sender's cell (base cell name).
    pub cell: String,
    /// The SWIM datagram, as the membership wrote it.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Why a frame was refused. The stream it came on is closed: a peer that
/// writes one bad frame is out of step with the framing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header announced more than [`MAX_FRAME_PAYLOAD`] bytes.
    #[error("frame of {0} bytes is over the limit of {MAX_FRAME_PAYLOAD}")]
    TooLong(u32),
    /// The header announced an empty frame.
    #[error("empty frame")]
    Empty,
    /// The payload is not a datagram, or its fields are over their limits.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// The payload length a frame's header announces, if within limits.
pub fn frame_length(header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header);
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len as usize > MAX_FRAME_PAYLOAD {
        return Err(FrameError::TooLong(len));
    }
    Ok(len as usize)
}

/// Decodes a frame's payload, checking the cell name and datagram against
/// the membership's limits.
pub fn decode_payload(payload: &[u8]) -> Result<FramedDatagram, FrameError> {
    let framed: FramedDatagram =
        postcard::from_bytes(payload).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if framed.cell.is_empty() || framed.cell.len() > crate::membership::MAX_TEXT {
        return Err(FrameError::Malformed("cell name length".into()));
    }
    if framed.data.len() > MAX_DATAGRAM {
        return Err(FrameError::Malformed("datagram length".into()));
    }
    Ok(framed)
}

/// A whole frame (header and payload) for `datagram`, or an error when it
/// would be over the limits a receiver enforces.
pub fn encode_frame(datagram: &FramedDatagram) -> Result<Vec<u8>, FrameError> {
    let mut frame = vec![0; HEADER_LEN];
    let mut frame = postcard::to_extend(datagram, std::mem::take(&mut frame))
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = frame.len() - HEADER_LEN;
    if len > MAX_FRAME_PAYLOAD {
        return Err(FrameError::TooLong(len.min(u32::MAX as usize) as u32));
    }
    frame[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(cell: &str, len: usize) -> FramedDatagram {
        FramedDatagram {
            cell: cell.into(),
            data: (0..len).map(|i| i as u8).collect(),
        }
    }

    #[test]
    fn a_frame_decodes_to_what_was_encoded() {
        let d = datagram("zone:eu-1", 300);
        let frame = encode_frame(&d).unwrap();
        let header: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().unwrap();
        let len = frame_length(header).unwrap();
        assert_eq!(len, frame.len() - HEADER_LEN);
        assert_eq!(decode_payload(&frame[HEADER_LEN..]).unwrap(), d);
    }

    #[test]
    fn the_largest_datagram_fits_and_a_larger_one_is_refused_at_both_ends() {
        let cell = "c".repeat(crate::membership::MAX_TEXT);
        let largest = datagram(&cell, MAX_DATAGRAM);
        let frame = encode_frame(&largest).unwrap();
        assert_eq!(decode_payload(&frame[HEADER_LEN..]).unwrap(), largest);
        let over = datagram("c", MAX_DATAGRAM + 1);
        let frame = encode_frame(&over).unwrap();
        assert!(matches!(
            decode_payload(&frame[HEADER_LEN..]),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn headers_over_the_limit_or_empty_are_refused_before_any_read() {
        assert_eq!(frame_length([0, 0, 0, 0]), Err(FrameError::Empty));
        assert_eq!(
            frame_length(u32::MAX.to_be_bytes()),
            Err(FrameError::TooLong(u32::MAX))
        );
        let limit = MAX_FRAME_PAYLOAD as u32;
        assert_eq!(frame_length(limit.to_be_bytes()), Ok(MAX_FRAME_PAYLOAD));
        assert!(frame_length((limit + 1).to_be_bytes()).is_err());
    }

    #[test]
    fn garbage_and_empty_cells_are_malformed() {
        assert!(matches!(
            decode_payload(&[0xff, 0xff, 0xff]),
            Err(FrameError::Malformed(_))
        ));
        let frame = encode_frame(&datagram("", 3)).unwrap();
        assert!(matches!(
            decode_payload(&frame[HEADER_LEN..]),
            Err(FrameError::Malformed(_))
        ));
    }
}
