//! Horizontal scale with real worker processes: partition leases, fair shares,
//! takeover after SIGKILL, fencing after SIGSTOP, joining under load, and graceful
//! hand-over on SIGTERM.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use saga_e2e::*;
use saga_nats::leases::{cluster_owners, Lease};
use saga_testkit::ProcessGuard;

const SAGA: &str = "OrderCheckout";
const TTL_MS: &str = "3000";

fn worker(stack: &Stack, id: &str, extra: &[(&str, &str)]) -> ProcessGuard {
    let mut env = vec![
        ("WORKER_ID", id),
        ("LEASE_TTL_MS", TTL_MS),
        ("INPUT_ACK_WAIT_SECS", "2"),
    ];
    env.extend_from_slice(extra);
    stack.worker(id, &env)
}

async fn owners(js: &async_nats::jetstream::Context, partitions: u32) -> BTreeMap<u32, Lease> {
    match js.get_key_value("saga_owners").await {
        Ok(kv) => cluster_owners(&kv, partitions).await,
        Err(_) => BTreeMap::new(),
    }
}

fn shares(owners: &BTreeMap<u32, Lease>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for lease in owners.values() {
        *out.entry(lease.worker.clone()).or_default() += 1;
    }
    out
}

/// Waits until the live leases are held by exactly `workers`, evenly (±1), every
/// partition owned; returns how long it took.
async fn wait_balanced(
    js: &async_nats::jetstream::Context,
    partitions: u32,
    workers: &[&str],
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let o = owners(js, partitions).await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let live: BTreeMap<u32, Lease> = o
            .into_iter()
            .filter(|(_, l)| l.expires_at_ms > now)
            .collect();
        let s = shares(&live);
        let names: Vec<&str> = s.keys().map(String::as_str).collect();
        let counts: Vec<usize> = s.values().copied().collect();
        let even = counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0) <= 1;
        if live.len() == partitions as usize && names == workers && even {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "not balanced over {workers:?} within {within:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn place(js: &async_nats::jetstream::Context, prefix: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    for id in &ids {
        start_saga(js, SAGA, id, order(id, "zoe", &[("sku-1", 1, 100)])).await;
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_split_the_partitions_evenly() {
    let _turn = one_at_a_time().await;
    let stack = Stack::new();
    let twelve = [("PARTITIONS", "12")];
    let mut ws = vec![
        worker(&stack, "w1", &twelve),
        worker(&stack, "w2", &twelve),
        worker(&stack, "w3", &twelve),
    ];
    let js = stack.js().await;
    wait_balanced(&js, 12, &["w1", "w2", "w3"], Duration::from_secs(30)).await;
    let s = shares(&owners(&js, 12).await);
    assert_eq!(s.values().copied().collect::<Vec<_>>(), [4, 4, 4]);
    // `sagactl cluster` shows the same.
    let shown = std::process::Command::new(binary("sagactl"))
        .args([
            "cluster",
            "--lease-ttl-ms",
            TTL_MS,
            "--nats-url",
            &stack.nats.url(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(text.contains("3 live worker(s), 12 partitions"), "{text}");
    for w in ["w1", "w2", "w3"] {
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("saga-p") && l.contains(w))
                .count(),
            4,
            "{text}"
        );
    }
    // A worker configured with another partition count refuses to start, saying why.
    let mut odd = worker(&stack, "w4", &[("PARTITIONS", "8")]);
    let status = odd
        .wait_timeout(Duration::from_secs(30))
        .unwrap()
        .expect("w4 exits");
    assert!(!status.success());
    for w in &mut ws {
        stop(w);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_taken_over_and_nothing_is_lost_or_doubled() {
    let _turn = one_at_a_time().await;
    let stack = Stack::new();
    let mut ps = checkout_participants(&stack, &["--latency-ms", "5"]);
    let mut w1 = worker(&stack, "w1", &[]);
    let mut w2 = worker(&stack, "w2", &[]);
    let mut w3 = worker(&stack, "w3", &[]);
    let js = stack.js().await;
    wait_balanced(
        &js,
        PARTITIONS,
        &["w1", "w2", "w3"],
        Duration::from_secs(30),
    )
    .await;
    let mut ids = place(&js, "kill", 20).await;
    w2.sigkill().unwrap();
    let killed = Instant::now();
    ids.extend(place(&js, "after-kill", 20).await);
    let takeover = wait_balanced(&js, PARTITIONS, &["w1", "w3"], Duration::from_secs(30)).await;
    eprintln!(
        "takeover after SIGKILL: {:?} (lease TTL {TTL_MS} ms)",
        killed
            .elapsed()
            .min(takeover + killed.elapsed() - killed.elapsed())
    );
    assert_checkouts_completed_once(&js, &ids).await;
    stop(&mut w1);
    stop(&mut w3);
    for p in &mut ps {
        stop(p);
    }
    assert_checkout_ledgers(&stack, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_is_fenced_when_it_wakes_up() {
    let _turn = one_at_a_time().await;
    let stack = Stack::new();
    let mut ps = checkout_participants(&stack, &["--latency-ms", "5"]);
    let mut w1 = worker(&stack, "w1", &[]);
    let mut w2 = worker(&stack, "w2", &[]);
    let js = stack.js().await;
    wait_balanced(&js, PARTITIONS, &["w1", "w2"], Duration::from_secs(30)).await;
    let mut ids = place(&js, "pause", 20).await;
    w2.sigstop().unwrap();
    // w1 takes everything once w2's leases expire.
    wait_balanced(&js, PARTITIONS, &["w1"], Duration::from_secs(30)).await;
    ids.extend(place(&js, "during-pause", 10).await);
    w2.sigcont().unwrap();
    // w2 finds its leases gone, stops consuming, then gets its fair share back.
    wait_balanced(&js, PARTITIONS, &["w1", "w2"], Duration::from_secs(30)).await;
    ids.extend(place(&js, "after-pause", 10).await);
    assert_checkouts_completed_once(&js, &ids).await;
    stop(&mut w1);
    stop(&mut w2);
    for p in &mut ps {
        stop(p);
    }
    assert_checkout_ledgers(&stack, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_joining_under_load_takes_its_share() {
    let _turn = one_at_a_time().await;
    let stack = Stack::new();
    let mut ps = checkout_participants(&stack, &["--latency-ms", "5"]);
    let mut w1 = worker(&stack, "w1", &[]);
    let mut w2 = worker(&stack, "w2", &[]);
    let mut w3 = worker(&stack, "w3", &[]);
    let js = stack.js().await;
    wait_balanced(
        &js,
        PARTITIONS,
        &["w1", "w2", "w3"],
        Duration::from_secs(30),
    )
    .await;
    let mut ids = place(&js, "load", 20).await;
    let mut w4 = worker(&stack, "w4", &[]);
    ids.extend(place(&js, "join", 20).await);
    wait_balanced(
        &js,
        PARTITIONS,
        &["w1", "w2", "w3", "w4"],
        Duration::from_secs(30),
    )
    .await;
    assert_checkouts_completed_once(&js, &ids).await;
    for w in [&mut w1, &mut w2, &mut w3, &mut w4] {
        stop(w);
    }
    for p in &mut ps {
        stop(p);
    }
    assert_checkout_ledgers(&stack, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_partitions_over_without_waiting_for_the_lease() {
    let _turn = one_at_a_time().await;
    let stack = Stack::new();
    // A long TTL: a hand-over within it proves the leases were given back, not expired.
    let long = [("LEASE_TTL_MS", "60000")];
    let mut w1 = worker(&stack, "w1", &long);
    let mut w2 = worker(&stack, "w2", &long);
    let js = stack.js().await;
    wait_balanced(&js, PARTITIONS, &["w1", "w2"], Duration::from_secs(30)).await;
    stop(&mut w2);
    wait_balanced(&js, PARTITIONS, &["w1"], Duration::from_secs(30)).await;
    stop(&mut w1);
}

/// A held lease is renewed once a quarter of its TTL (a fsynced write each time), not at
/// every heartbeat: with a 10 s TTL the heartbeat runs every 500 ms, and each
/// partition's lease revision moves about every 2.5 s. The worker keeps every
/// partition meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_renewed_every_quarter_ttl_not_every_heartbeat() {
    let _turn = one_at_a_time().await;
    let stack = Stack::new();
    let mut w1 = worker(&stack, "w1", &[("LEASE_TTL_MS", "10000")]);
    let js = stack.js().await;
    wait_balanced(&js, PARTITIONS, &["w1"], Duration::from_secs(30)).await;
    let kv = js.get_key_value("saga_owners").await.unwrap();
    // When each partition's revision was seen to move.
    let mut seen: BTreeMap<u32, Vec<(u64, Instant)>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        for p in 0..PARTITIONS {
            let entry = kv.entry(format!("p{p}")).await.unwrap().expect("lease");
            let lease: Lease = serde_json::from_slice(&entry.value).unwrap();
            assert_eq!(lease.worker, "w1", "partition {p} left w1");
            let moves = seen.entry(p).or_default();
            if moves.last().map(|(r, _)| *r) != Some(entry.revision) {
                moves.push((entry.revision, Instant::now()));
            }
        }
        // Three sightings: two renewals watched from their start.
        if seen.values().all(|m| m.len() >= 3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leases not renewed within 40 s: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (p, moves) in &seen {
        for pair in moves[1..].windows(2) {
            let gap = pair[1].1 - pair[0].1;
            assert!(
                gap >= Duration::from_millis(2000),
                "partition {p}: renewals {gap:?} apart (every heartbeat?): {moves:?}"
            );
        }
    }
    stop(&mut w1);
}
