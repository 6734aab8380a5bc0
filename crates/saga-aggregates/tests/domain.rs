//! The business rules of BankAccount and Order, given/when/then, and their definitions.

use saga_aggregates::bank::{
    self, BankAccount, BankCommand, BankEvent, BALANCE_NOT_NEGATIVE, TRANSACTION_ID_UNIQUE,
};
use saga_aggregates::order::{
    Order, OrderCommand, OrderEvent, OrderStatus, CREATED_BEFORE_CONFIRMED, NO_CANCEL_AFTER_SHIPPED,
};
use saga_aggregates::{load_definition, Money};
use saga_proto::es as pb;
use saga_testkit::es::AggregateTest;

fn opened(balance: &str) -> BankEvent {
    BankEvent::Opened(pb::AccountOpened {
        account_id: "A1".into(),
        customer_id: "C1".into(),
        initial_balance: balance.into(),
        opened_at: 1,
    })
}

fn deposited(tx: &str, amount: &str) -> BankEvent {
    BankEvent::Deposited(pb::MoneyDeposited {
        account_id: "A1".into(),
        amount: amount.into(),
        transaction_id: tx.into(),
        deposited_at: 2,
        currency: String::new(),
    })
}

fn deposit(tx: &str, amount: &str) -> BankCommand {
    BankCommand::Deposit {
        transaction_id: tx.into(),
        amount: amount.parse().unwrap(),
        currency: String::new(),
        at: 2,
    }
}

#[test]
fn a_withdrawal_past_the_balance_is_refused_naming_the_balance() {
    let e = AggregateTest::<BankAccount>::given([opened("100.00")])
        .when(BankCommand::Withdraw {
            transaction_id: "t1".into(),
            amount: Money(20_000),
            at: 3,
        })
        .then_expect_invariant(BALANCE_NOT_NEGATIVE);
    assert_eq!(
        e.to_string(),
        "balance 100.00 is less than the withdrawal of 200.00 (invariant: Balance cannot be negative)"
    );
}

#[test]
fn a_repeated_transaction_id_changes_nothing_and_a_reused_one_is_refused() {
    let state = AggregateTest::<BankAccount>::given([opened("1000"), deposited("t1", "500")])
        .when(deposit("t1", "500"))
        .then_expect_no_events();
    assert_eq!(state.balance, Money(150_000));
    AggregateTest::<BankAccount>::given([opened("1000"), deposited("t1", "500")])
        .when(deposit("t1", "600"))
        .then_expect_invariant(TRANSACTION_ID_UNIQUE);
}

#[test]
fn deposits_and_withdrawals_move_the_balance() {
    let state = AggregateTest::<BankAccount>::given([opened("1000"), deposited("t1", "500")])
        .when(BankCommand::Withdraw {
            transaction_id: "t2".into(),
            amount: Money(20_000),
            at: 3,
        })
        .then_expect_events(vec![BankEvent::Withdrawn(pb::MoneyWithdrawn {
            account_id: "A1".into(),
            amount: "200.00".into(),
            transaction_id: "t2".into(),
            withdrawn_at: 3,
        })]);
    assert_eq!(state.balance.to_string(), "1300.00");
    assert_eq!(state.transactions["t2"].balance_after, Money(130_000));
    AggregateTest::<BankAccount>::given_no_previous_events()
        .when(deposit("t1", "5"))
        .then_expect_error_containing("not open");
}

fn created() -> OrderEvent {
    OrderEvent::Created(pb::OrderCreated {
        order_id: "ORD-001".into(),
        user_id: "123".into(),
        items: vec![],
        created_at: 1,
    })
}

#[test]
fn an_order_is_not_confirmed_before_it_is_created() {
    let e = AggregateTest::<Order>::given_no_previous_events()
        .when(OrderCommand::Confirm { at: 1 })
        .then_expect_invariant(CREATED_BEFORE_CONFIRMED);
    assert!(e
        .to_string()
        .contains("OrderCreated must precede OrderConfirmed"));
}

