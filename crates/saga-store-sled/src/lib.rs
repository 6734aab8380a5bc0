//! The worker's local saga store on [sled]: implements `saga_ports::SagaStore` with the
//! saga state (a materialised copy of the journal), the outbox of effects not yet
//! published and the worker's identity, all in one sled database per worker.
//!
//! Every transition is one sled transaction over all trees; [`SledStore::flush`] makes
//! it durable, and concurrent callers share one fsync (group commit). Nothing depends on
//! a flush for correctness: a copy that is behind the journal is rebuilt from it. Corruption reported
//! by sled, and any record that does not decode, is returned as
//! `StoreError::Corrupted` naming the tree and key, never used and never a panic.
//!
//! Depends on `saga-core` and `saga-ports` only among our crates; it knows nothing of
//! NATS, actors or the wire format. The on-disk layout is in [`layout`].

mod codec;
mod flush;
mod store;

pub use store::SledStore;

/// On-disk layout: tree names and the record format.
///
/// | tree            | key                                  | value                          |
/// |-----------------|--------------------------------------|--------------------------------|
/// | `sagas`         | saga id                              | format byte + JSON `StoredSaga` |
/// | `outbox`        | saga id, `0x00`, position (u64 BE)   | format byte + JSON `OutboxEntry` |
/// | `meta`          | `format`, `next_position`, `worker_id` | u64 BE, u64 BE, UTF-8        |
///
/// Saga ids never contain `0x00`, so the outbox prefix of one saga never matches another.
pub mod layout {
    /// Saga id -> `StoredSaga`.
    pub const SAGAS: &str = "sagas";
    /// Saga id + `0x00` + position -> `OutboxEntry`.
    pub const OUTBOX: &str = "outbox";
    /// Trees of earlier layouts, dropped at open (processed inputs now live in the
    /// journalled saga state).
    pub const RETIRED: [&str; 2] = ["inbox", "inbox_by_time"];
    /// Store-wide values.
    pub const META: &str = "meta";

    /// Meta key: the layout version of the whole store.
    pub const META_FORMAT: &str = "format";
    /// Meta key: the position the next outbox entry gets.
    pub const META_NEXT_POSITION: &str = "next_position";
    /// Meta key: the worker's identity.
    pub const META_WORKER_ID: &str = "worker_id";

    /// Layout version this build reads and writes (meta `format`).
    pub const STORE_FORMAT: u64 = 1;
    /// First byte of every `sagas` and `outbox` value.
    pub const RECORD_FORMAT: u8 = 1;
}
