//! `starling-node`: the host daemon. The kernel sensor's events go into the
//! durable spool first; the uplink ships them to a sink and deletes them
//! only when the sink reports them persisted.

pub mod config;
pub mod enrich;
pub mod metrics_names;
pub mod sensor;
pub mod spool;
pub mod uplink;
pub mod uplink_state;
