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
/// Largest signed batch header (a host id and a handful of numbers).
pub const MAX_BATCH_HEADER_BYTES: usize = 1024;
/// Largest signature beside a batch or a receipt (Ed25519: 64 bytes,
/// ECDSA P-256: at most 72).
pub const MAX_SIGNATURE_BYTES: usize = 512;
/// Largest certificate beside a signature.
pub const MAX_CERTIFICATE_BYTES: usize = 16 * 1024;
/// Largest receipt inside an ack.
pub const MAX_RECEIPT_BYTES: usize = 1024;

/// Largest signed task accepted (a revocation list is the bulkiest body).
pub const MAX_SIGNED_TASK_BYTES: usize = 256 * 1024;
/// Largest signed trust root accepted.
pub const MAX_SIGNED_ROOT_BYTES: usize = 64 * 1024;
/// Most signatures on one task or root.
pub const MAX_OPERATOR_SIGNATURES: usize = 16;
/// Most operator keys in a trust root.
pub const MAX_OPERATOR_KEYS: usize = 256;
/// Most entries in any list of a task (hosts, tags, settings, ids, ...).
pub const MAX_TASK_LIST_ITEMS: usize = 4096;
/// Longest task id, tag, cell or fleet name.
pub const MAX_TASK_NAME_LEN: usize = 128;
