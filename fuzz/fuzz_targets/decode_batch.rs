//! The sink's decoder of batches from the network: any input must give a
//! checked batch or an error, within the size limits, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = starling_proto::batch::decode_batch(data) {
        assert!(batch.events.len() <= starling_proto::limits::MAX_BATCH_EVENTS);
        for e in &batch.events {
            let h = e.header.as_ref().expect("checked batches have headers");
            assert_eq!(h.host_id, batch.host_id);
            assert!(h.seq > 0);
        }
    }
});
