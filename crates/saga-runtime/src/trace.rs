//! The spans of a saga's life on the worker, after the OpenTelemetry messaging
//! conventions (`messaging.*`), with the saga's own attributes under `saga.*`.
//!
//! | span | kind | when |
//! | --- | --- | --- |
//! | `process saga.in` / `process saga.reply` | consumer | an input delivered from the inbox: its transition |
//! | `timer <kind>` | internal | a timer fired: its transition, linked to the saga's trace |
//! | `publish saga.cmd.<service>.<action>` | producer | a command (or compensation) published |
//! | `publish events.<domain>.<Name>` | producer | a domain event published |
//!
//! A delivered input continues the trace its headers carry (the gateway's start, a
//! participant's reply); an input without one continues the saga's own trace (kept in
//! its journal records). A timer, which may fire long after the saga began, starts a
//! trace of its own that links to the saga's. Without an OpenTelemetry layer these are
//! plain `tracing` spans and nothing is propagated.

use saga_core::machine::{Input, Outcome, SagaState, TimerKind};
use saga_ports::{Delivery, OutgoingMessage};
use saga_proto::{self as pb, Message};
use saga_telemetry::propagation;
use tracing::field::Empty;
use tracing::{info_span, Span};

use crate::envelope::RecordTrace;

/// `start`, `step_reply`, `compensation_reply`, `timer`, `cancel`, `deadline_exceeded`, `migrate`.
pub(crate) fn input_kind(input: &Input) -> &'static str {
    match input {
        Input::Start { .. } => "start",
        Input::StepReply { .. } => "step_reply",
        Input::CompensationReply { .. } => "compensation_reply",
        Input::TimerFired(_) => "timer",
        Input::Cancel { .. } => "cancel",
        Input::DeadlineExceeded => "deadline_exceeded",
        Input::Migrate { .. } => "migrate",
    }
}

fn timer_kind(kind: &TimerKind) -> &'static str {
    match kind {
        TimerKind::StepTimeout => "step_timeout",
        TimerKind::RetryBackoff => "retry_backoff",
        TimerKind::CompensationTimeout => "compensation_timeout",
        TimerKind::CompensationBackoff => "compensation_backoff",
        TimerKind::Deadline => "deadline",
    }
}

/// The first two tokens of a subject (`saga.in`, `saga.reply`): span names stay few.
fn subject_family(subject: &str) -> &str {
    let mut dots = subject.match_indices('.').map(|(i, _)| i);
    let _ = dots.next();
    match dots.next() {
        Some(i) => &subject[..i],
        None => subject,
    }
}

/// The consumer span of an input delivered from the inbox (or handed over without a
/// delivery, as a refused command's answer is).
pub(crate) fn process_span(
    saga_id: &str,
    saga_type: &str,
    input: &Input,
    delivery: Option<&Delivery>,
    saga_trace: Option<&str>,
) -> Span {
    let (subject, msg_id) = delivery
        .map(|d| {
            (
                d.subject.as_str(),
                d.headers
                    .get(saga_ports::header::MSG_ID)
                    .map(String::as_str)
                    .unwrap_or(""),
            )
        })
        .unwrap_or(("", ""));
    let span = info_span!(
        parent: None,
        "saga.process",
        otel.name = %format!("process {}", subject_family(subject)),
        otel.kind = "consumer",
        otel.status_code = Empty,
        messaging.system = "nats",
        "messaging.operation.type" = "process",
        messaging.destination.name = subject,
        messaging.message.id = msg_id,
        messaging.message.conversation_id = saga_id,
        saga.id = saga_id,
        "saga.type" = saga_type,
        saga.input.kind = input_kind(input),
        saga.version = Empty,
        saga.step = Empty,
        saga.attempt = Empty,
        saga.outcome = Empty,
        saga.reason = Empty,
        saga.status = Empty,
        saga.compensating = Empty,
    );
    let continued = delivery.is_some_and(|d| propagation::set_parent(&span, &d.headers));
    if !continued {
        if let Some(tp) = saga_trace {
            propagation::set_parent_context(&span, propagation::context_from(tp, None));
        }
    }
    span
}

/// The span of a fired timer: a trace of its own, linked to the saga's.
pub(crate) fn timer_span(
    saga_id: &str,
    saga_type: &str,
    input: &Input,
    saga_trace: Option<&str>,
) -> Span {
    let kind = match input {
        Input::TimerFired(key) => timer_kind(&key.kind),
        _ => "deadline",
    };
    let span = info_span!(
        parent: None,
        "saga.timer",
        otel.name = %format!("timer {kind}"),
        otel.kind = "internal",
        otel.status_code = Empty,
        messaging.message.conversation_id = saga_id,
        saga.id = saga_id,
        "saga.type" = saga_type,
        saga.input.kind = input_kind(input),
        saga.timer.kind = kind,
        saga.version = Empty,
        saga.step = Empty,
        saga.attempt = Empty,
        saga.outcome = Empty,
        saga.reason = Empty,
        saga.status = Empty,
        saga.compensating = Empty,
    );
    if let Some(tp) = saga_trace {
        propagation::link(&span, tp);
    }
    span
}

