//! The cluster's registry of definition versions: every version a saga may be pinned
//! to stays loadable from here, whichever worker runs the saga.

use async_trait::async_trait;
use saga_core::Timestamp;

use crate::PortError;

/// One registered version of a saga definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredVersion {
    /// Saga type (the definition's name).
    pub saga_type: String,
    /// Its digest ([`saga_core::definition::DefinitionVersion`]).
    pub digest: String,
    /// The YAML source as registered (parsed again by whoever loads it).
    pub source: String,
    /// When it was first registered (the registry's clock, ms since the epoch).
    pub registered_at: Timestamp,
}

/// Definition versions by saga type and digest, and the latest version of each type.
/// A registered version is never changed (its key is its content) and never removed
/// while a saga is pinned to it.
#[async_trait]
pub trait DefinitionRegistry: Send + Sync + 'static {
    /// Stores a version unless it is there already; `true` when it was new.
    async fn register(
        &self,
        saga_type: &str,
        digest: &str,
        source: &str,
    ) -> Result<bool, PortError>;
    /// Makes a registered version the one new sagas of its type start on.
    async fn set_latest(&self, saga_type: &str, digest: &str) -> Result<(), PortError>;
    /// The digest new sagas of a type start on, if any is registered.
    async fn latest(&self, saga_type: &str) -> Result<Option<String>, PortError>;
    /// One version, if registered.
    async fn get(
        &self,
        saga_type: &str,
        digest: &str,
    ) -> Result<Option<RegisteredVersion>, PortError>;
    /// Every registered version, by type then registration time.
    async fn list(&self) -> Result<Vec<RegisteredVersion>, PortError>;
}
