//! The JetStream implementation: one stream `ES_EVENTS` with a subject per aggregate
//! instance (`es.<aggregate>.<id>`), snapshots in the KV bucket `ES_SNAPSHOTS`.
//!
//! | what                 | where                                                  |
//! |----------------------|--------------------------------------------------------|
//! | event                | `ES_EVENTS`, subject `es.<aggregate>.<id>`, payload `saga.es.v1.EventEnvelope` |
//! | expected version     | header `Nats-Expected-Last-Subject-Sequence` (0 = create only), on the first event of an append |
//! | several events       | one atomic batch (ADR-50, `allow_atomic`): headers `Nats-Batch-Id`, `Nats-Batch-Sequence`, `Nats-Batch-Commit: 1` on the last |
//! | idempotent retry     | header `Nats-Msg-Id` = `<aggregate>.<id>.<event id>`   |
//! | snapshot             | KV `ES_SNAPSHOTS` (history 1), key `<aggregate>.<id>`, `saga.es.v1.SnapshotRecord` |
//!
//! # Atomic appends
//!
//! An append of two or more events is one JetStream atomic batch (nats-server 2.12):
//! the server stages the messages and stores all of them, contiguously, when the commit
//! message arrives and every check passes, or none. Only the commit is answered; the
//! other messages go without a reply subject. The expected version is checked on the
//! first message (the server refuses the header on later messages of the same subject).
//! Message ids are allowed in a batch: one already in the duplicate window refuses the
//! whole batch (error 10201), and the store then compares the ids of the events stored
//! after the expected version, as it does after a refused expected version, to answer
//! `duplicate: true`. The server's limits apply: at most 1,000 messages per batch
//! (10199), 50 batches in flight per stream (refused as incomplete, 10176, retryable),
//! 10 s from a batch's first message to its commit. A single event is a plain publish.
//!
//! # Provisioning
//!
//! [`JetStreamEventStore::provision`] creates `ES_EVENTS` or updates, on an existing
//! stream, the settings the store owns (`max_age` from `retentionPolicy`,
//! `allow_atomic`, `duplicate_window`, replicas where the server can change them),
//! logging each change at INFO. [`JetStreamSnapshotStore::provision`] does the same
//! for the history (1) and replicas of `ES_SNAPSHOTS`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::header::{self, HeaderMap};
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::context::{
    CreateStreamErrorKind, GetStreamErrorKind, PublishError, PublishErrorKind,
};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind, StorageType};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use prost::Message as _;
use saga_proto::es as pb;

use crate::error::EsError;
use crate::model::{Appended, ExpectedVersion, NewEvent, RecordedEvent, Snapshot, StreamId, Until};
use crate::store::{EventStore, SnapshotStore};

/// The events stream.
pub const EVENTS_STREAM: &str = "ES_EVENTS";
/// Its subjects.
pub const EVENTS_SUBJECTS: &str = "es.>";
/// The snapshots bucket.
pub const SNAPSHOT_BUCKET: &str = "ES_SNAPSHOTS";
/// How long a read waits for the next event before calling the broker unavailable.
const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Versions remembered per stream to spare a lookup before an append; beyond it the
/// memory is cleared (a miss costs one direct read).
const VERSION_CACHE_LIMIT: usize = 100_000;

/// Subject of one aggregate instance.
pub fn stream_subject(stream: &StreamId) -> String {
    format!("es.{}.{}", stream.aggregate(), stream.id())
}

/// Subjects of every instance of an aggregate type.
pub fn aggregate_subjects(aggregate: &str) -> String {
    format!("es.{aggregate}.*")
}

/// How the stream and the bucket are created.
#[derive(Debug, Clone)]
pub struct Provisioning {
    /// Events older than this are removed by the server (`None`: kept for ever).
    pub max_age: Option<Duration>,
    /// Replicas of the stream and the bucket.
    pub replicas: usize,
    /// How long the server remembers message ids for deduplication.
    pub duplicate_window: Duration,
}

