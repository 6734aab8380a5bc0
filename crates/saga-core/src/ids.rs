//! Identifiers, the partition hash and the time type of the model.

use std::fmt;

/// Milliseconds since the Unix epoch, as given by a [`crate::Clock`].
pub type Timestamp = u64;

/// Longest saga id accepted.
pub const SAGA_ID_MAX_LEN: usize = 64;

/// A saga instance id. Safe to use as one NATS subject token and in keys:
/// 1 to 64 characters of `A-Z a-z 0-9 _ -`.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct SagaId(String);

impl TryFrom<String> for SagaId {
    type Error = SagaIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<SagaId> for String {
    fn from(id: SagaId) -> Self {
        id.0
    }
}

/// Why a saga id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed saga id `{id}`: {why}")]
pub struct SagaIdError {
    /// The id as given.
    pub id: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl SagaId {
    /// Validates an id given by a user or read from the wire.
    pub fn parse(id: &str) -> Result<Self, SagaIdError> {
        let err = |why| SagaIdError {
            id: id.to_string(),
            why,
        };
        if id.is_empty() {
            return Err(err("empty"));
        }
        if id.len() > SAGA_ID_MAX_LEN {
            return Err(err("longer than 64 characters"));
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(err("only A-Z, a-z, 0-9, '_' and '-' are allowed"));
        }
        Ok(Self(id.to_string()))
    }

    /// A new time-ordered id (ULID layout, Crockford base32, 26 characters) from a
    /// timestamp and 80 random bits supplied by the caller (randomness is injected).
    pub fn generate(now: Timestamp, random: u128) -> Self {
        const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let value: u128 =
            (u128::from(now & 0xFFFF_FFFF_FFFF) << 80) | (random & ((1u128 << 80) - 1));
        let mut out = [0u8; 26];
        for (i, slot) in out.iter_mut().enumerate() {
            let shift = 125 - 5 * i as u32;
            *slot = ALPHABET[((value >> shift) & 0x1F) as usize];
        }
        Self(String::from_utf8_lossy(&out).into_owned())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The idempotency key of a step's command: `<saga_id>/<step>/<action>`. Stable across
/// retries of the same step; the attempt number travels beside it.
pub fn idempotency_key(saga_id: &SagaId, step: &str, action: &str) -> String {
    format!("{saga_id}/{step}/{action}")
}

/// The documented, fixed hash behind partitioning: 64-bit FNV-1a over the UTF-8 bytes.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// `partition = stable_hash(saga_id) % partitions`.
pub fn partition_of(saga_id: &SagaId, partitions: u32) -> u32 {
    assert!(partitions > 0, "partition count must be positive");
    (stable_hash(saga_id.as_str().as_bytes()) % u64::from(partitions)) as u32
}

/// SplitMix64 finaliser: spreads a seed into well-mixed bits (deterministic jitter).
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saga_ids_are_subject_safe() {
        assert!(SagaId::parse("01HX-abc_9").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>", "ä", &"x".repeat(65)] {
            let e = SagaId::parse(bad).unwrap_err();
            assert!(e.to_string().starts_with("malformed saga id"), "{e}");
        }
    }

    #[test]
    fn generated_ids_are_valid_and_time_ordered() {
        let a = SagaId::generate(1_700_000_000_000, 7);
        let b = SagaId::generate(1_700_000_000_001, 3);
        assert_eq!(a.as_str().len(), 26);
        assert!(SagaId::parse(a.as_str()).is_ok());
        assert!(a < b);
        assert_ne!(SagaId::generate(5, 1), SagaId::generate(5, 2));
    }

    #[test]
    fn the_partition_hash_is_fixed() {
        // Published values: changing the hash would move every saga to another partition.
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        let id = SagaId::parse("order-1").unwrap();
        assert_eq!(partition_of(&id, 16), (stable_hash(b"order-1") % 16) as u32);
    }

    #[test]
    fn idempotency_key_layout() {
        let id = SagaId::parse("s1").unwrap();
        assert_eq!(
            idempotency_key(&id, "ChargePayment", "chargeCard"),
            "s1/ChargePayment/chargeCard"
        );
    }
}
