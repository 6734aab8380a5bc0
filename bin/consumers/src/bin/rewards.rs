//! The `rewards` consumer: points for confirmed orders, taken back on a cancel.

use std::sync::Arc;

use clap::Parser;
use consumers::{reward_entries, serve, ConsumerArgs, Rewards};

/// Awards loyalty points on OrderConfirmed; takes them back on a later OrderCancelled.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: ConsumerArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = saga_telemetry::init("rewards");
    let args = Args::parse();
    let handler = Rewards {
        fail_on: args.common.fail_on(),
    };
    serve("rewards", args.common, Arc::new(handler), |db| {
        let entries = reward_entries(db)?;
        let total: i64 = entries.iter().map(|e| e.points).sum();
        Ok(format!(
            "rewards ledger: {} entries, {total} points",
            entries.len()
        ))
    })
    .await
}
