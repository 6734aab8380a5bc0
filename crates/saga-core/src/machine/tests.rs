//! Given/when/then tests, one group per rule of the state machine.

use std::time::Duration;

use super::*;
use crate::definition::{parse_definition, StepKind};
use crate::testing::*;
use crate::SagaDefinition;

fn travel() -> SagaDefinition {
    parse_definition(
        "travel-booking.yaml",
        include_str!("../../../../sagas/travel-booking.yaml"),
    )
    .unwrap()
    .definition
}

fn checkout() -> SagaDefinition {
    parse_definition(
        "order-checkout.yaml",
        include_str!("../../../../sagas/order-checkout.yaml"),
    )
    .unwrap()
    .definition
}

const FLIGHT: &str = "ReserveFlight";
const HOTEL: &str = "ReserveHotel";
const PAY: &str = "ChargePayment";

fn comp_ok(step: &str, attempt: u32) -> Input {
    compensated(step, attempt, Outcome::Ok { result: vec![] })
}

#[test]
fn start_sends_the_first_command_and_arms_timeout_and_deadline() {
    let def = travel();
    let then = SagaTest::new(def.clone())
        .when(start())
        .then_status(SagaStatus::Running)
        .then_commands(&[(FLIGHT, "reserveFlight", 1)])
        .then_step(FLIGHT, StepStatus::Running);
    let effects = &then.transition().effects;
    assert!(effects.iter().any(|e| matches!(e,
        Effect::ArmTimer { key, after, .. } if key.kind == TimerKind::StepTimeout && *after == Duration::from_secs(10))));
    assert!(effects.iter().any(|e| matches!(e,
        Effect::ArmTimer { key, after, .. } if key.kind == TimerKind::Deadline && *after == def.deadline())));
}

#[test]
fn happy_path_completes_in_order_and_announces_the_event() {
    let then = SagaTest::new(checkout())
        .given([start(), ok("ReserveStock", 1), ok("ChargePayment", 1)])
        .when(ok("ConfirmOrder", 1))
        .then_status(SagaStatus::Completed)
        .then_event(SagaEvent::SagaCompleted);
    let effects = &then.transition().effects;
    assert!(effects.contains(&Effect::EmitEvent(DomainEvent {
        domain: "orders".into(),
        name: "OrderConfirmed".into(),
        reason: None,
    })));
    assert_eq!(
        effects.last(),
        Some(&Effect::Finish {
            status: SagaStatus::Completed
        })
    );
}

// Rule 1: compensation in reverse order over completed and in-doubt steps; a step that
// answered a business failure is not compensated.

#[test]
fn rule1_business_failure_compensates_earlier_steps_in_reverse() {
    SagaTest::new(travel())
        .given([start(), ok(FLIGHT, 1), ok(HOTEL, 1)])
        .when(business(PAY, 1, "card declined"))
        .then_status(SagaStatus::Compensating)
        .then_step(PAY, StepStatus::BusinessFailed)
        .then_commands(&[(HOTEL, "cancelHotelReservation", 1)]);
    SagaTest::new(travel())
        .given([
            start(),
            ok(FLIGHT, 1),
            ok(HOTEL, 1),
            business(PAY, 1, "card declined"),
        ])
        .when(comp_ok(HOTEL, 1))
        .then_commands(&[(FLIGHT, "cancelFlightReservation", 1)]);
    let then = SagaTest::new(travel())
        .given([
            start(),
            ok(FLIGHT, 1),
            ok(HOTEL, 1),
            business(PAY, 1, "card declined"),
            comp_ok(HOTEL, 1),
        ])
        .when(comp_ok(FLIGHT, 1))
        .then_status(SagaStatus::Compensated)
        .then_commands(&[]);
    assert_eq!(
        then.transition().state.compensation_reason.as_deref(),
        Some("step ChargePayment failed: card declined")
    );
}

#[test]
fn rule1_an_in_doubt_step_is_compensated_first() {
    // ChargePayment has retryPolicy none: its one timeout leaves it in doubt.
    SagaTest::new(travel())
        .given([start(), ok(FLIGHT, 1), ok(HOTEL, 1)])
        .when(fired(TimerKind::StepTimeout, PAY, 1))
        .then_step(PAY, StepStatus::Compensating)
        .then_status(SagaStatus::Compensating)
        .then_commands(&[(PAY, "refundPayment", 1)]);
}

