//! The decoder of ring-buffer records: lengths inside a record must never
//! be trusted beyond the record itself.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = starling_bpf::decode(data);
});
