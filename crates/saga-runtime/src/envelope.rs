//! What goes on the wire: subjects, headers, message ids and Protobuf bodies of the
//! messages a saga consumes and produces.

use saga_core::definition::SagaDefinition;
use saga_core::ids::partition_of;
use saga_core::machine::{Command, DomainEvent, Input, SagaEvent, SagaState};
use saga_core::{SagaId, Timestamp};
use saga_ports::{header, Delivery, Headers, JournalAppend, OutgoingMessage, Snapshot};
use saga_proto::{self as pb, Message};

/// `saga.in.<partition>.<saga_id>`: where a saga's inputs go.
pub fn inbox_subject(saga_id: &SagaId, partitions: u32) -> String {
    format!("saga.in.{}.{saga_id}", partition_of(saga_id, partitions))
}

/// `saga.reply.<partition>.<saga_id>.<service>`: where `service` replies to a command.
/// Apart from `saga.in.>` so that NATS permissions can let a participant reply without
/// letting it start or cancel sagas (or reply in another service's name).
pub fn reply_subject(saga_id: &SagaId, partitions: u32, service: &str) -> String {
    format!(
        "saga.reply.{}.{saga_id}.{service}",
        partition_of(saga_id, partitions)
    )
}

/// `saga.cmd.<service>.<action>`.
pub fn command_subject(service: &str, action: &str) -> String {
    format!("saga.cmd.{service}.{action}")
}

/// The message that starts a saga (deduplicated per saga id).
pub fn start_message(
    saga_type: &str,
    saga_id: &SagaId,
    payload: Option<pb::Payload>,
    idempotency_key: &str,
    partitions: u32,
    now: Timestamp,
) -> OutgoingMessage {
    let input = pb::SagaInput {
        saga_id: saga_id.to_string(),
        saga_type: saga_type.to_string(),
        kind: Some(pb::saga_input::Kind::Start(pb::StartSaga {
            payload,
            idempotency_key: idempotency_key.to_string(),
            requested_at: Some(pb::timestamp(now)),
        })),
    };
    OutgoingMessage {
        subject: inbox_subject(saga_id, partitions),
        msg_id: format!("start:{saga_id}"),
        headers: Headers::from([(header::SAGA_ID.to_string(), saga_id.to_string())]),
        payload: input.encode_to_vec(),
    }
}

/// The message that asks a saga to stop and compensate.
pub fn cancel_message(
    saga_type: &str,
    saga_id: &SagaId,
    reason: &str,
    partitions: u32,
) -> OutgoingMessage {
    let input = pb::SagaInput {
        saga_id: saga_id.to_string(),
        saga_type: saga_type.to_string(),
        kind: Some(pb::saga_input::Kind::Cancel(pb::CancelSaga {
            reason: reason.to_string(),
        })),
    };
    OutgoingMessage {
        subject: inbox_subject(saga_id, partitions),
        msg_id: format!("cancel:{saga_id}"),
        headers: Headers::from([(header::SAGA_ID.to_string(), saga_id.to_string())]),
        payload: input.encode_to_vec(),
    }
}

/// The message that moves saga `saga_id` to definition version `to`
/// (`sagactl saga migrate`), with `step_map` naming renamed steps (old → new).
/// Sent twice, it is stored once (its message id names the migration).
pub fn migrate_message(
    saga_type: &str,
    saga_id: &SagaId,
    to: &str,
    step_map: &std::collections::BTreeMap<String, String>,
    partitions: u32,
) -> OutgoingMessage {
    let input = pb::SagaInput {
        saga_id: saga_id.to_string(),
        saga_type: saga_type.to_string(),
        kind: Some(pb::saga_input::Kind::Migrate(pb::MigrateSaga {
            to_version: to.to_string(),
            step_map: step_map.clone().into_iter().collect(),
        })),
    };
    let id = Input::Migrate {
        to: to.to_string(),
        step_map: step_map.clone(),
    }
    .id();
    OutgoingMessage {
        subject: inbox_subject(saga_id, partitions),
        msg_id: format!("{id}:{saga_id}"),
        headers: Headers::from([(header::SAGA_ID.to_string(), saga_id.to_string())]),
        payload: input.encode_to_vec(),
    }
}

/// A decoded saga input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedInput {
    /// Which saga.
    pub saga_id: SagaId,
    /// Its type.
    pub saga_type: String,
    /// What happened.
    pub input: Input,
    /// The service named by a reply's subject (`saga.reply.<p>.<id>.<service>`), which
    /// must be the service of the step replied to; `None` for `saga.in` inputs.
    pub reply_service: Option<String>,
}

