//! The event-sourced orders participant on a real stack: checkout sagas append
//! OrderCreated + OrderConfirmed to the Order aggregate, the gRPC API ships and cancels
//! (refusing a cancel after shipping with the invariant's name), OrderSummaryView
//! answers by customer and by status, and a lost local store neither repeats an event
//! nor loses the view.

use std::time::Duration;

use async_nats::jetstream;
use saga_e2e::*;
use saga_proto as pb;
use saga_proto::es as es_pb;
use saga_proto::es::orders_client::OrdersClient;
use saga_proto::Message as _;
use tonic::transport::Channel;
use tonic::Code;

const SAGA: &str = "OrderCheckout";

/// The event types stored for one order, in order.
async fn order_events(js: &jetstream::Context, order_id: &str) -> Vec<String> {
    messages(js, "ES_EVENTS", &format!("es.Order.{order_id}"))
        .await
        .iter()
        .map(|m| {
            es_pb::EventEnvelope::decode(m.payload.as_ref())
                .expect("an event envelope")
                .event_type
        })
        .collect()
}

async fn connect(addr: &str) -> OrdersClient<Channel> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match OrdersClient::connect(format!("http://{addr}")).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the orders API at {addr} never answered: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The order's summary once the view shows it in `status`.
async fn summary_in(
    client: &mut OrdersClient<Channel>,
    order_id: &str,
    status: &str,
) -> es_pb::OrderSummary {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = client
            .get_order(es_pb::GetOrderRequest {
                order_id: order_id.into(),
            })
            .await;
        match got {
            Ok(r) if r.get_ref().status == status => return r.into_inner(),
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "order {order_id} never reached {status} in OrderSummaryView: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkouts_build_the_order_aggregate_and_the_api_ships_cancels_and_lists() {
    let _turn = one_at_a_time().await;
    let stack = Stack::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut worker = stack.worker("worker", &[]);
    let mut inventory = stack.participant("inventory", "inventory", &[]);
    let mut payment = stack.participant("payment", "payment", &[]);
    let mut orders = stack.participant("orders", "orders", &["--grpc-addr", &addr]);
    let js = stack.js().await;
    wait_provisioned(&js).await;

    let placed = [
        ("es-1", "alice"),
        ("es-2", "alice"),
        ("es-3", "bob"),
        ("reject-es-4", "bob"),
    ];
    for (id, customer) in placed {
        start_saga(&js, SAGA, id, order(id, customer, &[("sku-1", 2, 1_000)])).await;
    }
    let ids: Vec<String> = placed.iter().map(|(id, _)| id.to_string()).collect();
    let states = wait_terminal(&js, SAGA, &ids, Duration::from_secs(60)).await;
    assert_eq!(
        states,
        [
            pb::SagaState::Completed,
            pb::SagaState::Completed,
            pb::SagaState::Completed,
            pb::SagaState::Compensated
        ]
    );
    for id in ["es-1", "es-2", "es-3"] {
        assert_eq!(
            order_events(&js, id).await,
            ["OrderCreated", "OrderConfirmed"],
            "events of {id}"
        );
    }
    assert!(order_events(&js, "reject-es-4").await.is_empty());

    let mut api = connect(&addr).await;
    let row = summary_in(&mut api, "es-1", "CONFIRMED").await;
    assert_eq!(
        (
            row.customer_id.as_str(),
            row.total_cents,
            row.lines,
            row.version
        ),
        ("alice", 2_000, 1, 2)
    );

    let shipped = api
        .ship_order(es_pb::ShipOrderRequest {
            order_id: "es-1".into(),
            tracking_number: "TRK-42".into(),
        })
        .await
        .expect("ship a confirmed order")
        .into_inner();
    assert_eq!((shipped.status.as_str(), shipped.version), ("SHIPPED", 3));
    let again = api
        .ship_order(es_pb::ShipOrderRequest {
            order_id: "es-1".into(),
            tracking_number: "TRK-42".into(),
        })
        .await
        .expect("shipping again with the same tracking number")
        .into_inner();
    assert!(again.repeated, "{again:?}");
    let refused = api
        .cancel_order(es_pb::CancelOrderRequest {
            order_id: "es-1".into(),
            reason: "too late".into(),
        })
        .await
        .expect_err("a shipped order cannot be cancelled");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused
            .message()
            .contains("OrderCancelled cannot follow OrderShipped"),
        "{}",
        refused.message()
    );
    let cancelled = api
        .cancel_order(es_pb::CancelOrderRequest {
            order_id: "es-2".into(),
            reason: "changed my mind".into(),
        })
        .await
        .expect("cancel a confirmed order")
        .into_inner();
    assert_eq!(cancelled.status, "CANCELLED");
    let missing = api
        .ship_order(es_pb::ShipOrderRequest {
            order_id: "es-3".into(),
            tracking_number: " ".into(),
        })
        .await
        .expect_err("no tracking number");
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(missing.message().contains("tracking_number"));

    assert_eq!(
        summary_in(&mut api, "es-1", "SHIPPED")
            .await
            .tracking_number,
        "TRK-42"
    );
    summary_in(&mut api, "es-2", "CANCELLED").await;
    let of_alice = api
        .list_orders(es_pb::ListOrdersRequest {
            customer_id: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let listed: Vec<(&str, &str)> = of_alice
        .orders
        .iter()
        .map(|o| (o.order_id.as_str(), o.status.as_str()))
        .collect();
    assert_eq!(listed, [("es-1", "SHIPPED"), ("es-2", "CANCELLED")]);
    let confirmed = api
        .list_orders(es_pb::ListOrdersRequest {
            status: "confirmed".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = confirmed
        .orders
        .iter()
        .map(|o| o.order_id.as_str())
        .collect();
    assert_eq!(ids, ["es-3"]);
    // The same through a real grpcurl, with reflection.
    let grpcurl = saga_e2e::grpcurl::binary();
    let listed = saga_e2e::grpcurl::run(&grpcurl, &["-plaintext", &addr, "list"]);
    assert!(
        saga_e2e::grpcurl::text(&listed).contains("saga.es.v1.Orders"),
        "{}",
        saga_e2e::grpcurl::text(&listed)
    );
    let by_status = saga_e2e::grpcurl::run(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            r#"{"status":"SHIPPED"}"#,
            &addr,
            "saga.es.v1.Orders/ListOrders",
        ],
    );
    let answer = saga_e2e::grpcurl::text(&by_status);
    assert!(by_status.status.success(), "{answer}");
    assert!(
        answer.contains(r#""orderId": "es-1""#) && answer.contains(r#""trackingNumber": "TRK-42""#),
        "{answer}"
    );
    let bad = saga_e2e::grpcurl::run(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            r#"{"status":"LOST"}"#,
            &addr,
            "saga.es.v1.Orders/ListOrders",
        ],
    );
    let answer = saga_e2e::grpcurl::text(&bad);
    assert!(
        answer.contains("InvalidArgument") && answer.contains("status"),
        "{answer}"
    );

    let both = api
        .list_orders(es_pb::ListOrdersRequest {
            customer_id: "alice".into(),
            status: "SHIPPED".into(),
            ..Default::default()
        })
        .await
        .expect_err("customer and status together");
    assert_eq!(both.code(), Code::InvalidArgument);
    assert_eq!(
        order_events(&js, "es-1").await,
        ["OrderCreated", "OrderConfirmed", "OrderShipped"]
    );
    assert_eq!(
        order_events(&js, "es-2").await,
        ["OrderCreated", "OrderConfirmed", "OrderCancelled"]
    );
    for p in [&mut worker, &mut inventory, &mut payment, &mut orders] {
        stop(p);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_participant_that_loses_its_store_after_the_effect_appends_nothing_twice() {
    let _turn = one_at_a_time().await;
    let stack = Stack::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut worker = stack.worker("worker", &[]);
    let mut inventory = stack.participant("inventory", "inventory", &[]);
    let mut payment = stack.participant("payment", "payment", &[]);
    let mut orders = stack.participant(
        "orders",
        "orders",
        &[
            "--crash-after-effect",
            "ConfirmOrder:1",
            "--ack-wait-ms",
            "2000",
        ],
    );
    let js = stack.js().await;
    wait_provisioned(&js).await;
    start_saga(
        &js,
        SAGA,
        "lost-1",
        order("lost-1", "erin", &[("sku-1", 1, 700)]),
    )
    .await;
    saga_testkit::wait_until(
        Duration::from_secs(60),
        "orders crashes after appending the order's events",
        || !orders.is_running(),
    )
    .unwrap();
    assert_eq!(orders.wait().unwrap().code(), Some(137));
    assert_eq!(
        order_events(&js, "lost-1").await,
        ["OrderCreated", "OrderConfirmed"]
    );
    // Its disk is gone: no inbox record, no view, no checkpoint.
    std::fs::remove_dir_all(stack.data_dir("orders")).unwrap();
    let mut orders = stack.participant(
        "orders",
        "orders",
        &["--ack-wait-ms", "2000", "--grpc-addr", &addr],
    );
    let states = wait_terminal(&js, SAGA, &["lost-1".into()], Duration::from_secs(60)).await;
    assert_eq!(states, [pb::SagaState::Completed]);
    // The redelivered command found the order confirmed: nothing appended again.
    assert_eq!(
        order_events(&js, "lost-1").await,
        ["OrderCreated", "OrderConfirmed"]
    );
    // And the view, rebuilt from the stream into the new store, shows it.
    let mut api = connect(&addr).await;
    let row = summary_in(&mut api, "lost-1", "CONFIRMED").await;
    assert_eq!((row.customer_id.as_str(), row.version), ("erin", 2));
    for p in [&mut worker, &mut inventory, &mut payment, &mut orders] {
        stop(p);
    }
}
