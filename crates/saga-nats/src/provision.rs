//! Idempotent provisioning of the streams, KV buckets and durable consumers (the
//! rationale is on [`provision`]).

use std::time::Duration;

use async_nats::jetstream::consumer::{self, pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::CreateStreamErrorKind;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, kv, ErrorCode};

use crate::names::{self, check_token};
use crate::NatsError;

/// How many times a create/update race is retried before giving up.
const ATTEMPTS: u32 = 5;

/// Delivery settings of a durable consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSettings {
    /// How long a delivery may stay unacked before it is redelivered (the first delivery's
    /// deadline; see `backoff`). Default 30 s. Long handlers call `in_progress`.
    pub ack_wait: Duration,
    /// Deliveries before the server gives up on a message (default 10). Handlers
    /// dead-letter a message whose `delivered` reached this, so nothing is dropped silently.
    pub max_deliver: i64,
    /// Ack deadline of the 1st, 2nd, ... delivery; the last entry repeats. Empty: `ack_wait`
    /// for every delivery. Must start with `ack_wait` and be shorter than `max_deliver`.
    /// Default: 30 s, 1 min, 2 min, 5 min.
    pub backoff: Vec<Duration>,
    /// Unacked deliveries in flight before the server pauses delivery (default 1000).
    pub max_ack_pending: i64,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            max_deliver: 10,
            backoff: vec![
                Duration::from_secs(30),
                Duration::from_secs(60),
                Duration::from_secs(120),
                Duration::from_secs(300),
            ],
            max_ack_pending: 1000,
        }
    }
}

impl ConsumerSettings {
    /// Refuses settings JetStream would reject or silently rewrite.
    pub fn validate(&self) -> Result<(), NatsError> {
        let fail = |m: String| Err(NatsError::InvalidConfig(m));
        if self.ack_wait < Duration::from_millis(1) {
            return fail(format!("ack_wait {:?} is too short", self.ack_wait));
        }
        if self.max_deliver == 0 || self.max_deliver < -1 {
            return fail(format!(
                "max_deliver {} must be positive (or -1 for unlimited)",
                self.max_deliver
            ));
        }
        if self.max_ack_pending == 0 || self.max_ack_pending < -1 {
            return fail(format!(
                "max_ack_pending {} must be positive (or -1 for unlimited)",
                self.max_ack_pending
            ));
        }
        if let Some(first) = self.backoff.first() {
            if *first != self.ack_wait {
                return fail(format!(
                    "the first backoff entry ({first:?}) must equal ack_wait ({:?}): \
                     JetStream replaces ack_wait with it",
                    self.ack_wait
                ));
            }
            if self.max_deliver != -1 && self.max_deliver <= self.backoff.len() as i64 {
                return fail(format!(
                    "max_deliver ({}) must be greater than the number of backoff entries ({})",
                    self.max_deliver,
                    self.backoff.len()
                ));
            }
        }
        Ok(())
    }

    /// One filter goes in `filter_subject` (the API subject then names it, which NATS
    /// permissions can pin); a caller that needs several sets `filter_subjects` on the
    /// result instead.
    fn pull_config(&self, name: &str, filter_subject: String, description: String) -> pull::Config {
        pull::Config {
            durable_name: Some(name.to_owned()),
            name: Some(name.to_owned()),
            description: Some(description),
            filter_subject,
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            backoff: self.backoff.clone(),
            max_ack_pending: self.max_ack_pending,
            ..Default::default()
        }
    }
}

/// What [`provision`] creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionConfig {
    /// Partitions of `saga.in.<partition>.<saga_id>`: one consumer `saga-p<N>` each
    /// (default 16). Lowering it later leaves the extra consumers in place.
    pub partitions: u32,
    /// Duplicate window of every stream (`Nats-Msg-Id` dedupe). Default 2 minutes.
    pub duplicate_window: Duration,
    /// Replicas of every stream and bucket (1 on a single server; 3 in a cluster).
    pub replicas: usize,
    /// Settings of the partition consumers.
    pub partition_consumer: ConsumerSettings,
    /// Max age of `SAGA_JOURNAL` (default zero: keep everything).
    pub journal_max_age: Duration,
    /// Max age of `SAGA_EVENTS` (default 7 days).
    pub events_max_age: Duration,
    /// Max age of `SAGA_DLQ` (default zero: keep until an operator removes them).
    pub dlq_max_age: Duration,
    /// How long a `saga_workers` entry lives without being refreshed (the bucket's max
    /// age; default 30 s). Workers refresh their entry well within it.
    pub worker_ttl: Duration,
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        Self {
            partitions: 16,
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
            partition_consumer: ConsumerSettings::default(),
            journal_max_age: Duration::ZERO,
            events_max_age: Duration::from_secs(7 * 24 * 3600),
            dlq_max_age: Duration::ZERO,
            worker_ttl: Duration::from_secs(30),
        }
    }
}

