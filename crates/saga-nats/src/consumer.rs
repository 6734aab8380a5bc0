//! [`NatsConsumer`] and [`NatsAcker`]: a durable pull consumer behind the `Consumer` port.

use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use async_nats::{Client, RequestErrorKind, Subject};
use async_trait::async_trait;
use futures::StreamExt;
use saga_ports::{Acker, Consumer, Delivery, PortError};

use crate::names;
use crate::publisher::{describe, headers_of};
use crate::NatsError;

/// Extra time, beyond the requested wait, before a fetch gives up on a silent server. The
/// client ends a pull itself 5 s after its expiry; this only guards against a pull that
/// never ends.
const FETCH_GRACE: Duration = Duration::from_secs(10);

/// A durable pull consumer (provisioned beforehand, see [`crate::provision`]).
///
/// [`Consumer::fetch`] sends one pull request for up to `max` messages that expires after
/// `wait`: it returns as soon as messages are there (it does not wait to fill the batch),
/// an empty `Vec` when none came within `wait`, and [`PortError::Unavailable`] when the
/// client is not connected or the pull failed before anything arrived.
#[derive(Debug)]
pub struct NatsConsumer {
    consumer: PullConsumer,
    client: Client,
    stream: String,
    name: String,
}

impl NatsConsumer {
    /// Binds to the existing durable consumer `consumer` of `stream`.
    pub async fn bind(
        js: &jetstream::Context,
        stream: &str,
        consumer: &str,
    ) -> Result<Self, NatsError> {
        let pull: PullConsumer = js
            .get_consumer_from_stream(consumer, stream)
            .await
            .map_err(|source| NatsError::Consumer {
                stream: stream.to_owned(),
                consumer: consumer.to_owned(),
                source,
            })?;
        Ok(Self {
            consumer: pull,
            client: js.client(),
            stream: stream.to_owned(),
            name: consumer.to_owned(),
        })
    }

    /// Binds to partition consumer `saga-p<partition>` on `SAGA_INBOX`.
    pub async fn partition(js: &jetstream::Context, partition: u32) -> Result<Self, NatsError> {
        Self::bind(
            js,
            names::INBOX_STREAM,
            &names::partition_consumer(partition),
        )
        .await
    }

    /// Binds to service consumer `svc-<service>` on `SAGA_COMMANDS`.
    pub async fn service(js: &jetstream::Context, service: &str) -> Result<Self, NatsError> {
        names::check_token(service)?;
        Self::bind(
            js,
            names::COMMANDS_STREAM,
            &names::service_consumer(service),
        )
        .await
    }

    /// Binds to the event consumer `evt-<service>` on `SAGA_EVENTS`.
    pub async fn events(js: &jetstream::Context, service: &str) -> Result<Self, NatsError> {
        names::check_token(service)?;
        Self::bind(js, names::EVENTS_STREAM, &names::event_consumer(service)).await
    }

    /// Consumer name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stream name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    fn delivery(&self, message: jetstream::Message) -> Result<Delivery, PortError> {
        let (stream, consumer, delivered, stream_sequence) = {
            let info = message.info().map_err(|e| {
                PortError::Rejected(format!(
                    "not a JetStream delivery on {}: {e}",
                    message.subject
                ))
            })?;
            (
                info.stream.to_owned(),
                info.consumer.to_owned(),
                u64::try_from(info.delivered).unwrap_or(0),
                info.stream_sequence,
            )
        };
        let message: async_nats::Message = message.into();
        let reply = message.reply.clone().ok_or_else(|| {
            PortError::Rejected(format!(
                "delivery on {} has no ack subject",
                message.subject
            ))
        })?;
        Ok(Delivery {
            subject: message.subject.to_string(),
            headers: headers_of(message.headers.as_ref()),
            payload: message.payload.to_vec(),
            stream: stream.clone(),
            stream_sequence,
            delivered,
            consumer: consumer.clone(),
            acker: Box::new(NatsAcker {
                client: self.client.clone(),
                reply,
                stream,
                consumer,
                stream_sequence,
            }),
        })
    }
}

#[async_trait]
impl Consumer for NatsConsumer {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, PortError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        if self.client.connection_state() != State::Connected {
            return Err(PortError::Unavailable(format!(
                "fetch from {}: not connected to NATS",
                self.name
            )));
        }
        let unavailable =
            |e: &str| PortError::Unavailable(format!("fetch from {}: {e}", self.name));
        let deadline = tokio::time::Instant::now() + wait + FETCH_GRACE;
        let mut request = self.consumer.fetch().max_messages(max);
        // `fetch` is a no-wait pull: with an expiry the server holds it until the first
        // message or the expiry, then answers "no more" as soon as nothing else is
        // pending; without one it answers at once.
        if wait >= Duration::from_millis(1) {
            request = request.expires(wait);
        }
        let mut batch = tokio::time::timeout_at(deadline, request.messages())
            .await
            .map_err(|_| unavailable("the pull request timed out"))?
            .map_err(|e| unavailable(&describe(&e)))?;
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, batch.next()).await {
                Ok(Some(Ok(message))) => out.push(self.delivery(message)?),
                Ok(Some(Err(e))) => {
                    if out.is_empty() {
                        return Err(unavailable(&e.to_string()));
                    }
                    // Keep what arrived: dropping it would only delay it by `ack_wait`.
                    tracing::warn!(consumer = %self.name, error = %e, "pull ended with an error");
                    break;
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(consumer = %self.name, "pull did not end in time");
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// Settles one delivery. Every settlement is a request the server answers, so `Ok` means
/// the server got it (an `ack` that returned `Ok` is not redelivered); a lost connection or
/// a missing consumer is [`PortError::Unavailable`].
#[derive(Debug, Clone)]
pub struct NatsAcker {
    client: Client,
    reply: Subject,
    stream: String,
    consumer: String,
    stream_sequence: u64,
}

impl NatsAcker {
    async fn settle(&self, kind: AckKind, what: &str) -> Result<(), PortError> {
        self.client
            .request(self.reply.clone(), kind.into())
            .await
            .map(drop)
            .map_err(|e| {
                let detail = format!(
                    "{what} of {}:{} on {}: {}",
                    self.stream,
                    self.stream_sequence,
                    self.consumer,
                    describe(&e)
                );
                match e.kind() {
                    RequestErrorKind::InvalidSubject => PortError::Rejected(detail),
                    _ => PortError::Unavailable(detail),
                }
            })
    }
}

#[async_trait]
impl Acker for NatsAcker {
    async fn ack(&self) -> Result<(), PortError> {
        self.settle(AckKind::Ack, "ack").await
    }

    /// With a backoff on the consumer, the server waits at least `delay` (see
    /// `crate::provision` for the exact rule).
    async fn nak(&self, delay: Option<Duration>) -> Result<(), PortError> {
        // A zero delay would be sent as `{"delay":0}`, which the server treats as a delayed
        // nak (subject to the consumer's backoff): send a plain nak instead.
        let delay = delay.filter(|d| !d.is_zero());
        self.settle(AckKind::Nak(delay), "nak").await
    }

    async fn term(&self) -> Result<(), PortError> {
        self.settle(AckKind::Term, "term").await
    }

    async fn in_progress(&self) -> Result<(), PortError> {
        self.settle(AckKind::Progress, "in-progress").await
    }
}
