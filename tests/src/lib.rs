//! Harness of the end-to-end tests: a real `nats-server` (from `saga-testkit`), the
//! real `saga-worker` and participant binaries as child processes, and helpers that
//! observe what a user would (journal, events, DLQ).
//!
//! The binaries must be built first (`cargo build --workspace --bins`; `make test`
//! does it).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use saga_core::SagaId;
use saga_nats::NatsJournal;
use saga_ports::{Journal, Publisher};
use saga_proto::{self as pb, Message};
use saga_testkit::{NatsServer, ProcessGuard};

pub mod otlp;
pub mod prometheus;

/// Partitions used by the tests.
pub const PARTITIONS: u32 = 4;

/// Path of a binary of this workspace, built next to the test executable (or in
/// `SAGA_BIN_DIR` when set: to run a scenario against a release build, or another
/// version's binaries for a comparison).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let built = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_path_buf();
    let dir = std::env::var_os("SAGA_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or(built);
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, done by `make test`)",
        path.display()
    );
    path
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A NATS server, a scratch directory and the processes of one test.
#[derive(Debug)]
pub struct Stack {
    /// The server.
    pub nats: NatsServer,
    /// Scratch space (data dirs of workers and participants).
    pub dir: tempfile::TempDir,
    /// How many `saga-worker`s were started (gateways wait for one to be live).
    workers_started: std::sync::atomic::AtomicUsize,
}

impl Stack {
    /// A fresh server and scratch directory.
    pub fn new() -> Self {
        Self {
            nats: NatsServer::start().expect("nats-server (run `make setup`)"),
            dir: tempfile::tempdir().expect("temp dir"),
            workers_started: Default::default(),
        }
    }