/// Records what a transition did on the span it runs in.
pub(crate) fn record_transition(span: &Span, input: &Input, before: &SagaState, after: &SagaState) {
    span.record("saga.version", after.version);
    let (step, attempt, outcome) = match input {
        Input::StepReply {
            step,
            attempt,
            outcome,
        }
        | Input::CompensationReply {
            step,
            attempt,
            outcome,
        } => (Some(step.as_str()), Some(*attempt), Some(outcome)),
        Input::TimerFired(key) if !key.step.is_empty() => {
            (Some(key.step.as_str()), Some(key.attempt), None)
        }
        _ => (None, None, None),
    };
    if let Some(step) = step.or(after.current_step_name()) {
        span.record("saga.step", step);
    }
    if let Some(attempt) = attempt {
        span.record("saga.attempt", attempt);
    }
    match outcome {
        Some(Outcome::Ok { .. }) => {
            span.record("saga.outcome", "ok");
        }
        Some(Outcome::BusinessFailure { reason }) => {
            span.record("saga.outcome", "business_failure");
            span.record("saga.reason", reason.as_str());
        }
        Some(Outcome::TechnicalFailure { reason }) => {
            span.record("saga.outcome", "technical_failure");
            span.record("saga.reason", reason.as_str());
        }
        None => {
            let applied = after.version != before.version;
            span.record("saga.outcome", if applied { "applied" } else { "ignored" });
        }
    }
    span.record("saga.status", after.status.to_string().as_str());
    let compensating = after.compensation_reason.is_some();
    span.record("saga.compensating", compensating);
    if compensating && before.compensation_reason.is_none() {
        // The transition that turned the saga back: say why on its span.
        if let Some(reason) = &after.compensation_reason {
            span.record("saga.reason", reason.as_str());
        }
    }
}

/// What a journal record written in `span` names: its ids and the saga's trace.
pub(crate) fn record_trace(span: &Span, saga_trace: Option<&str>) -> RecordTrace {
    let (trace_id, span_id) = propagation::ids(span).unwrap_or_default();
    RecordTrace {
        trace_id,
        span_id,
        saga_traceparent: saga_trace.unwrap_or_default().to_string(),
    }
}

/// The producer span of a command or domain event about to be published, and the
/// message with the span's context in its headers (the outbox keeps the message as
/// committed; the context is that of the publish, a republish after a restart gets its
/// own). Outside any traced input the span continues the saga's trace.
pub(crate) fn publish(
    msg: &OutgoingMessage,
    state: Option<&SagaState>,
    saga_trace: Option<&str>,
) -> (OutgoingMessage, Span) {
    let command = msg
        .subject
        .starts_with("saga.cmd.")
        .then(|| pb::StepCommand::decode(msg.payload.as_slice()).ok())
        .flatten();
    let family = if command.is_some() {
        msg.subject.as_str()
    } else {
        // events.<domain>.<Name>.<saga_id>: the saga id is not part of the name.
        msg.subject
            .rsplit_once('.')
            .map_or(msg.subject.as_str(), |(head, _)| head)
    };
    let span = info_span!(
        "saga.publish",
        otel.name = %format!("publish {family}"),
        otel.kind = "producer",
        messaging.system = "nats",
        "messaging.operation.type" = "publish",
        messaging.destination.name = msg.subject.as_str(),
        messaging.message.id = msg.msg_id.as_str(),
        messaging.message.conversation_id = Empty,
        saga.id = Empty,
        "saga.type" = Empty,
        saga.version = Empty,
        saga.step = Empty,
        saga.attempt = Empty,
        saga.command.kind = Empty,
        saga.compensation = Empty,
        saga.reason = Empty,
    );
    if let Some(state) = state {
        span.record("messaging.message.conversation_id", state.saga_id.as_str());
        span.record("saga.id", state.saga_id.as_str());
        span.record("saga.type", state.saga_type.as_str());
        span.record("saga.version", state.version);
    }
    if let Some(cmd) = &command {
        span.record("saga.step", cmd.step.as_str());
        span.record("saga.attempt", cmd.attempt);
        span.record("saga.compensation", cmd.compensation);
        let kind = match (cmd.compensation, cmd.attempt > 1) {
            (true, _) => "compensation",
            (false, true) => "retry",
            (false, false) => "step",
        };
        span.record("saga.command.kind", kind);
        if cmd.compensation {
            if let Some(reason) = state.and_then(|s| s.compensation_reason.as_deref()) {
                span.record("saga.reason", reason);
            }
        } else if cmd.attempt > 1 {
            let reason = state
                .and_then(|s| s.steps.iter().find(|st| st.name == cmd.step))
                .and_then(|st| st.error.as_deref());
            if let Some(reason) = reason {
                span.record("saga.reason", reason);
            }
        }
    }
    if propagation::span_context(&Span::current()).is_none() {
        if let Some(tp) = saga_trace {
            propagation::set_parent_context(&span, propagation::context_from(tp, None));
        }
    }
    let mut msg = msg.clone();
    propagation::inject(&span, &mut msg.headers);
    (msg, span)
}
