//! Idempotent requests: the `saga_requests` KV bucket.
//!
//! # Layout
//!
//! - key: hex SHA-256 of the idempotency key (any client string becomes a valid KV key
//!   of fixed length);
//! - value: JSON [`RequestRecord`]: the saga the request started, its type, the
//!   fingerprint of the request (hex SHA-256 of the RPC name and the canonical Protobuf
//!   encoding of the request without its idempotency key) and the idempotency key itself
//!   (so that a hash collision is detected instead of answered with someone else's saga).
//!
//! The entry is written with KV `create` (atomic "only if absent") **before** the start
//! is published, so two concurrent requests with one key start one saga. Entries expire
//! after the bucket's max age ([`DEFAULT_REQUEST_WINDOW`]): past it, a key is new again.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::GatewayError;

/// The KV bucket of idempotency keys.
pub const REQUESTS_BUCKET: &str = "saga_requests";
/// How long an idempotency key is remembered by default (the bucket's max age): 24 h.
pub const DEFAULT_REQUEST_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Attempts at claiming a key that keeps disappearing under us (expiry races).
const CLAIM_ATTEMPTS: usize = 3;

/// Creates the `saga_requests` bucket with `window` and `replicas` if it is missing; an
/// existing one keeps the operator's settings (what differs is logged).
pub async fn ensure_requests_bucket(
    js: &jetstream::Context,
    window: Duration,
    replicas: usize,
) -> Result<kv::Store, GatewayError> {
    saga_nats::ensure_bucket(
        js,
        kv::Config {
            bucket: REQUESTS_BUCKET.to_string(),
            description: "Idempotency keys of gateway requests -> saga".to_string(),
            history: 1,
            max_age: window,
            num_replicas: replicas.max(1),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        },
    )
    .await?;
    js.get_key_value(REQUESTS_BUCKET)
        .await
        .map_err(|e| GatewayError::Unavailable(format!("opening KV {REQUESTS_BUCKET}: {e}")))
}

/// What the bucket remembers of a request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestRecord {
    /// The saga the request started.
    pub saga_id: String,
    /// Its type.
    pub saga_type: String,
    /// Hex SHA-256 of the request (see the module docs).
    pub fingerprint: String,
    /// The idempotency key as given.
    pub idempotency_key: String,
}

/// The outcome of [`claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key was free: it is now ours, for the new saga.
    New,
    /// The same request came before: answer with its saga.
    Replay(RequestRecord),
    /// The key was used for another request.
    Conflict(RequestRecord),
}

/// The KV key of an idempotency key: hex SHA-256.
pub fn kv_key(idempotency_key: &str) -> String {
    hex(&Sha256::digest(idempotency_key.as_bytes()))
}

/// The fingerprint of a request: hex SHA-256 over the RPC name and its canonical bytes.
pub fn fingerprint(rpc: &str, canonical: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(rpc.as_bytes());
    h.update([0u8]);
    h.update(canonical);
    hex(&h.finalize())
}

/// Claims `record.idempotency_key` for `record`, atomically.
pub async fn claim(store: &kv::Store, record: &RequestRecord) -> Result<Claim, GatewayError> {
    let key = kv_key(&record.idempotency_key);
    let value = Bytes::from(
        serde_json::to_vec(record)
            .map_err(|e| GatewayError::Rejected(format!("encoding the request record: {e}")))?,
    );
    for _ in 0..CLAIM_ATTEMPTS {
        match store.create(&key, value.clone()).await {
            Ok(_) => return Ok(Claim::New),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == kv::CreateErrorKind::InvalidKey => {
                return Err(GatewayError::Rejected(format!("KV key {key}: {e}")))
            }
            Err(e) => {
                return Err(GatewayError::Unavailable(format!(
                    "recording the idempotency key in {REQUESTS_BUCKET}: {e}"
                )))
            }
        }
        let existing = store.get(&key).await.map_err(|e| {
            GatewayError::Unavailable(format!(
                "reading the idempotency key from {REQUESTS_BUCKET}: {e}"
            ))
        })?;
        // Gone between create and get (expired or purged): try to claim it again.
        let Some(raw) = existing else { continue };
        let stored: RequestRecord =
            serde_json::from_slice(&raw).map_err(|e| GatewayError::Corrupt {
                what: format!("{REQUESTS_BUCKET}/{key}"),
                detail: e.to_string(),
            })?;
        return Ok(
            if stored.idempotency_key == record.idempotency_key
                && stored.fingerprint == record.fingerprint
            {
                Claim::Replay(stored)
            } else {
                Claim::Conflict(stored)
            },
        );
    }
    Err(GatewayError::Unavailable(format!(
        "the idempotency key kept changing in {REQUESTS_BUCKET}; retry"
    )))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_fingerprints_are_stable_hex_sha256() {
        assert_eq!(
            kv_key(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(kv_key("k").len(), 64);
        assert_eq!(
            fingerprint("PlaceOrder", b"x"),
            fingerprint("PlaceOrder", b"x")
        );
        assert_ne!(
            fingerprint("PlaceOrder", b"x"),
            fingerprint("StartSaga", b"x")
        );
        assert_ne!(
            fingerprint("PlaceOrder", b"x"),
            fingerprint("PlaceOrder", b"y")
        );
    }
}
