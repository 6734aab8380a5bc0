//! Trimming `SAGA_INBOX` and `SAGA_COMMANDS`: what every reader has settled is purged in
//! ranges, instead of being deleted one message at a time on each ack.
//!
//! On a work-queue stream each ack deletes its message, and with `sync_interval: always`
//! each deletion is one more fsync on the broker: about 7 of the 27 fsyncs a checkout
//! saga cost (docs/design.md). Provisioned with `Limits` retention and no max age, the
//! streams keep their messages after the ack (a consumer's acks are written without an
//! fsync of their own), and [`Trimmer::trim`] removes them in ranges: for the filter of
//! each consumer, everything below the ack floor of every consumer whose filter overlaps
//! it. Nothing unsettled is removed: a message is purged only once each reader that can
//! see it has acked or terminated it, and a subject no consumer reads (commands of a
//! service that has not started yet) is never touched, as on a work queue.
//!
//! # What a purge does to the consumers
//!
//! JetStream moves every consumer whose filter lies inside the purged subject to the
//! first message left on that subject (nats-server `stream.purge`, `consumer.purge`):
//! its pending deliveries below it are dropped and its next delivery starts there. For a
//! consumer with one filter that is right. For a consumer with several filters, one of
//! them inside the purged subject, it would skip the unread messages of the others. So
//! only single-filter consumers are trimmed (the partition consumers read
//! `saga.*.<partition>.>` for that reason), and a subject is not purged while a
//! consumer with several filters has one inside it; [`TrimReport::untrimmed`] names
//! them.
//!
//! A stream provisioned earlier as a work queue stays one (JetStream cannot change a
//! work queue's retention): [`Trimmer::trim`] skips it, and its acks delete as before.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream::RetentionPolicy};
use futures::TryStreamExt;
use metrics::{counter, describe_counter, describe_gauge, gauge};
use tracing::{debug, warn};

use crate::names::{COMMANDS_STREAM, INBOX_STREAM};

/// The streams trimmed: the inputs and the commands.
pub const TRIMMED_STREAMS: [&str; 2] = [INBOX_STREAM, COMMANDS_STREAM];

/// How long a consumer's ack floor may stay put behind messages it delivered before
/// the trim warns that it holds the stream's cleanup back.
pub const DEFAULT_HOLD_WARNING: Duration = Duration::from_secs(300);

/// Messages trimmed, by `stream`.
pub const TRIMMED_MESSAGES: &str = "saga_trimmed_messages_total";
/// Consumers whose ack floor has stayed behind a message they delivered for longer than
/// the hold warning (so the messages behind it stay stored), by `stream`.
pub const TRIM_HELD: &str = "saga_trim_held_consumers";
/// Consumers with several filters, whose messages are not trimmed, by `stream`.
pub const TRIM_UNTRIMMED: &str = "saga_trim_untrimmed_consumers";

fn describe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        describe_counter!(
            TRIMMED_MESSAGES,
            "Messages purged from SAGA_INBOX or SAGA_COMMANDS once every reader settled them, by stream (counted by the worker holding partition 0)."
        );
        describe_gauge!(
            TRIM_HELD,
            "Consumers whose ack floor has stayed behind a message they delivered for more than 5 minutes, by stream: the messages behind it are not trimmed."
        );
        describe_gauge!(
            TRIM_UNTRIMMED,
            "Consumers with several filter subjects, by stream: what they read is not trimmed."
        );
    });
}

/// What one consumer has settled, from its info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Consumer name.
    pub name: String,
    /// Its filter subjects (`>` when it has none).
    pub filters: Vec<String>,
    /// Stream sequence at or below which every message on its filters is settled.
    pub ack_floor: u64,
    /// Stream sequence of the last message it delivered.
    pub delivered: u64,
    /// Deliveries it has not settled yet.
    pub ack_pending: usize,
    /// Pull requests waiting at the server.
    pub waiting: usize,
}

impl Progress {
    /// From a consumer's info.
    pub fn of(info: &consumer::Info) -> Self {
        let mut filters = info.config.filter_subjects.clone();
        if !info.config.filter_subject.is_empty() {
            filters.push(info.config.filter_subject.clone());
        }
        if filters.is_empty() {
            filters.push(">".to_owned());
        }
        Progress {
            name: info.name.clone(),
            filters,
            ack_floor: info.ack_floor.stream_sequence,
            delivered: info.delivered.stream_sequence,
            ack_pending: info.num_ack_pending,
            waiting: info.num_waiting,
        }
    }

