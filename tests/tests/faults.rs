//! Crashes: the worker SIGKILLed at the commit protocol's fault points, the NATS
//! server restarted mid-run, a participant killed between its effect and its reply.
//! Every saga still finishes, no effect happens twice, journals have no gap.

use std::time::Duration;

use saga_e2e::*;
use saga_proto as pb;
use saga_testkit::wait_until;

const SAGA: &str = "OrderCheckout";
/// Unacked inputs come back quickly after a crash.
const FAST_REDELIVERY: (&str, &str) = ("INPUT_ACK_WAIT_SECS", "2");

async fn start_orders(js: &async_nats::jetstream::Context, prefix: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    for id in &ids {
        start_saga(js, SAGA, id, order(id, "dave", &[("sku-1", 1, 250)])).await;
    }
    ids
}

async fn worker_crash_at(point: &str) {
    let stack = Stack::new();
    let mut ps = checkout_participants(&stack, &[]);
    let crash = format!("{point}:7");
    let mut worker = stack.worker("worker", &[FAST_REDELIVERY, ("SAGA_CRASH_AT", &crash)]);
    let js = stack.js().await;
    wait_provisioned(&js).await;
    let ids = start_orders(&js, point, 10).await;
    // The 7th input reaching the fault point kills the worker with SIGKILL.
    wait_until(Duration::from_secs(60), "the worker kills itself", || {
        !worker.is_running()
    })
    .unwrap();
    let status = worker.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "worker should die by SIGKILL, got {status:?}"
    );
    // A restarted worker (same data dir) finishes every saga.
    let mut worker = stack.worker("worker", &[FAST_REDELIVERY]);
    assert_checkouts_completed_once(&js, &ids).await;
    stop_all(&mut worker, &mut ps);
    assert_checkout_ledgers(&stack, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_after_commit_before_publish_loses_nothing() {
    let _turn = one_at_a_time().await;
    worker_crash_at("after-commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_after_publish_before_ack_duplicates_nothing() {
    let _turn = one_at_a_time().await;
    worker_crash_at("after-publish").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_saga_finishes_when_nats_restarts_mid_run() {
    let _turn = one_at_a_time().await;
    let mut stack = Stack::new();
    let mut worker = stack.worker("worker", &[FAST_REDELIVERY]);
    let mut ps = checkout_participants(&stack, &["--latency-ms", "20"]);
    let js = stack.js().await;
    wait_provisioned(&js).await;
    let ids = start_orders(&js, "restart", 20).await;
    // Let some finish, then restart the server while the others are in flight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while event_counts(&js, "events.orders.OrderConfirmed")
        .await
        .len()
        < 3
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no progress before the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.nats.restart().unwrap();
    let js = stack.js().await;
    assert_checkouts_completed_once(&js, &ids).await;
    assert!(worker.is_running(), "the worker survives a server restart");
    stop_all(&mut worker, &mut ps);
    assert_checkout_ledgers(&stack, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_killed_after_its_effect_before_its_reply_does_not_apply_it_twice() {
    let _turn = one_at_a_time().await;
    let stack = Stack::new();
    let mut worker = stack.worker("worker", &[FAST_REDELIVERY]);
    let mut inventory = stack.participant(
        "inventory",
        "inventory",
        &[
            "--crash-after-effect",
            "ReserveStock:1",
            "--ack-wait-ms",
            "2000",
        ],
    );
    let mut payment = stack.participant("payment", "payment", &[]);
    let mut orders = stack.participant("orders", "orders", &[]);
    let js = stack.js().await;
    wait_provisioned(&js).await;
    start_saga(
        &js,
        SAGA,
        "pc-1",
        order("pc-1", "erin", &[("sku-1", 1, 100)]),
    )
    .await;
    wait_until(
        Duration::from_secs(60),
        "inventory crashes after its effect",
        || !inventory.is_running(),
    )
    .unwrap();
    assert_eq!(inventory.wait().unwrap().code(), Some(137));
    // Restarted: the redelivered command is answered from the inbox.
    let mut inventory = stack.participant("inventory", "inventory", &["--ack-wait-ms", "2000"]);
    let states = wait_terminal(&js, SAGA, &["pc-1".into()], Duration::from_secs(60)).await;
    assert_eq!(states, [pb::SagaState::Completed]);
    stop(&mut worker);
    for p in [&mut inventory, &mut payment, &mut orders] {
        stop(p);
    }
    assert_checkout_ledgers(&stack, 1);
}

/// A worker that took a start and died before journalling it leaves the start unacked
/// for its ack wait (30 s here); the saga's cancel, published right after, reaches the
/// next worker first. The saga is cancelled all the same: the worker finds the start
/// still waiting in `SAGA_INBOX` and applies it before the cancel, instead of holding
/// the cancel back while the start's ack wait runs out and the saga completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_that_overtakes_its_start_still_cancels_the_saga() {
    use saga_ports::{Consumer as _, Publisher as _};
    let stack = Stack::new();
    let mut worker = stack.worker("worker", &[]);
    let js = stack.js().await;
    wait_provisioned(&js).await;
    stop(&mut worker);
    let id = "overtaken-1";
    start_saga(&js, SAGA, id, order(id, "erin", &[("sku-1", 1, 250)])).await;
    // The worker that dies holding the start: it takes the start and never acks it.
    let saga_id = saga_core::SagaId::parse(id).unwrap();
    let partition = saga_core::ids::partition_of(&saga_id, PARTITIONS);
    let mut dying = saga_nats::NatsConsumer::partition(&js, partition)
        .await
        .unwrap();
    let taken = dying.fetch(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(taken.len(), 1, "the start is delivered to the dying worker");
    drop(dying);
    let cancel =
        saga_runtime::envelope::cancel_message(SAGA, &saga_id, "changed my mind", PARTITIONS);
    saga_nats::NatsPublisher::new(js.clone())
        .publish(&cancel)
        .await
        .unwrap();

    let mut worker = stack.worker("worker", &[]);
    let mut ps = checkout_participants(&stack, &[]);
    let states = wait_terminal(&js, SAGA, &[id.to_string()], Duration::from_secs(120)).await;
    let j = journal(&js, SAGA, id).await;
    assert_eq!(
        states,
        [pb::SagaState::Compensated],
        "journal: {:?}",
        event_log(&j)
    );
    let log = event_log(&j);
    assert_eq!(
        log.first().map(String::as_str),
        Some("SAGA_STARTED"),
        "{log:?}"
    );
    let inputs: Vec<bool> = j
        .iter()
        .map(|e| {
            matches!(
                e.input.as_ref().and_then(|i| i.kind.as_ref()),
                Some(pb::journal_input::Kind::Cancel(_))
            )
        })
        .collect();
    assert_eq!(
        inputs.iter().position(|c| *c),
        Some(1),
        "the cancel is the input journalled right after the start: {log:?}"
    );
    assert!(log.contains(&"COMPENSATION_STARTED".to_string()), "{log:?}");
    assert_gapless(&j, id);
    stop_all(&mut worker, &mut ps);
}
