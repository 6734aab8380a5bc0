//! saga.v1 messages as JSON, following the proto3 JSON mapping (what grpcurl prints):
//! lowerCamelCase field names, enums by name, 64-bit integers as strings, timestamps
//! as RFC 3339, durations as `1.5s`, `Struct` as a JSON object, bytes as base64.
//! Scalars are always present (defaults included) so scripts can rely on the keys;
//! unset messages and oneofs are left out.

use prost_types::{Duration, Timestamp};
use saga_proto::{
    journal_input, payload, step_reply, CancelSagaResponse, JournalEvent, JournalInput, Order,
    OrderItem, Payload, PlaceOrderResponse, Saga, SagaState, SagaStep, StartSaga,
    StartSagaResponse, StepReply, TimerFired, TimerKind, TransitionEvent, TransitionEventKind,
};
use serde_json::{json, Map, Value};

fn obj(pairs: Vec<(&str, Value)>) -> Value {
    Value::Object(
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<Map<_, _>>(),
    )
}

fn insert_opt(v: &mut Value, key: &str, value: Option<Value>) {
    if let (Value::Object(m), Some(value)) = (v, value) {
        m.insert(key.to_string(), value);
    }
}

/// int64/uint64 are strings in proto3 JSON (they do not fit a double).
fn int64(n: impl ToString) -> Value {
    Value::String(n.to_string())
}

pub fn timestamp(t: Option<&Timestamp>) -> Option<Value> {
    t.map(|t| Value::String(t.to_string()))
}

pub fn duration(d: Option<&Duration>) -> Option<Value> {
    d.map(|d| Value::String(d.to_string()))
}

pub fn saga_state(n: i32) -> Value {
    SagaState::try_from(n)
        .map(|s| Value::String(s.as_str_name().into()))
        .unwrap_or_else(|_| json!(n))
}

fn timer_kind(n: i32) -> Value {
    TimerKind::try_from(n)
        .map(|s| Value::String(s.as_str_name().into()))
        .unwrap_or_else(|_| json!(n))
}

fn event_kind(n: i32) -> Value {
    TransitionEventKind::try_from(n)
        .map(|s| Value::String(s.as_str_name().into()))
        .unwrap_or_else(|_| json!(n))
}

pub fn saga(s: &Saga) -> Value {
    let mut v = obj(vec![
        ("sagaId", json!(s.saga_id)),
        ("sagaType", json!(s.saga_type)),
        ("state", saga_state(s.state)),
        ("currentStep", json!(s.current_step)),
        ("steps", Value::Array(s.steps.iter().map(step).collect())),
        ("compensationReason", json!(s.compensation_reason)),
        ("version", int64(s.version)),
        ("failureReason", json!(s.failure_reason)),
        ("definitionVersion", json!(s.definition_version)),
    ]);
    insert_opt(&mut v, "createdAt", timestamp(s.created_at.as_ref()));
    insert_opt(&mut v, "updatedAt", timestamp(s.updated_at.as_ref()));
    v
}

pub fn step(s: &SagaStep) -> Value {
    let mut v = obj(vec![
        ("name", json!(s.name)),
        ("status", json!(s.status)),
        ("attempts", json!(s.attempts)),
        ("error", json!(s.error)),
        ("compensationAttempts", json!(s.compensation_attempts)),
    ]);
    insert_opt(&mut v, "startedAt", timestamp(s.started_at.as_ref()));
    insert_opt(&mut v, "finishedAt", timestamp(s.finished_at.as_ref()));
    v
}

pub fn place_order_response(r: &PlaceOrderResponse) -> Value {
    obj(vec![
        ("sagaId", json!(r.saga_id)),
        ("orderId", json!(r.order_id)),
        ("state", saga_state(r.state)),
    ])
}

pub fn start_saga_response(r: &StartSagaResponse) -> Value {
    obj(vec![
        ("sagaId", json!(r.saga_id)),
        ("state", saga_state(r.state)),
    ])
}

