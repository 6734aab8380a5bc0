//! `sagactl def validate|graph`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use saga_core::definition::{load_file, mermaid, Compensation, FailureKind, Loaded, StepKind};
use saga_core::duration::format_duration;

pub fn validate(files: &[PathBuf], explain: bool) -> ExitCode {
    let mut failed = 0;
    for file in files {
        match load_file(file) {
            Ok(loaded) => {
                let def = &loaded.definition;
                println!(
                    "ok   {}: {} ({} steps, deadline {})",
                    file.display(),
                    def.name,
                    def.steps.len(),
                    format_duration(def.deadline())
                );
                if explain {
                    print!("{}", explain_text(&loaded));
                }
            }
            Err(errors) => {
                failed += 1;
                eprintln!(
                    "FAIL {}: {} problem(s)",
                    file.display(),
                    errors.errors.len()
                );
                eprintln!("{errors}");
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} definition(s) invalid", files.len());
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

pub fn graph(file: &Path) -> ExitCode {
    match load_file(file) {
        Ok(loaded) => {
            print!("{}", mermaid(&loaded.definition));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

fn explain_text(loaded: &Loaded) -> String {
    let def = &loaded.definition;
    let mut out = String::new();
    out.push_str("\n  steps:\n");
    for (i, s) in def.steps.iter().enumerate() {
        let comp = match &s.compensation {
            Compensation::Action(c) => format!(
                "undo {} (timeout {}, up to {} attempts)",
                c.action,
                format_duration(c.timeout),
                c.retry.max_attempts
            ),
            Compensation::NotNeeded => "no undo needed (declared)".to_string(),
            Compensation::Missing => match s.kind {
                StepKind::Pivot => "never undone: the point of no return".to_string(),
                StepKind::Retriable => "never undone: retried until it succeeds".to_string(),
                StepKind::Compensatable => "no compensation (last step)".to_string(),
            },
        };
        let attempts = if s.retry.is_unbounded() {
            "unbounded attempts".to_string()
        } else {
            format!("up to {} attempts", s.retry.max_attempts)
        };
        out.push_str(&format!(
            "    {}. {} [{}] -> {}.{}  timeout {}, {}; {}\n",
            i + 1,
            s.name,
            s.kind,
            s.service,
            s.action,
            format_duration(s.timeout),
            attempts,
            comp
        ));
    }
    out.push_str(&format!(
        "\n  deadline: {} = worst case of the steps up to the pivot {} + buffer {}{}\n",
        format_duration(def.deadline()),
        format_duration(def.steps_worst_case()),
        format_duration(def.deadline_buffer),
        if def.timeout.is_some() {
            " (explicit `timeout` wins)"
        } else {
            ""
        }
    ));
    if let Some(p) = def.pivot() {
        out.push_str(&format!(
            "  pivot: {} (cancels and the deadline undo the saga only before it is sent)\n",
            def.steps[p].name
        ));
    }
    out.push_str("\n  derived failure scenarios (compensations run in this order):\n");
    let rows: Vec<[String; 4]> = def
        .derived_scenarios()
        .into_iter()
        .map(|p| {
            let kind = match p.kind {
                FailureKind::Business => "business failure",
                FailureKind::InDoubt => "in doubt (timeout/retries exhausted)",
            };
            let mut comps = if p.compensations.is_empty() {
                "(none)".to_string()
            } else {
                p.compensations.join(" -> ")
            };
            if !p.unresolved.is_empty() {
                comps.push_str(&format!("; unresolved: {}", p.unresolved.join(", ")));
            }
            [
                p.step.clone(),
                kind.to_string(),
                comps,
                p.outcome().to_string(),
            ]
        })
        .collect();
    let header = [
        "failing step".to_string(),
        "how".to_string(),
        "compensations".to_string(),
        "ends".to_string(),
    ];
    let widths: Vec<usize> = (0..4)
        .map(|c| {
            rows.iter()
                .chain(std::iter::once(&header))
                .map(|r| r[c].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(rows.iter()) {
        out.push_str("    ");
        for (c, cell) in row.iter().enumerate() {
            out.push_str(&format!("{cell:<w$}  ", w = widths[c]));
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    }
    if !def.failure_scenarios.is_empty() {
        out.push_str("\n  failureScenarios as written (all match the plan):\n");
        for s in &def.failure_scenarios {
            out.push_str(&format!(
                "    {} (step {}): {}\n",
                s.name,
                s.step,
                if s.compensations.is_empty() {
                    "(none)".to_string()
                } else {
                    s.compensations.join(" -> ")
                }
            ));
        }
    }
    if !loaded.notes.is_empty() {
        out.push_str("\n  notes:\n");
        for n in &loaded.notes {
            out.push_str(&format!("    {}: {}\n", n.location, n.message));
        }
    }
    out.push('\n');
    out
}
