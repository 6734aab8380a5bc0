//! The event-sourcing harness (from `saga-eventstore`'s `testing` module): aggregates
//! tested as given events / when a command / then events or an error, and projections
//! tested by appending events, running the projection and rebuilding it, all on the
//! in-memory twin of the event store.
//!
//! ```text
//! use saga_testkit::es::AggregateTest;
//!
//! AggregateTest::<BankAccount>::given([opened(1000)])
//!     .when(BankCommand::Withdraw { amount: 2000, .. })
//!     .then_expect_invariant("balance cannot be negative");
//! ```
//!
//! `crates/saga-aggregates/tests/domain.rs` uses it on the shipped aggregates.

pub use saga_eventstore::testing::*;
