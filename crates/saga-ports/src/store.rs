//! The worker's local store: a materialised copy of the journal (saga state, outbox,
//! armed timers), used to start fast. One [`Commit`] per transition is atomic. It is
//! never the only witness of anything: "already processed" lives in the journalled
//! state ([`saga_core::SagaState::applied_inputs`]), and a copy that is behind or
//! unreadable is rebuilt from the journal.

use async_trait::async_trait;
use saga_core::machine::{Effect, SagaState, TimerKey};
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

/// What a journal record restores on its own: the saga after the transition, its armed
/// timers, and the messages the transition published (commands and domain events), so
/// that a saga is rebuilt from its last record without replaying its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The state after the transition.
    pub state: SagaState,
    /// Armed timers and their wall-clock deadlines.
    pub timers: Vec<(TimerKey, Timestamp)>,
    /// The `SendCommand` and `EmitEvent` effects of the transition.
    pub effects: Vec<Effect>,
}

/// Something to publish once the transition is committed, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutboxItem {
    /// Enter the saga in the open-saga index (before its first journal record, so an
    /// open saga is never missing from the index).
    Open {
        /// Its partition.
        partition: u32,
    },
    /// Append the transition to the journal (fenced).
    Journal(JournalAppend),
    /// Publish a command (deduplicated by message id).
    Message(OutgoingMessage),
    /// Publish a domain event once for the life of the stream: refused by the server
    /// when its subject already holds a message.
    Event(OutgoingMessage),
    /// The saga ended and everything before this entry is published: remove it from
    /// the open-saga index.
    Close {
        /// Its partition.
        partition: u32,
    },
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
}

/// The local store of a worker.
#[async_trait]
pub trait SagaStore: Send + Sync + 'static {
    /// Writes state and outbox items in one transaction. Not durable until
    /// [`SagaStore::flush`] returns (nothing depends on that: the journal is the truth).
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

    /// Removes several published outbox entries of one saga at once; a journal append
    /// among them records the sequence it got. The default removes them one by one.
    fn outbox_done_all(
        &self,
        saga_id: &str,
        positions: &[u64],
        journal_sequence: Option<u64>,
    ) -> Result<(), StoreError> {
        for position in positions {
            self.outbox_done(saga_id, *position, journal_sequence)?;
        }
        Ok(())
    }

    /// As [`SagaStore::outbox_done_all`], given the saga as the caller holds it after the
    /// relay (committed, with the journal sequence its append got), or `None` when no
    /// append was among them: a store may write that copy as it is instead of reading
    /// its own back to change one field. Nothing is written for a saga the store does
    /// not hold. The default records only the sequence.
    fn outbox_done_saga(
        &self,
        saga_id: &str,
        positions: &[u64],
        saga: Option<&StoredSaga>,
    ) -> Result<(), StoreError> {
        self.outbox_done_all(saga_id, positions, saga.map(|s| s.journal_sequence))
    }

    /// Drops the local copy of a saga (state and outbox): it is stale (another worker
    /// moved it on, or a transition was fenced), unreadable, or finished; the journal
    /// is the truth and the saga is rebuilt from it when needed.
    fn forget(&self, saga_id: &str) -> Result<(), StoreError>;
}
