//! The one error type of the crate.

use std::error::Error as _;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::binary::ServerVersion;

/// How to get a usable nats-server; part of every "binary" error message.
fn install_hint() -> String {
    let root = crate::binary::workspace_root();
    format!(
        "Install the pinned nats-server {} into {}/.tools/bin with `make setup` or \
         `{}/scripts/install-nats-server.sh`, or set NATS_SERVER_BIN to a nats-server >= {} \
         (Debian's /usr/sbin/nats-server 2.9 is too old).",
        crate::binary::PINNED_VERSION,
        root.display(),
        root.display(),
        crate::binary::MIN_VERSION,
    )
}

/// Everything that can go wrong while starting, stopping or signalling a process.
///
/// `Debug` prints the same text as `Display` plus the chain of causes, so that
/// `NatsServer::start().unwrap()` in a test shows a readable message (including
/// how to install the server) instead of a struct dump.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// No nats-server binary where we looked.
    #[error("nats-server not found at {} ({origin}). {}", path.display(), install_hint())]
    BinaryNotFound {
        /// Where we looked.
        path: PathBuf,
        /// Why we looked there: `NATS_SERVER_BIN` or the default location.
        origin: &'static str,
    },

    /// The binary is older than the oldest version the kit supports.
    #[error(
        "{} is nats-server {found}, but saga-testkit needs >= {required} \
         (JetStream `sync_interval`). {}",
        path.display(),
        install_hint()
    )]
    BinaryTooOld {
        /// The binary.
        path: PathBuf,
        /// What it reported.
        found: ServerVersion,
        /// The minimum.
        required: ServerVersion,
    },

    /// `nats-server --version` did not print a version we understand.
    #[error(
        "cannot tell the version of {}: `--version` printed {output:?}. {}",
        path.display(),
        install_hint()
    )]
    UnknownVersion {
        /// The binary.
        path: PathBuf,
        /// What it printed (stdout and stderr).
        output: String,
    },

    /// An I/O operation failed; `context` says which.
    #[error("{context}")]
    Io {
        /// What we were doing.
        context: String,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// The server process exited before it became ready.
    #[error("nats-server (pid {pid}) exited during startup with {status}; its log:\n{log}")]
    ServerExited {
        /// The process id it had.
        pid: u32,
        /// How it exited.
        status: ExitStatus,
        /// The end of its log.
        log: String,
    },

    /// The server did not become ready before the deadline (it has been killed).
    #[error(
        "nats-server (pid {pid}) not ready after {timeout:?}, still waiting for {waiting_for}; \
         its log:\n{log}"
    )]
    StartupTimeout {
        /// The process id it had.
        pid: u32,
        /// The deadline that passed.
        timeout: Duration,
        /// The condition that was not met.
        waiting_for: &'static str,
        /// The end of its log.
        log: String,
    },

    /// The operation needs a running server, but it was stopped or killed.
    #[error("nats-server is not running (it was stopped or killed; see start_again())")]
    NotRunning,

    /// `start_again()` on a server that is still running.
    #[error("nats-server is already running (pid {pid})")]
    AlreadyRunning {
        /// Its process id.
        pid: u32,
    },

    /// A signal was asked for a process that has already exited (and been reaped).
    #[error("process {pid} ({label}) has already exited with {status}")]
    ProcessExited {
        /// The process id it had.
        pid: u32,
        /// The program.
        label: String,
        /// How it exited.
        status: ExitStatus,
    },

    /// `kill(2)` failed.
    #[error("sending {signal} to process {pid} failed")]
    Signal {
        /// Target.
        pid: u32,
        /// Signal name.
        signal: &'static str,
        /// The errno.
        #[source]
        source: nix::errno::Errno,
    },

    /// [`wait_until`](crate::wait_until) ran out of time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// The condition.
        what: String,
        /// The deadline that passed.
        timeout: Duration,
    },
}

impl TestkitError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        TestkitError::Io {
            context: context.into(),
            source,
        }
    }
}

impl fmt::Debug for TestkitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)?;
        let mut cause = self.source();
        while let Some(err) = cause {
            write!(f, "\n  caused by: {err}")?;
            cause = err.source();
        }
        Ok(())
    }
}
