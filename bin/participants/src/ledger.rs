//! The effect ledger: one entry per business effect, appended in the effect's own
//! transaction. Counting entries proves "no double effect".

use std::collections::BTreeMap;
use std::path::Path;

use saga_participant::saga_proto::StepCommand;
use saga_participant::{Abort, ParticipantError, ParticipantStore, Tx};
use serde::{Deserialize, Serialize};

/// The ledger tree (keys: increasing u64, big-endian).
pub const LEDGER_TREE: &str = "ledger";

/// One business effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// What happened: `reserve`, `release`, `charge`, `refund`, `confirm`, `cancel`.
    pub kind: String,
    /// The business record (`<saga_id>/<step>`).
    pub key: String,
    /// Saga.
    pub saga_id: String,
    /// Action of the command that caused it.
    pub action: String,
    /// When (ms since the epoch).
    pub at: u64,
    /// Details (items, amounts, ...).
    pub detail: serde_json::Value,
}

/// Appends an entry for `cmd` in the current transaction.
pub fn record(
    tx: &Tx<'_>,
    cmd: &StepCommand,
    kind: &str,
    key: &str,
    detail: serde_json::Value,
) -> Result<(), Abort> {
    let entry = LedgerEntry {
        kind: kind.to_string(),
        key: key.to_string(),
        saga_id: cmd.saga_id.clone(),
        action: cmd.action.clone(),
        at: tx.now(),
        detail,
    };
    let value = serde_json::to_vec(&entry).map_err(|e| Abort::Reject(e.to_string()))?;
    tx.insert(LEDGER_TREE, tx.generate_id()?.to_be_bytes(), value)?;
    Ok(())
}

/// Every entry of an open database, oldest first.
pub fn entries(db: &saga_participant::sled::Db) -> Result<Vec<LedgerEntry>, ParticipantError> {
    let tree = db.open_tree(LEDGER_TREE)?;
    tree.iter()
        .values()
        .map(|v| {
            let v = v?;
            serde_json::from_slice(&v)
                .map_err(|e| ParticipantError::Corrupted(format!("ledger entry: {e}")))
        })
        .collect()
}

/// Every entry in the data directory of a participant that has stopped (sled locks the
/// directory while a process has it open).
pub fn read_ledger(data_dir: impl AsRef<Path>) -> Result<Vec<LedgerEntry>, ParticipantError> {
    let store = ParticipantStore::open(data_dir)?;
    entries(store.db())
}

/// Entries by kind (`{"reserve": 3, "release": 1}`) in a stopped participant's data
/// directory.
pub fn ledger_counts(
    data_dir: impl AsRef<Path>,
) -> Result<BTreeMap<String, u64>, ParticipantError> {
    Ok(counts(&read_ledger(data_dir)?))
}

/// Entries by kind.
pub fn counts(entries: &[LedgerEntry]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for e in entries {
        *out.entry(e.kind.clone()).or_default() += 1;
    }
    out
}

/// The shutdown line: `ledger: 4 effects (release=1, reserve=3)`.
pub fn summary(entries: &[LedgerEntry]) -> String {
    let by_kind: Vec<String> = counts(entries)
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    format!("ledger: {} effects ({})", entries.len(), by_kind.join(", "))
}
