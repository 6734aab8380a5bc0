//! The client connection.

use std::time::Duration;

use async_nats::{ConnectOptions, Event};

use crate::NatsError;

/// Connection name shown by `nats server report connections` when none is given.
pub const DEFAULT_CONNECTION_NAME: &str = "saga-runtime";

/// Connects to `url` (one URL, or several separated by commas) as
/// [`DEFAULT_CONNECTION_NAME`]. See [`connect_as`].
pub async fn connect(url: &str) -> Result<async_nats::Client, NatsError> {
    connect_as(url, DEFAULT_CONNECTION_NAME).await
}

/// Connects to `url` with the connection name `name`.
///
/// The first connection is *not* retried, so a wrong URL or a server that is down fails
/// here with a clear [`NatsError::Connect`] instead of a client that waits forever. Once
/// connected, the client reconnects forever (capped backoff, at most 5 s between tries);
/// while it is disconnected, publishes time out as `PortError::Unavailable`.
pub async fn connect_as(url: &str, name: &str) -> Result<async_nats::Client, NatsError> {
    let servers: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64).saturating_mul(100).min(5_000))
        })
        .event_callback(|event| async move {
            match event {
                Event::Connected => tracing::info!("connected to NATS"),
                Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
                Event::SlowConsumer(sid) => tracing::warn!(sid, "NATS slow consumer"),
                Event::ServerError(e) => tracing::warn!(error = %e, "NATS server error"),
                Event::ClientError(e) => tracing::warn!(error = %e, "NATS client error"),
                other => tracing::debug!(event = %other, "NATS connection event"),
            }
        })
        .connect(servers)
        .await
        .map_err(|source| NatsError::Connect {
            url: url.to_owned(),
            source,
        })
}
