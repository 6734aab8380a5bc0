//! Partition leases: which worker consumes which partition.
//!
//! - `saga_workers` holds one entry per live worker (`WorkerInfo`, refreshed every
//!   heartbeat; an entry older than the lease TTL counts as gone).
//! - `saga_owners` holds `p<N>` -> `Lease { worker, expires_at_ms }` per partition,
//!   written with compare-and-set on the entry's revision, renewed every heartbeat, and
//!   `config.partitions` -> the cluster's partition count (a worker configured with
//!   another count refuses to start).
//!
//! Each worker aims at its fair share: with `n` live workers sorted by id, worker `i`
//! holds `P / n` partitions, plus one if `i < P % n`. Above its share it gives
//! partitions back (the caller drains them first, then [`Leases::relinquish`]); below
//! it, it takes free or expired ones. A lease that cannot be renewed is lost: the
//! caller must stop consuming that partition. Safety does not rest on the clock: a
//! stale owner's journal appends are refused by the expected-sequence check.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

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

/// A partition's owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Worker id.
    pub worker: String,
    /// Wall-clock expiry (ms since the epoch).
    pub expires_at_ms: u64,
}

/// A live worker, as `saga_workers` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Worker id.
    pub worker: String,
    /// Last heartbeat (ms since the epoch).
    pub heartbeat_ms: u64,
    /// Partitions it holds.
    pub partitions: Vec<u32>,
}

/// A change of ownership for this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Start consuming this partition (take it over).
    Acquired(u32),
    /// Stop consuming it now: the lease is gone (taken over or not renewable).
    Lost(u32),
    /// Give it back: drain it, then call [`Leases::relinquish`].
    Release(u32),
}

/// This worker's leases.
#[derive(Debug)]
pub struct Leases {
    owners: kv::Store,
    workers: kv::Store,
    settings: LeaseSettings,
    held: BTreeMap<u32, (u64, u64)>,
    releasing: BTreeMap<u32, u64>,
}

fn key(p: u32) -> String {
    format!("p{p}")
}

