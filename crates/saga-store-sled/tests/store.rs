//! The sled store as the runtime sees it: through the `SagaStore` port, on a real
//! directory, across reopen.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use saga_core::machine::{SagaState, SagaStatus, TimerKey};
use saga_core::SagaId;
use saga_ports::{
    Commit, JournalAppend, OutboxEntry, OutboxItem, OutgoingMessage, SagaStore, StoreError,
    StoredSaga,
};
use saga_store_sled::{layout, SledStore};

fn saga(id: &str, status: SagaStatus, version: u64) -> StoredSaga {
    StoredSaga {
        state: SagaState {
            saga_id: SagaId::parse(id).unwrap(),
            saga_type: "order".into(),
            status,
            current_step: Some(0),
            steps: Vec::new(),
            payload: b"{\"amount\":42}".to_vec(),
            created_at: 1_000,
            updated_at: 1_000 + version,
            deadline_at: Some(90_000),
            compensation_reason: None,
            failure_reason: None,
            version,
            applied_inputs: (1..=version).map(|v| format!("in:{v}")).collect(),
            definition_version: String::new(),
        },
        journal_sequence: 0,
        timers: vec![(TimerKey::deadline(), 90_000)],
    }
}

fn message(subject: &str) -> OutboxItem {
    OutboxItem::Message(OutgoingMessage {
        subject: subject.into(),
        msg_id: format!("{subject}:id"),
        headers: [("Saga-Id".to_string(), "x".to_string())].into(),
        payload: vec![0, 1, 2, 255],
    })
}

fn journal(saga_id: &str, version: u64) -> OutboxItem {
    OutboxItem::Journal(JournalAppend {
        saga_type: "order".into(),
        saga_id: saga_id.into(),
        msg_id: format!("w:{saga_id}:{version}"),
        payload: vec![9; 16],
    })
}

fn commit(saga: StoredSaga, outbox: Vec<OutboxItem>) -> Commit {
    Commit { saga, outbox }
}

fn positions(entries: &[OutboxEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.position).collect()
}

fn corrupted_message(r: Result<impl std::fmt::Debug, StoreError>) -> String {
    match r {
        Err(StoreError::Corrupted(m)) => m,
        other => panic!("expected Corrupted, got {other:?}"),
    }
}

#[tokio::test]
async fn a_flushed_commit_is_all_there_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let a = saga("order-1", SagaStatus::Running, 1);
    let b = saga("order-2", SagaStatus::Pending, 1);

    let (worker, a_entries, b_entries) = {
        let store = SledStore::open(dir.path()).unwrap();
        let a_entries = store
            .commit(&commit(
                a.clone(),
                vec![journal("order-1", 1), message("cmd.pay")],
            ))
            .unwrap();
        let b_entries = store
            .commit(&commit(b.clone(), vec![journal("order-2", 1)]))
            .unwrap();
        store.flush().await.unwrap();
        (store.worker_id().to_string(), a_entries, b_entries)
    };
    assert_eq!(positions(&a_entries), [1, 2]);
    assert_eq!(positions(&b_entries), [3]);
    assert_eq!(a_entries[1].item, message("cmd.pay"));

    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.worker_id(), worker, "identity survives reopen");
    assert_eq!(store.load("order-1").unwrap(), Some(a.clone()));
    assert_eq!(store.load("order-2").unwrap(), Some(b));
    assert_eq!(store.load("order-3").unwrap(), None);
    assert_eq!(store.outbox("order-1").unwrap(), a_entries);
    assert_eq!(store.outbox("order-2").unwrap(), b_entries);
    assert!(store
        .load("order-1")
        .unwrap()
        .unwrap()
        .state
        .applied_inputs
        .contains("in:1"));

    // Positions keep increasing after a restart.
    let more = store.commit(&commit(a, vec![message("cmd.ship")])).unwrap();
    assert_eq!(positions(&more), [4]);
}

