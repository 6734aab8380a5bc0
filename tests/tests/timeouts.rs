//! Step timeouts, retries with backoff, and in-doubt compensation, with the test itself
//! playing a participant that answers late or never.

use std::sync::Arc;
use std::time::Duration;

use saga_e2e::*;
use saga_nats::{ConsumerSettings, NatsConsumer, NatsPublisher};
use saga_ports::{Consumer, Publisher};
use saga_proto::{self as pb, Message};

const SAGA: &str = "saga:
  name: TimeoutSaga
  steps:
    - name: Slow
      service: slowsvc
      action: doSlow
      compensation: undoSlow
      timeout: 500ms
      retryPolicy: {max_attempts: 3, initial: 100ms, multiplier: 2, max: 1s, jitter: 0}
    - name: Last
      service: slowsvc
      action: doLast
      timeout: 2s
";

/// The journal of a `TimeoutSaga` whose first attempt at `Slow` timed out.
const RETRIED_ONCE_THEN_COMPLETED: [&str; 9] = [
    "SAGA_STARTED",
    "STEP_STARTED Slow 1",
    "STEP_TIMED_OUT Slow 1",
    "RETRY_SCHEDULED Slow 2",
    "STEP_STARTED Slow 2",
    "STEP_SUCCEEDED Slow 2",
    "STEP_STARTED Last 1",
    "STEP_SUCCEEDED Last 1",
    "SAGA_COMPLETED",
];

/// Decides the reply to a command; `None` stays silent.
type Decide = Arc<dyn Fn(&pb::StepCommand) -> Option<pb::step_reply::Outcome> + Send + Sync>;

/// Answers commands of `slowsvc` with `decide(command)`; `None` stays silent.
async fn play_participant(js: async_nats::jetstream::Context, decide: Decide) {
    saga_nats::ensure_service_consumer(&js, "slowsvc", &ConsumerSettings::default())
        .await
        .unwrap();
    let mut consumer = NatsConsumer::service(&js, "slowsvc").await.unwrap();
    let publisher = NatsPublisher::new(js.clone());
    loop {
        let Ok(batch) = consumer.fetch(10, Duration::from_millis(500)).await else {
            continue;
        };
        for d in batch {
            let cmd = pb::StepCommand::decode(d.payload.as_slice()).unwrap();
            if let Some(outcome) = decide(&cmd) {
                let reply = pb::StepReply {
                    saga_id: cmd.saga_id.clone(),
                    step: cmd.step.clone(),
                    idempotency_key: cmd.idempotency_key.clone(),
                    compensation: cmd.compensation,
                    outcome: Some(outcome),
                    service: "slowsvc".into(),
                    ..Default::default()
                };
                let msg = saga_participant::reply_message(&cmd, reply, &d.headers);
                publisher.publish(&msg).await.unwrap();
            }
            d.acker.ack().await.unwrap();
        }
    }
}

