//! Prometheus metrics end to end: a worker, the checkout participants and a gateway
//! serve `/metrics`; a real Prometheus scrapes them; PromQL through its HTTP API gives
//! back the sagas the test ran, completed and compensated.

use std::time::Duration;

use saga_e2e::prometheus::{get, Prometheus};
use saga_e2e::*;
use saga_proto as pb;

const SAGA: &str = "OrderCheckout";

/// Waits until `promql` evaluates to `want` (within 1e-9), panicking with the last
/// value after the deadline.
async fn wait_value(prom: &Prometheus, promql: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let got = prom.query(promql);
        if got.is_some_and(|v| (v - want).abs() < 1e-9) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{promql}: {got:?}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_counts_the_completed_and_compensated_sagas_the_test_ran() {
    let _turn = one_at_a_time().await;
    let stack = Stack::new();
    let worker_addr = format!("127.0.0.1:{}", free_port());
    let mut worker = stack.worker("worker", &[("METRICS_ADDR", &worker_addr)]);
    let mut participants = Vec::new();
    let mut targets = vec![("worker", worker_addr.clone())];
    for bin in ["inventory", "payment", "orders"] {
        let addr = format!("127.0.0.1:{}", free_port());
        participants.push(stack.participant(bin, bin, &["--metrics-addr", &addr]));
        targets.push((bin, addr));
    }
    let gateway_addr = format!("127.0.0.1:{}", free_port());
    let mut gateway =
        Gateway::start_with_args(&stack, "gateway", &["--metrics-addr", &gateway_addr]).await;
    targets.push(("gateway", gateway_addr.clone()));
    let prom = Prometheus::start(&targets).await;

    let js = stack.js().await;
    wait_provisioned(&js).await;
    stack.wait_live_workers(1).await;
    const COMPLETED: usize = 4;
    const COMPENSATED: usize = 2;
    let mut ids = Vec::new();
    for i in 0..COMPLETED {
        let id = format!("ok-{i}");
        start_saga(&js, SAGA, &id, order(&id, "alice", &[("sku-1", 1, 1_000)])).await;
        ids.push(id);
    }
    for i in 0..COMPENSATED {
        // A declined payment: the reserved stock is released (compensated).
        let id = format!("dec-{i}");
        start_saga(
            &js,
            SAGA,
            &id,
            order(&id, "decline-carol", &[("sku-1", 1, 100)]),
        )
        .await;
        ids.push(id);
    }
    let states = wait_terminal(&js, SAGA, &ids, Duration::from_secs(90)).await;
    let completed = states
        .iter()
        .filter(|s| **s == pb::SagaState::Completed)
        .count();
    assert_eq!(completed, COMPLETED, "{states:?}");

    wait_value(
        &prom,
        &format!(r#"sum(saga_finished_total{{saga_type="{SAGA}",outcome="completed"}})"#),
        COMPLETED as f64,
    )
    .await;
    // The compensation rate the alert watches, over the whole run.
    wait_value(
        &prom,
        r#"sum(saga_finished_total{outcome="compensated"}) / sum(saga_finished_total)"#,
        COMPENSATED as f64 / (COMPLETED + COMPENSATED) as f64,
    )
    .await;
    wait_value(
        &prom,
        &format!(r#"sum(saga_started_total{{saga_type="{SAGA}"}})"#),
        (COMPLETED + COMPENSATED) as f64,
    )
    .await;
    // Real histograms: one observation per finished saga, in buckets.
    wait_value(
        &prom,
        "sum(saga_duration_seconds_count)",
        (COMPLETED + COMPENSATED) as f64,
    )
    .await;
    wait_value(
        &prom,
        r#"sum(saga_compensations_total{step="ReserveStock",action="ReleaseStock"})"#,
        COMPENSATED as f64,
    )
    .await;
    wait_value(
        &prom,
        r#"sum(saga_participant_commands_total{service="payment",outcome="business_failure"})"#,
        COMPENSATED as f64,
    )
    .await;
    // Broker figures sampled by the worker and the gateway.
    wait_value(&prom, r#"max(saga_workers_live{job="gateway"})"#, 1.0).await;
    wait_value(&prom, "max(saga_partitions_unowned)", 0.0).await;
    wait_value(&prom, "max(saga_past_deadline_sagas)", 0.0).await;

    let (status, text) = get(&worker_addr, "/metrics").expect("worker /metrics");
    assert_eq!(status, 200);
    assert!(
        text.contains("# HELP saga_finished_total Sagas that reached a terminal state"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE saga_step_duration_seconds histogram"),
        "{text}"
    );
    assert!(text.contains(r#"le="0.005""#), "{text}");
    assert!(!text.contains("ok-0"), "no saga id in a label: {text}");

    gateway.stop();
    stop_all(&mut worker, &mut participants);
}
