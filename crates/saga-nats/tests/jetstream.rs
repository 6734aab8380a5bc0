//! The JetStream ports against a real nats-server, one server per test.

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::AckPolicy;
use async_nats::jetstream::stream::{DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use saga_nats::names::{self, INBOX_STREAM};
use saga_nats::trim::Trimmer;
use saga_nats::{
    connect, dead_letter, ensure_service_consumer, provision, ConsumerSettings, NatsConsumer,
    NatsError, NatsJournal, NatsPublisher, ProvisionConfig,
};
use saga_ports::{
    header, Consumer, Delivery, Headers, Journal, JournalAppend, OutgoingMessage, PortError,
    Publisher,
};
use saga_testkit::NatsServer;

const PARTITIONS: u32 = 4;

async fn setup() -> (NatsServer, Context) {
    let nats = NatsServer::start().expect("nats-server");
    let client = connect(&nats.url()).await.expect("connect");
    let js = jetstream::new(client);
    provision(&js, &config()).await.expect("provision");
    (nats, js)
}

fn config() -> ProvisionConfig {
    ProvisionConfig {
        partitions: PARTITIONS,
        ..Default::default()
    }
}

/// Retries `attempt` until it returns `Some`, failing the test after `timeout`.
async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = attempt().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fetches until something comes (tolerating `Unavailable` while reconnecting), failing
/// the test after `timeout`.
async fn fetch_some(consumer: &mut NatsConsumer, timeout: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + timeout;
    loop {
        match consumer.fetch(10, Duration::from_secs(1)).await {
            Ok(got) if !got.is_empty() => return got,
            Ok(_) => {}
            // Not connected yet: answered at once, so pause before asking again.
            Err(PortError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("fetch failed: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "nothing fetched within {timeout:?}"
        );
    }
}

fn message(subject: &str, msg_id: &str, payload: &[u8]) -> OutgoingMessage {
    let mut headers = Headers::new();
    headers.insert(header::SAGA_ID.into(), "order-1".into());
    headers.insert(header::SAGA_STEP.into(), "reserve".into());
    OutgoingMessage {
        subject: subject.into(),
        msg_id: msg_id.into(),
        headers,
        payload: payload.to_vec(),
    }
}

fn append(saga_id: &str, msg_id: &str, payload: &[u8]) -> JournalAppend {
    JournalAppend {
        saga_type: "order-checkout".into(),
        saga_id: saga_id.into(),
        msg_id: msg_id.into(),
        payload: payload.to_vec(),
    }
}

async fn stream_messages(js: &Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .state
        .messages
}

#[tokio::test]
async fn provisioning_is_idempotent_and_creates_the_documented_names() {
    let nats = NatsServer::start().expect("nats-server");
    let js_a = jetstream::new(connect(&nats.url()).await.unwrap());
    let js_b = jetstream::new(connect(&nats.url()).await.unwrap());

    // Two processes at once, then once more.
    let (config_a, config_b) = (config(), config());
    let (a, b) = tokio::join!(provision(&js_a, &config_a), provision(&js_b, &config_b));
    let provisioned = a.expect("first provisioner");
    b.expect("concurrent provisioner");
    assert_eq!(provision(&js_a, &config()).await.unwrap(), provisioned);
    assert_eq!(provisioned.streams, names::STREAMS);
    assert_eq!(
        provisioned.buckets,
        ["saga_owners", "saga_workers", "saga_definitions"]
    );
    assert_eq!(
        provisioned.consumers,
        ["saga-p0", "saga-p1", "saga-p2", "saga-p3"]
    );

    let expected = [
        (
            "SAGA_INBOX",
            "saga.in.>",
            RetentionPolicy::Limits,
            Duration::ZERO,
        ),
        (
            "SAGA_COMMANDS",
            "saga.cmd.>",
            RetentionPolicy::Limits,
            Duration::ZERO,
        ),
        (
            "SAGA_JOURNAL",
            "saga.journal.>",
            RetentionPolicy::Limits,
            Duration::ZERO,
        ),
        (
            "SAGA_EVENTS",
            "events.>",
            RetentionPolicy::Limits,
            Duration::from_secs(7 * 24 * 3600),
        ),
        ("SAGA_DLQ", "dlq.>", RetentionPolicy::Limits, Duration::ZERO),
    ];
    for (name, subjects, retention, max_age) in expected {
        let info = js_a
            .get_stream(name)
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap();
        let c = info.config;
        let subjects: Vec<&str> = match name {
            // Step replies have subjects of their own, apart from starts and cancels.
            "SAGA_INBOX" => vec![subjects, "saga.reply.>"],
            _ => vec![subjects],
        };
        assert_eq!(c.subjects, subjects, "{name}");
        assert_eq!(c.retention, retention, "{name}");
        assert_eq!(c.max_age, max_age, "{name}");
        assert_eq!(c.storage, StorageType::File, "{name}");
        assert_eq!(c.duplicate_window, Duration::from_secs(120), "{name}");
        assert_eq!(c.num_replicas, 1, "{name}");
    }
    let journal = js_a.get_stream("SAGA_JOURNAL").await.unwrap();
    assert_eq!(journal.cached_info().config.discard, DiscardPolicy::New);

    let owners = js_a.get_key_value("saga_owners").await.unwrap();
    assert_eq!(owners.status().await.unwrap().history(), 5);
    let workers = js_a.get_key_value("saga_workers").await.unwrap();
    assert_eq!(
        workers.status().await.unwrap().max_age(),
        Duration::from_secs(30)
    );

    let inbox = js_a.get_stream(INBOX_STREAM).await.unwrap();
    for p in 0..PARTITIONS {
        let info = inbox.consumer_info(format!("saga-p{p}")).await.unwrap();
        let c = info.config;
        assert_eq!(
            c.durable_name.as_deref(),
            Some(format!("saga-p{p}").as_str())
        );
        assert_eq!(c.filter_subject, format!("saga.*.{p}.>"));
        assert!(c.filter_subjects.is_empty());
        assert_eq!(c.ack_policy, AckPolicy::Explicit);
        assert_eq!(c.ack_wait, Duration::from_secs(30));
        assert_eq!(c.max_deliver, 10);
        assert_eq!(c.backoff, ConsumerSettings::default().backoff);
    }

    // The service consumer, twice.
    for _ in 0..2 {
        let info = ensure_service_consumer(&js_a, "payments", &ConsumerSettings::default())
            .await
            .unwrap();
        assert_eq!(info.name, "svc-payments");
        assert_eq!(info.stream_name, "SAGA_COMMANDS");
        assert_eq!(info.config.filter_subject, "saga.cmd.payments.>");
    }
    assert!(matches!(
        ensure_service_consumer(&js_a, "pay.ments", &ConsumerSettings::default()).await,
        Err(NatsError::InvalidName(_))
    ));

    // Another configuration does not overwrite the streams that exist (an operator's
    // settings win; the difference is reported), but the partition consumers are ours.
    let changed = ProvisionConfig {
        duplicate_window: Duration::from_secs(60),
        partition_consumer: ConsumerSettings {
            max_deliver: 20,
            ..Default::default()
        },
        ..config()
    };
    let again = provision(&js_b, &changed).await.unwrap();
    assert!(
        again
            .kept
            .contains(&"SAGA_COMMANDS: duplicate_window 120s (default: 60s)".to_string()),
        "{:?}",
        again.kept
    );
    let info = js_a
        .get_stream("SAGA_COMMANDS")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));
    let p0 = inbox.consumer_info("saga-p0").await.unwrap();
    assert_eq!(p0.config.max_deliver, 20);
}

#[tokio::test]
async fn publish_deduplicates_within_the_window_and_refuses_bad_input() {
    let (_nats, js) = setup().await;
    let publisher = NatsPublisher::new(js.clone());
    let cmd = message(
        "saga.cmd.payments.charge",
        "order-1/charge/charge",
        b"charge 10",
    );

    let first = publisher.publish(&cmd).await.unwrap();
    assert_eq!(first.stream, "SAGA_COMMANDS");
    assert!(!first.duplicate);
    let again = publisher.publish(&cmd).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.sequence, first.sequence);
    assert_eq!(stream_messages(&js, "SAGA_COMMANDS").await, 1);

    let stored = js
        .get_stream("SAGA_COMMANDS")
        .await
        .unwrap()
        .get_raw_message(first.sequence)
        .await
        .unwrap();
    assert_eq!(stored.payload.as_ref(), b"charge 10");
    let h = &stored.headers;
    assert_eq!(
        h.get(header::MSG_ID).unwrap().as_str(),
        "order-1/charge/charge"
    );
    assert_eq!(h.get(header::SAGA_ID).unwrap().as_str(), "order-1");

    let mut bad_value = cmd.clone();
    bad_value.msg_id = "other".into();
    bad_value
        .headers
        .insert(header::TRACEPARENT.into(), "00-\r\nInjected: yes".into());
    assert!(matches!(
        publisher.publish(&bad_value).await,
        Err(PortError::Rejected(_))
    ));
    let mut bad_name = cmd.clone();
    bad_name.headers.insert("Bad Name:".into(), "x".into());
    assert!(matches!(
        publisher.publish(&bad_name).await,
        Err(PortError::Rejected(_))
    ));
    for subject in ["saga.cmd..charge", "saga.cmd.*.charge", "saga cmd", ""] {
        let bad_subject = OutgoingMessage {
            subject: subject.into(),
            ..cmd.clone()
        };
        assert!(
            matches!(
                publisher.publish(&bad_subject).await,
                Err(PortError::Rejected(_))
            ),
            "{subject:?}"
        );
    }
    let no_id = OutgoingMessage {
        msg_id: String::new(),
        ..cmd.clone()
    };
    assert!(matches!(
        publisher.publish(&no_id).await,
        Err(PortError::Rejected(_))
    ));
    // No stream listens there: no responders, which passes (provisioning may be late).
    let nowhere = message("nowhere.at.all", "n1", b"");
    assert!(matches!(
        publisher.publish(&nowhere).await,
        Err(PortError::Unavailable(_))
    ));
    assert_eq!(stream_messages(&js, "SAGA_COMMANDS").await, 1);
}

