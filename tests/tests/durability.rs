//! Regression tests of the durability redesign (issue 8, item 10), against a real
//! nats-server and real processes: one scenario per hole the review found (F1..F5, F7,
//! F16), each asserting what a user observes (journals, domain events, leases).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use saga_core::ids::partition_of;
use saga_core::machine::{Input, TimerKey, TimerKind};
use saga_core::SagaId;
use saga_e2e::*;
use saga_nats::leases::{cluster_owners, WorkerInfo};
use saga_nats::{NatsJournal, NatsPublisher};
use saga_ports::{header, Headers, Journal, OutgoingMessage, Publisher};
use saga_proto::{self as pb, Message};
use saga_runtime::envelope::{cancel_message, decode_record, inbox_subject, journal_append};
use saga_testkit::ProcessGuard;

const SAGA: &str = "OrderCheckout";
/// Unacked inputs come back quickly after a crash.
const FAST_REDELIVERY: (&str, &str) = ("INPUT_ACK_WAIT_SECS", "2");
const TTL_MS: &str = "3000";

async fn start_orders(js: &async_nats::jetstream::Context, prefix: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    for id in &ids {
        start_saga(js, SAGA, id, order(id, "dave", &[("sku-1", 1, 250)])).await;
    }
    ids
}

/// A worker of a cluster: its id, a short lease, fast redelivery, a JSON log.
fn cluster_worker(stack: &Stack, id: &str, extra: &[(&str, &str)]) -> (ProcessGuard, PathBuf) {
    let mut env = vec![("WORKER_ID", id), ("LEASE_TTL_MS", TTL_MS), FAST_REDELIVERY];
    env.extend_from_slice(extra);
    worker_logged(stack, id, &env)
}

/// Partitions held per worker, as `saga_owners` says.
async fn shares(js: &async_nats::jetstream::Context) -> BTreeMap<String, BTreeSet<u32>> {
    let mut out: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    if let Ok(kv) = js.get_key_value("saga_owners").await {
        for (p, lease) in cluster_owners(&kv, PARTITIONS).await {
            out.entry(lease.worker).or_default().insert(p);
        }
    }
    out
}

/// `shares` as counts, e.g. `{"w1": 2, "w2": 2}`.
async fn counts(js: &async_nats::jetstream::Context) -> BTreeMap<String, usize> {
    shares(js)
        .await
        .into_iter()
        .map(|(w, ps)| (w, ps.len()))
        .collect()
}

fn split(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(w, n)| (w.to_string(), *n)).collect()
}

