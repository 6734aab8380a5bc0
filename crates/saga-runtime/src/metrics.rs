//! What the runtime reports to Prometheus, through the `metrics` facade (the binary
//! installs the exporter; without one every call here is a no-op).
//!
//! Saga and step figures are observed in one place: [`journalled`], called when a
//! transition's journal record is stored (the moment it happened for good, once per
//! transition: a fenced or crashed transition is not counted). Figures of the worker's
//! own copy (actors alive, outbox lag, sagas past their deadline) are sampled by
//! `spawn_sampler` once
//! [`enable_sampler`] was called. Labels are bounded sets: saga type, step, action, outcome; never
//! an id.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::Duration;

use metrics::Unit;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use ractor::ActorRef;
use saga_core::definition::SagaDefinition;
use saga_core::machine::SagaState;
use saga_proto::{self as pb, Message};
use tracing::debug;

use crate::supervisor::SupervisorMsg;
use crate::Context;

/// Sagas started (their first transition journalled), by `saga_type`.
pub const SAGAS_STARTED: &str = "saga_started_total";
/// Sagas that reached a terminal state, by `saga_type` and `outcome`.
pub const SAGAS_FINISHED: &str = "saga_finished_total";
/// Start to terminal state, by `saga_type` and `outcome`.
pub const SAGA_DURATION: &str = "saga_duration_seconds";
/// First attempt sent to the step's definite outcome, by `saga_type`, `step`, `action`
/// and `outcome` (succeeded, failed, in_doubt).
pub const STEP_DURATION: &str = "saga_step_duration_seconds";
/// Step attempts sent again (after a timeout or a technical failure).
pub const STEP_RETRIES: &str = "saga_step_retries_total";
/// Step attempts that timed out.
pub const STEP_TIMEOUTS: &str = "saga_step_timeouts_total";
/// Steps undone, by `saga_type`, `step` and `action` (the compensating action).
pub const COMPENSATIONS: &str = "saga_compensations_total";
/// Compensation attempts that failed or timed out.
pub const COMPENSATION_ATTEMPT_FAILURES: &str = "saga_compensation_attempt_failures_total";
/// Saga actors alive on this worker.
pub const ACTORS_ALIVE: &str = "saga_actors_alive";
/// Gauge: open sagas parked without an actor until their next input or deadline.
pub const PARKED_SAGAS: &str = "saga_parked_sagas";
/// Sagas this worker restored from their journal (a takeover, a restart, an input for a
/// saga its store does not hold), by `saga_type`.
pub const RESTORED: &str = "saga_restored_total";
/// Saga actors restarted after a failure since the worker started.
pub const ACTOR_RESTARTS: &str = "saga_actor_restarts_total";
/// Age of the oldest transition whose outbox is not published yet.
pub const OUTBOX_LAG: &str = "saga_outbox_lag_seconds";
/// Transitions of this worker's copy with an unpublished outbox.
pub const OUTBOX_PENDING: &str = "saga_outbox_pending_sagas";
/// Open sagas of this worker's copy whose deadline has passed.
pub const PAST_DEADLINE: &str = "saga_past_deadline_sagas";
/// Open sagas in this worker's copy.
pub const OPEN_SAGAS: &str = "saga_open_sagas";

/// How often [`spawn_sampler`] samples.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

static SAMPLING: AtomicBool = AtomicBool::new(false);

/// Makes every [`crate::Worker`] created afterwards sample its own figures (binaries
/// call it when they serve metrics; without it no sampler runs).
pub fn enable_sampler() {
    SAMPLING.store(true, Ordering::Relaxed);
}

