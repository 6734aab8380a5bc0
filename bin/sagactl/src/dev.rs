//! `sagactl dev`: the whole stack on this machine, as child processes of sagactl.
//!
//! Start order: nats-server (never one already running: its port must be free), the
//! workers, the participants, the gateway; then wait until the gateway answers gRPC.
//! Every child runs in a process group of its own, so a Ctrl-C in the terminal reaches
//! sagactl only, which then stops the children in reverse order (SIGTERM, a grace
//! period, SIGKILL): the gateway first, nats-server last, so nobody loses its broker
//! while draining. A child that dies on its own stops the stack with an error naming it.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use saga_proto::{GetSagaRequest, OrderItem, PlaceOrderRequest, Saga, SagaState};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Code;

use crate::args::DevArgs;
use crate::client::{rpc_error, try_connect, Client};
use crate::output::{esayln, sayln};
use crate::projection::sibling_binary;
use crate::render;
use crate::watch::{until_terminal, Follow};

/// The example participants, one process each.
const PARTICIPANTS: [&str; 5] = ["inventory", "payment", "orders", "flight", "hotel"];
/// How long a child gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(15);
/// How long nats-server gets to accept connections.
const NATS_READY: Duration = Duration::from_secs(20);
/// How long the demo sagas get to end.
const DEMO_DEADLINE: Duration = Duration::from_secs(120);

pub async fn run(a: DevArgs) -> Result<ExitCode> {
    if a.grpc_addr.port() == 0 {
        bail!("--grpc-addr needs a port (e.g. 127.0.0.1:50051)");
    }
    let nats_addr = SocketAddr::from(([127, 0, 0, 1], a.nats_port));
    // Checked first: the most common surprise, and cheap.
    if port_in_use(nats_addr) {
        bail!(
            "port {} is in use (another nats-server?); pass --nats-port",
            a.nats_port
        );
    }
    if port_in_use(a.grpc_addr) {
        bail!(
            "gRPC address {} is in use (another saga-gateway?); pass --grpc-addr",
            a.grpc_addr
        );
    }
    let nats_bin = nats_server_binary()?;
    let nats_conf = existing(&a.nats_conf, "the nats-server configuration (--nats-conf)")?;
    let sagas_dir = existing(&a.sagas, "the saga definitions directory (--sagas)")?;
    let bins = Binaries::locate()?;

    std::fs::create_dir_all(a.data_dir.join("logs"))
        .with_context(|| format!("creating {}", a.data_dir.join("logs").display()))?;
    let data = a
        .data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", a.data_dir.display()))?;
    let logs = data.join("logs");

    let mut signals = Signals::new()?;
    let (exits_tx, mut exits) = mpsc::unbounded_channel();
    let mut stack = Stack {
        tiers: Vec::new(),
        exits_tx,
    };
    sayln!(
        "sagactl dev: data in {}, logs in {}",
        data.display(),
        logs.display()
    );

    let nats_url = format!("nats://{nats_addr}");
    let grpc = a.grpc_addr.to_string();
    let started = tokio::select! {
        r = start(&a, &mut stack, &mut exits, &bins, &nats_bin, &nats_conf, &sagas_dir, &data, &nats_url) => r,
        name = signals.recv() => Err(anyhow!("{name}: stopping before the stack was up")),
    };
    let client = match started {
        Ok(c) => c,
        Err(e) => {
            stack.stop().await;
            return Err(e);
        }
    };

    sayln!();
    sayln!("stack ready: gRPC on {grpc}, NATS on {nats_url}");
    sayln!("logs: {}/<name>.log", logs.display());
    sayln!("try:");
    sayln!(
        "  grpcurl -plaintext -d '{{\"customer_id\":\"alice\",\"items\":[{{\"sku\":\"sku-1\",\"quantity\":1,\"unit_price_cents\":1500}}]}}' {grpc} saga.v1.SagaGateway/PlaceOrder"
    );
    sayln!("  SAGA_GATEWAY=http://{grpc} sagactl saga list");
    if !a.exit {
        sayln!("Ctrl-C stops the stack.");
    }

    let demo = async {
        if a.demo {
            Some(demo(client).await)
        } else {
            std::future::pending().await
        }
    };
    tokio::pin!(demo);
    let mut demo_done = false;
    let outcome: Result<ExitCode> = loop {
        tokio::select! {
            name = signals.recv() => {
                sayln!("{name}: stopping the stack");
                break Ok(ExitCode::SUCCESS);
            }
            Some(exit) = exits.recv() => break Err(exit.error()),
            r = &mut demo, if !demo_done => {
                demo_done = true;
                let r = r.unwrap_or_else(|| Err(anyhow!("no demo")));
                match (r, a.exit) {
                    (Ok(true), true) => break Ok(ExitCode::SUCCESS),
                    (Ok(false), true) => break Err(anyhow!("a demo saga did not end as expected")),
                    (Err(e), _) => break Err(e.context("demo")),
                    (Ok(ok), false) => {
                        if !ok {
                            esayln!("sagactl dev: a demo saga did not end as expected; the stack keeps running");
                        }
                        sayln!("demo done; the stack keeps running (Ctrl-C stops it)");
                    }
                }
            }
        }
    };
    stack.stop().await;
    outcome
}

