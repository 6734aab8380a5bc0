//! The `flight` participant: flight reservations for the travel saga.

use std::sync::Arc;

use clap::Parser;
use participants::serve::{self, CommonArgs};
use participants::Booking;

/// Serves `FlightService` (`reserveFlight`, `cancelFlightReservation`).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = saga_telemetry::init("flight");
    let args = Args::parse();
    let handler = Booking::flight();
    let service = handler.service();
    serve::run("flight", args.common, vec![(service, Arc::new(handler))]).await
}
