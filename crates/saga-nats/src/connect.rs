//! The client connection, and how it proves who it is.
//!
//! Every binary connects through [`connect_as`], which reads the credentials and TLS
//! settings from the environment (the same variables for every binary, so a deployment
//! gives each process its role's files and nothing else changes):
//!
//! | variable | meaning |
//! | --- | --- |
//! | `NATS_CREDS` | path of a `.creds` file (JWT + nkey seed, decentralised auth) |
//! | `NATS_NKEY` | path of a file holding a user nkey seed (`SU...`), as `sagactl nats-auth` writes |
//! | `NATS_USER`, `NATS_PASSWORD` | user and password |
//! | `NATS_TOKEN` | an authorization token |
//! | `NATS_TLS_CA` | PEM file of the CA that signed the server's certificate (turns TLS on) |
//! | `NATS_TLS_CERT`, `NATS_TLS_KEY` | client certificate and key, for servers that verify clients |
//! | `NATS_INBOX_PREFIX` | prefix of reply inboxes (default `_INBOX_<connection name>`) |
//!
//! `tls://` URLs also turn TLS on (with the system's roots unless `NATS_TLS_CA` is set).
//! With none of the credential variables the connection is anonymous: the plaintext dev
//! mode, which the process says loudly at start.
//!
//! Reply inboxes get a prefix per connection name so that NATS permissions can let each
//! user subscribe to its own inboxes only: a participant subscribed to `_INBOX.>` could
//! read the answers to other users' JetStream requests, commands of other services
//! included.

use std::path::PathBuf;
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

/// The prefix of the reply inboxes of connection `name`: `_INBOX_<name>` (characters
/// that cannot be in a subject token become `_`). The NATS permissions that
/// `sagactl nats-auth` writes allow each user to subscribe to `<prefix>.>`.
pub fn inbox_prefix(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("_INBOX_{clean}")
}

/// How a connection authenticates and encrypts, as read from the environment (see the
/// module documentation).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// `NATS_CREDS`.
    pub creds_file: Option<PathBuf>,
    /// `NATS_NKEY`.
    pub nkey_file: Option<PathBuf>,
    /// `NATS_USER` and `NATS_PASSWORD`.
    pub user_password: Option<(String, String)>,
    /// `NATS_TOKEN`.
    pub token: Option<String>,
    /// `NATS_TLS_CA`.
    pub tls_ca: Option<PathBuf>,
    /// `NATS_TLS_CERT` and `NATS_TLS_KEY`.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// `NATS_INBOX_PREFIX`.
    pub inbox_prefix: Option<String>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never prints a secret: only which kind of credential is set.
        f.debug_struct("Security")
            .field("creds_file", &self.creds_file)
            .field("nkey_file", &self.nkey_file)
            .field(
                "user",
                &self.user_password.as_ref().map(|(u, _)| u.as_str()),
            )
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("tls_ca", &self.tls_ca)
            .field("tls_client", &self.tls_client)
            .field("inbox_prefix", &self.inbox_prefix)
            .finish()
    }
}

