//! The event catalog (choreography): which domain events exist, their schema, who
//! produces and who consumes each, the idempotency key, the ordering, and the ordering
//! invariants a consumer enforces per key.
//!
//! The YAML format is the seed's `order-events.yaml`; the loader reports every problem
//! of a file at once, with the file and the place, as the saga definitions' loader does
//! (and with the same error types). Whether each schema matches its Protobuf message is
//! checked where the Protobuf descriptors live (`saga-proto`), not here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use serde_norway::{Mapping, Value};

use crate::definition::load::{kind, suggest, Cx};
use crate::definition::{DefinitionError, DefinitionErrors, Note};

/// A validated event catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventCatalog {
    /// Subject domain: events live on `events.<domain>.<EventName>.<key>`.
    pub domain: String,
    /// The services that produce or consume events, with what each does.
    pub services: BTreeMap<String, String>,
    /// The events, in file order.
    pub events: Vec<EventDefinition>,
    /// Ordering invariants as written, with what the checker made of each.
    pub invariants: Vec<EventInvariant>,
}

/// One event of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDefinition {
    /// Event name, e.g. `OrderConfirmed` (a subject token).
    pub name: String,
    /// Schema version (default 1).
    pub version: u32,
    /// Protobuf message of the payload, e.g. `saga.v1.OrderConfirmed` (default
    /// `saga.v1.<name>`).
    pub message: String,
    /// Fields as written (camelCase, the Protobuf JSON names), in file order.
    pub schema: Vec<SchemaField>,
    /// Who publishes it.
    pub producers: Vec<Party>,
    /// Who reacts to it.
    pub consumers: Vec<Party>,
    /// The schema field consumers deduplicate on (and, with strict ordering, order by).
    pub idempotency_key: String,
    /// How consumers must order it.
    pub ordering: Ordering,
}

/// A field of an event's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaField {
    /// Name as written (`orderId`).
    pub name: String,
    /// Its type.
    pub ty: FieldType,
}

/// The field types a schema may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    /// `string`.
    String,
    /// `int32`.
    Int32,
    /// `int64` (also written `int`).
    Int64,
    /// `bool`.
    Bool,
    /// `bytes`.
    Bytes,
    /// `timestamp`: `google.protobuf.Timestamp`.
    Timestamp,
    /// Another message, by name (e.g. `OrderItem`).
    Message(String),
    /// `list<T>`.
    List(Box<FieldType>),
}

impl std::fmt::Display for FieldType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::String => f.write_str("string"),
            Self::Int32 => f.write_str("int32"),
            Self::Int64 => f.write_str("int64"),
            Self::Bool => f.write_str("bool"),
            Self::Bytes => f.write_str("bytes"),
            Self::Timestamp => f.write_str("timestamp"),
            Self::Message(m) => f.write_str(m),
            Self::List(t) => write!(f, "list<{t}>"),
        }
    }
}

/// A producer or consumer entry: `shipping (create shipment)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party {
    /// Service name (declared under `services`).
    pub service: String,
    /// What it does with the event (the text in parentheses), if written.
    pub purpose: Option<String>,
}

/// How consumers order an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ordering {
    /// `strict (by orderId)`: the events of one key are handled one at a time, in
    /// stream order; different keys in parallel.
    Strict {
        /// The schema field that groups them.
        by: String,
    },
    /// `none`: no order is promised (still one key at a time).
    Unordered,
}

/// An invariant line and what the checker made of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventInvariant {
    /// The text as written.
    pub text: String,
    /// The rule, when the checker understands it.
    pub rule: Option<OrderingRule>,
}

/// Ordering rules the consumers enforce per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderingRule {
    /// "`first` must precede `then`": `then` for a key that has not seen `first` is a
    /// violation.
    Precedes {
        /// The event that must come first.
        first: String,
        /// The event that needs it.
        then: String,
    },
    /// "`event` cannot follow `after`": `event` for a key that has seen `after` is a
    /// violation.
    CannotFollow {
        /// The event refused.
        event: String,
        /// The event that closes the door.
        after: String,
    },
}

