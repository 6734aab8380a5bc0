//! Aggregates: [`Aggregate::handle`] decides (command -> events), [`Aggregate::apply`]
//! evolves the state; the [`Repository`] loads (snapshot + tail, upcast) and appends
//! with optimistic concurrency, retrying a decision that lost a race.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use saga_core::{Clock, Timestamp};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::definition::AggregateDefinition;
use crate::error::{ErrorKind, EsError};
use crate::model::{ExpectedVersion, NewEvent, RecordedEvent, Snapshot, StreamId, Until};
use crate::store::{EventStore, SnapshotStore};
use crate::upcast::Upcasters;

/// A refused command: a business rule, not a fault. Not retryable; gRPC
/// `FAILED_PRECONDITION`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}{}", .invariant.as_ref().map(|i| format!(" (invariant: {i})")).unwrap_or_default())]
pub struct DomainError {
    /// The invariant the command would break, as written in the definition.
    pub invariant: Option<String>,
    /// What is wrong, with the numbers that matter.
    pub message: String,
}

impl DomainError {
    /// A refusal that breaks `invariant`.
    pub fn invariant(invariant: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            invariant: Some(invariant.into()),
            message: message.into(),
        }
    }

    /// A refusal that is not about an invariant (e.g. an unknown account).
    pub fn rejected(message: impl Into<String>) -> Self {
        Self {
            invariant: None,
            message: message.into(),
        }
    }
}

/// Why a payload could not be read as an event. Not retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode `{event_type}`: {message}")]
pub struct DecodeError {
    /// The event type.
    pub event_type: String,
    /// What is wrong.
    pub message: String,
}

/// The events of one aggregate type.
pub trait DomainEvent: Sized + Clone + fmt::Debug + Send + Sync + 'static {
    /// The type name, as declared under `events` in the definition.
    fn event_type(&self) -> &'static str;
    /// The payload at the newest schema version.
    fn encode(&self) -> Vec<u8>;
    /// Reads a payload at the newest schema version.
    fn decode(event_type: &str, payload: &[u8]) -> Result<Self, DecodeError>;
}

/// An event-sourced aggregate. `handle` holds the business rules and must not change
/// the state; `apply` must not refuse (the event happened).
pub trait Aggregate:
    Default + Clone + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// `aggregateRoot` of the definition.
    const TYPE: &'static str;
    /// What callers ask for.
    type Command: Clone + Send + Sync;
    /// What happened.
    type Event: DomainEvent;

    /// Decides what happens; no events means "nothing to do" (e.g. a repeated request).
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, DomainError>;

    /// Evolves the state by one event.
    fn apply(&mut self, event: &Self::Event);

    /// A stable id for `event` so that a retried command stores it once (e.g. the
    /// request's transaction id); `None` gives a random id.
    fn event_id(&self, event: &Self::Event) -> Option<String> {
        let _ = event;
        None
    }
}

/// Ids a command carries into the events it causes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandMeta {
    /// The id of the command (causation id of its events).
    pub command_id: String,
    /// The id of the whole request (correlation id).
    pub correlation_id: String,
}

/// An aggregate as loaded.
#[derive(Debug, Clone)]
pub struct LoadedAggregate<A> {
    /// The state.
    pub state: A,
    /// Version of its last event (0: no event yet).
    pub version: u64,
    /// Position of its last event.
    pub position: u64,
    /// Timestamp of its last event.
    pub timestamp: Timestamp,
    /// The snapshot the load started from.
    pub snapshot_version: Option<u64>,
    /// How many events were read from the store.
    pub events_read: usize,
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct Executed<A: Aggregate> {
    /// The state after it.
    pub state: A,
    /// The stream's version after it.
    pub version: u64,
    /// The events it appended (none for a repeated request).
    pub events: Vec<A::Event>,
    /// How many times the decision was taken again after losing a race.
    pub retries: u32,
}

/// Why a command was not executed.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// The aggregate refused. Not retryable; gRPC `FAILED_PRECONDITION`.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The store failed; see [`EsError::kind`] (a conflict that outlasted the retries
    /// is `Conflict`, gRPC `ABORTED`).
    #[error(transparent)]
    Store(#[from] EsError),
}

/// Loads and saves one aggregate type.
pub struct Repository<A: Aggregate> {
    events: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
    upcasters: Upcasters,
    versions: HashMap<String, u32>,
    snapshot_every: Option<u64>,
    clock: Arc<dyn Clock>,
    max_retries: u32,
    _aggregate: std::marker::PhantomData<fn() -> A>,
}

impl<A: Aggregate> fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &A::TYPE)
            .field("snapshot_every", &self.snapshot_every)
            .field("upcasters", &self.upcasters)
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Self {
            events: self.events.clone(),
            snapshots: self.snapshots.clone(),
            upcasters: self.upcasters.clone(),
            versions: self.versions.clone(),
            snapshot_every: self.snapshot_every,
            clock: self.clock.clone(),
            max_retries: self.max_retries,
            _aggregate: std::marker::PhantomData,
        }
    }
}

