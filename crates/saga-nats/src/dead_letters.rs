//! The dead-letter queue as a product surface: list, show, redrive and purge the
//! messages of `SAGA_DLQ` (what `sagactl dlq` does).
//!
//! A dead letter's id is its `SAGA_DLQ` stream sequence. A redrive publishes the
//! original payload with its original headers (less the `Saga-Dlq-*` ones) to the
//! original subject (or `--to`), with `Nats-Msg-Id: redrive:<id>` (redriving twice
//! within the duplicate window stores it once) and `Saga-Redrive-Of: <id>`; a message
//! that an event consumer gave up on also names that consumer (`Saga-Redrive-Consumer`),
//! so the other consumers of its subject do not see it twice. The redrive is recorded
//! in `SAGA_DLQ` on `dlq.redrive.<id>`, which `list` reports beside the dead letter.

use async_nats::jetstream::{self, stream::Stream};
use saga_ports::{header, Headers, OutgoingMessage, Publisher};

use crate::names::{self, DLQ_STREAM};
use crate::publisher::headers_of;
use crate::{NatsError, NatsPublisher};

/// Subject prefix of redrive records.
pub const REDRIVE_RECORD_PREFIX: &str = "dlq.redrive.";

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its id: the `SAGA_DLQ` sequence.
    pub id: u64,
    /// When it was dead-lettered (RFC 3339).
    pub time: String,
    /// `dlq.<original subject>`.
    pub dlq_subject: String,
    /// Every header (the original's and the `Saga-Dlq-*` ones).
    pub headers: Headers,
    /// The original payload.
    pub payload: Vec<u8>,
    /// Redrives recorded so far: (target subject, stream sequence there).
    pub redrives: Vec<(String, u64)>,
}

impl DeadLetter {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
    /// Why it was dead-lettered.
    pub fn reason(&self) -> &str {
        self.header(header::DLQ_REASON)
    }
    /// The subject it was first published on.
    pub fn original_subject(&self) -> &str {
        match self.headers.get(header::DLQ_SUBJECT) {
            Some(s) => s,
            None => self
                .dlq_subject
                .strip_prefix("dlq.")
                .unwrap_or(&self.dlq_subject),
        }
    }
    /// Its stream and sequence there.
    pub fn original_position(&self) -> String {
        format!(
            "{}:{}",
            self.header(header::DLQ_STREAM),
            self.header(header::DLQ_SEQUENCE)
        )
    }
    /// Deliveries (or attempts) before it was given up.
    pub fn deliveries(&self) -> &str {
        self.header(header::DLQ_DELIVERIES)
    }
    /// The consumer that gave up.
    pub fn consumer(&self) -> &str {
        self.header(header::DLQ_CONSUMER)
    }
    /// Every failed attempt, as recorded by an event consumer (JSON), if any.
    pub fn errors(&self) -> Option<&str> {
        self.headers.get(header::DLQ_ERRORS).map(String::as_str)
    }
    /// Whether `source` (an original subject prefix, a stream or a consumer) names it.
    pub fn is_from(&self, source: &str) -> bool {
        self.original_subject().starts_with(source)
            || self.consumer() == source
            || self.header(header::DLQ_STREAM) == source
    }
}

/// The outcome of a redrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redriven {
    /// The dead letter's id.
    pub id: u64,
    /// Where it went.
    pub subject: String,
    /// Its stream sequence there.
    pub sequence: u64,
    /// The duplicate window recognised an earlier redrive: nothing new was stored.
    pub duplicate: bool,
}

fn fail(what: impl Into<String>) -> impl FnOnce(async_nats::Error) -> NatsError {
    let what = what.into();
    move |source| NatsError::DeadLetters { what, source }
}

async fn dlq_stream(js: &jetstream::Context) -> Result<Stream, NatsError> {
    js.get_stream(DLQ_STREAM)
        .await
        .map_err(|e| fail("opening SAGA_DLQ")(e.into()))
}

async fn read(stream: &Stream, seq: u64) -> Result<Option<DeadLetter>, NatsError> {
    use async_nats::jetstream::stream::RawMessageErrorKind;
    match stream.get_raw_message(seq).await {
        Ok(m) => Ok(Some(DeadLetter {
            id: m.sequence,
            time: m.time.to_string(),
            dlq_subject: m.subject.to_string(),
            headers: headers_of(Some(&m.headers)),
            payload: m.payload.to_vec(),
            redrives: Vec::new(),
        })),
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(fail(format!("reading SAGA_DLQ {seq}"))(e.into())),
    }
}

