//! The pure saga state machine: `(state, input, now) -> (state, events, effects)`.

mod apply;
#[cfg(test)]
mod tests;
mod types;

pub use apply::{apply, fits, halt};
pub use types::*;
