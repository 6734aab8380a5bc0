//! The participant loop on the in-memory ports: what a saga (and an operator reading
//! the DLQ) observes for duplicates, failures, crashes and shutdown.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use saga_core::{Clock, ManualClock};
use saga_participant::saga_proto::{
    saga_input, step_reply, Message, Payload, SagaInput, StepCommand, StepReply,
};
use saga_participant::{
    Abort, CrashAfterEffect, Handler, Knobs, Participant, ParticipantStore, Reply, Settings, Tx,
};
use saga_ports::memory::{memory_consumer, MemoryFeed, MemoryPublisher, Settled};
use saga_ports::{header, Headers, OutgoingMessage, PortError, PublishAck, Publisher};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// `Do` records an effect; `Flaky` fails technically the first `flaky` times (after
/// writing, to prove the rollback); `Decline` says no; `Broken` aborts for a retry.
#[derive(Default)]
struct TestHandler {
    flaky: AtomicU32,
}

impl Handler for TestHandler {
    fn trees(&self) -> &[&str] {
        &["effects"]
    }

    fn handle(&self, tx: &Tx<'_>, cmd: &StepCommand) -> Result<Reply, Abort> {
        match cmd.action.as_str() {
            "Do" | "Flaky" => {
                let id = tx.generate_id()?;
                tx.insert("effects", id.to_be_bytes(), cmd.idempotency_key.as_bytes())?;
                if cmd.action == "Flaky"
                    && self
                        .flaky
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                {
                    return Ok(Reply::TechnicalFailure("database hiccup".into()));
                }
                Ok(Reply::Ok(Payload {
                    kind: Some(saga_participant::saga_proto::payload::Kind::Raw(
                        id.to_be_bytes().to_vec(),
                    )),
                }))
            }
            "Huge" => {
                let id = tx.generate_id()?;
                tx.insert("effects", id.to_be_bytes(), cmd.idempotency_key.as_bytes())?;
                Ok(Reply::Ok(Payload {
                    kind: Some(saga_participant::saga_proto::payload::Kind::Raw(vec![
                        0;
                        saga_participant::MAX_RESULT_BYTES
                    ])),
                }))
            }
            "Decline" => Ok(Reply::BusinessFailure("Insufficient stock".into())),
            "Broken" => Err(Abort::Retry("downstream unavailable".into())),
            other => Err(Abort::Reject(format!("unknown action `{other}`"))),
        }
    }
}

struct Harness {
    feed: MemoryFeed,
    publisher: MemoryPublisher,
    store: ParticipantStore,
    clock: Arc<ManualClock>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), saga_participant::ParticipantError>>>,
    crashes: Arc<Mutex<Vec<String>>>,
}

struct Options {
    store: ParticipantStore,
    handler: Arc<TestHandler>,
    settings: Settings,
    knobs: Knobs,
    clock: Arc<ManualClock>,
    publisher: Option<Arc<dyn Publisher>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            store: ParticipantStore::temporary().unwrap(),
            handler: Arc::default(),
            settings: Settings {
                max_deliveries: 3,
                fetch_wait: Duration::from_millis(20),
                ..Settings::default()
            },
            knobs: Knobs::default(),
            clock: Arc::new(ManualClock::new(1_700_000_000_000)),
            publisher: None,
        }
    }
}

fn start(o: Options) -> Harness {
    let (feed, consumer) = memory_consumer();
    let publisher = MemoryPublisher::default();
    let crashes = Arc::new(Mutex::new(Vec::new()));
    let recorded = crashes.clone();
    let participant = Participant::new(
        o.store.clone(),
        o.publisher.unwrap_or_else(|| Arc::new(publisher.clone())),
    )
    .with_settings(o.settings)
    .with_knobs(o.knobs)
    .with_clock(o.clock.clone())
    .with_crash_hook(Arc::new(move |action: &str| {
        recorded.lock().unwrap().push(action.to_string())
    }))
    .serve("svc", o.handler, consumer);
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(participant.run(async {
        let _ = stopped.await;
    }));
    Harness {
        feed,
        publisher,
        store: o.store,
        clock: o.clock,
        stop: Some(stop),
        task: Some(task),
        crashes,
    }
}

