//! In-memory twins of every port (feature `test-util`), for unit tests without a
//! broker or a disk. They keep the semantics that matter: dedupe by message id, fenced
//! journal appends, atomic commits, ack bookkeeping.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::*;

/// Records every published message; deduplicates by `msg_id`; can be told to fail.
#[derive(Debug, Default, Clone)]
pub struct MemoryPublisher {
    inner: Arc<Mutex<PublisherInner>>,
    seq: Arc<AtomicU64>,
    fail_next: Arc<AtomicUsize>,
    /// Payloads over this many bytes are refused for good (0: no limit), as a broker's
    /// `max_payload` is.
    max_payload: Arc<AtomicUsize>,
}

#[derive(Debug, Default)]
struct PublisherInner {
    messages: Vec<OutgoingMessage>,
    ids: HashMap<String, u64>,
}

impl MemoryPublisher {
    /// Every stored message (duplicates excluded), in order.
    pub fn messages(&self) -> Vec<OutgoingMessage> {
        self.inner.lock().unwrap().messages.clone()
    }

    /// Stored messages whose subject starts with `prefix`.
    pub fn on(&self, prefix: &str) -> Vec<OutgoingMessage> {
        self.messages()
            .into_iter()
            .filter(|m| m.subject.starts_with(prefix))
            .collect()
    }

    /// The next `n` publishes fail as unavailable.
    pub fn fail_next(&self, n: usize) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// Refuses payloads over `bytes` as `Rejected` (a broker's `max_payload`).
    pub fn max_payload(&self, bytes: usize) {
        self.max_payload.store(bytes, Ordering::SeqCst);
    }
}

#[async_trait]
impl Publisher for MemoryPublisher {
    async fn publish_new(&self, msg: &OutgoingMessage) -> Result<PublishAck, PortError> {
        let existing = self
            .inner
            .lock()
            .unwrap()
            .messages
            .iter()
            .any(|m| m.subject == msg.subject);
        if existing {
            return Ok(PublishAck {
                stream: "MEMORY".into(),
                sequence: 0,
                duplicate: true,
            });
        }
        self.publish(msg).await
    }

    async fn publish(&self, msg: &OutgoingMessage) -> Result<PublishAck, PortError> {
        if self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(PortError::Unavailable("injected failure".into()));
        }
        let max = self.max_payload.load(Ordering::SeqCst);
        if max > 0 && msg.payload.len() > max {
            return Err(PortError::Rejected(format!(
                "maximum payload exceeded: {} bytes over {max}",
                msg.payload.len()
            )));
        }
        let mut inner = self.inner.lock().unwrap();
        if let Some(seq) = inner.ids.get(&msg.msg_id) {
            return Ok(PublishAck {
                stream: "MEMORY".into(),
                sequence: *seq,
                duplicate: true,
            });
        }
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        inner.ids.insert(msg.msg_id.clone(), seq);
        inner.messages.push(msg.clone());
        Ok(PublishAck {
            stream: "MEMORY".into(),
            sequence: seq,
            duplicate: false,
        })
    }
}

/// A journal with JetStream's fencing: append only at the expected last sequence.
#[derive(Debug, Default, Clone)]
pub struct MemoryJournal {
    inner: Arc<Mutex<JournalInner>>,
}

#[derive(Debug, Default)]
struct JournalInner {
    seq: u64,
    subjects: BTreeMap<String, Vec<(u64, String, Vec<u8>)>>,
}

fn journal_subject(saga_type: &str, saga_id: &str) -> String {
    format!("saga.journal.{saga_type}.{saga_id}")
}

impl MemoryJournal {
    /// Every record of every saga, by subject.
    pub fn subjects(&self) -> BTreeMap<String, Vec<Vec<u8>>> {
        self.inner
            .lock()
            .unwrap()
            .subjects
            .iter()
            .map(|(s, v)| (s.clone(), v.iter().map(|(_, _, p)| p.clone()).collect()))
            .collect()
    }
}

