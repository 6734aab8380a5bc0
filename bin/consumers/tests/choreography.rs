//! The example consumers against a real nats-server: exactly-once effects through
//! duplicates and crashes, ordering violations parked, eventual consistency through
//! random kills, the retry ladder into the DLQ and back by redrive, schema checks.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use consumers::{notifications, reward_entries, shipments, FailOn, Notifier, Rewards};
use rand::{Rng, SeedableRng};
use saga_choreography::{ConsumerStore, RetryLadder, Settings};
use saga_nats::dead_letters::{list_dead_letters, redrive_dead_letter};
use saga_ports::header;

const DEADLINE: Duration = Duration::from_secs(30);

fn quick() -> Settings {
    Settings {
        heartbeat: Duration::from_millis(500),
        fetch_wait: Duration::from_millis(200),
        reorder_grace: Duration::from_secs(2),
        reorder_retry: Duration::from_millis(200),
        ..Settings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_order_gives_one_notification_one_reward_and_one_shipment_through_duplicates_and_a_crash(
) {
    let b = broker().await;
    let dirs = tempfile::tempdir().unwrap();
    let dir = |s: &str| dirs.path().join(s);
    let mut notification = spawn_binary(&b, "notification", &dir("notification"), &[]);
    // Exits (137) right after its first effect is committed, before the ack.
    let mut rewards = spawn_binary(
        &b,
        "rewards",
        &dir("rewards"),
        &["--crash-after-effect", "1"],
    );
    let mut shipping = spawn_binary(&b, "shipping", &dir("shipping"), &[]);

    // Every event twice: the saga's create-only subject and a second copy (as a
    // republishing producer would send).
    for id in ["o-1", "o-1-copy"] {
        publish(&b, "OrderPlaced", id, placed("o-1")).await;
    }
    for id in ["o-1", "o-1-copy"] {
        publish(&b, "OrderConfirmed", id, confirmed("o-1")).await;
    }

    let status = rewards
        .wait_timeout(DEADLINE)
        .unwrap()
        .expect("rewards crashed");
    assert_eq!(status.code(), Some(137), "the crash knob exits with 137");
    let mut rewards = spawn_binary(&b, "rewards", &dir("rewards"), &[]);

    eventually(DEADLINE, "OrderShipped published", || async {
        on_subject(&b, "events.orders.OrderShipped.>").await == 1
    })
    .await;
    for s in ["notification", "rewards", "shipping"] {
        eventually(DEADLINE, &format!("evt-{s} drained"), || drained(&b, s)).await;
    }
    for p in [&mut notification, &mut rewards, &mut shipping] {
        p.terminate(Duration::from_secs(10)).unwrap();
    }

    let open = |s: &str| ConsumerStore::open(dir(s)).unwrap();
    let n = notifications(open("notification").db()).unwrap();
    let told: Vec<_> = n.iter().map(|n| n.event.as_str()).collect();
    assert_eq!(
        told,
        ["OrderConfirmed", "OrderPlaced", "OrderShipped"],
        "{n:?}"
    );
    assert!(n
        .iter()
        .all(|n| n.correlation_id.as_deref() == Some("saga-o-1")));
    let r = reward_entries(open("rewards").db()).unwrap();
    assert_eq!(
        r.len(),
        1,
        "one award despite the crash and the copies: {r:?}"
    );
    assert_eq!(r[0].points, consumers::POINTS_PER_ORDER);
    let s = shipments(open("shipping").db()).unwrap();
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].correlation_id.as_deref(), Some("saga-o-1"));
    assert_eq!(dlq_len(&b).await, 0, "nothing dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_violations_and_undecodable_payloads_are_parked_never_applied() {
    let b = broker().await;
    let dir = tempfile::tempdir().unwrap();
    let rewards = start_in_process(
        &b,
        "rewards",
        dir.path(),
        Arc::new(Rewards::default()),
        quick(),
    )
    .await;

    // o-2: confirmed without having been placed.
    publish(&b, "OrderConfirmed", "o-2", confirmed("o-2")).await;
    // o-3: placed, confirmed, shipped, then a cancel that cannot follow the shipment.
    publish(&b, "OrderPlaced", "o-3", placed("o-3")).await;
    publish(&b, "OrderConfirmed", "o-3", confirmed("o-3")).await;
    publish(&b, "OrderShipped", "o-3", shipped("o-3")).await;
    publish(&b, "OrderCancelled", "o-3", cancelled("o-3")).await;
    // Not an OrderConfirmed at all.
    publish(
        &b,
        "OrderConfirmed",
        "o-4",
        b"\xff\xfe not protobuf".to_vec(),
    )
    .await;

    eventually(DEADLINE, "three dead letters", || async {
        dlq_len(&b).await == 3
    })
    .await;
    eventually(DEADLINE, "evt-rewards drained", || drained(&b, "rewards")).await;

    let store = rewards.store.clone();
    let entries = reward_entries(store.db()).unwrap();
    assert_eq!(entries.len(), 1, "only o-3's award: {entries:?}");
    assert_eq!(entries[0].order_id, "o-3");
    assert_eq!(
        entries[0].points,
        consumers::POINTS_PER_ORDER,
        "points not taken back"
    );
    assert_eq!(store.violations().unwrap(), 2);
    let mut parked: Vec<_> = store
        .parked()
        .unwrap()
        .into_iter()
        .map(|p| p.reason)
        .collect();
    parked.sort();
    assert_eq!(
        parked,
        [
            "OrderCancelled for orderId `o-3` after OrderShipped",
            "OrderConfirmed for orderId `o-2` with no OrderPlaced before it",
        ]
    );
    let letters = list_dead_letters(&b.js, None, 10).await.unwrap();
    // Different orders are handled in parallel: sort by subject.
    let mut reasons: Vec<_> = letters
        .iter()
        .map(|l| (l.original_subject(), l.reason()))
        .collect();
    reasons.sort();
    assert_eq!(reasons[0].0, "events.orders.OrderCancelled.o-3");
    assert!(
        reasons[0]
            .1
            .starts_with("ordering violation: OrderCancelled for orderId `o-3` after OrderShipped"),
        "{reasons:?}"
    );
    assert_eq!(reasons[1].0, "events.orders.OrderConfirmed.o-2");
    assert!(
        reasons[1]
            .1
            .starts_with("ordering violation: OrderConfirmed for orderId `o-2`"),
        "{reasons:?}"
    );
    assert_eq!(reasons[2].0, "events.orders.OrderConfirmed.o-4");
    assert!(
        reasons[2]
            .1
            .starts_with("schema: payload does not decode as saga.v1.OrderConfirmed"),
        "{reasons:?}"
    );
    assert!(letters.iter().all(|l| l.consumer() == "evt-rewards"));
    rewards.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_consumer_climbs_the_ladder_into_the_dlq_and_a_redrive_succeeds_once_fixed() {
    let b = broker().await;
    let dir = tempfile::tempdir().unwrap();
    let ladder = Settings {
        ladder: RetryLadder::parse("1s, 2s, 3s").unwrap(),
        ..quick()
    };
    let broken = Rewards {
        fail_on: FailOn::on(Some("OrderConfirmed".into())),
    };
    let rewards =
        start_in_process(&b, "rewards", dir.path(), Arc::new(broken), ladder.clone()).await;
    // The other consumer of the same event is healthy.
    let ndir = tempfile::tempdir().unwrap();
    let notifier = start_in_process(
        &b,
        "notification",
        ndir.path(),
        Arc::new(Notifier::default()),
        quick(),
    )
    .await;

    publish(&b, "OrderPlaced", "o-5", placed("o-5")).await;
    let seq = publish(&b, "OrderConfirmed", "o-5", confirmed("o-5")).await;

    eventually(
        Duration::from_secs(3),
        "the first failure recorded",
        || async { rewards.store.failures(seq).unwrap().len() == 1 },
    )
    .await;
    eventually(DEADLINE, "the dead letter", || async {
        dlq_len(&b).await == 1
    })
    .await;
    let letters = list_dead_letters(&b.js, Some("evt-rewards"), 10)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    let l = &letters[0];
    assert_eq!(l.original_subject(), "events.orders.OrderConfirmed.o-5");
    assert_eq!(l.original_position(), format!("SAGA_EVENTS:{seq}"));
    assert_eq!(l.deliveries(), "4");
    assert!(
        l.reason().starts_with(
            "gave up after 4 attempts (ladder 1s, 2s, 3s): injected technical failure"
        ),
        "{}",
        l.reason()
    );
    let errors: Vec<serde_json::Value> = serde_json::from_str(l.errors().unwrap()).unwrap();
    assert_eq!(errors.len(), 4, "every attempt's error: {errors:?}");
    let at: Vec<u64> = errors.iter().map(|e| e["at"].as_u64().unwrap()).collect();
    for (i, rung) in [1000u64, 2000, 3000].iter().enumerate() {
        let gap = at[i + 1] - at[i];
        assert!(
            gap >= *rung && gap < rung + 1500,
            "attempt {} waited {gap} ms, rung {rung} ms",
            i + 2
        );
    }
    assert!(reward_entries(rewards.store.db()).unwrap().is_empty());

    // Fixed: the same ledger, a handler that works.
    rewards.stop().await;
    let rewards = start_in_process(
        &b,
        "rewards",
        dir.path(),
        Arc::new(Rewards::default()),
        ladder,
    )
    .await;
    let r = redrive_dead_letter(&b.js, l.id, None).await.unwrap();
    assert_eq!(r.subject, "events.orders.OrderConfirmed.o-5");
    let again = redrive_dead_letter(&b.js, l.id, None).await.unwrap();
    assert!(
        again.duplicate,
        "a second redrive within the window stores nothing"
    );

    eventually(DEADLINE, "the redriven award", || async {
        reward_entries(rewards.store.db()).unwrap().len() == 1
    })
    .await;
    eventually(DEADLINE, "both consumers drained", || async {
        drained(&b, "rewards").await && drained(&b, "notification").await
    })
    .await;
    let told = notifications(notifier.store.db()).unwrap();
    assert_eq!(
        told.len(),
        2,
        "the redrive was meant for rewards only: {told:?}"
    );
    let listed = list_dead_letters(&b.js, None, 10).await.unwrap();
    assert_eq!(listed.len(), 1, "the redrive record is not a dead letter");
    assert_eq!(listed[0].redrives, vec![(r.subject.clone(), r.sequence)]);
    let redriven =
        b.js.get_stream("SAGA_EVENTS")
            .await
            .unwrap()
            .get_raw_message(r.sequence)
            .await
            .unwrap();
    let h = |n: &str| redriven.headers.get(n).map(|v| v.as_str().to_string());
    assert_eq!(
        h(header::SAGA_ID).as_deref(),
        Some("saga-o-5"),
        "original headers kept"
    );
    assert_eq!(h(header::REDRIVE_OF), Some(l.id.to_string()));
    assert_eq!(h(header::DLQ_REASON), None);
    rewards.stop().await;
    notifier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledgers_converge_after_many_orders_and_random_consumer_kills() {
    const ORDERS: usize = 40;
    let b = broker().await;
    let dirs = tempfile::tempdir().unwrap();
    let services = ["notification", "rewards", "shipping"];
    let mut procs: Vec<_> = services
        .iter()
        .map(|s| spawn_binary(&b, s, &dirs.path().join(s), &[]))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let mut confirmed_n = 0;
    let mut kills = 0;
    for i in 0..ORDERS {
        let order = format!("ord-{i}");
        publish(&b, "OrderPlaced", &order, placed(&order)).await;
        if i % 4 == 3 {
            publish(&b, "OrderCancelled", &order, cancelled(&order)).await;
        } else {
            publish(&b, "OrderConfirmed", &order, confirmed(&order)).await;
            confirmed_n += 1;
        }
        if i % 5 == 4 {
            let victim = rng.gen_range(0..services.len());
            procs[victim].sigkill().unwrap();
            kills += 1;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..200))).await;
            procs[victim] = spawn_binary(
                &b,
                services[victim],
                &dirs.path().join(services[victim]),
                &[],
            );
        }
    }
    assert_eq!(kills, ORDERS / 5);
    eventually(Duration::from_secs(60), "every OrderShipped", || async {
        on_subject(&b, "events.orders.OrderShipped.>").await == confirmed_n as u64
    })
    .await;
    for s in services {
        eventually(Duration::from_secs(60), &format!("evt-{s} drained"), || {
            drained(&b, s)
        })
        .await;
    }
    for p in &mut procs {
        p.terminate(Duration::from_secs(10)).unwrap();
    }
    let open = |s: &str| ConsumerStore::open(dirs.path().join(s)).unwrap();
    let cancelled_n = ORDERS - confirmed_n;
    let n = notifications(open("notification").db()).unwrap();
    assert_eq!(n.len(), ORDERS + confirmed_n + cancelled_n + confirmed_n);
    let r = reward_entries(open("rewards").db()).unwrap();
    assert_eq!(r.len(), confirmed_n, "one award per confirmed order");
    let s = shipments(open("shipping").db()).unwrap();
    assert_eq!(s.len(), confirmed_n);
    assert_eq!(dlq_len(&b).await, 0);
}
