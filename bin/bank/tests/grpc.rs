//! The bank service on a real nats-server, through its gRPC API and its projection
//! control subjects.

use std::time::Duration;

use bank::control::control_subject;
use bank::BankConfig;
use saga_proto::es as pb;
use saga_proto::es::bank_client::BankClient;
use saga_testkit::NatsServer;
use tonic::Code;

async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_deposit_withdraw_read_back_and_rebuild_through_the_api() {
    let nats = NatsServer::start().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let definition = saga_aggregates::load_definition("banking-account.yaml").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bank::serve_on(
        listener,
        BankConfig {
            definition,
            views: bank::ViewTarget::Sled(dir.path().to_path_buf()),
        },
        client.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    let mut bank = eventually("the server", || async {
        BankClient::connect(format!("http://{addr}")).await.ok()
    })
    .await;

    let opened = bank
        .open_account(pb::OpenAccountRequest {
            account_id: "A1".into(),
            customer_id: "C1".into(),
            initial_balance: "1000".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((opened.balance.as_str(), opened.version), ("1000.00", 1));
    let deposit = pb::DepositRequest {
        account_id: "A1".into(),
        transaction_id: "t1".into(),
        amount: "500".into(),
        currency: String::new(),
    };
    let first = bank.deposit(deposit.clone()).await.unwrap().into_inner();
    assert_eq!(
        (first.balance_after.as_str(), first.repeated),
        ("1500.00", false)
    );
    let withdrawn = bank
        .withdraw(pb::WithdrawRequest {
            account_id: "A1".into(),
            transaction_id: "t2".into(),
            amount: "200".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (withdrawn.balance_after.as_str(), withdrawn.version),
        ("1300.00", 3)
    );

    // The same transaction id again: the first result, nothing changed.
    let again = bank.deposit(deposit).await.unwrap().into_inner();
    assert!(again.repeated);
    assert_eq!(
        (again.balance_after.as_str(), again.version),
        ("1500.00", 3)
    );

    let refused = bank
        .withdraw(pb::WithdrawRequest {
            account_id: "A1".into(),
            transaction_id: "t3".into(),
            amount: "5000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused
            .message()
            .contains("balance 1300.00 is less than the withdrawal of 5000.00"),
        "{}",
        refused.message()
    );

    let balance = eventually("the balance view", || {
        let mut bank = bank.clone();
        async move {
            let b = bank
                .get_balance(pb::GetBalanceRequest {
                    account_id: "A1".into(),
                })
                .await
                .ok()?
                .into_inner();
            (b.version == 3).then_some(b)
        }
    })
    .await;
    assert_eq!(balance.balance, "1300.00");

    let page = eventually("the history view", || {
        let mut bank = bank.clone();
        async move {
            let p = bank
                .list_transactions(pb::ListTransactionsRequest {
                    account_id: "A1".into(),
                    page_size: 1,
                    page_token: String::new(),
                })
                .await
                .ok()?
                .into_inner();
            (!p.next_page_token.is_empty()).then_some(p)
        }
    })
    .await;
    assert_eq!(page.transactions[0].transaction_id, "t1");
    let next = bank
        .list_transactions(pb::ListTransactionsRequest {
            account_id: "A1".into(),
            page_size: 1,
            page_token: page.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.transactions.len(), 1);
    assert_eq!(next.transactions[0].kind, "withdrawal");
    assert!(next.next_page_token.is_empty());

    let at2 = bank
        .get_account_at(pb::GetAccountAtRequest {
            account_id: "A1".into(),
            at: Some(pb::get_account_at_request::At::Version(2)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((at2.balance.as_str(), at2.version), ("1500.00", 2));
    assert_eq!(at2.transactions.len(), 1);

    // Projection control, as sagactl uses it.
    let status: serde_json::Value = serde_json::from_slice(
        &client
            .request(control_subject("AccountBalanceView", "status"), "".into())
            .await
            .unwrap()
            .payload,
    )
    .unwrap();
    assert_eq!(status["lag"], 0, "{status}");
    assert_eq!(status["generation"], 1, "{status}");
    let rebuilt: serde_json::Value = serde_json::from_slice(
        &client
            .request(control_subject("AccountBalanceView", "rebuild"), "".into())
            .await
            .unwrap()
            .payload,
    )
    .unwrap();
    assert_eq!(rebuilt["generation"], 2, "{rebuilt}");
    let b = bank
        .get_balance(pb::GetBalanceRequest {
            account_id: "A1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((b.balance.as_str(), b.version), ("1300.00", 3));

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
