//! The `shipping` consumer: a shipment per confirmed order, announced as OrderShipped.

use std::sync::Arc;

use clap::Parser;
use consumers::{serve, shipments, ConsumerArgs, Shipping};

/// Creates a shipment on OrderConfirmed and publishes OrderShipped.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: ConsumerArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = saga_telemetry::init("shipping");
    let args = Args::parse();
    let handler = Shipping {
        fail_on: args.common.fail_on(),
    };
    serve("shipping", args.common, Arc::new(handler), |db| {
        Ok(format!(
            "shipping ledger: {} shipments",
            shipments(db)?.len()
        ))
    })
    .await
}
