//! [`Projection`]: the read model of `SAGA_JOURNAL`, kept in sled.
//!
//! # Layout (sled trees of the gateway's own data directory)
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `sagas` | `<saga_id>` | `saga.v1.Saga` (Protobuf) |
//! | `history` | `<saga_id>/<version: u64 BE>` | `saga.v1.JournalEvent` (Protobuf), as journalled |
//! | `index` | `<u64::MAX - created_at ms: u64 BE><saga_id, each byte inverted>` | `<state: u8><saga_type>` |
//! | `meta` | `checkpoint` | last `SAGA_JOURNAL` stream sequence applied (u64 BE) |
//! | `meta` | `format` | layout version (`1`) |
//! | `meta` | `rebuilding` | present while a rebuild from the journal is under way (empty) |
//!
//! Saga ids never contain `/`, so `<saga_id>/` prefixes one saga's history exactly. The
//! index sorts newest first in key order (within one millisecond, by descending saga id:
//! the gateway's ids are monotonic) and carries state and type, so a filtered list reads
//! no saga it does not return.
//!
//! Every journal record is applied in **one sled transaction** over all four trees (view,
//! history, index entry and checkpoint move together), so after a crash the checkpoint
//! never runs ahead of or behind the data. Applying is idempotent: a record whose
//! version is not newer than the stored view only moves the checkpoint.
//!
//! The projection is not flushed on every record: what a crash loses is replayed from
//! the journal (the checkpoint is lost with it).
//!
//! # Corruption
//!
//! The projection is a copy of the journal, so a corrupt one is rebuilt, never served
//! and never a reason to stop. A store sled cannot open as corrupt (or of another layout
//! version) is moved aside to `<dir>.corrupt-<ms>` and a fresh one opened; a record that
//! does not decode is skipped and logged, and the projection wiped. Either way the
//! follower replays `SAGA_JOURNAL` from its start, and until it has reached the journal's
//! last record of when the rebuild began, reads answer `UNAVAILABLE` (a saga is looked up
//! on the broker as for a projection that lags, see `GatewayService`; a list is refused)
//! rather than a partial or stale answer. The `rebuilding` mark is persisted, so a
//! gateway stopped in the middle goes on with the rebuild when it starts again.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use saga_core::ids::stable_hash;
use saga_core::{SagaDefinition, SagaId, Timestamp};
use saga_proto::{self as pb, Message};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Transactional, Tree};
use tokio::sync::{broadcast, Notify};

use crate::view;
use crate::GatewayError;

const CHECKPOINT: &[u8] = b"checkpoint";
const FORMAT: &[u8] = b"format";
const FORMAT_VERSION: u8 = 1;
const REBUILDING: &[u8] = b"rebuilding";
/// Target of a rebuild whose journal position is not known yet.
const UNKNOWN_TARGET: u64 = u64::MAX;
/// Changes of one saga kept for a slow watcher before it must re-read (see
/// [`Projection::subscribe`]).
const CHANGES_CAPACITY: usize = 64;
const TOKEN_VERSION: u8 = 1;

/// Filters of [`Projection::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only sagas in this state.
    pub state: Option<pb::SagaState>,
    /// Only sagas of this type.
    pub saga_type: Option<String>,
}

impl ListFilter {
    fn matches(&self, index_value: &[u8]) -> bool {
        let Some((state, saga_type)) = index_value.split_first() else {
            return false;
        };
        self.state.is_none_or(|s| s as i32 == i32::from(*state))
            && self
                .saga_type
                .as_deref()
                .is_none_or(|t| t.as_bytes() == saga_type)
    }

    /// A hash of the filters, bound into page tokens so a token is not reused with
    /// other filters (which would skip or repeat sagas).
    fn fingerprint(&self) -> u64 {
        let state = self.state.map_or(0, |s| s as i32);
        let text = format!("{state}\u{0}{}", self.saga_type.as_deref().unwrap_or(""));
        stable_hash(text.as_bytes())
    }
}

/// One page of [`Projection::list`].
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Sagas, newest first.
    pub sagas: Vec<pb::Saga>,
    /// Token of the next page; empty on the last page.
    pub next_page_token: String,
}

/// The read model of `SAGA_JOURNAL` (see the module docs for the layout).
///
/// Cheap to share behind an `Arc`; every method is safe to call concurrently. A saga's
/// changes are sent to its [`subscribe`](Self::subscribe)rs after they are committed.
#[derive(Debug)]
pub struct Projection {
    dir: PathBuf,
    db: sled::Db,
    sagas: Tree,
    history: Tree,
    index: Tree,
    meta: Tree,
    /// Step names by saga type, for the NOT_STARTED steps of a new view.
    steps: BTreeMap<String, Vec<String>>,
    watchers: Watchers,
    rebuild: Rebuild,
}

