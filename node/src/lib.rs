//! `starling-node`: the host daemon. The kernel sensor's events go into the
//! durable spool first; the uplink ships them to a sink, through the
//! aggregator of the node's cell when the mesh is on, and deletes them
//! only when the sink reports them persisted. A node elected aggregator
//! relays its cell's batches (`relay`).

pub mod config;
pub mod enrich;
pub mod fleet;
pub mod health;
pub mod mesh;
pub mod metrics_names;
pub mod relay;
pub mod sensor;
pub mod spool;
pub mod targets;
pub mod uplink;
pub mod uplink_state;
