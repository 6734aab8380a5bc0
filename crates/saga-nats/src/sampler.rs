//! Broker figures for Prometheus, sampled by a periodic task through the `metrics`
//! facade (the binary installs the exporter): stream sizes, dead letters by source,
//! consumer backlogs by partition and by service, live workers and partitions without a
//! live owner. Workers and gateways run it; every instance reports the same cluster-wide
//! figures, so queries aggregate them with `max`.
//!
//! Each round is bounded: one info request per stream, one consumer listing per stream,
//! one KV read per partition and per live worker, and the per-subject breakdown of the
//! dead letters only while the DLQ holds at most [`DLQ_SUBJECTS_MAX`] subjects. A failed
//! read is logged and skipped until the next round.
//!
//! Lease changes are counted where they happen ([`lease_event`], called by the membership loop on each heartbeat).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use futures::TryStreamExt as _;
use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};
use tokio::sync::watch;
use tracing::debug;

use crate::leases::{cluster_owners, cluster_workers, LeaseEvent};
use crate::names::{
    COMMANDS_STREAM, DLQ_STREAM, EVENTS_STREAM, INBOX_STREAM, OWNERS_BUCKET, STREAMS,
    WORKERS_BUCKET,
};

/// Messages stored in a stream, by `stream`.
pub const STREAM_MESSAGES: &str = "saga_stream_messages";
/// Bytes stored in a stream, by `stream`.
pub const STREAM_BYTES: &str = "saga_stream_bytes";
/// Dead letters in `SAGA_DLQ`, by `source`.
pub const DLQ_MESSAGES: &str = "saga_dlq_messages";
/// Inputs not yet delivered or not yet acknowledged, by `partition`.
pub const PARTITION_PENDING: &str = "saga_partition_pending_messages";
/// Commands or events not yet delivered or not yet acknowledged, by `service` and
/// `stream`.
pub const SERVICE_PENDING: &str = "saga_service_pending_messages";
/// Workers whose heartbeat is in `saga_workers`.
pub const WORKERS_LIVE: &str = "saga_workers_live";
/// Partitions whose lease is missing or held by a worker that is not live.
pub const PARTITIONS_UNOWNED: &str = "saga_partitions_unowned";
/// Lease changes of this worker, by `change` (acquired, lost, released).
pub const LEASE_CHANGES: &str = "saga_lease_changes_total";

/// Above this many distinct subjects in the DLQ, dead letters are reported as one
/// `source="all"` figure instead of being broken down (bounded work per round).
pub const DLQ_SUBJECTS_MAX: u64 = 10_000;

/// What the sampler reads.
#[derive(Debug, Clone)]
pub struct SamplerSettings {
    /// The deployment's partition count.
    pub partitions: u32,
    /// Pause between two rounds.
    pub every: Duration,
    /// A worker whose last heartbeat is older is not live (the `saga_workers` bucket's
    /// max age: the server expires the entry then).
    pub worker_ttl: Duration,
}

impl SamplerSettings {
    /// Every 5 s, workers live for 30 s after their last heartbeat.
    pub fn new(partitions: u32) -> Self {
        Self {
            partitions,
            every: Duration::from_secs(5),
            worker_ttl: Duration::from_secs(30),
        }
    }
}

fn describe() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        describe_gauge!(STREAM_MESSAGES, "Messages stored in a JetStream stream of the runtime, by stream.");
        describe_gauge!(STREAM_BYTES, Unit::Bytes, "Bytes stored in a JetStream stream of the runtime, by stream.");
        describe_gauge!(
            DLQ_MESSAGES,
            "Dead letters in SAGA_DLQ, by source (saga.in for saga inputs, saga.cmd.<service> for commands, events.<domain>.<Name> for events)."
        );
        describe_gauge!(
            PARTITION_PENDING,
            "Saga inputs of a partition not yet delivered or not yet acknowledged (consumer saga-p<partition>)."
        );
        describe_gauge!(
            SERVICE_PENDING,
            "Commands (stream SAGA_COMMANDS, consumer svc-<service>) or events (SAGA_EVENTS, evt-<service>) not yet delivered or acknowledged, by service."
        );
        describe_gauge!(WORKERS_LIVE, "Saga workers with a recent heartbeat in KV saga_workers.");
        describe_gauge!(
            PARTITIONS_UNOWNED,
            "Partitions whose lease in KV saga_owners is missing or held by a worker that is not live: nobody runs their sagas."
        );
        describe_counter!(LEASE_CHANGES, "Partition lease changes of this worker, by change (acquired, lost, released).");
    });
}

/// Counts one lease change of a heartbeat.
pub fn lease_event(event: &LeaseEvent) {
    describe();
    let change = match event {
        LeaseEvent::Acquired(_) => "acquired",
        LeaseEvent::Lost(_) => "lost",
        LeaseEvent::Release(_) => "released",
    };
    counter!(LEASE_CHANGES, "change" => change).increment(1);
}

/// Samples every `settings.every` until `stop` turns true (or its sender is dropped).
pub async fn run(
    js: jetstream::Context,
    settings: SamplerSettings,
    mut stop: watch::Receiver<bool>,
) {
    describe();
    loop {
        sample(&js, &settings).await;
        tokio::select! {
            _ = tokio::time::sleep(settings.every) => {}
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
        }
    }
}

/// Starts [`run`] on its own task for the life of the process.
pub fn spawn(js: jetstream::Context, settings: SamplerSettings) {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        run(js, settings, rx).await;
        drop(tx);
    });
}

