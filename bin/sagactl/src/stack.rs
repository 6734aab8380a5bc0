//! The local stack as child processes of sagactl, shared by `sagactl dev` and `sagactl
//! chaos`: where the binaries are, how a child is started, watched, killed, restarted
//! and stopped, and the start of a whole stack (nats-server, workers, participants,
//! gateway) in one data directory.
//!
//! Every child runs in a process group of its own, so a Ctrl-C in the terminal reaches
//! sagactl only, which then stops the children in reverse order of their tiers (SIGTERM,
//! a grace period, SIGKILL): the gateway first, nats-server last, so nobody loses its
//! broker while draining. A child that ends without being asked to is reported on the
//! exits channel; one that sagactl kills on purpose ([`Stack::kill`]) is not.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use saga_proto::GetSagaRequest;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Code;

use crate::args::StackArgs;
use crate::client::{try_connect, Client};
use crate::output::{esayln, sayln};
use crate::projection::sibling_binary;

/// How long a child gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(15);
/// How long nats-server gets to accept connections.
pub const NATS_READY: Duration = Duration::from_secs(20);

/// The binaries of the stack, beside sagactl.
#[derive(Debug)]
pub struct Binaries {
    pub worker: PathBuf,
    /// Participant name and binary, in the order asked for.
    pub participants: Vec<(String, PathBuf)>,
    pub gateway: PathBuf,
}

impl Binaries {
    /// The worker, the gateway and the named participants; an error lists every one
    /// that is missing.
    pub fn locate(participants: &[&str]) -> Result<Self> {
        let worker = sibling_binary("saga-worker")?;
        let gateway = sibling_binary("saga-gateway")?;
        let participants = participants
            .iter()
            .map(|p| Ok((p.to_string(), sibling_binary(p)?)))
            .collect::<Result<Vec<_>>>()?;
        let missing: Vec<String> = std::iter::once(&worker)
            .chain(participants.iter().map(|(_, p)| p))
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

/// The pinned nats-server: `NATS_SERVER_BIN`, else `.tools/bin/nats-server`.
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

/// `p`, made absolute; an error says what it was for.
fn existing(p: &Path, what: &str) -> Result<PathBuf> {
    p.canonicalize().map_err(|e| {
        anyhow!(
            "{what} {} not found ({e}); run from the repository root or pass the path",
            p.display()
        )
    })
}

/// Something answers on `addr`, or it cannot be bound.
pub fn port_in_use(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
        || TcpListener::bind(addr).is_err()
}

/// `n` distinct loopback ports nobody listens on now (the kernel's picks, all held until
/// the last is picked; free again once returned).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("finding a free port"))
        .collect::<Result<Vec<_>>>()?;
    held.iter()
        .map(|l| Ok(l.local_addr().context("finding a free port")?.port()))
        .collect()
}

/// What one child is: started again the same way after a kill.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// What it listens on, for people (`127.0.0.1:4222`).
    pub listens: Option<String>,
}

impl Spec {
    pub fn new(name: impl Into<String>, program: &Path, args: Vec<String>) -> Self {
        Self {
            name: name.into(),
            program: program.to_path_buf(),
            args,
            env: Vec::new(),
            listens: None,
        }
    }

    /// Records what the child listens on (shown by `sagactl dev ps`).
    pub fn listening_on(mut self, addr: impl Into<String>) -> Self {
        self.listens = Some(addr.into());
        self
    }
}

/// A child of the stack (stable across restarts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcId(usize);

/// A child that ended without being asked to.
#[derive(Debug)]
pub struct Exited {
    pub id: ProcId,
    /// Which start of the child ended (1 for the first).
    pub generation: u64,
    pub name: String,
    /// When this start of the child was spawned.
    pub started: Instant,
    pub status: std::io::Result<ExitStatus>,
    pub log: PathBuf,
}

impl Exited {
    /// One line of what happened (`signal: 9 (SIGKILL)`, `exit status: 1`).
    pub fn status_text(&self) -> String {
        match &self.status {
            Ok(s) => s.to_string(),
            Err(e) => format!("wait failed: {e}"),
        }
    }

