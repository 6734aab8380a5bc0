//! What `sagactl bench` measures beside latency and throughput:
//!
//! - **Durable writes per saga**: the sum, over every JetStream stream of the server
//!   (KV buckets included), of how far its last sequence moved during the run, divided
//!   by the sagas that ended. With `sync_interval: always` each of those is one fsynced
//!   append. (sled flushes of the worker and participants are not counted.)
//! - **Removals per saga**: messages that left a stream during the run (trims, purges,
//!   replaced KV revisions, acks on a work queue): how far its last sequence moved minus
//!   how far its message count grew. On `sync_interval: always` a removal from a work
//!   queue is one more fsync on the server; a purge of many settled messages about one
//!   (scripts/bench_fsyncs.sh counts the server's fsyncs per saga: 27.2 with work
//!   queues, 20.0 with trimmed streams, docs/benchmarks.md).
//! - **The broker's bound** (`--raw`): the fsynced append rate of the same server in
//!   the same run (a scratch stream, a window of publishes in flight), divided by the
//!   writes per saga: the throughput the broker alone would allow.
//! - **CPU and memory per process** (`--dev-data-dir`): user + system CPU seconds per
//!   saga of every child of a `sagactl dev` stack, from `/proc/<pid>/stat`, and their
//!   resident memory at the end.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use async_nats::jetstream::{self, stream};
use futures::{StreamExt, TryStreamExt};
use tokio::time::Instant;

/// A stream's last sequence and message count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamCounts {
    /// Last sequence (every stored message moves it).
    pub last_sequence: u64,
    /// Messages held now.
    pub messages: u64,
}

/// Last sequence and message count of every stream, by name.
pub async fn stream_sequences(js: &jetstream::Context) -> Result<BTreeMap<String, StreamCounts>> {
    let infos: Vec<stream::Info> = js
        .streams()
        .try_collect()
        .await
        .context("listing the streams")?;
    Ok(infos
        .into_iter()
        .map(|i| {
            let counts = StreamCounts {
                last_sequence: i.state.last_sequence,
                messages: i.state.messages,
            };
            (i.config.name, counts)
        })
        .collect())
}

/// How far each stream moved from `before` to `after` (streams that did not move are
/// left out).
pub fn moved(
    before: &BTreeMap<String, StreamCounts>,
    after: &BTreeMap<String, StreamCounts>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(name, now)| {
            let then = before.get(name).copied().unwrap_or_default();
            let d = now.last_sequence.saturating_sub(then.last_sequence);
            (d > 0).then(|| (name.clone(), d))
        })
        .collect()
}

/// How many messages left each stream from `before` to `after` (acked from a work
/// queue, purged, expired): stored during the run minus the growth of its message
/// count. Streams that lost none are left out.
pub fn removed(
    before: &BTreeMap<String, StreamCounts>,
    after: &BTreeMap<String, StreamCounts>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(name, now)| {
            let then = before.get(name).copied().unwrap_or_default();
            let stored = i128::from(now.last_sequence.saturating_sub(then.last_sequence));
            let grew = i128::from(now.messages) - i128::from(then.messages);
            let gone = u64::try_from(stored - grew).unwrap_or(0);
            (gone > 0).then(|| (name.clone(), gone))
        })
        .collect()
}

/// The name of the scratch stream of `--raw`.
const RAW_STREAM: &str = "SAGACTL_BENCH_RAW";

/// Fsynced appends per second to a scratch file stream on the same server: `n`
/// publishes of `size` bytes with at most `window` awaiting their ack. The stream is
/// deleted afterwards.
pub async fn raw_append_rate(
    js: &jetstream::Context,
    n: u64,
    window: usize,
    size: usize,
) -> Result<f64> {
    let _ = js.delete_stream(RAW_STREAM).await;
    js.create_stream(stream::Config {
        name: RAW_STREAM.into(),
        subjects: vec!["sagactl.bench.raw".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .context("creating the scratch stream for --raw")?;
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let started = Instant::now();
    let result: Result<()> = futures::stream::iter(0..n)
        .map(|_| {
            let payload = payload.clone();
            async move {
                js.publish("sagactl.bench.raw", payload)
                    .await
                    .context("publishing to the scratch stream")?
                    .await
                    .context("waiting for an ack")?;
                Ok::<(), anyhow::Error>(())
            }
        })
        .buffer_unordered(window)
        .try_collect()
        .await;
    let elapsed = started.elapsed();
    let _ = js.delete_stream(RAW_STREAM).await;
    result?;
    Ok(n as f64 / elapsed.as_secs_f64().max(1e-9))
}

/// CPU seconds (user + system) and resident bytes of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcUsage {
    pub cpu: Duration,
    pub rss: u64,
}

/// Reads `/proc/<pid>/stat`.
pub fn proc_usage(pid: u32) -> Result<ProcUsage> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count from
    // the last ')'. Then field 3 is index 0: utime (14) is 11, stime (15) 12, rss (24) 21.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("/proc/{pid}/stat: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("/proc/{pid}/stat: no field {}", i + 3))
    };
    let ticks = sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap_or(100);
    let page = sysconf(nix::unistd::SysconfVar::PAGE_SIZE).unwrap_or(4096);
    let cpu_ticks = field(11)? + field(12)?;
    Ok(ProcUsage {
        cpu: Duration::from_secs_f64(cpu_ticks as f64 / ticks as f64),
        rss: field(21)? * page,
    })
}

