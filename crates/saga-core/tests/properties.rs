//! Property tests of the state machine over arbitrary definitions and arbitrary
//! sequences of replies, duplicates, late replies, timer firings and cancels.

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;
use saga_core::definition::{
    Compensation, CompensationDefinition, SagaDefinition, SagaEvents, SagaKind, StepDefinition,
    StepKind,
};
use saga_core::machine::{
    fits, migrate, migration_problems, Effect, Input, Outcome, SagaEvent, SagaStatus, StepMap,
    StepStatus, TimerKey, TimerKind,
};
use saga_core::retry::RetryPolicy;
use saga_core::testing::Simulation;

fn policy() -> impl Strategy<Value = RetryPolicy> {
    prop_oneof![
        Just(RetryPolicy::none()),
        (1u32..4, 1u64..2_000, 10u32..40, 0u64..10_000, 0u32..=10).prop_map(
            |(retries, initial, mult10, extra, jitter10)| RetryPolicy {
                max_attempts: retries + 1,
                initial: Duration::from_millis(initial),
                multiplier: f64::from(mult10) / 10.0,
                max: Duration::from_millis(initial + extra),
                jitter: f64::from(jitter10) / 10.0,
            }
        ),
    ]
}

/// A long policy, as validation demands of retriable steps (bounded, so runs end).
fn long_policy() -> impl Strategy<Value = RetryPolicy> {
    (10u32..13, 1u64..100).prop_map(|(attempts, initial)| RetryPolicy {
        max_attempts: attempts,
        initial: Duration::from_millis(initial),
        multiplier: 2.0,
        max: Duration::from_millis(initial * 8),
        jitter: 0.2,
    })
}

/// Arbitrary valid definitions: compensatable steps, then (in `shape` 1 and 2) a pivot,
/// then (in `shape` 2) retriable steps.
fn definition() -> impl Strategy<Value = SagaDefinition> {
    let step = (
        1u64..10,
        policy(),
        0u8..4,
        policy(),
        1u64..10,
        long_policy(),
    );
    (
        prop::collection::vec(step, 1..5),
        0u8..3,
        any::<prop::sample::Index>(),
    )
        .prop_map(|(steps, shape, at)| {
            let n = steps.len();
            let pivot = match shape {
                0 => None,
                1 => Some(n - 1),
                _ => Some(at.index(n)),
            };
            let steps = steps
                .into_iter()
                .enumerate()
                .map(
                    |(i, (timeout, retry, comp, comp_retry, comp_timeout, long))| {
                        let kind = match pivot {
                            Some(p) if i == p => StepKind::Pivot,
                            Some(p) if i > p => StepKind::Retriable,
                            _ => StepKind::Compensatable,
                        };
                        StepDefinition {
                            name: format!("S{i}"),
                            service: format!("svc{i}"),
                            action: format!("do{i}"),
                            kind,
                            compensation: match comp {
                                _ if kind != StepKind::Compensatable => Compensation::Missing,
                                // Missing is only valid on the last step (validation refuses it elsewhere).
                                0 if i + 1 == n => Compensation::Missing,
                                1 => Compensation::NotNeeded,
                                _ => Compensation::Action(CompensationDefinition {
                                    action: format!("undo{i}"),
                                    timeout: Duration::from_secs(comp_timeout),
                                    retry: comp_retry,
                                }),
                            },
                            timeout: Duration::from_secs(timeout),
                            retry: if kind == StepKind::Retriable {
                                long
                            } else {
                                retry
                            },
                        }
                    },
                )
                .collect();
            SagaDefinition {
                name: "Prop".into(),
                kind: SagaKind::Orchestration,
                orchestrator: None,
                description: None,
                steps,
                timeout: None,
                deadline_buffer: Duration::from_secs(1),
                events: SagaEvents::default(),
                failure_scenarios: vec![],
                invariants: vec![],
                version_label: None,
            }
        })
}

/// One chaotic thing that happens to a running saga.
#[derive(Debug, Clone)]
enum Chaos {
    /// Answer the latest command.
    Reply(u8),
    /// Answer some earlier command again (duplicate or late reply).
    ReplyOld(usize, u8),
    /// Fire the earliest armed timer.
    FireNext,
    /// Fire a made-up, probably stale timer.
    FireStale(u8, u8, u32),
    Cancel,
    Deadline,
}