impl Default for Provisioning {
    fn default() -> Self {
        Self {
            max_age: None,
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
        }
    }
}

/// The configuration of `ES_EVENTS`. On an existing stream, [`JetStreamEventStore::provision`]
/// owns and updates: `max_age` (the definition's `retentionPolicy`), `allow_atomic`,
/// `duplicate_window`, the replicas (where the server can change them), the subject
/// `es.>`, direct reads and no per-subject limit. Other settings stay as they are.
pub fn events_stream_config(provisioning: &Provisioning) -> stream::Config {
    stream::Config {
        name: EVENTS_STREAM.to_owned(),
        subjects: vec![EVENTS_SUBJECTS.to_owned()],
        description: Some("Event-sourced aggregates: es.<aggregate>.<id>".to_owned()),
        storage: StorageType::File,
        num_replicas: provisioning.replicas,
        duplicate_window: provisioning.duplicate_window,
        max_age: provisioning.max_age.unwrap_or_default(),
        max_messages_per_subject: -1,
        allow_direct: true,
        allow_atomic_publish: true,
        ..Default::default()
    }
}

fn age(d: &Duration) -> String {
    if d.is_zero() {
        "none".to_owned()
    } else {
        format!("{d:?}")
    }
}

/// Sets `theirs` to `ours` and notes the change (`max_age 1h -> none`).
fn adopt<T: PartialEq + Clone>(
    changes: &mut Vec<String>,
    what: &str,
    theirs: &mut T,
    ours: &T,
    show: impl Fn(&T) -> String,
) {
    if theirs != ours {
        changes.push(format!("{what} {} -> {}", show(theirs), show(ours)));
        *theirs = ours.clone();
    }
}

/// `theirs` with the settings `ES_EVENTS` owns taken from `ours`, and what changed.
fn adopt_events(theirs: &stream::Config, ours: &stream::Config) -> (stream::Config, Vec<String>) {
    let mut new = theirs.clone();
    let mut changes = Vec::new();
    adopt(
        &mut changes,
        "max_age",
        &mut new.max_age,
        &ours.max_age,
        age,
    );
    adopt(
        &mut changes,
        "allow_atomic",
        &mut new.allow_atomic_publish,
        &ours.allow_atomic_publish,
        bool::to_string,
    );
    adopt(
        &mut changes,
        "duplicate_window",
        &mut new.duplicate_window,
        &ours.duplicate_window,
        |d| format!("{d:?}"),
    );
    adopt(
        &mut changes,
        "replicas",
        &mut new.num_replicas,
        &ours.num_replicas,
        usize::to_string,
    );
    adopt(
        &mut changes,
        "max_msgs_per_subject",
        &mut new.max_messages_per_subject,
        &ours.max_messages_per_subject,
        i64::to_string,
    );
    adopt(
        &mut changes,
        "allow_direct",
        &mut new.allow_direct,
        &ours.allow_direct,
        bool::to_string,
    );
    for subject in &ours.subjects {
        if !new.subjects.contains(subject) {
            changes.push(format!("subject {subject} added"));
            new.subjects.push(subject.clone());
        }
    }
    (new, changes)
}

/// `theirs` (the stream of `ES_SNAPSHOTS`) with one revision per key and our replicas.
fn adopt_snapshots(
    theirs: &stream::Config,
    ours: &stream::Config,
) -> (stream::Config, Vec<String>) {
    let mut new = theirs.clone();
    let mut changes = Vec::new();
    adopt(
        &mut changes,
        "history",
        &mut new.max_messages_per_subject,
        &ours.max_messages_per_subject,
        i64::to_string,
    );
    adopt(
        &mut changes,
        "replicas",
        &mut new.num_replicas,
        &ours.num_replicas,
        usize::to_string,
    );
    (new, changes)
}

fn jetstream_code<K>(kind: &K, code: ErrorCode) -> bool
where
    K: JetStreamKind,
{
    kind.jetstream_error()
        .is_some_and(|e| e.error_code() == code)
}

