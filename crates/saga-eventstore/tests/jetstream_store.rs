//! The JetStream event store on a real nats-server: appends of several events are one
//! atomic batch, retention and the allow_atomic flag reach an existing stream, and the
//! snapshot bucket keeps only the latest snapshot.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use saga_eventstore::jetstream::{
    JetStreamEventStore, JetStreamSnapshotStore, Provisioning, EVENTS_STREAM, EVENTS_SUBJECTS,
    SNAPSHOT_BUCKET,
};
use saga_eventstore::{ErrorKind, EventStore, ExpectedVersion, NewEvent, Snapshot, SnapshotStore};
use saga_eventstore::{StreamId, Until};
use saga_testkit::NatsServer;

const DEADLINE: Duration = Duration::from_secs(30);

async fn context(nats: &NatsServer) -> async_nats::jetstream::Context {
    let client = async_nats::connect(nats.url()).await.unwrap();
    async_nats::jetstream::new(client)
}

async fn store(nats: &NatsServer) -> JetStreamEventStore {
    JetStreamEventStore::provision(context(nats).await, &Provisioning::default())
        .await
        .unwrap()
}

fn event(id: &str) -> NewEvent {
    NewEvent {
        event_type: "Ticked".into(),
        schema_version: 1,
        event_id: id.into(),
        causation_id: String::new(),
        correlation_id: String::new(),
        timestamp: 0,
        payload: id.as_bytes().to_vec(),
    }
}

fn events(prefix: &str, n: usize) -> Vec<NewEvent> {
    (0..n).map(|i| event(&format!("{prefix}-{i}"))).collect()
}

fn ids(recorded: &[saga_eventstore::RecordedEvent]) -> Vec<String> {
    recorded.iter().map(|e| e.event_id.clone()).collect()
}

