//! What the tests that run a whole stack through sagactl share: where the repository
//! is, the binaries they need, running sagactl to its end under a deadline, and telling
//! whether a child it started is still alive.

#![allow(dead_code)] // each test crate uses a part

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// After a SIGTERM on the deadline, how long sagactl gets to stop its children.
pub const STOP_DEADLINE: Duration = Duration::from_secs(60);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Fails with what to do when a binary beside sagactl or the pinned nats-server is
/// missing.
pub fn prerequisites(sagactl: &Path, binaries: &[&str]) {
    let dir = sagactl.parent().unwrap();
    let missing: Vec<&str> = binaries
        .iter()
        .copied()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    assert!(
        missing.is_empty(),
        "binaries {missing:?} are missing in {}: build them first with \
         `cargo build --workspace --bins` (`make test` does)",
        dir.display()
    );
    let nats = std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools/bin/nats-server"));
    assert!(
        nats.is_file(),
        "nats-server not found at {}: run `make setup` (or set NATS_SERVER_BIN)",
        nats.display()
    );
}

/// Runs sagactl to its end, or SIGTERMs it at `deadline` (it then stops its children)
/// and fails.
pub fn run_to_end(mut cmd: Command, deadline: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sagactl");
    let pid = child.id().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(out) => out.expect("wait for sagactl"),
        Err(_) => {
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            match rx.recv_timeout(STOP_DEADLINE) {
                Ok(Ok(out)) => panic!(
                    "sagactl did not finish within {deadline:?}; stopped it:\n{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                _ => {
                    let _ = Command::new("kill").args(["-KILL", &pid]).status();
                    panic!("sagactl did not finish within {deadline:?} nor stop on SIGTERM")
                }
            }
        }
    }
}

/// `started NAME (pid N), log PATH` lines (and, with `restarts`, `restarted NAME (pid N)`).
pub fn started_children(output: &str, restarts: bool) -> Vec<(String, u32)> {
    output
        .lines()
        .filter_map(|l| {
            let rest = l
                .strip_prefix("started ")
                .or_else(|| l.strip_prefix("restarted ").filter(|_| restarts))?;
            let (name, rest) = rest.split_once(" (pid ")?;
            let (pid, _) = rest.split_once(')')?;
            Some((name.to_string(), pid.parse().ok()?))
        })
        .collect()
}

/// A process with this pid runs and is the named program (pids get reused).
pub fn still_running(pid: u32, name: &str) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let program = name.trim_end_matches(|c: char| c == '-' || c.is_ascii_digit());
    let zombie = std::fs::read_to_string(proc_dir.join("stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false);
    !zombie && String::from_utf8_lossy(&cmdline).contains(program)
}
