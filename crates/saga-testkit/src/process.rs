//! [`ProcessGuard`]: a child process that is killed when the guard is dropped.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::wait::POLL_INTERVAL;
use crate::TestkitError;

/// A child process that is SIGKILLed and reaped when dropped, with the signals
/// that fault tests need.
///
/// Every signal method first checks (`try_wait`) whether the process has
/// already exited; once it has been reaped its pid may belong to someone else,
/// so the guard refuses to signal it ([`TestkitError::ProcessExited`]).
///
/// ```no_run
/// use std::process::Command;
/// use saga_testkit::ProcessGuard;
///
/// let mut worker = ProcessGuard::spawn(Command::new("sleep").arg("60")).unwrap();
/// worker.sigstop().unwrap(); // freeze it
/// worker.sigcont().unwrap(); // thaw it
/// worker.sigkill().unwrap(); // crash it
/// ```
#[derive(Debug)]
pub struct ProcessGuard {
    child: Child,
    label: String,
    status: Option<ExitStatus>,
}

impl ProcessGuard {
    /// Spawns `command` and guards the child.
    pub fn spawn(command: &mut Command) -> Result<Self, TestkitError> {
        let label = command.get_program().to_string_lossy().into_owned();
        let child = command
            .spawn()
            .map_err(|e| TestkitError::io(format!("spawning {label}"), e))?;
        Ok(ProcessGuard {
            child,
            label,
            status: None,
        })
    }

    /// Guards a child spawned elsewhere.
    pub fn new(child: Child, label: impl Into<String>) -> Self {
        ProcessGuard {
            child,
            label: label.into(),
            status: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The program name, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The underlying child, e.g. to take its stdin/stdout pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status if the process has exited (reaping it), `None` while it runs
    /// (a SIGSTOPped process counts as running).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, TestkitError> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(|e| TestkitError::io(format!("waiting for {}", self.describe()), e))?;
        }
        Ok(self.status)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit: `Some(status)` if it did.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, TestkitError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(POLL_INTERVAL.min(deadline - now));
        }
    }

    /// Sends SIGTERM (does not wait).
    pub fn sigterm(&mut self) -> Result<(), TestkitError> {
        self.send(Signal::SIGTERM)
    }

    /// Sends SIGSTOP: the process freezes (a hung peer) until
    /// [`sigcont`](Self::sigcont). Signals are delivered asynchronously, so
    /// this waits (on Linux, via `/proc`) until every thread of the process
    /// is actually stopped.
    pub fn sigstop(&mut self) -> Result<(), TestkitError> {
        self.send(Signal::SIGSTOP)?;
        self.wait_for_state("every thread to be stopped", true)
    }

    /// Sends SIGCONT, and waits (on Linux) until the process runs again.
    pub fn sigcont(&mut self) -> Result<(), TestkitError> {
        self.send(Signal::SIGCONT)?;
        self.wait_for_state("the process to continue", false)
    }

    /// Sends SIGKILL (a crash) and reaps the process. A process that had
    /// already exited is not an error: its status is returned.
    pub fn sigkill(&mut self) -> Result<ExitStatus, TestkitError> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        // std's kill() sends SIGKILL; on a zombie it succeeds harmlessly.
        self.child
            .kill()
            .map_err(|e| TestkitError::io(format!("SIGKILL to {}", self.describe()), e))?;
        self.wait()
    }

    /// Graceful stop: SIGTERM (plus SIGCONT, in case it is stopped), then
    /// SIGKILL if it has not exited after `grace`. Returns how it exited.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus, TestkitError> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.sigterm()?;
        // A SIGSTOPped process only acts on the SIGTERM once continued. It may
        // have exited in between: that is fine.
        match self.sigcont() {
            Ok(()) | Err(TestkitError::ProcessExited { .. }) => {}
            Err(e) => return Err(e),
        }
        match self.wait_timeout(grace)? {
            Some(status) => Ok(status),
            None => self.sigkill(),
        }
    }

    /// Blocks until the process exits.
    pub fn wait(&mut self) -> Result<ExitStatus, TestkitError> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self
            .child
            .wait()
            .map_err(|e| TestkitError::io(format!("waiting for {}", self.describe()), e))?;
        self.status = Some(status);
        Ok(status)
    }

    fn send(&mut self, sig: Signal) -> Result<(), TestkitError> {
        if let Some(status) = self.try_wait()? {
            return Err(TestkitError::ProcessExited {
                pid: self.pid(),
                label: self.label.clone(),
                status,
            });
        }
        // Not reaped, so the pid is still ours (at worst a zombie).
        let pid = self.pid();
        let raw = i32::try_from(pid).map_err(|_| TestkitError::Signal {
            pid,
            signal: sig.as_str(),
            source: Errno::ESRCH,
        })?;
        signal::kill(Pid::from_raw(raw), sig).map_err(|source| TestkitError::Signal {
            pid,
            signal: sig.as_str(),
            source,
        })
    }

    /// Waits until all threads are stopped (`stopped`) or none is. Gives up
    /// quietly if `/proc` cannot tell (not Linux, or the process is gone).
    fn wait_for_state(&mut self, what: &str, stopped: bool) -> Result<(), TestkitError> {
        let pid = self.pid();
        let deadline = Instant::now() + STATE_CHANGE_TIMEOUT;
        loop {
            match all_threads_stopped(pid) {
                None => return Ok(()),
                Some(s) if s == stopped => return Ok(()),
                Some(_) => {}
            }
            if let Some(status) = self.try_wait()? {
                return Err(TestkitError::ProcessExited {
                    pid,
                    label: self.label.clone(),
                    status,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(TestkitError::Timeout {
                    what: format!("{what} ({})", self.describe()),
                    timeout: STATE_CHANGE_TIMEOUT,
                });
            }
            std::thread::sleep(Duration::from_millis(1).min(deadline - now));
        }
    }

    fn describe(&self) -> String {
        format!("{} (pid {})", self.label, self.pid())
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        if self.status.is_none() {
            // SIGKILL also ends a SIGSTOPped process. Errors are ignored: the
            // process may have exited on its own in the meantime.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How long [`ProcessGuard::sigstop`] / [`ProcessGuard::sigcont`] wait for
/// the kernel to carry the signal out.
const STATE_CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// `Some(true)` if every thread of `pid` is stopped ('T' in `/proc/PID/task/TID/stat`),
/// `Some(false)` if any is not, `None` if `/proc` cannot tell.
fn all_threads_stopped(pid: u32) -> Option<bool> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut seen = false;
    for task in tasks {
        // A thread that exits meanwhile cannot be read: skip it.
        let Ok(task) = task else { continue };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // "tid (comm) S ...": the state follows the last ')' (comm may contain ')').
        let state = stat[stat.rfind(')')? + 1..].trim_start().chars().next()?;
        match state {
            'T' | 't' => seen = true,
            // A zombie thread group leader: the process is exiting.
            'Z' | 'X' => return None,
            _ => return Some(false),
        }
    }
    seen.then_some(true)
}

/// Whether a process with this pid exists (`kill(pid, 0)`).
///
/// A zombie (exited, not yet reaped by its parent) still exists. Processes
/// run through [`ProcessGuard`] or [`NatsServer`](crate::NatsServer) are reaped
/// when they are killed or dropped, so for them `false` means "gone".
pub fn process_exists(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        // 0 and negative values address process groups, not a process.
        return false;
    }
    match signal::kill(Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(Errno::EPERM) => true, // exists, owned by someone else
        Err(_) => false,
    }
}