fn chaos() -> impl Strategy<Value = Chaos> {
    prop_oneof![
        4 => (0u8..3).prop_map(Chaos::Reply),
        2 => (any::<usize>(), 0u8..3).prop_map(|(i, o)| Chaos::ReplyOld(i, o)),
        3 => Just(Chaos::FireNext),
        1 => (0u8..5, 0u8..5, 0u32..6).prop_map(|(k, s, a)| Chaos::FireStale(k, s, a)),
        1 => Just(Chaos::Cancel),
        1 => Just(Chaos::Deadline),
    ]
}

fn outcome(code: u8) -> Outcome {
    match code {
        0 => Outcome::Ok { result: vec![7] },
        1 => Outcome::BusinessFailure {
            reason: "no".into(),
        },
        _ => Outcome::TechnicalFailure {
            reason: "boom".into(),
        },
    }
}

fn reply_to(c: &saga_core::machine::Command, code: u8) -> Input {
    if c.compensation {
        Input::CompensationReply {
            step: c.step.clone(),
            attempt: c.attempt,
            outcome: outcome(code),
        }
    } else {
        Input::StepReply {
            step: c.step.clone(),
            attempt: c.attempt,
            outcome: outcome(code),
        }
    }
}

/// Runs the chaos, then lets the saga finish: `responsive` answers every new command
/// with success, otherwise only timers fire (nobody answers).
fn run<'d>(def: &'d SagaDefinition, script: &[Chaos], responsive: bool) -> Simulation<'d> {
    let mut sim = chaos_only(def, script);
    drain(&mut sim, def, responsive);
    sim
}

/// Starts the saga and plays the chaos, without letting it finish.
fn chaos_only<'d>(def: &'d SagaDefinition, script: &[Chaos]) -> Simulation<'d> {
    let mut sim = Simulation::new(def, "prop-1");
    sim.feed(&Input::Start { payload: vec![] });
    for step in script {
        sim.now += 1;
        match step {
            Chaos::Reply(code) => {
                if let Some(c) = sim.commands.last().cloned() {
                    sim.feed(&reply_to(&c, *code));
                }
            }
            Chaos::ReplyOld(i, code) => {
                if !sim.commands.is_empty() {
                    let c = sim.commands[i % sim.commands.len()].clone();
                    sim.feed(&reply_to(&c, *code));
                }
            }
            Chaos::FireNext => {
                sim.fire_next_timer();
            }
            Chaos::FireStale(k, s, a) => {
                let kind = [
                    TimerKind::StepTimeout,
                    TimerKind::RetryBackoff,
                    TimerKind::CompensationTimeout,
                    TimerKind::CompensationBackoff,
                    TimerKind::Deadline,
                ][usize::from(*k)];
                sim.feed(&Input::TimerFired(TimerKey {
                    kind,
                    step: format!("S{s}"),
                    attempt: *a,
                }));
            }
            Chaos::Cancel => {
                sim.feed(&Input::Cancel {
                    reason: "user".into(),
                });
            }
            Chaos::Deadline => {
                sim.feed(&Input::DeadlineExceeded);
            }
        }
    }
    sim
}

/// Lets the saga finish: `responsive` answers every command not answered yet with
/// success, otherwise only timers fire; then feeds it late replies, a cancel and a
/// deadline, which a terminal saga absorbs.
fn drain(sim: &mut Simulation<'_>, def: &SagaDefinition, responsive: bool) {
    // Drain: timers keep firing until they stop being relevant.
    let mut answered = sim.commands.len();
    for _ in 0..10_000 {
        if sim.state.status.is_terminal() {
            break;
        }
        // A pivot nobody answers is retried for ever: a few attempts past its policy
        // show it.
        let retried_past = !responsive
            && sim.state.current_step.is_some_and(|i| {
                def.steps[i].kind == StepKind::Pivot
                    && sim.state.steps[i].attempts > def.steps[i].retry.max_attempts + 2
            });
        if retried_past {
            break;
        }
        if responsive && answered < sim.commands.len() {
            let c = sim.commands[answered].clone();
            answered += 1;
            sim.now += 1;
            sim.feed(&reply_to(&c, 0));
            continue;
        }
        if !sim.fire_next_timer() {
            break;
        }
    }
    // After the end, everything is absorbed: replay every command's reply and timers.
    if sim.state.status.is_terminal() {
        for c in sim.commands.clone() {
            sim.feed(&reply_to(&c, 0));
            sim.feed(&reply_to(&c, 2));
        }
        sim.feed(&Input::Cancel {
            reason: "late".into(),
        });
        sim.feed(&Input::DeadlineExceeded);
    }
}

