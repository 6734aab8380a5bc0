//! In-memory twins of the stores, for unit tests and examples.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::broadcast;

use crate::error::EsError;
use crate::model::{Appended, ExpectedVersion, NewEvent, RecordedEvent, Snapshot, StreamId, Until};
use crate::store::{EventStore, SnapshotStore};

#[derive(Debug, Default)]
struct Inner {
    events: Vec<RecordedEvent>,
    versions: HashMap<StreamId, u64>,
}

/// Every event in one vector; positions start at 1 and have no gaps.
#[derive(Debug, Clone)]
pub struct MemoryEventStore {
    inner: Arc<Mutex<Inner>>,
    appended: broadcast::Sender<()>,
}

impl Default for MemoryEventStore {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            appended: broadcast::channel(16).0,
        }
    }
}

impl MemoryEventStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn events_from(&self, aggregate: &str, position: u64) -> Vec<RecordedEvent> {
        self.lock()
            .events
            .iter()
            .filter(|e| e.position >= position && e.stream.aggregate() == aggregate)
            .cloned()
            .collect()
    }
}

#[async_trait]
impl EventStore for MemoryEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, EsError> {
        let mut inner = self.lock();
        let current = inner.versions.get(stream).copied().unwrap_or(0);
        let stored: Vec<&RecordedEvent> = inner
            .events
            .iter()
            .filter(|e| &e.stream == stream && events.iter().any(|n| n.event_id == e.event_id))
            .collect();
        if !events.is_empty() && stored.len() == events.len() {
            let last = stored[stored.len() - 1];
            return Ok(Appended {
                version: last.version,
                position: last.position,
                duplicate: true,
            });
        }
        let ok = match expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::Exact(v) => current == v,
        };
        if !ok {
            return Err(EsError::conflict(format!(
                "{stream} is at version {current}, not {expected:?}"
            )));
        }
        let mut version = current;
        let mut position = inner.events.last().map_or(0, |e| e.position);
        for e in events {
            version += 1;
            position += 1;
            inner.events.push(RecordedEvent {
                stream: stream.clone(),
                version,
                position,
                event_type: e.event_type,
                schema_version: e.schema_version,
                event_id: e.event_id,
                causation_id: e.causation_id,
                correlation_id: e.correlation_id,
                timestamp: e.timestamp,
                payload: e.payload,
            });
        }
        inner.versions.insert(stream.clone(), version);
        drop(inner);
        let _ = self.appended.send(());
        Ok(Appended {
            version,
            position,
            duplicate: false,
        })
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        _position: u64,
        until: Until,
    ) -> Result<Vec<RecordedEvent>, EsError> {
        Ok(self
            .lock()
            .events
            .iter()
            .filter(|e| &e.stream == stream && e.version >= from)
            .take_while(|e| !until.excludes(e))
            .cloned()
            .collect())
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, EsError> {
        Ok(self.lock().versions.get(stream).copied().unwrap_or(0))
    }

    async fn subscribe(
        &self,
        aggregate: &str,
        position: u64,
    ) -> Result<BoxStream<'static, Result<RecordedEvent, EsError>>, EsError> {
        let this = self.clone();
        let aggregate = aggregate.to_string();
        let wake = self.appended.subscribe();
        let s = futures::stream::unfold(
            (this, aggregate, position, wake, Vec::<RecordedEvent>::new()),
            |(this, aggregate, mut next, mut wake, mut buffered)| async move {
                loop {
                    if !buffered.is_empty() {
                        let e = buffered.remove(0);
                        next = e.position + 1;
                        return Some((Ok(e), (this, aggregate, next, wake, buffered)));
                    }
                    buffered = this.events_from(&aggregate, next);
                    if buffered.is_empty() {
                        // Lagged just means "something was appended": look again.
                        if let Err(broadcast::error::RecvError::Closed) = wake.recv().await {
                            return None;
                        }
                    }
                }
            },
        );
        Ok(s.boxed())
    }

    async fn count_after(&self, aggregate: &str, position: u64) -> Result<u64, EsError> {
        Ok(self.events_from(aggregate, position + 1).len() as u64)
    }

    async fn head(&self, aggregate: &str) -> Result<u64, EsError> {
        Ok(self
            .lock()
            .events
            .iter()
            .rev()
            .find(|e| e.stream.aggregate() == aggregate)
            .map_or(0, |e| e.position))
    }
}

/// Snapshots in a map.
#[derive(Debug, Clone, Default)]
pub struct MemorySnapshotStore {
    snapshots: Arc<Mutex<HashMap<StreamId, Snapshot>>>,
}

impl MemorySnapshotStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl SnapshotStore for MemorySnapshotStore {
    async fn save(&self, stream: &StreamId, snapshot: Snapshot) -> Result<(), EsError> {
        let mut map = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(stream).is_none_or(|s| s.version < snapshot.version) {
            map.insert(stream.clone(), snapshot);
        }
        Ok(())
    }

    async fn load(&self, stream: &StreamId) -> Result<Option<Snapshot>, EsError> {
        let map = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        Ok(map.get(stream).cloned())
    }
}
