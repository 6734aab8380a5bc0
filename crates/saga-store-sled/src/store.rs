//! [`SledStore`]: the `SagaStore` port on sled.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use saga_ports::{Commit, OutboxEntry, SagaStore, StoreError, StoredSaga};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use sled::{Db, Tree};

use crate::codec::{
    at, corrupted, decode, decode_u64, encode, outbox_key, outbox_prefix, sled_error,
    split_outbox_key,
};
use crate::flush::FlushGroup;
use crate::layout::{
    META, META_FORMAT, META_NEXT_POSITION, META_WORKER_ID, OUTBOX, RETIRED, SAGAS, STORE_FORMAT,
};

/// A worker's saga store in one sled database. Cheap to clone (shared handle); share one
/// per worker: sled locks its directory, so a second `open` of the same path fails.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    sagas: Tree,
    outbox: Tree,
    meta: Tree,
    worker_id: String,
    flush: FlushGroup,
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore")
            .field("worker_id", &self.inner.worker_id)
            .field("flush", &self.inner.flush)
            .finish_non_exhaustive()
    }
}

/// A transaction's error: ours (abort) or sled's.
type TxError = ConflictableTransactionError<StoreError>;

fn abort(e: StoreError) -> TxError {
    ConflictableTransactionError::Abort(e)
}

fn tx_result<T>(place: &str, r: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    r.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => sled_error(place, e),
    })
}

impl SledStore {
    /// Opens (or creates) the store in directory `path` with sled's defaults.
    ///
    /// Blocking: call at start-up or from `spawn_blocking`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(sled::Config::new().path(path))
    }

    /// Opens the store with a sled configuration (cache size, mode, `temporary(true)`
    /// for tests). Fails with `Corrupted` if the store was written by an incompatible
    /// layout version, and with `Io` if another process or handle holds the directory.
    pub fn open_with(config: sled::Config) -> Result<Self, StoreError> {
        // A handle dropped in this process releases the directory's lock only when
        // sled's flusher thread lets go of it, a moment later: wait for that briefly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(sled_error("opening the store", e)),
            }
        };
        let tree = |name: &str| {
            db.open_tree(name)
                .map_err(|e| sled_error(&format!("opening tree `{name}`"), e))
        };
        let (sagas, outbox, meta) = (tree(SAGAS)?, tree(OUTBOX)?, tree(META)?);
        for retired in RETIRED {
            db.drop_tree(retired)
                .map_err(|e| sled_error(&format!("dropping tree `{retired}`"), e))?;
        }

        let candidate = new_worker_id();
        let (worker_id, created) = tx_result(
            "initialising meta",
            meta.transaction(|m| {
                let mut created = false;
                match m.get(META_FORMAT)? {
                    Some(v) => {
                        let format = decode_u64(META, META_FORMAT.as_bytes(), &v).map_err(abort)?;
                        if format != STORE_FORMAT {
                            return Err(abort(corrupted(
                                META,
                                META_FORMAT.as_bytes(),
                                format!(
                                    "store layout version {format}, this build reads \
                                     {STORE_FORMAT}"
                                ),
                            )));
                        }
                    }
                    None => {
                        m.insert(META_FORMAT, &STORE_FORMAT.to_be_bytes())?;
                        created = true;
                    }
                }
                let worker_id = match m.get(META_WORKER_ID)? {
                    Some(v) => parse_worker_id(&v).map_err(abort)?,
                    None => {
                        m.insert(META_WORKER_ID, candidate.as_bytes())?;
                        created = true;
                        candidate.clone()
                    }
                };
                Ok((worker_id, created))
            }),
        )?;
        if created {
            // The identity must survive a crash before the first flush: journal message
            // ids made with it would otherwise be reused by a different identity.
            db.flush().map_err(|e| sled_error("flushing meta", e))?;
        }

        Ok(Self {
            inner: Arc::new(Inner {
                db,
                sagas,
                outbox,
                meta,
                worker_id,
                flush: FlushGroup::default(),
            }),
        })
    }

    /// This worker's stable identity: random, generated when the store was created and
    /// kept in it. Token-safe (lowercase hex) for use in `Nats-Msg-Id`s.
    pub fn worker_id(&self) -> &str {
        &self.inner.worker_id
    }

    /// sled flushes started by [`SagaStore::flush`] so far (to observe grouping).
    pub fn flush_count(&self) -> u64 {
        self.inner.flush.flushes()
    }

    fn load_saga(&self, key: &[u8], bytes: &[u8]) -> Result<StoredSaga, StoreError> {
        let saga: StoredSaga = decode(SAGAS, key, bytes)?;
        if saga.state.saga_id.as_str().as_bytes() != key {
            return Err(corrupted(
                SAGAS,
                key,
                format!("record holds saga `{}`", saga.state.saga_id),
            ));
        }
        Ok(saga)
    }

    fn has_outbox(&self, saga_id: &str) -> Result<bool, StoreError> {
        let prefix = outbox_prefix(saga_id);
        match self.inner.outbox.scan_prefix(&prefix).next() {
            None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(sled_error(&at(OUTBOX, &prefix), e)),
        }
    }
}

