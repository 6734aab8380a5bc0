//! The error of this crate: a kind callers branch on, and the cause kept as a source.

use std::fmt;

/// What went wrong, for callers that must branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The stream was not at the expected version: another writer appended first.
    /// Retryable: reload the aggregate, decide again, append again. gRPC `ABORTED`.
    Conflict,
    /// The broker or the database could not be reached or timed out. Retryable with
    /// backoff. gRPC `UNAVAILABLE`.
    Unavailable,
    /// A stored record could not be decoded or upcast. Not retryable: the data or the
    /// code is wrong and needs an operator. gRPC `DATA_LOSS`.
    Corrupt,
    /// The request itself is malformed (a bad name, an unknown event type). Not
    /// retryable. gRPC `INVALID_ARGUMENT`.
    Invalid,
}

/// An error of the event store, the repository or a projection.
#[derive(Debug, thiserror::Error)]
pub struct EsError {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl fmt::Display for EsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl EsError {
    /// An error of this kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error of this kind caused by `source`.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether trying again (after a reload, for a conflict) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Conflict | ErrorKind::Unavailable)
    }

    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }

    pub(crate) fn corrupt(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::with_source(ErrorKind::Corrupt, message, source)
    }

    pub(crate) fn unavailable(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::with_source(ErrorKind::Unavailable, message, source)
    }
}

impl From<sled::Error> for EsError {
    fn from(e: sled::Error) -> Self {
        Self::unavailable("sled", e)
    }
}
