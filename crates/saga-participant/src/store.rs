//! The participant's sled database: the inbox (idempotency key -> recorded reply), its
//! time index for pruning, the knob counters, and the handlers' own trees. One
//! transaction per command covers the handler's writes and the inbox record.

use std::path::Path;
use std::time::Duration;

use saga_core::Timestamp;
use saga_proto::{step_reply, Message, StepCommand, StepOk, StepReply};
use sled::transaction::{abort, TransactionError, Transactional};
use sled::{Db, IVec, Tree};

use crate::handler::{Abort, Handler, Reply, Tx};
use crate::knobs::CrashAfterEffect;
use crate::ParticipantError;

/// Inbox: `<service> 0x1f <do|undo> 0x1f <idempotency key>` -> `recorded_at (u64 BE) ++ StepReply`.
pub const INBOX_TREE: &str = "saga_inbox";
/// `recorded_at (u64 BE) ++ inbox key` -> empty: the inbox ordered by age, for pruning.
pub const INBOX_BY_TIME_TREE: &str = "saga_inbox_by_time";
/// `crash-after-effect/<action>` -> crashes so far (u64 BE).
pub const KNOBS_TREE: &str = "saga_knobs";

const RESERVED: [&str; 3] = [INBOX_TREE, INBOX_BY_TIME_TREE, KNOBS_TREE];

/// A participant's sled database. Cheap to clone (one `Db` inside).
#[derive(Debug, Clone)]
pub struct ParticipantStore {
    db: Db,
    inbox: Tree,
    by_time: Tree,
    knobs: Tree,
}

/// The trees one service's transactions span: the SDK's three, then the handler's.
#[derive(Debug)]
pub(crate) struct ServiceTrees {
    all: Vec<Tree>,
    names: Vec<String>,
}

/// One command to execute, and how.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run<'a> {
    pub(crate) service: &'a str,
    pub(crate) cmd: &'a StepCommand,
    pub(crate) now: Timestamp,
    pub(crate) window: Duration,
    pub(crate) crash: Option<&'a CrashAfterEffect>,
    /// What [`Handler::prepare`] answered.
    pub(crate) prepared: Option<&'a Reply>,
}

/// What one command's transaction decided.
#[derive(Debug)]
pub(crate) enum Executed {
    /// The inbox already held a reply within the window: nothing ran.
    Recorded(StepReply),
    /// The handler ran; its writes and this reply are committed (not yet flushed).
    New {
        /// The recorded reply.
        reply: StepReply,
        /// The crash knob fired for this effect.
        crash: bool,
    },
    /// The handler answered a technical failure; everything was rolled back.
    Technical(String),
}

/// What [`ParticipantStore::apply`] did with a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The handler ran; its writes and this reply are committed.
    Executed(StepReply),
    /// The inbox answered with the reply recorded earlier; the handler did not run.
    Recorded(StepReply),
    /// The handler answered a technical failure; nothing was written.
    TechnicalFailure(String),
    /// The handler asked for a retry (`Abort::Retry`) or sled failed; nothing written.
    Retry(String),
    /// The command can never be handled (`Abort::Reject`); nothing written.
    Rejected(String),
}

impl Applied {
    /// The reply, when one was executed or recorded.
    pub fn reply(&self) -> Option<&StepReply> {
        match self {
            Self::Executed(r) | Self::Recorded(r) => Some(r),
            _ => None,
        }
    }
}

/// Why a transaction committed nothing.
#[derive(Debug)]
pub(crate) enum ExecError {
    /// Transient (handler `Abort::Retry`, or sled failed): nak with backoff.
    Retry(String),
    /// Never handleable: dead-letter at once.
    Reject(String),
}

#[derive(Debug, Clone)]
enum TxAbort {
    Technical(String),
    Retry(String),
    Reject(String),
}

/// The largest step result a handler may return (encoded): later commands of the saga
/// carry it.
pub const MAX_RESULT_BYTES: usize = 16 * 1024;

/// How long [`ParticipantStore::open`] waits for a lock that a handle of this process
/// is releasing.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// sled reports a held directory lock as an `Io` error of kind `Other`.
fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

