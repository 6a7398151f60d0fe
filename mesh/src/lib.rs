//! Starling's control plane.
//!
//! * [`identity`]: fleet enrolment (the fleet CA, certificates naming each
//!   host and its role, TLS configurations that admit only enrolled peers).
//! * [`cell`], [`election`], [`attach`]: sans-I/O protocol logic for
//!   locality cells, aggregator election and a node's choice of aggregator.
//!   They take views and time as input and return decisions, so tests and
//!   the simulator drive exactly the code production runs. The libp2p
//!   driver that feeds them is being built (docs/mesh.md).

pub mod adverts;
pub mod attach;
pub mod cell;
pub mod election;
pub mod enrol;
pub mod identity;
pub mod membership;
pub mod swarm;
