//! Inputs, effects, events and state of the saga state machine.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::{SagaId, Timestamp};

/// Where a saga stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SagaStatus {
    /// Created, not started yet.
    Pending,
    /// Executing steps forward.
    Running,
    /// Undoing completed and in-doubt steps in reverse order.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// Failed and every compensation succeeded.
    Compensated,
    /// A compensation could not be completed: an operator must decide.
    Failed,
}

impl SagaStatus {
    /// Whether the saga has ended and absorbs every later input.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated | Self::Failed)
    }

    /// Upper-case name, as shown to users (`COMPLETED`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Running => "RUNNING",
            Self::Compensating => "COMPENSATING",
            Self::Completed => "COMPLETED",
            Self::Compensated => "COMPENSATED",
            Self::Failed => "FAILED",
        }
    }
}

impl fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StepStatus {
    /// Not reached.
    NotStarted,
    /// Command sent, reply awaited.
    Running,
    /// The last attempt failed; the next one waits for its backoff.
    WaitingRetry,
    /// Succeeded.
    Completed,
    /// Answered a definite business failure: nothing to undo.
    BusinessFailed,
    /// Timed out or technical failures exhausted (or cut short): may have happened.
    InDoubt,
    /// Compensation sent, reply awaited.
    Compensating,
    /// The last compensation attempt failed; the next waits for its backoff.
    WaitingCompensationRetry,
    /// Undone.
    Compensated,
    /// Declares that it needs no undo.
    CompensationSkipped,
    /// Could not be undone (refused, retries exhausted, or no compensation declared).
    CompensationFailed,
}

impl StepStatus {
    /// Upper-case name, as shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotStarted => "NOT_STARTED",
            Self::Running => "RUNNING",
            Self::WaitingRetry => "WAITING_RETRY",
            Self::Completed => "COMPLETED",
            Self::BusinessFailed => "FAILED",
            Self::InDoubt => "IN_DOUBT",
            Self::Compensating => "COMPENSATING",
            Self::WaitingCompensationRetry => "WAITING_COMPENSATION_RETRY",
            Self::Compensated => "COMPENSATED",
            Self::CompensationSkipped => "COMPENSATION_SKIPPED",
            Self::CompensationFailed => "COMPENSATION_FAILED",
        }
    }
}

/// What a participant answered.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// Done; `result` is the service's payload, passed on to later steps.
    Ok {
        /// Opaque result bytes.
        result: Vec<u8>,
    },
    /// A definite "no" (e.g. "Insufficient stock"): not retried, not compensated.
    BusinessFailure {
        /// Why, for humans.
        reason: String,
    },
    /// Something broke (e.g. a database was down): retried per the policy.
    TechnicalFailure {
        /// Why, for humans.
        reason: String,
    },
}

/// The kind of an actor timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TimerKind {
    /// An attempt of a step took too long.
    StepTimeout,
    /// Backoff before the next attempt of a step is over.
    RetryBackoff,
    /// A compensation attempt took too long.
    CompensationTimeout,
    /// Backoff before the next compensation attempt is over.
    CompensationBackoff,
    /// The saga's own deadline.
    Deadline,
}

/// Identifies one armed timer of a saga. A timer that fires after its purpose is gone
/// (the step moved on) is recognised by its step and attempt and ignored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TimerKey {
    /// What it is for.
    pub kind: TimerKind,
    /// Step name (empty for the deadline).
    pub step: String,
    /// Attempt it belongs to (0 for the deadline).
    pub attempt: u32,
}

impl TimerKey {
    /// The saga deadline timer.
    pub fn deadline() -> Self {
        Self {
            kind: TimerKind::Deadline,
            step: String::new(),
            attempt: 0,
        }
    }
}

/// Everything that can happen to a saga.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Input {
    /// Begin with this payload.
    Start {
        /// The saga's input (opaque here; Protobuf on the wire).
        payload: Vec<u8>,
    },
    /// A participant answered a step command.
    StepReply {
        /// Step name.
        step: String,
        /// Attempt the reply belongs to.
        attempt: u32,
        /// What it said.
        outcome: Outcome,
    },
    /// A participant answered a compensation command.
    CompensationReply {
        /// Step name.
        step: String,
        /// Compensation attempt the reply belongs to.
        attempt: u32,
        /// What it said.
        outcome: Outcome,
    },
    /// A timer fired.
    TimerFired(TimerKey),
    /// A user asked to stop and undo.
    Cancel {
        /// Why.
        reason: String,
    },
    /// The saga ran past its deadline.
    DeadlineExceeded,
    /// An operator moves the saga to another version of its definition
    /// (`sagactl saga migrate`). Applied by the runtime, which has both versions
    /// ([`crate::machine::migrate`]); [`crate::apply`] alone ignores it.
    Migrate {
        /// Digest of the version to move to.
        to: String,
        /// Old step name → new step name, for steps renamed between the versions.
        step_map: std::collections::BTreeMap<String, String>,
    },
}

