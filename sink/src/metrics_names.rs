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
/// Batches refused, by `reason`: `malformed`, `bad_signature` (not the
/// origin's signature), `origin_mismatch` (signed by another host than the
/// one named), `origin_untrusted` (certificate not from the fleet CA or
/// expired), `revoked`, `payload_mismatch` (altered after signing), `clock`
/// (signed too long ago or too far ahead).
pub const BATCHES_REFUSED: &str = "starling_sink_batches_refused_total";
/// Batches that had been persisted before (a replay), answered PERSISTED
/// without writing them again.
pub const BATCHES_REPLAYED: &str = "starling_sink_batches_replayed_total";
/// Times the replay memory filled before its span and was turned over
/// early (replays older than the time since are no longer recognised).
pub const REPLAY_WINDOW_SHORTENED: &str = "starling_sink_replay_window_shortened_total";
/// Answers sent without a receipt because signing failed.
pub const RECEIPTS_UNSIGNED: &str = "starling_sink_receipts_unsigned_total";
