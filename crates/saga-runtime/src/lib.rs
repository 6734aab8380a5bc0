//! The saga runtime: ractor actors that run sagas over the ports of `saga-ports`.
//!
//! - [`supervisor::SagaSupervisor`] owns one [`saga_actor::SagaActor`] per live saga,
//!   spawned on its first input or on recovery, stopped once terminal and idle, and
//!   restarted from persisted state when it fails (capped backoff, never given up); a
//!   sweep resumes any open saga of a held partition that has no actor;
//! - each saga actor applies inputs with the pure state machine, commits state and
//!   outbox to the local store (no flush waited for), relays the outbox (journal append
//!   fenced on the last sequence and naming the input id, then commands and create-only
//!   events) and only then acks the input. "Already processed" is read from the
//!   journalled state; each record carries a snapshot, so a saga is restored from its
//!   last record; step timeouts and backoff are actor timers, persisted and re-armed on
//!   load;
//! - [`dispatch`] pulls inputs from the partition consumers, dead-letters what cannot
//!   be decoded, and routes the rest;
//! - [`Worker`] ties it together and resumes every non-terminal saga on start;
//! - [`versions`]: each saga runs on the definition version it started on, loaded from
//!   the cluster's registry when the worker was started with another file.
//!
//! Depends on the ports, never on NATS or sled: binaries wire the implementations.

mod context;
mod dispatch;
pub mod envelope;
mod error;
mod interpret;
pub mod metrics;
pub mod saga_actor;
pub mod supervisor;
mod trace;
pub mod versions;
mod worker;

pub use context::{Context, FaultPoint, Limits, RuntimeConfig};
pub use dispatch::dispatch;
pub use error::RuntimeError;
pub use versions::{VersionError, Versions};
pub use worker::Worker;
