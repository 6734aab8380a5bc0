//! `saga-gateway`: the gRPC gateway. Loads the saga definitions, provisions the streams
//! and its `saga_requests` bucket, follows `SAGA_JOURNAL` into its projection and serves
//! `saga.v1.SagaGateway` (with health and reflection) until SIGTERM or Ctrl-C.
//!
//! Without `--tls-cert`/`--tls-key` and `--tokens-file` it serves plaintext gRPC to
//! anyone (the dev mode, said by a WARN line at start); see "Securing the gateway" in the
//! README for TLS, mTLS, bearer tokens and the per-client limits.
//!
//! `--rebuild-projection` wipes the projection, replays the journal into it and exits
//! (the gateway using that data directory must be stopped).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use saga_core::definition::SagaDefinition;
use saga_gateway::auth::Tokens;
use saga_gateway::limits::{
    ClientLimits, DEFAULT_MAX_WATCH_PER_CLIENT, DEFAULT_RATE_BURST, DEFAULT_RATE_PER_CLIENT,
};
use saga_gateway::{GatewayConfig, Security, TlsPem};
use saga_nats::ProvisionConfig;
use tracing::{error, info, warn};

/// The gRPC gateway of the saga runtime.
#[derive(Debug, Parser)]
#[command(name = "saga-gateway", version, about)]
struct Args {
    /// Address of the gRPC server.
    #[arg(long, env = "GRPC_ADDR", default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Directory of the gateway's projection (its own; not a worker's).
    #[arg(long, env = "DATA_DIR", default_value = "data/gateway")]
    data_dir: PathBuf,
    /// Directory of saga definitions (*.yaml).
    #[arg(long, env = "SAGAS_DIR", default_value = "sagas")]
    sagas: PathBuf,
    /// Partition count of the deployment (the workers' --partitions).
    #[arg(long, env = "PARTITIONS", default_value_t = 16)]
    partitions: u32,
    /// Replicas of the streams and buckets this process creates when they are missing
    /// (1 on a single server, 3 in production clusters). Existing ones keep theirs.
    #[arg(long, env = "NATS_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=5))]
    replicas: u16,
    /// How long idempotency keys are remembered, in seconds.
    #[arg(long, env = "REQUEST_WINDOW_SECS", default_value_t = 24 * 3600)]
    request_window_secs: u64,
    /// Rebuild the projection from SAGA_JOURNAL, then exit.
    #[arg(long)]
    rebuild_projection: bool,
    #[command(flatten)]
    metrics: saga_telemetry::metrics::MetricsArgs,
    /// TLS certificate chain of the gRPC server (PEM); needs --tls-key.
    #[arg(long, env = "GRPC_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, env = "GRPC_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that sign client certificates: clients must present one
    /// (mTLS). Needs --tls-cert.
    #[arg(long, env = "GRPC_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// YAML file of the clients allowed in: name, SHA-256 of the token, roles
    /// (`sagactl token new` prints an entry). Every saga.v1 call then needs
    /// `authorization: Bearer <token>`.
    #[arg(long, env = "GRPC_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
    /// Requests per second per client, sustained (0: no limit). Default: 100 once TLS or
    /// tokens are on, none in dev mode.
    #[arg(long, env = "GRPC_RATE_PER_CLIENT")]
    rate_per_client: Option<u32>,
    /// Requests a client may make at once after being idle. Default: 200.
    #[arg(long, env = "GRPC_RATE_BURST", value_parser = clap::value_parser!(u32).range(1..))]
    rate_burst: Option<u32>,
    /// Open WatchSaga streams per client (0: no limit). Default: 16 once TLS or tokens
    /// are on, none in dev mode.
    #[arg(long, env = "GRPC_MAX_WATCH_PER_CLIENT")]
    max_watch_per_client: Option<usize>,
}

