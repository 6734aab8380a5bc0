//! Example saga participants and the wiring their binaries share.
//!
//! Services: `inventory` (stock reservations), `payment` and `PaymentService` (charges
//! and refunds), `orders` (the event-sourced Order aggregate, with its gRPC API in [`order_api`]), `FlightService` and `HotelService`
//! (reservations). Each handler keeps its business state in its own sled trees and
//! appends every effect to the `ledger` tree, so tests prove "no double effect" by
//! counting entries ([`ledger::read_ledger`] once the process has stopped; the process
//! also prints `ledger: N effects (...)` on shutdown).
//!
//! Compensations are idempotent and tolerate "nothing to undo". An undo that arrives
//! before its action (the action timed out and was still in flight) leaves a tombstone,
//! so the late action is refused instead of taking effect after its compensation.
//!
//! Depends on the participant SDK and, for the binaries' wiring ([`serve`]), on
//! `saga-nats`; the handlers themselves know nothing of NATS.

pub mod booking;
pub mod inventory;
mod json;
pub mod ledger;
pub mod order_api;
pub mod orders;
pub mod payload;
pub mod payment;
pub mod serve;

pub use booking::Booking;
pub use inventory::Inventory;
pub use ledger::{ledger_counts, read_ledger, LedgerEntry, LEDGER_TREE};
pub use orders::Orders;
pub use payment::Payment;
