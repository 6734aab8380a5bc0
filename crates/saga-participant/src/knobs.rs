//! Fault-injection knobs for demos and chaos tests: added latency, a rate of technical
//! failures drawn from a seeded RNG, and a crash right after an effect is durable.

use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::ParticipantError;

/// Faults a participant injects on purpose. The default injects none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Knobs {
    /// Slept before each fresh execution (not before answering a duplicate).
    pub latency: Duration,
    /// Probability in `[0, 1]` that a fresh execution answers a technical failure
    /// instead of running the handler.
    pub technical_failure_rate: f64,
    /// Seed of the RNG behind `technical_failure_rate`: the same seed and the same
    /// commands give the same failures.
    pub seed: u64,
    /// Exit the process after an effect is committed and flushed, before its reply is
    /// published: the "crash between effect and reply" case.
    pub crash_after_effect: Option<CrashAfterEffect>,
}

impl Knobs {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ParticipantError> {
        if !(0.0..=1.0).contains(&self.technical_failure_rate) {
            return Err(ParticipantError::Config(format!(
                "technical failure rate {} is not within [0, 1]",
                self.technical_failure_rate
            )));
        }
        Ok(())
    }
}

/// Crash after the effect of `action`, the first `times` times (every time when `None`).
///
/// The count is kept in sled and bumped in the effect's own transaction, so a restarted
/// process configured with `ACTION:1` does not crash again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashAfterEffect {
    /// Action name, as in the command (e.g. `ReserveStock`).
    pub action: String,
    /// How many crashes in the life of the data directory; `None`: always.
    pub times: Option<u64>,
}

impl FromStr for CrashAfterEffect {
    type Err = ParticipantError;

    /// `ACTION` (always) or `ACTION:N` (the first N times).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| ParticipantError::Config(format!("crash-after-effect `{s}`: {why}"));
        let (action, times) = match s.split_once(':') {
            None => (s, None),
            Some((a, n)) => {
                let n: u64 = n
                    .parse()
                    .map_err(|_| bad("expected ACTION or ACTION:N with N a number"))?;
                if n == 0 {
                    return Err(bad("N must be at least 1"));
                }
                (a, Some(n))
            }
        };
        if action.is_empty() {
            return Err(bad("the action is empty"));
        }
        Ok(Self {
            action: action.to_string(),
            times,
        })
    }
}

/// Draws injected technical failures from the seeded RNG.
#[derive(Debug)]
pub(crate) struct FailureInjector {
    rate: f64,
    rng: Mutex<StdRng>,
}

impl FailureInjector {
    pub(crate) fn new(rate: f64, seed: u64) -> Self {
        Self {
            rate,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }

    pub(crate) fn should_fail(&self) -> bool {
        if self.rate <= 0.0 {
            return false;
        }
        let draw: f64 = self.rng.lock().unwrap_or_else(|p| p.into_inner()).gen();
        draw < self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_spec_parses_action_and_count() {
        assert_eq!(
            "ReserveStock".parse::<CrashAfterEffect>().unwrap(),
            CrashAfterEffect {
                action: "ReserveStock".into(),
                times: None
            }
        );
        assert_eq!(
            "ChargePayment:2".parse::<CrashAfterEffect>().unwrap().times,
            Some(2)
        );
        for bad in ["", ":1", "X:0", "X:many"] {
            assert!(bad.parse::<CrashAfterEffect>().is_err(), "{bad}");
        }
    }

    #[test]
    fn failure_rate_is_reproducible_and_bounded() {
        let draws = |seed| {
            let inj = FailureInjector::new(0.3, seed);
            (0..1000).map(|_| inj.should_fail()).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        let failures = draws(7).iter().filter(|f| **f).count();
        assert!((200..400).contains(&failures), "{failures}");
        assert!(!FailureInjector::new(0.0, 1).should_fail());
        assert!(FailureInjector::new(1.0, 1).should_fail());
    }
}
