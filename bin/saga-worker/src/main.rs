//! `saga-worker`: loads the saga definitions, provisions JetStream, and runs every saga
//! of the partitions it consumes, resuming unfinished ones from its local store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use saga_core::definition::SagaDefinition;
use saga_core::{Clock, SystemClock};
use saga_nats::leases::{LeaseEvent, LeaseSettings, Leases};
use saga_nats::{ConsumerSettings, NatsConsumer, NatsJournal, NatsPublisher, ProvisionConfig};
use saga_ports::SagaStore;
use saga_runtime::{Context, FaultPoint, RuntimeConfig, Worker};
use saga_store_sled::SledStore;
use tracing::{error, info, warn};

/// Runs sagas from NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "saga-worker", version, about)]
struct Args {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Directory of the worker's local store.
    #[arg(long, env = "DATA_DIR", default_value = "data/worker")]
    data_dir: PathBuf,
    /// Directory of saga definitions (*.yaml).
    #[arg(long, env = "SAGAS_DIR", default_value = "sagas")]
    sagas: PathBuf,
    /// Partition count of the deployment.
    #[arg(long, env = "PARTITIONS", default_value_t = 16)]
    partitions: u32,
    /// How long processed input ids are remembered, in seconds.
    #[arg(long, env = "INBOX_WINDOW_SECS", default_value_t = 24 * 3600)]
    inbox_window_secs: u64,
    /// Seconds before an unacknowledged input is delivered again (the partition
    /// consumers' ack wait); also the first step of their redelivery backoff.
    #[arg(long, env = "INPUT_ACK_WAIT_SECS", default_value_t = 30)]
    input_ack_wait_secs: u64,
    /// Deliveries of one input before it goes to the dead-letter stream.
    #[arg(long, env = "INPUT_MAX_DELIVER", default_value_t = 10)]
    input_max_deliver: i64,
    /// This worker's id in the cluster (default: a random id kept in the data dir).
    #[arg(long, env = "WORKER_ID")]
    worker_id: Option<String>,
    /// How long a partition lease lives without renewal, in milliseconds: the takeover
    /// time after a worker dies. Heartbeats run every quarter of it.
    #[arg(long, env = "LEASE_TTL_MS", default_value_t = 10_000)]
    lease_ttl_ms: u64,
    /// Seconds to let in-flight transitions finish on SIGTERM.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    shutdown_grace_secs: u64,
    /// Fault injection for tests: `after-commit:N` or `after-publish:N` sends SIGKILL to
    /// this process at the N-th input reaching that point.
    #[arg(long, env = "SAGA_CRASH_AT", hide = true)]
    crash_at: Option<String>,
}