    /// Whether redeliveries may be queued at the server for a pull that has not come:
    /// unsettled deliveries and no pull request waiting. A purge would drop that queue
    /// (nats-server `consumer.purge`), and the messages would wait one more ack wait.
    fn may_queue_redeliveries(&self) -> bool {
        self.ack_pending > 0 && self.waiting == 0
    }
}

/// Whether some subject matches both NATS subject patterns (`*` one token, `>` the rest).
pub fn overlap(a: &str, b: &str) -> bool {
    let mut a = a.split('.');
    let mut b = b.split('.');
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == y || x == "*" || y == "*" => continue,
            _ => return false,
        }
    }
}

/// Whether every subject matching pattern `inner` matches pattern `outer`.
pub fn within(inner: &str, outer: &str) -> bool {
    let mut inner = inner.split('.');
    let mut outer = outer.split('.');
    loop {
        match (inner.next(), outer.next()) {
            (None, None) => return true,
            (Some(_), Some(">")) => return true,
            (Some(">"), Some(_)) => return false,
            (Some(i), Some("*")) if i != ">" => continue,
            (Some(i), Some(o)) if i == o => continue,
            _ => return false,
        }
    }
}

/// What to purge: for each single-filter consumer's filter, the sequence below which its
/// messages may go (one past the lowest ack floor of the consumers whose filters
/// overlap it, itself among them). Left out: a filter inside which a consumer with
/// several filters has one of its own (those consumers are named in the second list),
/// and, until the next pass, a filter one of whose readers may have redeliveries
/// queued (a purge moves every consumer it touches and empties that queue).
pub fn plan(consumers: &[Progress]) -> (BTreeMap<String, u64>, Vec<String>) {
    let mut points = BTreeMap::new();
    let mut untrimmed = Vec::new();
    for c in consumers {
        let [filter] = c.filters.as_slice() else {
            untrimmed.push(c.name.clone());
            continue;
        };
        let split = consumers
            .iter()
            .any(|d| d.filters.len() > 1 && d.filters.iter().any(|g| within(g, filter)));
        let readers: Vec<&Progress> = consumers
            .iter()
            .filter(|d| d.filters.iter().any(|g| overlap(filter, g)))
            .collect();
        if split || readers.iter().any(|d| d.may_queue_redeliveries()) {
            continue;
        }
        let floor = readers.iter().map(|d| d.ack_floor).min().unwrap_or(0);
        let point = points.entry(filter.clone()).or_insert(floor + 1);
        *point = (*point).min(floor + 1);
    }
    (points, untrimmed)
}

/// What one [`Trimmer::trim`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrimReport {
    /// Messages purged, over every stream.
    pub purged: u64,
    /// Purge requests sent.
    pub requests: usize,
    /// Streams left alone because their retention deletes on ack (work queues made by
    /// an earlier version).
    pub skipped: Vec<String>,
    /// Consumers whose ack floor has stayed behind messages they delivered for longer
    /// than the hold warning: `(stream, consumer, sequence held at)`.
    pub held: Vec<(String, String, u64)>,
    /// Consumers with several filters, whose messages are not trimmed: `(stream,
    /// consumer)`.
    pub untrimmed: Vec<(String, String)>,
}

/// Trims [`TRIMMED_STREAMS`]; keeps what it purged so that an idle stream costs no
/// request.
#[derive(Debug)]
pub struct Trimmer {
    js: jetstream::Context,
    hold_warning: Duration,
    /// (stream, filter) -> the purge point last applied.
    purged: HashMap<(String, String), u64>,
    /// (stream, consumer) -> (ack floor, since when it has not moved, warned).
    floors: HashMap<(String, String), (u64, Instant, bool)>,
    /// Consumers with several filters already warned about.
    untrimmed_warned: HashSet<(String, String)>,
}

impl Trimmer {
    /// A trimmer of the streams of `js`.
    pub fn new(js: jetstream::Context) -> Self {
        Trimmer {
            js,
            hold_warning: DEFAULT_HOLD_WARNING,
            purged: HashMap::new(),
            floors: HashMap::new(),
            untrimmed_warned: HashSet::new(),
        }
    }

    /// Warns about a consumer whose ack floor stays behind what it delivered this long.
    pub fn with_hold_warning(mut self, after: Duration) -> Self {
        self.hold_warning = after;
        self
    }