impl ProvisionConfig {
    /// Refuses settings JetStream would reject.
    pub fn validate(&self) -> Result<(), NatsError> {
        let fail = |m: String| Err(NatsError::InvalidConfig(m));
        if self.partitions == 0 {
            return fail("partitions must be at least 1".into());
        }
        if self.replicas == 0 || self.replicas > 5 {
            return fail(format!(
                "replicas {} must be between 1 and 5",
                self.replicas
            ));
        }
        if self.duplicate_window < Duration::from_millis(100) {
            return fail(format!(
                "duplicate_window {:?} is too short (at least 100 ms)",
                self.duplicate_window
            ));
        }
        for (what, max_age) in [
            ("journal_max_age", self.journal_max_age),
            ("events_max_age", self.events_max_age),
            ("dlq_max_age", self.dlq_max_age),
        ] {
            if !max_age.is_zero() && max_age < self.duplicate_window {
                return fail(format!(
                    "{what} ({max_age:?}) is shorter than duplicate_window ({:?})",
                    self.duplicate_window
                ));
            }
        }
        self.partition_consumer.validate()
    }

    /// The configuration of every stream, in [`names::STREAMS`] order.
    pub fn stream_configs(&self) -> Vec<stream::Config> {
        let base = |name: &str, subjects: &str, description: &str| stream::Config {
            name: name.to_owned(),
            subjects: vec![subjects.to_owned()],
            description: Some(description.to_owned()),
            storage: StorageType::File,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            max_messages_per_subject: -1,
            ..Default::default()
        };
        vec![
            stream::Config {
                retention: RetentionPolicy::Limits,
                discard: DiscardPolicy::New,
                subjects: vec![
                    names::INBOX_SUBJECTS.to_owned(),
                    names::REPLY_SUBJECTS.to_owned(),
                ],
                ..base(
                    names::INBOX_STREAM,
                    names::INBOX_SUBJECTS,
                    "Saga inputs: saga.in.<partition>.<saga_id> (starts, cancels), \
                     saga.reply.<partition>.<saga_id>.<service> (step replies)",
                )
            },
            stream::Config {
                retention: RetentionPolicy::Limits,
                discard: DiscardPolicy::New,
                ..base(
                    names::COMMANDS_STREAM,
                    names::COMMANDS_SUBJECTS,
                    "Step commands: saga.cmd.<service>.<action>",
                )
            },
            stream::Config {
                retention: RetentionPolicy::Limits,
                discard: DiscardPolicy::New,
                max_age: self.journal_max_age,
                allow_direct: true,
                ..base(
                    names::JOURNAL_STREAM,
                    names::JOURNAL_SUBJECTS,
                    "Saga journals: saga.journal.<saga_type>.<saga_id>",
                )
            },
            stream::Config {
                retention: RetentionPolicy::Limits,
                discard: DiscardPolicy::Old,
                max_age: self.events_max_age,
                allow_direct: true,
                ..base(
                    names::EVENTS_STREAM,
                    names::EVENTS_SUBJECTS,
                    "Domain events: events.<domain>.<EventName>.<saga_id>",
                )
            },
            stream::Config {
                retention: RetentionPolicy::Limits,
                discard: DiscardPolicy::New,
                max_age: self.dlq_max_age,
                ..base(
                    names::DLQ_STREAM,
                    names::DLQ_SUBJECTS,
                    "Dead letters: dlq.<original subject>",
                )
            },
            stream::Config {
                retention: RetentionPolicy::Limits,
                discard: DiscardPolicy::New,
                max_messages_per_subject: 1,
                ..base(
                    names::OPEN_STREAM,
                    names::OPEN_SUBJECTS,
                    "Open sagas by partition: saga.open.<partition>.<saga_type>.<saga_id> \
                     (purged when the saga ends)",
                )
            },
        ]
    }