/// One channel per watched saga: a change wakes only the watchers of its saga (with one
/// channel for all, each of N watchers woke for every change of every saga).
#[derive(Debug, Clone, Default)]
struct Watchers(Arc<Mutex<HashMap<String, broadcast::Sender<Arc<pb::Saga>>>>>);

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, broadcast::Sender<Arc<pb::Saga>>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn subscribe(&self, id: &SagaId) -> Subscription {
        let receiver = self
            .lock()
            .entry(id.as_str().to_owned())
            .or_insert_with(|| broadcast::channel(CHANGES_CAPACITY).0)
            .subscribe();
        Subscription {
            id: id.as_str().to_owned(),
            receiver: Some(receiver),
            watchers: self.clone(),
        }
    }

    /// Sends `saga` to its watchers, if it has any (no copy is made otherwise).
    fn send(&self, saga: &pb::Saga) {
        if let Some(sender) = self.lock().get(&saga.saga_id) {
            let _ = sender.send(Arc::new(saga.clone()));
        }
    }
}

/// The changes of one saga, from [`Projection::subscribe`]; leaves the registry when
/// dropped.
#[derive(Debug)]
pub struct Subscription {
    id: String,
    receiver: Option<broadcast::Receiver<Arc<pb::Saga>>>,
    watchers: Watchers,
}

