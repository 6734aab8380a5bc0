//! Actor tests on the in-memory ports: no broker, no disk.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use saga_core::definition::parse_definition;
use saga_core::machine::{Input, SagaState, SagaStatus};
use saga_core::{apply, ManualClock, SagaId};
use saga_ports::memory::*;
use saga_ports::*;
use saga_proto::{self as pb, Message};
use saga_runtime::envelope::{
    cancel_message, decode_record, inbox_subject, journal_append, start_message,
};
use saga_runtime::{Context, Limits, RuntimeConfig, Worker};

fn checkout() -> Arc<saga_core::SagaDefinition> {
    Arc::new(
        parse_definition(
            "order-checkout.yaml",
            include_str!("../../../sagas/order-checkout.yaml"),
        )
        .unwrap()
        .definition,
    )
}

struct Rig {
    feed: MemoryFeed,
    publisher: MemoryPublisher,
    journal: MemoryJournal,
    open: MemoryOpenSagas,
    waiting: MemoryWaitingInputs,
    store: Arc<dyn SagaStore>,
    ctx: Context,
}

fn rig(store: Arc<dyn SagaStore>) -> (Rig, MemoryConsumer) {
    rig_with(store, checkout())
}

fn rig_with(
    store: Arc<dyn SagaStore>,
    def: Arc<saga_core::SagaDefinition>,
) -> (Rig, MemoryConsumer) {
    let (feed, consumer) = memory_consumer();
    let publisher = MemoryPublisher::default();
    let journal = MemoryJournal::default();
    let open = MemoryOpenSagas::default();
    let waiting = MemoryWaitingInputs::default();
    let config = RuntimeConfig {
        // One partition: the in-memory consumer feeds every saga.
        partitions: 1,
        idle_stop_after: Duration::from_millis(50),
        ..RuntimeConfig::default()
    };
    let ctx = Context {
        versions: Arc::new(saga_runtime::Versions::local(&BTreeMap::from([(
            def.name.clone(),
            def.clone(),
        )]))),
        definitions: Arc::new(BTreeMap::from([(def.name.clone(), def)])),
        journal: Arc::new(journal.clone()),
        publisher: Arc::new(publisher.clone()),
        store: store.clone(),
        open: Arc::new(open.clone()),
        waiting: Some(Arc::new(waiting.clone())),
        clock: Arc::new(ManualClock::new(1_700_000_000_000)),
        limits: Limits::new(&config),
        config,
        fault_hook: None,
    };
    (
        Rig {
            feed,
            publisher,
            journal,
            open,
            waiting,
            store,
            ctx,
        },
        consumer,
    )
}

fn order_payload() -> pb::Payload {
    pb::Payload {
        kind: Some(pb::payload::Kind::Order(pb::Order {
            order_id: "o-1".into(),
            customer_id: "c-1".into(),
            items: vec![pb::OrderItem {
                sku: "sku-1".into(),
                quantity: 1,
                unit_price_cents: 500,
            }],
            total_cents: 500,
        })),
    }
}

impl Rig {
    fn start(&self, id: &str) -> u64 {
        let id = SagaId::parse(id).unwrap();
        let m = start_message("OrderCheckout", &id, Some(order_payload()), "k", 4, 0);
        self.feed.deliver(&m.subject, m.headers, m.payload)
    }

    /// Answers every command not answered yet with `answer(command)`.
    fn answer_commands(
        &self,
        answered: &mut HashSet<String>,
        answer: &dyn Fn(&pb::StepCommand) -> pb::step_reply::Outcome,
    ) {
        for m in self.publisher.on("saga.cmd.") {
            if !answered.insert(m.msg_id.clone()) {
                continue;
            }
            let cmd = pb::StepCommand::decode(m.payload.as_slice()).unwrap();
            let reply = pb::SagaInput {
                saga_id: cmd.saga_id.clone(),
                saga_type: cmd.saga_type.clone(),
                kind: Some(pb::saga_input::Kind::Reply(pb::StepReply {
                    saga_id: cmd.saga_id.clone(),
                    step: cmd.step.clone(),
                    attempt: cmd.attempt,
                    idempotency_key: cmd.idempotency_key.clone(),
                    compensation: cmd.compensation,
                    outcome: Some(answer(&cmd)),
                    ..Default::default()
                })),
            };
            self.feed
                .deliver(&cmd.reply_to, Headers::new(), reply.encode_to_vec());
        }
    }