#[test]
fn rule1_first_step_business_failure_compensates_nothing() {
    SagaTest::new(travel())
        .given([start()])
        .when(business(FLIGHT, 1, "no seats"))
        .then_status(SagaStatus::Compensated)
        .then_commands(&[]);
}

#[test]
fn rule1_step_declaring_no_compensation_is_skipped() {
    let def = parse_definition(
        "t.yaml",
        "saga:\n  name: S\n  steps:\n    - {name: A, service: s, action: a, compensation: none}\n    - {name: B, service: s, action: b}\n",
    )
    .unwrap()
    .definition;
    SagaTest::new(def)
        .given([start(), ok("A", 1)])
        .when(business("B", 1, "no"))
        .then_status(SagaStatus::Compensated)
        .then_step("A", StepStatus::CompensationSkipped)
        .then_commands(&[]);
}

/// The checkout with its last step declared compensatable (no pivot): the behaviour
/// before step kinds, still available when written.
fn checkout_without_pivot() -> SagaDefinition {
    let text = include_str!("../../../../sagas/order-checkout.yaml")
        .replace("kind: pivot", "kind: compensatable");
    parse_definition("order-checkout.yaml", &text)
        .unwrap()
        .definition
}

#[test]
fn rule1_last_compensatable_step_in_doubt_without_compensation_ends_failed_after_undoing_the_rest()
{
    let def = checkout_without_pivot();
    let mut given = vec![start(), ok("ReserveStock", 1), ok("ChargePayment", 1)];
    for attempt in 1..=5 {
        given.push(fired(TimerKind::StepTimeout, "ConfirmOrder", attempt));
        given.push(fired(TimerKind::RetryBackoff, "ConfirmOrder", attempt));
    }
    let t = SagaTest::new(def.clone())
        .given(given.clone())
        .when(fired(TimerKind::StepTimeout, "ConfirmOrder", 6))
        .then_step("ConfirmOrder", StepStatus::CompensationFailed)
        .then_commands(&[("ChargePayment", "RefundPayment", 1)]);
    assert_eq!(t.transition().state.status, SagaStatus::Compensating);
    given.push(fired(TimerKind::StepTimeout, "ConfirmOrder", 6));
    given.push(compensated(
        "ChargePayment",
        1,
        Outcome::Ok { result: vec![] },
    ));
    SagaTest::new(def)
        .given(given)
        .when(compensated(
            "ReserveStock",
            1,
            Outcome::Ok { result: vec![] },
        ))
        .then_status(SagaStatus::Failed);
}

// Step kinds: compensatable steps, the pivot (point of no return), retriable steps.

#[test]
fn kinds_a_pivot_in_doubt_is_retried_past_its_policy_and_nothing_is_undone() {
    let def = checkout();
    assert_eq!(def.steps[2].kind, StepKind::Pivot);
    let mut given = vec![start(), ok("ReserveStock", 1), ok("ChargePayment", 1)];
    for attempt in 1..=6 {
        given.push(fired(TimerKind::StepTimeout, "ConfirmOrder", attempt));
        given.push(fired(TimerKind::RetryBackoff, "ConfirmOrder", attempt));
    }
    // exponentialBackoff(5) allows 6 attempts; the pivot goes on with a 7th and 8th.
    let t = SagaTest::new(def.clone())
        .given(given.clone())
        .when(fired(TimerKind::StepTimeout, "ConfirmOrder", 7))
        .then_status(SagaStatus::Running)
        .then_step("ConfirmOrder", StepStatus::WaitingRetry)
        .then_commands(&[]);
    let delay = t
        .transition()
        .events
        .iter()
        .find_map(|e| match e {
            SagaEvent::RetryScheduled {
                next_attempt: 8,
                delay,
                ..
            } => Some(*delay),
            _ => None,
        })
        .expect("an 8th attempt is scheduled");
    assert!(delay <= def.steps[2].retry.max, "{delay:?}");
    // The deadline long past: not acted on; the late answer completes the saga.
    given.push(fired(TimerKind::Deadline, "", 0));
    given.push(fired(TimerKind::StepTimeout, "ConfirmOrder", 7));
    given.push(fired(TimerKind::RetryBackoff, "ConfirmOrder", 7));
    SagaTest::new(def)
        .given(given)
        .when(ok("ConfirmOrder", 8))
        .then_status(SagaStatus::Completed)
        .then_commands(&[]);
}