/// An event that breaks an ordering rule for its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule as written in the catalog.
    pub invariant: String,
    /// What happened, e.g. "OrderConfirmed for orderId `o-1` with no OrderPlaced before it".
    pub reason: String,
    /// The missing event may still come (a "must precede" rule: after a consumer's
    /// crash its unacked events are redelivered later than newer ones); a consumer waits
    /// a grace period before parking. "Cannot follow" violations are definite.
    pub may_be_early: bool,
}

impl EventCatalog {
    /// An event by name.
    pub fn event(&self, name: &str) -> Option<&EventDefinition> {
        self.events.iter().find(|e| e.name == name)
    }

    /// The rules the checker understands.
    pub fn rules(&self) -> impl Iterator<Item = (&EventInvariant, &OrderingRule)> {
        self.invariants
            .iter()
            .filter_map(|i| i.rule.as_ref().map(|r| (i, r)))
    }

    /// The events `service` consumes, in catalog order.
    pub fn consumed_by(&self, service: &str) -> Vec<&EventDefinition> {
        self.events
            .iter()
            .filter(|e| e.consumers.iter().any(|c| c.service == service))
            .collect()
    }

    /// The events a consumer of `handled` must see to check the rules about them: the
    /// handled events plus every event a rule about one of them names.
    pub fn tracked_for(&self, handled: &[&str]) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = handled.iter().map(|s| (*s).to_string()).collect();
        for (_, rule) in self.rules() {
            match rule {
                OrderingRule::Precedes { first, then } if handled.contains(&then.as_str()) => {
                    out.insert(first.clone());
                }
                OrderingRule::CannotFollow { event, after }
                    if handled.contains(&event.as_str()) =>
                {
                    out.insert(after.clone());
                }
                _ => {}
            }
        }
        out
    }

    /// Checks `event` for a key that has already seen `seen` (its applied events). Pure:
    /// the consumer SDK calls it inside the transaction that records the event.
    pub fn check_order<'a>(
        &self,
        seen: impl IntoIterator<Item = &'a str> + Clone,
        event: &str,
        key_field: &str,
        key: &str,
    ) -> Result<(), Violation> {
        let has = |name: &str| seen.clone().into_iter().any(|s| s == name);
        for (inv, rule) in self.rules() {
            match rule {
                OrderingRule::Precedes { first, then } if then == event && !has(first) => {
                    return Err(Violation {
                        invariant: inv.text.clone(),
                        reason: format!(
                            "{event} for {key_field} `{key}` with no {first} before it"
                        ),
                        may_be_early: true,
                    });
                }
                OrderingRule::CannotFollow { event: e, after } if e == event && has(after) => {
                    return Err(Violation {
                        invariant: inv.text.clone(),
                        reason: format!("{event} for {key_field} `{key}` after {after}"),
                        may_be_early: false,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A catalog that passed validation, with the notes the validator has about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedCatalog {
    /// The catalog.
    pub catalog: EventCatalog,
    /// Things worth telling that are not errors (invariants kept as documentation).
    pub notes: Vec<Note>,
}

/// Reads and validates a catalog file.
pub fn load_catalog(path: &Path) -> Result<LoadedCatalog, DefinitionErrors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse_catalog(&file, &text),
        Err(e) => Err(DefinitionErrors {
            file,
            errors: vec![DefinitionError {
                location: "file".into(),
                message: format!("cannot read: {e}"),
            }],
        }),
    }
}

const ROOT_KEYS: &[&str] = &["domain", "services", "events", "invariants"];
const EVENT_KEYS: &[&str] = &[
    "version",
    "message",
    "schema",
    "producers",
    "consumers",
    "idempotencyKey",
    "ordering",
    "invariants",
    "description",
];

/// Parses and validates catalog text; `file` names it in messages.
pub fn parse_catalog(file: &str, text: &str) -> Result<LoadedCatalog, DefinitionErrors> {
    let mut cx = Cx::default();
    let parsed = match serde_norway::from_str::<Value>(text) {
        Ok(v) => catalog(&mut cx, &v),
        Err(e) => {
            cx.err("yaml", format!("not valid YAML: {e}"));
            None
        }
    };
    match parsed {
        Some(catalog) if cx.errors.is_empty() => Ok(LoadedCatalog {
            catalog,
            notes: cx.notes,
        }),
        _ => Err(DefinitionErrors {
            file: file.to_string(),
            errors: cx.errors,
        }),
    }
}

fn catalog(cx: &mut Cx, root: &Value) -> Option<EventCatalog> {
    let m = cx.map("catalog", root, "the catalog")?;
    cx.check_keys("catalog", m, ROOT_KEYS);
    let domain = cx.token("catalog", m, "domain", true);
    let services = services(cx, m.get("services"));
    let mut events = Vec::new();
    let mut invariant_texts = Vec::new();
    match m.get("events") {
        Some(Value::Mapping(em)) if !em.is_empty() => {
            for (k, v) in em {
                let Some(name) = k.as_str() else {
                    cx.err(
                        "events",
                        format!("event names must be text, found {}", kind(k)),
                    );
                    continue;
                };
                if let Some(ev) = event(cx, name, v, &services, &mut invariant_texts) {
                    events.push(ev);
                }
            }
        }
        Some(Value::Mapping(_)) | None | Some(Value::Null) => cx.err(
            "catalog",
            "missing `events` (a map of event name -> definition)",
        ),
        Some(other) => cx.err(
            "events",
            format!(
                "`events` must be a map of event name -> definition, found {}",
                kind(other)
            ),
        ),
    }
    if let Some(v) = m.get("invariants") {
        texts(cx, "invariants", v, &mut invariant_texts);
    }
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    let mut invariants = Vec::new();
    for (loc, text) in invariant_texts {
        let rule = classify(&text);
        if let Some(rule) = &rule {
            for name in rule_events(rule) {
                if !names.contains(&name) {
                    let hint = suggest(name, &names)
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default();
                    cx.err(
                        &loc,
                        format!("invariant names unknown event `{name}`{hint}"),
                    );
                }
            }
        } else {
            cx.note(
                &loc,
                format!(
                    "`{text}` is not a rule the checker understands (`A must precede B`, \
                     `A cannot follow B`): kept as documentation, not enforced"
                ),
            );
        }
        invariants.push(EventInvariant { text, rule });
    }
    Some(EventCatalog {
        domain: domain?,
        services,
        events,
        invariants,
    })
}

fn services(cx: &mut Cx, v: Option<&Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    match v {
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    (Some(name), Value::String(d)) => {
                        out.insert(name.to_string(), d.clone());
                    }
                    (Some(name), Value::Null) => {
                        out.insert(name.to_string(), String::new());
                    }
                    (Some(name), other) => cx.err(
                        &format!("services `{name}`"),
                        format!("the description must be text, found {}", kind(other)),
                    ),
                    (None, _) => cx.err("services", "service names must be text"),
                }
            }
        }
        None | Some(Value::Null) => cx.err(
            "catalog",
            "missing `services` (a map of service name -> what it does): producers and \
             consumers must name one",
        ),
        Some(other) => cx.err(
            "services",
            format!("`services` must be a map, found {}", kind(other)),
        ),
    }
    out
}

fn event(
    cx: &mut Cx,
    name: &str,
    v: &Value,
    services: &BTreeMap<String, String>,
    invariants: &mut Vec<(String, String)>,
) -> Option<EventDefinition> {
    let loc = format!("event `{name}`");
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        cx.err(
            &loc,
            format!("the name contains `{bad}`: use letters, digits, `_` and `-` (it is a subject token)"),
        );
    }
    let m = cx.map(&loc, v, "an event")?;
    cx.check_keys(&loc, m, EVENT_KEYS);
    let version = match m.get("version") {
        None => Some(1),
        Some(Value::Number(n)) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(v) if v >= 1 => Some(v),
            _ => {
                cx.err(
                    &loc,
                    format!("`version` must be a whole number from 1, found {n}"),
                );
                None
            }
        },
        Some(other) => {
            cx.err(
                &loc,
                format!("`version` must be a number, found {}", kind(other)),
            );
            None
        }
    };
    let message = cx
        .string(&loc, m, "message", false)
        .unwrap_or_else(|| format!("saga.v1.{name}"));
    let schema = schema(cx, &loc, m.get("schema"));
    let producers = parties(cx, &loc, m, "producers", services);
    let consumers = parties(cx, &loc, m, "consumers", services);
    let key = cx.string(&loc, m, "idempotencyKey", true);
    if let (Some(key), Some(schema)) = (&key, &schema) {
        field_in_schema(cx, &loc, "idempotencyKey", key, schema);
    }
    let ordering = match cx.string(&loc, m, "ordering", false) {
        None => Some(Ordering::Unordered),
        Some(text) => match parse_ordering(&text) {
            Some(Ordering::Strict { by }) => {
                if let Some(schema) = &schema {
                    field_in_schema(cx, &loc, "ordering", &by, schema);
                }
                Some(Ordering::Strict { by })
            }
            Some(o) => Some(o),
            None => {
                cx.err(
                    &loc,
                    format!("`ordering: {text}` is not understood: write `strict (by <field>)` or `none`"),
                );
                None
            }
        },
    };
    if let Some(v) = m.get("invariants") {
        texts(cx, &format!("{loc} invariants"), v, invariants);
    }
    Some(EventDefinition {
        name: name.to_string(),
        version: version?,
        message,
        schema: schema?,
        producers: producers?,
        consumers: consumers?,
        idempotency_key: key?,
        ordering: ordering?,
    })
}

