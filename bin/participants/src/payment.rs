//! `payment` (order saga: `ChargePayment` / `RefundPayment`, `Payload.order`) and
//! `PaymentService` (travel saga: `chargeCard` / `refundPayment`, `Payload.fields`
//! `customer_id`, `amount_cents`). One handler, one ledger.

use saga_participant::saga_proto::{payload as pb_payload, StepCommand};
use saga_participant::{Abort, Handler, Reply, Tx};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::json;
use crate::ledger::{self, LEDGER_TREE};
use crate::payload::{self, record_key, result};

/// Service of the order saga.
pub const SERVICE: &str = "payment";
/// Service of the travel saga.
pub const TRAVEL_SERVICE: &str = "PaymentService";
/// Charge actions (order saga, travel saga).
pub const CHARGE_ACTIONS: [&str; 2] = ["ChargePayment", "chargeCard"];
/// Refund actions (order saga, travel saga).
pub const REFUND_ACTIONS: [&str; 2] = ["RefundPayment", "refundPayment"];
/// `<saga_id>/<step>` -> [`Charge`] (JSON).
pub const CHARGES_TREE: &str = "charges";
/// Largest charge accepted by default, in cents.
pub const DEFAULT_LIMIT_CENTS: i64 = 1_000_000;
/// Customers whose id starts with this are declined.
pub const DECLINED_PREFIX: &str = "decline-";

/// The payment handler.
#[derive(Debug, Clone)]
pub struct Payment {
    limit_cents: i64,
}

/// A charge as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Charge {
    /// `charged`, or `refunded` (also a refund that found nothing: a tombstone).
    pub status: String,
    /// Customer.
    pub customer_id: String,
    /// Amount.
    pub amount_cents: i64,
}

impl Payment {
    /// Declines charges above `limit_cents`.
    pub fn new(limit_cents: i64) -> Self {
        Self { limit_cents }
    }

    fn charge(&self, tx: &Tx<'_>, cmd: &StepCommand) -> Result<Reply, Abort> {
        let (customer_id, amount_cents) = match what_to_charge(cmd) {
            Ok(c) => c,
            Err(why) => return Ok(Reply::BusinessFailure(why)),
        };
        let key = record_key(cmd);
        match json::get::<Charge>(tx, CHARGES_TREE, &key)? {
            Some(c) if c.status == "charged" => return Ok(charged(&key, &c)),
            Some(_) => {
                return Ok(Reply::BusinessFailure(format!(
                    "Payment declined: charge {key} was already refunded"
                )))
            }
            None => {}
        }
        if customer_id.starts_with(DECLINED_PREFIX) {
            return Ok(Reply::BusinessFailure(format!(
                "Payment declined: card of customer {customer_id} was declined"
            )));
        }
        if amount_cents > self.limit_cents {
            return Ok(Reply::BusinessFailure(format!(
                "Payment declined: {amount_cents} cents exceeds the limit of {} cents",
                self.limit_cents
            )));
        }
        let charge = Charge {
            status: "charged".into(),
            customer_id,
            amount_cents,
        };
        json::put(tx, CHARGES_TREE, &key, &charge)?;
        ledger::record(
            tx,
            cmd,
            "charge",
            &key,
            json!({ "customer_id": charge.customer_id, "amount_cents": amount_cents }),
        )?;
        Ok(charged(&key, &charge))
    }

    fn refund(&self, tx: &Tx<'_>, cmd: &StepCommand) -> Result<Reply, Abort> {
        let key = record_key(cmd);
        match json::get::<Charge>(tx, CHARGES_TREE, &key)? {
            None => {
                let tombstone = Charge {
                    status: "refunded".into(),
                    customer_id: String::new(),
                    amount_cents: 0,
                };
                json::put(tx, CHARGES_TREE, &key, &tombstone)?;
                Ok(refunded(&key, 0, true))
            }
            Some(c) if c.status == "refunded" => Ok(refunded(&key, c.amount_cents, false)),
            Some(mut c) => {
                c.status = "refunded".into();
                json::put(tx, CHARGES_TREE, &key, &c)?;
                ledger::record(
                    tx,
                    cmd,
                    "refund",
                    &key,
                    json!({ "customer_id": c.customer_id, "amount_cents": c.amount_cents }),
                )?;
                Ok(refunded(&key, c.amount_cents, false))
            }
        }
    }
}

/// Customer and amount of a charge command.
fn what_to_charge(cmd: &StepCommand) -> Result<(String, i64), String> {
    let (customer, amount) = match cmd.payload.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(pb_payload::Kind::Order(o)) => {
            let amount = if o.total_cents != 0 {
                o.total_cents
            } else {
                o.items
                    .iter()
                    .map(|i| i.quantity.saturating_mul(i.unit_price_cents))
                    .sum()
            };
            (o.customer_id.clone(), amount)
        }
        Some(pb_payload::Kind::Fields(f)) => {
            let amount = payload::int_field(f, "amount_cents")?
                .ok_or_else(|| "invalid payload: field `amount_cents` is missing".to_string())?;
            (
                payload::string_field(f, "customer_id").unwrap_or_default(),
                amount,
            )
        }
        _ => {
            return Err(format!(
                "invalid payload: {} needs Payload.order or Payload.fields",
                cmd.action
            ))
        }
    };
    if amount < 0 {
        return Err(format!("invalid payload: negative amount {amount}"));
    }
    Ok((customer, amount))
}

fn charged(key: &str, c: &Charge) -> Reply {
    Reply::Ok(result([
        ("charge_id", key.into()),
        ("amount_cents", c.amount_cents.into()),
    ]))
}

fn refunded(key: &str, amount_cents: i64, nothing_to_undo: bool) -> Reply {
    Reply::Ok(result([
        ("charge_id", key.into()),
        ("refunded_cents", amount_cents.into()),
        ("nothing_to_undo", nothing_to_undo.into()),
    ]))
}

impl Handler for Payment {
    fn trees(&self) -> &[&str] {
        &[CHARGES_TREE, LEDGER_TREE]
    }

    fn handle(&self, tx: &Tx<'_>, cmd: &StepCommand) -> Result<Reply, Abort> {
        let action = cmd.action.as_str();
        if CHARGE_ACTIONS.contains(&action) {
            self.charge(tx, cmd)
        } else if REFUND_ACTIONS.contains(&action) {
            self.refund(tx, cmd)
        } else {
            Err(Abort::Reject(format!("payment has no action `{action}`")))
        }
    }
}
