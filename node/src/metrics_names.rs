//! Names of the node's Prometheus metrics (docs/metrics.md lists them).

/// Records taken from the kernel ring buffer.
pub const EVENTS_OBSERVED: &str = "starling_node_events_observed_total";
/// Events written to the spool (each got a sequence number).
pub const EVENTS_SPOOLED: &str = "starling_node_events_spooled_total";
/// Events removed from the spool after the sink persisted them.
pub const EVENTS_ACKED: &str = "starling_node_events_acked_total";
/// Events lost, by `reason` (ring_buffer_full, rate_limited, spool_quota,
/// decode_error) and, for the kernel's reasons, `kind`.
pub const EVENTS_DROPPED: &str = "starling_node_events_dropped_total";
/// Events left out as configured, by `kind` and `by`: in the `kernel`
/// (the node's own activity, allow-listed executables, cgroups and paths)
/// or by the `node` (chmod +x outside world-writable directories; renames
/// and unlinks left to the node whose lexical paths are not watched).
pub const EVENTS_FILTERED: &str = "starling_node_events_filtered_total";
/// cgroups the kernel reported created, whose paths the node remembers
/// (kernel records that are not events, so not in `observed`).
pub const CGROUPS_LEARNED: &str = "starling_node_cgroups_learned_total";
/// Events currently spooled.
pub const SPOOL_EVENTS: &str = "starling_node_spool_events";
/// Logical bytes currently spooled.
pub const SPOOL_BYTES: &str = "starling_node_spool_bytes";
/// Next sequence number the spool will assign (all below it were produced).
pub const SPOOL_NEXT_SEQ: &str = "starling_node_spool_next_seq";
/// Batches by `result` (persisted, retry, rejected, failed).
pub const BATCHES: &str = "starling_node_batches_total";
/// 1 while connected to a sink.
pub const UPLINK_CONNECTED: &str = "starling_node_uplink_connected";
/// 1 when the kernel sensor runs, 0 when the node is sensor-degraded.
pub const SENSOR_UP: &str = "starling_node_sensor_up";
/// 1 while this node is elected aggregator of its cell.
pub const AGGREGATOR: &str = "starling_node_aggregator";
/// 1 while the node ships straight to a sink because its cell has had no
/// aggregator for `mesh.direct_to_sink_after_secs`.
pub const DIRECT_TO_SINK: &str = "starling_node_direct_to_sink";
/// Nodes attached to this aggregator now.
pub const RELAY_NODES: &str = "starling_node_relay_nodes";
/// Connections the relay refused, by `reason` (not_aggregator, capacity,
/// handshake, role).
pub const RELAY_REFUSED: &str = "starling_node_relay_refused_total";
/// Batches relayed, by the `status` of the ack given back.
pub const RELAY_BATCHES: &str = "starling_node_relay_batches_total";
/// Events relayed and persisted by a sink.
pub const RELAY_EVENTS: &str = "starling_node_relay_events_total";
/// Times the uplink left a path it could not trust, by `kind`:
/// `forged_receipt` (an ack no sink signed for the batch sent), `altered`
/// (a sink signed that the batch arrived changed), `unproven` (failures in
/// a row without a sink's word).
pub const PATH_FAULTS: &str = "starling_node_uplink_path_faults_total";
/// The sink's clock minus this host's, in milliseconds, from the last
/// signed receipt; batch headers are signed with the sink's time.
pub const SINK_CLOCK_OFFSET: &str = "starling_node_sink_clock_offset_ms";
