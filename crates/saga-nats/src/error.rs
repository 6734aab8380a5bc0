//! Setup errors: connecting, provisioning, binding a consumer. The ports themselves answer
//! with `saga_ports::PortError`.

use async_nats::jetstream::context::{CreateKeyValueError, CreateStreamError};
use async_nats::jetstream::stream::ConsumerError;

use crate::names::InvalidName;

/// Connecting to NATS or setting up streams, buckets and consumers failed.
///
/// Binaries report it with context and exit non-zero; none of these is worth retrying in a
/// tight loop.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The first connection failed (wrong URL, server down, authentication). Not retried
    /// by the client: fix the URL or start the server, then retry. gRPC: `UNAVAILABLE`.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The URL given.
        url: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },

    /// The provisioning settings are inconsistent (say, a backoff list whose first entry is
    /// not the ack wait). Not retryable: fix the settings. gRPC: `INVALID_ARGUMENT`.
    #[error("invalid NATS settings: {0}")]
    InvalidConfig(String),

    /// A service, partition or other subject token is not a valid subject token. Not
    /// retryable: fix the name. gRPC: `INVALID_ARGUMENT`.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),

    /// Creating or updating a stream failed. Retryable when the server is starting up or
    /// unreachable (timeouts); otherwise the server refused the change (for instance an
    /// existing stream with another retention policy, which JetStream cannot update):
    /// an operator must resolve it. gRPC: `FAILED_PRECONDITION` / `UNAVAILABLE`.
    #[error("cannot create or update stream {stream}: {source}")]
    Stream {
        /// Stream name.
        stream: String,
        /// The client's error.
        #[source]
        source: CreateStreamError,
    },

    /// Creating or updating a KV bucket failed. Handling as for [`NatsError::Stream`].
    #[error("cannot create or update KV bucket {bucket}: {source}")]
    KeyValue {
        /// Bucket name.
        bucket: String,
        /// The client's error.
        #[source]
        source: CreateKeyValueError,
    },

    /// Creating, updating or binding a durable consumer failed (for a bind: the consumer
    /// does not exist, so provision first). Handling as for [`NatsError::Stream`].
    #[error("cannot set up consumer {consumer} on stream {stream}: {source}")]
    Consumer {
        /// Stream name.
        stream: String,
        /// Consumer name.
        consumer: String,
        /// The client's error.
        #[source]
        source: ConsumerError,
    },

    /// The lease buckets could not be read or written. Retryable (the broker is
    /// unreachable or restarting). gRPC: `UNAVAILABLE`.
    #[error("partition leases: {0}")]
    Leases(String),

    /// Reading, redriving or purging dead letters failed. Retryable when the broker is
    /// unreachable; a refused publish (say, a `--to` subject no stream stores) is not.
    /// gRPC: `UNAVAILABLE` / `FAILED_PRECONDITION`.
    #[error("dead letters: {what}: {source}")]
    DeadLetters {
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: async_nats::Error,
    },

    /// No dead letter has this `SAGA_DLQ` sequence (never stored, purged, or not a
    /// dead letter). Not retryable. gRPC: `NOT_FOUND`.
    #[error("no dead letter with id {0} in SAGA_DLQ")]
    NoDeadLetter(u64),

    /// A concurrent provisioning kept changing the same object. Retryable. gRPC:
    /// `ABORTED`.
    #[error("{what} kept changing under us after {attempts} attempts")]
    Contended {
        /// Object name.
        what: String,
        /// Attempts made.
        attempts: u32,
    },
}
