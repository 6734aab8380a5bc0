//! Which saga types the live workers run, read from the `saga_workers` bucket (one entry
//! per live worker, rewritten every heartbeat, expired by the server after the bucket's
//! max age). A start of a type no live worker runs is refused with `FAILED_PRECONDITION`
//! instead of being accepted into a partition nobody consumes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use futures::TryStreamExt as _;
use saga_nats::leases::{claim_partition_count, WorkerInfo};
use saga_nats::names::{OWNERS_BUCKET, WORKERS_BUCKET};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Status;

use crate::GatewayError;

/// How often the directory is read.
pub const REFRESH: Duration = Duration::from_secs(1);

/// The live workers as last read.
#[derive(Debug, Default)]
struct Seen {
    workers: Vec<WorkerInfo>,
    /// When they were read (None: never yet).
    at: Option<Instant>,
}

/// The live workers, refreshed in the background by [`LiveWorkers::follow`].
#[derive(Debug, Clone, Default)]
pub struct LiveWorkers {
    seen: Arc<Mutex<Seen>>,
}

impl LiveWorkers {
    /// Reads the directory once now (the bucket missing means no worker ever ran).
    pub async fn refresh(&self, js: &jetstream::Context) -> Result<usize, GatewayError> {
        let workers = read(js).await?;
        let n = workers.len();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.workers = workers;
        seen.at = Some(Instant::now());
        Ok(n)
    }

    /// Keeps the view fresh until `stop` turns true.
    pub async fn follow(self, js: jetstream::Context, mut stop: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.refresh(&js).await {
                tracing::debug!(error = %e, "reading the live workers");
            }
            tokio::select! {
                _ = tokio::time::sleep(REFRESH) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Ok when some live worker runs `saga_type`, as last read or, failing that, as read
    /// now; `FAILED_PRECONDITION` naming what is missing otherwise.
    pub async fn ensure(&self, js: &jetstream::Context, saga_type: &str) -> Result<(), Status> {
        if self.check(saga_type).is_ok() {
            return Ok(());
        }
        self.refresh(js).await?;
        self.check(saga_type)
    }

    /// Ok when some live worker runs `saga_type` as last read; `FAILED_PRECONDITION`
    /// naming what is missing otherwise.
    pub fn check(&self, saga_type: &str) -> Result<(), Status> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.workers.iter().any(|w| w.runs(saga_type)) {
            return Ok(());
        }
        let msg = if seen.workers.is_empty() {
            format!(
                "no saga-worker is running (none in KV {WORKERS_BUCKET}), so a {saga_type} saga \
                 would not start; start a saga-worker, then retry with the same idempotency_key"
            )
        } else {
            format!(
                "none of the {} live saga-worker(s) runs saga type {saga_type} (its definition \
                 is not in their --sagas); deploy it to a worker, then retry with the same \
                 idempotency_key",
                seen.workers.len()
            )
        };
        Err(Status::failed_precondition(msg))
    }
}

/// The entries of `saga_workers`; none when the bucket does not exist yet.
async fn read(js: &jetstream::Context) -> Result<Vec<WorkerInfo>, GatewayError> {
    let unavailable = |e: &dyn std::fmt::Display| {
        GatewayError::Unavailable(format!("reading KV {WORKERS_BUCKET}: {e}"))
    };
    let kv = match js.get_key_value(WORKERS_BUCKET).await {
        Ok(kv) => kv,
        Err(e) if e.kind() == jetstream::context::KeyValueErrorKind::GetBucket => {
            // The bucket is missing (no worker ever started) or the server is away: the
            // connection state tells them apart.
            if js.client().connection_state() == async_nats::connection::State::Connected {
                return Ok(Vec::new());
            }
            return Err(unavailable(&e));
        }
        Err(e) => return Err(unavailable(&e)),
    };
    let keys: Vec<String> = kv
        .keys()
        .await
        .map_err(|e| unavailable(&e))?
        .try_collect()
        .await
        .map_err(|e| unavailable(&e))?;
    let mut workers = Vec::with_capacity(keys.len());
    for k in keys {
        match kv.get(&k).await {
            Ok(Some(v)) => match serde_json::from_slice::<WorkerInfo>(&v) {
                Ok(w) => workers.push(w),
                Err(e) => {
                    tracing::warn!(worker = %k, error = %e, "unreadable entry in {WORKERS_BUCKET}")
                }
            },
            Ok(None) => {}
            Err(e) => return Err(unavailable(&e)),
        }
    }
    Ok(workers)
}

/// Checks this gateway's partition count against the cluster's (`config.partitions` in
/// `saga_owners`, recorded by the first worker or gateway), recording it when none is:
/// a gateway with another count would publish starts to partitions nobody consumes.
pub async fn check_partitions(
    js: &jetstream::Context,
    partitions: u32,
) -> Result<(), GatewayError> {
    let owners = match js.get_key_value(OWNERS_BUCKET).await {
        Ok(kv) => kv,
        Err(_) => {
            // Not provisioned yet (the gateway started first): create it as the workers
            // would; one created meanwhile by a worker is used as it is.
            let config = saga_nats::ProvisionConfig {
                partitions,
                ..saga_nats::ProvisionConfig::default()
            }
            .bucket_configs()
            .into_iter()
            .find(|b| b.bucket == OWNERS_BUCKET)
            .expect("the owners bucket is provisioned");
            match js.create_key_value(config).await {
                Ok(kv) => kv,
                Err(_) => js.get_key_value(OWNERS_BUCKET).await.map_err(|e| {
                    GatewayError::Unavailable(format!("opening KV {OWNERS_BUCKET}: {e}"))
                })?,
            }
        }
    };
    claim_partition_count(&owners, partitions, "gateway")
        .await
        .map_err(GatewayError::Nats)
}
