//! The consumer's sled ledger: dedupe records (event + key -> when, and the messages the
//! handler asked to publish), the events each key has seen (for the ordering rules),
//! parked events, the failures of events on the retry ladder, counters, and the
//! handler's own trees. One transaction per event covers the handler's writes and the
//! dedupe record.

use std::path::Path;
use std::time::Duration;

use saga_core::catalog::{EventCatalog, Violation};
use saga_core::Timestamp;
use saga_participant::ParticipantStore;
use saga_ports::OutgoingMessage;
use serde::{Deserialize, Serialize};
use sled::transaction::{abort, ConflictableTransactionError, TransactionError, Transactional};
use sled::{Db, IVec, Tree};

use crate::handler::{Event, EventHandler, EventTx, HandleError};
use crate::ChoreographyError;

/// `<event> 0x1f <key>` -> `recorded_at (u64 BE) ++ JSON [OutgoingMessage]`.
pub const DEDUPE_TREE: &str = "choreo_dedupe";
/// `recorded_at (u64 BE) ++ dedupe key` -> empty: dedupe records by age, for pruning.
pub const DEDUPE_BY_TIME_TREE: &str = "choreo_dedupe_by_time";
/// `<key>` -> JSON list of the event names applied (or tracked) for it.
pub const SEEN_TREE: &str = "choreo_seen";
/// `stream sequence (u64 BE)` -> JSON [`ParkedEvent`].
pub const PARKED_TREE: &str = "choreo_parked";
/// `stream sequence (u64 BE)` -> JSON list of [`Failure`] (the ladder climbed so far).
pub const FAILURES_TREE: &str = "choreo_failures";
/// `violations` / `crashes` -> u64 BE.
pub const COUNTERS_TREE: &str = "choreo_counters";

const RESERVED: [&str; 6] = [
    DEDUPE_TREE,
    DEDUPE_BY_TIME_TREE,
    SEEN_TREE,
    PARKED_TREE,
    FAILURES_TREE,
    COUNTERS_TREE,
];

/// An event refused by an ordering rule: recorded, counted, never applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedEvent {
    /// Event name.
    pub event: String,
    /// Its key.
    pub key: String,
    /// Subject it came on.
    pub subject: String,
    /// Its stream sequence.
    pub stream_sequence: u64,
    /// The rule as written.
    pub invariant: String,
    /// What happened.
    pub reason: String,
    /// When it was parked.
    pub at: Timestamp,
}

/// One failed attempt of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Attempt number (1 for the first).
    pub attempt: u32,
    /// When it failed (ms since the epoch).
    pub at: Timestamp,
    /// The handler's error.
    pub error: String,
}

/// What one event's transaction did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The handler ran; its writes and the dedupe record are committed (not flushed).
    Applied {
        /// Messages to publish before acking.
        outbox: Vec<OutgoingMessage>,
        /// The crash knob fired for this effect.
        crash: bool,
    },
    /// Handled within the window already: nothing ran; the recorded messages are
    /// published again (create-only or deduplicated, so nothing doubles).
    Duplicate {
        /// The messages recorded with it.
        outbox: Vec<OutgoingMessage>,
    },
    /// An event the service does not handle but must see for the ordering rules:
    /// recorded for its key.
    Tracked,
    /// Refused by an ordering rule: parked and counted, not applied.
    Parked(Violation),
    /// A "must precede" rule is not met yet, but the missing event may still come (a
    /// crashed consumer's unacked events are redelivered after newer ones): nothing
    /// recorded; try again later, park once the grace period is over.
    Early(Violation),
}

/// Why an event's transaction committed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyError {
    /// A later attempt may succeed (handler `Technical`, or sled failed).
    Technical(String),
    /// Never handleable: DLQ at once.
    Reject(String),
}

#[derive(Debug)]
enum TxAbort {
    Technical(String),
    Reject(String),
}

/// What to run for one event.
#[derive(Clone, Copy)]
pub(crate) struct Run<'a> {
    pub(crate) catalog: &'a EventCatalog,
    pub(crate) handler: &'a dyn EventHandler,
    pub(crate) event: &'a Event,
    /// The service handles it (else it is only tracked for the rules).
    pub(crate) handled: bool,
    pub(crate) key_field: &'a str,
    pub(crate) now: Timestamp,
    pub(crate) window: Duration,
    /// Crash after this many effects at most (the fault knob).
    pub(crate) crash_times: Option<u64>,
    /// The reorder grace period is over: a "must precede" violation is parked.
    pub(crate) park_early: bool,
}

