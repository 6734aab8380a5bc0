//! Definition versions: sagas in flight when the worker comes back with a new version of
//! their definition finish on the version they started on (loaded from the cluster's
//! registry when the worker no longer has that file); new sagas start on the new one.
//! `sagactl def ls|push` show and register the versions.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_core::definition::parse_definition;
use saga_e2e::*;
use saga_nats::{ConsumerSettings, NatsConsumer, NatsPublisher};
use saga_ports::{Consumer, Headers, Publisher};
use saga_proto::{self as pb, Message};

const TYPE: &str = "VersionedSaga";

const V1: &str = "saga:
  name: VersionedSaga
  version: v1
  steps:
    - {name: Reserve, service: vsvc, action: reserve, compensation: none, timeout: 60s}
    - {name: Audit, service: vsvc, action: audit, compensation: none, timeout: 60s}
    - {name: Charge, service: vsvc, action: charge, timeout: 60s}
";

/// V1 with `Audit` removed, `Charge` renamed `Bill`, and `Ship` added.
const V2: &str = "saga:
  name: VersionedSaga
  version: v2
  steps:
    - {name: Reserve, service: vsvc, action: reserve, compensation: none, timeout: 60s}
    - {name: Bill, service: vsvc, action: charge, compensation: none, timeout: 60s}
    - {name: Ship, service: vsvc, action: ship, timeout: 60s}
";

/// A third version, pushed without being made latest.
const V3: &str = "saga:
  name: VersionedSaga
  version: v3
  steps:
    - {name: Reserve, service: vsvc, action: reserve, timeout: 30s}
";

fn digest(yaml: &str) -> String {
    parse_definition("t.yaml", yaml)
        .unwrap()
        .definition
        .version()
        .digest
}

fn dir_with(stack: &Stack, name: &str, yaml: &str) -> PathBuf {
    let dir = stack.data_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("versioned.yaml"), yaml).unwrap();
    dir
}

/// The participant `vsvc`, played by the test: while `hold` is set it keeps the
/// commands it gets (the sagas stay in flight), then answers them all with OK.
#[derive(Clone, Default)]
struct Participant {
    hold: Arc<Mutex<bool>>,
    held: Arc<Mutex<Vec<(pb::StepCommand, Headers)>>>,
}

impl Participant {
    async fn run(self, js: async_nats::jetstream::Context) {
        saga_nats::ensure_service_consumer(&js, "vsvc", &ConsumerSettings::default())
            .await
            .unwrap();
        let mut consumer = NatsConsumer::service(&js, "vsvc").await.unwrap();
        let publisher = NatsPublisher::new(js.clone());
        loop {
            if !*self.hold.lock().unwrap() {
                let held = std::mem::take(&mut *self.held.lock().unwrap());
                for (cmd, headers) in held {
                    reply(&publisher, &cmd, &headers).await;
                }
            }
            let Ok(batch) = consumer.fetch(10, Duration::from_millis(200)).await else {
                continue;
            };
            for d in batch {
                let cmd = pb::StepCommand::decode(d.payload.as_slice()).unwrap();
                if *self.hold.lock().unwrap() {
                    self.held.lock().unwrap().push((cmd, d.headers.clone()));
                } else {
                    reply(&publisher, &cmd, &d.headers).await;
                }
                d.acker.ack().await.unwrap();
            }
        }
    }
}

async fn reply(publisher: &NatsPublisher, cmd: &pb::StepCommand, headers: &Headers) {
    let reply = pb::StepReply {
        saga_id: cmd.saga_id.clone(),
        step: cmd.step.clone(),
        idempotency_key: cmd.idempotency_key.clone(),
        compensation: cmd.compensation,
        outcome: Some(pb::step_reply::Outcome::Ok(pb::StepOk { result: None })),
        service: "vsvc".into(),
        ..Default::default()
    };
    let msg = saga_participant::reply_message(cmd, reply, headers);
    publisher.publish(&msg).await.unwrap();
}

