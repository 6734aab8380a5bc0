//! YAML loading and validation. Every problem is reported with the file, the place
//! (saga, step, scenario) and what is wrong; all problems of a file are reported at once.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde_norway::{Mapping, Value};

use super::{
    Compensation, CompensationDefinition, FailureKind, FailureScenario, Invariant, InvariantKind,
    SagaDefinition, SagaEvents, SagaKind, StepDefinition, StepKind, DEFAULT_DEADLINE_BUFFER,
    DEFAULT_STEP_TIMEOUT, RETRIABLE_MIN_ATTEMPTS,
};
use crate::duration::{format_duration, parse_duration};
use crate::retry::RetryPolicy;

/// One problem in a definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionError {
    /// Where: `saga`, ``step `ReserveHotel` (steps[1])``, ``failureScenarios[2] `PaymentFailed` ``.
    pub location: String,
    /// What is wrong, and where possible what to write instead.
    pub message: String,
}

/// Every problem found in one file. Not retryable: fix the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DefinitionErrors {
    /// The file, as given.
    pub file: String,
    /// The problems, in file order.
    pub errors: Vec<DefinitionError>,
}

impl fmt::Display for DefinitionErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}: {}", self.file, e.location, e.message)?;
        }
        Ok(())
    }
}

/// Something worth telling that is not an error (e.g. an invariant kept as documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Where.
    pub location: String,
    /// What.
    pub message: String,
}

/// A definition that passed validation, with the notes the validator has about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The definition.
    pub definition: SagaDefinition,
    /// Things worth telling that are not errors.
    pub notes: Vec<Note>,
}

/// Reads and validates a definition file.
pub fn load_file(path: &Path) -> Result<Loaded, DefinitionErrors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse_definition(&file, &text),
        Err(e) => Err(DefinitionErrors {
            file,
            errors: vec![DefinitionError {
                location: "file".into(),
                message: format!("cannot read: {e}"),
            }],
        }),
    }
}

/// Loads every `*.yaml` / `*.yml` definition of a directory, by saga name. The error
/// lists every problem of every file (and names defined twice, and an empty directory).
pub fn load_dir(dir: &Path) -> Result<std::collections::BTreeMap<String, SagaDefinition>, String> {
    Ok(load_dir_sources(dir)?
        .into_iter()
        .map(|(name, (def, _))| (name, def))
        .collect())
}

/// [`load_dir`], keeping each definition's source text beside it (what is registered
/// as its version in the cluster).
pub fn load_dir_sources(
    dir: &Path,
) -> Result<std::collections::BTreeMap<String, (SagaDefinition, String)>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("reading saga definitions from {}: {e}", dir.display()))?;
    let mut files: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut out = std::collections::BTreeMap::new();
    let mut problems = Vec::new();
    for f in files {
        let loaded = std::fs::read_to_string(&f)
            .map_err(|e| format!("{}: file: cannot read: {e}", f.display()))
            .and_then(|text| {
                parse_definition(&f.display().to_string(), &text)
                    .map(|l| (l, text))
                    .map_err(|e| e.to_string())
            });
        match loaded {
            Ok((l, text)) => {
                let name = l.definition.name.clone();
                if out.insert(name.clone(), (l.definition, text)).is_some() {
                    problems.push(format!("{}: saga `{name}` is defined twice", f.display()));
                }
            }
            Err(e) => problems.push(e),
        }
    }
    if !problems.is_empty() {
        return Err(format!(
            "invalid saga definitions:\n{}",
            problems.join("\n")
        ));
    }
    if out.is_empty() {
        return Err(format!("no saga definitions (*.yaml) in {}", dir.display()));
    }
    Ok(out)
}

