//! Errors of the participant SDK.

use saga_ports::PortError;

/// What went wrong in a participant.
///
/// Per-command problems (a bad message, a failing handler, the broker being away) are
/// handled inside [`crate::Participant::run`] by nak/DLQ and never surface here; these
/// variants are what setup and the store report to the binary.
#[derive(Debug, thiserror::Error)]
pub enum ParticipantError {
    /// sled failed (I/O, or a lock held by another process on the same directory).
    /// Retryable only after the cause is fixed; a binary reports it and exits non-zero.
    #[error("participant store: {0}")]
    Store(#[from] sled::Error),
    /// The store holds bytes this version cannot read. Fail closed: never use the
    /// directory silently; an operator restores or removes it.
    #[error("participant store corrupted: {0}")]
    Corrupted(String),
    /// The broker failed an operation the SDK could not settle by nak (see
    /// [`PortError::is_retryable`]).
    #[error(transparent)]
    Port(#[from] PortError),
    /// The participant was configured wrongly (no service, a service twice, a knob out
    /// of range). Not retryable: fix the configuration.
    #[error("invalid participant configuration: {0}")]
    Config(String),
}