pub fn cancel_response(r: &CancelSagaResponse) -> Value {
    obj(vec![
        ("sagaId", json!(r.saga_id)),
        ("state", saga_state(r.state)),
    ])
}

pub fn sagas_page(sagas: &[Saga], next_page_token: &str) -> Value {
    obj(vec![
        ("sagas", Value::Array(sagas.iter().map(saga).collect())),
        ("nextPageToken", json!(next_page_token)),
    ])
}

pub fn history(events: &[JournalEvent]) -> Value {
    obj(vec![(
        "events",
        Value::Array(events.iter().map(journal_event).collect()),
    )])
}

pub fn journal_event(e: &JournalEvent) -> Value {
    let mut v = obj(vec![
        ("sagaId", json!(e.saga_id)),
        ("sagaType", json!(e.saga_type)),
        ("version", int64(e.version)),
    ]);
    insert_opt(&mut v, "recordedAt", timestamp(e.recorded_at.as_ref()));
    insert_opt(&mut v, "input", e.input.as_ref().map(journal_input_json));
    if let Value::Object(m) = &mut v {
        m.insert(
            "events".into(),
            Value::Array(e.events.iter().map(transition_event).collect()),
        );
        m.insert("state".into(), saga_state(e.state));
        m.insert("currentStep".into(), json!(e.current_step));
        m.insert("compensationReason".into(), json!(e.compensation_reason));
    }
    v
}

pub fn journal_input_json(i: &JournalInput) -> Value {
    match &i.kind {
        None => json!({}),
        Some(journal_input::Kind::Start(s)) => obj(vec![("start", start_saga(s))]),
        Some(journal_input::Kind::Reply(r)) => obj(vec![("reply", step_reply_json(r))]),
        Some(journal_input::Kind::Timer(t)) => obj(vec![("timer", timer_fired(t))]),
        Some(journal_input::Kind::Cancel(c)) => {
            obj(vec![("cancel", obj(vec![("reason", json!(c.reason))]))])
        }
        Some(journal_input::Kind::DeadlineExceeded(_)) => {
            obj(vec![("deadlineExceeded", json!({}))])
        }
        Some(journal_input::Kind::Migrate(m)) => {
            let map: std::collections::BTreeMap<_, _> = m.step_map.iter().collect();
            obj(vec![(
                "migrate",
                obj(vec![
                    ("toVersion", json!(m.to_version)),
                    ("stepMap", json!(map)),
                ]),
            )])
        }
    }
}

fn start_saga(s: &StartSaga) -> Value {
    let mut v = obj(vec![("idempotencyKey", json!(s.idempotency_key))]);
    insert_opt(&mut v, "payload", s.payload.as_ref().map(payload_json));
    insert_opt(&mut v, "requestedAt", timestamp(s.requested_at.as_ref()));
    v
}

fn step_reply_json(r: &StepReply) -> Value {
    let mut v = obj(vec![
        ("sagaId", json!(r.saga_id)),
        ("step", json!(r.step)),
        ("attempt", json!(r.attempt)),
        ("idempotencyKey", json!(r.idempotency_key)),
        ("compensation", json!(r.compensation)),
        ("service", json!(r.service)),
    ]);
    let outcome = r.outcome.as_ref().map(|o| match o {
        step_reply::Outcome::Ok(ok) => {
            let mut v = json!({});
            insert_opt(&mut v, "result", ok.result.as_ref().map(payload_json));
            ("ok", v)
        }
        step_reply::Outcome::BusinessFailure(f) => {
            ("businessFailure", obj(vec![("reason", json!(f.reason))]))
        }
        step_reply::Outcome::TechnicalFailure(f) => {
            ("technicalFailure", obj(vec![("reason", json!(f.reason))]))
        }
    });
    if let (Value::Object(m), Some((k, o))) = (&mut v, outcome) {
        m.insert(k.to_string(), o);
    }
    insert_opt(&mut v, "repliedAt", timestamp(r.replied_at.as_ref()));
    v
}

