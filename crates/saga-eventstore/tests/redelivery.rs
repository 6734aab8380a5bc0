//! A projection fed by a source that delivers everything again (at-least-once) counts
//! each event once: the checkpoint written with the view decides.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use saga_eventstore::definition::parse_aggregate;
use saga_eventstore::{
    Appended, EsError, EventStore, ExpectedVersion, MemoryEventStore, NewEvent, Projection,
    ProjectionRunner, RecordedEvent, SledViews, StreamId, Until, Upcasters, ViewStore, ViewTx,
};

const DEFINITION: &str = "aggregateRoot: Counter\nevents:\n  Ticked:\n    version: v1\n    schema:\n      id: string\nprojections:\n  Ticks:\n    source: [Ticked]\n    target: read_db.ticks\n";

/// Ignores the position it is asked for and always starts from the first event.
struct Redelivering(MemoryEventStore);

#[async_trait]
impl EventStore for Redelivering {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, EsError> {
        self.0.append(stream, expected, events).await
    }
    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        position: u64,
        until: Until,
    ) -> Result<Vec<RecordedEvent>, EsError> {
        self.0.read_stream(stream, from, position, until).await
    }
    async fn stream_version(&self, stream: &StreamId) -> Result<u64, EsError> {
        self.0.stream_version(stream).await
    }
    async fn subscribe(
        &self,
        aggregate: &str,
        _position: u64,
    ) -> Result<BoxStream<'static, Result<RecordedEvent, EsError>>, EsError> {
        // Every event twice, from the start.
        let s = self.0.subscribe(aggregate, 1).await?;
        Ok(s.flat_map(|e| {
            futures::stream::iter([
                e.as_ref()
                    .map(Clone::clone)
                    .map_err(|e| EsError::new(e.kind(), e.to_string())),
                e,
            ])
        })
        .boxed())
    }
    async fn count_after(&self, aggregate: &str, position: u64) -> Result<u64, EsError> {
        self.0.count_after(aggregate, position).await
    }
    async fn head(&self, aggregate: &str) -> Result<u64, EsError> {
        self.0.head(aggregate).await
    }
}

struct Ticks(Vec<String>);

#[async_trait]
impl Projection for Ticks {
    fn name(&self) -> &str {
        "Ticks"
    }
    fn sources(&self) -> &[String] {
        &self.0
    }
    async fn apply(&self, view: &mut dyn ViewTx, _event: &RecordedEvent) -> Result<(), EsError> {
        let n = view
            .get(b"count")
            .await?
            .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
        view.put(b"count", (n + 1).to_be_bytes().to_vec());
        Ok(())
    }
}

fn tick(i: u32) -> NewEvent {
    NewEvent {
        event_type: "Ticked".into(),
        schema_version: 1,
        event_id: format!("e{i}"),
        causation_id: String::new(),
        correlation_id: String::new(),
        timestamp: u64::from(i),
        payload: Vec::new(),
    }
}

async fn count(views: &SledViews) -> u64 {
    views
        .get("Ticks", b"count")
        .await
        .unwrap()
        .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()))
}

#[tokio::test]
async fn redelivered_events_never_count_twice_even_across_restarts() {
    let def = parse_aggregate("counter.yaml", DEFINITION)
        .unwrap()
        .definition;
    let memory = MemoryEventStore::new();
    let store: Arc<dyn EventStore> = Arc::new(Redelivering(memory.clone()));
    let stream = StreamId::new("Counter", "c1").unwrap();
    for i in 1..=5 {
        store
            .append(
                &stream,
                ExpectedVersion::Exact(u64::from(i) - 1),
                vec![tick(i)],
            )
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let views = SledViews::open(dir.path()).unwrap();
    let projection = Arc::new(Ticks(vec!["Ticked".into()]));
    for round in 0..2 {
        let runner = ProjectionRunner::new(
            &def,
            store.clone(),
            views.clone(),
            projection.clone(),
            Upcasters::new(),
        )
        .unwrap();
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let (handle, join) = runner.spawn(shutdown);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while handle.status().await.unwrap().lag > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: no catch-up"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(count(&views).await, 5, "round {round}");
        stop.send(true).unwrap();
        join.await.unwrap().unwrap();
    }
    let report = {
        let runner = ProjectionRunner::new(
            &def,
            store.clone(),
            views.clone(),
            projection,
            Upcasters::new(),
        )
        .unwrap();
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        runner.spawn(shutdown).0.rebuild().await.unwrap()
    };
    assert_eq!(report.checkpoint, 5);
    assert_eq!(
        count(&views).await,
        5,
        "the rebuilt view counts each event once too"
    );
}