#[tokio::test]
async fn journal_appends_are_fenced_and_a_retried_append_is_recognised() {
    let (_nats, js) = setup().await;
    let journal = NatsJournal::new(js.clone());

    let first = journal
        .append(&append("order-1", "w1:1", b"started"), 0)
        .await
        .unwrap();
    assert_eq!(first.stream, "SAGA_JOURNAL");
    assert!(!first.duplicate);

    // Another writer, still believing the saga is empty: fenced.
    match journal
        .append(&append("order-1", "w2:1", b"stale"), 0)
        .await
    {
        Err(PortError::Fenced {
            subject, expected, ..
        }) => {
            assert_eq!(subject, "saga.journal.order-checkout.order-1");
            assert_eq!(expected, 0);
        }
        other => panic!("expected Fenced, got {other:?}"),
    }

    // The first writer crashed before seeing its ack and retries the same append. The
    // server answers "wrong last sequence" (the expected-sequence check comes before the
    // dedupe check, even within the duplicate window): the journal recognises its own
    // record and returns the original ack.
    let retried = journal
        .append(&append("order-1", "w1:1", b"started"), 0)
        .await
        .unwrap();
    assert!(retried.duplicate);
    assert_eq!(retried.sequence, first.sequence);

    // The chain goes on from the returned sequence.
    let second = journal
        .append(&append("order-1", "w1:2", b"step 1"), retried.sequence)
        .await
        .unwrap();
    assert!(!second.duplicate);
    assert!(second.sequence > first.sequence);

    // Once something was appended after it, a late retry of the first append is fenced:
    // its writer cannot know what happened since.
    assert!(matches!(
        journal
            .append(&append("order-1", "w1:1", b"started"), 0)
            .await,
        Err(PortError::Fenced { .. })
    ));
    // Expecting a record on a saga that has none is fenced too.
    assert!(matches!(
        journal.append(&append("order-2", "w1:1", b"x"), 7).await,
        Err(PortError::Fenced { .. })
    ));

    let records = journal.read("order-checkout", "order-1").await.unwrap();
    let payloads: Vec<_> = records.iter().map(|r| r.payload.as_slice()).collect();
    assert_eq!(payloads, [b"started".as_slice(), b"step 1".as_slice()]);
    assert_eq!(
        records.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        [first.sequence, second.sequence]
    );
    assert_eq!(stream_messages(&js, "SAGA_JOURNAL").await, 2);

    // Subject tokens are checked, never sent.
    assert!(matches!(
        journal.append(&append("order.1", "w1:9", b""), 0).await,
        Err(PortError::Rejected(_))
    ));
    assert!(matches!(
        journal.read("order-checkout", "*").await,
        Err(PortError::Rejected(_))
    ));
}

