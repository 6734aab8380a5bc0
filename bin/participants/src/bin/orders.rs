//! The `orders` participant: the event-sourced Order aggregate behind the saga commands
//! `ConfirmOrder`, `ShipOrder` and `CancelOrder`, and behind the gRPC API
//! `saga.es.v1.Orders` (with `OrderSummaryView`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use participants::order_api;
use participants::orders::{Orders, SERVICE};
use participants::serve::{self, CommonArgs};
use saga_eventstore::jetstream::{JetStreamEventStore, JetStreamSnapshotStore, Provisioning};
use saga_eventstore::SledViews;

/// Serves `orders` (`ConfirmOrder`, `ShipOrder`, `CancelOrder`) and its gRPC API.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Address of the gRPC API (`saga.es.v1.Orders`); port 0 picks a free one.
    #[arg(long, env = "ORDERS_GRPC_ADDR", default_value = "127.0.0.1:50062")]
    grpc_addr: SocketAddr,
    /// Directory of aggregate definitions to read order.yaml from (default: the
    /// definition built into this binary, `aggregates/order.yaml` as shipped).
    #[arg(long, env = "AGGREGATES_DIR")]
    aggregates: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = saga_telemetry::init("orders");
    let args = Args::parse();
    let definition = match &args.aggregates {
        Some(dir) => {
            let file = dir.join("order.yaml");
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            saga_aggregates::parse_definition(&file.display().to_string(), &text)
        }
        None => {
            saga_aggregates::parse_definition("order.yaml (built in)", saga_aggregates::ORDER_YAML)
        }
    }
    .map_err(anyhow::Error::msg)?;

    let store = serve::open_store("orders", &args.common)?;
    let client = serve::connect("orders", &args.common).await?;
    let js = async_nats::jetstream::new(client.clone());
    let provisioning = Provisioning {
        max_age: definition.event_store.retention,
        replicas: usize::from(args.common.replicas),
        ..Provisioning::default()
    };
    let events = Arc::new(
        JetStreamEventStore::provision(js.clone(), &provisioning)
            .await
            .context("provisioning the event store")?,
    );
    let snapshots = Arc::new(
        JetStreamSnapshotStore::provision(&js, &provisioning)
            .await
            .context("provisioning the snapshot bucket")?,
    );
    let orders = Orders::new(&definition, events.clone(), snapshots)?;
    // The view lives in the participant's own sled database, in trees of its own.
    let views = Arc::new(SledViews::with_db(store.db().clone())?);

    let listener = tokio::net::TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("listening on {} (--grpc-addr)", args.grpc_addr))?;
    let addr = listener.local_addr().unwrap_or(args.grpc_addr);
    println!("orders API listening on {addr}");
    tracing::info!(%addr, "orders API listening");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        serve::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let api = tokio::spawn(order_api::serve_on(
        listener,
        definition.clone(),
        orders.clone(),
        events,
        views,
        client.clone(),
        stop_rx.clone(),
    ));
    let served = serve::run_on(
        "orders",
        args.common,
        store,
        client,
        vec![(SERVICE, Arc::new(orders))],
        order_api::stopped(stop_rx),
    )
    .await;
    match api.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "the orders API stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "the orders API task failed"),
        Ok(Ok(())) => {}
    }
    served
}
