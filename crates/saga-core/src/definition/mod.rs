//! Saga definitions: the model, the YAML loader with its validation, the derived
//! compensation plan and the Mermaid drawing.

mod graph;
pub(crate) mod load;
mod plan;
mod version;

use std::time::Duration;

pub use graph::mermaid;
pub use load::{
    load_dir, load_dir_sources, load_file, parse_definition, DefinitionError, DefinitionErrors,
    Loaded, Note,
};
pub use plan::{FailureKind, PlannedScenario};
pub use version::{canonical_rendering, DefinitionVersion};

use crate::retry::RetryPolicy;

/// Timeout of a step that does not say.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Buffer added to the derived saga deadline when the definition gives none.
pub const DEFAULT_DEADLINE_BUFFER: Duration = Duration::from_secs(5);
/// Domain of the events a saga publishes when the definition does not name one.
pub const DEFAULT_EVENT_DOMAIN: &str = "sagas";

/// How the saga is coordinated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaKind {
    /// One orchestrator sends each step's command and reacts to replies.
    Orchestration,
    /// Services react to each other's events; the definition documents the flow.
    Choreography,
}

/// A validated saga definition.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaDefinition {
    /// Saga type name, e.g. `TravelBookingSaga`. Used in subjects.
    pub name: String,
    /// Orchestration or choreography.
    pub kind: SagaKind,
    /// Service documented as owning the saga.
    pub orchestrator: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Steps in execution order.
    pub steps: Vec<StepDefinition>,
    /// Explicit saga timeout (`timeout:`), checked against the steps' worst case.
    pub timeout: Option<Duration>,
    /// Buffer added to the steps' worst case when no explicit timeout is set.
    pub deadline_buffer: Duration,
    /// Domain events published when the saga ends.
    pub events: SagaEvents,
    /// The failure-scenario table as written (checked against the derived plan).
    pub failure_scenarios: Vec<FailureScenario>,
    /// Invariants as written, with what the validator made of each.
    pub invariants: Vec<Invariant>,
    /// The human label of this version (`saga.version`), shown beside the digest; not
    /// part of the digest (see [`DefinitionVersion`]).
    pub version_label: Option<String>,
}

/// One step of a saga.
#[derive(Debug, Clone, PartialEq)]
pub struct StepDefinition {
    /// Step name, unique within the saga.
    pub name: String,
    /// Participant service that executes it (`saga.cmd.<service>.<action>`).
    pub service: String,
    /// Action the service runs.
    pub action: String,
    /// Compensatable, the pivot, or retriable (`kind:`; see [`StepKind`]).
    pub kind: StepKind,
    /// How to undo it.
    pub compensation: Compensation,
    /// How long one attempt may take before it is in doubt.
    pub timeout: Duration,
    /// How often it is tried on timeouts and technical failures.
    pub retry: RetryPolicy,
}

/// The three kinds of saga step.
///
/// A saga is a run of compensatable steps, then at most one pivot (the point of no
/// return), then retriable steps. Before the pivot a failure, a cancel or the deadline
/// undoes what ran; once the pivot has been sent nothing is undone any more: the pivot
/// and the steps after it are retried until they answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepKind {
    /// Undone (by its compensation, or nothing to undo) when a later step fails, on a
    /// cancel and at the deadline. The default for a step with a `compensation`.
    Compensatable,
    /// The point of no return; it cannot be undone. A definite failure ("no") undoes the
    /// steps before it; a timeout or technical failure is retried (past its policy, at
    /// its longest delay) until it answers, since it may have happened. Cancels and the
    /// deadline are not acted on once it has been sent.
    Pivot,
    /// After the pivot (or the last step, without a compensation and with a long or
    /// unbounded retry policy; with a short one it is the pivot): never compensated,
    /// never abandoned; retried with its backoff past the saga deadline. Needs a long
    /// or `unbounded` retry policy. A definite failure ends the saga FAILED for an
    /// operator (a retriable step must eventually succeed).
    Retriable,
}

