//! An aggregator's answer to a question for its cell's table
//! (`/starling/fleet/2`) as the asker's stream codec hands it over: no
//! input may panic, and what decodes is within the limits and encodes
//! back to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use starling_mesh::swarm::{FleetAnswer, WireMessage};

fuzz_target!(|data: &[u8]| {
    if let Ok(answer) = FleetAnswer::from_wire(data) {
        if let FleetAnswer::Table(table) = &answer {
            assert!(table.check().is_ok());
        }
        let again = FleetAnswer::from_wire(&answer.to_wire()).expect("our own encoding decodes");
        assert_eq!(again, answer);
    }
});
