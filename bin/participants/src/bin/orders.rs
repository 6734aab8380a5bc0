//! The `orders` participant: order confirmation for the order saga.

use std::sync::Arc;

use clap::Parser;
use participants::orders::{Orders, SERVICE};
use participants::serve::{self, CommonArgs};

/// Serves `orders` (`ConfirmOrder`).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = saga_telemetry::init("orders");
    let args = Args::parse();
    serve::run("orders", args.common, vec![(SERVICE, Arc::new(Orders))]).await
}
