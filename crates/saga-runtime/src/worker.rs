//! A worker: supervisor, dispatchers, recovery and graceful shutdown.

use std::time::Duration;

use ractor::{Actor, ActorRef};
use saga_ports::Consumer;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::dispatch::dispatch;
use crate::saga_actor::SagaMsg;
use crate::supervisor::{SagaSupervisor, SupervisorMsg};
use crate::{Context, RuntimeError};

/// A running worker.
#[derive(Debug)]
pub struct Worker {
    supervisor: ActorRef<SupervisorMsg>,
    supervisor_handle: JoinHandle<()>,
    dispatchers: Vec<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
}

impl Worker {
    /// Starts the supervisor, resumes every saga the store holds that is not finished
    /// (re-arming timers, republishing the outbox), then consumes the given partitions.
    pub async fn start(
        ctx: Context,
        consumers: Vec<Box<dyn Consumer>>,
    ) -> Result<Self, RuntimeError> {
        let (supervisor, supervisor_handle) = Actor::spawn(None, SagaSupervisor, ctx.clone())
            .await
            .map_err(|e| RuntimeError::Actor(e.to_string()))?;
        let active = ctx.store.active()?;
        info!(sagas = active.len(), "resuming sagas from the local store");
        for s in active {
            supervisor
                .cast(SupervisorMsg::Resume {
                    saga_id: s.state.saga_id.clone(),
                    saga_type: s.state.saga_type.clone(),
                })
                .map_err(|e| RuntimeError::Actor(e.to_string()))?;
        }
        let (shutdown, rx) = watch::channel(false);
        let dispatchers = consumers
            .into_iter()
            .map(|c| tokio::spawn(dispatch(c, supervisor.clone(), ctx.clone(), rx.clone())))
            .collect();
        Ok(Self {
            supervisor,
            supervisor_handle,
            dispatchers,
            shutdown,
        })
    }

    /// The supervisor (for routing inputs directly, e.g. in tests).
    pub fn supervisor(&self) -> &ActorRef<SupervisorMsg> {
        &self.supervisor
    }

    /// Live saga actors.
    pub async fn live_sagas(&self) -> usize {
        self.children().await.len()
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
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.shutdown.send(true);
        for d in std::mem::take(&mut self.dispatchers) {
            let _ = d.await;
        }
        let children = self.children().await;
        for child in &children {
            let _ = child.drain();
        }
        let deadline = tokio::time::Instant::now() + grace;
        for child in children {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let _ = tokio::time::timeout(left, async {
                while !matches!(child.get_status(), ractor::ActorStatus::Stopped) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
        }
        self.supervisor.stop(Some("shutdown".into()));
        let _ = self.supervisor_handle.await;
        info!("worker stopped");
    }
}
