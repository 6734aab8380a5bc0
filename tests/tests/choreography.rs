//! The whole flow with real processes: an order placed through the gateway completes
//! its saga, then the notification, rewards and shipping consumers react; a rewards
//! consumer that keeps failing climbs its ladder into SAGA_DLQ, and `sagactl dlq
//! redrive` puts the event back once the consumer is fixed.

use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use saga_choreography::ConsumerStore;
use saga_e2e::*;
use saga_proto::{self as pb, Message};
use tonic::Request;

const DEADLINE: Duration = Duration::from_secs(60);

async fn drained(js: &async_nats::jetstream::Context, service: &str) -> bool {
    let Ok(mut c) = js
        .get_consumer_from_stream::<pull::Config, _, _>(format!("evt-{service}"), "SAGA_EVENTS")
        .await
    else {
        return false;
    };
    matches!(c.info().await, Ok(i) if i.num_pending == 0 && i.num_ack_pending == 0)
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sagactl(stack: &Stack, args: &[&str]) -> std::process::Output {
    let out = Command::new(binary("sagactl"))
        .env("NATS_URL", stack.nats.url())
        .args(args)
        .output()
        .expect("run sagactl");
    assert!(
        out.status.success(),
        "sagactl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_order_reaches_the_three_consumers_and_a_poisoned_event_is_redriven() {
    let _turn = one_at_a_time().await;
    let stack = Stack::new();
    let catalog = repo().join("events/order-events.yaml");
    let catalog = catalog.to_str().unwrap();
    let consumer = |name: &str, extra: &[&str]| {
        let mut args = vec!["--catalog", catalog, "--ack-wait-ms", "2000"];
        args.extend_from_slice(extra);
        stack.participant(name, name, &args)
    };
    let _worker = stack.worker("w1", &[]);
    let _participants = checkout_participants(&stack, &[]);
    let mut notification = consumer("notification", &[]);
    let mut shipping = consumer("shipping", &[]);
    let poisoned = [
        "--fail-on-event",
        "OrderConfirmed",
        "--retry-ladder",
        "1s, 2s, 3s",
    ];
    let mut rewards = consumer("rewards", &poisoned);
    let (_gateway, mut client) = Gateway::start(&stack, "gateway").await;
    let js = stack.js().await;

    let placed = client
        .place_order(Request::new(pb::PlaceOrderRequest {
            customer_id: "ada".into(),
            items: vec![pb::OrderItem {
                sku: "sku-1".into(),
                quantity: 1,
                unit_price_cents: 1200,
            }],
            idempotency_key: "choreo-1".into(),
        }))
        .await
        .expect("PlaceOrder")
        .into_inner();
    until("the saga to complete", || {
        let mut client = client.clone();
        let id = placed.saga_id.clone();
        async move {
            client
                .get_saga(Request::new(pb::GetSagaRequest { saga_id: id }))
                .await
                .is_ok_and(|s| s.get_ref().state == pb::SagaState::Completed as i32)
        }
    })
    .await;
    // A client retrying the same request gets the same saga, and no second OrderPlaced.
    let replay = client
        .place_order(Request::new(pb::PlaceOrderRequest {
            customer_id: "ada".into(),
            items: vec![pb::OrderItem {
                sku: "sku-1".into(),
                quantity: 1,
                unit_price_cents: 1200,
            }],
            idempotency_key: "choreo-1".into(),
        }))
        .await
        .expect("PlaceOrder replay")
        .into_inner();
    assert_eq!(replay.saga_id, placed.saga_id);
    let events = js.get_stream("SAGA_EVENTS").await.unwrap();
    let first = events
        .get_last_raw_message_by_subject(&format!("events.orders.OrderPlaced.{}", placed.saga_id))
        .await
        .expect("OrderPlaced published by the gateway");
    let subjects: Vec<(String, usize)> = futures::TryStreamExt::try_collect(
        events
            .info_with_subjects("events.orders.OrderPlaced.>")
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        subjects,
        [(format!("events.orders.OrderPlaced.{}", placed.saga_id), 1)]
    );
    let order_placed = pb::OrderPlaced::decode(first.payload.as_ref()).unwrap();
    assert_eq!(order_placed.order_id, placed.order_id);
    assert_eq!(order_placed.correlation_id, placed.saga_id);
    assert_eq!(order_placed.total_cents, 1200);
    until("notification and shipping to drain", || async {
        drained(&js, "notification").await && drained(&js, "shipping").await
    })
    .await;

    // rewards fails 4 times (1 s, 2 s, 3 s apart), then dead-letters the event.
    let id = {
        let mut found = None;
        until("the rewards dead letter", || {
            let out = sagactl(&stack, &["--json", "dlq", "ls", "--source", "evt-rewards"]);
            let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            found = rows
                .as_array()
                .and_then(|r| r.first())
                .map(|r| r["id"].as_u64().unwrap());
            async move { found.is_some() }
        })
        .await;
        found.unwrap()
    };
    let shown = sagactl(&stack, &["dlq", "show", &id.to_string()]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains(&format!(
            "subject:     events.orders.OrderConfirmed.{}",
            placed.saga_id
        )),
        "{shown}"
    );
    assert!(shown.contains("deliveries:  4"), "{shown}");
    assert!(shown.contains("#4 at"), "every attempt is listed: {shown}");

    // Tools see the same through the gateway.
    let listed = client
        .list_dead_letters(Request::new(pb::ListDeadLettersRequest {
            source: "evt-rewards".into(),
            limit: 0,
        }))
        .await
        .unwrap()
        .into_inner()
        .dead_letters;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert_eq!(listed[0].consumer, "evt-rewards");
    let errors: Vec<serde_json::Value> = serde_json::from_str(&listed[0].errors_json).unwrap();
    assert_eq!(errors.len(), 4);
    let refused = client
        .purge_dead_letters(Request::new(pb::PurgeDeadLettersRequest {
            source: String::new(),
            confirm: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    let missing = client
        .get_dead_letter(Request::new(pb::GetDeadLetterRequest { id: 999 }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // Fixed: restarted without the fault, then the event is redriven.
    rewards.terminate(Duration::from_secs(10)).unwrap();
    let mut rewards = consumer("rewards", &[]);
    let out = sagactl(&stack, &["dlq", "redrive", &id.to_string()]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("redriven to events.orders.OrderConfirmed.")
    );
    until("rewards to drain the redrive", || async {
        drained(&js, "rewards").await && drained(&js, "notification").await
    })
    .await;
    let listed = sagactl(&stack, &["dlq", "ls"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(
        listed.lines().count(),
        2,
        "one dead letter, redriven once: {listed}"
    );

    // Purge asks for confirmation, then removes the dead letter and its redrive record.
    let unconfirmed = Command::new(binary("sagactl"))
        .env("NATS_URL", stack.nats.url())
        .args(["dlq", "purge"])
        .output()
        .unwrap();
    assert_eq!(unconfirmed.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&unconfirmed.stderr).contains("1 dead letter(s) would be deleted")
    );
    let purged = sagactl(&stack, &["dlq", "purge", "--yes"]);
    assert!(String::from_utf8_lossy(&purged.stdout).contains("purged 2 message(s)"));
    let listed = sagactl(&stack, &["dlq", "ls"]);
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).lines().count(),
        1,
        "only the header"
    );

    for p in [&mut notification, &mut shipping, &mut rewards] {
        p.terminate(Duration::from_secs(10)).unwrap();
    }
    let ledger = |s: &str| ConsumerStore::open(stack.data_dir(s)).unwrap();
    let told: Vec<_> = consumers::notifications(ledger("notification").db())
        .unwrap()
        .into_iter()
        .map(|n| n.event)
        .collect();
    assert_eq!(told, ["OrderConfirmed", "OrderPlaced", "OrderShipped"]);
    let rewarded = consumers::reward_entries(ledger("rewards").db()).unwrap();
    assert_eq!(rewarded.len(), 1, "{rewarded:?}");
    assert_eq!(
        rewarded[0].correlation_id.as_deref(),
        Some(placed.saga_id.as_str())
    );
    let shipped = consumers::shipments(ledger("shipping").db()).unwrap();
    assert_eq!(shipped.len(), 1);
    assert_eq!(shipped[0].order_id, placed.order_id);
}
