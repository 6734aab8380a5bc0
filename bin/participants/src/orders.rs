//! `orders`: `ConfirmOrder` records the confirmation of an order.

use saga_participant::saga_proto::{payload as pb_payload, StepCommand};
use saga_participant::{Abort, Handler, Reply, Tx};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::json;
use crate::ledger::{self, LEDGER_TREE};
use crate::payload::{self, result};

/// Service name.
pub const SERVICE: &str = "orders";
/// Confirm the order.
pub const CONFIRM: &str = "ConfirmOrder";
/// Order id -> [`Confirmation`] (JSON).
pub const CONFIRMATIONS_TREE: &str = "confirmations";
/// Orders whose id starts with this are rejected (the "ConfirmationRejected" scenario).
pub const REJECTED_PREFIX: &str = "reject-";

/// The orders handler.
#[derive(Debug, Clone, Default)]
pub struct Orders;

/// A confirmation as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confirmation {
    /// The saga that confirmed it.
    pub saga_id: String,
    /// When (ms since the epoch).
    pub confirmed_at: u64,
}

fn order_id(cmd: &StepCommand) -> String {
    let id = match cmd.payload.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(pb_payload::Kind::Order(o)) => o.order_id.clone(),
        Some(pb_payload::Kind::Fields(f)) => {
            payload::string_field(f, "order_id").unwrap_or_default()
        }
        _ => String::new(),
    };
    if id.is_empty() {
        cmd.saga_id.clone()
    } else {
        id
    }
}

impl Handler for Orders {
    fn trees(&self) -> &[&str] {
        &[CONFIRMATIONS_TREE, LEDGER_TREE]
    }

    fn handle(&self, tx: &Tx<'_>, cmd: &StepCommand) -> Result<Reply, Abort> {
        if cmd.action != CONFIRM {
            return Err(Abort::Reject(format!(
                "{SERVICE} has no action `{}`",
                cmd.action
            )));
        }
        let id = order_id(cmd);
        if id.starts_with(REJECTED_PREFIX) {
            return Ok(Reply::BusinessFailure(format!(
                "Order confirmation rejected: order {id}"
            )));
        }
        let confirmed = |c: &Confirmation| {
            Reply::Ok(result([
                ("order_id", id.clone().into()),
                ("confirmed_at", (c.confirmed_at as i64).into()),
            ]))
        };
        if let Some(c) = json::get::<Confirmation>(tx, CONFIRMATIONS_TREE, &id)? {
            return Ok(confirmed(&c));
        }
        let c = Confirmation {
            saga_id: cmd.saga_id.clone(),
            confirmed_at: tx.now(),
        };
        json::put(tx, CONFIRMATIONS_TREE, &id, &c)?;
        ledger::record(tx, cmd, "confirm", &id, json!({ "order_id": id }))?;
        Ok(confirmed(&c))
    }
}
