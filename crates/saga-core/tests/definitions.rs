//! Loading the shipped definitions, and the messages broken ones get.

use std::path::Path;
use std::time::Duration;

use saga_core::definition::{
    load_file, mermaid, parse_definition, Compensation, FailureKind, InvariantKind,
};

fn sagas_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../sagas"))
}

#[test]
fn the_seed_travel_booking_loads_as_written() {
    let loaded = load_file(&sagas_dir().join("travel-booking.yaml")).unwrap();
    let def = loaded.definition;
    assert_eq!(def.name, "TravelBookingSaga");
    assert_eq!(def.orchestrator.as_deref(), Some("BookingService"));
    let names: Vec<&str> = def.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["ReserveFlight", "ReserveHotel", "ChargePayment"]);
    assert_eq!(
        def.steps[0].retry.max_attempts, 4,
        "exponentialBackoff(3) = 3 retries"
    );
    assert_eq!(def.steps[2].retry.max_attempts, 1, "none = no retry");
    assert_eq!(def.steps[2].timeout, Duration::from_secs(5));
    let scenario_steps: Vec<&str> = def
        .failure_scenarios
        .iter()
        .map(|s| s.step.as_str())
        .collect();
    assert_eq!(
        scenario_steps,
        ["ReserveFlight", "ReserveHotel", "ChargePayment"]
    );
    let kinds: Vec<InvariantKind> = def.invariants.iter().map(|i| i.kind).collect();
    assert_eq!(
        kinds,
        [
            InvariantKind::IdempotentCompensations,
            InvariantKind::ReverseCompensationOrder,
            InvariantKind::TimeoutCoversSteps
        ]
    );
    assert!(!loaded
        .notes
        .iter()
        .any(|n| n.message.contains("not checked")));
}

#[test]
fn order_checkout_loads_with_map_policies_and_events() {
    let loaded = load_file(&sagas_dir().join("order-checkout.yaml")).unwrap();
    let def = loaded.definition;
    let pay = &def.steps[1];
    assert_eq!(pay.retry.max_attempts, 3);
    assert_eq!(pay.retry.initial, Duration::from_secs(1));
    assert_eq!(pay.retry.max, Duration::from_secs(10));
    let refund = pay.compensation.action().unwrap();
    assert_eq!(refund.action, "RefundPayment");
    assert_eq!(refund.retry.max_attempts, 20);
    assert_eq!(def.steps[2].compensation, Compensation::Missing);
    assert_eq!(def.events.domain, "orders");
    assert_eq!(def.events.on_completed.as_deref(), Some("OrderConfirmed"));
    assert_eq!(def.events.on_compensated.as_deref(), Some("OrderCancelled"));
    // The unknown invariant is kept as documentation and reported as such.
    assert_eq!(def.invariants[3].kind, InvariantKind::Documentation);
    assert!(loaded
        .notes
        .iter()
        .any(|n| n.location == "invariants[3]" && n.message.contains("kept as documentation")));
}

#[test]
fn the_derived_plan_matches_the_seed_table() {
    let def = load_file(&sagas_dir().join("travel-booking.yaml"))
        .unwrap()
        .definition;
    let plan = |i, k| def.plan_for(i, k).compensations;
    assert!(plan(0, FailureKind::Business).is_empty());
    assert_eq!(plan(1, FailureKind::Business), ["cancelFlightReservation"]);
    assert_eq!(
        plan(2, FailureKind::Business),
        ["cancelHotelReservation", "cancelFlightReservation"]
    );
    assert_eq!(
        plan(2, FailureKind::InDoubt),
        [
            "refundPayment",
            "cancelHotelReservation",
            "cancelFlightReservation"
        ]
    );
}

