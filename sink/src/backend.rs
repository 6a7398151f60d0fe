//! Where the sink persists events: Kafka, or the embedded local store.

use std::time::Duration;

use starling_proto::batch::CheckedBatch;

use crate::kafka::{KafkaWriteError, KafkaWriter};
use crate::local_store::{LocalStore, StoreError};

/// The configured destination.
pub enum Backend {
    Kafka(KafkaWriter),
    Local(LocalStore),
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
    pub async fn persist(&self, batch: &CheckedBatch) -> Result<(), PersistError> {
        match self {
            Backend::Kafka(k) => Ok(k.persist(batch).await?),
            Backend::Local(s) => Ok(tokio::task::block_in_place(|| {
                s.persist(batch.iter_encoded().map(|(_, bytes)| bytes))
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