    /// How it ended, in words: `killed by SIGKILL`, `exited with status 1`.
    pub fn how(&self) -> String {
        use std::os::unix::process::ExitStatusExt as _;
        match &self.status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(code), _) => format!("exited with status {code}"),
                (None, Some(sig)) => match Signal::try_from(sig) {
                    Ok(sig) => format!("killed by {}", sig.as_str()),
                    Err(_) => format!("killed by signal {sig}"),
                },
                (None, None) => format!("ended ({s})"),
            },
            Err(e) => format!("could not be waited for ({e})"),
        }
    }

    pub fn error(&self) -> anyhow::Error {
        anyhow!(
            "{} exited unexpectedly ({}); last lines of {}:\n{}",
            self.name,
            self.status_text(),
            self.log.display(),
            tail(&self.log, 20)
        )
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
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
    pid: u32,
    started: Instant,
    /// Set before sagactl kills it on purpose: its end is then not reported.
    expected: Arc<AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
    done: JoinHandle<Stopped>,
}

#[derive(Debug)]
enum Stopped {
    /// Ended on its own (reported on the exits channel).
    Exited,
    /// Stopped by us: SIGTERM sufficed, or SIGKILL was needed (or sent on purpose).
    Terminated(std::io::Result<ExitStatus>),
    Killed(std::io::Result<ExitStatus>),
}

#[derive(Debug)]
struct Slot {
    spec: Spec,
    tier: usize,
    log: PathBuf,
    generation: u64,
    running: Option<Running>,
}

/// The children, in tiers: started in order, stopped in reverse.
#[derive(Debug)]
pub struct Stack {
    slots: Vec<Slot>,
    tiers: usize,
    logs: PathBuf,
    /// Where the stack says what it starts and stops (stderr when stdout is for JSON).
    to_stderr: bool,
    exits_tx: mpsc::UnboundedSender<Exited>,
}

impl Stack {
    /// An empty stack whose children log to `logs/<name>.log`; their unexpected ends
    /// arrive on the returned channel.
    pub fn new(logs: &Path) -> (Self, mpsc::UnboundedReceiver<Exited>) {
        let (exits_tx, exits) = mpsc::unbounded_channel();
        let stack = Self {
            slots: Vec::new(),
            tiers: 0,
            logs: logs.to_path_buf(),
            to_stderr: false,
            exits_tx,
        };
        (stack, exits)
    }

    /// Says what it starts and stops on stderr rather than stdout.
    pub fn messages_on_stderr(mut self) -> Self {
        self.to_stderr = true;
        self
    }

    fn say(&self, line: std::fmt::Arguments<'_>) {
        say(self.to_stderr, line);
    }

    /// Starts a new tier: what is spawned next is stopped before what came earlier.
    pub fn tier(&mut self) {
        self.tiers += 1;
    }

    /// Starts a child into the current tier (so that it is stopped whatever happens next).
    pub fn spawn(&mut self, spec: Spec) -> Result<ProcId> {
        let id = ProcId(self.slots.len());
        let log = self.logs.join(format!("{}.log", spec.name));
        self.slots.push(Slot {
            spec,
            tier: self.tiers,
            log,
            generation: 0,
            running: None,
        });
        self.start(id)?;
        Ok(id)
    }

    /// The child's name.
    pub fn name(&self, id: ProcId) -> &str {
        &self.slots[id.0].spec.name
    }

    /// The pid of the child's current process, if it runs.
    pub fn pid(&self, id: ProcId) -> Option<u32> {
        self.slots[id.0].running.as_ref().map(|r| r.pid)
    }

    /// Which start of the child runs now (1 for the first).
    pub fn generation(&self, id: ProcId) -> u64 {
        self.slots[id.0].generation
    }

    /// Every child, in the order they were first started.
    pub fn ids(&self) -> impl Iterator<Item = ProcId> {
        (0..self.slots.len()).map(ProcId)
    }

    /// The child called `name`.
    pub fn find(&self, name: &str) -> Option<ProcId> {
        self.slots
            .iter()
            .position(|s| s.spec.name == name)
            .map(ProcId)
    }

    /// The child's specification (command line, what it listens on).
    pub fn spec(&self, id: ProcId) -> &Spec {
        &self.slots[id.0].spec
    }

    /// Its log file.
    pub fn log(&self, id: ProcId) -> &Path {
        &self.slots[id.0].log
    }

    /// Its process runs (it may be paused): started, and not yet seen to end.
    pub fn is_running(&self, id: ProcId) -> bool {
        self.slots[id.0]
            .running
            .as_ref()
            .is_some_and(|r| !r.done.is_finished())
    }

    /// When its current process was started, while it runs.
    pub fn started_at(&self, id: ProcId) -> Option<Instant> {
        self.slots[id.0]
            .running
            .as_ref()
            .filter(|r| !r.done.is_finished())
            .map(|r| r.started)
    }