#[tokio::test]
async fn journal_read_returns_every_record_in_order_and_stops_when_caught_up() {
    let (_nats, js) = setup().await;
    let journal = NatsJournal::new(js.clone());
    assert!(journal
        .read("order-checkout", "none")
        .await
        .unwrap()
        .is_empty());

    // Two sagas interleaved for 300 records; then `a` goes on past what one batched
    // read returns (1,000 records), so reading it takes a second request.
    let (mut last_a, mut last_b) = (0, 0);
    for i in 0..1_100 {
        last_a = journal
            .append(
                &append("a", &format!("a:{i}"), format!("a{i}").as_bytes()),
                last_a,
            )
            .await
            .unwrap()
            .sequence;
        if i >= 300 {
            continue;
        }
        last_b = journal
            .append(
                &append("b", &format!("b:{i}"), format!("b{i}").as_bytes()),
                last_b,
            )
            .await
            .unwrap()
            .sequence;
    }

    let records = journal.read("order-checkout", "a").await.unwrap();
    assert_eq!(records.len(), 1_100);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.payload, format!("a{i}").as_bytes());
    }
    assert!(records.windows(2).all(|w| w[0].sequence < w[1].sequence));
    assert_eq!(records.last().unwrap().sequence, last_a);

    // Reading again gives the same; the other saga is separate.
    assert_eq!(journal.read("order-checkout", "a").await.unwrap(), records);
    let b = journal.read("order-checkout", "b").await.unwrap();
    assert_eq!(b.len(), 300);
    assert_eq!(b[0].payload, b"b0");

    // Reads leave no consumer behind.
    let journal_stream = js.get_stream("SAGA_JOURNAL").await.unwrap();
    let info = journal_stream.get_info().await.unwrap();
    assert_eq!(info.state.consumer_count, 0);
}

