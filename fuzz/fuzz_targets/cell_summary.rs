//! A cell summary as gossip hands it to every host: no input may panic,
//! and what decodes is within the limits and encodes back to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use starling_task::rollup::{decode_summary, encode_summary, MAX_NAMED_HOSTS, MAX_REPORTED_TASKS};

fuzz_target!(|data: &[u8]| {
    if let Ok(summary) = decode_summary(data) {
        assert!(summary.tasks.len() <= MAX_REPORTED_TASKS);
        assert!(summary
            .tasks
            .values()
            .all(|t| t.hosts.values().all(|h| h.len() <= MAX_NAMED_HOSTS)));
        let again = decode_summary(&encode_summary(&summary)).expect("our own encoding decodes");
        assert_eq!(again, summary);
    }
});