/// 64 random bits as hex. Generated once per store, so it needs no injected RNG: std's
/// `RandomState` is seeded from the OS, and time and pid separate it further.
fn new_worker_id() -> String {
    let mut h = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

fn parse_worker_id(bytes: &[u8]) -> Result<String, StoreError> {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
            Ok(s.to_string())
        }
        _ => Err(corrupted(
            META,
            META_WORKER_ID.as_bytes(),
            "not a worker id (expected ASCII letters, digits and '-')",
        )),
    }
}

/// What a saga's stored record becomes (see [`SledStore::outbox_remove`]).
type Replace<'a> = &'a dyn Fn(&[u8]) -> Result<Vec<u8>, StoreError>;

impl SledStore {
    /// Removes `positions` from saga `saga_id`'s outbox and, in the same transaction,
    /// replaces the saga's copy, if the store holds one, with what `replace` makes of it.
    fn outbox_remove(
        &self,
        saga_id: &str,
        positions: &[u64],
        replace: Option<Replace<'_>>,
    ) -> Result<(), StoreError> {
        let i = &self.inner;
        let keys: Vec<Vec<u8>> = positions.iter().map(|p| outbox_key(saga_id, *p)).collect();
        let Some(first) = keys.first() else {
            return Ok(());
        };
        let saga_key = saga_id.as_bytes();
        tx_result(
            &at(OUTBOX, first),
            (&i.sagas, &i.outbox).transaction(|(sagas, outbox)| {
                for key in &keys {
                    outbox.remove(key.as_slice())?;
                }
                if let Some(replace) = replace {
                    if let Some(v) = sagas.get(saga_key)? {
                        sagas.insert(saga_key, replace(&v).map_err(abort)?)?;
                    }
                }
                Ok(())
            }),
        )?;
        i.flush.wrote();
        Ok(())
    }
}

#[async_trait]
impl SagaStore for SledStore {
    fn commit(&self, c: &Commit) -> Result<Vec<OutboxEntry>, StoreError> {
        let i = &self.inner;
        let saga_id = c.saga.state.saga_id.as_str();
        let saga_bytes = encode(SAGAS, saga_id.as_bytes(), &c.saga)?;
        if c.outbox.is_empty() {
            // One key of one tree: atomic without a transaction, and far cheaper (sled
            // runs transactions one at a time). A saga restored with its messages
            // already published commits so.
            i.sagas
                .insert(saga_id.as_bytes(), saga_bytes)
                .map_err(|e| sled_error(&format!("committing saga `{saga_id}`"), e))?;
            i.flush.wrote();
            return Ok(Vec::new());
        }

        let entries = tx_result(
            &format!("committing saga `{saga_id}`"),
            (&i.sagas, &i.outbox, &i.meta).transaction(|(sagas, outbox, meta)| {
                sagas.insert(saga_id.as_bytes(), saga_bytes.as_slice())?;

                let mut entries = Vec::with_capacity(c.outbox.len());
                // sled 0.34 runs transactions one at a time (a global lock), so
                // this counter also orders positions by commit.
                let next = match meta.get(META_NEXT_POSITION)? {
                    Some(v) => {
                        decode_u64(META, META_NEXT_POSITION.as_bytes(), &v).map_err(abort)?
                    }
                    None => 1,
                };
                for (position, item) in (next..).zip(&c.outbox) {
                    let key = outbox_key(saga_id, position);
                    let entry = OutboxEntry {
                        position,
                        item: item.clone(),
                    };
                    let value = encode(OUTBOX, &key, &entry).map_err(abort)?;
                    outbox.insert(key, value)?;
                    entries.push(entry);
                }
                let after = next + c.outbox.len() as u64;
                meta.insert(META_NEXT_POSITION, &after.to_be_bytes())?;

                Ok(entries)
            }),
        )?;
        i.flush.wrote();
        Ok(entries)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let db = self.inner.db.clone();
        self.inner
            .flush
            .run(|| async move {
                // sled 0.34's `flush_async` can hang when polled concurrently (sled
                // issue #1308): a blocking flush on the blocking pool instead.
                tokio::task::spawn_blocking(move || db.flush())
                    .await
                    .map_err(|e| StoreError::Io(format!("flushing the store: {e}")))?
                    .map(drop)
                    .map_err(|e| sled_error("flushing the store", e))
            })
            .await
    }

