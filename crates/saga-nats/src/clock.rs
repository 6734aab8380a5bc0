//! [`BrokerClock`]: wall-clock time as the NATS server tells it.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use saga_core::{Clock, SystemClock, Timestamp};

/// This machine's clock corrected by its measured offset to the broker's clock, so that
/// every worker stamps persisted deadlines on one time base: a saga's timers, re-armed by
/// another worker after a takeover, fire when they should even if the two machines'
/// clocks disagree.
///
/// The offset is sampled from the worker's own heartbeat: the server stamps the stored
/// entry, and the sample is that stamp minus the midpoint of the local send and ack
/// times ([`BrokerClock::sample`]); a sample whose round trip is longer than the best
/// seen recently is less precise and only replaces it when the best is old.
#[derive(Debug, Default)]
pub struct BrokerClock {
    offset_ms: AtomicI64,
    best_rtt_ms: AtomicU64,
    samples: AtomicU64,
}

impl BrokerClock {
    /// A clock with no offset measured yet (the local clock).
    pub fn new() -> Self {
        Self {
            offset_ms: AtomicI64::new(0),
            best_rtt_ms: AtomicU64::new(u64::MAX),
            samples: AtomicU64::new(0),
        }
    }

    /// Records one sample: `sent` and `acked` are local wall-clock milliseconds around a
    /// write the server stamped `stamped` (its clock, milliseconds).
    pub fn sample(&self, sent: Timestamp, acked: Timestamp, stamped: Timestamp) {
        let rtt = acked.saturating_sub(sent);
        let n = self.samples.fetch_add(1, Ordering::Relaxed);
        let best = self.best_rtt_ms.load(Ordering::Relaxed);
        // Every 64 samples the best round trip is forgotten, so the offset follows a
        // clock that is stepped or drifts.
        if rtt <= best || n.is_multiple_of(64) {
            let midpoint = sent + rtt / 2;
            let offset = stamped as i64 - midpoint as i64;
            self.offset_ms.store(offset, Ordering::Relaxed);
            self.best_rtt_ms.store(rtt, Ordering::Relaxed);
        }
    }

    /// The measured offset (broker minus local), in milliseconds.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }
}

impl Clock for BrokerClock {
    fn now(&self) -> Timestamp {
        let local = SystemClock.now() as i64;
        (local + self.offset_ms()).max(0) as Timestamp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_comes_from_the_most_precise_sample() {
        let c = BrokerClock::new();
        // The broker runs 20 s behind this machine.
        c.sample(100_000, 100_010, 80_005);
        assert_eq!(c.offset_ms(), -20_000);
        // A slower round trip is less precise: ignored.
        c.sample(200_000, 200_400, 180_100);
        assert_eq!(c.offset_ms(), -20_000);
        c.sample(300_000, 300_004, 280_003);
        assert_eq!(c.offset_ms(), -19_999);
        let now = SystemClock.now() as i64;
        assert!((c.now() as i64 - (now - 19_999)).abs() < 1_000);
    }
}
