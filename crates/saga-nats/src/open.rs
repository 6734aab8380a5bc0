//! [`NatsOpenSagas`]: the per-partition index of open sagas on stream `SAGA_OPEN`.

use async_nats::jetstream::{self, message::PublishMessage};
use async_trait::async_trait;
use futures::StreamExt;
use saga_ports::{Headers, OpenSagas, PortError};

use crate::names::{check_token, open_subject, OPEN_STREAM};
use crate::publisher::{describe, header_map, publish_error, send};

/// One subject per open saga, `saga.open.<partition>.<saga_type>.<saga_id>`, holding
/// one small message (at most one per subject). A saga is entered before its first
/// journal record and purged once its last transition's messages are published, so the
/// stream holds only what is open: listing a partition is one stream-info request
/// filtered on `saga.open.<partition>.>`, whose cost follows the sagas open there, not
/// the history of the deployment.
#[derive(Debug, Clone)]
pub struct NatsOpenSagas {
    js: jetstream::Context,
}

impl NatsOpenSagas {
    /// The index on this JetStream context.
    pub fn new(js: jetstream::Context) -> Self {
        Self { js }
    }

    async fn stream(&self) -> Result<jetstream::stream::Stream<()>, PortError> {
        self.js
            .get_stream_no_info(OPEN_STREAM)
            .await
            .map_err(|e| PortError::Unavailable(format!("stream {OPEN_STREAM}: {}", describe(&e))))
    }
}

fn subject(partition: u32, saga_type: &str, saga_id: &str) -> Result<String, PortError> {
    check_token(saga_type)
        .and_then(|()| check_token(saga_id))
        .map_err(|e| PortError::Rejected(format!("open-saga index: {e}")))?;
    Ok(open_subject(partition, saga_type, saga_id))
}

#[async_trait]
impl OpenSagas for NatsOpenSagas {
    async fn open(&self, partition: u32, saga_type: &str, saga_id: &str) -> Result<(), PortError> {
        let subject = subject(partition, saga_type, saga_id)?;
        let headers = header_map(&Headers::new(), &format!("open:{saga_id}"))?;
        let publish = PublishMessage::build()
            .payload(bytes::Bytes::from_static(b"open"))
            .headers(headers);
        send(&self.js, &subject, publish)
            .await
            .map(drop)
            .map_err(|e| publish_error(&subject, e))
    }

    async fn close(&self, partition: u32, saga_type: &str, saga_id: &str) -> Result<(), PortError> {
        let subject = subject(partition, saga_type, saga_id)?;
        let stream = self.stream().await?;
        stream
            .purge()
            .filter(subject.clone())
            .await
            .map(drop)
            .map_err(|e| PortError::Unavailable(format!("purging {subject}: {e}")))
    }

    async fn list(&self, partition: u32) -> Result<Vec<(String, String)>, PortError> {
        let unavailable = |e: &dyn std::fmt::Display| {
            PortError::Unavailable(format!("listing open sagas of partition {partition}: {e}"))
        };
        let stream = self.stream().await?;
        let prefix = format!("saga.open.{partition}.");
        let mut subjects = stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(|e| unavailable(&e))?;
        let mut out = Vec::new();
        while let Some(next) = subjects.next().await {
            let (subject, count) = next.map_err(|e| unavailable(&e))?;
            if count == 0 {
                continue;
            }
            if let Some((t, id)) = subject
                .strip_prefix(&prefix)
                .and_then(|r| r.split_once('.'))
            {
                out.push((t.to_string(), id.to_string()));
            }
        }
        Ok(out)
    }
}
