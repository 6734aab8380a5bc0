//! OrderSummaryView by id, by customer and by status, fed from the in-memory store.

use std::sync::Arc;
use std::time::Duration;

use saga_aggregates::load_definition;
use saga_aggregates::order::{Order, OrderCommand, OrderLine, OrderStatus};
use saga_aggregates::order_views::{
    order_summary, orders_in_status, orders_of_customer, OrderSummaryView, ORDER_SUMMARY_VIEW,
};
use saga_core::ManualClock;
use saga_eventstore::{
    CommandMeta, MemoryEventStore, MemorySnapshotStore, ProjectionRunner, Repository, SledViews,
    Upcasters,
};

#[tokio::test]
async fn orders_are_summarised_by_customer_and_by_status_as_they_move() {
    let def = load_definition("order.yaml").unwrap();
    let store = Arc::new(MemoryEventStore::new());
    let repo = Repository::<Order>::new(
        &def,
        store.clone(),
        Arc::new(MemorySnapshotStore::new()),
        Upcasters::new(),
        Arc::new(ManualClock::new(1_000)),
    )
    .unwrap();
    let m = CommandMeta::default();
    for (id, user) in [("o1", "u1"), ("o2", "u1"), ("o3", "u2")] {
        repo.execute(
            id,
            OrderCommand::Create {
                order_id: id.into(),
                user_id: user.into(),
                items: vec![OrderLine {
                    sku: "sku-1".into(),
                    quantity: 2,
                    unit_price: 250,
                }],
                at: 0,
            },
            &m,
        )
        .await
        .unwrap();
    }
    for id in ["o1", "o2"] {
        repo.execute(id, OrderCommand::Confirm { at: 0 }, &m)
            .await
            .unwrap();
    }
    repo.execute(
        "o1",
        OrderCommand::Ship {
            tracking_number: "TRACK-1".into(),
            at: 0,
        },
        &m,
    )
    .await
    .unwrap();
    repo.execute(
        "o3",
        OrderCommand::Cancel {
            reason: "changed my mind".into(),
            at: 0,
        },
        &m,
    )
    .await
    .unwrap();
    let refused = repo
        .execute(
            "o1",
            OrderCommand::Cancel {
                reason: "too late".into(),
                at: 0,
            },
            &m,
        )
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("(invariant: OrderCancelled cannot follow OrderShipped)"),
        "{refused}"
    );

    let dir = tempfile::tempdir().unwrap();
    let views = SledViews::open(dir.path()).unwrap();
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let runner = ProjectionRunner::new(
        &def,
        store.clone(),
        views.clone(),
        Arc::new(OrderSummaryView::default()),
        Upcasters::new(),
    )
    .unwrap();
    let (handle, _) = runner.spawn(shutdown);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handle.status().await.unwrap().lag > 0 {
        assert!(tokio::time::Instant::now() < deadline, "no catch-up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(handle.status().await.unwrap().name, ORDER_SUMMARY_VIEW);

    let o1 = order_summary(&views, "o1").await.unwrap().unwrap();
    assert_eq!(o1.status, OrderStatus::Shipped);
    assert_eq!(o1.tracking_number.as_deref(), Some("TRACK-1"));
    assert_eq!((o1.total, o1.lines, o1.version), (500, 1, 3));
    assert_eq!(
        orders_of_customer(&views, "u1", 10).await.unwrap(),
        ["o1", "o2"]
    );
    assert_eq!(orders_of_customer(&views, "u2", 10).await.unwrap(), ["o3"]);
    assert_eq!(
        orders_in_status(&views, OrderStatus::Shipped, 10)
            .await
            .unwrap(),
        ["o1"]
    );
    assert_eq!(
        orders_in_status(&views, OrderStatus::Confirmed, 10)
            .await
            .unwrap(),
        ["o2"]
    );
    assert_eq!(
        orders_in_status(&views, OrderStatus::Cancelled, 10)
            .await
            .unwrap(),
        ["o3"]
    );
    assert!(orders_in_status(&views, OrderStatus::Created, 10)
        .await
        .unwrap()
        .is_empty());
}
