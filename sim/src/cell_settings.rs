//! The cell settings of an in-process test member: one place for what the
//! in-process mesh tests (mixed versions, partitions, forged summaries)
//! share, so a new field of `CellSettings` is set once.

use starling_mesh::election::ElectionParams;
use starling_mesh::swarm::CellSettings;

/// An eligible member of zone `zone` in a cell of about `expected_size`,
/// with a relay address nothing connects to.
pub fn test_cell(zone: &str, expected_size: u32) -> CellSettings {
    CellSettings {
        zone: Some(zone.into()),
        expected_size,
        eligible: true,
        capacity: 100,
        relay: "127.0.0.1:1".into(),
        election: ElectionParams::default(),
        agent_version: "test".into(),
        tags: Vec::new(),
    }
}