    /// The configuration of the KV buckets (`saga_owners`, `saga_workers`,
    /// `saga_definitions`).
    pub fn bucket_configs(&self) -> Vec<kv::Config> {
        vec![
            kv::Config {
                bucket: names::OWNERS_BUCKET.to_owned(),
                description: "Partition leases: <partition> -> owner (CAS on revision)".into(),
                // A little history so `nats kv history` shows who owned a partition before.
                history: 5,
                storage: StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            },
            kv::Config {
                bucket: names::WORKERS_BUCKET.to_owned(),
                description: "Live workers: <worker> -> heartbeat".into(),
                history: 1,
                max_age: self.worker_ttl,
                storage: StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            },
            kv::Config {
                bucket: names::DEFINITIONS_BUCKET.to_owned(),
                description: "Definition versions: <type>.<digest> -> YAML, <type>.latest -> \
                              digest"
                    .into(),
                // Versions are written once; the history shows earlier `latest`s.
                history: 10,
                storage: StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            },
        ]
    }
}

/// What [`provision`] set up, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// Streams.
    pub streams: Vec<String>,
    /// KV buckets.
    pub buckets: Vec<String>,
    /// Partition consumers (on `SAGA_INBOX`).
    pub consumers: Vec<String>,
    /// Settings of existing streams and buckets that differ from this configuration and
    /// were kept (`SAGA_JOURNAL: max_age 1h (default: none)`).
    pub kept: Vec<String>,
}

/// Creates, or updates to `config`, every stream, the KV buckets and the partition
/// consumers `saga-p0` .. `saga-p<partitions-1>`. Safe to call again, and from several
/// processes at once.
///
/// # Retention, and why
///
/// - **`SAGA_INBOX` and `SAGA_COMMANDS` keep each message until its readers settled it**
///   (`Limits` retention, no max age, `discard: new`). Each message has one reader that
///   acts on it (the partition consumer `saga-p<N>`, or the shared `svc-<service>`
///   consumer whose instances compete); an ack does not delete it, and
///   [`crate::trim::Trimmer`] (run by the worker holding partition 0) purges in ranges
///   what every consumer whose filter overlaps has acked. With `sync_interval: always`
///   a work queue's delete on ack is one fsync per message (7 of a checkout saga's 31.6);
///   the range purge costs about one per filter and pass. A max age would silently drop
///   an input or a command that nobody processed in time (a participant service down
///   over a long weekend): "nothing accepted is lost" rules it out, and a subject no
///   consumer reads is never trimmed. `discard: new` makes a full stream refuse new work
///   rather than delete work not yet done. Streams made as work queues by an earlier
///   version are kept as they are (JetStream cannot change that retention) and are not
///   trimmed; their acks delete. History is read from `SAGA_JOURNAL`, not from here.
/// - **`SAGA_JOURNAL` keeps everything** (`Limits`, no max age, no per-subject limit,
///   `discard: new`, so a full store refuses appends instead of deleting history). It is
///   read per subject (recovery, projections), with `allow_direct` for cheap reads.
/// - **`SAGA_EVENTS` is a log** (`Limits`, max age [`ProvisionConfig::events_max_age`],
///   7 days by default): domain events fan out to any number of consumers, including ones
///   that start later.
/// - **`SAGA_DLQ` keeps everything** (`Limits`, no max age by default, `discard: new`):
///   an operator inspects and replays dead letters; a full DLQ refuses the dead letter,
///   so the original message stays (un-terminated) in its work queue.
///
/// All streams: file storage, [`ProvisionConfig::replicas`] replicas, the same duplicate
/// window (2 minutes by default).
///
/// # Consumers
///
/// Durable pull consumers with explicit acks, deliver-all, [`ConsumerSettings`]: ack wait
/// 30 s, `max_deliver` 10, and a backoff list. JetStream reads the backoff list as the ack
/// deadline of each successive delivery (the first entry *replaces* `ack_wait`), so the
/// list must start with `ack_wait`; [`ConsumerSettings::validate`] enforces it rather than
/// let the server silently shorten the ack wait. Note that with a backoff, a delayed
/// `nak(d)` of the n-th delivery is redelivered after `d + backoff[n-1] - backoff[0]`, not
/// `d` (the server backdates the nak by `ack_wait` but measures it against the backoff
/// entry); the delay is a minimum. A consumer that needs exact nak delays uses an empty
/// backoff.
///
/// # Idempotence
///
/// Creating an object with the same configuration succeeds on JetStream, and creating a
/// consumer is create-or-update, so two processes provisioning at once both succeed.
///
/// # An operator's settings are kept
///
/// What is missing is created with this configuration. A stream or bucket that exists is
/// left as the operator set it (replicas, limits, max age, ...): the settings that differ
/// from ours are logged at `warn` and returned in [`Provisioned::kept`]. Only what this
/// version cannot work without is added to an existing stream: its subjects and direct
/// reads (`allow_direct`). Partition consumers are ours and are created or updated.
pub async fn provision(
    js: &jetstream::Context,
    config: &ProvisionConfig,
) -> Result<Provisioned, NatsError> {
    config.validate()?;
    let mut streams = Vec::new();
    let mut kept = Vec::new();
    for stream_config in config.stream_configs() {
        let name = stream_config.name.clone();
        kept.extend(ensure_stream(js, stream_config).await?);
        streams.push(name);
    }
    let mut buckets = Vec::new();
    for bucket in config.bucket_configs() {
        let name = bucket.bucket.clone();
        kept.extend(ensure_bucket(js, bucket).await?);
        buckets.push(name);
    }
    let mut consumers = Vec::new();
    for partition in 0..config.partitions {
        let info = ensure_partition_consumer(js, partition, &config.partition_consumer).await?;
        consumers.push(info.name);
    }
    tracing::info!(
        streams = streams.len(),
        buckets = buckets.len(),
        consumers = consumers.len(),
        "JetStream provisioned"
    );
    Ok(Provisioned {
        streams,
        buckets,
        consumers,
        kept,
    })
}