fn err(what: &str, e: impl std::fmt::Display) -> NatsError {
    NatsError::Leases(format!("{what}: {e}"))
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
        let mine = settings.partitions.to_string();
        match owners
            .create(PARTITIONS_KEY, Bytes::from(mine.clone()))
            .await
        {
            Ok(_) => {}
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let theirs = owners
                    .get(PARTITIONS_KEY)
                    .await
                    .map_err(|e| err(PARTITIONS_KEY, e))?
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                if theirs != mine {
                    return Err(NatsError::InvalidConfig(format!(
                        "this worker is configured with {mine} partitions but the cluster uses \
                         {theirs} (KV {OWNERS_BUCKET}, key {PARTITIONS_KEY}); start it with \
                         --partitions {theirs}"
                    )));
                }
            }
            Err(e) => return Err(err(PARTITIONS_KEY, e)),
        }
        Ok(Self {
            owners,
            workers,
            settings,
            held: BTreeMap::new(),
            releasing: BTreeMap::new(),
        })
    }

    /// Partitions held now.
    pub fn held(&self) -> Vec<u32> {
        self.held.keys().copied().collect()
    }

    fn lease(&self, now: u64) -> Bytes {
        let lease = Lease {
            worker: self.settings.worker_id.clone(),
            expires_at_ms: now + self.settings.ttl.as_millis() as u64,
        };
        Bytes::from(serde_json::to_vec(&lease).unwrap_or_default())
    }

    /// One heartbeat: announce this worker, renew its leases, then move towards its
    /// fair share. `now` is wall-clock milliseconds.
    pub async fn tick(&mut self, now: u64) -> Vec<LeaseEvent> {
        let mut events = Vec::new();
        // Renew; a lease that cannot be renewed before it expires is lost.
        for (p, (rev, expires)) in std::mem::take(&mut self.held) {
            match self.owners.update(key(p), self.lease(now), rev).await {
                Ok(new_rev) => {
                    self.held
                        .insert(p, (new_rev, now + self.settings.ttl.as_millis() as u64));
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tracing::warn!(partition = p, "lease taken over by another worker");
                    events.push(LeaseEvent::Lost(p));
                }
                Err(e) if now < expires => {
                    tracing::warn!(partition = p, error = %e, "lease renewal failed; retrying");
                    self.held.insert(p, (rev, expires));
                }
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "lease expired unrenewed");
                    events.push(LeaseEvent::Lost(p));
                }
            }
        }
        let info = WorkerInfo {
            worker: self.settings.worker_id.clone(),
            heartbeat_ms: now,
            partitions: self.held(),
        };
        if let Err(e) = self
            .workers
            .put(
                &self.settings.worker_id,
                Bytes::from(serde_json::to_vec(&info).unwrap_or_default()),
            )
            .await
        {
            tracing::warn!(error = %e, "worker heartbeat failed");
            return events;
        }
        let Ok(live) = self.live_workers(now).await else {
            return events;
        };
        let target = fair_share(&live, &self.settings.worker_id, self.settings.partitions);
        if self.held.len() != target {
            tracing::info!(
                live = ?live.iter().map(|w| w.worker.as_str()).collect::<Vec<_>>(),
                target,
                held = ?self.held(),
                "rebalancing partitions"
            );
        }
        // Partitions being given back no longer count towards the share.
        while self.held.len() > target {
            let Some((&p, &(rev, _))) = self.held.iter().next_back() else {
                break;
            };
            self.held.remove(&p);
            self.releasing.insert(p, rev);
            events.push(LeaseEvent::Release(p));
        }
        if self.held.len() < target {
            let start = (crate::names_hash(&self.settings.worker_id)
                % u64::from(self.settings.partitions.max(1))) as u32;
            for i in 0..self.settings.partitions {
                if self.held.len() >= target {
                    break;
                }
                let p = (start + i) % self.settings.partitions;
                if self.held.contains_key(&p) || self.releasing.contains_key(&p) {
                    continue;
                }
                if let Some(rev) = self.try_take(p, now).await {
                    self.held
                        .insert(p, (rev, now + self.settings.ttl.as_millis() as u64));
                    events.push(LeaseEvent::Acquired(p));
                }
            }
        }
        events
    }

    async fn try_take(&self, p: u32, now: u64) -> Option<u64> {
        let entry = self.owners.entry(key(p)).await.ok()?;
        match entry {
            None => self.owners.create(key(p), self.lease(now)).await.ok(),
            Some(e) if e.operation != kv::Operation::Put => self
                .owners
                .update(key(p), self.lease(now), e.revision)
                .await
                .ok(),
            Some(e) => {
                let lease: Option<Lease> = serde_json::from_slice(&e.value).ok();
                let free = lease
                    .is_none_or(|l| l.expires_at_ms <= now || l.worker == self.settings.worker_id);
                if free {
                    self.owners
                        .update(key(p), self.lease(now), e.revision)
                        .await
                        .ok()
                } else {
                    None
                }
            }
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

    /// Live workers (heartbeat within the TTL), sorted by id.
    pub async fn live_workers(&self, now: u64) -> Result<Vec<WorkerInfo>, NatsError> {
        cluster_workers(&self.workers, now, self.settings.ttl).await
    }
}

/// Live workers of a `saga_workers` bucket, sorted by id.
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
    // heartbeat updates one): count each worker once, or shares would shrink.
    let keys: std::collections::BTreeSet<String> = keys.into_iter().collect();
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

/// How many partitions `me` should hold among `live` workers (sorted by id).
pub fn fair_share(live: &[WorkerInfo], me: &str, partitions: u32) -> usize {
    let n = live.len().max(1) as u32;
    let index = live
        .iter()
        .position(|w| w.worker == me)
        .unwrap_or(live.len()) as u32;
    let index = index.min(n - 1);
    (partitions / n + u32::from(index < partitions % n)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: &str) -> WorkerInfo {
        WorkerInfo {
            worker: id.into(),
            heartbeat_ms: 0,
            partitions: vec![],
        }
    }

    #[test]
    fn fair_shares_add_up_and_differ_by_at_most_one() {
        for n in 1..6 {
            let live: Vec<_> = (0..n).map(|i| w(&format!("w{i}"))).collect();
            for p in [1u32, 7, 16, 64] {
                let shares: Vec<usize> = live
                    .iter()
                    .map(|x| fair_share(&live, &x.worker, p))
                    .collect();
                assert_eq!(shares.iter().sum::<usize>(), p as usize);
                let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
                assert!(max - min <= 1, "{shares:?}");
            }
        }
    }
}
