//! What every actor of a worker shares.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use saga_core::definition::SagaDefinition;
use saga_core::Clock;
use saga_ports::{Journal, Publisher, SagaStore};

/// Settings of a worker's runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Partition count of the deployment (`saga.in.<partition>.<saga_id>`).
    pub partitions: u32,
    /// This worker's stable identity (in journal message ids).
    pub worker_id: String,
    /// A terminal saga's actor stops after this long without input.
    pub idle_stop_after: Duration,
    /// Restarts of one saga actor allowed within `restart_window`.
    pub max_restarts: u32,
    /// Window of the restart bound.
    pub restart_window: Duration,
    /// How long a relay keeps retrying an unavailable broker before the actor fails
    /// (and is restarted by its supervisor).
    pub relay_patience: Duration,
    /// Inputs fetched per batch from a partition consumer.
    pub batch_size: usize,
    /// The consumers' delivery limit: an input delivered this many times without being
    /// processed goes to the dead-letter stream instead of being tried again.
    pub max_deliver: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            partitions: 16,
            worker_id: "worker".into(),
            idle_stop_after: Duration::from_secs(5),
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            relay_patience: Duration::from_secs(30),
            batch_size: 128,
            max_deliver: 10,
        }
    }
}

/// Definitions, ports and settings shared by the actors of one worker.
#[derive(Clone)]
pub struct Context {
    /// Loaded definitions by saga type.
    pub definitions: Arc<BTreeMap<String, Arc<SagaDefinition>>>,
    /// The journal.
    pub journal: Arc<dyn Journal>,
    /// Commands, events, dead letters.
    pub publisher: Arc<dyn Publisher>,
    /// The local store.
    pub store: Arc<dyn SagaStore>,
    /// Wall clock for timestamps and persisted deadlines.
    pub clock: Arc<dyn Clock>,
    /// Settings.
    pub config: RuntimeConfig,
    /// Called at each [`FaultPoint`]; lets fault tests kill the process exactly there.
    pub fault_hook: Option<Arc<dyn Fn(FaultPoint) + Send + Sync>>,
}

/// Places in the commit protocol where a crash is most interesting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// The transition is durable in the store; nothing is published yet.
    AfterCommit,
    /// Journal and commands are published; the input is not acked yet.
    AfterPublish,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("definitions", &self.definitions.keys().collect::<Vec<_>>())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub(crate) fn fault(&self, point: FaultPoint) {
        if let Some(hook) = &self.fault_hook {
            hook(point);
        }
    }

    /// The definition of a saga type.
    pub fn definition(&self, saga_type: &str) -> Option<Arc<SagaDefinition>> {
        self.definitions.get(saga_type).cloned()
    }
}
