//! The crate's error.

use saga_core::definition::DefinitionErrors;

/// What can go wrong setting up or running a consumer.
#[derive(Debug, thiserror::Error)]
pub enum ChoreographyError {
    /// The ledger (sled) failed. Retryable once the disk is back; the process usually
    /// exits and restarts.
    #[error("ledger: {0}")]
    Store(#[from] sled::Error),
    /// Opening the ledger failed (e.g. another process holds it). Not retryable here.
    #[error("ledger: {0}")]
    Open(#[from] saga_participant::ParticipantError),
    /// A ledger record does not decode. Not retryable: the ledger needs an operator.
    #[error("ledger record corrupted: {0}")]
    Corrupted(String),
    /// A record could not be encoded. A bug.
    #[error("encoding: {0}")]
    Encode(#[from] serde_json::Error),
    /// The consumer's configuration contradicts the catalog. Not retryable: fix it.
    #[error("configuration: {0}")]
    Config(String),
    /// The catalog is invalid. Not retryable: fix the file.
    #[error("{0}")]
    Catalog(#[from] DefinitionErrors),
}