/// One round.
pub async fn sample(js: &jetstream::Context, settings: &SamplerSettings) {
    for name in STREAMS {
        match js.get_stream(name).await {
            Ok(mut stream) => {
                let state = &stream.cached_info().state;
                gauge!(STREAM_MESSAGES, "stream" => name).set(state.messages as f64);
                gauge!(STREAM_BYTES, "stream" => name).set(state.bytes as f64);
                let subjects = state.subjects_count;
                let total = state.messages;
                match name {
                    DLQ_STREAM => sample_dlq(&stream, subjects, total).await,
                    INBOX_STREAM | COMMANDS_STREAM | EVENTS_STREAM => {
                        sample_consumers(&mut stream, name).await
                    }
                    _ => {}
                }
            }
            Err(e) => debug!(stream = name, error = %e, "metrics: stream info failed"),
        }
    }
    sample_cluster(js, settings).await;
}

/// `dlq.<original subject>` -> its source: `saga.in`, `saga.cmd.<service>`,
/// `events.<domain>.<Name>`, otherwise the original subject's first two tokens.
pub fn dlq_source(dlq_subject: &str) -> String {
    let original = dlq_subject.strip_prefix("dlq.").unwrap_or(dlq_subject);
    let tokens: Vec<&str> = original.split('.').collect();
    let keep = match tokens.as_slice() {
        ["saga", "in", ..] => 2,
        ["saga", "cmd", ..] | ["events", ..] => 3,
        _ => 2,
    };
    tokens[..keep.min(tokens.len())].join(".")
}

async fn sample_dlq(stream: &jetstream::stream::Stream, subjects: u64, total: u64) {
    if subjects > DLQ_SUBJECTS_MAX {
        gauge!(DLQ_MESSAGES, "source" => "all").set(total as f64);
        return;
    }
    let mut by_source: BTreeMap<String, u64> = BTreeMap::new();
    let counted = async {
        let mut list = stream.info_with_subjects("dlq.>").await?;
        while let Some((subject, n)) = list.try_next().await? {
            *by_source.entry(dlq_source(&subject)).or_default() += n as u64;
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    match counted {
        Ok(()) => {
            // A source whose letters were redriven or purged reads 0, not its last value.
            for source in seen_sources(by_source.keys().cloned()) {
                let n = by_source.get(&source).copied().unwrap_or(0);
                gauge!(DLQ_MESSAGES, "source" => source).set(n as f64);
            }
        }
        Err(e) => debug!(error = %e, "metrics: listing the DLQ subjects failed"),
    }
}

/// Every DLQ source reported so far, `now` included.
fn seen_sources(now: impl Iterator<Item = String>) -> Vec<String> {
    static SEEN: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    seen.extend(now);
    seen.iter().cloned().collect()
}

async fn sample_consumers(stream: &mut jetstream::stream::Stream, name: &'static str) {
    let mut consumers = stream.consumers();
    loop {
        match consumers.try_next().await {
            Ok(Some(info)) => {
                let pending = (info.num_pending + info.num_ack_pending as u64) as f64;
                if let Some(p) = info.name.strip_prefix("saga-p") {
                    if name == INBOX_STREAM && p.parse::<u32>().is_ok() {
                        gauge!(PARTITION_PENDING, "partition" => p.to_string()).set(pending);
                    }
                } else if let Some(service) = info
                    .name
                    .strip_prefix("svc-")
                    .or_else(|| info.name.strip_prefix("evt-"))
                {
                    gauge!(SERVICE_PENDING, "service" => service.to_string(), "stream" => name)
                        .set(pending);
                }
            }
            Ok(None) => return,
            Err(e) => {
                debug!(stream = name, error = %e, "metrics: listing consumers failed");
                return;
            }
        }
    }
}

async fn sample_cluster(js: &jetstream::Context, settings: &SamplerSettings) {
    let workers = match js.get_key_value(WORKERS_BUCKET).await {
        Ok(kv) => kv,
        Err(e) => {
            // No worker ever started (or the server is away): none is live.
            debug!(error = %e, "metrics: KV {WORKERS_BUCKET} unavailable");
            gauge!(WORKERS_LIVE).set(0.0);
            gauge!(PARTITIONS_UNOWNED).set(f64::from(settings.partitions));
            return;
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let live = match cluster_workers(&workers, now, settings.worker_ttl).await {
        Ok(live) => live,
        Err(e) => {
            debug!(error = %e, "metrics: reading the live workers failed");
            return;
        }
    };
    gauge!(WORKERS_LIVE).set(live.len() as f64);
    let owners = match js.get_key_value(OWNERS_BUCKET).await {
        Ok(kv) => cluster_owners(&kv, settings.partitions).await,
        Err(e) => {
            debug!(error = %e, "metrics: KV {OWNERS_BUCKET} unavailable");
            BTreeMap::new()
        }
    };
    let live: BTreeSet<&str> = live.iter().map(|w| w.worker.as_str()).collect();
    let unowned = (0..settings.partitions)
        .filter(|p| {
            owners
                .get(p)
                .is_none_or(|lease| !live.contains(lease.worker.as_str()))
        })
        .count();
    gauge!(PARTITIONS_UNOWNED).set(unowned as f64);
}

#[cfg(test)]
mod tests {
    use super::dlq_source;

    #[test]
    fn dead_letters_are_grouped_by_a_bounded_source() {
        let table = [
            ("dlq.saga.in.3.0193a", "saga.in"),
            ("dlq.saga.cmd.payment.charge", "saga.cmd.payment"),
            (
                "dlq.events.order.OrderPlaced.0193a",
                "events.order.OrderPlaced",
            ),
            ("dlq.saga.reply.3.0193a.payment", "saga.reply"),
            ("dlq.other", "other"),
        ];
        for (subject, source) in table {
            assert_eq!(dlq_source(subject), source, "{subject}");
        }
    }
}
