//! `saga-gateway`: the gRPC gateway. Loads the saga definitions, provisions the streams
//! and its `saga_requests` bucket, follows `SAGA_JOURNAL` into its projection and serves
//! `saga.v1.SagaGateway` (with health and reflection) until SIGTERM or Ctrl-C.
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
use saga_gateway::GatewayConfig;
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
