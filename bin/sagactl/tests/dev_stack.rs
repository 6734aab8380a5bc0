//! `sagactl dev --demo --exit` as CI runs it: the whole stack on free ports in a temporary
//! data dir, the demo orders ending COMPLETED and COMPENSATED, and no child left behind;
//! and `sagactl dev` as a playground: children that die are restarted, the stack is
//! controlled from another terminal (`dev ps|kill|stop|start|restart|logs`), a child that
//! keeps crashing is left down while the rest keeps serving.
//!
//! Needs every binary built beside sagactl (`cargo build --workspace --bins`, which
//! `make test` runs first) and the pinned nats-server (`make setup`, or NATS_SERVER_BIN).

mod support;

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{repo_root, still_running, STOP_DEADLINE};

/// The whole run: startup, three sagas, shutdown. Far above what it takes (~10-20 s).
const RUN_DEADLINE: Duration = Duration::from_secs(300);

const CHILDREN: [&str; 12] = [
    "nats-server",
    "saga-worker-1",
    "inventory",
    "payment",
    "orders",
    "flight",
    "hotel",
    "saga-gateway",
    "notification",
    "rewards",
    "shipping",
    "bank",
];

fn prerequisites(sagactl: &Path) {
    support::prerequisites(
        sagactl,
        &[
            "saga-worker",
            "saga-gateway",
            "inventory",
            "payment",
            "orders",
            "flight",
            "hotel",
            "notification",
            "rewards",
            "shipping",
            "bank",
        ],
    );
}

/// Three distinct free ports (all held while the next is picked): NATS, gateway, bank.
/// Ports for nats, the gateway, the bank and the orders API.
fn free_ports() -> (u16, u16, u16, u16) {
    let ls: Vec<TcpListener> = (0..4)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let p = |i: usize| ls[i].local_addr().unwrap().port();
    (p(0), p(1), p(2), p(3))
}

fn run_to_end(cmd: Command) -> std::process::Output {
    support::run_to_end(cmd, RUN_DEADLINE)
}

fn started_children(stdout: &str) -> Vec<(String, u32)> {
    support::started_children(stdout, false)
}

#[test]
fn dev_demo_runs_the_stack_and_leaves_no_child_behind() {
    let sagactl = PathBuf::from(env!("CARGO_BIN_EXE_sagactl"));
    prerequisites(&sagactl);
    let data = tempfile::tempdir().unwrap();
    let (nats_port, grpc_port, bank_port, orders_port) = free_ports();
    let grpc = format!("127.0.0.1:{grpc_port}");

    let mut cmd = Command::new(&sagactl);
    cmd.args(["dev", "--demo", "--exit", "--nats-port"])
        .arg(nats_port.to_string())
        .arg("--grpc-addr")
        .arg(&grpc)
        .arg("--bank-addr")
        .arg(format!("127.0.0.1:{bank_port}"))
        .arg("--orders-addr")
        .arg(format!("127.0.0.1:{orders_port}"))
        .arg("--data-dir")
        .arg(data.path())
        .current_dir(repo_root())
        .env_remove("SAGA_GATEWAY");
    let out = run_to_end(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(
        out.status.success(),
        "sagactl dev failed ({}):\n{all}",
        out.status
    );

    // What a user sees: where the stack is and how to use it...
    assert!(
        stdout.contains(&format!("stack ready: gRPC on {grpc}")),
        "{all}"
    );
    assert!(
        stdout.contains(&format!(
            "grpcurl -plaintext -d '{{\"customer_id\":\"alice\",\"items\":[{{\"sku\":\"sku-1\",\"quantity\":1,\"unit_price_cents\":1500}}]}}' {grpc} saga.v1.SagaGateway/PlaceOrder"
        )),
        "{all}"
    );
    // ...then the demo sagas, each with its final state and the reason.
    for want in [
        "demo: an order that completes (alice): COMPLETED",
        "demo: an order of more than the stock (carol): COMPENSATED",
        "demo: an order whose payment is declined (decline-bob): COMPENSATED",
        "Insufficient stock",
        "declined",
        "ReserveStock",
        "ChargePayment",
        // The consumers react to the completed order; the poisoned event is redriven.
        "demo:   notification: handled OrderConfirmed",
        "demo:   shipping: handled OrderConfirmed",
        "demo:   rewards: failed on OrderConfirmed 4 times (ladder 1s, 2s, 3s), now dead letter",
        "demo:   rewards: handled the redriven OrderConfirmed: points awarded",
        // The BankAccount of the design documents.
        "demo:   AccountBalanceView: balance 1300.00 at version 3",
        // The Order aggregate of the completed order.
        "demo:   OrderSummaryView: CONFIRMED for alice, 1500 cents, version 2",
        "demo:   ShipOrder -> SHIPPED (version 3)",
        "demo:   CancelOrder refused: the order shipped",
        "(invariant: OrderCancelled cannot follow OrderShipped)",
    ] {
        assert!(stdout.contains(want), "`{want}` not in the output:\n{all}");
    }
    assert!(!stdout.contains("(expected "), "{all}");

    // Every child started, logged to DATA/logs/<name>.log, was stopped and is gone.
    let children = started_children(&stdout);
    let names: Vec<&str> = children.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, CHILDREN, "{all}");
    for (name, pid) in &children {
        assert!(
            data.path()
                .join("logs")
                .join(format!("{name}.log"))
                .is_file(),
            "no log of {name}"
        );
        assert!(
            stdout.contains(&format!("stopped {name} (")),
            "{name} was not stopped cleanly:\n{all}"
        );
        assert!(
            !still_running(*pid, name),
            "{name} (pid {pid}) survived sagactl"
        );
    }
    // The ports are free again.
    TcpListener::bind(("127.0.0.1", nats_port)).expect("nats port still taken");
    TcpListener::bind(("127.0.0.1", grpc_port)).expect("gRPC port still taken");
}

