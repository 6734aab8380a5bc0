//! `sagactl def validate|graph` as a user runs it.

use std::path::PathBuf;
use std::process::{Command, Output};

fn sagactl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sagactl"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("run sagactl")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn validate_passes_the_shipped_sagas_and_explains_them() {
    let o = sagactl(&[
        "def",
        "validate",
        "--explain",
        "sagas/travel-booking.yaml",
        "sagas/order-checkout.yaml",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("ok   sagas/travel-booking.yaml: TravelBookingSaga (3 steps"));
    assert!(out.contains("ok   sagas/order-checkout.yaml: OrderCheckout"));
    assert!(out.contains("derived failure scenarios"));
    assert!(out.contains("cancelHotelReservation -> cancelFlightReservation"));
    assert!(out.contains("kept as documentation, not checked"));
}

#[test]
fn validate_fails_with_every_problem_named() {
    let dir = std::env::temp_dir().join(format!("sagactl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad: PathBuf = dir.join("broken.yaml");
    std::fs::write(
        &bad,
        "saga:\n  name: Broken\n  steps:\n    - name: A\n      service: svc\n      action: a\n      timout: 5s\n    - name: A\n      service: svc\n      action: b\n      timeout: soon\n",
    )
    .unwrap();
    let o = sagactl(&[
        "def",
        "validate",
        "sagas/order-checkout.yaml",
        bad.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(out.contains("ok   sagas/order-checkout.yaml"), "{out}");
    let file = bad.display().to_string();
    for want in [
        format!("{file}: step `A` (steps[0]): unknown key `timout` (did you mean `timeout`?)"),
        format!("{file}: step `A` (steps[1]): `timeout`: unparsable duration `soon`"),
        format!("{file}: step `A` (steps[1]): duplicate step name (also steps[0])"),
        "1 of 2 definition(s) invalid".to_string(),
    ] {
        assert!(err.contains(&want), "`{want}` not in:\n{err}");
    }
    let o = sagactl(&["def", "validate", "no/such.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("no/such.yaml: file: cannot read"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn graph_prints_mermaid() {
    let o = sagactl(&["def", "graph", "sagas/travel-booking.yaml"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("flowchart LR"));
    assert!(out.contains("s0 -->|ok| s1"));
    assert!(out.contains("-.->|business failure|"));
}
