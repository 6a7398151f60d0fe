//! Membership datagram frames from other members' streams: the header's
//! length check and the payload's decoding.
#![no_main]
use libfuzzer_sys::fuzz_target;
use starling_mesh::datagram_frame::{decode_payload, frame_length, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if let Some(header) = data.get(..HEADER_LEN) {
        let header: [u8; HEADER_LEN] = header.try_into().unwrap_or_default();
        if let Ok(len) = frame_length(header) {
            let payload = &data[HEADER_LEN..];
            let _ = decode_payload(&payload[..len.min(payload.len())]);
        }
    }
    let _ = decode_payload(data);
});
