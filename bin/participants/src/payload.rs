//! Reading command payloads and building results.

use prost_types::value::Kind;
use prost_types::{Struct, Value};
use saga_participant::saga_proto::{payload, Order, Payload, StepCommand};

/// The order of an `OrderCheckout` command (`Payload.order`).
pub fn order(cmd: &StepCommand) -> Result<&Order, String> {
    match cmd.payload.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(payload::Kind::Order(o)) => Ok(o),
        _ => Err(format!(
            "invalid payload: {} needs Payload.order",
            cmd.action
        )),
    }
}

/// The free-form fields of a command (`Payload.fields`).
pub fn fields(cmd: &StepCommand) -> Result<&Struct, String> {
    match cmd.payload.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(payload::Kind::Fields(f)) => Ok(f),
        _ => Err(format!(
            "invalid payload: {} needs Payload.fields",
            cmd.action
        )),
    }
}

/// A string field (numbers are formatted).
pub fn string_field(s: &Struct, name: &str) -> Option<String> {
    match s.fields.get(name)?.kind.as_ref()? {
        Kind::StringValue(v) => Some(v.clone()),
        Kind::NumberValue(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An integer field, given as a whole number or a numeric string.
pub fn int_field(s: &Struct, name: &str) -> Result<Option<i64>, String> {
    let Some(kind) = s.fields.get(name).and_then(|v| v.kind.as_ref()) else {
        return Ok(None);
    };
    let bad = || format!("invalid payload: field `{name}` is not a whole number");
    match kind {
        Kind::NumberValue(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => Ok(Some(*n as i64)),
        Kind::StringValue(v) => v.trim().parse().map(Some).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// A result payload of string and number fields.
pub fn result<'a>(fields: impl IntoIterator<Item = (&'a str, ResultValue)>) -> Payload {
    Payload {
        kind: Some(payload::Kind::Fields(Struct {
            fields: fields
                .into_iter()
                .map(|(k, v)| {
                    let kind = match v {
                        ResultValue::Str(s) => Kind::StringValue(s),
                        ResultValue::Int(n) => Kind::NumberValue(n as f64),
                        ResultValue::Bool(b) => Kind::BoolValue(b),
                    };
                    (k.to_string(), Value { kind: Some(kind) })
                })
                .collect(),
        })),
    }
}

/// A value in a result payload.
#[derive(Debug, Clone, PartialEq)]
pub enum ResultValue {
    /// Text.
    Str(String),
    /// A whole number.
    Int(i64),
    /// A flag.
    Bool(bool),
}

impl From<&str> for ResultValue {
    fn from(s: &str) -> Self {
        Self::Str(s.to_string())
    }
}

impl From<String> for ResultValue {
    fn from(s: String) -> Self {
        Self::Str(s)
    }
}

impl From<i64> for ResultValue {
    fn from(n: i64) -> Self {
        Self::Int(n)
    }
}

impl From<bool> for ResultValue {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}

/// The key of the business record a step and its compensation share: the compensation
/// has its own idempotency key (it names the undo action), but the same saga and step.
pub fn record_key(cmd: &StepCommand) -> String {
    format!("{}/{}", cmd.saga_id, cmd.step)
}
