//! Starling's control plane.
//!
//! * [`identity`]: fleet enrolment (the fleet CA, certificates naming each
//!   host and its role, TLS configurations that admit only enrolled peers).
//! * [`cell`], [`election`], [`attach`]: sans-I/O protocol logic for
//!   locality cells, aggregator election and a node's choice of aggregator.
//!   They take views and time as input and return decisions, so tests and
//!   the simulator drive exactly the code production runs.
//! * [`membership`]: SWIM membership of a cell with versioned member info;
//!   [`health`] keeps a busy member from declaring others dead;
//!   [`rendezvous`] is how a new member finds its cell (referrals in the
//!   enrolment exchange).
//! * [`enrol`], [`swarm`]: the libp2p swarm, its admission gate, and the
//!   driver that carries membership, election and sink adverts
//!   ([`adverts`]) over it; [`admission`] is its gate, [`view`] what it
//!   publishes, [`status`] what it shows people, [`net`] address helpers,
//!   [`host_facts`] what a member tells its cell about its machine.
//! * [`trust`], [`origin`]: trust on the QUIC data plane: TLS that follows
//!   the revocation list, origin signatures on batches and sink receipts,
//!   so aggregators relay without being trusted.

pub mod admission;
pub mod adverts;
pub mod attach;
pub mod cell;
pub mod datagram_frame;
pub mod election;
pub mod enrol;
pub mod health;
pub mod host_facts;
pub mod identity;
pub mod membership;
pub mod net;
pub mod origin;
pub mod rendezvous;
pub mod status;
pub mod swarm;
pub mod trust;
pub mod view;

/// Multiaddresses, as the daemons' configurations spell peers, and peer
/// ids, as the mesh names members (for the fuzz targets and tests).
pub use libp2p::{Multiaddr, PeerId};