impl<A: Aggregate> Repository<A> {
    /// A repository for the aggregate `definition` describes (its `aggregateRoot` must
    /// be `A::TYPE`, and `upcasters` must reach every declared version).
    pub fn new(
        definition: &AggregateDefinition,
        events: Arc<dyn EventStore>,
        snapshots: Arc<dyn SnapshotStore>,
        upcasters: Upcasters,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, EsError> {
        if definition.name != A::TYPE {
            return Err(EsError::invalid(format!(
                "the definition is of `{}`, not `{}`",
                definition.name,
                A::TYPE
            )));
        }
        upcasters.check(definition)?;
        Ok(Self {
            events,
            snapshots,
            upcasters,
            versions: definition
                .events
                .iter()
                .map(|e| (e.name.clone(), e.version))
                .collect(),
            snapshot_every: definition.event_store.snapshot_every,
            clock,
            max_retries: 10,
            _aggregate: std::marker::PhantomData,
        })
    }

    /// Overrides the definition's snapshot interval (`None`: never snapshot).
    pub fn with_snapshot_every(mut self, every: Option<u64>) -> Self {
        self.snapshot_every = every;
        self
    }

    /// How often a command is decided again after losing a race (default 10).
    pub fn with_max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// The event store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.events
    }

    fn stream(&self, id: &str) -> Result<StreamId, EsError> {
        StreamId::new(A::TYPE, id)
    }

    /// The stored event, upcast to the newest version and decoded.
    pub fn decode(&self, event: RecordedEvent) -> Result<(RecordedEvent, A::Event), EsError> {
        let Some(newest) = self.versions.get(&event.event_type).copied() else {
            return Err(EsError::new(
                ErrorKind::Corrupt,
                format!(
                    "event {} of {} has type `{}`, which the definition does not declare",
                    event.version, event.stream, event.event_type
                ),
            ));
        };
        let event = self.upcasters.upcast(event, newest)?;
        let decoded = A::Event::decode(&event.event_type, &event.payload).map_err(|e| {
            EsError::corrupt(format!("event {} of {}", event.version, event.stream), e)
        })?;
        Ok((event, decoded))
    }

    /// The current state: the latest snapshot and the events after it.
    pub async fn load(&self, id: &str) -> Result<LoadedAggregate<A>, EsError> {
        self.load_at(id, Until::End).await
    }

    /// The state as of a version or a time (time travel). A snapshot is used only if it
    /// is not past the bound.
    pub async fn load_at(&self, id: &str, until: Until) -> Result<LoadedAggregate<A>, EsError> {
        let stream = self.stream(id)?;
        let mut loaded = LoadedAggregate {
            state: A::default(),
            version: 0,
            position: 0,
            timestamp: 0,
            snapshot_version: None,
            events_read: 0,
        };
        if let Some(s) = self.snapshots.load(&stream).await? {
            if until.admits(&s) {
                match serde_json::from_slice::<A>(&s.state) {
                    Ok(state) => {
                        loaded = LoadedAggregate {
                            state,
                            version: s.version,
                            position: s.position,
                            timestamp: s.timestamp,
                            snapshot_version: Some(s.version),
                            events_read: 0,
                        };
                    }
                    // A state type that changed shape: replay instead.
                    Err(e) => {
                        tracing::warn!(%stream, error = %e, "ignoring an unreadable snapshot")
                    }
                }
            }
        }
        let events = self
            .events
            .read_stream(&stream, loaded.version + 1, loaded.position, until)
            .await?;
        for e in events {
            let (e, decoded) = self.decode(e)?;
            loaded.state.apply(&decoded);
            loaded.version = e.version;
            loaded.position = e.position;
            loaded.timestamp = e.timestamp;
            loaded.events_read += 1;
        }
        Ok(loaded)
    }