/// The definition the worker runs, as a test client decodes it.
fn checkout_definition() -> saga_core::SagaDefinition {
    saga_core::definition::load_file(&repo().join("sagas/order-checkout.yaml"))
        .expect("order-checkout.yaml")
        .definition
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Every journal record as (stream sequence, saga id, writer's worker id from its
/// `Nats-Msg-Id`).
async fn journal_writers(js: &async_nats::jetstream::Context) -> Vec<(u64, String, String)> {
    messages(js, "SAGA_JOURNAL", "saga.journal.>")
        .await
        .into_iter()
        .map(|m| {
            let id = m.subject.rsplit('.').next().unwrap_or_default().to_string();
            // `journal:<saga_id>:<version>:<worker_id>:<input hash>`: the writer.
            let writer = m
                .headers
                .get("Nats-Msg-Id")
                .and_then(|v| v.as_str().split(':').nth(3).map(str::to_string))
                .unwrap_or_default();
            (m.sequence, id, writer)
        })
        .collect()
}

/// F1: a transition fenced by a foreign journal record leaves no "already processed"
/// mark; the redelivered Cancel is applied, and the saga is compensated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_transition_leaves_no_mark_and_the_redelivered_cancel_is_honoured() {
    let _turn = one_at_a_time().await;
    let stack = Stack::new();
    let mut ps = vec![
        stack.participant("inventory", "inventory", &[]),
        stack.participant("payment", "payment", &["--latency-ms", "20000"]),
        stack.participant("orders", "orders", &[]),
    ];
    let mut worker = stack.worker("worker", &[FAST_REDELIVERY]);
    let js = stack.js().await;
    wait_provisioned(&js).await;
    let id = "fenced-1";
    start_saga(&js, SAGA, id, order(id, "fay", &[("sku-1", 1, 300)])).await;
    eventually(
        Duration::from_secs(30),
        "the saga waits in ChargePayment",
        || {
            let js = js.clone();
            async move {
                journal(&js, SAGA, id)
                    .await
                    .last()
                    .is_some_and(|e| e.current_step == "ChargePayment")
            }
        },
    )
    .await;

    // Another writer appends a valid record (a stale timer, ignored) behind the worker's
    // back, exactly as a second owner would.
    let store = NatsJournal::new(js.clone());
    let last = store.last(SAGA, id).await.unwrap().expect("a record");
    let snapshot = decode_record(last.sequence, &last.payload)
        .unwrap()
        .snapshot
        .expect("records carry snapshots");
    let stale = Input::TimerFired(TimerKey {
        kind: TimerKind::StepTimeout,
        step: "ReserveStock".into(),
        attempt: 1,
    });
    let t = saga_core::apply(&checkout_definition(), &snapshot.state, &stale, now_ms());
    assert!(t.is_ignored(), "{:?}", t.events);
    let foreign = saga_ports::Snapshot {
        state: t.state.clone(),
        timers: snapshot.timers.clone(),
        effects: Vec::new(),
    };
    let append = journal_append(&t.state, &stale, &t.events, &foreign, "intruder", now_ms());
    store
        .append(&append, last.sequence)
        .await
        .expect("foreign append");

    // The Cancel's first transition is fenced; its redelivery must still be applied.
    let sid = SagaId::parse(id).unwrap();
    NatsPublisher::new(js.clone())
        .publish(&cancel_message(SAGA, &sid, "changed my mind", PARTITIONS))
        .await
        .unwrap();
    let states = wait_terminal(&js, SAGA, &[id.to_string()], Duration::from_secs(120)).await;
    let records = journal(&js, SAGA, id).await;
    assert_eq!(
        states,
        [pb::SagaState::Compensated],
        "{:#?}",
        event_log(&records)
    );
    assert!(
        records.iter().any(|e| e.input_id == "cancel"),
        "the journal has no cancel input: {:#?}",
        event_log(&records)
    );
    assert_gapless(&records, id);
    assert_eq!(
        event_counts(&js, "events.orders.OrderConfirmed")
            .await
            .get(id),
        None
    );
    assert_eq!(
        event_counts(&js, "events.orders.OrderCancelled")
            .await
            .get(id),
        Some(&1)
    );
    stop_all(&mut worker, &mut ps);
}

/// F7: inputs are recognised by what they are, not by their place in SAGA_INBOX: after
/// the stream is deleted and re-provisioned (sequences start at 1 again), new sagas run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_are_applied_after_saga_inbox_is_recreated() {
    let _turn = one_at_a_time().await;
    let stack = Stack::new();
    let mut ps = checkout_participants(&stack, &[]);
    let mut worker = stack.worker("worker", &[FAST_REDELIVERY]);
    let js = stack.js().await;
    wait_provisioned(&js).await;
    let before = start_orders(&js, "before", 10).await;
    assert_checkouts_completed_once(&js, &before).await;

    stop(&mut worker);
    js.delete_stream("SAGA_INBOX").await.unwrap();
    let mut worker = stack.worker("worker", &[FAST_REDELIVERY]);
    wait_provisioned(&js).await;
    let after = start_orders(&js, "after", 10).await;
    let all = [before.clone(), after].concat();
    assert_checkouts_completed_once(&js, &all).await;
    stop_all(&mut worker, &mut ps);
    assert_checkout_ledgers(&stack, 20);
}

