//! [`NatsPublisher`], and the header and error conversions the other ports share.

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use async_trait::async_trait;
use saga_ports::{header, Headers, OutgoingMessage, PortError, PublishAck, Publisher};

use crate::names::check_subject;

/// Publishes to JetStream streams with `Nats-Msg-Id` and waits for the stream's ack.
///
/// A message id seen within the stream's duplicate window (2 minutes by default) is not
/// stored again: the ack carries the original sequence and `duplicate: true`.
///
/// Errors: timeouts, no responders (no stream for the subject yet, or JetStream not ready
/// after a restart), a lost connection and server-side resource or cluster trouble are
/// [`PortError::Unavailable`]; everything the server or the client refuses for good (bad
/// subject or header, empty message id, message too large) is [`PortError::Rejected`].
/// Nothing here panics on bad input.
#[derive(Debug, Clone)]
pub struct NatsPublisher {
    js: jetstream::Context,
}

impl NatsPublisher {
    /// A publisher on this JetStream context (its timeout bounds the wait for the ack).
    pub fn new(js: jetstream::Context) -> Self {
        Self { js }
    }

    /// The JetStream context.
    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }
}

#[async_trait]
impl Publisher for NatsPublisher {
    async fn publish(&self, msg: &OutgoingMessage) -> Result<PublishAck, PortError> {
        check_subject(&msg.subject).map_err(|e| PortError::Rejected(e.to_string()))?;
        let headers = header_map(&msg.headers, &msg.msg_id)?;
        let publish = jetstream::message::PublishMessage::build()
            .payload(msg.payload.clone().into())
            .headers(headers);
        send(&self.js, &msg.subject, publish)
            .await
            .map_err(|e| publish_error(&msg.subject, e))
    }

    async fn publish_new(&self, msg: &OutgoingMessage) -> Result<PublishAck, PortError> {
        check_subject(&msg.subject).map_err(|e| PortError::Rejected(e.to_string()))?;
        let headers = header_map(&msg.headers, &msg.msg_id)?;
        let publish = jetstream::message::PublishMessage::build()
            .payload(msg.payload.clone().into())
            .headers(headers)
            .expected_last_subject_sequence(0);
        match send(&self.js, &msg.subject, publish).await {
            Ok(ack) => Ok(ack),
            // The subject holds a message already: this one was published before.
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(PublishAck {
                stream: String::new(),
                sequence: 0,
                duplicate: true,
            }),
            Err(e) => Err(publish_error(&msg.subject, e)),
        }
    }
}

/// Sends and awaits the stream's ack.
pub(crate) async fn send(
    js: &jetstream::Context,
    subject: &str,
    publish: jetstream::message::PublishMessage,
) -> Result<PublishAck, PublishError> {
    let ack = js.send_publish(subject.to_owned(), publish).await?.await?;
    Ok(PublishAck {
        stream: ack.stream,
        sequence: ack.sequence,
        duplicate: ack.duplicate,
    })
}

/// Our headers plus `Nats-Msg-Id` (which wins over a `Nats-Msg-Id` among `headers`),
/// validated without panicking.
pub(crate) fn header_map(headers: &Headers, msg_id: &str) -> Result<HeaderMap, PortError> {
    if msg_id.is_empty() {
        // Without an id the duplicate window cannot recognise a retry, and a retried
        // publish would be stored twice: refuse rather than lose exactly-once effects.
        return Err(PortError::Rejected(format!(
            "empty {} (deduplication needs one)",
            header::MSG_ID
        )));
    }
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(header::MSG_ID) {
            continue;
        }
        let (name, value) = header_pair(name, value)?;
        map.insert(name, value);
    }
    let (name, value) = header_pair(header::MSG_ID, msg_id)?;
    map.insert(name, value);
    Ok(map)
}

fn header_pair(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), PortError> {
    if name.is_empty() {
        return Err(PortError::Rejected("empty header name".into()));
    }
    let header_name: HeaderName = name
        .parse()
        .map_err(|_| PortError::Rejected(format!("invalid header name {name:?}")))?;
    let header_value: HeaderValue = value
        .parse()
        .map_err(|_| PortError::Rejected(format!("invalid value {value:?} for header {name}")))?;
    Ok((header_name, header_value))
}