impl Security {
    /// Reads the `NATS_*` variables. A half-given pair (a user without a password, a
    /// certificate without its key) is an error naming what is missing.
    pub fn from_env() -> Result<Security, NatsError> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// [`from_env`](Self::from_env) with another source of variables (for tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Security, NatsError> {
        let pair = |a: &str, b: &str| match (get(a), get(b)) {
            (Some(x), Some(y)) => Ok(Some((x, y))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(NatsError::InvalidConfig(format!(
                "{a} is set but {b} is not"
            ))),
            (None, Some(_)) => Err(NatsError::InvalidConfig(format!(
                "{b} is set but {a} is not"
            ))),
        };
        let security = Security {
            creds_file: get("NATS_CREDS").map(PathBuf::from),
            nkey_file: get("NATS_NKEY").map(PathBuf::from),
            user_password: pair("NATS_USER", "NATS_PASSWORD")?,
            token: get("NATS_TOKEN"),
            tls_ca: get("NATS_TLS_CA").map(PathBuf::from),
            tls_client: pair("NATS_TLS_CERT", "NATS_TLS_KEY")?
                .map(|(c, k)| (PathBuf::from(c), PathBuf::from(k))),
            inbox_prefix: get("NATS_INBOX_PREFIX"),
        };
        let kinds = [
            security.creds_file.is_some(),
            security.nkey_file.is_some(),
            security.user_password.is_some(),
            security.token.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() > 1 {
            return Err(NatsError::InvalidConfig(
                "more than one of NATS_CREDS, NATS_NKEY, NATS_USER/NATS_PASSWORD and \
                 NATS_TOKEN is set: give one way to authenticate"
                    .into(),
            ));
        }
        Ok(security)
    }

    /// Whether the connection presents any credential.
    pub fn authenticates(&self) -> bool {
        self.creds_file.is_some()
            || self.nkey_file.is_some()
            || self.user_password.is_some()
            || self.token.is_some()
    }

    /// Applies these settings to `options` for a connection named `name` to `url`.
    pub async fn apply(
        &self,
        mut options: ConnectOptions,
        url: &str,
        name: &str,
    ) -> Result<ConnectOptions, NatsError> {
        let invalid = |what: String| NatsError::InvalidConfig(what);
        if let Some(path) = &self.creds_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| invalid(format!("NATS_CREDS: cannot read {}: {e}", path.display())))?;
        }
        if let Some(path) = &self.nkey_file {
            let seed = std::fs::read_to_string(path)
                .map_err(|e| invalid(format!("NATS_NKEY: cannot read {}: {e}", path.display())))?;
            let seed = seed.trim().to_owned();
            if !seed.starts_with("SU") {
                return Err(invalid(format!(
                    "NATS_NKEY: {} does not hold a user nkey seed (one line starting \
                     with SU)",
                    path.display()
                )));
            }
            options = options.nkey(seed);
        }
        if let Some((user, password)) = &self.user_password {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        let tls_url = url
            .split(',')
            .any(|u| u.trim().to_ascii_lowercase().starts_with("tls://"));
        if let Some(ca) = &self.tls_ca {
            if !ca.is_file() {
                return Err(invalid(format!("NATS_TLS_CA: no file {}", ca.display())));
            }
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.tls_client {
            for (var, path) in [("NATS_TLS_CERT", cert), ("NATS_TLS_KEY", key)] {
                if !path.is_file() {
                    return Err(invalid(format!("{var}: no file {}", path.display())));
                }
            }
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if tls_url || self.tls_ca.is_some() || self.tls_client.is_some() {
            options = options.require_tls(true);
        }
        let prefix = self
            .inbox_prefix
            .clone()
            .unwrap_or_else(|| inbox_prefix(name));
        Ok(options.custom_inbox_prefix(prefix))
    }

    /// Whether the connection is encrypted.
    pub fn tls(&self, url: &str) -> bool {
        self.tls_ca.is_some()
            || self.tls_client.is_some()
            || url
                .split(',')
                .any(|u| u.trim().to_ascii_lowercase().starts_with("tls://"))
    }
}

/// Connects to `url` with the connection name `name`, with the credentials and TLS
/// settings of the environment ([`Security::from_env`]).
///
/// The first connection is *not* retried, so a wrong URL or a server that is down fails
/// here with a clear [`NatsError::Connect`] instead of a client that waits forever. Once
/// connected, the client reconnects forever (capped backoff, at most 5 s between tries);
/// while it is disconnected, publishes time out as `PortError::Unavailable`.
pub async fn connect_as(url: &str, name: &str) -> Result<async_nats::Client, NatsError> {
    let security = Security::from_env()?;
    connect_with(url, name, &security).await
}

/// [`connect_as`] with explicit [`Security`] settings instead of the environment's.
pub async fn connect_with(
    url: &str,
    name: &str,
    security: &Security,
) -> Result<async_nats::Client, NatsError> {
    let servers: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if !security.authenticates() {
        tracing::warn!(
            url,
            "NATS: connecting WITHOUT credentials (plaintext dev mode): anyone who can \
             reach this server can start, read and cancel every saga; set NATS_NKEY or \
             NATS_CREDS in production (docs/security.md)"
        );
    } else if !security.tls(url) {
        tracing::warn!(
            url,
            "NATS: credentials are sent over a connection WITHOUT TLS; set NATS_TLS_CA \
             (or use a tls:// URL) outside a single trusted host"
        );
    }
    let options = ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        // The client counts its first connection as attempt 1: no wait before it (nor
        // before the first reconnect), then 100 ms more per failed attempt, up to 5 s.
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(|event| async move {
            match event {
                Event::Connected => tracing::info!("connected to NATS"),
                Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
                Event::SlowConsumer(sid) => tracing::warn!(sid, "NATS slow consumer"),
                Event::ServerError(e) => tracing::warn!(error = %e, "NATS server error"),
                Event::ClientError(e) => tracing::warn!(error = %e, "NATS client error"),
                other => tracing::debug!(event = %other, "NATS connection event"),
            }
        });
    let options = security.apply(options, url, name).await?;
    options
        .connect(servers)
        .await
        .map_err(|source| NatsError::Connect {
            url: url.to_owned(),
            source,
        })
}

/// Wait before connection attempt `attempts` (1 for the first of a series).
fn reconnect_delay(attempts: usize) -> Duration {
    let failed = attempts.saturating_sub(1) as u64;
    Duration::from_millis(failed.saturating_mul(100).min(5_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_attempt_does_not_wait_and_later_ones_back_off() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(100));
        assert_eq!(reconnect_delay(4), Duration::from_millis(300));
        assert_eq!(reconnect_delay(1_000), Duration::from_secs(5));
    }
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Security, NatsError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Security::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn nothing_set_is_the_anonymous_dev_mode() {
        let s = env(&[]).unwrap();
        assert!(!s.authenticates());
        assert!(!s.tls("nats://127.0.0.1:4222"));
        assert!(s.tls("tls://nats.example:4222"));
    }

    #[test]
    fn half_pairs_and_two_credentials_are_refused_by_name() {
        let e = env(&[("NATS_USER", "u")]).unwrap_err().to_string();
        assert!(
            e.contains("NATS_USER is set but NATS_PASSWORD is not"),
            "{e}"
        );
        let e = env(&[("NATS_TLS_KEY", "k.pem")]).unwrap_err().to_string();
        assert!(
            e.contains("NATS_TLS_KEY is set but NATS_TLS_CERT is not"),
            "{e}"
        );
        let e = env(&[("NATS_NKEY", "a"), ("NATS_TOKEN", "t")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than one"), "{e}");
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let s = env(&[
            ("NATS_USER", "alice"),
            ("NATS_PASSWORD", "hunter2"),
            ("NATS_TLS_CA", "ca.pem"),
        ])
        .unwrap();
        let shown = format!("{s:?}");
        assert!(
            shown.contains("alice") && !shown.contains("hunter2"),
            "{shown}"
        );
        let t = env(&[("NATS_TOKEN", "s3cret")]).unwrap();
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn inbox_prefixes_are_one_subject_token() {
        assert_eq!(inbox_prefix("saga-worker"), "_INBOX_saga-worker");
        assert_eq!(inbox_prefix("a.b c>"), "_INBOX_a_b_c_");
    }
}