#[test]
fn kinds_a_pivot_refusal_undoes_the_steps_before_it() {
    SagaTest::new(checkout())
        .given([start(), ok("ReserveStock", 1), ok("ChargePayment", 1)])
        .when(business("ConfirmOrder", 1, "order already cancelled"))
        .then_status(SagaStatus::Compensating)
        .then_commands(&[("ChargePayment", "RefundPayment", 1)]);
}

const SHIPPING: &str = r#"
saga:
  name: Shipping
  steps:
    - name: Reserve
      service: stock
      action: Reserve
      compensation: Release
      timeout: 1s
    - name: Charge
      service: payment
      action: Charge
      kind: pivot
      timeout: 1s
      retryPolicy: exponentialBackoff(2)
    - name: Ship
      service: shipping
      action: Ship
      timeout: 1s
      retryPolicy: {max_attempts: 12, initial: 100ms, multiplier: 2, max: 1s, jitter: 0}
    - name: Notify
      service: mail
      action: Notify
      timeout: 1s
      retryPolicy: unbounded
"#;

fn shipping() -> SagaDefinition {
    parse_definition("shipping.yaml", SHIPPING)
        .unwrap()
        .definition
}

#[test]
fn kinds_steps_after_the_pivot_default_to_retriable_and_the_deadline_ignores_them() {
    let def = shipping();
    let kinds: Vec<StepKind> = def.steps.iter().map(|s| s.kind).collect();
    use StepKind::*;
    assert_eq!(kinds, [Compensatable, Pivot, Retriable, Retriable]);
    // The derived deadline covers the steps up to the pivot only.
    assert!(
        def.deadline() < Duration::from_secs(30),
        "{:?}",
        def.deadline()
    );
    let given = [start(), ok("Reserve", 1), ok("Charge", 1)];
    let t = SagaTest::new(def.clone())
        .given(given.clone())
        .when(fired(TimerKind::Deadline, "", 0))
        .then_status(SagaStatus::Running)
        .then_commands(&[]);
    assert!(t.transition().is_ignored());
    SagaTest::new(def)
        .given(given)
        .when(Input::Cancel {
            reason: "user".into(),
        })
        .then_ignored();
}

#[test]
fn kinds_a_retriable_step_is_retried_with_capped_backoff_and_never_compensated() {
    let def = shipping();
    let mut given = vec![start(), ok("Reserve", 1), ok("Charge", 1), ok("Ship", 1)];
    for attempt in 1..=40 {
        given.push(technical("Notify", attempt, "mail server down"));
        given.push(fired(TimerKind::RetryBackoff, "Notify", attempt));
    }
    let t = SagaTest::new(def.clone())
        .given(given.clone())
        .when(technical("Notify", 41, "mail server down"))
        .then_status(SagaStatus::Running)
        .then_step("Notify", StepStatus::WaitingRetry);
    assert!(t.transition().events.iter().any(|e| matches!(
        e,
        SagaEvent::RetryScheduled { next_attempt: 42, delay, .. } if *delay <= Duration::from_secs(30)
    )));
    SagaTest::new(def)
        .given(given)
        .when(ok("Notify", 41))
        .then_status(SagaStatus::Completed);
}

#[test]
fn kinds_a_retriable_step_that_refuses_or_runs_out_fails_the_saga_undoing_nothing() {
    let def = shipping();
    let given = vec![start(), ok("Reserve", 1), ok("Charge", 1)];
    let t = SagaTest::new(def.clone())
        .given(given.clone())
        .when(business("Ship", 1, "address unknown"))
        .then_status(SagaStatus::Failed)
        .then_commands(&[]);
    let why = t.transition().state.failure_reason.clone().unwrap();
    assert!(
        why.contains("retriable step Ship refused: address unknown"),
        "{why}"
    );
    let mut spent = given;
    for attempt in 1..=11 {
        spent.push(fired(TimerKind::StepTimeout, "Ship", attempt));
        spent.push(fired(TimerKind::RetryBackoff, "Ship", attempt));
    }
    let t = SagaTest::new(def)
        .given(spent)
        .when(fired(TimerKind::StepTimeout, "Ship", 12))
        .then_status(SagaStatus::Failed)
        .then_commands(&[]);
    let why = t.transition().state.failure_reason.clone().unwrap();
    assert!(why.contains("gave up after 12 attempt(s)"), "{why}");
}