    async fn run_until_terminal(
        &self,
        id: &str,
        answer: &dyn Fn(&pb::StepCommand) -> pb::step_reply::Outcome,
    ) -> SagaStatus {
        let mut answered = HashSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            // The journal tells (the local copy is dropped once a terminal saga idles).
            if let Some(status) = self.journalled_status(id).await {
                if status.is_terminal() && self.store.outbox(id).unwrap().is_empty() {
                    return status;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "saga {id} did not finish"
            );
            self.answer_commands(&mut answered, answer);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn deliver(&self, m: &OutgoingMessage) -> u64 {
        self.feed
            .deliver(&m.subject, m.headers.clone(), m.payload.clone())
    }

    fn redeliver(&self, seq: u64, m: &OutgoingMessage, delivered: u64) {
        self.feed.redeliver(
            seq,
            &m.subject,
            m.headers.clone(),
            m.payload.clone(),
            delivered,
        )
    }

    /// Waits until the delivery `seq` was handed back (nak) at least `times` times.
    async fn handed_back(&self, seq: u64, times: usize) {
        wait_for("the input handed back", || {
            self.feed
                .settled()
                .iter()
                .filter(|(s, st)| *s == seq && matches!(st, Settled::Nak(_)))
                .count()
                >= times
        })
        .await
    }

    async fn journalled_status(&self, id: &str) -> Option<SagaStatus> {
        let last = self.journal.last("OrderCheckout", id).await.unwrap()?;
        let r = decode_record(last.sequence, &last.payload).unwrap();
        Some(r.snapshot.expect("records carry snapshots").state.status)
    }

    fn journal_inputs(&self, id: &str) -> Vec<String> {
        let subject = format!("saga.journal.OrderCheckout.{id}");
        self.journal
            .subjects()
            .get(&subject)
            .map(|v| {
                v.iter()
                    .map(|p| pb::JournalEvent::decode(p.as_slice()).unwrap().input_id)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn journal_versions(&self, id: &str) -> Vec<u64> {
        let subject = format!("saga.journal.OrderCheckout.{id}");
        self.journal
            .subjects()
            .get(&subject)
            .map(|v| {
                v.iter()
                    .map(|p| pb::JournalEvent::decode(p.as_slice()).unwrap().version)
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn ok(_: &pb::StepCommand) -> pb::step_reply::Outcome {
    pb::step_reply::Outcome::Ok(pb::StepOk { result: None })
}

#[tokio::test]
async fn a_saga_completes_with_a_gapless_journal_and_every_input_acked() {
    let (rig, consumer) = rig(Arc::new(MemoryStore::default()));
    let worker = Worker::start(rig.ctx.clone(), vec![(0, Box::new(consumer))])
        .await
        .unwrap();
    rig.start("s-1");
    assert_eq!(
        rig.run_until_terminal("s-1", &ok).await,
        SagaStatus::Completed
    );
    // start + 3 replies = 4 transitions, versions 1..=4 in order.
    assert_eq!(rig.journal_versions("s-1"), [1, 2, 3, 4]);
    let events = rig.publisher.on("events.orders.");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].subject, "events.orders.OrderConfirmed.s-1");
    // It entered the open-saga index with its start and left it as it ended.
    assert_eq!(rig.open.list(0).await.unwrap(), vec![]);
    let confirmed = pb::OrderConfirmed::decode(events[0].payload.as_slice()).unwrap();
    assert_eq!(
        (
            confirmed.order_id.as_str(),
            confirmed.correlation_id.as_str()
        ),
        ("o-1", "s-1")
    );
    let settled = rig.feed.settled();
    assert_eq!(settled.len(), 4);
    assert!(settled.iter().all(|(_, s)| *s == Settled::Ack));
    worker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_redelivered_input_is_acked_without_a_second_transition() {
    let (rig, consumer) = rig(Arc::new(MemoryStore::default()));
    let worker = Worker::start(rig.ctx.clone(), vec![(0, Box::new(consumer))])
        .await
        .unwrap();
    let seq = rig.start("s-2");
    // Wait for the first command, then deliver the start again with the same sequence.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while rig.publisher.on("saga.cmd.").is_empty() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let id = SagaId::parse("s-2").unwrap();
    let m = start_message("OrderCheckout", &id, Some(order_payload()), "k", 4, 0);
    rig.feed.redeliver(seq, &m.subject, m.headers, m.payload, 2);
    while rig.feed.settled().iter().filter(|(s, _)| *s == seq).count() < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(rig.journal_versions("s-2"), [1]);
    assert_eq!(rig.publisher.on("saga.cmd.").len(), 1);
    worker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn garbage_and_unknown_saga_types_go_to_the_dlq_and_others_still_run() {
    let (rig, consumer) = rig(Arc::new(MemoryStore::default()));
    let worker = Worker::start(rig.ctx.clone(), vec![(0, Box::new(consumer))])
        .await
        .unwrap();
    let bad = rig
        .feed
        .deliver("saga.in.0.x", Headers::new(), vec![0xff, 0x01, 0x02]);
    let id = SagaId::parse("s-3").unwrap();
    let other = start_message("NoSuchSaga", &id, None, "k", 4, 0);
    let unknown = rig
        .feed
        .deliver(&other.subject, other.headers, other.payload);
    rig.start("s-4");
    assert_eq!(
        rig.run_until_terminal("s-4", &ok).await,
        SagaStatus::Completed
    );
    let dlq = rig.publisher.on("dlq.");
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    assert!(dlq[0].headers[header::DLQ_REASON].contains("undecodable"));
    assert!(dlq[1].headers[header::DLQ_REASON].contains("unknown saga type `NoSuchSaga`"));
    let settled = rig.feed.settled();
    assert!(settled.contains(&(bad, Settled::Term)));
    assert!(settled.contains(&(unknown, Settled::Term)));
    worker.shutdown(Duration::from_secs(1)).await;
}

/// A store whose first `n` commits fail: the actor fails and must be restarted.
struct FlakyStore {
    inner: MemoryStore,
    failures: AtomicUsize,
}

#[async_trait]
impl SagaStore for FlakyStore {
    fn commit(&self, c: &Commit) -> Result<Vec<OutboxEntry>, StoreError> {
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::Io("disk hiccup".into()));
        }
        self.inner.commit(c)
    }
    async fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush().await
    }
    fn load(&self, id: &str) -> Result<Option<StoredSaga>, StoreError> {
        self.inner.load(id)
    }
    fn active(&self) -> Result<Vec<StoredSaga>, StoreError> {
        self.inner.active()
    }
    fn outbox(&self, id: &str) -> Result<Vec<OutboxEntry>, StoreError> {
        self.inner.outbox(id)
    }
    fn outbox_done(&self, id: &str, p: u64, j: Option<u64>) -> Result<(), StoreError> {
        self.inner.outbox_done(id, p, j)
    }
    fn forget(&self, id: &str) -> Result<(), StoreError> {
        self.inner.forget(id)
    }
}

#[tokio::test]
async fn a_failed_saga_actor_is_restarted_and_the_saga_finishes() {
    let store = Arc::new(FlakyStore {
        inner: MemoryStore::default(),
        failures: AtomicUsize::new(1),
    });
    let (rig, consumer) = rig(store);
    let worker = Worker::start(rig.ctx.clone(), vec![(0, Box::new(consumer))])
        .await
        .unwrap();
    let seq = rig.start("s-5");
    // The first commit fails: the actor fails, the supervisor restarts it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while worker.restarts().await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no restart");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Nothing was acked: the input was handed back for redelivery.
    assert_eq!(
        rig.feed.settled(),
        [(seq, Settled::Nak(Some(Duration::from_millis(500))))]
    );
    // The broker redelivers it.
    let id = SagaId::parse("s-5").unwrap();
    let m = start_message("OrderCheckout", &id, Some(order_payload()), "k", 4, 0);
    rig.feed.redeliver(seq, &m.subject, m.headers, m.payload, 2);
    assert_eq!(
        rig.run_until_terminal("s-5", &ok).await,
        SagaStatus::Completed
    );
    assert_eq!(worker.restarts().await, 1);
    worker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn timers_are_rearmed_on_load_and_a_timeout_leads_to_a_retry() {
    let def = checkout();
    let store = Arc::new(MemoryStore::default());
    let (rig, consumer) = rig(store.clone());
    // A saga persisted by an earlier run: ReserveStock sent, its timeout armed.
    let id = SagaId::parse("s-6").unwrap();
    let now = 1_700_000_000_000;
    let t = apply(
        &def,
        &SagaState::new(&def, id.clone(), now),
        &Input::Start { payload: vec![] },
        now,
    );
    let timers: Vec<_> = t
        .effects
        .iter()
        .filter_map(|e| match e {
            saga_core::Effect::ArmTimer { key, at, .. } => Some((key.clone(), *at)),
            _ => None,
        })
        .collect();
    store
        .commit(&Commit {
            saga: StoredSaga {
                state: t.state,
                journal_sequence: 0,
                timers,
            },
            outbox: vec![],
        })
        .unwrap();
    let worker = Worker::start(rig.ctx.clone(), vec![(0, Box::new(consumer))])
        .await
        .unwrap();
    // Nobody answers: the 5s step timeout fires, then the backoff, then attempt 2 goes out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let attempts: Vec<String> = rig
            .publisher
            .on("saga.cmd.inventory.ReserveStock")
            .iter()
            .map(|m| m.headers[header::SAGA_ATTEMPT].clone())
            .collect();
        if attempts == ["2"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retry: {attempts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = store.load("s-6").unwrap().unwrap();
    assert_eq!(s.state.steps[0].attempts, 2);
    // Fired timers left the persisted set: a reload does not fire them again.
    assert!(
        !s.timers
            .iter()
            .any(|(k, _)| k.attempt == 1 && k.step == "ReserveStock"),
        "{:?}",
        s.timers
    );
    assert!(s
        .state
        .applied_inputs
        .contains("timer:step-timeout:ReserveStock:1"));
    assert_eq!(
        inbox_subject(&id, 4),
        format!("saga.in.{}.s-6", saga_core::ids::partition_of(&id, 4))
    );
    worker.shutdown(Duration::from_secs(1)).await;
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// F1: a transition refused by the journal fence (someone else appended) leaves no
/// mark: the actor restores the saga from the journal and applies the input on top of
/// the other writer's record, instead of acking it as "seen".
#[tokio::test]
async fn a_fenced_transition_leaves_no_mark_and_the_cancel_is_applied_after_all() {
    let def = checkout();
    let (rig, consumer) = rig(Arc::new(MemoryStore::default()));
    let worker = Worker::start(rig.ctx.clone(), vec![(0, Box::new(consumer))])
        .await
        .unwrap();
    rig.start("f-1");
    wait_for("the first command", || {
        !rig.publisher.on("saga.cmd.").is_empty()
    })
    .await;
    // Another writer appends a valid record (a stale timer, ignored) behind our back.
    let last = rig
        .journal
        .last("OrderCheckout", "f-1")
        .await
        .unwrap()
        .unwrap();
    let snap = decode_record(last.sequence, &last.payload)
        .unwrap()
        .snapshot
        .unwrap();
    let stale = Input::TimerFired(saga_core::machine::TimerKey {
        kind: saga_core::machine::TimerKind::StepTimeout,
        step: "ReserveStock".into(),
        attempt: 99,
    });
    let t = apply(&def, &snap.state, &stale, 1);
    let foreign = Snapshot {
        state: t.state.clone(),
        timers: snap.timers.clone(),
        effects: vec![],
    };
    let append = journal_append(&t.state, &stale, &t.events, &foreign, "intruder", 1);
    rig.journal.append(&append, last.sequence).await.unwrap();

    let id = SagaId::parse("f-1").unwrap();
    let cancel = cancel_message("OrderCheckout", &id, "changed my mind", 1);
    let seq = rig.deliver(&cancel);
    assert_eq!(
        rig.run_until_terminal("f-1", &ok).await,
        SagaStatus::Compensated
    );
    let inputs = rig.journal_inputs("f-1");
    assert!(inputs.contains(&"cancel".to_string()), "{inputs:?}");
    assert!(rig.publisher.on("events.orders.OrderConfirmed").is_empty());
    assert_eq!(rig.publisher.on("events.orders.OrderCancelled").len(), 1);
    assert!(rig.feed.settled().contains(&(seq, Settled::Ack)));
    worker.shutdown(Duration::from_secs(1)).await;
}

/// F4: a terminal saga restored on a worker that never had it (a late reply after a
/// partition move, or an emptied store) publishes nothing again.
#[tokio::test]
async fn a_terminal_saga_met_through_a_late_input_republishes_nothing() {
    let (rig, consumer) = rig(Arc::new(MemoryStore::default()));
    let worker = Worker::start(rig.ctx.clone(), vec![(0, Box::new(consumer))])
        .await
        .unwrap();
    rig.start("t-1");
    assert_eq!(
        rig.run_until_terminal("t-1", &ok).await,
        SagaStatus::Completed
    );
    worker.shutdown(Duration::from_secs(1)).await;
    let published = rig.publisher.messages().len();

    // Another worker, empty store, same journal, broker and index.
    let (feed, consumer) = memory_consumer();
    let ctx = Context {
        store: Arc::new(MemoryStore::default()),
        ..rig.ctx.clone()
    };
    let worker = Worker::start(ctx, vec![(0, Box::new(consumer))])
        .await
        .unwrap();
    let last_cmd = rig.publisher.on("saga.cmd.").pop().unwrap();
    let cmd = pb::StepCommand::decode(last_cmd.payload.as_slice()).unwrap();
    let reply = pb::SagaInput {
        saga_id: cmd.saga_id.clone(),
        saga_type: cmd.saga_type.clone(),
        kind: Some(pb::saga_input::Kind::Reply(pb::StepReply {
            saga_id: cmd.saga_id.clone(),
            step: cmd.step.clone(),
            attempt: cmd.attempt,
            idempotency_key: cmd.idempotency_key.clone(),
            compensation: false,
            outcome: Some(ok(&cmd)),
            ..Default::default()
        })),
    };
    let seq = feed.deliver(&cmd.reply_to, Headers::new(), reply.encode_to_vec());
    wait_for("the late reply acked", || {
        feed.settled().contains(&(seq, Settled::Ack))
    })
    .await;
    assert_eq!(
        rig.publisher.messages().len(),
        published,
        "nothing republished"
    );
    assert_eq!(rig.publisher.on("events.orders.OrderConfirmed").len(), 1);
    assert_eq!(
        rig.journal_versions("t-1"),
        [1, 2, 3, 4],
        "already applied: no record"
    );
    worker.shutdown(Duration::from_secs(1)).await;
}

/// F15: deliveries that were never tried (handed back during partition moves) do not
/// count: an input delivered many times is applied, not dead-lettered.
#[tokio::test]
async fn an_input_handed_back_many_times_is_applied_not_dead_lettered() {
    let (rig, consumer) = rig(Arc::new(MemoryStore::default()));
    let worker = Worker::start(rig.ctx.clone(), vec![(0, Box::new(consumer))])
        .await
        .unwrap();
    let id = SagaId::parse("m-1").unwrap();
    let m = start_message("OrderCheckout", &id, Some(order_payload()), "k", 4, 0);
    rig.feed.redeliver(77, &m.subject, m.headers, m.payload, 50);
    assert_eq!(
        rig.run_until_terminal("m-1", &ok).await,
        SagaStatus::Completed
    );
    assert!(rig.publisher.on("dlq.").is_empty());
    worker.shutdown(Duration::from_secs(1)).await;
}

/// F3: a saga whose actor keeps failing is restarted with capped backoff until it goes
/// through: never parked.
#[tokio::test(start_paused = true)]
async fn a_saga_that_keeps_failing_is_restarted_until_it_goes_through() {
    let store = Arc::new(FlakyStore {
        inner: MemoryStore::default(),
        failures: AtomicUsize::new(8),
    });
    let (rig, consumer) = rig(store);
    let worker = Worker::start(rig.ctx.clone(), vec![(0, Box::new(consumer))])
        .await
        .unwrap();
    let id = SagaId::parse("k-1").unwrap();
    let m = start_message("OrderCheckout", &id, Some(order_payload()), "k", 4, 0);
    let seq = rig
        .feed
        .deliver(&m.subject, m.headers.clone(), m.payload.clone());
    // The broker redelivers every nak; the worker never gives the saga up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let mut naks = 0;
    while rig.journalled_status("k-1").await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "never went through");
        let now_naks = rig
            .feed
            .settled()
            .iter()
            .filter(|(s, st)| *s == seq && matches!(st, Settled::Nak(_)))
            .count();
        if now_naks > naks {
            naks = now_naks;
            rig.feed.redeliver(
                seq,
                &m.subject,
                m.headers.clone(),
                m.payload.clone(),
                naks as u64 + 1,
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(worker.restarts().await >= 8, "{}", worker.restarts().await);
    // The eight failures count against the input's limit (10): still applied.
    assert!(rig.publisher.on("dlq.").is_empty());
    assert_eq!(
        rig.run_until_terminal("k-1", &ok).await,
        SagaStatus::Completed
    );
    worker.shutdown(Duration::from_secs(1)).await;
}

/// F2: a takeover whose listing of open sagas fails leaves nothing of the partition
/// running; the next attempt resumes its sagas.
#[tokio::test]
async fn a_failed_takeover_holds_nothing_and_the_next_one_resumes_the_open_sagas() {
    let (rig, consumer) = rig(Arc::new(MemoryStore::default()));
    let worker = Worker::start(rig.ctx.clone(), vec![(0, Box::new(consumer))])
        .await
        .unwrap();
    rig.start("a-1");
    wait_for("the first command", || {
        !rig.publisher.on("saga.cmd.").is_empty()
    })
    .await;
    worker.release(0, Duration::from_secs(1)).await;
    assert_eq!(worker.live_sagas().await, 0);
    assert_eq!(
        rig.open.list(0).await.unwrap(),
        vec![("OrderCheckout".to_string(), "a-1".to_string())]
    );

    rig.open.fail_next(1);
    let (_feed, consumer) = memory_consumer();
    assert!(worker.acquire(0, Box::new(consumer)).await.is_err());
    assert!(worker.held().await.is_empty());
    assert_eq!(worker.live_sagas().await, 0, "nothing resumed");

    let (_feed, consumer) = memory_consumer();
    assert_eq!(worker.acquire(0, Box::new(consumer)).await.unwrap(), 1);
    assert_eq!(worker.held().await, [0]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while worker.live_sagas().await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the saga was not resumed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    worker.shutdown(Duration::from_secs(1)).await;
}

/// A cancel that overtakes its saga's start (the start redelivered after it, or still
/// being journalled by the partition's previous owner) is tried again, not lost.
#[tokio::test]
async fn a_cancel_that_overtakes_its_start_is_applied_once_the_start_is() {
    let (rig, consumer) = rig(Arc::new(MemoryStore::default()));
    let worker = Worker::start(rig.ctx.clone(), vec![(0, Box::new(consumer))])
        .await
        .unwrap();
    let id = SagaId::parse("c-1").unwrap();
    let cancel = cancel_message("OrderCheckout", &id, "too slow", 1);
    let seq = rig.deliver(&cancel);
    rig.handed_back(seq, 1).await;
    assert!(rig.publisher.on("dlq.").is_empty(), "not dead-lettered");
    rig.start("c-1");
    wait_for("the first command", || {
        !rig.publisher.on("saga.cmd.").is_empty()
    })
    .await;
    rig.redeliver(seq, &cancel, 2);
    assert_eq!(
        rig.run_until_terminal("c-1", &ok).await,
        SagaStatus::Compensated
    );
    assert!(rig.journal_inputs("c-1").contains(&"cancel".to_string()));
    worker.shutdown(Duration::from_secs(1)).await;
}

/// A cancel whose start is still stored in the input stream, unacked (taken by a
/// worker that died before journalling it), finds that start and applies it first: the
/// saga is cancelled at once, and the start's own late delivery changes nothing.
#[tokio::test]
async fn a_cancel_whose_start_is_still_waiting_applies_the_start_first() {
    let (rig, consumer) = rig(Arc::new(MemoryStore::default()));
    let worker = Worker::start(rig.ctx.clone(), vec![(0, Box::new(consumer))])
        .await
        .unwrap();
    let id = SagaId::parse("w-1").unwrap();
    let start = start_message("OrderCheckout", &id, Some(order_payload()), "k", 1, 0);
    rig.waiting.store(0, "w-1", &start, 1);
    let cancel = cancel_message("OrderCheckout", &id, "changed my mind", 1);
    rig.deliver(&cancel);
    assert_eq!(
        rig.run_until_terminal("w-1", &ok).await,
        SagaStatus::Compensated
    );
    assert_eq!(rig.journal_inputs("w-1")[..2], ["start", "cancel"]);
    // The start's own delivery, after its ack wait, is acked as already applied.
    let late = rig.deliver(&start);
    wait_for("the late start is acked", || {
        rig.feed
            .settled()
            .iter()
            .any(|(s, st)| *s == late && matches!(st, Settled::Ack))
    })
    .await;
    assert_eq!(rig.journal_inputs("w-1")[..2], ["start", "cancel"]);
    worker.shutdown(Duration::from_secs(1)).await;
}

/// Admission control: past `max_live_sagas`, a new start waits in the stream (handed
/// back, no attempt counted) while the running saga goes on.
#[tokio::test]
async fn past_the_live_saga_limit_new_starts_wait_and_running_sagas_go_on() {
    let (mut rig, consumer) = rig(Arc::new(MemoryStore::default()));
    rig.ctx.config.max_live_sagas = 1;
    let worker = Worker::start(rig.ctx.clone(), vec![(0, Box::new(consumer))])
        .await
        .unwrap();
    rig.start("l-1");
    wait_for("the first saga's command", || {
        !rig.publisher.on("saga.cmd.").is_empty()
    })
    .await;
    let seq = rig.start("l-2");
    wait_for("the second start handed back", || {
        rig.feed
            .settled()
            .contains(&(seq, Settled::Nak(Some(Duration::from_secs(1)))))
    })
    .await;
    assert_eq!(rig.journal_versions("l-2"), Vec::<u64>::new());
    assert_eq!(
        rig.run_until_terminal("l-1", &ok).await,
        SagaStatus::Completed
    );
    // Once the first has ended and stopped, the start comes again and runs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while worker.live_sagas().await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "l-1 never stopped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let id = SagaId::parse("l-2").unwrap();
    let m = start_message("OrderCheckout", &id, Some(order_payload()), "k", 4, 0);
    rig.feed.redeliver(seq, &m.subject, m.headers, m.payload, 2);
    assert_eq!(
        rig.run_until_terminal("l-2", &ok).await,
        SagaStatus::Completed
    );
    worker.shutdown(Duration::from_secs(1)).await;
}

/// An open saga missing from the open-saga index (the stream re-created by an operator)
/// is entered again by the sweep from the local copy.
#[tokio::test]
async fn the_sweep_enters_an_open_saga_missing_from_the_index_again() {
    let (mut rig, consumer) = rig(Arc::new(MemoryStore::default()));
    rig.ctx.config.sweep_interval = Duration::from_millis(50);
    let worker = Worker::start(rig.ctx.clone(), vec![(0, Box::new(consumer))])
        .await
        .unwrap();
    rig.start("w-1");
    wait_for("the first command", || {
        !rig.publisher.on("saga.cmd.").is_empty()
    })
    .await;
    let entry = vec![("OrderCheckout".to_string(), "w-1".to_string())];
    assert_eq!(rig.open.list(0).await.unwrap(), entry);
    rig.open.close(0, "OrderCheckout", "w-1").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rig.open.list(0).await.unwrap() != entry {
        assert!(tokio::time::Instant::now() < deadline, "not entered again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        rig.run_until_terminal("w-1", &ok).await,
        SagaStatus::Completed
    );
    // Ended: it leaves the index (a sweep that raced the end removes it again).
    while !rig.open.list(0).await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "still in the index");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rig.publisher.on("events.orders.OrderConfirmed").len(), 1);
    worker.shutdown(Duration::from_secs(1)).await;
}

/// Found by the long chaos run: a start redelivered to a worker that never had the saga
/// was fenced, the actor failed and dropped the cancel queued behind it, again at every
/// redelivery. Now the fence is recovered in place: the start is acked as applied and
/// the cancel behind it is journalled.
#[tokio::test]
async fn a_redelivered_start_on_another_worker_does_not_hold_back_the_input_behind_it() {
    let (rig, consumer) = rig(Arc::new(MemoryStore::default()));
    let worker = Worker::start(rig.ctx.clone(), vec![(0, Box::new(consumer))])
        .await
        .unwrap();
    rig.start("r-1");
    assert_eq!(
        rig.run_until_terminal("r-1", &ok).await,
        SagaStatus::Completed
    );
    worker.shutdown(Duration::from_secs(1)).await;

    let (feed, consumer) = memory_consumer();
    let ctx = Context {
        store: Arc::new(MemoryStore::default()),
        ..rig.ctx.clone()
    };
    let worker = Worker::start(ctx, vec![(0, Box::new(consumer))])
        .await
        .unwrap();
    let id = SagaId::parse("r-1").unwrap();
    let start = start_message("OrderCheckout", &id, Some(order_payload()), "k", 4, 0);
    let cancel = cancel_message("OrderCheckout", &id, "late", 1);
    let s = feed.deliver(&start.subject, start.headers, start.payload);
    let c = feed.deliver(&cancel.subject, cancel.headers, cancel.payload);
    wait_for("both acked", || {
        let settled = feed.settled();
        settled.contains(&(s, Settled::Ack)) && settled.contains(&(c, Settled::Ack))
    })
    .await;
    assert_eq!(worker.restarts().await, 0);
    let inputs = rig.journal_inputs("r-1");
    assert_eq!(
        inputs.last().map(String::as_str),
        Some("cancel"),
        "{inputs:?}"
    );
    assert_eq!(rig.publisher.on("events.orders.OrderConfirmed").len(), 1);
    worker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_command_the_broker_refuses_fails_its_step_and_the_saga_ends_visibly() {
    // The checkout, with a confirmation that is not retried (no backoff to wait for).
    let yaml = include_str!("../../../sagas/order-checkout.yaml")
        .replace("retryPolicy: exponentialBackoff(5)", "retryPolicy: none");
    let def = Arc::new(
        parse_definition("order-checkout.yaml", &yaml)
            .unwrap()
            .definition,
    );
    let (rig, consumer) = rig_with(Arc::new(MemoryStore::default()), def);
    // Each of the first two steps answers with a 900-byte result; the confirmation
    // carries both and is over the broker's limit, each compensation carries its own
    // step's result only and fits.
    rig.publisher.max_payload(1500);
    let worker = Worker::start(rig.ctx.clone(), vec![(0, Box::new(consumer))])
        .await
        .unwrap();
    rig.start("s-big");
    let big = |cmd: &pb::StepCommand| {
        let result = (!cmd.compensation && cmd.step != "ConfirmOrder").then(|| pb::Payload {
            kind: Some(pb::payload::Kind::Raw(vec![7u8; 900])),
        });
        pb::step_reply::Outcome::Ok(pb::StepOk { result })
    };
    // The confirmation never reached the orders service: the steps before it are
    // undone and the saga is COMPENSATED (retrying a refused pivot would never end).
    assert_eq!(
        rig.run_until_terminal("s-big", &big).await,
        SagaStatus::Compensated
    );
    // The refused command was never published; the compensations were, in reverse.
    let actions: Vec<String> = rig
        .publisher
        .on("saga.cmd.")
        .iter()
        .map(|m| {
            pb::StepCommand::decode(m.payload.as_slice())
                .unwrap()
                .action
        })
        .collect();
    assert_eq!(
        actions,
        [
            "ReserveStock",
            "ChargePayment",
            "RefundPayment",
            "ReleaseStock"
        ]
    );
    // The journal says why, for the user to read.
    let last = rig
        .journal
        .last("OrderCheckout", "s-big")
        .await
        .unwrap()
        .unwrap();
    let state = decode_record(last.sequence, &last.payload)
        .unwrap()
        .snapshot
        .unwrap()
        .state;
    let why = state.compensation_reason.unwrap_or_default();
    assert!(why.contains("step ConfirmOrder failed"), "{why}");
    let inputs = rig.journal_inputs("s-big");
    assert!(
        inputs.iter().any(|i| i == "do:ConfirmOrder:1:business"),
        "{inputs:?}"
    );
    // ...and the attempt's error, as GetSagaHistory shows it.
    let subject = "saga.journal.OrderCheckout.s-big".to_string();
    let reasons: Vec<String> = rig.journal.subjects()[&subject]
        .iter()
        .flat_map(|p| pb::JournalEvent::decode(p.as_slice()).unwrap().events)
        .map(|e| e.reason)
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("the command ConfirmOrder (")
                && r.contains("bytes) was refused by the broker: maximum payload exceeded")),
        "{reasons:?}"
    );
    worker.shutdown(Duration::from_secs(1)).await;
}

/// A definition changed under a running saga in a way that still fits it (the action a
/// step sends was renamed): the takeover replays the journal, finds that the machine now
/// sends another command than the one journalled, and stops the saga with a
/// non-determinism error instead of letting it diverge.
#[tokio::test]
async fn a_replay_that_diverges_from_the_journal_stops_the_saga() {
    let (rig, consumer) = rig(Arc::new(MemoryStore::default()));
    let worker = Worker::start(rig.ctx.clone(), vec![(0, Box::new(consumer))])
        .await
        .unwrap();
    rig.start("nd-1");
    // ReserveStock answers; ChargePayment is sent and left waiting.
    wait_for("ReserveStock sent", || {
        !rig.publisher.on("saga.cmd.").is_empty()
    })
    .await;
    rig.answer_commands(&mut HashSet::new(), &|c| {
        assert_eq!(c.step, "ReserveStock", "only the first step is answered");
        ok(c)
    });
    wait_for("ChargePayment sent", || {
        rig.publisher
            .on("saga.cmd.payment.")
            .iter()
            .any(|m| m.subject.ends_with("ChargePayment"))
    })
    .await;
    worker.shutdown(Duration::from_secs(1)).await;

    // Another worker, empty store, with ChargePayment's action renamed.
    let yaml = include_str!("../../../sagas/order-checkout.yaml")
        .replace("action: ChargePayment", "action: ChargeCard");
    let changed = Arc::new(
        parse_definition("order-checkout.yaml", &yaml)
            .unwrap()
            .definition,
    );
    let (feed, consumer) = memory_consumer();
    let versions =
        saga_runtime::Versions::local(&BTreeMap::from([(changed.name.clone(), checkout())]));
    versions.run_latest_as(changed.clone());
    let ctx = Context {
        store: Arc::new(MemoryStore::default()),
        definitions: Arc::new(BTreeMap::from([(changed.name.clone(), changed)])),
        versions: Arc::new(versions),
        ..rig.ctx.clone()
    };
    let worker = Worker::start(ctx, vec![(0, Box::new(consumer))])
        .await
        .unwrap();
    let before = rig.publisher.on("saga.cmd.").len();
    let cmd = rig
        .publisher
        .on("saga.cmd.payment.")
        .pop()
        .map(|m| pb::StepCommand::decode(m.payload.as_slice()).unwrap())
        .unwrap();
    let reply = pb::SagaInput {
        saga_id: cmd.saga_id.clone(),
        saga_type: cmd.saga_type.clone(),
        kind: Some(pb::saga_input::Kind::Reply(pb::StepReply {
            saga_id: cmd.saga_id.clone(),
            step: cmd.step.clone(),
            attempt: cmd.attempt,
            idempotency_key: cmd.idempotency_key.clone(),
            outcome: Some(ok(&cmd)),
            ..Default::default()
        })),
    };
    feed.deliver(&cmd.reply_to, Headers::new(), reply.encode_to_vec());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        match rig.journalled_status("nd-1").await {
            Some(s) if s.is_terminal() => break s,
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the saga was not stopped"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(status, SagaStatus::Failed);
    let last = rig
        .journal
        .last("OrderCheckout", "nd-1")
        .await
        .unwrap()
        .unwrap();
    let state = decode_record(last.sequence, &last.payload)
        .unwrap()
        .snapshot
        .unwrap()
        .state;
    let why = state.failure_reason.unwrap();
    assert!(
        why.starts_with("non-deterministic replay: record v2 (do:ReserveStock:1:ok)"),
        "{why}"
    );
    assert!(
        why.contains("STEP_STARTED ChargePayment 1 (ChargeCard)"),
        "{why}"
    );
    assert!(
        why.contains("STEP_STARTED ChargePayment 1 (ChargePayment)"),
        "{why}"
    );
    // Nothing was sent on the changed plan: no ConfirmOrder, no compensation.
    assert_eq!(rig.publisher.on("saga.cmd.").len(), before);
    worker.shutdown(Duration::from_secs(1)).await;
}

/// Waits until the worker has `live` actors and `parked` parked sagas.
async fn wait_counts(worker: &Worker, live: usize, parked: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = (worker.live_sagas().await, worker.parked_sagas().await);
        if now == (live, parked) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "(live actors, parked sagas) stayed {now:?}, not ({live}, {parked})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A running saga idle past `park_after` with nothing to publish is parked: its actor
/// stops and the supervisor keeps it. Its next input runs it again, from the local copy,
/// to the end, with nothing applied twice or lost.
#[tokio::test]
async fn an_idle_running_saga_is_parked_and_its_next_reply_runs_it_again() {
    let (mut rig, consumer) = rig(Arc::new(MemoryStore::default()));
    rig.ctx.config.park_after = Duration::from_millis(50);
    let worker = Worker::start(rig.ctx.clone(), vec![(0, Box::new(consumer))])
        .await
        .unwrap();
    rig.start("p-1");
    wait_for("the first command", || {
        !rig.publisher.on("saga.cmd.").is_empty()
    })
    .await;
    wait_counts(&worker, 0, 1).await;
    // The sweep leaves a parked saga parked (it is not "an open saga without an actor").
    let open = vec![(SagaId::parse("p-1").unwrap(), "OrderCheckout".to_string())];
    let resumed = ractor::call!(worker.supervisor(), |reply| {
        saga_runtime::supervisor::SupervisorMsg::Sweep { open, reply }
    })
    .unwrap();
    assert_eq!(resumed, 0);
    assert_eq!(
        rig.run_until_terminal("p-1", &ok).await,
        SagaStatus::Completed
    );
    assert_eq!(
        rig.journal_inputs("p-1").len(),
        4,
        "{:?}",
        rig.journal_inputs("p-1")
    );
    assert_eq!(rig.journal_versions("p-1"), [1, 2, 3, 4]);
    let settled = rig.feed.settled();
    assert_eq!(settled.len(), 4);
    assert!(settled.iter().all(|(_, s)| *s == Settled::Ack));
    // Ended, it is neither parked nor alive once idle.
    wait_counts(&worker, 0, 0).await;
    worker.shutdown(Duration::from_secs(1)).await;
}

/// A parked saga's step timeout still fires: the worker's timer wheel resumes it at its
/// deadline and the timeout is applied as if the actor had waited, even with a wall
/// clock that lags the monotonic one.
#[tokio::test]
async fn a_parked_saga_is_resumed_at_its_step_timeout() {
    let def = Arc::new(
        parse_definition(
            "short.yaml",
            "saga:
  name: OrderCheckout
  steps:
    - {name: Wait, service: nobody, action: wait, compensation: none, timeout: 600ms}
",
        )
        .unwrap()
        .definition,
    );
    let (mut rig, consumer) = rig_with(Arc::new(MemoryStore::default()), def);
    rig.ctx.config.park_after = Duration::from_millis(30);
    let worker = Worker::start(rig.ctx.clone(), vec![(0, Box::new(consumer))])
        .await
        .unwrap();
    rig.start("t-1");
    wait_counts(&worker, 0, 1).await;
    assert!(
        !rig.journal_inputs("t-1")
            .iter()
            .any(|i| i.starts_with("timer:")),
        "parked before its timeout"
    );
    // The rig's wall clock stands still: the wheel waits on the monotonic clock, as an
    // armed timer does, and the woken saga fires what is due instead of waiting again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !rig
        .journal_inputs("t-1")
        .contains(&"timer:step-timeout:Wait:1".to_string())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the parked saga's timeout never fired: {:?}",
            rig.journal_inputs("t-1")
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    worker.shutdown(Duration::from_secs(1)).await;
}

/// A takeover of more open sagas than restore slots starts their actors a few at a time
/// (`max_concurrent_restores` 1: two slots), and every saga is resumed and finishes.
#[tokio::test]
async fn a_takeover_of_more_sagas_than_restore_slots_resumes_every_one() {
    let (mut rig, consumer) = rig(Arc::new(MemoryStore::default()));
    rig.ctx.config.max_concurrent_restores = 1;
    rig.ctx.limits = Limits::new(&rig.ctx.config);
    let worker = Worker::start(rig.ctx.clone(), vec![(0, Box::new(consumer))])
        .await
        .unwrap();
    let ids: Vec<String> = (0..7).map(|i| format!("q-{i}")).collect();
    for id in &ids {
        rig.start(id);
    }
    wait_for("every first command", || {
        rig.publisher.on("saga.cmd.").len() >= ids.len()
    })
    .await;
    worker.release(0, Duration::from_secs(1)).await;
    assert_eq!(worker.live_sagas().await, 0);

    let (feed, consumer) = memory_consumer();
    rig.feed = feed;
    assert_eq!(
        worker.acquire(0, Box::new(consumer)).await.unwrap(),
        ids.len()
    );
    for id in &ids {
        assert_eq!(
            rig.run_until_terminal(id, &ok).await,
            SagaStatus::Completed,
            "{id}"
        );
    }
    worker.shutdown(Duration::from_secs(1)).await;
}
