//! The saga supervisor: one child actor per live saga, restarted with capped backoff
//! when it fails (never given up), and a sweep that resumes any open saga of a held
//! partition that has no actor.
//!
//! A running saga idle for [`RuntimeConfig::park_after`](crate::RuntimeConfig) with
//! nothing left to publish is *parked*: its actor stops and the supervisor keeps only
//! its id, type and next deadline, in one timer wheel for the whole worker. Its next
//! input, or its deadline, starts an actor again from the local copy. A saga waiting
//! an hour on a step timeout then costs a map entry instead of an actor, its mailboxes
//! and a timer task.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
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
    /// A saga actor is idle with nothing to publish: park the saga (stop the actor,
    /// keep its next deadline) unless an input was routed to it since.
    Park {
        /// Which saga.
        saga_id: SagaId,
        /// The actor asking.
        actor: ActorId,
        /// Inputs that actor has received so far.
        received: u64,
        /// Its earliest timer deadline, in the context clock's milliseconds.
        wake_at: Option<u64>,
    },
    /// Resume the parked sagas whose deadline has come.
    WakeParked,
    /// `(live actors, parked sagas)`.
    Counts(RpcReplyPort<(usize, usize)>),
    /// An actor started to resume its saga is through its restore: the next queued
    /// resume may start.
    Restored(ActorId),
}

/// The supervisor actor.
#[derive(Debug)]
pub struct SagaSupervisor;

/// A live saga actor.
#[derive(Debug)]
struct Child {
    actor: ActorRef<SagaMsg>,
    saga_type: String,
    /// Inputs routed to it: it may park only once it has received them all.
    sent: u64,
}

/// A parked saga.
#[derive(Debug)]
struct Parked {
    saga_type: String,
    wake_at: Option<tokio::time::Instant>,
    /// The deadline itself, in the context clock's milliseconds.
    due: Option<u64>,
}

