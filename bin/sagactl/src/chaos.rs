//! `sagactl chaos`: a local stack of real processes (nats-server, workers, the order
//! participants, the gateway) loaded with orders while its processes are killed and
//! paused, then checked: nothing acknowledged is lost, nothing is done twice, every
//! saga ends and says so once (docs/reliability.md).
//!
//! The run: start the stack in a fresh data directory; place the orders on a fixed
//! schedule through a client that retries with the same idempotency key; meanwhile do
//! the planned faults one after the other (and restart whatever ends on its own,
//! recording it); wait until every saga is terminal; send every acknowledged key again;
//! read the journals of cancelled sagas and SAGA_EVENTS; stop the stack;
//! read the participants' ledgers; judge the invariants. Every choice comes from
//! `--seed` ([`plan`]); the judgement is a pure function of what was read ([`check`]).

mod check;
mod faults;
mod gather;
mod load;
mod plan;
mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::args::{ChaosArgs, FaultKind};
use crate::output::outln;
use crate::stack::{free_ports, say, Layout, Signals, Stack};
use crate::Output;

/// The participants of the order saga.
const PARTICIPANTS: [&str; 3] = ["inventory", "payment", "orders"];
/// Units every SKU starts with: far more than any run orders, so no order is refused
/// for stock and every compensation is one the suite asked for.
const INITIAL_STOCK: &str = "1000000000";
/// How long the domain events of terminal sagas get to show up in SAGA_EVENTS.
const EVENTS_SETTLE: Duration = Duration::from_secs(30);
/// Exit status when an invariant is broken (1 is an error of the run itself).
const BROKEN: u8 = 4;

/// Where the run's own lines go: stdout, or stderr when stdout is for the JSON summary.
#[derive(Debug, Clone, Copy)]
pub struct Voice {
    to_stderr: bool,
}

impl Voice {
    pub fn line(self, line: std::fmt::Arguments<'_>) {
        say(self.to_stderr, line);
    }
}

/// A task that is aborted when the run is dropped (Ctrl-C) or done with it.
struct Aborting<T>(JoinHandle<T>);

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub async fn run(out: Output, a: ChaosArgs) -> Result<ExitCode> {
    let voice = Voice {
        to_stderr: out.json,
    };
    let mut kinds: Vec<FaultKind> = if a.fault_kinds.is_empty() {
        FaultKind::ALL.to_vec()
    } else {
        a.fault_kinds.clone()
    };
    kinds.sort();
    kinds.dedup();
    let data = fresh_data_dir(a.data_dir.as_deref(), a.seed)?;
    let ports = free_ports(2)?;
    let mut layout = Layout::new(
        &a.stack,
        &PARTICIPANTS,
        &data,
        ports[0],
        SocketAddr::from(([127, 0, 0, 1], ports[1])),
        a.workers,
    )?;
    layout
        .worker_env
        .push(("LEASE_TTL_MS".into(), a.lease_ttl_ms.to_string()));
    layout.worker_env.extend(a.worker_env.iter().cloned());
    layout.participant_args.push((
        "inventory".into(),
        vec!["--initial-stock".into(), INITIAL_STOCK.into()],
    ));
    let data = layout.data.clone();

    let mut signals = Signals::new()?;
    let (stack, exits) = Stack::new(&layout.logs());
    let stack = Arc::new(Mutex::new(if out.json {
        stack.messages_on_stderr()
    } else {
        stack
    }));
    voice.line(format_args!(
        "sagactl chaos: seed {}, {} orders at {}/s, {} workers, {} faults ({}), lease TTL {} ms",
        a.seed,
        a.orders,
        a.rate,
        a.workers,
        a.faults,
        kinds
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", "),
        a.lease_ttl_ms
    ));
    voice.line(format_args!(
        "data and logs in {} (logs/<process>.log)",
        data.display()
    ));

    let outcome = tokio::select! {
        r = chaos(&a, &kinds, &layout, stack.clone(), exits, voice) => r,
        name = signals.recv() => Err(anyhow!("{name}: run interrupted")),
    };
    // Whatever happened, no child outlives the run (a no-op when it already stopped).
    stack.lock().await.stop().await;
    let report = outcome?;

    let text = report.text();
    let summary = report.json();
    std::fs::write(data.join("report.txt"), &text)
        .with_context(|| format!("writing {}", data.join("report.txt").display()))?;
    std::fs::write(
        data.join("summary.json"),
        serde_json::to_string_pretty(&summary).context("encoding the summary")?,
    )
    .with_context(|| format!("writing {}", data.join("summary.json").display()))?;
    if out.json {
        eprint!("\n{text}");
        crate::sagas::print_pretty(&summary);
    } else {
        outln!();
        crate::output::out!("{text}");
    }
    Ok(if report.pass() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(BROKEN)
    })
}

