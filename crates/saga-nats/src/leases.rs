//! Partition leases: which worker consumes which partition.
//!
//! - `saga_workers` holds one entry per live worker (`WorkerInfo`, rewritten every
//!   heartbeat).
//! - `saga_owners` holds `p<N>` -> `Lease { worker, .. }` per partition, written with
//!   compare-and-set on the entry's revision and renewed every heartbeat, and
//!   `config.partitions` -> the cluster's partition count (a worker configured with
//!   another count refuses to start).
//!
//! **No wall clocks are compared across machines.** An observer judges another
//! worker's lease or heartbeat by *revision progress seen on its own monotonic clock*
//! ([`Observer`]): an entry whose revision has not changed for a TTL, as this observer
//! saw it, is expired. The owner judges its own lease by the monotonic instant it
//! *sent* its last successful renewal: it stops consuming at that instant plus the TTL,
//! which is never later than any observer's judgement of expiry (an observer sees the
//! revision after it was written). A worker whose clock runs ahead or behind takes
//! nothing it should not.
//!
//! The decisions (who takes what) are the pure function [`rebalance`], tested by tables;
//! the I/O around it is [`Leases`], and the loop that runs it beside the worker is
//! [`crate::membership`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::names::{OWNERS_BUCKET, WORKERS_BUCKET};
use crate::NatsError;

/// Key of the cluster's partition count in `saga_owners`.
pub const PARTITIONS_KEY: &str = "config.partitions";

/// How a worker takes part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// This worker's id.
    pub worker_id: String,
    /// The deployment's partition count.
    pub partitions: u32,
    /// How long a lease lives without renewal (takeover time after a crash).
    pub ttl: Duration,
}

/// A partition's owner, as stored in `saga_owners`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Worker id.
    pub worker: String,
    /// For people reading the bucket: the writer's wall clock plus the TTL. Never used
    /// to decide anything (clocks of different machines disagree).
    pub expires_at_ms: u64,
}

/// A live worker, as `saga_workers` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Worker id.
    pub worker: String,
    /// Last heartbeat, the writer's wall clock (ms since the epoch), for display.
    pub heartbeat_ms: u64,
    /// Partitions it holds.
    pub partitions: Vec<u32>,
    /// The saga types it runs (absent from workers that do not say: any type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga_types: Option<Vec<String>>,
}

impl WorkerInfo {
    /// It runs sagas of this type (or does not say which it runs).
    pub fn runs(&self, saga_type: &str) -> bool {
        self.saga_types
            .as_ref()
            .is_none_or(|t| t.iter().any(|t| t == saga_type))
    }
}

/// Records `partitions` as the cluster's partition count (`config.partitions` in
/// `saga_owners`) if none is recorded yet, and fails with the fix when another count is:
/// every process of a deployment (workers, gateways) must agree on it, or inputs land
/// on partitions nobody consumes.
pub async fn claim_partition_count(
    owners: &kv::Store,
    partitions: u32,
    who: &str,
) -> Result<(), NatsError> {
    let mine = partitions.to_string();
    match owners
        .create(PARTITIONS_KEY, Bytes::from(mine.clone()))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let theirs = owners
                .get(PARTITIONS_KEY)
                .await
                .map_err(|e| err(PARTITIONS_KEY, e))?
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            if theirs != mine {
                return Err(NatsError::InvalidConfig(format!(
                    "this {who} is configured with {mine} partitions but the cluster uses \
                     {theirs} (KV {OWNERS_BUCKET}, key {PARTITIONS_KEY}); start it with \
                     --partitions {theirs}"
                )));
            }
            Ok(())
        }
        Err(e) => Err(err(PARTITIONS_KEY, e)),
    }
}

/// A change of ownership for this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Start consuming this partition (take it over).
    Acquired(u32),
    /// Stop consuming it now: the lease is gone (taken over, or not renewed before its
    /// deadline).
    Lost(u32),
    /// Give it back: drain it, then call [`Leases::relinquish`].
    Release(u32),
}