/// A consumer's sled database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConsumerStore {
    db: Db,
    sdk: Vec<Tree>,
}

impl ConsumerStore {
    /// Opens (or creates) the database in `dir`, waiting briefly for a lock that a
    /// dropped handle of this process is releasing (as participants do).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, ChoreographyError> {
        let db = ParticipantStore::open(dir)?.db().clone();
        Self::from_db(db)
    }

    /// A throwaway database: for tests.
    pub fn temporary() -> Result<Self, ChoreographyError> {
        Self::from_db(sled::Config::new().temporary(true).open()?)
    }

    /// Uses an open database.
    pub fn from_db(db: Db) -> Result<Self, ChoreographyError> {
        let sdk = RESERVED
            .iter()
            .map(|n| db.open_tree(n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { db, sdk })
    }

    /// The database (handlers' trees are read through it by reports and tests).
    pub fn db(&self) -> &Db {
        &self.db
    }

    fn tree(&self, name: &str) -> &Tree {
        let i = RESERVED.iter().position(|n| *n == name).unwrap_or(0);
        &self.sdk[i]
    }

    /// Makes every commit so far durable.
    pub async fn flush(&self) -> Result<(), ChoreographyError> {
        // Blocking flush on the blocking pool: sled 0.34's `flush_async` can hang when
        // polled concurrently.
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| std::io::Error::other(format!("flush task: {e}")))
            .map_err(sled::Error::Io)??;
        Ok(())
    }

    /// Ordering violations so far (parked events).
    pub fn violations(&self) -> Result<u64, ChoreographyError> {
        self.counter("violations")
    }

    /// How often the crash knob fired.
    pub fn crashes(&self) -> Result<u64, ChoreographyError> {
        self.counter("crashes")
    }

    fn counter(&self, name: &str) -> Result<u64, ChoreographyError> {
        Ok(self
            .tree(COUNTERS_TREE)
            .get(name)?
            .map(|v| read_u64(&v))
            .transpose()?
            .unwrap_or(0))
    }

    /// Every parked event, by stream sequence.
    pub fn parked(&self) -> Result<Vec<ParkedEvent>, ChoreographyError> {
        self.tree(PARKED_TREE)
            .iter()
            .map(|r| {
                let (_, v) = r?;
                decode(&v)
            })
            .collect()
    }

    /// The events applied or tracked for `key`.
    pub fn seen(&self, key: &str) -> Result<Vec<String>, ChoreographyError> {
        match self.tree(SEEN_TREE).get(key)? {
            Some(v) => decode(&v),
            None => Ok(Vec::new()),
        }
    }

    /// Dedupe records kept.
    pub fn dedupe_len(&self) -> usize {
        self.tree(DEDUPE_TREE).len()
    }

    /// The failures so far of the event at `sequence`.
    pub fn failures(&self, sequence: u64) -> Result<Vec<Failure>, ChoreographyError> {
        match self.tree(FAILURES_TREE).get(sequence.to_be_bytes())? {
            Some(v) => decode(&v),
            None => Ok(Vec::new()),
        }
    }

    /// Records one more failure of the event at `sequence`; returns them all.
    pub fn record_failure(
        &self,
        sequence: u64,
        at: Timestamp,
        error: &str,
    ) -> Result<Vec<Failure>, ChoreographyError> {
        let mut all = self.failures(sequence)?;
        all.push(Failure {
            attempt: u32::try_from(all.len() + 1).unwrap_or(u32::MAX),
            at,
            error: error.to_string(),
        });
        self.tree(FAILURES_TREE)
            .insert(sequence.to_be_bytes(), serde_json::to_vec(&all)?)?;
        Ok(all)
    }

    /// Forgets the failures of the event at `sequence` (it succeeded or was
    /// dead-lettered).
    pub fn clear_failures(&self, sequence: u64) -> Result<(), ChoreographyError> {
        self.tree(FAILURES_TREE).remove(sequence.to_be_bytes())?;
        Ok(())
    }

    /// Forgets dedupe records made before `before`; returns how many.
    pub fn prune(&self, before: Timestamp) -> Result<usize, ChoreographyError> {
        let (dedupe, by_time) = (self.tree(DEDUPE_TREE), self.tree(DEDUPE_BY_TIME_TREE));
        let mut pruned = 0;
        for entry in by_time.range(..before.to_be_bytes().to_vec()) {
            let (index_key, _) = entry?;
            let (at, key) = index_key.split_at(8);
            let at = read_u64(at)?;
            let key = IVec::from(key);
            let removed = (dedupe, by_time)
                .transaction(|(dedupe, by_time)| {
                    by_time.remove(&index_key)?;
                    match dedupe.get(&key)? {
                        Some(v) if v.len() >= 8 && read_u64(&v[..8]).ok() == Some(at) => {
                            dedupe.remove(&key)?;
                            Ok(true)
                        }
                        _ => Ok(false),
                    }
                })
                .map_err(|e: TransactionError| match e {
                    TransactionError::Abort(e) | TransactionError::Storage(e) => e,
                })?;
            pruned += usize::from(removed);
        }
        Ok(pruned)
    }

    /// Opens the handler's trees (after the SDK's), refusing reserved names.
    pub(crate) fn handler_trees(
        &self,
        handler: &dyn EventHandler,
    ) -> Result<(Vec<Tree>, Vec<String>), ChoreographyError> {
        let mut all = self.sdk.clone();
        let mut names = Vec::new();
        for name in handler.trees() {
            if RESERVED.contains(name) || name.starts_with("saga_") {
                return Err(ChoreographyError::Config(format!(
                    "tree `{name}` is reserved for the SDK"
                )));
            }
            all.push(self.db.open_tree(name)?);
            names.push((*name).to_string());
        }
        Ok((all, names))
    }

    /// One event through the rules, the dedupe record and the handler, in one
    /// transaction.
    pub(crate) fn apply(
        &self,
        trees: &(Vec<Tree>, Vec<String>),
        run: &Run<'_>,
    ) -> Result<Outcome, ApplyError> {
        let ev = run.event;
        let dedupe_key = format!("{}\u{1f}{}", ev.name, ev.key).into_bytes();
        let seq_key = ev.stream_sequence.to_be_bytes();
        let window_ms = u64::try_from(run.window.as_millis()).unwrap_or(u64::MAX);
        let result = trees.0[..].transaction(|v| {
            let (dedupe, by_time, seen_t, parked, _failures, counters) =
                (&v[0], &v[1], &v[2], &v[3], &v[4], &v[5]);
            if let Some(p) = parked.get(seq_key)? {
                let p: ParkedEvent = tx_decode(&p)?;
                return Ok(Outcome::Parked(Violation {
                    invariant: p.invariant,
                    reason: p.reason,
                    may_be_early: false,
                }));
            }
            let mut seen: Vec<String> = match seen_t.get(&ev.key)? {
                Some(s) => tx_decode(&s)?,
                None => Vec::new(),
            };
            if !run.handled {
                if !seen.contains(&ev.name) {
                    seen.push(ev.name.clone());
                    seen_t.insert(ev.key.as_bytes(), tx_encode(&seen)?)?;
                }
                return Ok(Outcome::Tracked);
            }
            if let Some(prev) = dedupe.get(&dedupe_key)? {
                if prev.len() >= 8 {
                    let at = read_u64(&prev[..8]).map_err(reject)?;
                    if run.now.saturating_sub(at) < window_ms {
                        return Ok(Outcome::Duplicate {
                            outbox: tx_decode(&prev[8..])?,
                        });
                    }
                    let mut old = prev[..8].to_vec();
                    old.extend_from_slice(&dedupe_key);
                    by_time.remove(old)?;
                }
            }
            let earlier = seen.iter().map(String::as_str).filter(|s| *s != ev.name);
            if let Err(violation) =
                run.catalog
                    .check_order(earlier, &ev.name, run.key_field, &ev.key)
            {
                if violation.may_be_early && !run.park_early {
                    return Ok(Outcome::Early(violation));
                }
                let record = ParkedEvent {
                    event: ev.name.clone(),
                    key: ev.key.clone(),
                    subject: ev.subject.clone(),
                    stream_sequence: ev.stream_sequence,
                    invariant: violation.invariant.clone(),
                    reason: violation.reason.clone(),
                    at: run.now,
                };
                parked.insert(&seq_key, tx_encode(&record)?)?;
                bump(counters, "violations")?;
                return Ok(Outcome::Parked(Violation {
                    may_be_early: false,
                    ..violation
                }));
            }
            let tx = EventTx::new(run.now, &trees.1, &v[RESERVED.len()..], counters);
            let outbox = match run.handler.handle(&tx, ev) {
                Ok(o) => o,
                Err(HandleError::Store(e)) => return Err(e.into()),
                Err(HandleError::Technical(r)) => return abort(TxAbort::Technical(r)),
                Err(HandleError::Reject(r)) => return abort(TxAbort::Reject(r)),
            };
            let mut value = run.now.to_be_bytes().to_vec();
            value.extend_from_slice(&tx_encode(&outbox)?);
            dedupe.insert(dedupe_key.as_slice(), value)?;
            let mut index = run.now.to_be_bytes().to_vec();
            index.extend_from_slice(&dedupe_key);
            by_time.insert(index, IVec::default())?;
            if !seen.contains(&ev.name) {
                seen.push(ev.name.clone());
                seen_t.insert(ev.key.as_bytes(), tx_encode(&seen)?)?;
            }
            let mut crash = false;
            if let Some(times) = run.crash_times {
                let so_far = match counters.get("crashes")? {
                    Some(v) => read_u64(&v).map_err(reject)?,
                    None => 0,
                };
                if so_far < times {
                    counters.insert("crashes", (so_far + 1).to_be_bytes().to_vec())?;
                    crash = true;
                }
            }
            Ok(Outcome::Applied { outbox, crash })
        });
        match result {
            Ok(o) => Ok(o),
            Err(TransactionError::Abort(TxAbort::Technical(r))) => Err(ApplyError::Technical(r)),
            Err(TransactionError::Abort(TxAbort::Reject(r))) => Err(ApplyError::Reject(r)),
            Err(TransactionError::Storage(e)) => Err(ApplyError::Technical(format!("store: {e}"))),
        }
    }
}

