//! Aggregate definitions in YAML: `aggregateRoot`, `events` (each with `version` and
//! `schema`), `eventStore`, `projections`, `invariants`.
//!
//! Every problem is reported with the file, the place (``event `MoneyDeposited` ``,
//! ``projection `AccountBalanceView` ``, `eventStore`) and what is wrong; all problems
//! of a file are reported at once, with a did-you-mean for misspelt keys and names.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::FileDescriptorSet;
pub use saga_core::definition::{DefinitionError, DefinitionErrors, Note};
use serde_norway::{Mapping, Value};

/// Snapshot interval when a definition names none.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 100;

/// A validated aggregate definition.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateDefinition {
    /// `aggregateRoot`, e.g. `BankAccount`: the aggregate type in subjects.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Events in file order.
    pub events: Vec<EventDefinition>,
    /// How the events are stored.
    pub event_store: EventStoreConfig,
    /// Read models fed by the events.
    pub projections: Vec<ProjectionDefinition>,
    /// Invariants as written (enforced by the aggregate's code, named in its errors).
    pub invariants: Vec<String>,
}

impl AggregateDefinition {
    /// An event by name.
    pub fn event(&self, name: &str) -> Option<&EventDefinition> {
        self.events.iter().find(|e| e.name == name)
    }

    /// A projection by name.
    pub fn projection(&self, name: &str) -> Option<&ProjectionDefinition> {
        self.projections.iter().find(|p| p.name == name)
    }

    /// The invariant whose text contains `words` (case-insensitive), as written; for
    /// domain errors that name the invariant they protect.
    pub fn invariant(&self, words: &str) -> Option<&str> {
        let w = words.to_ascii_lowercase();
        self.invariants
            .iter()
            .find(|i| i.to_ascii_lowercase().contains(&w))
            .map(String::as_str)
    }
}

/// One event type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDefinition {
    /// Name, e.g. `MoneyDeposited`.
    pub name: String,
    /// The newest schema version (`v2` -> 2); older stored versions are upcast to it.
    pub version: u32,
    /// Fields in file order.
    pub schema: Vec<(String, FieldType)>,
}

/// The type of a schema field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    /// `string`.
    String,
    /// `decimal`: exact decimal text on the wire.
    Decimal,
    /// `timestamp`: milliseconds since the epoch, or `google.protobuf.Timestamp`.
    Timestamp,
    /// `int` / `integer` / `long`.
    Integer,
    /// `bool` / `boolean`.
    Bool,
    /// `list<T>`.
    List(Box<FieldType>),
    /// Another message, by name (`OrderItem`).
    Message(String),
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldType::String => f.write_str("string"),
            FieldType::Decimal => f.write_str("decimal"),
            FieldType::Timestamp => f.write_str("timestamp"),
            FieldType::Integer => f.write_str("int"),
            FieldType::Bool => f.write_str("bool"),
            FieldType::List(t) => write!(f, "list<{t}>"),
            FieldType::Message(m) => f.write_str(m),
        }
    }
}

/// The `eventStore` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventStoreConfig {
    /// The schema field every event carries that names the aggregate instance.
    pub partition_key: Option<String>,
    /// Snapshot after every N events (`None`: `snapshotStrategy: none`).
    pub snapshot_every: Option<u64>,
    /// How long events are kept (`None`: for ever).
    pub retention: Option<Duration>,
}

/// How a projection is kept up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateStrategy {
    /// A runner applies events after they are stored; readers may lag (the lag is
    /// reported).
    EventuallyConsistent,
}

/// One read model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionDefinition {
    /// Name, e.g. `AccountBalanceView`.
    pub name: String,
    /// Event types it consumes.
    pub sources: Vec<String>,
    /// Where it is written, as named in the file (`read_db.account_balance`).
    pub target: String,
    /// How it is kept up to date.
    pub update_strategy: UpdateStrategy,
}

/// A definition that passed validation, with notes.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedDefinition {
    /// The definition.
    pub definition: AggregateDefinition,
    /// Things worth telling that are not errors.
    pub notes: Vec<Note>,
}

