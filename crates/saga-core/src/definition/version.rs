//! Content-addressed definition versions: a saga is pinned to the digest of the
//! definition it started on.
//!
//! The digest covers the *validated* definition, rendered field by field in a fixed
//! order ([`canonical_rendering`]), never the YAML text: comments, whitespace, key
//! order and shorthand against long forms (`compensation: X` against the map with its
//! defaults) do not change it; any change of what the runtime does does.

use std::fmt::{self, Write as _};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{Compensation, InvariantKind, SagaDefinition, SagaKind, StepDefinition};
use crate::retry::RetryPolicy;

/// Hex characters of the SHA-256 kept as the version (64 bits).
pub const DIGEST_LEN: usize = 16;

/// The version of a definition: its digest and the optional human label.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DefinitionVersion {
    /// First [`DIGEST_LEN`] lowercase hex characters of the SHA-256 of the canonical
    /// rendering. Valid as a NATS subject token and a KV key token.
    pub digest: String,
    /// `saga.version` as written, if any (not part of the digest).
    pub label: Option<String>,
}

impl DefinitionVersion {
    /// The version of a validated definition.
    pub fn of(def: &SagaDefinition) -> Self {
        let hash = Sha256::digest(canonical_rendering(def).as_bytes());
        let mut digest = String::with_capacity(DIGEST_LEN);
        for b in hash.iter().take(DIGEST_LEN / 2) {
            // Writing to a String cannot fail.
            let _ = write!(digest, "{b:02x}");
        }
        Self {
            digest,
            label: def.version_label.clone(),
        }
    }

    /// Whether `s` has the shape of a digest (what a KV key or a CLI argument may hold).
    pub fn is_digest(s: &str) -> bool {
        s.len() == DIGEST_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }
}

impl fmt::Display for DefinitionVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.label {
            Some(l) => write!(f, "{} ({l})", self.digest),
            None => f.write_str(&self.digest),
        }
    }
}

impl SagaDefinition {
    /// This definition's version (digest and label).
    pub fn version(&self) -> DefinitionVersion {
        DefinitionVersion::of(self)
    }
}

/// The text the digest is taken of: one `key=value` line per field, every field of the
/// validated definition in a fixed order, strings quoted (Rust `Debug`), durations in
/// nanoseconds, numbers exactly. A new field of the model is added here (and changes
/// every digest, which is what a new meaning must do).
pub fn canonical_rendering(def: &SagaDefinition) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| {
        out.push_str(key);
        out.push('=');
        out.push_str(&value);
        out.push('\n');
    };
    line("format", "saga-definition/1".into());
    line("name", q(&def.name));
    line(
        "kind",
        match def.kind {
            SagaKind::Orchestration => "orchestration",
            SagaKind::Choreography => "choreography",
        }
        .into(),
    );
    line("orchestrator", opt(&def.orchestrator));
    line("description", opt(&def.description));
    line(
        "timeout",
        def.timeout.map(dur).unwrap_or_else(|| "-".into()),
    );
    line("deadline_buffer", dur(def.deadline_buffer));
    line("events.domain", q(&def.events.domain));
    line("events.completed", opt(&def.events.on_completed));
    line("events.compensated", opt(&def.events.on_compensated));
    line("steps", def.steps.len().to_string());
    for (i, step) in def.steps.iter().enumerate() {
        step_lines(&format!("steps[{i}]"), step, &mut line);
    }
    line("failure_scenarios", def.failure_scenarios.len().to_string());
    for (i, s) in def.failure_scenarios.iter().enumerate() {
        let p = format!("failure_scenarios[{i}]");
        line(&format!("{p}.name"), q(&s.name));
        line(&format!("{p}.step"), q(&s.step));
        line(&format!("{p}.compensations"), list(&s.compensations));
    }
    line("invariants", def.invariants.len().to_string());
    for (i, inv) in def.invariants.iter().enumerate() {
        let p = format!("invariants[{i}]");
        line(&format!("{p}.text"), q(&inv.text));
        line(
            &format!("{p}.kind"),
            match inv.kind {
                InvariantKind::IdempotentCompensations => "idempotent_compensations",
                InvariantKind::ReverseCompensationOrder => "reverse_compensation_order",
                InvariantKind::TimeoutCoversSteps => "timeout_covers_steps",
                InvariantKind::Documentation => "documentation",
            }
            .into(),
        );
    }
    out
}

