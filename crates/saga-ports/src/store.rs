//! The worker's local store: saga state cache, outbox, inbox of processed inputs,
//! armed timers. One [`Commit`] per transition is atomic.

use async_trait::async_trait;
use saga_core::machine::{SagaState, TimerKey};
use saga_core::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{JournalAppend, OutgoingMessage, StoreError};

/// A saga as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSaga {
    /// State after the last committed transition.
    pub state: SagaState,
    /// Sequence of the saga's last journal record (0: none yet): the fence for the next
    /// append.
    pub journal_sequence: u64,
    /// Armed timers and their wall-clock deadlines (re-armed on load).
    pub timers: Vec<(TimerKey, Timestamp)>,
}

/// Something to publish once the transition is durable, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutboxItem {
    /// Append the transition to the journal (fenced).
    Journal(JournalAppend),
    /// Publish a command or a domain event.
    Message(OutgoingMessage),
}

/// An outbox item with its position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Position in the saga's outbox (increasing).
    pub position: u64,
    /// What to publish.
    pub item: OutboxItem,
}

/// Everything one transition writes, atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The saga after the transition.
    pub saga: StoredSaga,
    /// Items to publish, appended to the saga's outbox in this order.
    pub outbox: Vec<OutboxItem>,
    /// Id of the consumed input (see `Delivery::input_id`), so a redelivery is
    /// recognised; `None` for timer inputs.
    pub input_id: Option<String>,
    /// When the input was processed (for the inbox window).
    pub at: Timestamp,
}

/// The local store of a worker.
#[async_trait]
pub trait SagaStore: Send + Sync + 'static {
    /// Writes state, outbox items and the inbox mark in one transaction. Not durable
    /// until [`SagaStore::flush`] returns.
    fn commit(&self, commit: &Commit) -> Result<Vec<OutboxEntry>, StoreError>;

    /// Makes every commit so far durable. Callers (many actors) share one flush.
    async fn flush(&self) -> Result<(), StoreError>;

    /// One saga.
    fn load(&self, saga_id: &str) -> Result<Option<StoredSaga>, StoreError>;

    /// Sagas to resume on start: not terminal, or with an outbox not yet published.
    fn active(&self) -> Result<Vec<StoredSaga>, StoreError>;

    /// The saga's outbox, oldest first.
    fn outbox(&self, saga_id: &str) -> Result<Vec<OutboxEntry>, StoreError>;

    /// Removes a published outbox entry; a journal append also records the journal
    /// sequence it got (the next fence).
    fn outbox_done(
        &self,
        saga_id: &str,
        position: u64,
        journal_sequence: Option<u64>,
    ) -> Result<(), StoreError>;

    /// Drops the local copy of a saga (state and outbox): it is stale, another worker
    /// moved it on; the journal is the truth and the saga is rebuilt from it.
    fn forget(&self, saga_id: &str) -> Result<(), StoreError>;

    /// Whether this input was already processed.
    fn seen(&self, input_id: &str) -> Result<bool, StoreError>;

    /// Forgets inbox marks older than `before`; returns how many.
    fn prune_inbox(&self, before: Timestamp) -> Result<usize, StoreError>;
}
