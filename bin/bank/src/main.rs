//! `bank`: serves `saga.es.v1.Bank` (with health and reflection) over the BankAccount
//! aggregate until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use bank::{BankConfig, ViewTarget};
use clap::Parser;
use tracing::{error, info, warn};

/// The event-sourced bank service.
#[derive(Debug, Parser)]
#[command(name = "bank", version, about)]
struct Args {
    /// Address of the gRPC server.
    #[arg(long, env = "GRPC_ADDR", default_value = "127.0.0.1:50061")]
    grpc_addr: SocketAddr,
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Directory of the projections (sled).
    #[arg(long, env = "DATA_DIR", default_value = "data/bank")]
    data_dir: PathBuf,
    /// Keep the projections in PostgreSQL instead (`host=... user=... dbname=...`).
    #[arg(long, env = "BANK_POSTGRES")]
    postgres: Option<String>,
    /// Directory of aggregate definitions (banking-account.yaml).
    #[arg(long, env = "AGGREGATES_DIR", default_value = "aggregates")]
    aggregates: PathBuf,
    #[command(flatten)]
    metrics: saga_telemetry::metrics::MetricsArgs,
}

#[tokio::main]
async fn main() {
    let _telemetry = saga_telemetry::init("bank");
    if let Err(e) = run(Args::parse()).await {
        error!("{e:#}");
        eprintln!("bank: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    args.metrics.install("bank")?;
    let file = args.aggregates.join("banking-account.yaml");
    let definition = saga_eventstore::definition::load_file(&file)
        .map_err(anyhow::Error::msg)?
        .definition;
    saga_aggregates::check_against_proto(&file.display().to_string(), &definition)
        .map_err(anyhow::Error::msg)?;
    let client = saga_nats::connect_as(&args.nats_url, "bank")
        .await
        .with_context(|| format!("connecting to NATS at {}", args.nats_url))?;
    let listener = tokio::net::TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("listening on {}", args.grpc_addr))?;
    let addr = listener.local_addr().unwrap_or(args.grpc_addr);
    println!("bank listening on {addr}");
    info!(%addr, nats = %args.nats_url, "bank listening");
    bank::serve_on(
        listener,
        BankConfig {
            definition,
            views: match args.postgres {
                Some(url) => ViewTarget::Postgres(url),
                None => ViewTarget::Sled(args.data_dir),
            },
        },
        client,
        shutdown_signal(),
    )
    .await
    .context("serving")?;
    info!("bank stopped");
    Ok(())
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
