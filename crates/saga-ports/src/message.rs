//! Messages in and out, and the broker ports.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::PortError;

/// Message headers (`Nats-Msg-Id`, `Saga-Id`, `Saga-Step`, ...).
pub type Headers = BTreeMap<String, String>;

/// Header names on the wire.
pub mod header {
    /// Deduplication id (JetStream duplicate window).
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// Saga instance id.
    pub const SAGA_ID: &str = "Saga-Id";
    /// Step name.
    pub const SAGA_STEP: &str = "Saga-Step";
    /// Attempt number.
    pub const SAGA_ATTEMPT: &str = "Saga-Attempt";
    /// Stable key of a step's action.
    pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
    /// Where the reply goes.
    pub const REPLY_TO: &str = "Saga-Reply-To";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state (vendor entries beside `traceparent`).
    pub const TRACESTATE: &str = "tracestate";
    /// Dead letters: why.
    pub const DLQ_REASON: &str = "Saga-Dlq-Reason";
    /// Dead letters: original subject.
    pub const DLQ_SUBJECT: &str = "Saga-Dlq-Subject";
    /// Dead letters: original stream.
    pub const DLQ_STREAM: &str = "Saga-Dlq-Stream";
    /// Dead letters: original stream sequence.
    pub const DLQ_SEQUENCE: &str = "Saga-Dlq-Sequence";
    /// Dead letters: deliveries before giving up.
    pub const DLQ_DELIVERIES: &str = "Saga-Dlq-Deliveries";
    /// Dead letters: consumer that gave up.
    pub const DLQ_CONSUMER: &str = "Saga-Dlq-Consumer";
    /// Dead letters: the original payload's size, when the letter carries only its
    /// start (see [`truncated_dead_letter`](super::truncated_dead_letter)).
    pub const DLQ_TRUNCATED: &str = "Saga-Dlq-Truncated";
    /// Dead letters of event consumers: every failed attempt (JSON list of `attempt`,
    /// `at` in ms since the epoch, `error`).
    pub const DLQ_ERRORS: &str = "Saga-Dlq-Errors";
    /// A redriven message: the `SAGA_DLQ` sequence of its dead letter.
    pub const REDRIVE_OF: &str = "Saga-Redrive-Of";
    /// A redriven message: the one consumer it is meant for (the others of its subject
    /// ack it without handling it).
    pub const REDRIVE_CONSUMER: &str = "Saga-Redrive-Consumer";
    /// A redrive record: where the message went.
    pub const REDRIVE_TO: &str = "Saga-Redrive-To";
    /// A redrive record: the stream sequence the message got there.
    pub const REDRIVE_SEQUENCE: &str = "Saga-Redrive-Sequence";
}

/// A message to publish to a stream, deduplicated by `msg_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingMessage {
    /// Subject.
    pub subject: String,
    /// `Nats-Msg-Id`.
    pub msg_id: String,
    /// Other headers.
    pub headers: Headers,
    /// Body (Protobuf); base64 in a store's JSON (an array of numbers is read too).
    #[serde(with = "saga_core::bytes::b64")]
    pub payload: Vec<u8>,
}

/// The broker's acknowledgement of a stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishAck {
    /// Stream that stored it.
    pub stream: String,
    /// Its stream sequence.
    pub sequence: u64,
    /// True when the message id was already stored (nothing new was written).
    pub duplicate: bool,
}

/// Publishes to streams and waits for the stored acknowledgement.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes and awaits the stream's ack.
    async fn publish(&self, msg: &OutgoingMessage) -> Result<PublishAck, PortError>;

    /// Publishes only if the subject holds no message yet
    /// (`Nats-Expected-Last-Subject-Sequence: 0`): exactly once for the life of the
    /// stream, not only inside the duplicate window. When the subject already holds one,
    /// returns an ack with `duplicate` set and stores nothing.
    async fn publish_new(&self, msg: &OutgoingMessage) -> Result<PublishAck, PortError>;
}

