//! The event store on a real nats-server: snapshots, upcasting, idempotency,
//! optimistic concurrency and time travel, with the BankAccount aggregate.

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use saga_aggregates::bank::{self, BankAccount, BankCommand, BankEvent};
use saga_aggregates::{load_definition, Money};
use saga_core::ManualClock;
use saga_eventstore::jetstream::{JetStreamEventStore, JetStreamSnapshotStore, Provisioning};
use saga_eventstore::{
    definition, Appended, CommandMeta, ErrorKind, EsError, EventStore, ExpectedVersion,
    MemorySnapshotStore, NewEvent, RecordedEvent, Repository, SnapshotStore, StreamId, Until,
    Upcasters,
};
use saga_testkit::NatsServer;

struct Bank {
    events: Arc<JetStreamEventStore>,
    snapshots: Arc<JetStreamSnapshotStore>,
}

async fn connect(nats: &NatsServer) -> Bank {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let p = Provisioning::default();
    Bank {
        events: Arc::new(
            JetStreamEventStore::provision(js.clone(), &p)
                .await
                .unwrap(),
        ),
        snapshots: Arc::new(JetStreamSnapshotStore::provision(&js, &p).await.unwrap()),
    }
}

fn repo(bank: &Bank, clock: Arc<ManualClock>) -> Repository<BankAccount> {
    Repository::new(
        &load_definition("banking-account.yaml").unwrap(),
        bank.events.clone(),
        bank.snapshots.clone(),
        bank::upcasters(),
        clock,
    )
    .unwrap()
}

fn open(id: &str, balance: i64) -> BankCommand {
    BankCommand::Open {
        account_id: id.into(),
        customer_id: "C1".into(),
        initial_balance: Money(balance),
        at: 0,
    }
}

fn deposit(tx: &str, amount: i64) -> BankCommand {
    BankCommand::Deposit {
        transaction_id: tx.into(),
        amount: Money(amount),
        currency: String::new(),
        at: 0,
    }
}

