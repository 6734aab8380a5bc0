//! What a service implements: a [`Handler`] that runs inside the sled transaction
//! which also records its reply in the inbox.

use async_trait::async_trait;
use saga_core::Timestamp;
use saga_proto::{Payload, StepCommand};
use sled::transaction::{TransactionalTree, UnabortableTransactionError};
use sled::IVec;

/// A participant's answer to one command.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Done; the result travels to the saga (and to later steps).
    Ok(Payload),
    /// A definite "no" (e.g. "Insufficient stock: ..."): recorded, not retried, not
    /// compensated by the saga.
    BusinessFailure(String),
    /// Something broke and a retry may succeed. Never recorded in the inbox, and every
    /// tree write of the same run is rolled back; the saga retries per its policy.
    TechnicalFailure(String),
}

impl Reply {
    /// `Ok` with an empty payload.
    pub fn ok() -> Self {
        Self::Ok(Payload::default())
    }
}

/// Why a handler gave up without a [`Reply`]. Every variant rolls the transaction back.
#[derive(Debug, Clone, PartialEq)]
pub enum Abort {
    /// sled said so (a conflict, which re-runs the handler, or a storage error, which
    /// naks the delivery). Produced by `?` on the [`Tx`] methods.
    Store(UnabortableTransactionError),
    /// Transient trouble: the delivery is nak'ed with backoff and dead-lettered after
    /// the participant's `max_deliveries`.
    Retry(String),
    /// The command can never be handled (an action this service does not know): it goes
    /// to the dead-letter queue at once.
    Reject(String),
}

impl From<UnabortableTransactionError> for Abort {
    fn from(e: UnabortableTransactionError) -> Self {
        Self::Store(e)
    }
}

impl std::fmt::Display for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Store(e) => write!(f, "store: {e}"),
            Self::Retry(r) => write!(f, "retry: {r}"),
            Self::Reject(r) => write!(f, "rejected: {r}"),
        }
    }
}

/// Executes the actions of one service.
///
/// `handle` runs inside the sled transaction that also records the reply, so the
/// business write and the inbox record commit together or not at all: a crash between
/// the effect and the reply can never lead to a second effect. sled re-runs the closure
/// on a conflict, so `handle` must be pure apart from writes through the [`Tx`]: no
/// I/O, no clocks (use [`Tx::now`]), no randomness, no counters outside sled.
///
/// A service whose effect lives outside sled (an event store, another database)
/// performs it in [`Handler::prepare`], which runs before the transaction, and `handle`
/// then records the answer it finds in [`Tx::prepared`]. Such an effect must be
/// idempotent per command: a crash after it and before the reply is recorded runs
/// `prepare` again on the redelivery (e.g. events with ids derived from the command, or
/// a state machine that answers "already done").
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Names of the sled trees `handle` uses (the participant opens them).
    fn trees(&self) -> &[&str];

    /// Work outside sled, before the transaction; its answer reaches `handle` as
    /// [`Tx::prepared`]. Runs only for a command the inbox does not answer. The default
    /// does nothing.
    async fn prepare(&self, cmd: &StepCommand, now: Timestamp) -> Result<Option<Reply>, Abort> {
        let _ = (cmd, now);
        Ok(None)
    }

    /// Executes `cmd.action`. Return `Err(Abort::Reject(..))` for an action the service
    /// does not know.
    fn handle(&self, tx: &Tx<'_>, cmd: &StepCommand) -> Result<Reply, Abort>;
}

/// Transactional access to a handler's own trees, by name.
pub struct Tx<'a> {
    now: Timestamp,
    prepared: Option<&'a Reply>,
    names: &'a [String],
    trees: &'a [TransactionalTree],
    ids: &'a TransactionalTree,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("now", &self.now)
            .field("trees", &self.names)
            .finish_non_exhaustive()
    }
}

impl<'a> Tx<'a> {
    /// Access to `trees` (named `names`, in order) and the id generator `ids`, inside
    /// one sled transaction at `now`. For SDKs built on this one (event consumers).
    pub fn new(
        now: Timestamp,
        names: &'a [String],
        trees: &'a [TransactionalTree],
        ids: &'a TransactionalTree,
    ) -> Self {
        Self {
            now,
            prepared: None,
            names,
            trees,
            ids,
        }
    }

    /// The same access, with the answer of [`Handler::prepare`].
    pub fn with_prepared(mut self, prepared: Option<&'a Reply>) -> Self {
        self.prepared = prepared;
        self
    }

    /// What [`Handler::prepare`] answered for this command (`None` when it did nothing).
    pub fn prepared(&self) -> Option<&Reply> {
        self.prepared
    }

    /// When the command is being handled (the participant's clock; stable across
    /// re-runs of the closure).
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// One of the trees named by [`Handler::trees`]; any other name is a bug in the
    /// handler and retries cannot fix it, so it rejects the command.
    pub fn tree(&self, name: &str) -> Result<&TransactionalTree, Abort> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| &self.trees[i])
            .ok_or_else(|| Abort::Reject(format!("handler uses undeclared tree `{name}`")))
    }

    /// Reads a key.
    pub fn get(&self, tree: &str, key: impl AsRef<[u8]>) -> Result<Option<IVec>, Abort> {
        Ok(self.tree(tree)?.get(key)?)
    }

    /// Writes a key; returns the previous value.
    pub fn insert(
        &self,
        tree: &str,
        key: impl AsRef<[u8]>,
        value: impl Into<IVec>,
    ) -> Result<Option<IVec>, Abort> {
        Ok(self.tree(tree)?.insert(key.as_ref(), value)?)
    }

    /// Removes a key; returns the previous value.
    pub fn remove(&self, tree: &str, key: impl AsRef<[u8]>) -> Result<Option<IVec>, Abort> {
        Ok(self.tree(tree)?.remove(key.as_ref())?)
    }

    /// A database-wide unique, increasing id (gaps are possible when a run is
    /// retried): keys for append-only ledgers.
    pub fn generate_id(&self) -> Result<u64, Abort> {
        Ok(self
            .ids
            .generate_id()
            .map_err(UnabortableTransactionError::Storage)?)
    }
}