    /// Asks the child to stop (SIGTERM, then SIGKILL after the grace period) without
    /// waiting: the returned handle says how it ended. Its end is not reported as
    /// unexpected. `None` when it does not run.
    pub fn begin_stop(&mut self, id: ProcId) -> Option<Stopping> {
        let mut r = self.slots[id.0].running.take()?;
        if r.done.is_finished() {
            // It ended on its own and was reported; nothing to stop.
            return None;
        }
        if let Ok(pid) = pid_of(r.pid) {
            let _ = kill(pid, Signal::SIGCONT);
        }
        r.expected.store(true, Ordering::SeqCst);
        if let Some(stop) = r.stop.take() {
            let _ = stop.send(());
        }
        Some(Stopping {
            name: self.slots[id.0].spec.name.clone(),
            done: r.done,
        })
    }

    fn start(&mut self, id: ProcId) -> Result<()> {
        let exits = self.exits_tx.clone();
        let slot = &mut self.slots[id.0];
        let spec = &slot.spec;
        let name = spec.name.clone();
        // A restarted child appends to the log of its earlier lives.
        let out = OpenOptions::new()
            .create(true)
            .write(true)
            .append(slot.generation > 0)
            .truncate(slot.generation == 0)
            .open(&slot.log)
            .with_context(|| format!("creating {}", slot.log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
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
            .with_context(|| format!("starting {name} ({})", spec.program.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("{name} exited before it got a pid"))?;
        slot.generation += 1;
        let generation = slot.generation;
        let log = slot.log.clone();
        if generation == 1 {
            say(
                self.to_stderr,
                format_args!("started {name} (pid {pid}), log {}", log.display()),
            );
        } else {
            say(self.to_stderr, format_args!("restarted {name} (pid {pid})"));
        }
        let started = Instant::now();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let expected = Arc::new(AtomicBool::new(false));
        let expected_by_task = expected.clone();
        let done = tokio::spawn(async move {
            tokio::select! {
                status = child.wait() => {
                    if expected_by_task.load(Ordering::SeqCst) {
                        return Stopped::Killed(status);
                    }
                    let _ = exits.send(Exited { id, generation, name, started, status, log });
                    Stopped::Exited
                }
                _ = stop_rx => terminate(&mut child, pid).await,
            }
        });
        slot.running = Some(Running {
            pid,
            started,
            expected,
            stop: Some(stop_tx),
            done,
        });
        Ok(())
    }

    /// SIGKILLs the child and waits until it is gone; its end is not reported as
    /// unexpected. A child that is not running is left as it is.
    pub async fn kill(&mut self, id: ProcId) -> Result<()> {
        let Some(r) = self.slots[id.0].running.take() else {
            return Ok(());
        };
        r.expected.store(true, Ordering::SeqCst);
        // ESRCH: it ended on its own just now; the task below has reaped it.
        let _ = kill(pid_of(r.pid)?, Signal::SIGKILL);
        r.done
            .await
            .with_context(|| format!("waiting for {} to die", self.name(id)))?;
        Ok(())
    }

    /// Starts the child again, with the same command line and data, if it does not run
    /// (it was killed, or it ended on its own).
    pub async fn restart(&mut self, id: ProcId) -> Result<()> {
        if let Some(r) = &self.slots[id.0].running {
            if !r.done.is_finished() {
                return Ok(());
            }
        }
        if let Some(r) = self.slots[id.0].running.take() {
            let _ = r.done.await;
        }
        self.start(id)
    }

    /// Sends `signal` to the child's process (SIGSTOP / SIGCONT for a pause).
    pub fn signal(&self, id: ProcId, signal: Signal) -> Result<()> {
        let pid = self
            .pid(id)
            .ok_or_else(|| anyhow!("{} is not running", self.name(id)))?;
        kill(pid_of(pid)?, signal)
            .with_context(|| format!("sending {signal} to {} (pid {pid})", self.name(id)))
    }

    /// Stops every child, newest tier first; within a tier all at once.
    pub async fn stop(&mut self) {
        for tier in (0..=self.tiers).rev() {
            let mut stopping = Vec::new();
            for i in 0..self.slots.len() {
                let slot = &self.slots[i];
                if slot.tier != tier || slot.running.is_none() {
                    continue;
                }
                match self.begin_stop(ProcId(i)) {
                    Some(s) => stopping.push(s),
                    None => self.say(format_args!("{} had exited", self.slots[i].spec.name)),
                }
            }
            for s in stopping {
                let line = s.wait().await;
                self.say(format_args!("{line}"));
            }
        }
    }
}

/// A child being stopped by [`Stack::begin_stop`].
#[derive(Debug)]
pub struct Stopping {
    name: String,
    done: JoinHandle<Stopped>,
}

impl Stopping {
    /// Waits until it is gone; one line of how it went.
    pub async fn wait(self) -> String {
        let name = self.name;
        match self.done.await {
            Ok(Stopped::Terminated(Ok(s))) => format!("stopped {name} ({s})"),
            Ok(Stopped::Killed(Ok(s))) => {
                format!("killed {name} ({s}): it did not stop within {GRACE:?} of SIGTERM")
            }
            Ok(Stopped::Terminated(Err(e)) | Stopped::Killed(Err(e))) => {
                format!("stopping {name}: {e}")
            }
            Ok(Stopped::Exited) => format!("{name} had exited"),
            Err(e) => format!("stopping {name}: {e}"),
        }
    }
}

/// A line on stdout, or on stderr; neither a closed stdout nor a closed stderr stops
/// sagactl (it must go on stopping its children).
pub fn say(to_stderr: bool, line: std::fmt::Arguments<'_>) {
    if to_stderr {
        esayln!("{line}");
    } else {
        sayln!("{line}");
    }
}

fn pid_of(pid: u32) -> Result<Pid> {
    Ok(Pid::from_raw(
        i32::try_from(pid).with_context(|| format!("pid {pid} out of range"))?,
    ))
}

/// SIGTERM, up to [`GRACE`] to exit, then SIGKILL.
async fn terminate(child: &mut tokio::process::Child, pid: u32) -> Stopped {
    let Ok(pid) = pid_of(pid) else {
        let _ = child.start_kill();
        return Stopped::Killed(child.wait().await);
    };
    // ESRCH: it is already gone; wait() below reaps it.
    let _ = kill(pid, Signal::SIGTERM);
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
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            hup: signal(SignalKind::hangup()).context("listening for SIGHUP")?,
        })
    }

    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "Ctrl-C",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// Polls `ready` until it gives a value, a child dies (error naming it) or the deadline
/// passes.
pub async fn wait_ready<T, F, Fut>(
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

/// nats-server accepts TCP connections on `addr`.
pub async fn nats_accepts(addr: SocketAddr) -> Option<()> {
    tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .ok()?
    .ok()
    .map(drop)
}

/// The gateway answers when GetSaga of an unknown id comes back (NOT_FOUND, or any
/// answer of the service itself rather than of the transport).
pub async fn probe_gateway(addr: &str) -> Option<Client> {
    let mut c = tokio::time::timeout(Duration::from_secs(2), try_connect(addr))
        .await
        .ok()?
        .ok()?;
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        c.get_saga(GetSagaRequest {
            saga_id: "sagactl-readiness-probe".into(),
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

/// Resolves once `n` workers are in `saga_workers` (the caller's deadline bounds the
/// wait).
async fn live_workers(nats_url: &str, security: saga_nats::Security, n: usize) {
    use futures::TryStreamExt as _;
    let client = loop {
        match saga_nats::connect_with(nats_url, "sagactl", &security).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let js = async_nats::jetstream::new(client);
    loop {
        if let Ok(kv) = js.get_key_value(saga_nats::names::WORKERS_BUCKET).await {
            if let Ok(keys) = kv.keys().await {
                let live = keys.try_collect::<Vec<_>>().await.map(|k| k.len());
                if live.is_ok_and(|l| l >= n) {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a whole stack is made of and where it lives.
#[derive(Debug)]
pub struct Layout {
    pub bins: Binaries,
    pub nats_bin: PathBuf,
    pub nats_conf: PathBuf,
    pub sagas_dir: PathBuf,
    /// Data of every process: `nats/`, `worker-<i>/`, `<participant>/`, `gateway/`, and
    /// their logs in `logs/`.
    pub data: PathBuf,
    pub nats_port: u16,
    pub grpc_addr: SocketAddr,
    pub workers: u32,
    pub partitions: u32,
    /// Environment of every worker (e.g. `LEASE_TTL_MS`).
    pub worker_env: Vec<(String, String)>,
    /// Extra flags of a participant, by name.
    pub participant_args: Vec<(String, Vec<String>)>,
    pub ready_timeout: Duration,
    /// Children started last, once the gateway answers (event consumers, other
    /// services), each told the stack's NATS URL as `NATS_URL`.
    pub extras: Vec<Spec>,
    /// Where the orders participant serves its gRPC API (`None`: a free port).
    pub orders_addr: Option<SocketAddr>,
    /// One NATS user per role and TLS (`sagactl dev --secure`): the server runs with
    /// its `server.conf`, every child gets its role's credentials. `None`: the
    /// plaintext dev mode.
    pub auth: Option<crate::natsauth::AuthDir>,
    /// Environment of every child (e.g. `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub child_env: Vec<(String, String)>,
    /// Each child serves `/metrics` on 127.0.0.1:`base + slot` ([`metrics_slot`]).
    pub metrics_base: Option<u16>,
}

/// The offset of a child's metrics port from `--metrics-port`: the gateway 0, worker
/// `i` `i`, the participants from 40, the other services from 60.
pub fn metrics_slot(role: ChildRole) -> u16 {
    match role {
        ChildRole::Gateway => 0,
        ChildRole::Worker(i) => i as u16,
        ChildRole::Participant(i) => 40 + i as u16,
        ChildRole::Extra(i) => 60 + i as u16,
    }
}

/// Which child, for [`metrics_slot`].
#[derive(Debug, Clone, Copy)]
pub enum ChildRole {
    Gateway,
    Worker(u32),
    Participant(usize),
    Extra(usize),
}

/// The children of a started stack.
#[derive(Debug, Clone)]
pub struct Launched {
    pub nats: ProcId,
    pub workers: Vec<ProcId>,
    pub participants: Vec<ProcId>,
    pub gateway: ProcId,
}

impl Layout {
    /// Finds what a stack of `workers` workers and these participants needs (the pinned
    /// nats-server, its configuration, the definitions, the binaries) and makes its
    /// data directory `data` with `logs/` inside; every error says what is missing.
    pub fn new(
        args: &StackArgs,
        participants: &[&str],
        data: &Path,
        nats_port: u16,
        grpc_addr: SocketAddr,
        workers: u32,
    ) -> Result<Self> {
        let nats_bin = nats_server_binary()?;
        let nats_conf = existing(
            &args.nats_conf,
            "the nats-server configuration (--nats-conf)",
        )?;
        let sagas_dir = existing(&args.sagas, "the saga definitions directory (--sagas)")?;
        let bins = Binaries::locate(participants)?;
        let logs = data.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let data = data
            .canonicalize()
            .with_context(|| format!("resolving {}", data.display()))?;
        Ok(Self {
            bins,
            nats_bin,
            nats_conf,
            sagas_dir,
            data,
            nats_port,
            grpc_addr,
            workers,
            partitions: args.partitions,
            worker_env: Vec::new(),
            participant_args: Vec::new(),
            ready_timeout: Duration::from_secs(args.ready_timeout),
            extras: Vec::new(),
            orders_addr: None,
            auth: None,
            child_env: Vec::new(),
            metrics_base: None,
        })
    }

    /// Where the children log (`<name>.log`).
    pub fn logs(&self) -> PathBuf {
        self.data.join("logs")
    }

    pub fn nats_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.nats_port))
    }

    /// How this process connects to the stack's NATS (the operator's user, with
    /// `--secure`).
    pub fn operator(&self) -> Result<saga_nats::Security> {
        match &self.auth {
            Some(a) => a.security_for("sagactl"),
            None => Ok(saga_nats::Security::default()),
        }
    }

    pub fn nats_url(&self) -> String {
        format!("nats://{}", self.nats_addr())
    }

    /// The sled directory of participant `name`.
    pub fn participant_dir(&self, name: &str) -> PathBuf {
        self.data.join(name)
    }

    /// The environment of a child: the credentials of NATS role `role` (none in the
    /// plaintext dev mode), [`child_env`](Self::child_env) and its metrics address.
    fn role_env(&self, role: &str, child: ChildRole) -> Vec<(String, String)> {
        let mut env = self
            .auth
            .as_ref()
            .map(|a| a.env_for(role))
            .unwrap_or_default();
        env.extend(self.child_env.iter().cloned());
        if let Some(base) = self.metrics_base {
            let port = base.saturating_add(metrics_slot(child));
            env.push(("METRICS_ADDR".into(), format!("127.0.0.1:{port}")));
        }
        env
    }

    /// Starts every process, in tiers (nats-server, workers, participants, gateway), and
    /// returns a client of the ready gateway.
    pub async fn start(
        &self,
        stack: &mut Stack,
        exits: &mut mpsc::UnboundedReceiver<Exited>,
    ) -> Result<(Client, Launched)> {
        let nats_store = self.data.join("nats");
        std::fs::create_dir_all(&nats_store)
            .with_context(|| format!("creating {}", nats_store.display()))?;
        stack.tier();
        let nats = stack.spawn(
            Spec::new(
                "nats-server",
                &self.nats_bin,
                vec![
                    "-c".into(),
                    self.auth
                        .as_ref()
                        .map_or(&self.nats_conf, |a| &a.server_conf)
                        .display()
                        .to_string(),
                    "-p".into(),
                    self.nats_port.to_string(),
                    "-sd".into(),
                    nats_store.display().to_string(),
                ],
            )
            .listening_on(self.nats_addr().to_string()),
        )?;
        let addr = self.nats_addr();
        wait_ready(
            exits,
            NATS_READY,
            "nats-server to accept connections",
            || nats_accepts(addr),
        )
        .await?;

        let nats_url = self.nats_url();
        let partitions = self.partitions.to_string();
        let sagas = self.sagas_dir.display().to_string();
        stack.tier();
        let mut workers = Vec::new();
        for i in 1..=self.workers {
            let dir = self.data.join(format!("worker-{i}"));
            let mut spec = Spec::new(
                format!("saga-worker-{i}"),
                &self.bins.worker,
                vec![
                    "--nats-url".into(),
                    nats_url.clone(),
                    "--data-dir".into(),
                    dir.display().to_string(),
                    "--sagas".into(),
                    sagas.clone(),
                    "--partitions".into(),
                    partitions.clone(),
                ],
            );
            spec.env = self.worker_env.clone();
            spec.env
                .extend(self.role_env("saga-worker", ChildRole::Worker(i)));
            workers.push(stack.spawn(spec)?);
        }

        stack.tier();
        let mut participants = Vec::new();
        for (index, (name, bin)) in self.bins.participants.iter().enumerate() {
            let mut args = vec![
                "--nats-url".into(),
                nats_url.clone(),
                "--data-dir".into(),
                self.participant_dir(name).display().to_string(),
                "--partitions".into(),
                partitions.clone(),
            ];
            if let Some((_, extra)) = self.participant_args.iter().find(|(n, _)| n == name) {
                args.extend(extra.iter().cloned());
            }
            let mut spec = Spec::new(name.as_str(), bin, args);
            spec.env
                .extend(self.role_env(name, ChildRole::Participant(index)));
            if name == "orders" {
                // Its gRPC API: where `sagactl dev --orders-addr` says, else any free port.
                let addr = self
                    .orders_addr
                    .map_or_else(|| "127.0.0.1:0".to_string(), |a| a.to_string());
                spec.env.push(("ORDERS_GRPC_ADDR".into(), addr));
            }
            participants.push(stack.spawn(spec)?);
        }

        // A gateway refuses starts of a type no live worker runs: it comes up once every
        // worker has announced itself.
        let within = self.ready_timeout;
        tokio::select! {
            r = tokio::time::timeout(within, live_workers(&nats_url, self.operator()?, self.workers as usize)) => {
                if r.is_err() {
                    bail!("timed out after {within:?} waiting for the workers to join (see the logs)");
                }
            }
            Some(exit) = exits.recv() => return Err(exit.error()),
        }

        stack.tier();
        let mut gateway = Spec::new(
            "saga-gateway",
            &self.bins.gateway,
            vec![
                "--grpc-addr".into(),
                self.grpc_addr.to_string(),
                "--nats-url".into(),
                nats_url,
                "--data-dir".into(),
                self.data.join("gateway").display().to_string(),
                "--sagas".into(),
                sagas,
                "--partitions".into(),
                partitions,
            ],
        )
        .listening_on(self.grpc_addr.to_string());
        gateway
            .env
            .extend(self.role_env("saga-gateway", ChildRole::Gateway));
        let gateway = stack.spawn(gateway)?;

        let addr = format!("http://{}", self.grpc_addr);
        let client = wait_ready(
            exits,
            self.ready_timeout,
            "the gateway to answer gRPC",
            || probe_gateway(&addr),
        )
        .await?;

        if !self.extras.is_empty() {
            stack.tier();
            for (index, spec) in self.extras.iter().enumerate() {
                let mut spec = spec.clone();
                spec.env.push(("NATS_URL".into(), self.nats_url()));
                let env = self.role_env(&spec.name, ChildRole::Extra(index));
                spec.env.extend(env);
                stack.spawn(spec)?;
            }
        }
        Ok((
            client,
            Launched {
                nats,
                workers,
                participants,
                gateway,
            },
        ))
    }
}