/// Every dead letter (oldest first), optionally only those from `source`, with the
/// redrives recorded for each. At most `limit` are returned.
pub async fn list_dead_letters(
    js: &jetstream::Context,
    source: Option<&str>,
    limit: usize,
) -> Result<Vec<DeadLetter>, NatsError> {
    let mut stream = dlq_stream(js).await?;
    let state = stream
        .info()
        .await
        .map_err(|e| fail("reading SAGA_DLQ's state")(e.into()))?
        .state
        .clone();
    if state.messages == 0 {
        return Ok(Vec::new());
    }
    let mut letters = Vec::new();
    let mut redrives = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        let Some(letter) = read(&stream, seq).await? else {
            continue;
        };
        if letter.dlq_subject.starts_with(REDRIVE_RECORD_PREFIX) {
            if let (Some(of), Some(to), Some(at)) = (
                letter
                    .headers
                    .get(header::REDRIVE_OF)
                    .and_then(|v| v.parse::<u64>().ok()),
                letter.headers.get(header::REDRIVE_TO),
                letter
                    .headers
                    .get(header::REDRIVE_SEQUENCE)
                    .and_then(|v| v.parse::<u64>().ok()),
            ) {
                redrives.push((of, to.clone(), at));
            }
            continue;
        }
        if source.is_none_or(|s| letter.is_from(s)) {
            letters.push(letter);
        }
    }
    for (of, to, at) in redrives {
        if let Some(l) = letters.iter_mut().find(|l| l.id == of) {
            l.redrives.push((to, at));
        }
    }
    letters.truncate(limit);
    Ok(letters)
}

/// One dead letter by id.
pub async fn get_dead_letter(js: &jetstream::Context, id: u64) -> Result<DeadLetter, NatsError> {
    let stream = dlq_stream(js).await?;
    match read(&stream, id).await? {
        Some(l) if !l.dlq_subject.starts_with(REDRIVE_RECORD_PREFIX) => Ok(l),
        _ => Err(NatsError::NoDeadLetter(id)),
    }
}

/// Publishes dead letter `id` again: to its original subject, or `to`. Records the
/// redrive in `SAGA_DLQ`. The dead letter itself stays (purge it once satisfied).
pub async fn redrive_dead_letter(
    js: &jetstream::Context,
    id: u64,
    to: Option<&str>,
) -> Result<Redriven, NatsError> {
    let letter = get_dead_letter(js, id).await?;
    let subject = to.unwrap_or(letter.original_subject()).to_string();
    names::check_subject(&subject)?;
    let mut headers: Headers = letter
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with("Saga-Dlq-") && !k.starts_with("Saga-Redrive-"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    headers.insert(header::REDRIVE_OF.into(), id.to_string());
    let from_events = letter.header(header::DLQ_STREAM) == names::EVENTS_STREAM;
    if from_events && !letter.consumer().is_empty() {
        headers.insert(
            header::REDRIVE_CONSUMER.into(),
            letter.consumer().to_string(),
        );
    }
    let publisher = NatsPublisher::new(js.clone());
    let ack = publisher
        .publish(&OutgoingMessage {
            subject: subject.clone(),
            msg_id: format!("redrive:{id}"),
            headers,
            payload: letter.payload.clone(),
        })
        .await
        .map_err(|e| fail(format!("publishing dead letter {id} to {subject}"))(e.into()))?;
    let record = OutgoingMessage {
        subject: format!("{REDRIVE_RECORD_PREFIX}{id}"),
        msg_id: format!("redrive-record:{id}:{}", ack.sequence),
        headers: Headers::from([
            (header::REDRIVE_OF.to_string(), id.to_string()),
            (header::REDRIVE_TO.to_string(), subject.clone()),
            (
                header::REDRIVE_SEQUENCE.to_string(),
                ack.sequence.to_string(),
            ),
        ]),
        payload: Vec::new(),
    };
    publisher
        .publish(&record)
        .await
        .map_err(|e| fail(format!("recording the redrive of {id}"))(e.into()))?;
    tracing::info!(id, %subject, sequence = ack.sequence, duplicate = ack.duplicate, "dead letter redriven");
    Ok(Redriven {
        id,
        subject,
        sequence: ack.sequence,
        duplicate: ack.duplicate,
    })
}

/// Removes dead letters (and their redrive records): all of them, or those whose
/// original subject starts with `source`. Returns how many messages were removed.
pub async fn purge_dead_letters(
    js: &jetstream::Context,
    source: Option<&str>,
) -> Result<u64, NatsError> {
    let stream = dlq_stream(js).await?;
    let Some(source) = source else {
        let r = stream
            .purge()
            .await
            .map_err(|e| fail("purging SAGA_DLQ")(e.into()))?;
        return Ok(r.purged);
    };
    let letters = list_dead_letters(js, Some(source), usize::MAX).await?;
    let mut purged = 0;
    for l in letters {
        for seq in std::iter::once(l.id) {
            if stream
                .delete_message(seq)
                .await
                .map_err(|e| fail(format!("deleting dead letter {seq}"))(e.into()))?
            {
                purged += 1;
            }
        }
        let r = stream
            .purge()
            .filter(format!("{REDRIVE_RECORD_PREFIX}{}", l.id))
            .await
            .map_err(|e| fail("purging redrive records")(e.into()))?;
        purged += r.purged;
    }
    Ok(purged)
}
