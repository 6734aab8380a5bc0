//! Domain <-> wire conversions.

use std::time::Duration;

use saga_core::machine::{
    Command, Input, Outcome, SagaEvent, SagaStatus, TimerKey, TimerKind as CoreTimerKind,
};
use saga_core::Timestamp;

use crate::generated::{self as pb, step_reply, TransitionEventKind as K};

/// A message could not be turned into the model. Not retryable: the message is
/// malformed (dead-letter it); gRPC `INVALID_ARGUMENT` when it came from a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    /// A required field is absent.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// An enum field holds a value this version does not know.
    #[error("unknown value {value} for `{field}`")]
    UnknownEnum {
        /// Field name.
        field: &'static str,
        /// The raw value.
        value: i32,
    },
}

/// Milliseconds since the epoch to a Protobuf timestamp.
pub fn timestamp(ms: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// A Protobuf timestamp to milliseconds since the epoch (negative clamps to 0).
pub fn millis(ts: &prost_types::Timestamp) -> Timestamp {
    let ms = ts
        .seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos / 1_000_000));
    ms.max(0) as Timestamp
}

/// A duration to its Protobuf form.
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn from_duration(d: &prost_types::Duration) -> Duration {
    Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
}

impl From<SagaStatus> for pb::SagaState {
    fn from(s: SagaStatus) -> Self {
        match s {
            SagaStatus::Pending => Self::Pending,
            SagaStatus::Running => Self::Running,
            SagaStatus::Compensating => Self::Compensating,
            SagaStatus::Completed => Self::Completed,
            SagaStatus::Compensated => Self::Compensated,
            SagaStatus::Failed => Self::Failed,
        }
    }
}

impl TryFrom<pb::SagaState> for SagaStatus {
    type Error = ConversionError;
    fn try_from(s: pb::SagaState) -> Result<Self, Self::Error> {
        Ok(match s {
            pb::SagaState::Pending => Self::Pending,
            pb::SagaState::Running => Self::Running,
            pb::SagaState::Compensating => Self::Compensating,
            pb::SagaState::Completed => Self::Completed,
            pb::SagaState::Compensated => Self::Compensated,
            pb::SagaState::Failed => Self::Failed,
            pb::SagaState::Unspecified => return Err(ConversionError::Missing("state")),
        })
    }
}

impl From<&Outcome> for step_reply::Outcome {
    fn from(o: &Outcome) -> Self {
        match o {
            Outcome::Ok { result } => step_reply::Outcome::Ok(pb::StepOk {
                result: if result.is_empty() {
                    None
                } else {
                    Some(
                        <pb::Payload as prost::Message>::decode(result.as_slice()).unwrap_or(
                            pb::Payload {
                                kind: Some(pb::payload::Kind::Raw(result.clone())),
                            },
                        ),
                    )
                },
            }),
            Outcome::BusinessFailure { reason } => {
                step_reply::Outcome::BusinessFailure(pb::BusinessFailure {
                    reason: reason.clone(),
                })
            }
            Outcome::TechnicalFailure { reason } => {
                step_reply::Outcome::TechnicalFailure(pb::TechnicalFailure {
                    reason: reason.clone(),
                })
            }
        }
    }
}

impl From<&step_reply::Outcome> for Outcome {
    fn from(o: &step_reply::Outcome) -> Self {
        match o {
            step_reply::Outcome::Ok(ok) => Outcome::Ok {
                result: ok
                    .result
                    .as_ref()
                    .map(prost::Message::encode_to_vec)
                    .unwrap_or_default(),
            },
            step_reply::Outcome::BusinessFailure(f) => Outcome::BusinessFailure {
                reason: f.reason.clone(),
            },
            step_reply::Outcome::TechnicalFailure(f) => Outcome::TechnicalFailure {
                reason: f.reason.clone(),
            },
        }
    }
}

impl From<CoreTimerKind> for pb::TimerKind {
    fn from(k: CoreTimerKind) -> Self {
        match k {
            CoreTimerKind::StepTimeout => Self::StepTimeout,
            CoreTimerKind::RetryBackoff => Self::RetryBackoff,
            CoreTimerKind::CompensationTimeout => Self::CompensationTimeout,
            CoreTimerKind::CompensationBackoff => Self::CompensationBackoff,
            CoreTimerKind::Deadline => Self::Deadline,
        }
    }
}

impl From<&TimerKey> for pb::TimerFired {
    fn from(k: &TimerKey) -> Self {
        Self {
            kind: pb::TimerKind::from(k.kind) as i32,
            step: k.step.clone(),
            attempt: k.attempt,
        }
    }
}

