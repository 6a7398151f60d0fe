//! A member's report as an aggregator's stream codec hands it over
//! (`/starling/task-report/2`): no input may panic, and what decodes is
//! within the limits and encodes back to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use starling_task::rollup::{decode_report, encode_report, MAX_DETAIL_TEXT, MAX_REPORTED_TASKS};

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = decode_report(data) {
        assert!(report.states.len() <= MAX_REPORTED_TASKS);
        assert!(report.states.values().all(|(_, d)| d.len() <= MAX_DETAIL_TEXT));
        assert!(report.heartbeat.as_ref().is_none_or(|h| h.check().is_ok()));
        let again = decode_report(&encode_report(&report)).expect("our own encoding decodes");
        assert_eq!(again, report);
    }
});
