//! The anti-entropy exchange on the wire: protobuf
//! (`starling.v1.SyncRequest`, `starling.v1.SyncResponse`,
//! proto/proto/starling/v1/task.proto), because two hosts of different
//! agent versions compare notes while a fleet rolls out. Decoding is
//! bounded by [`MAX_SYNC_MESSAGE_BYTES`]; what it hands on is still
//! hostile (the tasks are checked one by one, the prefixes cut to
//! `MAX_SYNC_ITEMS` by the state machine).

use prost::Message;
use starling_proto::v1;
use starling_proto::v1::sync_request::Request;
use starling_proto::v1::sync_response::Response;

use super::{SyncRequest, SyncResponse};
use crate::plane::Summary;

/// Largest anti-entropy message taken: tasks up to
/// `plane::MAX_SYNC_BYTES`, and room for their framing.
pub const MAX_SYNC_MESSAGE_BYTES: usize = 5 * 1024 * 1024;

fn summary_to_wire(s: &Summary) -> v1::SyncRequest {
    v1::SyncRequest {
        request: Some(Request::Summary(v1::SyncSummary {
            root_version: s.root_version,
            set_hash: s.set_hash.to_vec(),
            count: s.count,
        })),
    }
}

/// What a request carrying summary `s` takes on the wire (for the byte
/// counters: about 40 bytes).
pub(super) fn summary_bytes(s: &Summary) -> u64 {
    summary_to_wire(s).encoded_len() as u64
}

/// `request` as it is sent.
pub fn encode_request(request: &SyncRequest) -> Vec<u8> {
    let request = match request {
        SyncRequest::Summary(s) => return summary_to_wire(s).encode_to_vec(),
        SyncRequest::Fetch(prefixes) => Request::Fetch(prefixes.clone()),
        SyncRequest::Push(tasks) => Request::Push(v1::SignedTasks {
            tasks: tasks.clone(),
        }),
    };
    v1::SyncRequest {
        request: Some(request),
    }
    .encode_to_vec()
}

/// A request from a peer, or why it is refused.
pub fn decode_request(bytes: &[u8]) -> Result<SyncRequest, String> {
    within_limit(bytes)?;
    match v1::SyncRequest::decode(bytes)
        .map_err(|e| e.to_string())?
        .request
    {
        Some(Request::Summary(s)) => Ok(SyncRequest::Summary(Summary {
            root_version: s.root_version,
            set_hash: s
                .set_hash
                .as_slice()
                .try_into()
                .map_err(|_| format!("a set hash of {} bytes", s.set_hash.len()))?,
            count: s.count,
        })),
        Some(Request::Fetch(prefixes)) => Ok(SyncRequest::Fetch(prefixes)),
        Some(Request::Push(tasks)) => Ok(SyncRequest::Push(tasks.tasks)),
        None => Err("a request this version does not know".into()),
    }
}

/// `response` as it is sent.
pub fn encode_response(response: &SyncResponse) -> Vec<u8> {
    let response = match response {
        SyncResponse::Same => Response::Same(true),
        SyncResponse::Held(prefixes) => Response::Held(prefixes.clone()),
        SyncResponse::Tasks(tasks) => Response::Tasks(v1::SignedTasks {
            tasks: tasks.clone(),
        }),
        SyncResponse::Taken => Response::Taken(true),
    };
    v1::SyncResponse {
        response: Some(response),
    }
    .encode_to_vec()
}

/// An answer from a peer, or why it is refused.
pub fn decode_response(bytes: &[u8]) -> Result<SyncResponse, String> {
    within_limit(bytes)?;
    match v1::SyncResponse::decode(bytes)
        .map_err(|e| e.to_string())?
        .response
    {
        Some(Response::Same(_)) => Ok(SyncResponse::Same),
        Some(Response::Held(prefixes)) => Ok(SyncResponse::Held(prefixes)),
        Some(Response::Tasks(tasks)) => Ok(SyncResponse::Tasks(tasks.tasks)),
        Some(Response::Taken(_)) => Ok(SyncResponse::Taken),
        None => Err("an answer this version does not know".into()),
    }
}

fn within_limit(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() > MAX_SYNC_MESSAGE_BYTES {
        return Err(format!("{} bytes", bytes.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_comes_back_as_it_went() {
        let summary = Summary {
            root_version: u64::MAX,
            set_hash: [7; 32],
            count: u32::MAX,
        };
        for r in [
            SyncRequest::Summary(summary),
            SyncRequest::Fetch(vec![1; 16]),
            SyncRequest::Push(vec![vec![1, 2], vec![], vec![3]]),
            SyncRequest::Push(Vec::new()),
        ] {
            assert_eq!(decode_request(&encode_request(&r)).unwrap(), r);
        }
        for r in [
            SyncResponse::Same,
            SyncResponse::Held(vec![2; 24]),
            SyncResponse::Tasks(vec![vec![9; 100]]),
            SyncResponse::Taken,
        ] {
            assert_eq!(decode_response(&encode_response(&r)).unwrap(), r);
        }
    }

    #[test]
    fn the_byte_counters_count_what_goes_on_the_wire() {
        let summary = Summary {
            root_version: 3,
            set_hash: [0xff; 32],
            count: 12,
        };
        let request = SyncRequest::Summary(summary);
        assert_eq!(
            request.payload_bytes(),
            encode_request(&request).len() as u64
        );
        assert_eq!(request.payload_bytes(), 40);
        for r in [SyncResponse::Same, SyncResponse::Taken] {
            assert_eq!(r.payload_bytes(), encode_response(&r).len() as u64);
        }
    }

    #[test]
    fn hostile_messages_are_refused() {
        assert!(decode_request(&vec![0u8; MAX_SYNC_MESSAGE_BYTES + 1]).is_err());
        assert!(decode_response(&[0xff, 0xff]).is_err());
        assert!(decode_request(&[]).unwrap_err().contains("does not know"));
        assert!(decode_response(&[]).unwrap_err().contains("does not know"));
        let short_hash = v1::SyncRequest {
            request: Some(Request::Summary(v1::SyncSummary {
                root_version: 1,
                set_hash: vec![0; 31],
                count: 1,
            })),
        };
        assert!(decode_request(&short_hash.encode_to_vec())
            .unwrap_err()
            .contains("31 bytes"));
    }
}