#[test]
fn history_events_name_the_action_of_every_command() {
    let def = travel();
    let t = SagaTest::new(def.clone())
        .given([start(), ok(FLIGHT, 1)])
        .when(business(HOTEL, 1, "full"));
    assert!(t.transition().events.iter().any(|e| matches!(
        e,
        SagaEvent::CompensationStepStarted { step, attempt: 1, action }
            if step == FLIGHT && action == "cancelFlightReservation"
    )));
    let t = SagaTest::new(def).when(start());
    assert!(t.transition().events.iter().any(|e| matches!(
        e,
        SagaEvent::StepStarted { step, attempt: 1, action }
            if step == FLIGHT && action == "reserveFlight"
    )));
}

#[test]
fn a_state_that_does_not_fit_its_definition_fails_the_saga_instead_of_panicking() {
    let travel = travel();
    let mut sim = Simulation::new(&travel, "s-1");
    sim.feed(&start());
    sim.feed(&ok(FLIGHT, 1));
    // The definition changed under the saga: its second step removed.
    let mut shorter = travel.clone();
    shorter.steps.remove(1);
    for input in [
        ok(HOTEL, 1),
        fired(TimerKind::StepTimeout, HOTEL, 1),
        Input::Cancel { reason: "x".into() },
    ] {
        let t = apply(&shorter, &sim.state, &input, 10);
        assert_eq!(t.state.status, SagaStatus::Failed);
        let why = t.state.failure_reason.clone().unwrap();
        assert!(
            why.starts_with("state does not fit its definition: the saga has 3 steps"),
            "{why}"
        );
        assert_eq!(t.commands().count(), 0);
    }
    // A renamed step is caught too, and an ended saga stays as it is.
    let mut renamed = travel.clone();
    renamed.steps[1].name = "BookHotel".into();
    let t = apply(&renamed, &sim.state, &ok(HOTEL, 1), 10);
    assert!(t
        .state
        .failure_reason
        .unwrap()
        .contains("`ReserveHotel` in the saga and `BookHotel`"));
    let failed = apply(&shorter, &sim.state, &ok(HOTEL, 1), 10).state;
    assert!(apply(&shorter, &failed, &ok(HOTEL, 1), 11).is_ignored());
}

// Rule 2: retries with backoff; business failures not retried; compensations retried
// until they succeed or their limit moves the saga to FAILED.

#[test]
fn rule2_timeout_schedules_a_retry_within_the_backoff_bounds() {
    let def = travel();
    let then = SagaTest::new(def.clone())
        .given([start()])
        .when(fired(TimerKind::StepTimeout, FLIGHT, 1))
        .then_step(FLIGHT, StepStatus::WaitingRetry)
        .then_commands(&[]);
    let (low, high) = def.steps[0].retry.delay_bounds(1);
    let delay = then
        .transition()
        .effects
        .iter()
        .find_map(|e| match e {
            Effect::ArmTimer { key, after, .. } if key.kind == TimerKind::RetryBackoff => {
                Some(*after)
            }
            _ => None,
        })
        .expect("a backoff timer");
    assert!(
        low <= delay && delay <= high,
        "{delay:?} not in {low:?}..={high:?}"
    );
    SagaTest::new(def)
        .given([start(), fired(TimerKind::StepTimeout, FLIGHT, 1)])
        .when(fired(TimerKind::RetryBackoff, FLIGHT, 1))
        .then_commands(&[(FLIGHT, "reserveFlight", 2)])
        .then_step(FLIGHT, StepStatus::Running);
}

#[test]
fn rule2_technical_failures_are_retried_up_to_the_policy_then_in_doubt() {
    // exponentialBackoff(3): 4 attempts.
    let mut given = vec![start()];
    for attempt in 1..=3 {
        given.push(technical(FLIGHT, attempt, "db down"));
        given.push(fired(TimerKind::RetryBackoff, FLIGHT, attempt));
    }
    SagaTest::new(travel())
        .given(given)
        .when(technical(FLIGHT, 4, "db down"))
        .then_step(FLIGHT, StepStatus::Compensating)
        .then_commands(&[(FLIGHT, "cancelFlightReservation", 1)]);
}

#[test]
fn rule2_business_failures_are_not_retried() {
    SagaTest::new(travel())
        .given([start(), ok(FLIGHT, 1)])
        .when(business(HOTEL, 1, "fully booked"))
        .then_step(HOTEL, StepStatus::BusinessFailed)
        .then_commands(&[(FLIGHT, "cancelFlightReservation", 1)]);
}