fn ok() -> Option<pb::step_reply::Outcome> {
    Some(pb::step_reply::Outcome::Ok(pb::StepOk { result: None }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_step_is_retried_with_backoff_and_succeeds() {
    let stack = Stack::new();
    let sagas = sagas_dir_with(&stack, &[("timeout.yaml", SAGA)]);
    let _worker = stack.worker("w", &[("SAGAS_DIR", sagas.to_str().unwrap())]);
    let js = stack.js().await;
    wait_provisioned(&js).await;
    let participant = tokio::spawn(play_participant(
        js.clone(),
        Arc::new(|c: &pb::StepCommand| match (c.action.as_str(), c.attempt) {
            ("doSlow", 1) => None, // too slow: the worker's 500ms timer fires
            _ => ok(),
        }),
    ));
    start_saga(&js, "TimeoutSaga", "t-1", pb::Payload::default()).await;
    let states = wait_terminal(&js, "TimeoutSaga", &["t-1".into()], Duration::from_secs(30)).await;
    assert_eq!(states, [pb::SagaState::Completed]);
    let log = event_log(&journal(&js, "TimeoutSaga", "t-1").await);
    assert_eq!(log, RETRIED_ONCE_THEN_COMPLETED);
    // The backoff recorded is the policy's first delay (jitter 0).
    let j = journal(&js, "TimeoutSaga", "t-1").await;
    let delay = j
        .iter()
        .flat_map(|e| &e.events)
        .find(|t| t.kind() == pb::TransitionEventKind::RetryScheduled)
        .and_then(|t| t.delay)
        .unwrap();
    assert_eq!((delay.seconds, delay.nanos), (0, 100_000_000));
    participant.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_retries_run_out_the_in_doubt_step_is_compensated() {
    let stack = Stack::new();
    let sagas = sagas_dir_with(&stack, &[("timeout.yaml", SAGA)]);
    let _worker = stack.worker("w", &[("SAGAS_DIR", sagas.to_str().unwrap())]);
    let js = stack.js().await;
    wait_provisioned(&js).await;
    let participant = tokio::spawn(play_participant(
        js.clone(),
        Arc::new(|c: &pb::StepCommand| match c.action.as_str() {
            "doSlow" => None, // never answers
            _ => ok(),
        }),
    ));
    start_saga(&js, "TimeoutSaga", "t-2", pb::Payload::default()).await;
    let states = wait_terminal(&js, "TimeoutSaga", &["t-2".into()], Duration::from_secs(30)).await;
    assert_eq!(states, [pb::SagaState::Compensated]);
    let log = event_log(&journal(&js, "TimeoutSaga", "t-2").await);
    let attempts: Vec<&String> = log
        .iter()
        .filter(|l| l.starts_with("STEP_STARTED Slow"))
        .collect();
    assert_eq!(attempts.len(), 3, "{log:?}");
    assert!(log.contains(&"STEP_IN_DOUBT Slow".to_string()), "{log:?}");
    assert!(
        log.contains(&"COMPENSATION_STEP_STARTED Slow 1".to_string()),
        "{log:?}"
    );
    assert!(
        log.contains(&"STEP_COMPENSATED Slow".to_string()),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l.contains("Last")), "{log:?}");
    participant.abort();
}

/// A pivot, then a retriable step whose participant is down far past the saga deadline.
const RETRIABLE_SAGA: &str = "saga:
  name: RetriableSaga
  timeout: 2s
  steps:
    - name: Slow
      service: slowsvc
      action: doSlow
      compensation: undoSlow
      timeout: 1s
    - name: Charge
      service: slowsvc
      action: doCharge
      kind: pivot
      timeout: 1s
    - name: Notify
      service: slowsvc
      action: doNotify
      timeout: 300ms
      retryPolicy: {max_attempts: unbounded, initial: 100ms, multiplier: 2, max: 400ms, jitter: 0}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retriable_step_whose_participant_is_down_past_the_deadline_completes_when_it_returns() {
    let stack = Stack::new();
    let sagas = sagas_dir_with(&stack, &[("retriable.yaml", RETRIABLE_SAGA)]);
    let _worker = stack.worker("w", &[("SAGAS_DIR", sagas.to_str().unwrap())]);
    let js = stack.js().await;
    wait_provisioned(&js).await;
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let notify_up = up.clone();
    let participant = tokio::spawn(play_participant(
        js.clone(),
        Arc::new(move |c: &pb::StepCommand| match c.action.as_str() {
            "doNotify" if !notify_up.load(std::sync::atomic::Ordering::SeqCst) => None,
            _ => ok(),
        }),
    ));
    start_saga(&js, "RetriableSaga", "r-1", pb::Payload::default()).await;
    // The deadline (2s) passes while Notify is down: it is recorded, not acted on, and
    // Notify is tried again and again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = event_log(&journal(&js, "RetriableSaga", "r-1").await);
        let attempts = log
            .iter()
            .filter(|l| l.starts_with("STEP_STARTED Notify"))
            .count();
        let j = journal(&js, "RetriableSaga", "r-1").await;
        let deadline_ignored = j.iter().flat_map(|e| &e.events).any(|t| {
            t.kind() == pb::TransitionEventKind::InputIgnored
                && t.reason.contains("deadline")
                && t.reason.contains("`Notify` (retriable)")
        });
        if deadline_ignored && attempts >= 8 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deadline was not passed with Notify retried: {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    let states = wait_terminal(
        &js,
        "RetriableSaga",
        &["r-1".into()],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(states, [pb::SagaState::Completed]);
    let j = journal(&js, "RetriableSaga", "r-1").await;
    let log = event_log(&j);
    assert!(!log.iter().any(|l| l.contains("COMPENSATION")), "{log:?}");
    // The backoff is capped at the policy's max (400ms), past any attempt count.
    let delays: Vec<u64> = j
        .iter()
        .flat_map(|e| &e.events)
        .filter(|t| t.kind() == pb::TransitionEventKind::RetryScheduled)
        .filter_map(|t| t.delay)
        .map(|d| d.seconds as u64 * 1000 + d.nanos as u64 / 1_000_000)
        .collect();
    assert!(delays.iter().all(|d| *d <= 400), "{delays:?}");
    assert_eq!(
        delays.iter().filter(|d| **d == 400).count(),
        delays.len() - 2
    );
    // Every command is named by its action in the history.
    let sent: Vec<(String, String)> = j
        .iter()
        .flat_map(|e| &e.events)
        .filter(|t| t.kind() == pb::TransitionEventKind::StepStarted)
        .map(|t| (t.step.clone(), t.action.clone()))
        .collect();
    assert_eq!(sent[0], ("Slow".to_string(), "doSlow".to_string()));
    assert_eq!(sent[1], ("Charge".to_string(), "doCharge".to_string()));
    assert!(sent[2..]
        .iter()
        .all(|(s, a)| s == "Notify" && a == "doNotify"));
    participant.abort();
}

/// A worker that parks idle sagas at once (`PARK_AFTER_MS=50`): the saga waiting on its
/// step timeout is parked, woken at the deadline by the worker's timer wheel and retried;
/// parked again while waiting on the late reply, that reply wakes it. Same journal as a
/// saga whose actor stayed alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_saga_wakes_for_its_timeout_and_for_a_late_reply() {
    let stack = Stack::new();
    let sagas = sagas_dir_with(&stack, &[("timeout.yaml", SAGA)]);
    let (_worker, log) = worker_logged(
        &stack,
        "w",
        &[
            ("SAGAS_DIR", sagas.to_str().unwrap()),
            ("PARK_AFTER_MS", "50"),
            ("RUST_LOG", "info,saga_runtime::supervisor=debug"),
        ],
    );
    let js = stack.js().await;
    wait_provisioned(&js).await;
    let late = js.clone();
    let participant = tokio::spawn(play_participant(
        js.clone(),
        Arc::new(
            move |c: &pb::StepCommand| match (c.action.as_str(), c.attempt) {
                ("doSlow", 1) => None, // silent: the 500ms timeout fires on a parked saga
                ("doSlow", 2) => {
                    // Answered 400 ms later, while the saga is parked again.
                    let (js, c) = (late.clone(), c.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(400)).await;
                        let reply = pb::StepReply {
                            saga_id: c.saga_id.clone(),
                            step: c.step.clone(),
                            idempotency_key: c.idempotency_key.clone(),
                            outcome: ok(),
                            service: "slowsvc".into(),
                            ..Default::default()
                        };
                        let msg = saga_participant::reply_message(&c, reply, &Default::default());
                        NatsPublisher::new(js).publish(&msg).await.unwrap();
                    });
                    None
                }
                _ => ok(),
            },
        ),
    ));
    start_saga(&js, "TimeoutSaga", "pk-1", pb::Payload::default()).await;
    let states = wait_terminal(
        &js,
        "TimeoutSaga",
        &["pk-1".into()],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(states, [pb::SagaState::Completed]);
    let log_of_saga = event_log(&journal(&js, "TimeoutSaga", "pk-1").await);
    assert_eq!(log_of_saga, RETRIED_ONCE_THEN_COMPLETED);
    // It was parked, and its timeout came from the wheel, not from a live actor.
    let parked = log_lines(&log, "saga parked");
    assert!(parked.len() >= 2, "parked {} times", parked.len());
    assert!(!log_lines(&log, "deadline of a parked saga: resuming it").is_empty());
    participant.abort();
}