fn meta() -> CommandMeta {
    CommandMeta::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_taken_at_exactly_100_events_and_a_load_reads_only_the_tail() {
    let nats = NatsServer::start().unwrap();
    let bank = connect(&nats).await;
    let clock = Arc::new(ManualClock::new(1_000));
    let repo = repo(&bank, clock);
    let stream = StreamId::new("BankAccount", "A1").unwrap();
    repo.execute("A1", open("A1", 0), &meta()).await.unwrap();
    for i in 1..99 {
        repo.execute("A1", deposit(&format!("t{i}"), 100), &meta())
            .await
            .unwrap();
    }
    assert_eq!(
        bank.snapshots.load(&stream).await.unwrap(),
        None,
        "no snapshot before the 100th event"
    );
    let done = repo
        .execute("A1", deposit("t99", 100), &meta())
        .await
        .unwrap();
    assert_eq!(done.version, 100);
    let snapshot = bank.snapshots.load(&stream).await.unwrap().unwrap();
    assert_eq!(snapshot.version, 100);

    repo.execute("A1", deposit("t100", 100), &meta())
        .await
        .unwrap();
    let loaded = repo.load("A1").await.unwrap();
    assert_eq!(loaded.snapshot_version, Some(100));
    assert_eq!(
        loaded.events_read, 1,
        "only the event after the snapshot is read"
    );
    assert_eq!(loaded.version, 101);
    assert_eq!(loaded.state.balance, Money(100 * 100));

    // Without the snapshot, the same state costs every event.
    let no_snapshots = Repository::<BankAccount>::new(
        &load_definition("banking-account.yaml").unwrap(),
        bank.events.clone(),
        Arc::new(MemorySnapshotStore::new()),
        bank::upcasters(),
        Arc::new(ManualClock::new(1_000)),
    )
    .unwrap();
    let full = no_snapshots.load("A1").await.unwrap();
    assert_eq!(full.events_read, 101);
    assert_eq!(full.snapshot_version, None);
    assert_eq!(full.state, loaded.state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_transaction_id_twice_gives_the_same_state_and_result() {
    let nats = NatsServer::start().unwrap();
    let bank = connect(&nats).await;
    let repo = repo(&bank, Arc::new(ManualClock::new(1_000)));
    repo.execute("A1", open("A1", 100_000), &meta())
        .await
        .unwrap();
    let first = repo
        .execute("A1", deposit("tx-1", 50_000), &meta())
        .await
        .unwrap();
    let second = repo
        .execute("A1", deposit("tx-1", 50_000), &meta())
        .await
        .unwrap();
    assert_eq!(first.state, second.state);
    assert_eq!(first.version, 2);
    assert_eq!(second.version, 2, "nothing appended the second time");
    assert!(second.events.is_empty());
    assert_eq!(
        first.state.transactions["tx-1"],
        second.state.transactions["tx-1"]
    );
    assert_eq!(second.state.balance, Money(150_000));

    // The store itself recognises a retried append by its event ids.
    let stream = StreamId::new("BankAccount", "A1").unwrap();
    let stored = bank
        .events
        .read_stream(&stream, 2, 0, Until::End)
        .await
        .unwrap();
    let retry = NewEvent {
        event_type: stored[0].event_type.clone(),
        schema_version: 1,
        event_id: stored[0].event_id.clone(),
        causation_id: String::new(),
        correlation_id: String::new(),
        timestamp: stored[0].timestamp,
        payload: stored[0].payload.clone(),
    };
    let again = bank
        .events
        .append(&stream, ExpectedVersion::Exact(1), vec![retry])
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.version, 2);
    assert_eq!(bank.events.stream_version(&stream).await.unwrap(), 2);
}

/// A store whose first append waits until another client has deposited on the same
/// account: the race is lost every time, not by chance.
struct LosesTheFirstRace {
    inner: Arc<JetStreamEventStore>,
    rival: tokio::sync::Mutex<Option<futures::future::BoxFuture<'static, ()>>>,
}

#[async_trait]
impl EventStore for LosesTheFirstRace {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, EsError> {
        if let Some(rival) = self.rival.lock().await.take() {
            rival.await;
        }
        self.inner.append(stream, expected, events).await
    }
    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        position: u64,
        until: Until,
    ) -> Result<Vec<RecordedEvent>, EsError> {
        self.inner.read_stream(stream, from, position, until).await
    }
    async fn stream_version(&self, stream: &StreamId) -> Result<u64, EsError> {
        self.inner.stream_version(stream).await
    }
    async fn subscribe(
        &self,
        aggregate: &str,
        position: u64,
    ) -> Result<BoxStream<'static, Result<RecordedEvent, EsError>>, EsError> {
        self.inner.subscribe(aggregate, position).await
    }
    async fn count_after(&self, aggregate: &str, position: u64) -> Result<u64, EsError> {
        self.inner.count_after(aggregate, position).await
    }
    async fn head(&self, aggregate: &str) -> Result<u64, EsError> {
        self.inner.head(aggregate).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_deposit_at_once_one_wins_the_other_retries_and_both_land() {
    let nats = NatsServer::start().unwrap();
    let a = connect(&nats).await;
    let b = connect(&nats).await;
    let clock = Arc::new(ManualClock::new(1_000));
    let repo_a = repo(&a, clock.clone());
    repo_a
        .execute("A1", open("A1", 1_000), &meta())
        .await
        .unwrap();

    // A raw append at a stale version is a typed, retryable conflict.
    let stream = StreamId::new("BankAccount", "A1").unwrap();
    let stale = b
        .events
        .append(
            &stream,
            ExpectedVersion::NoStream,
            Vec::from([NewEvent {
                event_type: "AccountOpened".into(),
                schema_version: 1,
                event_id: "opened-C2".into(),
                causation_id: String::new(),
                correlation_id: String::new(),
                timestamp: 1,
                payload: Vec::new(),
            }]),
        )
        .await
        .unwrap_err();
    assert_eq!(stale.kind(), ErrorKind::Conflict);
    assert!(stale.is_retryable());

    let rival_repo = repo_a.clone();
    // Runs when B has loaded and decided, right before B's append.
    let rival: futures::future::BoxFuture<'static, ()> = Box::pin(async move {
        rival_repo
            .execute("A1", deposit("from-a", 500), &meta())
            .await
            .unwrap();
    });
    let racing: Arc<dyn EventStore> = Arc::new(LosesTheFirstRace {
        inner: b.events.clone(),
        rival: tokio::sync::Mutex::new(Some(rival)),
    });
    let repo_b = Repository::<BankAccount>::new(
        &load_definition("banking-account.yaml").unwrap(),
        racing,
        b.snapshots.clone(),
        bank::upcasters(),
        clock,
    )
    .unwrap();
    let done = repo_b
        .execute("A1", deposit("from-b", 700), &meta())
        .await
        .unwrap();
    assert_eq!(done.retries, 1, "the loser decided again once");
    assert_eq!(done.version, 3);
    let state = repo_a.load("A1").await.unwrap().state;
    assert_eq!(state.balance, Money(1_000 + 500 + 700));
    assert!(state.transactions.contains_key("from-a"));
    assert!(state.transactions.contains_key("from-b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_deposit_is_read_as_v2_with_the_default_currency() {
    let nats = NatsServer::start().unwrap();
    let bank = connect(&nats).await;
    let v2 = std::fs::read_to_string(saga_aggregates::definitions_dir().join("banking-account.yaml"))
        .unwrap()
        .replacen(
            "  MoneyDeposited:\n    version: v1\n    schema:\n      accountId: string\n",
            "  MoneyDeposited:\n    version: v2\n    schema:\n      accountId: string\n      currency: string\n",
            1,
        );
    let def = definition::parse_aggregate("v2.yaml", &v2)
        .unwrap()
        .definition;
    assert_eq!(def.event("MoneyDeposited").unwrap().version, 2);
    saga_aggregates::check_against_proto("v2.yaml", &def).unwrap();

    let clock = Arc::new(ManualClock::new(1_000));
    let no_upcaster = Repository::<BankAccount>::new(
        &def,
        bank.events.clone(),
        bank.snapshots.clone(),
        Upcasters::new(),
        clock.clone(),
    )
    .unwrap_err();
    assert!(
        no_upcaster
            .to_string()
            .contains("event `MoneyDeposited` is declared at v2 but no upcaster reads v1"),
        "{no_upcaster}"
    );

    // Written by the code of v1: no currency, schema version 1.
    let v1_repo = repo(&bank, clock.clone());
    v1_repo.execute("A1", open("A1", 0), &meta()).await.unwrap();
    v1_repo
        .execute("A1", deposit("old", 100), &meta())
        .await
        .unwrap();

    let v2_repo = Repository::<BankAccount>::new(
        &def,
        bank.events.clone(),
        bank.snapshots.clone(),
        bank::upcasters(),
        clock,
    )
    .unwrap();
    v2_repo
        .execute(
            "A1",
            BankCommand::Deposit {
                transaction_id: "new".into(),
                amount: Money(200),
                currency: "USD".into(),
                at: 0,
            },
            &meta(),
        )
        .await
        .unwrap();
    let history = v2_repo.history("A1", Until::End).await.unwrap();
    let deposits: Vec<(u32, &str)> = history
        .iter()
        .filter_map(|(r, e)| match e {
            BankEvent::Deposited(d) => Some((r.schema_version, d.currency.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(deposits, [(2, "EUR"), (2, "USD")]);
    let stream = StreamId::new("BankAccount", "A1").unwrap();
    let stored: Vec<u32> = bank
        .events
        .read_stream(&stream, 2, 0, Until::End)
        .await
        .unwrap()
        .iter()
        .map(|e| e.schema_version)
        .collect();
    assert_eq!(stored, [1, 2], "the stored v1 event is not rewritten");
    let state = v2_repo.load("A1").await.unwrap().state;
    assert_eq!(state.transactions["old"].currency, "EUR");
    assert_eq!(state.transactions["new"].currency, "USD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_is_loaded_as_of_a_version_or_a_time() {
    let nats = NatsServer::start().unwrap();
    let bank = connect(&nats).await;
    let clock = Arc::new(ManualClock::new(10_000));
    let repo = repo(&bank, clock.clone()).with_snapshot_every(Some(2));
    repo.execute("A1", open("A1", 100_000), &meta())
        .await
        .unwrap();
    clock.set(20_000);
    repo.execute("A1", deposit("t1", 50_000), &meta())
        .await
        .unwrap();
    clock.set(30_000);
    repo.execute(
        "A1",
        BankCommand::Withdraw {
            transaction_id: "t2".into(),
            amount: Money(20_000),
            at: 0,
        },
        &meta(),
    )
    .await
    .unwrap();

    let now = repo.load("A1").await.unwrap();
    assert_eq!((now.version, now.state.balance), (3, Money(130_000)));
    assert_eq!(now.snapshot_version, Some(2));

    let v1 = repo.load_at("A1", Until::Version(1)).await.unwrap();
    assert_eq!((v1.version, v1.state.balance), (1, Money(100_000)));
    assert_eq!(
        v1.snapshot_version, None,
        "the snapshot at 2 is past the bound"
    );

    let v2 = repo.load_at("A1", Until::Version(2)).await.unwrap();
    assert_eq!((v2.version, v2.state.balance), (2, Money(150_000)));

    let at = repo.load_at("A1", Until::Time(25_000)).await.unwrap();
    assert_eq!((at.version, at.state.balance), (2, Money(150_000)));
    let before = repo.load_at("A1", Until::Time(9_999)).await.unwrap();
    assert_eq!(before.version, 0);
    assert!(!before.state.is_open());

    let history = repo.history("A1", Until::Time(20_000)).await.unwrap();
    let kinds: Vec<&str> = history.iter().map(|(r, _)| r.event_type.as_str()).collect();
    assert_eq!(kinds, ["AccountOpened", "MoneyDeposited"]);
}

fn raw(id: &str) -> NewEvent {
    NewEvent {
        event_type: "MoneyDeposited".into(),
        schema_version: 1,
        event_id: id.into(),
        causation_id: String::new(),
        correlation_id: String::new(),
        timestamp: 1,
        payload: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_append_completes_what_a_crash_left_half_done_and_other_ids_conflict() {
    let nats = NatsServer::start().unwrap();
    let bank = connect(&nats).await;
    let other = connect(&nats).await;
    let stream = StreamId::new("BankAccount", "A9").unwrap();
    // The first writer got only its first event in before it crashed.
    bank.events
        .append(&stream, ExpectedVersion::NoStream, vec![raw("e1")])
        .await
        .unwrap();
    // Its retry (another process: nothing cached) sends the whole append again.
    let done = other
        .events
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![raw("e1"), raw("e2")],
        )
        .await
        .unwrap();
    assert_eq!((done.version, done.duplicate), (2, false));
    let ids: Vec<String> = other
        .events
        .read_stream(&stream, 1, 0, Until::End)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(ids, ["e1", "e2"]);
    // The same again changes nothing.
    let again = bank
        .events
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![raw("e1"), raw("e2")],
        )
        .await
        .unwrap();
    assert_eq!((again.version, again.duplicate), (2, true));
    // Other events at a stale version are a conflict, whichever client sends them.
    for client in [&bank, &other] {
        let e = client
            .events
            .append(&stream, ExpectedVersion::Exact(1), vec![raw("e3")])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    }
    let ahead = bank
        .events
        .append(&stream, ExpectedVersion::Exact(5), vec![raw("e3")])
        .await
        .unwrap_err();
    assert_eq!(ahead.kind(), ErrorKind::Conflict, "{ahead}");
    assert_eq!(bank.events.stream_version(&stream).await.unwrap(), 2);
}
