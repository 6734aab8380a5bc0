//! `sagactl bench`: places orders through the gateway and measures the time from
//! PlaceOrder to the saga's terminal state (followed with WatchSaga).
//!
//! Closed loop (default): `--concurrency` sagas in flight, each starting when one ends.
//! Open loop (`--rate`): sagas start on a fixed schedule; latency counts from each one's
//! scheduled start, so a slow system cannot hide its queueing (coordinated omission).
//! `--concurrency` then caps sagas in flight.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use saga_proto::{OrderItem, PlaceOrderRequest};
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::args::BenchArgs;
use crate::bench_probe;
use crate::client::{connect, rpc_error, Client};
use crate::output::outln;
use crate::render::state_name;
use crate::sagas::print_pretty;
use crate::watch::{until_terminal, Follow};
use crate::Output;

/// How one saga of the run ended.
#[derive(Debug)]
enum Outcome {
    /// Reached a terminal state (its short name) after this long.
    Terminal(String, Duration),
    TimedOut,
    Error(String),
}

#[derive(Debug, Clone)]
struct Plan {
    client: Client,
    run_id: String,
    customer_prefix: String,
    items: Vec<OrderItem>,
    timeout: Duration,
}

impl Plan {
    fn request(&self, i: u64) -> PlaceOrderRequest {
        let items = if self.items.is_empty() {
            vec![OrderItem {
                sku: format!("bench-{}-{i}", self.run_id),
                quantity: 1,
                unit_price_cents: 1500,
            }]
        } else {
            self.items.clone()
        };
        PlaceOrderRequest {
            customer_id: format!("{}{i}", self.customer_prefix),
            items,
            idempotency_key: format!("bench-{}-{i}", self.run_id),
        }
    }

    /// Places order `i` and follows its saga; latency counts from `start`.
    async fn one(mut self, i: u64, start: Instant) -> Outcome {
        let deadline = start + self.timeout;
        let placed =
            match tokio::time::timeout_at(deadline, self.client.place_order(self.request(i))).await
            {
                Err(_) => return Outcome::TimedOut,
                Ok(Err(st)) => return Outcome::Error(rpc_error("PlaceOrder", &st).to_string()),
                Ok(Ok(r)) => r.into_inner(),
            };
        let follow = Follow {
            deadline: Some(deadline),
            not_found_grace: self.timeout,
        };
        match until_terminal(&mut self.client, &placed.saga_id, follow, |_| {}).await {
            Ok(s) => Outcome::Terminal(state_name(s.state), start.elapsed()),
            Err(_) if Instant::now() >= deadline => Outcome::TimedOut,
            Err(e) => Outcome::Error(format!("{e:#}")),
        }
    }
}

