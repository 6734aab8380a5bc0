//! `saga-worker`: loads the saga definitions, provisions JetStream, and runs every saga
//! of the partitions it consumes, resuming unfinished ones from its local store.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// mimalloc rather than glibc's allocator: a restore and a transition allocate many small
/// short-lived buffers on two tokio threads, and glibc's malloc and free were a sixth of
/// the worker's CPU during a takeover (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use saga_core::definition::SagaDefinition;
use saga_core::{Clock, SystemClock};
use saga_nats::leases::{LeaseSettings, Leases};
use saga_nats::membership::{MembershipSettings, PartitionOwner};
use saga_nats::{
    ConsumerSettings, NatsConsumer, NatsDefinitionRegistry, NatsJournal, NatsOpenSagas,
    NatsPublisher, NatsWaitingInputs, ProvisionConfig,
};
use saga_ports::{SagaStore, StoreError};
use saga_runtime::{Context, FaultPoint, Limits, RuntimeConfig, Worker};
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
    /// Replicas of the streams and buckets this process creates when they are missing
    /// (1 on a single server, 3 in production clusters). Existing ones keep theirs.
    #[arg(long, env = "NATS_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=5))]
    replicas: u16,
    /// Seconds before an unacknowledged input is delivered again (the partition
    /// consumers' ack wait); also the first step of their redelivery backoff.
    #[arg(long, env = "INPUT_ACK_WAIT_SECS", default_value_t = 30)]
    input_ack_wait_secs: u64,
    /// Failed attempts to apply one input before it goes to the dead-letter stream
    /// (deliveries never tried, and inputs already applied, do not count).
    #[arg(long, env = "INPUT_MAX_DELIVER", default_value_t = 10)]
    input_max_deliver: u64,
    /// Inputs in flight per worker (back-pressure towards the broker).
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 1024)]
    max_in_flight: usize,
    /// Sagas restored from the journal at the same time (takeover, restarts).
    #[arg(long, env = "MAX_CONCURRENT_RESTORES", default_value_t = 32)]
    max_concurrent_restores: usize,
    /// A saga restored from the journal (takeover, restarts) is replayed and checked
    /// against its journalled events when it has at most this many records (0: never);
    /// a mismatch stops it with a non-determinism error.
    #[arg(long, env = "VERIFY_REPLAY_MAX_RECORDS", default_value_t = 1_000)]
    verify_replay_max_records: u64,
    /// Saga actors alive at once; past it, new starts wait in the stream. Parked
    /// sagas (see --park-after-ms) have no actor and do not count.
    #[arg(long, env = "MAX_LIVE_SAGAS", default_value_t = 16_384)]
    max_live_sagas: usize,
    /// Milliseconds a running saga's actor stays idle, with nothing left to publish,
    /// before the saga is parked: the actor stops and the worker keeps only the saga's
    /// id, type and next deadline until its next input or deadline. 0: never parked.
    #[arg(long, env = "PARK_AFTER_MS", default_value_t = 5_000)]
    park_after_ms: u64,
    /// Memory the local store may keep of what it holds, in MiB (sled's page cache;
    /// the rest is read back from its files when a parked saga wakes).
    #[arg(long, env = "STORE_CACHE_MB", default_value_t = 64)]
    store_cache_mb: u64,
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
    /// Register the loaded definitions without making them the latest version of their
    /// type: new sagas keep starting on the cluster's latest (a worker rolled back to an
    /// older file, or one brought up early with a new file).
    #[arg(long, env = "SAGA_NOT_LATEST")]
    not_latest: bool,
    /// How often the registry's latest version of each type is read: a version made
    /// latest (`sagactl def push`) is what new sagas start on within this time, without
    /// a restart. 0: only at start.
    #[arg(long, env = "DEFINITIONS_POLL_MS", default_value_t = 2_000)]
    definitions_poll_ms: u64,
    /// How often the worker holding partition 0 purges from SAGA_INBOX and
    /// SAGA_COMMANDS what their consumers have settled (acked or terminated); those
    /// streams keep messages until then. 0: never (the streams then only grow).
    #[arg(long, env = "SAGA_TRIM_INTERVAL_MS", default_value_t = 1_000)]
    trim_interval_ms: u64,
    #[command(flatten)]
    metrics: saga_telemetry::metrics::MetricsArgs,
}