fn field_in_schema(cx: &mut Cx, loc: &str, what: &str, field: &str, schema: &[SchemaField]) {
    if !schema.iter().any(|f| f.name == field) {
        let names: Vec<&str> = schema.iter().map(|f| f.name.as_str()).collect();
        let hint = suggest(field, &names)
            .map(|s| format!("did you mean `{s}`?"))
            .unwrap_or_else(|| format!("the schema has: {}", names.join(", ")));
        cx.err(
            loc,
            format!("`{what}` names `{field}`, which is not in the schema ({hint})"),
        );
    }
}

fn schema(cx: &mut Cx, loc: &str, v: Option<&Value>) -> Option<Vec<SchemaField>> {
    let Some(v) = v else {
        cx.err(loc, "missing `schema` (a map of field -> type)");
        return None;
    };
    let m: &Mapping = cx.map(&format!("{loc} schema"), v, "`schema`")?;
    let mut out = Vec::new();
    for (k, t) in m {
        let (Some(field), Some(text)) = (k.as_str(), t.as_str()) else {
            cx.err(
                &format!("{loc} schema"),
                "each entry must be `field: type` (text)",
            );
            continue;
        };
        match parse_type(text) {
            Some(ty) => out.push(SchemaField {
                name: field.to_string(),
                ty,
            }),
            None => {
                cx.err(
                    &format!("{loc} schema `{field}`"),
                    format!(
                        "type `{text}` is not understood: write string, int32, int64, bool, \
                         bytes, timestamp, list<T> or a message name"
                    ),
                );
            }
        }
    }
    if m.is_empty() {
        cx.err(&format!("{loc} schema"), "the schema has no field");
    }
    // The fields that parsed are still checked against (an error is already recorded).
    (!out.is_empty()).then_some(out)
}

