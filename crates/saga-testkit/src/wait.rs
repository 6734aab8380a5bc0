//! Waiting for a condition with a deadline (instead of sleeping and hoping).

use std::fmt::Display;
use std::time::{Duration, Instant};

use crate::TestkitError;

/// How often [`wait_until`] re-checks its condition.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Calls `condition` every few milliseconds until it returns `true`, or fails
/// with [`TestkitError::Timeout`] once `timeout` has passed. The condition is
/// always checked at least once, and once more after the deadline.
///
/// ```
/// # use std::time::Duration;
/// let start = std::time::Instant::now();
/// saga_testkit::wait_until(Duration::from_secs(5), "50ms to pass", || {
///     start.elapsed() >= Duration::from_millis(50)
/// })
/// .unwrap();
/// ```
pub fn wait_until(
    timeout: Duration,
    what: impl Display,
    mut condition: impl FnMut() -> bool,
) -> Result<(), TestkitError> {
    let deadline = Instant::now() + timeout;
    loop {
        let expired = Instant::now() >= deadline;
        if condition() {
            return Ok(());
        }
        if expired {
            return Err(TestkitError::Timeout {
                what: what.to_string(),
                timeout,
            });
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline.saturating_duration_since(Instant::now())));
    }
}
