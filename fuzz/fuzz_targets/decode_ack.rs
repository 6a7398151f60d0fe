//! The node's decoders of acks and of the receipts inside them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ack) = starling_proto::batch::decode_ack(data) {
        let _ = starling_proto::batch::decode_receipt(&ack.receipt);
    }
    let _ = starling_proto::batch::decode_receipt(data);
});