impl TryFrom<&pb::TimerFired> for TimerKey {
    type Error = ConversionError;
    fn try_from(t: &pb::TimerFired) -> Result<Self, Self::Error> {
        let kind = match pb::TimerKind::try_from(t.kind) {
            Ok(pb::TimerKind::StepTimeout) => CoreTimerKind::StepTimeout,
            Ok(pb::TimerKind::RetryBackoff) => CoreTimerKind::RetryBackoff,
            Ok(pb::TimerKind::CompensationTimeout) => CoreTimerKind::CompensationTimeout,
            Ok(pb::TimerKind::CompensationBackoff) => CoreTimerKind::CompensationBackoff,
            Ok(pb::TimerKind::Deadline) => CoreTimerKind::Deadline,
            _ => {
                return Err(ConversionError::UnknownEnum {
                    field: "timer.kind",
                    value: t.kind,
                })
            }
        };
        Ok(TimerKey {
            kind,
            step: t.step.clone(),
            attempt: t.attempt,
        })
    }
}

/// The journalled form of an input. `Start` payload bytes are an encoded [`pb::Payload`].
pub fn journal_input(input: &Input, saga_id: &str) -> pb::JournalInput {
    use pb::journal_input::Kind;
    let kind = match input {
        Input::Start { payload } => Kind::Start(pb::StartSaga {
            payload: prost::Message::decode(payload.as_slice()).ok(),
            ..Default::default()
        }),
        Input::StepReply {
            step,
            attempt,
            outcome,
        }
        | Input::CompensationReply {
            step,
            attempt,
            outcome,
        } => Kind::Reply(pb::StepReply {
            saga_id: saga_id.to_string(),
            step: step.clone(),
            attempt: *attempt,
            compensation: matches!(input, Input::CompensationReply { .. }),
            outcome: Some(outcome.into()),
            ..Default::default()
        }),
        Input::TimerFired(key) => Kind::Timer(key.into()),
        Input::Cancel { reason } => Kind::Cancel(pb::CancelSaga {
            reason: reason.clone(),
        }),
        Input::DeadlineExceeded => Kind::DeadlineExceeded(pb::DeadlineExceeded {}),
        Input::Migrate { to, step_map } => Kind::Migrate(pb::MigrateSaga {
            to_version: to.clone(),
            step_map: step_map.clone().into_iter().collect(),
        }),
    };
    pb::JournalInput { kind: Some(kind) }
}

/// The model input a journalled input stands for.
pub fn input_from_journal(j: &pb::JournalInput) -> Result<Input, ConversionError> {
    use pb::journal_input::Kind;
    Ok(
        match j.kind.as_ref().ok_or(ConversionError::Missing("input"))? {
            Kind::Start(s) => Input::Start {
                payload: s
                    .payload
                    .as_ref()
                    .map(prost::Message::encode_to_vec)
                    .unwrap_or_default(),
            },
            Kind::Reply(r) => reply_input(r)?,
            Kind::Timer(t) => Input::TimerFired(t.try_into()?),
            Kind::Cancel(c) => Input::Cancel {
                reason: c.reason.clone(),
            },
            Kind::DeadlineExceeded(_) => Input::DeadlineExceeded,
            Kind::Migrate(m) => migrate_input(m)?,
        },
    )
}

/// The model input an operator's migration stands for.
pub fn migrate_input(m: &pb::MigrateSaga) -> Result<Input, ConversionError> {
    if m.to_version.is_empty() {
        return Err(ConversionError::Missing("to_version"));
    }
    Ok(Input::Migrate {
        to: m.to_version.clone(),
        step_map: m.step_map.clone().into_iter().collect(),
    })
}

/// The model input a participant's reply stands for.
pub fn reply_input(r: &pb::StepReply) -> Result<Input, ConversionError> {
    let outcome: Outcome = r
        .outcome
        .as_ref()
        .ok_or(ConversionError::Missing("outcome"))?
        .into();
    if r.step.is_empty() {
        return Err(ConversionError::Missing("step"));
    }
    Ok(if r.compensation {
        Input::CompensationReply {
            step: r.step.clone(),
            attempt: r.attempt,
            outcome,
        }
    } else {
        Input::StepReply {
            step: r.step.clone(),
            attempt: r.attempt,
            outcome,
        }
    })
}

/// The wire command for a model command.
pub fn step_command(
    saga_id: &str,
    saga_type: &str,
    cmd: &Command,
    payload: Option<pb::Payload>,
    reply_to: &str,
    sent_at: Timestamp,
    timeout: Duration,
) -> pb::StepCommand {
    pb::StepCommand {
        saga_id: saga_id.to_string(),
        saga_type: saga_type.to_string(),
        step: cmd.step.clone(),
        action: cmd.action.clone(),
        attempt: cmd.attempt,
        idempotency_key: cmd.idempotency_key.clone(),
        compensation: cmd.compensation,
        payload,
        results: Default::default(),
        reply_to: reply_to.to_string(),
        sent_at: Some(timestamp(sent_at)),
        timeout: Some(duration(timeout)),
    }
}

