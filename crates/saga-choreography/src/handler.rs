//! What a consuming service implements: an [`EventHandler`] that runs inside the sled
//! transaction which also records the event as handled.

use saga_core::Timestamp;
use saga_participant::{Abort, Tx};
use saga_ports::{Headers, OutgoingMessage};
use sled::transaction::{TransactionalTree, UnabortableTransactionError};
use sled::IVec;

/// One domain event, decoded as far as the SDK needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Event name (`OrderConfirmed`).
    pub name: String,
    /// Value of the catalog's idempotency key (the order id).
    pub key: String,
    /// Correlation id: the payload's `correlationId`, else the `Saga-Id` header.
    pub correlation_id: Option<String>,
    /// Subject it was published on.
    pub subject: String,
    /// Its stream sequence.
    pub stream_sequence: u64,
    /// Its headers.
    pub headers: Headers,
    /// The Protobuf payload (it decodes as the catalog's message).
    pub payload: Vec<u8>,
}

/// Why a handler produced no effect. Every variant rolls the transaction back.
#[derive(Debug, Clone, PartialEq)]
pub enum HandleError {
    /// sled said so (a conflict re-runs the handler; a storage error counts as a
    /// technical failure). Produced by `?` on the [`EventTx`] methods.
    Store(UnabortableTransactionError),
    /// Something broke and a later attempt may succeed: the event climbs the retry
    /// ladder, then goes to the DLQ.
    Technical(String),
    /// The event can never be handled: it goes to the DLQ at once.
    Reject(String),
}

impl From<UnabortableTransactionError> for HandleError {
    fn from(e: UnabortableTransactionError) -> Self {
        Self::Store(e)
    }
}

/// Reacts to the events a service consumes.
///
/// `handle` runs inside the sled transaction that records the event as handled, so its
/// writes and the dedupe record commit together: a crash after the effect never leads
/// to a second one. sled re-runs the closure on a conflict, so `handle` must be pure
/// apart from writes through the [`EventTx`]. Messages it returns (e.g. a new domain
/// event) are stored with the dedupe record and published create-only after the
/// commit, again on a redelivery, before the event is acked.
pub trait EventHandler: Send + Sync + 'static {
    /// Names of the sled trees `handle` uses.
    fn trees(&self) -> &[&str];

    /// Applies `event`; returns the messages to publish.
    fn handle(&self, tx: &EventTx<'_>, event: &Event) -> Result<Vec<OutgoingMessage>, HandleError>;
}

/// Transactional access to a handler's own trees, by name: the participant SDK's
/// [`Tx`], answering [`HandleError`]s.
#[derive(Debug)]
pub struct EventTx<'a>(Tx<'a>);

impl From<Abort> for HandleError {
    fn from(e: Abort) -> Self {
        match e {
            Abort::Store(e) => Self::Store(e),
            Abort::Retry(why) => Self::Technical(why),
            Abort::Reject(why) => Self::Reject(why),
        }
    }
}

impl<'a> EventTx<'a> {
    pub(crate) fn new(
        now: Timestamp,
        names: &'a [String],
        trees: &'a [TransactionalTree],
        ids: &'a TransactionalTree,
    ) -> Self {
        Self(Tx::new(now, names, trees, ids))
    }

    /// When the event is being handled (stable across re-runs of the closure).
    pub fn now(&self) -> Timestamp {
        self.0.now()
    }

    /// One of the trees named by [`EventHandler::trees`]; another name is a bug in
    /// the handler, which rejects the event.
    pub fn tree(&self, name: &str) -> Result<&TransactionalTree, HandleError> {
        Ok(self.0.tree(name)?)
    }

    /// Reads a key.
    pub fn get(&self, tree: &str, key: impl AsRef<[u8]>) -> Result<Option<IVec>, HandleError> {
        Ok(self.0.get(tree, key)?)
    }

    /// Writes a key; returns the previous value.
    pub fn insert(
        &self,
        tree: &str,
        key: impl AsRef<[u8]>,
        value: impl Into<IVec>,
    ) -> Result<Option<IVec>, HandleError> {
        Ok(self.0.insert(tree, key, value)?)
    }

    /// Removes a key; returns the previous value.
    pub fn remove(&self, tree: &str, key: impl AsRef<[u8]>) -> Result<Option<IVec>, HandleError> {
        Ok(self.0.remove(tree, key)?)
    }

    /// A database-wide unique, increasing id: keys for append-only ledgers.
    pub fn generate_id(&self) -> Result<u64, HandleError> {
        Ok(self.0.generate_id()?)
    }
}