fn bump(
    t: &sled::transaction::TransactionalTree,
    name: &str,
) -> Result<(), ConflictableTransactionError<TxAbort>> {
    let n = match t.get(name)? {
        Some(v) => read_u64(&v).map_err(reject)?,
        None => 0,
    };
    t.insert(name, (n + 1).to_be_bytes().to_vec())?;
    Ok(())
}

fn reject(e: ChoreographyError) -> ConflictableTransactionError<TxAbort> {
    ConflictableTransactionError::Abort(TxAbort::Reject(e.to_string()))
}

fn tx_decode<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
) -> Result<T, ConflictableTransactionError<TxAbort>> {
    decode(bytes).map_err(reject)
}

fn tx_encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ConflictableTransactionError<TxAbort>> {
    serde_json::to_vec(value).map_err(|e| reject(e.into()))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ChoreographyError> {
    serde_json::from_slice(bytes).map_err(|e| ChoreographyError::Corrupted(e.to_string()))
}

fn read_u64(bytes: &[u8]) -> Result<u64, ChoreographyError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| {
        ChoreographyError::Corrupted(format!("expected 8 bytes, found {}", bytes.len()))
    })?;
    Ok(u64::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use saga_core::catalog::parse_catalog;

    use super::*;

    const CATALOG: &str = include_str!("../../../events/order-events.yaml");

    /// Counts its effects per key, and fails on demand.
    struct Counter {
        fail: Option<HandleError>,
    }

    impl EventHandler for Counter {
        fn trees(&self) -> &[&str] {
            &["effects"]
        }
        fn handle(
            &self,
            tx: &EventTx<'_>,
            event: &Event,
        ) -> Result<Vec<OutgoingMessage>, HandleError> {
            tx.insert("effects", format!("{}/{}", event.key, event.name), vec![1])?;
            if let Some(e) = &self.fail {
                return Err(e.clone());
            }
            Ok(vec![OutgoingMessage {
                subject: format!("events.orders.Echo.{}", event.key),
                msg_id: format!("echo:{}", event.key),
                headers: Default::default(),
                payload: Vec::new(),
            }])
        }
    }

    fn event(name: &str, key: &str, seq: u64) -> Event {
        Event {
            name: name.into(),
            key: key.into(),
            correlation_id: None,
            subject: format!("events.orders.{name}.{key}"),
            stream_sequence: seq,
            headers: Default::default(),
            payload: Vec::new(),
        }
    }

    struct Given {
        store: ConsumerStore,
        catalog: EventCatalog,
    }

    impl Given {
        fn new() -> Self {
            Self {
                store: ConsumerStore::temporary().unwrap(),
                catalog: parse_catalog("c.yaml", CATALOG).unwrap().catalog,
            }
        }
        fn when(
            &self,
            h: &Counter,
            ev: &Event,
            handled: bool,
            now: u64,
        ) -> Result<Outcome, ApplyError> {
            let trees = self.store.handler_trees(h).unwrap();
            self.store.apply(
                &trees,
                &Run {
                    catalog: &self.catalog,
                    handler: h,
                    event: ev,
                    handled,
                    key_field: "orderId",
                    now,
                    window: Duration::from_secs(60),
                    crash_times: None,
                    park_early: true,
                },
            )
        }
        fn effects(&self) -> usize {
            self.store.db().open_tree("effects").unwrap().len()
        }
    }

    const OK: Counter = Counter { fail: None };

    #[test]
    fn an_event_is_applied_once_within_the_window_and_its_messages_are_kept() {
        let g = Given::new();
        assert_eq!(
            g.when(&OK, &event("OrderPlaced", "o-1", 1), false, 0),
            Ok(Outcome::Tracked)
        );
        let first = g
            .when(&OK, &event("OrderConfirmed", "o-1", 2), true, 1_000)
            .unwrap();
        let Outcome::Applied {
            outbox,
            crash: false,
        } = first
        else {
            panic!("{first:?}")
        };
        assert_eq!(outbox[0].subject, "events.orders.Echo.o-1");
        // The same event again (a redelivery, or a copy on another subject).
        let again = g
            .when(&OK, &event("OrderConfirmed", "o-1", 9), true, 30_000)
            .unwrap();
        assert_eq!(again, Outcome::Duplicate { outbox });
        assert_eq!(g.effects(), 1);
        // Past the window it is handled again, as the window promises.
        let late = g
            .when(&OK, &event("OrderConfirmed", "o-1", 10), true, 61_001)
            .unwrap();
        assert!(matches!(late, Outcome::Applied { .. }), "{late:?}");
        assert_eq!(g.store.prune(61_001).unwrap(), 0, "the fresh record stays");
        assert_eq!(g.store.prune(200_000).unwrap(), 1);
        assert_eq!(g.store.dedupe_len(), 0);
    }

    #[test]
    fn a_violation_is_parked_counted_and_never_applied_even_when_delivered_again() {
        let g = Given::new();
        let orphan = event("OrderConfirmed", "o-2", 5);
        let trees = g.store.handler_trees(&OK).unwrap();
        let early = g.store.apply(
            &trees,
            &Run {
                catalog: &g.catalog,
                handler: &OK,
                event: &orphan,
                handled: true,
                key_field: "orderId",
                now: 0,
                window: Duration::from_secs(60),
                crash_times: None,
                park_early: false,
            },
        );
        assert!(matches!(early, Ok(Outcome::Early(_))), "{early:?}");
        assert_eq!(
            g.store.violations().unwrap(),
            0,
            "not parked within the grace"
        );
        let parked = g.when(&OK, &orphan, true, 0).unwrap();
        let Outcome::Parked(v) = &parked else {
            panic!("{parked:?}")
        };
        assert_eq!(v.invariant, "OrderPlaced must precede OrderConfirmed");
        // The placement arrives later: the parked delivery stays parked (redrive it).
        g.when(&OK, &event("OrderPlaced", "o-2", 6), false, 0)
            .unwrap();
        assert_eq!(g.when(&OK, &orphan, true, 0).unwrap(), parked);
        assert_eq!(g.effects(), 0);
        assert_eq!(g.store.violations().unwrap(), 1);
        assert_eq!(g.store.parked().unwrap()[0].stream_sequence, 5);
        assert_eq!(g.store.seen("o-2").unwrap(), ["OrderPlaced"]);
    }

    #[test]
    fn a_failed_handler_leaves_nothing_behind() {
        let g = Given::new();
        g.when(&OK, &event("OrderPlaced", "o-3", 1), false, 0)
            .unwrap();
        let broken = Counter {
            fail: Some(HandleError::Technical("db down".into())),
        };
        let ev = event("OrderConfirmed", "o-3", 2);
        assert_eq!(
            g.when(&broken, &ev, true, 0),
            Err(ApplyError::Technical("db down".into()))
        );
        assert_eq!(g.effects(), 0, "the effect was rolled back");
        assert_eq!(g.store.dedupe_len(), 0);
        assert_eq!(g.store.seen("o-3").unwrap(), ["OrderPlaced"]);
        let all = g.store.record_failure(2, 10, "db down").unwrap();
        assert_eq!(all[0].attempt, 1);
        assert_eq!(g.store.record_failure(2, 20, "still").unwrap().len(), 2);
        let rejected = Counter {
            fail: Some(HandleError::Reject("unknown".into())),
        };
        assert_eq!(
            g.when(&rejected, &ev, true, 0),
            Err(ApplyError::Reject("unknown".into()))
        );
        assert!(matches!(
            g.when(&OK, &ev, true, 0),
            Ok(Outcome::Applied { .. })
        ));
        g.store.clear_failures(2).unwrap();
        assert!(g.store.failures(2).unwrap().is_empty());
    }
}