/// `sagactl dev` running in the background, its stdout read line by line.
struct DevRun {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: String,
    data: tempfile::TempDir,
    grpc: String,
}

fn sagactl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sagactl"))
}

impl DevRun {
    fn start() -> Self {
        Self::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Self {
        let sagactl = sagactl();
        prerequisites(&sagactl);
        let data = tempfile::tempdir().unwrap();
        let (nats_port, grpc_port, bank_port, orders_port) = free_ports();
        let grpc = format!("127.0.0.1:{grpc_port}");
        let mut child = Command::new(&sagactl)
            .args(["dev", "--nats-port"])
            .arg(nats_port.to_string())
            .arg("--grpc-addr")
            .arg(&grpc)
            .arg("--bank-addr")
            .arg(format!("127.0.0.1:{bank_port}"))
            .arg("--orders-addr")
            .arg(format!("127.0.0.1:{orders_port}"))
            .arg("--data-dir")
            .arg(data.path())
            .args(extra)
            .current_dir(repo_root())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sagactl dev");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            stdout: String::new(),
            data,
            grpc,
        }
    }

    /// Runs `sagactl dev <args> --data-dir DATA` (control of this stack) to its end.
    fn ctl(&self, args: &[&str]) -> std::process::Output {
        let out = Command::new(sagactl())
            .arg("dev")
            .args(args)
            .arg("--data-dir")
            .arg(self.data.path())
            .output()
            .expect("run sagactl dev control");
        out
    }

    /// `ctl` that must succeed; its stdout.
    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "sagactl dev {args:?} failed: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// The children as `sagactl --json dev ps` reports them.
    fn ps(&self) -> Vec<serde_json::Value> {
        let out = Command::new(sagactl())
            .args(["--json", "dev", "ps", "--data-dir"])
            .arg(self.data.path())
            .output()
            .expect("run sagactl dev ps");
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ps JSON");
        v["children"].as_array().expect("children").clone()
    }

    /// One child of `ps`.
    fn child(&self, name: &str) -> serde_json::Value {
        self.ps()
            .into_iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in ps"))
    }

