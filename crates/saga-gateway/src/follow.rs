//! Keeping the projection up to date: following `SAGA_JOURNAL`, and rebuilding it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use saga_core::SagaDefinition;
use saga_nats::names::{JOURNAL_STREAM, JOURNAL_SUBJECTS};
use tokio::sync::watch;

use crate::{GatewayError, Projection};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildStats {
    /// Journal records read.
    pub records: u64,
    /// Sagas in the projection afterwards.
    pub sagas: usize,
    /// The checkpoint afterwards (the journal's last sequence when the rebuild began).
    pub checkpoint: u64,
}

impl Projection {
    /// Follows `SAGA_JOURNAL` from the checkpoint + 1 with an ordered consumer until
    /// `shutdown` turns true. Outages (NATS down, stream missing, consumer lost) are
    /// logged and retried with capped backoff from the checkpoint, so nothing is skipped
    /// and nothing is applied twice.
    pub async fn follow(
        self: Arc<Self>,
        js: jetstream::Context,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = MIN_BACKOFF;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let before = self.checkpoint().unwrap_or(0);
            let outcome = tokio::select! {
                biased;
                // A corrupt record was found: wipe the projection and replay the journal.
                () = self.restart_requested() => match self.clear() {
                    Ok(()) => {
                        tracing::warn!("projection wiped: replaying SAGA_JOURNAL from its start");
                        backoff = MIN_BACKOFF;
                        continue;
                    }
                    Err(e) => Err(e),
                },
                r = self.follow_once(&js) => r,
                _ = shutdown.changed() => return,
            };
            if let Err(e) = outcome {
                let progressed = self.checkpoint().unwrap_or(0) > before;
                if progressed {
                    backoff = MIN_BACKOFF;
                }
                tracing::warn!(error = %e, retry_in = ?backoff, "following SAGA_JOURNAL stopped; resuming from the checkpoint");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// One ordered consumer from the checkpoint; returns when it fails.
    async fn follow_once(&self, js: &jetstream::Context) -> Result<(), GatewayError> {
        let checkpoint = self.checkpoint()?;
        let start = checkpoint + 1;
        let mut stream = journal_stream(js).await?;
        let last = stream
            .info()
            .await
            .map_err(unavailable("reading SAGA_JOURNAL info"))?
            .state
            .last_sequence;
        self.rebuild_target(last);
        if last < checkpoint {
            // The stream was deleted and created again: its sequences restarted, and
            // following from our checkpoint would skip its records.
            tracing::error!(
                checkpoint,
                last,
                "the projection is ahead of SAGA_JOURNAL (was the stream recreated?); \
                 rebuild it: saga-gateway --rebuild-projection"
            );
        }
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: JOURNAL_SUBJECTS.to_string(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await
            .map_err(unavailable("creating the journal consumer"))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(unavailable("reading the journal"))?;
        tracing::info!(from = start, "following SAGA_JOURNAL");
        while let Some(m) = messages.next().await {
            let m = m.map_err(unavailable("reading the journal"))?;
            let seq = m
                .info()
                .map_err(|e| GatewayError::Unavailable(format!("journal message info: {e}")))?
                .stream_sequence;
            self.apply_message(seq, &m.payload)?;
        }
        Err(GatewayError::Unavailable(
            "the journal consumer ended".into(),
        ))
    }

    /// Wipes the projection and replays `SAGA_JOURNAL` from its first record up to its
    /// last one at the time of the call. Meant to run while no gateway serves from this
    /// directory (`saga-gateway --rebuild-projection`, `sagactl projection rebuild`);
    /// a gateway started afterwards follows on from the checkpoint.
    pub async fn rebuild(&self, js: &jetstream::Context) -> Result<RebuildStats, GatewayError> {
        self.clear()?;
        let mut stream = journal_stream(js).await?;
        let state = stream
            .info()
            .await
            .map_err(unavailable("reading SAGA_JOURNAL info"))?
            .state
            .clone();
        self.rebuild_target(state.last_sequence);
        let mut records = 0;
        if state.messages > 0 {
            let consumer = stream
                .create_consumer(pull::OrderedConfig {
                    filter_subject: JOURNAL_SUBJECTS.to_string(),
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .map_err(unavailable("creating the journal consumer"))?;
            let mut messages = consumer
                .messages()
                .await
                .map_err(unavailable("reading the journal"))?;
            while let Some(m) = messages.next().await {
                let m = m.map_err(unavailable("reading the journal"))?;
                let info = m
                    .info()
                    .map_err(|e| GatewayError::Unavailable(format!("journal message info: {e}")))?;
                let (seq, pending) = (info.stream_sequence, info.pending);
                self.apply_message(seq, &m.payload)?;
                records += 1;
                if seq >= state.last_sequence || pending == 0 {
                    break;
                }
            }
        }
        self.flush().await?;
        Ok(RebuildStats {
            records,
            sagas: self.len(),
            checkpoint: self.checkpoint()?,
        })
    }
}

/// Opens the projection in `dir` and rebuilds it from `SAGA_JOURNAL` (see
/// [`Projection::rebuild`]). The directory must not be in use by a running gateway
/// (sled locks it; opening fails with a clear error).
pub async fn rebuild_projection<'a>(
    dir: impl AsRef<Path>,
    definitions: impl IntoIterator<Item = &'a SagaDefinition>,
    js: &jetstream::Context,
) -> Result<RebuildStats, GatewayError> {
    let projection = Projection::open(dir, definitions)?;
    projection.rebuild(js).await
}

async fn journal_stream(js: &jetstream::Context) -> Result<stream::Stream, GatewayError> {
    js.get_stream(JOURNAL_STREAM)
        .await
        .map_err(unavailable("opening SAGA_JOURNAL"))
}

fn unavailable<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> GatewayError {
    move |e| GatewayError::Unavailable(format!("{what}: {e}"))
}
