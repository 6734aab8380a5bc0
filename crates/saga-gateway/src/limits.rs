//! Per-client limits of the gRPC API: a request rate (a token bucket per client,
//! `governor`) and a cap on open WatchSaga streams per client.
//!
//! A client is named by [`crate::auth`]: its token's name, else the subject of its TLS
//! client certificate, else its peer IP. Both limits answer `RESOURCE_EXHAUSTED` with a
//! message naming the limit, its flag and when to retry.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tonic::Status;

/// Requests per second a client may make once it spent its burst (`--rate-per-client`).
pub const DEFAULT_RATE_PER_CLIENT: u32 = 100;
/// Requests a client may make at once after being idle (`--rate-burst`).
pub const DEFAULT_RATE_BURST: u32 = 200;
/// Open WatchSaga streams per client (`--max-watch-per-client`).
pub const DEFAULT_MAX_WATCH_PER_CLIENT: usize = 16;

/// How often (in checked requests) idle clients' buckets are forgotten.
const RETAIN_EVERY: u64 = 4096;

/// The limits in force; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Sustained requests per second per client.
    pub rate_per_sec: Option<NonZeroU32>,
    /// Burst of the bucket (at least 1; ignored without a rate).
    pub burst: NonZeroU32,
    /// Open WatchSaga streams per client.
    pub max_watch: Option<usize>,
}

impl ClientLimits {
    /// No limit at all (the plaintext, unauthenticated dev mode).
    pub fn unlimited() -> Self {
        Self {
            rate_per_sec: None,
            burst: NonZeroU32::MIN,
            max_watch: None,
        }
    }

    /// The documented defaults: 100 requests/s with a burst of 200, 16 watch streams.
    pub fn defaults() -> Self {
        Self {
            rate_per_sec: NonZeroU32::new(DEFAULT_RATE_PER_CLIENT),
            burst: NonZeroU32::new(DEFAULT_RATE_BURST).unwrap_or(NonZeroU32::MIN),
            max_watch: Some(DEFAULT_MAX_WATCH_PER_CLIENT),
        }
    }
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self::unlimited()
    }
}

/// Applies [`ClientLimits`] to the clients of one server.
pub struct Limiter {
    limits: ClientLimits,
    rate: Option<DefaultKeyedRateLimiter<String>>,
    checked: AtomicU64,
    watches: Mutex<HashMap<String, usize>>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Limiter {
    /// A limiter with no client seen yet.
    pub fn new(limits: ClientLimits) -> Arc<Self> {
        let rate = limits
            .rate_per_sec
            .map(|r| RateLimiter::keyed(Quota::per_second(r).allow_burst(limits.burst)));
        Arc::new(Self {
            limits,
            rate,
            checked: AtomicU64::new(0),
            watches: Mutex::new(HashMap::new()),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> ClientLimits {
        self.limits
    }

    /// Counts one request of `client`; `RESOURCE_EXHAUSTED` when its bucket is empty.
    #[allow(clippy::result_large_err)] // a Status is what the layer answers
    pub fn check_rate(&self, client: &str) -> Result<(), Status> {
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        if self.checked.fetch_add(1, Ordering::Relaxed) % RETAIN_EVERY == RETAIN_EVERY - 1 {
            rate.retain_recent();
        }
        match rate.check_key(&client.to_string()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(rate_exceeded(client, self.limits, wait))
            }
        }
    }

    /// Takes one WatchSaga slot of `client`, given back when the slot is dropped (the
    /// stream ended or the client went away); `RESOURCE_EXHAUSTED` when all are taken.
    #[allow(clippy::result_large_err)]
    pub fn open_watch(self: &Arc<Self>, client: &str) -> Result<WatchSlot, Status> {
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        let open = watches.entry(client.to_string()).or_insert(0);
        if let Some(max) = self.limits.max_watch {
            if *open >= max {
                return Err(Status::resource_exhausted(format!(
                    "watch limit: client `{client}` already has {open} open WatchSaga streams \
                     (--max-watch-per-client {max}); close one, or poll with GetSaga, and retry"
                )));
            }
        }
        *open += 1;
        Ok(WatchSlot {
            limiter: self.clone(),
            client: client.to_string(),
        })
    }

    /// Open WatchSaga streams of `client`.
    pub fn open_watches(&self, client: &str) -> usize {
        let watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        watches.get(client).copied().unwrap_or(0)
    }

    fn close_watch(&self, client: &str) {
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = watches.get_mut(client) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                watches.remove(client);
            }
        }
    }
}

fn rate_exceeded(client: &str, limits: ClientLimits, wait: Duration) -> Status {
    let rate = limits.rate_per_sec.map_or(0, NonZeroU32::get);
    // Round up: "retry after 0 ms" would invite an immediate retry that fails again.
    let ms = wait.as_millis().max(1);
    let mut status = Status::resource_exhausted(format!(
        "rate limit: client `{client}` exceeded {rate} requests/s (burst {}, \
         --rate-per-client/--rate-burst); retry after {ms} ms",
        limits.burst
    ));
    if let Ok(v) = ms.to_string().parse() {
        status.metadata_mut().insert("retry-after-ms", v);
    }
    status
}

/// One open WatchSaga stream of a client; dropping it frees the slot.
#[derive(Debug)]
pub struct WatchSlot {
    limiter: Arc<Limiter>,
    client: String,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.limiter.close_watch(&self.client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32, watch: usize) -> ClientLimits {
        ClientLimits {
            rate_per_sec: NonZeroU32::new(rate),
            burst: NonZeroU32::new(burst).unwrap(),
            max_watch: Some(watch),
        }
    }

    #[test]
    fn a_client_past_its_burst_is_refused_with_the_limit_and_a_retry_hint() {
        let limiter = Limiter::new(limits(1, 3, 1));
        for _ in 0..3 {
            limiter.check_rate("web").unwrap();
        }
        let refused = limiter.check_rate("web").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused
                .message()
                .contains("rate limit: client `web` exceeded 1 requests/s")
                && refused.message().contains("retry after"),
            "{}",
            refused.message()
        );
        assert!(refused.metadata().get("retry-after-ms").is_some());
        limiter.check_rate("other").expect("buckets are per client");
    }

    #[test]
    fn watch_slots_are_counted_per_client_and_given_back_on_drop() {
        let limiter = Limiter::new(limits(100, 100, 2));
        let a = limiter.open_watch("web").unwrap();
        let _b = limiter.open_watch("web").unwrap();
        let refused = limiter.open_watch("web").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("--max-watch-per-client 2"));
        let _other = limiter.open_watch("ops").expect("slots are per client");
        drop(a);
        assert_eq!(limiter.open_watches("web"), 1);
        let _c = limiter.open_watch("web").expect("a slot was given back");
    }

    #[test]
    fn unlimited_limits_refuse_nothing() {
        let limiter = Limiter::new(ClientLimits::unlimited());
        let slots: Vec<_> = (0..100)
            .map(|_| {
                limiter.check_rate("dev").unwrap();
                limiter.open_watch("dev").unwrap()
            })
            .collect();
        assert_eq!(limiter.open_watches("dev"), 100);
        drop(slots);
        assert_eq!(limiter.open_watches("dev"), 0);
    }
}