/// Error kinds that may carry the server's error.
trait JetStreamKind {
    fn jetstream_error(&self) -> Option<&jetstream::Error>;
}

impl JetStreamKind for GetStreamErrorKind {
    fn jetstream_error(&self) -> Option<&jetstream::Error> {
        match self {
            GetStreamErrorKind::JetStream(e) => Some(e),
            _ => None,
        }
    }
}

impl JetStreamKind for CreateStreamErrorKind {
    fn jetstream_error(&self) -> Option<&jetstream::Error> {
        match self {
            CreateStreamErrorKind::JetStream(e) => Some(e),
            _ => None,
        }
    }
}

/// How often provisioning reads again when another process creates or deletes the
/// stream at the same time.
const PROVISION_ATTEMPTS: usize = 5;

/// Creates the stream from `ours`, or updates on the existing one the settings `owned` takes from `ours`, logging each
/// change at INFO. Replicas the server cannot change (a single server asked for 3) are
/// kept, with a warning.
async fn ensure_stream(
    js: &jetstream::Context,
    ours: stream::Config,
    owned: fn(&stream::Config, &stream::Config) -> (stream::Config, Vec<String>),
) -> Result<stream::Stream, EsError> {
    let name = ours.name.clone();
    for _ in 0..PROVISION_ATTEMPTS {
        let theirs = match js.get_stream(&name).await {
            Ok(s) => s.cached_info().config.clone(),
            Err(e) if jetstream_code(&e.kind(), ErrorCode::STREAM_NOT_FOUND) => {
                match js.create_stream(ours.clone()).await {
                    Ok(s) => {
                        tracing::info!(stream = %name, max_age = %age(&ours.max_age), "stream created");
                        return Ok(s);
                    }
                    // Created by another process in between: read it.
                    Err(e) if jetstream_code(&e.kind(), ErrorCode::STREAM_NAME_EXIST) => continue,
                    Err(e) => return Err(unavailable(format!("creating stream {name}"))(e.into())),
                }
            }
            Err(e) => return Err(unavailable(format!("reading stream {name}"))(e.into())),
        };
        let (mut wanted, mut changes) = owned(&theirs, &ours);
        if changes.is_empty() {
            return js
                .get_stream(&name)
                .await
                .map_err(|e| unavailable(format!("reading stream {name}"))(e.into()));
        }
        let mut updated = js.update_stream(&wanted).await;
        if let Err(e) = &updated {
            if wanted.num_replicas != theirs.num_replicas
                && e.kind() != CreateStreamErrorKind::NotFound
            {
                tracing::warn!(
                    stream = %name,
                    replicas = theirs.num_replicas,
                    wanted = wanted.num_replicas,
                    error = %e,
                    "the server cannot change the replicas: kept"
                );
                wanted.num_replicas = theirs.num_replicas;
                changes.retain(|c| !c.starts_with("replicas "));
                updated = js.update_stream(&wanted).await;
            }
        }
        match updated {
            Ok(_) => {
                if !changes.is_empty() {
                    tracing::info!(stream = %name, changed = %changes.join(", "), "stream settings updated");
                }
            }
            Err(e) if e.kind() == CreateStreamErrorKind::NotFound => continue,
            Err(e) => return Err(unavailable(format!("updating stream {name}"))(e.into())),
        }
        return js
            .get_stream(&name)
            .await
            .map_err(|e| unavailable(format!("reading stream {name}"))(e.into()));
    }
    Err(EsError::new(
        crate::ErrorKind::Unavailable,
        format!(
            "stream {name} was created and deleted {PROVISION_ATTEMPTS} times while provisioning"
        ),
    ))
}

