//! Generated Protobuf types of `saga.v1` (compiled from `proto/saga/v1` with protox at
//! build time) and the conversions between them and the `saga-core` model.
//!
//! Proto types never reach `saga-core`; conversions live here. This crate does no I/O.

#[allow(missing_docs, clippy::all, missing_debug_implementations)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/saga.v1.rs"));
}

/// Event sourcing (`saga.es.v1`): the stored-event envelope, snapshots and the events of
/// the example aggregates.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod es {
    include!(concat!(env!("OUT_DIR"), "/saga.es.v1.rs"));
}

mod convert;

pub use convert::*;
pub use generated::*;
pub use prost::Message;

/// The encoded `FileDescriptorSet` of `saga.v1` (for gRPC server reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/saga_v1_descriptor.bin"));
