//! AccountBalanceView and TransactionHistoryView kept in PostgreSQL: a real server from
//! Debian's package (`scripts/install-postgresql.sh`), started by the test in a temporary
//! directory on a Unix socket, and a real nats-server.

use std::path::PathBuf;
use std::process::Command;
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
use saga_eventstore::postgres::PgViews;
use saga_eventstore::{CommandMeta, ProjectionRunner, Repository, ViewStore};
use saga_testkit::NatsServer;
use tokio::sync::watch;

/// A throwaway PostgreSQL server: `initdb` into a temporary directory, `pg_ctl start`
/// on a socket in that directory (no TCP port), stopped and removed on drop.
struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    as_postgres: bool,
}

fn postgres_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run scripts/install-postgresql.sh (make setup)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    found.sort();
    found
        .pop()
        .expect("no /usr/lib/postgresql/*/bin/initdb: run scripts/install-postgresql.sh")
}

impl Postgres {
    fn start() -> Self {
        let bin = postgres_bin();
        let dir = tempfile::tempdir().unwrap();
        // initdb refuses to run as root: run the server as the package's user.
        let as_postgres = is_root();
        if as_postgres {
            let ids = |flag: &str| -> u32 {
                let o = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
            };
            std::os::unix::fs::chown(dir.path(), Some(ids("-u")), Some(ids("-g"))).unwrap();
        }
        let pg = Self {
            bin,
            dir,
            as_postgres,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let options = format!("-k {} -c listen_addresses= -F", pg.dir.path().display());
        let log = pg.dir.path().join("log").display().to_string();
        pg.run(
            "pg_ctl",
            &[
                "-D", &data, "-o", &options, "-l", &log, "-w", "-t", "60", "start",
            ],
        );
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let path = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let o = cmd.args(args).output().unwrap();
        assert!(
            o.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    fn config(&self) -> String {
        format!(
            "host={} user=postgres dbname=postgres",
            self.dir.path().display()
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        let path = self.bin.join("pg_ctl");
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let _ = cmd.args(["-D", &data, "-m", "immediate", "stop"]).output();
    }
}

fn is_root() -> bool {
    let o = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim() == "0"
}

async fn eventually(what: &str, views: &PgViews, store: &JetStreamEventStore, name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = ProjectionRunner::status_of(store, views, "BankAccount", name)
            .await
            .unwrap();
        if s.lag == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bank_views_in_postgresql_agree_resume_and_rebuild() {
    let postgres = Postgres::start();
    let nats = NatsServer::start().unwrap();
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
    let repo = Repository::<BankAccount>::new(
        &def,
        store.clone(),
        snapshots,
        bank::upcasters(),
        Arc::new(ManualClock::new(1_000)),
    )
    .unwrap();
    let m = CommandMeta::default();
    repo.execute(
        "A1",
        BankCommand::Open {
            account_id: "A1".into(),
            customer_id: "C1".into(),
            initial_balance: Money(100_000),
            at: 0,
        },
        &m,
    )
    .await
    .unwrap();
    repo.execute(
        "A1",
        BankCommand::Deposit {
            transaction_id: "t1".into(),
            amount: Money(50_000),
            currency: String::new(),
            at: 0,
        },
        &m,
    )
    .await
    .unwrap();

    let views = PgViews::connect(&postgres.config()).await.unwrap();
    let (stop, shutdown) = watch::channel(false);
    let runner = |p: Arc<dyn saga_eventstore::Projection>| {
        ProjectionRunner::new(&def, store.clone(), views.clone(), p, bank::upcasters()).unwrap()
    };
    let (_, balance_task) = runner(Arc::new(AccountBalanceView::default())).spawn(shutdown.clone());
    let (_, history_task) = runner(Arc::new(TransactionHistoryView::default())).spawn(shutdown);
    eventually("the balance view", &views, &store, ACCOUNT_BALANCE_VIEW).await;
    eventually("the history view", &views, &store, "TransactionHistoryView").await;
    let row = account_balance(&views, "A1").await.unwrap().unwrap();
    assert_eq!((row.balance, row.version), (Money(150_000), 2));
    stop.send(true).unwrap();
    balance_task.await.unwrap().unwrap();
    history_task.await.unwrap().unwrap();

    // While no runner is up: one more event; the restarted runner applies it once.
    repo.execute(
        "A1",
        BankCommand::Withdraw {
            transaction_id: "t2".into(),
            amount: Money(20_000),
            at: 0,
        },
        &m,
    )
    .await
    .unwrap();
    let (_stop, shutdown) = watch::channel(false);
    let (balance, _) = runner(Arc::new(AccountBalanceView::default())).spawn(shutdown.clone());
    let (_, _) = runner(Arc::new(TransactionHistoryView::default())).spawn(shutdown);
    eventually(
        "the restarted balance view",
        &views,
        &store,
        ACCOUNT_BALANCE_VIEW,
    )
    .await;
    let report = balance.rebuild().await.unwrap();
    assert_eq!(report.generation, 2);
    let row = account_balance(&views, "A1").await.unwrap().unwrap();
    assert_eq!(row.balance.to_string(), "1300.00");
    assert_eq!(row.version, 3);
    assert_eq!(
        views.live_generation(ACCOUNT_BALANCE_VIEW).await.unwrap(),
        2
    );

    eventually(
        "the restarted history view",
        &views,
        &store,
        "TransactionHistoryView",
    )
    .await;
    let history = transaction_history(&views, "A1", 0, 10).await.unwrap();
    let ids: Vec<&str> = history.iter().map(|e| e.transaction_id.as_str()).collect();
    assert_eq!(ids, ["t1", "t2"], "each event exactly once");
    let page2 = transaction_history(&views, "A1", history[0].version, 10)
        .await
        .unwrap();
    assert_eq!(page2.len(), 1);
}
