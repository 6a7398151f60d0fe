//! The node's decoder of acks from the network.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = starling_proto::batch::decode_ack(data);
});
