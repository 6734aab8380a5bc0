//! The ports: where events and snapshots are kept.

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::error::EsError;
use crate::model::{Appended, ExpectedVersion, NewEvent, RecordedEvent, Snapshot, StreamId, Until};

/// An append-only store of events, one stream per aggregate instance.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` (in order) to `stream` if it is at `expected`.
    ///
    /// A stream at another version fails with [`crate::ErrorKind::Conflict`]; the
    /// caller reloads and decides again. Appending events whose ids are already stored
    /// (a retry of an append whose answer was lost) stores nothing and answers with
    /// `duplicate: true`.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, EsError>;

    /// The events of `stream` from version `from` (1-based, inclusive) up to `until`.
    /// `position` is a store position at or before event `from` (a snapshot's), or 0;
    /// it lets the store skip what comes before.
    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        position: u64,
        until: Until,
    ) -> Result<Vec<RecordedEvent>, EsError>;

    /// The version of the stream's last event (0 when it has none).
    async fn stream_version(&self, stream: &StreamId) -> Result<u64, EsError>;

    /// Every event of one aggregate type from `position` (inclusive) on, in store
    /// order, followed by the events appended later: the stream does not end.
    async fn subscribe(
        &self,
        aggregate: &str,
        position: u64,
    ) -> Result<BoxStream<'static, Result<RecordedEvent, EsError>>, EsError>;

    /// How many events of the aggregate type are stored after `position`.
    async fn count_after(&self, aggregate: &str, position: u64) -> Result<u64, EsError>;

    /// Position of the last event of the aggregate type (0 when there is none).
    async fn head(&self, aggregate: &str) -> Result<u64, EsError>;
}

/// The latest snapshot of each stream.
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// Stores `snapshot` as the stream's latest (an older one never replaces a newer).
    async fn save(&self, stream: &StreamId, snapshot: Snapshot) -> Result<(), EsError>;

    /// The stream's latest snapshot.
    async fn load(&self, stream: &StreamId) -> Result<Option<Snapshot>, EsError>;
}
