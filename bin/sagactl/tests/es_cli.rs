//! `sagactl es show` and `sagactl projection ls|status|rebuild NAME` as a user runs them,
//! against a real nats-server and the bank service.

use std::process::Command;
use std::time::Duration;

use saga_testkit::NatsServer;

fn sagactl(nats: &str, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_sagactl"))
        .args(args)
        .env("NATS_URL", nats)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("run sagactl");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

async fn run(nats: &str, args: &[&str]) -> (bool, String, String) {
    let nats = nats.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sagactl(&nats, &args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_is_shown_now_and_back_then_and_its_projections_listed_and_rebuilt() {
    let nats = NatsServer::start().unwrap();
    let url = nats.url();
    let client = async_nats::connect(&url).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bank::serve_on(
        listener,
        bank::BankConfig {
            definition: saga_aggregates::load_definition("banking-account.yaml").unwrap(),
            views: bank::ViewTarget::Sled(dir.path().to_path_buf()),
        },
        client,
        async {
            let _ = stopped.await;
        },
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut bank = loop {
        if let Ok(c) =
            saga_proto::es::bank_client::BankClient::connect(format!("http://{addr}")).await
        {
            break c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bank did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    use saga_proto::es as pb;
    bank.open_account(pb::OpenAccountRequest {
        account_id: "A1".into(),
        customer_id: "C1".into(),
        initial_balance: "1000".into(),
    })
    .await
    .unwrap();
    bank.deposit(pb::DepositRequest {
        account_id: "A1".into(),
        transaction_id: "t1".into(),
        amount: "500".into(),
        currency: String::new(),
    })
    .await
    .unwrap();
    bank.withdraw(pb::WithdrawRequest {
        account_id: "A1".into(),
        transaction_id: "t2".into(),
        amount: "200".into(),
    })
    .await
    .unwrap();

    let (ok, out, err) = run(&url, &["es", "show", "BankAccount", "A1"]).await;
    assert!(ok, "{out}{err}");
    assert!(out.starts_with("BankAccount A1 at version 3\n"), "{out}");
    assert!(out.contains("\"balance\": 130000"), "{out}");
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with(['1', '2', '3']))
        .collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert!(
        rows[2].contains("MoneyWithdrawn") && rows[2].contains("v1"),
        "{out}"
    );

    let (ok, out, err) = run(
        &url,
        &[
            "--json",
            "es",
            "show",
            "BankAccount",
            "A1",
            "--at-version",
            "2",
        ],
    )
    .await;
    assert!(ok, "{out}{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["version"], 2);
    assert_eq!(doc["state"]["balance"], 150_000);
    assert_eq!(doc["events"].as_array().unwrap().len(), 2);

    let (ok, out, _) = run(
        &url,
        &[
            "es",
            "show",
            "BankAccount",
            "A1",
            "--at",
            "1970-01-01T00:00:01Z",
        ],
    )
    .await;
    assert!(!ok);
    assert!(out.contains("no events by then"), "{out}");

    let (ok, out, err) = run(&url, &["projection", "ls"]).await;
    assert!(ok, "{out}{err}");
    let balance_row = out
        .lines()
        .find(|l| l.starts_with("AccountBalanceView"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(balance_row.contains("read_db.account_balance"), "{out}");
    let order_row = out
        .lines()
        .find(|l| l.starts_with("OrderSummaryView"))
        .unwrap();
    assert!(order_row.contains("not running"), "{out}");

    let (ok, out, err) = run(&url, &["projection", "rebuild", "AccountBalanceView"]).await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("rebuilt beside the live view and switched"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("generation") && l.ends_with('2')),
        "{out}"
    );

    let (ok, out, err) = run(
        &url,
        &["--json", "projection", "status", "AccountBalanceView"],
    )
    .await;
    assert!(ok, "{out}{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (status["generation"].as_u64(), status["lag"].as_u64()),
        (Some(2), Some(0))
    );

    let (ok, _, err) = run(&url, &["projection", "status", "NoSuchView"]).await;
    assert!(!ok);
    assert!(err.contains("no projection `NoSuchView` here"), "{err}");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
