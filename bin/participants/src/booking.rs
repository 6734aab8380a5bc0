//! `FlightService` and `HotelService`: reservations from `Payload.fields`, declined when
//! the requested flight (hotel) starts with `full-`.

use saga_participant::saga_proto::StepCommand;
use saga_participant::{Abort, Handler, Reply, Tx};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::json;
use crate::ledger::{self, LEDGER_TREE};
use crate::payload::{self, record_key, result};

/// What is full is declined.
pub const FULL_PREFIX: &str = "full-";

/// A reservation service of the travel saga.
#[derive(Debug, Clone)]
pub struct Booking {
    service: &'static str,
    field: &'static str,
    reserve: &'static str,
    cancel: &'static str,
    trees: [&'static str; 2],
}

/// A booking as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Booked {
    /// `reserved`, or `cancelled` (also a cancel that found nothing: a tombstone).
    pub status: String,
    /// The flight (hotel) booked.
    pub what: String,
}

impl Booking {
    /// `FlightService`: `reserveFlight` / `cancelFlightReservation`, field `flight`.
    pub fn flight() -> Self {
        Self {
            service: "FlightService",
            field: "flight",
            reserve: "reserveFlight",
            cancel: "cancelFlightReservation",
            trees: ["flight_reservations", LEDGER_TREE],
        }
    }

    /// `HotelService`: `reserveHotel` / `cancelHotelReservation`, field `hotel`.
    pub fn hotel() -> Self {
        Self {
            service: "HotelService",
            field: "hotel",
            reserve: "reserveHotel",
            cancel: "cancelHotelReservation",
            trees: ["hotel_reservations", LEDGER_TREE],
        }
    }

    /// The service name.
    pub fn service(&self) -> &'static str {
        self.service
    }

    fn tree(&self) -> &'static str {
        self.trees[0]
    }

    fn reserve(&self, tx: &Tx<'_>, cmd: &StepCommand) -> Result<Reply, Abort> {
        let what = match payload::fields(cmd) {
            Ok(f) => payload::string_field(f, self.field).unwrap_or_else(|| "any".into()),
            Err(why) => return Ok(Reply::BusinessFailure(why)),
        };
        let key = record_key(cmd);
        match json::get::<Booked>(tx, self.tree(), &key)? {
            Some(b) if b.status == "reserved" => return Ok(self.reserved(&key, &b.what)),
            Some(_) => {
                return Ok(Reply::BusinessFailure(format!(
                    "{} reservation {key} was already cancelled",
                    self.field
                )))
            }
            None => {}
        }
        if what.starts_with(FULL_PREFIX) {
            return Ok(Reply::BusinessFailure(format!(
                "No availability: {} {what} is full",
                self.field
            )));
        }
        let booked = Booked {
            status: "reserved".into(),
            what,
        };
        json::put(tx, self.tree(), &key, &booked)?;
        ledger::record(tx, cmd, "reserve", &key, json!({ self.field: booked.what }))?;
        Ok(self.reserved(&key, &booked.what))
    }

    fn cancel(&self, tx: &Tx<'_>, cmd: &StepCommand) -> Result<Reply, Abort> {
        let key = record_key(cmd);
        match json::get::<Booked>(tx, self.tree(), &key)? {
            None => {
                let tombstone = Booked {
                    status: "cancelled".into(),
                    what: String::new(),
                };
                json::put(tx, self.tree(), &key, &tombstone)?;
                Ok(cancelled(&key, true))
            }
            Some(b) if b.status == "cancelled" => Ok(cancelled(&key, b.what.is_empty())),
            Some(mut b) => {
                b.status = "cancelled".into();
                json::put(tx, self.tree(), &key, &b)?;
                ledger::record(tx, cmd, "cancel", &key, json!({ self.field: b.what }))?;
                Ok(cancelled(&key, false))
            }
        }
    }

    fn reserved(&self, key: &str, what: &str) -> Reply {
        Reply::Ok(result([
            ("reservation_id", key.into()),
            (self.field, what.into()),
        ]))
    }
}

fn cancelled(key: &str, nothing_to_undo: bool) -> Reply {
    Reply::Ok(result([
        ("reservation_id", key.into()),
        ("nothing_to_undo", nothing_to_undo.into()),
    ]))
}

impl Handler for Booking {
    fn trees(&self) -> &[&str] {
        &self.trees
    }

    fn handle(&self, tx: &Tx<'_>, cmd: &StepCommand) -> Result<Reply, Abort> {
        let action = cmd.action.as_str();
        if action == self.reserve {
            self.reserve(tx, cmd)
        } else if action == self.cancel {
            self.cancel(tx, cmd)
        } else {
            Err(Abort::Reject(format!(
                "{} has no action `{action}`",
                self.service
            )))
        }
    }
}