/// Definitions of a directory that failed to load. Not retryable: fix the files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The directory could not be listed.
    #[error("reading aggregate definitions from {dir}: {message}")]
    Unreadable {
        /// The directory.
        dir: PathBuf,
        /// Why.
        message: String,
    },
    /// No `*.yaml` in the directory.
    #[error("no aggregate definitions (*.yaml) in {0}")]
    Empty(PathBuf),
    /// Problems in files.
    #[error("invalid aggregate definitions:\n{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<DefinitionErrors>),
}

/// Reads and validates one file.
pub fn load_file(path: &Path) -> Result<LoadedDefinition, DefinitionErrors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse_aggregate(&file, &text),
        Err(e) => Err(DefinitionErrors {
            file,
            errors: vec![DefinitionError {
                location: "file".into(),
                message: format!("cannot read: {e}"),
            }],
        }),
    }
}

/// Loads every `*.yaml` / `*.yml` of a directory, by aggregate name.
pub fn load_dir(dir: &Path) -> Result<BTreeMap<String, AggregateDefinition>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LoadError::Unreadable {
        dir: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for f in files {
        match load_file(&f) {
            Ok(l) => {
                let name = l.definition.name.clone();
                if out.insert(name.clone(), l.definition).is_some() {
                    problems.push(DefinitionErrors {
                        file: f.display().to_string(),
                        errors: vec![DefinitionError {
                            location: "aggregateRoot".into(),
                            message: format!("aggregate `{name}` is defined twice"),
                        }],
                    });
                }
            }
            Err(e) => problems.push(e),
        }
    }
    if !problems.is_empty() {
        return Err(LoadError::Invalid(problems));
    }
    if out.is_empty() {
        return Err(LoadError::Empty(dir.to_path_buf()));
    }
    Ok(out)
}

/// Parses and validates definition text; `file` names it in messages.
pub fn parse_aggregate(file: &str, text: &str) -> Result<LoadedDefinition, DefinitionErrors> {
    let mut cx = Cx::default();
    let parsed = match serde_norway::from_str::<Value>(text) {
        Ok(v) => cx.aggregate(&v),
        Err(e) => {
            cx.err("yaml", format!("not valid YAML: {e}"));
            None
        }
    };
    match parsed {
        Some(definition) if cx.errors.is_empty() => Ok(LoadedDefinition {
            definition,
            notes: cx.notes,
        }),
        _ => Err(DefinitionErrors {
            file: file.to_string(),
            errors: cx.errors,
        }),
    }
}

const TOP_KEYS: &[&str] = &[
    "aggregateRoot",
    "description",
    "events",
    "eventStore",
    "projections",
    "invariants",
];
const EVENT_KEYS: &[&str] = &["version", "schema", "description"];
const STORE_KEYS: &[&str] = &["partitionKey", "snapshotStrategy", "retentionPolicy"];
const PROJECTION_KEYS: &[&str] = &["source", "target", "updateStrategy", "description"];

#[derive(Default)]
struct Cx {
    errors: Vec<DefinitionError>,
    notes: Vec<Note>,
}

impl Cx {
    fn err(&mut self, location: &str, message: impl Into<String>) {
        self.errors.push(DefinitionError {
            location: location.to_string(),
            message: message.into(),
        });
    }