/// Its state.
#[derive(Debug)]
pub struct SupervisorState {
    ctx: Context,
    children: HashMap<SagaId, Child>,
    by_actor: HashMap<ActorId, SagaId>,
    /// Parked sagas: their type, and when to resume them.
    parked: HashMap<SagaId, Parked>,
    /// The parked sagas' deadlines, earliest first.
    wheel: BTreeSet<(tokio::time::Instant, SagaId)>,
    /// The earliest [`SupervisorMsg::WakeParked`] on its way.
    wake_scheduled: Option<tokio::time::Instant>,
    /// Actors started to resume a saga whose restore is not through yet.
    restoring: HashSet<ActorId>,
    /// Resumes waiting for a restore slot: a takeover of many open sagas starts their
    /// actors a few at a time instead of all at once, each then waiting for a restore
    /// permit with its actor's memory held.
    queued: VecDeque<(SagaId, String)>,
    queued_ids: HashSet<SagaId>,
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
            parked: HashMap::new(),
            wheel: BTreeSet::new(),
            wake_scheduled: None,
            restoring: HashSet::new(),
            queued: VecDeque::new(),
            queued_ids: HashSet::new(),
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
                    && !st.parked.contains_key(&saga_id)
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
                // Its next input: a parked saga runs again (a start redelivered to a
                // saga already running is no new saga for the admission control).
                st.unpark(&saga_id);
                let mut msg = SagaMsg::Input {
                    input,
                    delivery,
                    permit,
                };
                // A child that is stopping refuses the message: start a fresh one.
                for _ in 0..2 {
                    let child = st.child(&myself, &saga_id, &saga_type, false).await?;
                    match child.cast(msg) {
                        Ok(()) => {
                            if let Some(c) = st.children.get_mut(&saga_id) {
                                c.sent += 1;
                            }
                            return Ok(());
                        }
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
                st.unpark(&saga_id);
                st.resume(&myself, saga_id, saga_type).await?;
            }
            SupervisorMsg::Hold(partition) => {
                st.held.insert(partition);
            }
            SupervisorMsg::Children(reply) => {
                let _ = reply.send(st.children.values().map(|c| c.actor.clone()).collect());
            }
            SupervisorMsg::Release {
                partition,
                partitions,
                reply,
            } => {
                let theirs = |id: &SagaId| partition_of(id, partitions) == partition;
                st.held.remove(&partition);
                st.pending.retain(|id| !theirs(id));
                st.queued.retain(|(id, _)| !theirs(id));
                st.queued_ids.retain(|id| !theirs(id));
                // Parked sagas of the partition are the next owner's: their state is
                // in the journal, their deadlines in the last record.
                let parked: Vec<SagaId> =
                    st.parked.keys().filter(|id| theirs(id)).cloned().collect();
                for id in parked {
                    st.unpark(&id);
                }
                let ids: Vec<SagaId> = st
                    .children
                    .keys()
                    .filter(|id| theirs(id))
                    .cloned()
                    .collect();
                let mut actors = Vec::new();
                for id in ids {
                    if let Some(c) = st.children.get(&id) {
                        actors.push(c.actor.clone());
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
                    // A saga waiting for its restart backoff is left to it; a parked
                    // one waits for its input or deadline.
                    if st.holds(&saga_id)
                        && !st.children.contains_key(&saga_id)
                        && !st.parked.contains_key(&saga_id)
                        && !st.pending.contains(&saga_id)
                        && !st.queued_ids.contains(&saga_id)
                    {
                        debug!(%saga_id, "open saga without an actor: resuming it");
                        st.resume(&myself, saga_id, saga_type).await?;
                        resumed += 1;
                    }
                }
                let _ = reply.send(resumed);
            }
            SupervisorMsg::Held(reply) => {
                let _ = reply.send(st.held.iter().copied().collect());
            }
            SupervisorMsg::Park {
                saga_id,
                actor,
                received,
                wake_at,
            } => {
                // Not parked when an input is on its way to the actor (it would be
                // lost with the actor), or when the actor is no longer this saga's.
                let idle = st
                    .children
                    .get(&saga_id)
                    .is_some_and(|c| c.actor.get_id() == actor && c.sent == received);
                if idle && st.holds(&saga_id) {
                    let child = st.children.remove(&saga_id).expect("checked above");
                    st.by_actor.remove(&actor);
                    child.actor.stop(Some("parked".into()));
                    let wake_at_ms = wake_at;
                    let wake_at = wake_at.map(|at| {
                        let after = at.saturating_sub(st.ctx.clock.now());
                        tokio::time::Instant::now() + Duration::from_millis(after)
                    });
                    debug!(%saga_id, ?wake_at, "saga parked");
                    if let Some(at) = wake_at {
                        st.wheel.insert((at, saga_id.clone()));
                        st.schedule_wake(&myself, at);
                    }
                    st.parked.insert(
                        saga_id,
                        Parked {
                            saga_type: child.saga_type,
                            wake_at,
                            due: wake_at_ms,
                        },
                    );
                }
            }
            SupervisorMsg::WakeParked => {
                st.wake_scheduled = None;
                let now = tokio::time::Instant::now();
                while let Some((at, saga_id)) = st.wheel.first().cloned() {
                    if at > now {
                        st.schedule_wake(&myself, at);
                        break;
                    }
                    st.wheel.pop_first();
                    if let Some(p) = st.parked.remove(&saga_id) {
                        debug!(%saga_id, "deadline of a parked saga: resuming it");
                        st.child_due(&myself, &saga_id, &p.saga_type, true, p.due)
                            .await?;
                    }
                }
            }
            SupervisorMsg::Counts(reply) => {
                let _ = reply.send((st.children.len(), st.parked.len()));
            }
            SupervisorMsg::Restored(actor) => {
                if st.restoring.remove(&actor) {
                    st.next_queued(&myself).await?;
                }
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
        if let SupervisionEvent::ActorTerminated(cell, ..)
        | SupervisionEvent::ActorFailed(cell, _) = &evt
        {
            // A resume that ended before its restore frees its slot all the same.
            if st.restoring.remove(&cell.get_id()) {
                st.next_queued(&myself).await?;
            }
        }
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if let Some(id) = st.by_actor.remove(&cell.get_id()) {
                    if st
                        .children
                        .get(&id)
                        .is_some_and(|c| c.actor.get_id() == cell.get_id())
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
                let saga_type = st
                    .children
                    .remove(&id)
                    .map(|c| c.saga_type)
                    .unwrap_or_default();
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
        self.child_due(myself, saga_id, saga_type, resume, None)
            .await
    }

    /// [`Self::child`], woken at the deadline `due` (see [`SagaArgs::due`]).
    async fn child_due(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        saga_id: &SagaId,
        saga_type: &str,
        resume: bool,
        due: Option<u64>,
    ) -> Result<ActorRef<SagaMsg>, ActorProcessingErr> {
        if let Some(c) = self.children.get(saga_id) {
            return Ok(c.actor.clone());
        }
        let args = SagaArgs {
            ctx: self.ctx.clone(),
            saga_id: saga_id.clone(),
            saga_type: saga_type.to_string(),
            resume,
            due,
        };
        let (child, _) = Actor::spawn_linked(None, SagaActor, args, myself.get_cell()).await?;
        if resume {
            self.restoring.insert(child.get_id());
        }
        self.by_actor.insert(child.get_id(), saga_id.clone());
        self.children.insert(
            saga_id.clone(),
            Child {
                actor: child.clone(),
                saga_type: saga_type.to_string(),
                sent: 0,
            },
        );
        Ok(child)
    }

    /// Restore slots: actors resuming at once (twice the restore permits, so the next
    /// restores are ready when permits free up).
    fn restore_slots(&self) -> usize {
        self.ctx.config.max_concurrent_restores.max(1) * 2
    }

    /// Starts an actor to resume a held saga that has none, or queues the resume while
    /// every restore slot is taken.
    async fn resume(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        saga_id: SagaId,
        saga_type: String,
    ) -> Result<(), ActorProcessingErr> {
        if !self.holds(&saga_id) || self.children.contains_key(&saga_id) {
            return Ok(());
        }
        if self.restoring.len() >= self.restore_slots() {
            if self.queued_ids.insert(saga_id.clone()) {
                self.queued.push_back((saga_id, saga_type));
            }
            return Ok(());
        }
        self.child(myself, &saga_id, &saga_type, true).await?;
        Ok(())
    }

    /// Starts queued resumes while restore slots are free.
    async fn next_queued(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        while self.restoring.len() < self.restore_slots() {
            let Some((saga_id, saga_type)) = self.queued.pop_front() else {
                return Ok(());
            };
            self.queued_ids.remove(&saga_id);
            // An input may have started its actor meanwhile; a parked saga had one.
            if self.holds(&saga_id)
                && !self.children.contains_key(&saga_id)
                && !self.parked.contains_key(&saga_id)
            {
                self.child(myself, &saga_id, &saga_type, true).await?;
            }
        }
        Ok(())
    }

    /// Takes a saga out of the parked ones (it runs again, or is no longer held).
    fn unpark(&mut self, saga_id: &SagaId) -> Option<Parked> {
        let p = self.parked.remove(saga_id)?;
        if let Some(at) = p.wake_at {
            self.wheel.remove(&(at, saga_id.clone()));
        }
        Some(p)
    }

    /// Makes sure a [`SupervisorMsg::WakeParked`] comes by `at` (one message on its
    /// way for the earliest deadline; a later one is scheduled when that one comes).
    fn schedule_wake(&mut self, myself: &ActorRef<SupervisorMsg>, at: tokio::time::Instant) {
        if self.wake_scheduled.is_some_and(|w| w <= at) {
            return;
        }
        self.wake_scheduled = Some(at);
        let after = at.saturating_duration_since(tokio::time::Instant::now());
        myself.send_after(after, || SupervisorMsg::WakeParked);
    }

    fn holds(&self, saga_id: &SagaId) -> bool {
        self.held
            .contains(&partition_of(saga_id, self.ctx.config.partitions))
    }

    fn forget(&mut self, saga_id: &SagaId) {
        if let Some(c) = self.children.remove(saga_id) {
            self.by_actor.remove(&c.actor.get_id());
        }
    }
}