/// A partition as one observer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionView {
    /// No lease (never taken, or given back).
    Free,
    /// A lease naming this worker that it does not hold (a take whose answer was lost).
    Mine,
    /// Another worker's lease; `stale` when its revision has not moved for a TTL.
    Other {
        /// The owner.
        worker: String,
        /// Not renewed for a TTL, as this observer saw it.
        stale: bool,
    },
}

/// What to do this heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Partitions to try to take, in order.
    pub take: Vec<u32>,
    /// Partitions to give back (drain first).
    pub release: Vec<u32>,
}

/// The rebalancing decision: move towards this worker's fair share among `live`
/// (sorted ids, this worker included). Above its share it gives back its
/// highest-numbered partitions; below it, it takes free, stale, or forgotten-own
/// partitions, starting from a place that depends on its id (so workers starting
/// together do not all race for partition 0). Partitions being given back are neither
/// counted nor taken.
pub fn rebalance(
    me: &str,
    live: &[String],
    partitions: u32,
    view: &BTreeMap<u32, PartitionView>,
    held: &BTreeSet<u32>,
    releasing: &BTreeSet<u32>,
) -> Decision {
    let target = fair_share(live, me, partitions);
    let mut d = Decision::default();
    if held.len() > target {
        d.release = held
            .iter()
            .rev()
            .take(held.len() - target)
            .copied()
            .collect();
        d.release.sort_unstable();
        return d;
    }
    let want = target - held.len();
    if want == 0 || partitions == 0 {
        return d;
    }
    let start = (crate::names_hash(me) % u64::from(partitions)) as u32;
    for i in 0..partitions {
        if d.take.len() >= want {
            break;
        }
        let p = (start + i) % partitions;
        if held.contains(&p) || releasing.contains(&p) {
            continue;
        }
        let takeable = match view.get(&p) {
            None | Some(PartitionView::Free) | Some(PartitionView::Mine) => true,
            Some(PartitionView::Other { stale, .. }) => *stale,
        };
        if takeable {
            d.take.push(p);
        }
    }
    d
}

/// How many partitions `me` should hold among `live` workers (sorted ids): with `n`
/// workers, worker `i` holds `P / n`, plus one if `i < P % n`.
pub fn fair_share(live: &[String], me: &str, partitions: u32) -> usize {
    let n = live.len().max(1) as u32;
    let index = live.iter().position(|w| w == me).unwrap_or(live.len()) as u32;
    let index = index.min(n - 1);
    (partitions / n + u32::from(index < partitions % n)) as usize
}

/// Judges entries by revision progress on this process's monotonic clock.
#[derive(Debug, Default)]
pub struct Observer {
    seen: HashMap<String, (u64, Instant)>,
}

impl Observer {
    /// Records `revision` of `key` as seen at `now`; returns how long the entry has had
    /// that revision as far as this observer knows (zero when it just changed, or when
    /// it is seen for the first time: a new observer waits a full TTL before calling
    /// anything expired).
    pub fn observe(&mut self, key: &str, revision: u64, now: Instant) -> Duration {
        match self.seen.get(key) {
            Some((rev, since)) if *rev == revision => now.saturating_duration_since(*since),
            _ => {
                self.seen.insert(key.to_string(), (revision, now));
                Duration::ZERO
            }
        }
    }

    /// Forgets keys not in `keep`.
    pub fn retain(&mut self, keep: &BTreeSet<String>) {
        self.seen.retain(|k, _| keep.contains(k));
    }
}

/// This worker's leases.
#[derive(Debug)]
pub struct Leases {
    owners: kv::Store,
    workers: kv::Store,
    settings: LeaseSettings,
    /// Held: revision and the monotonic deadline (send instant of the last successful
    /// renewal plus the TTL).
    held: BTreeMap<u32, (u64, Instant)>,
    releasing: BTreeMap<u32, u64>,
    observer: Observer,
    clock: Option<std::sync::Arc<crate::BrokerClock>>,
    /// Announced with the worker (see [`Leases::tick`]).
    saga_types: Option<Vec<String>>,
    /// When this worker last announced itself, and the partitions it announced.
    announced: Option<(Instant, Vec<u32>)>,
}

