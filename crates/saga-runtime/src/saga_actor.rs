//! One actor per live saga.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use saga_core::definition::SagaDefinition;
use saga_core::machine::{apply, migrate, refuse, Input, SagaState, TimerKey};
use saga_core::SagaId;
use saga_ports::{
    dead_letter_message, Commit, Delivery, OutboxEntry, OutboxItem, PortError, SagaStore,
    StoreError, StoredSaga,
};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, error, info, warn, Instrument, Span};

use crate::envelope::{decode_record, refused_command, DecodedRecord, RecordTrace};
use crate::interpret;
use crate::trace;
use crate::{Context, FaultPoint, RuntimeError};

/// Messages a saga actor handles.
#[derive(Debug)]
pub enum SagaMsg {
    /// An input from the inbox stream, settled by the actor once durable.
    Input {
        /// What happened.
        input: Input,
        /// The message it came in (acked after the commit rule holds).
        delivery: Option<Delivery>,
        /// Its place among the worker's inputs in flight, given back when settled.
        permit: Option<OwnedSemaphorePermit>,
    },
    /// A timer fired.
    Timer(TimerKey),
    /// Publish what the outbox holds (after a restart).
    Relay,
    /// Stop if terminal and idle since the given activity count.
    IdleCheck(u64),
}

/// The actor. Holds no state itself (configuration only); see [`SagaActorState`].
#[derive(Debug)]
pub struct SagaActor;

/// Arguments of a saga actor.
#[derive(Debug)]
pub struct SagaArgs {
    /// Shared context.
    pub ctx: Context,
    /// Which saga.
    pub saga_id: SagaId,
    /// Its type.
    pub saga_type: String,
    /// Spawned to resume the saga (recovery, takeover, restart) rather than for an
    /// input: its state is restored from the journal at once when the local store
    /// lacks it, and a terminal saga's last messages are published again (create-only
    /// events, deduplicated commands) in case the previous owner stopped short.
    pub resume: bool,
    /// Woken by the supervisor's timer wheel at this deadline (the context clock's
    /// milliseconds): its timers due by then fire at once. The wheel waited on the
    /// monotonic clock, as an armed timer would have; a wall clock behind it must not
    /// send the saga back to wait again.
    pub due: Option<u64>,
}

/// A saga actor's state, built in `post_start` from the store or the journal.
#[derive(Debug)]
pub struct SagaActorState {
    ctx: Context,
    saga_id: SagaId,
    saga_type: String,
    def: Option<Arc<SagaDefinition>>,
    stored: Option<StoredSaga>,
    timers: BTreeMap<TimerKey, JoinHandle<()>>,
    activity: u64,
    /// Inputs received (the supervisor parks the saga only when it routed no more).
    received: u64,
    /// Resumed (takeover, restart, deadline) and given no input or timer since: parked
    /// as soon as its outbox is relayed, so a takeover of many open sagas does not keep
    /// an actor for each of them.
    resumed_idle: bool,
    resume: bool,
    /// See [`SagaArgs::due`]; used by the first arming of the stored timers.
    due: Option<u64>,
    /// Set when the last journal append was fenced (the local copy was dropped).
    fenced: bool,
    /// The saga's outbox in the store, when this actor knows it exactly (it is the only
    /// writer of its saga's outbox: its commits add to it, its relays remove from it);
    /// `None` when it must be read from the store (at start, after a failed local write,
    /// after the copy was dropped).
    outbox: Option<Vec<OutboxEntry>>,
    /// Answers to commands the broker refused for good, applied after the relay.
    refused: Vec<Input>,
    /// The saga's trace context (`traceparent`), kept in its journal records: inputs
    /// without one of their own continue it, timers link to it.
    trace: Option<String>,
    /// Set when replaying the journal gave other events than the journalled ones: the
    /// next input stops the saga with this non-determinism error instead of running it.
    diverged: Option<String>,
}

