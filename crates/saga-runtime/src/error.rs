//! Errors of the runtime.

use saga_ports::{PortError, StoreError};

/// Why the runtime could not do something.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The local store failed; see [`StoreError`] (corruption is not retryable).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker failed; see [`PortError::is_retryable`].
    #[error(transparent)]
    Port(#[from] PortError),
    /// An actor could not be spawned or reached. Retryable after a restart.
    #[error("actor system: {0}")]
    Actor(String),
    /// The definition version a saga is pinned to is not available; see
    /// [`VersionError::is_retryable`]. The saga is left untouched.
    #[error(transparent)]
    Version(#[from] crate::versions::VersionError),
    /// A journal record could not be decoded while rebuilding a saga. Not retryable.
    #[error("journal of saga {saga_id} is unreadable: {why}")]
    Journal {
        /// Saga.
        saga_id: String,
        /// What is wrong.
        why: String,
    },
}