/// Parses and validates definition text; `file` names it in messages.
pub fn parse_definition(file: &str, text: &str) -> Result<Loaded, DefinitionErrors> {
    let mut cx = Cx::default();
    let parsed = match serde_norway::from_str::<Value>(text) {
        Ok(v) => cx.saga(&v),
        Err(e) => {
            cx.err("yaml", format!("not valid YAML: {e}"));
            None
        }
    };
    match parsed {
        Some(definition) if cx.errors.is_empty() => Ok(Loaded {
            definition,
            notes: cx.notes,
        }),
        _ => Err(DefinitionErrors {
            file: file.to_string(),
            errors: cx.errors,
        }),
    }
}

const SAGA_KEYS: &[&str] = &[
    "name",
    "type",
    "orchestrator",
    "description",
    "steps",
    "timeout",
    "deadlineBuffer",
    "events",
    "failureScenarios",
    "invariants",
    "version",
];
const STEP_KEYS: &[&str] = &[
    "name",
    "service",
    "action",
    "compensation",
    "timeout",
    "retryPolicy",
    "kind",
    "description",
];
const COMPENSATION_KEYS: &[&str] = &["action", "timeout", "retryPolicy"];
const RETRY_KEYS: &[&str] = &["max_attempts", "initial", "multiplier", "max", "jitter"];
const SCENARIO_KEYS: &[&str] = &["scenario", "step", "compensations"];
const EVENTS_KEYS: &[&str] = &["domain", "completed", "compensated"];

/// The validation context shared by the loaders of this crate (saga definitions, the
/// event catalog): collects every problem and note of one file.
#[derive(Default)]
pub(crate) struct Cx {
    pub(crate) errors: Vec<DefinitionError>,
    pub(crate) notes: Vec<Note>,
    /// Per step of the saga being read: whether `kind:` was written.
    explicit_kinds: Vec<bool>,
}

impl Cx {
    pub(crate) fn err(&mut self, location: &str, message: impl Into<String>) {
        self.errors.push(DefinitionError {
            location: location.to_string(),
            message: message.into(),
        });
    }

    pub(crate) fn note(&mut self, location: &str, message: impl Into<String>) {
        self.notes.push(Note {
            location: location.to_string(),
            message: message.into(),
        });
    }

