//! The sink's decoder of batches from the network: any input must give a
//! checked batch or an error, within the size limits, never a panic. The
//! signature is not checked here (that needs a fleet CA); everything the
//! decoder promises after it is.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(opened) = starling_proto::batch::open_batch(data) else {
        return;
    };
    let (first, last) = (opened.header.first_seq, opened.header.last_seq);
    if let Ok(batch) = opened.unseal() {
        assert!(batch.len() <= starling_proto::limits::MAX_BATCH_EVENTS);
        let mut previous = 0;
        for (e, bytes) in batch.iter_encoded() {
            assert!(e.seq > previous && e.seq >= first && e.seq <= last);
            assert!(bytes.len() <= starling_proto::limits::MAX_EVENT_BYTES);
            previous = e.seq;
        }
    }
});