    /// Polls `ps` until the child satisfies `ok`; the last view of it otherwise fails.
    fn until_child(
        &self,
        name: &str,
        within: Duration,
        what: &str,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let c = self.child(name);
            if ok(&c) {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "{name} not {what} within {within:?}: {c}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Places one order through the gateway and waits for it to complete.
    fn order_completes(&self, customer: &str) {
        let out = Command::new(sagactl())
            .args(["--gateway", &format!("http://{}", self.grpc)])
            .args(["order", "place", "--customer", customer])
            .args(["--item", "sku-1:1:1500", "--wait"])
            .output()
            .expect("run sagactl order place");
        assert!(
            out.status.success(),
            "the order of {customer} did not complete: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Reads stdout until a line contains `want`.
    fn wait_for(&mut self, want: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push_str(&line);
                    self.stdout.push('\n');
                    if line.contains(want) {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no `{want}` from sagactl dev within {within:?}:\n{}",
                    self.stdout
                ),
            }
        }
    }

    /// Waits for sagactl to exit; returns its status, whole stdout and stderr.
    fn finish(&mut self, within: Duration) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            // Its stdout ends when it exits: wait on that rather than sleeping.
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) => {
                    self.stdout.push_str(&line);
                    self.stdout.push('\n');
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break self.child.wait().unwrap();
                }
                Err(mpsc::RecvTimeoutError::Timeout) if left.is_zero() => {
                    panic!(
                        "sagactl dev did not exit within {within:?}:\n{}",
                        self.stdout
                    )
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stdout.push_str(&line);
            self.stdout.push('\n');
        }
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        (status, std::mem::take(&mut self.stdout), stderr)
    }

    fn signal(&self, signal: &str, pid: u32) {
        let ok = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal} {pid} failed");
    }
}

impl Drop for DevRun {
    fn drop(&mut self) {
        // A failed test must not leave a stack running: SIGTERM makes sagactl stop it.
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
    }
}

fn assert_all_gone(children: &[(String, u32)], all: &str) {
    assert_eq!(
        children.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        CHILDREN,
        "{all}"
    );
    assert_gone(children, all);
}

fn assert_gone(children: &[(String, u32)], all: &str) {
    for (name, pid) in children {
        assert!(
            !still_running(*pid, name),
            "{name} (pid {pid}) survived sagactl:\n{all}"
        );
    }
}

#[test]
fn sigterm_stops_every_child_cleanly() {
    let mut run = DevRun::start();
    run.wait_for("stack ready", RUN_DEADLINE);
    run.wait_for("Ctrl-C stops the stack", Duration::from_secs(10));
    let logs = run.data.path().join("logs");
    let pid = run.child.id();
    run.signal("-TERM", pid);
    let (status, stdout, stderr) = run.finish(STOP_DEADLINE);
    let all = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(status.success(), "{status}:\n{all}");
    assert!(stdout.contains("SIGTERM: stopping the stack"), "{all}");
    let children = started_children(&stdout);
    for (name, _) in &children {
        assert!(
            stdout.contains(&format!("stopped {name} (")),
            "{name}:\n{all}"
        );
        assert!(
            logs.join(format!("{name}.log")).is_file(),
            "no log of {name}"
        );
    }
    // Stopped in reverse order of start: the gateway first, nats-server last.
    let first = stdout.find("stopped saga-gateway").unwrap();
    let last = stdout.find("stopped nats-server").unwrap();
    assert!(first < last, "{all}");
    assert_all_gone(&children, &all);
}

#[test]
fn with_exit_on_child_failure_a_child_dying_stops_the_stack_with_an_error_naming_it() {
    let mut run = DevRun::start_with(&["--exit-on-child-failure"]);
    run.wait_for("stack ready", RUN_DEADLINE);
    let children = started_children(&run.stdout);
    let (_, payment) = children
        .iter()
        .find(|(n, _)| n == "payment")
        .unwrap()
        .clone();
    run.signal("-KILL", payment);
    let (status, stdout, stderr) = run.finish(STOP_DEADLINE);
    let all = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert_eq!(status.code(), Some(1), "{all}");
    assert!(
        stderr.contains("payment exited unexpectedly (signal: 9"),
        "{all}"
    );
    assert!(stderr.contains("logs/payment.log"), "{all}");
    for name in CHILDREN.iter().filter(|n| **n != "payment") {
        assert!(
            stdout.contains(&format!("stopped {name} (")),
            "{name}:\n{all}"
        );
    }
    assert_all_gone(&children, &all);
}

/// Pid of a `ps` entry.
fn pid(c: &serde_json::Value) -> Option<u64> {
    c["pid"].as_u64()
}

