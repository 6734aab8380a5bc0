//! Append throughput of the JetStream event store on a real nats-server (the test kit's,
//! started here on a temporary store): one 10,000-event stream written one event per
//! append, another written 10 events per append (one atomic batch each), a third 100
//! per append; first with `sync_interval: always` (an fsync per stored message, as in
//! production), then with the server's default (fsync every 2 minutes).
//!
//! `cargo run --release -p saga-eventstore --example es_bench [-- EVENTS]`

use std::time::{Duration, Instant};

use saga_eventstore::jetstream::{JetStreamEventStore, Provisioning};
use saga_eventstore::{EventStore, ExpectedVersion, NewEvent, StreamId, Until};
use saga_testkit::NatsServer;

fn event(stream: &str, i: u64) -> NewEvent {
    NewEvent {
        event_type: "Ticked".into(),
        schema_version: 1,
        event_id: format!("{stream}-{i}"),
        causation_id: String::new(),
        correlation_id: String::new(),
        timestamp: i,
        // About the size of a bank deposit event.
        payload: format!("{{\"n\":{i},\"amount\":\"1.00\",\"tx\":\"t{i}\"}}").into_bytes(),
    }
}

fn rate(n: u64, d: Duration) -> String {
    format!(
        "{:>8.0} events/s ({n} in {:.2} s)",
        n as f64 / d.as_secs_f64(),
        d.as_secs_f64()
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let events: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    for sync_always in [true, false] {
        let nats = NatsServer::builder()
            .sync_always(sync_always)
            .start()
            .expect("nats-server (make setup installs it)");
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let store = JetStreamEventStore::provision(js, &Provisioning::default())
            .await
            .unwrap();
        let sync = if sync_always { "always" } else { "default" };
        bench(&store, events, sync).await;
    }
}

async fn bench(store: &JetStreamEventStore, events: u64, sync: &str) {
    for per_append in [1u64, 10, 100] {
        let name = format!("bench-{per_append}");
        let stream = StreamId::new("Bench", &name).unwrap();
        let t = Instant::now();
        let mut version = 0;
        while version < events {
            let batch: Vec<_> = (version..(version + per_append).min(events))
                .map(|i| event(&name, i))
                .collect();
            let n = batch.len() as u64;
            let appended = store
                .append(&stream, ExpectedVersion::Exact(version), batch)
                .await
                .unwrap();
            version += n;
            assert_eq!(appended.version, version);
        }
        let took = t.elapsed();
        println!(
            "sync {sync:<7} append, {per_append:>3} event(s) per append, one {events}-event stream {}",
            rate(events, took)
        );
        let read = store.read_stream(&stream, 1, 0, Until::End).await.unwrap();
        assert_eq!(read.len() as u64, events);
    }
}
