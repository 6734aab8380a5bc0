//! Throughput of the event store and the projections on a real nats-server (started
//! here, on a temporary store):
//!
//! - append: 10,000 events to one stream, one event per append, and 100 per append;
//! - load of that 10,000-event stream, without a snapshot and with one (every 100);
//! - commands through the repository (load + decide + append), with and without
//!   snapshots;
//! - projection catch-up and blue/green rebuild of AccountBalanceView over 100,000
//!   events (1,000 accounts).
//!
//! `cargo run --release -p saga-aggregates --example es_bench [-- EVENTS]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use saga_aggregates::bank::{self, BankAccount, BankCommand};
use saga_aggregates::views::AccountBalanceView;
use saga_aggregates::{load_definition, Money};
use saga_core::SystemClock;
use saga_eventstore::jetstream::{JetStreamEventStore, JetStreamSnapshotStore, Provisioning};
use saga_eventstore::{
    CommandMeta, DomainEvent, EventStore, ExpectedVersion, MemorySnapshotStore, NewEvent,
    ProjectionRunner, Repository, SledViews, StreamId, Until,
};
use saga_proto::es as pb;
use saga_testkit::NatsServer;

fn deposit_event(account: &str, i: u64) -> NewEvent {
    let e = saga_aggregates::BankEvent::Deposited(pb::MoneyDeposited {
        account_id: account.into(),
        amount: "1.00".into(),
        transaction_id: format!("t{i}"),
        deposited_at: i,
        currency: String::new(),
    });
    NewEvent {
        event_type: e.event_type().into(),
        schema_version: 1,
        event_id: format!("tx-t{i}"),
        causation_id: String::new(),
        correlation_id: String::new(),
        timestamp: i,
        payload: e.encode(),
    }
}

fn opened_event(account: &str) -> NewEvent {
    let e = saga_aggregates::BankEvent::Opened(pb::AccountOpened {
        account_id: account.into(),
        customer_id: "C".into(),
        initial_balance: "0".into(),
        opened_at: 0,
    });
    NewEvent {
        event_type: e.event_type().into(),
        schema_version: 1,
        event_id: "opened-C".into(),
        causation_id: String::new(),
        correlation_id: String::new(),
        timestamp: 0,
        payload: e.encode(),
    }
}

