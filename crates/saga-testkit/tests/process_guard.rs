use std::process::Command;
use std::time::Duration;

use saga_testkit::{process_exists, wait_until, ProcessGuard, TestkitError};

const TIMEOUT: Duration = Duration::from_secs(10);

fn sleeper() -> ProcessGuard {
    ProcessGuard::spawn(Command::new("sleep").arg("600")).unwrap()
}

/// State letter from /proc/PID/stat ('S' sleeping, 'T' stopped, ...).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the state follows the last ')'.
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

#[test]
fn drop_kills_and_reaps() {
    let guard = sleeper();
    let pid = guard.pid();
    assert!(process_exists(pid));
    drop(guard);
    assert!(!process_exists(pid), "{pid} survived drop");
}

#[test]
fn sigkill_reaps_and_later_signals_are_refused() {
    let mut guard = sleeper();
    let pid = guard.pid();
    let status = guard.sigkill().unwrap();
    assert!(!status.success());
    assert!(!process_exists(pid));
    assert!(!guard.is_running());
    // Signalling a reaped pid could hit an unrelated process: refused.
    let err = guard.sigterm().unwrap_err();
    assert!(matches!(err, TestkitError::ProcessExited { .. }), "{err}");
    // A second SIGKILL just reports the status again.
    assert_eq!(guard.sigkill().unwrap(), status);
}

#[test]
fn sigterm_ends_the_process() {
    let mut guard = sleeper();
    guard.sigterm().unwrap();
    let status = guard
        .wait_timeout(TIMEOUT)
        .unwrap()
        .expect("exited after SIGTERM");
    assert!(!status.success());
}

#[test]
fn sigstop_and_sigcont() {
    let mut guard = sleeper();
    let pid = guard.pid();
    guard.sigstop().unwrap();
    wait_until(TIMEOUT, "the process to be stopped", || {
        proc_state(pid) == Some('T')
    })
    .unwrap();
    assert!(guard.is_running(), "a stopped process is not an exited one");
    guard.sigcont().unwrap();
    wait_until(
        TIMEOUT,
        "the process to run again",
        || matches!(proc_state(pid), Some(s) if s != 'T'),
    )
    .unwrap();
}

#[test]
fn terminate_reaches_a_stopped_process() {
    let mut guard = sleeper();
    guard.sigstop().unwrap();
    let status = guard.terminate(TIMEOUT).unwrap();
    assert!(!status.success());
    assert!(!process_exists(guard.pid()));
}

#[test]
fn wait_timeout_returns_none_while_running() {
    let mut guard = sleeper();
    assert_eq!(guard.wait_timeout(Duration::from_millis(50)).unwrap(), None);
}

#[test]
fn wait_until_times_out_with_a_message() {
    let err = wait_until(Duration::from_millis(30), "never", || false).unwrap_err();
    assert!(matches!(err, TestkitError::Timeout { .. }));
    assert!(err.to_string().contains("never"), "{err}");
}
