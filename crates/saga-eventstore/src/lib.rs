//! Event sourcing on NATS JetStream.
//!
//! This crate owns the event store ports ([`EventStore`], [`SnapshotStore`]) with a
//! JetStream implementation and in-memory twins; aggregate definitions in YAML and their
//! validation; the [`Aggregate`] trait and the [`Repository`] that loads (snapshot +
//! tail, upcast) and executes commands with optimistic concurrency; projections with a
//! durable checkpoint per projection, a sled target and blue/green rebuilds.
//!
//! It carries no domain of its own: aggregates such as a bank account live in the
//! crates that use it.

pub mod aggregate;
pub mod control;
pub mod definition;
pub mod error;
pub mod jetstream;
pub mod memory;
pub mod model;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod projection;
pub mod store;
pub mod upcast;

pub use aggregate::{
    Aggregate, CommandMeta, DecodeError, DomainError, DomainEvent, ExecuteError, Executed,
    LoadedAggregate, Repository,
};
pub use definition::AggregateDefinition;
pub use error::{ErrorKind, EsError};
pub use memory::{MemoryEventStore, MemorySnapshotStore};
pub use model::{Appended, ExpectedVersion, NewEvent, RecordedEvent, Snapshot, StreamId, Until};
pub use projection::{
    Projection, ProjectionHandle, ProjectionRunner, ProjectionStatus, RebuildReport, Row,
    SledViews, ViewBatch, ViewStore, ViewTx,
};
pub use store::{EventStore, SnapshotStore};
pub use upcast::Upcasters;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