/// Creates, or updates to `config`, the streams only: no KV bucket, no consumer. For
/// participant services, which must not touch the workers' partition consumers (an
/// update with other settings would change how the workers receive their inputs).
pub async fn provision_streams(
    js: &jetstream::Context,
    config: &ProvisionConfig,
) -> Result<Vec<String>, NatsError> {
    config.validate()?;
    let mut streams = Vec::new();
    for stream_config in config.stream_configs() {
        let name = stream_config.name.clone();
        ensure_stream(js, stream_config).await?;
        streams.push(name);
    }
    Ok(streams)
}

/// Creates or updates the partition consumer `saga-p<partition>` on `SAGA_INBOX`
/// (filter `saga.*.<partition>.>`: the partition's inputs and replies). A consumer made
/// by an earlier version with the two filters `saga.in.<partition>.>` and
/// `saga.reply.<partition>.>` is updated to the one filter, which reads the same
/// messages. The stream must exist ([`provision`]).
pub async fn ensure_partition_consumer(
    js: &jetstream::Context,
    partition: u32,
    settings: &ConsumerSettings,
) -> Result<consumer::Info, NatsError> {
    settings.validate()?;
    let name = names::partition_consumer(partition);
    let config = settings.pull_config(
        &name,
        names::partition_consumer_filter(partition),
        format!("Inputs of saga partition {partition}"),
    );
    ensure_consumer(js, names::INBOX_STREAM, config).await
}

/// Creates or updates the consumer `svc-<service>` on `SAGA_COMMANDS` (filter
/// `saga.cmd.<service>.>`), shared by every instance of the participant service. The
/// stream must exist ([`provision`]).
pub async fn ensure_service_consumer(
    js: &jetstream::Context,
    service: &str,
    settings: &ConsumerSettings,
) -> Result<consumer::Info, NatsError> {
    check_token(service)?;
    settings.validate()?;
    let name = names::service_consumer(service);
    let config = settings.pull_config(
        &name,
        names::service_filter(service),
        format!("Commands of participant service {service}"),
    );
    ensure_consumer(js, names::COMMANDS_STREAM, config).await
}

