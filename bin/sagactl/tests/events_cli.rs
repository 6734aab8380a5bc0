//! `sagactl events validate|ls|show|graph` as a user runs it.

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
fn the_order_catalog_validates_lists_shows_and_draws() {
    let o = sagactl(&["events", "validate"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains(
        "ok   events/order-events.yaml: 4 events, 5 services, 3 ordering rules enforced"
    ));
    assert!(out.contains("kept as documentation, not enforced"), "{out}");
    assert!(
        out.contains("ok   events/order-events.yaml: agrees with the 2 saga(s) in sagas"),
        "{out}"
    );

    let (out, _) = text(&sagactl(&["events", "ls"]));
    assert!(out.lines().any(|l| l.starts_with("OrderConfirmed")
        && l.contains("events.orders.OrderConfirmed.*")
        && l.ends_with("notification, rewards, shipping")));

    let (out, _) = text(&sagactl(&["events", "show", "OrderCancelled"]));
    assert!(
        out.contains("  OrderCancelled cannot follow OrderShipped"),
        "{out}"
    );
    assert!(out.contains("  rewards (take points back)"), "{out}");
    let o = sagactl(&["events", "show", "OrderLost"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("no event `OrderLost` in the catalog"));

    let (out, _) = text(&sagactl(&["events", "graph"]));
    assert!(out.starts_with("flowchart LR\n"));
    assert!(out.contains("svc_shipping -->|\"shipment created\"| ev_OrderShipped"));
    assert!(out.contains("ev_OrderShipped -->|\"order shipped\"| svc_notification"));
}

#[test]
fn a_catalog_that_disagrees_with_the_protobuf_messages_is_refused_with_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/order-events.yaml"
    ))
    .unwrap();
    let bad = good.replace(
        "      trackingNumber: string\n",
        "      trackingNumber: int64\n",
    );
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, bad).unwrap();
    let o = sagactl(&["events", "validate", "--catalog", file.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        err.contains(
            "bad.yaml: event `OrderShipped` schema `trackingNumber`: written `int64` but \
             saga.v1.OrderShipped.tracking_number is string"
        ),
        "{err}"
    );
}