impl Input {
    /// The input's stable id, derived from what it is (never from where it was stored):
    /// the same on every redelivery and after the inbox stream is re-created.
    ///
    /// | input | id |
    /// | --- | --- |
    /// | start | `start` |
    /// | cancel | `cancel` |
    /// | deadline exceeded | `deadline` |
    /// | step reply | `do:<step>:<attempt>:<ok\|business\|technical>` |
    /// | compensation reply | `undo:<step>:<attempt>:<ok\|business\|technical>` |
    /// | timer | `timer:<kind>:<step>:<attempt>` |
    /// | migration | `migrate:<to>:<OLD=NEW,...>` |
    pub fn id(&self) -> String {
        let outcome = |o: &Outcome| match o {
            Outcome::Ok { .. } => "ok",
            Outcome::BusinessFailure { .. } => "business",
            Outcome::TechnicalFailure { .. } => "technical",
        };
        match self {
            Self::Start { .. } => "start".into(),
            Self::Cancel { .. } => "cancel".into(),
            Self::DeadlineExceeded => "deadline".into(),
            Self::Migrate { to, step_map } => format!(
                "migrate:{to}:{}",
                step_map
                    .iter()
                    .map(|(a, b)| format!("{a}={b}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Self::StepReply {
                step,
                attempt,
                outcome: o,
            } => format!("do:{step}:{attempt}:{}", outcome(o)),
            Self::CompensationReply {
                step,
                attempt,
                outcome: o,
            } => format!("undo:{step}:{attempt}:{}", outcome(o)),
            Self::TimerFired(key) => {
                let kind = match key.kind {
                    TimerKind::StepTimeout => "step-timeout",
                    TimerKind::RetryBackoff => "retry-backoff",
                    TimerKind::CompensationTimeout => "compensation-timeout",
                    TimerKind::CompensationBackoff => "compensation-backoff",
                    TimerKind::Deadline => "deadline",
                };
                format!("timer:{kind}:{}:{}", key.step, key.attempt)
            }
        }
    }
}

/// A command for a participant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Command {
    /// Step name (`Saga-Step`).
    pub step: String,
    /// Participant service (`saga.cmd.<service>.<action>`).
    pub service: String,
    /// Action to run.
    pub action: String,
    /// Attempt number, from 1 (`Saga-Attempt`).
    pub attempt: u32,
    /// `<saga_id>/<step>/<action>`, the same for every attempt.
    pub idempotency_key: String,
    /// Whether this undoes the step.
    pub compensation: bool,
}

/// Something the runtime must do after the transition is durable.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Effect {
    /// Publish a command.
    SendCommand(Command),
    /// Arm (or re-arm) a timer: fire `key` after `after` (monotonic); `at` is the
    /// wall-clock deadline persisted for re-arming after a restart.
    ArmTimer {
        /// Which timer.
        key: TimerKey,
        /// Delay from now.
        after: Duration,
        /// When, in wall-clock milliseconds.
        at: Timestamp,
    },
    /// Drop a timer that is no longer needed.
    CancelTimer {
        /// Which timer.
        key: TimerKey,
    },
    /// Publish a domain event on `events.<domain>.<name>`.
    EmitEvent(DomainEvent),
    /// The saga reached a terminal state.
    Finish {
        /// Which one.
        status: SagaStatus,
    },
}

/// A domain event announced by a saga as it ends (choreography).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DomainEvent {
    /// Subject domain.
    pub domain: String,
    /// Event name, e.g. `OrderConfirmed`.
    pub name: String,
    /// Why, for events of failure (e.g. `OrderCancelled`).
    pub reason: Option<String>,
}