#[test]
fn a_worker_killed_under_load_is_restarted_and_every_saga_ends() {
    let mut run = DevRun::start_with(&["--workers", "2"]);
    run.wait_for("Ctrl-C stops the stack", RUN_DEADLINE);
    let first = pid(&run.child("saga-worker-1")).expect("worker 1 runs");

    let sagas = 150;
    let bench = Command::new(sagactl())
        .args(["--json", "--gateway", &format!("http://{}", run.grpc)])
        .args(["bench", "--sagas", &sagas.to_string(), "--concurrency", "8"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sagactl bench");
    // Under load: some sagas have ended before the kill.
    let deadline = Instant::now() + RUN_DEADLINE;
    loop {
        let out = Command::new(sagactl())
            .args(["--json", "--gateway", &format!("http://{}", run.grpc)])
            .args(["saga", "list", "--state", "completed"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("sagaId") {
            break;
        }
        assert!(Instant::now() < deadline, "no saga completed: {out:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let said = run.ctl_ok(&["kill", "saga-worker-1"]);
    assert!(
        said.contains(&format!("sent SIGKILL to saga-worker-1 (pid {first})")),
        "{said}"
    );
    run.wait_for(
        "saga-worker-1 killed by SIGKILL; restarted in 1 s",
        RUN_DEADLINE,
    );
    run.wait_for("restarted saga-worker-1 (pid", Duration::from_secs(30));
    let now = run.until_child(
        "saga-worker-1",
        Duration::from_secs(30),
        "running again",
        |c| c["state"] == "running" && pid(c).is_some(),
    );
    assert_ne!(pid(&now), Some(first), "{now}");
    assert_eq!(now["restarts"], 1, "{now}");

    // Every saga of the bench ended, none timed out or failed.
    let out = bench.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench: {}\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench JSON");
    let states = report["states"].as_object().expect("states");
    let ended: u64 = ["COMPLETED", "COMPENSATED"]
        .iter()
        .filter_map(|s| states.get(*s).and_then(|v| v.as_u64()))
        .sum();
    assert_eq!(ended, sagas, "{report}");
    assert_eq!(report["timedOut"], 0, "{report}");

    // The rest kept running the whole time.
    for c in run.ps() {
        if c["name"] != "saga-worker-1" {
            assert_eq!(c["restarts"], 0, "{c}");
            assert_eq!(c["state"], "running", "{c}");
        }
    }
    let pid_of_sagactl = run.child.id();
    run.signal("-TERM", pid_of_sagactl);
    let (status, stdout, stderr) = run.finish(STOP_DEADLINE);
    let all = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(status.success(), "{status}:\n{all}");
    assert_gone(&support::started_children(&stdout, true), &all);
}

#[test]
fn dev_ps_kill_stop_start_restart_and_logs_control_a_running_stack() {
    let mut run = DevRun::start();
    run.wait_for("Ctrl-C stops the stack", RUN_DEADLINE);
    let started = started_children(&run.stdout);

    // ps: every child, its pid, running, what it listens on.
    let ps = run.ps();
    let names: Vec<&str> = ps.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, CHILDREN);
    for ((name, pid_started), c) in started.iter().zip(&ps) {
        assert_eq!(c["name"], name.as_str());
        assert_eq!(pid(c), Some(u64::from(*pid_started)), "{c}");
        assert_eq!(c["state"], "running", "{c}");
        assert_eq!(c["restarts"], 0, "{c}");
    }
    assert_eq!(ps[0]["listens"].as_str().unwrap().split(':').count(), 2);
    let gateway = ps.iter().find(|c| c["name"] == "saga-gateway").unwrap();
    assert_eq!(gateway["listens"], run.grpc.as_str());
    let table = run.ctl_ok(&["ps"]);
    assert!(table.starts_with("NAME "), "{table}");
    assert!(table.contains("RESTARTS"), "{table}");

    // A pause and a resume.
    let payment = pid(&run.child("payment")).unwrap();
    run.ctl_ok(&["kill", "payment", "--signal", "STOP"]);
    run.until_child("payment", Duration::from_secs(10), "paused", |c| {
        c["state"] == "paused"
    });
    run.ctl_ok(&["kill", "payment", "--signal", "cont"]);
    let c = run.until_child("payment", Duration::from_secs(10), "resumed", |c| {
        c["state"] == "running"
    });
    assert_eq!(pid(&c), Some(payment), "a pause is not a restart: {c}");

    // stop keeps a child down; start brings it back.
    run.ctl_ok(&["stop", "hotel"]);
    run.wait_for("stopped hotel (", Duration::from_secs(30));
    let c = run.until_child("hotel", Duration::from_secs(5), "stopped", |c| {
        c["state"] == "stopped"
    });
    assert!(pid(&c).is_none(), "{c}");
    let refused = run.ctl(&["kill", "hotel"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("hotel is not running (stopped)"),
        "{refused:?}"
    );
    run.ctl_ok(&["start", "hotel"]);
    run.until_child("hotel", Duration::from_secs(10), "started", |c| {
        c["state"] == "running" && c["restarts"] == 1
    });

    // restart: a clean stop, then a new process with the same data.
    run.ctl_ok(&["restart", "payment"]);
    let c = run.until_child("payment", Duration::from_secs(30), "restarted", |c| {
        c["state"] == "running" && pid(c).is_some_and(|p| p != payment)
    });
    assert_eq!(c["restarts"], 1, "{c}");
    run.wait_for("stopped payment (exit status: 0)", Duration::from_secs(30));
    // ...and the stack serves with it.
    run.order_completes("alice");

    // logs: the child's own log file, the last lines on request.
    let log = run.ctl_ok(&["logs", "payment", "-n", "3"]);
    assert_eq!(log.lines().count(), 3, "{log}");
    let whole = run.ctl_ok(&["logs", "payment"]);
    assert!(
        whole.contains("SIGTERM"),
        "the log keeps the earlier life: {whole}"
    );
    assert!(whole.ends_with(&log), "{log}");

    // Unknown names are named, with what there is.
    let bad = run.ctl(&["restart", "paymnt"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("no child `paymnt` in this stack; there are: nats-server, saga-worker-1"),
        "{err}"
    );

    let pid_of_sagactl = run.child.id();
    run.signal("-TERM", pid_of_sagactl);
    let (status, stdout, stderr) = run.finish(STOP_DEADLINE);
    let all = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(status.success(), "{status}:\n{all}");
    assert_gone(&support::started_children(&stdout, true), &all);
    assert!(
        !run.data.path().join("control.sock").exists(),
        "the control socket outlived the stack"
    );
}

#[test]
fn a_crash_looping_child_is_reported_and_left_down_while_the_stack_keeps_serving() {
    let mut run = DevRun::start_with(&["--max-restarts", "2"]);
    run.wait_for("Ctrl-C stops the stack", RUN_DEADLINE);
    // hotel serves only the travel saga: the checkout keeps working without it.
    for crash in 1..=3u64 {
        let c = run.until_child("hotel", Duration::from_secs(30), "running", |c| {
            c["state"] == "running" && c["restarts"] == crash - 1
        });
        run.ctl_ok(&["kill", "hotel"]);
        let _ = c;
    }
    let c = run.until_child("hotel", Duration::from_secs(10), "left down", |c| {
        c["state"]
            .as_str()
            .is_some_and(|s| s.starts_with("down: killed by SIGKILL; 3 crashes"))
    });
    assert!(pid(&c).is_none(), "{c}");
    run.wait_for(
        "hotel killed by SIGKILL; restarted in 1 s",
        Duration::from_secs(5),
    );
    run.wait_for(
        "hotel killed by SIGKILL; restarted in 2 s",
        Duration::from_secs(5),
    );

    // The others keep serving.
    run.order_completes("bob");
    for c in run.ps() {
        if c["name"] != "hotel" {
            assert_eq!(c["state"], "running", "{c}");
        }
    }
    // Nobody restarts it behind the user's back; `start` does.
    run.ctl_ok(&["start", "hotel"]);
    run.until_child("hotel", Duration::from_secs(10), "started again", |c| {
        c["state"] == "running"
    });

    let pid_of_sagactl = run.child.id();
    run.signal("-TERM", pid_of_sagactl);
    let (status, stdout, stderr) = run.finish(STOP_DEADLINE);
    let all = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(status.success(), "{status}:\n{all}");
    assert!(
        stderr.contains(
            "hotel killed by SIGKILL: it ended unexpectedly 3 times within a minute, so it is \
             left down (the rest keeps running; `sagactl dev start hotel` starts it again)"
        ),
        "{all}"
    );
    assert!(stderr.contains("Last lines of"), "{all}");
    assert_gone(&support::started_children(&stdout, true), &all);
}