impl Subscription {
    /// The next change of the saga. `Lagged` when more than 64 of its changes came
    /// since the last one received: re-read what you follow.
    pub async fn recv(&mut self) -> Result<Arc<pb::Saga>, broadcast::error::RecvError> {
        match &mut self.receiver {
            Some(r) => r.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }

    /// The next change if one is waiting.
    pub fn try_recv(&mut self) -> Result<Arc<pb::Saga>, broadcast::error::TryRecvError> {
        match &mut self.receiver {
            Some(r) => r.try_recv(),
            None => Err(broadcast::error::TryRecvError::Closed),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Under the registry's lock, so that a watcher subscribing now finds either the
        // channel with its receivers or none.
        let mut map = self.watchers.lock();
        drop(self.receiver.take());
        if map.get(&self.id).is_some_and(|s| s.receiver_count() == 0) {
            map.remove(&self.id);
        }
    }
}

/// A rebuild from the journal under way (see the module docs, "Corruption").
#[derive(Debug)]
struct Rebuild {
    /// Reads answer UNAVAILABLE while true.
    active: AtomicBool,
    /// The journal's last sequence when the follower began the rebuild
    /// ([`UNKNOWN_TARGET`] until it has looked).
    target: AtomicU64,
    /// Tells the follower to wipe the projection and replay the journal from its start.
    restart: Notify,
}

impl Projection {
    /// Opens (or creates) the projection in `dir`. `definitions` give the initial step
    /// list of each saga type.
    ///
    /// A store sled reports as corrupt, or written by another layout version, is never
    /// served from: it is moved aside (`<dir>.corrupt-<ms>`, logged at `error` with what
    /// to do), a fresh store is opened in `dir` and marked for a rebuild, which the
    /// follower does from `SAGA_JOURNAL` (see the module docs). Other failures (I/O, a
    /// directory another gateway holds) are returned.
    pub fn open<'a>(
        dir: impl AsRef<Path>,
        definitions: impl IntoIterator<Item = &'a SagaDefinition>,
    ) -> Result<Self, GatewayError> {
        let dir = dir.as_ref().to_path_buf();
        let steps: BTreeMap<String, Vec<String>> = definitions
            .into_iter()
            .map(|d| {
                (
                    d.name.clone(),
                    d.steps.iter().map(|s| s.name.clone()).collect(),
                )
            })
            .collect();
        let e = match Self::open_store(&dir, steps.clone()) {
            Err(e) if is_corrupt_store(&e) => e,
            other => return other,
        };
        let aside = move_aside(&dir)?;
        tracing::error!(
            error = %e,
            dir = %dir.display(),
            aside = %aside.display(),
            "the projection is corrupt: moved it aside and rebuilding it from SAGA_JOURNAL \
             (reads answer UNAVAILABLE until it has caught up); nothing is lost, the journal \
             is the truth: delete the moved directory once the gateway serves again"
        );
        let projection = Self::open_store(&dir, steps)?;
        projection.mark_rebuilding()?;
        Ok(projection)
    }

    fn open_store(dir: &Path, steps: BTreeMap<String, Vec<String>>) -> Result<Self, GatewayError> {
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|e| GatewayError::store(format!("opening {}", dir.display()), e))?;
        let open = |name: &str| {
            db.open_tree(name)
                .map_err(|e| GatewayError::store(format!("opening tree {name}"), e))
        };
        let (sagas, history, index, meta) = (
            open("sagas")?,
            open("history")?,
            open("index")?,
            open("meta")?,
        );
        match meta
            .get(FORMAT)
            .map_err(|e| GatewayError::store("reading the format", e))?
        {
            None => {
                meta.insert(FORMAT, &[FORMAT_VERSION])
                    .map_err(|e| GatewayError::store("writing the format", e))?;
            }
            Some(v) if v.as_ref() == [FORMAT_VERSION] => {}
            Some(v) => {
                return Err(GatewayError::Corrupt {
                    what: format!("meta/format in {}", dir.display()),
                    detail: format!("layout version {v:?}, this gateway reads {FORMAT_VERSION}"),
                })
            }
        }
        let rebuilding = meta
            .contains_key(REBUILDING)
            .map_err(|e| GatewayError::store("reading the rebuild mark", e))?;
        if rebuilding {
            tracing::warn!(dir = %dir.display(), "the projection was being rebuilt: going on with the rebuild");
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            db,
            sagas,
            history,
            index,
            meta,
            steps,
            watchers: Watchers::default(),
            rebuild: Rebuild {
                active: AtomicBool::new(rebuilding),
                target: AtomicU64::new(UNKNOWN_TARGET),
                restart: Notify::new(),
            },
        })
    }

    /// Whether a rebuild from the journal is under way (reads answer UNAVAILABLE).
    pub fn is_rebuilding(&self) -> bool {
        self.rebuild.active.load(Ordering::SeqCst)
    }

    /// Marks the projection for a rebuild (persisted; the follower finishes it).
    fn mark_rebuilding(&self) -> Result<(), GatewayError> {
        self.meta
            .insert(REBUILDING, &[])
            .map_err(|e| GatewayError::store("writing the rebuild mark", e))?;
        self.rebuild.target.store(UNKNOWN_TARGET, Ordering::SeqCst);
        self.rebuild.active.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// A record of the projection does not decode: it is skipped (never served), and the
    /// projection is wiped and replayed from the journal by the follower.
    fn corrupt_record(&self, e: &GatewayError) {
        let first = !self.rebuild.active.load(Ordering::SeqCst);
        if let Err(mark) = self.mark_rebuilding() {
            tracing::error!(error = %mark, "could not persist the rebuild mark");
        }
        if first {
            tracing::error!(
                error = %e,
                dir = %self.dir.display(),
                "unreadable projection record skipped: rebuilding the projection from \
                 SAGA_JOURNAL (reads answer UNAVAILABLE until it has caught up)"
            );
            self.rebuild.restart.notify_one();
        }
    }

    /// Resolves when a rebuild asks the follower to start over from the journal's
    /// start (after the projection was wiped with [`clear`](Self::clear)).
    pub async fn restart_requested(&self) {
        self.rebuild.restart.notified().await;
    }

    /// Tells a rebuild where the journal ends (its last sequence when the follower
    /// starts reading it): reads answer again once the checkpoint reaches it.
    pub fn rebuild_target(&self, last_sequence: u64) {
        if !self.is_rebuilding() {
            return;
        }
        let _ = self.rebuild.target.compare_exchange(
            UNKNOWN_TARGET,
            last_sequence,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        self.finish_rebuild_if_caught_up();
    }

    fn finish_rebuild_if_caught_up(&self) {
        let target = self.rebuild.target.load(Ordering::SeqCst);
        if target == UNKNOWN_TARGET || self.checkpoint().unwrap_or(0) < target {
            return;
        }
        match self.meta.remove(REBUILDING) {
            Ok(_) => {
                if self.rebuild.active.swap(false, Ordering::SeqCst) {
                    tracing::warn!(
                        checkpoint = target,
                        sagas = self.len(),
                        "projection rebuilt from SAGA_JOURNAL: serving reads again"
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "could not clear the rebuild mark"),
        }
    }

    fn rebuilding_error(&self) -> GatewayError {
        let target = self.rebuild.target.load(Ordering::SeqCst);
        let at = self.checkpoint().unwrap_or(0);
        GatewayError::Rebuilding(if target == UNKNOWN_TARGET {
            format!("at journal sequence {at}")
        } else {
            format!("at journal sequence {at} of {target}")
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Receives every change of saga `id`'s view after it is committed. A subscription
    /// that falls more than 64 changes behind gets `Lagged` and must re-read the saga.
    pub fn subscribe(&self, id: &SagaId) -> Subscription {
        self.watchers.subscribe(id)
    }

    /// Sagas with at least one subscription.
    pub fn watched(&self) -> usize {
        self.watchers.lock().len()
    }

    /// The last `SAGA_JOURNAL` stream sequence applied (0: none).
    pub fn checkpoint(&self) -> Result<u64, GatewayError> {
        let v = self
            .meta
            .get(CHECKPOINT)
            .map_err(|e| GatewayError::store("reading the checkpoint", e))?;
        Ok(v.map(|v| be_u64(&v)).unwrap_or(0))
    }

    /// The view of a saga, if the projection knows it.
    ///
    /// While the projection is being rebuilt it knows none (the caller looks the saga up
    /// on the broker, as for a projection that lags). A view that does not decode is
    /// not returned either: it starts a rebuild.
    pub fn get(&self, saga_id: &SagaId) -> Result<Option<pb::Saga>, GatewayError> {
        if self.is_rebuilding() {
            return Ok(None);
        }
        let raw = self
            .sagas
            .get(saga_id.as_str())
            .map_err(|e| GatewayError::store(format!("reading saga {saga_id}"), e))?;
        match raw.map(|v| decode_saga(saga_id.as_str(), &v)).transpose() {
            Err(e @ GatewayError::Corrupt { .. }) => {
                self.corrupt_record(&e);
                Ok(None)
            }
            other => other,
        }
    }

    /// The journal records of a saga, by version.
    /// `Rebuilding` while the projection is rebuilt (and when a record does not decode,
    /// which starts a rebuild).
    pub fn history(&self, saga_id: &SagaId) -> Result<Vec<pb::JournalEvent>, GatewayError> {
        if self.is_rebuilding() {
            return Err(self.rebuilding_error());
        }
        let history: Result<Vec<_>, _> = self
            .history
            .scan_prefix(history_prefix(saga_id.as_str()))
            .map(|kv| {
                let (k, v) = kv.map_err(|e| {
                    GatewayError::store(format!("reading the history of {saga_id}"), e)
                })?;
                let mut event =
                    pb::JournalEvent::decode(v.as_ref()).map_err(|e| GatewayError::Corrupt {
                        what: format!("history/{saga_id}/{}", be_u64(&k[k.len() - 8..])),
                        detail: e.to_string(),
                    })?;
                // Kept by earlier releases.
                event.snapshot.clear();
                Ok(event)
            })
            .collect();
        match history {
            Err(e @ GatewayError::Corrupt { .. }) => {
                self.corrupt_record(&e);
                Err(self.rebuilding_error())
            }
            other => other,
        }
    }

    /// Records a saga whose start was accepted (acknowledged by `SAGA_INBOX`) but which
    /// has no journal record yet, so that it reads PENDING instead of NOT_FOUND. A saga
    /// the projection already knows is left as it is. Returns the stored view.
    pub fn record_pending(
        &self,
        saga_id: &SagaId,
        saga_type: &str,
        now: Timestamp,
    ) -> Result<pb::Saga, GatewayError> {
        let fresh = view::pending(saga_id, saga_type, self.step_names(saga_type), now);
        let encoded = fresh.encode_to_vec();
        let key = index_key(&fresh);
        let value = index_value(&fresh);
        let result = (&self.sagas, &self.index).transaction(|(sagas, index)| {
            if let Some(existing) = sagas.get(saga_id.as_str())? {
                return Ok(Some(existing));
            }
            sagas.insert(saga_id.as_str(), encoded.as_slice())?;
            index.insert(key.as_slice(), value.as_slice())?;
            Ok(None)
        });
        let existing = result.map_err(|e: TransactionError| {
            GatewayError::store(format!("recording pending saga {saga_id}"), tx_storage(e))
        })?;
        match existing {
            Some(raw) => decode_saga(saga_id.as_str(), &raw),
            None => {
                self.watchers.send(&fresh);
                Ok(fresh)
            }
        }
    }

    /// Applies the `SAGA_JOURNAL` message at stream sequence `seq` (an encoded
    /// `saga.v1.JournalEvent`). A record that does not decode, or names no valid saga, is
    /// logged and skipped (the checkpoint moves past it). Returns the new view when the
    /// record changed one.
    ///
    /// A stored view that does not decode starts a rebuild (the error is returned: the
    /// follower starts over from the journal's start).
    pub fn apply_message(
        &self,
        seq: u64,
        payload: &[u8],
    ) -> Result<Option<pb::Saga>, GatewayError> {
        let applied = self.apply_decoded(seq, payload);
        if let Err(e @ GatewayError::Corrupt { .. }) = &applied {
            self.corrupt_record(e);
        }
        if self.is_rebuilding() {
            self.finish_rebuild_if_caught_up();
        }
        applied
    }

    fn apply_decoded(&self, seq: u64, payload: &[u8]) -> Result<Option<pb::Saga>, GatewayError> {
        match pb::JournalEvent::decode(payload) {
            Ok(event) if SagaId::parse(&event.saga_id).is_ok() => self.apply(seq, &event),
            Ok(event) => {
                tracing::warn!(seq, saga_id = %event.saga_id, "journal record with an invalid saga id skipped");
                self.advance_checkpoint(seq)?;
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(seq, error = %e, "undecodable journal record skipped");
                self.advance_checkpoint(seq)?;
                Ok(None)
            }
        }
    }

    /// Applies one journal record found at stream sequence `seq`, in one transaction
    /// with the checkpoint. A record already applied (sequence at or below the
    /// checkpoint, or version at or below the view's) changes no view.
    pub fn apply(
        &self,
        seq: u64,
        event: &pb::JournalEvent,
    ) -> Result<Option<pb::Saga>, GatewayError> {
        let id = event.saga_id.as_str();
        let history_key = history_key(id, event.version);
        // The history leaves the snapshot out: it is the runtime's restore point (most
        // of a record's bytes), read from SAGA_JOURNAL by whoever needs it.
        let history_value = pb::JournalEvent {
            snapshot: Vec::new(),
            ..event.clone()
        }
        .encode_to_vec();
        let steps = self.step_names(&event.saga_type);
        let seq_bytes = seq.to_be_bytes();
        let result = (&self.sagas, &self.history, &self.index, &self.meta).transaction(
            |(sagas, history, index, meta)| {
                let checkpoint = meta.get(CHECKPOINT)?.map(|v| be_u64(&v)).unwrap_or(0);
                if seq <= checkpoint {
                    return Ok(None);
                }
                meta.insert(CHECKPOINT, &seq_bytes)?;
                let current = match sagas.get(id)? {
                    Some(raw) => Some(
                        pb::Saga::decode(raw.as_ref())
                            .map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?,
                    ),
                    None => None,
                };
                if current.as_ref().is_some_and(|c| c.version >= event.version) {
                    return Ok(None);
                }
                let mut saga = match current {
                    Some(c) => c,
                    None => {
                        let created = event.recorded_at.as_ref().map(pb::millis).unwrap_or(0);
                        let fresh_id = SagaId::parse(id)
                            .map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?;
                        view::pending(&fresh_id, &event.saga_type, steps, created)
                    }
                };
                if event.version > saga.version + 1 {
                    tracing::warn!(
                        saga_id = id,
                        have = saga.version,
                        got = event.version,
                        "journal gap: records are missing before this one"
                    );
                }
                view::apply(&mut saga, event);
                sagas.insert(id, saga.encode_to_vec())?;
                history.insert(history_key.as_slice(), history_value.as_slice())?;
                index.insert(index_key(&saga), index_value(&saga))?;
                Ok(Some(saga))
            },
        );
        let changed = result.map_err(|e: TransactionError<String>| match e {
            TransactionError::Abort(detail) => GatewayError::Corrupt {
                what: format!("sagas/{id}"),
                detail,
            },
            TransactionError::Storage(e) => {
                GatewayError::store(format!("applying journal record {seq} of {id}"), e)
            }
        })?;
        if let Some(saga) = &changed {
            self.watchers.send(saga);
        }
        Ok(changed)
    }

    fn advance_checkpoint(&self, seq: u64) -> Result<(), GatewayError> {
        self.meta
            .fetch_and_update(CHECKPOINT, |old| {
                let old = old.map(be_u64).unwrap_or(0);
                Some(old.max(seq).to_be_bytes().to_vec())
            })
            .map_err(|e| GatewayError::store("moving the checkpoint", e))?;
        Ok(())
    }

    /// Sagas newest first (by creation), filtered, `page_size` at most, from the page
    /// `page_token` designates (empty: the first). A token made for other filters, or
    /// that is not one of ours, is an `InvalidArgument` on `page_token`.
    pub fn list(
        &self,
        filter: &ListFilter,
        page_size: usize,
        page_token: &str,
    ) -> Result<Page, GatewayError> {
        if self.is_rebuilding() {
            return Err(self.rebuilding_error());
        }
        match self.list_stored(filter, page_size, page_token) {
            Err(e @ GatewayError::Corrupt { .. }) => {
                self.corrupt_record(&e);
                Err(self.rebuilding_error())
            }
            other => other,
        }
    }

    fn list_stored(
        &self,
        filter: &ListFilter,
        page_size: usize,
        page_token: &str,
    ) -> Result<Page, GatewayError> {
        let start = if page_token.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(decode_token(filter, page_token)?)
        };
        let mut keys = Vec::with_capacity(page_size);
        let mut more = false;
        for kv in self.index.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            let (k, v) = kv.map_err(|e| GatewayError::store("reading the saga index", e))?;
            if !filter.matches(&v) {
                continue;
            }
            if keys.len() == page_size {
                more = true;
                break;
            }
            keys.push(k);
        }
        let mut sagas = Vec::with_capacity(keys.len());
        for k in &keys {
            let id = index_saga_id(k);
            let raw = self
                .sagas
                .get(&id)
                .map_err(|e| GatewayError::store(format!("reading saga {id}"), e))?
                .ok_or_else(|| GatewayError::Corrupt {
                    what: format!("index entry of {id}"),
                    detail: "the saga it points to is missing".into(),
                })?;
            sagas.push(decode_saga(&id, &raw)?);
        }
        let next_page_token = match (more, keys.last()) {
            (true, Some(last)) => encode_token(filter, last),
            _ => String::new(),
        };
        Ok(Page {
            sagas,
            next_page_token,
        })
    }

    /// Removes every view, history record, index entry and the checkpoint (for a
    /// rebuild: the follower then replays `SAGA_JOURNAL` from its start). The rebuild
    /// mark stays until the replay has caught up.
    pub fn clear(&self) -> Result<(), GatewayError> {
        for (name, tree) in [
            ("sagas", &self.sagas),
            ("history", &self.history),
            ("index", &self.index),
        ] {
            tree.clear()
                .map_err(|e| GatewayError::store(format!("clearing {name}"), e))?;
        }
        self.meta
            .remove(CHECKPOINT)
            .map_err(|e| GatewayError::store("clearing the checkpoint", e))?;
        Ok(())
    }

    /// Writes everything to disk.
    pub async fn flush(&self) -> Result<(), GatewayError> {
        // sled 0.34's `flush_async` can hang when polled concurrently (sled issue #1308).
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| {
                GatewayError::store(
                    "flushing",
                    sled::Error::Io(std::io::Error::other(e.to_string())),
                )
            })?
            .map_err(|e| GatewayError::store("flushing", e))?;
        Ok(())
    }

    /// How many sagas the projection holds.
    pub fn len(&self) -> usize {
        self.sagas.len()
    }

    /// Whether the projection holds no saga.
    pub fn is_empty(&self) -> bool {
        self.sagas.is_empty()
    }

    fn step_names(&self, saga_type: &str) -> &[String] {
        self.steps.get(saga_type).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Whether opening failed because of what the store holds (not I/O or a lock).
fn is_corrupt_store(e: &GatewayError) -> bool {
    match e {
        GatewayError::Corrupt { .. } => true,
        GatewayError::Store { source, .. } => matches!(
            source,
            sled::Error::Corruption { .. } | sled::Error::Unsupported(_)
        ),
        _ => false,
    }
}

/// Moves a corrupt store out of the way: `<dir>.corrupt-<ms>` beside it, or, when the
/// directory cannot be renamed (a mount point), its contents into `<dir>/corrupt-<ms>`.
fn move_aside(dir: &Path) -> Result<PathBuf, GatewayError> {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let io = |what: String| move |e: std::io::Error| GatewayError::store(what, sled::Error::Io(e));
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".corrupt-{ms}"));
    let beside = dir.with_file_name(name);
    if std::fs::rename(dir, &beside).is_ok() {
        return Ok(beside);
    }
    let inside = dir.join(format!("corrupt-{ms}"));
    std::fs::create_dir(&inside).map_err(io(format!("creating {}", inside.display())))?;
    for entry in std::fs::read_dir(dir).map_err(io(format!("reading {}", dir.display())))? {
        let entry = entry.map_err(io(format!("reading {}", dir.display())))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("corrupt-") {
            continue;
        }
        std::fs::rename(entry.path(), inside.join(&name))
            .map_err(io(format!("moving {} aside", entry.path().display())))?;
    }
    Ok(inside)
}

fn decode_saga(id: &str, raw: &[u8]) -> Result<pb::Saga, GatewayError> {
    pb::Saga::decode(raw).map_err(|e| GatewayError::Corrupt {
        what: format!("sagas/{id}"),
        detail: e.to_string(),
    })
}

fn tx_storage(e: TransactionError) -> sled::Error {
    match e {
        TransactionError::Abort(e) | TransactionError::Storage(e) => e,
    }
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[8 - n..].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(buf)
}

fn history_prefix(saga_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(saga_id.len() + 9);
    k.extend_from_slice(saga_id.as_bytes());
    k.push(b'/');
    k
}

fn history_key(saga_id: &str, version: u64) -> Vec<u8> {
    let mut k = history_prefix(saga_id);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn index_key(saga: &pb::Saga) -> Vec<u8> {
    let created = saga.created_at.as_ref().map(pb::millis).unwrap_or(0);
    let mut k = Vec::with_capacity(8 + saga.saga_id.len());
    k.extend_from_slice(&(u64::MAX - created).to_be_bytes());
    k.extend(saga.saga_id.bytes().map(|b| !b));
    k
}

/// The saga id of an index key.
fn index_saga_id(key: &[u8]) -> String {
    key.iter().skip(8).map(|b| char::from(!b)).collect()
}

fn index_value(saga: &pb::Saga) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + saga.saga_type.len());
    v.push(u8::try_from(saga.state).unwrap_or(0));
    v.extend_from_slice(saga.saga_type.as_bytes());
    v
}

/// A page token: hex of `<version 1><filter fingerprint u64 BE><last index key>`.
fn encode_token(filter: &ListFilter, last_key: &[u8]) -> String {
    let mut raw = Vec::with_capacity(9 + last_key.len());
    raw.push(TOKEN_VERSION);
    raw.extend_from_slice(&filter.fingerprint().to_be_bytes());
    raw.extend_from_slice(last_key);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_token(filter: &ListFilter, token: &str) -> Result<Vec<u8>, GatewayError> {
    let bad = |why: &str| GatewayError::invalid("page_token", why.to_string());
    if token.len() > 512 {
        return Err(bad("not a token returned by ListSagas"));
    }
    let raw = token
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .filter(|p| p.len() == 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| bad("not a token returned by ListSagas"))?;
    if raw.len() < 1 + 8 + 8 || raw[0] != TOKEN_VERSION {
        return Err(bad("not a token returned by ListSagas"));
    }
    if be_u64(&raw[1..9]) != filter.fingerprint() {
        return Err(bad(
            "the token was made for other filters (state, saga_type); keep them between pages",
        ));
    }
    Ok(raw[9..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Projection {
        let def = saga_core::definition::parse_definition(
            "order-checkout.yaml",
            include_str!("../../../sagas/order-checkout.yaml"),
        )
        .unwrap()
        .definition;
        Projection::open(dir, [&def]).unwrap()
    }

    fn record(id: &str, version: u64, at: Timestamp, state: pb::SagaState) -> pb::JournalEvent {
        pb::JournalEvent {
            saga_id: id.into(),
            saga_type: "OrderCheckout".into(),
            version,
            recorded_at: Some(pb::timestamp(at)),
            state: state as i32,
            events: vec![pb::TransitionEvent {
                kind: pb::TransitionEventKind::StepStarted as i32,
                step: "ReserveStock".into(),
                attempt: 1,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn id(s: &str) -> SagaId {
        SagaId::parse(s).unwrap()
    }

    #[test]
    fn records_apply_once_with_the_checkpoint_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path());
        let mut changes = p.subscribe(&id("a"));
        let mut others = p.subscribe(&id("b"));
        let pending = p.record_pending(&id("a"), "OrderCheckout", 1_000).unwrap();
        assert_eq!(pending.state(), pb::SagaState::Pending);
        assert_eq!(pending.steps.len(), 3);
        assert_eq!(changes.try_recv().unwrap().version, 0);

        let v1 = pb::JournalEvent {
            snapshot: br#"{"state":{}}"#.to_vec(),
            ..record("a", 1, 2_000, pb::SagaState::Running)
        };
        assert_eq!(p.apply(1, &v1).unwrap().unwrap().version, 1);
        assert_eq!(changes.try_recv().unwrap().version, 1);
        // Redelivered sequence, and the same version at a later sequence: no change.
        assert_eq!(p.apply(1, &v1).unwrap(), None);
        assert_eq!(p.apply(2, &v1).unwrap(), None);
        assert_eq!(p.checkpoint().unwrap(), 2);
        assert!(changes.try_recv().is_err());
        // A watcher of another saga is not woken by these changes, and a saga's channel
        // leaves with its last subscription.
        assert!(others.try_recv().is_err());
        assert_eq!(p.watched(), 2);
        let second = p.subscribe(&id("a"));
        drop(changes);
        assert_eq!(p.watched(), 2);
        drop((second, others));
        assert_eq!(p.watched(), 0);
        // Recording pending again does not reset a saga that has started.
        assert_eq!(
            p.record_pending(&id("a"), "OrderCheckout", 9_000)
                .unwrap()
                .version,
            1
        );
        // Garbage is skipped, not fatal.
        assert_eq!(p.apply_message(3, b"\xff\xff\xff").unwrap(), None);
        assert_eq!(p.checkpoint().unwrap(), 3);

        let a = p.get(&id("a")).unwrap().unwrap();
        assert_eq!(a.state(), pb::SagaState::Running);
        assert_eq!(a.created_at, Some(pb::timestamp(1_000)));
        assert_eq!(a.steps[0].status, "RUNNING");
        // The history has every record but not its snapshot (the journal has it).
        let without_snapshot = pb::JournalEvent {
            snapshot: Vec::new(),
            ..v1.clone()
        };
        assert_eq!(p.history(&id("a")).unwrap(), vec![without_snapshot]);
        assert_eq!(p.get(&id("b")).unwrap(), None);
        drop(p);

        let p = open(dir.path());
        assert_eq!(p.checkpoint().unwrap(), 3);
        assert_eq!(p.get(&id("a")).unwrap().unwrap(), a);
        p.clear().unwrap();
        assert_eq!(p.checkpoint().unwrap(), 0);
        assert!(p.is_empty());
        assert!(p.history(&id("a")).unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_store_sled_cannot_open_is_moved_aside_and_rebuilt_not_served() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("gateway");
        let p = open(&dir);
        p.apply(1, &record("a", 1, 1_000, pb::SagaState::Running))
            .unwrap();
        drop(p);
        std::fs::write(dir.join("conf"), b"\xff\xfe not a sled config \x00\x01\x02").unwrap();

        let p = open(&dir);
        assert!(p.is_rebuilding());
        let aside: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("gateway.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(p.checkpoint().unwrap(), 0);
        assert_eq!(p.get(&id("a")).unwrap(), None);
        let e = p.list(&ListFilter::default(), 10, "").unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
        assert!(e.to_string().contains("being rebuilt"), "{e}");
        assert!(p.history(&id("a")).is_err());

        // The follower learns where the journal ends, then replays it.
        p.rebuild_target(2);
        assert!(p.is_rebuilding());
        p.apply_message(
            1,
            &record("a", 1, 1_000, pb::SagaState::Running).encode_to_vec(),
        )
        .unwrap();
        assert!(p.is_rebuilding(), "served before the journal's end");
        p.apply_message(
            2,
            &record("a", 2, 1_000, pb::SagaState::Completed).encode_to_vec(),
        )
        .unwrap();
        assert!(!p.is_rebuilding());
        assert_eq!(p.get(&id("a")).unwrap().unwrap().version, 2);
        drop(p);
        assert!(!open(&dir).is_rebuilding());
    }

    #[tokio::test]
    async fn an_undecodable_record_is_skipped_and_the_projection_rebuilt() {
        let tmp = tempfile::tempdir().unwrap();
        let p = open(tmp.path());
        p.apply(1, &record("a", 1, 1_000, pb::SagaState::Running))
            .unwrap();
        p.apply(2, &record("b", 1, 1_000, pb::SagaState::Running))
            .unwrap();
        p.sagas.insert("a", &b"\xff\xff\xff"[..]).unwrap();

        // Never served: the read misses (the service then asks the broker) and a
        // rebuild starts, which the follower is told about.
        assert_eq!(p.get(&id("a")).unwrap(), None);
        assert!(p.is_rebuilding());
        tokio::time::timeout(std::time::Duration::from_secs(5), p.restart_requested())
            .await
            .expect("the follower is asked to start over");
        assert_eq!(p.get(&id("b")).unwrap(), None);
        // Stopped in the middle: the rebuild goes on after a restart.
        drop(p);
        let p = open(tmp.path());
        assert!(p.is_rebuilding());
        p.clear().unwrap();
        p.rebuild_target(2);
        for (seq, who) in [(1, "a"), (2, "b")] {
            p.apply_message(
                seq,
                &record(who, 1, 1_000, pb::SagaState::Running).encode_to_vec(),
            )
            .unwrap();
        }
        assert!(!p.is_rebuilding());
        assert_eq!(p.get(&id("a")).unwrap().unwrap().version, 1);

        // A view that does not decode while a record is applied to it: the same.
        p.sagas.insert("b", &b"\x0a\xff"[..]).unwrap();
        let e = p
            .apply_message(
                3,
                &record("b", 2, 1_000, pb::SagaState::Completed).encode_to_vec(),
            )
            .unwrap_err();
        assert!(matches!(e, GatewayError::Corrupt { .. }), "{e}");
        assert!(p.is_rebuilding());
    }

    #[test]
    fn lists_newest_first_filtered_and_paged() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path());
        for i in 0..7u64 {
            let state = if i % 2 == 0 {
                pb::SagaState::Completed
            } else {
                pb::SagaState::Running
            };
            p.apply(i + 1, &record(&format!("s{i}"), 1, 1_000 + i, state))
                .unwrap();
        }
        // Same millisecond: the greater (later generated) id first.
        p.apply(8, &record("t-a", 1, 500, pb::SagaState::Running))
            .unwrap();
        p.apply(9, &record("t-b", 1, 500, pb::SagaState::Running))
            .unwrap();
        let all = ListFilter::default();
        let tail = p.list(&all, 10, "").unwrap();
        let tail: Vec<&str> = tail.sagas[7..].iter().map(|s| s.saga_id.as_str()).collect();
        assert_eq!(tail, ["t-b", "t-a"]);
        let first = p.list(&all, 3, "").unwrap();
        let ids =
            |page: &Page| -> Vec<String> { page.sagas.iter().map(|s| s.saga_id.clone()).collect() };
        assert_eq!(ids(&first), ["s6", "s5", "s4"]);
        let second = p.list(&all, 3, &first.next_page_token).unwrap();
        assert_eq!(ids(&second), ["s3", "s2", "s1"]);
        let third = p.list(&all, 3, &second.next_page_token).unwrap();
        assert_eq!(ids(&third), ["s0", "t-b", "t-a"]);
        // Exactly one page's worth: no token pointing at an empty page.
        assert_eq!(third.next_page_token, "");
        let exact = p.list(&all, 9, "").unwrap();
        assert_eq!(exact.sagas.len(), 9);
        assert_eq!(exact.next_page_token, "");

        let done = ListFilter {
            state: Some(pb::SagaState::Completed),
            saga_type: Some("OrderCheckout".into()),
        };
        let page = p.list(&done, 3, "").unwrap();
        assert_eq!(ids(&page), ["s6", "s4", "s2"]);
        assert_eq!(
            ids(&p.list(&done, 3, &page.next_page_token).unwrap()),
            ["s0"]
        );
        let other_type = ListFilter {
            saga_type: Some("TravelBookingSaga".into()),
            ..Default::default()
        };
        assert!(p.list(&other_type, 3, "").unwrap().sagas.is_empty());

        for bad in ["zz", "abc", "00", &"0".repeat(40)] {
            let e = p.list(&all, 3, bad).unwrap_err();
            assert!(e.to_string().starts_with("page_token: "), "{e}");
        }
        let e = p.list(&done, 3, &first.next_page_token).unwrap_err();
        assert!(e.to_string().contains("other filters"), "{e}");
    }
}