#[async_trait]
impl Journal for MemoryJournal {
    async fn append(&self, a: &JournalAppend, expected_last: u64) -> Result<PublishAck, PortError> {
        let mut inner = self.inner.lock().unwrap();
        let subject = journal_subject(&a.saga_type, &a.saga_id);
        let records = inner.subjects.entry(subject.clone()).or_default();
        if let Some((seq, _, _)) = records.iter().find(|(_, id, _)| *id == a.msg_id) {
            return Ok(PublishAck {
                stream: "SAGA_JOURNAL".into(),
                sequence: *seq,
                duplicate: true,
            });
        }
        let last = records.last().map(|(s, _, _)| *s).unwrap_or(0);
        if last != expected_last {
            return Err(PortError::Fenced {
                subject,
                expected: expected_last,
                detail: format!("last sequence is {last}"),
            });
        }
        inner.seq += 1;
        let seq = inner.seq;
        inner
            .subjects
            .get_mut(&subject)
            .expect("entry made above")
            .push((seq, a.msg_id.clone(), a.payload.clone()));
        Ok(PublishAck {
            stream: "SAGA_JOURNAL".into(),
            sequence: seq,
            duplicate: false,
        })
    }

    async fn last(
        &self,
        saga_type: &str,
        saga_id: &str,
    ) -> Result<Option<JournalRecord>, PortError> {
        Ok(self.read(saga_type, saga_id).await?.pop())
    }