fn check(def: &SagaDefinition, script: &[Chaos], responsive: bool) -> Result<(), TestCaseError> {
    let sim = run(def, script, responsive);
    let status = sim.state.status;
    let compensations_sent = sim.commands.iter().any(|c| c.compensation);

    // The saga always ends once timers stop being relevant, except a pivot nobody
    // answers: it may have happened, so it is tried again and never abandoned.
    if !status.is_terminal() {
        let current = sim.state.current_step.map(|i| def.steps[i].kind);
        prop_assert!(
            !responsive && current == Some(StepKind::Pivot) && !compensations_sent,
            "not terminal: {:?}",
            sim.state
        );
        prop_assert_eq!(status, SagaStatus::Running);
        let i = sim.state.current_step.unwrap();
        prop_assert!(sim.state.steps[i].attempts > def.steps[i].retry.max_attempts);
        let again = run(def, script, responsive);
        prop_assert_eq!(&again.events, &sim.events);
        return Ok(());
    }
    // Past the point of no return nothing is undone: once the pivot succeeded (or a
    // retriable step was sent) no compensation follows.
    let past_pivot = sim.events.iter().position(|e| match e {
        SagaEvent::StepSucceeded { step, .. } | SagaEvent::StepStarted { step, .. } => {
            let i: usize = step[1..].parse().unwrap();
            let kind = def.steps[i].kind;
            kind == StepKind::Retriable
                || (kind == StepKind::Pivot && matches!(e, SagaEvent::StepSucceeded { .. }))
        }
        _ => false,
    });
    if let Some(at) = past_pivot {
        let later_undo = sim.events[at..]
            .iter()
            .any(|e| matches!(e, SagaEvent::CompensationStarted { .. }));
        prop_assert!(!later_undo, "compensation after the point of no return");
        prop_assert!(status != SagaStatus::Compensated);
    }
    // No command, timer or event after the terminal state.
    prop_assert!(
        sim.effects_after_end.is_empty(),
        "{:?}",
        sim.effects_after_end
    );
    let finishes = sim
        .events
        .iter()
        .filter(|e| {
            matches!(
                e,
                SagaEvent::SagaCompleted
                    | SagaEvent::SagaCompensated { .. }
                    | SagaEvent::SagaFailed { .. }
            )
        })
        .count();
    prop_assert_eq!(finishes, 1);

    // Forward commands go step by step: step i only after step i-1 succeeded.
    let mut highest = 0usize;
    for c in sim.commands.iter().filter(|c| !c.compensation) {
        let i: usize = c.step[1..].parse().unwrap();
        prop_assert!(i <= highest + 1);
        if i > 0 {
            let previous = format!("S{}", i - 1);
            let succeeded = sim.events.iter().any(|e| {
                matches!(e,
                SagaEvent::StepSucceeded { step, .. } if *step == previous)
            });
            prop_assert!(succeeded);
        }
        highest = highest.max(i);
    }

    // Attempts never exceed the policy (a pivot in doubt goes past it on purpose).
    for c in &sim.commands {
        let i: usize = c.step[1..].parse().unwrap();
        if !c.compensation && def.steps[i].kind == StepKind::Pivot {
            continue;
        }
        let max = if c.compensation {
            def.steps[i]
                .compensation
                .action()
                .unwrap()
                .retry
                .max_attempts
        } else {
            def.steps[i].retry.max_attempts
        };
        prop_assert!(c.attempt >= 1 && c.attempt <= max, "{c:?} > {max}");
    }

    // Backoff delays stay within the policy's bounds.
    for e in &sim.events {
        let (step, next, delay, comp) = match e {
            SagaEvent::RetryScheduled {
                step,
                next_attempt,
                delay,
            } => (step, next_attempt, delay, false),
            SagaEvent::CompensationRetryScheduled {
                step,
                next_attempt,
                delay,
            } => (step, next_attempt, delay, true),
            _ => continue,
        };
        let i: usize = step[1..].parse().unwrap();
        let p = if comp {
            def.steps[i].compensation.action().unwrap().retry
        } else {
            def.steps[i].retry
        };
        let (low, high) = p.delay_bounds(next - 1);
        prop_assert!(
            low <= *delay && *delay <= high && *delay <= p.max,
            "{delay:?} not in {low:?}..={high:?}"
        );
    }

    // Compensations: exactly the completed-or-in-doubt steps, in reverse order.
    let started: BTreeSet<usize> = sim
        .commands
        .iter()
        .filter(|c| !c.compensation)
        .map(|c| c.step[1..].parse().unwrap())
        .collect();
    let refused: BTreeSet<usize> = sim
        .events
        .iter()
        .filter_map(|e| match e {
            SagaEvent::StepFailed { step, .. } => Some(step[1..].parse().unwrap()),
            _ => None,
        })
        .collect();
    let mut expected: Vec<usize> = if past_pivot.is_some() {
        Vec::new()
    } else {
        started
            .difference(&refused)
            .copied()
            .filter(|i| matches!(def.steps[*i].compensation, Compensation::Action(_)))
            .collect()
    };
    expected.reverse();
    let mut issued: Vec<usize> = Vec::new();
    for c in sim.commands.iter().filter(|c| c.compensation) {
        let i: usize = c.step[1..].parse().unwrap();
        if issued.last() != Some(&i) {
            prop_assert!(
                !issued.contains(&i),
                "compensation of S{i} resumed after moving on"
            );
            issued.push(i);
        }
    }
    match status {
        SagaStatus::Completed => {
            prop_assert!(issued.is_empty());
            prop_assert_eq!(started.len(), def.steps.len());
        }
        _ => prop_assert_eq!(&issued, &expected),
    }
    // Each compensation is driven to success at most once, and nothing follows it.
    for i in &issued {
        let name = format!("S{i}");
        let done: Vec<usize> = sim
            .events
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e, SagaEvent::StepCompensated { step } if *step == name))
            .map(|(n, _)| n)
            .collect();
        prop_assert!(done.len() <= 1);
    }
    // COMPENSATED means every compensation succeeded; FAILED names what did not.
    if status == SagaStatus::Compensated {
        let ok = sim
            .events
            .iter()
            .filter(|e| matches!(e, SagaEvent::StepCompensated { .. }))
            .count();
        prop_assert_eq!(ok, issued.len());
    }
    if status == SagaStatus::Failed {
        prop_assert!(sim.state.failure_reason.is_some());
    }

    // The same inputs give the same effects.
    let again = run(def, script, responsive);
    prop_assert_eq!(&again.commands, &sim.commands);
    prop_assert_eq!(&again.events, &sim.events);
    prop_assert_eq!(&again.state, &sim.state);
    Ok(())
}