impl StepKind {
    /// Name as written in YAML (`compensatable`, `pivot`, `retriable`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Compensatable => "compensatable",
            Self::Pivot => "pivot",
            Self::Retriable => "retriable",
        }
    }

    /// Whether a failure, cancel or deadline met while this step runs undoes the saga.
    pub fn undoable(self) -> bool {
        self == Self::Compensatable
    }
}

impl std::fmt::Display for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Fewest attempts a bounded retry policy of a retriable step may allow.
pub const RETRIABLE_MIN_ATTEMPTS: u32 = 10;

/// How a step is undone.
#[derive(Debug, Clone, PartialEq)]
pub enum Compensation {
    /// Run this action on the step's service.
    Action(CompensationDefinition),
    /// The step declares it needs no undo (`compensation: none`).
    NotNeeded,
    /// Nothing declared. Allowed only where no later step can fail (the last step); if
    /// such a step ends in doubt the saga ends FAILED for an operator to decide.
    Missing,
}

/// The compensating action of a step.
#[derive(Debug, Clone, PartialEq)]
pub struct CompensationDefinition {
    /// Action name, sent to the step's service.
    pub action: String,
    /// Timeout of one compensation attempt.
    pub timeout: Duration,
    /// Retries before the saga is handed to an operator (FAILED).
    pub retry: RetryPolicy,
}

impl Compensation {
    /// The compensating action, if any.
    pub fn action(&self) -> Option<&CompensationDefinition> {
        match self {
            Compensation::Action(c) => Some(c),
            _ => None,
        }
    }
}

/// Events a saga publishes on `SAGA_EVENTS` when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaEvents {
    /// Subject domain: `events.<domain>.<EventName>`.
    pub domain: String,
    /// Event published on COMPLETED.
    pub on_completed: Option<String>,
    /// Event published on COMPENSATED (carries the reason).
    pub on_compensated: Option<String>,
}

impl Default for SagaEvents {
    fn default() -> Self {
        Self {
            domain: DEFAULT_EVENT_DOMAIN.to_string(),
            on_completed: None,
            on_compensated: None,
        }
    }
}

/// A row of the `failureScenarios` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureScenario {
    /// Scenario name as written.
    pub name: String,
    /// The step whose definite failure it describes.
    pub step: String,
    /// Compensating actions, in the order they run.
    pub compensations: Vec<String>,
}

/// An invariant line and what the validator made of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invariant {
    /// The text as written.
    pub text: String,
    /// Whether it is one the validator knows how to check.
    pub kind: InvariantKind,
}

/// The invariants the validator recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvariantKind {
    /// "All compensations must be idempotent": every compensation command carries a
    /// stable idempotency key; participants deduplicate by it.
    IdempotentCompensations,
    /// "Compensation order is reverse of execution order": checked against the table.
    ReverseCompensationOrder,
    /// "Saga timeout = sum of step timeouts + buffer": the deadline is derived so.
    TimeoutCoversSteps,
    /// Not recognised: kept as documentation, not checked.
    Documentation,
}

impl SagaDefinition {
    /// Index of a step by name.
    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }

    /// Index of the pivot, if the saga has one.
    pub fn pivot(&self) -> Option<usize> {
        self.steps.iter().position(|s| s.kind == StepKind::Pivot)
    }

    /// Worst case of the forward steps the deadline guards: every attempt timing out and
    /// every backoff at its upper bound, over the steps up to and including the pivot
    /// (retriable steps run past the deadline and are not counted).
    pub fn steps_worst_case(&self) -> Duration {
        self.steps
            .iter()
            .filter(|s| s.kind != StepKind::Retriable)
            .map(|s| s.retry.worst_case(s.timeout))
            .fold(Duration::ZERO, Duration::saturating_add)
    }

    /// Saga deadline measured from its start: the explicit timeout, or the steps'
    /// worst case plus the buffer. Past it the saga compensates.
    pub fn deadline(&self) -> Duration {
        self.timeout
            .unwrap_or_else(|| self.steps_worst_case().saturating_add(self.deadline_buffer))
    }
}
