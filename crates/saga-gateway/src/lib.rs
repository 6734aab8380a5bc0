//! The gateway of the saga runtime: the `saga.v1.SagaGateway` gRPC service (tonic), with
//! gRPC health and server reflection.
//!
//! This crate owns:
//!
//! - **the write side of the API**: PlaceOrder and StartSaga validate the request,
//!   claim its idempotency key in the `saga_requests` KV bucket ([`requests`]), publish
//!   the start on `SAGA_INBOX` and answer only once the stream acknowledged it (an
//!   accepted request is never lost); CancelSaga publishes a cancel input;
//! - **the read side** ([`Projection`]): a sled projection of `SAGA_JOURNAL` (saga views,
//!   their history, a newest-first index and the checkpoint) that GetSaga, ListSagas,
//!   WatchSaga and GetSagaHistory read. The gateway never asks a worker; reads keep
//!   working while NATS is down;
//! - **the dead-letter queue for tools**: ListDeadLetters, GetDeadLetter,
//!   RedriveDeadLetter and PurgeDeadLetters (`SAGA_DLQ`, as `sagactl dlq`);
//! - [`serve`]: the server, the task that follows the journal, graceful shutdown.
//!
//! Errors are [`GatewayError`], each with its gRPC code. Bad input is `INVALID_ARGUMENT`
//! whose message starts with the field (`items[0].quantity: must be positive (got 0)`).
//!
//! It depends on the model (`saga-core`), the wire types (`saga-proto`), the message
//! envelopes of `saga-runtime` and the JetStream helpers of `saga-nats`; it must not
//! depend on the worker's store or on the actors: it reads what workers journal.

pub mod auth;
mod dead_letters;
mod error;
mod follow;
pub mod limits;
pub mod projection;
pub mod requests;
mod server;
mod service;
pub mod validate;
pub mod view;
pub mod workers;

pub use error::GatewayError;
pub use follow::{rebuild_projection, RebuildStats};
pub use projection::{ListFilter, Page, Projection, Subscription};
pub use server::{serve, serve_on, GatewayConfig, Security, TlsPem};
pub use service::{GatewayService, DEFAULT_CANCEL_REASON, ORDER_SAGA};
