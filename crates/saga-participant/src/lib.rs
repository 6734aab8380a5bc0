//! SDK for services that execute saga steps ("participants").
//!
//! A participant serves one or more services; each consumes `saga.cmd.<service>.>`
//! through its competing durable consumer `svc-<service>`. Per command it:
//!
//! 1. decodes the `saga.v1.StepCommand` (undecodable or incomplete: dead-lettered at
//!    once, reason attached, delivery termed);
//! 2. looks the idempotency key up in its inbox; a reply recorded within the window
//!    (default 24 h) is republished, the handler does not run again;
//! 3. otherwise runs the [`Handler`] inside **one sled transaction** that also records
//!    the reply in the inbox, so a business effect and its inbox record commit together
//!    (a technical failure is rolled back and not recorded: it may be retried);
//! 4. flushes sled, publishes the reply (`SagaInput{reply}`) to the command's
//!    `reply_to` with `Nats-Msg-Id: reply:<idempotency_key>:<attempt>`, and only then
//!    acks. A failed publish naks with a delay (the recorded reply makes the retry
//!    safe); a handler that keeps failing is nak'ed with backoff and dead-lettered
//!    after `max_deliveries`.
//!
//! Two kinds of trouble, two paths:
//!
//! - [`Reply::TechnicalFailure`] (from the handler, or injected by the knobs) is an
//!   *answer*: nothing is recorded, the technical-failure reply goes to the saga and the
//!   command is acked, so the step's retry policy (owned by the saga definition) decides
//!   when to try again; the next attempt runs the handler afresh.
//! - [`Abort::Retry`] or a store error means no answer could be produced: the command is
//!   nak'ed with exponential backoff ([`Settings::retry_delay`]) and, at
//!   `max_deliveries`, dead-lettered (or on a [`RetryLadder`] such as `1m, 5m, 30m`
//!   when [`Settings::ladder`] is set; the saga then gets a technical-failure reply
//!   rather than waiting for its timeout). [`Abort::Reject`] dead-letters at once.
//!
//! Fault-injection [`Knobs`] (latency, technical-failure rate from a seeded RNG, crash
//! right after an effect) serve demos and chaos tests.
//!
//! Depends on the ports (`saga-ports`), the wire types (`saga-proto`) and sled; never on
//! NATS: binaries pass in the JetStream consumers and publisher.

mod dlq;
mod error;
mod handler;
mod knobs;
mod metrics;
mod participant;
mod store;

pub use dlq::{DeadLetters, PublishDeadLetters};
pub use error::ParticipantError;
pub use handler::{Abort, Handler, Reply, Tx};
pub use knobs::{CrashAfterEffect, Knobs};
pub use participant::{reply_message, CrashHook, Participant, Settings};
pub use saga_core::ladder::RetryLadder;
pub use store::{
    Applied, ParticipantStore, INBOX_BY_TIME_TREE, INBOX_TREE, KNOBS_TREE, MAX_RESULT_BYTES,
};

/// Re-exported so handlers name the same sled and wire types as the SDK.
pub use saga_proto;
pub use sled;