/// How often a held lease is renewed and the worker announced: a quarter of the TTL, at
/// most 5 s. Heartbeats run more often than that (to see free partitions and new
/// workers soon), but a renewal is a fsynced write: one every quarter TTL leaves three
/// more chances before the lease ends, and costs a few writes a second instead of one
/// per partition per heartbeat.
pub fn renewal_interval(ttl: Duration) -> Duration {
    (ttl / 4).min(Duration::from_secs(5))
}

fn key(p: u32) -> String {
    format!("p{p}")
}

fn err(what: &str, e: impl std::fmt::Display) -> NatsError {
    NatsError::Leases(format!("{what}: {e}"))
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Leases {
    /// Opens the buckets (provisioned by `provision`) and checks the partition count
    /// against the cluster's.
    pub async fn new(js: &jetstream::Context, settings: LeaseSettings) -> Result<Self, NatsError> {
        let owners = js
            .get_key_value(OWNERS_BUCKET)
            .await
            .map_err(|e| err(OWNERS_BUCKET, e))?;
        let workers = js
            .get_key_value(WORKERS_BUCKET)
            .await
            .map_err(|e| err(WORKERS_BUCKET, e))?;
        claim_partition_count(&owners, settings.partitions, "worker").await?;
        Ok(Self {
            owners,
            workers,
            settings,
            held: BTreeMap::new(),
            releasing: BTreeMap::new(),
            observer: Observer::default(),
            clock: None,
            saga_types: None,
            announced: None,
        })
    }

    /// Announces the saga types this worker runs (gateways refuse to accept a saga that
    /// no live worker runs).
    pub fn with_saga_types(mut self, types: impl IntoIterator<Item = String>) -> Self {
        let mut types: Vec<String> = types.into_iter().collect();
        types.sort();
        self.saga_types = Some(types);
        self
    }

    /// Measures the broker's clock from every heartbeat into `clock`.
    pub fn with_clock(mut self, clock: std::sync::Arc<crate::BrokerClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The settings.
    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// Partitions held now.
    pub fn held(&self) -> Vec<u32> {
        self.held.keys().copied().collect()
    }

    /// The monotonic deadline of each held lease: past it, the partition must no longer
    /// be consumed (another worker may take it soon after).
    pub fn deadlines(&self) -> BTreeMap<u32, Instant> {
        self.held.iter().map(|(p, (_, d))| (*p, *d)).collect()
    }

    fn lease(&self) -> Bytes {
        let lease = Lease {
            worker: self.settings.worker_id.clone(),
            expires_at_ms: wall_ms() + self.settings.ttl.as_millis() as u64,
        };
        Bytes::from(serde_json::to_vec(&lease).unwrap_or_default())
    }

    /// One heartbeat: renew the leases that are due (all at once), announce this worker
    /// when due, then move towards its fair share.
    pub async fn tick(&mut self) -> Vec<LeaseEvent> {
        let mut events = self.renew().await;
        if !self.announce().await {
            return events;
        }
        let Ok(live) = self.live_workers().await else {
            return events;
        };
        let Ok(view) = self.view().await else {
            return events;
        };
        let held: BTreeSet<u32> = self.held.keys().copied().collect();
        let releasing: BTreeSet<u32> = self.releasing.keys().copied().collect();
        let d = rebalance(
            &self.settings.worker_id,
            &live,
            self.settings.partitions,
            &view.iter().map(|(p, (v, _))| (*p, v.clone())).collect(),
            &held,
            &releasing,
        );
        if !d.take.is_empty() || !d.release.is_empty() {
            tracing::info!(?live, held = ?self.held(), take = ?d.take, release = ?d.release, "rebalancing partitions");
        }
        for p in d.release {
            if let Some((rev, _)) = self.held.remove(&p) {
                self.releasing.insert(p, rev);
                events.push(LeaseEvent::Release(p));
            }
        }
        for p in d.take {
            let revision = view.get(&p).and_then(|(_, r)| *r);
            let sent = Instant::now();
            if let Some(rev) = self.try_take(p, revision).await {
                self.held.insert(p, (rev, sent + self.settings.ttl));
                events.push(LeaseEvent::Acquired(p));
            }
        }
        events
    }

    /// Announces this worker in `saga_workers` when a renewal interval has passed since
    /// the last announcement or its partitions changed (and samples the broker's clock);
    /// `false` when the announcement failed.
    async fn announce(&mut self) -> bool {
        let held = self.held();
        let interval = renewal_interval(self.settings.ttl);
        if let Some((at, partitions)) = &self.announced {
            if at.elapsed() < interval && *partitions == held {
                return true;
            }
        }
        let started = Instant::now();
        let info = WorkerInfo {
            worker: self.settings.worker_id.clone(),
            heartbeat_ms: wall_ms(),
            partitions: self.held(),
            saga_types: self.saga_types.clone(),
        };
        let sent = wall_ms();
        if let Err(e) = self
            .workers
            .put(
                &self.settings.worker_id,
                Bytes::from(serde_json::to_vec(&info).unwrap_or_default()),
            )
            .await
        {
            tracing::warn!(error = %e, "worker heartbeat failed");
            return false;
        }
        let acked = wall_ms();
        if let Some(clock) = &self.clock {
            if let Ok(Some(e)) = self.workers.entry(&self.settings.worker_id).await {
                let stamped = e.created.unix_timestamp_nanos() / 1_000_000;
                if stamped > 0 {
                    clock.sample(sent, acked, stamped as u64);
                }
            }
        }
        self.announced = Some((started, held));
        true
    }

    /// Renews concurrently every held lease whose last successful renewal is a renewal
    /// interval old (the others wait for a later heartbeat); a lease taken over, or whose
    /// deadline passed without a successful renewal, is lost.
    async fn renew(&mut self) -> Vec<LeaseEvent> {
        let now = Instant::now();
        let not_yet = self
            .settings
            .ttl
            .saturating_sub(renewal_interval(self.settings.ttl));
        let (held, fresh): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(_, (_, deadline))| deadline.saturating_duration_since(now) <= not_yet);
        self.held = fresh;
        let value = self.lease();
        let owners = &self.owners;
        let results = futures::future::join_all(held.into_iter().map(|(p, (rev, deadline))| {
            let value = value.clone();
            async move {
                let sent = Instant::now();
                (
                    p,
                    rev,
                    deadline,
                    sent,
                    owners.update(key(p), value, rev).await,
                )
            }
        }))
        .await;
        let mut events = Vec::new();
        for (p, rev, deadline, sent, result) in results {
            match result {
                Ok(new_rev) => {
                    self.held.insert(p, (new_rev, sent + self.settings.ttl));
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    // A renewal whose answer was lost (a reconnect) moved the revision
                    // on: the lease may still be ours.
                    match self.owners.entry(key(p)).await {
                        Ok(Some(entry))
                            if entry.operation == kv::Operation::Put
                                && serde_json::from_slice::<Lease>(&entry.value)
                                    .is_ok_and(|l| l.worker == self.settings.worker_id)
                                && Instant::now() < deadline =>
                        {
                            tracing::info!(
                                partition = p,
                                "lease renewed by an earlier attempt; keeping it"
                            );
                            self.held.insert(p, (entry.revision, deadline));
                        }
                        _ => {
                            tracing::warn!(partition = p, "lease taken over by another worker");
                            events.push(LeaseEvent::Lost(p));
                        }
                    }
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(partition = p, error = %e, "lease renewal failed; retrying");
                    self.held.insert(p, (rev, deadline));
                }
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "lease expired unrenewed");
                    events.push(LeaseEvent::Lost(p));
                }
            }
        }
        events
    }

    /// Every partition's lease as this observer sees it, with its revision.
    async fn view(&mut self) -> Result<BTreeMap<u32, (PartitionView, Option<u64>)>, NatsError> {
        let owners = &self.owners;
        let entries = futures::future::join_all(
            (0..self.settings.partitions).map(|p| async move { (p, owners.entry(key(p)).await) }),
        )
        .await;
        let now = Instant::now();
        let mut out = BTreeMap::new();
        for (p, entry) in entries {
            let entry = entry.map_err(|e| err(OWNERS_BUCKET, e))?;
            let v = match entry {
                None => (PartitionView::Free, None),
                Some(e) if e.operation != kv::Operation::Put => {
                    (PartitionView::Free, Some(e.revision))
                }
                Some(e) => {
                    let age = self.observer.observe(&key(p), e.revision, now);
                    match serde_json::from_slice::<Lease>(&e.value) {
                        Ok(l) if l.worker == self.settings.worker_id => {
                            (PartitionView::Mine, Some(e.revision))
                        }
                        Ok(l) => (
                            PartitionView::Other {
                                worker: l.worker,
                                stale: age >= self.settings.ttl,
                            },
                            Some(e.revision),
                        ),
                        // Unreadable: take it over once it has not moved for a TTL.
                        Err(_) if age >= self.settings.ttl => {
                            (PartitionView::Free, Some(e.revision))
                        }
                        Err(_) => (
                            PartitionView::Other {
                                worker: "?".into(),
                                stale: false,
                            },
                            Some(e.revision),
                        ),
                    }
                }
            };
            out.insert(p, v);
        }
        Ok(out)
    }

    /// Takes a partition with compare-and-set on the revision seen (create when none).
    async fn try_take(&self, p: u32, revision: Option<u64>) -> Option<u64> {
        match revision {
            None => self.owners.create(key(p), self.lease()).await.ok(),
            Some(rev) => self.owners.update(key(p), self.lease(), rev).await.ok(),
        }
    }

    /// Gives back a partition after draining it (the next owner takes it at once).
    pub async fn relinquish(&mut self, p: u32) {
        if let Some(rev) = self.releasing.remove(&p) {
            if let Err(e) = self.owners.delete_expect_revision(key(p), Some(rev)).await {
                tracing::warn!(partition = p, error = %e, "could not give the lease back; it will expire");
            }
        }
    }

    /// Gives back a partition this worker could not take over after all.
    pub async fn relinquish_now(&mut self, p: u32) {
        if let Some((rev, _)) = self.held.remove(&p) {
            self.releasing.insert(p, rev);
            self.relinquish(p).await;
        }
    }

    /// Forgets a lease this worker stopped consuming on its own (its deadline passed):
    /// it is not renewed again, and the partition is taken anew when the share says so.
    pub fn forget(&mut self, p: u32) {
        self.held.remove(&p);
    }

    /// Gives back every lease and leaves the cluster (graceful shutdown, after the
    /// partitions were drained).
    pub async fn leave(&mut self) {
        let held: Vec<(u32, u64)> = self
            .held
            .iter()
            .map(|(p, (rev, _))| (*p, *rev))
            .chain(self.releasing.iter().map(|(p, rev)| (*p, *rev)))
            .collect();
        for (p, rev) in held {
            if let Err(e) = self.owners.delete_expect_revision(key(p), Some(rev)).await {
                tracing::warn!(partition = p, error = %e, "could not give the lease back; it will expire");
            }
        }
        self.held.clear();
        self.releasing.clear();
        // A take whose answer was lost leaves a lease this worker never knew it had:
        // give back whatever still names it.
        for p in 0..self.settings.partitions {
            if let Ok(Some(e)) = self.owners.entry(key(p)).await {
                let mine = e.operation == kv::Operation::Put
                    && serde_json::from_slice::<Lease>(&e.value)
                        .is_ok_and(|l| l.worker == self.settings.worker_id);
                if mine {
                    let _ = self
                        .owners
                        .delete_expect_revision(key(p), Some(e.revision))
                        .await;
                }
            }
        }
        let _ = self.workers.delete(&self.settings.worker_id).await;
    }

    /// Live workers, sorted: this one, and every other whose heartbeat revision moved
    /// within the TTL as this observer saw it.
    async fn live_workers(&mut self) -> Result<Vec<String>, NatsError> {
        let keys: BTreeSet<String> = self
            .workers
            .keys()
            .await
            .map_err(|e| err(WORKERS_BUCKET, e))?
            .try_collect()
            .await
            .map_err(|e| err(WORKERS_BUCKET, e))?;
        let now = Instant::now();
        let mut live = vec![self.settings.worker_id.clone()];
        let mut observed = BTreeSet::new();
        for k in keys {
            if k == self.settings.worker_id {
                continue;
            }
            if let Ok(Some(e)) = self.workers.entry(&k).await {
                if e.operation != kv::Operation::Put {
                    continue;
                }
                let key = format!("w/{k}");
                let age = self.observer.observe(&key, e.revision, now);
                observed.insert(key);
                if age < self.settings.ttl {
                    live.push(k);
                }
            }
        }
        observed.extend((0..self.settings.partitions).map(key));
        self.observer.retain(&observed);
        live.sort();
        Ok(live)
    }
}