/// The per-partition index of open sagas: a saga is entered before its first journal
/// record and removed after its last transition's messages are published, so takeover
/// and startup cost follows what is open, not the history of the deployment.
#[async_trait]
pub trait OpenSagas: Send + Sync + 'static {
    /// Enters a saga (idempotent).
    async fn open(&self, partition: u32, saga_type: &str, saga_id: &str) -> Result<(), PortError>;
    /// Removes a saga (idempotent).
    async fn close(&self, partition: u32, saga_type: &str, saga_id: &str) -> Result<(), PortError>;
    /// The open sagas of one partition, as `(saga_type, saga_id)`.
    async fn list(&self, partition: u32) -> Result<Vec<(String, String)>, PortError>;
}

/// The inputs of a saga still stored in the input stream (not yet acked by anyone).
///
/// A saga's start can reach its worker after a later input of the same saga (a cancel):
/// the start was delivered to a worker that died or stalled before acking it, so it
/// comes back only after its ack wait, while the cancel, published later, is delivered
/// to the next owner at once. The saga's actor then looks up the start here and applies
/// it first, instead of holding the later input back for the start's ack wait.
#[async_trait]
pub trait WaitingInputs: Send + Sync + 'static {
    /// Up to `max` messages still stored on saga `saga_id`'s input subject of
    /// `partition` (`saga.in.<partition>.<saga_id>`), oldest first, as deliveries whose
    /// acker settles nothing (their own deliveries are settled when they come).
    async fn waiting(
        &self,
        partition: u32,
        saga_id: &str,
        max: usize,
    ) -> Result<Vec<Delivery>, PortError>;
}

/// The acker of a message read from a stream rather than delivered by a consumer:
/// settling it does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct DetachedAcker;

#[async_trait]
impl Acker for DetachedAcker {
    async fn ack(&self) -> Result<(), PortError> {
        Ok(())
    }
    async fn nak(&self, _delay: Option<Duration>) -> Result<(), PortError> {
        Ok(())
    }
    async fn term(&self) -> Result<(), PortError> {
        Ok(())
    }
    async fn in_progress(&self) -> Result<(), PortError> {
        Ok(())
    }
}

/// A journal record to append to `saga.journal.<saga_type>.<saga_id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalAppend {
    /// Saga type (subject token).
    pub saga_type: String,
    /// Saga id (subject token).
    pub saga_id: String,
    /// `Nats-Msg-Id`: unique per transition and writer.
    pub msg_id: String,
    /// Encoded `saga.v1.JournalEvent`; base64 in a store's JSON (an array of numbers is
    /// read too).
    #[serde(with = "saga_core::bytes::b64")]
    pub payload: Vec<u8>,
}

/// One stored journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRecord {
    /// Stream sequence.
    pub sequence: u64,
    /// Encoded `saga.v1.JournalEvent`.
    pub payload: Vec<u8>,
}

/// The per-saga history, fenced by the sequence of its last record.
#[async_trait]
pub trait Journal: Send + Sync + 'static {
    /// Appends when the subject's last sequence is `expected_last` (0: no record yet);
    /// otherwise fails with [`PortError::Fenced`]. A retry of an append that was stored
    /// (same `msg_id`) returns its original ack with `duplicate` set.
    async fn append(
        &self,
        append: &JournalAppend,
        expected_last: u64,
    ) -> Result<PublishAck, PortError>;

    /// Every record of one saga, oldest first.
    async fn read(&self, saga_type: &str, saga_id: &str) -> Result<Vec<JournalRecord>, PortError>;

    /// The last record of one saga, if it has any.
    async fn last(
        &self,
        saga_type: &str,
        saga_id: &str,
    ) -> Result<Option<JournalRecord>, PortError>;

    /// The saga's whole journal when it has at most `max` records (`Some`, oldest
    /// first, empty when it has none), else `None`: one read where [`Journal::last`]
    /// then [`Journal::read`] would be two, for the short journals most sagas have.
    async fn read_short(
        &self,
        saga_type: &str,
        saga_id: &str,
        max: usize,
    ) -> Result<Option<Vec<JournalRecord>>, PortError> {
        let records = self.read(saga_type, saga_id).await?;
        Ok((records.len() <= max).then_some(records))
    }
}

