//! Bad input to sagactl is refused before anything runs, with a message naming the problem.

use std::net::TcpListener;
use std::process::{Command, Output};

fn sagactl(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sagactl"))
        .args(args)
        .env_remove("SAGA_GATEWAY")
        .envs(env.iter().copied())
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("run sagactl")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs sagactl expecting exit status `code` and `want` in its stderr.
fn refused(args: &[&str], code: i32, want: &[&str]) {
    let o = sagactl(args, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}\n{err}");
    for w in want {
        assert!(err.contains(w), "{args:?}: `{w}` not in:\n{err}");
    }
}

#[test]
fn bad_items_name_the_problem() {
    fn place(item: &str) -> Vec<&str> {
        vec!["order", "place", "--customer", "alice", "--item", item]
    }
    refused(
        &place("sku-1:x:1500"),
        2,
        &[
            "--item",
            "the quantity `x` is not a positive integer",
            "SKU:QTY:PRICE_CENTS",
        ],
    );
    refused(
        &place("sku-1:2"),
        2,
        &["'sku-1:2'", "expected SKU:QTY:PRICE_CENTS"],
    );
    refused(&place(":2:1500"), 2, &["the SKU is empty"]);
    refused(&place("sku-1:0:1500"), 2, &["the quantity `0`"]);
    refused(&place("sku-1:1:-3"), 2, &["the price `-3`"]);
    refused(&place("sku-1:1:12.5"), 2, &["the price `12.5`"]);
    refused(
        &["order", "place", "--customer", "alice"],
        2,
        &["--item <SKU:QTY:PRICE_CENTS>"],
    );
    refused(
        &["order", "place", "--item", "sku-1:1:1500"],
        2,
        &["--customer <CUSTOMER>"],
    );
    refused(
        &["order", "place", "--customer", " ", "--item", "a:1:1"],
        2,
        &["must not be empty"],
    );
}

#[test]
fn bad_flags_of_saga_bench_and_dev_are_refused() {
    refused(
        &["saga", "list", "--state", "done"],
        2,
        &["'done'", "completed", "compensated"],
    );
    refused(&["saga", "list", "--page-size", "0"], 2, &["--page-size"]);
    refused(&["saga", "list", "--page-size", "1001"], 2, &["1..=1000"]);
    refused(
        &["saga", "list", "--all", "--page-token", "x"],
        2,
        &["cannot be used with"],
    );
    refused(
        &[
            "saga",
            "start",
            "--type",
            "TravelBookingSaga",
            "--payload",
            "[1]",
        ],
        2,
        &["must be a JSON object"],
    );
    refused(&["bench", "--sagas", "0"], 2, &["--sagas"]);
    refused(
        &["dev", "--sagas-only", "--demo"],
        2,
        &["--sagas-only", "cannot be used with", "--demo"],
    );
    refused(
        &["dev", "kill", "payment", "--signal", "HUP"],
        2,
        &["'HUP'", "KILL, TERM, STOP, CONT"],
    );
    refused(
        &["bench", "--rate=-1"],
        2,
        &["`-1` is not a positive number"],
    );
    refused(
        &["bench", "--rate", "0"],
        2,
        &["`0` is not a positive number"],
    );
    refused(&["bench", "--concurrency", "0"], 2, &["--concurrency"]);
    refused(&["dev", "--exit"], 2, &["--demo"]);
    refused(&["dev", "--grpc-addr", "localhost"], 2, &["--grpc-addr"]);
}

#[test]
fn an_unreachable_gateway_is_a_clear_error() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let o = sagactl(&["saga", "get", "some-saga"], &[("SAGA_GATEWAY", &addr)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot reach the gateway at http://{addr}")),
        "{err}"
    );
    assert!(err.contains("SAGA_GATEWAY"), "{err}");
    let o = sagactl(&["--gateway", "http://[bad", "saga", "list"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("invalid gateway address"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn dev_refuses_a_nats_port_in_use() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let o = sagactl(
        &[
            "dev",
            "--nats-port",
            &port,
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "port {port} is in use (another nats-server?); pass --nats-port"
        )),
        "{err}"
    );
    // Nothing was started, not even the log directory.
    assert!(!dir.path().join("logs").exists());
}
