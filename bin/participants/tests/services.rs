//! Business rules of the example participants, run through the SDK's inbox +
//! transaction path (`ParticipantStore::apply`) on a throwaway sled database.

use std::time::Duration;

use participants::inventory::{self, Inventory};
use participants::ledger::{self, LedgerEntry};
use participants::{Booking, Orders, Payment};
use prost_types::value::Kind;
use prost_types::{Struct, Value};
use saga_participant::saga_proto::{payload, step_reply, Order, OrderItem, Payload, StepCommand};
use saga_participant::{Applied, Handler, ParticipantStore};

const WINDOW: Duration = Duration::from_secs(24 * 3600);
const NOW: u64 = 1_700_000_000_000;

struct Svc<H> {
    store: ParticipantStore,
    service: &'static str,
    handler: H,
}

impl<H: Handler> Svc<H> {
    fn new(service: &'static str, handler: H) -> Self {
        Self {
            store: ParticipantStore::temporary().unwrap(),
            service,
            handler,
        }
    }

    fn apply(&self, cmd: &StepCommand) -> Applied {
        self.store
            .apply(self.service, &self.handler, cmd, NOW, WINDOW)
            .unwrap()
    }

    fn ledger(&self) -> Vec<LedgerEntry> {
        ledger::entries(self.store.db()).unwrap()
    }
}

fn cmd(
    saga: &str,
    step: &str,
    action: &str,
    compensation: bool,
    p: Option<Payload>,
) -> StepCommand {
    StepCommand {
        saga_id: saga.into(),
        saga_type: "T".into(),
        step: step.into(),
        action: action.into(),
        attempt: 1,
        idempotency_key: format!("{saga}/{step}/{action}"),
        compensation,
        payload: p,
        reply_to: format!("saga.in.0.{saga}"),
        ..Default::default()
    }
}

fn order(id: &str, customer: &str, items: &[(&str, i64)], total: i64) -> Option<Payload> {
    Some(Payload {
        kind: Some(payload::Kind::Order(Order {
            order_id: id.into(),
            customer_id: customer.into(),
            items: items
                .iter()
                .map(|(sku, q)| OrderItem {
                    sku: (*sku).into(),
                    quantity: *q,
                    unit_price_cents: 100,
                })
                .collect(),
            total_cents: total,
        })),
    })
}

fn fields(pairs: &[(&str, Kind)]) -> Option<Payload> {
    Some(Payload {
        kind: Some(payload::Kind::Fields(Struct {
            fields: pairs
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).into(),
                        Value {
                            kind: Some(v.clone()),
                        },
                    )
                })
                .collect(),
        })),
    })
}

fn s(v: &str) -> Kind {
    Kind::StringValue(v.into())
}

fn business_failure(a: &Applied) -> String {
    match a.reply().and_then(|r| r.outcome.as_ref()) {
        Some(step_reply::Outcome::BusinessFailure(b)) => b.reason.clone(),
        other => panic!("expected a business failure, got {other:?} ({a:?})"),
    }
}

fn ok_field(a: &Applied, name: &str) -> Kind {
    match a.reply().and_then(|r| r.outcome.as_ref()) {
        Some(step_reply::Outcome::Ok(ok)) => match ok.result.as_ref().and_then(|p| p.kind.as_ref())
        {
            Some(payload::Kind::Fields(f)) => f.fields[name].kind.clone().unwrap(),
            other => panic!("no fields in {other:?}"),
        },
        other => panic!("expected ok, got {other:?} ({a:?})"),
    }
}

fn kinds(entries: &[LedgerEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.kind.as_str()).collect()
}