impl Harness {
    async fn shutdown(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }

    fn replies(&self) -> Vec<(OutgoingMessage, StepReply)> {
        self.publisher
            .on("saga.in.")
            .into_iter()
            .map(|m| {
                let input = SagaInput::decode(m.payload.as_slice()).unwrap();
                match input.kind {
                    Some(saga_input::Kind::Reply(r)) => (m, r),
                    other => panic!("not a reply: {other:?}"),
                }
            })
            .collect()
    }

    fn effects(&self) -> usize {
        self.store.db().open_tree("effects").unwrap().len()
    }

    fn settled(&self, seq: u64) -> Vec<Settled> {
        self.feed
            .settled()
            .into_iter()
            .filter(|(s, _)| *s == seq)
            .map(|(_, how)| how)
            .collect()
    }

    fn deliver(&self, cmd: &StepCommand) -> u64 {
        self.feed
            .deliver(&subject(cmd), headers(cmd), cmd.encode_to_vec())
    }

    fn redeliver(&self, seq: u64, cmd: &StepCommand, delivered: u64) {
        self.feed.redeliver(
            seq,
            &subject(cmd),
            headers(cmd),
            cmd.encode_to_vec(),
            delivered,
        );
    }
}

fn command(saga: &str, action: &str, attempt: u32) -> StepCommand {
    StepCommand {
        saga_id: saga.into(),
        saga_type: "Test".into(),
        step: "Step".into(),
        action: action.into(),
        attempt,
        idempotency_key: format!("{saga}/Step/{action}"),
        reply_to: format!("saga.in.0.{saga}"),
        ..Default::default()
    }
}

fn subject(cmd: &StepCommand) -> String {
    format!("saga.cmd.svc.{}", cmd.action)
}

