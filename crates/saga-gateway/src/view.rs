//! The read model of one saga: a `saga.v1.Saga` folded from its journal events.
//!
//! Pure functions, no I/O. The journal record is authoritative for the saga's state,
//! current step and compensation reason; step details (status, attempts, times, last
//! error) are derived from the record's `TransitionEvent`s, the same way the state
//! machine changes them.

use saga_core::machine::StepStatus;
use saga_core::{SagaId, Timestamp};
use saga_proto::{self as pb, TransitionEventKind as K};

/// Whether a state (as the raw enum value of `Saga.state`) is terminal.
pub fn is_terminal(state: i32) -> bool {
    matches!(
        pb::SagaState::try_from(state),
        Ok(pb::SagaState::Completed | pb::SagaState::Compensated | pb::SagaState::Failed)
    )
}

/// A saga that was accepted but has no journal record yet: PENDING, version 0, every
/// step of its definition NOT_STARTED.
pub fn pending(saga_id: &SagaId, saga_type: &str, steps: &[String], now: Timestamp) -> pb::Saga {
    let at = Some(pb::timestamp(now));
    pb::Saga {
        saga_id: saga_id.to_string(),
        saga_type: saga_type.to_string(),
        state: pb::SagaState::Pending as i32,
        current_step: String::new(),
        steps: steps.iter().map(|name| not_started(name)).collect(),
        compensation_reason: String::new(),
        created_at: at,
        updated_at: at,
        version: 0,
        failure_reason: String::new(),
        definition_version: String::new(),
    }
}

fn not_started(name: &str) -> pb::SagaStep {
    pb::SagaStep {
        name: name.to_string(),
        status: StepStatus::NotStarted.as_str().to_string(),
        ..Default::default()
    }
}

/// Folds one journal record into the view. The caller has checked that the record is
/// newer than the view (`event.version > saga.version`).
pub fn apply(saga: &mut pb::Saga, event: &pb::JournalEvent) {
    let at = event.recorded_at;
    saga.state = event.state;
    saga.current_step = event.current_step.clone();
    saga.compensation_reason = event.compensation_reason.clone();
    saga.version = event.version;
    if !event.definition_version.is_empty() {
        saga.definition_version = event.definition_version.clone();
    }
    saga.updated_at = at.or(saga.updated_at);
    if saga.created_at.is_none() {
        saga.created_at = at;
    }
    for t in &event.events {
        apply_transition(saga, t, at);
    }
}

fn apply_transition(
    saga: &mut pb::Saga,
    t: &pb::TransitionEvent,
    at: Option<prost_types::Timestamp>,
) {
    let kind = K::try_from(t.kind).unwrap_or(K::Unspecified);
    match kind {
        K::SagaFailed => {
            saga.failure_reason = t.reason.clone();
            return;
        }
        K::CompensationStarted => {
            if saga.compensation_reason.is_empty() {
                saga.compensation_reason = t.reason.clone();
            }
            return;
        }
        K::Migrated => {
            // `reason` lists the steps renamed by the migration, `OLD=NEW, ...`.
            for (old, new) in t.reason.split(", ").filter_map(|r| r.split_once('=')) {
                if let Some(step) = saga.steps.iter_mut().find(|s| s.name == old) {
                    step.name = new.to_string();
                }
            }
            return;
        }
        K::Unspecified
        | K::SagaStarted
        | K::SagaCompleted
        | K::SagaCompensated
        | K::InputIgnored => return,
        _ => {}
    }
    if t.step.is_empty() {
        return;
    }
    let step = step_mut(saga, &t.step);
    let set = |step: &mut pb::SagaStep, status: StepStatus| {
        step.status = status.as_str().to_string();
    };
    match kind {
        K::StepStarted => {
            set(step, StepStatus::Running);
            step.attempts = t.attempt;
            if step.started_at.is_none() {
                step.started_at = at;
            }
        }
        K::StepSucceeded => {
            set(step, StepStatus::Completed);
            step.finished_at = at;
            step.error.clear();
        }
        K::StepFailed => {
            set(step, StepStatus::BusinessFailed);
            step.finished_at = at;
            step.error = t.reason.clone();
        }
        K::StepAttemptFailed => step.error = t.reason.clone(),
        K::StepTimedOut => step.error = format!("attempt {} timed out", t.attempt),
        K::RetryScheduled => set(step, StepStatus::WaitingRetry),
        K::StepInDoubt => {
            set(step, StepStatus::InDoubt);
            step.finished_at = at;
            step.error = t.reason.clone();
        }
        K::CompensationStepStarted => {
            set(step, StepStatus::Compensating);
            step.compensation_attempts = t.attempt;
        }
        K::CompensationAttemptFailed => step.error = t.reason.clone(),
        K::CompensationRetryScheduled => set(step, StepStatus::WaitingCompensationRetry),
        K::StepCompensated => {
            set(step, StepStatus::Compensated);
            step.finished_at = at;
        }
        K::CompensationSkipped => set(step, StepStatus::CompensationSkipped),
        K::CompensationFailed => {
            set(step, StepStatus::CompensationFailed);
            step.finished_at = at;
            step.error = t.reason.clone();
        }
        _ => {}
    }
}