fn parse_type(text: &str) -> Option<FieldType> {
    let t = text.trim();
    if let Some(inner) = t.strip_prefix("list<").and_then(|r| r.strip_suffix('>')) {
        return parse_type(inner).map(|i| FieldType::List(Box::new(i)));
    }
    Some(match t {
        "string" => FieldType::String,
        "int32" => FieldType::Int32,
        "int" | "int64" => FieldType::Int64,
        "bool" => FieldType::Bool,
        "bytes" => FieldType::Bytes,
        "timestamp" => FieldType::Timestamp,
        m if !m.is_empty()
            && m.starts_with(|c: char| c.is_ascii_uppercase())
            && m.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_') =>
        {
            FieldType::Message(m.to_string())
        }
        _ => return None,
    })
}

fn parties(
    cx: &mut Cx,
    loc: &str,
    m: &Mapping,
    key: &str,
    services: &BTreeMap<String, String>,
) -> Option<Vec<Party>> {
    let list = match m.get(key) {
        Some(Value::Sequence(s)) if !s.is_empty() => s,
        None | Some(Value::Null) | Some(Value::Sequence(_)) => {
            cx.err(loc, format!("missing `{key}` (a list of services)"));
            return None;
        }
        Some(other) => {
            cx.err(
                loc,
                format!("`{key}` must be a list, found {}", kind(other)),
            );
            return None;
        }
    };
    let known: Vec<&str> = services.keys().map(String::as_str).collect();
    let mut out = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let here = format!("{loc} {key}[{i}]");
        let Some(text) = item.as_str() else {
            cx.err(&here, format!("must be text, found {}", kind(item)));
            continue;
        };
        let party = parse_party(text);
        if !services.contains_key(&party.service) {
            let hint = suggest(&party.service, &known)
                .map(|s| format!("did you mean `{s}`?"))
                .unwrap_or_else(|| format!("declared: {}", known.join(", ")));
            cx.err(
                &here,
                format!(
                    "service `{}` is not declared under `services` ({hint})",
                    party.service
                ),
            );
            continue;
        }
        out.push(party);
    }
    Some(out)
}

