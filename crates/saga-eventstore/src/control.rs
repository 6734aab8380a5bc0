//! Projection control on NATS: status and blue/green rebuild on request, answered by
//! the service that runs the projections (`sagactl projection` asks).
//!
//! | NATS request subject                       | answer (JSON)                    |
//! |--------------------------------------------|----------------------------------|
//! | `es-ctl.projection.<name>.status`          | `{name, generation, checkpoint, lag, rebuilding}` |
//! | `es-ctl.projection.<name>.rebuild`         | `{generation, checkpoint, took_ms}` or `{error}`  |

use std::collections::BTreeMap;

use crate::ProjectionHandle;
use futures::StreamExt;
use tokio::sync::watch;

/// Subject prefix of the control requests (outside `es.>`, which the event stream owns).
pub const CONTROL_PREFIX: &str = "es-ctl.projection";

/// The request subject of `op` (`status`, `rebuild`) for projection `name`.
pub fn control_subject(name: &str, op: &str) -> String {
    format!("{CONTROL_PREFIX}.{name}.{op}")
}

/// Answers control requests for `projections` until `stop` turns true.
pub async fn serve_control(
    client: async_nats::Client,
    projections: BTreeMap<String, ProjectionHandle>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), async_nats::SubscribeError> {
    let mut requests = client.subscribe(format!("{CONTROL_PREFIX}.*.*")).await?;
    loop {
        let msg = tokio::select! {
            m = requests.next() => match m { Some(m) => m, None => return Ok(()) },
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() { return Ok(()); }
                continue;
            }
        };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let parts: Vec<&str> = msg.subject.split('.').collect();
        let (name, op) = (parts[2].to_string(), parts[3].to_string());
        let handle = projections.get(&name).cloned();
        let client = client.clone();
        // A rebuild takes a while; other requests must not wait for it.
        tokio::spawn(async move {
            let answer = match (handle, op.as_str()) {
                (None, _) => serde_json::json!({ "error": format!("no projection `{name}` here") }),
                (Some(h), "status") => match h.status().await {
                    Ok(s) => serde_json::json!({
                        "name": s.name, "generation": s.generation, "checkpoint": s.checkpoint,
                        "lag": s.lag, "rebuilding": s.rebuilding,
                    }),
                    Err(e) => serde_json::json!({ "error": e.to_string() }),
                },
                (Some(h), "rebuild") => match h.rebuild().await {
                    Ok(r) => serde_json::json!({
                        "generation": r.generation, "checkpoint": r.checkpoint,
                        "took_ms": r.took.as_millis() as u64,
                    }),
                    Err(e) => serde_json::json!({ "error": e.to_string() }),
                },
                (Some(_), other) => {
                    serde_json::json!({ "error": format!("unknown operation `{other}`") })
                }
            };
            if let Err(e) = client.publish(reply, answer.to_string().into()).await {
                tracing::warn!(error = %e, "could not answer a projection control request");
            }
        });
    }
}
