//! Starling's control plane.
//!
//! For now this holds fleet enrolment: the fleet CA, the certificates that
//! name each host and its role, and the TLS configurations that admit only
//! enrolled peers to the data plane. Membership, aggregator election and
//! task dissemination over libp2p build on the same identities.

pub mod identity;
