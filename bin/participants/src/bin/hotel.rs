//! The `hotel` participant: hotel reservations for the travel saga.

use std::sync::Arc;

use clap::Parser;
use participants::serve::{self, CommonArgs};
use participants::Booking;

/// Serves `HotelService` (`reserveHotel`, `cancelHotelReservation`).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = saga_telemetry::init("hotel");
    let args = Args::parse();
    let handler = Booking::hotel();
    let service = handler.service();
    serve::run("hotel", args.common, vec![(service, Arc::new(handler))]).await
}
