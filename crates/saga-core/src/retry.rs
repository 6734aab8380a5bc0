//! Retry policies and the exponential backoff calculator.
//!
//! Jitter is deterministic: the caller passes a seed (the runtime derives it from the
//! idempotency key and the attempt), so the same saga replayed gives the same delays.

use std::time::Duration;

use crate::ids::mix64;

/// How often a step (or a compensation) is tried, and how long to wait in between.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Total tries, the first included. `1` means no retry; [`RetryPolicy::UNBOUNDED`]
    /// means tries never run out (`retryPolicy: unbounded`).
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub initial: Duration,
    /// Growth of the delay from one retry to the next (>= 1.0).
    pub multiplier: f64,
    /// Upper bound of any single delay.
    pub max: Duration,
    /// Fraction (0.0..=1.0) by which a delay may be shortened at random.
    pub jitter: f64,
}

impl RetryPolicy {
    /// Default first delay of `exponentialBackoff(N)`.
    pub const DEFAULT_INITIAL: Duration = Duration::from_millis(500);
    /// Default growth of `exponentialBackoff(N)`.
    pub const DEFAULT_MULTIPLIER: f64 = 2.0;
    /// Default cap of `exponentialBackoff(N)`.
    pub const DEFAULT_MAX: Duration = Duration::from_secs(30);
    /// Default jitter of `exponentialBackoff(N)`.
    pub const DEFAULT_JITTER: f64 = 0.2;

    /// `max_attempts` of a policy whose tries never run out.
    pub const UNBOUNDED: u32 = u32::MAX;

    /// `retryPolicy: unbounded`: exponential backoff from 500 ms, capped at 30 s, tried
    /// until it succeeds. Meant for retriable steps (after the pivot), which are never
    /// compensated and never abandoned.
    pub fn unbounded() -> Self {
        Self {
            max_attempts: Self::UNBOUNDED,
            ..Self::exponential_backoff(0)
        }
    }

    /// Whether tries never run out.
    pub fn is_unbounded(&self) -> bool {
        self.max_attempts == Self::UNBOUNDED
    }

    /// `retryPolicy: none`: one attempt.
    pub const fn none() -> Self {
        Self {
            max_attempts: 1,
            initial: Duration::ZERO,
            multiplier: 1.0,
            max: Duration::ZERO,
            jitter: 0.0,
        }
    }

    /// `retryPolicy: exponentialBackoff(N)`: up to N retries after the first attempt.
    pub fn exponential_backoff(retries: u32) -> Self {
        Self {
            max_attempts: retries.saturating_add(1),
            initial: Self::DEFAULT_INITIAL,
            multiplier: Self::DEFAULT_MULTIPLIER,
            max: Self::DEFAULT_MAX,
            jitter: Self::DEFAULT_JITTER,
        }
    }

    /// Default policy of compensations: they must eventually succeed, so they are
    /// retried for a long while before the saga is handed to an operator (FAILED).
    pub fn compensation_default() -> Self {
        Self {
            max_attempts: 10,
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max: Duration::from_secs(60),
            jitter: Self::DEFAULT_JITTER,
        }
    }

    /// Whether another attempt may follow attempt number `attempt` (1-based).
    pub fn allows_retry_after(&self, attempt: u32) -> bool {
        self.is_unbounded() || attempt < self.max_attempts
    }

    /// Delay before the attempt that follows failed attempt `attempt` (1-based), before
    /// jitter: `min(max, initial * multiplier^(attempt-1))`.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let ms = self.initial.as_millis() as f64 * self.multiplier.powi(exp);
        let capped = ms.min(self.max.as_millis() as f64);
        Duration::from_millis(capped.max(0.0) as u64)
    }

    /// The bounds any jittered delay after attempt `attempt` stays within.
    pub fn delay_bounds(&self, attempt: u32) -> (Duration, Duration) {
        let base = self.base_delay(attempt);
        let low = base.as_millis() as f64 * (1.0 - self.jitter.clamp(0.0, 1.0));
        (Duration::from_millis(low.ceil() as u64), base)
    }

    /// Delay after failed attempt `attempt` with deterministic jitter from `seed`.
    pub fn delay(&self, attempt: u32, seed: u64) -> Duration {
        let base = self.base_delay(attempt).as_millis() as f64;
        let unit = (mix64(seed) >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
        let shortened = base * (1.0 - self.jitter.clamp(0.0, 1.0) * unit);
        let (low, high) = self.delay_bounds(attempt);
        Duration::from_millis(shortened.round() as u64).clamp(low, high)
    }

    /// Longest time a step under this policy can take: every attempt timing out plus
    /// every backoff at its upper bound.
    /// `Duration::MAX` when tries never run out.
    pub fn worst_case(&self, timeout: Duration) -> Duration {
        if self.is_unbounded() {
            return Duration::MAX;
        }
        let mut total = timeout.saturating_mul(self.max_attempts);
        for attempt in 1..self.max_attempts {
            total = total.saturating_add(self.base_delay(attempt));
        }
        total
    }

    /// Checks the numbers make sense; the message names the offending field.
    pub fn check(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(format!(
                "multiplier must be >= 1.0, got {}",
                self.multiplier
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!(
                "jitter must be within 0.0..=1.0, got {}",
                self.jitter
            ));
        }
        if self.max < self.initial {
            return Err("max must not be smaller than initial".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_doubles_and_caps() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max: Duration::from_millis(1000),
            jitter: 0.0,
        };
        let delays: Vec<u64> = (1..8).map(|a| p.base_delay(a).as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(p.delay(3, 42), Duration::from_millis(400));
    }

    #[test]
    fn exponential_backoff_n_means_n_retries() {
        let p = RetryPolicy::exponential_backoff(3);
        assert_eq!(p.max_attempts, 4);
        assert!(p.allows_retry_after(3));
        assert!(!p.allows_retry_after(4));
        assert!(!RetryPolicy::none().allows_retry_after(1));
    }

    #[test]
    fn worst_case_sums_timeouts_and_backoffs() {
        let p = RetryPolicy {
            max_attempts: 3,
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max: Duration::from_secs(60),
            jitter: 0.5,
        };
        // 3 x 10s + 1s + 2s
        assert_eq!(
            p.worst_case(Duration::from_secs(10)),
            Duration::from_secs(33)
        );
        assert_eq!(
            RetryPolicy::none().worst_case(Duration::from_secs(5)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn check_names_the_bad_field() {
        let mut p = RetryPolicy::exponential_backoff(2);
        p.jitter = 1.5;
        assert!(p.check().unwrap_err().contains("jitter"));
        p.jitter = 0.1;
        p.multiplier = 0.5;
        assert!(p.check().unwrap_err().contains("multiplier"));
        p.multiplier = 2.0;
        p.max_attempts = 0;
        assert!(p.check().unwrap_err().contains("max_attempts"));
    }

    #[test]
    fn unbounded_never_runs_out_and_has_no_worst_case() {
        let p = RetryPolicy::unbounded();
        assert!(p.is_unbounded());
        assert!(p.allows_retry_after(1_000_000));
        assert_eq!(p.worst_case(Duration::from_secs(1)), Duration::MAX);
        assert_eq!(p.base_delay(1_000), RetryPolicy::DEFAULT_MAX);
        assert!(p.check().is_ok());
    }
}