/// TLS, tokens and limits from the flags. Limits left unset are the documented defaults
/// once the server is secured, and none in the dev mode (a local bench must not hit them).
fn security(args: &Args) -> Result<Security> {
    let read = |path: &Path, what: &str| {
        std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsPem {
            cert: read(cert, "--tls-cert")?,
            key: read(key, "--tls-key")?,
            client_ca: match &args.tls_client_ca {
                Some(ca) => Some(read(ca, "--tls-client-ca")?),
                None => None,
            },
        }),
        _ => None,
    };
    let tokens = match &args.tokens_file {
        Some(path) => Some(Arc::new(Tokens::load(path)?)),
        None => None,
    };
    let secured = tls.is_some() || tokens.is_some();
    let (rate, watch) = if secured {
        (DEFAULT_RATE_PER_CLIENT, DEFAULT_MAX_WATCH_PER_CLIENT)
    } else {
        (0, 0)
    };
    let limits = ClientLimits {
        rate_per_sec: std::num::NonZeroU32::new(args.rate_per_client.unwrap_or(rate)),
        burst: std::num::NonZeroU32::new(args.rate_burst.unwrap_or(DEFAULT_RATE_BURST))
            .unwrap_or(std::num::NonZeroU32::MIN),
        max_watch: Some(args.max_watch_per_client.unwrap_or(watch)).filter(|&m| m > 0),
    };
    Ok(Security {
        tls,
        tokens,
        limits,
    })
}

#[tokio::main]
async fn main() {
    let _telemetry = saga_telemetry::init("saga-gateway");
    if let Err(e) = run(Args::parse()).await {
        error!("{e:#}");
        eprintln!("saga-gateway: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    if args.partitions == 0 {
        bail!("--partitions must be at least 1");
    }
    let definitions = match load_definitions(&args.sagas) {
        Ok(d) => d,
        // A rebuild only needs definitions for the NOT_STARTED steps of unfinished
        // sagas: go on without them rather than refuse to repair.
        Err(e) if args.rebuild_projection => {
            warn!("{e:#}; rebuilding without step lists");
            BTreeMap::new()
        }
        Err(e) => return Err(e),
    };
    info!(sagas = ?definitions.keys().collect::<Vec<_>>(), "definitions loaded");

    let client = saga_nats::connect_as(&args.nats_url, "saga-gateway")
        .await
        .with_context(|| format!("connecting to NATS at {}", args.nats_url))?;
    let js = async_nats::jetstream::new(client);
    saga_nats::provision_streams(
        &js,
        &ProvisionConfig {
            partitions: args.partitions,
            replicas: usize::from(args.replicas),
            ..ProvisionConfig::default()
        },
    )
    .await
    .context("provisioning JetStream streams")?;

    if args.rebuild_projection {
        let stats = saga_gateway::rebuild_projection(
            &args.data_dir,
            definitions.values().map(|d| d.as_ref()),
            &js,
        )
        .await
        .with_context(|| format!("rebuilding the projection in {}", args.data_dir.display()))?;
        info!(?stats, "projection rebuilt");
        println!(
            "projection rebuilt in {}: {} journal records, {} sagas, checkpoint {}",
            args.data_dir.display(),
            stats.records,
            stats.sagas,
            stats.checkpoint
        );
        return Ok(());
    }

    let security = security(&args)?;
    args.metrics.install("saga-gateway")?;
    if args.metrics.enabled() {
        let sampler = saga_nats::sampler::SamplerSettings::new(args.partitions);
        saga_nats::sampler::spawn(js.clone(), sampler);
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("listening on {}", args.grpc_addr))?;
    let addr = listener.local_addr().unwrap_or(args.grpc_addr);
    println!("saga-gateway listening on {addr}");
    info!(%addr, nats = %args.nats_url, "saga-gateway listening");
    let config = GatewayConfig {
        grpc_addr: addr,
        data_dir: args.data_dir.clone(),
        partitions: args.partitions,
        definitions,
        request_window: Duration::from_secs(args.request_window_secs.max(1)),
        replicas: usize::from(args.replicas),
        security,
    };
    saga_gateway::serve_on(listener, config, js, shutdown_signal())
        .await
        .context("serving")?;
    info!("saga-gateway stopped");
    Ok(())
}

fn load_definitions(dir: &Path) -> Result<BTreeMap<String, Arc<SagaDefinition>>> {
    let defs = saga_core::definition::load_dir(dir).map_err(anyhow::Error::msg)?;
    Ok(defs.into_iter().map(|(k, v)| (k, Arc::new(v))).collect())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            warn!(error = %e, "no SIGTERM handler; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