    /// The events of an aggregate up to `until`, upcast and decoded.
    pub async fn history(
        &self,
        id: &str,
        until: Until,
    ) -> Result<Vec<(RecordedEvent, A::Event)>, EsError> {
        let stream = self.stream(id)?;
        self.events
            .read_stream(&stream, 1, 0, until)
            .await?
            .into_iter()
            .map(|e| self.decode(e))
            .collect()
    }

    /// Loads, decides and appends; a decision that lost a race to another writer is
    /// taken again on the new state (up to the retry limit).
    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
        meta: &CommandMeta,
    ) -> Result<Executed<A>, ExecuteError> {
        let stream = self.stream(id)?;
        let mut retries = 0;
        loop {
            let loaded = self.load(id).await?;
            let events = loaded.state.handle(command.clone())?;
            if events.is_empty() {
                return Ok(Executed {
                    state: loaded.state,
                    version: loaded.version,
                    events,
                    retries,
                });
            }
            let mut state = loaded.state.clone();
            // Events are ordered by timestamp within a stream, whatever the clocks of
            // the writers say.
            let timestamp = self.clock.now().max(loaded.timestamp);
            let mut new = Vec::with_capacity(events.len());
            for e in &events {
                let event_id = state
                    .event_id(e)
                    .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
                state.apply(e);
                new.push(NewEvent {
                    event_type: e.event_type().to_string(),
                    schema_version: self.versions.get(e.event_type()).copied().unwrap_or(1),
                    event_id,
                    causation_id: meta.command_id.clone(),
                    correlation_id: meta.correlation_id.clone(),
                    timestamp,
                    payload: e.encode(),
                });
            }
            match self
                .events
                .append(&stream, ExpectedVersion::Exact(loaded.version), new)
                .await
            {
                Ok(appended) => {
                    self.maybe_snapshot(
                        &stream,
                        loaded.version,
                        &state,
                        appended.version,
                        appended.position,
                        timestamp,
                    )
                    .await;
                    return Ok(Executed {
                        state,
                        version: appended.version,
                        events,
                        retries,
                    });
                }
                Err(e) if e.kind() == ErrorKind::Conflict && retries < self.max_retries => {
                    retries += 1;
                    tracing::debug!(%stream, retries, "append lost a race; deciding again");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Stores a snapshot of the current state now, whatever the interval says (e.g.
    /// before a long stream is read often). Returns its version (0: no events).
    pub async fn snapshot(&self, id: &str) -> Result<u64, EsError> {
        let stream = self.stream(id)?;
        let loaded = self.load(id).await?;
        if loaded.version == 0 {
            return Ok(0);
        }
        let state = serde_json::to_vec(&loaded.state).map_err(|e| {
            EsError::with_source(
                ErrorKind::Invalid,
                format!("encoding the state of {stream}"),
                e,
            )
        })?;
        self.snapshots
            .save(
                &stream,
                Snapshot {
                    version: loaded.version,
                    position: loaded.position,
                    timestamp: loaded.timestamp,
                    state,
                },
            )
            .await?;
        Ok(loaded.version)
    }

    async fn maybe_snapshot(
        &self,
        stream: &StreamId,
        before: u64,
        state: &A,
        version: u64,
        position: u64,
        timestamp: Timestamp,
    ) {
        let Some(every) = self.snapshot_every else {
            return;
        };
        if version / every == before / every {
            return;
        }
        let encoded = match serde_json::to_vec(state) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%stream, error = %e, "cannot encode a snapshot");
                return;
            }
        };
        let snapshot = Snapshot {
            version,
            position,
            timestamp,
            state: encoded,
        };
        // A lost snapshot costs a longer load, not correctness.
        if let Err(e) = self.snapshots.save(stream, snapshot).await {
            tracing::warn!(%stream, error = %e, "could not save a snapshot");
        }
    }
}