    pub(crate) fn map<'v>(&mut self, loc: &str, v: &'v Value, what: &str) -> Option<&'v Mapping> {
        match v {
            Value::Mapping(m) => Some(m),
            other => {
                self.err(loc, format!("{what} must be a map, found {}", kind(other)));
                None
            }
        }
    }

    pub(crate) fn check_keys(&mut self, loc: &str, m: &Mapping, allowed: &[&str]) {
        for key in m.keys() {
            match key.as_str() {
                Some(k) if allowed.contains(&k) => {}
                Some(k) => {
                    let hint = suggest(k, allowed)
                        .map(|s| format!("did you mean `{s}`?"))
                        .unwrap_or_else(|| format!("expected one of: {}", allowed.join(", ")));
                    self.err(loc, format!("unknown key `{k}` ({hint})"));
                }
                None => self.err(loc, format!("keys must be text, found {}", kind(key))),
            }
        }
    }

    pub(crate) fn string(
        &mut self,
        loc: &str,
        m: &Mapping,
        key: &str,
        required: bool,
    ) -> Option<String> {
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
            Some(Value::Bool(b)) => Some(b.to_string()),
            Some(other) => {
                self.err(loc, format!("`{key}` must be text, found {}", kind(other)));
                None
            }
        }
    }

    /// A name that ends up as a NATS subject token or in an idempotency key.
    pub(crate) fn token(
        &mut self,
        loc: &str,
        m: &Mapping,
        key: &str,
        required: bool,
    ) -> Option<String> {
        let s = self.string(loc, m, key, required)?;
        if let Some(bad) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            self.err(
                loc,
                format!(
                    "`{key}` `{s}` contains `{bad}`: use only letters, digits, `_` and `-` \
                     (it becomes part of NATS subjects)"
                ),
            );
            return None;
        }
        Some(s)
    }

    pub(crate) fn duration(&mut self, loc: &str, m: &Mapping, key: &str) -> Option<Duration> {
        let text = match m.get(key)? {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => {
                self.err(
                    loc,
                    format!("`{key}` must be a duration, found {}", kind(other)),
                );
                return None;
            }
        };
        match parse_duration(&text) {
            Ok(d) if d.is_zero() => {
                self.err(loc, format!("`{key}` must be longer than 0"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.err(loc, format!("`{key}`: {e}"));
                None
            }
        }
    }

    fn saga(&mut self, root: &Value) -> Option<SagaDefinition> {
        let top = self.map("document", root, "the document")?;
        self.check_keys("document", top, &["saga"]);
        let Some(saga) = top.get("saga") else {
            self.err("document", "missing top-level `saga:`");
            return None;
        };
        let loc = "saga";
        let m = self.map(loc, saga, "`saga`")?;
        self.check_keys(loc, m, SAGA_KEYS);
        let name = self.token(loc, m, "name", true);
        let kind = match self.string(loc, m, "type", false).as_deref() {
            None => Some(SagaKind::Orchestration),
            Some(t) if t.eq_ignore_ascii_case("orchestration") => Some(SagaKind::Orchestration),
            Some(t) if t.eq_ignore_ascii_case("choreography") => Some(SagaKind::Choreography),
            Some(t) => {
                self.err(
                    loc,
                    format!("`type` `{t}` is not `orchestration` or `choreography`"),
                );
                None
            }
        };
        let orchestrator = self.string(loc, m, "orchestrator", false);
        let description = self.string(loc, m, "description", false);
        let version_label = self.string(loc, m, "version", false);
        let timeout = self.duration(loc, m, "timeout");
        let deadline_buffer = self
            .duration(loc, m, "deadlineBuffer")
            .unwrap_or(DEFAULT_DEADLINE_BUFFER);
        let events = match m.get("events") {
            None => SagaEvents::default(),
            Some(v) => self.events(v).unwrap_or_default(),
        };
        let steps = self.steps(m.get("steps"));

        let mut definition = SagaDefinition {
            name: name.unwrap_or_default(),
            kind: kind.unwrap_or(SagaKind::Orchestration),
            orchestrator,
            description,
            steps: steps.unwrap_or_default(),
            timeout,
            deadline_buffer,
            events,
            failure_scenarios: Vec::new(),
            invariants: Vec::new(),
            version_label,
        };
        if definition.steps.is_empty() {
            return None;
        }
        self.step_kinds(&mut definition);
        self.compensation_coverage(&definition);
        definition.failure_scenarios = self.scenarios(&definition, m.get("failureScenarios"));
        definition.invariants = self.invariants(&definition, m.get("invariants"));
        Some(definition)
    }

    fn events(&mut self, v: &Value) -> Option<SagaEvents> {
        let loc = "events";
        let m = self.map(loc, v, "`events`")?;
        self.check_keys(loc, m, EVENTS_KEYS);
        let mut events = SagaEvents::default();
        if let Some(d) = self.token(loc, m, "domain", false) {
            events.domain = d;
        }
        events.on_completed = self.token(loc, m, "completed", false);
        events.on_compensated = self.token(loc, m, "compensated", false);
        Some(events)
    }

    fn steps(&mut self, v: Option<&Value>) -> Option<Vec<StepDefinition>> {
        let list = match v {
            Some(Value::Sequence(s)) if !s.is_empty() => s,
            Some(Value::Sequence(_)) | None | Some(Value::Null) => {
                self.err("saga", "a saga needs at least one step under `steps:`");
                return None;
            }
            Some(other) => {
                self.err(
                    "saga",
                    format!("`steps` must be a list, found {}", kind(other)),
                );
                return None;
            }
        };
        let mut steps: Vec<StepDefinition> = Vec::new();
        let mut all_ok = true;
        let mut names: Vec<Option<&str>> = Vec::new();
        for (i, v) in list.iter().enumerate() {
            let name = v.get("name").and_then(Value::as_str).map(str::trim);
            match self.step(i, v) {
                Some(step) => steps.push(step),
                None => all_ok = false,
            }
            if let Some(first) = name.and_then(|n| names.iter().position(|m| *m == Some(n))) {
                self.err(
                    &step_loc(i, name),
                    format!("duplicate step name (also steps[{first}])"),
                );
                all_ok = false;
            }
            names.push(name);
        }
        all_ok.then_some(steps)
    }

    fn step(&mut self, i: usize, v: &Value) -> Option<StepDefinition> {
        let provisional = step_loc(i, None);
        let m = self.map(&provisional, v, "a step")?;
        let name = m.get("name").and_then(Value::as_str).map(str::to_string);
        let loc = step_loc(i, name.as_deref());
        let before = self.errors.len();
        self.check_keys(&loc, m, STEP_KEYS);
        let name = self.token(&loc, m, "name", true);
        let service = self.token(&loc, m, "service", true);
        let action = self.token(&loc, m, "action", true);
        let timeout = self
            .duration(&loc, m, "timeout")
            .unwrap_or(DEFAULT_STEP_TIMEOUT);
        let retry = match m.get("retryPolicy") {
            None => RetryPolicy::none(),
            Some(v) => self
                .retry(&loc, "retryPolicy", v)
                .unwrap_or(RetryPolicy::none()),
        };
        let compensation = match m.get("compensation") {
            None => Compensation::Missing,
            Some(v) => self.compensation(&loc, v, timeout)?,
        };
        let kind = match self.string(&loc, m, "kind", false).as_deref() {
            None => None,
            Some(k) => match k.to_ascii_lowercase().as_str() {
                "compensatable" => Some(StepKind::Compensatable),
                "pivot" => Some(StepKind::Pivot),
                "retriable" | "retryable" => Some(StepKind::Retriable),
                _ => {
                    self.err(
                        &loc,
                        format!("`kind` `{k}` is not `compensatable`, `pivot` or `retriable`"),
                    );
                    None
                }
            },
        };
        if self.errors.len() > before {
            return None;
        }
        self.explicit_kinds.resize(i, false);
        self.explicit_kinds.push(kind.is_some());
        Some(StepDefinition {
            name: name?,
            service: service?,
            action: action?,
            kind: kind.unwrap_or(StepKind::Compensatable),
            compensation,
            timeout,
            retry,
        })
    }

    fn compensation(
        &mut self,
        loc: &str,
        v: &Value,
        step_timeout: Duration,
    ) -> Option<Compensation> {
        let default = |action: String| {
            Compensation::Action(CompensationDefinition {
                action,
                timeout: step_timeout,
                retry: RetryPolicy::compensation_default(),
            })
        };
        match v {
            Value::String(s) if s.trim().eq_ignore_ascii_case("none") => {
                Some(Compensation::NotNeeded)
            }
            Value::String(_) => {
                let mut m = Mapping::new();
                m.insert(Value::from("compensation"), v.clone());
                self.token(loc, &m, "compensation", true).map(default)
            }
            Value::Mapping(m) => {
                let cloc = format!("{loc} compensation");
                self.check_keys(&cloc, m, COMPENSATION_KEYS);
                let action = self.token(&cloc, m, "action", true)?;
                let timeout = self.duration(&cloc, m, "timeout").unwrap_or(step_timeout);
                let retry = match m.get("retryPolicy") {
                    None => RetryPolicy::compensation_default(),
                    Some(v) => self.retry(&cloc, "retryPolicy", v)?,
                };
                Some(Compensation::Action(CompensationDefinition {
                    action,
                    timeout,
                    retry,
                }))
            }
            Value::Null => {
                self.err(
                    loc,
                    "`compensation` is empty: name an action, or write `none` if the step needs no undo",
                );
                None
            }
            other => {
                self.err(
                    loc,
                    format!(
                        "`compensation` must be an action name, `none` or a map, found {}",
                        kind(other)
                    ),
                );
                None
            }
        }
    }

    fn retry(&mut self, loc: &str, key: &str, v: &Value) -> Option<RetryPolicy> {
        let policy = match v {
            Value::String(s) => match parse_retry_text(s) {
                Ok(p) => p,
                Err(why) => {
                    self.err(loc, format!("`{key}` `{s}`: {why}"));
                    return None;
                }
            },
            Value::Mapping(m) => {
                let rloc = format!("{loc} {key}");
                self.check_keys(&rloc, m, RETRY_KEYS);
                let before = self.errors.len();
                let max_attempts = match m.get("max_attempts") {
                    Some(Value::String(u)) if u.trim().eq_ignore_ascii_case("unbounded") => {
                        RetryPolicy::UNBOUNDED
                    }
                    Some(Value::Number(n))
                        if n.as_u64().is_some_and(|a| (1..=1000).contains(&a)) =>
                    {
                        n.as_u64().unwrap_or(1) as u32
                    }
                    Some(other) => {
                        self.err(
                            &rloc,
                            format!(
                                "`max_attempts` must be a whole number from 1 to 1000 or \
                                 `unbounded`, found {}",
                                show(other)
                            ),
                        );
                        1
                    }
                    None => {
                        self.err(&rloc, "missing `max_attempts`");
                        1
                    }
                };
                let mut p = RetryPolicy::exponential_backoff(0);
                p.max_attempts = max_attempts;
                if let Some(d) = self.duration(&rloc, m, "initial") {
                    p.initial = d;
                }
                if let Some(d) = self.duration(&rloc, m, "max") {
                    p.max = d;
                } else if p.max < p.initial {
                    p.max = p.initial;
                }
                for (field, slot) in [("multiplier", &mut p.multiplier), ("jitter", &mut p.jitter)]
                {
                    match m.get(field) {
                        None => {}
                        Some(Value::Number(n)) if n.as_f64().is_some() => {
                            *slot = n.as_f64().unwrap_or_default();
                        }
                        Some(other) => self.err(
                            &rloc,
                            format!("`{field}` must be a number, found {}", show(other)),
                        ),
                    }
                }
                if self.errors.len() > before {
                    return None;
                }
                p
            }
            other => {
                self.err(
                    loc,
                    format!(
                        "`{key}` must be `none`, `unbounded`, `exponentialBackoff(N)` or a map, found {}",
                        kind(other)
                    ),
                );
                return None;
            }
        };
        if let Err(why) = policy.check() {
            self.err(loc, format!("`{key}`: {why}"));
            return None;
        }
        Some(policy)
    }

    fn compensation_coverage(&mut self, def: &SagaDefinition) {
        let last = def.steps.len() - 1;
        for (i, step) in def.steps.iter().enumerate() {
            if i < last
                && step.kind == StepKind::Compensatable
                && step.compensation == Compensation::Missing
            {
                self.err(
                    &step_loc(i, Some(&step.name)),
                    format!(
                        "no `compensation`, but a later step (`{}`) can fail and this step would \
                         then stay done: name a compensating action, write `compensation: none` \
                         if it needs no undo, or `kind: pivot` if it is the point of no return",
                        def.steps[i + 1].name
                    ),
                );
            }
        }
    }

    /// Gives every step its kind (the written one, or the default) and checks the
    /// order the theory demands: compensatable steps, at most one pivot, retriable steps.
    fn step_kinds(&mut self, def: &mut SagaDefinition) {
        let explicit = std::mem::take(&mut self.explicit_kinds);
        let written = |i: usize| explicit.get(i).copied().unwrap_or(false);
        let last = def.steps.len() - 1;
        let pivot = def.steps.iter().position(|s| s.kind == StepKind::Pivot);
        for (i, s) in def.steps.iter_mut().enumerate() {
            // Default: compensatable with a compensation. Without one: retriable after
            // the pivot; the last step is retriable when its policy is long enough to
            // be, and otherwise the pivot (a definite failure undoes the steps before
            // it, a timeout is retried until it answers).
            if written(i) || s.compensation != Compensation::Missing {
                continue;
            }
            if pivot.is_some_and(|p| i > p) {
                s.kind = StepKind::Retriable;
            } else if i == last {
                let long = s.retry.is_unbounded() || s.retry.max_attempts >= RETRIABLE_MIN_ATTEMPTS;
                s.kind = if long {
                    StepKind::Retriable
                } else {
                    StepKind::Pivot
                };
            }
        }
        let mut pivot: Option<usize> = None;
        let mut first_retriable: Option<usize> = None;
        for (i, s) in def.steps.iter().enumerate() {
            let loc = step_loc(i, Some(&s.name));
            match s.kind {
                StepKind::Pivot => {
                    if let Some(p) = pivot {
                        self.err(
                            &loc,
                            format!(
                                "a saga has at most one pivot, and `{}` (steps[{p}]) is already it",
                                def.steps[p].name
                            ),
                        );
                    } else if let Some(r) = first_retriable {
                        self.err(
                            &loc,
                            format!(
                                "the pivot must come before the retriable steps, but `{}` \
                                 (steps[{r}]) is retriable and comes first",
                                def.steps[r].name
                            ),
                        );
                    }
                    if s.compensation != Compensation::Missing {
                        self.err(
                            &loc,
                            "a pivot is the point of no return and is never undone: remove \
                             `compensation`, or make the step `kind: compensatable`",
                        );
                    }
                    pivot.get_or_insert(i);
                }
                StepKind::Retriable => {
                    if s.compensation != Compensation::Missing {
                        self.err(
                            &loc,
                            "a retriable step is never compensated: remove `compensation`, or \
                             make the step `kind: compensatable` (before the pivot)",
                        );
                    }
                    if !s.retry.is_unbounded() && s.retry.max_attempts < RETRIABLE_MIN_ATTEMPTS {
                        let why = if written(i) {
                            ""
                        } else {
                            " (it is retriable because it follows the pivot and has no \
                             compensation)"
                        };
                        self.err(
                            &loc,
                            format!(
                                "a retriable step is retried until it succeeds, never compensated \
                                 nor abandoned, so its `retryPolicy` must be `unbounded` or allow \
                                 at least {RETRIABLE_MIN_ATTEMPTS} attempts; it allows {}{why}",
                                s.retry.max_attempts
                            ),
                        );
                    }
                    first_retriable.get_or_insert(i);
                }
                StepKind::Compensatable => {
                    if let Some(p) = pivot.or(first_retriable) {
                        let what = if pivot.is_some() {
                            "the pivot"
                        } else {
                            "the retriable step"
                        };
                        self.err(
                            &loc,
                            format!(
                                "nothing after {what} `{}` (steps[{p}]) can be compensated: make \
                                 this step `kind: retriable` (retried until it succeeds) or move it \
                                 before `{}`",
                                def.steps[p].name, def.steps[p].name
                            ),
                        );
                    }
                }
            }
        }
    }

    fn scenarios(&mut self, def: &SagaDefinition, v: Option<&Value>) -> Vec<FailureScenario> {
        let list = match v {
            None | Some(Value::Null) => return Vec::new(),
            Some(Value::Sequence(s)) => s,
            Some(other) => {
                self.err(
                    "saga",
                    format!("`failureScenarios` must be a list, found {}", kind(other)),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (i, v) in list.iter().enumerate() {
            let Some(m) = self.map(&format!("failureScenarios[{i}]"), v, "a scenario") else {
                continue;
            };
            let name = m.get("scenario").and_then(Value::as_str).unwrap_or("");
            let loc = format!("failureScenarios[{i}] `{name}`");
            self.check_keys(&loc, m, SCENARIO_KEYS);
            let Some(name) = self.string(&loc, m, "scenario", true) else {
                continue;
            };
            let step = match self.string(&loc, m, "step", false) {
                Some(s) => match def.step_index(&s) {
                    Some(idx) => Some(idx),
                    None => {
                        self.err(&loc, format!("`step` `{s}` is not a step of this saga"));
                        continue;
                    }
                },
                None => guess_step(def, &name),
            };
            let Some(step) = step else {
                self.err(
                    &loc,
                    format!(
                        "cannot tell which step this scenario describes from its name; add \
                         `step: <name>` (one of: {})",
                        def.steps
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                continue;
            };
            let Some(written) = self.scenario_compensations(&loc, m.get("compensations")) else {
                continue;
            };
            let expected = def.plan_for(step, FailureKind::Business).compensations;
            if written != expected {
                self.err(
                    &loc,
                    format!(
                        "when step `{}` fails, the steps run compensations [{}] (reverse order of \
                         the completed steps), but the scenario lists [{}]",
                        def.steps[step].name,
                        expected.join(", "),
                        written.join(", ")
                    ),
                );
                continue;
            }
            out.push(FailureScenario {
                name,
                step: def.steps[step].name.clone(),
                compensations: written,
            });
        }
        out
    }

    fn scenario_compensations(&mut self, loc: &str, v: Option<&Value>) -> Option<Vec<String>> {
        let items = match v {
            None => {
                self.err(
                    loc,
                    "missing `compensations` (write `- (none)` when nothing is undone)",
                );
                return None;
            }
            Some(Value::Null) => return Some(Vec::new()),
            Some(Value::String(s)) if is_none_entry(s) => return Some(Vec::new()),
            Some(Value::Sequence(s)) => s,
            Some(other) => {
                self.err(
                    loc,
                    format!("`compensations` must be a list, found {}", kind(other)),
                );
                return None;
            }
        };
        let mut out = Vec::new();
        for item in items {
            match item.as_str() {
                Some(s) if is_none_entry(s) => {
                    if items.len() > 1 {
                        self.err(
                            loc,
                            format!("`{s}` says no compensation runs, but other entries follow it"),
                        );
                        return None;
                    }
                }
                Some(s) => out.push(s.trim().to_string()),
                None => {
                    self.err(
                        loc,
                        format!(
                            "compensation entries must be action names, found {}",
                            kind(item)
                        ),
                    );
                    return None;
                }
            }
        }
        Some(out)
    }

    fn invariants(&mut self, def: &SagaDefinition, v: Option<&Value>) -> Vec<Invariant> {
        let list = match v {
            None | Some(Value::Null) => return Vec::new(),
            Some(Value::Sequence(s)) => s,
            Some(other) => {
                self.err(
                    "saga",
                    format!("`invariants` must be a list, found {}", kind(other)),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (i, item) in list.iter().enumerate() {
            let loc = format!("invariants[{i}]");
            let Some(text) = item.as_str().map(|s| s.trim().to_string()) else {
                self.err(
                    &loc,
                    format!("an invariant must be a line of text, found {}", kind(item)),
                );
                continue;
            };
            let kind = classify_invariant(&text);
            match kind {
                InvariantKind::IdempotentCompensations => self.note(
                    &loc,
                    format!(
                        "`{text}`: enforced: every compensation command carries a stable \
                         idempotency key and participants answer duplicates from their inbox"
                    ),
                ),
                InvariantKind::ReverseCompensationOrder => self.note(
                    &loc,
                    format!(
                        "`{text}`: enforced by the state machine; {} failure scenario(s) checked \
                         against the reverse-order plan",
                        def.failure_scenarios.len()
                    ),
                ),
                InvariantKind::TimeoutCoversSteps => {
                    let worst = def.steps_worst_case();
                    match def.timeout {
                        Some(t) if t < worst => self.err(
                            &loc,
                            format!(
                                "`{text}`: saga `timeout` {} is shorter than the steps' worst case \
                                 {} (every attempt timing out plus backoff)",
                                format_duration(t),
                                format_duration(worst)
                            ),
                        ),
                        _ => self.note(
                            &loc,
                            format!(
                                "`{text}`: checked: deadline {} = steps' worst case {} + buffer",
                                format_duration(def.deadline()),
                                format_duration(worst)
                            ),
                        ),
                    }
                }
                InvariantKind::Documentation => self.note(
                    &loc,
                    format!("`{text}`: not an invariant the validator knows; kept as documentation, not checked"),
                ),
            }
            out.push(Invariant { text, kind });
        }
        out
    }
}

/// `none` or `exponentialBackoff(N)`.
fn parse_retry_text(s: &str) -> Result<RetryPolicy, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("none") {
        return Ok(RetryPolicy::none());
    }
    if t.eq_ignore_ascii_case("unbounded") {
        return Ok(RetryPolicy::unbounded());
    }
    let inner = t
        .strip_prefix("exponentialBackoff(")
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            "expected `none`, `unbounded`, `exponentialBackoff(N)` or a map with max_attempts, \
             initial, multiplier, max, jitter"
                .to_string()
        })?;
    match inner.trim().parse::<u32>() {
        Ok(n) if n <= 999 => Ok(RetryPolicy::exponential_backoff(n)),
        _ => Err(format!(
            "the number of retries in exponentialBackoff(N) must be a whole number from 0 to 999, found `{inner}`"
        )),
    }
}

fn is_none_entry(s: &str) -> bool {
    let t = s.trim().to_ascii_lowercase();
    t == "none" || t.starts_with("(none")
}

fn classify_invariant(text: &str) -> InvariantKind {
    let t = text.to_ascii_lowercase();
    if t.contains("compensation") && t.contains("idempot") {
        InvariantKind::IdempotentCompensations
    } else if t.contains("compensation") && t.contains("reverse") {
        InvariantKind::ReverseCompensationOrder
    } else if t.contains("timeout") && (t.contains("sum") || t.contains("buffer")) {
        InvariantKind::TimeoutCoversSteps
    } else {
        InvariantKind::Documentation
    }
}

/// Finds the step a scenario name talks about (`HotelReservationFailed` ->
/// `ReserveHotel`) by the words they share; `None` when no single step stands out.
fn guess_step(def: &SagaDefinition, scenario: &str) -> Option<usize> {
    const NOISE: &[&str] = &[
        "failed", "fail", "fails", "failure", "error", "service", "step",
    ];
    let wanted: Vec<String> = words(scenario)
        .into_iter()
        .filter(|w| !NOISE.contains(&w.as_str()))
        .collect();
    let scores: Vec<usize> = def
        .steps
        .iter()
        .map(|s| {
            let have = [words(&s.name), words(&s.service), words(&s.action)].concat();
            wanted
                .iter()
                .filter(|w| have.iter().any(|h| same_word(w, h)))
                .count()
        })
        .collect();
    let best = *scores.iter().max()?;
    if best == 0 || scores.iter().filter(|s| **s == best).count() > 1 {
        return None;
    }
    scores.iter().position(|s| *s == best)
}

fn same_word(a: &str, b: &str) -> bool {
    let common = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    a == b || common >= 5
}

/// Lower-case words of a camelCase / snake_case / spaced name.
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in s.chars() {
        if !c.is_ascii_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && prev_lower && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        cur.push(c.to_ascii_lowercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The closest allowed key, for "did you mean" hints.
pub(crate) fn suggest<'a>(key: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| s.replace(['_', '-'], "").to_ascii_lowercase();
    allowed
        .iter()
        .map(|a| (edit_distance(&norm(key), &norm(a)), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn step_loc(i: usize, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("step `{n}` (steps[{i}])"),
        None => format!("steps[{i}]"),
    }
}

pub(crate) fn kind(v: &Value) -> &'static str {
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

fn show(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("`{s}`"),
        other => kind(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_names() {
        assert_eq!(
            words("HotelReservationFailed"),
            ["hotel", "reservation", "failed"]
        );
        assert_eq!(words("reserve_flight"), ["reserve", "flight"]);
    }

    #[test]
    fn suggestions_catch_typos_and_case() {
        assert_eq!(suggest("timout", STEP_KEYS), Some("timeout"));
        assert_eq!(suggest("retry_policy", STEP_KEYS), Some("retryPolicy"));
        assert_eq!(suggest("maxAttempts", RETRY_KEYS), Some("max_attempts"));
        assert_eq!(suggest("colour", STEP_KEYS), None);
    }
}