#[tokio::test]
async fn outbox_is_ordered_and_done_entries_leave_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    // `order` is a prefix of `order-2`: their outboxes must not mix.
    let mut s = saga("order", SagaStatus::Running, 1);
    store
        .commit(&commit(
            s.clone(),
            vec![journal("order", 1), message("cmd.a")],
        ))
        .unwrap();
    store
        .commit(&commit(
            saga("order-2", SagaStatus::Running, 1),
            vec![message("x")],
        ))
        .unwrap();
    s.state.version = 2;
    store
        .commit(&commit(
            s.clone(),
            vec![journal("order", 2), message("cmd.b")],
        ))
        .unwrap();

    let outbox = store.outbox("order").unwrap();
    assert_eq!(positions(&outbox), [1, 2, 4, 5]);
    assert_eq!(outbox[3].item, message("cmd.b"));
    assert_eq!(positions(&store.outbox("order-2").unwrap()), [3]);

    // Publishing the journal record stores its sequence, in the same transaction.
    store.outbox_done("order", 1, Some(17)).unwrap();
    store.outbox_done("order", 2, None).unwrap();
    assert_eq!(positions(&store.outbox("order").unwrap()), [4, 5]);
    let loaded = store.load("order").unwrap().unwrap();
    assert_eq!(loaded.journal_sequence, 17);
    assert_eq!(loaded.state.version, 2, "the rest of the saga is untouched");

    store.outbox_done("order", 4, Some(18)).unwrap();
    assert_eq!(store.load("order").unwrap().unwrap().journal_sequence, 18);
    // Done twice, or for a saga the store does not hold: nothing happens.
    store
        .outbox_done("order", 4, Some(99))
        .unwrap_or_else(|e| panic!("{e}"));
    store.outbox_done("nobody", 1, Some(5)).unwrap();
    assert_eq!(store.load("nobody").unwrap(), None);
    assert_eq!(positions(&store.outbox("order").unwrap()), [5]);
    assert_eq!(positions(&store.outbox("order-2").unwrap()), [3]);
}

#[tokio::test]
async fn a_relayed_outbox_leaves_in_one_write_and_a_commit_without_outbox_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let s = saga("order", SagaStatus::Running, 1);
    store
        .commit(&commit(
            s.clone(),
            vec![journal("order", 1), message("cmd.a"), message("cmd.b")],
        ))
        .unwrap();
    store
        .commit(&commit(
            saga("order-2", SagaStatus::Running, 1),
            vec![message("x")],
        ))
        .unwrap();

    store.outbox_done_all("order", &[1, 2], Some(21)).unwrap();
    assert_eq!(positions(&store.outbox("order").unwrap()), [3]);
    assert_eq!(store.load("order").unwrap().unwrap().journal_sequence, 21);
    assert_eq!(
        positions(&store.outbox("order-2").unwrap()),
        [4],
        "another saga's outbox"
    );
    // Nothing given: nothing written.
    store.outbox_done_all("order", &[], Some(99)).unwrap();
    assert_eq!(store.load("order").unwrap().unwrap().journal_sequence, 21);

    // A restored copy, its messages already published: the saga is replaced, and what
    // was left in its outbox stays there.
    let mut restored = saga("order", SagaStatus::Running, 2);
    restored.journal_sequence = 30;
    assert!(store
        .commit(&commit(restored, Vec::new()))
        .unwrap()
        .is_empty());
    let loaded = store.load("order").unwrap().unwrap();
    assert_eq!((loaded.state.version, loaded.journal_sequence), (2, 30));
    assert_eq!(positions(&store.outbox("order").unwrap()), [3]);

    // Both survive a reopen once flushed.
    store.flush().await.unwrap();
    drop(store);
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.load("order").unwrap().unwrap().journal_sequence, 30);
    assert_eq!(positions(&store.outbox("order").unwrap()), [3]);

    // The relay's copy, written as it is; nothing for a saga the store let go of.
    let mut relayed = saga("order", SagaStatus::Running, 2);
    relayed.journal_sequence = 31;
    store
        .outbox_done_saga("order", &[3], Some(&relayed))
        .unwrap();
    assert_eq!(store.load("order").unwrap(), Some(relayed.clone()));
    assert!(store.outbox("order").unwrap().is_empty());
    store.forget("order-2").unwrap();
    store
        .outbox_done_saga("order-2", &[4], Some(&relayed))
        .unwrap();
    assert_eq!(store.load("order-2").unwrap(), None);
    // Without an append among them, only the entries leave.
    let again = store
        .commit(&commit(relayed.clone(), vec![message("y")]))
        .unwrap();
    store
        .outbox_done_saga("order", &positions(&again), None)
        .unwrap();
    assert_eq!(store.load("order").unwrap(), Some(relayed));
    assert!(store.outbox("order").unwrap().is_empty());
}

