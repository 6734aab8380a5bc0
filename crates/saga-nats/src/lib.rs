//! The JetStream implementation of the broker ports of `saga-ports`.
//!
//! This crate owns:
//!
//! - **the names on the wire** ([`names`]): streams, subjects, KV buckets and consumers
//!   that users type into the `nats` CLI;
//! - **provisioning** ([`provision`], [`ensure_service_consumer`]): idempotent creation
//!   (or update) of every stream, the KV buckets and the durable consumers;
//! - **the ports**: [`NatsPublisher`] (publish with `Nats-Msg-Id`, awaiting the stored ack),
//!   [`NatsJournal`] (per-saga history fenced by `Nats-Expected-Last-Subject-Sequence`),
//!   [`NatsConsumer`] / [`NatsAcker`] (durable pull consumer with confirmed settlements),
//!   [`NatsDefinitionRegistry`] (definition versions in KV),
//!   and [`dead_letter`];
//! - **the dead-letter queue for operators** ([`dead_letters`]): list, show, redrive, purge;
//! - **the connection** ([`connect`]): fail fast on a wrong URL, reconnect forever after.
//!
//! Port errors are [`saga_ports::PortError`] (the caller branches on them); setup errors
//! (connect, provisioning, binding a consumer) are [`NatsError`].
//!
//! It must not depend on the saga runtime, the local store or an actor framework: the
//! runtime depends on the ports, and binaries wire this crate in.

pub mod auth;
mod clock;
mod connect;
mod consumer;
pub mod dead_letters;
mod definitions;
mod dlq;
mod error;
mod journal;
pub mod leases;
pub mod membership;
pub mod names;
mod open;
mod provision;
mod publisher;
pub mod sampler;
pub mod trim;
mod waiting;

pub use clock::BrokerClock;
pub use connect::{
    connect, connect_as, connect_with, inbox_prefix, Security, DEFAULT_CONNECTION_NAME,
};
pub use consumer::{NatsAcker, NatsConsumer};
pub use definitions::NatsDefinitionRegistry;
pub use dlq::dead_letter;
pub use error::NatsError;
pub use journal::NatsJournal;
pub use open::NatsOpenSagas;
pub use provision::{
    ensure_bucket, ensure_event_consumer, ensure_partition_consumer, ensure_service_consumer,
    provision, provision_streams, stream_drift, ConsumerSettings, ProvisionConfig, Provisioned,
};
pub use publisher::NatsPublisher;
pub use waiting::NatsWaitingInputs;

/// FNV-1a of a name: spreads where workers start looking for free partitions.
pub(crate) fn names_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
