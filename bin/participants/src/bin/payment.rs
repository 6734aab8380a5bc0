//! The `payment` participant: charges and refunds for the order saga (`payment`) and
//! the travel saga (`PaymentService`).

use std::sync::Arc;

use clap::Parser;
use participants::payment::{Payment, DEFAULT_LIMIT_CENTS, SERVICE, TRAVEL_SERVICE};
use participants::serve::{self, CommonArgs};
use saga_participant::Handler;

/// Serves `payment` (`ChargePayment`, `RefundPayment`) and `PaymentService`
/// (`chargeCard`, `refundPayment`).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Charges above this many cents are declined.
    #[arg(long, env = "LIMIT_CENTS", default_value_t = DEFAULT_LIMIT_CENTS)]
    limit_cents: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = saga_telemetry::init("payment");
    let args = Args::parse();
    let handler: Arc<dyn Handler> = Arc::new(Payment::new(args.limit_cents));
    serve::run(
        "payment",
        args.common,
        vec![(SERVICE, handler.clone()), (TRAVEL_SERVICE, handler)],
    )
    .await
}