/// Parses `yaml` and returns the whole error text.
fn errors(yaml: &str) -> String {
    match parse_definition("broken.yaml", yaml) {
        Ok(_) => panic!("expected errors for:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

fn saga(steps: &str) -> String {
    format!("saga:\n  name: S\n  steps:\n{steps}")
}

const GOOD_A: &str =
    "    - name: A\n      service: svc\n      action: a\n      compensation: undoA\n";
const GOOD_B: &str = "    - name: B\n      service: svc\n      action: b\n";

fn assert_mentions(text: &str, parts: &[&str]) {
    for p in parts {
        assert!(text.contains(p), "`{p}` missing from:\n{text}");
    }
}

#[test]
fn unknown_keys_are_named_with_a_suggestion() {
    let e = errors(&saga(&format!("{GOOD_A}      timout: 5s\n{GOOD_B}")));
    assert_mentions(
        &e,
        &[
            "broken.yaml: step `A` (steps[0])",
            "unknown key `timout`",
            "did you mean `timeout`?",
        ],
    );
    let e = errors("saga:\n  name: S\n  stepz: []\n");
    assert_mentions(
        &e,
        &["broken.yaml: saga: unknown key `stepz` (did you mean `steps`?)"],
    );
    let e = errors(&saga(&format!(
        "{GOOD_A}      retryPolicy: {{max_attempts: 3, maxDelay: 5s}}\n{GOOD_B}"
    )));
    assert_mentions(
        &e,
        &["step `A` (steps[0]) retryPolicy", "unknown key `maxDelay`"],
    );
}

#[test]
fn duplicate_step_names_are_refused() {
    let e = errors(&saga(&format!("{GOOD_A}{GOOD_A}{GOOD_B}")));
    assert_mentions(
        &e,
        &["step `A` (steps[1])", "duplicate step name (also steps[0])"],
    );
}

#[test]
fn missing_service_or_action_is_named() {
    let e = errors(&saga(
        "    - name: A\n      action: a\n      compensation: u\n    - name: B\n      service: s\n",
    ));
    assert_mentions(
        &e,
        &[
            "step `A` (steps[0]): missing `service`",
            "step `B` (steps[1]): missing `action`",
        ],
    );
}

#[test]
fn unparsable_durations_and_policies_say_what_to_write() {
    let e = errors(&saga(&format!(
        "{GOOD_A}      timeout: 10 seconds\n{GOOD_B}"
    )));
    assert_mentions(
        &e,
        &[
            "step `A` (steps[0]): `timeout`: unparsable duration `10 seconds`",
            "`500ms`",
        ],
    );
    let e = errors(&saga(&format!(
        "{GOOD_A}      retryPolicy: linear(3)\n{GOOD_B}"
    )));
    assert_mentions(
        &e,
        &[
            "step `A`",
            "`retryPolicy` `linear(3)`",
            "exponentialBackoff(N)",
        ],
    );
    let e = errors(&saga(&format!(
        "{GOOD_A}      retryPolicy: exponentialBackoff(x)\n{GOOD_B}"
    )));
    assert_mentions(&e, &["whole number", "found `x`"]);
    let e = errors(&saga(&format!(
        "{GOOD_A}      retryPolicy: {{max_attempts: 3, jitter: 2}}\n{GOOD_B}"
    )));
    assert_mentions(
        &e,
        &["step `A` (steps[0])", "jitter must be within 0.0..=1.0"],
    );
    let e = errors(&saga(&format!(
        "{GOOD_A}      retryPolicy: {{initial: 1s}}\n{GOOD_B}"
    )));
    assert_mentions(&e, &["missing `max_attempts`"]);
}

#[test]
fn a_step_without_compensation_followed_by_a_step_is_an_error_unless_declared() {
    let e = errors(&saga(&format!(
        "    - name: A\n      service: svc\n      action: a\n{GOOD_B}"
    )));
    assert_mentions(
        &e,
        &[
            "step `A` (steps[0]): no `compensation`",
            "`B`",
            "compensation: none",
        ],
    );
    let ok = parse_definition(
        "ok.yaml",
        &saga(&format!("    - name: A\n      service: svc\n      action: a\n      compensation: none\n{GOOD_B}")),
    )
    .unwrap();
    assert_eq!(ok.definition.steps[0].compensation, Compensation::NotNeeded);
}

#[test]
fn a_scenario_that_disagrees_with_the_plan_says_what_was_expected() {
    let yaml = include_str!("../../../sagas/travel-booking.yaml").replace(
        "        - cancelHotelReservation\n        - cancelFlightReservation",
        "        - cancelFlightReservation\n        - cancelHotelReservation",
    );
    let e = errors(&yaml);
    assert_mentions(
        &e,
        &[
            "failureScenarios[2] `PaymentFailed`",
            "when step `ChargePayment` fails",
            "[cancelHotelReservation, cancelFlightReservation]",
            "but the scenario lists [cancelFlightReservation, cancelHotelReservation]",
        ],
    );
    let yaml = include_str!("../../../sagas/travel-booking.yaml")
        .replace("scenario: PaymentFailed", "scenario: SomethingOdd");
    let e = errors(&yaml);
    assert_mentions(
        &e,
        &["failureScenarios[2] `SomethingOdd`", "add `step: <name>`"],
    );
}

#[test]
fn an_explicit_timeout_shorter_than_the_steps_breaks_the_invariant() {
    let yaml = include_str!("../../../sagas/travel-booking.yaml").replace(
        "  orchestrator: BookingService\n",
        "  orchestrator: BookingService\n  timeout: 30s\n",
    );
    let e = errors(&yaml);
    assert_mentions(
        &e,
        &[
            "invariants[2]",
            "timeout` 30s is shorter than the steps' worst case 1m32s",
        ],
    );
}

#[test]
fn bad_names_yaml_and_shapes_are_reported() {
    let e = errors("saga:\n  name: My Saga\n  steps:\n    - {name: A, service: svc, action: a}\n");
    assert_mentions(&e, &["saga: `name` `My Saga` contains ` `"]);
    let e = errors("saga: [\n");
    assert_mentions(&e, &["broken.yaml: yaml: not valid YAML", "line"]);
    let e = errors("saga:\n  name: S\n");
    assert_mentions(&e, &["a saga needs at least one step"]);
    let e = errors("steps: []\n");
    assert_mentions(
        &e,
        &["document: unknown key `steps`", "missing top-level `saga:`"],
    );
    let e = errors(&saga(
        "    - name: A\n      service: svc.x\n      action: a\n",
    ));
    assert_mentions(&e, &["`service` `svc.x` contains `.`"]);
}

#[test]
fn every_problem_of_a_file_is_reported_at_once() {
    let e = parse_definition(
        "many.yaml",
        "saga:\n  name: S\n  steps:\n    - {name: A, action: a, timeout: x}\n    - {name: B, service: s}\n",
    )
    .unwrap_err();
    assert!(e.errors.len() >= 3, "{e}");
}

#[test]
fn the_graph_draws_forward_and_compensation_edges_distinctly() {
    let def = load_file(&sagas_dir().join("travel-booking.yaml"))
        .unwrap()
        .definition;
    let g = mermaid(&def);
    assert!(g.contains("flowchart LR"));
    assert!(g.contains("s0 -->|ok| s1") && g.contains("s2 -->|ok| completed"));
    assert!(g.contains("s2 -.->|business failure| c1"));
    assert!(g.contains("c1 -.->|done| c0") && g.contains("c0 -.->|done| compensated"));
    assert!(g.contains("classDef comp"));
}

#[test]
fn a_directory_loads_by_name_and_reports_every_broken_file() {
    let defs = saga_core::definition::load_dir(sagas_dir()).unwrap();
    assert_eq!(
        defs.keys().collect::<Vec<_>>(),
        ["OrderCheckout", "TravelBookingSaga"]
    );
    let dir = std::env::temp_dir().join(format!("defs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let travel = include_str!("../../../sagas/travel-booking.yaml");
    std::fs::write(dir.join("a.yaml"), travel).unwrap();
    std::fs::write(dir.join("b.yaml"), travel).unwrap();
    std::fs::write(dir.join("c.yml"), "saga: [").unwrap();
    let e = saga_core::definition::load_dir(&dir).unwrap_err();
    assert!(
        e.contains("saga `TravelBookingSaga` is defined twice"),
        "{e}"
    );
    assert!(e.contains("c.yml: yaml: not valid YAML"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    let empty = std::env::temp_dir().join(format!("defs-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    assert!(saga_core::definition::load_dir(&empty)
        .unwrap_err()
        .contains("no saga definitions"));
    std::fs::remove_dir_all(&empty).unwrap();
}

fn kinds_of(yaml: &str) -> Vec<&'static str> {
    parse_definition("k.yaml", yaml)
        .unwrap()
        .definition
        .steps
        .iter()
        .map(|s| s.kind.as_str())
        .collect()
}

#[test]
fn step_kinds_default_from_the_compensation_and_the_retry_policy() {
    // The shipped checkout declares its pivot; its confirmation cannot be undone.
    let checkout = load_file(&sagas_dir().join("order-checkout.yaml"))
        .unwrap()
        .definition;
    let kinds: Vec<&str> = checkout.steps.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(kinds, ["compensatable", "compensatable", "pivot"]);
    assert_eq!(checkout.pivot(), Some(2));
    // A last step without compensation: the pivot with a short policy, retriable with a
    // long or unbounded one.
    assert_eq!(
        kinds_of(&saga(&format!("{GOOD_A}{GOOD_B}"))),
        ["compensatable", "pivot"]
    );
    let long = format!("{GOOD_B}      retryPolicy: unbounded\n");
    assert_eq!(
        kinds_of(&saga(&format!("{GOOD_A}{long}"))),
        ["compensatable", "retriable"]
    );
    let def = parse_definition("k.yaml", &saga(&format!("{GOOD_A}{long}")))
        .unwrap()
        .definition;
    assert!(def.steps[1].retry.is_unbounded());
    // The deadline does not count retriable steps.
    assert_eq!(
        def.steps_worst_case(),
        def.steps[0].retry.worst_case(def.steps[0].timeout)
    );
    // After a declared pivot, steps without compensation are retriable.
    let yaml = saga(&format!(
        "{GOOD_A}    - {{name: P, service: svc, action: p, kind: pivot}}\n    - {{name: R, service: svc, action: r, retryPolicy: {{max_attempts: unbounded}}}}\n"
    ));
    assert_eq!(kinds_of(&yaml), ["compensatable", "pivot", "retriable"]);
    // The plan: a pivot in doubt is retried, a retriable refusal undoes nothing.
    let def = parse_definition("k.yaml", &yaml).unwrap().definition;
    let p = def.plan_for(1, FailureKind::InDoubt);
    assert!(p.retried && p.compensations.is_empty(), "{p:?}");
    assert_eq!(
        def.plan_for(1, FailureKind::Business).compensations,
        ["undoA"]
    );
    assert_eq!(def.plan_for(2, FailureKind::Business).outcome(), "FAILED");
    let graph = mermaid(&def);
    assert!(graph.contains("s1[[\"PIVOT: P"), "{graph}");
    assert!(graph.contains("class s1 pivot"), "{graph}");
    assert!(
        graph.contains("s2 -->|timeout / failure: retried| s2"),
        "{graph}"
    );
}

#[test]
fn step_kinds_that_break_the_theory_are_refused_with_what_to_write() {
    let pivot = "    - {name: P, service: svc, action: p, kind: pivot}\n";
    // A pivot with a compensation.
    let e = errors(&saga(&format!(
        "    - {{name: P, service: svc, action: p, kind: pivot, compensation: undoP}}\n{GOOD_B}"
    )));
    assert_mentions(
        &e,
        &["step `P` (steps[0])", "a pivot is the point of no return"],
    );
    // Two pivots.
    let e = errors(&saga(&format!(
        "{pivot}    - {{name: Q, service: svc, action: q, kind: pivot}}\n"
    )));
    assert_mentions(
        &e,
        &["step `Q` (steps[1])", "at most one pivot", "`P` (steps[0])"],
    );
    // A compensatable step after the pivot.
    let e = errors(&saga(&format!("{pivot}{GOOD_A}")));
    assert_mentions(
        &e,
        &[
            "step `A` (steps[1])",
            "nothing after the pivot `P`",
            "`kind: retriable`",
        ],
    );
    // A retriable step with a short policy, and one with a compensation.
    let e = errors(&saga(&format!(
        "{pivot}    - {{name: R, service: svc, action: r, retryPolicy: exponentialBackoff(3)}}\n"
    )));
    assert_mentions(
        &e,
        &[
            "step `R` (steps[1])",
            "`unbounded` or allow at least 10 attempts; it allows 4",
            "follows the pivot",
        ],
    );
    let e = errors(&saga(
        "    - {name: R, service: svc, action: r, kind: retriable, compensation: undoR, retryPolicy: unbounded}\n",
    ));
    assert_mentions(&e, &["a retriable step is never compensated"]);
    // A retriable step before the pivot; an unknown kind.
    let e = errors(&saga(&format!(
        "    - {{name: R, service: svc, action: r, kind: retriable, retryPolicy: unbounded}}\n{pivot}"
    )));
    assert_mentions(
        &e,
        &[
            "step `P` (steps[1])",
            "the pivot must come before the retriable steps",
        ],
    );
    let e = errors(&saga(
        "    - {name: A, service: svc, action: a, kind: pivotal}\n",
    ));
    assert_mentions(
        &e,
        &["`kind` `pivotal` is not `compensatable`, `pivot` or `retriable`"],
    );
}
