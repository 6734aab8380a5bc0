//! Projections of BankAccount on a real nats-server: the seed's consistency case, lag,
//! resuming after the checkpoint, and a blue/green rebuild that never leaves readers
//! without a view.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use saga_aggregates::bank::{self, BankAccount, BankCommand};
use saga_aggregates::views::{
    account_balance, transaction_history, AccountBalanceView, TransactionHistoryView,
    ACCOUNT_BALANCE_VIEW,
};
use saga_aggregates::{load_definition, Money};
use saga_core::ManualClock;
use saga_eventstore::jetstream::{JetStreamEventStore, JetStreamSnapshotStore, Provisioning};
use saga_eventstore::{
    CommandMeta, EventStore, Projection, ProjectionRunner, Repository, SledViews, ViewStore,
};
use saga_testkit::NatsServer;
use tokio::sync::watch;

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Setup {
    store: Arc<JetStreamEventStore>,
    repo: Repository<BankAccount>,
}

async fn setup(nats: &NatsServer) -> Setup {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let p = Provisioning::default();
    let store = Arc::new(
        JetStreamEventStore::provision(js.clone(), &p)
            .await
            .unwrap(),
    );
    let snapshots = Arc::new(JetStreamSnapshotStore::provision(&js, &p).await.unwrap());
    let repo = Repository::new(
        &load_definition("banking-account.yaml").unwrap(),
        store.clone(),
        snapshots,
        bank::upcasters(),
        Arc::new(ManualClock::new(1_000)),
    )
    .unwrap();
    Setup { store, repo }
}