/// Decodes a delivery from `SAGA_INBOX`; the error says why it is unusable (for the DLQ).
pub fn decode_input(d: &Delivery) -> Result<DecodedInput, String> {
    let msg = pb::SagaInput::decode(d.payload.as_slice())
        .map_err(|e| format!("undecodable saga.v1.SagaInput: {e}"))?;
    let saga_id = SagaId::parse(&msg.saga_id).map_err(|e| e.to_string())?;
    let tokens: Vec<&str> = d.subject.split('.').collect();
    let (subject_id, reply_service) = match tokens.as_slice() {
        ["saga", "in", _, id] => (*id, None),
        ["saga", "reply", _, id, service] => (*id, Some((*service).to_owned())),
        _ => {
            return Err(format!(
                "subject `{}` is neither saga.in.<partition>.<saga_id> nor \
                 saga.reply.<partition>.<saga_id>.<service>",
                d.subject
            ))
        }
    };
    if subject_id != saga_id.as_str() {
        return Err(format!(
            "saga id `{saga_id}` does not match subject `{}`",
            d.subject
        ));
    }
    let kind = msg.kind.ok_or("SagaInput without kind")?;
    if reply_service.is_some() && !matches!(kind, pb::saga_input::Kind::Reply(_)) {
        return Err(format!(
            "only step replies may be published on saga.reply subjects (`{}`)",
            d.subject
        ));
    }
    let input = match kind {
        pb::saga_input::Kind::Start(s) => Input::Start {
            payload: s.payload.map(|p| p.encode_to_vec()).unwrap_or_default(),
        },
        pb::saga_input::Kind::Reply(r) => {
            pb::reply_input(&r).map_err(|e| format!("bad StepReply: {e}"))?
        }
        pb::saga_input::Kind::Cancel(c) => Input::Cancel { reason: c.reason },
        pb::saga_input::Kind::Migrate(m) => {
            pb::migrate_input(&m).map_err(|e| format!("bad MigrateSaga: {e}"))?
        }
    };
    Ok(DecodedInput {
        saga_id,
        saga_type: msg.saga_type,
        input,
        reply_service,
    })
}

/// The command message for a step (or compensation) attempt.
pub fn command_message(
    def: &SagaDefinition,
    state: &SagaState,
    cmd: &Command,
    partitions: u32,
    now: Timestamp,
) -> OutgoingMessage {
    let step = def.steps.iter().find(|s| s.name == cmd.step);
    let timeout = step
        .map(|s| match (cmd.compensation, s.compensation.action()) {
            (true, Some(c)) => c.timeout,
            _ => s.timeout,
        })
        .unwrap_or_default();
    let payload = (!state.payload.is_empty())
        .then(|| pb::Payload::decode(state.payload.as_slice()).ok())
        .flatten();
    let service = step.map(|s| s.service.as_str()).unwrap_or(&cmd.service);
    let reply_to = reply_subject(&state.saga_id, partitions, service);
    let mut wire = pb::step_command(
        state.saga_id.as_str(),
        &state.saga_type,
        cmd,
        payload,
        &reply_to,
        now,
        timeout,
    );
    // A compensation undoes its own step: it carries that step's result only (what it
    // needs to undo, e.g. the reservation id), which keeps it small.
    for s in state
        .steps
        .iter()
        .filter(|s| !cmd.compensation || s.name == cmd.step)
    {
        if let Some(result) = s.result.as_ref().filter(|r| !r.is_empty()) {
            if let Ok(p) = pb::Payload::decode(result.as_slice()) {
                wire.results.insert(s.name.clone(), p);
            }
        }
    }
    let headers = Headers::from([
        (header::SAGA_ID.to_string(), state.saga_id.to_string()),
        (header::SAGA_STEP.to_string(), cmd.step.clone()),
        (header::SAGA_ATTEMPT.to_string(), cmd.attempt.to_string()),
        (
            header::IDEMPOTENCY_KEY.to_string(),
            cmd.idempotency_key.clone(),
        ),
        (header::REPLY_TO.to_string(), reply_to),
    ]);
    OutgoingMessage {
        subject: command_subject(service, &cmd.action),
        msg_id: format!("cmd:{}:{}", cmd.idempotency_key, cmd.attempt),
        headers,
        payload: wire.encode_to_vec(),
    }
}

/// The journal record of one transition, with the input's stable id and the snapshot
/// that restores the saga from this record alone. The message id names the writer and
/// the input, so two owners, or one owner applying two inputs at one version, can never
/// pass for each other's retries.
pub fn journal_append(
    state: &SagaState,
    input: &Input,
    events: &[SagaEvent],
    snapshot: &Snapshot,
    worker_id: &str,
    now: Timestamp,
) -> JournalAppend {
    journal_append_traced(
        state,
        input,
        events,
        snapshot,
        worker_id,
        now,
        &RecordTrace::default(),
    )
}