/// A message received from a durable consumer.
#[derive(Debug)]
pub struct Delivery {
    /// Subject it was published on.
    pub subject: String,
    /// Its headers.
    pub headers: Headers,
    /// Body.
    pub payload: Vec<u8>,
    /// Stream it was stored in.
    pub stream: String,
    /// Stream sequence: the same on every redelivery.
    pub stream_sequence: u64,
    /// Deliveries so far, this one included.
    pub delivered: u64,
    /// Consumer it came from.
    pub consumer: String,
    /// How to settle it.
    pub acker: Box<dyn Acker>,
}

impl Delivery {
    /// Where the message is stored (`stream:sequence`), for logs and dead letters: not
    /// an input id (sequences restart when a stream is re-created; see
    /// `saga_core::Input::id`).
    pub fn position(&self) -> String {
        format!("{}:{}", self.stream, self.stream_sequence)
    }
}

/// Settles a delivery.
#[async_trait]
pub trait Acker: Send + Sync + std::fmt::Debug {
    /// Done: never deliver again. Call only after its effects are durable.
    async fn ack(&self) -> Result<(), PortError>;
    /// Deliver again after `delay`.
    async fn nak(&self, delay: Option<Duration>) -> Result<(), PortError>;
    /// Never deliver again (it went to the dead-letter queue).
    async fn term(&self) -> Result<(), PortError>;
    /// Still working on it: reset the ack timer.
    async fn in_progress(&self) -> Result<(), PortError>;
}

/// A durable pull consumer.
#[async_trait]
pub trait Consumer: Send + 'static {
    /// Up to `max` messages, waiting at most `wait` for the first.
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, PortError>;
}

/// A dead letter the broker refused (a message just under its `max_payload`, pushed over
/// it by the dead-letter headers): the same letter with its payload cut by what those
/// headers added (and a margin), and `Saga-Dlq-Truncated: <original payload bytes>`. The
/// message itself leaves its stream once dead-lettered, so without this it would be
/// redelivered and refused for ever.
pub fn truncated_dead_letter(mut letter: OutgoingMessage, delivery: &Delivery) -> OutgoingMessage {
    let size = |h: &Headers| h.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>();
    letter.headers.insert(
        header::DLQ_TRUNCATED.into(),
        delivery.payload.len().to_string(),
    );
    let grown = size(&letter.headers).saturating_sub(size(&delivery.headers)) + 512;
    let keep = letter.payload.len().saturating_sub(grown);
    letter.payload.truncate(keep);
    letter
}

/// The dead-letter copy of a delivery: published to `dlq.<original subject>` with the
/// original payload and headers, plus headers saying why, where from and after how
/// many deliveries. Deduplicated per original message.
pub fn dead_letter_message(delivery: &Delivery, reason: &str) -> OutgoingMessage {
    let mut headers = delivery.headers.clone();
    headers.remove(header::MSG_ID);
    let clean = |s: &str| s.replace(['\r', '\n'], " ");
    headers.insert(header::DLQ_REASON.into(), clean(reason));
    headers.insert(header::DLQ_SUBJECT.into(), delivery.subject.clone());
    headers.insert(header::DLQ_STREAM.into(), delivery.stream.clone());
    headers.insert(
        header::DLQ_SEQUENCE.into(),
        delivery.stream_sequence.to_string(),
    );
    headers.insert(
        header::DLQ_DELIVERIES.into(),
        delivery.delivered.to_string(),
    );
    headers.insert(header::DLQ_CONSUMER.into(), delivery.consumer.clone());
    OutgoingMessage {
        subject: format!("dlq.{}", delivery.subject),
        msg_id: format!("dlq:{}:{}", delivery.stream, delivery.stream_sequence),
        headers,
        payload: delivery.payload.clone(),
    }
}