fn runner(
    store: &Arc<JetStreamEventStore>,
    views: &SledViews,
    projection: Arc<dyn Projection>,
) -> ProjectionRunner {
    ProjectionRunner::new(
        &load_definition("banking-account.yaml").unwrap(),
        store.clone(),
        views.clone(),
        projection,
        bank::upcasters(),
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

fn withdraw(tx: &str, amount: i64) -> BankCommand {
    BankCommand::Withdraw {
        transaction_id: tx.into(),
        amount: Money(amount),
        at: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_1000_deposit_500_withdraw_200_rebuild_gives_1300_at_version_3() {
    let nats = NatsServer::start().unwrap();
    let s = setup(&nats).await;
    let m = CommandMeta::default();
    s.repo.execute("A1", open("A1", 100_000), &m).await.unwrap();
    s.repo
        .execute("A1", deposit("t1", 50_000), &m)
        .await
        .unwrap();
    s.repo
        .execute("A1", withdraw("t2", 20_000), &m)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let views = SledViews::open(dir.path()).unwrap();
    let (_stop, shutdown) = watch::channel(false);
    let (balance, _) =
        runner(&s.store, &views, Arc::new(AccountBalanceView::default())).spawn(shutdown.clone());
    let (history, _) = runner(
        &s.store,
        &views,
        Arc::new(TransactionHistoryView::default()),
    )
    .spawn(shutdown);

    let report = balance.rebuild().await.unwrap();
    assert_eq!(report.generation, 2);
    let row = account_balance(&views, "A1").await.unwrap().unwrap();
    assert_eq!(row.balance, Money(130_000));
    assert_eq!(row.balance.to_string(), "1300.00");
    assert_eq!(row.version, 3);
    let status = balance.status().await.unwrap();
    assert_eq!((status.generation, status.lag), (2, 0));

    eventually("the history view", || async {
        history.status().await.unwrap().lag == 0
    })
    .await;
    let page = transaction_history(&views, "A1", 0, 10).await.unwrap();
    let shown: Vec<(&str, String)> = page
        .iter()
        .map(|e| (e.kind.as_str(), e.amount.to_string()))
        .collect();
    assert_eq!(
        shown,
        [
            ("deposit", "500.00".to_string()),
            ("withdrawal", "200.00".to_string())
        ]
    );
    let second_page = transaction_history(&views, "A1", page[0].version, 10)
        .await
        .unwrap();
    assert_eq!(second_page.len(), 1);
    assert_eq!(second_page[0].transaction_id, "t2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_reported_and_a_restarted_runner_resumes_after_its_checkpoint() {
    let nats = NatsServer::start().unwrap();
    let s = setup(&nats).await;
    let m = CommandMeta::default();
    s.repo.execute("A1", open("A1", 0), &m).await.unwrap();
    for i in 0..5 {
        s.repo
            .execute("A1", deposit(&format!("t{i}"), 100), &m)
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let views = SledViews::open(dir.path()).unwrap();
    let status = ProjectionRunner::status_of(
        s.store.as_ref(),
        &views,
        "BankAccount",
        ACCOUNT_BALANCE_VIEW,
    )
    .await
    .unwrap();
    assert_eq!(
        (status.checkpoint, status.lag),
        (0, 6),
        "nothing applied yet"
    );

    let (stop, shutdown) = watch::channel(false);
    let (handle, join) =
        runner(&s.store, &views, Arc::new(AccountBalanceView::default())).spawn(shutdown);
    eventually("the view to catch up", || async {
        handle.status().await.unwrap().lag == 0
    })
    .await;
    assert_eq!(
        account_balance(&views, "A1")
            .await
            .unwrap()
            .unwrap()
            .balance,
        Money(500)
    );
    stop.send(true).unwrap();
    join.await.unwrap().unwrap();

    // Two more while it is stopped: the lag shows them, the restart applies only them.
    s.repo.execute("A1", deposit("t5", 100), &m).await.unwrap();
    s.repo.execute("A1", withdraw("t6", 50), &m).await.unwrap();
    let status = ProjectionRunner::status_of(
        s.store.as_ref(),
        &views,
        "BankAccount",
        ACCOUNT_BALANCE_VIEW,
    )
    .await
    .unwrap();
    assert_eq!(status.lag, 2);
    let (_stop, shutdown) = watch::channel(false);
    let (handle, _) =
        runner(&s.store, &views, Arc::new(AccountBalanceView::default())).spawn(shutdown);
    eventually("the restarted view to catch up", || async {
        handle.status().await.unwrap().lag == 0
    })
    .await;
    let row = account_balance(&views, "A1").await.unwrap().unwrap();
    assert_eq!((row.balance, row.version), (Money(550), 8));
    assert_eq!(
        s.store
            .stream_version(&saga_eventstore::StreamId::new("BankAccount", "A1").unwrap())
            .await
            .unwrap(),
        8
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_keep_a_view_while_it_is_rebuilt_beside_the_live_one() {
    let nats = NatsServer::start().unwrap();
    let s = setup(&nats).await;
    let m = CommandMeta::default();
    s.repo.execute("A1", open("A1", 0), &m).await.unwrap();
    for i in 0..300 {
        s.repo
            .execute("A1", deposit(&format!("t{i}"), 1), &m)
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let views = SledViews::open(dir.path()).unwrap();
    let (_stop, shutdown) = watch::channel(false);
    let (handle, _) =
        runner(&s.store, &views, Arc::new(AccountBalanceView::default())).spawn(shutdown);
    eventually("the live view", || async {
        handle.status().await.unwrap().lag == 0
    })
    .await;

    let rebuild = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.rebuild().await })
    };
    // Writes go on during the rebuild; readers always see a complete row.
    let mut reads = 0;
    let mut i = 300;
    while !rebuild.is_finished() {
        let row = account_balance(&views, "A1")
            .await
            .unwrap()
            .expect("a row during the rebuild");
        assert!(
            row.balance >= Money(300),
            "a partial view was served: {row:?}"
        );
        if i < 320 {
            s.repo
                .execute("A1", deposit(&format!("t{i}"), 1), &m)
                .await
                .unwrap();
            i += 1;
        }
        reads += 1;
    }
    let report = rebuild.await.unwrap().unwrap();
    assert!(reads > 0);
    assert_eq!(report.generation, 2);
    eventually("the rebuilt view to catch up", || async {
        handle.status().await.unwrap().lag == 0
    })
    .await;
    let row = account_balance(&views, "A1").await.unwrap().unwrap();
    assert_eq!(row.balance, Money(i));
    assert_eq!(row.version, i as u64 + 1);
    assert_eq!(
        views.live_generation(ACCOUNT_BALANCE_VIEW).await.unwrap(),
        2
    );
}