/// The trace a journal record names: the transition's span (W3C ids, lowercase hex)
/// and the saga's own trace context, carried forward from record to record. Empty
/// strings when the writer exported no traces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordTrace {
    /// Trace id of the transition that wrote the record.
    pub trace_id: String,
    /// Span id of that transition.
    pub span_id: String,
    /// The `traceparent` of the span that started the saga.
    pub saga_traceparent: String,
}

/// [`journal_append`], naming the trace of the transition that writes the record.
pub fn journal_append_traced(
    state: &SagaState,
    input: &Input,
    events: &[SagaEvent],
    snapshot: &Snapshot,
    worker_id: &str,
    now: Timestamp,
    trace: &RecordTrace,
) -> JournalAppend {
    let record = pb::JournalEvent {
        saga_id: state.saga_id.to_string(),
        saga_type: state.saga_type.clone(),
        version: state.version,
        recorded_at: Some(pb::timestamp(now)),
        input: Some(pb::journal_input(input, state.saga_id.as_str())),
        events: events.iter().map(pb::TransitionEvent::from).collect(),
        state: pb::SagaState::from(state.status) as i32,
        current_step: state.current_step_name().unwrap_or_default().to_string(),
        compensation_reason: state.compensation_reason.clone().unwrap_or_default(),
        input_id: input.id(),
        snapshot: encode_snapshot(snapshot),
        trace_id: trace.trace_id.clone(),
        span_id: trace.span_id.clone(),
        saga_traceparent: trace.saga_traceparent.clone(),
        definition_version: state.definition_version.clone(),
    };
    JournalAppend {
        saga_type: state.saga_type.clone(),
        saga_id: state.saga_id.to_string(),
        // The input's hash too: the same writer applying another input at the same
        // version (its copy was lost and rebuilt from an older point) must be fenced by
        // the expected sequence, not taken for a retry by the duplicate window.
        msg_id: format!(
            "journal:{}:{}:{worker_id}:{:016x}",
            state.saga_id,
            state.version,
            saga_core::ids::stable_hash(input.id().as_bytes())
        ),
        payload: record.encode_to_vec(),
    }
}

/// A domain event announced as the saga ends: `events.<domain>.<Name>.<saga_id>`, one
/// subject per saga so that it is published create-only (exactly once for the life of
/// the stream), message id `event:<saga_id>:<Name>`, the saga id as correlation id.
pub fn domain_event_message(
    state: &SagaState,
    ev: &DomainEvent,
    now: Timestamp,
) -> OutgoingMessage {
    let order_id = (!state.payload.is_empty())
        .then(|| pb::Payload::decode(state.payload.as_slice()).ok())
        .flatten()
        .and_then(|p| match p.kind {
            Some(pb::payload::Kind::Order(o)) if !o.order_id.is_empty() => Some(o.order_id),
            _ => None,
        })
        .unwrap_or_else(|| state.saga_id.to_string());
    let correlation_id = state.saga_id.to_string();
    let at = Some(pb::timestamp(now));
    let reason = ev.reason.clone().unwrap_or_default();
    let payload = match ev.name.as_str() {
        "OrderConfirmed" => pb::OrderConfirmed {
            order_id,
            confirmed_at: at,
            correlation_id: correlation_id.clone(),
        }
        .encode_to_vec(),
        "OrderCancelled" => pb::OrderCancelled {
            order_id,
            reason,
            cancelled_at: at,
            correlation_id: correlation_id.clone(),
        }
        .encode_to_vec(),
        _ => pb::SagaDomainEvent {
            name: ev.name.clone(),
            correlation_id: correlation_id.clone(),
            saga_type: state.saga_type.clone(),
            reason,
            at,
        }
        .encode_to_vec(),
    };
    OutgoingMessage {
        subject: format!("events.{}.{}.{}", ev.domain, ev.name, state.saga_id),
        msg_id: format!("event:{}:{}", state.saga_id, ev.name),
        headers: Headers::from([(header::SAGA_ID.to_string(), correlation_id)]),
        payload,
    }
}

