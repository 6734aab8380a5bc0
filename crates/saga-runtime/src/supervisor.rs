//! The saga supervisor: one child actor per live saga, restarted with capped backoff
//! when it fails (never given up), and a sweep that resumes any open saga of a held
//! partition that has no actor.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use saga_core::ids::partition_of;
use saga_core::machine::Input;
use saga_core::SagaId;
use saga_ports::Delivery;
use tracing::{debug, warn};

use crate::saga_actor::{SagaActor, SagaArgs, SagaMsg};
use crate::Context;

/// Messages of the supervisor.
// Inputs dominate the traffic; boxing them would add an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum SupervisorMsg {
    /// Route an input to its saga (spawning the actor if needed).
    Deliver {
        /// Which saga.
        saga_id: SagaId,
        /// Its type.
        saga_type: String,
        /// What happened.
        input: Input,
        /// The message it came in.
        delivery: Option<Delivery>,
        /// Its place among the worker's inputs in flight.
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    },
    /// Make sure the saga's actor runs (recovery: it re-arms timers, relays the outbox).
    Resume {
        /// Which saga.
        saga_id: SagaId,
        /// Its type.
        saga_type: String,
    },
    /// The live saga actors.
    Children(RpcReplyPort<Vec<ActorRef<SagaMsg>>>),
    /// This worker now consumes the partition: route its inputs.
    Hold(u32),
    /// Forgets the actors of one partition (being released) and returns them, so the
    /// caller can drain them.
    Release {
        /// The partition.
        partition: u32,
        /// The deployment's partition count.
        partitions: u32,
        /// The actors that were running its sagas.
        reply: RpcReplyPort<Vec<ActorRef<SagaMsg>>>,
    },
    /// Restarts done so far (all sagas).
    Restarts(RpcReplyPort<u64>),
    /// The open sagas of held partitions, as the index lists them: resume those without
    /// an actor. Replies with how many were resumed.
    Sweep {
        /// `(saga_id, saga_type)`.
        open: Vec<(SagaId, String)>,
        /// How many were resumed.
        reply: RpcReplyPort<usize>,
    },
    /// Partitions held now.
    Held(RpcReplyPort<Vec<u32>>),
}

/// The supervisor actor.
#[derive(Debug)]
pub struct SagaSupervisor;

/// Its state.
#[derive(Debug)]
pub struct SupervisorState {
    ctx: Context,
    children: HashMap<SagaId, (ActorRef<SagaMsg>, String)>,
    by_actor: HashMap<ActorId, SagaId>,
    restarts: HashMap<SagaId, Vec<Instant>>,
    total_restarts: u64,
    held: HashSet<u32>,
    /// Sagas whose restart is scheduled.
    pending: HashSet<SagaId>,
}