    /// One pass over every trimmed stream. A stream that cannot be read is reported and
    /// tried again at the next pass; nothing is purged on a partial view.
    pub async fn trim(&mut self) -> Result<TrimReport, async_nats::Error> {
        describe();
        let mut report = TrimReport::default();
        for name in TRIMMED_STREAMS {
            let stream = self.js.get_stream(name).await?;
            if stream.cached_info().config.retention != RetentionPolicy::Limits {
                report.skipped.push(name.to_owned());
                continue;
            }
            let mut progress = Vec::new();
            let mut list = stream.consumers();
            while let Some(info) = list.try_next().await? {
                progress.push(Progress::of(&info));
            }
            self.watch_floors(name, &progress, &mut report);
            let (points, untrimmed) = plan(&progress);
            for consumer in untrimmed {
                if self
                    .untrimmed_warned
                    .insert((name.to_owned(), consumer.clone()))
                {
                    warn!(
                        stream = name,
                        %consumer,
                        "a consumer with several filter subjects: the messages it reads \
                         (and any subject one of its filters lies in) are not trimmed and \
                         stay stored; give it a single filter"
                    );
                }
                report.untrimmed.push((name.to_owned(), consumer));
            }
            let count = |v: &[(String, String)]| v.iter().filter(|(s, _)| s == name).count();
            gauge!(TRIM_UNTRIMMED, "stream" => name).set(count(&report.untrimmed) as f64);
            let held = report.held.iter().filter(|(s, _, _)| s == name).count();
            gauge!(TRIM_HELD, "stream" => name).set(held as f64);
            for (filter, point) in points {
                let key = (name.to_owned(), filter);
                if self.purged.get(&key).is_some_and(|done| *done >= point) || point <= 1 {
                    continue;
                }
                let response = stream.purge().filter(key.1.clone()).sequence(point).await?;
                report.requests += 1;
                report.purged += response.purged;
                counter!(TRIMMED_MESSAGES, "stream" => name).increment(response.purged);
                debug!(stream = name, filter = %key.1, below = point, purged = response.purged, "trimmed");
                self.purged.insert(key, point);
            }
            // Consumers deleted since: forget their filters.
            let live: Vec<String> = progress.iter().flat_map(|p| p.filters.clone()).collect();
            self.purged
                .retain(|(s, f), _| s != name || live.contains(f));
        }
        Ok(report)
    }

