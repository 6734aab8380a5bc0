//! The retry ladder of a message that keeps failing (an event consumer's technical
//! failure, a participant command that cannot be answered): a pure decision from the
//! failures so far to "try again at T" or "dead-letter".

use std::time::Duration;

use crate::duration::{format_duration, parse_duration};
use crate::Timestamp;

/// Waits between attempts: after the n-th failure, wait `rungs[n-1]`; after a failure
/// past the last rung, the event goes to the DLQ. `1m, 5m, 30m` by default: four
/// attempts in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryLadder {
    rungs: Vec<Duration>,
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Attempt `attempt` at `at` (ms since the epoch).
    RetryAt {
        /// The attempt to come (2 after the first failure).
        attempt: u32,
        /// When.
        at: Timestamp,
    },
    /// The ladder is climbed: dead-letter.
    DeadLetter,
}

impl Default for RetryLadder {
    fn default() -> Self {
        Self {
            rungs: vec![
                Duration::from_secs(60),
                Duration::from_secs(300),
                Duration::from_secs(1800),
            ],
        }
    }
}

impl RetryLadder {
    /// A ladder of these waits (empty: dead-letter on the first failure).
    pub fn new(rungs: Vec<Duration>) -> Self {
        Self { rungs }
    }

    /// Parses `1m, 5m, 30m` (or `none`).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim() == "none" {
            return Ok(Self::new(Vec::new()));
        }
        text.split(',')
            .map(|s| parse_duration(s.trim()).map_err(|e| format!("retry ladder `{text}`: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map(Self::new)
    }

    /// The waits.
    pub fn rungs(&self) -> &[Duration] {
        &self.rungs
    }

    /// After `failures` failures (at least 1), the last of them at `last_failure_at`.
    pub fn next(&self, failures: usize, last_failure_at: Timestamp) -> NextStep {
        match failures.checked_sub(1).and_then(|i| self.rungs.get(i)) {
            Some(wait) => NextStep::RetryAt {
                attempt: u32::try_from(failures + 1).unwrap_or(u32::MAX),
                at: last_failure_at
                    .saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
            },
            None => NextStep::DeadLetter,
        }
    }
}

impl std::fmt::Display for RetryLadder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.rungs.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self.rungs.iter().map(|d| format_duration(*d)).collect();
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_ladder_is_one_five_thirty_minutes_then_the_dlq() {
        let l = RetryLadder::default();
        assert_eq!(l.to_string(), "1m, 5m, 30m");
        let table = [
            (
                1,
                1_000,
                NextStep::RetryAt {
                    attempt: 2,
                    at: 61_000,
                },
            ),
            (
                2,
                1_000,
                NextStep::RetryAt {
                    attempt: 3,
                    at: 301_000,
                },
            ),
            (
                3,
                1_000,
                NextStep::RetryAt {
                    attempt: 4,
                    at: 1_801_000,
                },
            ),
            (4, 1_000, NextStep::DeadLetter),
            (9, 1_000, NextStep::DeadLetter),
        ];
        for (failures, at, want) in table {
            assert_eq!(l.next(failures, at), want, "after {failures} failures");
        }
    }

    #[test]
    fn ladders_parse_from_text() {
        let l = RetryLadder::parse("1s, 2s,3s").unwrap();
        assert_eq!(l.rungs(), [1, 2, 3].map(Duration::from_secs));
        assert_eq!(
            RetryLadder::parse("none").unwrap().next(1, 0),
            NextStep::DeadLetter
        );
        assert!(RetryLadder::parse("1s, soon").is_err());
    }
}
