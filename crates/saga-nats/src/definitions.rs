//! [`NatsDefinitionRegistry`]: definition versions in KV [`DEFINITIONS_BUCKET`].

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use saga_ports::{DefinitionRegistry, PortError, RegisteredVersion};

use crate::names::{check_token, DEFINITIONS_BUCKET};

/// The key that names the latest version of a type: `<type>.latest`.
pub const LATEST: &str = "latest";

/// `<type>.<digest>` holds the YAML source of that version (written once, create-only,
/// so its first revision's time is when it was registered); `<type>.latest` holds the
/// digest new sagas of the type start on (its history shows the earlier latests).
#[derive(Debug, Clone)]
pub struct NatsDefinitionRegistry {
    js: jetstream::Context,
}

impl NatsDefinitionRegistry {
    /// The registry on this JetStream context (the bucket is made by provisioning).
    pub fn new(js: jetstream::Context) -> Self {
        Self { js }
    }

    async fn store(&self) -> Result<kv::Store, PortError> {
        self.js
            .get_key_value(DEFINITIONS_BUCKET)
            .await
            .map_err(|e| PortError::Unavailable(format!("KV {DEFINITIONS_BUCKET}: {e}")))
    }
}

fn key(saga_type: &str, digest: &str) -> Result<String, PortError> {
    check_token(saga_type)
        .and_then(|()| check_token(digest))
        .map_err(|e| PortError::Rejected(format!("definition registry: {e}")))?;
    Ok(format!("{saga_type}.{digest}"))
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> PortError {
    PortError::Unavailable(format!("KV {DEFINITIONS_BUCKET}: {what}: {e}"))
}

fn version(entry: kv::Entry) -> Option<RegisteredVersion> {
    let (saga_type, digest) = entry.key.split_once('.')?;
    if digest == LATEST {
        return None;
    }
    Some(RegisteredVersion {
        saga_type: saga_type.to_string(),
        digest: digest.to_string(),
        source: String::from_utf8_lossy(&entry.value).into_owned(),
        registered_at: u64::try_from(entry.created.unix_timestamp_nanos() / 1_000_000)
            .unwrap_or_default(),
    })
}

#[async_trait]
impl DefinitionRegistry for NatsDefinitionRegistry {
    async fn register(
        &self,
        saga_type: &str,
        digest: &str,
        source: &str,
    ) -> Result<bool, PortError> {
        let key = key(saga_type, digest)?;
        let store = self.store().await?;
        match store.create(&key, Bytes::from(source.to_owned())).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(unavailable(&format!("creating {key}"), e)),
        }
    }

    async fn set_latest(&self, saga_type: &str, digest: &str) -> Result<(), PortError> {
        let latest = key(saga_type, LATEST)?;
        check_token(digest).map_err(|e| PortError::Rejected(e.to_string()))?;
        let store = self.store().await?;
        // Only to a version that is there: `latest` never names a missing one.
        if store
            .get(key(saga_type, digest)?)
            .await
            .map_err(|e| unavailable("reading", e))?
            .is_none()
        {
            return Err(PortError::Rejected(format!(
                "{saga_type} version {digest} is not registered"
            )));
        }
        let current = store
            .get(&latest)
            .await
            .map_err(|e| unavailable(&format!("reading {latest}"), e))?;
        if current.as_deref() == Some(digest.as_bytes()) {
            return Ok(());
        }
        store
            .put(&latest, Bytes::from(digest.to_owned()))
            .await
            .map(drop)
            .map_err(|e| unavailable(&format!("writing {latest}"), e))
    }

    async fn latest(&self, saga_type: &str) -> Result<Option<String>, PortError> {
        let latest = key(saga_type, LATEST)?;
        let store = self.store().await?;
        let v = store
            .get(&latest)
            .await
            .map_err(|e| unavailable(&format!("reading {latest}"), e))?;
        Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    async fn get(
        &self,
        saga_type: &str,
        digest: &str,
    ) -> Result<Option<RegisteredVersion>, PortError> {
        let key = key(saga_type, digest)?;
        let store = self.store().await?;
        let entry = store
            .entry(&key)
            .await
            .map_err(|e| unavailable(&format!("reading {key}"), e))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(version))
    }

    async fn list(&self) -> Result<Vec<RegisteredVersion>, PortError> {
        let store = self.store().await?;
        let mut keys = match store.keys().await {
            Ok(k) => k,
            Err(e) => return Err(unavailable("listing keys", e)),
        };
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| unavailable("listing keys", e))?;
            if k.ends_with(&format!(".{LATEST}")) {
                continue;
            }
            if let Some(e) = store
                .entry(&k)
                .await
                .map_err(|e| unavailable(&format!("reading {k}"), e))?
                .filter(|e| e.operation == kv::Operation::Put)
            {
                out.extend(version(e));
            }
        }
        out.sort_by(|a, b| (&a.saga_type, a.registered_at).cmp(&(&b.saga_type, b.registered_at)));
        Ok(out)
    }
}