/// The step named `name`; a step the loaded definition does not know (another version of
/// the saga type, or a type this gateway has not loaded) is appended in journal order.
fn step_mut<'a>(saga: &'a mut pb::Saga, name: &str) -> &'a mut pb::SagaStep {
    let i = match saga.steps.iter().position(|s| s.name == name) {
        Some(i) => i,
        None => {
            saga.steps.push(not_started(name));
            saga.steps.len() - 1
        }
    };
    &mut saga.steps[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: K, step: &str, attempt: u32, reason: &str) -> pb::TransitionEvent {
        pb::TransitionEvent {
            kind: kind as i32,
            step: step.into(),
            attempt,
            reason: reason.into(),
            ..Default::default()
        }
    }

    fn record(
        version: u64,
        at: Timestamp,
        state: pb::SagaState,
        current: &str,
        events: Vec<pb::TransitionEvent>,
    ) -> pb::JournalEvent {
        pb::JournalEvent {
            saga_id: "s-1".into(),
            saga_type: "OrderCheckout".into(),
            version,
            recorded_at: Some(pb::timestamp(at)),
            state: state as i32,
            current_step: current.into(),
            events,
            ..Default::default()
        }
    }

    fn steps() -> Vec<String> {
        ["ReserveStock", "ChargePayment", "ConfirmOrder"]
            .map(String::from)
            .to_vec()
    }

    fn status(s: &pb::Saga) -> Vec<(&str, &str, u32, u32)> {
        s.steps
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.status.as_str(),
                    s.attempts,
                    s.compensation_attempts,
                )
            })
            .collect()
    }

    #[test]
    fn a_pending_saga_lists_the_definition_steps_not_started() {
        let s = pending(
            &SagaId::parse("s-1").unwrap(),
            "OrderCheckout",
            &steps(),
            5_000,
        );
        assert_eq!(s.state(), pb::SagaState::Pending);
        assert_eq!(s.version, 0);
        assert_eq!(s.created_at, Some(pb::timestamp(5_000)));
        assert!(s.steps.iter().all(|st| st.status == "NOT_STARTED"));
        assert_eq!(s.steps.len(), 3);
    }

    #[test]
    fn retries_then_a_business_failure_compensate_what_completed() {
        use pb::SagaState::*;
        let mut s = pending(
            &SagaId::parse("s-1").unwrap(),
            "OrderCheckout",
            &steps(),
            1_000,
        );
        apply(
            &mut s,
            &record(
                1,
                2_000,
                Running,
                "ReserveStock",
                vec![
                    ev(K::SagaStarted, "", 0, ""),
                    ev(K::StepStarted, "ReserveStock", 1, ""),
                ],
            ),
        );
        apply(
            &mut s,
            &record(
                2,
                3_000,
                Running,
                "ChargePayment",
                vec![
                    ev(K::StepSucceeded, "ReserveStock", 1, ""),
                    ev(K::StepStarted, "ChargePayment", 1, ""),
                ],
            ),
        );
        apply(
            &mut s,
            &record(
                3,
                4_000,
                Running,
                "ChargePayment",
                vec![
                    ev(K::StepAttemptFailed, "ChargePayment", 1, "db down"),
                    ev(K::RetryScheduled, "ChargePayment", 2, ""),
                ],
            ),
        );
        assert_eq!(s.steps[1].status, "WAITING_RETRY");
        assert_eq!(s.steps[1].error, "db down");
        apply(
            &mut s,
            &record(
                4,
                5_000,
                Running,
                "ChargePayment",
                vec![ev(K::StepStarted, "ChargePayment", 2, "")],
            ),
        );
        let mut last = record(
            5,
            6_000,
            Compensating,
            "ReserveStock",
            vec![
                ev(K::StepFailed, "ChargePayment", 2, "declined"),
                ev(
                    K::CompensationStarted,
                    "",
                    0,
                    "step ChargePayment failed: declined",
                ),
                ev(K::CompensationStepStarted, "ReserveStock", 1, ""),
            ],
        );
        last.compensation_reason = "step ChargePayment failed: declined".into();
        apply(&mut s, &last);
        assert_eq!(
            status(&s),
            [
                ("ReserveStock", "COMPENSATING", 1, 1),
                ("ChargePayment", "FAILED", 2, 0),
                ("ConfirmOrder", "NOT_STARTED", 0, 0),
            ]
        );
        let mut end = record(
            6,
            7_000,
            Compensated,
            "",
            vec![
                ev(K::StepCompensated, "ReserveStock", 0, ""),
                ev(
                    K::SagaCompensated,
                    "",
                    0,
                    "step ChargePayment failed: declined",
                ),
            ],
        );
        end.compensation_reason = "step ChargePayment failed: declined".into();
        apply(&mut s, &end);
        assert_eq!(s.state(), Compensated);
        assert!(is_terminal(s.state));
        assert_eq!(s.version, 6);
        assert_eq!(s.current_step, "");
        assert_eq!(s.compensation_reason, "step ChargePayment failed: declined");
        assert_eq!(s.created_at, Some(pb::timestamp(1_000)));
        assert_eq!(s.updated_at, Some(pb::timestamp(7_000)));
        let charge = &s.steps[1];
        assert_eq!(charge.started_at, Some(pb::timestamp(3_000)));
        assert_eq!(charge.finished_at, Some(pb::timestamp(6_000)));
        assert_eq!(charge.error, "declined");
        assert_eq!(s.steps[0].status, "COMPENSATED");
        assert_eq!(s.steps[0].finished_at, Some(pb::timestamp(7_000)));
    }

    #[test]
    fn the_view_names_the_definition_version_its_records_carry() {
        let mut s = pending(&SagaId::parse("s-1").unwrap(), "OrderCheckout", &steps(), 1);
        assert_eq!(s.definition_version, "");
        let mut r = record(1, 2, pb::SagaState::Running, "ReserveStock", vec![]);
        r.definition_version = "0123456789abcdef".into();
        apply(&mut s, &r);
        assert_eq!(s.definition_version, "0123456789abcdef");
    }

    #[test]
    fn a_failed_saga_keeps_its_failure_reason_and_unknown_steps_are_appended() {
        let mut s = pending(&SagaId::parse("s-1").unwrap(), "Other", &[], 1_000);
        apply(
            &mut s,
            &record(
                1,
                2_000,
                pb::SagaState::Failed,
                "",
                vec![
                    ev(K::CompensationFailed, "Ship", 0, "refused"),
                    ev(K::SagaFailed, "", 0, "could not undo: Ship (refused)"),
                ],
            ),
        );
        assert_eq!(s.failure_reason, "could not undo: Ship (refused)");
        assert_eq!(status(&s), [("Ship", "COMPENSATION_FAILED", 0, 0)]);
    }
}