impl From<&SagaEvent> for pb::TransitionEvent {
    fn from(e: &SagaEvent) -> Self {
        let mut t = pb::TransitionEvent::default();
        let kind = match e {
            SagaEvent::SagaStarted { deadline_at } => {
                t.deadline_at = Some(timestamp(*deadline_at));
                K::SagaStarted
            }
            SagaEvent::StepStarted {
                step,
                attempt,
                action,
            } => {
                (t.step, t.attempt, t.action) = (step.clone(), *attempt, action.clone());
                K::StepStarted
            }
            SagaEvent::StepSucceeded { step, attempt } => {
                (t.step, t.attempt) = (step.clone(), *attempt);
                K::StepSucceeded
            }
            SagaEvent::StepFailed {
                step,
                attempt,
                reason,
            } => {
                (t.step, t.attempt, t.reason) = (step.clone(), *attempt, reason.clone());
                K::StepFailed
            }
            SagaEvent::StepAttemptFailed {
                step,
                attempt,
                reason,
            } => {
                (t.step, t.attempt, t.reason) = (step.clone(), *attempt, reason.clone());
                K::StepAttemptFailed
            }
            SagaEvent::StepTimedOut { step, attempt } => {
                (t.step, t.attempt) = (step.clone(), *attempt);
                K::StepTimedOut
            }
            SagaEvent::RetryScheduled {
                step,
                next_attempt,
                delay,
            } => {
                (t.step, t.attempt) = (step.clone(), *next_attempt);
                t.delay = Some(duration(*delay));
                K::RetryScheduled
            }
            SagaEvent::StepInDoubt { step, reason } => {
                (t.step, t.reason) = (step.clone(), reason.clone());
                K::StepInDoubt
            }
            SagaEvent::CompensationStarted { reason } => {
                t.reason = reason.clone();
                K::CompensationStarted
            }
            SagaEvent::CompensationStepStarted {
                step,
                attempt,
                action,
            } => {
                (t.step, t.attempt, t.action) = (step.clone(), *attempt, action.clone());
                K::CompensationStepStarted
            }
            SagaEvent::CompensationAttemptFailed {
                step,
                attempt,
                reason,
            } => {
                (t.step, t.attempt, t.reason) = (step.clone(), *attempt, reason.clone());
                K::CompensationAttemptFailed
            }
            SagaEvent::CompensationRetryScheduled {
                step,
                next_attempt,
                delay,
            } => {
                (t.step, t.attempt) = (step.clone(), *next_attempt);
                t.delay = Some(duration(*delay));
                K::CompensationRetryScheduled
            }
            SagaEvent::StepCompensated { step } => {
                t.step = step.clone();
                K::StepCompensated
            }
            SagaEvent::CompensationSkipped { step } => {
                t.step = step.clone();
                K::CompensationSkipped
            }
            SagaEvent::CompensationFailed { step, reason } => {
                (t.step, t.reason) = (step.clone(), reason.clone());
                K::CompensationFailed
            }
            SagaEvent::SagaCompleted => K::SagaCompleted,
            SagaEvent::SagaCompensated { reason } => {
                t.reason = reason.clone();
                K::SagaCompensated
            }
            SagaEvent::SagaFailed { reason } => {
                t.reason = reason.clone();
                K::SagaFailed
            }
            SagaEvent::InputIgnored { reason } => {
                t.reason = reason.clone();
                K::InputIgnored
            }
            SagaEvent::Migrated { from, to, renamed } => {
                (t.from_version, t.to_version) = (from.clone(), to.clone());
                t.reason = renamed.clone();
                K::Migrated
            }
        };
        t.kind = kind as i32;
        t
    }
}

