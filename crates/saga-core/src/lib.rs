//! Pure saga model: YAML saga definitions and the event catalog with their validation, the saga state machine
//! (`apply(state, input, now) -> effects`), retry/backoff, the circuit-breaker model,
//! ids and the partition hash, and the `Clock` trait.
//!
//! This crate does no I/O and must not depend on tokio, ractor, async-nats, sled, tonic
//! or prost (CI checks its dependency tree). Effects are values that the runtime
//! executes elsewhere; time and randomness come in as arguments.

pub mod breaker;
pub mod bytes;
pub mod catalog;
pub mod clock;
pub mod definition;
pub mod duration;
pub mod ids;
pub mod ladder;
pub mod machine;
pub mod retry;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use clock::{Clock, ManualClock, SystemClock};
pub use definition::{SagaDefinition, StepDefinition, StepKind};
pub use ids::{SagaId, Timestamp};
pub use machine::{apply, Effect, Input, Outcome, SagaEvent, SagaState, SagaStatus, Transition};
pub use retry::RetryPolicy;
