//! Circuit-breaker model (closed / open / half-open) as pure code.
//!
//! The caller owns the clock: every method takes `now`. A breaker in front of a
//! participant service stops sending it commands after repeated technical failures,
//! lets a few probes through once the cool-down is over, and closes again when they
//! succeed.

use std::time::Duration;

use crate::ids::Timestamp;

/// Settings of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed breaker.
    pub failure_threshold: u32,
    /// How long an open breaker refuses calls before probing.
    pub open_for: Duration,
    /// Calls allowed at once while half-open.
    pub half_open_max_calls: u32,
    /// Successful probes that close a half-open breaker.
    pub success_threshold: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
            half_open_max_calls: 1,
            success_threshold: 1,
        }
    }
}

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow; counts consecutive failures.
    Closed {
        /// Consecutive failures so far.
        failures: u32,
    },
    /// Calls are refused until `until`.
    Open {
        /// When probing may start.
        until: Timestamp,
    },
    /// A limited number of probe calls decide.
    HalfOpen {
        /// Probes admitted and not yet answered.
        in_flight: u32,
        /// Probes that succeeded.
        successes: u32,
    },
}

/// The answer to "may I call now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead (report the outcome with `on_success` / `on_failure`).
    Allowed,
    /// Refused; retry no earlier than `retry_at`.
    Rejected {
        /// When the breaker may admit a probe.
        retry_at: Timestamp,
    },
}

/// A circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: BreakerState,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed { failures: 0 },
        }
    }

    /// Current state (after the last call; an expired `Open` turns half-open on `admit`).
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Asks to make one call at `now`.
    pub fn admit(&mut self, now: Timestamp) -> Admission {
        match self.state {
            BreakerState::Closed { .. } => Admission::Allowed,
            BreakerState::Open { until } if now < until => Admission::Rejected { retry_at: until },
            BreakerState::Open { .. } => {
                self.state = BreakerState::HalfOpen {
                    in_flight: 1,
                    successes: 0,
                };
                Admission::Allowed
            }
            BreakerState::HalfOpen {
                in_flight,
                successes,
            } => {
                if in_flight < self.config.half_open_max_calls {
                    self.state = BreakerState::HalfOpen {
                        in_flight: in_flight + 1,
                        successes,
                    };
                    Admission::Allowed
                } else {
                    Admission::Rejected { retry_at: now }
                }
            }
        }
    }

    /// Reports that an admitted call succeeded.
    pub fn on_success(&mut self, _now: Timestamp) {
        self.state = match self.state {
            BreakerState::Closed { .. } => BreakerState::Closed { failures: 0 },
            BreakerState::HalfOpen {
                in_flight,
                successes,
            } => {
                let successes = successes + 1;
                if successes >= self.config.success_threshold {
                    BreakerState::Closed { failures: 0 }
                } else {
                    BreakerState::HalfOpen {
                        in_flight: in_flight.saturating_sub(1),
                        successes,
                    }
                }
            }
            open @ BreakerState::Open { .. } => open,
        };
    }

    /// Reports that an admitted call failed (technical failure or timeout; a business
    /// failure is an answer, not a fault, and should be reported as a success).
    pub fn on_failure(&mut self, now: Timestamp) {
        let open = BreakerState::Open {
            until: now.saturating_add(self.config.open_for.as_millis() as u64),
        };
        self.state = match self.state {
            BreakerState::Closed { failures } => {
                let failures = failures + 1;
                if failures >= self.config.failure_threshold {
                    open
                } else {
                    BreakerState::Closed { failures }
                }
            }
            BreakerState::HalfOpen { .. } => open,
            BreakerState::Open { until } => BreakerState::Open { until },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_millis(1000),
            half_open_max_calls: 1,
            success_threshold: 2,
        })
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let mut b = breaker();
        b.on_failure(0);
        b.on_failure(0);
        b.on_success(0);
        b.on_failure(0);
        b.on_failure(0);
        assert_eq!(b.state(), BreakerState::Closed { failures: 2 });
        b.on_failure(10);
        assert_eq!(b.state(), BreakerState::Open { until: 1010 });
        assert_eq!(b.admit(500), Admission::Rejected { retry_at: 1010 });
    }

    #[test]
    fn half_open_admits_limited_probes_then_closes() {
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(0);
        }
        assert_eq!(b.admit(1000), Admission::Allowed);
        assert_eq!(b.admit(1000), Admission::Rejected { retry_at: 1000 });
        b.on_success(1001);
        assert!(matches!(
            b.state(),
            BreakerState::HalfOpen { successes: 1, .. }
        ));
        assert_eq!(b.admit(1002), Admission::Allowed);
        b.on_success(1003);
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    #[test]
    fn a_failed_probe_reopens() {
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(0);
        }
        assert_eq!(b.admit(2000), Admission::Allowed);
        b.on_failure(2000);
        assert_eq!(b.state(), BreakerState::Open { until: 3000 });
    }
}