/// Starts every process, in order, and returns a client of the ready gateway.
#[allow(clippy::too_many_arguments)]
async fn start(
    a: &DevArgs,
    stack: &mut Stack,
    exits: &mut mpsc::UnboundedReceiver<Exited>,
    bins: &Binaries,
    nats_bin: &Path,
    nats_conf: &Path,
    sagas_dir: &Path,
    data: &Path,
    nats_url: &str,
) -> Result<Client> {
    let nats_addr = SocketAddr::from(([127, 0, 0, 1], a.nats_port));
    let nats_store = data.join("nats");
    std::fs::create_dir_all(&nats_store)
        .with_context(|| format!("creating {}", nats_store.display()))?;
    stack.tier();
    stack.spawn(
        "nats-server",
        nats_bin,
        vec![
            "-c".into(),
            nats_conf.display().to_string(),
            "-p".into(),
            a.nats_port.to_string(),
            "-sd".into(),
            nats_store.display().to_string(),
        ],
        data,
    )?;
    wait_ready(
        exits,
        NATS_READY,
        "nats-server to accept connections",
        || async {
            tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(nats_addr),
            )
            .await
            .ok()?
            .ok()
            .map(drop)
        },
    )
    .await?;

    let partitions = a.partitions.to_string();
    let sagas = sagas_dir.display().to_string();
    stack.tier();
    for i in 1..=a.workers {
        let dir = data.join(format!("worker-{i}"));
        stack.spawn(
            &format!("saga-worker-{i}"),
            &bins.worker,
            vec![
                "--nats-url".into(),
                nats_url.into(),
                "--data-dir".into(),
                dir.display().to_string(),
                "--sagas".into(),
                sagas.clone(),
                "--partitions".into(),
                partitions.clone(),
            ],
            data,
        )?;
    }

    stack.tier();
    for (name, bin) in PARTICIPANTS.iter().zip(&bins.participants) {
        stack.spawn(
            name,
            bin,
            vec![
                "--nats-url".into(),
                nats_url.into(),
                "--data-dir".into(),
                data.join(name).display().to_string(),
                "--partitions".into(),
                partitions.clone(),
            ],
            data,
        )?;
    }

    stack.tier();
    stack.spawn(
        "saga-gateway",
        &bins.gateway,
        vec![
            "--grpc-addr".into(),
            a.grpc_addr.to_string(),
            "--nats-url".into(),
            nats_url.into(),
            "--data-dir".into(),
            data.join("gateway").display().to_string(),
            "--sagas".into(),
            sagas,
            "--partitions".into(),
            partitions,
        ],
        data,
    )?;

    let addr = format!("http://{}", a.grpc_addr);
    wait_ready(
        exits,
        Duration::from_secs(a.ready_timeout),
        "the gateway to answer gRPC",
        || probe_gateway(&addr),
    )
    .await
}

/// The gateway answers when GetSaga of an unknown id comes back (NOT_FOUND, or any
/// answer of the service itself rather than of the transport).
async fn probe_gateway(addr: &str) -> Option<Client> {
    let mut c = tokio::time::timeout(Duration::from_secs(2), try_connect(addr))
        .await
        .ok()?
        .ok()?;
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        c.get_saga(GetSagaRequest {
            saga_id: "sagactl-dev-readiness-probe".into(),
        }),
    )
    .await
    .ok()?;
    match r {
        Ok(_) => Some(c),
        Err(st)
            if matches!(
                st.code(),
                Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled
            ) =>
        {
            None
        }
        Err(_) => Some(c),
    }
}

/// Polls `ready` until it gives a value, a child dies (error naming it) or the deadline
/// passes.
async fn wait_ready<T, F, Fut>(
    exits: &mut mpsc::UnboundedReceiver<Exited>,
    within: Duration,
    what: &str,
    mut ready: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(exit) = exits.recv() => return Err(exit.error()),
            _ = interval.tick() => {}
        }
        if let Some(v) = ready().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for {what} (see the logs)");
        }
    }
}