/// Workers of a `saga_workers` bucket whose heartbeat is younger than `ttl` by the
/// reader's clock `now` (for display: `sagactl cluster`), sorted by id.
pub async fn cluster_workers(
    workers: &kv::Store,
    now: u64,
    ttl: Duration,
) -> Result<Vec<WorkerInfo>, NatsError> {
    let keys: Vec<String> = workers
        .keys()
        .await
        .map_err(|e| err(WORKERS_BUCKET, e))?
        .try_collect()
        .await
        .map_err(|e| err(WORKERS_BUCKET, e))?;
    // The key listing can name a key twice when it is updated while being listed (every
    // heartbeat updates one): count each worker once.
    let keys: BTreeSet<String> = keys.into_iter().collect();
    let mut live = Vec::new();
    for k in keys {
        if let Ok(Some(v)) = workers.get(&k).await {
            if let Ok(info) = serde_json::from_slice::<WorkerInfo>(&v) {
                if now.saturating_sub(info.heartbeat_ms) < ttl.as_millis() as u64 {
                    live.push(info);
                }
            }
        }
    }
    live.sort_by(|a, b| a.worker.cmp(&b.worker));
    Ok(live)
}

/// The partition owners of a `saga_owners` bucket: partition -> lease.
pub async fn cluster_owners(owners: &kv::Store, partitions: u32) -> BTreeMap<u32, Lease> {
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        if let Ok(Some(v)) = owners.get(key(p)).await {
            if let Ok(lease) = serde_json::from_slice::<Lease>(&v) {
                out.insert(p, lease);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("w{i}")).collect()
    }

    fn set(v: &[u32]) -> BTreeSet<u32> {
        v.iter().copied().collect()
    }

    fn other(w: &str, stale: bool) -> PartitionView {
        PartitionView::Other {
            worker: w.into(),
            stale,
        }
    }

    #[test]
    fn fair_shares_add_up_and_differ_by_at_most_one() {
        for n in 1..6 {
            let live = ids(n);
            for p in [1u32, 7, 16, 64] {
                let shares: Vec<usize> = live.iter().map(|x| fair_share(&live, x, p)).collect();
                assert_eq!(shares.iter().sum::<usize>(), p as usize);
                let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
                assert!(max - min <= 1, "{shares:?}");
            }
        }
    }

    #[test]
    fn rebalance_table() {
        struct Case {
            name: &'static str,
            live: usize,
            partitions: u32,
            view: Vec<(u32, PartitionView)>,
            held: Vec<u32>,
            releasing: Vec<u32>,
            take: usize,
            release: Vec<u32>,
            never_take: Vec<u32>,
        }
        let cases = [
            Case {
                name: "alone: takes every free partition",
                live: 1,
                partitions: 4,
                view: vec![],
                held: vec![],
                releasing: vec![],
                take: 4,
                release: vec![],
                never_take: vec![],
            },
            Case {
                name: "alone: a live owner's lease is left alone",
                live: 1,
                partitions: 4,
                view: vec![(2, other("w9", false))],
                held: vec![],
                releasing: vec![],
                take: 3,
                release: vec![],
                never_take: vec![2],
            },
            Case {
                name: "a stale lease is taken over",
                live: 1,
                partitions: 4,
                view: vec![(2, other("w9", true))],
                held: vec![0, 1, 3],
                releasing: vec![],
                take: 1,
                release: vec![],
                never_take: vec![],
            },
            Case {
                name: "a forgotten lease of my own is taken back",
                live: 1,
                partitions: 2,
                view: vec![(1, PartitionView::Mine)],
                held: vec![0],
                releasing: vec![],
                take: 1,
                release: vec![],
                never_take: vec![],
            },
            Case {
                name: "above the share: the highest partitions go back",
                live: 2,
                partitions: 4,
                view: vec![],
                held: vec![0, 1, 2, 3],
                releasing: vec![],
                take: 0,
                release: vec![2, 3],
                never_take: vec![],
            },
            Case {
                name: "partitions being given back are neither counted nor taken",
                live: 2,
                partitions: 4,
                view: vec![],
                held: vec![0],
                releasing: vec![1, 2],
                take: 1,
                release: vec![],
                never_take: vec![1, 2],
            },
            Case {
                name: "at the share: nothing to do",
                live: 4,
                partitions: 16,
                view: vec![],
                held: vec![0, 1, 2, 3],
                releasing: vec![],
                take: 0,
                release: vec![],
                never_take: vec![],
            },
            Case {
                name: "every other partition is held by live workers: nothing to take",
                live: 2,
                partitions: 4,
                view: vec![
                    (1, other("w1", false)),
                    (2, other("w1", false)),
                    (3, other("w1", false)),
                ],
                held: vec![0],
                releasing: vec![],
                take: 0,
                release: vec![],
                never_take: vec![1, 2, 3],
            },
        ];
        for c in cases {
            let live = ids(c.live);
            let view: BTreeMap<u32, PartitionView> = c.view.into_iter().collect();
            let d = rebalance(
                "w0",
                &live,
                c.partitions,
                &view,
                &set(&c.held),
                &set(&c.releasing),
            );
            assert_eq!(d.take.len(), c.take, "{}: {d:?}", c.name);
            assert_eq!(d.release, c.release, "{}", c.name);
            for p in &d.take {
                assert!(!c.held.contains(p), "{}: takes a held partition", c.name);
                assert!(!c.never_take.contains(p), "{}: takes {p}", c.name);
            }
        }
    }

    #[test]
    fn an_observer_calls_an_entry_stale_only_after_a_ttl_without_progress() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        assert_eq!(o.observe("p1", 5, t0), Duration::ZERO);
        assert!(o.observe("p1", 5, t0 + Duration::from_secs(9)) < ttl);
        // Progress resets the age, however the writer's clock runs.
        assert_eq!(
            o.observe("p1", 6, t0 + Duration::from_secs(9)),
            Duration::ZERO
        );
        assert!(o.observe("p1", 6, t0 + Duration::from_secs(18)) < ttl);
        assert!(o.observe("p1", 6, t0 + Duration::from_secs(19)) >= ttl);
        o.retain(&BTreeSet::new());
        assert_eq!(
            o.observe("p1", 6, t0 + Duration::from_secs(30)),
            Duration::ZERO
        );
    }
}