fn parse_party(text: &str) -> Party {
    let text = text.trim();
    match text.split_once('(') {
        Some((name, rest)) => Party {
            service: name.trim().to_string(),
            purpose: Some(rest.trim_end_matches(')').trim().to_string()).filter(|p| !p.is_empty()),
        },
        None => Party {
            service: text.to_string(),
            purpose: None,
        },
    }
}

fn parse_ordering(text: &str) -> Option<Ordering> {
    let t = text.trim();
    if matches!(t, "none" | "unordered") {
        return Some(Ordering::Unordered);
    }
    let rest = t.strip_prefix("strict")?.trim();
    let by = rest
        .strip_prefix('(')?
        .strip_suffix(')')?
        .trim()
        .strip_prefix("by")?
        .trim();
    (!by.is_empty()).then(|| Ordering::Strict { by: by.to_string() })
}

fn texts(cx: &mut Cx, loc: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Sequence(s) => {
            for (i, item) in s.iter().enumerate() {
                match item.as_str() {
                    Some(t) => out.push((format!("{loc}[{i}]"), t.trim().to_string())),
                    None => cx.err(
                        &format!("{loc}[{i}]"),
                        format!("must be text, found {}", kind(item)),
                    ),
                }
            }
        }
        other => cx.err(
            loc,
            format!("must be a list of text, found {}", kind(other)),
        ),
    }
}

/// "A must precede B", "A cannot follow B" (case-insensitive on the verbs).
fn classify(text: &str) -> Option<OrderingRule> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
    match lower
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [_, "must", "precede", _] => Some(OrderingRule::Precedes {
            first: words[0].to_string(),
            then: words[3].to_string(),
        }),
        [_, "cannot" | "must-not" | "mustn't", "follow", _] => Some(OrderingRule::CannotFollow {
            event: words[0].to_string(),
            after: words[3].to_string(),
        }),
        [_, "must", "not", "follow", _] => Some(OrderingRule::CannotFollow {
            event: words[0].to_string(),
            after: words[4].to_string(),
        }),
        _ => None,
    }
}

fn rule_events(rule: &OrderingRule) -> [&str; 2] {
    match rule {
        OrderingRule::Precedes { first, then } => [first, then],
        OrderingRule::CannotFollow { event, after } => [event, after],
    }
}

