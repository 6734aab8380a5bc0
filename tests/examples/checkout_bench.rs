//! Throughput and latency of checkout sagas through one worker, end to end: a real
//! nats-server, `saga-worker`, and the inventory / payment / orders participants as
//! processes. Latency is measured from publishing the start to receiving the saga's
//! `OrderConfirmed` event.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! cargo run --release -p saga-e2e --example checkout_bench -- 1000 32
//! ```
//! Arguments: number of sagas (default 1000), sagas in flight (default 32), workers
//! (default 1).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use saga_e2e::*;
use saga_proto::{self as pb, Message};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let total: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let in_flight: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(32);
    let workers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);

    let stack = Stack::new();
    let _workers: Vec<_> = (0..workers)
        .map(|i| stack.worker(&format!("worker-{i}"), &[]))
        .collect();
    let _inventory = stack.participant("inventory", "inventory", &["--initial-stock", "100000000"]);
    let _payment = stack.participant("payment", "payment", &[]);
    let _orders = stack.participant("orders", "orders", &[]);
    let js = stack.js().await;
    let client = saga_nats::connect(&stack.nats.url()).await.unwrap();
    let mut events = client.subscribe("events.orders.>").await.unwrap();

    // Warm up: one saga end to end (also waits for provisioning and consumers).
    start_saga(
        &js,
        "OrderCheckout",
        "warmup",
        order("warmup", "c", &[("sku-1", 1, 100)]),
    )
    .await;
    wait_terminal(
        &js,
        "OrderCheckout",
        &["warmup".to_string()],
        Duration::from_secs(60),
    )
    .await;
    while tokio::time::timeout(Duration::from_millis(200), events.next())
        .await
        .is_ok()
    {}

    let mut started: HashMap<String, Instant> = HashMap::new();
    let mut wall: HashMap<String, std::time::SystemTime> = HashMap::new();
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let (mut sent, mut done, mut confirmed, mut cancelled) = (0usize, 0usize, 0usize, 0usize);
    let t0 = Instant::now();
    let mut slowest = (String::new(), Duration::ZERO);
    let mut slowest_publish = Duration::ZERO;
    while done < total {
        while sent < total && sent - done < in_flight {
            let id = format!("bench-{sent}");
            started.insert(id.clone(), Instant::now());
            wall.insert(id.clone(), std::time::SystemTime::now());
            let p0 = Instant::now();
            start_saga(
                &js,
                "OrderCheckout",
                &id,
                order(&id, "c", &[("sku-1", 1, 100)]),
            )
            .await;
            slowest_publish = slowest_publish.max(p0.elapsed());
            sent += 1;
        }
        let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(60), events.next()).await
        else {
            panic!("no event for 60s: {done}/{total} done");
        };
        let (id, ok) = if msg.subject.as_str().ends_with("OrderConfirmed") {
            (
                pb::OrderConfirmed::decode(msg.payload.as_ref())
                    .unwrap()
                    .correlation_id,
                true,
            )
        } else {
            (
                pb::OrderCancelled::decode(msg.payload.as_ref())
                    .unwrap()
                    .correlation_id,
                false,
            )
        };
        if let Some(t) = started.remove(&id) {
            let took = t.elapsed();
            if took > slowest.1 {
                slowest = (id.clone(), took);
            }
            hist.record(took.as_micros() as u64).unwrap();
            done += 1;
            if ok {
                confirmed += 1
            } else {
                cancelled += 1
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "sagas: {total} (in flight {in_flight}); completed {confirmed}, compensated {cancelled}"
    );
    println!(
        "throughput: {:.1} sagas/s over {secs:.2}s",
        total as f64 / secs
    );
    println!(
        "latency start->OrderConfirmed: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        hist.max() as f64 / 1000.0
    );
    // Where the slowest saga spent its time: the journal's transitions, with timestamps.
    let j = journal(&js, "OrderCheckout", &slowest.0).await;
    println!("slowest: {} in {:?}; slowest start publish (until JetStream acked it): {slowest_publish:?}", slowest.0, slowest.1);
    let first = wall[&slowest.0]
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    println!("  +    0 ms  start published");
    for e in &j {
        let at = e.recorded_at.map(|t| pb::millis(&t)).unwrap_or(0);
        println!(
            "  +{:>5} ms  v{} {:?}",
            at.saturating_sub(first),
            e.version,
            e.state()
        );
    }
}
