//! The one effect interpreter: turns a transition into the outbox entries and timers
//! the runtime acts on. The live path and the journal rebuild both call it, so a saga
//! restored from its journal publishes exactly what the live path would have.

use std::collections::BTreeMap;

use saga_core::definition::SagaDefinition;
use saga_core::ids::partition_of;
use saga_core::machine::{Effect, Input, SagaState, TimerKey, Transition};
use saga_core::Timestamp;
use saga_ports::{OutboxItem, Snapshot};

use crate::envelope::{command_message, domain_event_message, journal_append_traced, RecordTrace};
use crate::Context;

/// What a committed transition leaves for the runtime to do.
#[derive(Debug)]
pub(crate) struct Interpreted {
    /// Timers armed after the transition (the fired one, if any, removed).
    pub timers: BTreeMap<TimerKey, Timestamp>,
    /// The outbox: index entry (first transition), the journal record, commands and
    /// events, index removal (terminal).
    pub outbox: Vec<OutboxItem>,
}

/// Interprets one live transition. `timers` are those armed before it; `first` is
/// true for a saga's first transition; `trace` is what its journal record names.
#[allow(clippy::too_many_arguments)]
pub(crate) fn transition(
    ctx: &Context,
    def: &SagaDefinition,
    timers: &[(TimerKey, Timestamp)],
    input: &Input,
    t: &Transition,
    first: bool,
    now: Timestamp,
    trace: &RecordTrace,
) -> Interpreted {
    let mut armed: BTreeMap<TimerKey, Timestamp> = timers.iter().cloned().collect();
    // A fired timer leaves the persisted set: it must not fire again on the next load.
    if let Input::TimerFired(key) = input {
        armed.remove(key);
    }
    for effect in &t.effects {
        match effect {
            Effect::ArmTimer { key, at, .. } => {
                armed.insert(key.clone(), *at);
            }
            Effect::CancelTimer { key } => {
                armed.remove(key);
            }
            _ => {}
        }
    }
    let snapshot = Snapshot {
        state: t.state.clone(),
        timers: armed.iter().map(|(k, at)| (k.clone(), *at)).collect(),
        effects: t
            .effects
            .iter()
            .filter(|e| matches!(e, Effect::SendCommand(_) | Effect::EmitEvent(_)))
            .cloned()
            .collect(),
    };
    let partition = partition_of(&t.state.saga_id, ctx.config.partitions);
    let mut outbox = Vec::with_capacity(t.effects.len() + 3);
    if first {
        outbox.push(OutboxItem::Open { partition });
    }
    outbox.push(OutboxItem::Journal(journal_append_traced(
        &t.state,
        input,
        &t.events,
        &snapshot,
        &ctx.config.worker_id,
        now,
        trace,
    )));
    outbox.extend(published(ctx, def, &snapshot, now));
    Interpreted {
        timers: armed,
        outbox,
    }
}

/// The messages a transition publishes, from its snapshot: commands (deduplicated by
/// message id, and by the participants' inbox), domain events (create-only), and the
/// removal from the open-saga index once the saga is terminal.
pub(crate) fn published(
    ctx: &Context,
    def: &SagaDefinition,
    snapshot: &Snapshot,
    now: Timestamp,
) -> Vec<OutboxItem> {
    let state: &SagaState = &snapshot.state;
    let mut out = Vec::new();
    for effect in &snapshot.effects {
        match effect {
            Effect::SendCommand(cmd) => out.push(OutboxItem::Message(command_message(
                def,
                state,
                cmd,
                ctx.config.partitions,
                now,
            ))),
            Effect::EmitEvent(ev) => {
                out.push(OutboxItem::Event(domain_event_message(state, ev, now)))
            }
            _ => {}
        }
    }
    if state.status.is_terminal() {
        out.push(OutboxItem::Close {
            partition: partition_of(&state.saga_id, ctx.config.partitions),
        });
    }
    out
}
