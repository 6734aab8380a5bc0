//! Mermaid flowchart of a definition: forward steps as solid edges, compensations as
//! dotted edges into hexagon nodes.

use std::fmt::Write;

use super::{Compensation, SagaDefinition};
use crate::duration::format_duration;

/// Draws the saga as a Mermaid `flowchart LR`.
pub fn mermaid(def: &SagaDefinition) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "---\ntitle: {}\n---\nflowchart LR", def.name);
    let _ = writeln!(out, "    start((start))");
    let _ = writeln!(out, "    completed([COMPLETED])");
    let _ = writeln!(out, "    compensated([COMPENSATED])");
    for (i, s) in def.steps.iter().enumerate() {
        let retries = s.retry.max_attempts - 1;
        let _ = writeln!(
            out,
            "    s{i}[\"{}<br/>{}.{}<br/>timeout {}, retries {}\"]",
            s.name,
            s.service,
            s.action,
            format_duration(s.timeout),
            retries
        );
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
