//! Projections: read models fed by the events of one aggregate type.
//!
//! A [`Projection`] turns events into writes on a key-value view ([`ViewTx`]). The
//! [`ProjectionRunner`] feeds it from the store and writes the view changes of a batch
//! of events **together with the projection's checkpoint** (the position of the last
//! event applied) in one atomic write. After a crash or a redelivery it resumes after
//! the checkpoint, so an event never counts twice.
//!
//! **Blue/green rebuild**: a rebuild fills a new generation of the view beside the live
//! one from the first event on, while readers keep reading (and the runner keeps
//! updating) the live one. When the new generation has caught up with the live one,
//! readers switch to it in one write and the old one is dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};

use crate::definition::AggregateDefinition;
use crate::error::{ErrorKind, EsError};
use crate::model::RecordedEvent;
use crate::store::EventStore;
use crate::upcast::Upcasters;

/// Reads and writes of one batch on a view.
#[async_trait]
pub trait ViewTx: Send {
    /// The value of `key` (including this batch's writes).
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EsError>;
    /// Sets `key`.
    fn put(&mut self, key: &[u8], value: Vec<u8>);
    /// Removes `key`.
    fn delete(&mut self, key: &[u8]);
}

/// A read model.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Name, as in the definition (`AccountBalanceView`).
    fn name(&self) -> &str;
    /// Event types it reads; others are skipped (and still move the checkpoint).
    fn sources(&self) -> &[String];
    /// Applies one event, upcast to its newest version. An error stops the runner
    /// (the event is not skipped).
    async fn apply(&self, view: &mut dyn ViewTx, event: &RecordedEvent) -> Result<(), EsError>;
}

/// Where views live: generations of rows, a checkpoint per generation, and which
/// generation readers see. One runner writes a projection at a time.
#[async_trait]
pub trait ViewStore: Send + Sync + 'static {
    /// The generation readers see (1 until the first rebuild).
    async fn live_generation(&self, name: &str) -> Result<u64, EsError>;
    /// Position of the last event applied to a generation.
    async fn checkpoint(&self, name: &str, generation: u64) -> Result<u64, EsError>;
    /// Starts a batch of writes on a generation.
    async fn begin(&self, name: &str, generation: u64) -> Result<Box<dyn ViewBatch>, EsError>;
    /// Empties a generation (before a rebuild fills it).
    async fn clear(&self, name: &str, generation: u64) -> Result<(), EsError>;
    /// Makes `generation` the one readers see and drops the one they saw.
    async fn switch(&self, name: &str, generation: u64) -> Result<(), EsError>;
    /// A row of the live generation.
    async fn get(&self, name: &str, key: &[u8]) -> Result<Option<Vec<u8>>, EsError>;
    /// Rows of the live generation whose key starts with `prefix`, in key order, after
    /// `after` (for paging), at most `limit`.
    async fn scan(
        &self,
        name: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Row>, EsError>;
}

