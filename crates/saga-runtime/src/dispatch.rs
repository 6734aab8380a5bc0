//! Pulls inputs from a partition consumer and routes them to their sagas.

use std::time::Duration;

use ractor::ActorRef;
use saga_core::definition::SagaDefinition;
use saga_core::machine::Input;
use saga_ports::Consumer;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::envelope::{decode_input, DecodedInput};
use crate::saga_actor::dead_letter;
use crate::supervisor::SupervisorMsg;
use crate::Context;

/// Runs until `shutdown` turns true: fetch a batch, dead-letter what cannot be decoded
/// or names an unknown saga type, route the rest. Never blocks on one bad message.
///
/// Back-pressure: each routed input holds one of the worker's in-flight permits until
/// its saga settles it, and a batch asks for no more than the permits free; when the
/// broker (or the store) slows down, the dispatchers stop fetching.
pub async fn dispatch(
    mut consumer: Box<dyn Consumer>,
    supervisor: ActorRef<SupervisorMsg>,
    ctx: Context,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Not cancelled on shutdown: a pull cut short would leave what the server
        // already sent unacknowledged until its ack wait; the fetch ends within a
        // second and what it brought is handed back at once instead.
        let free = ctx.limits.in_flight.available_permits();
        if free == 0 {
            // Wait for a permit to free up (or for shutdown) before asking for more.
            tokio::select! {
                _ = shutdown.changed() => return,
                p = ctx.limits.in_flight.clone().acquire_owned() => drop(p),
            }
            continue;
        }
        let batch = consumer
            .fetch(ctx.config.batch_size.min(free), Duration::from_secs(1))
            .await;
        if *shutdown.borrow() {
            if let Ok(batch) = batch {
                for d in batch {
                    let _ = d.acker.nak(None).await;
                }
            }
            return;
        }
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "fetching inputs failed: retrying");
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        for d in batch {
            let decoded = decode_input(&d);
            let wrong = match &decoded {
                Ok(decoded) => reply_from_wrong_service(&ctx, decoded).await,
                Err(_) => None,
            };
            match decoded {
                Ok(_) if wrong.is_some() => {
                    dead_letter(&ctx, &d, &wrong.unwrap_or_default()).await;
                }
                Ok(decoded) if ctx.definitions.contains_key(&decoded.saga_type) => {
                    debug!(saga_id = %decoded.saga_id, subject = %d.subject, "input");
                    let Ok(permit) = ctx.limits.in_flight.clone().acquire_owned().await else {
                        return;
                    };
                    let msg = SupervisorMsg::Deliver {
                        saga_id: decoded.saga_id,
                        saga_type: decoded.saga_type,
                        input: decoded.input,
                        delivery: Some(d),
                        permit: Some(permit),
                    };
                    if let Err(e) = supervisor.cast(msg) {
                        warn!(error = %e, "supervisor gone: stopping dispatch");
                        return;
                    }
                }
                Ok(decoded) => {
                    let why = format!(
                        "unknown saga type `{}` (loaded: {})",
                        decoded.saga_type,
                        ctx.definitions
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    dead_letter(&ctx, &d, &why).await;
                }
                Err(why) => dead_letter(&ctx, &d, &why).await,
            }
        }
    }
}

/// Why a reply cannot be applied: its subject names a service that does not run the step
/// it answers (a participant replying in another's name, or to a step that does not
/// exist). `None` when it is fine, or not a reply. A step the latest version does not
/// run as named is looked up in every version of the type (the saga may be pinned to
/// an older one).
async fn reply_from_wrong_service(ctx: &Context, decoded: &DecodedInput) -> Option<String> {
    let service = decoded.reply_service.as_deref()?;
    let step = match &decoded.input {
        Input::StepReply { step, .. } | Input::CompensationReply { step, .. } => step,
        _ => return None,
    };
    let def = ctx.definitions.get(&decoded.saga_type)?;
    let runs = |d: &SagaDefinition| {
        d.steps
            .iter()
            .any(|s| &s.name == step && s.service == service)
    };
    if runs(def) {
        return None;
    }
    let all = ctx.versions.all_of(&decoded.saga_type).await;
    if all.iter().any(|d| runs(d)) {
        return None;
    }
    let services: Vec<&str> = all
        .iter()
        .flat_map(|d| d.steps.iter())
        .chain(def.steps.iter())
        .filter(|s| &s.name == step)
        .map(|s| s.service.as_str())
        .collect();
    Some(match services.first() {
        Some(runs_on) => format!(
            "reply for step `{step}` of `{}` came from service `{service}`, but the step \
             runs on `{runs_on}`",
            decoded.saga_type
        ),
        None => format!(
            "reply for step `{step}`, which saga type `{}` does not have",
            decoded.saga_type
        ),
    })
}