/// `def` with a step `N` inserted at `at` (of the kind the steps around it allow) and,
/// when `rename`, every step `Si` but `keep` (the one in flight) renamed `Ti`, with the
/// map that says so.
fn next_version(
    def: &SagaDefinition,
    at: usize,
    rename: bool,
    keep: Option<&str>,
) -> (SagaDefinition, StepMap) {
    let mut to = def.clone();
    let n = def.steps.len();
    let at = at % (n + 1);
    let mut added = def.steps[at.min(n - 1)].clone();
    if at == n && added.kind == StepKind::Pivot {
        added.kind = StepKind::Retriable;
    }
    if at > 0 && def.steps[at - 1].kind != StepKind::Compensatable {
        added.kind = StepKind::Retriable;
    }
    if added.kind == StepKind::Pivot {
        added.kind = StepKind::Compensatable;
    }
    added.name = "N".into();
    added.service = "svcN".into();
    added.action = "doN".into();
    if added.kind != StepKind::Compensatable {
        added.compensation = Compensation::Missing;
    }
    to.steps.insert(at, added);
    let mut map = StepMap::new();
    if rename {
        for s in to
            .steps
            .iter_mut()
            .filter(|s| s.name != "N" && Some(s.name.as_str()) != keep)
        {
            let new = s.name.replacen('S', "T", 1);
            map.insert(s.name.clone(), new.clone());
            s.name = new;
        }
    }
    (to, map)
}

