//! Given/when/then for aggregates, without a store:
//! `AggregateTest::<A>::given(events).when(command).then_expect_events(...)`; and
//! [`ProjectionTest`]: append, run, rebuild and compare a projection without a broker.

use crate::aggregate::{Aggregate, DomainError};

/// An aggregate rebuilt from past events, ready for one command.
#[derive(Debug)]
pub struct AggregateTest<A: Aggregate> {
    state: A,
}

impl<A: Aggregate> AggregateTest<A> {
    /// The aggregate after `events`.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let mut state = A::default();
        for e in events {
            state.apply(&e);
        }
        Self { state }
    }

    /// An aggregate with no history.
    pub fn given_no_previous_events() -> Self {
        Self::given([])
    }

    /// Decides `command`.
    pub fn when(self, command: A::Command) -> Outcome<A> {
        let result = self.state.handle(command);
        Outcome {
            state: self.state,
            result,
        }
    }
}

/// What the command decided.
#[derive(Debug)]
pub struct Outcome<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, DomainError>,
}

impl<A: Aggregate> Outcome<A>
where
    A::Event: PartialEq,
{
    /// Asserts the command produced exactly `expected`; returns the state after them.
    #[track_caller]
    pub fn then_expect_events(self, expected: Vec<A::Event>) -> A {
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "the command produced other events");
                let mut state = self.state;
                for e in &events {
                    state.apply(e);
                }
                state
            }
            Err(e) => panic!("expected events {expected:?}, the command was refused: {e}"),
        }
    }

    /// Asserts the command changed nothing (a repeated request).
    #[track_caller]
    pub fn then_expect_no_events(self) -> A {
        self.then_expect_events(Vec::new())
    }

    /// Asserts the command was refused for breaking `invariant`; returns the error.
    #[track_caller]
    pub fn then_expect_invariant(self, invariant: &str) -> DomainError {
        match self.result {
            Ok(events) => panic!("expected a refusal ({invariant}), got events {events:?}"),
            Err(e) => {
                assert_eq!(
                    e.invariant.as_deref(),
                    Some(invariant),
                    "refused for another reason: {e}"
                );
                e
            }
        }
    }

    /// Asserts the command was refused with a message containing `text`.
    #[track_caller]
    pub fn then_expect_error_containing(self, text: &str) -> DomainError {
        match self.result {
            Ok(events) => panic!("expected a refusal ({text}), got events {events:?}"),
            Err(e) => {
                assert!(
                    e.to_string().contains(text),
                    "refused with `{e}`, not `{text}`"
                );
                e
            }
        }
    }
}

/// Projection tests without a broker: events appended to an in-memory store, the
/// projection run into a temporary sled view until it has caught up.
///
/// `rebuild_and_compare` also rebuilds the view blue/green and checks that the rebuilt
/// rows are the live ones: a projection that depends on anything but its events fails.
#[derive(Debug)]
pub struct ProjectionTest {
    definition: crate::definition::AggregateDefinition,
    store: std::sync::Arc<crate::memory::MemoryEventStore>,
    upcasters: crate::upcast::Upcasters,
}

impl ProjectionTest {
    /// A test of a projection declared in `definition`.
    pub fn new(definition: &crate::definition::AggregateDefinition) -> Self {
        Self {
            definition: definition.clone(),
            store: std::sync::Arc::default(),
            upcasters: crate::upcast::Upcasters::new(),
        }
    }

    /// Upcasters for stored events of older versions.
    pub fn with_upcasters(mut self, upcasters: crate::upcast::Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Appends `events` of aggregate `A` to the stream of `id`, at the definition's
    /// versions.
    pub async fn given<A: Aggregate>(&self, id: &str, events: Vec<A::Event>) -> &Self {
        use crate::aggregate::DomainEvent;
        use crate::store::EventStore;
        let stream = crate::model::StreamId::new(&self.definition.name, id).unwrap();
        let start = self.store.stream_version(&stream).await.unwrap();
        let new = events
            .iter()
            .enumerate()
            .map(|(i, e)| crate::model::NewEvent {
                event_type: e.event_type().to_string(),
                schema_version: self
                    .definition
                    .event(e.event_type())
                    .map_or(1, |d| d.version),
                event_id: format!("{id}-{}", start + i as u64 + 1),
                causation_id: String::new(),
                correlation_id: String::new(),
                timestamp: start + i as u64 + 1,
                payload: e.encode(),
            })
            .collect();
        self.store
            .append(&stream, crate::model::ExpectedVersion::Exact(start), new)
            .await
            .unwrap();
        self
    }

    /// Runs `projection` over every event given so far and returns its view.
    pub async fn run(
        &self,
        projection: std::sync::Arc<dyn crate::projection::Projection>,
    ) -> crate::projection::SledViews {
        let (views, _handle, _stop) = self.start(projection).await;
        views
    }

    async fn start(
        &self,
        projection: std::sync::Arc<dyn crate::projection::Projection>,
    ) -> (
        crate::projection::SledViews,
        crate::projection::ProjectionHandle,
        tokio::sync::watch::Sender<bool>,
    ) {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let views = crate::projection::SledViews::with_db(db).unwrap();
        let runner = crate::projection::ProjectionRunner::new(
            &self.definition,
            self.store.clone(),
            views.clone(),
            projection,
            self.upcasters.clone(),
        )
        .unwrap();
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let (handle, _) = runner.spawn(shutdown);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while handle.status().await.unwrap().lag > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the projection did not catch up within 10 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        (views, handle, stop)
    }

    /// Runs `projection`, rebuilds it, asserts the rebuilt rows equal the live ones, and
    /// returns the rebuilt view.
    pub async fn rebuild_and_compare(
        &self,
        projection: std::sync::Arc<dyn crate::projection::Projection>,
    ) -> crate::projection::SledViews {
        use crate::projection::ViewStore;
        let name = projection.name().to_string();
        let (views, handle, _stop) = self.start(projection).await;
        let before = views.scan(&name, b"", None, usize::MAX).await.unwrap();
        let report = handle.rebuild().await.unwrap();
        let after = views.scan(&name, b"", None, usize::MAX).await.unwrap();
        assert_eq!(report.generation, 2);
        assert_eq!(after, before, "the rebuilt view differs from the live one");
        views
    }
}
