//! The pure saga state machine: `(state, input, now) -> (state, events, effects)`.

mod apply;
mod migrate;
#[cfg(test)]
mod tests;
mod types;

pub use apply::{apply, fits, halt};
pub use migrate::{migrate, migration_problems, parse_step_map, refuse, StepMap};
pub use types::*;
