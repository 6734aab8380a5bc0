//! [`NatsJournal`]: each saga's history on `saga.journal.<saga_type>.<saga_id>`.

use std::time::Duration;

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
/// **Reads** are one batched direct get (ADR-31): a single request, answered with the
/// saga's records up to the last one that existed when the read started, and no consumer
/// created on the server.
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
        let mut records = Vec::new();
        let mut from = 1;
        // The server answers at most `READ_BATCH` records per request (and less when
        // they are large): ask again from after the last one until it has no more.
        loop {
            let request = serde_json::json!({
                "seq": from,
                "next_by_subj": subject,
                "batch": READ_BATCH,
            });
            let (batch, more) = self.direct_batch(&subject, &request).await?;
            let Some(last) = batch.last() else {
                return Ok(records);
            };
            from = last.sequence + 1;
            records.extend(batch);
            if !more {
                return Ok(records);
            }
        }
    }

    /// One batched direct get of up to `max` records (at most [`READ_BATCH`]): the whole
    /// journal if nothing is pending after them.
    async fn read_short(
        &self,
        saga_type: &str,
        saga_id: &str,
        max: usize,
    ) -> Result<Option<Vec<JournalRecord>>, PortError> {
        if max > READ_BATCH {
            let records = self.read(saga_type, saga_id).await?;
            return Ok((records.len() <= max).then_some(records));
        }
        let subject = checked_subject(saga_type, saga_id)?;
        let request = serde_json::json!({
            "seq": 1,
            "next_by_subj": subject,
            "batch": max.max(1),
        });
        let (records, more) = self.direct_batch(&subject, &request).await?;
        Ok((!more && records.len() <= max).then_some(records))
    }
}

/// Records asked for in one batched direct get.
const READ_BATCH: usize = 1_000;

impl NatsJournal {
    /// One batched direct get (ADR-31, nats-server 2.11 and later): the server answers
    /// on an inbox with one message per stored message, each carrying
    /// `Nats-Num-Pending` (how many more match), then an empty `204 EOB` status; no
    /// match at all is a `404`. Returns the records and whether more are pending. Written
    /// here rather than taken from jetstream-extra, which has it but pins an older
    /// async-nats than this workspace.
    async fn direct_batch(
        &self,
        subject: &str,
        request: &serde_json::Value,
    ) -> Result<(Vec<JournalRecord>, bool), PortError> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            PortError::Unavailable(format!("reading {subject}: {what}: {e}"))
        };
        let client = self.js.client();
        let inbox = client.new_inbox();
        let mut replies = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| unavailable("subscribing to the reply inbox", &e))?;
        let payload = serde_json::to_vec(request).expect("a JSON value encodes");
        self.js
            .send_request(
                format!("DIRECT.GET.{JOURNAL_STREAM}"),
                async_nats::Request::new()
                    .inbox(inbox)
                    .payload(payload.into()),
            )
            .await
            .map_err(|e| unavailable("batched direct get", &e))?;
        let mut records = Vec::new();
        let mut pending = 0u64;
        loop {
            let Ok(next) = tokio::time::timeout(self.read_idle_timeout, replies.next()).await
            else {
                let waited = format!("waited {:?}", self.read_idle_timeout);
                return Err(unavailable("no answer to the batched direct get", &waited));
            };
            let Some(m) = next else {
                return Err(unavailable("batched direct get", &"reply inbox closed"));
            };
            match m.status.map(|s| s.as_u16()) {
                None => {}
                Some(204) => return Ok((records, pending > 0)),
                Some(404) => return Ok((records, false)),
                Some(code) => {
                    let why = format!("status {code} {}", m.description.unwrap_or_default());
                    return Err(if code == 408 || code == 413 {
                        PortError::Rejected(format!("reading {subject}: {why}"))
                    } else {
                        unavailable("batched direct get", &why)
                    });
                }
            }
            let headers = m.headers.unwrap_or_default();
            let number = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.as_str().parse::<u64>().ok())
                    .ok_or_else(|| unavailable("batched direct get", &format!("no {name} header")))
            };
            let sequence = number(async_nats::header::NATS_SEQUENCE.as_ref())?;
            // Absent on servers without batched gets: then there is no batch to go on.
            pending = number("Nats-Num-Pending").unwrap_or(0);
            records.push(JournalRecord {
                sequence,
                payload: m.payload.to_vec(),
            });
        }
    }
}

fn msg_id_of(m: &StreamMessage) -> Option<&str> {
    m.headers.get(header::MSG_ID).map(|v| v.as_str())
}