fn timer_fired(t: &TimerFired) -> Value {
    obj(vec![
        ("kind", timer_kind(t.kind)),
        ("step", json!(t.step)),
        ("attempt", json!(t.attempt)),
    ])
}

fn transition_event(e: &TransitionEvent) -> Value {
    let mut v = obj(vec![
        ("kind", event_kind(e.kind)),
        ("step", json!(e.step)),
        ("action", json!(e.action)),
        ("attempt", json!(e.attempt)),
        ("reason", json!(e.reason)),
    ]);
    insert_opt(&mut v, "delay", duration(e.delay.as_ref()));
    insert_opt(&mut v, "deadlineAt", timestamp(e.deadline_at.as_ref()));
    v
}

pub fn payload_json(p: &Payload) -> Value {
    match &p.kind {
        None => json!({}),
        Some(payload::Kind::Order(o)) => obj(vec![("order", order(o))]),
        Some(payload::Kind::Fields(s)) => obj(vec![("fields", proto_struct(s))]),
        Some(payload::Kind::Raw(b)) => obj(vec![("raw", Value::String(base64(b)))]),
    }
}

fn order(o: &Order) -> Value {
    obj(vec![
        ("orderId", json!(o.order_id)),
        ("customerId", json!(o.customer_id)),
        (
            "items",
            Value::Array(o.items.iter().map(order_item).collect()),
        ),
        ("totalCents", int64(o.total_cents)),
    ])
}

pub fn order_item(i: &OrderItem) -> Value {
    obj(vec![
        ("sku", json!(i.sku)),
        ("quantity", int64(i.quantity)),
        ("unitPriceCents", int64(i.unit_price_cents)),
    ])
}

/// `google.protobuf.Struct` is its JSON object.
pub fn proto_struct(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), proto_value(v)))
            .collect(),
    )
}

fn proto_value(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(Value::Number)
            // NaN and infinities have no JSON number; proto3 JSON spells them as strings.
            .unwrap_or_else(|| Value::String(n.to_string())),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => proto_struct(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(proto_value).collect()),
    }
}

/// A JSON object as a `google.protobuf.Struct` (the payload of StartSaga).
pub fn to_proto_struct(m: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: m
            .iter()
            .map(|(k, v)| (k.clone(), to_proto_value(v)))
            .collect(),
    }
}

fn to_proto_value(v: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(to_proto_value).collect(),
        }),
        Value::Object(m) => Kind::StructValue(to_proto_struct(m)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// Standard base64 with padding (proto3 JSON for `bytes`).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn saga_maps_to_proto3_json() {
        let s = Saga {
            saga_id: "s1".into(),
            saga_type: "OrderCheckout".into(),
            state: SagaState::Compensated as i32,
            current_step: "ChargePayment".into(),
            steps: vec![SagaStep {
                name: "ReserveStock".into(),
                status: "COMPENSATED".into(),
                attempts: 1,
                compensation_attempts: 1,
                ..Default::default()
            }],
            compensation_reason: "Payment declined".into(),
            created_at: Some(Timestamp {
                seconds: 0,
                nanos: 5_000_000,
            }),
            updated_at: None,
            version: 7,
            failure_reason: String::new(),
            definition_version: String::new(),
        };
        let v = saga(&s);
        assert_eq!(v["state"], "SAGA_STATE_COMPENSATED");
        assert_eq!(v["version"], "7");
        assert_eq!(v["createdAt"], "1970-01-01T00:00:00.005Z");
        assert!(v.get("updatedAt").is_none());
        assert_eq!(v["steps"][0]["compensationAttempts"], 1);
        assert_eq!(v["compensationReason"], "Payment declined");
    }

    #[test]
    fn struct_round_trips() {
        let m: Map<String, Value> =
            serde_json::from_str(r#"{"a":1.5,"b":[true,null,"x"],"c":{"d":"e"}}"#).unwrap();
        assert_eq!(proto_struct(&to_proto_struct(&m)), Value::Object(m));
    }
}