#[tokio::test]
async fn active_is_what_a_restart_must_resume() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let c = |id, status, outbox| commit(saga(id, status, 1), outbox);
    store
        .commit(&c("running", SagaStatus::Running, vec![]))
        .unwrap();
    store
        .commit(&c("compensating", SagaStatus::Compensating, vec![]))
        .unwrap();
    let unpublished = store
        .commit(&c(
            "completed-unpublished",
            SagaStatus::Completed,
            vec![message("evt")],
        ))
        .unwrap();
    let published = store
        .commit(&c(
            "completed-published",
            SagaStatus::Completed,
            vec![message("evt")],
        ))
        .unwrap();
    store
        .outbox_done("completed-published", published[0].position, None)
        .unwrap();
    store
        .commit(&c("failed", SagaStatus::Failed, vec![]))
        .unwrap();
    store
        .commit(&c("compensated", SagaStatus::Compensated, vec![]))
        .unwrap();
    assert_eq!(unpublished.len(), 1);

    let active: BTreeSet<String> = store
        .active()
        .unwrap()
        .into_iter()
        .map(|s| s.state.saga_id.to_string())
        .collect();
    assert_eq!(
        active,
        BTreeSet::from(["running", "compensating", "completed-unpublished"].map(String::from))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_flushes_share_one_sled_flush() {
    const TASKS: usize = 32;
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let before = store.flush_count();

    let tasks: Vec<_> = (0..TASKS)
        .map(|n| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                let id = format!("saga-{n}");
                store
                    .commit(&commit(
                        saga(&id, SagaStatus::Running, 1),
                        vec![message("c")],
                    ))
                    .unwrap();
                barrier.wait().await;
                store.flush().await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let flushes = store.flush_count() - before;
    assert!(flushes <= 2, "{TASKS} callers caused {flushes} flushes");

    // Nothing new: no flush at all.
    store.flush().await.unwrap();
    assert_eq!(store.flush_count() - before, flushes);

    // Actors committing and flushing in a loop, as the runtime does.
    let before = store.flush_count();
    let tasks: Vec<_> = (0..8)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                for v in 0..25 {
                    let id = format!("loop-{n}");
                    let c = commit(saga(&id, SagaStatus::Running, v), vec![]);
                    store.commit(&c).unwrap();
                    store.flush().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "8 tasks x 25 commit+flush: {} sled flushes for 200 flush calls",
        store.flush_count() - before
    );
    assert!(store.flush_count() - before <= 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_keep_every_saga_whole() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(async move {
                    let id = format!("saga-{n}");
                    let mut returned = Vec::new();
                    for v in 1..=50 {
                        let c = commit(
                            saga(&id, SagaStatus::Running, v),
                            vec![journal(&id, v), message("cmd")],
                        );
                        returned.extend(store.commit(&c).unwrap());
                        if v % 10 == 0 {
                            store.flush().await.unwrap();
                        }
                    }
                    store.flush().await.unwrap();
                    returned
                })
            })
            .collect();
        let mut all = BTreeSet::new();
        for (n, t) in tasks.into_iter().enumerate() {
            let returned = t.await.unwrap();
            let stored = store.outbox(&format!("saga-{n}")).unwrap();
            assert_eq!(stored, returned, "saga-{n}: outbox in commit order");
            all.extend(positions(&returned));
        }
        assert_eq!(all.len(), 8 * 100, "positions are unique across the store");
    }

    let store = SledStore::open(dir.path()).unwrap();
    for n in 0..8 {
        let id = format!("saga-{n}");
        assert_eq!(store.load(&id).unwrap().unwrap().state.version, 50);
        let outbox = store.outbox(&id).unwrap();
        assert_eq!(outbox.len(), 100);
        assert!(outbox.windows(2).all(|w| w[0].position < w[1].position));
    }
    assert_eq!(store.active().unwrap().len(), 8);
}

/// Writes `value` under `key` in `tree`, bypassing the store.
fn write_raw(path: &Path, tree: &str, key: &[u8], value: &[u8]) {
    // sled lets go of its file lock shortly after the last handle is dropped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let db = loop {
        match sled::open(path) {
            Ok(db) => break db,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::yield_now();
            }
            Err(e) => panic!("opening {}: {e}", path.display()),
        }
    };
    db.open_tree(tree).unwrap().insert(key, value).unwrap();
    db.flush().unwrap();
}