#[test]
fn inventory_reserves_all_or_nothing_and_releases_once() {
    let inv = Svc::new("inventory", Inventory::new(10));
    let db = inv.store.db().clone();

    let reserve = cmd(
        "s1",
        "ReserveStock",
        "ReserveStock",
        false,
        order("o1", "c", &[("A", 4), ("B", 2), ("A", 1)], 0),
    );
    let first = inv.apply(&reserve);
    assert!(matches!(first, Applied::Executed(_)));
    assert_eq!(ok_field(&first, "units"), Kind::NumberValue(7.0));
    assert_eq!(inventory::stock(&db, "A", 10).unwrap(), 5);
    assert_eq!(inventory::stock(&db, "B", 10).unwrap(), 8);
    // The same command again: the recorded reply, no second reservation.
    assert!(matches!(inv.apply(&reserve), Applied::Recorded(r) if Some(&r) == first.reply()));

    // Not enough B: nothing is reserved, not even A.
    let greedy = cmd(
        "s2",
        "ReserveStock",
        "ReserveStock",
        false,
        order("o2", "c", &[("A", 1), ("B", 9)], 0),
    );
    let reason = business_failure(&inv.apply(&greedy));
    assert!(reason.starts_with("Insufficient stock"), "{reason}");
    assert!(
        reason.contains("SKU B")
            && reason.contains("requested 9")
            && reason.contains("available 8"),
        "{reason}"
    );
    assert_eq!(inventory::stock(&db, "A", 10).unwrap(), 5);

    let release = cmd(
        "s1",
        "ReserveStock",
        "ReleaseStock",
        true,
        order("o1", "c", &[], 0),
    );
    assert_eq!(
        ok_field(&inv.apply(&release), "nothing_to_undo"),
        Kind::BoolValue(false)
    );
    assert_eq!(inventory::stock(&db, "A", 10).unwrap(), 10);
    assert_eq!(inventory::stock(&db, "B", 10).unwrap(), 10);
    // A release that reaches the handler again (inbox expired) does not put stock back twice.
    let mut release_again = release.clone();
    release_again.idempotency_key.push_str("#again");
    assert!(matches!(inv.apply(&release_again), Applied::Executed(_)));
    assert_eq!(inventory::stock(&db, "A", 10).unwrap(), 10);

    assert_eq!(kinds(&inv.ledger()), ["reserve", "release"]);
}

#[test]
fn inventory_release_without_reservation_is_ok_and_refuses_a_late_reservation() {
    let inv = Svc::new(
        "inventory",
        Inventory::new(inventory::DEFAULT_INITIAL_STOCK),
    );
    let release = cmd("s1", "ReserveStock", "ReleaseStock", true, None);
    assert_eq!(
        ok_field(&inv.apply(&release), "nothing_to_undo"),
        Kind::BoolValue(true)
    );

    let late = cmd(
        "s1",
        "ReserveStock",
        "ReserveStock",
        false,
        order("o1", "c", &[("A", 1)], 0),
    );
    assert!(business_failure(&inv.apply(&late)).contains("already released"));
    assert!(inv.ledger().is_empty());
    assert_eq!(inventory::stock(inv.store.db(), "A", 1000).unwrap(), 1000);

    let bad = cmd("s2", "ReserveStock", "ReserveStock", false, fields(&[]));
    assert!(business_failure(&inv.apply(&bad)).starts_with("invalid payload"));
    let unknown = cmd("s3", "X", "Teleport", false, None);
    assert!(matches!(inv.apply(&unknown), Applied::Rejected(_)));
}

#[test]
fn payment_declines_over_the_limit_and_blocked_customers_and_refunds_once() {
    let pay = Svc::new("payment", Payment::new(5_000));
    let over = cmd(
        "s1",
        "ChargePayment",
        "ChargePayment",
        false,
        order("o", "c1", &[], 5_001),
    );
    assert!(business_failure(&pay.apply(&over)).starts_with("Payment declined: "));
    let blocked = cmd(
        "s2",
        "ChargePayment",
        "ChargePayment",
        false,
        order("o", "decline-bob", &[], 100),
    );
    assert!(business_failure(&pay.apply(&blocked)).starts_with("Payment declined: "));

    // Total taken from the items when not given: 3 x 100.
    let charge = cmd(
        "s3",
        "ChargePayment",
        "ChargePayment",
        false,
        order("o", "c1", &[("A", 3)], 0),
    );
    assert_eq!(
        ok_field(&pay.apply(&charge), "amount_cents"),
        Kind::NumberValue(300.0)
    );
    assert!(matches!(pay.apply(&charge), Applied::Recorded(_)));

    let refund = cmd("s3", "ChargePayment", "RefundPayment", true, None);
    assert_eq!(
        ok_field(&pay.apply(&refund), "refunded_cents"),
        Kind::NumberValue(300.0)
    );
    let mut again = refund.clone();
    again.idempotency_key.push_str("#again");
    assert!(matches!(pay.apply(&again), Applied::Executed(_)));

    let nothing = cmd("s4", "ChargePayment", "RefundPayment", true, None);
    assert_eq!(
        ok_field(&pay.apply(&nothing), "nothing_to_undo"),
        Kind::BoolValue(true)
    );

    assert_eq!(kinds(&pay.ledger()), ["charge", "refund"]);
}

