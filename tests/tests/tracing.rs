//! Traces end to end: the gateway, the worker and the participants export to a test OTLP
//! receiver, and each saga is one trace rooted at the gateway's RPC.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use saga_e2e::otlp::{Received, Receiver};
use saga_e2e::*;
use saga_proto as pb;

const SAGA: &str = "OrderCheckout";
const SERVER: i32 = 2;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

fn place(customer: &str, items: Vec<pb::OrderItem>) -> pb::PlaceOrderRequest {
    pb::PlaceOrderRequest {
        customer_id: customer.into(),
        items,
        idempotency_key: String::new(),
    }
}

fn item(sku: &str, quantity: i64, unit_price_cents: i64) -> pb::OrderItem {
    pb::OrderItem {
        sku: sku.into(),
        quantity,
        unit_price_cents,
    }
}

fn of_saga<'a>(spans: &'a [Received], id: &str) -> Vec<&'a Received> {
    spans
        .iter()
        .filter(|s| s.attr("saga.id").as_deref() == Some(id))
        .collect()
}

/// The services that sent spans of saga `id`.
fn services(spans: &[Received], id: &str) -> BTreeSet<String> {
    of_saga(spans, id)
        .iter()
        .map(|s| s.service.clone())
        .collect()
}

/// Whether every span of the sagas has its parent among the spans received (the last
/// transitions end, and are exported, after the messages they published).
fn parents_received(spans: &[Received], ids: &[&str]) -> bool {
    let received: BTreeSet<String> = spans.iter().map(|s| s.span_id()).collect();
    ids.iter().all(|id| {
        of_saga(spans, id)
            .iter()
            .all(|s| s.parent_id().is_empty() || received.contains(&s.parent_id()))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_saga_is_one_trace_from_the_gateway_through_the_worker_to_every_participant() {
    let receiver = Receiver::start().await;
    // Inherited by every process the harness starts.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint);
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
    std::env::remove_var("OTEL_SERVICE_NAME");
    std::env::remove_var("OTEL_RESOURCE_ATTRIBUTES");

    let stack = Stack::new();
    let mut worker = stack.worker("worker", &[]);
    let mut ps = checkout_participants(&stack, &[]);
    let js = stack.js().await;
    wait_provisioned(&js).await;
    let (mut gateway, mut client) = Gateway::start(&stack, "gateway").await;

    let ok = client
        .place_order(place("alice", vec![item("sku-1", 2, 1_000)]))
        .await
        .expect("PlaceOrder")
        .into_inner()
        .saga_id;
    let declined = client
        .place_order(place("decline-carol", vec![item("sku-1", 3, 100)]))
        .await
        .expect("PlaceOrder")
        .into_inner()
        .saga_id;
    let states = wait_terminal(
        &js,
        SAGA,
        &[ok.clone(), declined.clone()],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        states,
        [pb::SagaState::Completed, pb::SagaState::Compensated]
    );

    // The journals are complete once the sagas are terminal; every record names the span
    // of the transition that wrote it, and that span is exported after the record is
    // durable, so the wait below includes them.
    let mut journal_spans = BTreeSet::new();
    for id in [&ok, &declined] {
        journal_spans.extend(journal(&js, SAGA, id).await.into_iter().map(|r| r.span_id));
    }

    let spans = receiver
        .wait_for(
            Duration::from_secs(60),
            "spans of both sagas from every service",
            |spans| {
                let want_ok: BTreeSet<String> = [
                    "saga-gateway",
                    "saga-worker",
                    "inventory",
                    "payment",
                    "orders",
                ]
                .map(String::from)
                .into();
                let want_declined: BTreeSet<String> =
                    ["saga-gateway", "saga-worker", "inventory", "payment"]
                        .map(String::from)
                        .into();
                let compensated = of_saga(spans, &declined)
                    .iter()
                    .any(|s| s.service == "inventory" && s.span.name.contains("ReleaseStock"));
                services(spans, &ok).is_superset(&want_ok)
                    && services(spans, &declined).is_superset(&want_declined)
                    && compensated
                    && of_saga(spans, &ok)
                        .iter()
                        .any(|s| s.span.name == "publish events.orders.OrderConfirmed")
                    && parents_received(spans, &[&ok, &declined])
                    && {
                        let received: BTreeSet<String> =
                            spans.iter().map(|s| s.span_id()).collect();
                        journal_spans.is_subset(&received)
                    }
            },
        )
        .await;

    let by_id: BTreeMap<String, &Received> = spans.iter().map(|s| (s.span_id(), s)).collect();
    for id in [&ok, &declined] {
        let mine: Vec<&Received> = of_saga(&spans, id)
            .into_iter()
            .filter(|s| !s.span.name.starts_with("timer"))
            .collect();
        let traces: BTreeSet<String> = mine.iter().map(|s| s.trace_id()).collect();
        assert_eq!(traces.len(), 1, "saga {id} spans {} traces", traces.len());
        let trace = traces.into_iter().next().unwrap();

        // The root is the gateway's RPC span.
        let roots: Vec<&&Received> = mine.iter().filter(|s| s.parent_id().is_empty()).collect();
        assert_eq!(roots.len(), 1, "saga {id}: roots {roots:?}");
        assert_eq!(roots[0].service, "saga-gateway");
        assert_eq!(roots[0].span.name, "saga.v1.SagaGateway/PlaceOrder");
        assert_eq!(roots[0].span.kind, SERVER);

        // Every other span's parent is a span of the same trace that was received.
        for s in mine.iter().filter(|s| !s.parent_id().is_empty()) {
            let parent = by_id
                .get(&s.parent_id())
                .unwrap_or_else(|| panic!("parent of {} {} not received", s.service, s.span.name));
            assert_eq!(parent.trace_id(), trace);
        }

        // Each participant's handling is a consumer span whose parent is the worker's
        // producer span of that command.
        let handled: Vec<&&Received> = mine
            .iter()
            .filter(|s| !["saga-gateway", "saga-worker"].contains(&s.service.as_str()))
            .collect();
        assert!(!handled.is_empty());
        for s in handled {
            assert_eq!(s.span.kind, CONSUMER, "{}", s.span.name);
            assert_eq!(s.attr("messaging.system").as_deref(), Some("nats"));
            let parent = by_id[&s.parent_id()];
            assert_eq!(parent.service, "saga-worker");
            assert_eq!(parent.span.kind, PRODUCER);
            assert_eq!(
                parent.attr("messaging.destination.name"),
                s.attr("messaging.destination.name")
            );
            assert!(parent.span.name.starts_with("publish saga.cmd."));
        }

        // The worker's transitions carry the saga's attributes, and the journal names
        // their trace.
        let transitions: Vec<&&Received> = mine
            .iter()
            .filter(|s| s.service == "saga-worker" && s.span.kind == CONSUMER)
            .collect();
        assert!(transitions
            .iter()
            .any(|s| s.attr("saga.input.kind").as_deref() == Some("start")));
        for s in &transitions {
            assert_eq!(s.attr("saga.type").as_deref(), Some(SAGA));
            assert!(s.attr("saga.version").is_some());
        }
        let j = journal(&js, SAGA, id).await;
        assert!(j.iter().all(|r| r.trace_id == trace), "{id}: {j:?}");
        let span_ids: BTreeSet<String> = transitions.iter().map(|s| s.span_id()).collect();
        assert!(j.iter().all(|r| span_ids.contains(&r.span_id)));
        assert!(j.iter().all(|r| r.saga_traceparent.contains(&trace)));
    }

    // The compensation is visible: the release of the stock, and why.
    let release = of_saga(&spans, &declined)
        .into_iter()
        .find(|s| {
            s.service == "saga-worker"
                && s.attr("saga.command.kind").as_deref() == Some("compensation")
        })
        .expect("a compensation command span");
    assert_eq!(release.attr("saga.compensation").as_deref(), Some("true"));
    assert_eq!(release.attr("saga.step").as_deref(), Some("ReserveStock"));
    assert!(release.attr("saga.reason").is_some_and(|r| !r.is_empty()));

    gateway.stop();
    stop_all(&mut worker, &mut ps);
}