    fn map<'v>(&mut self, loc: &str, v: &'v Value, what: &str) -> Option<&'v Mapping> {
        match v {
            Value::Mapping(m) => Some(m),
            other => {
                self.err(loc, format!("{what} must be a map, found {}", kind(other)));
                None
            }
        }
    }

    fn check_keys(&mut self, loc: &str, m: &Mapping, allowed: &[&str]) {
        for key in m.keys() {
            match key.as_str() {
                Some(k) if allowed.contains(&k) => {}
                Some(k) => {
                    let hint = suggest(k, allowed.iter().copied())
                        .map(|s| format!("did you mean `{s}`?"))
                        .unwrap_or_else(|| format!("expected one of: {}", allowed.join(", ")));
                    self.err(loc, format!("unknown key `{k}` ({hint})"));
                }
                None => self.err(loc, format!("keys must be text, found {}", kind(key))),
            }
        }
    }

    fn string(&mut self, loc: &str, m: &Mapping, key: &str, required: bool) -> Option<String> {
        match m.get(key) {
            None | Some(Value::Null) if required => {
                self.err(loc, format!("missing `{key}`"));
                None
            }
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.err(loc, format!("`{key}` is empty"));
                None
            }
            Some(Value::String(s)) => Some(s.trim().to_string()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(other) => {
                self.err(loc, format!("`{key}` must be text, found {}", kind(other)));
                None
            }
        }
    }

    fn token(&mut self, loc: &str, what: &str, s: &str) -> bool {
        if let Some(bad) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            self.err(
                loc,
                format!(
                    "{what} `{s}` contains `{bad}`: use only letters, digits, `_` and `-` \
                     (it becomes part of NATS subjects)"
                ),
            );
            return false;
        }
        true
    }

    fn aggregate(&mut self, root: &Value) -> Option<AggregateDefinition> {
        let top = self.map("document", root, "the document")?;
        self.check_keys("document", top, TOP_KEYS);
        let name = self.string("document", top, "aggregateRoot", true);
        let name = name.filter(|n| self.token("aggregateRoot", "`aggregateRoot`", n));
        let description = self.string("document", top, "description", false);
        let events = self.events(top.get("events"));
        let event_store = match top.get("eventStore") {
            None => EventStoreConfig {
                partition_key: None,
                snapshot_every: Some(DEFAULT_SNAPSHOT_EVERY),
                retention: None,
            },
            Some(v) => self.event_store(v, &events)?,
        };
        let projections = self.projections(top.get("projections"), &events);
        let invariants = self.invariants(top.get("invariants"));
        Some(AggregateDefinition {
            name: name?,
            description,
            events,
            event_store,
            projections,
            invariants,
        })
    }

    fn events(&mut self, v: Option<&Value>) -> Vec<EventDefinition> {
        let m = match v {
            Some(Value::Mapping(m)) if !m.is_empty() => m,
            None | Some(Value::Null) | Some(Value::Mapping(_)) => {
                self.err(
                    "events",
                    "an aggregate needs at least one event under `events:`",
                );
                return Vec::new();
            }
            Some(other) => {
                self.err(
                    "events",
                    format!(
                        "`events` must be a map of event name to definition, found {}",
                        kind(other)
                    ),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (k, v) in m {
            let Some(name) = k.as_str() else {
                self.err(
                    "events",
                    format!("event names must be text, found {}", kind(k)),
                );
                continue;
            };
            let loc = format!("event `{name}`");
            if !self.token(&loc, "event name", name) {
                continue;
            }
            if let Some(e) = self.event(&loc, name, v) {
                out.push(e);
            }
        }
        out
    }

    fn event(&mut self, loc: &str, name: &str, v: &Value) -> Option<EventDefinition> {
        let m = self.map(loc, v, "an event")?;
        self.check_keys(loc, m, EVENT_KEYS);
        let version = match self.string(loc, m, "version", true) {
            None => None,
            Some(text) => match parse_version(&text) {
                Some(v) => Some(v),
                None => {
                    self.err(
                        loc,
                        format!("`version` `{text}` is not `v1`, `v2`, ... (a `v` and a whole number from 1)"),
                    );
                    None
                }
            },
        };
        let schema = match m.get("schema") {
            Some(Value::Mapping(s)) if !s.is_empty() => {
                let mut fields = Vec::new();
                for (k, t) in s {
                    let (Some(field), Some(text)) = (k.as_str(), t.as_str()) else {
                        self.err(loc, "`schema` maps field names to type names (text)");
                        continue;
                    };
                    match parse_type(text) {
                        Ok(t) => fields.push((field.to_string(), t)),
                        Err(why) => self.err(&format!("{loc} field `{field}`"), why),
                    }
                }
                Some(fields)
            }
            None | Some(Value::Null) => {
                self.err(loc, "missing `schema`");
                None
            }
            Some(other) => {
                self.err(
                    loc,
                    format!(
                        "`schema` must be a non-empty map of field to type, found {}",
                        kind(other)
                    ),
                );
                None
            }
        };
        // Kept even when broken (the errors fail the file), so that later checks do not
        // report the event as undeclared.
        Some(EventDefinition {
            name: name.to_string(),
            version: version.unwrap_or(1),
            schema: schema.unwrap_or_default(),
        })
    }

    fn event_store(&mut self, v: &Value, events: &[EventDefinition]) -> Option<EventStoreConfig> {
        let loc = "eventStore";
        let m = self.map(loc, v, "`eventStore`")?;
        self.check_keys(loc, m, STORE_KEYS);
        let partition_key = self.string(loc, m, "partitionKey", false);
        if let Some(key) = &partition_key {
            for e in events {
                if !e.schema.iter().any(|(f, _)| f == key) {
                    self.err(
                        loc,
                        format!(
                            "partitionKey `{key}` is not a field of event `{}` (every event must carry it)",
                            e.name
                        ),
                    );
                }
            }
        }
        let snapshot_every = match self.string(loc, m, "snapshotStrategy", false) {
            None => Some(DEFAULT_SNAPSHOT_EVERY),
            Some(text) => match parse_snapshot_strategy(&text) {
                Ok(s) => s,
                Err(why) => {
                    self.err(loc, format!("`snapshotStrategy` `{text}`: {why}"));
                    None
                }
            },
        };
        let retention = match self.string(loc, m, "retentionPolicy", false) {
            None => None,
            Some(text) => match parse_retention(&text) {
                Ok(r) => r,
                Err(why) => {
                    self.err(loc, format!("`retentionPolicy` `{text}`: {why}"));
                    None
                }
            },
        };
        Some(EventStoreConfig {
            partition_key,
            snapshot_every,
            retention,
        })
    }

    fn projections(
        &mut self,
        v: Option<&Value>,
        events: &[EventDefinition],
    ) -> Vec<ProjectionDefinition> {
        let m = match v {
            None | Some(Value::Null) => return Vec::new(),
            Some(Value::Mapping(m)) => m,
            Some(other) => {
                self.err(
                    "projections",
                    format!(
                        "`projections` must be a map of name to definition, found {}",
                        kind(other)
                    ),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (k, v) in m {
            let Some(name) = k.as_str() else {
                self.err("projections", "projection names must be text");
                continue;
            };
            let loc = format!("projection `{name}`");
            if !self.token(&loc, "projection name", name) {
                continue;
            }
            let Some(p) = self.map(&loc, v, "a projection") else {
                continue;
            };
            self.check_keys(&loc, p, PROJECTION_KEYS);
            let sources = match p.get("source") {
                Some(Value::Sequence(list)) if !list.is_empty() => {
                    let mut sources = Vec::new();
                    for (i, s) in list.iter().enumerate() {
                        let Some(s) = s.as_str() else {
                            self.err(&loc, format!("source[{i}] must be an event name"));
                            continue;
                        };
                        if events.iter().any(|e| e.name == s) {
                            sources.push(s.to_string());
                        } else {
                            let hint = suggest(s, events.iter().map(|e| e.name.as_str()))
                                .map(|x| format!(" (did you mean `{x}`?)"))
                                .unwrap_or_default();
                            self.err(
                                &loc,
                                format!("source[{i}] `{s}` is not an event declared under `events`{hint}"),
                            );
                        }
                    }
                    sources
                }
                Some(Value::String(s)) => vec![s.clone()],
                _ => {
                    self.err(&loc, "`source` must be a non-empty list of event names");
                    Vec::new()
                }
            };
            let target = self.string(&loc, p, "target", true).unwrap_or_default();
            let update_strategy = match self.string(&loc, p, "updateStrategy", false).as_deref() {
                None | Some("eventually_consistent") => UpdateStrategy::EventuallyConsistent,
                Some(other) => {
                    self.err(
                        &loc,
                        format!("`updateStrategy` `{other}` is not supported (use `eventually_consistent`)"),
                    );
                    UpdateStrategy::EventuallyConsistent
                }
            };
            out.push(ProjectionDefinition {
                name: name.to_string(),
                sources,
                target,
                update_strategy,
            });
        }
        out
    }

    fn invariants(&mut self, v: Option<&Value>) -> Vec<String> {
        match v {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Sequence(list)) => list
                .iter()
                .enumerate()
                .filter_map(|(i, v)| match v.as_str() {
                    Some(s) => Some(s.to_string()),
                    None => {
                        self.err(
                            &format!("invariants[{i}]"),
                            "an invariant is a line of text",
                        );
                        None
                    }
                })
                .collect(),
            Some(other) => {
                self.err(
                    "invariants",
                    format!("`invariants` must be a list, found {}", kind(other)),
                );
                Vec::new()
            }
        }
    }
}

fn parse_version(text: &str) -> Option<u32> {
    let n = text.strip_prefix('v').or_else(|| text.strip_prefix('V'))?;
    n.parse::<u32>().ok().filter(|v| *v >= 1)
}

fn parse_type(text: &str) -> Result<FieldType, String> {
    let t = text.trim();
    if let Some(inner) = t.strip_prefix("list<").and_then(|r| r.strip_suffix('>')) {
        return Ok(FieldType::List(Box::new(parse_type(inner)?)));
    }
    Ok(match t.to_ascii_lowercase().as_str() {
        "string" => FieldType::String,
        "decimal" => FieldType::Decimal,
        "timestamp" => FieldType::Timestamp,
        "int" | "integer" | "long" => FieldType::Integer,
        "bool" | "boolean" => FieldType::Bool,
        _ if t.starts_with(|c: char| c.is_ascii_uppercase())
            && t.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            FieldType::Message(t.to_string())
        }
        _ => {
            return Err(format!(
                "unknown type `{t}` (use string, decimal, timestamp, int, bool, list<T> or a \
                 message name such as `OrderItem`)"
            ))
        }
    })
}

/// `every N events` -> `Some(N)`, `none` -> `None`.
fn parse_snapshot_strategy(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim().to_ascii_lowercase();
    if t == "none" || t == "never" {
        return Ok(None);
    }
    let words: Vec<&str> = t.split_whitespace().collect();
    match words.as_slice() {
        ["every", n, "events" | "event"] => match n.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(format!("`{n}` is not a whole number from 1")),
        },
        _ => Err("expected `every N events` or `none`".into()),
    }
}

/// `7 years`, `30 days`, `forever`.
fn parse_retention(text: &str) -> Result<Option<Duration>, String> {
    let t = text.trim().to_ascii_lowercase();
    if t == "forever" || t == "unlimited" {
        return Ok(None);
    }
    const DAY: u64 = 86_400;
    let words: Vec<&str> = t.split_whitespace().collect();
    let (n, unit) = match words.as_slice() {
        [n, unit] => (*n, *unit),
        _ => return Err("expected `N years`, `N months`, `N weeks`, `N days` or `forever`".into()),
    };
    let n: u64 = n
        .parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| format!("`{n}` is not a whole number from 1"))?;
    let per = match unit.trim_end_matches('s') {
        "year" => 365 * DAY,
        "month" => 30 * DAY,
        "week" => 7 * DAY,
        "day" => DAY,
        "hour" => 3_600,
        other => {
            return Err(format!(
                "unknown unit `{other}` (years, months, weeks, days, hours)"
            ))
        }
    };
    Ok(Some(Duration::from_secs(n * per)))
}

fn suggest<'a>(key: &str, allowed: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let norm = |s: &str| s.replace(['_', '-'], "").to_ascii_lowercase();
    allowed
        .map(|a| (strsim::levenshtein(&norm(key), &norm(a)), a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a map",
        Value::Tagged(_) => "a tagged value",
    }
}

fn snake_case(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Checks every event's schema against the Protobuf message of the same name in
/// `package` of `descriptors`: each YAML field must exist (as `snake_case`) with a
/// compatible type. The message may have more fields than the YAML (fields added by a
/// later version). `file` names the definition in the errors.
pub fn check_schema(
    file: &str,
    definition: &AggregateDefinition,
    descriptors: &FileDescriptorSet,
    package: &str,
) -> Result<(), DefinitionErrors> {
    let mut cx = Cx::default();
    let messages: Vec<_> = descriptors
        .file
        .iter()
        .filter(|f| f.package() == package)
        .flat_map(|f| f.message_type.iter())
        .collect();
    for event in &definition.events {
        let loc = format!("event `{}`", event.name);
        let Some(message) = messages.iter().find(|m| m.name() == event.name) else {
            cx.err(
                &loc,
                format!("no Protobuf message `{package}.{}`", event.name),
            );
            continue;
        };
        for (field, ty) in &event.schema {
            let snake = snake_case(field);
            let Some(f) = message.field.iter().find(|f| f.name() == snake) else {
                cx.err(
                    &format!("{loc} field `{field}`"),
                    format!("`{package}.{}` has no field `{snake}`", event.name),
                );
                continue;
            };
            let repeated = f.label() == Label::Repeated;
            let (want_list, element) = match ty {
                FieldType::List(t) => (true, t.as_ref()),
                t => (false, t),
            };
            let type_name = f.type_name().rsplit('.').next().unwrap_or_default();
            let compatible = repeated == want_list
                && match element {
                    FieldType::String | FieldType::Decimal => f.r#type() == Type::String,
                    FieldType::Timestamp => {
                        matches!(f.r#type(), Type::Uint64 | Type::Int64)
                            || (f.r#type() == Type::Message && type_name == "Timestamp")
                    }
                    FieldType::Integer => matches!(
                        f.r#type(),
                        Type::Int32
                            | Type::Int64
                            | Type::Uint32
                            | Type::Uint64
                            | Type::Sint32
                            | Type::Sint64
                    ),
                    FieldType::Bool => f.r#type() == Type::Bool,
                    FieldType::Message(m) => f.r#type() == Type::Message && type_name == m,
                    FieldType::List(_) => false,
                };
            if !compatible {
                cx.err(
                    &format!("{loc} field `{field}`"),
                    format!(
                        "declared `{ty}` but `{package}.{}.{snake}` is {}{:?}{}",
                        event.name,
                        if repeated { "repeated " } else { "" },
                        f.r#type(),
                        if type_name.is_empty() {
                            String::new()
                        } else {
                            format!(" {type_name}")
                        }
                    ),
                );
            }
        }
    }
    if cx.errors.is_empty() {
        Ok(())
    } else {
        Err(DefinitionErrors {
            file: file.to_string(),
            errors: cx.errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        parse_aggregate("t.yaml", text)
            .unwrap_err()
            .to_string()
            .lines()
            .map(str::to_string)
            .collect()
    }

    const GOOD: &str = "aggregateRoot: A\nevents:\n  E1:\n    version: v2\n    schema:\n      id: string\n      n: decimal\neventStore:\n  partitionKey: id\n  snapshotStrategy: every 10 events\n  retentionPolicy: 2 days\nprojections:\n  V:\n    source: [E1]\n    target: read_db.v\n";

    #[test]
    fn a_good_definition_loads_with_its_strategy() {
        let d = parse_aggregate("t.yaml", GOOD).unwrap().definition;
        assert_eq!(d.name, "A");
        assert_eq!(d.events[0].version, 2);
        assert_eq!(d.event_store.snapshot_every, Some(10));
        assert_eq!(
            d.event_store.retention,
            Some(Duration::from_secs(2 * 86_400))
        );
        assert_eq!(d.projections[0].sources, ["E1"]);
    }

    #[test]
    fn every_problem_is_named_with_file_and_place() {
        let text = GOOD
            .replace(
                "snapshotStrategy: every 10 events",
                "snapshotStrategy: every ten events",
            )
            .replace("source: [E1]", "source: [E1, E2]")
            .replace("    version: v2", "    version: v2\n    shcema: {}");
        let e = errors(&text);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].starts_with("t.yaml: event `E1`: unknown key `shcema` (did you mean `schema`?)"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("t.yaml: eventStore: `snapshotStrategy` `every ten events`"),
            "{e:?}"
        );
        assert!(e[2].contains("projection `V`: source[1] `E2` is not an event declared under `events` (did you mean `E1`?)"), "{e:?}");
    }

    #[test]
    fn a_partition_key_missing_from_an_event_and_a_bad_version_are_refused() {
        let text = GOOD
            .replace("partitionKey: id", "partitionKey: accountId")
            .replace("v2", "2");
        let e = errors(&text);
        assert!(
            e.iter()
                .any(|l| l.contains("event `E1`: `version` `2` is not `v1`")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|l| l.contains("partitionKey `accountId` is not a field of event `E1`")),
            "{e:?}"
        );
    }
}
