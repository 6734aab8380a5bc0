//! [`NatsJournal`]: each saga's history on `saga.journal.<saga_type>.<saga_id>`.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::{PublishMessage, StreamMessage};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self};
use async_trait::async_trait;
use futures::StreamExt;
use saga_ports::{header, Headers, Journal, JournalAppend, JournalRecord, PortError, PublishAck};

use crate::names::{check_token, journal_subject, JOURNAL_STREAM};
use crate::publisher::{describe, header_map, is_transient, publish_error, send};

/// How long [`Journal::read`] waits for the next record before calling the broker
/// unavailable.
const DEFAULT_READ_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The journal on `SAGA_JOURNAL`.
///
/// **Appends are fenced**: each carries `Nats-Expected-Last-Subject-Sequence` (the
/// sequence of the saga's last record, 0 for "no record yet") and `Nats-Msg-Id`. When
/// another writer appended in between, the server refuses (error 10071) and the append
/// fails with [`PortError::Fenced`]: this worker no longer owns the saga.
///
/// **A retried append is recognised**. A worker that crashed after the server stored its
/// append but before it saw the ack retries with the same message id and the same
/// expected sequence. Within the duplicate window the server answers with the original
/// ack (`duplicate: true`). After the window, it answers "wrong last sequence" (the
/// record is there now); the journal then looks at the subject's last record, and if
/// that record carries our message id, returns its ack with `duplicate: true` instead of
/// `Fenced`.
///
/// **Reads** go through an ordered consumer filtered on the saga's subject, up to the last
/// record that existed when the read started.
#[derive(Debug, Clone)]
pub struct NatsJournal {
    js: jetstream::Context,
    read_idle_timeout: Duration,
}

impl NatsJournal {
    /// A journal on this JetStream context.
    pub fn new(js: jetstream::Context) -> Self {
        Self {
            js,
            read_idle_timeout: DEFAULT_READ_IDLE_TIMEOUT,
        }
    }

    /// How long a read waits for the next record (default 10 s) before failing with
    /// [`PortError::Unavailable`].
    pub fn with_read_idle_timeout(mut self, timeout: Duration) -> Self {
        self.read_idle_timeout = timeout;
        self
    }

    /// The last record on `subject`, if any.
    async fn last_on(&self, subject: &str) -> Result<Option<StreamMessage>, PortError> {
        let stream = self
            .js
            .get_stream_no_info(JOURNAL_STREAM)
            .await
            .map_err(|e| {
                PortError::Unavailable(format!("stream {JOURNAL_STREAM}: {}", describe(&e)))
            })?;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => Ok(Some(m)),
            Err(e) => {
                let detail = format!("last record of {subject}: {}", describe(&e));
                match e.kind() {
                    LastRawMessageErrorKind::NoMessageFound => Ok(None),
                    LastRawMessageErrorKind::InvalidSubject => Err(PortError::Rejected(detail)),
                    LastRawMessageErrorKind::JetStream(js) if !is_transient(&js) => {
                        Err(PortError::Rejected(detail))
                    }
                    _ => Err(PortError::Unavailable(detail)),
                }
            }
        }
    }
}

fn checked_subject(saga_type: &str, saga_id: &str) -> Result<String, PortError> {
    check_token(saga_type)
        .and_then(|()| check_token(saga_id))
        .map_err(|e| PortError::Rejected(format!("journal subject: {e}")))?;
    Ok(journal_subject(saga_type, saga_id))
}

#[async_trait]
impl Journal for NatsJournal {
    async fn append(
        &self,
        append: &JournalAppend,
        expected_last: u64,
    ) -> Result<PublishAck, PortError> {
        let subject = checked_subject(&append.saga_type, &append.saga_id)?;
        let headers = header_map(&Headers::new(), &append.msg_id)?;
        let publish = PublishMessage::build()
            .payload(append.payload.clone().into())
            .headers(headers)
            .expected_last_subject_sequence(expected_last);
        let e = match send(&self.js, &subject, publish).await {
            Ok(ack) => return Ok(ack),
            Err(e) => e,
        };
        if e.kind() != PublishErrorKind::WrongLastSequence {
            return Err(publish_error(&subject, e));
        }
        // Either another writer got there first (fenced), or this is a retry of an append
        // the server stored after the duplicate window forgot its id.
        let detail = describe(&e);
        match self.last_on(&subject).await? {
            Some(last) if msg_id_of(&last) == Some(append.msg_id.as_str()) => {
                tracing::debug!(%subject, sequence = last.sequence, "journal append was already stored");
                Ok(PublishAck {
                    stream: JOURNAL_STREAM.to_owned(),
                    sequence: last.sequence,
                    duplicate: true,
                })
            }
            Some(last) => Err(PortError::Fenced {
                subject,
                expected: expected_last,
                detail: format!("{detail}; the last record is {}", last.sequence),
            }),
            None => Err(PortError::Fenced {
                subject,
                expected: expected_last,
                detail: format!("{detail}; the subject has no record"),
            }),
        }
    }

    async fn last(
        &self,
        saga_type: &str,
        saga_id: &str,
    ) -> Result<Option<JournalRecord>, PortError> {
        let subject = checked_subject(saga_type, saga_id)?;
        Ok(self.last_on(&subject).await?.map(|m| JournalRecord {
            sequence: m.sequence,
            payload: m.payload.to_vec(),
        }))
    }

    async fn read(&self, saga_type: &str, saga_id: &str) -> Result<Vec<JournalRecord>, PortError> {
        let subject = checked_subject(saga_type, saga_id)?;
        // Read up to the last record that exists now: the ordered consumer never ends by
        // itself, and on an empty subject it would deliver nothing at all.
        let Some(last) = self.last_on(&subject).await? else {
            return Ok(Vec::new());
        };
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            PortError::Unavailable(format!("reading {subject}: {what}: {e}"))
        };
        let stream = self
            .js
            .get_stream_no_info(JOURNAL_STREAM)
            .await
            .map_err(|e| unavailable("stream", &e))?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subject.clone(),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("ordered consumer", &e))?;
        let mut consumer_name = Some(consumer.cached_info().name.clone());
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| unavailable("ordered consumer", &e))?;
        let mut records = Vec::new();
        let result = loop {
            let Ok(next) = tokio::time::timeout(self.read_idle_timeout, messages.next()).await
            else {
                let waited = format!("waited {:?}", self.read_idle_timeout);
                break Err(unavailable("no record arrived", &waited));
            };
            let message = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => break Err(unavailable("ordered consumer", &e)),
                None => break Err(unavailable("ordered consumer", &"ended early")),
            };
            let info = match message.info() {
                Ok(info) => info,
                Err(e) => break Err(unavailable("message metadata", &e)),
            };
            let sequence = info.stream_sequence;
            consumer_name = Some(info.consumer.to_owned());
            records.push(JournalRecord {
                sequence,
                payload: message.payload.to_vec(),
            });
            if sequence >= last.sequence {
                break Ok(records);
            }
        };
        drop(messages);
        // The server would drop the ephemeral consumer after 30 s of inactivity; a
        // recovery reading thousands of sagas should not leave thousands behind.
        if let Some(name) = consumer_name {
            if let Err(e) = stream.delete_consumer(&name).await {
                tracing::debug!(consumer = %name, error = %e, "could not delete a read consumer");
            }
        }
        result
    }
}

fn msg_id_of(m: &StreamMessage) -> Option<&str> {
    m.headers.get(header::MSG_ID).map(|v| v.as_str())
}