/// What happened in a transition: the journal records these.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SagaEvent {
    /// The saga began; its deadline.
    SagaStarted {
        /// Deadline in wall-clock milliseconds.
        deadline_at: Timestamp,
    },
    /// An attempt of a step was sent.
    StepStarted {
        /// Step.
        step: String,
        /// Attempt.
        attempt: u32,
        /// The action sent (`saga.cmd.<service>.<action>`).
        #[serde(default)]
        action: String,
    },
    /// A step succeeded.
    StepSucceeded {
        /// Step.
        step: String,
        /// Attempt that succeeded.
        attempt: u32,
    },
    /// A step answered a business failure.
    StepFailed {
        /// Step.
        step: String,
        /// Attempt.
        attempt: u32,
        /// Why.
        reason: String,
    },
    /// An attempt failed technically.
    StepAttemptFailed {
        /// Step.
        step: String,
        /// Attempt.
        attempt: u32,
        /// Why.
        reason: String,
    },
    /// An attempt timed out.
    StepTimedOut {
        /// Step.
        step: String,
        /// Attempt.
        attempt: u32,
    },
    /// Another attempt is scheduled.
    RetryScheduled {
        /// Step.
        step: String,
        /// Attempt that will follow.
        next_attempt: u32,
        /// Backoff before it.
        delay: Duration,
    },
    /// The step gave up without a definite answer: it will be compensated.
    StepInDoubt {
        /// Step.
        step: String,
        /// Why.
        reason: String,
    },
    /// Compensation began.
    CompensationStarted {
        /// Why the saga is being undone.
        reason: String,
    },
    /// A compensation attempt was sent.
    CompensationStepStarted {
        /// Step being undone.
        step: String,
        /// Compensation attempt.
        attempt: u32,
        /// The compensating action sent.
        #[serde(default)]
        action: String,
    },
    /// A compensation attempt failed or timed out.
    CompensationAttemptFailed {
        /// Step being undone.
        step: String,
        /// Attempt.
        attempt: u32,
        /// Why.
        reason: String,
    },
    /// Another compensation attempt is scheduled.
    CompensationRetryScheduled {
        /// Step being undone.
        step: String,
        /// Attempt that will follow.
        next_attempt: u32,
        /// Backoff before it.
        delay: Duration,
    },
    /// A step was undone.
    StepCompensated {
        /// Step.
        step: String,
    },
    /// A step declares no undo.
    CompensationSkipped {
        /// Step.
        step: String,
    },
    /// A step could not be undone: an operator must look.
    CompensationFailed {
        /// Step.
        step: String,
        /// Why.
        reason: String,
    },
    /// Every step succeeded.
    SagaCompleted,
    /// Every needed compensation succeeded.
    SagaCompensated {
        /// Why the saga was undone.
        reason: String,
    },
    /// Compensation could not be completed.
    SagaFailed {
        /// What is left for an operator.
        reason: String,
    },
    /// The input changed nothing (duplicate, late reply, stale timer, input after the end).
    InputIgnored {
        /// Why.
        reason: String,
    },
    /// The saga moved to another version of its definition.
    Migrated {
        /// Digest of the version it ran on.
        from: String,
        /// Digest of the version it runs on now.
        to: String,
        /// Steps that changed name, as `OLD=NEW, ...` (empty: none).
        renamed: String,
    },
}

/// One step's progress.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StepState {
    /// Step name.
    pub name: String,
    /// Where it stands.
    pub status: StepStatus,
    /// Forward attempts sent.
    pub attempts: u32,
    /// Compensation attempts sent.
    pub compensation_attempts: u32,
    /// First attempt sent at.
    pub started_at: Option<Timestamp>,
    /// Reached a final forward or compensation status at.
    pub finished_at: Option<Timestamp>,
    /// Last error.
    pub error: Option<String>,
    /// Result of the successful attempt.
    #[serde(default, with = "crate::bytes::opt_b64")]
    pub result: Option<Vec<u8>>,
}

impl StepState {
    /// A step not reached yet.
    pub fn not_started(name: &str) -> Self {
        Self {
            name: name.to_string(),
            status: StepStatus::NotStarted,
            attempts: 0,
            compensation_attempts: 0,
            started_at: None,
            finished_at: None,
            error: None,
            result: None,
        }
    }
}

/// A saga instance's state: everything needed to continue after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SagaState {
    /// Instance id.
    pub saga_id: SagaId,
    /// Definition name.
    pub saga_type: String,
    /// Where it stands.
    pub status: SagaStatus,
    /// Step running or being compensated.
    pub current_step: Option<usize>,
    /// One per definition step, in order.
    pub steps: Vec<StepState>,
    /// The saga's input.
    #[serde(default, with = "crate::bytes::b64")]
    pub payload: Vec<u8>,
    /// Created at.
    pub created_at: Timestamp,
    /// Last transition at.
    pub updated_at: Timestamp,
    /// Deadline (wall clock), once started.
    pub deadline_at: Option<Timestamp>,
    /// Why it is being or was undone.
    pub compensation_reason: Option<String>,
    /// Why it ended FAILED.
    pub failure_reason: Option<String>,
    /// Transitions applied so far.
    pub version: u64,
    /// Ids of every input applied so far ([`Input::id`]). Restored with the state from
    /// the journal, so "already processed" means "journalled": a transition that never
    /// reached the journal leaves no mark.
    #[serde(default)]
    pub applied_inputs: BTreeSet<String>,
    /// Digest of the definition the saga started on ([`DefinitionVersion`]): it runs on
    /// that version to its end. Empty for sagas started before versions existed (they
    /// run on the definition the worker has).
    ///
    /// [`DefinitionVersion`]: crate::definition::DefinitionVersion
    #[serde(default)]
    pub definition_version: String,
}

/// The result of applying one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The state after the input.
    pub state: SagaState,
    /// What happened (journal).
    pub events: Vec<SagaEvent>,
    /// What the runtime must do once the transition is durable.
    pub effects: Vec<Effect>,
}

impl Transition {
    /// Whether the input changed nothing.
    pub fn is_ignored(&self) -> bool {
        matches!(self.events.as_slice(), [SagaEvent::InputIgnored { .. }])
    }

    /// The commands among the effects.
    pub fn commands(&self) -> impl Iterator<Item = &Command> {
        self.effects.iter().filter_map(|e| match e {
            Effect::SendCommand(c) => Some(c),
            _ => None,
        })
    }
}