#[tokio::main]
async fn main() {
    saga_telemetry::init("saga-worker");
    if let Err(e) = run(Args::parse()).await {
        error!("{e:#}");
        eprintln!("saga-worker: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let definitions = load_definitions(&args.sagas)?;
    info!(sagas = ?definitions.keys().collect::<Vec<_>>(), "definitions loaded");

    let client = saga_nats::connect_as(&args.nats_url, "saga-worker")
        .await
        .with_context(|| format!("connecting to NATS at {}", args.nats_url))?;
    let js = async_nats::jetstream::new(client);
    let ack_wait = Duration::from_secs(args.input_ack_wait_secs.max(1));
    saga_nats::provision(
        &js,
        &ProvisionConfig {
            partitions: args.partitions,
            partition_consumer: ConsumerSettings {
                ack_wait,
                max_deliver: args.input_max_deliver,
                backoff: vec![ack_wait, ack_wait * 2, ack_wait * 4],
                ..ConsumerSettings::default()
            },
            ..ProvisionConfig::default()
        },
    )
    .await
    .context("provisioning JetStream")?;

    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let store = Arc::new(
        SledStore::open(args.data_dir.join("store"))
            .with_context(|| format!("opening the store in {}", args.data_dir.display()))?,
    );
    let worker_id = match &args.worker_id {
        Some(id) => {
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                bail!("--worker-id `{id}`: use letters, digits, `-` and `_`");
            }
            id.clone()
        }
        None => store.worker_id().to_string(),
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let ctx = Context {
        definitions: Arc::new(definitions),
        journal: Arc::new(NatsJournal::new(js.clone())),
        publisher: Arc::new(NatsPublisher::new(js.clone())),
        store: store.clone(),
        clock: clock.clone(),
        config: RuntimeConfig {
            partitions: args.partitions,
            worker_id: worker_id.clone(),
            max_deliver: args.input_max_deliver.max(1) as u64,
            ..RuntimeConfig::default()
        },
        fault_hook: args.crash_at.as_deref().map(fault_hook).transpose()?,
    };
    let worker = Worker::new(ctx).await?;
    let ttl = Duration::from_millis(args.lease_ttl_ms.max(300));
    let mut leases = Leases::new(
        &js,
        LeaseSettings {
            worker_id: worker_id.clone(),
            partitions: args.partitions,
            ttl,
        },
    )
    .await
    .context("joining the cluster")?;
    info!(%worker_id, partitions = args.partitions, nats = %args.nats_url, lease_ttl = ?ttl, "saga-worker running");

    let window = Duration::from_secs(args.inbox_window_secs);
    let pruner = tokio::spawn(prune_inbox(store.clone(), clock.clone(), window));
    let grace = Duration::from_secs(args.shutdown_grace_secs);
    // Frequent heartbeats make joins and departures visible quickly whatever the TTL.
    let heartbeat = (ttl / 4).min(Duration::from_millis(500));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let events = leases.tick(clock.now()).await;
        // Everything to give up goes at once: releasing one partition after the other
        // would hold back the next heartbeat and let the other leases expire.
        let lost: Vec<u32> = events
            .iter()
            .filter_map(|e| match e {
                LeaseEvent::Lost(p) | LeaseEvent::Release(p) => Some(*p),
                LeaseEvent::Acquired(_) => None,
            })
            .collect();
        if !lost.is_empty() {
            worker.release_many(&lost, grace).await;
        }
        for event in events {
            match event {
                LeaseEvent::Acquired(p) => match NatsConsumer::partition(&js, p).await {
                    Ok(consumer) => {
                        if let Err(e) = worker.acquire(p, Box::new(consumer)).await {
                            warn!(partition = p, error = %e, "taking over the partition failed; giving it back");
                            worker.release(p, grace).await;
                            leases.relinquish_now(p).await;
                        }
                    }
                    Err(e) => {
                        warn!(partition = p, error = %e, "binding the partition consumer failed; giving it back");
                        leases.relinquish_now(p).await;
                    }
                },
                LeaseEvent::Lost(_) => {}
                LeaseEvent::Release(p) => leases.relinquish(p).await,
            }
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(heartbeat) => {}
        }
    }
    info!("shutting down: finishing in-flight transitions, giving the partitions back");
    pruner.abort();
    worker.release_all(grace).await;
    leases.leave().await;
    worker.shutdown(grace).await;
    store.flush().await?;
    Ok(())
}

fn load_definitions(dir: &Path) -> Result<BTreeMap<String, Arc<SagaDefinition>>> {
    let defs = saga_core::definition::load_dir(dir).map_err(anyhow::Error::msg)?;
    Ok(defs.into_iter().map(|(k, v)| (k, Arc::new(v))).collect())
}

fn fault_hook(spec: &str) -> Result<Arc<dyn Fn(FaultPoint) + Send + Sync>> {
    let (point, n) = spec
        .split_once(':')
        .with_context(|| format!("SAGA_CRASH_AT `{spec}`: expected POINT:N"))?;
    let point = match point {
        "after-commit" => FaultPoint::AfterCommit,
        "after-publish" => FaultPoint::AfterPublish,
        other => bail!("SAGA_CRASH_AT: unknown point `{other}` (after-commit, after-publish)"),
    };
    let n: u64 = n.parse().context("SAGA_CRASH_AT: N must be a number")?;
    let hits = AtomicU64::new(0);
    warn!(
        ?point,
        n, "fault injection armed: this process will SIGKILL itself"
    );
    Ok(Arc::new(move |at| {
        if at == point && hits.fetch_add(1, Ordering::SeqCst) + 1 == n {
            eprintln!("saga-worker: injected crash at {at:?}");
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
        }
    }))
}

async fn prune_inbox(store: Arc<SledStore>, clock: Arc<dyn Clock>, window: Duration) {
    loop {
        tokio::time::sleep(Duration::from_secs(600).min(window)).await;
        let before = clock.now().saturating_sub(window.as_millis() as u64);
        match store.prune_inbox(before) {
            Ok(n) if n > 0 => info!(pruned = n, "inbox window applied"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "pruning the inbox failed"),
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
