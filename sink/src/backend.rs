//! Where the sink persists events: Kafka, or the embedded local store.

use std::time::Duration;

use starling_proto::batch::{CheckedBatch, Seal};

use crate::kafka::{KafkaWriteError, KafkaWriter};
use crate::local_store::{LocalStore, StoreError};

/// The configured destination.
pub enum Backend {
    Kafka(KafkaWriter),
    Local(LocalStore),
}

/// Who vouched for a batch: the certificate whose signature the sink
/// checked, and the seal itself for consumers that check it again.
#[derive(Debug, Clone, Copy)]
pub struct Provenance<'a> {
    /// Lowercase hex SHA-256 of the origin's certificate.
    pub fingerprint: &'a str,
    /// The signed header, the signature and the certificate.
    pub seal: &'a Seal,
}

/// A persist failure; the batch is answered RETRY.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error(transparent)]
    Kafka(#[from] KafkaWriteError),
    #[error(transparent)]
    Local(#[from] StoreError),
}

impl Backend {
    /// Persists every event of the batch, as the node encoded it; Ok only
    /// when all of them are durable.
    pub async fn persist(
        &self,
        batch: &CheckedBatch,
        provenance: &Provenance<'_>,
    ) -> Result<(), PersistError> {
        match self {
            Backend::Kafka(k) => Ok(k.persist(batch, provenance).await?),
            Backend::Local(s) => Ok(tokio::task::block_in_place(|| {
                s.persist(&batch.host_id, batch.iter_encoded().map(|(_, bytes)| bytes))
            })?),
        }
    }

    /// Flushes pending output at shutdown.
    pub fn flush(&self, timeout: Duration) {
        if let Backend::Kafka(k) = self {
            k.flush(timeout);
        }
    }

    /// Short name for logs.
    pub fn describe(&self) -> &'static str {
        match self {
            Backend::Kafka(_) => "kafka",
            Backend::Local(_) => "local store",
        }
    }
}