fn sysconf(var: nix::unistd::SysconfVar) -> Option<u64> {
    nix::unistd::sysconf(var)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
}

/// The running children of the `sagactl dev` stack whose data is in `data`, by name.
pub async fn dev_children(data: &Path) -> Result<BTreeMap<String, u32>> {
    let answer = crate::devctl::ask(data, &crate::devctl::Request::Ps).await?;
    if !answer.ok {
        bail!(
            "the stack in {} answered: {}",
            data.display(),
            answer.message
        );
    }
    Ok(answer
        .children
        .into_iter()
        .filter_map(|c| c.pid.map(|p| (c.name, p)))
        .collect())
}

/// Usage of every child now.
pub fn usage_of(children: &BTreeMap<String, u32>) -> BTreeMap<String, ProcUsage> {
    children
        .iter()
        .filter_map(|(name, pid)| proc_usage(*pid).ok().map(|u| (name.clone(), u)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(last_sequence: u64, messages: u64) -> StreamCounts {
        StreamCounts {
            last_sequence,
            messages,
        }
    }

    #[test]
    fn moved_counts_only_what_grew_and_removed_what_left() {
        let before = BTreeMap::from([
            ("A".to_string(), counts(10, 10)),
            ("B".to_string(), counts(5, 2)),
        ]);
        let after = BTreeMap::from([
            ("A".to_string(), counts(25, 25)),
            ("B".to_string(), counts(5, 0)),
            ("C".to_string(), counts(3, 1)),
        ]);
        assert_eq!(
            moved(&before, &after),
            BTreeMap::from([("A".to_string(), 15), ("C".to_string(), 3)])
        );
        // A kept all it stored; B lost two it held before; C stored 3 and keeps 1.
        assert_eq!(
            removed(&before, &after),
            BTreeMap::from([("B".to_string(), 2), ("C".to_string(), 2)])
        );
    }

    #[test]
    fn this_process_uses_some_memory_and_its_cpu_is_read() {
        let u = proc_usage(std::process::id()).unwrap();
        assert!(u.rss > 0);
        // Burn CPU until the kernel has counted some (it counts in ticks).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut x = 0u64;
        while proc_usage(std::process::id()).unwrap().cpu <= u.cpu {
            assert!(std::time::Instant::now() < deadline, "no CPU time counted");
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
            }
        }
    }

    #[tokio::test]
    async fn the_raw_measure_stores_every_message_and_cleans_up_and_sequences_count_writes_and_removals(
    ) {
        let nats = saga_testkit::NatsServer::start().unwrap();
        let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        js.create_stream(stream::Config {
            name: "S".into(),
            subjects: vec!["s.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        let before = stream_sequences(&js).await.unwrap();
        for _ in 0..7 {
            js.publish("s.x", "m".into()).await.unwrap().await.unwrap();
        }
        js.get_stream("S")
            .await
            .unwrap()
            .purge()
            .filter("s.x")
            .keep(4)
            .await
            .unwrap();
        let rate = raw_append_rate(&js, 300, 32, 64).await.unwrap();
        assert!(rate > 0.0);
        let after = stream_sequences(&js).await.unwrap();
        // The scratch stream is gone; the writes to S are counted.
        assert_eq!(
            moved(&before, &after),
            BTreeMap::from([("S".to_string(), 7)])
        );
        assert_eq!(
            removed(&before, &after),
            BTreeMap::from([("S".to_string(), 3)])
        );
    }
}