impl Actor for SagaSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = Context;

    async fn pre_start(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        ctx: Context,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState {
            ctx,
            children: HashMap::new(),
            by_actor: HashMap::new(),
            restarts: HashMap::new(),
            total_restarts: 0,
            held: HashSet::new(),
            pending: HashSet::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Deliver {
                saga_id,
                saga_type,
                input,
                delivery,
                permit,
            } => {
                if !st.holds(&saga_id) {
                    // Fetched just before the partition was given away: hand it back
                    // to the broker, for the new owner.
                    if let Some(d) = &delivery {
                        let _ = d.acker.nak(Some(Duration::from_millis(100))).await;
                    }
                    return Ok(());
                }
                if matches!(input, Input::Start { .. })
                    && !st.children.contains_key(&saga_id)
                    && st.children.len() >= st.ctx.config.max_live_sagas
                {
                    // Admission control: the sagas already running keep their replies
                    // flowing (and their step timeouts met) instead of a flood of new
                    // ones queueing in front of them. The start waits in the stream;
                    // this costs no attempt.
                    if let Some(d) = &delivery {
                        let _ = d.acker.nak(Some(Duration::from_secs(1))).await;
                    }
                    return Ok(());
                }
                let mut msg = SagaMsg::Input {
                    input,
                    delivery,
                    permit,
                };
                // A child that is stopping refuses the message: start a fresh one.
                for _ in 0..2 {
                    let child = st.child(&myself, &saga_id, &saga_type, false).await?;
                    match child.cast(msg) {
                        Ok(()) => return Ok(()),
                        Err(ractor::MessagingErr::SendErr(back)) => {
                            st.forget(&saga_id);
                            msg = back;
                        }
                        Err(e) => return Err(e.to_string().into()),
                    }
                }
                warn!(%saga_id, "could not reach the saga actor; the input will be redelivered");
            }
            SupervisorMsg::Resume { saga_id, saga_type } => {
                st.pending.remove(&saga_id);
                if st.holds(&saga_id) {
                    st.child(&myself, &saga_id, &saga_type, true).await?;
                }
            }
            SupervisorMsg::Hold(partition) => {
                st.held.insert(partition);
            }
            SupervisorMsg::Children(reply) => {
                let _ = reply.send(st.children.values().map(|(a, _)| a.clone()).collect());
            }
            SupervisorMsg::Release {
                partition,
                partitions,
                reply,
            } => {
                st.held.remove(&partition);
                st.pending
                    .retain(|id| partition_of(id, partitions) != partition);
                let ids: Vec<SagaId> = st
                    .children
                    .keys()
                    .filter(|id| partition_of(id, partitions) == partition)
                    .cloned()
                    .collect();
                let mut actors = Vec::new();
                for id in ids {
                    if let Some((child, _)) = st.children.get(&id) {
                        actors.push(child.clone());
                    }
                    st.forget(&id);
                }
                let _ = reply.send(actors);
            }
            SupervisorMsg::Restarts(reply) => {
                let _ = reply.send(st.total_restarts);
            }
            SupervisorMsg::Sweep { open, reply } => {
                let window = st.ctx.config.restart_window;
                st.restarts.retain(|_, r| {
                    r.retain(|t| t.elapsed() < window);
                    !r.is_empty()
                });
                let mut resumed = 0;
                for (saga_id, saga_type) in open {
                    // A saga waiting for its restart backoff is left to it.
                    if st.holds(&saga_id)
                        && !st.children.contains_key(&saga_id)
                        && !st.pending.contains(&saga_id)
                    {
                        debug!(%saga_id, "open saga without an actor: resuming it");
                        st.child(&myself, &saga_id, &saga_type, true).await?;
                        resumed += 1;
                    }
                }
                let _ = reply.send(resumed);
            }
            SupervisorMsg::Held(reply) => {
                let _ = reply.send(st.held.iter().copied().collect());
            }
        }
        Ok(())
    }

    // ractor's default stops the supervisor when a child ends; sagas come and go.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        evt: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if let Some(id) = st.by_actor.remove(&cell.get_id()) {
                    if st
                        .children
                        .get(&id)
                        .is_some_and(|(a, _)| a.get_id() == cell.get_id())
                    {
                        st.children.remove(&id);
                    }
                    tracing::debug!(saga_id = %id, ?reason, "saga actor stopped");
                }
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(id) = st.by_actor.remove(&cell.get_id()) else {
                    return Ok(());
                };
                let saga_type = st.children.remove(&id).map(|(_, t)| t).unwrap_or_default();
                let window = st.ctx.config.restart_window;
                let recent = st.restarts.entry(id.clone()).or_default();
                recent.retain(|t| t.elapsed() < window);
                recent.push(Instant::now());
                st.total_restarts += 1;
                // Capped, never exhausted: a saga that keeps failing (the broker is
                // down for minutes) is retried at the cap until it goes through.
                let delay = Duration::from_millis(100u64 << recent.len().min(12))
                    .min(st.ctx.config.max_restart_delay);
                warn!(saga_id = %id, error = %err, ?delay, failures = recent.len(), "saga actor failed: restarting from persisted state");
                st.pending.insert(id.clone());
                myself.send_after(delay, move || SupervisorMsg::Resume {
                    saga_id: id,
                    saga_type,
                });
            }
            _ => {}
        }
        Ok(())
    }
}

impl SupervisorState {
    async fn child(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        saga_id: &SagaId,
        saga_type: &str,
        resume: bool,
    ) -> Result<ActorRef<SagaMsg>, ActorProcessingErr> {
        if let Some((child, _)) = self.children.get(saga_id) {
            return Ok(child.clone());
        }
        let args = SagaArgs {
            ctx: self.ctx.clone(),
            saga_id: saga_id.clone(),
            saga_type: saga_type.to_string(),
            resume,
        };
        let (child, _) = Actor::spawn_linked(None, SagaActor, args, myself.get_cell()).await?;
        self.by_actor.insert(child.get_id(), saga_id.clone());
        self.children
            .insert(saga_id.clone(), (child.clone(), saga_type.to_string()));
        Ok(child)
    }

    fn holds(&self, saga_id: &SagaId) -> bool {
        self.held
            .contains(&partition_of(saga_id, self.ctx.config.partitions))
    }

    fn forget(&mut self, saga_id: &SagaId) {
        if let Some((child, _)) = self.children.remove(saga_id) {
            self.by_actor.remove(&child.get_id());
        }
    }
}