    fn load(&self, saga_id: &str) -> Result<Option<StoredSaga>, StoreError> {
        let key = saga_id.as_bytes();
        match self.inner.sagas.get(key) {
            Ok(Some(v)) => self.load_saga(key, &v).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(sled_error(&at(SAGAS, key), e)),
        }
    }

    fn active(&self) -> Result<Vec<StoredSaga>, StoreError> {
        let mut active = Vec::new();
        for kv in self.inner.sagas.iter() {
            let (k, v) = kv.map_err(|e| sled_error(&format!("scanning tree `{SAGAS}`"), e))?;
            let saga = self.load_saga(&k, &v)?;
            if !saga.state.status.is_terminal() || self.has_outbox(saga.state.saga_id.as_str())? {
                active.push(saga);
            }
        }
        Ok(active)
    }

    fn outbox(&self, saga_id: &str) -> Result<Vec<OutboxEntry>, StoreError> {
        let prefix = outbox_prefix(saga_id);
        let mut entries = Vec::new();
        for kv in self.inner.outbox.scan_prefix(&prefix) {
            let (k, v) = kv.map_err(|e| sled_error(&at(OUTBOX, &prefix), e))?;
            let entry: OutboxEntry = decode(OUTBOX, &k, &v)?;
            let position = split_outbox_key(&k).map(|(_, p)| p);
            if position != Some(entry.position) {
                return Err(corrupted(
                    OUTBOX,
                    &k,
                    format!("record holds position {}", entry.position),
                ));
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    fn outbox_done(
        &self,
        saga_id: &str,
        position: u64,
        journal_sequence: Option<u64>,
    ) -> Result<(), StoreError> {
        self.outbox_done_all(saga_id, &[position], journal_sequence)
    }

    /// One transaction for all of them.
    fn outbox_done_all(
        &self,
        saga_id: &str,
        positions: &[u64],
        journal_sequence: Option<u64>,
    ) -> Result<(), StoreError> {
        let saga_key = saga_id.as_bytes();
        let record = |sequence: u64| {
            move |v: &[u8]| {
                let mut saga = self.load_saga(saga_key, v)?;
                saga.journal_sequence = sequence;
                encode(SAGAS, saga_key, &saga)
            }
        };
        match journal_sequence {
            Some(sequence) => self.outbox_remove(saga_id, positions, Some(&record(sequence))),
            None => self.outbox_remove(saga_id, positions, None),
        }
    }

    /// One transaction, and no decode: the caller's copy is written as it is.
    fn outbox_done_saga(
        &self,
        saga_id: &str,
        positions: &[u64],
        saga: Option<&StoredSaga>,
    ) -> Result<(), StoreError> {
        if positions.is_empty() {
            return Ok(());
        }
        let encoded = saga
            .map(|s| encode(SAGAS, saga_id.as_bytes(), s))
            .transpose()?;
        match encoded {
            Some(encoded) => {
                self.outbox_remove(saga_id, positions, Some(&|_: &[u8]| Ok(encoded.clone())))
            }
            None => self.outbox_remove(saga_id, positions, None),
        }
    }

    fn forget(&self, saga_id: &str) -> Result<(), StoreError> {
        let i = &self.inner;
        let prefix = outbox_prefix(saga_id);
        let mut keys = Vec::new();
        for k in i.outbox.scan_prefix(&prefix).keys() {
            keys.push(k.map_err(|e| sled_error(&at(OUTBOX, &prefix), e))?);
        }
        let saga_key = saga_id.as_bytes();
        tx_result(
            &at(SAGAS, saga_key),
            (&i.sagas, &i.outbox).transaction(|(sagas, outbox)| {
                sagas.remove(saga_key)?;
                for k in &keys {
                    outbox.remove(k.as_ref())?;
                }
                Ok(())
            }),
        )?;
        i.flush.wrote();
        Ok(())
    }
}