#[test]
fn payment_service_reads_struct_fields_for_the_travel_saga() {
    let pay = Svc::new("PaymentService", Payment::new(1_000_000));
    let charge = cmd(
        "t1",
        "ChargePayment",
        "chargeCard",
        false,
        fields(&[
            ("customer_id", s("alice")),
            ("amount_cents", Kind::NumberValue(42_000.0)),
        ]),
    );
    assert_eq!(
        ok_field(&pay.apply(&charge), "amount_cents"),
        Kind::NumberValue(42_000.0)
    );
    let big = cmd(
        "t2",
        "ChargePayment",
        "chargeCard",
        false,
        fields(&[("customer_id", s("alice")), ("amount_cents", s("1000001"))]),
    );
    assert!(business_failure(&pay.apply(&big)).starts_with("Payment declined: "));
    let declined = cmd(
        "t3",
        "ChargePayment",
        "chargeCard",
        false,
        fields(&[
            ("customer_id", s("decline-eve")),
            ("amount_cents", Kind::NumberValue(1.0)),
        ]),
    );
    assert!(business_failure(&pay.apply(&declined)).starts_with("Payment declined: "));
    let missing = cmd(
        "t4",
        "ChargePayment",
        "chargeCard",
        false,
        fields(&[("customer_id", s("a"))]),
    );
    assert!(business_failure(&pay.apply(&missing)).contains("amount_cents"));

    let refund = cmd("t1", "ChargePayment", "refundPayment", true, None);
    assert_eq!(
        ok_field(&pay.apply(&refund), "nothing_to_undo"),
        Kind::BoolValue(false)
    );
    let entries = pay.ledger();
    assert_eq!(kinds(&entries), ["charge", "refund"]);
    assert_eq!(entries[0].detail["customer_id"], "alice");
}

