//! Size limits for everything decoded from the network. They bound memory
//! per stream and per batch so that a hostile peer cannot make a node or a
//! sink allocate without limit.

/// Largest encoded Batch a receiver reads from one stream.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Largest decompressed EventList inside a Batch.
pub const MAX_BATCH_UNCOMPRESSED_BYTES: usize = 16 * 1024 * 1024;
/// Most events one Batch may carry.
pub const MAX_BATCH_EVENTS: usize = 16 * 1024;
/// Largest encoded BatchAck a sender reads back.
pub const MAX_ACK_BYTES: usize = 64 * 1024;
/// Largest single encoded Event (argv and paths are capped well below).
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// Longest host id accepted.
pub const MAX_HOST_ID_LEN: usize = 253;