/// [`EventStore`] on JetStream.
///
/// **Appends** carry `Nats-Expected-Last-Subject-Sequence`: the stream sequence of the
/// stream's event at the expected version (0 for "no event yet"). The server refuses
/// when another writer appended in between: [`crate::ErrorKind::Conflict`]. Each event
/// carries `Nats-Msg-Id`; a retried append is answered from the server's duplicate
/// window, and after the window by comparing the ids of the events that are there.
/// Several events are one atomic batch: all are stored or none, and readers never see
/// part of them. (A prefix stored by an older version of this store, which published
/// them one by one, is completed by a retry with the same ids.)
///
/// **Reads** go through an ordered consumer filtered on the stream's subject, from the
/// position of a snapshot when there is one, up to the last event that existed when the
/// read started.
#[derive(Debug, Clone)]
pub struct JetStreamEventStore {
    js: jetstream::Context,
    stream: stream::Stream,
    /// Stream -> (version, position) of its last known event.
    versions: Arc<Mutex<HashMap<StreamId, (u64, u64)>>>,
}

fn unavailable(what: impl Into<String>) -> impl FnOnce(async_nats::Error) -> EsError {
    let what = what.into();
    move |e| EsError::with_source(crate::ErrorKind::Unavailable, what, BoxedError(e))
}

/// Wraps the client's boxed errors so they can be a `source`.
#[derive(Debug)]
struct BoxedError(async_nats::Error);

impl std::fmt::Display for BoxedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BoxedError {}

impl JetStreamEventStore {
    /// Creates `ES_EVENTS`, or brings the settings this store owns on an existing one
    /// to `provisioning` (see [`events_stream_config`]), and returns the store.
    pub async fn provision(
        js: jetstream::Context,
        provisioning: &Provisioning,
    ) -> Result<Self, EsError> {
        let stream = ensure_stream(&js, events_stream_config(provisioning), adopt_events).await?;
        Ok(Self {
            js,
            stream,
            versions: Arc::default(),
        })
    }

    /// The JetStream context.
    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    fn remember(&self, stream: &StreamId, version: u64, position: u64) {
        let mut map = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= VERSION_CACHE_LIMIT {
            map.clear();
        }
        map.insert(stream.clone(), (version, position));
    }

    fn remembered(&self, stream: &StreamId) -> Option<(u64, u64)> {
        let map = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        map.get(stream).copied()
    }

    /// (version, position) of the stream's last event, from the server.
    async fn last(&self, subject: &str) -> Result<Option<(u64, u64)>, EsError> {
        match self.stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => {
                let envelope = pb::EventEnvelope::decode(m.payload.as_ref())
                    .map_err(|e| EsError::corrupt(format!("event {subject}#{}", m.sequence), e))?;
                Ok(Some((envelope.version, m.sequence)))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(unavailable(format!("last event of {subject}"))(e.into())),
        }
    }