pub async fn run(gateway: &str, out: Output, a: BenchArgs) -> Result<ExitCode> {
    let client = connect(gateway).await?;
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| format!("{:x}", d.as_millis()))
        .unwrap_or_else(|_| "0".into());
    let plan = Plan {
        client,
        run_id,
        customer_prefix: a.customer_prefix.clone(),
        items: a.items.clone(),
        timeout: Duration::from_secs(a.timeout),
    };

    let js = match &a.nats_url {
        Some(url) => Some(async_nats::jetstream::new(
            saga_nats::connect_as(url, "sagactl-bench")
                .await
                .with_context(|| format!("connecting to NATS at {url}"))?,
        )),
        None => None,
    };
    let children = match &a.dev_data_dir {
        Some(dir) => bench_probe::dev_children(dir).await?,
        None => BTreeMap::new(),
    };
    let seq_before = match &js {
        Some(js) => Some(bench_probe::stream_sequences(js).await?),
        None => None,
    };
    let usage_before = bench_probe::usage_of(&children);

    let bar = ProgressBar::new(a.sagas);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} sagas  {per_sec}  {msg}",
        )
        .context("progress bar template")?
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));

    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    let started = Instant::now();
    let driver = tokio::spawn(drive(plan, a.sagas, a.concurrency, a.rate, tx));

    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .context("creating the latency histogram")?;
    let mut states: BTreeMap<String, u64> = BTreeMap::new();
    let (mut timed_out, mut errors) = (0u64, 0u64);
    let mut error_samples: Vec<String> = Vec::new();
    while let Some(o) = rx.recv().await {
        match o {
            Outcome::Terminal(state, latency) => {
                hist.saturating_record(latency.as_micros().max(1) as u64);
                *states.entry(state).or_default() += 1;
            }
            Outcome::TimedOut => timed_out += 1,
            Outcome::Error(e) => {
                errors += 1;
                if error_samples.len() < 5 && !error_samples.contains(&e) {
                    error_samples.push(e);
                }
            }
        }
        bar.inc(1);
        bar.set_message(format!(
            "{}{}",
            states
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            if timed_out + errors > 0 {
                format!(", errors {}", timed_out + errors)
            } else {
                String::new()
            }
        ));
    }
    driver.await.context("bench driver")?;
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let usage_after = bench_probe::usage_of(&children);
    let (writes, removals) = match (&js, &seq_before) {
        (Some(js), Some(before)) => {
            let after = bench_probe::stream_sequences(js).await?;
            (
                Some(bench_probe::moved(before, &after)),
                Some(bench_probe::removed(before, &after)),
            )
        }
        _ => (None, None),
    };
    // Measured after the run, on the same server, so the two figures share a day.
    let raw = match (&js, a.raw) {
        (Some(js), true) => Some(
            bench_probe::raw_append_rate(
                js,
                a.raw_messages,
                usize::try_from(a.raw_window).unwrap_or(usize::MAX),
                256,
            )
            .await?,
        ),
        _ => None,
    };

    let terminal: u64 = states.values().sum();
    let per_saga = |n: u64| n as f64 / terminal.max(1) as f64;
    let writes_per_saga = writes.as_ref().map(|w| per_saga(w.values().sum()));
    let removals_per_saga = removals.as_ref().map(|r| per_saga(r.values().sum()));
    let bound = match (raw, writes_per_saga) {
        (Some(r), Some(w)) if w > 0.0 => Some(r / w),
        _ => None,
    };
    let cpu: BTreeMap<String, f64> = usage_after
        .iter()
        .map(|(name, after)| {
            let before = usage_before.get(name).map_or(Duration::ZERO, |u| u.cpu);
            let secs = after.cpu.saturating_sub(before).as_secs_f64();
            (name.clone(), secs * 1000.0 / terminal.max(1) as f64)
        })
        .collect();
    let throughput = terminal as f64 / elapsed.as_secs_f64().max(1e-9);
    let ms = |us: u64| us as f64 / 1000.0;
    let (p50, p90, p99, max, mean) = if hist.is_empty() {
        (0.0, 0.0, 0.0, 0.0, 0.0)
    } else {
        (
            ms(hist.value_at_quantile(0.50)),
            ms(hist.value_at_quantile(0.90)),
            ms(hist.value_at_quantile(0.99)),
            ms(hist.max()),
            hist.mean() / 1000.0,
        )
    };
    if out.json {
        print_pretty(&json!({
            "sagas": a.sagas,
            "concurrency": a.concurrency,
            "rate": a.rate,
            "mode": if a.rate.is_some() { "open" } else { "closed" },
            "elapsedSecs": elapsed.as_secs_f64(),
            "sagasPerSec": throughput,
            "latencyMs": { "p50": p50, "p90": p90, "p99": p99, "max": max, "mean": mean },
            "states": states,
            "timedOut": timed_out,
            "errors": errors,
            "errorSamples": error_samples,
            "durableWritesPerSaga": writes_per_saga,
            "durableWritesByStream": writes.as_ref().map(|w| w
                .iter()
                .map(|(k, v)| (k.clone(), per_saga(*v)))
                .collect::<BTreeMap<_, _>>()),
            "removalsPerSaga": removals_per_saga,
            "removalsByStream": removals.as_ref().map(|r| r
                .iter()
                .map(|(k, v)| (k.clone(), per_saga(*v)))
                .collect::<BTreeMap<_, _>>()),
            "rawAppendsPerSec": raw,
            "brokerBoundSagasPerSec": bound,
            "cpuMsPerSaga": cpu,
            "rssBytes": usage_after.iter().map(|(k, u)| (k.clone(), u.rss)).collect::<BTreeMap<_, _>>(),
        }));
    } else {
        let mode = match a.rate {
            Some(r) => format!("open loop at {r}/s, at most {} in flight", a.concurrency),
            None => format!("closed loop, {} in flight", a.concurrency),
        };
        outln!("sagas       {} ({mode})", a.sagas);
        outln!("elapsed     {:.2} s", elapsed.as_secs_f64());
        outln!("throughput  {throughput:.1} sagas/s (terminal)");
        outln!(
            "latency     p50 {p50:.1} ms  p90 {p90:.1} ms  p99 {p99:.1} ms  max {max:.1} ms  \
             (PlaceOrder to terminal state)"
        );
        let mut counts: Vec<String> = states.iter().map(|(k, v)| format!("{k} {v}")).collect();
        if timed_out > 0 {
            counts.push(format!("timed out {timed_out}"));
        }
        if errors > 0 {
            counts.push(format!("errors {errors}"));
        }
        outln!("outcomes    {}", counts.join(", "));
        for e in &error_samples {
            outln!("  error: {e}");
        }
        if let (Some(w), Some(by)) = (writes_per_saga, &writes) {
            let parts: Vec<String> = by
                .iter()
                .map(|(k, v)| format!("{k} {:.2}", per_saga(*v)))
                .collect();
            outln!(
                "writes      {w:.2} durable JetStream writes per saga ({})",
                parts.join(", ")
            );
        }
        if let (Some(n), Some(by)) = (removals_per_saga, &removals) {
            let parts: Vec<String> = by
                .iter()
                .map(|(k, v)| format!("{k} {:.2}", per_saga(*v)))
                .collect();
            outln!(
                "removals    {n:.2} messages that left a stream per saga (trimmed, purged, replaced) ({})",
                parts.join(", ")
            );
        }
        if let Some(r) = raw {
            outln!(
                "raw         {r:.0} fsynced appends/s on the same server ({} in flight)",
                a.raw_window
            );
        }
        if let Some(b) = bound {
            outln!(
                "bound       {b:.1} sagas/s from the broker alone; this run is {:.0} % of it",
                throughput / b * 100.0
            );
        }
        if !cpu.is_empty() {
            let parts: Vec<String> = cpu.iter().map(|(k, ms)| format!("{k} {ms:.2}")).collect();
            outln!("cpu         ms per saga: {}", parts.join(", "));
            let total: f64 = cpu.values().sum();
            outln!("cpu total   {total:.2} ms per saga");
            let rss: Vec<String> = usage_after
                .iter()
                .map(|(k, u)| format!("{k} {:.1}", u.rss as f64 / 1_048_576.0))
                .collect();
            outln!("rss         MiB at the end: {}", rss.join(", "));
        }
    }
    Ok(if timed_out + errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Starts the sagas (closed or open loop) and sends each outcome to `tx`.
async fn drive(
    plan: Plan,
    n: u64,
    concurrency: u64,
    rate: Option<f64>,
    tx: mpsc::UnboundedSender<Outcome>,
) {
    let mut tasks = JoinSet::new();
    match rate {
        None => {
            let next = Arc::new(AtomicU64::new(0));
            for _ in 0..concurrency.min(n) {
                let (plan, next, tx) = (plan.clone(), next.clone(), tx.clone());
                tasks.spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        let o = plan.clone().one(i, Instant::now()).await;
                        if tx.send(o).is_err() {
                            break;
                        }
                    }
                });
            }
        }
        Some(rate) => {
            let permits = Arc::new(Semaphore::new(
                usize::try_from(concurrency).unwrap_or(usize::MAX),
            ));
            let period = Duration::from_secs_f64(1.0 / rate);
            let t0 = Instant::now();
            for i in 0..n {
                let scheduled = t0 + period.mul_f64(i as f64);
                tokio::time::sleep_until(scheduled).await;
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let (plan, tx) = (plan.clone(), tx.clone());
                tasks.spawn(async move {
                    let o = plan.one(i, scheduled).await;
                    drop(permit);
                    let _ = tx.send(o);
                });
            }
        }
    }
    drop(tx);
    while tasks.join_next().await.is_some() {}
}