    fn watch_floors(&mut self, stream: &str, progress: &[Progress], report: &mut TrimReport) {
        let now = Instant::now();
        self.floors
            .retain(|(s, c), _| s != stream || progress.iter().any(|p| &p.name == c));
        for p in progress {
            let key = (stream.to_owned(), p.name.clone());
            let entry = self.floors.entry(key).or_insert((p.ack_floor, now, false));
            if entry.0 != p.ack_floor || p.delivered <= p.ack_floor {
                *entry = (p.ack_floor, now, false);
                continue;
            }
            if now.duration_since(entry.1) >= self.hold_warning {
                report
                    .held
                    .push((stream.to_owned(), p.name.clone(), p.ack_floor + 1));
                if !entry.2 {
                    entry.2 = true;
                    warn!(
                        stream,
                        consumer = %p.name,
                        sequence = p.ack_floor + 1,
                        held_for = ?now.duration_since(entry.1),
                        "a message delivered but never acked holds back the stream's \
                         trimming (over its max deliveries, or a reader that stopped); \
                         messages behind it stay stored until it is acked, terminated \
                         or purged"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(name: &str, filters: &[&str], ack_floor: u64) -> Progress {
        Progress {
            name: name.into(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
            ack_floor,
            delivered: ack_floor,
            ack_pending: 0,
            waiting: 1,
        }
    }

    #[test]
    fn a_filter_is_left_for_later_while_a_reader_may_have_redeliveries_queued() {
        let busy = |waiting| Progress {
            ack_pending: 3,
            waiting,
            delivered: 60,
            ..progress("svc-payment", &["saga.cmd.payment.>"], 50)
        };
        let (points, _) = plan(&[busy(0), progress("svc-orders", &["saga.cmd.orders.>"], 9)]);
        assert!(!points.contains_key("saga.cmd.payment.>"), "{points:?}");
        assert_eq!(points["saga.cmd.orders.>"], 10);
        // A pull waiting takes any redelivery at once: nothing stays queued.
        let (points, _) = plan(&[busy(1)]);
        assert_eq!(points["saga.cmd.payment.>"], 51);
    }

    #[test]
    fn subjects_overlap_token_by_token() {
        assert!(overlap("saga.cmd.payment.>", "saga.cmd.payment.>"));
        assert!(overlap("saga.cmd.payment.>", "saga.cmd.>"));
        assert!(overlap("saga.cmd.*.charge", "saga.cmd.payment.>"));
        assert!(overlap(">", "saga.in.3.x"));
        assert!(!overlap("saga.cmd.payment.>", "saga.cmd.inventory.>"));
        assert!(!overlap("saga.in.1.>", "saga.in.10.>"));
        assert!(!overlap("saga.in.1", "saga.in.1.x"));
        assert!(!overlap("saga.reply.1.>", "saga.in.1.>"));
    }

    #[test]
    fn a_pattern_lies_within_another_when_it_matches_nothing_more() {
        assert!(within("saga.cmd.payment.>", "saga.cmd.payment.>"));
        assert!(within("saga.cmd.payment.>", "saga.cmd.>"));
        assert!(within("saga.in.3.>", "saga.*.3.>"));
        assert!(within("saga.cmd.payment.charge", "saga.cmd.*.charge"));
        assert!(!within("saga.cmd.>", "saga.cmd.payment.>"));
        assert!(!within("saga.*.3.>", "saga.in.3.>"));
        assert!(!within("saga.cmd.*.charge", "saga.cmd.payment.>"));
        assert!(!within("saga.in.3", "saga.in.3.>"));
        assert!(!within("saga.in.>", "saga.in.*"));
    }

    #[test]
    fn each_filter_is_purged_below_its_own_readers_floor_only() {
        let (points, untrimmed) = plan(&[
            progress("saga-p0", &["saga.*.0.>"], 40),
            progress("saga-p1", &["saga.*.1.>"], 7),
        ]);
        assert_eq!(points["saga.*.0.>"], 41);
        assert_eq!(points["saga.*.1.>"], 8);
        assert!(untrimmed.is_empty());
    }

    #[test]
    fn an_overlapping_reader_that_lags_holds_the_purge_back() {
        let (points, _) = plan(&[
            progress("svc-payment", &["saga.cmd.payment.>"], 90),
            progress("svc-orders", &["saga.cmd.orders.>"], 95),
            progress("tap", &["saga.cmd.>"], 12),
        ]);
        assert_eq!(points["saga.cmd.payment.>"], 13);
        assert_eq!(points["saga.cmd.orders.>"], 13);
        assert_eq!(points["saga.cmd.>"], 13);
    }

    #[test]
    fn a_consumer_with_several_filters_is_not_trimmed_nor_cut_through() {
        let (points, untrimmed) = plan(&[
            progress("old-p0", &["saga.in.0.>", "saga.reply.0.>"], 40),
            progress("tap-in", &["saga.in.0.>"], 50),
            progress("saga-p1", &["saga.*.1.>"], 9),
        ]);
        // Purging `saga.in.0.>` would move old-p0 past its unread replies.
        assert!(!points.contains_key("saga.in.0.>"), "{points:?}");
        assert_eq!(untrimmed, ["old-p0"]);
        assert_eq!(points["saga.*.1.>"], 10);
    }

    #[test]
    fn a_consumer_without_a_filter_reads_everything() {
        let info: consumer::Info = serde_json::from_value(serde_json::json!({
            "stream_name": "SAGA_COMMANDS",
            "name": "all",
            "created": "2026-12-04T00:00:00Z",
            "config": {"ack_policy": "explicit", "deliver_policy": "all", "replay_policy": "instant"},
            "delivered": {"consumer_seq": 5, "stream_seq": 9},
            "ack_floor": {"consumer_seq": 4, "stream_seq": 8},
            "num_ack_pending": 1,
            "num_redelivered": 0,
            "num_waiting": 1,
            "num_pending": 0
        }))
        .expect("consumer info");
        let p = Progress::of(&info);
        assert_eq!(p.filters, vec![">".to_string()]);
        assert_eq!((p.ack_floor, p.delivered), (8, 9));
        let (points, _) = plan(&[p, progress("svc-payment", &["saga.cmd.payment.>"], 50)]);
        assert_eq!(points["saga.cmd.payment.>"], 9);
    }
}