#[test]
fn a_shipped_order_cannot_be_cancelled() {
    let shipped = OrderEvent::Shipped(pb::OrderShipped {
        order_id: "ORD-001".into(),
        tracking_number: "TRACK-123".into(),
        shipped_at: 3,
    });
    let confirmed = OrderEvent::Confirmed(pb::OrderConfirmed {
        order_id: "ORD-001".into(),
        confirmed_at: 2,
    });
    let e = AggregateTest::<Order>::given([created(), confirmed.clone(), shipped])
        .when(OrderCommand::Cancel {
            reason: "changed my mind".into(),
            at: 4,
        })
        .then_expect_invariant(NO_CANCEL_AFTER_SHIPPED);
    assert!(e.message.contains("TRACK-123"), "{e}");
    let state = AggregateTest::<Order>::given([created(), confirmed])
        .when(OrderCommand::Cancel {
            reason: "out of stock".into(),
            at: 4,
        })
        .then_expect_events(vec![OrderEvent::Cancelled(pb::OrderCancelled {
            order_id: "ORD-001".into(),
            reason: "out of stock".into(),
            cancelled_at: 4,
        })]);
    assert_eq!(state.status, OrderStatus::Cancelled);
}

#[test]
fn the_shipped_definitions_load_match_the_protobuf_messages_and_name_the_invariants() {
    let bank = load_definition("banking-account.yaml").unwrap();
    assert_eq!(bank.name, "BankAccount");
    assert_eq!(bank.event_store.snapshot_every, Some(100));
    assert_eq!(bank.event_store.partition_key.as_deref(), Some("accountId"));
    assert_eq!(
        bank.event_store.retention,
        Some(std::time::Duration::from_secs(7 * 365 * 86_400))
    );
    let names: Vec<_> = bank.projections.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["AccountBalanceView", "TransactionHistoryView"]);
    assert_eq!(bank.invariant("negative"), Some(BALANCE_NOT_NEGATIVE));
    assert_eq!(bank.invariant("unique"), Some(TRANSACTION_ID_UNIQUE));
    // The shipped v1 definition needs no upcaster; the chain is still valid for it.
    bank::upcasters().check(&bank).unwrap();

    let order = load_definition("order.yaml").unwrap();
    assert_eq!(order.invariant("precede"), Some(CREATED_BEFORE_CONFIRMED));
    assert_eq!(order.invariant("follow"), Some(NO_CANCEL_AFTER_SHIPPED));
}

#[test]
fn a_schema_that_disagrees_with_the_protobuf_message_is_refused() {
    let text = std::fs::read_to_string(saga_aggregates::definitions_dir().join("banking-account.yaml"))
        .unwrap()
        .replace("      amount: decimal\n      transactionId: string\n      depositedAt", "      amount: bool\n      transactionId: string\n      depositedBy: string\n      depositedAt");
    let def = saga_eventstore::definition::parse_aggregate("bad.yaml", &text)
        .unwrap()
        .definition;
    let err = saga_aggregates::check_against_proto("bad.yaml", &def)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad.yaml: event `MoneyDeposited` field `amount`: declared `bool` but `saga.es.v1.MoneyDeposited.amount` is String"), "{err}");
    assert!(
        err.contains(
            "field `depositedBy`: `saga.es.v1.MoneyDeposited` has no field `deposited_by`"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn the_projection_harness_rebuilds_the_balance_and_finds_1300_at_version_3() {
    use saga_aggregates::views::{account_balance, AccountBalanceView};
    use saga_testkit::es::ProjectionTest;
    use std::sync::Arc;

    let test = ProjectionTest::new(&load_definition("banking-account.yaml").unwrap())
        .with_upcasters(bank::upcasters());
    test.given::<BankAccount>("A1", vec![opened("1000"), deposited("t1", "500")])
        .await
        .given::<BankAccount>(
            "A1",
            vec![BankEvent::Withdrawn(pb::MoneyWithdrawn {
                account_id: "A1".into(),
                amount: "200".into(),
                transaction_id: "t2".into(),
                withdrawn_at: 3,
            })],
        )
        .await;
    let views = test
        .rebuild_and_compare(Arc::new(AccountBalanceView::default()))
        .await;
    let row = account_balance(&views, "A1").await.unwrap().unwrap();
    assert_eq!(row.balance.to_string(), "1300.00");
    assert_eq!(row.version, 3);
}
