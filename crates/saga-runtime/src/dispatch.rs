//! Pulls inputs from a partition consumer and routes them to their sagas.

use std::time::Duration;

use ractor::ActorRef;
use saga_ports::Consumer;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::envelope::decode_input;
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
            match decode_input(&d) {
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