#[async_trait]
impl<T: ViewStore + ?Sized> ViewStore for Arc<T> {
    async fn live_generation(&self, name: &str) -> Result<u64, EsError> {
        (**self).live_generation(name).await
    }
    async fn checkpoint(&self, name: &str, generation: u64) -> Result<u64, EsError> {
        (**self).checkpoint(name, generation).await
    }
    async fn begin(&self, name: &str, generation: u64) -> Result<Box<dyn ViewBatch>, EsError> {
        (**self).begin(name, generation).await
    }
    async fn clear(&self, name: &str, generation: u64) -> Result<(), EsError> {
        (**self).clear(name, generation).await
    }
    async fn switch(&self, name: &str, generation: u64) -> Result<(), EsError> {
        (**self).switch(name, generation).await
    }
    async fn get(&self, name: &str, key: &[u8]) -> Result<Option<Vec<u8>>, EsError> {
        (**self).get(name, key).await
    }
    async fn scan(
        &self,
        name: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Row>, EsError> {
        (**self).scan(name, prefix, after, limit).await
    }
}

/// The writes of one batch, committed with the new checkpoint in one atomic write.
#[async_trait]
pub trait ViewBatch: ViewTx {
    /// The checkpoint when the batch began.
    fn checkpoint(&self) -> u64;
    /// Writes the batch and `checkpoint` atomically.
    async fn commit(self: Box<Self>, checkpoint: u64) -> Result<(), EsError>;
}

/// Applies events to a generation: the view writes and the checkpoint in one atomic
/// batch. Events at or before the checkpoint are skipped (redeliveries).
async fn apply_events(
    views: &dyn ViewStore,
    projection: &dyn Projection,
    decoder: &Decoder,
    generation: u64,
    events: &[RecordedEvent],
) -> Result<u64, EsError> {
    let mut batch = views.begin(projection.name(), generation).await?;
    let checkpoint = batch.checkpoint();
    let mut last = checkpoint;
    for e in events {
        // Positions only grow: anything at or before the last one applied (in this
        // batch or before it) is a redelivery.
        if e.position <= last {
            continue;
        }
        if projection.sources().contains(&e.event_type) {
            let e = decoder.upcast(e.clone())?;
            projection.apply(batch.as_mut(), &e).await?;
        }
        last = e.position;
    }
    if last > checkpoint {
        batch.commit(last).await?;
    }
    Ok(last)
}

/// A key and its value.
pub type Row = (Vec<u8>, Vec<u8>);

const CHECKPOINT_KEY: &[u8] = b"\x00checkpoint";
const DATA_PREFIX: &[u8] = b"d:";
const META_TREE: &str = "projections";
/// Events written in one atomic batch at most.
const BATCH: usize = 1_000;

/// Views in a sled database: tree `view:<name>:<generation>` holds the rows (prefixed
/// `d:`) and the checkpoint; tree `projections` maps a name to its live generation.
#[derive(Debug, Clone)]
pub struct SledViews {
    db: sled::Db,
    meta: sled::Tree,
}

fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn from_be(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if v.len() == 8 {
        b.copy_from_slice(v);
    }
    u64::from_be_bytes(b)
}

impl SledViews {
    /// Opens (or creates) the views in `path`.
    pub fn open(path: &std::path::Path) -> Result<Self, EsError> {
        Self::with_db(sled::open(path)?)
    }

    /// Views in an open database.
    pub fn with_db(db: sled::Db) -> Result<Self, EsError> {
        let meta = db.open_tree(META_TREE)?;
        Ok(Self { db, meta })
    }

    /// Writes everything to disk.
    pub fn flush(&self) -> Result<(), EsError> {
        self.db.flush()?;
        Ok(())
    }

    fn tree(&self, name: &str, generation: u64) -> Result<sled::Tree, EsError> {
        Ok(self.db.open_tree(format!("view:{name}:{generation}"))?)
    }

    fn live(&self, name: &str) -> Result<u64, EsError> {
        Ok(self.meta.get(name)?.map_or(1, |v| from_be(&v)))
    }
}

#[async_trait]
impl ViewStore for SledViews {
    async fn live_generation(&self, name: &str) -> Result<u64, EsError> {
        self.live(name)
    }

    async fn checkpoint(&self, name: &str, generation: u64) -> Result<u64, EsError> {
        Ok(self
            .tree(name, generation)?
            .get(CHECKPOINT_KEY)?
            .map_or(0, |v| from_be(&v)))
    }

    async fn begin(&self, name: &str, generation: u64) -> Result<Box<dyn ViewBatch>, EsError> {
        let tree = self.tree(name, generation)?;
        let checkpoint = tree.get(CHECKPOINT_KEY)?.map_or(0, |v| from_be(&v));
        Ok(Box::new(SledBatch {
            tree,
            checkpoint,
            writes: BTreeMap::new(),
        }))
    }