#[tokio::main]
async fn main() {
    let _telemetry = saga_telemetry::init("saga-worker");
    if let Err(e) = run(Args::parse()).await {
        error!("{e:#}");
        eprintln!("saga-worker: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let files = load_definitions(&args.sagas)?;
    info!(sagas = ?files.iter().map(|(d, _)| &d.name).collect::<Vec<_>>(), "definitions loaded");

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
                // No server-side limit: a delivery is never stranded. The worker counts
                // real failed attempts itself (--input-max-deliver).
                max_deliver: -1,
                backoff: vec![ack_wait, ack_wait * 2, ack_wait * 4],
                ..ConsumerSettings::default()
            },
            replicas: usize::from(args.replicas),
            ..ProvisionConfig::default()
        },
    )
    .await
    .context("provisioning JetStream")?;
    // Every version of every file in the cluster; new sagas start on each type's latest.
    let registry = Arc::new(NatsDefinitionRegistry::new(js.clone()));
    let registered = saga_runtime::versions::register(registry, files, !args.not_latest)
        .await
        .context("registering the definition versions")?;
    for (t, def) in &registered.latest {
        info!(saga_type = %t, version = %def.version(), "new sagas start on this version");
    }
    let definitions = registered.latest;

    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let store = Arc::new(open_store(&args.data_dir, args.store_cache_mb)?);
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
    // Persisted deadlines are stamped on the broker's time base, measured from the
    // heartbeats: a takeover by a worker whose clock is off keeps the saga's timeouts.
    let broker_clock = Arc::new(saga_nats::BrokerClock::new());
    let clock: Arc<dyn Clock> = broker_clock.clone();
    let config = RuntimeConfig {
        partitions: args.partitions,
        worker_id: worker_id.clone(),
        max_deliver: args.input_max_deliver.max(1),
        max_in_flight: args.max_in_flight.max(1),
        max_concurrent_restores: args.max_concurrent_restores.max(1),
        max_live_sagas: args.max_live_sagas.max(1),
        park_after: Duration::from_millis(args.park_after_ms),
        verify_replay_max_records: args.verify_replay_max_records,
        ..RuntimeConfig::default()
    };
    let ctx = Context {
        definitions: Arc::new(definitions),
        versions: Arc::new(registered.versions),
        journal: Arc::new(NatsJournal::new(js.clone())),
        publisher: Arc::new(NatsPublisher::new(js.clone())),
        store: store.clone(),
        open: Arc::new(NatsOpenSagas::new(js.clone())),
        waiting: Some(Arc::new(NatsWaitingInputs::new(js.clone()))),
        clock: clock.clone(),
        limits: Limits::new(&config),
        config,
        fault_hook: args.crash_at.as_deref().map(fault_hook).transpose()?,
    };
    let saga_types: Vec<String> = ctx.definitions.keys().cloned().collect();
    if args.definitions_poll_ms > 0 {
        let versions = ctx.versions.clone();
        let every = Duration::from_millis(args.definitions_poll_ms);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                versions.refresh_latest().await;
            }
        });
    }
    args.metrics.install("saga-worker")?;
    if args.metrics.enabled() {
        saga_runtime::metrics::enable_sampler();
        let sampler = saga_nats::sampler::SamplerSettings::new(args.partitions);
        saga_nats::sampler::spawn(js.clone(), sampler);
    }
    let worker = Arc::new(Worker::new(ctx).await?);
    let trimmer = (args.trim_interval_ms > 0).then(|| {
        spawn_trimmer(
            js.clone(),
            worker.clone(),
            Duration::from_millis(args.trim_interval_ms),
        )
    });
    let ttl = Duration::from_millis(args.lease_ttl_ms.max(300));
    let leases = Leases::new(
        &js,
        LeaseSettings {
            worker_id: worker_id.clone(),
            partitions: args.partitions,
            ttl,
        },
    )
    .await
    .context("joining the cluster")?
    .with_clock(broker_clock)
    .with_saga_types(saga_types);
    info!(%worker_id, partitions = args.partitions, nats = %args.nats_url, lease_ttl = ?ttl, "saga-worker running");

    let grace = Duration::from_secs(args.shutdown_grace_secs);
    // Frequent heartbeats make joins and departures visible quickly whatever the TTL.
    let heartbeat = (ttl / 4).min(Duration::from_millis(500));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let owner = Arc::new(Owner {
        worker: worker.clone(),
        js: js.clone(),
    });
    let membership = tokio::spawn(saga_nats::membership::run(
        leases,
        owner,
        MembershipSettings { heartbeat, grace },
        stopped,
    ));
    shutdown_signal().await;
    info!("shutting down: finishing in-flight transitions, giving the partitions back");
    let _ = stop.send(true);
    let _ = membership.await;
    if let Some(trimmer) = trimmer {
        trimmer.abort();
        let _ = trimmer.await;
    }
    match Arc::try_unwrap(worker) {
        Ok(worker) => worker.shutdown(grace).await,
        Err(_) => warn!("worker still in use at shutdown"),
    }
    store.flush().await?;
    Ok(())
}

