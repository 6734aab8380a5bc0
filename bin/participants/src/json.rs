//! JSON records in a handler's trees.

use saga_participant::{Abort, Tx};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Reads a record; undecodable bytes reject the command (retrying cannot fix them).
pub(crate) fn get<T: DeserializeOwned>(
    tx: &Tx<'_>,
    tree: &str,
    key: &str,
) -> Result<Option<T>, Abort> {
    match tx.get(tree, key)? {
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| Abort::Reject(format!("corrupted record {tree}/{key}: {e}"))),
        None => Ok(None),
    }
}

/// Writes a record.
pub(crate) fn put<T: Serialize>(
    tx: &Tx<'_>,
    tree: &str,
    key: &str,
    value: &T,
) -> Result<(), Abort> {
    let bytes = serde_json::to_vec(value).map_err(|e| Abort::Reject(e.to_string()))?;
    tx.insert(tree, key, bytes)?;
    Ok(())
}
