//! Keys, record encoding and error mapping.

use saga_ports::StoreError;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::layout::{self, RECORD_FORMAT};

/// Encodes a record: the format byte, then JSON.
pub(crate) fn encode<T: Serialize>(
    tree: &str,
    key: &[u8],
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![RECORD_FORMAT];
    // Cannot fail for the port's types (no maps with non-string keys); reported as I/O
    // rather than corruption because nothing stored is wrong.
    serde_json::to_writer(&mut out, value).map_err(|e| {
        StoreError::Io(format!(
            "tree `{tree}`, key `{}`: cannot encode: {e}",
            show_key(tree, key)
        ))
    })?;
    Ok(out)
}

/// Decodes a record written by [`encode`].
pub(crate) fn decode<T: DeserializeOwned>(
    tree: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    match bytes.split_first() {
        None => Err(corrupted(tree, key, "empty value")),
        Some((&RECORD_FORMAT, json)) => serde_json::from_slice(json)
            .map_err(|e| corrupted(tree, key, format!("undecodable record: {e}"))),
        Some((v, _)) => Err(corrupted(
            tree,
            key,
            format!("unknown record format {v} (this build reads {RECORD_FORMAT})"),
        )),
    }
}

/// A big-endian `u64` value (meta counters).
pub(crate) fn decode_u64(tree: &str, key: &[u8], bytes: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| {
            corrupted(
                tree,
                key,
                format!("expected 8 bytes (u64), found {}", bytes.len()),
            )
        })
}

/// `Corrupted`, naming the place.
pub(crate) fn corrupted(tree: &str, key: &[u8], cause: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupted(format!(
        "tree `{tree}`, key `{}`: {cause}",
        show_key(tree, key)
    ))
}

/// A key as a human reads it: `order-1@42` for outbox keys, escaped bytes otherwise.
pub(crate) fn show_key(tree: &str, key: &[u8]) -> String {
    if tree == layout::OUTBOX {
        if let Some((saga_id, position)) = split_outbox_key(key) {
            return format!("{}@{position}", saga_id.escape_ascii());
        }
    }
    key.escape_ascii().to_string()
}

/// Maps a sled error; `place` says what was being done (`tree `sagas`, key `x``).
pub(crate) fn sled_error(place: &str, e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(io) => StoreError::Io(format!("{place}: {io}")),
        sled::Error::Corruption { at, .. } => StoreError::Corrupted(match at {
            Some(at) => format!("{place}: sled reports corruption at {at:?}"),
            None => format!("{place}: sled reports corruption"),
        }),
        // An internal sled failure leaves nothing we can trust: fail closed.
        sled::Error::ReportableBug(msg) => {
            StoreError::Corrupted(format!("{place}: sled internal error: {msg}"))
        }
        // A store this build of sled cannot read (its settings file is unreadable, or
        // written by another version): as corrupt, so the worker moves it aside and
        // restores from the journal instead of failing on every start.
        sled::Error::Unsupported(msg) => {
            StoreError::Corrupted(format!("{place}: unsupported by sled: {msg}"))
        }
        sled::Error::CollectionNotFound(name) => StoreError::Io(format!(
            "{place}: sled tree `{}` not found",
            name.escape_ascii()
        )),
    }
}

/// Where a keyed operation happens, for [`sled_error`].
pub(crate) fn at(tree: &str, key: &[u8]) -> String {
    format!("tree `{tree}`, key `{}`", show_key(tree, key))
}

/// The prefix of every outbox key of one saga.
pub(crate) fn outbox_prefix(saga_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(saga_id.len() + 9);
    k.extend_from_slice(saga_id.as_bytes());
    k.push(0);
    k
}

/// The outbox key of one entry; big-endian so keys sort by position.
pub(crate) fn outbox_key(saga_id: &str, position: u64) -> Vec<u8> {
    let mut k = outbox_prefix(saga_id);
    k.extend_from_slice(&position.to_be_bytes());
    k
}

/// `(saga id, position)` of an outbox key.
pub(crate) fn split_outbox_key(key: &[u8]) -> Option<(&[u8], u64)> {
    let split = key.len().checked_sub(9)?;
    let (saga_id, rest) = key.split_at(split);
    let (sep, position) = rest.split_first()?;
    (*sep == 0).then_some(())?;
    Some((saga_id, u64::from_be_bytes(position.try_into().ok()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sled_corruption_fails_closed_and_io_stays_io() {
        let e = sled_error(
            "tree `sagas`, key `a`",
            sled::Error::Corruption { at: None, bt: () },
        );
        assert!(
            matches!(&e, StoreError::Corrupted(m) if m.contains("tree `sagas`, key `a`")),
            "{e:?}"
        );
        let e = sled_error("flush", sled::Error::Io(std::io::Error::other("disk full")));
        assert!(
            matches!(&e, StoreError::Io(m) if m.contains("disk full")),
            "{e:?}"
        );
        assert!(matches!(
            sled_error("x", sled::Error::ReportableBug("boom".into())),
            StoreError::Corrupted(_)
        ));
        assert!(matches!(
            sled_error("x", sled::Error::Unsupported("old config".into())),
            StoreError::Corrupted(_)
        ));
    }

    #[test]
    fn records_round_trip_and_garbage_is_named() {
        let bytes = encode(layout::SAGAS, b"k", &vec![1u32, 2]).unwrap();
        assert_eq!(bytes[0], RECORD_FORMAT);
        assert_eq!(
            decode::<Vec<u32>>(layout::SAGAS, b"k", &bytes).unwrap(),
            [1, 2]
        );

        for garbage in [&b""[..], b"\xff{}", b"\x01not json"] {
            let e = decode::<Vec<u32>>(layout::SAGAS, b"order-7", garbage).unwrap_err();
            assert!(
                matches!(&e, StoreError::Corrupted(m) if m.contains("`sagas`") && m.contains("`order-7`")),
                "{e:?}"
            );
        }
        assert!(decode_u64(layout::META, b"i", b"short").is_err());
    }

    #[test]
    fn outbox_keys_sort_by_position_and_show_readably() {
        let k1 = outbox_key("order-1", 2);
        let k2 = outbox_key("order-1", 256);
        assert!(k1 < k2);
        assert!(k1.starts_with(&outbox_prefix("order-1")));
        assert!(!outbox_key("order-10", 1).starts_with(&outbox_prefix("order-1")));
        assert_eq!(split_outbox_key(&k2), Some((&b"order-1"[..], 256)));
        assert_eq!(show_key(layout::OUTBOX, &k2), "order-1@256");
        assert_eq!(show_key(layout::SAGAS, b"a\x00b"), "a\\x00b");
    }
}
