//! What every actor of a worker shares.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_core::definition::SagaDefinition;
use saga_core::{Clock, SagaId};
use saga_ports::{Journal, OpenSagas, Publisher, SagaStore, WaitingInputs};
use tokio::sync::Semaphore;

use crate::versions::{VersionError, Versions};

/// Settings of a worker's runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Partition count of the deployment (`saga.in.<partition>.<saga_id>`).
    pub partitions: u32,
    /// This worker's stable identity (in journal message ids).
    pub worker_id: String,
    /// A terminal saga's actor stops after this long without input.
    pub idle_stop_after: Duration,
    /// A running saga's actor stops after this long without input when nothing of it is
    /// left to publish: the saga is parked in the supervisor (its id, type and next
    /// deadline, in one timer wheel for the worker) until its next input or deadline
    /// starts an actor again from the local copy. Zero: actors of running sagas live on.
    pub park_after: Duration,
    /// Longest wait before a failed saga actor is restarted (the backoff doubles from
    /// 100 ms up to this; a saga is never given up).
    pub max_restart_delay: Duration,
    /// Failures within this window count towards a saga's restart backoff.
    pub restart_window: Duration,
    /// How often the open sagas of held partitions are checked for a live actor (a
    /// backstop: a saga whose actor is gone is resumed).
    pub sweep_interval: Duration,
    /// Inputs accepted from the consumers and not yet settled, per worker: when the
    /// broker slows down, the dispatchers stop fetching instead of piling up work.
    pub max_in_flight: usize,
    /// Sagas restored from the journal at the same time, per worker.
    pub max_concurrent_restores: usize,
    /// Saga actors alive at once, per worker: past it, new starts wait in the stream
    /// (admission control) while running sagas go on.
    pub max_live_sagas: usize,
    /// How long a relay keeps retrying an unavailable broker before the actor fails
    /// (and is restarted by its supervisor).
    pub relay_patience: Duration,
    /// Inputs fetched per batch from a partition consumer.
    pub batch_size: usize,
    /// Attempts to apply one input that failed (its saga actor failed while handling
    /// it) before it goes to the dead-letter stream. Deliveries that were never tried
    /// (handed back during a partition move, waiting behind a slow actor) do not count,
    /// and an input already applied is acked, never dead-lettered.
    pub max_deliver: u64,
    /// A saga restored from the journal is replayed record by record through the state
    /// machine and the events compared with the journalled ones when its journal has at
    /// most this many records (0: never). A mismatch stops the saga (FAILED, with a
    /// non-determinism error) instead of letting it diverge.
    pub verify_replay_max_records: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            partitions: 16,
            worker_id: "worker".into(),
            idle_stop_after: Duration::from_secs(5),
            park_after: Duration::from_secs(5),
            max_restart_delay: Duration::from_secs(30),
            restart_window: Duration::from_secs(300),
            sweep_interval: Duration::from_secs(30),
            max_in_flight: 1024,
            max_concurrent_restores: 32,
            max_live_sagas: 16_384,
            relay_patience: Duration::from_secs(30),
            batch_size: 128,
            max_deliver: 10,
            verify_replay_max_records: 1_000,
        }
    }
}

/// Definitions, ports and settings shared by the actors of one worker.
#[derive(Clone)]
pub struct Context {
    /// The definition new sagas start on, by saga type (the latest version); also the
    /// one sagas started before versions existed run on.
    pub definitions: Arc<BTreeMap<String, Arc<SagaDefinition>>>,
    /// Every version a saga may be pinned to (see [`Versions`]).
    pub versions: Arc<Versions>,
    /// The journal.
    pub journal: Arc<dyn Journal>,
    /// Commands, events, dead letters.
    pub publisher: Arc<dyn Publisher>,
    /// The local store.
    pub store: Arc<dyn SagaStore>,
    /// The per-partition index of open sagas.
    pub open: Arc<dyn OpenSagas>,
    /// Inputs still stored in the input stream: where an input that reaches a saga
    /// before its start finds the start (`None`: it waits for the start's redelivery).
    pub waiting: Option<Arc<dyn WaitingInputs>>,
    /// Wall clock for timestamps and persisted deadlines.
    pub clock: Arc<dyn Clock>,
    /// Settings.
    pub config: RuntimeConfig,
    /// Called at each [`FaultPoint`]; lets fault tests kill the process exactly there.
    pub fault_hook: Option<Arc<dyn Fn(FaultPoint) + Send + Sync>>,
    /// Bounds shared by every actor of the worker (see [`Limits::new`]).
    pub limits: Arc<Limits>,
}

/// Back-pressure and failure bookkeeping shared by a worker's actors.
#[derive(Debug)]
pub struct Limits {
    /// Permits for inputs in flight ([`RuntimeConfig::max_in_flight`]).
    pub in_flight: Arc<Semaphore>,
    /// Permits for journal restores ([`RuntimeConfig::max_concurrent_restores`]).
    pub restores: Arc<Semaphore>,
    /// Failed attempts per (saga, input id), forgotten once the input is applied.
    failures: Mutex<HashMap<(SagaId, String), u64>>,
}

impl Limits {
    /// Limits sized by the configuration.
    pub fn new(config: &RuntimeConfig) -> Arc<Self> {
        Arc::new(Self {
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            restores: Arc::new(Semaphore::new(config.max_concurrent_restores.max(1))),
            failures: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn failed(&self, saga_id: &SagaId, input_id: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        *f.entry((saga_id.clone(), input_id.to_string()))
            .or_default() += 1;
    }

    pub(crate) fn failures(&self, saga_id: &SagaId, input_id: &str) -> u64 {
        let f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.get(&(saga_id.clone(), input_id.to_string()))
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn settled(&self, saga_id: &SagaId, input_id: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if !f.is_empty() {
            f.remove(&(saga_id.clone(), input_id.to_string()));
        }
    }
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

    /// The definition of a saga type that new sagas start on.
    pub fn definition(&self, saga_type: &str) -> Option<Arc<SagaDefinition>> {
        match self.versions.latest_definition(saga_type) {
            Some((_, def)) if self.definitions.contains_key(saga_type) => Some(def),
            _ => self.definitions.get(saga_type).cloned(),
        }
    }

    /// The digest new sagas of a type are pinned to (empty when unknown).
    pub fn latest_version(&self, saga_type: &str) -> String {
        self.versions
            .latest(saga_type)
            .unwrap_or_default()
            .to_string()
    }

    /// The definition a saga pinned to `version` runs on: that version, or for a saga
    /// started before versions existed (`version` empty) the one new sagas start on.
    pub async fn definition_for(
        &self,
        saga_type: &str,
        version: &str,
    ) -> Result<Arc<SagaDefinition>, VersionError> {
        let current = self
            .definition(saga_type)
            .ok_or_else(|| VersionError::UnknownType(saga_type.to_string()))?;
        if version.is_empty() || self.versions.latest(saga_type).as_deref() == Some(version) {
            return Ok(current);
        }
        self.versions.get(saga_type, version).await
    }
}