    async fn publish(
        &self,
        subject: &str,
        stream: &StreamId,
        version: u64,
        expected_position: Option<u64>,
        event: &NewEvent,
    ) -> Result<Result<(u64, bool), ()>, EsError> {
        let envelope = envelope_of(stream, version, event);
        let mut publish = PublishMessage::build()
            .payload(envelope.encode_to_vec().into())
            .message_id(message_id(stream, event));
        if let Some(p) = expected_position {
            publish = publish.expected_last_subject_sequence(p);
        }
        let ack = match self.js.send_publish(subject.to_owned(), publish).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(ack) => Ok(Ok((ack.sequence, ack.duplicate))),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(Err(())),
            Err(e) => Err(unavailable(format!("appending to {subject}"))(e.into())),
        }
    }

    /// Publishes `events` as one atomic batch (ADR-50): all are stored or none. The
    /// first message carries the expected last subject sequence (the server allows it on
    /// the first message of a subject only); every message carries its `Nats-Msg-Id`.
    /// Only the commit (the last message) is answered; the others are published without
    /// a reply subject, so a batch costs one round trip.
    ///
    /// `Ok(Err(()))`: refused as a whole because the stream moved on, or because an
    /// event id is already in the duplicate window (a retry); the caller reads the ids
    /// that are stored to tell them apart.
    async fn publish_batch(
        &self,
        subject: &str,
        stream: &StreamId,
        first_version: u64,
        expected_position: Option<u64>,
        events: &[NewEvent],
    ) -> Result<Result<(u64, bool), ()>, EsError> {
        let batch_id = format!("{:032x}", rand::random::<u128>());
        let message = |k: usize, event: &NewEvent| -> (HeaderMap, bytes::Bytes) {
            let mut headers = HeaderMap::new();
            headers.insert(header::NATS_BATCH_ID, batch_id.as_str());
            headers.insert(header::NATS_BATCH_SEQUENCE, (k + 1).to_string());
            headers.insert(header::NATS_MESSAGE_ID, message_id(stream, event));
            if let (0, Some(p)) = (k, expected_position) {
                headers.insert(header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, p.to_string());
            }
            let payload = envelope_of(stream, first_version + k as u64, event).encode_to_vec();
            (headers, payload.into())
        };
        let Some((last, init)) = events.split_last() else {
            return Err(EsError::invalid(format!("{stream}: an empty batch")));
        };
        let client = self.js.client();
        for (k, event) in init.iter().enumerate() {
            let (headers, payload) = message(k, event);
            client
                .publish_with_headers(subject.to_owned(), headers, payload)
                .await
                .map_err(|e| unavailable(format!("appending to {subject}"))(e.into()))?;
        }
        let (mut headers, payload) = message(init.len(), last);
        headers.insert(header::NATS_BATCH_COMMIT, header::NATS_BATCH_COMMIT_FINAL);
        let publish = PublishMessage::build().headers(headers).payload(payload);
        let ack = match self.js.send_publish(subject.to_owned(), publish).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(ack) => Ok(Ok((ack.sequence, false))),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(Err(())),
            Err(e) => match server_error_code(&e) {
                Some(
                    ErrorCode::ATOMIC_PUBLISH_CONTAINS_DUPLICATE_MESSAGE
                    | ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT,
                ) => Ok(Err(())),
                Some(ErrorCode::ATOMIC_PUBLISH_DISABLED) => Err(EsError::new(
                    crate::ErrorKind::Unavailable,
                    format!(
                        "appending to {subject}: atomic publish is disabled on {EVENTS_STREAM}; \
                         provision the store again (it sets allow_atomic) on nats-server 2.12 or later"
                    ),
                )),
                Some(ErrorCode::ATOMIC_PUBLISH_TOO_LARGE_BATCH) => Err(EsError::with_source(
                    crate::ErrorKind::Invalid,
                    format!("{stream}: {} events are too many for one append", events.len()),
                    e,
                )),
                _ => Err(unavailable(format!("appending {} events to {subject}", events.len()))(
                    e.into(),
                )),
            },
        }
    }

    /// Reads the events of `subject` from `position` on, up to position `last`.
    async fn read_subject(
        &self,
        subject: &str,
        position: u64,
        last: u64,
        mut keep: impl FnMut(&RecordedEvent) -> Option<bool>,
    ) -> Result<Vec<RecordedEvent>, EsError> {
        let consumer = self
            .stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subject.to_owned(),
                deliver_policy: deliver_from(position),
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(format!("reading {subject}"))(e.into()))?;
        let name = consumer.cached_info().name.clone();
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| unavailable(format!("reading {subject}"))(e.into()))?;
        let mut out = Vec::new();
        let result = loop {
            let next = match tokio::time::timeout(READ_IDLE_TIMEOUT, messages.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => break Err(unavailable(format!("reading {subject}"))(e.into())),
                Ok(None) | Err(_) => {
                    break Err(EsError::new(
                        crate::ErrorKind::Unavailable,
                        format!("reading {subject}: no event arrived within {READ_IDLE_TIMEOUT:?}"),
                    ))
                }
            };
            let sequence = match next.info() {
                Ok(info) => info.stream_sequence,
                Err(e) => break Err(unavailable(format!("reading {subject}"))(e)),
            };
            let event = match decode(&next.message.payload, sequence) {
                Ok(e) => e,
                Err(e) => break Err(e),
            };
            match keep(&event) {
                Some(true) => out.push(event),
                Some(false) => {}
                None => break Ok(out),
            }
            if sequence >= last {
                break Ok(out);
            }
        };
        drop(messages);
        // The server drops an idle ephemeral consumer after a while; many reads should
        // not leave many behind until then.
        if let Err(e) = self.stream.delete_consumer(&name).await {
            tracing::debug!(consumer = %name, error = %e, "could not delete a read consumer");
        }
        result
    }
}