impl ParticipantStore {
    /// Opens (or creates) the database in `dir`. Fails when another process holds it.
    ///
    /// A handle dropped in this process releases the directory's lock only when sled's
    /// flusher thread lets go of it, a moment later; a lock held that way is waited
    /// for (up to [`LOCK_WAIT`]) rather than reported.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, ParticipantError> {
        let dir = dir.as_ref();
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match sled::Config::new().path(dir).open() {
                Ok(db) => return Self::from_db(db),
                Err(e) if is_lock_error(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A throwaway database (deleted on drop): for tests.
    pub fn temporary() -> Result<Self, ParticipantError> {
        Self::from_db(sled::Config::new().temporary(true).open()?)
    }

    /// Uses an open database (its trees keep their contents).
    pub fn from_db(db: Db) -> Result<Self, ParticipantError> {
        Ok(Self {
            inbox: db.open_tree(INBOX_TREE)?,
            by_time: db.open_tree(INBOX_BY_TIME_TREE)?,
            knobs: db.open_tree(KNOBS_TREE)?,
            db,
        })
    }

    /// The database (handlers' trees are read through it, e.g. by reports and tests).
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Makes every commit so far durable.
    pub async fn flush(&self) -> Result<(), ParticipantError> {
        // sled 0.34's `flush_async` can hang when polled concurrently (sled issue
        // #1308), which commands in flight do: a blocking flush on the blocking pool.
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| std::io::Error::other(format!("flush task: {e}")))
            .map_err(sled::Error::Io)??;
        Ok(())
    }

    /// Replies currently recorded.
    pub fn inbox_len(&self) -> usize {
        self.inbox.len()
    }

    /// How many times the crash knob fired for `action`.
    pub fn crashes(&self, action: &str) -> Result<u64, ParticipantError> {
        Ok(self
            .knobs
            .get(crash_key(action))?
            .map(|v| read_u64(&v))
            .transpose()?
            .unwrap_or(0))
    }

    /// Forgets replies recorded before `before`; returns how many.
    pub fn prune_inbox(&self, before: Timestamp) -> Result<usize, ParticipantError> {
        let mut pruned = 0;
        for entry in self.by_time.range(..before.to_be_bytes().to_vec()) {
            let (index_key, _) = entry?;
            let (at, inbox_key) = index_key.split_at(8);
            let at = read_u64(at)?;
            let inbox_key = IVec::from(inbox_key);
            let removed = (&self.inbox, &self.by_time)
                .transaction(|(inbox, by_time)| {
                    by_time.remove(&index_key)?;
                    // A re-recorded reply has a newer index entry: keep it.
                    match inbox.get(&inbox_key)? {
                        Some(v) if v.len() >= 8 && read_u64(&v[..8]).ok() == Some(at) => {
                            inbox.remove(&inbox_key)?;
                            Ok(true)
                        }
                        _ => Ok(false),
                    }
                })
                .map_err(|e: TransactionError| match e {
                    TransactionError::Abort(e) | TransactionError::Storage(e) => e,
                })?;
            pruned += usize::from(removed);
        }
        Ok(pruned)
    }

    /// Runs one command through the inbox and `handler` in one transaction, as the
    /// participant loop does, but flushes nothing and publishes nothing: for handler
    /// tests and tools. `window` is the inbox window. [`Handler::prepare`] is not run:
    /// use [`ParticipantStore::apply_prepared`] for a handler that needs it.
    pub fn apply(
        &self,
        service: &str,
        handler: &dyn Handler,
        cmd: &StepCommand,
        now: Timestamp,
        window: Duration,
    ) -> Result<Applied, ParticipantError> {
        self.apply_with(service, handler, cmd, now, window, None)
    }

    /// [`ParticipantStore::apply`] preceded, when the inbox does not answer, by
    /// [`Handler::prepare`] (as the participant loop runs it).
    pub async fn apply_prepared(
        &self,
        service: &str,
        handler: &dyn Handler,
        cmd: &StepCommand,
        now: Timestamp,
        window: Duration,
    ) -> Result<Applied, ParticipantError> {
        if let Some(reply) = self.lookup(&inbox_key(service, cmd), now, window)? {
            return Ok(Applied::Recorded(reply));
        }
        let prepared = match handler.prepare(cmd, now).await {
            Ok(p) => p,
            Err(Abort::Reject(reason)) => return Ok(Applied::Rejected(reason)),
            Err(e) => return Ok(Applied::Retry(e.to_string())),
        };
        self.apply_with(service, handler, cmd, now, window, prepared.as_ref())
    }

    fn apply_with(
        &self,
        service: &str,
        handler: &dyn Handler,
        cmd: &StepCommand,
        now: Timestamp,
        window: Duration,
        prepared: Option<&Reply>,
    ) -> Result<Applied, ParticipantError> {
        let trees = self.service_trees(handler)?;
        let run = Run {
            service,
            cmd,
            now,
            window,
            crash: None,
            prepared,
        };
        Ok(match self.execute(&trees, handler, &run) {
            Ok(Executed::Recorded(reply)) => Applied::Recorded(reply),
            Ok(Executed::New { reply, .. }) => Applied::Executed(reply),
            Ok(Executed::Technical(reason)) => Applied::TechnicalFailure(reason),
            Err(ExecError::Retry(reason)) => Applied::Retry(reason),
            Err(ExecError::Reject(reason)) => Applied::Rejected(reason),
        })
    }

    /// Opens the SDK's and the handler's trees for one service.
    pub(crate) fn service_trees(
        &self,
        handler: &dyn Handler,
    ) -> Result<ServiceTrees, ParticipantError> {
        let mut all = vec![self.inbox.clone(), self.by_time.clone(), self.knobs.clone()];
        let mut names = Vec::new();
        for name in handler.trees() {
            if RESERVED.contains(name) {
                return Err(ParticipantError::Config(format!(
                    "tree `{name}` is reserved for the participant SDK"
                )));
            }
            all.push(self.db.open_tree(name)?);
            names.push((*name).to_string());
        }
        Ok(ServiceTrees { all, names })
    }

    /// The recorded reply for `key`, if recorded within `window` before `now`.
    pub(crate) fn lookup(
        &self,
        key: &[u8],
        now: Timestamp,
        window: Duration,
    ) -> Result<Option<StepReply>, ParticipantError> {
        match self.inbox.get(key)? {
            Some(v) => fresh_reply(&v, now, window),
            None => Ok(None),
        }
    }

    /// Runs the handler and records its reply in one transaction, unless the inbox
    /// already answers the command.
    pub(crate) fn execute(
        &self,
        trees: &ServiceTrees,
        handler: &dyn Handler,
        run: &Run<'_>,
    ) -> Result<Executed, ExecError> {
        let Run {
            service,
            cmd,
            now,
            window,
            crash,
            prepared,
        } = *run;
        let key = inbox_key(service, cmd);
        let result = trees.all[..].transaction(|views| {
            let (inbox, by_time, knobs) = (&views[0], &views[1], &views[2]);
            let previous = inbox.get(&key)?;
            if let Some(prev) = &previous {
                match fresh_reply(prev, now, window) {
                    Ok(Some(reply)) => return Ok(Executed::Recorded(reply)),
                    Ok(None) => {}
                    Err(e) => return abort(TxAbort::Reject(e.to_string())),
                }
            }
            let tx = Tx::new(now, &trees.names, &views[3..], inbox).with_prepared(prepared);
            let reply = match handler.handle(&tx, cmd) {
                Ok(Reply::TechnicalFailure(reason)) => return abort(TxAbort::Technical(reason)),
                // Every later command carries the result: one too large would make them
                // too large for the broker. Nothing the handler wrote is kept.
                Ok(Reply::Ok(result)) if result.encoded_len() > MAX_RESULT_BYTES => {
                    return abort(TxAbort::Technical(format!(
                        "the result of {} is {} bytes, over the limit of {MAX_RESULT_BYTES}; \
                         return a reference to the data rather than the data",
                        cmd.action,
                        result.encoded_len()
                    )))
                }
                Ok(reply) => reply,
                Err(Abort::Store(e)) => return Err(e.into()),
                Err(Abort::Retry(r)) => return abort(TxAbort::Retry(r)),
                Err(Abort::Reject(r)) => return abort(TxAbort::Reject(r)),
            };
            let reply = step_reply(service, cmd, now, outcome(reply));
            if let Some(prev) = &previous {
                let mut old_index = prev[..8.min(prev.len())].to_vec();
                old_index.extend_from_slice(&key);
                by_time.remove(old_index)?;
            }
            let mut value = now.to_be_bytes().to_vec();
            value.extend_from_slice(&reply.encode_to_vec());
            inbox.insert(key.as_slice(), value)?;
            let mut index = now.to_be_bytes().to_vec();
            index.extend_from_slice(&key);
            by_time.insert(index, IVec::default())?;
            let mut crashed = false;
            if let Some(c) = crash.filter(|c| c.action == cmd.action) {
                let ck = crash_key(&c.action);
                let so_far = match knobs.get(&ck)? {
                    Some(v) => match read_u64(&v) {
                        Ok(n) => n,
                        Err(e) => return abort(TxAbort::Reject(e.to_string())),
                    },
                    None => 0,
                };
                if c.times.is_none_or(|n| so_far < n) {
                    knobs.insert(ck, (so_far + 1).to_be_bytes().to_vec())?;
                    crashed = true;
                }
            }
            Ok(Executed::New {
                reply,
                crash: crashed,
            })
        });
        match result {
            Ok(done) => Ok(done),
            Err(TransactionError::Abort(TxAbort::Technical(r))) => Ok(Executed::Technical(r)),
            Err(TransactionError::Abort(TxAbort::Retry(r))) => Err(ExecError::Retry(r)),
            Err(TransactionError::Abort(TxAbort::Reject(r))) => Err(ExecError::Reject(r)),
            Err(TransactionError::Storage(e)) => Err(ExecError::Retry(format!("store: {e}"))),
        }
    }
}

/// The inbox key of a command: per service, per direction (do/undo), per idempotency
/// key (which already names the action).
pub(crate) fn inbox_key(service: &str, cmd: &StepCommand) -> Vec<u8> {
    let kind = if cmd.compensation { "undo" } else { "do" };
    format!("{service}\u{1f}{kind}\u{1f}{}", cmd.idempotency_key).into_bytes()
}

fn crash_key(action: &str) -> Vec<u8> {
    format!("crash-after-effect/{action}").into_bytes()
}

fn read_u64(bytes: &[u8]) -> Result<u64, ParticipantError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| {
        ParticipantError::Corrupted(format!("expected 8 bytes, found {}", bytes.len()))
    })?;
    Ok(u64::from_be_bytes(arr))
}