fn rate(n: u64, d: Duration) -> String {
    format!(
        "{:>10.0} events/s ({n} in {:.2} s)",
        n as f64 / d.as_secs_f64(),
        d.as_secs_f64()
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let projection_events: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let nats = NatsServer::start().expect("nats-server (make setup installs it)");
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let p = Provisioning::default();
    let store = Arc::new(
        JetStreamEventStore::provision(js.clone(), &p)
            .await
            .unwrap(),
    );
    let snapshots = Arc::new(JetStreamSnapshotStore::provision(&js, &p).await.unwrap());
    let def = load_definition("banking-account.yaml").unwrap();
    const N: u64 = 10_000;

    // 100,000 events over 1,000 accounts, 16 writers.
    let accounts = 1_000u64;
    let per = projection_events / accounts;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for a in (0..accounts).filter(|a| a % 16 == w) {
                let name = format!("acc-{a}");
                let s = StreamId::new("BankAccount", &name).unwrap();
                store
                    .append(&s, ExpectedVersion::NoStream, vec![opened_event(&name)])
                    .await
                    .unwrap();
                let mut v = 1;
                while v < per {
                    let batch: Vec<_> = (v..(v + 100).min(per))
                        .map(|i| deposit_event(&name, i))
                        .collect();
                    let n = batch.len() as u64;
                    store
                        .append(&s, ExpectedVersion::Exact(v), batch)
                        .await
                        .unwrap();
                    v += n;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let loaded_events = accounts * per;
    println!(
        "append, 16 writers, 1,000 streams {}",
        rate(loaded_events, t.elapsed())
    );
    let total = store.count_after("BankAccount", 0).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let views = SledViews::open(dir.path()).unwrap();
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let runner = ProjectionRunner::new(
        &def,
        store.clone(),
        views.clone(),
        Arc::new(AccountBalanceView::default()),
        bank::upcasters(),
    )
    .unwrap();
    let t = Instant::now();
    let (handle, _) = runner.spawn(shutdown);
    loop {
        let s = handle.status().await.unwrap();
        if s.lag == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "projection catch-up (AccountBalanceView) {}",
        rate(total, t.elapsed())
    );
    let report = handle.rebuild().await.unwrap();
    println!(
        "rebuild AccountBalanceView ({total} events)  {:.2} s  ({:.0} events/s)",
        report.took.as_secs_f64(),
        total as f64 / report.took.as_secs_f64()
    );

    // Appends, one event per call.
    let s1 = StreamId::new("BankAccount", "bench-single").unwrap();
    store
        .append(
            &s1,
            ExpectedVersion::NoStream,
            vec![opened_event("bench-single")],
        )
        .await
        .unwrap();
    let t = Instant::now();
    for i in 1..N {
        store
            .append(
                &s1,
                ExpectedVersion::Exact(i),
                vec![deposit_event("bench-single", i)],
            )
            .await
            .unwrap();
    }
    println!(
        "append, 1 event per append       {}",
        rate(N - 1, t.elapsed())
    );

    // Appends, 100 events per call.
    let s2 = StreamId::new("BankAccount", "bench-batch").unwrap();
    store
        .append(
            &s2,
            ExpectedVersion::NoStream,
            vec![opened_event("bench-batch")],
        )
        .await
        .unwrap();
    let t = Instant::now();
    let mut version = 1;
    while version < N {
        let batch: Vec<_> = (version..(version + 100).min(N))
            .map(|i| deposit_event("bench-batch", i))
            .collect();
        let n = batch.len() as u64;
        store
            .append(&s2, ExpectedVersion::Exact(version), batch)
            .await
            .unwrap();
        version += n;
    }
    println!(
        "append, 100 events per append    {}",
        rate(N - 1, t.elapsed())
    );

    // Loads of the 10,000-event stream.
    let clock = Arc::new(SystemClock);
    let no_snapshots = Repository::<BankAccount>::new(
        &def,
        store.clone(),
        Arc::new(MemorySnapshotStore::new()),
        bank::upcasters(),
        clock.clone(),
    )
    .unwrap()
    .with_snapshot_every(None);
    let t = Instant::now();
    let loaded = no_snapshots.load("bench-single").await.unwrap();
    let d = t.elapsed();
    assert_eq!(loaded.version, N);
    println!(
        "load 10,000 events, no snapshot   {} -> {:.1} ms per load",
        rate(loaded.events_read as u64, d),
        d.as_secs_f64() * 1e3
    );
    let with_snapshots = Repository::<BankAccount>::new(
        &def,
        store.clone(),
        snapshots.clone(),
        bank::upcasters(),
        clock.clone(),
    )
    .unwrap();
    with_snapshots.snapshot("bench-single").await.unwrap();
    let t = Instant::now();
    let loaded = with_snapshots.load("bench-single").await.unwrap();
    let d = t.elapsed();
    println!(
        "load with snapshot (v{:?}, {} events read) {:.2} ms per load",
        loaded.snapshot_version,
        loaded.events_read,
        d.as_secs_f64() * 1e3
    );

    // Commands through the repository on a growing stream.
    for (label, repo) in [
        ("snapshots every 100", &with_snapshots),
        ("no snapshots", &no_snapshots),
    ] {
        let id = format!("bench-cmd-{}", label.len());
        repo.execute(
            &id,
            BankCommand::Open {
                account_id: id.clone(),
                customer_id: "C".into(),
                initial_balance: Money(0),
                at: 0,
            },
            &CommandMeta::default(),
        )
        .await
        .unwrap();
        let n = 2_000;
        let t = Instant::now();
        for i in 0..n {
            repo.execute(
                &id,
                BankCommand::Deposit {
                    transaction_id: format!("t{i}"),
                    amount: Money(1),
                    currency: String::new(),
                    at: 0,
                },
                &CommandMeta::default(),
            )
            .await
            .unwrap();
        }
        println!(
            "commands (load+decide+append), {label:<20} {}",
            rate(n, t.elapsed())
        );
    }
    let r = store.read_stream(&s1, 1, 0, Until::End).await.unwrap();
    assert_eq!(r.len() as u64, N);
}
