//! A sink advert as gossip hands it to every member, its author's chain
//! taken as valid (the chain check is rustls's): no input may panic, and
//! a sink the book takes has an ingress and a load within bounds.
#![no_main]
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use starling_mesh::adverts::SinkBook;
use starling_mesh::identity::{PeerIdentity, Role};
use starling_mesh::PeerId;

fuzz_target!(|data: &[u8]| {
    let mut book = SinkBook::default();
    let sink = PeerIdentity {
        role: Role::Sink,
        name: "s".into(),
    };
    let _ = book.on_advert(PeerId::random(), data, Instant::now(), |_, _| Ok(sink));
    for s in book.sinks() {
        assert!(s.load_pct <= 100 && !s.ingress.is_empty() && s.ingress.len() <= 256);
    }
});
