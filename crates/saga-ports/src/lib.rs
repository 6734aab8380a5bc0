//! Async traits at every I/O boundary of the saga runtime — journal, publisher,
//! consumer (with ack/nak/term), saga store (state, outbox, inbox, armed timers), the
//! registry of definition versions — and,
//! with the `test-util` feature, in-memory implementations so actors are unit-tested
//! without a broker.
//!
//! Depends on `saga-core` only; never on NATS, sled or an actor framework.

mod definitions;
mod error;
#[cfg(feature = "test-util")]
pub mod memory;
mod message;
mod store;

pub use definitions::{DefinitionRegistry, RegisteredVersion};
pub use error::{PortError, StoreError};
pub use message::*;
pub use store::*;
