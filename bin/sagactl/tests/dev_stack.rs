//! `sagactl dev --demo --exit` as CI runs it: the whole stack on free ports in a temporary
//! data dir, the demo orders ending COMPLETED and COMPENSATED, and no child left behind.
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

const CHILDREN: [&str; 8] = [
    "nats-server",
    "saga-worker-1",
    "inventory",
    "payment",
    "orders",
    "flight",
    "hotel",
    "saga-gateway",
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
        ],
    );
}

/// Two distinct free ports (both held while the second is picked).
fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
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
    let (nats_port, grpc_port) = free_ports();
    let grpc = format!("127.0.0.1:{grpc_port}");

    let mut cmd = Command::new(&sagactl);
    cmd.args(["dev", "--demo", "--exit", "--nats-port"])
        .arg(nats_port.to_string())
        .arg("--grpc-addr")
        .arg(&grpc)
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
}

impl DevRun {
    fn start() -> Self {
        let sagactl = PathBuf::from(env!("CARGO_BIN_EXE_sagactl"));
        prerequisites(&sagactl);
        let data = tempfile::tempdir().unwrap();
        let (nats_port, grpc_port) = free_ports();
        let mut child = Command::new(&sagactl)
            .args(["dev", "--nats-port"])
            .arg(nats_port.to_string())
            .arg("--grpc-addr")
            .arg(format!("127.0.0.1:{grpc_port}"))
            .arg("--data-dir")
            .arg(data.path())
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
        }
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
fn a_child_dying_stops_the_stack_with_an_error_naming_it() {
    let mut run = DevRun::start();
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
