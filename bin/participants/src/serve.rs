//! What every participant binary does: flags, connect, provision, consume until
//! SIGTERM/Ctrl-C, report the ledger.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use saga_nats::{ConsumerSettings, NatsConsumer, NatsPublisher, ProvisionConfig};

use saga_participant::{
    CrashAfterEffect, Handler, Knobs, Participant, ParticipantStore, RetryLadder, Settings,
};

use crate::ledger;

/// Flags every participant binary takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// sled directory of this participant (default `data/<binary>`). One process per
    /// directory: sled locks it.
    #[arg(long, env = "DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Saga partitions to provision (must match the workers').
    #[arg(long, env = "SAGA_PARTITIONS", default_value_t = 16)]
    pub partitions: u32,
    /// Replicas of the streams and buckets this process creates when they are missing
    /// (1 on a single server, 3 in production clusters). Existing ones keep theirs.
    #[arg(long, env = "NATS_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=5))]
    pub replicas: u16,
    /// Latency added to every fresh execution, in milliseconds.
    #[arg(long, env = "LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Probability in [0, 1] that a fresh execution answers a technical failure.
    #[arg(long, env = "TECHNICAL_FAILURE_RATE", default_value_t = 0.0)]
    pub technical_failure_rate: f64,
    /// Seed of the RNG behind --technical-failure-rate.
    #[arg(long, env = "FAULT_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Exit with status 137 right after the effect of ACTION is durable and before its
    /// reply is sent; `ACTION:N` only the first N times over the data directory's life.
    #[arg(long, env = "CRASH_AFTER_EFFECT", value_name = "ACTION[:N]")]
    pub crash_after_effect: Option<CrashAfterEffect>,
    /// How long a recorded reply answers duplicates, in seconds.
    #[arg(long, env = "INBOX_WINDOW_SECS", default_value_t = 24 * 3600)]
    pub inbox_window_secs: u64,
    /// Deliveries of a command that keeps failing before it is dead-lettered.
    #[arg(long, env = "MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: u64,
    /// Waits between deliveries of a command that keeps failing, then the DLQ (e.g.
    /// `1m, 5m, 30m`); replaces the doubling delays and --max-deliveries.
    #[arg(long, env = "RETRY_LADDER", value_parser = parse_ladder)]
    pub retry_ladder: Option<RetryLadder>,
    /// Ack wait of the `svc-<service>` consumers, in milliseconds: how soon a command
    /// held by a crashed instance is redelivered. The default (30 s) keeps saga-nats's
    /// backoff list; any other value uses this wait for every delivery.
    #[arg(long, env = "ACK_WAIT_MS", default_value_t = 30_000)]
    pub ack_wait_ms: u64,
    #[command(flatten)]
    pub metrics: saga_telemetry::metrics::MetricsArgs,
}

impl CommonArgs {
    /// The fault-injection knobs these flags ask for.
    pub fn knobs(&self) -> Knobs {
        Knobs {
            latency: Duration::from_millis(self.latency_ms),
            technical_failure_rate: self.technical_failure_rate,
            seed: self.seed,
            crash_after_effect: self.crash_after_effect.clone(),
        }
    }

    /// Settings of the `svc-<service>` consumers.
    pub fn consumer_settings(&self) -> ConsumerSettings {
        let mut defaults = ConsumerSettings::default();
        // The SDK dead-letters at `max_deliveries`; the server must not give up first.
        let max_deliver = i64::try_from(self.settings().max_deliveries).unwrap_or(i64::MAX - 1) + 1;
        defaults.max_deliver = defaults.max_deliver.max(max_deliver);
        let ack_wait = Duration::from_millis(self.ack_wait_ms);
        if ack_wait == defaults.ack_wait {
            return defaults;
        }
        ConsumerSettings {
            ack_wait,
            backoff: Vec::new(),
            ..defaults
        }
    }

    /// The loop settings these flags ask for.
    pub fn settings(&self) -> Settings {
        Settings {
            inbox_window: Duration::from_secs(self.inbox_window_secs),
            max_deliveries: match &self.retry_ladder {
                Some(l) => l.rungs().len() as u64 + 1,
                None => self.max_deliveries,
            },
            ladder: self.retry_ladder.clone(),
            ..Settings::default()
        }
    }
}

fn parse_ladder(text: &str) -> Result<RetryLadder, String> {
    RetryLadder::parse(text)
}

/// Runs the participant `name` serving `services` until SIGTERM or Ctrl-C, then prints
/// `ledger: N effects (...)` to stdout.
pub async fn run(
    name: &str,
    args: CommonArgs,
    services: Vec<(&str, Arc<dyn Handler>)>,
) -> anyhow::Result<()> {
    let store = open_store(name, &args)?;
    let client = connect(name, &args).await?;
    run_on(name, args, store, client, services, shutdown_signal()).await
}

/// Opens the participant's sled database (`--data-dir`, default `data/<name>`).
pub fn open_store(name: &str, args: &CommonArgs) -> anyhow::Result<ParticipantStore> {
    let data_dir = data_dir(name, args);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    ParticipantStore::open(&data_dir).with_context(|| {
        format!(
            "opening the store in {dir} (this participant's business data cannot be rebuilt \
             from the journal: if sled reports it corrupt, stop every copy of this service \
             and restore {dir} from a backup)",
            dir = data_dir.display()
        )
    })
}

fn data_dir(name: &str, args: &CommonArgs) -> PathBuf {
    args.data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("data").join(name))
}

/// Connects to NATS as `name` (the security settings come from the environment).
pub async fn connect(name: &str, args: &CommonArgs) -> anyhow::Result<async_nats::Client> {
    Ok(saga_nats::connect_as(&args.nats_url, name).await?)
}

/// [`run`] on an open store and connection, until `shutdown` resolves.
pub async fn run_on(
    name: &str,
    args: CommonArgs,
    store: ParticipantStore,
    client: async_nats::Client,
    services: Vec<(&str, Arc<dyn Handler>)>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    args.metrics.install(name)?;
    let knobs = args.knobs();
    knobs.validate()?;
    let data_dir = data_dir(name, &args);
    let js = async_nats::jetstream::new(client.clone());
    let config = ProvisionConfig {
        partitions: args.partitions,
        replicas: usize::from(args.replicas),
        ..ProvisionConfig::default()
    };
    // Under the shipped NATS permissions a participant may read the streams but not
    // create them: when they are not there yet, wait a while for a worker or the
    // gateway to create them instead of failing at once.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match saga_nats::provision_streams(&js, &config).await {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "streams not provisioned yet; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context("provisioning streams")),
        }
    }

    let consumer_settings = args.consumer_settings();
    let publisher = Arc::new(NatsPublisher::new(js.clone()));
    let mut participant = Participant::new(store.clone(), publisher)
        .with_settings(args.settings())
        .with_knobs(knobs.clone());
    for (service, handler) in services {
        saga_nats::ensure_service_consumer(&js, service, &consumer_settings)
            .await
            .with_context(|| format!("creating consumer svc-{service}"))?;
        let consumer = NatsConsumer::service(&js, service)
            .await
            .with_context(|| format!("binding consumer svc-{service}"))?;
        participant = participant.serve(service, handler, consumer);
    }
    tracing::info!(
        participant = name,
        data_dir = %data_dir.display(),
        ?knobs,
        "participant started"
    );
    participant.run(shutdown).await?;
    let _ = client.flush().await;

    let entries = ledger::entries(store.db())?;
    let summary = ledger::summary(&entries);
    tracing::info!("{summary}");
    println!("{summary}");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C: stopping"),
        () = term => tracing::info!("SIGTERM: stopping"),
    }
}
