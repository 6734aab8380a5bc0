//! [`NatsWaitingInputs`]: a saga's inputs still stored in `SAGA_INBOX`.

use async_nats::jetstream::stream::RawMessageErrorKind;
use async_nats::jetstream::{self};
use async_trait::async_trait;
use saga_ports::{Delivery, DetachedAcker, PortError, WaitingInputs};

use crate::names::{check_token, inbox_subject, partition_consumer, INBOX_STREAM};
use crate::publisher::{describe, headers_of};

/// Reads `saga.in.<partition>.<saga_id>` in `SAGA_INBOX` above the ack floor of the
/// partition consumer `saga-p<partition>`: what is at or below it is settled (acked, or
/// terminated as a dead letter) and waits only for the stream's trim. Each message is
/// one "next by subject" get on the stream's leader; this runs only when an input
/// reaches a saga that has not started.
#[derive(Debug, Clone)]
pub struct NatsWaitingInputs {
    js: jetstream::Context,
}

impl NatsWaitingInputs {
    /// The reader on this JetStream context.
    pub fn new(js: jetstream::Context) -> Self {
        Self { js }
    }
}

#[async_trait]
impl WaitingInputs for NatsWaitingInputs {
    async fn waiting(
        &self,
        partition: u32,
        saga_id: &str,
        max: usize,
    ) -> Result<Vec<Delivery>, PortError> {
        check_token(saga_id).map_err(|e| PortError::Rejected(format!("waiting inputs: {e}")))?;
        let subject = inbox_subject(partition, saga_id);
        let stream = self
            .js
            .get_stream_no_info(INBOX_STREAM)
            .await
            .map_err(|e| {
                PortError::Unavailable(format!("stream {INBOX_STREAM}: {}", describe(&e)))
            })?;
        // Without the consumer (not provisioned yet), everything stored counts.
        let settled = stream
            .consumer_info(partition_consumer(partition))
            .await
            .map(|info| info.ack_floor.stream_sequence)
            .unwrap_or(0);
        let mut out = Vec::new();
        let mut from = settled + 1;
        while out.len() < max {
            let m = match stream
                .get_first_raw_message_by_subject(&subject, from)
                .await
            {
                Ok(m) => m,
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
                Err(e) => {
                    return Err(PortError::Unavailable(format!(
                        "waiting inputs on {subject}: {}",
                        describe(&e)
                    )))
                }
            };
            from = m.sequence + 1;
            out.push(Delivery {
                subject: m.subject.to_string(),
                headers: headers_of(Some(&m.headers)),
                payload: m.payload.to_vec(),
                stream: INBOX_STREAM.to_owned(),
                stream_sequence: m.sequence,
                delivered: 0,
                consumer: String::new(),
                acker: Box::new(DetachedAcker),
            });
        }
        Ok(out)
    }
}
