//! Test support for the saga runtime: real processes, started and torn down
//! by the tests themselves.
//!
//! This crate owns:
//!
//! - **[`NatsServer`]**: a real `nats-server` with JetStream for one test, on
//!   a free 127.0.0.1 port, with a temporary store dir and `sync_interval:
//!   always` (as in the repo's `nats.conf`). It waits, with a deadline, until
//!   the server is ready; it can be stopped, SIGKILLed, paused and started
//!   again on the same port with the same data, for fault tests; dropping it
//!   kills the process and deletes the directory.
//! - **Finding the binary** ([`NatsBinary`]): `$NATS_SERVER_BIN`, else
//!   `<workspace>/.tools/bin/nats-server` as installed by
//!   `scripts/install-nats-server.sh` (`make setup`). Versions older than 2.10
//!   (such as Debian's 2.9 in `/usr/sbin`) are refused; a missing binary is an
//!   error that says how to install it.
//! - **[`ProcessGuard`]**: any child process (e.g. our own binaries under
//!   test) that is killed when dropped, with SIGKILL / SIGTERM / SIGSTOP /
//!   SIGCONT helpers.
//! - **[`wait_until`]**: poll a condition with a deadline, instead of sleeping
//!   and hoping.
//!
//! - **[`es`]**: the event-sourcing harness for aggregates and projections built on
//!   `saga-eventstore`: given events / when command / then events or error
//!   ([`es::AggregateTest`]), and projection tests that append, run, rebuild and
//!   compare ([`es::ProjectionTest`]), on the in-memory twin of the store.
//!
//! It owns no NATS client: tests connect with whatever client the crate under
//! test uses, to [`NatsServer::url`].
//!
//! ```no_run
//! use saga_testkit::NatsServer;
//!
//! let mut nats = NatsServer::start().expect("nats-server");
//! println!("connect to {}", nats.url());
//! nats.kill().unwrap(); // crash it
//! nats.start_again().unwrap(); // same port, same store
//! ```
//!
//! Unix only (signals).

mod binary;
mod error;
pub mod es;
mod process;
mod server;
mod wait;

pub use binary::{
    default_binary_path, workspace_root, NatsBinary, ServerVersion, MIN_VERSION,
    NATS_SERVER_BIN_ENV, PINNED_VERSION,
};
pub use error::TestkitError;
pub use process::{process_exists, ProcessGuard};
pub use server::{NatsServer, NatsServerBuilder, DEFAULT_STARTUP_TIMEOUT, DEFAULT_STOP_TIMEOUT};
pub use wait::wait_until;