fn step_lines(p: &str, step: &StepDefinition, line: &mut impl FnMut(&str, String)) {
    line(&format!("{p}.name"), q(&step.name));
    line(&format!("{p}.service"), q(&step.service));
    line(&format!("{p}.action"), q(&step.action));
    line(&format!("{p}.kind"), step.kind.as_str().into());
    line(&format!("{p}.timeout"), dur(step.timeout));
    retry_lines(&format!("{p}.retry"), &step.retry, line);
    match &step.compensation {
        Compensation::Action(c) => {
            line(&format!("{p}.compensation"), "action".into());
            line(&format!("{p}.compensation.action"), q(&c.action));
            line(&format!("{p}.compensation.timeout"), dur(c.timeout));
            retry_lines(&format!("{p}.compensation.retry"), &c.retry, line);
        }
        Compensation::NotNeeded => line(&format!("{p}.compensation"), "none".into()),
        Compensation::Missing => line(&format!("{p}.compensation"), "missing".into()),
    }
}

fn retry_lines(p: &str, r: &RetryPolicy, line: &mut impl FnMut(&str, String)) {
    line(&format!("{p}.max_attempts"), r.max_attempts.to_string());
    line(&format!("{p}.initial"), dur(r.initial));
    // `Debug` of an f64 is its shortest exact rendering: stable and lossless.
    line(&format!("{p}.multiplier"), format!("{:?}", r.multiplier));
    line(&format!("{p}.max"), dur(r.max));
    line(&format!("{p}.jitter"), format!("{:?}", r.jitter));
}

fn q(s: &str) -> String {
    format!("{s:?}")
}

fn opt(s: &Option<String>) -> String {
    s.as_deref().map(q).unwrap_or_else(|| "-".into())
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[{}]", quoted.join(","))
}

fn dur(d: Duration) -> String {
    format!("{}ns", d.as_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::parse_definition;

    const V1: &str = r#"
saga:
  name: Shop
  version: "2026-01"
  steps:
    - name: Reserve
      service: stock
      action: reserve
      compensation: release
      timeout: 5s
      retryPolicy: exponentialBackoff(2)
    - name: Charge
      service: payment
      action: charge
"#;

    /// V1 with comments, other whitespace, other key order, long forms of the defaults
    /// and another label.
    const V1_REFORMATTED: &str = r#"
# the shop saga
saga:
    version: "another label"   # labels do not count
    steps:
        -   action: reserve
            service: stock
            timeout: 5000ms
            name: Reserve
            retryPolicy: { max_attempts: 3, initial: 500ms, multiplier: 2.0, max: 30s, jitter: 0.2 }
            compensation:
                action: release
                timeout: 5s
        -   {name: Charge, service: payment, action: charge, timeout: 30s}
    name: Shop
"#;

    fn digest(text: &str) -> String {
        parse_definition("t.yaml", text)
            .map_err(|e| e.to_string())
            .unwrap()
            .definition
            .version()
            .digest
    }

    #[test]
    fn digest_is_sixteen_hex_characters_and_the_label_is_kept_beside_it() {
        let def = parse_definition("t.yaml", V1).unwrap().definition;
        let v = def.version();
        assert!(DefinitionVersion::is_digest(&v.digest), "{}", v.digest);
        assert_eq!(v.label.as_deref(), Some("2026-01"));
        assert_eq!(v.to_string(), format!("{} (2026-01)", v.digest));
        assert!(!canonical_rendering(&def).contains("2026-01"));
    }

    #[test]
    fn reformatting_keeps_the_digest() {
        let rp = crate::retry::RetryPolicy::exponential_backoff(2);
        // The long form above spells out exactly the defaults of the shorthand.
        assert_eq!(rp.initial, Duration::from_millis(500));
        assert_eq!(rp.max, Duration::from_secs(30));
        assert_eq!(format!("{:?}", rp.jitter), "0.2");
        assert_eq!(digest(V1), digest(V1_REFORMATTED));
    }

    #[test]
    fn every_semantic_change_moves_the_digest() {
        let base = digest(V1);
        let changes = [
            ("step renamed", V1.replace("name: Charge", "name: Pay")),
            (
                "step removed",
                V1.replace(
                    "    - name: Charge\n      service: payment\n      action: charge\n",
                    "",
                ),
            ),
            (
                "step added",
                format!("{V1}    - name: Ship\n      service: shipping\n      action: ship\n")
                    .replace(
                        "      action: charge\n",
                        "      action: charge\n      compensation: refund\n",
                    ),
            ),
            ("step timeout", V1.replace("timeout: 5s", "timeout: 6s")),
            (
                "step kind",
                V1.replace(
                    "      action: charge\n",
                    "      action: charge\n      kind: compensatable\n",
                ),
            ),
            (
                "retry",
                V1.replace("exponentialBackoff(2)", "exponentialBackoff(3)"),
            ),
            (
                "service",
                V1.replace("service: payment", "service: billing"),
            ),
            (
                "compensation",
                V1.replace("compensation: release", "compensation: none"),
            ),
            ("saga name", V1.replace("name: Shop", "name: Store")),
        ];
        let mut seen = vec![base.clone()];
        for (what, text) in changes {
            let d = digest(&text);
            assert!(!seen.contains(&d), "{what}: digest {d} not new");
            seen.push(d);
        }
    }
}