#[tokio::test]
async fn consumer_fetches_acks_naks_with_delay_and_terminates() {
    let (_nats, js) = setup().await;
    let publisher = NatsPublisher::new(js.clone());
    let mut consumer = NatsConsumer::partition(&js, 1).await.unwrap();
    assert_eq!(consumer.name(), "saga-p1");

    // Nothing there: an empty batch after about `wait`, no hang.
    let started = Instant::now();
    assert!(consumer
        .fetch(10, Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );

    let subject = names::inbox_subject(1, "order-1");
    let mut seqs = Vec::new();
    for (id, body) in [("in-1", b"one"), ("in-2", b"two"), ("in-3", b"thr")] {
        seqs.push(
            publisher
                .publish(&message(&subject, id, body))
                .await
                .unwrap()
                .sequence,
        );
    }
    // Another partition's input is not ours.
    publisher
        .publish(&message(
            &names::inbox_subject(2, "order-9"),
            "in-9",
            b"other",
        ))
        .await
        .unwrap();

    // Messages available: returned at once, not after `wait`.
    let started = Instant::now();
    let batch = consumer.fetch(10, Duration::from_secs(10)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(batch.len(), 3);
    for (d, seq) in batch.iter().zip(&seqs) {
        assert_eq!(d.subject, subject);
        assert_eq!(d.stream, "SAGA_INBOX");
        assert_eq!(d.stream_sequence, *seq);
        assert_eq!(d.delivered, 1);
        assert_eq!(d.consumer, "saga-p1");
        assert_eq!(d.headers.get(header::SAGA_ID).unwrap(), "order-1");
        assert!(d.headers.contains_key(header::MSG_ID));
        assert_eq!(d.position(), format!("SAGA_INBOX:{seq}"));
    }
    assert_eq!(batch[0].payload, b"one");

    let [one, two, three] = <[_; 3]>::try_from(batch).unwrap();
    one.acker.in_progress().await.unwrap();
    one.acker.ack().await.unwrap();
    three.acker.term().await.unwrap();
    let delay = Duration::from_millis(400);
    let naked_at = Instant::now();
    two.acker.nak(Some(delay)).await.unwrap();

    // Redelivered after the delay, with the delivery count increased.
    let again = fetch_some(&mut consumer, Duration::from_secs(10)).await;
    let waited = naked_at.elapsed();
    assert!(
        waited >= delay - Duration::from_millis(50),
        "redelivered after {waited:?}"
    );
    assert_eq!(again.len(), 1, "only the nak'ed message comes back");
    assert_eq!(again[0].stream_sequence, two.stream_sequence);
    assert_eq!(again[0].delivered, 2);
    assert_eq!(again[0].payload, b"two");
    again[0].acker.ack().await.unwrap();

    // Acked and terminated messages are settled, and a trim removes them; the other
    // partition's input waits for its own consumer, and the trim leaves it.
    let mut info = js
        .get_stream(INBOX_STREAM)
        .await
        .unwrap()
        .consumer_info("saga-p1")
        .await
        .unwrap();
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(info.num_pending, 0);
    assert_eq!(stream_messages(&js, INBOX_STREAM).await, 4);
    let report = Trimmer::new(js.clone()).trim().await.unwrap();
    assert_eq!(report.purged, 3, "{report:?}");
    assert_eq!(stream_messages(&js, INBOX_STREAM).await, 1);
    assert!(consumer
        .fetch(10, Duration::from_millis(200))
        .await
        .unwrap()
        .is_empty());
    info = js
        .get_stream(INBOX_STREAM)
        .await
        .unwrap()
        .consumer_info("saga-p2")
        .await
        .unwrap();
    assert_eq!(info.num_pending, 1);
    assert!(consumer
        .fetch(0, Duration::from_secs(1))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_consumer_backoff_stretches_delayed_naks_after_the_first_delivery() {
    // Documents the server rule `provision` relies on: the n-th delivery nak'ed with delay
    // d comes back after d + backoff[n-1] - backoff[0] (so never before d).
    let (_nats, js) = setup().await;
    let settings = ConsumerSettings {
        ack_wait: Duration::from_secs(1),
        backoff: vec![Duration::from_secs(1), Duration::from_secs(2)],
        max_deliver: 5,
        ..Default::default()
    };
    ensure_service_consumer(&js, "flaky", &settings)
        .await
        .unwrap();
    let mut consumer = NatsConsumer::service(&js, "flaky").await.unwrap();
    NatsPublisher::new(js.clone())
        .publish(&message("saga.cmd.flaky.run", "r1", b"run"))
        .await
        .unwrap();
    let delay = Duration::from_millis(200);
    let mut d = fetch_some(&mut consumer, Duration::from_secs(5))
        .await
        .remove(0);
    let mut waits = Vec::new();
    for expected_delivery in [2, 3] {
        d.acker.nak(Some(delay)).await.unwrap();
        let naked_at = Instant::now();
        d = fetch_some(&mut consumer, Duration::from_secs(10))
            .await
            .remove(0);
        waits.push(naked_at.elapsed());
        assert_eq!(d.delivered, expected_delivery);
    }
    d.acker.ack().await.unwrap();
    let tolerance = Duration::from_millis(50);
    assert!(
        waits[0] >= delay - tolerance && waits[0] < Duration::from_millis(900),
        "{waits:?}"
    );
    // 200 ms + (2 s - 1 s).
    assert!(
        waits[1] >= Duration::from_millis(1200) - tolerance,
        "{waits:?}"
    );
}

#[tokio::test]
async fn dead_letter_moves_the_message_to_saga_dlq_with_its_story() {
    let (_nats, js) = setup().await;
    ensure_service_consumer(&js, "payments", &ConsumerSettings::default())
        .await
        .unwrap();
    let publisher = NatsPublisher::new(js.clone());
    let mut cmd = message(
        "saga.cmd.payments.charge",
        "order-1/charge/charge",
        b"\x00garbage",
    );
    cmd.headers.insert(
        header::IDEMPOTENCY_KEY.into(),
        "order-1/charge/charge".into(),
    );
    let original = publisher.publish(&cmd).await.unwrap();

    let mut consumer = NatsConsumer::service(&js, "payments").await.unwrap();
    let delivery = consumer
        .fetch(1, Duration::from_secs(5))
        .await
        .unwrap()
        .pop()
        .expect("the command");
    dead_letter(&publisher, &delivery, "cannot decode:\r\nbad protobuf")
        .await
        .unwrap();
    // A retry (say, after a crash between publish and term) stores nothing new.
    dead_letter(&publisher, &delivery, "cannot decode")
        .await
        .unwrap();

    let dlq = js.get_stream("SAGA_DLQ").await.unwrap();
    assert_eq!(dlq.get_info().await.unwrap().state.messages, 1);
    let dead = dlq
        .get_last_raw_message_by_subject("dlq.saga.cmd.payments.charge")
        .await
        .unwrap();
    assert_eq!(dead.payload.as_ref(), b"\x00garbage");
    let h = |name: &str| dead.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(
        h(header::DLQ_REASON).unwrap(),
        "cannot decode:  bad protobuf"
    );
    assert_eq!(h(header::DLQ_SUBJECT).unwrap(), "saga.cmd.payments.charge");
    assert_eq!(h(header::DLQ_STREAM).unwrap(), "SAGA_COMMANDS");
    assert_eq!(
        h(header::DLQ_SEQUENCE).unwrap(),
        original.sequence.to_string()
    );
    assert_eq!(h(header::DLQ_DELIVERIES).unwrap(), "1");
    assert_eq!(h(header::DLQ_CONSUMER).unwrap(), "svc-payments");
    assert_eq!(
        h(header::MSG_ID).unwrap(),
        format!("dlq:SAGA_COMMANDS:{}", original.sequence)
    );
    // The original headers travel along.
    assert_eq!(h(header::SAGA_ID).unwrap(), "order-1");
    assert_eq!(h(header::IDEMPOTENCY_KEY).unwrap(), "order-1/charge/charge");

    // Terminated: settled, so trimmed away, and never redelivered.
    Trimmer::new(js.clone()).trim().await.unwrap();
    assert_eq!(stream_messages(&js, "SAGA_COMMANDS").await, 0);
    assert!(consumer
        .fetch(1, Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_dead_server_makes_publishing_unavailable_until_it_is_back() {
    let (mut nats, js) = setup().await;
    // A short ack timeout, so the test does not wait the default 5 s per try.
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(js.client());
    let publisher = NatsPublisher::new(js.clone());
    let journal = NatsJournal::new(js.clone());
    let mut consumer = NatsConsumer::partition(&js, 0).await.unwrap();
    publisher
        .publish(&message(&names::inbox_subject(0, "s"), "before", b"before"))
        .await
        .unwrap();

    nats.kill().unwrap();
    let during = message(&names::inbox_subject(0, "s"), "during", b"during");
    match publisher.publish(&during).await {
        Err(e @ PortError::Unavailable(_)) => assert!(e.is_retryable()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(matches!(
        journal.append(&append("s", "j1", b""), 0).await,
        Err(PortError::Unavailable(_))
    ));
    // Unavailable once the client noticed the disconnection (an empty batch if it has not
    // yet); never a hang.
    let started = Instant::now();
    let fetched = consumer.fetch(10, Duration::from_millis(500)).await;
    assert!(
        matches!(&fetched, Err(PortError::Unavailable(_)))
            || matches!(&fetched, Ok(v) if v.is_empty()),
        "{fetched:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    nats.start_again().unwrap();
    let ack = eventually(
        Duration::from_secs(30),
        "publishing after the restart",
        || async { publisher.publish(&during).await.ok() },
    )
    .await;
    assert_eq!(ack.stream, "SAGA_INBOX");
    // The message acked before the crash survived it.
    let got = fetch_some(&mut consumer, Duration::from_secs(30)).await;
    let payloads: Vec<_> = got.iter().map(|d| d.payload.as_slice()).collect();
    assert_eq!(payloads, [b"before".as_slice(), b"during".as_slice()]);
    for d in &got {
        d.acker.ack().await.unwrap();
    }
}

#[tokio::test]
async fn connecting_to_a_wrong_url_fails_at_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let err = connect(&format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(matches!(err, NatsError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    for bad in ["not a url at all::", "", " , "] {
        assert!(
            matches!(connect(bad).await, Err(NatsError::Connect { .. })),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn provisioning_keeps_what_an_operator_changed_and_says_so() {
    let (_nats, js) = setup().await;
    // An operator tunes the journal and the workers' bucket, and turns direct reads off.
    let mut journal = js.get_stream(names::JOURNAL_STREAM).await.unwrap();
    let mut tuned = journal.info().await.unwrap().config.clone();
    tuned.max_age = Duration::from_secs(3600);
    tuned.max_bytes = 1 << 30;
    tuned.allow_direct = false;
    js.update_stream(&tuned).await.unwrap();
    let mut workers = js.get_stream("KV_saga_workers").await.unwrap();
    let mut kv_tuned = workers.info().await.unwrap().config.clone();
    kv_tuned.max_age = Duration::from_secs(60);
    js.update_stream(&kv_tuned).await.unwrap();

    // Every process provisions again at start.
    let again = provision(&js, &config()).await.unwrap();
    assert_eq!(
        again.kept,
        [
            "SAGA_JOURNAL: max_age 3600s (default: none)",
            "SAGA_JOURNAL: max_bytes 1073741824 (default: unlimited)",
            "saga_workers: max_age 60s (default: 30s)",
        ]
    );
    let now = journal.info().await.unwrap().config.clone();
    assert_eq!(now.max_age, Duration::from_secs(3600), "kept");
    assert_eq!(now.max_bytes, 1 << 30, "kept");
    assert!(now.allow_direct, "what this version needs is given back");
    let now = workers.info().await.unwrap().config.clone();
    assert_eq!(now.max_age, Duration::from_secs(60), "kept");
}

/// The trim removes what every reader settled, and nothing else: not a message still
/// unacked, not one an overlapping reader has not reached, not one on a subject nobody
/// reads yet.
#[tokio::test]
async fn the_trim_purges_only_what_every_reader_of_a_subject_settled() {
    let (_nats, js) = setup().await;
    ensure_service_consumer(&js, "payments", &ConsumerSettings::default())
        .await
        .unwrap();
    let publisher = NatsPublisher::new(js.clone());
    for n in 0..3 {
        let cmd = message("saga.cmd.payments.charge", &format!("pay-{n}"), b"charge");
        publisher.publish(&cmd).await.unwrap();
    }
    // Commands of a service that has not started: no consumer reads them yet.
    for n in 0..2 {
        let cmd = message("saga.cmd.shipping.ship", &format!("ship-{n}"), b"ship");
        publisher.publish(&cmd).await.unwrap();
    }
    // An operator's tap on every command, that has read nothing.
    let commands = js.get_stream("SAGA_COMMANDS").await.unwrap();
    commands
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("tap".into()),
            filter_subject: "saga.cmd.>".into(),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();

    let mut consumer = NatsConsumer::service(&js, "payments").await.unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(fetch_some(&mut consumer, Duration::from_secs(10)).await);
    }
    got[0].acker.ack().await.unwrap();
    got[1].acker.term().await.unwrap();

    let mut trimmer = Trimmer::new(js.clone());
    let report = trimmer.trim().await.unwrap();
    assert_eq!(report.purged, 0, "the tap has read nothing: {report:?}");
    assert_eq!(stream_messages(&js, "SAGA_COMMANDS").await, 5);

    js.get_stream("SAGA_COMMANDS")
        .await
        .unwrap()
        .delete_consumer("tap")
        .await
        .unwrap();
    // The third is unsettled and no pull waits: its redelivery may be queued at the
    // server, which a purge would drop, so the subject waits for a later pass.
    let report = trimmer.trim().await.unwrap();
    assert_eq!(report.purged, 0, "{report:?}");
    got[2].acker.ack().await.unwrap();
    let report = trimmer.trim().await.unwrap();
    assert_eq!(report.purged, 3, "acked, terminated, acked: {report:?}");
    // The shipping commands wait for their service, as on a work queue.
    assert_eq!(stream_messages(&js, "SAGA_COMMANDS").await, 2);
    // Nothing new settled: a pass purges nothing (the consumer's floor may still move
    // past the other service's commands once), and an idle stream costs no request.
    assert_eq!(trimmer.trim().await.unwrap().purged, 0);
    let idle = trimmer.trim().await.unwrap();
    assert_eq!((idle.purged, idle.requests), (0, 0), "{idle:?}");

    // The shipping service starts and handles its commands: they go too.
    ensure_service_consumer(&js, "shipping", &ConsumerSettings::default())
        .await
        .unwrap();
    let mut shipping = NatsConsumer::service(&js, "shipping").await.unwrap();
    let mut shipped = Vec::new();
    while shipped.len() < 2 {
        shipped.extend(fetch_some(&mut shipping, Duration::from_secs(10)).await);
    }
    for d in &shipped {
        d.acker.ack().await.unwrap();
    }
    assert_eq!(trimmer.trim().await.unwrap().purged, 2);
    assert_eq!(stream_messages(&js, "SAGA_COMMANDS").await, 0);
}

/// A message over its deliveries that nobody acked holds the trim back, and says so.
#[tokio::test]
async fn a_message_never_acked_is_kept_and_reported_as_holding_the_trim() {
    let (_nats, js) = setup().await;
    let settings = ConsumerSettings {
        ack_wait: Duration::from_millis(300),
        max_deliver: 1,
        backoff: Vec::new(),
        ..ConsumerSettings::default()
    };
    ensure_service_consumer(&js, "payments", &settings)
        .await
        .unwrap();
    let publisher = NatsPublisher::new(js.clone());
    for n in 0..2 {
        let cmd = message("saga.cmd.payments.charge", &format!("pay-{n}"), b"charge");
        publisher.publish(&cmd).await.unwrap();
    }
    let mut consumer = NatsConsumer::service(&js, "payments").await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(fetch_some(&mut consumer, Duration::from_secs(10)).await);
    }
    // The first is dropped by its reader (a crash) and never delivered again; the
    // second is acked.
    got[1].acker.ack().await.unwrap();
    let mut trimmer = Trimmer::new(js.clone()).with_hold_warning(Duration::ZERO);
    let report = trimmer.trim().await.unwrap();
    assert_eq!(report.purged, 0, "{report:?}");
    assert_eq!(stream_messages(&js, "SAGA_COMMANDS").await, 2);
    let first = got[0].stream_sequence;
    assert_eq!(
        report.held,
        [(
            "SAGA_COMMANDS".to_string(),
            "svc-payments".to_string(),
            first
        )]
    );
}

/// A deployment made by an earlier version keeps its work queues, untrimmed: their acks
/// delete.
#[tokio::test]
async fn work_queues_of_an_earlier_version_are_kept_and_not_trimmed() {
    let nats = NatsServer::start().expect("nats-server");
    let js = jetstream::new(connect(&nats.url()).await.expect("connect"));
    js.create_stream(jetstream::stream::Config {
        name: "SAGA_COMMANDS".into(),
        subjects: vec!["saga.cmd.>".into()],
        retention: RetentionPolicy::WorkQueue,
        discard: DiscardPolicy::New,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .unwrap();
    let provisioned = provision(&js, &config()).await.expect("provision");
    assert!(
        provisioned
            .kept
            .contains(&"SAGA_COMMANDS: retention WorkQueue (default: Limits)".to_string()),
        "{:?}",
        provisioned.kept
    );
    let report = Trimmer::new(js.clone()).trim().await.unwrap();
    assert_eq!(report.skipped, ["SAGA_COMMANDS"]);
}

/// A trim of a partition's acked starts leaves its unread replies to be delivered, and
/// a consumer with two filters (as an earlier version made them) is not trimmed at all:
/// JetStream would move it past the other filter's unread messages.
#[tokio::test]
async fn a_trim_never_skips_a_partition_reply_not_yet_read() {
    let (_nats, js) = setup().await;
    let publisher = NatsPublisher::new(js.clone());
    let mut consumer = NatsConsumer::partition(&js, 1).await.unwrap();
    publisher
        .publish(&message(
            &names::inbox_subject(1, "s1"),
            "start-1",
            b"start",
        ))
        .await
        .unwrap();
    let start = fetch_some(&mut consumer, Duration::from_secs(10)).await;
    start[0].acker.ack().await.unwrap();
    publisher
        .publish(&message(
            &names::reply_subject(1, "s1", "payment"),
            "reply-1",
            b"reply",
        ))
        .await
        .unwrap();
    let mut trimmer = Trimmer::new(js.clone());
    assert_eq!(trimmer.trim().await.unwrap().purged, 1);
    let reply = fetch_some(&mut consumer, Duration::from_secs(10)).await;
    assert_eq!(reply[0].payload, b"reply");
    reply[0].acker.ack().await.unwrap();

    // An operator's consumer with two filters on partition 2: nothing it reads, nor
    // any subject one of its filters lies in, is trimmed.
    let inbox = js.get_stream(INBOX_STREAM).await.unwrap();
    inbox
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("two-filters".into()),
            filter_subjects: vec!["saga.in.2.>".into(), "saga.reply.2.>".into()],
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    publisher
        .publish(&message(
            &names::inbox_subject(2, "s2"),
            "start-2",
            b"start",
        ))
        .await
        .unwrap();
    let report = trimmer.trim().await.unwrap();
    assert_eq!(
        report.untrimmed,
        [(INBOX_STREAM.to_string(), "two-filters".to_string())]
    );
    assert_eq!(report.purged, 1, "partition 1's reply only: {report:?}");
}

/// Partition consumers made by an earlier version, with two filters, are given the one
/// filter that reads the same messages, and keep their place.
#[tokio::test]
async fn partition_consumers_with_two_filters_are_updated_to_one() {
    let (_nats, js) = setup().await;
    let inbox = js.get_stream(INBOX_STREAM).await.unwrap();
    inbox.delete_consumer("saga-p0").await.unwrap();
    inbox
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("saga-p0".into()),
            filter_subjects: vec!["saga.in.0.>".into(), "saga.reply.0.>".into()],
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let publisher = NatsPublisher::new(js.clone());
    for (subject, id) in [
        (names::inbox_subject(0, "s1"), "a"),
        (names::reply_subject(0, "s1", "payment"), "b"),
    ] {
        publisher
            .publish(&message(&subject, id, b"x"))
            .await
            .unwrap();
    }
    let mut consumer = NatsConsumer::partition(&js, 0).await.unwrap();
    let first = fetch_some(&mut consumer, Duration::from_secs(10)).await;
    first[0].acker.ack().await.unwrap();

    provision(&js, &config()).await.expect("provision again");
    let info = inbox.consumer_info("saga-p0").await.unwrap();
    assert_eq!(info.config.filter_subject, "saga.*.0.>");
    assert!(info.config.filter_subjects.is_empty());
    assert_eq!(info.ack_floor.stream_sequence, first[0].stream_sequence);
    if first.len() == 1 {
        let rest = fetch_some(&mut consumer, Duration::from_secs(40)).await;
        assert_eq!(rest[0].subject, names::reply_subject(0, "s1", "payment"));
    }
}