/// Creates or updates the consumer `evt-<service>` on `SAGA_EVENTS` of a choreography
/// service, filtered on the events it sees (`events.<domain>.<EventName>.*` each).
///
/// No server-side delivery limit and no backoff: the consumer SDK counts its attempts
/// in its ledger and climbs its own retry ladder, holding the event (reported in
/// progress) so that later events of the same key wait behind it.
pub async fn ensure_event_consumer(
    js: &jetstream::Context,
    service: &str,
    filters: Vec<String>,
    ack_wait: Duration,
) -> Result<consumer::Info, NatsError> {
    check_token(service)?;
    if filters.is_empty() {
        return Err(NatsError::InvalidConfig(format!(
            "event consumer of {service}: no subject to filter on"
        )));
    }
    let settings = ConsumerSettings {
        ack_wait,
        max_deliver: -1,
        backoff: Vec::new(),
        max_ack_pending: 1000,
    };
    settings.validate()?;
    let name = names::event_consumer(service);
    let mut config = settings.pull_config(
        &name,
        String::new(),
        format!("Domain events seen by choreography service {service}"),
    );
    config.filter_subjects = filters;
    ensure_consumer(js, names::EVENTS_STREAM, config).await
}

async fn ensure_consumer(
    js: &jetstream::Context,
    stream: &str,
    config: pull::Config,
) -> Result<consumer::Info, NatsError> {
    let name = config.durable_name.clone().unwrap_or_default();
    let err = |source| NatsError::Consumer {
        stream: stream.to_owned(),
        consumer: name.clone(),
        source,
    };
    // Create-or-update: identical concurrent calls both succeed.
    let created = js
        .create_consumer_on_stream(config, stream)
        .await
        .map_err(err)?;
    Ok(created.cached_info().clone())
}

/// Creates the stream, or updates it when it exists with another configuration.
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<Vec<String>, NatsError> {
    let name = config.name.clone();
    let err = |source| NatsError::Stream {
        stream: name.clone(),
        source,
    };
    for _ in 0..ATTEMPTS {
        // Read first: a user that may read stream info but not create streams (a
        // participant under the shipped NATS permissions) changes nothing when all is
        // in place.
        let theirs = match js.get_stream(&name).await {
            Ok(s) => s.cached_info().config.clone(),
            Err(_) => match js.create_stream(config.clone()).await {
                Ok(_) => return Ok(Vec::new()),
                // Created between our two calls: read it again.
                Err(e) if is_code(&e, ErrorCode::STREAM_NAME_EXIST) => continue,
                Err(e) => return Err(err(e)),
            },
        };
        // The operator's settings stay; only what this version cannot work without
        // (its subjects, direct reads) is added to them.
        let mut needed = theirs.clone();
        for subject in &config.subjects {
            if !needed.subjects.contains(subject) {
                needed.subjects.push(subject.clone());
            }
        }
        needed.allow_direct |= config.allow_direct;
        if needed != theirs {
            match js.update_stream(&needed).await {
                Ok(_) => {
                    tracing::info!(stream = %name, subjects = ?needed.subjects, allow_direct = needed.allow_direct, "stream given what this version needs")
                }
                Err(e) if e.kind() == CreateStreamErrorKind::NotFound => continue,
                Err(e) => return Err(err(e)),
            }
        }
        let kept = stream_drift(&config, &needed)
            .into_iter()
            .map(|d| format!("{name}: {d}"))
            .collect::<Vec<_>>();
        for d in &kept {
            tracing::warn!("keeping the operator's setting of {d}");
        }
        return Ok(kept);
    }
    Err(NatsError::Contended {
        what: format!("stream {name}"),
        attempts: ATTEMPTS,
    })
}

/// The settings this crate chooses that an existing stream has otherwise:
/// `max_age 1h (default: none)`.
pub fn stream_drift(ours: &stream::Config, theirs: &stream::Config) -> Vec<String> {
    let age = |d: Duration| {
        if d.is_zero() {
            "none".to_string()
        } else {
            format!("{d:?}")
        }
    };
    let mut out = Vec::new();
    let mut differs = |what: &str, theirs: String, ours: String| {
        if theirs != ours {
            out.push(format!("{what} {theirs} (default: {ours})"));
        }
    };
    differs(
        "replicas",
        theirs.num_replicas.to_string(),
        ours.num_replicas.to_string(),
    );
    differs(
        "storage",
        format!("{:?}", theirs.storage),
        format!("{:?}", ours.storage),
    );
    differs(
        "retention",
        format!("{:?}", theirs.retention),
        format!("{:?}", ours.retention),
    );
    differs(
        "discard",
        format!("{:?}", theirs.discard),
        format!("{:?}", ours.discard),
    );
    differs("max_age", age(theirs.max_age), age(ours.max_age));
    differs(
        "duplicate_window",
        age(theirs.duplicate_window),
        age(ours.duplicate_window),
    );
    // Zero and negative limits both mean none.
    let limit = |n: i64| {
        if n <= 0 {
            "unlimited".to_string()
        } else {
            n.to_string()
        }
    };
    differs("max_bytes", limit(theirs.max_bytes), limit(ours.max_bytes));
    differs(
        "max_messages",
        limit(theirs.max_messages),
        limit(ours.max_messages),
    );
    differs(
        "max_messages_per_subject",
        limit(theirs.max_messages_per_subject),
        limit(ours.max_messages_per_subject),
    );
    differs(
        "max_message_size",
        limit(i64::from(theirs.max_message_size)),
        limit(i64::from(ours.max_message_size)),
    );
    out
}