/// `OrderPlaced`, announced by the gateway before it starts an order's saga (so that it
/// precedes the saga's own events on `SAGA_EVENTS`): create-only on
/// `events.orders.OrderPlaced.<saga_id>`, message id `event:<saga_id>:OrderPlaced`, the
/// saga id as correlation id.
pub fn order_placed_message(
    saga_id: &SagaId,
    order: &pb::Order,
    now: Timestamp,
) -> OutgoingMessage {
    let correlation_id = saga_id.to_string();
    OutgoingMessage {
        subject: format!("events.orders.OrderPlaced.{saga_id}"),
        msg_id: format!("event:{saga_id}:OrderPlaced"),
        headers: Headers::from([(header::SAGA_ID.to_string(), correlation_id.clone())]),
        payload: pb::OrderPlaced {
            order_id: order.order_id.clone(),
            customer_id: order.customer_id.clone(),
            items: order.items.clone(),
            total_cents: order.total_cents,
            placed_at: Some(pb::timestamp(now)),
            correlation_id,
        }
        .encode_to_vec(),
    }
}

/// The snapshot's bytes in a journal record (JSON; byte fields as base64).
pub fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    // Serialising plain data to a Vec cannot fail.
    serde_json::to_vec(snapshot).unwrap_or_default()
}

/// One decoded journal record: the only decoder of `saga.v1.JournalEvent` on the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRecord {
    /// Its stream sequence.
    pub sequence: u64,
    /// The saga's version after it.
    pub version: u64,
    /// The input it applied.
    pub input: Input,
    /// When it was written (the writer's clock).
    pub recorded_at: Timestamp,
    /// The saga after it, when the record carries a snapshot (records of earlier
    /// releases do not: the saga is then rebuilt by replay).
    pub snapshot: Option<Snapshot>,
    /// The trace it names (empty in records of untraced writers and earlier releases).
    pub trace: RecordTrace,
    /// What happened in it, as journalled (compared with a replay).
    pub events: Vec<pb::TransitionEvent>,
    /// The definition version the saga runs on (empty before versions existed).
    pub definition_version: String,
}

/// The trace a journal record names, without decoding the rest of it.
pub fn record_trace(payload: &[u8]) -> RecordTrace {
    pb::JournalEvent::decode(payload)
        .map(|ev| RecordTrace {
            trace_id: ev.trace_id,
            span_id: ev.span_id,
            saga_traceparent: ev.saga_traceparent,
        })
        .unwrap_or_default()
}

/// Decodes a journal record; the error says what is wrong.
pub fn decode_record(sequence: u64, payload: &[u8]) -> Result<DecodedRecord, String> {
    let ev = pb::JournalEvent::decode(payload).map_err(|e| format!("undecodable: {e}"))?;
    let input = ev
        .input
        .as_ref()
        .ok_or_else(|| "record without input".to_string())
        .and_then(|i| pb::input_from_journal(i).map_err(|e| e.to_string()))?;
    let snapshot = if ev.snapshot.is_empty() {
        None
    } else {
        let s: Snapshot =
            serde_json::from_slice(&ev.snapshot).map_err(|e| format!("snapshot: {e}"))?;
        if s.state.saga_id.as_str() != ev.saga_id || s.state.version != ev.version {
            return Err(format!(
                "snapshot of saga {} version {} in the record of saga {} version {}",
                s.state.saga_id, s.state.version, ev.saga_id, ev.version
            ));
        }
        Some(s)
    };
    Ok(DecodedRecord {
        sequence,
        version: ev.version,
        input,
        recorded_at: ev.recorded_at.as_ref().map(pb::millis).unwrap_or_default(),
        snapshot,
        trace: RecordTrace {
            trace_id: ev.trace_id,
            span_id: ev.span_id,
            saga_traceparent: ev.saga_traceparent,
        },
        events: ev.events,
        definition_version: ev.definition_version,
    })
}

/// The input that answers a command the broker refused for good (over its
/// `max_payload`, say): a definite failure of that attempt, since the command never
/// reached the service and sending it again would be refused the same way. The steps
/// before it are undone (a refused compensation ends the saga FAILED, for an operator)
/// instead of the command being tried forever. `None` when `msg` is not a command.
pub fn refused_command(msg: &OutgoingMessage, why: &str) -> Option<Input> {
    let cmd = pb::StepCommand::decode(msg.payload.as_slice()).ok()?;
    if !msg.subject.starts_with("saga.cmd.") || cmd.step.is_empty() {
        return None;
    }
    let outcome = saga_core::Outcome::BusinessFailure {
        reason: format!(
            "the command {} ({} bytes) was refused by the broker: {why}",
            cmd.action,
            msg.payload.len()
        ),
    };
    Some(if cmd.compensation {
        Input::CompensationReply {
            step: cmd.step,
            attempt: cmd.attempt,
            outcome,
        }
    } else {
        Input::StepReply {
            step: cmd.step,
            attempt: cmd.attempt,
            outcome,
        }
    })
}