/// Waits until each saga's journal shows its first step started (in flight).
async fn wait_in_flight(js: &async_nats::jetstream::Context, ids: &[&str]) {
    for id in ids {
        eventually(
            Duration::from_secs(30),
            &format!("{id} in flight"),
            || async {
                event_log(&journal(js, TYPE, id).await)
                    .contains(&"STEP_STARTED Reserve 1".to_string())
            },
        )
        .await;
    }
}

fn sagactl(stack: &Stack, args: &[&str]) -> String {
    let out = Command::new(binary("sagactl"))
        .args(args)
        .args(["--nats-url", &stack.nats.url()])
        .output()
        .expect("run sagactl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "sagactl {args:?}: {text}");
    text
}

/// The `def ls` row of a version: `(latest marker, open count)`.
fn ls_row(ls: &str, digest: &str) -> (bool, String) {
    let line = ls
        .lines()
        .find(|l| l.contains(digest))
        .unwrap_or_else(|| panic!("no row for {digest} in:\n{ls}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    (
        cells.contains(&"*"),
        cells.last().unwrap_or(&"").to_string(),
    )
}

fn steps_run(journal: &[pb::JournalEvent]) -> Vec<String> {
    event_log(journal)
        .into_iter()
        .filter_map(|l| {
            l.strip_prefix("STEP_SUCCEEDED ")
                .map(|s| s.trim_end_matches(" 1").to_string())
        })
        .collect()
}

fn versions_of(journal: &[pb::JournalEvent]) -> Vec<String> {
    let mut v: Vec<String> = journal
        .iter()
        .map(|e| e.definition_version.clone())
        .collect();
    v.dedup();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_in_flight_finish_on_their_version_and_new_ones_start_on_the_latest() {
    let _serial = one_at_a_time().await;
    let stack = Stack::new();
    let (d1, d2, d3) = (digest(V1), digest(V2), digest(V3));
    let v1_dir = dir_with(&stack, "sagas-v1", V1);
    let v2_dir = dir_with(&stack, "sagas-v2", V2);
    // v1: two sagas start and stay in flight (their participant holds the commands).
    let e1 = [("SAGAS_DIR", v1_dir.to_str().unwrap())];
    let mut worker = stack.worker("w", &e1);
    let js = stack.js().await;
    wait_provisioned(&js).await;
    let participant = Participant::default();
    *participant.hold.lock().unwrap() = true;
    let playing = tokio::spawn(participant.clone().run(js.clone()));
    for id in ["old-1", "old-2"] {
        start_saga(&js, TYPE, id, pb::Payload::default()).await;
    }
    wait_in_flight(&js, &["old-1", "old-2"]).await;
    stop(&mut worker);

    // The same worker (same local store) comes back with v2 only: v2 becomes latest, a
    // new saga starts on it.
    let e2 = [("SAGAS_DIR", v2_dir.to_str().unwrap())];
    let mut worker = stack.worker("w", &e2);
    start_saga(&js, TYPE, "new-1", pb::Payload::default()).await;
    wait_in_flight(&js, &["new-1"]).await;
    let ls = sagactl(&stack, &["def", "ls"]);
    assert_eq!(ls_row(&ls, &d1), (false, "2".into()), "{ls}");
    assert_eq!(ls_row(&ls, &d2), (true, "1".into()), "{ls}");
    assert!(ls.contains("v1") && ls.contains("v2"), "labels shown: {ls}");

    // A version pushed without being made latest is listed, and new sagas keep v2.
    let v3_file = dir_with(&stack, "sagas-v3", V3).join("versioned.yaml");
    let pushed = sagactl(
        &stack,
        &["def", "push", v3_file.to_str().unwrap(), "--not-latest"],
    );
    assert!(
        pushed.contains(&d3) && pushed.contains("registered"),
        "{pushed}"
    );
    let ls = sagactl(&stack, &["def", "ls"]);
    assert_eq!(ls_row(&ls, &d3), (false, "0".into()), "{ls}");
    assert_eq!(ls_row(&ls, &d2), (true, "1".into()), "{ls}");

    // Another worker with an empty store and only the v2 file takes over: the v1 sagas
    // are restored from their journals and run on v1, read from the registry.
    stop(&mut worker);
    let _worker = stack.worker("w2", &e2);
    *participant.hold.lock().unwrap() = false;
    let ids: Vec<String> = ["old-1", "old-2", "new-1"].map(String::from).to_vec();
    let states = wait_terminal(&js, TYPE, &ids, Duration::from_secs(60)).await;
    assert_eq!(states, [pb::SagaState::Completed; 3]);
    for id in ["old-1", "old-2"] {
        let j = journal(&js, TYPE, id).await;
        assert_eq!(steps_run(&j), ["Reserve", "Audit", "Charge"], "{id}");
        assert_eq!(versions_of(&j), [d1.as_str()], "{id}");
        assert_gapless(&j, id);
    }
    let j = journal(&js, TYPE, "new-1").await;
    assert_eq!(steps_run(&j), ["Reserve", "Bill", "Ship"]);
    assert_eq!(versions_of(&j), [d2.as_str()]);
    // Nothing was dead-lettered on the way (replies to v1-only steps included).
    let dlq = js
        .get_stream("SAGA_DLQ")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(dlq, 0);
    let ls = sagactl(&stack, &["def", "ls"]);
    assert_eq!(ls_row(&ls, &d1), (false, "0".into()), "{ls}");
    playing.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_whose_version_is_missing_is_left_as_it_is() {
    let _serial = one_at_a_time().await;
    let stack = Stack::new();
    let d1 = digest(V1);
    let v1_dir = dir_with(&stack, "sagas-v1", V1);
    let v2_dir = dir_with(&stack, "sagas-v2", V2);
    let mut worker = stack.worker("w", &[("SAGAS_DIR", v1_dir.to_str().unwrap())]);
    let js = stack.js().await;
    wait_provisioned(&js).await;
    let participant = Participant::default();
    *participant.hold.lock().unwrap() = true;
    let playing = tokio::spawn(participant.clone().run(js.clone()));
    start_saga(&js, TYPE, "lost-1", pb::Payload::default()).await;
    wait_in_flight(&js, &["lost-1"]).await;
    stop(&mut worker);
    // The version vanishes from the registry (an operator's mistake).
    let kv = js.get_key_value("saga_definitions").await.unwrap();
    kv.purge(format!("{TYPE}.{d1}")).await.unwrap();
    let (_worker, log) = worker_logged(&stack, "w2", &[("SAGAS_DIR", v2_dir.to_str().unwrap())]);
    *participant.hold.lock().unwrap() = false;
    eventually(
        Duration::from_secs(30),
        "the missing version logged",
        || async {
            !log_lines(
                &log,
                "the saga's definition version is not available: saga left as it is",
            )
            .is_empty()
        },
    )
    .await;
    // Not run on v2, not dead-lettered: still where it was.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let j = journal(&js, TYPE, "lost-1").await;
    assert_eq!(j.last().map(|e| e.state()), Some(pb::SagaState::Running));
    assert!(
        !event_log(&j)
            .iter()
            .any(|l| l.contains("Bill") || l.contains("Audit 1")),
        "{:?}",
        event_log(&j)
    );
    let dlq = js
        .get_stream("SAGA_DLQ")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(dlq, 0);
    playing.abort();
}

/// V1 with `Audit` renamed `Review` and a `Notify` step added before `Charge`: a
/// version a running V1 saga can move to with `--step-map Audit=Review`.
const V1_1: &str = "saga:
  name: VersionedSaga
  version: v1.1
  steps:
    - {name: Reserve, service: vsvc, action: reserve, compensation: none, timeout: 60s}
    - {name: Review, service: vsvc, action: audit, compensation: none, timeout: 60s}
    - {name: Notify, service: vsvc, action: notify, compensation: none, timeout: 60s}
    - {name: Charge, service: vsvc, action: charge, timeout: 60s}
";

/// `sagactl` that may fail: (succeeded, output).
fn sagactl_status(stack: &Stack, args: &[&str]) -> (bool, String) {
    let out = Command::new(binary("sagactl"))
        .args(args)
        .args(["--nats-url", &stack.nats.url()])
        .output()
        .expect("run sagactl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn reasons_of(journal: &[pb::JournalEvent], kind: pb::TransitionEventKind) -> Vec<String> {
    journal
        .iter()
        .flat_map(|r| &r.events)
        .filter(|e| e.kind == kind as i32)
        .map(|e| e.reason.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_moves_a_saga_in_flight_when_its_map_is_valid_and_refuses_it_otherwise() {
    let _serial = one_at_a_time().await;
    let stack = Stack::new();
    let (d1, d11) = (digest(V1), digest(V1_1));
    let v1_dir = dir_with(&stack, "sagas-v1", V1);
    let env = [("SAGAS_DIR", v1_dir.to_str().unwrap())];
    let mut worker = stack.worker("w", &env);
    let js = stack.js().await;
    wait_provisioned(&js).await;
    let participant = Participant::default();
    *participant.hold.lock().unwrap() = true;
    let playing = tokio::spawn(participant.clone().run(js.clone()));
    for id in ["mig-1", "mig-2"] {
        start_saga(&js, TYPE, id, pb::Payload::default()).await;
    }
    wait_in_flight(&js, &["mig-1", "mig-2"]).await;
    // v1.1 is registered but not made latest: new sagas would still start on v1.
    let file = dir_with(&stack, "sagas-v1.1", V1_1).join("versioned.yaml");
    sagactl(
        &stack,
        &["def", "push", file.to_str().unwrap(), "--not-latest"],
    );

    // A dry run checks every open saga on v1 and sends nothing.
    let (ok, dry) = sagactl_status(
        &stack,
        &[
            "saga",
            "migrate",
            "--from",
            "v1",
            "--to",
            "v1.1",
            "--step-map",
            "Audit=Review",
            "--dry-run",
        ],
    );
    assert!(ok, "{dry}");
    assert_eq!(dry.matches("can migrate").count(), 2, "{dry}");
    // A map that renames the step in flight is explained and refused before sending.
    let (ok, bad) = sagactl_status(
        &stack,
        &[
            "saga",
            "migrate",
            "--from",
            &d1,
            "--to",
            &d11,
            "--saga",
            "mig-2",
            "--step-map",
            "Reserve=Review",
        ],
    );
    assert!(!ok, "a refused migration fails: {bad}");
    assert!(
        bad.contains("refused") && bad.contains("is in flight"),
        "{bad}"
    );
    assert!(
        bad.contains("sent vsvc.reserve"),
        "the changed command is named: {bad}"
    );
    // The worker checks again itself: the same bad migration sent straight to the saga
    // is journalled as refused, with its reasons, and the saga stays on v1.
    let bad_map = std::collections::BTreeMap::from([("Reserve".to_string(), "Review".to_string())]);
    let id2 = saga_core::SagaId::parse("mig-2").unwrap();
    NatsPublisher::new(js.clone())
        .publish(&saga_runtime::envelope::migrate_message(
            TYPE, &id2, &d11, &bad_map, PARTITIONS,
        ))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the worker refuses the bad migration",
        || async {
            reasons_of(
                &journal(&js, TYPE, "mig-2").await,
                pb::TransitionEventKind::InputIgnored,
            )
            .iter()
            .any(|r| {
                r.starts_with(&format!("migration to version {d11} refused"))
                    && r.contains("is in flight")
            })
        },
    )
    .await;
    // A valid map moves mig-1, and only it.
    let (ok, moved) = sagactl_status(
        &stack,
        &[
            "saga",
            "migrate",
            "--from",
            "v1",
            "--to",
            "v1.1",
            "--saga",
            "mig-1",
            "--step-map",
            "Audit=Review",
        ],
    );
    assert!(ok, "{moved}");
    assert!(
        moved.contains("mig-1") && moved.contains("migrated"),
        "{moved}"
    );
    let ls = sagactl(&stack, &["def", "ls"]);
    assert_eq!(ls_row(&ls, &d1), (true, "1".into()), "{ls}");
    assert_eq!(ls_row(&ls, &d11), (false, "1".into()), "{ls}");

    // Another worker, with an empty store and only the v1 file, takes over: it rebuilds
    // mig-1 across its migration (v1.1 read from the registry), checked record by record.
    stop(&mut worker);
    let (_worker, log) = worker_logged(&stack, "w2", &env);
    *participant.hold.lock().unwrap() = false;
    let ids = ["mig-1".to_string(), "mig-2".to_string()];
    let states = wait_terminal(&js, TYPE, &ids, Duration::from_secs(60)).await;
    let j1 = journal(&js, TYPE, "mig-1").await;
    assert_eq!(
        states,
        [pb::SagaState::Completed; 2],
        "{:?} {:?}",
        event_log(&j1),
        reasons_of(&j1, pb::TransitionEventKind::SagaFailed)
    );
    assert_eq!(steps_run(&j1), ["Reserve", "Review", "Notify", "Charge"]);
    assert_eq!(versions_of(&j1), [d1.as_str(), d11.as_str()]);
    assert_eq!(
        reasons_of(&j1, pb::TransitionEventKind::Migrated),
        [String::new()],
        "one migration; Audit had not started, so no step that ran was renamed"
    );
    assert_gapless(&j1, "mig-1");
    let j2 = journal(&js, TYPE, "mig-2").await;
    assert_eq!(steps_run(&j2), ["Reserve", "Audit", "Charge"]);
    assert_eq!(versions_of(&j2), [d1.as_str()]);
    assert_gapless(&j2, "mig-2");
    assert!(
        log_lines(
            &log,
            "non-deterministic replay: the saga is stopped at its next input"
        )
        .is_empty(),
        "the rebuild across the migration matched the journal"
    );
    playing.abort();
}

/// A saga whose journal the machine no longer reproduces (here a record written by a
/// build that named `Audit`'s command differently under the same version digest: the
/// code changed, not the file) is stopped when a worker rebuilds it: FAILED with a
/// non-deterministic replay error in GetSaga and in the worker's log, and nothing more
/// is sent on the plan that diverged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_the_machine_no_longer_reproduces_stops_its_saga_on_rebuild() {
    use saga_ports::Journal as _;
    let _serial = one_at_a_time().await;
    let stack = Stack::new();
    let v1_dir = dir_with(&stack, "sagas-v1", V1);
    let env = [("SAGAS_DIR", v1_dir.to_str().unwrap())];
    let mut worker = stack.worker("w", &env);
    let js = stack.js().await;
    wait_provisioned(&js).await;
    let participant = Participant::default();
    *participant.hold.lock().unwrap() = true;
    let playing = tokio::spawn(participant.clone().run(js.clone()));
    start_saga(&js, TYPE, "nd-1", pb::Payload::default()).await;
    wait_in_flight(&js, &["nd-1"]).await;
    stop(&mut worker);

    // The record the other build wrote: `Reserve` answered, `Audit`'s command sent as
    // `audit-v0`.
    let journal_port = saga_nats::NatsJournal::new(js.clone());
    let last = journal_port.last(TYPE, "nd-1").await.unwrap().unwrap();
    let record = saga_runtime::envelope::decode_record(last.sequence, &last.payload).unwrap();
    let state = record.snapshot.unwrap().state;
    let def = parse_definition("v.yaml", V1).unwrap().definition;
    let input = saga_core::machine::Input::StepReply {
        step: "Reserve".into(),
        attempt: 1,
        outcome: saga_core::machine::Outcome::Ok { result: vec![] },
    };
    let mut t = saga_core::apply(&def, &state, &input, record.recorded_at + 1);
    for e in &mut t.events {
        if let saga_core::machine::SagaEvent::StepStarted { action, .. } = e {
            *action = "audit-v0".into();
        }
    }
    let snapshot = saga_ports::Snapshot {
        state: t.state.clone(),
        timers: Vec::new(),
        effects: t.effects.clone(),
    };
    let forged = saga_runtime::envelope::journal_append(
        &t.state,
        &input,
        &t.events,
        &snapshot,
        "other-build",
        record.recorded_at + 1,
    );
    journal_port.append(&forged, last.sequence).await.unwrap();

    // A worker with an empty store takes over and rebuilds the saga from its journal.
    let (_worker, log) = worker_logged(&stack, "w2", &env);
    let (_gateway, mut client) = Gateway::start(&stack, "gateway").await;
    *participant.hold.lock().unwrap() = false;
    let states = wait_terminal(&js, TYPE, &["nd-1".to_string()], Duration::from_secs(60)).await;
    assert_eq!(states, [pb::SagaState::Failed]);
    let saga = client
        .get_saga(pb::GetSagaRequest {
            saga_id: "nd-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(saga.state(), pb::SagaState::Failed);
    assert!(
        saga.failure_reason
            .starts_with("non-deterministic replay: record v2 (do:Reserve:1:ok)")
            && saga.failure_reason.contains("STEP_STARTED Audit 1 (audit)")
            && saga
                .failure_reason
                .contains("STEP_STARTED Audit 1 (audit-v0)"),
        "{}",
        saga.failure_reason
    );
    let logged = log_lines(
        &log,
        "non-deterministic replay: the saga is stopped at its next input",
    );
    assert_eq!(logged.len(), 1, "logged once");
    assert_eq!(logged[0]["saga_id"], "nd-1", "{:?}", logged[0]);
    assert!(
        logged[0]["why"]
            .as_str()
            .is_some_and(|w| w.contains("(audit-v0)")),
        "{:?}",
        logged[0]
    );
    assert!(
        !event_log(&journal(&js, TYPE, "nd-1").await)
            .iter()
            .any(|l| l.contains("Charge")),
        "nothing sent past the divergence"
    );
    playing.abort();
}

/// A version pushed as the latest is what new sagas start on within the worker's poll
/// of the registry, without a restart; the saga already running keeps its version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_latest_version_is_taken_up_by_running_workers() {
    let _serial = one_at_a_time().await;
    let stack = Stack::new();
    let (d1, d2) = (digest(V1), digest(V2));
    let v1_dir = dir_with(&stack, "sagas-v1", V1);
    let env = [
        ("SAGAS_DIR", v1_dir.to_str().unwrap()),
        ("DEFINITIONS_POLL_MS", "200"),
    ];
    let (_worker, log) = worker_logged(&stack, "w", &env);
    let js = stack.js().await;
    wait_provisioned(&js).await;
    let participant = Participant::default();
    *participant.hold.lock().unwrap() = true;
    let playing = tokio::spawn(participant.clone().run(js.clone()));
    start_saga(&js, TYPE, "before-1", pb::Payload::default()).await;
    wait_in_flight(&js, &["before-1"]).await;

    let v2_file = dir_with(&stack, "sagas-v2", V2).join("versioned.yaml");
    sagactl(&stack, &["def", "push", v2_file.to_str().unwrap()]);
    eventually(
        Duration::from_secs(30),
        "the worker takes up v2",
        || async {
            log_lines(
                &log,
                "new sagas of this type now start on another definition version",
            )
            .iter()
            .any(|l| l["to"] == d2.as_str())
        },
    )
    .await;
    start_saga(&js, TYPE, "after-1", pb::Payload::default()).await;
    *participant.hold.lock().unwrap() = false;
    let ids = ["before-1".to_string(), "after-1".to_string()];
    let states = wait_terminal(&js, TYPE, &ids, Duration::from_secs(60)).await;
    assert_eq!(states, [pb::SagaState::Completed; 2]);
    let before = journal(&js, TYPE, "before-1").await;
    assert_eq!(versions_of(&before), [d1.as_str()]);
    assert_eq!(steps_run(&before), ["Reserve", "Audit", "Charge"]);
    let after = journal(&js, TYPE, "after-1").await;
    assert_eq!(versions_of(&after), [d2.as_str()]);
    assert_eq!(steps_run(&after), ["Reserve", "Bill", "Ship"]);
    playing.abort();
}
