//! The DNS question reader: the bytes are whatever a process sent to port
//! 53, so any input must give a question or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = starling_bpf::dns::parse_query(data) {
        // An escaped name never needs more than four bytes per input byte.
        assert!(q.name.len() <= 4 * data.len());
    }
});