/// `Nats-Msg-Id` of an event: `<aggregate>.<id>.<event id>`.
fn message_id(stream: &StreamId, event: &NewEvent) -> String {
    format!("{}.{}.{}", stream.aggregate(), stream.id(), event.event_id)
}

/// The JetStream error code behind a refused publish.
fn server_error_code(e: &PublishError) -> Option<ErrorCode> {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .map(|e| e.error_code())
}

fn deliver_from(position: u64) -> DeliverPolicy {
    if position <= 1 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: position,
        }
    }
}

fn envelope_of(stream: &StreamId, version: u64, e: &NewEvent) -> pb::EventEnvelope {
    pb::EventEnvelope {
        aggregate: stream.aggregate().to_owned(),
        aggregate_id: stream.id().to_owned(),
        version,
        event_type: e.event_type.clone(),
        schema_version: e.schema_version,
        event_id: e.event_id.clone(),
        causation_id: e.causation_id.clone(),
        correlation_id: e.correlation_id.clone(),
        timestamp_ms: e.timestamp,
        payload: e.payload.clone(),
    }
}

fn decode(payload: &[u8], position: u64) -> Result<RecordedEvent, EsError> {
    let e = pb::EventEnvelope::decode(payload)
        .map_err(|err| EsError::corrupt(format!("event at position {position}"), err))?;
    Ok(RecordedEvent {
        stream: StreamId::new(&e.aggregate, &e.aggregate_id)?,
        version: e.version,
        position,
        event_type: e.event_type,
        schema_version: e.schema_version,
        event_id: e.event_id,
        causation_id: e.causation_id,
        correlation_id: e.correlation_id,
        timestamp: e.timestamp_ms,
        payload: e.payload,
    })
}