impl<H: Handler> Svc<H> {
    async fn apply_prepared(&self, cmd: &StepCommand) -> Applied {
        self.store
            .apply_prepared(self.service, &self.handler, cmd, NOW, WINDOW)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn orders_confirm_once_ship_and_refuse_a_cancel_after_shipping() {
    let orders = Svc::new("orders", Orders::in_memory());
    let confirm = cmd(
        "s1",
        "ConfirmOrder",
        "ConfirmOrder",
        false,
        order("o-1", "c", &[("sku-1", 2)], 200),
    );
    let first = orders.apply_prepared(&confirm).await;
    assert!(matches!(first, Applied::Executed(_)), "{first:?}");
    assert_eq!(ok_field(&first, "order_id"), s("o-1"));
    assert_eq!(ok_field(&first, "status"), s("Confirmed"));
    // OrderCreated and OrderConfirmed, appended together.
    assert_eq!(ok_field(&first, "version"), Kind::NumberValue(2.0));
    // The same command again is answered from the inbox.
    assert!(matches!(
        orders.apply_prepared(&confirm).await,
        Applied::Recorded(_)
    ));
    // Another saga confirming the same order appends nothing.
    let mut again = confirm.clone();
    again.idempotency_key.push_str("#again");
    assert_eq!(
        ok_field(&orders.apply_prepared(&again).await, "version"),
        Kind::NumberValue(2.0)
    );

    let ship = cmd(
        "s1",
        "ShipOrder",
        "ShipOrder",
        false,
        fields(&[("order_id", s("o-1")), ("tracking_number", s("TN-1"))]),
    );
    let shipped = orders.apply_prepared(&ship).await;
    assert_eq!(ok_field(&shipped, "tracking_number"), s("TN-1"));
    let cancel = cmd(
        "s1",
        "CancelOrder",
        "CancelOrder",
        false,
        fields(&[("order_id", s("o-1")), ("reason", s("changed my mind"))]),
    );
    let refused = business_failure(&orders.apply_prepared(&cancel).await);
    assert!(
        refused.contains("OrderCancelled cannot follow OrderShipped"),
        "{refused}"
    );

    let rejected = cmd(
        "s2",
        "ConfirmOrder",
        "ConfirmOrder",
        false,
        order("reject-7", "c", &[], 1),
    );
    assert!(business_failure(&orders.apply_prepared(&rejected).await)
        .starts_with("Order confirmation rejected"));
    let unknown = cmd("s3", "X", "Refund", false, order("o-2", "c", &[], 1));
    assert!(matches!(
        orders.apply_prepared(&unknown).await,
        Applied::Rejected(_)
    ));
    assert_eq!(kinds(&orders.ledger()), ["confirm", "confirm", "ship"]);
}

#[tokio::test]
async fn orders_refuse_to_confirm_a_cancelled_order_and_to_ship_an_unconfirmed_one() {
    let orders = Svc::new("orders", Orders::in_memory());
    let ship = cmd(
        "s1",
        "ShipOrder",
        "ShipOrder",
        false,
        fields(&[("order_id", s("o-9"))]),
    );
    let refused = business_failure(&orders.apply_prepared(&ship).await);
    assert!(
        refused.contains("only a confirmed order ships"),
        "{refused}"
    );
    let cancel = cmd(
        "s2",
        "CancelOrder",
        "CancelOrder",
        false,
        fields(&[("order_id", s("o-9"))]),
    );
    assert!(business_failure(&orders.apply_prepared(&cancel).await).contains("never created"));
}

#[test]
fn flight_and_hotel_decline_full_and_cancel_idempotently() {
    for (svc, field, reserve, cancel) in [
        (
            Booking::flight(),
            "flight",
            "reserveFlight",
            "cancelFlightReservation",
        ),
        (
            Booking::hotel(),
            "hotel",
            "reserveHotel",
            "cancelHotelReservation",
        ),
    ] {
        let b = Svc::new(svc.service(), svc);
        let full = cmd(
            "t1",
            "Reserve",
            reserve,
            false,
            fields(&[(field, s("full-LH123"))]),
        );
        assert!(!business_failure(&b.apply(&full)).is_empty());

        let ok = cmd(
            "t2",
            "Reserve",
            reserve,
            false,
            fields(&[(field, s("LH123"))]),
        );
        assert_eq!(ok_field(&b.apply(&ok), field), s("LH123"));
        assert!(matches!(b.apply(&ok), Applied::Recorded(_)));

        let undo = cmd("t2", "Reserve", cancel, true, None);
        assert_eq!(
            ok_field(&b.apply(&undo), "nothing_to_undo"),
            Kind::BoolValue(false)
        );
        let mut undo_again = undo.clone();
        undo_again.idempotency_key.push_str("#again");
        assert!(matches!(b.apply(&undo_again), Applied::Executed(_)));

        let nothing = cmd("t3", "Reserve", cancel, true, None);
        assert_eq!(
            ok_field(&b.apply(&nothing), "nothing_to_undo"),
            Kind::BoolValue(true)
        );
        let late = cmd("t3", "Reserve", reserve, false, fields(&[(field, s("X"))]));
        assert!(business_failure(&b.apply(&late)).contains("already cancelled"));

        assert_eq!(kinds(&b.ledger()), ["reserve", "cancel"], "{field}");
    }
}

#[test]
fn ledger_counts_read_a_stopped_participants_directory() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = ParticipantStore::open(dir.path()).unwrap();
        let inv = Inventory::new(10);
        let c = cmd(
            "s1",
            "ReserveStock",
            "ReserveStock",
            false,
            order("o", "c", &[("A", 1)], 0),
        );
        store.apply("inventory", &inv, &c, NOW, WINDOW).unwrap();
        store.db().flush().unwrap();
    }
    let counts = participants::ledger_counts(dir.path()).unwrap();
    assert_eq!(counts.get("reserve"), Some(&1));
    let entries = participants::read_ledger(dir.path()).unwrap();
    assert_eq!(entries[0].key, "s1/ReserveStock");
    assert_eq!(ledger::summary(&entries), "ledger: 1 effects (reserve=1)");
}

#[test]
fn inventory_refuses_quantities_that_overflow_and_never_wraps_stock() {
    let inv = Svc::new("inventory", Inventory::new(i64::MAX));
    let db = inv.store.db().clone();
    let twice_max = cmd(
        "s1",
        "ReserveStock",
        "ReserveStock",
        false,
        order("o1", "c", &[("A", i64::MAX), ("A", i64::MAX)], 0),
    );
    let reason = business_failure(&inv.apply(&twice_max));
    assert!(
        reason.contains("the quantities of SKU A add up to more than 9223372036854775807"),
        "{reason}"
    );
    assert_eq!(inventory::stock(&db, "A", i64::MAX).unwrap(), i64::MAX);

    // All of it reserved, then released: back to the maximum, not wrapped negative.
    let all = cmd(
        "s2",
        "ReserveStock",
        "ReserveStock",
        false,
        order("o2", "c", &[("A", i64::MAX)], 0),
    );
    assert!(matches!(inv.apply(&all), Applied::Executed(_)));
    assert_eq!(inventory::stock(&db, "A", i64::MAX).unwrap(), 0);
    let release = cmd(
        "s2",
        "ReserveStock",
        "ReleaseStock",
        true,
        order("o2", "c", &[("A", i64::MAX)], 0),
    );
    assert!(matches!(inv.apply(&release), Applied::Executed(_)));
    assert_eq!(inventory::stock(&db, "A", i64::MAX).unwrap(), i64::MAX);
}
