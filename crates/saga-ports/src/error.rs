//! Errors of the ports.

/// A broker-side operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// A journal append found another writer's record at the expected position: this
    /// worker no longer owns the saga. Not retryable: drop the actor.
    #[error("fenced on `{subject}`: expected last sequence {expected}: {detail}")]
    Fenced {
        /// Journal subject.
        subject: String,
        /// The sequence this writer expected to be last.
        expected: u64,
        /// What the server said.
        detail: String,
    },
    /// The broker is unreachable or timed out. Retryable with backoff.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the operation (bad subject, too large, ...). Not retryable.
    #[error("rejected by the broker: {0}")]
    Rejected(String),
}

impl PortError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// The local store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store reports corruption (or holds data it cannot decode). Fail closed:
    /// rebuild the saga from the journal or stop with this message; never use it.
    #[error("store corrupted: {0}")]
    Corrupted(String),
    /// I/O failed (disk full, permissions). Retryable after the cause is fixed.
    #[error("store I/O error: {0}")]
    Io(String),
}
