//! Upcasting: a chain of steps per event type (v1 -> v2 -> ...) so that old events are
//! read as the newest version the definition declares.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::definition::AggregateDefinition;
use crate::error::{ErrorKind, EsError};
use crate::model::RecordedEvent;

/// One step: the payload at version N in, the payload at N + 1 out.
pub type UpcastFn =
    Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> + Send + Sync>;

/// The upcasters of one aggregate, by event type and the version they read.
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: HashMap<(String, u32), UpcastFn>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<_> = self.steps.keys().collect();
        keys.sort();
        f.debug_struct("Upcasters").field("steps", &keys).finish()
    }
}

impl Upcasters {
    /// No upcasters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the step that reads `event_type` at version `from` and writes `from + 1`.
    pub fn register<F>(mut self, event_type: &str, from: u32, step: F) -> Self
    where
        F: Fn(&[u8]) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>>
            + Send
            + Sync
            + 'static,
    {
        self.steps
            .insert((event_type.to_string(), from), Arc::new(step));
        self
    }

    /// Fails naming the first missing step when some declared version cannot be reached
    /// from v1.
    pub fn check(&self, definition: &AggregateDefinition) -> Result<(), EsError> {
        for e in &definition.events {
            for from in 1..e.version {
                if !self.steps.contains_key(&(e.name.clone(), from)) {
                    return Err(EsError::invalid(format!(
                        "{}: event `{}` is declared at v{} but no upcaster reads v{from} \
                         (register one from v{from} to v{})",
                        definition.name,
                        e.name,
                        e.version,
                        from + 1
                    )));
                }
            }
        }
        Ok(())
    }

    /// `event` at version `to`.
    pub fn upcast(&self, mut event: RecordedEvent, to: u32) -> Result<RecordedEvent, EsError> {
        if event.schema_version > to {
            return Err(EsError::new(
                ErrorKind::Corrupt,
                format!(
                    "event {} of {} is stored at v{} but this code knows `{}` up to v{to}",
                    event.version, event.stream, event.schema_version, event.event_type
                ),
            ));
        }
        while event.schema_version < to {
            let key = (event.event_type.clone(), event.schema_version);
            let Some(step) = self.steps.get(&key) else {
                return Err(EsError::new(
                    ErrorKind::Corrupt,
                    format!(
                        "no upcaster for `{}` v{}",
                        event.event_type, event.schema_version
                    ),
                ));
            };
            event.payload = step(&event.payload).map_err(|e| {
                EsError::with_source(
                    ErrorKind::Corrupt,
                    format!(
                        "upcasting event {} of {} from v{}",
                        event.version, event.stream, event.schema_version
                    ),
                    UpcastError(e.to_string()),
                )
            })?;
            event.schema_version += 1;
        }
        Ok(event)
    }
}

/// Why an upcaster refused a payload.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UpcastError(String);