    async fn clear(&self, name: &str, generation: u64) -> Result<(), EsError> {
        self.tree(name, generation)?.clear()?;
        Ok(())
    }

    async fn switch(&self, name: &str, generation: u64) -> Result<(), EsError> {
        let old = self.live(name)?;
        self.meta.insert(name, &be(generation))?;
        self.meta.flush()?;
        if old != generation {
            self.db.drop_tree(format!("view:{name}:{old}"))?;
        }
        Ok(())
    }

    async fn get(&self, name: &str, key: &[u8]) -> Result<Option<Vec<u8>>, EsError> {
        let tree = self.tree(name, self.live(name)?)?;
        Ok(tree.get(data_key(key))?.map(|v| v.to_vec()))
    }

    async fn scan(
        &self,
        name: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Row>, EsError> {
        let tree = self.tree(name, self.live(name)?)?;
        let mut out = Vec::new();
        for row in tree.scan_prefix(data_key(prefix)) {
            let (k, v) = row?;
            let key = k[DATA_PREFIX.len()..].to_vec();
            if after.is_some_and(|a| key.as_slice() <= a) {
                continue;
            }
            out.push((key, v.to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

fn data_key(key: &[u8]) -> Vec<u8> {
    [DATA_PREFIX, key].concat()
}

struct SledBatch {
    tree: sled::Tree,
    checkpoint: u64,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

#[async_trait]
impl ViewTx for SledBatch {
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EsError> {
        let k = data_key(key);
        if let Some(v) = self.writes.get(&k) {
            return Ok(v.clone());
        }
        Ok(self.tree.get(k)?.map(|v| v.to_vec()))
    }

    fn put(&mut self, key: &[u8], value: Vec<u8>) {
        self.writes.insert(data_key(key), Some(value));
    }

    fn delete(&mut self, key: &[u8]) {
        self.writes.insert(data_key(key), None);
    }
}

#[async_trait]
impl ViewBatch for SledBatch {
    fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    async fn commit(self: Box<Self>, checkpoint: u64) -> Result<(), EsError> {
        let mut batch = sled::Batch::default();
        for (k, v) in self.writes {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        batch.insert(CHECKPOINT_KEY, &be(checkpoint));
        self.tree.apply_batch(batch)?;
        Ok(())
    }
}

/// Upcasts events to the versions the definition declares.
#[derive(Debug, Clone)]
struct Decoder {
    upcasters: Upcasters,
    versions: HashMap<String, u32>,
}

impl Decoder {
    fn upcast(&self, e: RecordedEvent) -> Result<RecordedEvent, EsError> {
        match self.versions.get(&e.event_type) {
            Some(v) => self.upcasters.upcast(e, *v),
            None => Ok(e),
        }
    }
}

/// How far a projection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionStatus {
    /// Name.
    pub name: String,
    /// The generation readers see.
    pub generation: u64,
    /// Position of the last event applied to it.
    pub checkpoint: u64,
    /// Events of the aggregate stored after the checkpoint: the lag.
    pub lag: u64,
    /// Whether a rebuild is under way.
    pub rebuilding: bool,
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    /// The generation now live.
    pub generation: u64,
    /// Its checkpoint at the switch.
    pub checkpoint: u64,
    /// How long it took.
    pub took: Duration,
}

enum Control {
    Status(oneshot::Sender<Result<ProjectionStatus, EsError>>),
    Rebuild(oneshot::Sender<Result<RebuildReport, EsError>>),
}

/// Feeds one projection from the store into its sled view.
pub struct ProjectionRunner {
    store: Arc<dyn EventStore>,
    views: Arc<dyn ViewStore>,
    projection: Arc<dyn Projection>,
    aggregate: String,
    decoder: Decoder,
}

impl std::fmt::Debug for ProjectionRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("projection", &self.projection.name())
            .field("aggregate", &self.aggregate)
            .finish_non_exhaustive()
    }
}

/// Talks to a running [`ProjectionRunner`].
#[derive(Debug, Clone)]
pub struct ProjectionHandle {
    control: mpsc::Sender<Control>,
}

fn stopped() -> EsError {
    EsError::new(ErrorKind::Unavailable, "the projection runner has stopped")
}

impl ProjectionHandle {
    /// Checkpoint, lag and generation.
    pub async fn status(&self) -> Result<ProjectionStatus, EsError> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::Status(tx))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Rebuilds blue/green and returns once readers see the new generation.
    pub async fn rebuild(&self) -> Result<RebuildReport, EsError> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::Rebuild(tx))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

impl ProjectionRunner {
    /// A runner for `projection`, which must be declared in `definition` (its sources
    /// are checked against it). `upcasters` bring old events to the declared versions.
    pub fn new(
        definition: &AggregateDefinition,
        store: Arc<dyn EventStore>,
        views: impl ViewStore,
        projection: Arc<dyn Projection>,
        upcasters: Upcasters,
    ) -> Result<Self, EsError> {
        let Some(declared) = definition.projection(projection.name()) else {
            return Err(EsError::invalid(format!(
                "{}: projection `{}` is not declared under `projections`",
                definition.name,
                projection.name()
            )));
        };
        if declared.sources != projection.sources() {
            return Err(EsError::invalid(format!(
                "{}: projection `{}` reads {:?} but the definition declares {:?}",
                definition.name,
                projection.name(),
                projection.sources(),
                declared.sources
            )));
        }
        upcasters.check(definition)?;
        Ok(Self {
            store,
            views: Arc::new(views),
            projection,
            aggregate: definition.name.clone(),
            decoder: Decoder {
                upcasters,
                versions: definition
                    .events
                    .iter()
                    .map(|e| (e.name.clone(), e.version))
                    .collect(),
            },
        })
    }

    /// The status without a running runner (e.g. from a tool).
    pub async fn status_of(
        store: &dyn EventStore,
        views: &dyn ViewStore,
        aggregate: &str,
        name: &str,
    ) -> Result<ProjectionStatus, EsError> {
        let generation = views.live_generation(name).await?;
        let checkpoint = views.checkpoint(name, generation).await?;
        Ok(ProjectionStatus {
            name: name.to_string(),
            generation,
            checkpoint,
            lag: store.count_after(aggregate, checkpoint).await?,
            rebuilding: false,
        })
    }

    /// Applies the events after `generation`'s checkpoint up to `until` (a position).
    async fn catch_up(&self, generation: u64, until: u64) -> Result<u64, EsError> {
        let mut checkpoint = self
            .views
            .checkpoint(self.projection.name(), generation)
            .await?;
        if checkpoint >= until {
            return Ok(checkpoint);
        }
        let mut events = self
            .store
            .subscribe(&self.aggregate, checkpoint + 1)
            .await?;
        let mut batch = Vec::with_capacity(BATCH);
        while checkpoint < until {
            let next = tokio::time::timeout(Duration::from_secs(30), events.next())
                .await
                .map_err(|_| {
                    EsError::new(
                        ErrorKind::Unavailable,
                        format!(
                            "catching up {}: no event within 30 s",
                            self.projection.name()
                        ),
                    )
                })?;
            let Some(e) = next else {
                return Err(stopped());
            };
            let e = e?;
            let done = e.position >= until;
            batch.push(e);
            if batch.len() >= BATCH || done {
                checkpoint = apply_events(
                    self.views.as_ref(),
                    self.projection.as_ref(),
                    &self.decoder,
                    generation,
                    &batch,
                )
                .await?;
                batch.clear();
            }
        }
        Ok(checkpoint)
    }

    /// Starts the runner on the current runtime; it stops when `shutdown` turns true.
    pub fn spawn(
        self,
        shutdown: watch::Receiver<bool>,
    ) -> (
        ProjectionHandle,
        tokio::task::JoinHandle<Result<(), EsError>>,
    ) {
        let (tx, rx) = mpsc::channel(16);
        let join = tokio::spawn(self.run(rx, shutdown));
        (ProjectionHandle { control: tx }, join)
    }

    async fn run(
        self,
        mut control: mpsc::Receiver<Control>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), EsError> {
        let this = Arc::new(self);
        let name = this.projection.name().to_string();
        type Rebuild = (
            u64,
            Instant,
            Vec<oneshot::Sender<Result<RebuildReport, EsError>>>,
            tokio::task::JoinHandle<Result<u64, EsError>>,
        );
        let mut rebuild: Option<Rebuild> = None;
        loop {
            let generation = this.views.live_generation(&name).await?;
            let checkpoint = this.views.checkpoint(&name, generation).await?;
            let mut events = this
                .store
                .subscribe(&this.aggregate, checkpoint + 1)
                .await?;
            tracing::debug!(projection = %name, generation, checkpoint, "projection runner started");
            loop {
                tokio::select! {
                    changed = shutdown.changed() => {
                        if changed.is_err() || *shutdown.borrow() {
                            return Ok(());
                        }
                    }
                    next = events.next() => {
                        let Some(first) = next else { return Err(stopped()) };
                        let mut batch = vec![first?];
                        while batch.len() < BATCH {
                            match futures::FutureExt::now_or_never(events.next()) {
                                Some(Some(e)) => batch.push(e?),
                                _ => break,
                            }
                        }
                        apply_events(this.views.as_ref(), this.projection.as_ref(), &this.decoder, generation, &batch).await?;
                    }
                    Some(c) = control.recv() => match c {
                        Control::Status(reply) => {
                            let status = ProjectionRunner::status_of(this.store.as_ref(), this.views.as_ref(), &this.aggregate, &name)
                                .await
                                .map(|s| ProjectionStatus { rebuilding: rebuild.is_some(), ..s });
                            let _ = reply.send(status);
                        }
                        Control::Rebuild(reply) => {
                            if let Some((_, _, waiters, _)) = rebuild.as_mut() {
                                waiters.push(reply);
                                continue;
                            }
                            let next_generation = generation + 1;
                            this.views.clear(&name, next_generation).await?;
                            let head = this.store.head(&this.aggregate).await?;
                            let builder = this.clone();
                            let task = tokio::spawn(async move { builder.catch_up(next_generation, head).await });
                            rebuild = Some((next_generation, Instant::now(), vec![reply], task));
                        }
                    },
                    built = async { rebuild.as_mut().map(|r| &mut r.3).unwrap().await }, if rebuild.is_some() => {
                        let (next_generation, started, waiters, _) = rebuild.take().unwrap();
                        let result = match built {
                            Ok(Ok(_)) => {
                                // The live generation went on meanwhile: bring the new one to the
                                // same event before readers switch.
                                let live = this.views.checkpoint(&name, generation).await?;
                                match this.catch_up(next_generation, live).await {
                                    Ok(at) => this.views.switch(&name, next_generation).await.map(|()| RebuildReport {
                                        generation: next_generation,
                                        checkpoint: at,
                                        took: started.elapsed(),
                                    }),
                                    Err(e) => Err(e),
                                }
                            }
                            Ok(Err(e)) => Err(e),
                            Err(e) => Err(EsError::new(ErrorKind::Unavailable, format!("rebuild task: {e}"))),
                        };
                        let switched = result.is_ok();
                        for w in waiters {
                            let _ = w.send(match &result {
                                Ok(r) => Ok(r.clone()),
                                Err(e) => Err(EsError::new(e.kind(), e.to_string())),
                            });
                        }
                        if switched {
                            tracing::info!(projection = %name, generation = next_generation, "projection rebuilt and switched");
                            break;
                        }
                    }
                }
            }
        }
    }
}