    async fn read(&self, saga_type: &str, saga_id: &str) -> Result<Vec<JournalRecord>, PortError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .subjects
            .get(&journal_subject(saga_type, saga_id))
            .map(|v| {
                v.iter()
                    .map(|(s, _, p)| JournalRecord {
                        sequence: *s,
                        payload: p.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// How a delivery was settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Acked.
    Ack,
    /// Negatively acked, with the delay.
    Nak(Option<Duration>),
    /// Terminated.
    Term,
}

/// Records settlements by stream sequence.
#[derive(Debug, Clone)]
pub struct MemoryAcker {
    sequence: u64,
    log: Arc<Mutex<Vec<(u64, Settled)>>>,
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(&self) -> Result<(), PortError> {
        self.log.lock().unwrap().push((self.sequence, Settled::Ack));
        Ok(())
    }
    async fn nak(&self, delay: Option<Duration>) -> Result<(), PortError> {
        self.log
            .lock()
            .unwrap()
            .push((self.sequence, Settled::Nak(delay)));
        Ok(())
    }
    async fn term(&self) -> Result<(), PortError> {
        self.log
            .lock()
            .unwrap()
            .push((self.sequence, Settled::Term));
        Ok(())
    }
    async fn in_progress(&self) -> Result<(), PortError> {
        Ok(())
    }
}

/// A consumer fed by a test through [`MemoryFeed`].
#[derive(Debug)]
pub struct MemoryConsumer {
    rx: mpsc::UnboundedReceiver<Delivery>,
}

/// The test's side of a [`MemoryConsumer`].
#[derive(Debug, Clone)]
pub struct MemoryFeed {
    tx: mpsc::UnboundedSender<Delivery>,
    seq: Arc<AtomicU64>,
    log: Arc<Mutex<Vec<(u64, Settled)>>>,
}

/// A connected consumer and feed.
pub fn memory_consumer() -> (MemoryFeed, MemoryConsumer) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        MemoryFeed {
            tx,
            seq: Arc::default(),
            log: Arc::default(),
        },
        MemoryConsumer { rx },
    )
}

impl MemoryFeed {
    /// Delivers a message; returns its stream sequence.
    pub fn deliver(&self, subject: &str, headers: Headers, payload: Vec<u8>) -> u64 {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.redeliver(seq, subject, headers, payload, 1);
        seq
    }

    /// Delivers a message again with the same stream sequence.
    pub fn redeliver(
        &self,
        seq: u64,
        subject: &str,
        headers: Headers,
        payload: Vec<u8>,
        delivered: u64,
    ) {
        let _ = self.tx.send(Delivery {
            subject: subject.into(),
            headers,
            payload,
            stream: "MEMORY".into(),
            stream_sequence: seq,
            delivered,
            consumer: "memory".into(),
            acker: Box::new(MemoryAcker {
                sequence: seq,
                log: self.log.clone(),
            }),
        });
    }

    /// Settlements so far.
    pub fn settled(&self) -> Vec<(u64, Settled)> {
        self.log.lock().unwrap().clone()
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, PortError> {
        let mut out = Vec::new();
        match tokio::time::timeout(wait, self.rx.recv()).await {
            Ok(Some(d)) => out.push(d),
            Ok(None) => return Err(PortError::Unavailable("feed closed".into())),
            Err(_) => return Ok(out),
        }
        while out.len() < max {
            match self.rx.try_recv() {
                Ok(d) => out.push(d),
                Err(_) => break,
            }
        }
        Ok(out)
    }
}

/// A store in memory; `flush` counts calls (to check grouping).
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<StoreInner>>,
    flushes: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct StoreInner {
    sagas: BTreeMap<String, StoredSaga>,
    outbox: BTreeMap<String, Vec<OutboxEntry>>,
    next_position: u64,
}

impl MemoryStore {
    /// Flushes so far.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl SagaStore for MemoryStore {
    fn commit(&self, c: &Commit) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let id = c.saga.state.saga_id.to_string();
        inner.sagas.insert(id.clone(), c.saga.clone());
        let mut added = Vec::new();
        for item in &c.outbox {
            inner.next_position += 1;
            let e = OutboxEntry {
                position: inner.next_position,
                item: item.clone(),
            };
            added.push(e.clone());
            inner.outbox.entry(id.clone()).or_default().push(e);
        }
        Ok(added)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn load(&self, saga_id: &str) -> Result<Option<StoredSaga>, StoreError> {
        Ok(self.inner.lock().unwrap().sagas.get(saga_id).cloned())
    }

    fn active(&self) -> Result<Vec<StoredSaga>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .sagas
            .iter()
            .filter(|(id, s)| {
                !s.state.status.is_terminal()
                    || inner.outbox.get(*id).is_some_and(|o| !o.is_empty())
            })
            .map(|(_, s)| s.clone())
            .collect())
    }

    fn outbox(&self, saga_id: &str) -> Result<Vec<OutboxEntry>, StoreError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .outbox
            .get(saga_id)
            .cloned()
            .unwrap_or_default())
    }

    fn outbox_done(
        &self,
        saga_id: &str,
        position: u64,
        journal_sequence: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap();
        if let Some(o) = inner.outbox.get_mut(saga_id) {
            o.retain(|e| e.position != position);
        }
        if let (Some(seq), Some(s)) = (journal_sequence, inner.sagas.get_mut(saga_id)) {
            s.journal_sequence = seq;
        }
        Ok(())
    }

    fn forget(&self, saga_id: &str) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap();
        inner.sagas.remove(saga_id);
        inner.outbox.remove(saga_id);
        Ok(())
    }
}

/// The open-saga index in memory.
#[derive(Debug, Default, Clone)]
pub struct MemoryOpenSagas {
    inner: Arc<Mutex<BTreeMap<u32, BTreeMap<String, String>>>>,
    fail_next: Arc<AtomicUsize>,
}

impl MemoryOpenSagas {
    /// The next `n` calls fail as unavailable.
    pub fn fail_next(&self, n: usize) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    fn failing(&self) -> Result<(), PortError> {
        match self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        {
            Ok(_) => Err(PortError::Unavailable("injected failure".into())),
            Err(_) => Ok(()),
        }
    }
}

#[async_trait]
impl OpenSagas for MemoryOpenSagas {
    async fn open(&self, partition: u32, saga_type: &str, saga_id: &str) -> Result<(), PortError> {
        self.failing()?;
        self.inner
            .lock()
            .unwrap()
            .entry(partition)
            .or_default()
            .insert(saga_id.to_string(), saga_type.to_string());
        Ok(())
    }

    async fn close(
        &self,
        partition: u32,
        _saga_type: &str,
        saga_id: &str,
    ) -> Result<(), PortError> {
        self.failing()?;
        if let Some(p) = self.inner.lock().unwrap().get_mut(&partition) {
            p.remove(saga_id);
        }
        Ok(())
    }

