//! Mermaid flowchart of a definition: forward steps as solid edges, compensations as
//! dotted edges into hexagon nodes; the pivot is a thick-bordered "no return" node and
//! retriable steps loop on themselves.

use std::fmt::Write;

use super::{Compensation, SagaDefinition, StepKind};
use crate::duration::format_duration;

/// Draws the saga as a Mermaid `flowchart LR`.
pub fn mermaid(def: &SagaDefinition) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "---\ntitle: {}\n---\nflowchart LR", def.name);
    let _ = writeln!(out, "    start((start))");
    let _ = writeln!(out, "    completed([COMPLETED])");
    let _ = writeln!(out, "    compensated([COMPENSATED])");
    if def.steps.iter().any(|s| s.kind == StepKind::Retriable) {
        let _ = writeln!(out, "    failed([FAILED])");
    }
    for (i, s) in def.steps.iter().enumerate() {
        let retries = if s.retry.is_unbounded() {
            "unbounded".to_string()
        } else {
            (s.retry.max_attempts - 1).to_string()
        };
        let label = format!(
            "{}<br/>{}.{}<br/>timeout {}, retries {}",
            s.name,
            s.service,
            s.action,
            format_duration(s.timeout),
            retries
        );
        let _ = match s.kind {
            StepKind::Compensatable => writeln!(out, "    s{i}[\"{label}\"]"),
            StepKind::Pivot => writeln!(out, "    s{i}[[\"PIVOT: {label}\"]]"),
            StepKind::Retriable => writeln!(out, "    s{i}([\"{label}<br/>retriable\"])"),
        };
        if let Compensation::Action(c) = &s.compensation {
            let _ = writeln!(
                out,
                "    c{i}{{{{\"{}<br/>{}.{}\"}}}}",
                c.action, s.service, c.action
            );
        }
    }
    // Forward path.
    let _ = writeln!(out, "    start --> s0");
    for i in 0..def.steps.len() {
        let next = if i + 1 < def.steps.len() {
            format!("s{}", i + 1)
        } else {
            "completed".to_string()
        };
        let _ = writeln!(out, "    s{i} -->|ok| {next}");
    }
    // Where compensation starts from step i going back from index `from` (inclusive).
    let entry = |from: Option<usize>| -> String {
        let mut j = from;
        while let Some(k) = j {
            if matches!(def.steps[k].compensation, Compensation::Action(_)) {
                return format!("c{k}");
            }
            j = k.checked_sub(1);
        }
        "compensated".to_string()
    };
    for (i, s) in def.steps.iter().enumerate() {
        match s.kind {
            StepKind::Compensatable => {}
            StepKind::Pivot => {
                let _ = writeln!(
                    out,
                    "    s{i} -.->|business failure| {}",
                    entry(i.checked_sub(1))
                );
                let _ = writeln!(out, "    s{i} -->|in doubt: retried until it answers| s{i}");
                continue;
            }
            StepKind::Retriable => {
                let _ = writeln!(out, "    s{i} -->|timeout / failure: retried| s{i}");
                let _ = writeln!(out, "    s{i} -.->|refused: nothing undone| failed");
                continue;
            }
        }
        let _ = writeln!(
            out,
            "    s{i} -.->|business failure| {}",
            entry(i.checked_sub(1))
        );
        let (label, in_doubt) = match s.compensation {
            Compensation::Action(_) => ("timeout / retries exhausted", format!("c{i}")),
            Compensation::NotNeeded => ("timeout / retries exhausted", entry(i.checked_sub(1))),
            // Nothing can undo it: the rest is undone, then the saga ends FAILED.
            Compensation::Missing => (
                "in doubt, no compensation: undo the rest, end FAILED",
                entry(i.checked_sub(1)),
            ),
        };
        let _ = writeln!(out, "    s{i} -.->|{label}| {in_doubt}");
        if matches!(s.compensation, Compensation::Action(_)) {
            let _ = writeln!(out, "    c{i} -.->|done| {}", entry(i.checked_sub(1)));
        }
    }
    let _ = writeln!(
        out,
        "    classDef comp fill:#fde2e1,stroke:#c0392b,stroke-dasharray: 4 3"
    );
    if let Some(p) = def.pivot() {
        let _ = writeln!(
            out,
            "    classDef pivot fill:#fff3c4,stroke:#b7950b,stroke-width:4px"
        );
        let _ = writeln!(out, "    class s{p} pivot");
    }
    let comps: Vec<String> = def
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s.compensation, Compensation::Action(_)))
        .map(|(i, _)| format!("c{i}"))
        .collect();
    if !comps.is_empty() {
        let _ = writeln!(out, "    class {} comp", comps.join(","));
    }
    out
}
