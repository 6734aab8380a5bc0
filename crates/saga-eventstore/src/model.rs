//! Stream names, events as written and as stored, snapshots.

use std::fmt;

use saga_core::Timestamp;

use crate::error::EsError;

/// One aggregate's stream: `es.<aggregate>.<id>`. Both parts are single NATS subject
/// tokens of 1 to 128 characters of `A-Z a-z 0-9 _ -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    aggregate: String,
    id: String,
}

fn check_token(what: &str, s: &str) -> Result<(), EsError> {
    if s.is_empty() || s.len() > 128 {
        return Err(EsError::invalid(format!(
            "{what} `{s}` must be 1 to 128 characters long"
        )));
    }
    if let Some(bad) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(EsError::invalid(format!(
            "{what} `{s}` contains `{bad}`: use only letters, digits, `_` and `-`"
        )));
    }
    Ok(())
}

impl StreamId {
    /// Validates both parts.
    pub fn new(aggregate: &str, id: &str) -> Result<Self, EsError> {
        check_token("aggregate type", aggregate)?;
        check_token("aggregate id", id)?;
        Ok(Self {
            aggregate: aggregate.to_string(),
            id: id.to_string(),
        })
    }

    /// The aggregate type, e.g. `BankAccount`.
    pub fn aggregate(&self) -> &str {
        &self.aggregate
    }

    /// The aggregate id, e.g. `A1`.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.aggregate, self.id)
    }
}

/// Checks an aggregate type name (a subject token).
pub fn check_aggregate_type(aggregate: &str) -> Result<(), EsError> {
    check_token("aggregate type", aggregate)
}

/// What the writer believes the stream looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check (last writer wins). For imports only.
    Any,
    /// The stream must not exist yet (create only).
    NoStream,
    /// The stream's last event has this version (0 = the stream must be empty).
    Exact(u64),
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Event type as declared in the definition, e.g. `MoneyDeposited`.
    pub event_type: String,
    /// Schema version the payload is encoded at (1 for `v1`).
    pub schema_version: u32,
    /// Unique id: a retried append with the same id is stored once.
    pub event_id: String,
    /// The id of the command or event that caused this one.
    pub causation_id: String,
    /// The id shared by everything one user request caused.
    pub correlation_id: String,
    /// When it happened, milliseconds since the epoch.
    pub timestamp: Timestamp,
    /// The encoded event.
    pub payload: Vec<u8>,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Its stream.
    pub stream: StreamId,
    /// 1-based place in its stream.
    pub version: u64,
    /// Place in the whole store (the JetStream stream sequence); increases across all
    /// streams, with gaps.
    pub position: u64,
    /// Event type.
    pub event_type: String,
    /// Schema version of `payload`.
    pub schema_version: u32,
    /// Unique id.
    pub event_id: String,
    /// Causation id.
    pub causation_id: String,
    /// Correlation id.
    pub correlation_id: String,
    /// Milliseconds since the epoch.
    pub timestamp: Timestamp,
    /// The encoded event.
    pub payload: Vec<u8>,
}

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Version of the stream's last event after the append.
    pub version: u64,
    /// Position of the last appended event.
    pub position: u64,
    /// Whether every event was already stored (a retried append).
    pub duplicate: bool,
}

/// A stored aggregate state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Version of the last event the state includes.
    pub version: u64,
    /// Position of that event.
    pub position: u64,
    /// Timestamp of that event.
    pub timestamp: Timestamp,
    /// The state, encoded by the aggregate.
    pub state: Vec<u8>,
}

/// Which events of a stream to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Every event.
    End,
    /// Events up to and including this version.
    Version(u64),
    /// Events whose timestamp is at or before this time.
    Time(Timestamp),
}

impl Until {
    /// Whether `event` is past the bound.
    pub fn excludes(&self, event: &RecordedEvent) -> bool {
        match *self {
            Until::End => false,
            Until::Version(v) => event.version > v,
            Until::Time(t) => event.timestamp > t,
        }
    }

    /// Whether a snapshot may stand in for the events it covers.
    pub fn admits(&self, snapshot: &Snapshot) -> bool {
        match *self {
            Until::End => true,
            Until::Version(v) => snapshot.version <= v,
            Until::Time(t) => snapshot.timestamp <= t,
        }
    }
}
