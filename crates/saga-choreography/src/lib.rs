//! Consumer SDK for domain events (choreography): services that react to the events on
//! `SAGA_EVENTS` without a coordinator.
//!
//! The event catalog (`events/*.yaml`, loaded by `saga_core::catalog`) is enforced:
//!
//! - **schema**: the catalog is checked against the `saga.v1` Protobuf messages
//!   ([`check_catalog`]) and every payload is decoded as its catalog message; one that
//!   does not decode, or lacks its idempotency key, goes to the DLQ at once;
//! - **dedupe**: an event is handled once per (event, idempotency key) within a window
//!   (24 h by default); the handler's writes and its dedupe record commit in **one
//!   sled transaction**, so a consumer killed after its effect does not repeat it;
//! - **order**: the events of one key are handled one at a time in stream order,
//!   different keys in parallel; an event that breaks one of the catalog's ordering
//!   rules for its key (`A must precede B`, `A cannot follow B`) is parked (recorded,
//!   counted, dead-lettered with the reason) and never applied;
//! - **retry ladder**: a technical failure is tried again after each rung (1m, 5m, 30m
//!   by default) while its key waits; each failure is recorded in the ledger (so a
//!   restart does not reset the ladder) and logged with the next attempt's time; past
//!   the last rung the event goes to `SAGA_DLQ` with its story (original subject,
//!   stream sequence, deliveries, every error) and an error-level log line.
//!
//! Depends on the ports (`saga-ports`), the wire types (`saga-proto`) and sled; never on
//! NATS: binaries pass in the JetStream consumer and publisher (see `saga-nats`).

mod consumer;
mod error;
mod handler;
mod schema;
mod store;

pub use consumer::{CrashHook, EventConsumer, Settings};
pub use error::ChoreographyError;
pub use handler::{Event, EventHandler, EventTx, HandleError};
pub use saga_core::ladder::{NextStep, RetryLadder};
pub use schema::{check_catalog, DecodedEvent, EventCodec, SchemaError};
pub use store::{
    ApplyError, ConsumerStore, Failure, Outcome, ParkedEvent, COUNTERS_TREE, DEDUPE_BY_TIME_TREE,
    DEDUPE_TREE, FAILURES_TREE, PARKED_TREE, SEEN_TREE,
};

/// Re-exported so handlers name the same sled, catalog and wire types as the SDK.
pub use saga_core::catalog;
pub use saga_proto;
pub use sled;

/// Loads `path` and checks it against the Protobuf messages: the catalog and its codec.
pub fn load(
    path: &std::path::Path,
) -> Result<(catalog::EventCatalog, EventCodec), ChoreographyError> {
    let loaded = catalog::load_catalog(path)?;
    let codec = check_catalog(&path.display().to_string(), &loaded.catalog)?;
    Ok((loaded.catalog, codec))
}
