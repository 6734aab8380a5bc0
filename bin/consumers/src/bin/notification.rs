//! The `notification` consumer: one message per order per order event.

use std::sync::Arc;

use clap::Parser;
use consumers::{notifications, serve, ConsumerArgs, Notifier};

/// Records a customer message for every order event it hears of.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: ConsumerArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = saga_telemetry::init("notification");
    let args = Args::parse();
    let handler = Notifier {
        fail_on: args.common.fail_on(),
    };
    serve("notification", args.common, Arc::new(handler), |db| {
        Ok(format!(
            "notification ledger: {} messages",
            notifications(db)?.len()
        ))
    })
    .await
}