/// Checks the catalog against the saga definitions that publish into its domain: each
/// event a saga announces (`events.completed` / `compensated`) must be catalogued with
/// the saga among its producers, and a producer named like a saga must be one that
/// announces the event. Problems are placed on the catalog's events.
pub fn check_against_sagas<'a>(
    catalog: &EventCatalog,
    sagas: impl IntoIterator<Item = &'a crate::SagaDefinition>,
) -> Vec<DefinitionError> {
    let mut errors = Vec::new();
    let sagas: Vec<&crate::SagaDefinition> = sagas
        .into_iter()
        .filter(|s| s.events.domain == catalog.domain)
        .collect();
    for saga in &sagas {
        for name in [&saga.events.on_completed, &saga.events.on_compensated]
            .into_iter()
            .flatten()
        {
            match catalog.event(name) {
                None => errors.push(DefinitionError {
                    location: "events".into(),
                    message: format!(
                        "saga `{}` publishes `{name}` on events.{}, which the catalog does not describe",
                        saga.name, catalog.domain
                    ),
                }),
                Some(ev) if !ev.producers.iter().any(|p| p.service == saga.name) => {
                    errors.push(DefinitionError {
                        location: format!("event `{name}` producers"),
                        message: format!("saga `{}` publishes it but is not listed", saga.name),
                    })
                }
                Some(_) => {}
            }
        }
    }
    for ev in &catalog.events {
        for p in &ev.producers {
            if let Some(saga) = sagas.iter().find(|s| s.name == p.service) {
                let announces = [&saga.events.on_completed, &saga.events.on_compensated]
                    .into_iter()
                    .flatten()
                    .any(|n| *n == ev.name);
                if !announces {
                    errors.push(DefinitionError {
                        location: format!("event `{}` producers", ev.name),
                        message: format!(
                            "saga `{}` is listed but announces no `{}` (its events: completed {:?}, compensated {:?})",
                            saga.name, ev.name, saga.events.on_completed, saga.events.on_compensated
                        ),
                    });
                }
            }
        }
    }
    errors
}

/// Mermaid flowchart: producers -> event -> consumers (labels: what each does).
pub fn mermaid(catalog: &EventCatalog) -> String {
    let mut out = String::from("flowchart LR\n");
    for s in catalog.services.keys() {
        let _ = writeln!(out, "  svc_{s}([{s}])");
    }
    for e in &catalog.events {
        let _ = writeln!(out, "  ev_{0}{{{{\"{0} v{1}\"}}}}", e.name, e.version);
        for p in &e.producers {
            let _ = writeln!(out, "  svc_{} -->{} ev_{}", p.service, label(p), e.name);
        }
        for c in &e.consumers {
            let _ = writeln!(out, "  ev_{} -->{} svc_{}", e.name, label(c), c.service);
        }
    }
    out
}