/// Registers the descriptions (`# HELP`) once; called before the first record.
pub fn describe() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        describe_counter!(SAGAS_STARTED, "Sagas started, by saga type.");
        describe_counter!(
            SAGAS_FINISHED,
            "Sagas that reached a terminal state, by saga type and outcome (completed, compensated, failed)."
        );
        describe_histogram!(
            SAGA_DURATION,
            Unit::Seconds,
            "Time from a saga's start to its terminal state, by saga type and outcome."
        );
        describe_histogram!(
            STEP_DURATION,
            Unit::Seconds,
            "Time from a step's first attempt to its definite outcome (succeeded, failed, in_doubt), retries included."
        );
        describe_counter!(STEP_RETRIES, "Step attempts sent again after a timeout or a technical failure.");
        describe_counter!(STEP_TIMEOUTS, "Step attempts that timed out.");
        describe_counter!(COMPENSATIONS, "Steps undone by their compensating action, by saga type, step and action.");
        describe_counter!(
            COMPENSATION_ATTEMPT_FAILURES,
            "Compensation attempts that failed or timed out (retried until their limit moves the saga to FAILED)."
        );
        describe_gauge!(ACTORS_ALIVE, "Saga actors alive on this worker.");
        describe_gauge!(
            PARKED_SAGAS,
            "Open sagas of this worker parked without an actor until their next input or deadline."
        );
        describe_counter!(
            RESTORED,
            "Sagas restored from their journal (takeover, restart, an input for a saga the local store does not hold), by saga type."
        );
        describe_counter!(ACTOR_RESTARTS, "Saga actors restarted by the supervisor after a failure.");
        describe_gauge!(
            OUTBOX_LAG,
            Unit::Seconds,
            "Age of the oldest transition of this worker whose outbox (journal record, commands, events) is not published yet; 0 when none."
        );
        describe_gauge!(OUTBOX_PENDING, "Sagas of this worker with an unpublished outbox.");
        describe_gauge!(PAST_DEADLINE, "Open sagas of this worker whose deadline has passed.");
        describe_gauge!(OPEN_SAGAS, "Open (non-terminal) sagas held by this worker.");
    });
}

/// One saga restored from its journal.
pub(crate) fn restored(saga_type: &str) {
    describe();
    counter!(RESTORED, "saga_type" => saga_type.to_owned()).increment(1);
}

