//! Membership datagrams from other members (SWIM and info records).
#![no_main]
use libfuzzer_sys::fuzz_target;
use starling_mesh::membership::{CellMembership, MemberId, MemberInfo};

fuzz_target!(|data: &[u8]| {
    let id = MemberId::named;
    let info = MemberInfo {
        host: "a".into(),
        version: 1,
        eligible: true,
        aggregator: false,
        load_pct: 0,
        capacity: 1,
        attached: 0,
        agent_version: String::new(),
        tags: Vec::new(),
        addrs: Vec::new(),
        relay: String::new(),
    };
    if let Ok(mut m) = CellMembership::new(id("a"), info, 10, 1) {
        let _ = m.handle_data(&id("b"), data);
    }
});