/// The run's data directory: the one given (new or empty) or a new one under
/// `target/chaos/` (ignored by git, removed by `cargo clean`).
fn fresh_data_dir(given: Option<&Path>, seed: u64) -> Result<PathBuf> {
    let dir = match given {
        Some(d) => d.to_path_buf(),
        None => {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            PathBuf::from("target/chaos").join(format!("seed-{seed}-{secs}"))
        }
    };
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        if entries.next().is_some() {
            bail!(
                "--data-dir {} is not empty: a chaos run judges everything the stack holds, \
                 so it needs a new directory",
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The run itself, from the start of the stack to the verdicts (the stack is stopped
/// before the ledgers are read).
async fn chaos(
    a: &ChaosArgs,
    kinds: &[FaultKind],
    layout: &Layout,
    stack: Arc<Mutex<Stack>>,
    mut exits: tokio::sync::mpsc::UnboundedReceiver<crate::stack::Exited>,
    voice: Voice,
) -> Result<report::Report> {
    let launched = {
        let mut s = stack.lock().await;
        let (_, launched) = layout.start(&mut s, &mut exits).await?;
        launched
    };
    let gateway = format!("http://{}", layout.grpc_addr);
    let client = load::lazy_client(&gateway)?;
    voice.line(format_args!(
        "stack ready: gRPC on {gateway}, NATS on {}",
        layout.nats_url()
    ));

    let orders = plan::orders(a.seed, a.orders, a.decline_share, a.cancel_share, a.skus);
    let window = Duration::from_secs_f64(a.orders as f64 / a.rate);
    let fault_plan = plan::faults(
        a.seed,
        &plan::FaultSpace {
            count: a.faults,
            kinds: kinds.to_vec(),
            workers: launched.workers.len(),
            participants: launched.participants.len(),
            window,
            lease_ttl: Duration::from_millis(a.lease_ttl_ms),
        },
    );
    let faults_planned = fault_plan.len();

    let t0 = Instant::now();
    let exits_seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let outages = faults::Outages::default();
    let _restarter = Aborting(tokio::spawn(faults::restart_exited(
        stack.clone(),
        exits,
        t0,
        voice,
        exits_seen.clone(),
        outages.clone(),
    )));
    let mut injector = Aborting(tokio::spawn(faults::inject(
        stack.clone(),
        launched.clone(),
        layout.nats_addr(),
        fault_plan,
        t0,
        voice,
        outages,
    )));
    let progress = Arc::new(load::Progress::default());
    let ticker = Aborting(tokio::spawn({
        let progress = progress.clone();
        let n = a.orders;
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tick.tick().await;
                voice.line(format_args!(
                    "load at {:.0} s: {}/{n} placed, {} answered or given up, {} retries",
                    t0.elapsed().as_secs_f64(),
                    progress.started.load(Ordering::Relaxed),
                    progress.answered.load(Ordering::Relaxed),
                    progress.retries.load(Ordering::Relaxed),
                ));
            }
        }
    }));

    let records = load::drive(
        client.clone(),
        orders,
        a.rate,
        Duration::from_secs(a.ack_deadline_secs),
        t0,
        progress,
    )
    .await?;
    let load_took = t0.elapsed();
    drop(ticker);
    voice.line(format_args!(
        "load done in {:.1} s; waiting for the remaining faults",
        load_took.as_secs_f64()
    ));
    let fault_records = (&mut injector.0).await.context("the fault injector")?;
    let faults_over_at = fault_records
        .iter()
        .map(|f| f.over_at)
        .max()
        .unwrap_or_default();

    voice.line(format_args!("waiting for every saga to end"));
    let acked: Vec<String> = records
        .iter()
        .filter_map(|r| r.saga_id().map(str::to_string))
        .collect();
    let timeout = Duration::from_secs(a.quiesce_timeout_secs);
    let q = gather::quiesce(&client, &acked, timeout, voice).await;
    if q.reached {
        voice.line(format_args!(
            "every saga terminal {:.1} s after the load and the last fault",
            q.took.as_secs_f64()
        ));
    } else {
        voice.line(format_args!(
            "quiescence not reached within {timeout:?}; judging what there is"
        ));
    }
    voice.line(format_args!(
        "sending {} acknowledged keys again",
        acked.len()
    ));
    let replays = gather::replays(&client, &records).await;
    let cancel_journals = gather::cancel_journals(&client, &records).await;
    voice.line(format_args!("reading SAGA_EVENTS and SAGA_DLQ"));
    let nats_url = layout.nats_url();
    let js = async_nats::connect(&nats_url)
        .await
        .map(async_nats::jetstream::new)
        .with_context(|| format!("connecting to NATS at {nats_url}"));
    let (events, events_error, dead_letters, order_events) = match js {
        Ok(js) => {
            let (events, error) = match gather::events(&js, &q.sagas, EVENTS_SETTLE).await {
                Ok(e) => (e, None),
                Err(e) => (Vec::new(), Some(format!("{e:#}"))),
            };
            let dead = gather::dead_letters(&js)
                .await
                .map_err(|e| format!("{e:#}"));
            let order_events = gather::order_events(&js)
                .await
                .map_err(|e| format!("{e:#}"));
            (events, error, dead, order_events)
        }
        Err(e) => (
            Vec::new(),
            Some(format!("{e:#}")),
            Err(format!("{e:#}")),
            Err(format!("{e:#}")),
        ),
    };

    // The ledgers are sled databases their participants hold open: stop everything.
    drop(_restarter);
    stack.lock().await.stop().await;
    let mut ledgers = Vec::new();
    for name in PARTICIPANTS {
        ledgers.push((
            name.to_string(),
            gather::ledger(&layout.participant_dir(name)).await,
        ));
    }
    let exits = exits_seen.lock().map(|e| e.clone()).unwrap_or_default();

    let observed = check::Observed {
        orders: records,
        sagas: q.sagas,
        replays,
        events,
        events_error,
        ledgers,
        order_events_error: order_events.as_ref().err().cloned(),
        order_events: order_events.unwrap_or_default(),
        cancel_journals,
        exits: exits.clone(),
    };
    let verdicts = check::evaluate(&observed);
    Ok(report::Report {
        seed: a.seed,
        orders: a.orders,
        rate: a.rate,
        workers: a.workers,
        lease_ttl_ms: a.lease_ttl_ms,
        data_dir: layout.data.clone(),
        load_took,
        faults_planned,
        faults: fault_records,
        faults_over_at,
        quiescence_reached: q.reached,
        quiescence_took: q.took,
        quiescence_timeout: timeout,
        quiescence_error: q.last_error,
        states: report::states(&observed.sagas),
        dead_letters,
        verdicts,
        exits,
        records: observed.orders,
    })
}