fn headers(cmd: &StepCommand) -> Headers {
    Headers::from([
        (header::SAGA_ID.into(), cmd.saga_id.clone()),
        (header::IDEMPOTENCY_KEY.into(), cmd.idempotency_key.clone()),
        (header::TRACEPARENT.into(), "00-abc-def-01".into()),
    ])
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn is_ok(r: &StepReply) -> bool {
    matches!(r.outcome, Some(step_reply::Outcome::Ok(_)))
}

fn technical_reason(r: &StepReply) -> Option<&str> {
    match &r.outcome {
        Some(step_reply::Outcome::TechnicalFailure(t)) => Some(&t.reason),
        _ => None,
    }
}

#[tokio::test]
async fn a_duplicate_command_gets_the_recorded_reply_and_never_a_second_effect() {
    let mut h = start(Options::default());
    let first = command("s1", "Do", 1);
    let seq = h.deliver(&first);
    wait_for("first ack", || h.settled(seq) == [Settled::Ack]).await;

    // The same attempt redelivered (ack lost), then the saga's retry (attempt 2).
    h.redeliver(seq, &first, 2);
    wait_for("second ack", || h.settled(seq).len() == 2).await;
    let retry = h.deliver(&command("s1", "Do", 2));
    wait_for("retry ack", || h.settled(retry) == [Settled::Ack]).await;

    assert_eq!(h.effects(), 1, "one effect for three deliveries");
    let replies = h.replies();
    assert_eq!(replies.len(), 2, "attempt 1 deduplicated by its msg id");
    let (m1, r1) = &replies[0];
    let (m2, r2) = &replies[1];
    assert_eq!(m1.msg_id, "reply:s1/Step/Do:1");
    assert_eq!(m2.msg_id, "reply:s1/Step/Do:2");
    assert_eq!(m1.subject, "saga.in.0.s1");
    assert_eq!((r1.attempt, r2.attempt), (1, 2));
    assert!(is_ok(r1));
    assert_eq!(r1.outcome, r2.outcome, "the recorded result is replayed");
    assert_eq!(r2.service, "svc");
    assert_eq!(m2.headers[header::SAGA_ID], "s1");
    assert_eq!(m2.headers[header::SAGA_STEP], "Step");
    assert_eq!(m2.headers[header::SAGA_ATTEMPT], "2");
    assert_eq!(m2.headers[header::IDEMPOTENCY_KEY], "s1/Step/Do");
    assert_eq!(m2.headers[header::TRACEPARENT], "00-abc-def-01");
    h.shutdown().await;
}

#[tokio::test]
async fn business_failures_are_recorded_and_a_compensation_is_its_own_entry() {
    let mut h = start(Options::default());
    let seq = h.deliver(&command("s1", "Decline", 1));
    wait_for("ack", || h.settled(seq) == [Settled::Ack]).await;
    let again = h.deliver(&command("s1", "Decline", 2));
    wait_for("ack", || h.settled(again) == [Settled::Ack]).await;
    let mut undo = command("s1", "Do", 1);
    undo.compensation = true;
    let undo_seq = h.deliver(&undo);
    wait_for("ack", || h.settled(undo_seq) == [Settled::Ack]).await;

    let replies = h.replies();
    assert!(replies.iter().take(2).all(|(_, r)| matches!(
        &r.outcome,
        Some(step_reply::Outcome::BusinessFailure(b)) if b.reason == "Insufficient stock"
    )));
    assert!(replies[2].1.compensation && is_ok(&replies[2].1));
    assert_eq!(h.store.inbox_len(), 2);
    h.shutdown().await;
}

/// Wraps a publisher and notes any reply published after its command was settled.
struct OrderingPublisher {
    inner: MemoryPublisher,
    feed: Arc<Mutex<Option<MemoryFeed>>>,
    violations: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Publisher for OrderingPublisher {
    async fn publish(&self, msg: &OutgoingMessage) -> Result<PublishAck, PortError> {
        if let Some(feed) = self.feed.lock().unwrap().as_ref() {
            if !feed.settled().is_empty() {
                self.violations.lock().unwrap().push(msg.msg_id.clone());
            }
        }
        self.inner.publish(msg).await
    }
    async fn publish_new(&self, msg: &OutgoingMessage) -> Result<PublishAck, PortError> {
        self.inner.publish_new(msg).await
    }
}

#[tokio::test]
async fn the_reply_is_published_before_the_command_is_acked() {
    let inner = MemoryPublisher::default();
    let feed_slot = Arc::new(Mutex::new(None));
    let violations = Arc::new(Mutex::new(Vec::new()));
    let mut h = start(Options {
        publisher: Some(Arc::new(OrderingPublisher {
            inner: inner.clone(),
            feed: feed_slot.clone(),
            violations: violations.clone(),
        })),
        ..Options::default()
    });
    *feed_slot.lock().unwrap() = Some(h.feed.clone());
    let seq = h.deliver(&command("s1", "Do", 1));
    wait_for("ack", || h.settled(seq) == [Settled::Ack]).await;
    assert_eq!(inner.on("saga.in.").len(), 1);
    assert!(violations.lock().unwrap().is_empty());
    h.shutdown().await;
}

#[tokio::test]
async fn a_failed_publish_naks_and_the_retry_only_republishes() {
    let mut h = start(Options::default());
    h.publisher.fail_next(1);
    let cmd = command("s1", "Do", 1);
    let seq = h.deliver(&cmd);
    wait_for("nak", || !h.settled(seq).is_empty()).await;
    assert_eq!(
        h.settled(seq),
        [Settled::Nak(Some(Settings::default().publish_retry_delay))]
    );
    assert_eq!(h.effects(), 1, "the effect is committed before the reply");
    assert!(h.replies().is_empty());

    h.redeliver(seq, &cmd, 2);
    wait_for("ack", || h.settled(seq).len() == 2).await;
    assert_eq!(h.settled(seq)[1], Settled::Ack);
    assert_eq!(h.effects(), 1);
    assert_eq!(h.replies().len(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn an_oversized_result_is_a_technical_failure_and_its_effect_is_rolled_back() {
    let mut h = start(Options::default());
    let seq = h.deliver(&command("s1", "Huge", 1));
    wait_for("ack", || h.settled(seq) == [Settled::Ack]).await;
    let reason = technical_reason(&h.replies()[0].1)
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.starts_with(&format!(
            "the result of Huge is {} bytes, over the limit of {}",
            saga_participant::MAX_RESULT_BYTES + 4,
            saga_participant::MAX_RESULT_BYTES
        )),
        "{reason}"
    );
    assert_eq!(h.effects(), 0, "nothing the handler wrote is kept");
    assert_eq!(h.store.inbox_len(), 0);
    h.shutdown().await;
}

#[tokio::test]
async fn a_technical_failure_is_not_recorded_and_a_retry_runs_the_handler_again() {
    let handler = Arc::new(TestHandler::default());
    handler.flaky.store(1, Ordering::SeqCst);
    let mut h = start(Options {
        handler,
        ..Options::default()
    });
    let seq = h.deliver(&command("s1", "Flaky", 1));
    wait_for("ack", || h.settled(seq) == [Settled::Ack]).await;
    assert_eq!(technical_reason(&h.replies()[0].1), Some("database hiccup"));
    assert_eq!(h.effects(), 0, "the failed run's writes are rolled back");
    assert_eq!(
        h.store.inbox_len(),
        0,
        "technical failures are not recorded"
    );

    let retry = h.deliver(&command("s1", "Flaky", 2));
    wait_for("ack", || h.settled(retry) == [Settled::Ack]).await;
    assert!(is_ok(&h.replies()[1].1));
    assert_eq!(h.effects(), 1);
    assert_eq!(h.store.inbox_len(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn injected_technical_failures_skip_the_handler_but_not_the_inbox() {
    let store = ParticipantStore::temporary().unwrap();
    // Record a reply first, without faults.
    let mut h = start(Options {
        store: store.clone(),
        ..Options::default()
    });
    let seq = h.deliver(&command("s1", "Do", 1));
    wait_for("ack", || h.settled(seq) == [Settled::Ack]).await;
    h.shutdown().await;

    let mut h = start(Options {
        store,
        knobs: Knobs {
            technical_failure_rate: 1.0,
            ..Knobs::default()
        },
        ..Options::default()
    });
    let fresh = h.deliver(&command("s2", "Do", 1));
    let duplicate = h.deliver(&command("s1", "Do", 2));
    wait_for("acks", || {
        h.settled(fresh) == [Settled::Ack] && h.settled(duplicate) == [Settled::Ack]
    })
    .await;
    let replies = h.replies();
    let fresh_reply = replies.iter().find(|(_, r)| r.saga_id == "s2").unwrap();
    let dup_reply = replies.iter().find(|(_, r)| r.saga_id == "s1").unwrap();
    assert_eq!(
        technical_reason(&fresh_reply.1),
        Some("injected technical failure")
    );
    assert!(
        is_ok(&dup_reply.1),
        "duplicates are answered from the inbox"
    );
    assert_eq!(h.effects(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn undecodable_and_incomplete_commands_go_to_the_dlq_at_once() {
    let mut h = start(Options::default());
    let garbage = h
        .feed
        .deliver("saga.cmd.svc.Do", Headers::new(), vec![0xff, 0xff, 0xff]);
    let mut no_reply_to = command("s1", "Do", 1);
    no_reply_to.reply_to.clear();
    let incomplete = h.deliver(&no_reply_to);
    let unknown = h.deliver(&command("s2", "Teleport", 1));
    wait_for("terms", || {
        [garbage, incomplete, unknown]
            .iter()
            .all(|s| h.settled(*s) == [Settled::Term])
    })
    .await;

    let dlq = h.publisher.on("dlq.");
    assert_eq!(dlq.len(), 3);
    let reason = |i: usize| dlq[i].headers[header::DLQ_REASON].clone();
    assert!(
        reason(0).starts_with("undecodable StepCommand"),
        "{}",
        reason(0)
    );
    assert_eq!(reason(1), "invalid StepCommand: missing reply_to");
    assert_eq!(reason(2), "unknown action `Teleport`");
    assert_eq!(dlq[0].subject, "dlq.saga.cmd.svc.Do");
    assert_eq!(dlq[0].payload, vec![0xff, 0xff, 0xff]);
    assert_eq!(dlq[0].headers[header::DLQ_SEQUENCE], garbage.to_string());
    assert!(h.replies().is_empty());
    assert_eq!(h.effects(), 0);
    h.shutdown().await;
}

#[tokio::test]
async fn a_command_that_keeps_failing_backs_off_then_goes_to_the_dlq() {
    let mut h = start(Options::default());
    let cmd = command("s1", "Broken", 1);
    let seq = h.deliver(&cmd);
    wait_for("nak 1", || h.settled(seq).len() == 1).await;
    h.redeliver(seq, &cmd, 2);
    wait_for("nak 2", || h.settled(seq).len() == 2).await;
    h.redeliver(seq, &cmd, 3);
    wait_for("term", || h.settled(seq).len() == 3).await;

    assert_eq!(
        h.settled(seq),
        [
            Settled::Nak(Some(Duration::from_secs(1))),
            Settled::Nak(Some(Duration::from_secs(2))),
            Settled::Term,
        ]
    );
    let dlq = h.publisher.on("dlq.");
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        dlq[0].headers[header::DLQ_REASON],
        "gave up after 3 deliveries: downstream unavailable"
    );
    let replies = h.replies();
    assert_eq!(replies.len(), 1, "the saga hears of it before its timeout");
    assert!(technical_reason(&replies[0].1)
        .unwrap()
        .starts_with("gave up after 3 deliveries"));
    assert_eq!(h.store.inbox_len(), 0);
    h.shutdown().await;
}

#[tokio::test]
async fn a_recorded_reply_expires_after_the_inbox_window_and_is_pruned() {
    let window = Duration::from_secs(3600);
    let mut h = start(Options {
        settings: Settings {
            inbox_window: window,
            prune_interval: Duration::from_millis(20),
            fetch_wait: Duration::from_millis(20),
            ..Settings::default()
        },
        ..Options::default()
    });
    let seq = h.deliver(&command("s1", "Do", 1));
    wait_for("ack", || h.settled(seq) == [Settled::Ack]).await;

    h.clock.advance(30 * 60 * 1000);
    let within = h.deliver(&command("s1", "Do", 2));
    wait_for("ack", || h.settled(within) == [Settled::Ack]).await;
    assert_eq!(h.effects(), 1, "within the window: answered from the inbox");
    assert_eq!(h.store.inbox_len(), 1);

    // Past the window the record is pruned and the key runs the handler again.
    h.clock.advance(2 * 3600 * 1000);
    wait_for("pruning", || h.store.inbox_len() == 0).await;
    let after = h.deliver(&command("s1", "Do", 3));
    wait_for("ack", || h.settled(after) == [Settled::Ack]).await;
    assert_eq!(h.effects(), 2);
    assert_eq!(h.store.inbox_len(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn an_expired_record_is_replaced_and_only_the_new_one_survives_pruning() {
    let store = ParticipantStore::temporary().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let mut h = start(Options {
        store: store.clone(),
        clock: clock.clone(),
        settings: Settings {
            inbox_window: Duration::from_secs(10),
            fetch_wait: Duration::from_millis(20),
            ..Settings::default()
        },
        ..Options::default()
    });
    let first = h.deliver(&command("s1", "Do", 1));
    wait_for("ack", || h.settled(first) == [Settled::Ack]).await;
    clock.advance(11_000);
    let second = h.deliver(&command("s1", "Do", 2));
    wait_for("ack", || h.settled(second) == [Settled::Ack]).await;
    assert_eq!(h.effects(), 2);
    // The old index entry went with the old record; the new record stays.
    assert_eq!(store.prune_inbox(clock.now() - 5_000).unwrap(), 0);
    assert_eq!(store.inbox_len(), 1);
    assert_eq!(store.prune_inbox(clock.now() + 1).unwrap(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn crash_after_effect_once_crashes_one_time_even_across_restarts() {
    let store = ParticipantStore::temporary().unwrap();
    let knobs = Knobs {
        crash_after_effect: Some("Do:1".parse::<CrashAfterEffect>().unwrap()),
        ..Knobs::default()
    };
    let mut h = start(Options {
        store: store.clone(),
        knobs: knobs.clone(),
        ..Options::default()
    });
    let cmd = command("s1", "Do", 1);
    let seq = h.deliver(&cmd);
    wait_for("crash", || h.crashes.lock().unwrap().len() == 1).await;
    assert_eq!(h.effects(), 1, "the effect is durable");
    assert!(h.replies().is_empty(), "no reply before the crash");
    assert!(h.settled(seq).is_empty(), "the command stays unacked");
    assert_eq!(store.crashes("Do").unwrap(), 1);
    h.shutdown().await;

    // The "restarted" process gets the command again.
    let mut h = start(Options {
        store: store.clone(),
        knobs,
        ..Options::default()
    });
    let again = h.deliver(&cmd);
    let other = h.deliver(&command("s2", "Do", 1));
    wait_for("acks", || {
        h.settled(again) == [Settled::Ack] && h.settled(other) == [Settled::Ack]
    })
    .await;
    assert!(
        h.crashes.lock().unwrap().is_empty(),
        "configured to crash once"
    );
    assert_eq!(h.effects(), 2, "s1 once, s2 once");
    assert_eq!(h.replies().len(), 2);
    assert_eq!(store.crashes("Do").unwrap(), 1);
    h.shutdown().await;
}

/// Holds every publish until released, so a test knows a command is in flight.
struct GatedPublisher {
    inner: MemoryPublisher,
    entered: tokio::sync::watch::Sender<bool>,
    open: tokio::sync::watch::Receiver<bool>,
}

#[async_trait]
impl Publisher for GatedPublisher {
    async fn publish(&self, msg: &OutgoingMessage) -> Result<PublishAck, PortError> {
        let _ = self.entered.send(true);
        let mut open = self.open.clone();
        let _ = open.wait_for(|o| *o).await;
        self.inner.publish(msg).await
    }
    async fn publish_new(&self, msg: &OutgoingMessage) -> Result<PublishAck, PortError> {
        self.inner.publish_new(msg).await
    }
}

#[tokio::test]
async fn shutdown_drains_the_commands_in_flight() {
    let inner = MemoryPublisher::default();
    let (entered_tx, mut entered) = tokio::sync::watch::channel(false);
    let (open, open_rx) = tokio::sync::watch::channel(false);
    let mut h = start(Options {
        publisher: Some(Arc::new(GatedPublisher {
            inner: inner.clone(),
            entered: entered_tx,
            open: open_rx,
        })),
        ..Options::default()
    });
    let seq = h.deliver(&command("s1", "Do", 1));
    entered.wait_for(|e| *e).await.unwrap();

    let _ = h.stop.take().unwrap().send(());
    let task = h.task.take().unwrap();
    tokio::task::yield_now().await;
    assert!(!task.is_finished(), "run waits for the command in flight");
    assert!(h.settled(seq).is_empty());
    open.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(h.settled(seq), [Settled::Ack]);
    assert_eq!(inner.on("saga.in.").len(), 1);
}

#[tokio::test]
async fn configuration_errors_are_reported() {
    struct Greedy;
    impl Handler for Greedy {
        fn trees(&self) -> &[&str] {
            &["saga_inbox"]
        }
        fn handle(&self, _: &Tx<'_>, _: &StepCommand) -> Result<Reply, Abort> {
            Ok(Reply::ok())
        }
    }
    let (_feed, consumer) = memory_consumer();
    let err = Participant::new(
        ParticipantStore::temporary().unwrap(),
        Arc::new(MemoryPublisher::default()),
    )
    .serve("svc", Arc::new(Greedy), consumer)
    .run(std::future::pending())
    .await
    .unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");

    let err = Participant::new(
        ParticipantStore::temporary().unwrap(),
        Arc::new(MemoryPublisher::default()),
    )
    .with_knobs(Knobs {
        technical_failure_rate: 1.5,
        ..Knobs::default()
    })
    .serve("svc", Arc::new(TestHandler::default()), memory_consumer().1)
    .run(std::future::pending())
    .await
    .unwrap_err();
    assert!(err.to_string().contains("[0, 1]"), "{err}");
}