/// Records what a stored journal record says happened. `def` and `state` are the saga's
/// definition and its state after the transition (step actions and timings); the events
/// are read from the record itself, so exactly what was journalled is counted.
pub(crate) fn journalled(def: Option<&SagaDefinition>, state: Option<&SagaState>, payload: &[u8]) {
    let Ok(record) = pb::JournalEvent::decode(payload) else {
        return;
    };
    describe();
    let saga_type = record.saga_type.clone();
    let action = |step: &str, compensation: bool| -> String {
        def.and_then(|d| d.steps.iter().find(|s| s.name == step))
            .map(|s| {
                if compensation {
                    s.compensation
                        .action()
                        .map(|c| c.action.clone())
                        .unwrap_or_default()
                } else {
                    s.action.clone()
                }
            })
            .unwrap_or_default()
    };
    let step_seconds = |step: &str| -> Option<f64> {
        let s = state?.steps.iter().find(|s| s.name == step)?;
        Some(seconds(s.finished_at?.saturating_sub(s.started_at?)))
    };
    let saga_seconds = || state.map(|s| seconds(s.updated_at.saturating_sub(s.created_at)));
    for ev in &record.events {
        let Ok(kind) = pb::TransitionEventKind::try_from(ev.kind) else {
            continue;
        };
        let step = ev.step.clone();
        use pb::TransitionEventKind as K;
        match kind {
            K::SagaStarted => counter!(SAGAS_STARTED, "saga_type" => saga_type.clone()).increment(1),
            K::StepSucceeded | K::StepFailed | K::StepInDoubt => {
                let outcome = match kind {
                    K::StepSucceeded => "succeeded",
                    K::StepFailed => "failed",
                    _ => "in_doubt",
                };
                if let Some(secs) = step_seconds(&step) {
                    histogram!(STEP_DURATION, "saga_type" => saga_type.clone(), "step" => step.clone(),
                        "action" => action(&step, false), "outcome" => outcome)
                    .record(secs);
                }
            }
            K::RetryScheduled => counter!(STEP_RETRIES, "saga_type" => saga_type.clone(),
                "step" => step.clone(), "action" => action(&step, false))
            .increment(1),
            K::StepTimedOut => counter!(STEP_TIMEOUTS, "saga_type" => saga_type.clone(),
                "step" => step.clone(), "action" => action(&step, false))
            .increment(1),
            K::StepCompensated => counter!(COMPENSATIONS, "saga_type" => saga_type.clone(),
                "step" => step.clone(), "action" => action(&step, true))
            .increment(1),
            K::CompensationAttemptFailed => counter!(COMPENSATION_ATTEMPT_FAILURES,
                "saga_type" => saga_type.clone(), "step" => step.clone(), "action" => action(&step, true))
            .increment(1),
            K::SagaCompleted | K::SagaCompensated | K::SagaFailed => {
                let outcome = match kind {
                    K::SagaCompleted => "completed",
                    K::SagaCompensated => "compensated",
                    _ => "failed",
                };
                counter!(SAGAS_FINISHED, "saga_type" => saga_type.clone(), "outcome" => outcome)
                    .increment(1);
                if let Some(secs) = saga_seconds() {
                    histogram!(SAGA_DURATION, "saga_type" => saga_type.clone(), "outcome" => outcome)
                        .record(secs);
                }
            }
            _ => {}
        }
    }
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Samples the worker's own figures every [`SAMPLE_EVERY`] until the supervisor stops:
/// actors alive and restarted, and from the local copy the open sagas, those past their
/// deadline and the outbox lag. The copy is read in full, which is proportional to what
/// is open (terminal sagas leave it once idle).
pub(crate) fn spawn_sampler(ctx: &Context, supervisor: &ActorRef<SupervisorMsg>) {
    if !SAMPLING.load(Ordering::Relaxed) {
        return;
    }
    describe();
    let (ctx, supervisor) = (ctx.clone(), supervisor.clone());
    tokio::spawn(async move {
        loop {
            let Ok((alive, parked)) = ractor::call!(supervisor, SupervisorMsg::Counts) else {
                return;
            };
            gauge!(ACTORS_ALIVE).set(alive as f64);
            gauge!(PARKED_SAGAS).set(parked as f64);
            if let Ok(n) = ractor::call!(supervisor, SupervisorMsg::Restarts) {
                counter!(ACTOR_RESTARTS).absolute(n);
            }
            sample_store(&ctx);
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    });
}

fn sample_store(ctx: &Context) {
    let active = match ctx.store.active() {
        Ok(a) => a,
        Err(e) => {
            debug!(error = %e, "metrics: reading the local store failed");
            return;
        }
    };
    let now = ctx.clock.now();
    let (mut open, mut past, mut pending) = (0u64, 0u64, 0u64);
    let mut oldest: Option<u64> = None;
    for s in &active {
        let st = &s.state;
        if !st.status.is_terminal() {
            open += 1;
            if st.deadline_at.is_some_and(|d| d < now) {
                past += 1;
            }
        }
        match ctx.store.outbox(st.saga_id.as_str()) {
            // The outbox was written by the saga's last transition.
            Ok(o) if !o.is_empty() => {
                pending += 1;
                oldest = Some(oldest.map_or(st.updated_at, |t| t.min(st.updated_at)));
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "metrics: reading an outbox failed"),
        }
    }
    gauge!(OPEN_SAGAS).set(open as f64);
    gauge!(PAST_DEADLINE).set(past as f64);
    gauge!(OUTBOX_PENDING).set(pending as f64);
    gauge!(OUTBOX_LAG).set(oldest.map_or(0.0, |t| seconds(now.saturating_sub(t))));
}
