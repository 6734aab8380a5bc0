//! The `inventory` participant: stock reservations for the order saga.

use std::sync::Arc;

use clap::Parser;
use participants::inventory::{Inventory, DEFAULT_INITIAL_STOCK, SERVICE};
use participants::serve::{self, CommonArgs};

/// Serves `inventory` (`ReserveStock`, `ReleaseStock`).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Units every SKU starts with.
    #[arg(long, env = "INITIAL_STOCK", default_value_t = DEFAULT_INITIAL_STOCK)]
    initial_stock: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = saga_telemetry::init("inventory");
    let args = Args::parse();
    let handler = Arc::new(Inventory::new(args.initial_stock));
    serve::run("inventory", args.common, vec![(SERVICE, handler)]).await
}