/// Creates the bucket if it is missing. An existing one keeps its settings; those that
/// differ from `config` are logged and returned (`saga_workers: max_age 60s (default:
/// 30s)`).
pub async fn ensure_bucket(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<Vec<String>, NatsError> {
    let name = config.bucket.clone();
    for _ in 0..ATTEMPTS {
        if js.get_key_value(&name).await.is_err() {
            match js.create_key_value(config.clone()).await {
                Ok(_) => return Ok(Vec::new()),
                // Created meanwhile by another process: compare with it below.
                Err(_) if js.get_key_value(&name).await.is_ok() => {}
                Err(source) => {
                    return Err(NatsError::KeyValue {
                        bucket: name.clone(),
                        source,
                    })
                }
            }
        }
        let theirs = match js.get_stream(format!("KV_{name}")).await {
            Ok(mut s) => match s.info().await {
                Ok(info) => info.config.clone(),
                Err(_) => continue,
            },
            Err(_) => continue,
        };
        let age = |d: Duration| {
            if d.is_zero() {
                "none".to_string()
            } else {
                format!("{d:?}")
            }
        };
        let mut kept = Vec::new();
        let replicas = config.num_replicas.max(1);
        if theirs.num_replicas != replicas {
            kept.push(format!(
                "{name}: replicas {} (default: {replicas})",
                theirs.num_replicas
            ));
        }
        if theirs.max_age != config.max_age {
            kept.push(format!(
                "{name}: max_age {} (default: {})",
                age(theirs.max_age),
                age(config.max_age)
            ));
        }
        if theirs.max_messages_per_subject != config.history {
            kept.push(format!(
                "{name}: history {} (default: {})",
                theirs.max_messages_per_subject, config.history
            ));
        }
        for d in &kept {
            tracing::warn!("keeping the operator's setting of {d}");
        }
        return Ok(kept);
    }
    Err(NatsError::Contended {
        what: format!("KV bucket {name}"),
        attempts: ATTEMPTS,
    })
}

fn is_code(e: &async_nats::jetstream::context::CreateStreamError, code: ErrorCode) -> bool {
    matches!(e.kind(), CreateStreamErrorKind::JetStream(js) if js.error_code() == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented() {
        let c = ProvisionConfig::default();
        c.validate().unwrap();
        assert_eq!(c.duplicate_window, Duration::from_secs(120));
        assert_eq!(c.replicas, 1);
        assert_eq!(c.partition_consumer.ack_wait, Duration::from_secs(30));
        assert_eq!(c.partition_consumer.max_deliver, 10);
        let streams = c.stream_configs();
        let names: Vec<_> = streams.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, names::STREAMS);
        let journal = &streams[2];
        assert_eq!(journal.retention, RetentionPolicy::Limits);
        assert!(journal.max_age.is_zero());
    }

    #[test]
    fn inconsistent_settings_are_refused() {
        let bad_backoff = ConsumerSettings {
            backoff: vec![Duration::from_secs(1)],
            ..Default::default()
        };
        assert!(matches!(
            bad_backoff.validate(),
            Err(NatsError::InvalidConfig(_))
        ));
        let too_many = ConsumerSettings {
            max_deliver: 4,
            ..Default::default()
        };
        assert!(too_many.validate().is_err());
        let no_backoff = ConsumerSettings {
            backoff: vec![],
            max_deliver: 1,
            ..Default::default()
        };
        no_backoff.validate().unwrap();
        let short_age = ProvisionConfig {
            events_max_age: Duration::from_secs(60),
            ..Default::default()
        };
        assert!(short_age.validate().is_err());
        let zero = ProvisionConfig {
            partitions: 0,
            ..Default::default()
        };
        assert!(zero.validate().is_err());
    }
}
