//! The `bank` service: `saga.es.v1.Bank` over the BankAccount aggregate, its two
//! projections (AccountBalanceView, TransactionHistoryView) in a sled directory or in
//! PostgreSQL, and the projection control endpoint on NATS for `sagactl projection`
//! ([`saga_eventstore::control`]).
//!
//! | NATS request subject                       | answer (JSON)                    |
//! |--------------------------------------------|----------------------------------|
//! | `es-ctl.projection.<name>.status`          | `{name, generation, checkpoint, lag, rebuilding}` |
//! | `es-ctl.projection.<name>.rebuild`         | `{generation, checkpoint, took_ms}` or `{error}`  |

pub use saga_eventstore::control;
pub mod service;

pub use service::{serve_on, BankConfig, ViewTarget};
