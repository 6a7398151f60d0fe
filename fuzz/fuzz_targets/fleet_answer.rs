//! An answer on `/starling/fleet/2` (an aggregator's with its cell's
//! table, or a sink's with the fleet's view) as the asker's stream codec
//! hands it over: no input may panic, and what decodes is within the
//! limits and encodes back to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use starling_mesh::swarm::{FleetAnswer, WireMessage};

fuzz_target!(|data: &[u8]| {
    if let Ok(answer) = FleetAnswer::from_wire(data) {
        match &answer {
            FleetAnswer::Table(table) => assert!(table.check().is_ok()),
            FleetAnswer::View(cells) => assert!(cells.iter().all(|c| c.check().is_ok())),
            _ => {}
        }
        let again = FleetAnswer::from_wire(&answer.to_wire()).expect("our own encoding decodes");
        assert_eq!(again, answer);
    }
});