#[async_trait]
impl EventStore for JetStreamEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, EsError> {
        let subject = stream_subject(stream);
        // (version, position) the first event must follow.
        let (mut version, mut position) = match expected {
            ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => (0, 0),
            ExpectedVersion::Exact(v) => match self.remembered(stream) {
                Some((known, p)) if known == v => (v, p),
                _ => self.last(&subject).await?.unwrap_or((0, 0)),
            },
            ExpectedVersion::Any => self.last(&subject).await?.unwrap_or((0, 0)),
        };
        let wanted = match expected {
            ExpectedVersion::Any => version,
            ExpectedVersion::NoStream => 0,
            ExpectedVersion::Exact(v) => v,
        };
        let mut all_duplicates = true;
        let mut i = 0;
        if version != wanted {
            // Perhaps a retry whose events are partly or wholly stored; else a conflict.
            i = self.stored_prefix(stream, wanted, &events, version).await?;
            if i == 0 {
                return Err(EsError::conflict(format!(
                    "{stream} is at version {version}, not {wanted}"
                )));
            }
            (version, position) = self.last(&subject).await?.unwrap_or((0, 0));
        }
        while i < events.len() {
            // `Any` checks nothing for its first event; the others follow it.
            let expect = (expected != ExpectedVersion::Any || i > 0).then_some(position);
            let rest = &events[i..];
            let outcome = if let [event] = rest {
                self.publish(&subject, stream, version + 1, expect, event)
                    .await?
            } else {
                self.publish_batch(&subject, stream, version + 1, expect, rest)
                    .await?
            };
            match outcome {
                Ok((sequence, duplicate)) => {
                    all_duplicates &= duplicate;
                    version += rest.len() as u64;
                    position = sequence;
                    i = events.len();
                }
                Err(()) => {
                    // Another writer, or a retry of this append after the server's
                    // duplicate window: the ids of the events that are there decide.
                    let current = self.last(&subject).await?.map_or(0, |(v, _)| v);
                    let stored = self.stored_prefix(stream, wanted, &events, current).await?;
                    if stored <= i {
                        return Err(EsError::conflict(format!(
                            "{stream}: another writer appended after version {version}"
                        )));
                    }
                    i = stored;
                    (version, position) = self.last(&subject).await?.unwrap_or((0, 0));
                }
            }
        }
        if i > 0 && all_duplicates && !events.is_empty() {
            tracing::debug!(%stream, "append was already stored");
        }
        self.remember(stream, version, position);
        Ok(Appended {
            version,
            position,
            duplicate: all_duplicates && !events.is_empty(),
        })
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        position: u64,
        until: Until,
    ) -> Result<Vec<RecordedEvent>, EsError> {
        self.read_stream_from(stream, from, position, until).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, EsError> {
        let last = self.last(&stream_subject(stream)).await?;
        if let Some((v, p)) = last {
            self.remember(stream, v, p);
        }
        Ok(last.map_or(0, |(v, _)| v))
    }

    async fn subscribe(
        &self,
        aggregate: &str,
        position: u64,
    ) -> Result<BoxStream<'static, Result<RecordedEvent, EsError>>, EsError> {
        crate::model::check_aggregate_type(aggregate)?;
        let subject = aggregate_subjects(aggregate);
        let consumer = self
            .stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subject.clone(),
                deliver_policy: deliver_from(position),
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(format!("subscribing to {subject}"))(e.into()))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| unavailable(format!("subscribing to {subject}"))(e.into()))?;
        Ok(messages
            .map(move |m| {
                let m = m.map_err(|e| unavailable(format!("reading {subject}"))(e.into()))?;
                let sequence = m
                    .info()
                    .map_err(|e| unavailable(format!("reading {subject}"))(e))?
                    .stream_sequence;
                decode(&m.message.payload, sequence)
            })
            .boxed())
    }

    async fn count_after(&self, aggregate: &str, position: u64) -> Result<u64, EsError> {
        crate::model::check_aggregate_type(aggregate)?;
        let subject = aggregate_subjects(aggregate);
        let consumer = self
            .stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subject.clone(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: position + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(format!("counting {subject}"))(e.into()))?;
        let info = consumer.cached_info();
        let pending = info.num_pending;
        let name = info.name.clone();
        if let Err(e) = self.stream.delete_consumer(&name).await {
            tracing::debug!(consumer = %name, error = %e, "could not delete a count consumer");
        }
        Ok(pending)
    }

    async fn head(&self, aggregate: &str) -> Result<u64, EsError> {
        crate::model::check_aggregate_type(aggregate)?;
        let subject = aggregate_subjects(aggregate);
        match self.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => Ok(m.sequence),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(unavailable(format!("last event of {subject}"))(e.into())),
        }
    }
}

impl JetStreamEventStore {
    async fn read_stream_from(
        &self,
        stream: &StreamId,
        from: u64,
        position: u64,
        until: Until,
    ) -> Result<Vec<RecordedEvent>, EsError> {
        let subject = stream_subject(stream);
        let Some((last_version, last_position)) = self.last(&subject).await? else {
            return Ok(Vec::new());
        };
        self.remember(stream, last_version, last_position);
        if from > last_version {
            return Ok(Vec::new());
        }
        self.read_subject(&subject, position, last_position, |e| {
            if until.excludes(e) {
                None
            } else {
                Some(e.version >= from)
            }
        })
        .await
    }

    /// How many of `events` are stored right after version `wanted` (a retried append).
    async fn stored_prefix(
        &self,
        stream: &StreamId,
        wanted: u64,
        events: &[NewEvent],
        current: u64,
    ) -> Result<usize, EsError> {
        if current <= wanted {
            return Ok(0);
        }
        let after = self
            .read_stream_from(
                stream,
                wanted + 1,
                0,
                Until::Version(wanted + events.len() as u64),
            )
            .await?;
        let matching = after
            .iter()
            .zip(events)
            .take_while(|(stored, new)| stored.event_id == new.event_id)
            .count();
        if matching < after.len() {
            return Err(EsError::conflict(format!(
                "{stream} is at version {current}, not {wanted}"
            )));
        }
        Ok(matching)
    }
}

