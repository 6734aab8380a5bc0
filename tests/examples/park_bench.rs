//! Memory per open saga parked on a timer, and how long a fresh worker takes to take
//! over the open sagas of a worker that was killed. A real nats-server and `saga-worker`
//! processes; the sagas' only participant never answers, so each saga waits on its
//! step timeout (one hour).
//!
//! ```sh
//! cargo build --release --workspace --bins
//! cargo run --release -p saga-e2e --example park_bench -- 5000
//! ```
//! Argument: open sagas (default 5000); `PARK_BENCH_TAKEOVER=0` stops after the memory
//! figure, `LEASE_TTL_MS` sets the workers' lease (default 1000), `PARK_BENCH_KEEP_LOG=<file>`
//! keeps the second worker's log (debug lines of the saga actors and the supervisor). Prints the first worker's resident memory before
//! and after the sagas were started, per saga; then, after that worker is killed, how
//! long a worker with an empty store takes from its start to (a) every partition
//! acquired (open-saga index listed, an actor started per saga) and (b) every saga
//! restored from its journal (its timers armed again). The lease TTL is 1 s, so (a)
//! includes up to about 1 s of waiting for the dead worker's leases to expire.

use std::time::{Duration, Instant};

use futures::StreamExt;
use saga_e2e::*;
use saga_proto as pb;

const TYPE: &str = "ParkedSaga";
const PARKED: &str = "saga:
  name: ParkedSaga
  steps:
    - {name: Wait, service: nobody, action: wait, compensation: none, timeout: 1h}
    - {name: Last, service: nobody, action: last, timeout: 1h}
";

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// (lines whose message is `message`, the sum of their `field`).
fn count(log: &std::path::Path, message: &str, field: &str) -> (usize, u64) {
    let lines = log_lines(log, message);
    let sum = lines
        .iter()
        .filter_map(|l| l.get(field).and_then(|v| v.as_u64()))
        .sum();
    (lines.len(), sum)
}

/// `saga_restored_total` summed over saga types, from the worker's metrics endpoint (0
/// while it does not answer yet).
fn restored_total(addr: &str) -> u64 {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let mut body = String::new();
    let asked = conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n");
    if asked.is_err() || conn.read_to_string(&mut body).is_err() {
        return 0;
    }
    body.lines()
        .filter(|l| l.starts_with("saga_restored_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::main]
async fn main() {
    let total: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5000);
    let stack = Stack::new();
    let dir = stack.data_dir("sagas");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("parked.yaml"), PARKED).unwrap();
    // A short lease, so the takeover figure is mostly restoring; LEASE_TTL_MS=10000 (the
    // default of a deployment) for runs with many more sagas than cores can start at once.
    let ttl = std::env::var("LEASE_TTL_MS").unwrap_or_else(|_| "1000".into());
    let env = [
        ("SAGAS_DIR", dir.to_str().unwrap()),
        ("LEASE_TTL_MS", ttl.as_str()),
        ("MAX_LIVE_SAGAS", "1000000"),
    ];
    let (mut first, _) = worker_logged(&stack, "first", &env);
    let js = stack.js().await;
    wait_provisioned(&js).await;
    start_saga(&js, TYPE, "warmup", pb::Payload::default()).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let before = rss_kib(first.pid());

    let ids: Vec<String> = (0..total).map(|i| format!("parked-{i}")).collect();
    let started = Instant::now();
    futures::stream::iter(ids.iter())
        .for_each_concurrent(64, |id| {
            let js = js.clone();
            async move { start_saga(&js, TYPE, id, pb::Payload::default()).await }
        })
        .await;
    // Only the sagas not seen running yet are looked at again.
    let mut pending = ids.clone();
    while !pending.is_empty() {
        let records = last_records(&js, TYPE, &pending).await;
        let mut still = Vec::new();
        for (id, (v, s)) in pending.into_iter().zip(records) {
            if !(v >= 1 && s == pb::SagaState::Running) {
                still.push(id);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    println!(
        "{total} sagas started and parked on their step timeout in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Idle actors stop (terminal) or park (running) after 5 s; let them.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = rss_kib(first.pid());
    println!(
        "first worker resident memory: {before} KiB before, {after} KiB with {total} open sagas: {:.2} KiB per open saga",
        (after.saturating_sub(before)) as f64 / total as f64
    );

    if std::env::var("PARK_BENCH_TAKEOVER").is_ok_and(|v| v == "0") {
        return;
    }
    first.sigkill().unwrap();
    // The second worker counts its restores on its metrics endpoint (debug logs of every
    // saga, parsed here, would cost the worker and this program more than the restores).
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut env2 = env.to_vec();
    env2.push(("METRICS_ADDR", metrics.as_str()));
    if std::env::var("PARK_BENCH_KEEP_LOG").is_ok() {
        env2.push((
            "RUST_LOG",
            "info,saga_runtime::saga_actor=debug,saga_runtime::supervisor=debug",
        ));
    }
    let t0 = Instant::now();
    let (second, log) = worker_logged(&stack, "second", &env2);
    let mut acquired = None;
    let restored = loop {
        if acquired.is_none() {
            let (partitions, sagas) = count(&log, "partition acquired", "sagas");
            if partitions == PARTITIONS as usize && sagas as usize > total {
                acquired = Some(t0.elapsed());
            }
        }
        if restored_total(&metrics) > total as u64 {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "not taken over in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let acquired = acquired.unwrap_or(restored);
    println!(
        "takeover of {} open sagas (with the warm-up saga) by a worker with an empty store: \
         every partition acquired {:.2} s after its start, every saga restored {:.2} s after its start",
        total + 1,
        acquired.as_secs_f64(),
        restored.as_secs_f64()
    );
    println!(
        "second worker resident memory after the takeover: {} KiB",
        rss_kib(second.pid())
    );
    if let Ok(keep) = std::env::var("PARK_BENCH_KEEP_LOG") {
        std::fs::copy(&log, &keep).expect("copying the second worker's log");
        println!("second worker's log: {keep}");
    }
}