fn fresh_reply(
    value: &[u8],
    now: Timestamp,
    window: Duration,
) -> Result<Option<StepReply>, ParticipantError> {
    if value.len() < 8 {
        return Err(ParticipantError::Corrupted("inbox record too short".into()));
    }
    let recorded_at = read_u64(&value[..8])?;
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    if now.saturating_sub(recorded_at) >= window_ms {
        return Ok(None);
    }
    StepReply::decode(&value[8..])
        .map(Some)
        .map_err(|e| ParticipantError::Corrupted(format!("inbox reply: {e}")))
}

pub(crate) fn outcome(reply: Reply) -> step_reply::Outcome {
    match reply {
        Reply::Ok(result) => step_reply::Outcome::Ok(StepOk {
            result: Some(result),
        }),
        Reply::BusinessFailure(reason) => {
            step_reply::Outcome::BusinessFailure(saga_proto::BusinessFailure { reason })
        }
        Reply::TechnicalFailure(reason) => {
            step_reply::Outcome::TechnicalFailure(saga_proto::TechnicalFailure { reason })
        }
    }
}

/// The reply to `cmd`.
pub(crate) fn step_reply(
    service: &str,
    cmd: &StepCommand,
    now: Timestamp,
    outcome: step_reply::Outcome,
) -> StepReply {
    StepReply {
        saga_id: cmd.saga_id.clone(),
        step: cmd.step.clone(),
        attempt: cmd.attempt,
        idempotency_key: cmd.idempotency_key.clone(),
        compensation: cmd.compensation,
        outcome: Some(outcome),
        service: service.to_string(),
        replied_at: Some(saga_proto::timestamp(now)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_can_be_reopened_right_after_its_handle_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..500u32 {
            let store = ParticipantStore::open(dir.path()).unwrap();
            store.db().insert(i.to_be_bytes(), &[]).unwrap();
            store.db().flush().unwrap();
        }
        let store = ParticipantStore::open(dir.path()).unwrap();
        assert_eq!(store.db().len(), 500);
    }

    #[test]
    fn a_directory_held_by_a_live_handle_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _held = ParticipantStore::open(dir.path()).unwrap();
        let Err(err) = ParticipantStore::open(dir.path()) else {
            panic!("a held directory was opened twice");
        };
        assert!(err.to_string().contains("could not acquire lock"), "{err}");
    }
}