    /// Waits until at least `n` workers announce themselves in `saga_workers` (a gateway
    /// refuses starts of a type no live worker runs).
    pub async fn wait_live_workers(&self, n: usize) {
        use futures::TryStreamExt as _;
        let js = self.js().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let live = match js.get_key_value("saga_workers").await {
                Ok(kv) => match kv.keys().await {
                    Ok(keys) => keys
                        .try_collect::<Vec<_>>()
                        .await
                        .map(|k| k.len())
                        .unwrap_or(0),
                    Err(_) => 0,
                },
                Err(_) => 0,
            };
            if live >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{live} of {n} workers live after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A data directory for a process.
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `saga-worker` with its own data dir and extra environment.
    pub fn worker(&self, name: &str, env: &[(&str, &str)]) -> ProcessGuard {
        let mut cmd = Command::new(binary("saga-worker"));
        cmd.env("NATS_URL", self.nats.url())
            .env("DATA_DIR", self.data_dir(name))
            .env("SAGAS_DIR", repo().join("sagas"))
            .env("PARTITIONS", PARTITIONS.to_string())
            // `E2E_WORKER_LOG=saga_runtime=debug cargo test ...` to see what workers do.
            .env(
                "RUST_LOG",
                std::env::var("E2E_WORKER_LOG").unwrap_or_else(|_| "warn".into()),
            );
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.workers_started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ProcessGuard::spawn(&mut cmd).expect("spawn saga-worker")
    }

    /// Starts an example participant binary with its own data dir and extra flags.
    pub fn participant(&self, bin: &str, name: &str, args: &[&str]) -> ProcessGuard {
        let mut cmd = Command::new(binary(bin));
        cmd.env("NATS_URL", self.nats.url())
            .env("DATA_DIR", self.data_dir(name))
            .env("RUST_LOG", "warn")
            // The orders participant's gRPC API on a port of its own.
            .env("ORDERS_GRPC_ADDR", "127.0.0.1:0")
            .args(args);
        ProcessGuard::spawn(&mut cmd).expect("spawn participant")
    }

    /// A JetStream client.
    pub async fn js(&self) -> async_nats::jetstream::Context {
        let client = saga_nats::connect(&self.nats.url()).await.expect("connect");
        async_nats::jetstream::new(client)
    }
}

impl Default for Stack {
    fn default() -> Self {
        Self::new()
    }
}

/// An order payload.
pub fn order(order_id: &str, customer: &str, items: &[(&str, i64, i64)]) -> pb::Payload {
    let items: Vec<pb::OrderItem> = items
        .iter()
        .map(|(sku, q, p)| pb::OrderItem {
            sku: sku.to_string(),
            quantity: *q,
            unit_price_cents: *p,
        })
        .collect();
    pb::Payload {
        kind: Some(pb::payload::Kind::Order(pb::Order {
            order_id: order_id.into(),
            customer_id: customer.into(),
            total_cents: items.iter().map(|i| i.quantity * i.unit_price_cents).sum(),
            items,
        })),
    }
}

/// Publishes the start of a saga (retrying while the server is unreachable).
pub async fn start_saga(
    js: &async_nats::jetstream::Context,
    saga_type: &str,
    id: &str,
    payload: pb::Payload,
) {
    let id = SagaId::parse(id).expect("valid id");
    let msg = saga_runtime::envelope::start_message(
        saga_type,
        &id,
        Some(payload),
        id.as_str(),
        PARTITIONS,
        0,
    );
    let publisher = saga_nats::NatsPublisher::new(js.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match publisher.publish(&msg).await {
            Ok(_) => return,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("start {id}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("could not start saga {id}: {e}"),
        }
    }
}

/// The journal of a saga, decoded.
pub async fn journal(
    js: &async_nats::jetstream::Context,
    saga_type: &str,
    id: &str,
) -> Vec<pb::JournalEvent> {
    let records = NatsJournal::new(js.clone())
        .read(saga_type, id)
        .await
        .unwrap_or_default();
    records
        .iter()
        .map(|r| pb::JournalEvent::decode(r.payload.as_slice()).expect("journal record"))
        .collect()
}

/// The saga's state as its journal tells (UNSPECIFIED when it has no record yet).
pub async fn state(
    js: &async_nats::jetstream::Context,
    saga_type: &str,
    id: &str,
) -> pb::SagaState {
    journal(js, saga_type, id)
        .await
        .last()
        .map(|e| e.state())
        .unwrap_or(pb::SagaState::Unspecified)
}

/// Waits until every saga is terminal; returns their final states in order.
pub async fn wait_terminal(
    js: &async_nats::jetstream::Context,
    saga_type: &str,
    ids: &[String],
    within: Duration,
) -> Vec<pb::SagaState> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut states = Vec::with_capacity(ids.len());
        for id in ids {
            states.push(state(js, saga_type, id).await);
        }
        let terminal = states.iter().all(|s| {
            matches!(
                s,
                pb::SagaState::Completed | pb::SagaState::Compensated | pb::SagaState::Failed
            )
        });
        if terminal {
            return states;
        }
        if tokio::time::Instant::now() > deadline {
            let pending: Vec<_> = ids
                .iter()
                .zip(&states)
                .filter(|(_, s)| {
                    !matches!(
                        s,
                        pb::SagaState::Completed
                            | pb::SagaState::Compensated
                            | pb::SagaState::Failed
                    )
                })
                .map(|(i, s)| format!("{i}={}", s.as_str_name()))
                .collect();
            let first = pending[0].split('=').next().unwrap_or_default().to_string();
            let log = event_log(&journal(js, saga_type, &first).await);
            eprintln!("{}", diagnostics(js).await);
            panic!(
                "{} saga(s) not terminal after {within:?}: {pending:?}\njournal of {first}: {log:#?}",
                pending.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every message stored on subjects matching `filter` (wildcards allowed) in
/// `stream`, oldest first.
pub async fn messages(
    js: &async_nats::jetstream::Context,
    stream: &str,
    filter: &str,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let stream = js.get_stream(stream).await.expect("stream");
    let mut out = Vec::new();
    let mut next = 0u64;
    loop {
        match stream.get_first_raw_message_by_subject(filter, next).await {
            Ok(m) => {
                next = m.sequence + 1;
                out.push(m);
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return out,
            Err(e) => panic!("reading {filter}: {e}"),
        }
    }
}

/// A sagas directory with the shipped definitions plus `extra` (file name, YAML).
pub fn sagas_dir_with(stack: &Stack, extra: &[(&str, &str)]) -> PathBuf {
    let dir = stack.data_dir("sagas");
    std::fs::create_dir_all(&dir).expect("sagas dir");
    for entry in std::fs::read_dir(repo().join("sagas")).expect("sagas/") {
        let p = entry.expect("entry").path();
        std::fs::copy(&p, dir.join(p.file_name().expect("name"))).expect("copy");
    }
    for (name, yaml) in extra {
        std::fs::write(dir.join(name), yaml).expect("write saga");
    }
    dir
}

/// Waits until the worker has provisioned JetStream (its partition consumers exist).
pub async fn wait_provisioned(js: &async_nats::jetstream::Context) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(stream) = js.get_stream("SAGA_INBOX").await {
            if stream
                .consumer_info(format!("saga-p{}", PARTITIONS - 1))
                .await
                .is_ok()
            {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "JetStream not provisioned within 30s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The transition events of a journal, flattened as `KIND step attempt`.
pub fn event_log(journal: &[pb::JournalEvent]) -> Vec<String> {
    journal
        .iter()
        .flat_map(|e| e.events.iter())
        .map(|t| {
            let kind = t
                .kind()
                .as_str_name()
                .trim_start_matches("TRANSITION_EVENT_KIND_")
                .to_string();
            match (t.step.is_empty(), t.attempt) {
                (true, _) => kind,
                (false, 0) => format!("{kind} {}", t.step),
                (false, a) => format!("{kind} {} {a}", t.step),
            }
        })
        .collect()
}

/// Stops a process with SIGTERM and waits for it to exit.
pub fn stop(p: &mut ProcessGuard) {
    let _ = p.sigterm();
    let what = format!("{} exits on SIGTERM", p.label());
    saga_testkit::wait_until(Duration::from_secs(20), what, || !p.is_running())
        .expect("process stops");
}

/// Stops the worker, then every participant (so their ledgers can be read).
pub fn stop_all(worker: &mut ProcessGuard, participants: &mut [ProcessGuard]) {
    stop(worker);
    for p in participants {
        stop(p);
    }
}

/// The effects a stopped participant recorded, as `(saga_id, action) -> count`.
pub fn effects(
    stack: &Stack,
    participant: &str,
) -> std::collections::BTreeMap<(String, String), u64> {
    let mut out = std::collections::BTreeMap::new();
    for e in participants::read_ledger(stack.data_dir(participant)).expect("ledger") {
        *out.entry((e.saga_id, e.action)).or_default() += 1;
    }
    out
}

/// Asserts no saga got any effect twice from a stopped participant; returns how many
/// effects there were per action.
pub fn assert_no_double_effect(
    stack: &Stack,
    participant: &str,
) -> std::collections::BTreeMap<String, u64> {
    let mut per_action = std::collections::BTreeMap::new();
    for ((saga, action), n) in effects(stack, participant) {
        assert_eq!(
            n, 1,
            "{participant}: {action} applied {n} times for saga {saga}"
        );
        *per_action.entry(action).or_default() += 1;
    }
    per_action
}

/// Asserts a saga's journal versions are 1, 2, ... without a gap or a repeat.
pub fn assert_gapless(journal: &[pb::JournalEvent], id: &str) {
    let versions: Vec<u64> = journal.iter().map(|e| e.version).collect();
    let want: Vec<u64> = (1..=versions.len() as u64).collect();
    assert_eq!(versions, want, "journal of {id} has a gap or a repeat");
}

/// Domain events `<name>` of the domain (`events.<domain>.<name>.<saga_id>`), by
/// correlation id.
pub async fn event_counts(
    js: &async_nats::jetstream::Context,
    subject: &str,
) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for m in messages(js, "SAGA_EVENTS", &format!("{subject}.*")).await {
        let id = match subject.rsplit('.').next() {
            Some("OrderConfirmed") => {
                pb::OrderConfirmed::decode(m.payload.as_ref())
                    .expect("event")
                    .correlation_id
            }
            Some("OrderCancelled") => {
                pb::OrderCancelled::decode(m.payload.as_ref())
                    .expect("event")
                    .correlation_id
            }
            _ => {
                pb::SagaDomainEvent::decode(m.payload.as_ref())
                    .expect("event")
                    .correlation_id
            }
        };
        *out.entry(id).or_default() += 1;
    }
    out
}

/// The checkout participants (inventory, payment, orders) with extra flags each.
pub fn checkout_participants(stack: &Stack, inventory_args: &[&str]) -> Vec<ProcessGuard> {
    vec![
        stack.participant("inventory", "inventory", inventory_args),
        stack.participant("payment", "payment", &[]),
        stack.participant("orders", "orders", &[]),
    ]
}

/// Tests that start many processes take turns within one test binary: on a 2-core
/// machine, several clusters at once starve each other's heartbeats.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Consumer and dead-letter state, for failure messages.
pub async fn diagnostics(js: &async_nats::jetstream::Context) -> String {
    let mut out = String::from("consumers:\n");
    for stream_name in ["SAGA_INBOX", "SAGA_COMMANDS"] {
        let Ok(stream) = js.get_stream(stream_name).await else {
            continue;
        };
        let names: Vec<String> = {
            use futures::TryStreamExt;
            stream
                .consumer_names()
                .try_collect()
                .await
                .unwrap_or_default()
        };
        for name in names {
            if let Ok(info) = stream.consumer_info(&name).await {
                out.push_str(&format!(
                    "  {stream_name}/{name}: pending {} ack_pending {} redelivered {} waiting {} delivered {} ack_floor {}\n",
                    info.num_pending,
                    info.num_ack_pending,
                    info.num_redelivered,
                    info.num_waiting,
                    info.delivered.stream_sequence,
                    info.ack_floor.stream_sequence
                ));
            }
        }
    }
    let dlq = messages(js, "SAGA_DLQ", "dlq.>").await;
    out.push_str(&format!("dead letters: {}\n", dlq.len()));
    for m in dlq.iter().take(5) {
        let reason = m
            .headers
            .get(saga_ports::header::DLQ_REASON)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        out.push_str(&format!("  {}: {reason}\n", m.subject));
    }
    out
}

/// A gateway client.
pub type Client = saga_proto::saga_gateway_client::SagaGatewayClient<tonic::transport::Channel>;

/// A running `saga-gateway` process.
#[derive(Debug)]
pub struct Gateway {
    /// The process.
    pub process: ProcessGuard,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// `host:port` it listens on.
    pub addr: String,
}

impl Gateway {
    /// Starts `saga-gateway` on a free port with its own data dir `name`, and waits
    /// until it answers.
    pub async fn start(stack: &Stack, name: &str) -> (Self, Client) {
        let data_dir = stack.data_dir(name);
        for _ in 0..5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let mut process =
                ProcessGuard::spawn(gateway_command(stack, &data_dir).env("GRPC_ADDR", &addr))
                    .expect("spawn saga-gateway");
            if let Some(client) = connect(&addr, &mut process).await {
                if stack
                    .workers_started
                    .load(std::sync::atomic::Ordering::SeqCst)
                    > 0
                {
                    stack.wait_live_workers(1).await;
                }
                return (
                    Self {
                        process,
                        data_dir,
                        addr,
                    },
                    client,
                );
            }
            // The port was taken between probing and binding: try another.
        }
        panic!("saga-gateway did not start");
    }

    /// Starts `saga-gateway` with extra `args` (TLS, tokens, limits) on a free port and
    /// waits until the port accepts connections; the caller checks readiness its own way
    /// (a secured gateway refuses the plain client of [`Gateway::start`]).
    pub async fn start_with_args(stack: &Stack, name: &str, args: &[&str]) -> Self {
        let data_dir = stack.data_dir(name);
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut process = ProcessGuard::spawn(
            gateway_command(stack, &data_dir)
                .env("GRPC_ADDR", &addr)
                .args(args),
        )
        .expect("spawn saga-gateway");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            assert!(
                process.is_running(),
                "saga-gateway {args:?} exited at start"
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "saga-gateway on {addr} not listening within 30s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            process,
            data_dir,
            addr,
        }
    }

    /// SIGTERM, and a clean exit within the deadline.
    pub fn stop(&mut self) {
        stop(&mut self.process);
        let status = self.process.wait().expect("gateway exit status");
        assert!(status.success(), "saga-gateway exited with {status}");
    }
}

/// The command that starts `saga-gateway` against this stack.
pub fn gateway_command(stack: &Stack, data_dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(binary("saga-gateway"));
    cmd.env("NATS_URL", stack.nats.url())
        .env("DATA_DIR", data_dir)
        .env("SAGAS_DIR", repo().join("sagas"))
        .env("PARTITIONS", PARTITIONS.to_string())
        .env("RUST_LOG", "warn");
    cmd
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A client once the gateway answers; `None` if the process died first.
async fn connect(addr: &str, process: &mut ProcessGuard) -> Option<Client> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if !process.is_running() {
            return None;
        }
        if let Ok(mut client) =
            saga_proto::saga_gateway_client::SagaGatewayClient::connect(format!("http://{addr}"))
                .await
        {
            if client
                .list_sagas(pb::ListSagasRequest::default())
                .await
                .is_ok()
            {
                return Some(client);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "saga-gateway on {addr} not answering within 30s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every checkout saga completed, then checks each journal is gapless and
/// each order got exactly one `OrderConfirmed`.
pub async fn assert_checkouts_completed_once(js: &async_nats::jetstream::Context, ids: &[String]) {
    let states = wait_terminal(js, "OrderCheckout", ids, Duration::from_secs(120)).await;
    assert!(
        states.iter().all(|s| *s == pb::SagaState::Completed),
        "{states:?}"
    );
    for id in ids {
        assert_gapless(&journal(js, "OrderCheckout", id).await, id);
    }
    let confirmed = event_counts(js, "events.orders.OrderConfirmed").await;
    for id in ids {
        assert_eq!(confirmed.get(id), Some(&1), "OrderConfirmed of {id}");
    }
}

/// Checks each checkout participant (stopped) applied every action exactly once per
/// saga, `n` sagas in all.
pub fn assert_checkout_ledgers(stack: &Stack, n: u64) {
    assert_eq!(
        assert_no_double_effect(stack, "inventory")["ReserveStock"],
        n
    );
    assert_eq!(
        assert_no_double_effect(stack, "payment")["ChargePayment"],
        n
    );
    assert_eq!(assert_no_double_effect(stack, "orders")["ConfirmOrder"], n);
}

/// Starts `saga-worker` like [`Stack::worker`], logging JSON at `info` (override with
/// `RUST_LOG` in `env`) to `<scratch>/<name>.log`, appended; returns the process and the
/// path of its log. Read the log with [`log_lines`].
pub fn worker_logged(stack: &Stack, name: &str, env: &[(&str, &str)]) -> (ProcessGuard, PathBuf) {
    let log_path = stack.dir.path().join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("worker log");
    let mut cmd = Command::new(binary("saga-worker"));
    cmd.env("NATS_URL", stack.nats.url())
        .env("DATA_DIR", stack.data_dir(name))
        .env("SAGAS_DIR", repo().join("sagas"))
        .env("PARTITIONS", PARTITIONS.to_string())
        .env("RUST_LOG", "info")
        .env("LOG_FORMAT", "json")
        .stdout(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let guard = ProcessGuard::spawn(&mut cmd).expect("spawn saga-worker");
    (guard, log_path)
}

/// The JSON log lines of a [`worker_logged`] log whose message is `message`, as their
/// `fields` objects (the message included).
pub fn log_lines(log: &Path, message: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("fields").cloned())
        .filter(|f| f.get("message").and_then(|m| m.as_str()) == Some(message))
        .collect()
}

/// The version and state of each saga's last journal record (one direct read per saga,
/// 32 at a time); `(0, UNSPECIFIED)` for a saga without a record.
pub async fn last_records(
    js: &async_nats::jetstream::Context,
    saga_type: &str,
    ids: &[String],
) -> Vec<(u64, pb::SagaState)> {
    use futures::StreamExt;
    let journal = NatsJournal::new(js.clone());
    futures::stream::iter(ids)
        .map(|id| {
            let journal = journal.clone();
            async move {
                match journal.last(saga_type, id).await {
                    Ok(Some(r)) => {
                        let e = pb::JournalEvent::decode(r.payload.as_slice()).expect("record");
                        (e.version, e.state())
                    }
                    _ => (0, pb::SagaState::Unspecified),
                }
            }
        })
        .buffered(32)
        .collect()
        .await
}

/// How many messages each subject matching `filter` holds in `stream`.
pub async fn subject_counts(
    js: &async_nats::jetstream::Context,
    stream: &str,
    filter: &str,
) -> std::collections::BTreeMap<String, usize> {
    use futures::TryStreamExt;
    let stream = js.get_stream(stream).await.expect("stream");
    stream
        .info_with_subjects(filter)
        .await
        .expect("stream info")
        .try_collect()
        .await
        .expect("subjects")
}

/// Whether a saga state is terminal.
pub fn is_terminal(s: pb::SagaState) -> bool {
    matches!(
        s,
        pb::SagaState::Completed | pb::SagaState::Compensated | pb::SagaState::Failed
    )
}

/// Like [`wait_terminal`] for many sagas: polls the last journal record of each (one
/// direct read, not a replay); returns the final `(version, state)` of each.
pub async fn wait_terminal_many(
    js: &async_nats::jetstream::Context,
    saga_type: &str,
    ids: &[String],
    within: Duration,
) -> Vec<(u64, pb::SagaState)> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = last_records(js, saga_type, ids).await;
        let open: Vec<&String> = ids
            .iter()
            .zip(&last)
            .filter(|(_, (_, s))| !is_terminal(*s))
            .map(|(id, _)| id)
            .collect();
        if open.is_empty() {
            return last;
        }
        if tokio::time::Instant::now() > deadline {
            eprintln!("{}", diagnostics(js).await);
            let log = event_log(&journal(js, saga_type, open[0]).await);
            panic!(
                "{} of {} saga(s) not terminal after {within:?}, e.g. {}: {log:#?}",
                open.len(),
                ids.len(),
                open[0]
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until `condition` (async) holds, polling every 100 ms; panics with `what` after
/// `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A real grpcurl (scripts/install-grpcurl.sh installs it into target/ when missing).
pub mod grpcurl {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};

    /// Installs grpcurl if needed; returns its path.
    pub fn binary() -> PathBuf {
        let out = Command::new("bash")
            .arg(super::repo().join("scripts/install-grpcurl.sh"))
            .output()
            .expect("run scripts/install-grpcurl.sh");
        assert!(
            out.status.success(),
            "installing grpcurl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or_default(),
        )
    }

    /// Runs it with `args`.
    pub fn run(bin: &Path, args: &[&str]) -> Output {
        Command::new(bin).args(args).output().expect("run grpcurl")
    }

    /// Its stdout and stderr.
    pub fn text(o: &Output) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }
}
