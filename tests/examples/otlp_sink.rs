//! An OTLP/gRPC trace receiver that counts what it is sent, for measuring the cost of
//! exporting traces (`sagactl dev --otel <endpoint>`; see docs/benchmarks.md):
//!
//!   cargo run --release -p saga-e2e --example otlp_sink        # prints its endpoint
//!
//! It keeps the spans in memory and prints how many arrived every 5 seconds.

use std::time::Duration;

#[tokio::main]
async fn main() {
    let receiver = saga_e2e::otlp::Receiver::start().await;
    println!("OTEL_EXPORTER_OTLP_ENDPOINT={}", receiver.endpoint);
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        println!("spans received: {}", receiver.spans().len());
    }
}