impl TryFrom<&pb::TransitionEvent> for SagaEvent {
    type Error = ConversionError;
    fn try_from(t: &pb::TransitionEvent) -> Result<Self, Self::Error> {
        let step = t.step.clone();
        let attempt = t.attempt;
        let reason = t.reason.clone();
        let delay = t.delay.as_ref().map(from_duration).unwrap_or_default();
        let kind = K::try_from(t.kind).map_err(|_| ConversionError::UnknownEnum {
            field: "kind",
            value: t.kind,
        })?;
        Ok(match kind {
            K::Unspecified => return Err(ConversionError::Missing("kind")),
            K::SagaStarted => SagaEvent::SagaStarted {
                deadline_at: t.deadline_at.as_ref().map(millis).unwrap_or_default(),
            },
            K::StepStarted => SagaEvent::StepStarted {
                step,
                attempt,
                action: t.action.clone(),
            },
            K::StepSucceeded => SagaEvent::StepSucceeded { step, attempt },
            K::StepFailed => SagaEvent::StepFailed {
                step,
                attempt,
                reason,
            },
            K::StepAttemptFailed => SagaEvent::StepAttemptFailed {
                step,
                attempt,
                reason,
            },
            K::StepTimedOut => SagaEvent::StepTimedOut { step, attempt },
            K::RetryScheduled => SagaEvent::RetryScheduled {
                step,
                next_attempt: attempt,
                delay,
            },
            K::StepInDoubt => SagaEvent::StepInDoubt { step, reason },
            K::CompensationStarted => SagaEvent::CompensationStarted { reason },
            K::CompensationStepStarted => SagaEvent::CompensationStepStarted {
                step,
                attempt,
                action: t.action.clone(),
            },
            K::CompensationAttemptFailed => SagaEvent::CompensationAttemptFailed {
                step,
                attempt,
                reason,
            },
            K::CompensationRetryScheduled => SagaEvent::CompensationRetryScheduled {
                step,
                next_attempt: attempt,
                delay,
            },
            K::StepCompensated => SagaEvent::StepCompensated { step },
            K::CompensationSkipped => SagaEvent::CompensationSkipped { step },
            K::CompensationFailed => SagaEvent::CompensationFailed { step, reason },
            K::SagaCompleted => SagaEvent::SagaCompleted,
            K::SagaCompensated => SagaEvent::SagaCompensated { reason },
            K::SagaFailed => SagaEvent::SagaFailed { reason },
            K::InputIgnored => SagaEvent::InputIgnored { reason },
            K::Migrated => SagaEvent::Migrated {
                from: t.from_version.clone(),
                to: t.to_version.clone(),
                renamed: reason,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use saga_core::definition::parse_definition;
    use saga_core::testing::Simulation;

    use super::*;
    use crate::Message;

    #[test]
    fn every_event_and_input_of_a_saga_survives_the_wire() {
        let def = parse_definition("t.yaml", include_str!("../../../sagas/travel-booking.yaml"))
            .unwrap()
            .definition;
        let mut sim = Simulation::new(&def, "wire-1");
        sim.run(
            |c| match (c.step.as_str(), c.attempt, c.compensation) {
                ("ReserveFlight", 1, false) => None,
                ("ReserveHotel", _, false) => {
                    Some(Outcome::TechnicalFailure { reason: "x".into() })
                }
                _ => Some(Outcome::Ok { result: vec![] }),
            },
            1000,
        );
        assert!(sim.events.len() > 10);
        for e in &sim.events {
            let wire = pb::TransitionEvent::from(e).encode_to_vec();
            let back = SagaEvent::try_from(&pb::TransitionEvent::decode(wire.as_slice()).unwrap());
            assert_eq!(back.as_ref(), Ok(e));
        }
        let payload = pb::Payload {
            kind: Some(pb::payload::Kind::Raw(vec![1, 2])),
        }
        .encode_to_vec();
        for input in [
            Input::Start { payload },
            Input::StepReply {
                step: "A".into(),
                attempt: 2,
                outcome: Outcome::BusinessFailure {
                    reason: "no".into(),
                },
            },
            Input::CompensationReply {
                step: "A".into(),
                attempt: 1,
                outcome: Outcome::TechnicalFailure { reason: "t".into() },
            },
            Input::TimerFired(TimerKey::deadline()),
            Input::Cancel {
                reason: "user".into(),
            },
            Input::DeadlineExceeded,
        ] {
            let wire = journal_input(&input, "wire-1").encode_to_vec();
            let back = input_from_journal(&pb::JournalInput::decode(wire.as_slice()).unwrap());
            assert_eq!(back, Ok(input));
        }
    }

    #[test]
    fn states_map_to_the_documented_enum_names() {
        assert_eq!(
            pb::SagaState::from(SagaStatus::Completed).as_str_name(),
            "SAGA_STATE_COMPLETED"
        );
        assert_eq!(
            SagaStatus::try_from(pb::SagaState::Compensated),
            Ok(SagaStatus::Compensated)
        );
        assert!(SagaStatus::try_from(pb::SagaState::Unspecified).is_err());
    }

    #[test]
    fn timestamps_round_trip() {
        assert_eq!(millis(&timestamp(1_700_000_000_123)), 1_700_000_000_123);
    }

    #[test]
    fn a_reply_without_outcome_is_refused() {
        let r = pb::StepReply {
            step: "A".into(),
            ..Default::default()
        };
        assert_eq!(reply_input(&r), Err(ConversionError::Missing("outcome")));
    }
}