/// Trims SAGA_INBOX and SAGA_COMMANDS every `every` while this worker holds partition 0
/// (one trimmer in the cluster at a time, give or take a takeover).
fn spawn_trimmer(
    js: async_nats::jetstream::Context,
    worker: Arc<Worker>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut trimmer = saga_nats::trim::Trimmer::new(js);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !worker.held().await.contains(&0) {
                continue;
            }
            match trimmer.trim().await {
                Ok(report) if report.purged > 0 => {
                    tracing::debug!(
                        purged = report.purged,
                        requests = report.requests,
                        "streams trimmed"
                    )
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "trimming SAGA_INBOX/SAGA_COMMANDS failed; trying again")
                }
            }
        }
    })
}

/// The worker side of membership: bind the partition's consumer and take it over.
struct Owner {
    worker: Arc<Worker>,
    js: async_nats::jetstream::Context,
}

#[async_trait::async_trait]
impl PartitionOwner for Owner {
    async fn take(&self, partition: u32) -> Result<(), String> {
        let consumer = NatsConsumer::partition(&self.js, partition)
            .await
            .map_err(|e| format!("binding the partition consumer: {e}"))?;
        self.worker
            .acquire(partition, Box::new(consumer))
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    async fn release(&self, partitions: &[u32], grace: Duration) {
        self.worker.release_many(partitions, grace).await;
    }
}

/// Opens the worker's store. The store is a copy of the journal: when it cannot be
/// opened as corrupt (sled after an abrupt stop, or a layout this build cannot read), it
/// is moved aside and the worker starts empty; sagas are restored from the journal.
fn open_store(data_dir: &Path, cache_mb: u64) -> Result<SledStore> {
    let path = data_dir.join("store");
    let open = |path: &Path| {
        SledStore::open_with(
            sled::Config::new()
                .path(path)
                .cache_capacity(cache_mb.max(1) * 1024 * 1024),
        )
    };
    match open(&path) {
        Ok(s) => Ok(s),
        Err(StoreError::Corrupted(why)) => {
            let aside = data_dir.join(format!("store.corrupt-{}", SystemClock.now()));
            error!(%why, aside = %aside.display(), "the local store is corrupt: moving it aside and starting empty (sagas are restored from the journal)");
            std::fs::rename(&path, &aside)
                .with_context(|| format!("moving {} aside", path.display()))?;
            open(&path).with_context(|| format!("opening a new store in {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("opening the store in {}", data_dir.display())),
    }
}

/// The definitions of a directory with their source text (what is registered).
fn load_definitions(dir: &Path) -> Result<Vec<(Arc<SagaDefinition>, String)>> {
    let defs = saga_core::definition::load_dir_sources(dir).map_err(anyhow::Error::msg)?;
    Ok(defs
        .into_values()
        .map(|(def, source)| (Arc::new(def), source))
        .collect())
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

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