/// [`SnapshotStore`] on the KV bucket `ES_SNAPSHOTS` (one revision kept per key).
#[derive(Debug, Clone)]
pub struct JetStreamSnapshotStore {
    kv: kv::Store,
}

fn snapshot_key(stream: &StreamId) -> String {
    format!("{}.{}", stream.aggregate(), stream.id())
}

impl JetStreamSnapshotStore {
    /// Creates the bucket with one revision per key (a snapshot replaces the previous
    /// one), or sets an existing bucket's history to 1 and its replicas to
    /// `provisioning.replicas` (the server then drops the older revisions).
    pub async fn provision(
        js: &jetstream::Context,
        provisioning: &Provisioning,
    ) -> Result<Self, EsError> {
        let stream_name = format!("KV_{SNAPSHOT_BUCKET}");
        match js.get_stream(&stream_name).await {
            Ok(_) => {
                let ours = stream::Config {
                    name: stream_name.clone(),
                    max_messages_per_subject: 1,
                    num_replicas: provisioning.replicas,
                    ..Default::default()
                };
                ensure_stream(js, ours, adopt_snapshots).await?;
            }
            Err(e) if jetstream_code(&e.kind(), ErrorCode::STREAM_NOT_FOUND) => {
                let created = js
                    .create_key_value(kv::Config {
                        bucket: SNAPSHOT_BUCKET.to_owned(),
                        description: "Aggregate snapshots: <aggregate>.<id>".to_owned(),
                        history: 1,
                        storage: StorageType::File,
                        num_replicas: provisioning.replicas,
                        ..Default::default()
                    })
                    .await;
                if let Err(e) = created {
                    // Perhaps created by another process in between: opened below.
                    tracing::debug!(bucket = SNAPSHOT_BUCKET, error = %e, "creating the bucket");
                }
            }
            Err(e) => {
                return Err(unavailable(format!("reading bucket {SNAPSHOT_BUCKET}"))(
                    e.into(),
                ))
            }
        }
        let kv = js
            .get_key_value(SNAPSHOT_BUCKET)
            .await
            .map_err(|e| unavailable(format!("opening bucket {SNAPSHOT_BUCKET}"))(e.into()))?;
        Ok(Self { kv })
    }
}

#[async_trait]
impl SnapshotStore for JetStreamSnapshotStore {
    async fn save(&self, stream: &StreamId, snapshot: Snapshot) -> Result<(), EsError> {
        let key = snapshot_key(stream);
        if let Some(current) = self.load(stream).await? {
            if current.version >= snapshot.version {
                return Ok(());
            }
        }
        let record = pb::SnapshotRecord {
            version: snapshot.version,
            position: snapshot.position,
            timestamp_ms: snapshot.timestamp,
            state: snapshot.state,
        };
        self.kv
            .put(&key, record.encode_to_vec().into())
            .await
            .map_err(|e| unavailable(format!("saving snapshot {key}"))(e.into()))?;
        Ok(())
    }

    async fn load(&self, stream: &StreamId) -> Result<Option<Snapshot>, EsError> {
        let key = snapshot_key(stream);
        let Some(value) = self
            .kv
            .get(&key)
            .await
            .map_err(|e| unavailable(format!("loading snapshot {key}"))(e.into()))?
        else {
            return Ok(None);
        };
        let r = pb::SnapshotRecord::decode(value.as_ref())
            .map_err(|e| EsError::corrupt(format!("snapshot {key}"), e))?;
        Ok(Some(Snapshot {
            version: r.version,
            position: r.position,
            timestamp: r.timestamp_ms,
            state: r.state,
        }))
    }
}