/// Headers of a received message as a map (the last value of a repeated header wins).
pub(crate) fn headers_of(map: Option<&HeaderMap>) -> Headers {
    let mut out = Headers::new();
    if let Some(map) = map {
        for (name, values) in map.iter() {
            if let Some(last) = values.last() {
                out.insert(name.to_string(), last.as_str().to_owned());
            }
        }
    }
    out
}

/// The server error behind a client error, if the server answered with one.
pub(crate) fn server_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a jetstream::Error> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(js) = err.downcast_ref::<jetstream::Error>() {
            return Some(js);
        }
        current = err.source();
    }
    None
}

/// Whether a server error is about the server's state (worth retrying later) rather than
/// about the request.
pub(crate) fn is_transient(e: &jetstream::Error) -> bool {
    e.code() == 503
        || e.code() == 408
        || [
            ErrorCode::INSUFFICIENT_RESOURCES,
            ErrorCode::STORAGE_RESOURCES_EXCEEDED,
            ErrorCode::MEMORY_RESOURCES_EXCEEDED,
            ErrorCode::ACCOUNT_RESOURCES_EXCEEDED,
            ErrorCode::CLUSTER_NOT_AVAILABLE,
            ErrorCode::CLUSTER_NOT_LEADER,
            ErrorCode::CLUSTER_NOT_ACTIVE,
            ErrorCode::CLUSTER_INCOMPLETE,
            ErrorCode::CLUSTER_NO_PEERS,
            ErrorCode::STREAM_OFFLINE,
            ErrorCode::STREAM_STORE_FAILED,
            ErrorCode::JETSTREAM_NOT_ENABLED,
            ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT,
        ]
        .contains(&e.error_code())
}

/// Maps a publish failure onto the port's retryable / not retryable split.
pub(crate) fn publish_error(subject: &str, e: PublishError) -> PortError {
    let detail = format!("publish to {subject}: {}", describe(&e));
    match e.kind() {
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending
        // No responders: no stream listens on the subject (not provisioned yet), or
        // JetStream is not up yet after a restart. Both pass.
        | PublishErrorKind::StreamNotFound => PortError::Unavailable(detail),
        PublishErrorKind::MaxPayloadExceeded
        | PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence => PortError::Rejected(detail),
        PublishErrorKind::Other => match server_error(&e) {
            Some(js) if is_transient(js) => PortError::Unavailable(detail),
            Some(_) => PortError::Rejected(detail),
            // The client could not send (closed connection) or parse the answer.
            None => PortError::Unavailable(detail),
        },
    }
}

/// An error with its sources, on one line.
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_headers_are_rejected_not_panicking() {
        let mut h = Headers::new();
        h.insert("Saga-Id".into(), "a\r\nb".into());
        assert!(matches!(header_map(&h, "m1"), Err(PortError::Rejected(_))));
        let mut h = Headers::new();
        h.insert("Bad:Name".into(), "v".into());
        assert!(matches!(header_map(&h, "m1"), Err(PortError::Rejected(_))));
        assert!(matches!(
            header_map(&Headers::new(), "id\n"),
            Err(PortError::Rejected(_))
        ));
        assert!(matches!(
            header_map(&Headers::new(), ""),
            Err(PortError::Rejected(_))
        ));
    }

    #[test]
    fn the_message_id_wins_and_headers_round_trip() {
        let mut h = Headers::new();
        h.insert(header::SAGA_ID.into(), "order-1".into());
        h.insert(header::MSG_ID.into(), "stale".into());
        let map = header_map(&h, "m1").unwrap();
        let back = headers_of(Some(&map));
        assert_eq!(back.get(header::MSG_ID).map(String::as_str), Some("m1"));
        assert_eq!(
            back.get(header::SAGA_ID).map(String::as_str),
            Some("order-1")
        );
        assert_eq!(back.len(), 2);
    }
}