fn label(p: &Party) -> String {
    match &p.purpose {
        Some(t) => format!("|\"{}\"|", t.replace('"', "'")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOG: &str = include_str!("../../../events/order-events.yaml");

    #[test]
    fn the_order_catalog_loads_with_its_rules_and_one_documentation_note() {
        let loaded = parse_catalog("order-events.yaml", CATALOG).unwrap();
        let c = &loaded.catalog;
        assert_eq!(c.domain, "orders");
        let names: Vec<_> = c.events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "OrderPlaced",
                "OrderConfirmed",
                "OrderCancelled",
                "OrderShipped"
            ]
        );
        let confirmed = c.event("OrderConfirmed").unwrap();
        assert_eq!(confirmed.message, "saga.v1.OrderConfirmed");
        assert_eq!(confirmed.idempotency_key, "orderId");
        assert_eq!(
            confirmed.ordering,
            Ordering::Strict {
                by: "orderId".into()
            }
        );
        assert_eq!(c.rules().count(), 3);
        assert_eq!(loaded.notes.len(), 1, "{:?}", loaded.notes);
        assert!(loaded.notes[0].message.contains("documentation"));
        let rewards: Vec<_> = c
            .consumed_by("rewards")
            .iter()
            .map(|e| e.name.clone())
            .collect();
        assert_eq!(rewards, ["OrderConfirmed", "OrderCancelled"]);
        let tracked = c.tracked_for(&["OrderConfirmed", "OrderCancelled"]);
        assert_eq!(
            tracked.into_iter().collect::<Vec<_>>(),
            [
                "OrderCancelled",
                "OrderConfirmed",
                "OrderPlaced",
                "OrderShipped"
            ]
        );
    }

    #[test]
    fn ordering_rules_refuse_what_the_catalog_forbids() {
        let c = parse_catalog("c.yaml", CATALOG).unwrap().catalog;
        let v = c
            .check_order([], "OrderConfirmed", "orderId", "o-1")
            .unwrap_err();
        assert_eq!(
            v.reason,
            "OrderConfirmed for orderId `o-1` with no OrderPlaced before it"
        );
        assert_eq!(v.invariant, "OrderPlaced must precede OrderConfirmed");
        c.check_order(["OrderPlaced"], "OrderConfirmed", "orderId", "o-1")
            .unwrap();
        let v = c
            .check_order(
                ["OrderPlaced", "OrderConfirmed", "OrderShipped"],
                "OrderCancelled",
                "orderId",
                "o-1",
            )
            .unwrap_err();
        assert_eq!(
            v.reason,
            "OrderCancelled for orderId `o-1` after OrderShipped"
        );
        c.check_order(["OrderPlaced"], "OrderCancelled", "orderId", "o-1")
            .unwrap();
        c.check_order([], "OrderPlaced", "orderId", "o-1").unwrap();
    }

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let text = r#"
domain: orders
services:
  shipping: ships
events:
  OrderShipped:
    schema:
      orderId: string
      when: timestampz
    producers: [shiping]
    consumers: [shipping]
    idempotencyKey: orderID
    ordering: by the way
    colour: blue
invariants:
  - OrderPlaced must precede OrderShipped
"#;
        let err = parse_catalog("bad.yaml", text).unwrap_err();
        let shown = err.to_string();
        for needle in [
            "bad.yaml: event `OrderShipped` schema `when`: type `timestampz` is not understood",
            "bad.yaml: event `OrderShipped` producers[0]: service `shiping` is not declared under `services` (did you mean `shipping`?)",
            "bad.yaml: event `OrderShipped`: `idempotencyKey` names `orderID`, which is not in the schema (did you mean `orderId`?)",
            "bad.yaml: event `OrderShipped`: `ordering: by the way` is not understood",
            "bad.yaml: event `OrderShipped`: unknown key `colour`",
            "bad.yaml: invariants[0]: invariant names unknown event `OrderPlaced`",
        ] {
            assert!(shown.contains(needle), "missing {needle:?} in:\n{shown}");
        }
    }

    #[test]
    fn the_catalog_agrees_with_the_sagas_that_publish_into_it() {
        let c = parse_catalog("c.yaml", CATALOG).unwrap().catalog;
        let checkout = crate::definition::parse_definition(
            "order-checkout.yaml",
            include_str!("../../../sagas/order-checkout.yaml"),
        )
        .unwrap()
        .definition;
        assert_eq!(check_against_sagas(&c, [&checkout]), []);
        let mut renamed = checkout.clone();
        renamed.events.on_compensated = Some("OrderAborted".into());
        let errors: Vec<String> = check_against_sagas(&c, [&renamed])
            .into_iter()
            .map(|e| format!("{}: {}", e.location, e.message))
            .collect();
        assert_eq!(
            errors,
            [
                "events: saga `OrderCheckout` publishes `OrderAborted` on events.orders, which the catalog does not describe",
                "event `OrderCancelled` producers: saga `OrderCheckout` is listed but announces no `OrderCancelled` (its events: completed Some(\"OrderConfirmed\"), compensated Some(\"OrderAborted\"))",
            ]
        );
    }

    #[test]
    fn the_drawing_links_producers_events_and_consumers() {
        let c = parse_catalog("c.yaml", CATALOG).unwrap().catalog;
        let m = mermaid(&c);
        assert!(m.starts_with("flowchart LR\n"));
        assert!(m.contains("svc_shipping -->|\"shipment created\"| ev_OrderShipped"));
        assert!(m.contains("ev_OrderConfirmed -->|\"award points\"| svc_rewards"));
    }
}