/// Messages stored in `ES_EVENTS`, all streams together.
async fn stored_messages(js: &async_nats::jetstream::Context) -> u64 {
    let mut s = js.get_stream(EVENTS_STREAM).await.unwrap();
    s.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_append_of_three_events_is_seen_whole_or_not_at_all() {
    let nats = NatsServer::start().unwrap();
    let store = store(&nats).await;
    let a = StreamId::new("Counter", "a").unwrap();
    let b = StreamId::new("Counter", "b").unwrap();
    const BATCHES: u64 = 30;

    // A subscriber over both streams, and a reader polling the version of `a`.
    let mut feed = store.subscribe("Counter", 1).await.unwrap();
    let poller = {
        let store = store.clone();
        let a = a.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let v = store.stream_version(&a).await.unwrap();
                seen.push(v);
                if v == 3 * BATCHES {
                    return seen;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    // Two writers append 3 events at a time, to two streams at once.
    let mut writers = Vec::new();
    for s in [a.clone(), b.clone()] {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..BATCHES {
                let appended = store
                    .append(
                        &s,
                        ExpectedVersion::Exact(3 * n),
                        events(&format!("{}-{n}", s.id()), 3),
                    )
                    .await
                    .unwrap();
                assert_eq!(appended.version, 3 * (n + 1));
                assert!(!appended.duplicate);
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }

    // The reader only ever saw whole appends.
    let seen = tokio::time::timeout(DEADLINE, poller)
        .await
        .unwrap()
        .unwrap();
    let partial: Vec<_> = seen.iter().filter(|v| *v % 3 != 0).collect();
    assert!(partial.is_empty(), "versions seen mid-append: {partial:?}");

    // The subscriber got each append as three adjacent events: nothing of the other
    // writer between them.
    let mut runs: HashMap<String, u64> = HashMap::new();
    let deadline = Instant::now() + DEADLINE;
    let mut received = Vec::new();
    while received.len() < (6 * BATCHES) as usize {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = tokio::time::timeout(left, feed.next())
            .await
            .expect("every event reaches the subscriber")
            .unwrap()
            .unwrap();
        received.push(e);
    }
    for chunk in received.chunks(3) {
        let first = &chunk[0];
        for (k, e) in chunk.iter().enumerate() {
            assert_eq!(
                e.stream, first.stream,
                "an append was interleaved: {chunk:?}"
            );
            assert_eq!(e.position, first.position + k as u64);
            assert_eq!(e.version, first.version + k as u64);
        }
        assert_eq!(first.version % 3, 1);
        *runs.entry(first.stream.id().to_owned()).or_default() += 1;
    }
    assert_eq!(runs.get("a"), Some(&BATCHES));
    assert_eq!(runs.get("b"), Some(&BATCHES));
}

#[tokio::test]
async fn an_append_that_conflicts_stores_none_of_its_events() {
    let nats = NatsServer::start().unwrap();
    let js = context(&nats).await;
    let first = store(&nats).await;
    let second = store(&nats).await;
    let s = StreamId::new("Counter", "c").unwrap();
    first
        .append(&s, ExpectedVersion::NoStream, vec![event("open")])
        .await
        .unwrap();
    // `first` remembers version 1; `second` appends in between.
    second
        .append(&s, ExpectedVersion::Exact(1), vec![event("other")])
        .await
        .unwrap();
    let before = stored_messages(&js).await;

    // The server refuses the batch on its first event's expected sequence.
    let err = first
        .append(&s, ExpectedVersion::Exact(1), events("late", 3))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    // Expecting an empty stream: refused as well.
    let err = second
        .append(&s, ExpectedVersion::Exact(0), events("later", 3))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");

    assert_eq!(stored_messages(&js).await, before);
    let stored = first.read_stream(&s, 1, 0, Until::End).await.unwrap();
    assert_eq!(ids(&stored), ["open", "other"]);
}

#[tokio::test]
async fn a_retried_batch_is_a_duplicate_and_stores_nothing() {
    let nats = NatsServer::start().unwrap();
    let js = context(&nats).await;
    let writer = store(&nats).await;
    let s = StreamId::new("Counter", "d").unwrap();
    let batch = events("tx", 3);
    let appended = writer
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    assert_eq!(appended.version, 3);
    assert!(!appended.duplicate);
    let before = stored_messages(&js).await;

    // A process that restarted retries the same append: it knows nothing of the stream
    // and sends the batch; the server refuses it for the ids it remembers.
    let restarted = store(&nats).await;
    let retried = restarted
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    assert!(retried.duplicate);
    assert_eq!(retried.version, 3);
    assert_eq!(retried.position, appended.position);
    // The writer itself retries with the version it expected.
    let again = writer
        .append(&s, ExpectedVersion::Exact(0), batch)
        .await
        .unwrap();
    assert!(again.duplicate);

    assert_eq!(stored_messages(&js).await, before);
    let stored = writer.read_stream(&s, 1, 0, Until::End).await.unwrap();
    assert_eq!(ids(&stored), ["tx-0", "tx-1", "tx-2"]);

    // The next append after the retried one goes on normally.
    let next = restarted
        .append(&s, ExpectedVersion::Exact(3), events("next", 2))
        .await
        .unwrap();
    assert_eq!((next.version, next.duplicate), (5, false));
}

#[tokio::test]
async fn retention_and_atomic_publish_reach_an_existing_stream() {
    let nats = NatsServer::start().unwrap();
    let js = context(&nats).await;
    // A stream made by an older version: no allow_atomic, one hour of retention.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: EVENTS_STREAM.into(),
        subjects: vec![EVENTS_SUBJECTS.into()],
        max_age: Duration::from_secs(3600),
        allow_direct: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let config = |js: async_nats::jetstream::Context| async move {
        js.get_stream(EVENTS_STREAM)
            .await
            .unwrap()
            .cached_info()
            .config
            .clone()
    };

    let one_hour = Provisioning {
        max_age: Some(Duration::from_secs(3600)),
        ..Provisioning::default()
    };
    let store = JetStreamEventStore::provision(js.clone(), &one_hour)
        .await
        .unwrap();
    let c = config(js.clone()).await;
    assert_eq!(c.max_age, Duration::from_secs(3600));
    assert!(c.allow_atomic_publish);
    let s = StreamId::new("Counter", "e").unwrap();
    store
        .append(&s, ExpectedVersion::NoStream, events("e", 3))
        .await
        .unwrap();

    let seven_years = Duration::from_secs(7 * 365 * 24 * 3600);
    JetStreamEventStore::provision(
        js.clone(),
        &Provisioning {
            max_age: Some(seven_years),
            ..Provisioning::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(config(js.clone()).await.max_age, seven_years);

    JetStreamEventStore::provision(js.clone(), &Provisioning::default())
        .await
        .unwrap();
    let c = config(js.clone()).await;
    assert_eq!(c.max_age, Duration::ZERO, "no retention: kept for ever");
    assert!(c.allow_atomic_publish);
    // The events are still there.
    assert_eq!(store.stream_version(&s).await.unwrap(), 3);
}

#[tokio::test]
async fn the_snapshot_bucket_keeps_only_the_latest_snapshot() {
    let nats = NatsServer::start().unwrap();
    let js = context(&nats).await;
    // A bucket made with more history, holding two revisions of a key.
    let old = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: SNAPSHOT_BUCKET.into(),
            history: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    old.put("Other.x", "1".into()).await.unwrap();
    old.put("Other.x", "2".into()).await.unwrap();

    let snapshots = JetStreamSnapshotStore::provision(&js, &Provisioning::default())
        .await
        .unwrap();
    let kv_stream = js
        .get_stream(format!("KV_{SNAPSHOT_BUCKET}"))
        .await
        .unwrap();
    assert_eq!(kv_stream.cached_info().config.max_messages_per_subject, 1);
    assert_eq!(revisions(&kv_stream, "Other.x").await, 1);

    let s = StreamId::new("Counter", "f").unwrap();
    for version in [10, 20, 30] {
        snapshots
            .save(
                &s,
                Snapshot {
                    version,
                    position: version,
                    timestamp: 0,
                    state: format!("state at {version}").into_bytes(),
                },
            )
            .await
            .unwrap();
    }
    assert_eq!(revisions(&kv_stream, "Counter.f").await, 1);
    let latest = snapshots.load(&s).await.unwrap().unwrap();
    assert_eq!(latest.version, 30);
    assert_eq!(latest.state, b"state at 30");
}

/// Messages the bucket's stream holds for `key`.
async fn revisions(kv_stream: &async_nats::jetstream::stream::Stream, key: &str) -> usize {
    let subject = format!("$KV.{SNAPSHOT_BUCKET}.{key}");
    let mut subjects = kv_stream.info_with_subjects(&subject).await.unwrap();
    let mut count = 0;
    while let Some(entry) = subjects.next().await {
        let (name, n) = entry.unwrap();
        if name == subject {
            count += n;
        }
    }
    count
}
