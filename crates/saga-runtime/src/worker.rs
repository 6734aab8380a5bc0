//! A worker: supervisor, partition dispatchers, recovery, takeover and graceful shutdown.

use std::collections::BTreeMap;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use saga_core::ids::partition_of;
use saga_core::SagaId;
use saga_ports::Consumer;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::dispatch::dispatch;
use crate::saga_actor::SagaMsg;
use crate::supervisor::{SagaSupervisor, SupervisorMsg};
use crate::{Context, RuntimeError};

/// A partition being consumed: its stop switch and its dispatcher.
type Dispatcher = (watch::Sender<bool>, JoinHandle<()>);

/// A running worker. It consumes the partitions it is given (all of them for a single
/// worker; those it holds a lease on in a cluster).
#[derive(Debug)]
pub struct Worker {
    ctx: Context,
    supervisor: ActorRef<SupervisorMsg>,
    supervisor_handle: JoinHandle<()>,
    partitions: Mutex<BTreeMap<u32, Dispatcher>>,
    sweeper: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Worker {
    /// A worker consuming nothing yet.
    pub async fn new(ctx: Context) -> Result<Self, RuntimeError> {
        let (supervisor, supervisor_handle) = Actor::spawn(None, SagaSupervisor, ctx.clone())
            .await
            .map_err(|e| RuntimeError::Actor(e.to_string()))?;
        let worker = Self {
            ctx,
            supervisor,
            supervisor_handle,
            partitions: Mutex::new(BTreeMap::new()),
            sweeper: std::sync::Mutex::new(None),
        };
        worker.spawn_sweeper();
        crate::metrics::spawn_sampler(&worker.ctx, &worker.supervisor);
        Ok(worker)
    }

    /// Starts a worker that consumes the given partitions: resumes every unfinished
    /// saga of its local store (re-arming timers, republishing the outbox), then
    /// dispatches their inputs.
    pub async fn start(
        ctx: Context,
        consumers: Vec<(u32, Box<dyn Consumer>)>,
    ) -> Result<Self, RuntimeError> {
        let worker = Self::new(ctx).await?;
        for (partition, _) in &consumers {
            let _ = worker.supervisor.cast(SupervisorMsg::Hold(*partition));
        }
        let active = worker.ctx.store.active()?;
        info!(sagas = active.len(), "resuming sagas from the local store");
        for s in active {
            worker.resume(s.state.saga_id, s.state.saga_type)?;
        }
        for (partition, consumer) in consumers {
            worker.dispatch(partition, consumer).await;
        }
        Ok(worker)
    }

    /// Starts the backstop sweep: every `sweep_interval`, the open sagas of each held
    /// partition that have no actor are resumed (a saga is never left without one).
    fn spawn_sweeper(&self) {
        let supervisor = self.supervisor.clone();
        let ctx = self.ctx.clone();
        let handle = tokio::spawn(async move {
            loop {
                tokio::time::sleep(ctx.config.sweep_interval).await;
                let Ok(held) = ractor::call!(supervisor, SupervisorMsg::Held) else {
                    return;
                };
                // Open sagas of the local copy, by partition: an index that lost them
                // (SAGA_OPEN deleted and re-created by an operator) gets them back.
                let mut local: BTreeMap<u32, Vec<(String, String)>> = BTreeMap::new();
                match ctx.store.active() {
                    Ok(active) => {
                        for s in active.into_iter().filter(|s| !s.state.status.is_terminal()) {
                            let p = partition_of(&s.state.saga_id, ctx.config.partitions);
                            local
                                .entry(p)
                                .or_default()
                                .push((s.state.saga_type, s.state.saga_id.to_string()));
                        }
                    }
                    Err(e) => warn!(error = %e, "sweep: reading the local store failed"),
                }
                for p in held {
                    let mut open = match ctx.open.list(p).await {
                        Ok(open) => open,
                        Err(e) => {
                            warn!(partition = p, error = %e, "sweep: listing open sagas failed");
                            continue;
                        }
                    };
                    for (t, id) in local.remove(&p).unwrap_or_default() {
                        if open.iter().any(|(_, o)| *o == id) {
                            continue;
                        }
                        warn!(partition = p, saga_id = %id, "sweep: an open saga was missing from the open-saga index: entering it again");
                        if ctx.open.open(p, &t, &id).await.is_ok() {
                            open.push((t, id));
                        }
                    }
                    let open: Vec<(SagaId, String)> = open
                        .into_iter()
                        .filter(|(t, _)| ctx.definitions.contains_key(t))
                        .filter_map(|(t, id)| SagaId::parse(&id).ok().map(|id| (id, t)))
                        .collect();
                    match ractor::call!(supervisor, |reply| SupervisorMsg::Sweep { open, reply }) {
                        Ok(n) if n > 0 => info!(
                            partition = p,
                            resumed = n,
                            "sweep resumed sagas without an actor"
                        ),
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            }
        });
        if let Ok(mut s) = self.sweeper.lock() {
            *s = Some(handle);
        }
    }

    fn resume(&self, saga_id: SagaId, saga_type: String) -> Result<(), RuntimeError> {
        self.supervisor
            .cast(SupervisorMsg::Resume { saga_id, saga_type })
            .map_err(|e| RuntimeError::Actor(e.to_string()))
    }

    async fn dispatch(&self, partition: u32, consumer: Box<dyn Consumer>) {
        let _ = self.supervisor.cast(SupervisorMsg::Hold(partition));
        let (stop, rx) = watch::channel(false);
        let handle = tokio::spawn(dispatch(
            consumer,
            self.supervisor.clone(),
            self.ctx.clone(),
            rx,
        ));
        if let Some((old, h)) = self
            .partitions
            .lock()
            .await
            .insert(partition, (stop, handle))
        {
            let _ = old.send(true);
            h.abort();
        }
    }

    /// Takes over a partition: lists its open sagas (one request to the open-saga
    /// index, whatever the history of the deployment), resumes each — from the local
    /// store where it holds a current copy, otherwise restored from the journal, with
    /// bounded concurrency — then consumes its inputs. Returns how many sagas were
    /// resumed. On error nothing of the partition is left running.
    pub async fn acquire(
        &self,
        partition: u32,
        consumer: Box<dyn Consumer>,
    ) -> Result<usize, RuntimeError> {
        let open = self.ctx.open.list(partition).await?;
        let _ = self.supervisor.cast(SupervisorMsg::Hold(partition));
        let mut resumed = 0;
        for (saga_type, id) in open {
            let Ok(saga_id) = SagaId::parse(&id) else {
                warn!(partition, saga_id = %id, "open-saga index names an invalid saga id: skipped");
                continue;
            };
            if partition_of(&saga_id, self.ctx.config.partitions) != partition {
                continue;
            }
            if self.ctx.definition(&saga_type).is_none() {
                warn!(partition, %saga_id, %saga_type, "open saga of a type this worker does not run: left for a worker that does");
                continue;
            }
            if let Err(e) = self.resume(saga_id, saga_type) {
                self.release_many(&[partition], Duration::ZERO).await;
                return Err(e);
            }
            resumed += 1;
        }
        self.dispatch(partition, consumer).await;
        info!(partition, sagas = resumed, "partition acquired");
        Ok(resumed)
    }

    /// Stops consuming a partition: its dispatcher stops fetching, and its saga actors
    /// finish the transition in hand and stop (unacked inputs go to the next owner).
    pub async fn release(&self, partition: u32, grace: Duration) {
        self.release_many(&[partition], grace).await;
    }

    /// Releases every partition at once (graceful shutdown).
    pub async fn release_all(&self, grace: Duration) {
        let held = self.held().await;
        self.release_many(&held, grace).await;
    }

    /// Releases several partitions together: their dispatchers stop at the same time,
    /// then every saga actor of theirs finishes the transition in hand.
    pub async fn release_many(&self, partitions: &[u32], grace: Duration) {
        let running: Vec<(u32, Dispatcher)> = {
            let mut held = self.partitions.lock().await;
            partitions
                .iter()
                .filter_map(|p| held.remove(p).map(|d| (*p, d)))
                .collect()
        };
        for (_, (stop, _)) in &running {
            let _ = stop.send(true);
        }
        for (_, (_, handle)) in running {
            let _ = handle.await;
        }
        // Every partition named, consumed or not: a takeover that failed half-way has
        // held the partition and resumed actors without starting its dispatcher.
        let mut actors = Vec::new();
        for &partition in partitions {
            actors.extend(
                ractor::call!(self.supervisor, |reply| SupervisorMsg::Release {
                    partition,
                    partitions: self.ctx.config.partitions,
                    reply,
                })
                .unwrap_or_default(),
            );
        }
        drain(actors, grace).await;
        info!(?partitions, "partitions released");
    }

    /// Partitions consumed now.
    pub async fn held(&self) -> Vec<u32> {
        self.partitions.lock().await.keys().copied().collect()
    }

    /// The supervisor (for routing inputs directly, e.g. in tests).
    pub fn supervisor(&self) -> &ActorRef<SupervisorMsg> {
        &self.supervisor
    }

    /// Live saga actors.
    pub async fn live_sagas(&self) -> usize {
        self.children().await.len()
    }

    /// Sagas parked (open, idle, without an actor until their next input or deadline).
    pub async fn parked_sagas(&self) -> usize {
        ractor::call!(self.supervisor, SupervisorMsg::Counts).map_or(0, |(_, parked)| parked)
    }

    /// Restarts of failed saga actors so far.
    pub async fn restarts(&self) -> u64 {
        ractor::call!(self.supervisor, SupervisorMsg::Restarts).unwrap_or(0)
    }

    async fn children(&self) -> Vec<ActorRef<SagaMsg>> {
        ractor::call!(self.supervisor, SupervisorMsg::Children).unwrap_or_default()
    }

    /// Stops fetching, lets every saga actor finish what it holds (each transition in
    /// flight completes: committed, relayed, acked), then stops. Unacked inputs are
    /// redelivered to whoever consumes next; timers are re-armed from the store.
    pub async fn shutdown(self, grace: Duration) {
        if let Some(h) = self.sweeper.lock().ok().and_then(|mut s| s.take()) {
            h.abort();
        }
        let running: Vec<_> = std::mem::take(&mut *self.partitions.lock().await)
            .into_values()
            .collect();
        for (stop, _) in &running {
            let _ = stop.send(true);
        }
        for (_, handle) in running {
            let _ = handle.await;
        }
        drain(self.children().await, grace).await;
        self.supervisor.stop(Some("shutdown".into()));
        let _ = self.supervisor_handle.await;
        info!("worker stopped");
    }
}

/// Lets each actor process what it has queued, then stop; waits up to `grace`.
async fn drain(actors: Vec<ActorRef<SagaMsg>>, grace: Duration) {
    for a in &actors {
        let _ = a.drain();
    }
    let deadline = tokio::time::Instant::now() + grace;
    for a in actors {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let stopped = tokio::time::timeout(left, async {
            while !matches!(a.get_status(), ractor::ActorStatus::Stopped) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        if stopped.is_err() {
            warn!("a saga actor did not stop within the grace period: killing it");
            a.kill();
        }
    }
}