    async fn list(&self, partition: u32) -> Result<Vec<(String, String)>, PortError> {
        self.failing()?;
        Ok(self
            .inner
            .lock()
            .unwrap()
            .get(&partition)
            .map(|p| p.iter().map(|(id, t)| (t.clone(), id.clone())).collect())
            .unwrap_or_default())
    }
}

/// Definition versions in memory; registration times count up from 1.
#[derive(Debug, Default, Clone)]
pub struct MemoryDefinitionRegistry {
    inner: Arc<Mutex<RegistryInner>>,
}

#[derive(Debug, Default)]
struct RegistryInner {
    versions: BTreeMap<(String, String), RegisteredVersion>,
    latest: BTreeMap<String, String>,
    clock: u64,
}

#[async_trait]
impl DefinitionRegistry for MemoryDefinitionRegistry {
    async fn register(
        &self,
        saga_type: &str,
        digest: &str,
        source: &str,
    ) -> Result<bool, PortError> {
        let mut inner = self.inner.lock().unwrap();
        let key = (saga_type.to_string(), digest.to_string());
        if inner.versions.contains_key(&key) {
            return Ok(false);
        }
        inner.clock += 1;
        let registered_at = inner.clock;
        inner.versions.insert(
            key,
            RegisteredVersion {
                saga_type: saga_type.to_string(),
                digest: digest.to_string(),
                source: source.to_string(),
                registered_at,
            },
        );
        Ok(true)
    }

    async fn set_latest(&self, saga_type: &str, digest: &str) -> Result<(), PortError> {
        self.inner
            .lock()
            .unwrap()
            .latest
            .insert(saga_type.to_string(), digest.to_string());
        Ok(())
    }

    async fn latest(&self, saga_type: &str) -> Result<Option<String>, PortError> {
        Ok(self.inner.lock().unwrap().latest.get(saga_type).cloned())
    }

    async fn get(
        &self,
        saga_type: &str,
        digest: &str,
    ) -> Result<Option<RegisteredVersion>, PortError> {
        let key = (saga_type.to_string(), digest.to_string());
        Ok(self.inner.lock().unwrap().versions.get(&key).cloned())
    }

    async fn list(&self) -> Result<Vec<RegisteredVersion>, PortError> {
        let mut all: Vec<_> = self
            .inner
            .lock()
            .unwrap()
            .versions
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| (&a.saga_type, a.registered_at).cmp(&(&b.saga_type, b.registered_at)));
        Ok(all)
    }
}

/// Inputs still stored, set by a test: what [`WaitingInputs::waiting`] finds.
#[derive(Debug, Clone, Default)]
pub struct MemoryWaitingInputs {
    stored: Arc<Mutex<Vec<Waiting>>>,
}

#[derive(Debug, Clone)]
struct Waiting {
    partition: u32,
    saga_id: String,
    message: OutgoingMessage,
    sequence: u64,
}

impl MemoryWaitingInputs {
    /// Stores `message` for saga `saga_id` of `partition`, with stream sequence `sequence`.
    pub fn store(&self, partition: u32, saga_id: &str, message: &OutgoingMessage, sequence: u64) {
        self.stored.lock().unwrap().push(Waiting {
            partition,
            saga_id: saga_id.into(),
            message: message.clone(),
            sequence,
        });
    }
}

#[async_trait]
impl WaitingInputs for MemoryWaitingInputs {
    async fn waiting(
        &self,
        partition: u32,
        saga_id: &str,
        max: usize,
    ) -> Result<Vec<Delivery>, PortError> {
        let stored = self.stored.lock().unwrap();
        Ok(stored
            .iter()
            .filter(|w| w.partition == partition && w.saga_id == saga_id)
            .take(max)
            .map(|w| Delivery {
                subject: w.message.subject.clone(),
                headers: w.message.headers.clone(),
                payload: w.message.payload.clone(),
                stream: "MEMORY".into(),
                stream_sequence: w.sequence,
                delivered: 0,
                consumer: String::new(),
                acker: Box::new(DetachedAcker),
            })
            .collect())
    }
}
