//! Poison inputs go to the dead-letter stream; the worker keeps serving others.

use std::time::Duration;

use saga_e2e::*;
use saga_ports::header;
use saga_proto as pb;
use saga_testkit::wait_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_input_is_dead_lettered_and_the_worker_keeps_going() {
    let stack = Stack::new();
    let mut worker = stack.worker("w1", &[]);
    let js = stack.js().await;
    // The worker provisions the streams; wait until the partition consumers exist.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while js.get_stream("SAGA_INBOX").await.is_err()
        || js
            .get_stream("SAGA_INBOX")
            .await
            .unwrap()
            .consumer_info("saga-p0")
            .await
            .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker did not provision"
        );
        assert!(worker.is_running(), "worker exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    js.publish("saga.in.0.garbage-1", vec![0xff, 0x00, 0x13].into())
        .await
        .unwrap()
        .await
        .unwrap();
    start_saga(
        &js,
        "OrderCheckout",
        "after-garbage",
        order("o-1", "c-1", &[("sku-1", 1, 100)]),
    )
    .await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let dlq = loop {
        let dlq = messages(&js, "SAGA_DLQ", "dlq.>").await;
        if !dlq.is_empty() {
            break dlq;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dlq.len(), 1);
    let m = &dlq[0];
    assert_eq!(m.subject.as_str(), "dlq.saga.in.0.garbage-1");
    let h = |name: &str| {
        m.headers
            .get(name)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default()
    };
    assert!(
        h(header::DLQ_REASON).contains("undecodable"),
        "{}",
        h(header::DLQ_REASON)
    );
    assert_eq!(h(header::DLQ_SUBJECT), "saga.in.0.garbage-1");
    assert_eq!(h(header::DLQ_STREAM), "SAGA_INBOX");
    assert_eq!(h(header::DLQ_DELIVERIES), "1");
    assert_eq!(&m.payload[..], &[0xff, 0x00, 0x13]);

    // The other saga was served: it started and sent its first command.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let j = journal(&js, "OrderCheckout", "after-garbage").await;
        if j.first().is_some_and(|e| {
            e.state() == pb::SagaState::Running && e.current_step == "ReserveStock"
        }) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "saga not served: {j:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cmds = messages(&js, "SAGA_COMMANDS", "saga.cmd.inventory.ReserveStock").await;
    assert_eq!(cmds.len(), 1);
    assert!(worker.is_running());
    worker.sigterm().unwrap();
    wait_until(Duration::from_secs(15), "worker exits on SIGTERM", || {
        !worker.is_running()
    })
    .unwrap();
}