#[test]
fn rule2_compensations_retry_then_fail_the_saga_for_an_operator() {
    let def = travel();
    let limit = def.steps[0]
        .compensation
        .action()
        .unwrap()
        .retry
        .max_attempts;
    let mut given = vec![start(), business(HOTEL, 1, "x"), ok(FLIGHT, 1)];
    // Hotel's reply came before Flight finished: ignored. Then Hotel really fails.
    given.push(business(HOTEL, 1, "fully booked"));
    for attempt in 1..limit {
        given.push(compensated(
            FLIGHT,
            attempt,
            Outcome::TechnicalFailure {
                reason: "flaky".into(),
            },
        ));
        given.push(fired(TimerKind::CompensationBackoff, FLIGHT, attempt));
    }
    let then = SagaTest::new(def)
        .given(given)
        .when(fired(TimerKind::CompensationTimeout, FLIGHT, limit))
        .then_status(SagaStatus::Failed)
        .then_step(FLIGHT, StepStatus::CompensationFailed)
        .then_commands(&[]);
    let reason = then.transition().state.failure_reason.clone().unwrap();
    assert!(
        reason.contains("ReserveFlight") && reason.contains("gave up after 10"),
        "{reason}"
    );
}

#[test]
fn rule2_a_refused_compensation_does_not_stop_the_others() {
    SagaTest::new(travel())
        .given([
            start(),
            ok(FLIGHT, 1),
            ok(HOTEL, 1),
            business(PAY, 1, "declined"),
        ])
        .when(compensated(
            HOTEL,
            1,
            Outcome::BusinessFailure {
                reason: "already checked in".into(),
            },
        ))
        .then_step(HOTEL, StepStatus::CompensationFailed)
        .then_commands(&[(FLIGHT, "cancelFlightReservation", 1)])
        .then_status(SagaStatus::Compensating);
}

// Rule 3: idempotency key stable across retries; the attempt travels beside it.

#[test]
fn rule3_idempotency_key_is_stable_across_attempts() {
    let def = travel();
    let first = SagaTest::new(def.clone()).when(start());
    let retry = SagaTest::new(def)
        .given([start(), technical(FLIGHT, 1, "x")])
        .when(fired(TimerKind::RetryBackoff, FLIGHT, 1));
    let a = first.transition().commands().next().unwrap().clone();
    let b = retry.transition().commands().next().unwrap().clone();
    assert_eq!(a.idempotency_key, "saga-1/ReserveFlight/reserveFlight");
    assert_eq!(a.idempotency_key, b.idempotency_key);
    assert_eq!((a.attempt, b.attempt), (1, 2));
}

#[test]
fn rule3_a_late_success_of_an_earlier_attempt_counts() {
    SagaTest::new(travel())
        .given([
            start(),
            technical(FLIGHT, 1, "x"),
            fired(TimerKind::RetryBackoff, FLIGHT, 1),
        ])
        .when(ok(FLIGHT, 1))
        .then_step(FLIGHT, StepStatus::Completed)
        .then_commands(&[(HOTEL, "reserveHotel", 1)]);
}

#[test]
fn rule3_a_stale_technical_failure_is_ignored() {
    SagaTest::new(travel())
        .given([
            start(),
            fired(TimerKind::StepTimeout, FLIGHT, 1),
            fired(TimerKind::RetryBackoff, FLIGHT, 1),
        ])
        .when(technical(FLIGHT, 1, "late"))
        .then_ignored();
}

// Rule 4: the deadline is the steps' worst case plus a buffer; past it, compensate.

#[test]
fn rule4_deadline_is_derived_and_compensates_what_ran() {
    let def = travel();
    // Flight and hotel: 4 x 10s + 0.5s + 1s + 2s each; payment: 5s; buffer 5s.
    assert_eq!(
        def.deadline(),
        Duration::from_millis(2 * 43_500 + 5_000 + 5_000)
    );
    SagaTest::new(def)
        .given([start(), ok(FLIGHT, 1)])
        .when(Input::DeadlineExceeded)
        .then_status(SagaStatus::Compensating)
        .then_step(HOTEL, StepStatus::Compensating)
        .then_commands(&[(HOTEL, "cancelHotelReservation", 1)]);
}

#[test]
fn rule4_the_deadline_timer_is_cancelled_once_compensating() {
    SagaTest::new(travel())
        .given([start(), business(FLIGHT, 1, "x")])
        .when(fired(TimerKind::Deadline, "", 0))
        .then_ignored();
}

