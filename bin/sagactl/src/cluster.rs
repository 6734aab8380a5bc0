//! `sagactl cluster`: live workers, their partitions, and the lag of every partition,
//! read straight from JetStream (KV `saga_workers`, `saga_owners`, consumers `saga-p<N>`).

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use saga_nats::leases::{cluster_owners, cluster_workers, PARTITIONS_KEY};
use saga_nats::names::{partition_consumer, INBOX_STREAM, OWNERS_BUCKET, WORKERS_BUCKET};
use serde_json::json;

use crate::args::ClusterArgs;
use crate::output::outln;
use crate::Output;

pub async fn run(out: Output, a: ClusterArgs) -> Result<ExitCode> {
    let client = saga_nats::connect_as(&a.nats_url, "sagactl")
        .await
        .with_context(|| format!("connecting to NATS at {}", a.nats_url))?;
    let js = async_nats::jetstream::new(client);
    let owners = js
        .get_key_value(OWNERS_BUCKET)
        .await
        .with_context(|| format!("KV {OWNERS_BUCKET} (has a worker ever started here?)"))?;
    let workers = js
        .get_key_value(WORKERS_BUCKET)
        .await
        .with_context(|| format!("KV {WORKERS_BUCKET}"))?;
    let partitions: u32 = owners
        .get(PARTITIONS_KEY)
        .await
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8_lossy(&v).parse().ok())
        .context("the cluster's partition count is not recorded yet (no worker has started)")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let live = cluster_workers(&workers, now, Duration::from_millis(a.lease_ttl_ms)).await?;
    let leases = cluster_owners(&owners, partitions).await;
    let inbox = js
        .get_stream(INBOX_STREAM)
        .await
        .context("stream SAGA_INBOX")?;
    let mut rows = Vec::new();
    for p in 0..partitions {
        let (pending, unacked) = match inbox.consumer_info(partition_consumer(p)).await {
            Ok(info) => (info.num_pending, info.num_ack_pending as u64),
            Err(_) => (0, 0),
        };
        let owner = leases
            .get(&p)
            .filter(|l| l.expires_at_ms > now)
            .map(|l| l.worker.clone());
        rows.push((p, owner, pending, unacked));
    }
    if out.json {
        let value = json!({
            "partitions": partitions,
            "workers": live.iter().map(|w| json!({
                "worker": w.worker,
                "partitions": w.partitions,
                "heartbeatAgoMs": now.saturating_sub(w.heartbeat_ms),
            })).collect::<Vec<_>>(),
            "partitionLag": rows.iter().map(|(p, owner, pending, unacked)| json!({
                "partition": p, "owner": owner, "pending": pending, "unacked": unacked,
            })).collect::<Vec<_>>(),
        });
        crate::sagas::print_pretty(&value);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{} live worker(s), {partitions} partitions", live.len());
    for w in &live {
        outln!(
            "  {:<20} heartbeat {:>5} ms ago  partitions {:?}",
            w.worker,
            now.saturating_sub(w.heartbeat_ms),
            w.partitions
        );
    }
    outln!();
    outln!(
        "{:<10} {:<20} {:>8} {:>8}",
        "PARTITION",
        "OWNER",
        "PENDING",
        "UNACKED"
    );
    for (p, owner, pending, unacked) in rows {
        outln!(
            "{:<10} {:<20} {:>8} {:>8}",
            format!("saga-p{p}"),
            owner.as_deref().unwrap_or("(none)"),
            pending,
            unacked
        );
    }
    Ok(ExitCode::SUCCESS)
}
