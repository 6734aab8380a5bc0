//! `sagactl chaos`, short: 500 orders through a stack of real processes while workers,
//! a participant, the gateway and nats-server are killed and a worker is paused; every
//! invariant must hold, the table must name each one, and no child may be left behind.
//!
//! Needs every binary built beside sagactl (`cargo build --workspace --bins`, which
//! `make test` runs first) and the pinned nats-server (`make setup`, or NATS_SERVER_BIN).
//! The long run is `make chaos` (docs/reliability.md).

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::{prerequisites, repo_root, run_to_end, started_children, still_running};

/// Load ~25 s, faults within it, quiescence, checks: ~1 min in a debug build.
const RUN_DEADLINE: Duration = Duration::from_secs(420);

const INVARIANTS: [&str; 8] = [
    "every acknowledged order exists and is terminal",
    "no saga FAILED",
    "one saga per idempotency key",
    "participant ledgers net out",
    "exactly one domain event per terminal saga",
    "an accepted cancel of a running saga is honoured",
    "no order refused by the gateway",
    "no process ended on its own",
];

#[test]
fn a_short_chaos_run_keeps_every_invariant() {
    let sagactl = PathBuf::from(env!("CARGO_BIN_EXE_sagactl"));
    prerequisites(
        &sagactl,
        &[
            "saga-worker",
            "saga-gateway",
            "inventory",
            "payment",
            "orders",
        ],
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("run");

    let mut cmd = Command::new(&sagactl);
    cmd.args([
        "chaos",
        "--orders",
        "500",
        "--rate",
        "20",
        "--workers",
        "2",
        "--faults",
        "6",
        "--seed",
        "7",
        "--quiesce-timeout-secs",
        "180",
        "--json",
        "--data-dir",
    ])
    .arg(&data)
    .current_dir(repo_root())
    .env_remove("SAGA_GATEWAY");
    let out = run_to_end(cmd, RUN_DEADLINE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(
        out.status.success(),
        "sagactl chaos failed ({}):\n{all}",
        out.status
    );

    // The table (stderr with --json) names every invariant, each passing.
    for name in INVARIANTS {
        let row = stderr
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row `{name}` in the table:\n{all}"));
        assert!(row.trim_end().ends_with("PASS"), "{row}\n{all}");
    }
    assert!(stderr.contains("result: PASS"), "{all}");
    for kind in [
        "kill-worker",
        "kill-participant",
        "kill-gateway",
        "kill-nats",
        "pause-worker",
    ] {
        assert!(
            stderr.contains(kind),
            "no fault kind {kind} in the table:\n{all}"
        );
    }

    // The JSON summary (stdout) says the same, with the load and the faults done.
    let summary: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not the JSON summary ({e}):\n{all}"));
    assert_eq!(summary["pass"], true, "{all}");
    assert_eq!(summary["load"]["orders"], 500, "{all}");
    let acked = summary["load"]["acknowledged"].as_u64().unwrap();
    assert!(
        acked >= 450,
        "only {acked} of 500 orders acknowledged:\n{all}"
    );
    let faults = summary["faults"]["list"].as_array().unwrap();
    assert!(faults.len() >= 5, "{all}");
    assert!(faults.iter().all(|f| f["error"].is_null()), "{all}");
    let kinds: BTreeSet<&str> = faults.iter().map(|f| f["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds.len(),
        5,
        "every kind of fault at least once: {kinds:?}"
    );
    let names: Vec<&str> = summary["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, INVARIANTS, "{all}");
    assert_eq!(summary["quiescence"]["reached"], true, "{all}");

    // The run leaves its report beside the logs, and no process behind.
    assert!(data.join("report.txt").is_file());
    assert!(data.join("summary.json").is_file());
    assert!(data.join("logs/saga-worker-1.log").is_file());
    let children = started_children(&stderr, true);
    assert!(children.len() >= 8, "{all}");
    for (name, pid) in &children {
        assert!(
            !still_running(*pid, name),
            "{name} (pid {pid}) survived sagactl chaos:\n{all}"
        );
    }
}