#[test]
fn cancel_compensates_what_ran_and_is_a_no_op_when_compensating() {
    SagaTest::new(travel())
        .given([start(), ok(FLIGHT, 1)])
        .when(Input::Cancel {
            reason: "customer changed plans".into(),
        })
        .then_status(SagaStatus::Compensating)
        .then_commands(&[(HOTEL, "cancelHotelReservation", 1)]);
    SagaTest::new(travel())
        .given([start(), business(FLIGHT, 1, "x")])
        .when(Input::Cancel {
            reason: "again".into(),
        })
        .then_ignored();
}

// Rule 5: terminal states absorb every later input.

#[test]
fn rule5_terminal_states_absorb_everything() {
    let completed = [start(), ok(FLIGHT, 1), ok(HOTEL, 1), ok(PAY, 1)];
    for input in [
        ok(PAY, 1),
        business(HOTEL, 1, "late"),
        technical(FLIGHT, 2, "late"),
        comp_ok(FLIGHT, 1),
        fired(TimerKind::StepTimeout, PAY, 1),
        fired(TimerKind::Deadline, "", 0),
        Input::Cancel {
            reason: "too late".into(),
        },
        Input::DeadlineExceeded,
        start(),
    ] {
        SagaTest::new(travel())
            .given(completed.clone())
            .when(input)
            .then_ignored()
            .then_status(SagaStatus::Completed);
    }
}

// Rule 6: determinism (every `when` above also checks it).

#[test]
fn rule6_the_same_inputs_give_the_same_effects() {
    let def = travel();
    let run = || {
        let mut sim = Simulation::new(&def, "det-1");
        sim.run(
            |c| match (c.step.as_str(), c.attempt) {
                (FLIGHT, 1) => None,
                (HOTEL, _) => Some(Outcome::TechnicalFailure { reason: "x".into() }),
                _ => Some(Outcome::Ok { result: vec![1] }),
            },
            1000,
        );
        (sim.commands, sim.events, sim.state)
    };
    assert_eq!(run(), run());
}

#[test]
fn unknown_steps_and_premature_replies_are_ignored() {
    SagaTest::new(travel())
        .given([start()])
        .when(ok("NoSuchStep", 1))
        .then_ignored();
    SagaTest::new(travel())
        .given([start()])
        .when(ok(HOTEL, 1))
        .then_ignored();
    SagaTest::new(travel())
        .given([start()])
        .when(ok(FLIGHT, 2))
        .then_ignored();
    SagaTest::new(travel()).when(ok(FLIGHT, 1)).then_ignored();
}

// The seed's three failure scenarios, run end to end.

#[test]
fn travel_booking_seed_scenarios_run_the_seed_compensations() {
    let def = travel();
    assert_eq!(def.failure_scenarios.len(), 3);
    for scenario in &def.failure_scenarios {
        let mut sim = Simulation::new(&def, "trip-1");
        let failing = scenario.step.clone();
        let status = sim.run(
            |c| {
                Some(if !c.compensation && c.step == failing {
                    Outcome::BusinessFailure {
                        reason: format!("{} refused", c.step),
                    }
                } else {
                    Outcome::Ok { result: vec![] }
                })
            },
            1000,
        );
        assert_eq!(status, SagaStatus::Compensated, "{}", scenario.name);
        assert_eq!(
            sim.compensations(),
            scenario.compensations,
            "{}",
            scenario.name
        );
    }
}

#[test]
fn a_cancel_or_the_deadline_during_a_step_that_cannot_be_undone_lets_it_finish() {
    let def = checkout();
    let given = vec![start(), ok("ReserveStock", 1), ok("ChargePayment", 1)];
    let t = SagaTest::new(def.clone())
        .given(given.clone())
        .when(Input::Cancel {
            reason: "changed my mind".into(),
        })
        .then_status(SagaStatus::Running)
        .then_step("ConfirmOrder", StepStatus::Running)
        .then_commands(&[]);
    assert!(t.transition().is_ignored(), "{:?}", t.transition().events);
    let mut later = given.clone();
    later.push(Input::Cancel {
        reason: "changed my mind".into(),
    });
    SagaTest::new(def.clone())
        .given(later)
        .when(ok("ConfirmOrder", 1))
        .then_status(SagaStatus::Completed);
    let t = SagaTest::new(def)
        .given(given)
        .when(fired(TimerKind::Deadline, "", 0))
        .then_status(SagaStatus::Running)
        .then_commands(&[]);
    assert!(t.transition().is_ignored());
}
