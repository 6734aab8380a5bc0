//! [`GatewayError`]: what can go wrong in the gateway, and its gRPC status.

use std::net::SocketAddr;

use tonic::{Code, Status};

/// Something the gateway could not do.
///
/// Request handlers turn it into a gRPC status with [`GatewayError::code`]; `serve`
/// returns it for setup failures (the binary reports it and exits non-zero).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request is invalid: `field` names what is wrong. Not retryable: fix the
    /// request. gRPC: `INVALID_ARGUMENT`, message `<field>: <reason>`.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field, as a path (`items[2].quantity`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The projection's sled store failed (I/O error, or sled reports corruption). Not
    /// retryable by a client. The gateway fails closed: stop it, delete its data
    /// directory or run `saga-gateway --rebuild-projection`. gRPC: `INTERNAL`.
    #[error("projection store: {context}: {source}")]
    Store {
        /// What the gateway was doing.
        context: String,
        /// sled's error.
        #[source]
        source: sled::Error,
    },

    /// A record of the projection cannot be decoded (corrupted, or written by an
    /// incompatible version). Not retryable: rebuild the projection. gRPC: `DATA_LOSS`.
    #[error("projection record {what} is unreadable ({detail}); rebuild the projection")]
    Corrupt {
        /// Which record.
        what: String,
        /// Why it does not decode.
        detail: String,
    },

    /// NATS is unreachable or did not answer in time (the client reconnects by itself).
    /// Retryable with the same idempotency key. gRPC: `UNAVAILABLE`.
    #[error("NATS is unreachable: {0}")]
    Unavailable(String),

    /// The projection is being rebuilt from `SAGA_JOURNAL` (it was found corrupt) and
    /// cannot answer this read yet. Retryable shortly. gRPC: `UNAVAILABLE`.
    #[error("this gateway's read model is being rebuilt from SAGA_JOURNAL ({0}); retry shortly")]
    Rebuilding(String),

    /// NATS refused a request for good (invalid subject, message too large). A bug or a
    /// misconfiguration, not retryable. gRPC: `INTERNAL`.
    #[error("NATS refused the request: {0}")]
    Rejected(String),

    /// Setting up NATS (the `saga_requests` bucket) failed. Handling as for
    /// `saga_nats::NatsError`: fix the server or the settings, then restart.
    #[error(transparent)]
    Nats(#[from] saga_nats::NatsError),

    /// The gRPC address cannot be bound (in use, no permission). Not retryable as is.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The gRPC server failed while running.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),

    /// The reflection service could not be built from the descriptors (a build problem).
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

impl GatewayError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn store(context: impl Into<String>, source: sled::Error) -> Self {
        Self::Store {
            context: context.into(),
            source,
        }
    }

    /// The gRPC code a client sees for this error.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::Unavailable(_) | Self::Rebuilding(_) => Code::Unavailable,
            Self::Corrupt { .. } => Code::DataLoss,
            Self::Store { .. }
            | Self::Rejected(_)
            | Self::Nats(_)
            | Self::Bind { .. }
            | Self::Transport(_)
            | Self::Reflection(_) => Code::Internal,
        }
    }
}

impl From<GatewayError> for Status {
    fn from(e: GatewayError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

impl From<saga_ports::PortError> for GatewayError {
    fn from(e: saga_ports::PortError) -> Self {
        match e {
            saga_ports::PortError::Unavailable(m) => Self::Unavailable(m),
            other => Self::Rejected(other.to_string()),
        }
    }
}