#[tokio::test]
async fn undecodable_records_are_reported_as_corruption_never_used() {
    let dir = tempfile::tempdir().unwrap();
    let good = saga("good", SagaStatus::Running, 3);
    {
        let store = SledStore::open(dir.path()).unwrap();
        store
            .commit(&commit(good.clone(), vec![message("m")]))
            .unwrap();
        store.flush().await.unwrap();
    }
    write_raw(dir.path(), layout::SAGAS, b"bad-1", b"\xff\x00garbage");

    let store = SledStore::open(dir.path()).unwrap();
    let m = corrupted_message(store.load("bad-1"));
    assert!(m.contains("`sagas`") && m.contains("`bad-1`"), "{m}");
    assert!(m.contains("record format 255"), "{m}");
    let m = corrupted_message(store.active());
    assert!(m.contains("`bad-1`"), "{m}");
    assert_eq!(
        store.load("good").unwrap(),
        Some(good.clone()),
        "other records still load"
    );
    drop(store);

    // Right format byte, broken JSON; and a record filed under another saga's key.
    write_raw(dir.path(), layout::SAGAS, b"bad-1", b"\x01{\"state\":");
    let mut elsewhere = vec![layout::RECORD_FORMAT];
    elsewhere.extend(serde_json::to_vec(&good).unwrap());
    write_raw(dir.path(), layout::SAGAS, b"bad-2", &elsewhere);
    // A truncated outbox entry.
    let mut key = b"good\x00".to_vec();
    key.extend(7u64.to_be_bytes());
    write_raw(dir.path(), layout::OUTBOX, &key, b"\x01[");

    let store = SledStore::open(dir.path()).unwrap();
    let m = corrupted_message(store.load("bad-1"));
    assert!(m.contains("`bad-1`") && m.contains("undecodable"), "{m}");
    let m = corrupted_message(store.load("bad-2"));
    assert!(m.contains("`bad-2`") && m.contains("`good`"), "{m}");
    let m = corrupted_message(store.outbox("good"));
    assert!(m.contains("`outbox`") && m.contains("`good@7`"), "{m}");
    // outbox_done re-encodes the saga: it must not silently replace a corrupted one.
    let m = corrupted_message(store.outbox_done("bad-1", 1, Some(4)));
    assert!(m.contains("`bad-1`"), "{m}");
    drop(store);

    // A store of another layout version is refused, not guessed at.
    write_raw(
        dir.path(),
        layout::META,
        layout::META_FORMAT.as_bytes(),
        &9u64.to_be_bytes(),
    );
    let m = corrupted_message(SledStore::open(dir.path()));
    assert!(m.contains("`meta`") && m.contains("version 9"), "{m}");
}

#[tokio::test]
async fn outbox_payloads_are_stored_as_base64_and_earlier_arrays_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let entry = |position| OutboxEntry {
        position,
        item: journal("order", position),
    };
    let mut key = b"order\x00".to_vec();
    key.extend(1u64.to_be_bytes());
    {
        let store = SledStore::open(dir.path()).unwrap();
        store
            .commit(&commit(
                saga("order", SagaStatus::Running, 1),
                vec![journal("order", 1)],
            ))
            .unwrap();
        store.flush().await.unwrap();
    }
    // As this release writes it: the payload is base64 text, not one number per byte.
    let db = sled::open(dir.path()).unwrap();
    let raw = db
        .open_tree(layout::OUTBOX)
        .unwrap()
        .get(&key)
        .unwrap()
        .unwrap();
    let json = std::str::from_utf8(&raw[1..]).unwrap().to_owned();
    assert!(
        json.contains("\"payload\":\"CQkJCQkJCQkJCQkJCQkJCQ==\""),
        "{json}"
    );
    drop(db);

    // As earlier releases wrote it (an array of numbers): read back the same.
    let mut key2 = b"order\x00".to_vec();
    key2.extend(2u64.to_be_bytes());
    let old = json
        .replace("\"position\":1", "\"position\":2")
        .replace("w:order:1", "w:order:2")
        .replace(
            "\"CQkJCQkJCQkJCQkJCQkJCQ==\"",
            &format!("{:?}", vec![9u8; 16]).replace(' ', ""),
        );
    assert!(old.contains("[9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9]"), "{old}");
    let mut value = vec![layout::RECORD_FORMAT];
    value.extend(old.as_bytes());
    write_raw(dir.path(), layout::OUTBOX, &key2, &value);

    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.outbox("order").unwrap(), vec![entry(1), entry(2)]);
}

#[tokio::test]
async fn one_store_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    assert!(!store.worker_id().is_empty());
    assert!(store.worker_id().bytes().all(|b| b.is_ascii_hexdigit()));
    match SledStore::open(dir.path()) {
        Err(StoreError::Io(m)) => assert!(m.contains("lock"), "{m}"),
        other => panic!("expected Io, got {other:?}"),
    }
    let other = SledStore::open(tempfile::tempdir().unwrap().path()).unwrap();
    assert_ne!(other.worker_id(), store.worker_id());
}