fn check_migration(
    def: &SagaDefinition,
    script: &[Chaos],
    at: usize,
    rename: bool,
) -> Result<(), TestCaseError> {
    let before = chaos_only(def, script);
    let keep = before.state.current_step_name().map(str::to_string);
    let (to, map) = next_version(def, at, rename, keep.as_deref());
    let mut state = before.state.clone();
    state.definition_version = "v1".into();
    let input = Input::Migrate {
        to: "v2".into(),
        step_map: map.clone(),
    };
    let problems = migration_problems(def, &to, &state, &map);
    let t = migrate(def, &to, "v2", &state, &map, &input, before.now + 1);
    prop_assert!(t.effects.is_empty(), "a migration sends nothing");
    prop_assert_eq!(
        &t,
        &migrate(def, &to, "v2", &state, &map, &input, before.now + 1)
    );
    let migrated = matches!(t.events[..], [SagaEvent::Migrated { .. }]);
    prop_assert_eq!(
        migrated,
        problems.is_empty(),
        "{:?} {:?}",
        problems,
        t.events
    );
    if !migrated {
        // Refused: the saga is where it was, on its version.
        prop_assert_eq!(&t.state.steps, &state.steps);
        prop_assert_eq!(&t.state.definition_version, "v1");
        prop_assert_eq!(t.state.status, state.status);
        return Ok(());
    }
    prop_assert_eq!(state.status, SagaStatus::Running);
    prop_assert!(fits(&to, &t.state).is_ok(), "{:?}", fits(&to, &t.state));
    // Every step that ran keeps its progress under its new name, and the added step
    // is never behind the saga.
    let added = to.steps.iter().position(|s| s.name == "N").unwrap();
    for (i, old) in state.steps.iter().enumerate() {
        let name = map.get(&old.name).unwrap_or(&old.name);
        let j = t.state.steps.iter().position(|s| &s.name == name).unwrap();
        if old.status != StepStatus::NotStarted {
            prop_assert!(j < added, "step {} ran, the added step comes before it", i);
            prop_assert_eq!(t.state.steps[j].status, old.status);
            prop_assert_eq!(t.state.steps[j].attempts, old.attempts);
        }
    }
    if let Some(i) = state.current_step {
        prop_assert_eq!(
            &to.steps[t.state.current_step.unwrap()].name,
            &state.steps[i].name
        );
    }
    // The saga goes on, on the new version, to its end.
    let mut after = Simulation::new(&to, "prop-1");
    after.state = t.state.clone();
    after.now = before.now + 1;
    after.timers = before.timers.clone();
    after.commands = before.commands.clone();
    drain(&mut after, &to, true);
    prop_assert!(after.state.status.is_terminal(), "{:?}", after.state);
    prop_assert!(after.effects_after_end.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn a_migration_is_taken_only_where_the_saga_stands_allows_and_the_saga_goes_on_to_its_end(
        def in definition(),
        script in prop::collection::vec(chaos(), 0..8),
        at in any::<usize>(),
        rename in any::<bool>(),
    ) {
        check_migration(&def, &script, at, rename)?;
    }

    #[test]
    fn sagas_end_and_compensate_exactly_what_ran(
        def in definition(),
        script in prop::collection::vec(chaos(), 0..40),
        responsive in any::<bool>(),
    ) {
        check(&def, &script, responsive)?;
    }

    #[test]
    fn backoff_stays_within_bounds(p in policy(), attempt in 1u32..50, seed in any::<u64>()) {
        let d = p.delay(attempt, seed);
        let (low, high) = p.delay_bounds(attempt);
        prop_assert!(low <= d && d <= high && high <= p.max.max(p.initial));
        prop_assert_eq!(d, p.delay(attempt, seed));
    }
}

#[test]
fn a_saga_that_nobody_answers_ends_failed_or_compensated_never_hangs() {
    let def = saga_core::definition::parse_definition(
        "t.yaml",
        include_str!("../../../sagas/travel-booking.yaml"),
    )
    .unwrap()
    .definition;
    let sim = run(&def, &[], false);
    // The first step times out 4 times, then its compensation times out 10 times.
    assert_eq!(sim.state.status, SagaStatus::Failed);
    assert_eq!(sim.commands.iter().filter(|c| !c.compensation).count(), 4);
    assert!(sim.commands.iter().all(|c| c.step == "ReserveFlight"));
    assert!(matches!(
        sim.events.last(),
        Some(SagaEvent::InputIgnored { .. }) | Some(SagaEvent::SagaFailed { .. })
    ));
    let _ = Effect::Finish {
        status: SagaStatus::Failed,
    };
}
