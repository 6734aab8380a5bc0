//! `inventory`: stock per SKU, reserved all-or-nothing per order.

use std::collections::BTreeMap;

use saga_participant::saga_proto::StepCommand;
use saga_participant::{Abort, Handler, Reply, Tx};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::json;
use crate::ledger::{self, LEDGER_TREE};
use crate::payload::{self, record_key, result};

/// Service name.
pub const SERVICE: &str = "inventory";
/// Reserve every item of `Payload.order`, or none.
pub const RESERVE: &str = "ReserveStock";
/// Put a reservation back (idempotent; nothing reserved is fine).
pub const RELEASE: &str = "ReleaseStock";
/// SKU -> units available (i64, big-endian). A SKU never seen has the initial stock.
pub const STOCK_TREE: &str = "stock";
/// `<saga_id>/<step>` -> [`Reservation`] (JSON).
pub const RESERVATIONS_TREE: &str = "reservations";

/// Default units of every SKU in development.
pub const DEFAULT_INITIAL_STOCK: i64 = 1_000;

/// The inventory handler.
#[derive(Debug, Clone)]
pub struct Inventory {
    initial_stock: i64,
}

/// A reservation as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    /// `reserved`, or `released` (also a release that found nothing: a tombstone).
    pub status: String,
    /// SKU -> units.
    pub items: BTreeMap<String, i64>,
}

impl Inventory {
    /// Every SKU starts with `initial_stock` units.
    pub fn new(initial_stock: i64) -> Self {
        Self { initial_stock }
    }

    fn available(&self, tx: &Tx<'_>, sku: &str) -> Result<i64, Abort> {
        match tx.get(STOCK_TREE, sku)? {
            Some(v) => {
                let arr: [u8; 8] = v
                    .as_ref()
                    .try_into()
                    .map_err(|_| Abort::Reject(format!("corrupted stock of `{sku}`")))?;
                Ok(i64::from_be_bytes(arr))
            }
            None => Ok(self.initial_stock),
        }
    }

    fn set(tx: &Tx<'_>, sku: &str, units: i64) -> Result<(), Abort> {
        tx.insert(STOCK_TREE, sku, units.to_be_bytes().to_vec())?;
        Ok(())
    }

    fn reserve(&self, tx: &Tx<'_>, cmd: &StepCommand) -> Result<Reply, Abort> {
        let order = match payload::order(cmd) {
            Ok(o) => o,
            Err(why) => return Ok(Reply::BusinessFailure(why)),
        };
        let key = record_key(cmd);
        match json::get::<Reservation>(tx, RESERVATIONS_TREE, &key)? {
            Some(r) if r.status == "reserved" => return Ok(reserved(&key, &r)),
            Some(_) => {
                return Ok(Reply::BusinessFailure(format!(
                    "Reservation {key} was already released"
                )))
            }
            None => {}
        }
        if order.items.is_empty() {
            return Ok(Reply::BusinessFailure(
                "invalid payload: the order has no items".into(),
            ));
        }
        let mut wanted: BTreeMap<String, i64> = BTreeMap::new();
        for item in &order.items {
            if item.sku.is_empty() || item.quantity <= 0 {
                return Ok(Reply::BusinessFailure(format!(
                    "invalid payload: item `{}` has quantity {}",
                    item.sku, item.quantity
                )));
            }
            let total = wanted.entry(item.sku.clone()).or_default();
            *total = match total.checked_add(item.quantity) {
                Some(t) => t,
                None => {
                    return Ok(Reply::BusinessFailure(format!(
                        "invalid payload: the quantities of SKU {} add up to more than {}",
                        item.sku,
                        i64::MAX
                    )))
                }
            };
        }
        // Check everything before writing anything: all or none.
        let mut after = Vec::with_capacity(wanted.len());
        for (sku, quantity) in &wanted {
            let available = self.available(tx, sku)?;
            if available < *quantity {
                return Ok(Reply::BusinessFailure(format!(
                    "Insufficient stock for SKU {sku}: requested {quantity}, available {available}"
                )));
            }
            after.push((sku, available - quantity));
        }
        for (sku, left) in after {
            Self::set(tx, sku, left)?;
        }
        let reservation = Reservation {
            status: "reserved".into(),
            items: wanted,
        };
        json::put(tx, RESERVATIONS_TREE, &key, &reservation)?;
        ledger::record(
            tx,
            cmd,
            "reserve",
            &key,
            json!({ "items": reservation.items }),
        )?;
        Ok(reserved(&key, &reservation))
    }

    fn release(&self, tx: &Tx<'_>, cmd: &StepCommand) -> Result<Reply, Abort> {
        let key = record_key(cmd);
        match json::get::<Reservation>(tx, RESERVATIONS_TREE, &key)? {
            None => {
                // Nothing to undo; the tombstone refuses a late reservation.
                let tombstone = Reservation {
                    status: "released".into(),
                    items: BTreeMap::new(),
                };
                json::put(tx, RESERVATIONS_TREE, &key, &tombstone)?;
                Ok(released(&key, true))
            }
            Some(r) if r.status == "released" => Ok(released(&key, r.items.is_empty())),
            Some(mut r) => {
                for (sku, quantity) in &r.items {
                    let available = self.available(tx, sku)?;
                    // Saturating: stock is never wrapped negative by a release.
                    Self::set(tx, sku, available.saturating_add(*quantity))?;
                }
                r.status = "released".into();
                json::put(tx, RESERVATIONS_TREE, &key, &r)?;
                ledger::record(tx, cmd, "release", &key, json!({ "items": r.items }))?;
                Ok(released(&key, false))
            }
        }
    }
}

fn reserved(key: &str, r: &Reservation) -> Reply {
    Reply::Ok(result([
        ("reservation_id", key.into()),
        (
            "units",
            r.items
                .values()
                .fold(0i64, |n, q| n.saturating_add(*q))
                .into(),
        ),
    ]))
}

fn released(key: &str, nothing_to_undo: bool) -> Reply {
    Reply::Ok(result([
        ("reservation_id", key.into()),
        ("nothing_to_undo", nothing_to_undo.into()),
    ]))
}

impl Handler for Inventory {
    fn trees(&self) -> &[&str] {
        &[STOCK_TREE, RESERVATIONS_TREE, LEDGER_TREE]
    }

    fn handle(&self, tx: &Tx<'_>, cmd: &StepCommand) -> Result<Reply, Abort> {
        match cmd.action.as_str() {
            RESERVE => self.reserve(tx, cmd),
            RELEASE => self.release(tx, cmd),
            other => Err(Abort::Reject(format!("{SERVICE} has no action `{other}`"))),
        }
    }
}

/// Units of `sku` left in an open database (`initial` if never touched).
pub fn stock(
    db: &saga_participant::sled::Db,
    sku: &str,
    initial: i64,
) -> Result<i64, saga_participant::ParticipantError> {
    match db.open_tree(STOCK_TREE)?.get(sku)? {
        Some(v) => {
            let arr: [u8; 8] = v.as_ref().try_into().map_err(|_| {
                saga_participant::ParticipantError::Corrupted(format!("stock of `{sku}`"))
            })?;
            Ok(i64::from_be_bytes(arr))
        }
        None => Ok(initial),
    }
}