/// One demo order and how it should end.
#[derive(Debug)]
struct DemoCase {
    what: &'static str,
    customer: &'static str,
    item: (&'static str, i64, i64),
    expect: SagaState,
}

const DEMO: [DemoCase; 3] = [
    DemoCase {
        what: "an order that completes",
        customer: "alice",
        item: ("sku-1", 1, 1500),
        expect: SagaState::Completed,
    },
    DemoCase {
        what: "an order of more than the stock",
        customer: "carol",
        item: ("sku-2", 5000, 1500),
        expect: SagaState::Compensated,
    },
    DemoCase {
        what: "an order whose payment is declined",
        customer: "decline-bob",
        item: ("sku-3", 1, 2500),
        expect: SagaState::Compensated,
    },
];

/// Places the demo orders, follows them to the end and prints how they ended; true when
/// each ended as expected.
async fn demo(client: Client) -> Result<bool> {
    sayln!();
    sayln!("demo: placing {} orders", DEMO.len());
    let mut placed = Vec::new();
    for case in &DEMO {
        let (sku, quantity, unit_price_cents) = case.item;
        let r = client
            .clone()
            .place_order(PlaceOrderRequest {
                customer_id: case.customer.into(),
                items: vec![OrderItem {
                    sku: sku.into(),
                    quantity,
                    unit_price_cents,
                }],
                idempotency_key: String::new(),
            })
            .await
            .map_err(|st| rpc_error("PlaceOrder", &st))?
            .into_inner();
        sayln!(
            "demo: {}: {} orders {quantity} x {sku} -> order {}, saga {}",
            case.what,
            case.customer,
            r.order_id,
            r.saga_id
        );
        placed.push((case, r.saga_id));
    }
    let deadline = Instant::now() + DEMO_DEADLINE;
    let ends = futures::future::join_all(placed.iter().map(|(_, id)| {
        let mut c = client.clone();
        async move {
            let follow = Follow {
                deadline: Some(deadline),
                not_found_grace: DEMO_DEADLINE,
            };
            until_terminal(&mut c, id, follow, |_| {}).await
        }
    }))
    .await;
    let mut all_ok = true;
    for ((case, _), end) in placed.iter().zip(ends) {
        let saga: Saga = end?;
        let ok = saga.state == case.expect as i32;
        all_ok &= ok;
        sayln!();
        sayln!(
            "demo: {} ({}): {}{}",
            case.what,
            case.customer,
            render::state_name(saga.state),
            if ok {
                String::new()
            } else {
                format!("  (expected {})", render::state_name(case.expect as i32))
            }
        );
        sayln!("{}", render::saga(&saga).trim_end());
    }
    sayln!();
    Ok(all_ok)
}

/// The binaries of the stack, beside sagactl.
#[derive(Debug)]
struct Binaries {
    worker: PathBuf,
    participants: Vec<PathBuf>,
    gateway: PathBuf,
}

impl Binaries {
    fn locate() -> Result<Self> {
        let worker = sibling_binary("saga-worker")?;
        let gateway = sibling_binary("saga-gateway")?;
        let participants = PARTICIPANTS
            .iter()
            .map(|p| sibling_binary(p))
            .collect::<Result<Vec<_>>>()?;
        let missing: Vec<String> = std::iter::once(&worker)
            .chain(&participants)
            .chain(std::iter::once(&gateway))
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            bail!(
                "missing binaries beside sagactl: {}; build them with `cargo build --workspace --bins`",
                missing.join(", ")
            );
        }
        Ok(Self {
            worker,
            participants,
            gateway,
        })
    }
}

fn nats_server_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("NATS_SERVER_BIN={} does not exist", p.display());
        }
        return Ok(p);
    }
    let p = PathBuf::from(".tools/bin/nats-server");
    if !p.is_file() {
        bail!(
            "nats-server not found at {} (relative to {}): run `make setup` to install the \
             pinned one, or set NATS_SERVER_BIN",
            p.display(),
            std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|_| "the current directory".into())
        );
    }
    p.canonicalize()
        .with_context(|| format!("resolving {}", p.display()))
}

fn existing(p: &Path, what: &str) -> Result<PathBuf> {
    p.canonicalize().map_err(|e| {
        anyhow!(
            "{what} {} not found ({e}); run from the repository root or pass the path",
            p.display()
        )
    })
}

/// Something answers on `addr`, or it cannot be bound.
fn port_in_use(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
        || TcpListener::bind(addr).is_err()
}

