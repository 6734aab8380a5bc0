//! Human-readable output: aligned tables and short state names.

use std::fmt::Write as _;

use prost_types::Timestamp;
use saga_proto::{
    journal_input, step_reply, JournalEvent, JournalInput, Saga, SagaState, TimerKind,
    TransitionEventKind,
};

/// `COMPLETED` for `SAGA_STATE_COMPLETED`; `UNKNOWN(9)` for a number this build does not know.
pub fn state_name(n: i32) -> String {
    match SagaState::try_from(n) {
        Ok(s) => s
            .as_str_name()
            .trim_start_matches("SAGA_STATE_")
            .to_string(),
        Err(_) => format!("UNKNOWN({n})"),
    }
}

pub fn is_terminal(n: i32) -> bool {
    matches!(
        SagaState::try_from(n),
        Ok(SagaState::Completed | SagaState::Compensated | SagaState::Failed)
    )
}

pub fn ts(t: Option<&Timestamp>) -> String {
    t.map_or_else(|| "-".to_string(), Timestamp::to_string)
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// Columns padded to their widest cell; the last column is not padded.
#[derive(Debug)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cols = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut s = String::new();
            for (i, c) in line.iter().enumerate().take(cols) {
                if i + 1 == cols {
                    s.push_str(c);
                } else {
                    let _ = write!(s, "{c:<w$}  ", w = widths[i]);
                }
            }
            out.push_str(s.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The saga's header block and its steps table.
pub fn saga(s: &Saga) -> String {
    let mut out = String::new();
    let mut kv = |k: &str, v: &str| {
        let _ = writeln!(out, "{k:<10}{v}");
    };
    kv("saga", &s.saga_id);
    kv("type", &s.saga_type);
    kv("state", &state_name(s.state));
    kv("step", or_dash(&s.current_step));
    kv("version", &s.version.to_string());
    kv("defn", or_dash(&s.definition_version));
    kv("created", &ts(s.created_at.as_ref()));
    kv("updated", &ts(s.updated_at.as_ref()));
    if !s.compensation_reason.is_empty() {
        kv("reason", &s.compensation_reason);
    }
    if !s.failure_reason.is_empty() {
        kv("failure", &s.failure_reason);
    }
    if !s.steps.is_empty() {
        out.push('\n');
        out.push_str(&steps(s));
    }
    out
}

/// The steps of a saga as a table.
pub fn steps(s: &Saga) -> String {
    let mut t = Table::new(&[
        "STEP",
        "STATUS",
        "ATTEMPTS",
        "COMP.ATTEMPTS",
        "STARTED",
        "FINISHED",
        "ERROR",
    ]);
    for st in &s.steps {
        t.row(vec![
            st.name.clone(),
            st.status.clone(),
            st.attempts.to_string(),
            st.compensation_attempts.to_string(),
            ts(st.started_at.as_ref()),
            ts(st.finished_at.as_ref()),
            or_dash(&st.error).to_string(),
        ]);
    }
    t.render()
}

pub fn saga_list(sagas: &[Saga]) -> String {
    let mut t = Table::new(&["SAGA", "TYPE", "STATE", "STEP", "UPDATED", "REASON"]);
    for s in sagas {
        let reason = if s.failure_reason.is_empty() {
            &s.compensation_reason
        } else {
            &s.failure_reason
        };
        t.row(vec![
            s.saga_id.clone(),
            s.saga_type.clone(),
            state_name(s.state),
            or_dash(&s.current_step).to_string(),
            ts(s.updated_at.as_ref()),
            or_dash(reason).to_string(),
        ]);
    }
    t.render()
}

/// One block per transition: version, time, input, resulting state, then its events.
/// The saga's timeline: one row per thing that happened (time, step, action, attempt,
/// outcome, reason), every command named by its action, then what caused each
/// transition when it was not a reply (a timer, a cancel, the deadline).
pub fn history(events: &[JournalEvent]) -> String {
    use std::collections::HashMap;
    use TransitionEventKind as K;
    let mut t = Table::new(&[
        "V", "TIME", "STEP", "ACTION", "ATTEMPT", "OUTCOME", "REASON",
    ]);
    // The action last sent per step, forward and compensation, for the rows of outcomes.
    let mut sent: HashMap<(String, bool), String> = HashMap::new();
    for e in events {
        let cause = match e.input.as_ref().and_then(|i| i.kind.as_ref()) {
            Some(journal_input::Kind::Reply(_)) | None => None,
            Some(_) => Some(input(e.input.as_ref())),
        };
        let at = ts(e.recorded_at.as_ref());
        let mut first = true;
        let mut row =
            |t: &mut Table, step: &str, action: &str, attempt: String, what: &str, why: &str| {
                t.row(vec![
                    if first {
                        format!("v{}", e.version)
                    } else {
                        String::new()
                    },
                    if first { at.clone() } else { String::new() },
                    or_dash(step).to_string(),
                    or_dash(action).to_string(),
                    attempt,
                    what.to_string(),
                    why.to_string(),
                ]);
                first = false;
            };
        if let Some(cause) = &cause {
            if !e.events.is_empty()
                && !matches!(cause.as_str(), "start")
                && !cause.starts_with("start ")
            {
                row(&mut t, "", "", String::new(), "INPUT", cause);
            }
        }
        for ev in &e.events {
            let kind = K::try_from(ev.kind).unwrap_or(K::Unspecified);
            let compensation = matches!(
                kind,
                K::CompensationStepStarted
                    | K::CompensationAttemptFailed
                    | K::CompensationRetryScheduled
                    | K::StepCompensated
                    | K::CompensationFailed
            );
            let key = (ev.step.clone(), compensation);
            if matches!(kind, K::StepStarted | K::CompensationStepStarted) && !ev.action.is_empty()
            {
                sent.insert(key.clone(), ev.action.clone());
            }
            let action = if ev.step.is_empty() {
                String::new()
            } else {
                sent.get(&key).cloned().unwrap_or_default()
            };
            let what = match kind {
                K::StepStarted => "SENT".to_string(),
                K::CompensationStepStarted => "SENT (compensation)".to_string(),
                other => other
                    .as_str_name()
                    .trim_start_matches("TRANSITION_EVENT_KIND_")
                    .to_string(),
            };
            let attempt = if ev.attempt > 0 {
                ev.attempt.to_string()
            } else {
                String::new()
            };
            let mut why = ev.reason.clone();
            if let Some(d) = &ev.delay {
                why = format!(
                    "in {d}{}",
                    if why.is_empty() {
                        String::new()
                    } else {
                        format!(": {why}")
                    }
                );
            }
            if let Some(d) = &ev.deadline_at {
                why = format!("deadline {d}");
            }
            if kind == K::Migrated {
                why = format!(
                    "{} -> {}{}",
                    ev.from_version,
                    ev.to_version,
                    if why.is_empty() {
                        String::new()
                    } else {
                        format!(", renamed {why}")
                    }
                );
            }
            row(&mut t, &ev.step, &action, attempt, &what, &why);
        }
    }
    t.render()
}

/// The saga's timeline with the trace and span of each transition, and the saga's trace
/// id first (what to search for in a tracing backend).
pub fn trace(events: &[JournalEvent]) -> String {
    let mut out = String::new();
    let saga_trace = events.iter().find_map(|e| {
        e.saga_traceparent
            .split('-')
            .nth(1)
            .filter(|t| !t.is_empty())
    });
    match saga_trace {
        Some(t) => {
            let _ = writeln!(out, "trace {t}");
        }
        None if events.iter().all(|e| e.trace_id.is_empty()) => {
            let _ = writeln!(
                out,
                "no trace ids: the worker that wrote this journal exported no traces \
                 (start it with OTEL_EXPORTER_OTLP_ENDPOINT set)"
            );
        }
        None => {}
    }
    let mut t = Table::new(&[
        "VERSION", "RECORDED", "INPUT", "STATE", "TRACE ID", "SPAN ID",
    ]);
    for e in events {
        t.row(vec![
            format!("v{}", e.version),
            ts(e.recorded_at.as_ref()),
            input(e.input.as_ref()),
            state_name(e.state),
            or_dash(&e.trace_id).to_string(),
            or_dash(&e.span_id).to_string(),
        ]);
    }
    out.push_str(&t.render());
    out
}

fn input(i: Option<&JournalInput>) -> String {
    let Some(kind) = i.and_then(|i| i.kind.as_ref()) else {
        return "input: -".into();
    };
    match kind {
        journal_input::Kind::Start(s) => {
            if s.idempotency_key.is_empty() {
                "start".into()
            } else {
                format!("start (key {})", s.idempotency_key)
            }
        }
        journal_input::Kind::Reply(r) => {
            let outcome = match &r.outcome {
                Some(step_reply::Outcome::Ok(_)) => "ok".to_string(),
                Some(step_reply::Outcome::BusinessFailure(f)) => {
                    format!("business failure: {}", f.reason)
                }
                Some(step_reply::Outcome::TechnicalFailure(f)) => {
                    format!("technical failure: {}", f.reason)
                }
                None => "no outcome".to_string(),
            };
            let what = if r.compensation {
                "compensation reply"
            } else {
                "reply"
            };
            let from = if r.service.is_empty() {
                String::new()
            } else {
                format!(" from {}", r.service)
            };
            format!("{what} {} #{}{from}: {outcome}", r.step, r.attempt)
        }
        journal_input::Kind::Timer(t) => {
            let kind = TimerKind::try_from(t.kind)
                .map(|k| {
                    k.as_str_name()
                        .trim_start_matches("TIMER_KIND_")
                        .to_string()
                })
                .unwrap_or_else(|_| format!("UNKNOWN({})", t.kind));
            format!("timer {kind} {} #{}", t.step, t.attempt)
        }
        journal_input::Kind::Cancel(c) => {
            if c.reason.is_empty() {
                "cancel".into()
            } else {
                format!("cancel: {}", c.reason)
            }
        }
        journal_input::Kind::Migrate(m) => {
            let mut map: Vec<_> = m.step_map.iter().map(|(a, b)| format!("{a}={b}")).collect();
            map.sort();
            if map.is_empty() {
                format!("migrate to {}", m.to_version)
            } else {
                format!("migrate to {} ({})", m.to_version, map.join(", "))
            }
        }
        journal_input::Kind::DeadlineExceeded(_) => "deadline exceeded".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_states_lose_their_prefix() {
        let mut t = Table::new(&["A", "LONG HEADER", "C"]);
        t.row(vec!["xxxx".into(), "y".into(), "z".into()]);
        assert_eq!(t.render(), "A     LONG HEADER  C\nxxxx  y            z\n");
        assert_eq!(state_name(SagaState::Compensated as i32), "COMPENSATED");
        assert_eq!(state_name(42), "UNKNOWN(42)");
        assert!(is_terminal(SagaState::Failed as i32));
        assert!(!is_terminal(SagaState::Compensating as i32));
    }

    #[test]
    fn history_shows_a_migration_with_its_versions_and_renamed_steps() {
        let record = JournalEvent {
            version: 4,
            input: Some(JournalInput {
                kind: Some(journal_input::Kind::Migrate(saga_proto::MigrateSaga {
                    to_version: "bbbb".into(),
                    step_map: [("ReserveStock".to_string(), "ReserveItems".to_string())]
                        .into_iter()
                        .collect(),
                })),
            }),
            events: vec![saga_proto::TransitionEvent {
                kind: TransitionEventKind::Migrated as i32,
                from_version: "aaaa".into(),
                to_version: "bbbb".into(),
                reason: "ReserveStock=ReserveItems".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = history(&[record]);
        assert!(
            text.contains("INPUT") && text.contains("migrate to bbbb (ReserveStock=ReserveItems)"),
            "{text}"
        );
        assert!(
            text.contains("MIGRATED")
                && text.contains("aaaa -> bbbb, renamed ReserveStock=ReserveItems"),
            "{text}"
        );
    }

    #[test]
    fn history_names_the_action_of_every_command_and_what_caused_each_transition() {
        use saga_proto::TransitionEvent;
        let ev =
            |kind: TransitionEventKind, step: &str, attempt: u32, action: &str| TransitionEvent {
                kind: kind as i32,
                step: step.into(),
                attempt,
                action: action.into(),
                ..Default::default()
            };
        let records = [
            JournalEvent {
                version: 1,
                input: Some(JournalInput {
                    kind: Some(journal_input::Kind::Start(Default::default())),
                }),
                events: vec![ev(
                    TransitionEventKind::StepStarted,
                    "ReserveStock",
                    1,
                    "ReserveStock",
                )],
                ..Default::default()
            },
            JournalEvent {
                version: 2,
                input: Some(JournalInput {
                    kind: Some(journal_input::Kind::Cancel(saga_proto::CancelSaga {
                        reason: "changed my mind".into(),
                    })),
                }),
                events: vec![ev(
                    TransitionEventKind::CompensationStepStarted,
                    "ReserveStock",
                    1,
                    "ReleaseStock",
                )],
                ..Default::default()
            },
            JournalEvent {
                version: 3,
                events: vec![ev(
                    TransitionEventKind::StepCompensated,
                    "ReserveStock",
                    0,
                    "",
                )],
                ..Default::default()
            },
        ];
        let text = history(&records);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[0],
            ["V", "TIME", "STEP", "ACTION", "ATTEMPT", "OUTCOME", "REASON"]
        );
        assert_eq!(
            rows[1],
            ["v1", "-", "ReserveStock", "ReserveStock", "1", "SENT"]
        );
        assert_eq!(rows[2][..3], ["v2", "-", "-"], "{text}");
        assert!(
            rows[2].contains(&"INPUT") && text.contains("changed my mind"),
            "{text}"
        );
        assert_eq!(
            rows[3],
            [
                "ReserveStock",
                "ReleaseStock",
                "1",
                "SENT",
                "(compensation)"
            ]
        );
        // The outcome of a compensation names the compensating action sent before it.
        assert_eq!(
            rows[4],
            [
                "v3",
                "-",
                "ReserveStock",
                "ReleaseStock",
                "STEP_COMPENSATED"
            ]
        );
    }
}
