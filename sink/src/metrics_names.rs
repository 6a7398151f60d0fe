//! Names of the sink's Prometheus metrics (docs/metrics.md lists them).

/// Node connections open now.
pub const CONNECTIONS_ACTIVE: &str = "starling_sink_connections_active";
/// Connections refused, by `reason` (handshake, role, identity, limit).
pub const CONNECTIONS_REFUSED: &str = "starling_sink_connections_refused_total";
/// Batches answered, by `status` (PERSISTED, RETRY, REJECTED).
pub const BATCHES: &str = "starling_sink_batches_total";
/// Events persisted (Kafka PERSISTED or written to the local store).
pub const EVENTS_PERSISTED: &str = "starling_sink_events_persisted_total";
/// Batches whose host differs from the connection's: relayed by an
/// aggregator.
pub const BATCHES_RELAYED: &str = "starling_sink_batches_relayed_total";