/// A child that ended without being asked to.
#[derive(Debug)]
struct Exited {
    name: String,
    status: std::io::Result<ExitStatus>,
    log: PathBuf,
}

impl Exited {
    fn error(&self) -> anyhow::Error {
        let status = match &self.status {
            Ok(s) => s.to_string(),
            Err(e) => format!("wait failed: {e}"),
        };
        anyhow!(
            "{} exited unexpectedly ({status}); last lines of {}:\n{}",
            self.name,
            self.log.display(),
            tail(&self.log, 20)
        )
    }
}

/// The last `n` lines of a log file.
fn tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return "  (no log)".into();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A running child: its supervising task waits for it, or stops it when told.
#[derive(Debug)]
struct Running {
    name: String,
    stop: Option<oneshot::Sender<()>>,
    done: JoinHandle<Stopped>,
}

#[derive(Debug)]
enum Stopped {
    /// Ended on its own (reported on the exits channel).
    Exited,
    /// Stopped by us: SIGTERM sufficed, or SIGKILL was needed.
    Terminated(std::io::Result<ExitStatus>),
    Killed(std::io::Result<ExitStatus>),
}

#[derive(Debug)]
struct Stack {
    /// Start order; stopped in reverse.
    tiers: Vec<Vec<Running>>,
    exits_tx: mpsc::UnboundedSender<Exited>,
}

impl Stack {
    /// Starts a new tier: what is spawned next is stopped before what came earlier.
    fn tier(&mut self) {
        self.tiers.push(Vec::new());
    }

    /// Starts a child into the current tier (so that it is stopped whatever happens next).
    fn spawn(&mut self, name: &str, program: &Path, args: Vec<String>, data: &Path) -> Result<()> {
        let log = data.join("logs").join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(&args)
            // Plain text in the log files (tracing colours its output otherwise).
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Own process group: a terminal's Ctrl-C reaches sagactl only, which stops
            // the children in order.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("{name} exited before it got a pid"))?;
        sayln!("started {name} (pid {pid}), log {}", log.display());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let exits = self.exits_tx.clone();
        let owned_name = name.to_string();
        let done = tokio::spawn(async move {
            tokio::select! {
                status = child.wait() => {
                    let _ = exits.send(Exited { name: owned_name, status, log });
                    Stopped::Exited
                }
                _ = stop_rx => terminate(&mut child, pid).await,
            }
        });
        let running = Running {
            name: name.to_string(),
            stop: Some(stop_tx),
            done,
        };
        match self.tiers.last_mut() {
            Some(tier) => tier.push(running),
            None => self.tiers.push(vec![running]),
        }
        Ok(())
    }

    /// Stops every child, newest tier first; within a tier all at once.
    async fn stop(&mut self) {
        while let Some(mut tier) = self.tiers.pop() {
            for r in &mut tier {
                if let Some(stop) = r.stop.take() {
                    let _ = stop.send(());
                }
            }
            for r in tier {
                match r.done.await {
                    Ok(Stopped::Terminated(Ok(s))) => sayln!("stopped {} ({s})", r.name),
                    Ok(Stopped::Killed(Ok(s))) => sayln!(
                        "killed {} ({s}): it did not stop within {GRACE:?} of SIGTERM",
                        r.name
                    ),
                    Ok(Stopped::Terminated(Err(e)) | Stopped::Killed(Err(e))) => {
                        esayln!("stopping {}: {e}", r.name)
                    }
                    Ok(Stopped::Exited) => sayln!("{} had exited", r.name),
                    Err(e) => esayln!("stopping {}: {e}", r.name),
                }
            }
        }
    }
}

/// SIGTERM, up to [`GRACE`] to exit, then SIGKILL.
async fn terminate(child: &mut tokio::process::Child, pid: u32) -> Stopped {
    let Ok(raw) = i32::try_from(pid) else {
        let _ = child.start_kill();
        return Stopped::Killed(child.wait().await);
    };
    // ESRCH: it is already gone; wait() below reaps it.
    let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
    match tokio::time::timeout(GRACE, child.wait()).await {
        Ok(status) => Stopped::Terminated(status),
        Err(_) => {
            let _ = child.start_kill();
            Stopped::Killed(child.wait().await)
        }
    }
}

/// Ctrl-C, SIGTERM and SIGHUP (the terminal closed), listened to from the start so that
/// none of them kills sagactl while it has children.
#[derive(Debug)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            hup: signal(SignalKind::hangup()).context("listening for SIGHUP")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "Ctrl-C",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}
