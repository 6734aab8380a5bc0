//! One actor per live saga.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use saga_core::definition::SagaDefinition;
use saga_core::machine::{apply, Effect, Input, SagaState, TimerKey};
use saga_core::{SagaId, Timestamp};
use saga_ports::{
    dead_letter_message, Commit, Delivery, OutboxItem, PortError, SagaStore, StoredSaga,
};
use saga_proto::{self as pb, Message};
use tracing::{debug, info, warn};

use crate::envelope::{command_message, domain_event_message, journal_append};
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
    /// Spawned to resume the saga (recovery, takeover) rather than for an input: its
    /// state is rebuilt from the journal at once when the local store lacks it.
    pub resume: bool,
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
    resume: bool,
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
            timers: BTreeMap::new(),
            activity: 0,
            resume: args.resume,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<SagaMsg>,
        st: &mut SagaActorState,
    ) -> Result<(), ActorProcessingErr> {
        let local = st.ctx.store.load(st.saga_id.as_str())?;
        let local = match local {
            // The journal is the truth: a local copy behind it is stale (another worker
            // moved the saga on while this one did not own it) and is rebuilt.
            Some(s) => match st
                .ctx
                .journal
                .last(&st.saga_type, st.saga_id.as_str())
                .await?
            {
                Some(last) if last.sequence != s.journal_sequence => {
                    info!(saga_id = %st.saga_id, local = s.journal_sequence, journal = last.sequence,
                        "local copy is behind the journal: rebuilding");
                    st.ctx.store.forget(st.saga_id.as_str())?;
                    None
                }
                _ => Some(s),
            },
            None => None,
        };
        // A saga met for the first time through its input is loaded lazily: a start
        // needs no journal read, anything else is rebuilt from the journal then.
        st.stored = match local {
            Some(s) => Some(s),
            None if st.resume => rebuild_from_journal(st).await?,
            None => None,
        };
        st.arm_stored_timers(&myself);
        if st.stored.is_some() && !st.ctx.store.outbox(st.saga_id.as_str())?.is_empty() {
            myself.cast(SagaMsg::Relay)?;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SagaMsg>,
        msg: SagaMsg,
        st: &mut SagaActorState,
    ) -> Result<(), ActorProcessingErr> {
        st.activity += 1;
        match msg {
            SagaMsg::Input { input, delivery } => {
                if let Err(e) = st.on_input(&myself, input, delivery.as_ref()).await {
                    // Hand the input back at once rather than after the ack wait; the
                    // actor fails and is restarted from what is durable.
                    if let Some(d) = &delivery {
                        let _ = d.acker.nak(Some(Duration::from_millis(500))).await;
                    }
                    return Err(e);
                }
            }
            SagaMsg::Timer(key) => {
                st.timers.remove(&key);
                let armed = st
                    .stored
                    .as_ref()
                    .is_some_and(|s| s.timers.iter().any(|(k, _)| *k == key));
                if armed {
                    st.transition(&myself, Input::TimerFired(key), None).await?;
                    st.relay(&myself).await?;
                }
            }
            SagaMsg::Relay => st.relay(&myself).await?,
            SagaMsg::IdleCheck(seen) => {
                if seen + 1 == st.activity && st.is_done()? {
                    debug!(saga_id = %st.saga_id, "terminal and idle: stopping");
                    myself.stop(Some("terminal".into()));
                }
                return Ok(());
            }
        }
        if st.is_done()? {
            let seen = st.activity;
            myself.send_after(st.ctx.config.idle_stop_after, move || {
                SagaMsg::IdleCheck(seen)
            });
        }
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
    /// Arms the actor timers of the persisted deadlines (after a load or a rebuild).
    fn arm_stored_timers(&mut self, myself: &ActorRef<SagaMsg>) {
        let Some(stored) = &self.stored else {
            return;
        };
        let now = self.ctx.clock.now();
        for (key, at) in stored.timers.clone() {
            let after = Duration::from_millis(at.saturating_sub(now));
            arm(myself, &mut self.timers, key, after);
        }
    }

    fn is_done(&self) -> Result<bool, RuntimeError> {
        Ok(match &self.stored {
            Some(s) => {
                s.state.status.is_terminal()
                    && self.ctx.store.outbox(self.saga_id.as_str())?.is_empty()
            }
            None => true,
        })
    }

    async fn on_input(
        &mut self,
        myself: &ActorRef<SagaMsg>,
        input: Input,
        delivery: Option<&Delivery>,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(d) = delivery {
            if self.ctx.store.seen(&d.input_id())? {
                debug!(saga_id = %self.saga_id, input = %d.input_id(), "redelivered input: already applied");
                // The first delivery may have been applied but not relayed yet.
                self.relay(myself).await?;
                settle_ack(d).await;
                return Ok(());
            }
        }
        if self.def.is_none() {
            return self
                .reject(delivery, &format!("unknown saga type `{}`", self.saga_type))
                .await;
        }
        if self.stored.is_none() && !matches!(input, Input::Start { .. }) {
            self.stored = rebuild_from_journal(self).await?;
            self.arm_stored_timers(myself);
            if self.stored.is_some() {
                self.relay(myself).await?;
            }
        }
        if self.stored.is_none() {
            if !matches!(input, Input::Start { .. }) {
                return self
                    .reject(
                        delivery,
                        &format!("no saga `{}` has been started", self.saga_id),
                    )
                    .await;
            }
            let def = self.def.as_ref().expect("checked above");
            self.stored = Some(StoredSaga {
                state: SagaState::new(def, self.saga_id.clone(), self.ctx.clock.now()),
                journal_sequence: 0,
                timers: Vec::new(),
            });
        }
        let input_id = delivery.map(Delivery::input_id);
        self.transition(myself, input, input_id).await?;
        self.ctx.fault(FaultPoint::AfterCommit);
        self.relay(myself).await?;
        self.ctx.fault(FaultPoint::AfterPublish);
        if let Some(d) = delivery {
            settle_ack(d).await;
        }
        Ok(())
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

    /// Applies the input and makes the transition durable (state, outbox, inbox mark,
    /// timers) before anything depends on it.
    async fn transition(
        &mut self,
        myself: &ActorRef<SagaMsg>,
        input: Input,
        input_id: Option<String>,
    ) -> Result<(), RuntimeError> {
        let (Some(def), Some(stored)) = (self.def.clone(), self.stored.as_ref()) else {
            return Ok(());
        };
        let now = self.ctx.clock.now();
        let t = apply(&def, &stored.state, &input, now);
        let mut timers: BTreeMap<TimerKey, Timestamp> = stored.timers.iter().cloned().collect();
        let mut outbox = vec![OutboxItem::Journal(journal_append(
            &t.state,
            &input,
            &t.events,
            &self.ctx.config.worker_id,
            now,
        ))];
        for effect in &t.effects {
            match effect {
                Effect::SendCommand(cmd) => outbox.push(OutboxItem::Message(command_message(
                    &def,
                    &t.state,
                    cmd,
                    self.ctx.config.partitions,
                    now,
                ))),
                Effect::EmitEvent(ev) => {
                    outbox.push(OutboxItem::Message(domain_event_message(&t.state, ev, now)))
                }
                Effect::ArmTimer { key, at, .. } => {
                    timers.insert(key.clone(), *at);
                }
                Effect::CancelTimer { key } => {
                    timers.remove(key);
                }
                Effect::Finish { status } => {
                    info!(saga_id = %self.saga_id, saga_type = %self.saga_type, %status, "saga finished")
                }
            }
        }
        let commit = Commit {
            saga: StoredSaga {
                state: t.state,
                journal_sequence: stored.journal_sequence,
                timers: timers.into_iter().collect(),
            },
            outbox,
            input_id,
            at: now,
        };
        self.ctx.store.commit(&commit)?;
        self.ctx.store.flush().await?;
        for effect in &t.effects {
            match effect {
                Effect::ArmTimer { key, after, .. } => {
                    arm(myself, &mut self.timers, key.clone(), *after)
                }
                Effect::CancelTimer { key } => {
                    if let Some(h) = self.timers.remove(key) {
                        h.abort();
                    }
                }
                _ => {}
            }
        }
        self.stored = Some(commit.saga);
        Ok(())
    }

    /// Publishes the outbox in order: the journal append (fenced), then commands and
    /// events. Each entry is removed once the broker stored it.
    async fn relay(&mut self, myself: &ActorRef<SagaMsg>) -> Result<(), RuntimeError> {
        let id = self.saga_id.to_string();
        for entry in self.ctx.store.outbox(&id)? {
            match &entry.item {
                OutboxItem::Journal(append) => {
                    let expected = self.stored.as_ref().map_or(0, |s| s.journal_sequence);
                    let journal = self.ctx.journal.clone();
                    match patiently(&self.ctx, || journal.append(append, expected)).await {
                        Ok(ack) => {
                            self.ctx
                                .store
                                .outbox_done(&id, entry.position, Some(ack.sequence))?;
                            if let Some(s) = self.stored.as_mut() {
                                s.journal_sequence = ack.sequence;
                            }
                        }
                        Err(e @ PortError::Fenced { .. }) => {
                            warn!(saga_id = %id, error = %e, "another worker owns this saga: dropping the actor");
                            myself.stop(Some("fenced".into()));
                            return Err(e.into());
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                OutboxItem::Message(msg) => {
                    let publisher = self.ctx.publisher.clone();
                    patiently(&self.ctx, || publisher.publish(msg)).await?;
                    self.ctx.store.outbox_done(&id, entry.position, None)?;
                }
            }
        }
        Ok(())
    }
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
        // The input is durable and recorded in the inbox: a redelivery is recognised.
        warn!(input = %d.input_id(), error = %e, "ack failed");
    }
}

/// Moves a delivery to the dead-letter stream, then terminates it.
pub(crate) async fn dead_letter(ctx: &Context, d: &Delivery, why: &str) {
    match ctx.publisher.publish(&dead_letter_message(d, why)).await {
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

/// Rebuilds a saga that this worker's store does not hold by replaying its journal
/// through the state machine (transitions are deterministic). The last transition's
/// commands and events are published again (deduplicated by message id).
async fn rebuild_from_journal(st: &SagaActorState) -> Result<Option<StoredSaga>, RuntimeError> {
    let Some(def) = st.def.clone() else {
        return Ok(None);
    };
    let records = st
        .ctx
        .journal
        .read(&st.saga_type, st.saga_id.as_str())
        .await?;
    if records.is_empty() {
        return Ok(None);
    }
    let bad = |why: String| RuntimeError::Journal {
        saga_id: st.saga_id.to_string(),
        why,
    };
    let mut state: Option<SagaState> = None;
    let mut timers: BTreeMap<TimerKey, Timestamp> = BTreeMap::new();
    let mut last_messages = Vec::new();
    let mut last_sequence = 0;
    for r in &records {
        let ev = pb::JournalEvent::decode(r.payload.as_slice()).map_err(|e| bad(e.to_string()))?;
        let input = ev
            .input
            .as_ref()
            .ok_or_else(|| bad("record without input".into()))
            .and_then(|i| pb::input_from_journal(i).map_err(|e| bad(e.to_string())))?;
        let at = ev.recorded_at.as_ref().map(pb::millis).unwrap_or_default();
        let current = state.get_or_insert_with(|| SagaState::new(&def, st.saga_id.clone(), at));
        let t = apply(&def, current, &input, at);
        last_messages.clear();
        for effect in &t.effects {
            match effect {
                Effect::SendCommand(cmd) => last_messages.push(command_message(
                    &def,
                    &t.state,
                    cmd,
                    st.ctx.config.partitions,
                    at,
                )),
                Effect::EmitEvent(e) => last_messages.push(domain_event_message(&t.state, e, at)),
                Effect::ArmTimer { key, at, .. } => {
                    timers.insert(key.clone(), *at);
                }
                Effect::CancelTimer { key } => {
                    timers.remove(key);
                }
                Effect::Finish { .. } => {}
            }
        }
        state = Some(t.state);
        last_sequence = r.sequence;
    }
    let state = state.expect("at least one record");
    info!(saga_id = %st.saga_id, version = state.version, "rebuilt from the journal");
    let commit = Commit {
        saga: StoredSaga {
            state,
            journal_sequence: last_sequence,
            timers: timers.into_iter().collect(),
        },
        outbox: last_messages.into_iter().map(OutboxItem::Message).collect(),
        input_id: None,
        at: st.ctx.clock.now(),
    };
    st.ctx.store.commit(&commit)?;
    st.ctx.store.flush().await?;
    Ok(Some(commit.saga))
}

/// For tests and tools: whether a store holds a saga in a terminal state.
pub fn is_terminal(store: &dyn SagaStore, saga_id: &str) -> bool {
    store
        .load(saga_id)
        .ok()
        .flatten()
        .is_some_and(|s| s.state.status.is_terminal())
}