impl Actor for SagaActor {
    type Msg = SagaMsg;
    type State = SagaActorState;
    type Arguments = SagaArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SagaMsg>,
        args: SagaArgs,
    ) -> Result<SagaActorState, ActorProcessingErr> {
        let def = args.ctx.definition(&args.saga_type);
        Ok(SagaActorState {
            ctx: args.ctx,
            saga_id: args.saga_id,
            saga_type: args.saga_type,
            def,
            stored: None,
            diverged: None,
            timers: BTreeMap::new(),
            activity: 0,
            received: 0,
            resumed_idle: args.resume,
            resume: args.resume,
            due: args.due,
            fenced: false,
            outbox: None,
            refused: Vec::new(),
            trace: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<SagaMsg>,
        st: &mut SagaActorState,
    ) -> Result<(), ActorProcessingErr> {
        let local = st.load_local();
        let local = match local {
            // The journal is the truth: a local copy behind it is stale (another worker
            // moved the saga on, or this worker's store lost its last writes) and is
            // restored from the journal instead.
            Some(s) => {
                let last = {
                    let _permit = st.ctx.limits.restores.acquire().await;
                    st.ctx
                        .journal
                        .last(&st.saga_type, st.saga_id.as_str())
                        .await?
                };
                if let Some(l) = &last {
                    st.adopt_trace(&crate::envelope::record_trace(&l.payload));
                }
                match last {
                    Some(last) if last.sequence != s.journal_sequence => {
                        info!(saga_id = %st.saga_id, local = s.journal_sequence, journal = last.sequence,
                            "local copy is behind the journal: restoring");
                        st.ctx.store.forget(st.saga_id.as_str())?;
                        None
                    }
                    _ => Some(s),
                }
            }
            None => None,
        };
        // A saga met for the first time through its input is loaded lazily: a start
        // needs no journal read, anything else is restored from the journal then.
        st.stored = match local {
            Some(s) => {
                if st.def.is_some() {
                    // Pinned: the saga goes on with the version it started on.
                    let version = s.state.definition_version.clone();
                    st.def = Some(st.pinned(&version).await?);
                }
                Some(s)
            }
            None if st.resume => st.restore(st.resume).await?,
            None => None,
        };
        st.arm_stored_timers(&myself);
        if st.stored.is_some() && !st.pending()?.is_empty() {
            myself.cast(SagaMsg::Relay)?;
        }
        // An actor resumed with nothing to do stops (or parks) when idle, too.
        st.schedule_idle_check(&myself)?;
        if st.resume {
            // Through its restore: the supervisor may start the next queued resume.
            if let Some(cell) = myself.try_get_supervisor() {
                let _ =
                    cell.send_message(crate::supervisor::SupervisorMsg::Restored(myself.get_id()));
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SagaMsg>,
        msg: SagaMsg,
        st: &mut SagaActorState,
    ) -> Result<(), ActorProcessingErr> {
        // An idle check is not activity: several may be on their way at once.
        if !matches!(msg, SagaMsg::IdleCheck(_)) {
            st.activity += 1;
        }
        if matches!(msg, SagaMsg::Input { .. } | SagaMsg::Timer(_)) {
            st.resumed_idle = false;
        }
        match msg {
            SagaMsg::Input {
                input,
                delivery,
                permit,
            } => {
                st.received += 1;
                let input_id = input.id();
                let span = trace::process_span(
                    st.saga_id.as_str(),
                    &st.saga_type,
                    &input,
                    delivery.as_ref(),
                    st.trace.as_deref(),
                );
                let result = st
                    .on_input(&myself, input, delivery.as_ref())
                    .instrument(span.clone())
                    .await;
                if let Err(e) = result {
                    span.record("otel.status_code", "ERROR");
                    // One real attempt failed: it counts towards the input's limit.
                    // Hand the input back at once rather than after the ack wait; the
                    // actor fails and is restarted from what is durable.
                    st.ctx.limits.failed(&st.saga_id, &input_id);
                    if let Some(d) = &delivery {
                        let _ = d.acker.nak(Some(Duration::from_millis(500))).await;
                    }
                    drop(permit);
                    return Err(e);
                }
                drop(permit);
            }
            SagaMsg::Timer(key) => {
                st.timers.remove(&key);
                let armed = st
                    .stored
                    .as_ref()
                    .is_some_and(|s| s.timers.iter().any(|(k, _)| *k == key));
                if armed {
                    let input = Input::TimerFired(key);
                    let span = trace::timer_span(
                        st.saga_id.as_str(),
                        &st.saga_type,
                        &input,
                        st.trace.as_deref(),
                    );
                    async {
                        st.transition(&myself, &input).await?;
                        if let Err(e) = st.relay().await {
                            st.recover_from_fence(&myself, e).await?;
                        }
                        Ok::<(), RuntimeError>(())
                    }
                    .instrument(span)
                    .await?;
                }
            }
            SagaMsg::Relay => {
                if let Err(e) = st.relay().await {
                    st.recover_from_fence(&myself, e).await?;
                }
            }
            SagaMsg::IdleCheck(seen) => {
                if seen != st.activity {
                    return Ok(());
                }
                if st.is_done()? {
                    debug!(saga_id = %st.saga_id, "terminal and idle: stopping");
                    // Everything is journalled and published: the local copy is no
                    // longer needed (a late input restores it from the journal).
                    st.outbox = None;
                    st.ctx.store.forget(st.saga_id.as_str())?;
                    myself.stop(Some("terminal".into()));
                } else if let Some(wake_at) = st.parkable()? {
                    // The supervisor stops this actor unless an input is on its way.
                    if let Some(cell) = myself.try_get_supervisor() {
                        let _ = cell.send_message(crate::supervisor::SupervisorMsg::Park {
                            saga_id: st.saga_id.clone(),
                            actor: myself.get_id(),
                            received: st.received,
                            wake_at,
                        });
                    }
                }
                return Ok(());
            }
        }
        while !st.refused.is_empty() {
            for input in std::mem::take(&mut st.refused) {
                let applied = st
                    .stored
                    .as_ref()
                    .is_some_and(|s| s.state.applied_inputs.contains(&input.id()));
                if !applied {
                    let span = trace::process_span(
                        st.saga_id.as_str(),
                        &st.saga_type,
                        &input,
                        None,
                        st.trace.as_deref(),
                    );
                    st.transition(&myself, &input).instrument(span).await?;
                }
            }
            if let Err(e) = st.relay().await {
                st.recover_from_fence(&myself, e).await?;
            }
        }
        st.schedule_idle_check(&myself)?;
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SagaMsg>,
        st: &mut SagaActorState,
    ) -> Result<(), ActorProcessingErr> {
        for (_, t) in std::mem::take(&mut st.timers) {
            t.abort();
        }
        Ok(())
    }
}

/// How soon a resumed saga given nothing to do is parked (see `resumed_idle`).
const RESUMED_PARK_AFTER: Duration = Duration::from_millis(200);

fn arm(
    myself: &ActorRef<SagaMsg>,
    timers: &mut BTreeMap<TimerKey, JoinHandle<()>>,
    key: TimerKey,
    after: Duration,
) {
    let actor = myself.clone();
    let k = key.clone();
    // A plain task rather than `send_after`, so the handle type is uniform and a
    // send to a stopped actor is simply dropped.
    let handle = tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let _ = actor.cast(SagaMsg::Timer(k));
    });
    if let Some(old) = timers.insert(key, handle) {
        old.abort();
    }
}

impl SagaActorState {
    /// Takes the saga's trace context from a journal record that names one.
    fn adopt_trace(&mut self, trace: &RecordTrace) {
        if !trace.saga_traceparent.is_empty() {
            self.trace = Some(trace.saga_traceparent.clone());
        }
    }

    /// The local copy, if it is readable: a corrupt record is dropped (and the saga
    /// restored from the journal), never used.
    fn load_local(&self) -> Option<StoredSaga> {
        match self.ctx.store.load(self.saga_id.as_str()) {
            Ok(s) => s,
            Err(e @ StoreError::Corrupted(_)) => {
                warn!(saga_id = %self.saga_id, error = %e, "local copy unreadable: restoring from the journal");
                let _ = self.ctx.store.forget(self.saga_id.as_str());
                None
            }
            Err(e) => {
                warn!(saga_id = %self.saga_id, error = %e, "local copy unavailable: restoring from the journal");
                None
            }
        }
    }

    /// Arms the actor timers of the persisted deadlines (after a load or a restore).
    fn arm_stored_timers(&mut self, myself: &ActorRef<SagaMsg>) {
        let Some(stored) = &self.stored else {
            return;
        };
        let now = self.ctx.clock.now();
        let due = self.due.take();
        for (key, at) in stored.timers.clone() {
            let after = if due.is_some_and(|d| at <= d) {
                Duration::ZERO
            } else {
                Duration::from_millis(at.saturating_sub(now))
            };
            arm(myself, &mut self.timers, key, after);
        }
    }

    /// Checks again after a quiet while whether this actor can stop: a terminal saga
    /// stops, a running one may be parked ([`crate::RuntimeConfig::park_after`]).
    fn schedule_idle_check(&mut self, myself: &ActorRef<SagaMsg>) -> Result<(), RuntimeError> {
        let after = if self.is_done()? {
            self.ctx.config.idle_stop_after
        } else if !self.ctx.config.park_after.is_zero() {
            if self.resumed_idle {
                self.ctx.config.park_after.min(RESUMED_PARK_AFTER)
            } else {
                self.ctx.config.park_after
            }
        } else {
            return Ok(());
        };
        let seen = self.activity;
        myself.send_after(after, move || SagaMsg::IdleCheck(seen));
        Ok(())
    }

    /// `Some(earliest deadline)` when the saga may be parked: running, restored as it is
    /// journalled (a diverged replay must stop it at its next input; a fenced copy is
    /// being restored), and nothing of it left to publish.
    fn parkable(&mut self) -> Result<Option<Option<u64>>, RuntimeError> {
        let Some(stored) = &self.stored else {
            return Ok(None);
        };
        if self.ctx.config.park_after.is_zero()
            || stored.state.status.is_terminal()
            || self.diverged.is_some()
            || self.fenced
            || !self.refused.is_empty()
        {
            return Ok(None);
        }
        let wake_at = stored.timers.iter().map(|(_, at)| *at).min();
        Ok(self.pending()?.is_empty().then_some(wake_at))
    }

    /// The saga's outbox: as this actor knows it, or read from the store (and known
    /// from then on).
    fn pending(&mut self) -> Result<&[OutboxEntry], RuntimeError> {
        if self.outbox.is_none() {
            self.outbox = Some(self.ctx.store.outbox(self.saga_id.as_str())?);
        }
        Ok(self.outbox.as_deref().unwrap_or_default())
    }

    fn is_done(&mut self) -> Result<bool, RuntimeError> {
        Ok(match &self.stored {
            Some(s) => s.state.status.is_terminal() && self.pending()?.is_empty(),
            None => true,
        })
    }

    /// Applies an input; when the journal append is fenced (another writer moved the
    /// saga on: a previous owner still finishing, a start redelivered to a worker that
    /// never had the saga), the saga is restored from the journal here and the input
    /// tried once more. Failing the actor instead would drop the inputs queued behind
    /// this one until their ack wait.
    async fn on_input(
        &mut self,
        myself: &ActorRef<SagaMsg>,
        input: Input,
        delivery: Option<&Delivery>,
    ) -> Result<(), ActorProcessingErr> {
        match self.try_input(myself, &input, delivery).await {
            Err(_) if self.fenced => {
                self.reload(myself).await?;
                self.try_input(myself, &input, delivery).await
            }
            other => other,
        }
    }

    /// After a fenced append on a timer or relay: restore and go on; other errors fail.
    async fn recover_from_fence(
        &mut self,
        myself: &ActorRef<SagaMsg>,
        e: RuntimeError,
    ) -> Result<(), RuntimeError> {
        if !self.fenced {
            return Err(e);
        }
        self.reload(myself).await
    }

    /// Drops what this actor holds and restores the saga from its journal.
    async fn reload(&mut self, myself: &ActorRef<SagaMsg>) -> Result<(), RuntimeError> {
        self.fenced = false;
        for (_, t) in std::mem::take(&mut self.timers) {
            t.abort();
        }
        self.stored = self.restore(true).await?;
        self.arm_stored_timers(myself);
        if self.stored.is_some() {
            self.relay().await?;
        }
        Ok(())
    }

    async fn try_input(
        &mut self,
        myself: &ActorRef<SagaMsg>,
        input: &Input,
        delivery: Option<&Delivery>,
    ) -> Result<(), ActorProcessingErr> {
        if self.def.is_none() {
            return self
                .reject(delivery, &format!("unknown saga type `{}`", self.saga_type))
                .await;
        }
        let input_id = input.id();
        if self.stored.is_none() && !matches!(input, Input::Start { .. }) {
            self.stored = match self.restore(false).await {
                Ok(s) => s,
                Err(RuntimeError::Version(e)) => return self.unpinned(delivery, &e).await,
                Err(e) => return Err(e.into()),
            };
            self.arm_stored_timers(myself);
            if self.stored.is_some() {
                self.relay().await?;
            }
        }
        // "Already processed" means "in the journalled state": a transition that was
        // fenced or lost in a crash left no mark, and its input is applied again.
        if self
            .stored
            .as_ref()
            .is_some_and(|s| s.state.applied_inputs.contains(&input_id))
        {
            debug!(saga_id = %self.saga_id, input = %input_id, "redelivered input: already applied");
            // The first delivery may have been applied but not relayed yet.
            self.relay().await?;
            self.ctx.limits.settled(&self.saga_id, &input_id);
            if let Some(d) = delivery {
                settle_ack(d).await;
            }
            return Ok(());
        }
        let failures = self.ctx.limits.failures(&self.saga_id, &input_id);
        if failures >= self.ctx.config.max_deliver {
            self.ctx.limits.settled(&self.saga_id, &input_id);
            return self
                .reject(
                    delivery,
                    &format!(
                        "applying it failed {failures} times (max_deliver {})",
                        self.ctx.config.max_deliver
                    ),
                )
                .await;
        }
        if self.stored.is_none() && !matches!(input, Input::Start { .. }) && failures == 0 {
            // Looked up once per input: a start published before it is stored by now.
            self.start_ahead(myself).await?;
        }
        if self.stored.is_none() {
            if !matches!(input, Input::Start { .. }) {
                // Its start is on its way (being journalled by the previous owner of the
                // partition, or published but not yet stored): try again later, and give
                // up only after the input's attempts are spent.
                self.ctx.limits.failed(&self.saga_id, &input_id);
                let tries = failures + 1;
                if tries >= self.ctx.config.max_deliver {
                    self.ctx.limits.settled(&self.saga_id, &input_id);
                    return self
                        .reject(
                            delivery,
                            &format!(
                                "no saga `{}` has been started (looked {tries} times)",
                                self.saga_id
                            ),
                        )
                        .await;
                }
                let delay = Duration::from_secs(1 << tries.min(5));
                debug!(saga_id = %self.saga_id, input = %input_id, ?delay, "input for a saga not started yet: trying again later");
                if let Some(d) = delivery {
                    let _ = d.acker.nak(Some(delay)).await;
                }
                return Ok(());
            }
            self.stored = Some(self.fresh());
        }
        let target = match input {
            Input::Migrate { to, .. } => match self.migration_target(to).await {
                Ok(target) => Some(target),
                Err(e) => return self.unpinned(delivery, &e).await,
            },
            _ => None,
        };
        self.transition_to(myself, input, target).await?;
        self.ctx.fault(FaultPoint::AfterCommit);
        self.relay().await?;
        self.ctx.fault(FaultPoint::AfterPublish);
        self.ctx.limits.settled(&self.saga_id, &input_id);
        if let Some(d) = delivery {
            settle_ack(d).await;
        }
        Ok(())
    }

    /// A saga that has not started yet, on the latest version of its type (read once:
    /// the definition and its digest from the same moment).
    fn fresh(&mut self) -> StoredSaga {
        let (digest, def) = match self.ctx.versions.latest_definition(&self.saga_type) {
            Some((digest, def)) => (digest, def),
            None => (
                String::new(),
                self.def.clone().expect("a saga of a known type"),
            ),
        };
        let mut state = SagaState::new(&def, self.saga_id.clone(), self.ctx.clock.now());
        state.definition_version = digest;
        self.def = Some(def);
        StoredSaga {
            state,
            journal_sequence: 0,
            timers: Vec::new(),
        }
    }

    /// An input reached a saga that has not started. Its start is usually still stored
    /// in the input stream, unacked: delivered to a worker that died or stalled before
    /// journalling it, it is redelivered only after its ack wait, while this later input
    /// was delivered at once. The start is applied now, ahead of the input (its own
    /// delivery, when it comes, is then acked as already applied), so a cancel sent
    /// right after a start cancels the saga instead of waiting out the start's ack wait.
    /// Leaves the saga unstarted when no start is found or the stream cannot be read.
    async fn start_ahead(&mut self, myself: &ActorRef<SagaMsg>) -> Result<(), RuntimeError> {
        const LOOK_AT: usize = 8;
        let Some(waiting) = self.ctx.waiting.clone() else {
            return Ok(());
        };
        let partition = saga_core::ids::partition_of(&self.saga_id, self.ctx.config.partitions);
        let stored = match waiting
            .waiting(partition, self.saga_id.as_str(), LOOK_AT)
            .await
        {
            Ok(stored) => stored,
            Err(e) => {
                warn!(saga_id = %self.saga_id, error = %e, "looking for the saga's start in the input stream failed");
                return Ok(());
            }
        };
        let start = stored.iter().find_map(|d| {
            crate::envelope::decode_input(d).ok().filter(|x| {
                matches!(x.input, Input::Start { .. })
                    && x.saga_id == self.saga_id
                    && x.saga_type == self.saga_type
            })
        });
        let Some(start) = start else {
            return Ok(());
        };
        info!(saga_id = %self.saga_id, start = %start.input.id(), "an input came before the saga's start: the start, still waiting in the input stream, is applied first");
        self.stored = Some(self.fresh());
        if let Err(e) = self.transition(myself, &start.input).await {
            self.stored = None;
            return Err(e);
        }
        self.relay().await
    }

    /// The version the saga is pinned to cannot be had: the saga is not touched and
    /// the input is handed back (no attempt counted, never dead-lettered), to be tried
    /// again once the version is pushed or the registry answers.
    async fn unpinned(
        &self,
        delivery: Option<&Delivery>,
        e: &crate::VersionError,
    ) -> Result<(), ActorProcessingErr> {
        error!(saga_id = %self.saga_id, saga_type = %self.saga_type, error = %e, "the saga's definition version is not available: input handed back, saga left as it is");
        if let Some(d) = delivery {
            let _ = d.acker.nak(Some(Duration::from_secs(5))).await;
        }
        Ok(())
    }

    /// The definition of the version a saga is pinned to; an error is logged here.
    async fn pinned(&self, version: &str) -> Result<Arc<SagaDefinition>, RuntimeError> {
        self.ctx
            .definition_for(&self.saga_type, version)
            .await
            .map_err(|e| {
                error!(saga_id = %self.saga_id, saga_type = %self.saga_type, error = %e, "the saga's definition version is not available: saga left as it is");
                RuntimeError::Version(e)
            })
    }

    async fn reject(
        &self,
        delivery: Option<&Delivery>,
        why: &str,
    ) -> Result<(), ActorProcessingErr> {
        warn!(saga_id = %self.saga_id, why, "input dead-lettered");
        if let Some(d) = delivery {
            dead_letter(&self.ctx, d, why).await;
        }
        Ok(())
    }

    /// The definition a migration moves to, or why it cannot be had for good (the
    /// version is not registered, or unusable: the migration is refused). An error is
    /// a registry that cannot be read: the input is handed back.
    async fn migration_target(
        &self,
        to: &str,
    ) -> Result<Result<Arc<SagaDefinition>, String>, crate::VersionError> {
        match self.ctx.definition_for(&self.saga_type, to).await {
            Ok(def) => Ok(Ok(def)),
            Err(e @ crate::VersionError::Unavailable { .. }) => Err(e),
            Err(e) => Ok(Err(e.to_string())),
        }
    }

    /// [`Self::transition_to`] for any input but a migration.
    async fn transition(
        &mut self,
        myself: &ActorRef<SagaMsg>,
        input: &Input,
    ) -> Result<(), RuntimeError> {
        self.transition_to(myself, input, None).await
    }

    /// Applies the input and commits the transition locally (state, outbox, timers).
    /// Nothing waits for the local store to reach the disk: the relay makes the
    /// transition durable in the journal before the input is acked, and a local copy
    /// that lost it is restored from the journal. A migration (`target`: the version it
    /// moves to, or why that version cannot be had) switches the saga's definition.
    async fn transition_to(
        &mut self,
        myself: &ActorRef<SagaMsg>,
        input: &Input,
        target: Option<Result<Arc<SagaDefinition>, String>>,
    ) -> Result<(), RuntimeError> {
        let (Some(mut def), Some(stored)) = (self.def.clone(), self.stored.as_ref()) else {
            return Ok(());
        };
        let now = self.ctx.clock.now();
        let t = match (&self.diverged, input, target) {
            (Some(why), ..) => saga_core::machine::halt(&stored.state, input, now, why),
            (None, Input::Migrate { to, step_map }, Some(Ok(to_def))) => {
                let t = migrate(&def, &to_def, to, &stored.state, step_map, input, now);
                if t.state.definition_version != stored.state.definition_version {
                    info!(saga_id = %self.saga_id, saga_type = %self.saga_type, from = %stored.state.definition_version, to = %to, "saga migrated to another definition version");
                    def = to_def;
                } else {
                    warn!(saga_id = %self.saga_id, saga_type = %self.saga_type, to = %to, events = ?t.events, "migration refused");
                }
                t
            }
            (None, Input::Migrate { to, .. }, Some(Err(why))) => {
                warn!(saga_id = %self.saga_id, saga_type = %self.saga_type, to = %to, why, "migration refused");
                refuse(&stored.state, input, now, &why)
            }
            (None, ..) => apply(&def, &stored.state, input, now),
        };
        let first = stored.state.version == 0;
        let span = Span::current();
        trace::record_transition(&span, input, &stored.state, &t.state);
        if self.trace.is_none() {
            self.trace = saga_telemetry::propagation::traceparent(&span);
        }
        let record_trace = trace::record_trace(&span, self.trace.as_deref());
        let out = interpret::transition(
            &self.ctx,
            &def,
            &stored.timers,
            input,
            &t,
            first,
            now,
            &record_trace,
        );
        if t.state.status.is_terminal() && !stored.state.status.is_terminal() {
            info!(saga_id = %self.saga_id, saga_type = %self.saga_type, status = %t.state.status, "saga finished");
        }
        let commit = Commit {
            saga: StoredSaga {
                state: t.state,
                journal_sequence: stored.journal_sequence,
                timers: out.timers.into_iter().collect(),
            },
            outbox: out.outbox,
        };
        self.committed(&commit)?;
        if let Input::TimerFired(key) = input {
            self.timers.remove(key);
        }
        let armed: Vec<TimerKey> = commit.saga.timers.iter().map(|(k, _)| k.clone()).collect();
        for effect in &t.effects {
            match effect {
                saga_core::Effect::ArmTimer { key, after, .. } => {
                    arm(myself, &mut self.timers, key.clone(), *after)
                }
                saga_core::Effect::CancelTimer { key } => {
                    if let Some(h) = self.timers.remove(key) {
                        h.abort();
                    }
                }
                _ => {}
            }
        }
        self.timers.retain(|k, h| {
            let keep = armed.contains(k);
            if !keep {
                h.abort();
            }
            keep
        });
        self.stored = Some(commit.saga);
        self.def = Some(def);
        Ok(())
    }

    /// Publishes the outbox in order: the open-saga index entry, the journal append
    /// (fenced), commands and events, the index removal. Each entry is removed once
    /// the broker stored it.
    async fn relay(&mut self) -> Result<(), RuntimeError> {
        let id = self.saga_id.to_string();
        // What was published is removed from the outbox in one local write at the end
        // (or at the first failure): an entry published again after a crash before it is
        // recognised as any republish (message ids, the journal's last record).
        let mut done = Vec::new();
        let mut sequence = None;
        self.pending()?;
        // Unknown until the removal below is written.
        let entries = self.outbox.take().unwrap_or_default();
        let result = self
            .relay_entries(&id, &entries, &mut done, &mut sequence)
            .await;
        if self.fenced {
            // The copy and its outbox were dropped.
            return result;
        }
        if !done.is_empty() {
            // The copy this actor holds is the one committed, with the sequence the
            // append got: written as it is (no read back).
            let saga = sequence.and(self.stored.as_ref());
            self.ctx.store.outbox_done_saga(&id, &done, saga)?;
        }
        self.outbox = Some(
            entries
                .into_iter()
                .filter(|e| !done.contains(&e.position))
                .collect(),
        );
        result
    }

    /// Commits a transition to the local store; what it adds to the outbox is known.
    fn committed(&mut self, commit: &Commit) -> Result<(), RuntimeError> {
        let known = self.outbox.take();
        let added = self.ctx.store.commit(commit)?;
        self.outbox = known.map(|mut known| {
            known.extend(added);
            known
        });
        Ok(())
    }

    async fn relay_entries(
        &mut self,
        id: &str,
        entries: &[OutboxEntry],
        done: &mut Vec<u64>,
        sequence: &mut Option<u64>,
    ) -> Result<(), RuntimeError> {
        for entry in entries {
            match &entry.item {
                OutboxItem::Open { partition } => {
                    let open = self.ctx.open.clone();
                    let (p, t) = (*partition, self.saga_type.clone());
                    patiently(&self.ctx, || open.open(p, &t, id)).await?;
                    done.push(entry.position);
                }
                OutboxItem::Journal(append) => {
                    let expected = self.stored.as_ref().map_or(0, |s| s.journal_sequence);
                    let journal = self.ctx.journal.clone();
                    let result = match patiently(&self.ctx, || journal.append(append, expected))
                        .await
                    {
                        // A retry recognised by its message id: the saga's journal must
                        // still end with it, or this actor holds a copy behind it.
                        Ok(ack) if ack.duplicate => {
                            match self.ctx.journal.last(&self.saga_type, id).await? {
                                Some(last) if last.sequence != ack.sequence => {
                                    Err(PortError::Fenced {
                                        subject: format!("saga.journal.{}.{id}", self.saga_type),
                                        expected,
                                        detail: format!(
                                            "our record is {}, the last is {}",
                                            ack.sequence, last.sequence
                                        ),
                                    })
                                }
                                _ => Ok(ack),
                            }
                        }
                        other => other,
                    };
                    match result {
                        Ok(ack) => {
                            done.push(entry.position);
                            *sequence = Some(ack.sequence);
                            if let Some(s) = self.stored.as_mut() {
                                s.journal_sequence = ack.sequence;
                            }
                            crate::metrics::journalled(
                                self.def.as_deref(),
                                self.stored.as_ref().map(|s| &s.state),
                                &append.payload,
                            );
                        }
                        Err(e @ PortError::Fenced { .. }) => {
                            // Someone else wrote this saga's journal: what this actor
                            // holds is not the truth. Drop it entirely, so the restart
                            // restores from the journal and the input is applied again.
                            warn!(saga_id = %id, error = %e, "the journal moved on without this actor: dropping its copy");
                            self.stored = None;
                            self.fenced = true;
                            self.outbox = None;
                            self.ctx.store.forget(id)?;
                            return Err(e.into());
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                OutboxItem::Message(msg) => {
                    let publisher = self.ctx.publisher.clone();
                    let state = self.stored.as_ref().map(|s| &s.state);
                    let (traced, span) = trace::publish(msg, state, self.trace.as_deref());
                    match patiently(&self.ctx, || publisher.publish(&traced))
                        .instrument(span)
                        .await
                    {
                        Ok(_) => {}
                        // Refused for good (too large): answered as a failed attempt,
                        // never tried again as it is.
                        Err(PortError::Rejected(why)) => match refused_command(msg, &why) {
                            Some(input) => {
                                warn!(saga_id = %id, subject = %msg.subject, %why, "the broker refuses this command: its attempt fails");
                                self.refused.push(input);
                            }
                            None => return Err(PortError::Rejected(why).into()),
                        },
                        Err(e) => return Err(e.into()),
                    }
                    done.push(entry.position);
                }
                OutboxItem::Event(msg) => {
                    let publisher = self.ctx.publisher.clone();
                    let state = self.stored.as_ref().map(|s| &s.state);
                    let (traced, span) = trace::publish(msg, state, self.trace.as_deref());
                    patiently(&self.ctx, || publisher.publish_new(&traced))
                        .instrument(span)
                        .await?;
                    done.push(entry.position);
                }
                OutboxItem::Close { partition } => {
                    let open = self.ctx.open.clone();
                    let (p, t) = (*partition, self.saga_type.clone());
                    patiently(&self.ctx, || open.close(p, &t, id)).await?;
                    done.push(entry.position);
                }
            }
        }
        Ok(())
    }

    /// Restores a saga that this worker's store does not hold from its last journal
    /// record (one read; records carry the saga after them). When `republish`, the
    /// last transition's messages are published again; otherwise only those of a
    /// saga still running (a terminal saga met through a late input publishes
    /// nothing: its messages were published before it left the open-saga index).
    async fn restore(&mut self, republish: bool) -> Result<Option<StoredSaga>, RuntimeError> {
        if self.def.is_none() {
            return Ok(None);
        }
        let permit = self.ctx.limits.restores.acquire().await;
        // A journal short enough to be checked is read whole at once (its last record is
        // the one restored); a longer one only at its end.
        let max = self.ctx.config.verify_replay_max_records;
        let (saga_type, saga_id) = (&self.saga_type, self.saga_id.as_str());
        let records = match usize::try_from(max).unwrap_or(usize::MAX) {
            0 => None,
            max => self.ctx.journal.read_short(saga_type, saga_id, max).await?,
        };
        let last = match &records {
            Some(records) => records.last().cloned(),
            None => self.ctx.journal.last(saga_type, saga_id).await?,
        };
        let Some(last) = last else {
            return Ok(None);
        };
        let bad = |why: String| RuntimeError::Journal {
            saga_id: self.saga_id.to_string(),
            why,
        };
        let record = decode_record(last.sequence, &last.payload).map_err(bad)?;
        // The version the saga is pinned to, before anything is rebuilt with it.
        let version = match &record.snapshot {
            Some(s) if !s.state.definition_version.is_empty() => s.state.definition_version.clone(),
            _ => record.definition_version.clone(),
        };
        let def = self.pinned(&version).await?;
        self.def = Some(def.clone());
        if !record.trace.saga_traceparent.is_empty() {
            // A field, not `adopt_trace`: the restore permit borrows the context.
            self.trace = Some(record.trace.saga_traceparent.clone());
        }
        let verify = record.version <= self.ctx.config.verify_replay_max_records;
        let snapshot = match record.snapshot {
            Some(s) if verify => {
                let (replayed, diverged) = self.replay(&def, records).await?;
                self.diverged = diverged.or_else(|| same_state(&replayed.state, &s.state));
                s
            }
            Some(s) => s,
            None => {
                let (s, diverged) = self.replay(&def, records).await?;
                self.diverged = diverged;
                s
            }
        };
        if let Some(why) = &self.diverged {
            error!(saga_id = %self.saga_id, saga_type = %self.saga_type, why, "non-deterministic replay: the saga is stopped at its next input");
        }
        let now = self.ctx.clock.now();
        let terminal = snapshot.state.status.is_terminal();
        let outbox = if republish || !terminal {
            interpret::published(&self.ctx, &def, &snapshot, now)
        } else {
            Vec::new()
        };
        drop(permit);
        // Published before the local commit, which then holds no outbox: one local write
        // instead of one more per message. A crash in between publishes them again at
        // the next restore (deduplicated, as any republish). The first one not published
        // at once, and those after it, go through the outbox and the relay, which
        // retries and answers a refused command.
        let mut outbox = outbox.into_iter().peekable();
        while let Some(item) = outbox.peek() {
            if !self.publish_once(item, &snapshot.state).await {
                break;
            }
            outbox.next();
        }
        let outbox: Vec<OutboxItem> = outbox.collect();
        debug!(saga_id = %self.saga_id, version = snapshot.state.version, unpublished = outbox.len(), "restored from the journal");
        let commit = Commit {
            saga: StoredSaga {
                state: snapshot.state,
                journal_sequence: last.sequence,
                timers: snapshot.timers,
            },
            outbox,
        };
        self.committed(&commit)?;
        crate::metrics::restored(&self.saga_type);
        Ok(Some(commit.saga))
    }

    /// One attempt to publish a message of a restored saga, outside its outbox: `true`
    /// when the broker stored it (or had it already).
    async fn publish_once(&self, item: &OutboxItem, state: &SagaState) -> bool {
        let id = self.saga_id.as_str();
        let result = match item {
            OutboxItem::Message(msg) => {
                let (traced, span) = trace::publish(msg, Some(state), self.trace.as_deref());
                self.ctx
                    .publisher
                    .publish(&traced)
                    .instrument(span)
                    .await
                    .map(drop)
            }
            OutboxItem::Event(msg) => {
                let (traced, span) = trace::publish(msg, Some(state), self.trace.as_deref());
                self.ctx
                    .publisher
                    .publish_new(&traced)
                    .instrument(span)
                    .await
                    .map(drop)
            }
            OutboxItem::Close { partition } => {
                self.ctx.open.close(*partition, &self.saga_type, id).await
            }
            OutboxItem::Open { .. } | OutboxItem::Journal(_) => return false,
        };
        match result {
            Ok(_) => true,
            Err(e) => {
                debug!(saga_id = %id, error = %e, "republish left to the relay");
                false
            }
        }
    }

    /// Replays every record through the state machine and compares the events it gives
    /// with the journalled ones (journals written before records carried snapshots are
    /// rebuilt so; later ones are checked so). The first mismatch is returned: the
    /// definition or the code changed under the saga, and going on would diverge.
    /// `records`: the whole journal when it was read already.
    async fn replay(
        &self,
        def: &Arc<SagaDefinition>,
        records: Option<Vec<saga_ports::JournalRecord>>,
    ) -> Result<(saga_ports::Snapshot, Option<String>), RuntimeError> {
        let bad = |why: String| RuntimeError::Journal {
            saga_id: self.saga_id.to_string(),
            why,
        };
        let records = match records {
            Some(records) => records,
            None => {
                self.ctx
                    .journal
                    .read(&self.saga_type, self.saga_id.as_str())
                    .await?
            }
        };
        let mut snapshot: Option<saga_ports::Snapshot> = None;
        let mut diverged = None;
        // The version each record was applied on: the saga's first, then the one each
        // migration moved it to.
        let mut on: Option<Arc<SagaDefinition>> = None;
        for r in &records {
            let record = decode_record(r.sequence, &r.payload).map_err(bad)?;
            let cur = match on.take() {
                Some(d) => d,
                // Records written before versions existed name none: the saga's own.
                None if record.definition_version.is_empty() => def.clone(),
                None => self.pinned(&record.definition_version).await?,
            };
            let (state, timers) = match snapshot.take() {
                Some(s) => (s.state, s.timers),
                None => {
                    let mut s = SagaState::new(&cur, self.saga_id.clone(), record.recorded_at);
                    s.definition_version = record.definition_version.clone();
                    (s, Vec::new())
                }
            };
            let mut next = cur.clone();
            let t = match &record.input {
                Input::Migrate { to, step_map } => {
                    let migrated = record
                        .events
                        .iter()
                        .any(|e| e.kind == saga_proto::TransitionEventKind::Migrated as i32);
                    if migrated {
                        let to_def = self.pinned(to).await?;
                        let t = migrate(
                            &cur,
                            &to_def,
                            to,
                            &state,
                            step_map,
                            &record.input,
                            record.recorded_at,
                        );
                        next = to_def;
                        t
                    } else {
                        // Refused when it came (for reasons of that moment, such as a
                        // version not registered yet): refused again, for the same reason.
                        let why = record
                            .events
                            .first()
                            .map(|e| e.reason.clone())
                            .unwrap_or_default();
                        let why = why
                            .split_once(" refused: ")
                            .map(|(_, w)| w.to_string())
                            .unwrap_or(why);
                        refuse(&state, &record.input, record.recorded_at, &why)
                    }
                }
                _ => apply(&cur, &state, &record.input, record.recorded_at),
            };
            if diverged.is_none() {
                diverged = compare_events(&record, &t.events);
            }
            let first = state.version == 0;
            let out = interpret::transition(
                &self.ctx,
                &next,
                &timers,
                &record.input,
                &t,
                first,
                record.recorded_at,
                &RecordTrace::default(),
            );
            snapshot = Some(saga_ports::Snapshot {
                state: t.state,
                timers: out.timers.into_iter().collect(),
                effects: t.effects,
            });
            on = Some(next);
        }
        let snapshot = snapshot.ok_or_else(|| bad("the journal has no record".into()))?;
        Ok((snapshot, diverged))
    }
}

/// `None` when the replayed saga stands where its last journalled snapshot says.
fn same_state(replayed: &SagaState, journalled: &SagaState) -> Option<String> {
    let shape = |s: &SagaState| {
        let steps: Vec<String> = s
            .steps
            .iter()
            .map(|x| {
                format!(
                    "{} {} {}/{}",
                    x.name,
                    x.status.as_str(),
                    x.attempts,
                    x.compensation_attempts
                )
            })
            .collect();
        format!(
            "v{} {} at {} [{}]",
            s.version,
            s.status,
            s.current_step_name().unwrap_or("-"),
            steps.join(", ")
        )
    };
    let (a, b) = (shape(replayed), shape(journalled));
    (a != b).then(|| {
        format!("non-deterministic replay: the journal leads to {a}, its last snapshot is {b}")
    })
}

/// `None` when a replayed record gives the journalled events; otherwise what differs.
/// Records written before events named their action are compared without it.
fn compare_events(record: &DecodedRecord, replayed: &[saga_core::SagaEvent]) -> Option<String> {
    let mut produced: Vec<saga_proto::TransitionEvent> = replayed
        .iter()
        .map(saga_proto::TransitionEvent::from)
        .collect();
    for (p, j) in produced.iter_mut().zip(&record.events) {
        if j.action.is_empty() {
            p.action.clear();
        }
    }
    if produced == record.events {
        return None;
    }
    let show = |events: &[saga_proto::TransitionEvent]| {
        events
            .iter()
            .map(|e| {
                let kind = saga_proto::TransitionEventKind::try_from(e.kind)
                    .map(|k| k.as_str_name().trim_start_matches("TRANSITION_EVENT_KIND_"))
                    .unwrap_or("UNKNOWN");
                let mut s = match (e.step.is_empty(), e.attempt) {
                    (true, _) => kind.to_string(),
                    (false, 0) => format!("{kind} {}", e.step),
                    (false, a) => format!("{kind} {} {a}", e.step),
                };
                if !e.action.is_empty() {
                    s.push_str(&format!(" ({})", e.action));
                }
                s
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(format!(
        "non-deterministic replay: record v{} ({}) now gives [{}], the journal has [{}]",
        record.version,
        record.input.id(),
        show(&produced),
        show(&record.events)
    ))
}

/// Retries an unavailable broker with backoff for up to `relay_patience`.
async fn patiently<T, F, Fut>(ctx: &Context, mut op: F) -> Result<T, PortError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PortError>>,
{
    let deadline = tokio::time::Instant::now() + ctx.config.relay_patience;
    let mut delay = Duration::from_millis(50);
    loop {
        match op().await {
            Err(e) if e.is_retryable() && tokio::time::Instant::now() + delay < deadline => {
                debug!(error = %e, ?delay, "broker unavailable: retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

async fn settle_ack(d: &Delivery) {
    if let Err(e) = d.acker.ack().await {
        // The input is journalled: a redelivery is recognised by its id.
        warn!(input = %d.position(), error = %e, "ack failed");
    }
}

/// Moves a delivery to the dead-letter stream, then terminates it. When the dead-letter
/// publish fails the delivery is handed back and tried again (the partition consumers
/// have no delivery limit, so it is never stranded).
pub(crate) async fn dead_letter(ctx: &Context, d: &Delivery, why: &str) {
    let letter = dead_letter_message(d, why);
    let published = match ctx.publisher.publish(&letter).await {
        Err(PortError::Rejected(e)) => {
            warn!(error = %e, "dead letter refused: dead-lettering the start of the payload");
            let letter = saga_ports::truncated_dead_letter(letter, d);
            ctx.publisher.publish(&letter).await
        }
        other => other,
    };
    match published {
        Ok(_) => {
            if let Err(e) = d.acker.term().await {
                warn!(error = %e, "term after dead-lettering failed");
            }
        }
        Err(e) => {
            warn!(error = %e, "dead-lettering failed: will retry on redelivery");
            let _ = d.acker.nak(Some(Duration::from_secs(1))).await;
        }
    }
}

/// For tests and tools: whether a store holds a saga in a terminal state.
pub fn is_terminal(store: &dyn SagaStore, saga_id: &str) -> bool {
    store
        .load(saga_id)
        .ok()
        .flatten()
        .is_some_and(|s| s.state.status.is_terminal())
}
