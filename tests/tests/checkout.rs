//! The order-checkout saga end to end: worker and participants as real processes.

use std::time::Duration;

use saga_e2e::*;
use saga_proto as pb;

const SAGA: &str = "OrderCheckout";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_completes_with_every_transition_journalled_and_one_event() {
    let stack = Stack::new();
    let mut worker = stack.worker("worker", &[]);
    let mut ps = checkout_participants(&stack, &[]);
    let js = stack.js().await;
    wait_provisioned(&js).await;
    let ids: Vec<String> = (0..3).map(|i| format!("ok-{i}")).collect();
    for id in &ids {
        start_saga(
            &js,
            SAGA,
            id,
            order(id, "alice", &[("sku-1", 2, 1_000), ("sku-2", 1, 500)]),
        )
        .await;
    }
    let states = wait_terminal(&js, SAGA, &ids, Duration::from_secs(60)).await;
    assert!(
        states.iter().all(|s| *s == pb::SagaState::Completed),
        "{states:?}"
    );
    for id in &ids {
        let j = journal(&js, SAGA, id).await;
        assert_gapless(&j, id);
        assert_eq!(
            event_log(&j),
            [
                "SAGA_STARTED",
                "STEP_STARTED ReserveStock 1",
                "STEP_SUCCEEDED ReserveStock 1",
                "STEP_STARTED ChargePayment 1",
                "STEP_SUCCEEDED ChargePayment 1",
                "STEP_STARTED ConfirmOrder 1",
                "STEP_SUCCEEDED ConfirmOrder 1",
                "SAGA_COMPLETED",
            ]
        );
    }
    let confirmed = event_counts(&js, "events.orders.OrderConfirmed").await;
    assert_eq!(confirmed.len(), 3);
    assert!(confirmed.values().all(|n| *n == 1));
    assert!(event_counts(&js, "events.orders.OrderCancelled")
        .await
        .is_empty());
    stop_all(&mut worker, &mut ps);
    assert_eq!(
        assert_no_double_effect(&stack, "inventory")["ReserveStock"],
        3
    );
    assert_eq!(
        assert_no_double_effect(&stack, "payment")["ChargePayment"],
        3
    );
    assert_eq!(assert_no_double_effect(&stack, "orders")["ConfirmOrder"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_stock_compensates_with_the_reason_and_no_undo_of_the_failed_step() {
    let stack = Stack::new();
    let mut worker = stack.worker("worker", &[]);
    let mut ps = checkout_participants(&stack, &[]);
    let js = stack.js().await;
    wait_provisioned(&js).await;
    start_saga(
        &js,
        SAGA,
        "big-1",
        order("big-1", "bob", &[("sku-1", 5_000, 100)]),
    )
    .await;
    let states = wait_terminal(&js, SAGA, &["big-1".into()], Duration::from_secs(60)).await;
    assert_eq!(states, [pb::SagaState::Compensated]);
    let j = journal(&js, SAGA, "big-1").await;
    let last = j.last().unwrap();
    assert!(
        last.compensation_reason.contains("Insufficient stock"),
        "{}",
        last.compensation_reason
    );
    let log = event_log(&j);
    assert!(
        log.contains(&"STEP_FAILED ReserveStock 1".to_string()),
        "{log:?}"
    );
    assert!(
        !log.iter()
            .any(|l| l.starts_with("COMPENSATION_STEP_STARTED")),
        "{log:?}"
    );
    let cancelled = messages(&js, "SAGA_EVENTS", "events.orders.OrderCancelled.*").await;
    assert_eq!(cancelled.len(), 1);
    let ev: pb::OrderCancelled =
        saga_proto::Message::decode(cancelled[0].payload.as_ref()).unwrap();
    assert_eq!(ev.order_id, "big-1");
    assert!(ev.reason.contains("Insufficient stock"), "{}", ev.reason);
    stop_all(&mut worker, &mut ps);
    assert!(effects(&stack, "inventory").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_releases_the_stock() {
    let stack = Stack::new();
    let mut worker = stack.worker("worker", &[]);
    let mut ps = checkout_participants(&stack, &[]);
    let js = stack.js().await;
    wait_provisioned(&js).await;
    start_saga(
        &js,
        SAGA,
        "dec-1",
        order("dec-1", "decline-carol", &[("sku-1", 3, 100)]),
    )
    .await;
    let states = wait_terminal(&js, SAGA, &["dec-1".into()], Duration::from_secs(60)).await;
    assert_eq!(states, [pb::SagaState::Compensated]);
    let log = event_log(&journal(&js, SAGA, "dec-1").await);
    let tail: Vec<&str> = log
        .iter()
        .skip_while(|l| !l.starts_with("STEP_FAILED"))
        .map(String::as_str)
        .collect();
    assert_eq!(
        tail,
        [
            "STEP_FAILED ChargePayment 1",
            "COMPENSATION_STARTED",
            "COMPENSATION_STEP_STARTED ReserveStock 1",
            "STEP_COMPENSATED ReserveStock",
            "SAGA_COMPENSATED",
        ]
    );
    assert_eq!(
        event_counts(&js, "events.orders.OrderCancelled").await["dec-1"],
        1
    );
    stop_all(&mut worker, &mut ps);
    let inventory = assert_no_double_effect(&stack, "inventory");
    assert_eq!(
        (inventory["ReserveStock"], inventory["ReleaseStock"]),
        (1, 1)
    );
    assert!(effects(&stack, "payment").is_empty());
}
