//! The membership loop: keeps this worker's leases and tells the worker which partitions
//! to consume, without ever letting the worker's own work hold back a renewal.
//!
//! Three tasks:
//! - **heartbeat** renews the leases, announces the worker and rebalances every
//!   heartbeat interval ([`Leases::tick`]); it only sends events and never waits for the
//!   worker;
//! - **watchdog** checks every 50 ms the monotonic deadline of each held lease; one
//!   that passed unrenewed is reported lost at once, so the worker stops consuming the
//!   partition before any other worker can judge the lease expired;
//! - **executor** carries the events out on the worker ([`PartitionOwner`]): takes over
//!   acquired partitions, stops consuming lost ones, drains and gives back released ones.
//!   Everything to stop goes at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::leases::{LeaseEvent, Leases};

/// The worker side of membership.
#[async_trait]
pub trait PartitionOwner: Send + Sync + 'static {
    /// Starts consuming a partition (bind its consumer, resume its open sagas). An
    /// error gives the lease back; whatever the attempt started must be stopped.
    async fn take(&self, partition: u32) -> Result<(), String>;
    /// Stops consuming partitions; in-flight transitions get up to `grace` to finish.
    async fn release(&self, partitions: &[u32], grace: Duration);
}

/// Settings of the loop.
#[derive(Debug, Clone, Copy)]
pub struct MembershipSettings {
    /// Interval between heartbeats (renewals).
    pub heartbeat: Duration,
    /// Drain time of a partition given back.
    pub grace: Duration,
}

enum Command {
    Relinquish(u32),
    RelinquishNow(u32),
    Forget(u32),
}

type Deadlines = Arc<Mutex<BTreeMap<u32, Instant>>>;

/// Runs until `shutdown` turns true, then releases every partition (drained within the
/// grace) and leaves the cluster.
pub async fn run(
    mut leases: Leases,
    owner: Arc<dyn PartitionOwner>,
    settings: MembershipSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let deadlines: Deadlines = Arc::default();
    let (events_tx, events_rx) = mpsc::unbounded_channel::<LeaseEvent>();
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<Command>();
    let watchdog = tokio::spawn(watchdog(
        deadlines.clone(),
        events_tx.clone(),
        cmd_tx.clone(),
    ));
    let executor = tokio::spawn(executor(owner.clone(), events_rx, cmd_tx, settings.grace));

    let mut ticker = tokio::time::interval(settings.heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(cmd) = cmd_rx.recv() => {
                match cmd {
                    Command::Relinquish(p) => leases.relinquish(p).await,
                    Command::RelinquishNow(p) => leases.relinquish_now(p).await,
                    Command::Forget(p) => leases.forget(p),
                }
                publish_deadlines(&deadlines, &leases);
            }
            _ = ticker.tick() => {
                for e in leases.tick().await {
                    crate::sampler::lease_event(&e);
                    let _ = events_tx.send(e);
                }
                publish_deadlines(&deadlines, &leases);
            }
        }
    }
    info!("membership: leaving the cluster");
    watchdog.abort();
    drop(events_tx);
    // The executor finishes what it was given, then stops.
    let _ = executor.await;
    let held = leases.held();
    owner.release(&held, settings.grace).await;
    leases.leave().await;
}

fn publish_deadlines(deadlines: &Deadlines, leases: &Leases) {
    let mut d = deadlines.lock().unwrap_or_else(|e| e.into_inner());
    *d = leases.deadlines();
}

async fn watchdog(
    deadlines: Deadlines,
    events: mpsc::UnboundedSender<LeaseEvent>,
    cmds: mpsc::UnboundedSender<Command>,
) {
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let expired: Vec<u32> = {
            let mut d = deadlines.lock().unwrap_or_else(|e| e.into_inner());
            let expired: Vec<u32> = d
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(p, _)| *p)
                .collect();
            for p in &expired {
                d.remove(p);
            }
            expired
        };
        for p in expired {
            warn!(
                partition = p,
                "lease deadline passed unrenewed: stopping the partition"
            );
            let _ = cmds.send(Command::Forget(p));
            if events.send(LeaseEvent::Lost(p)).is_err() {
                return;
            }
        }
    }
}

async fn executor(
    owner: Arc<dyn PartitionOwner>,
    mut events: mpsc::UnboundedReceiver<LeaseEvent>,
    cmds: mpsc::UnboundedSender<Command>,
    grace: Duration,
) {
    while let Some(first) = events.recv().await {
        let mut batch = vec![first];
        while let Ok(e) = events.try_recv() {
            batch.push(e);
        }
        let lost: Vec<u32> = batch
            .iter()
            .filter_map(|e| match e {
                LeaseEvent::Lost(p) => Some(*p),
                _ => None,
            })
            .collect();
        let released: Vec<u32> = batch
            .iter()
            .filter_map(|e| match e {
                LeaseEvent::Release(p) => Some(*p),
                _ => None,
            })
            .collect();
        if !lost.is_empty() {
            // Already gone: stop at once, the journal fence refuses whatever is late.
            owner.release(&lost, Duration::from_millis(500)).await;
        }
        if !released.is_empty() {
            owner.release(&released, grace).await;
            for p in released {
                let _ = cmds.send(Command::Relinquish(p));
            }
        }
        for (i, e) in batch.iter().enumerate() {
            if let LeaseEvent::Acquired(p) = *e {
                // Only when nothing later in the batch took it away again.
                let later_stop = batch[i + 1..]
                    .iter()
                    .any(|l| matches!(l, LeaseEvent::Lost(q) | LeaseEvent::Release(q) if *q == p));
                if later_stop {
                    continue;
                }
                if let Err(why) = owner.take(p).await {
                    warn!(partition = p, error = %why, "taking over the partition failed; giving it back");
                    owner.release(&[p], Duration::ZERO).await;
                    let _ = cmds.send(Command::RelinquishNow(p));
                }
            }
        }
    }
}