/// F2: a worker whose takeover fails (the open-saga index is gone) gives the partitions
/// back and runs nothing of them: no journal record of theirs is written by it until a
/// takeover succeeds; once the index is back, every saga finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_takeover_leaves_nothing_running() {
    let _turn = one_at_a_time().await;
    let stack = Stack::new();
    let mut ps = vec![
        stack.participant("inventory", "inventory", &[]),
        stack.participant("payment", "payment", &["--latency-ms", "4000"]),
        stack.participant("orders", "orders", &[]),
    ];
    let (mut w1, _) = cluster_worker(&stack, "w1", &[]);
    let (mut w2, w2_log) = cluster_worker(&stack, "w2", &[]);
    let js = stack.js().await;
    eventually(
        Duration::from_secs(30),
        "w1 and w2 split the partitions",
        || {
            let js = js.clone();
            async move { counts(&js).await == split(&[("w1", 2), ("w2", 2)]) }
        },
    )
    .await;
    let w2_own = shares(&js).await["w2"].clone();
    let ids = start_orders(&js, "takeover", 12).await;
    eventually(
        Duration::from_secs(30),
        "every saga waits in ChargePayment",
        || {
            let (js, ids) = (js.clone(), ids.clone());
            async move {
                for id in &ids {
                    let j = journal(&js, SAGA, id).await;
                    if j.last().is_none_or(|e| e.current_step != "ChargePayment") {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;

    // Takeovers of w1's partitions by w2 now fail: listing their open sagas is refused.
    js.delete_stream("SAGA_OPEN").await.unwrap();
    w1.sigkill().unwrap();
    eventually(
        Duration::from_secs(30),
        "w2 tries to take w1's partitions over, and fails, three times",
        || {
            let log = w2_log.clone();
            async move {
                log_lines(&log, "taking over the partition failed; giving it back").len() >= 3
            }
        },
    )
    .await;
    // Meanwhile the payment replies of w1's sagas are in; nothing of w1's partitions is
    // written by w2.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let foreign = |p: u32| !w2_own.contains(&p);
    let partition = |id: &str| partition_of(&SagaId::parse(id).unwrap(), PARTITIONS);
    let written: Vec<(u64, String, String)> = journal_writers(&js).await;
    let zombie: Vec<&(u64, String, String)> = written
        .iter()
        .filter(|(_, id, writer)| writer == "w2" && foreign(partition(id)))
        .collect();
    assert!(
        zombie.is_empty(),
        "w2 wrote journals of partitions it gave back: {zombie:?}"
    );
    assert!(
        ids.iter().any(|id| foreign(partition(id))),
        "no saga on w1's partitions: {ids:?}"
    );
    let fence = written.iter().map(|(s, _, _)| *s).max().unwrap_or(0);

    // The index is back: w2 takes over, and every saga finishes once.
    saga_nats::provision_streams(
        &js,
        &saga_nats::ProvisionConfig {
            partitions: PARTITIONS,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_checkouts_completed_once(&js, &ids).await;
    assert_eq!(counts(&js).await, split(&[("w2", 4)]));
    let written = journal_writers(&js).await;
    let early: Vec<&(u64, String, String)> = written
        .iter()
        .filter(|(s, id, writer)| writer == "w2" && foreign(partition(id)) && *s <= fence)
        .collect();
    assert!(early.is_empty(), "{early:?}");
    // The writer is read right: after the takeover, w2 does write those journals.
    assert!(
        written
            .iter()
            .any(|(s, id, writer)| writer == "w2" && foreign(partition(id)) && *s > fence),
        "no record of w1's partitions by w2 after the takeover"
    );
    stop(&mut w2);
    for p in &mut ps {
        stop(p);
    }
    assert_checkout_ledgers(&stack, 12);
}

/// F16: a worker whose wall clock runs 20 s ahead joins a cluster: it takes its fair
/// share, no more, and the split holds for several lease TTLs while sagas run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_clock_runs_20_s_ahead_takes_no_more_than_its_share() {
    let _turn = one_at_a_time().await;
    let skewed = skewed_clock();
    let stack = Stack::new();
    let mut ps = checkout_participants(&stack, &["--latency-ms", "5"]);
    let (mut a, _) = cluster_worker(&stack, "a", &[]);
    let js = stack.js().await;
    eventually(Duration::from_secs(30), "a holds every partition", || {
        let js = js.clone();
        async move { counts(&js).await == split(&[("a", 4)]) }
    })
    .await;
    let (mut b, _) = cluster_worker(&stack, "b", &skewed);
    eventually(
        Duration::from_secs(30),
        "a and b split the partitions",
        || {
            let js = js.clone();
            async move { counts(&js).await == split(&[("a", 2), ("b", 2)]) }
        },
    )
    .await;
    // b really runs ahead: its heartbeats are stamped ~20 s in the future.
    let workers = js.get_key_value("saga_workers").await.unwrap();
    let info: WorkerInfo =
        serde_json::from_slice(&workers.get("b").await.unwrap().expect("b's heartbeat")).unwrap();
    let ahead = info.heartbeat_ms as i64 - now_ms() as i64;
    assert!(ahead > 15_000, "b's clock is only {ahead} ms ahead");

    let ids = start_orders(&js, "skew", 20).await;
    let watch = Instant::now();
    let ttl = Duration::from_millis(TTL_MS.parse().unwrap());
    while watch.elapsed() < 4 * ttl {
        assert_eq!(counts(&js).await, split(&[("a", 2), ("b", 2)]));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_checkouts_completed_once(&js, &ids).await;
    stop(&mut a);
    stop(&mut b);
    for p in &mut ps {
        stop(p);
    }
    assert_checkout_ledgers(&stack, 20);
}

/// The environment that runs a process with its wall clock 20 s ahead. The `faketime`
/// wrapper forks, and neither forwards SIGTERM nor takes its child down on SIGKILL, so
/// the worker is run with the wrapper's library preloaded instead (what the wrapper
/// does; the dynamic linker expands `$LIB`).
fn skewed_clock() -> [(&'static str, &'static str); 2] {
    assert!(
        on_path("faketime").is_some(),
        "faketime is not on PATH: run `make setup` (scripts/install-faketime.sh)"
    );
    [
        ("LD_PRELOAD", "/usr/$LIB/faketime/libfaketimeMT.so.1"),
        ("FAKETIME", "+20s"),
    ]
}

/// F16, in the timers: a saga taken over by a worker whose clock runs 20 s ahead keeps
/// its step timeout (its persisted deadline is not read against another machine's wall
/// clock): a payment answered in 6 s of a 10 s timeout does not time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_taken_over_by_a_worker_whose_clock_runs_ahead_keeps_its_timeouts() {
    let _turn = one_at_a_time().await;
    let skewed = skewed_clock();
    let stack = Stack::new();
    let mut ps = vec![
        stack.participant("inventory", "inventory", &[]),
        stack.participant("payment", "payment", &["--latency-ms", "6000"]),
        stack.participant("orders", "orders", &[]),
    ];
    let (mut a, _) = cluster_worker(&stack, "a", &[]);
    let js = stack.js().await;
    eventually(Duration::from_secs(30), "a holds every partition", || {
        let js = js.clone();
        async move { counts(&js).await == split(&[("a", 4)]) }
    })
    .await;
    let (mut b, _) = cluster_worker(&stack, "b", &skewed);
    eventually(
        Duration::from_secs(30),
        "a and b split the partitions",
        || {
            let js = js.clone();
            async move { counts(&js).await == split(&[("a", 2), ("b", 2)]) }
        },
    )
    .await;
    let on_a = shares(&js).await["a"].clone();
    let id = (0..)
        .map(|i| format!("handed-{i}"))
        .find(|id| on_a.contains(&partition_of(&SagaId::parse(id).unwrap(), PARTITIONS)))
        .unwrap();
    start_saga(&js, SAGA, &id, order(&id, "ida", &[("sku-1", 1, 300)])).await;
    eventually(
        Duration::from_secs(30),
        "the saga waits in ChargePayment",
        || {
            let (js, id) = (js.clone(), id.clone());
            async move {
                journal(&js, SAGA, &id)
                    .await
                    .last()
                    .is_some_and(|e| e.current_step == "ChargePayment")
            }
        },
    )
    .await;
    // a hands its partitions over to b while the payment is under way.
    stop(&mut a);
    let states = wait_terminal(
        &js,
        SAGA,
        std::slice::from_ref(&id),
        Duration::from_secs(60),
    )
    .await;
    let log = event_log(&journal(&js, SAGA, &id).await);
    assert_eq!(states, [pb::SagaState::Completed], "{log:#?}");
    assert!(
        !log.iter().any(|e| e.starts_with("STEP_TIMED_OUT")),
        "a step answered within its timeout timed out after the takeover: {log:#?}"
    );
    stop(&mut b);
    for p in &mut ps {
        stop(p);
    }
}

/// A program on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// `order-checkout.yaml` with each `(old, new)` text replaced (every occurrence).
fn checkout_yaml_with(edits: &[(&str, &str)]) -> String {
    let mut yaml = std::fs::read_to_string(repo().join("sagas/order-checkout.yaml")).unwrap();
    for (old, new) in edits {
        assert!(yaml.contains(old), "order-checkout.yaml has no `{old}`");
        yaml = yaml.replace(old, new);
    }
    yaml
}

/// ChargePayment's retry policy as shipped.
const CHARGE_RETRY: &str = "      timeout: 10s
      retryPolicy:
        max_attempts: 3
        initial: 1s
        multiplier: 2
        max: 10s
        jitter: 0.2
";

async fn last_sequence(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    let mut s = js.get_stream(stream).await.unwrap();
    s.info().await.unwrap().state.last_sequence
}

async fn stored(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    let mut s = js.get_stream(stream).await.unwrap();
    s.info().await.unwrap().state.messages
}

/// F3: sagas whose only wait is a retry timer (the actor's relay and restarts fail
/// while the broker is away) are never given up: after 90 s without NATS every one
/// finishes, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_waiting_in_retry_backoff_finish_after_nats_is_down_for_90_s() {
    let _turn = one_at_a_time().await;
    let mut stack = Stack::new();
    // The retry fires 8 s after the first attempt failed: while the server is down.
    let yaml = checkout_yaml_with(&[
        (
            CHARGE_RETRY,
            "      timeout: 10s
      retryPolicy:
        max_attempts: 3
        initial: 8s
        multiplier: 1
        max: 8s
        jitter: 0
",
        ),
        ("  steps:\n", "  timeout: 30m\n  steps:\n"),
    ]);
    let sagas = sagas_dir_with(&stack, &[("order-checkout.yaml", &yaml)]);
    let mut inventory = stack.participant("inventory", "inventory", &[]);
    let mut payment = stack.participant("payment", "payment", &["--technical-failure-rate", "1"]);
    let mut orders = stack.participant("orders", "orders", &[]);
    // A lease outliving the outage: the worker keeps its sagas' actors throughout.
    let mut worker = stack.worker(
        "worker",
        &[
            FAST_REDELIVERY,
            ("SAGAS_DIR", sagas.to_str().unwrap()),
            ("LEASE_TTL_MS", "600000"),
        ],
    );
    let js = stack.js().await;
    wait_provisioned(&js).await;
    let ids = start_orders(&js, "outage", 10).await;
    eventually(
        Duration::from_secs(60),
        "every saga waits in ChargePayment's retry backoff",
        || {
            let (js, ids) = (js.clone(), ids.clone());
            async move {
                let store = NatsJournal::new(js);
                for id in &ids {
                    let Ok(Some(last)) = store.last(SAGA, id).await else {
                        return false;
                    };
                    let snapshot = decode_record(last.sequence, &last.payload)
                        .unwrap()
                        .snapshot
                        .unwrap();
                    if !snapshot
                        .timers
                        .iter()
                        .any(|(k, _)| k.kind == TimerKind::RetryBackoff)
                    {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    // Payment recovers while the server is away; the retries have to reach it.
    stop(&mut payment);
    stack.nats.stop().unwrap();
    tokio::time::sleep(Duration::from_secs(90)).await; // the outage itself
    stack.nats.start_again().unwrap();
    let mut payment = stack.participant("payment", "payment", &[]);
    let js = stack.js().await;
    assert_checkouts_completed_once(&js, &ids).await;
    assert!(worker.is_running(), "the worker survives the outage");
    stop(&mut worker);
    for p in [&mut inventory, &mut payment, &mut orders] {
        stop(p);
    }
    assert_checkout_ledgers(&stack, 10);
}

/// What a late input for a terminal saga must leave as it was.
struct Unchanged<'a> {
    id: &'a str,
    records: usize,
    commands: u64,
    events: u64,
}

impl Unchanged<'_> {
    /// Waits until the worker settled every input, then checks the input was absorbed:
    /// not dead-lettered, nothing journalled, published or re-opened.
    async fn check(&self, js: &async_nats::jetstream::Context, what: &str) {
        eventually(
            Duration::from_secs(60),
            "the worker settles the input",
            || {
                let js = js.clone();
                async move { stored(&js, "SAGA_INBOX").await == 0 }
            },
        )
        .await;
        let dlq = messages(js, "SAGA_DLQ", "dlq.>").await;
        let reasons: Vec<String> = dlq
            .iter()
            .filter_map(|m| m.headers.get(header::DLQ_REASON))
            .map(|v| v.as_str().to_string())
            .collect();
        assert!(dlq.is_empty(), "{what} was dead-lettered: {reasons:?}");
        assert_eq!(
            journal(js, SAGA, self.id).await.len(),
            self.records,
            "{what} was journalled"
        );
        let confirmed = event_counts(js, "events.orders.OrderConfirmed").await;
        assert_eq!(confirmed.get(self.id), Some(&1), "after {what}");
        assert_eq!(
            last_sequence(js, "SAGA_EVENTS").await,
            self.events,
            "after {what}"
        );
        assert_eq!(
            last_sequence(js, "SAGA_COMMANDS").await,
            self.commands,
            "{what}: a command was published again"
        );
        let open = subject_counts(js, "SAGA_OPEN", "saga.open.>").await;
        assert!(open.is_empty(), "{what} re-opened the saga: {open:?}");
    }
}

/// F4: a terminal saga met again by workers that never ran it, more than the duplicate
/// window after it ended, through late inputs (a repeated start, a duplicate reply):
/// nothing is journalled, published or dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_saga_rebuilt_after_the_duplicate_window_republishes_nothing() {
    let _turn = one_at_a_time().await;
    let stack = Stack::new();
    let mut ps = checkout_participants(&stack, &[]);
    let mut w1 = stack.worker("w1", &[("WORKER_ID", "w1"), FAST_REDELIVERY]);
    let js = stack.js().await;
    wait_provisioned(&js).await;
    let id = "late-1";
    start_saga(&js, SAGA, id, order(id, "gus", &[("sku-1", 1, 400)])).await;
    assert_checkouts_completed_once(&js, &[id.to_string()]).await;
    stop(&mut w1);
    // Past the streams' duplicate window (120 s): no message id protects anything now.
    tokio::time::sleep(Duration::from_secs(125)).await;
    let mut w2 = stack.worker("w2", &[("WORKER_ID", "w2"), FAST_REDELIVERY]);
    let commands = last_sequence(&js, "SAGA_COMMANDS").await;
    let events = last_sequence(&js, "SAGA_EVENTS").await;
    let records = journal(&js, SAGA, id).await;
    let sid = SagaId::parse(id).unwrap();
    let unchanged = Unchanged {
        id,
        records: records.len(),
        commands,
        events,
    };
    // The start once more, as the gateway sends it again for a client retrying the
    // order once the server forgot its message id (or SAGA_INBOX was re-created).
    let mut start = saga_runtime::envelope::start_message(
        SAGA,
        &sid,
        Some(order(id, "gus", &[("sku-1", 1, 400)])),
        id,
        PARTITIONS,
        now_ms(),
    );
    start.msg_id = format!("start-again:{id}");
    let ack = NatsPublisher::new(js.clone())
        .publish(&start)
        .await
        .unwrap();
    assert!(!ack.duplicate);
    unchanged.check(&js, "a repeated start").await;
    stop(&mut w2);

    // Another worker that never ran it meets the reply to the last step once more, as a
    // participant redelivering it would send it.
    let mut w3 = stack.worker("w3", &[("WORKER_ID", "w3"), FAST_REDELIVERY]);
    let last = records.last().unwrap();
    let Ok(Input::StepReply { step, attempt, .. }) =
        pb::input_from_journal(last.input.as_ref().unwrap())
    else {
        panic!("the last record is not a step reply: {last:?}");
    };
    assert_eq!(step, "ConfirmOrder");
    let reply = pb::SagaInput {
        saga_id: id.into(),
        saga_type: SAGA.into(),
        kind: Some(pb::saga_input::Kind::Reply(pb::StepReply {
            saga_id: id.into(),
            step,
            attempt,
            service: "orders".into(),
            outcome: Some(pb::step_reply::Outcome::Ok(pb::StepOk { result: None })),
            ..Default::default()
        })),
    };
    NatsPublisher::new(js.clone())
        .publish(&OutgoingMessage {
            subject: inbox_subject(&sid, PARTITIONS),
            msg_id: format!("late-reply:{id}"),
            headers: Headers::from([(header::SAGA_ID.to_string(), id.to_string())]),
            payload: reply.encode_to_vec(),
        })
        .await
        .unwrap();
    unchanged.check(&js, "a late duplicate reply").await;
    stop(&mut w3);
    for p in &mut ps {
        stop(p);
    }
    assert_checkout_ledgers(&stack, 1);
}

/// F5: a worker takes over 5,000 open sagas from one that was SIGKILLed. Prints how
/// long the takeover took (to every partition acquired, and to every saga restored);
/// asserts that all of them then complete, once. `DURABILITY_TAKEOVER_SAGAS` sets the
/// count (default 5000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_of_a_partition_with_5000_open_sagas() {
    use futures::StreamExt;
    let _turn = one_at_a_time().await;
    let n: usize = std::env::var("DURABILITY_TAKEOVER_SAGAS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let stack = Stack::new();
    // Sagas wait in ChargePayment (payment is not running yet), and no step times out
    // while thousands of inputs queue up.
    let yaml = checkout_yaml_with(&[
        ("timeout: 5s", "timeout: 10m"),
        ("timeout: 10s", "timeout: 10m"),
    ]);
    let sagas = sagas_dir_with(&stack, &[("order-checkout.yaml", &yaml)]);
    let sagas = sagas.to_str().unwrap();
    let mut inventory =
        stack.participant("inventory", "inventory", &["--initial-stock", "1000000"]);
    let mut orders = stack.participant("orders", "orders", &[]);
    // Inputs wait in the worker longer than the tests' usual 2 s ack wait: keep the
    // default, or every queued input is delivered again.
    let ack_wait = ("INPUT_ACK_WAIT_SECS", "30");
    let quiet = ("RUST_LOG", "warn");
    let (mut w1, _) = cluster_worker(&stack, "w1", &[("SAGAS_DIR", sagas), ack_wait, quiet]);
    let js = stack.js().await;
    eventually(Duration::from_secs(30), "w1 holds every partition", || {
        let js = js.clone();
        async move { counts(&js).await == split(&[("w1", 4)]) }
    })
    .await;
    let ids: Vec<String> = (0..n).map(|i| format!("bulk-{i}")).collect();
    let publisher = NatsPublisher::new(js.clone());
    let placed = Instant::now();
    futures::stream::iter(&ids)
        .map(|id| {
            let publisher = publisher.clone();
            async move {
                let sid = SagaId::parse(id).unwrap();
                let payload = order(id, "hal", &[("sku-1", 1, 100)]);
                let msg = saga_runtime::envelope::start_message(
                    SAGA,
                    &sid,
                    Some(payload),
                    id,
                    PARTITIONS,
                    0,
                );
                publisher.publish(&msg).await.unwrap();
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    eventually(
        Duration::from_secs(120),
        "every saga waits in ChargePayment",
        || {
            let js = js.clone();
            async move {
                let charges =
                    subject_counts(&js, "SAGA_COMMANDS", "saga.cmd.payment.ChargePayment");
                charges.await.values().sum::<usize>() >= n
            }
        },
    )
    .await;
    eprintln!("{n} sagas in flight after {:?}", placed.elapsed());

    w1.sigkill().unwrap();
    let killed = Instant::now();
    let (mut w2, log) = cluster_worker(
        &stack,
        "w2",
        &[
            ("SAGAS_DIR", sagas),
            ack_wait,
            ("RUST_LOG", "info,saga_runtime::saga_actor=debug"),
        ],
    );
    let mut acquired = None;
    let mut restored = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while restored.is_none() {
        if acquired.is_none() {
            let listed: BTreeMap<u64, u64> = log_lines(&log, "partition acquired")
                .iter()
                .map(|f| {
                    (
                        f["partition"].as_u64().unwrap(),
                        f["sagas"].as_u64().unwrap(),
                    )
                })
                .collect();
            if listed.len() == PARTITIONS as usize && listed.values().sum::<u64>() == n as u64 {
                acquired = Some(killed.elapsed());
            }
        }
        // (`rebuilt from the journal`: the message of releases before snapshots, for
        // a before/after comparison with SAGA_BIN_DIR.)
        let mut lines = log_lines(&log, "restored from the journal");
        lines.extend(log_lines(&log, "rebuilt from the journal"));
        let done: BTreeSet<String> = lines
            .iter()
            .map(|f| f["saga_id"].as_str().unwrap().to_string())
            .collect();
        if done.len() >= n {
            restored = Some(killed.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "takeover of {n} sagas not done in 120 s: acquired {acquired:?}, {} restored",
            done.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "takeover of {n} open sagas after SIGKILL (lease TTL {TTL_MS} ms): every partition \
         acquired after {acquired:?}, every saga restored after {restored:?}"
    );

    let resumed = Instant::now();
    let mut payment = stack.participant("payment", "payment", &[]);
    let last = wait_terminal_many(&js, SAGA, &ids, Duration::from_secs(300)).await;
    eprintln!(
        "{n} sagas completed {:?} after payment started",
        resumed.elapsed()
    );
    let records = subject_counts(&js, "SAGA_JOURNAL", "saga.journal.OrderCheckout.>").await;
    let confirmed = subject_counts(&js, "SAGA_EVENTS", "events.orders.OrderConfirmed.>").await;
    for (id, (version, state)) in ids.iter().zip(&last) {
        assert_eq!(*state, pb::SagaState::Completed, "{id}");
        let count = records[&format!("saga.journal.{SAGA}.{id}")] as u64;
        assert_eq!(count, *version, "journal of {id} has a gap or a repeat");
        assert_eq!(
            confirmed.get(&format!("events.orders.OrderConfirmed.{id}")),
            Some(&1),
            "OrderConfirmed of {id}"
        );
    }
    stop(&mut w2);
    for p in [&mut inventory, &mut payment, &mut orders] {
        stop(p);
    }
    assert_checkout_ledgers(&stack, n as u64);
}
