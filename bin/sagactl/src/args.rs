//! Command-line grammar (clap derive) and the parsers of values users type.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use saga_proto::{OrderItem, SagaState};

/// Saga runtime control tool.
#[derive(Debug, Parser)]
#[command(name = "sagactl", version, about)]
pub struct Cli {
    /// Address of the gateway (saga.v1.SagaGateway).
    #[arg(
        long,
        global = true,
        env = "SAGA_GATEWAY",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL"
    )]
    pub gateway: String,
    /// Print machine-readable JSON (proto3 JSON mapping) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Token and TLS files of a secured gateway.
    #[command(flatten)]
    pub security: crate::client::ClientSecurity,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with saga definitions (YAML).
    #[command(subcommand)]
    Def(DefCommand),
    /// Place orders (the OrderCheckout saga).
    #[command(subcommand)]
    Order(OrderCommand),
    /// Inspect, watch, start and cancel sagas.
    #[command(subcommand)]
    Saga(SagaCommand),
    /// Maintain the gateway's read model.
    #[command(subcommand)]
    Projection(ProjectionCommand),
    /// Load the stack with orders and report throughput and latency to a terminal state.
    Bench(BenchArgs),
    /// Run the whole stack locally: nats-server, workers, participants, gateway; children
    /// that die are restarted. `sagactl dev ps|kill|stop|start|restart|logs` control a
    /// running one from another terminal.
    #[command(args_conflicts_with_subcommands = true)]
    Dev(DevArgs),
    /// Live workers, the partitions each holds, and the lag of every partition.
    Cluster(ClusterArgs),
    /// Run a local stack, load it with orders while killing and pausing its processes
    /// (seeded), then check that nothing was lost or done twice (see docs/reliability.md).
    Chaos(ChaosArgs),
    /// The event catalog (events/*.yaml): validate it, list, show and draw its events.
    #[command(subcommand)]
    Events(crate::events::EventsCommand),
    /// The dead-letter queue (SAGA_DLQ): list, show, redrive and purge dead letters.
    Dlq(crate::dlq::DlqArgs),
    /// Bearer tokens of the gateway: make one, hash one.
    #[command(subcommand)]
    Token(crate::token::TokenCommand),
    /// Event-sourced aggregates (ES_EVENTS): show one's state and events, now or back then.
    #[command(subcommand)]
    Es(crate::es::EsCommand),
    /// Write one NATS user (nkey) per role with its permissions, and with --tls a CA
    /// and a server certificate (see docs/security.md).
    NatsAuth(crate::natsauth::NatsAuthArgs),
}

#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Lease TTL of the workers, in milliseconds (a heartbeat older than it is gone).
    #[arg(long, env = "LEASE_TTL_MS", default_value_t = 10_000)]
    pub lease_ttl_ms: u64,
}

#[derive(Debug, Subcommand)]
pub enum DefCommand {
    /// Validate definition files; exits non-zero and prints every problem when one is broken.
    Validate {
        /// Definition files (e.g. sagas/*.yaml).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also print the derived failure-scenario table and the validator's notes.
        #[arg(long)]
        explain: bool,
    },
    /// Print a Mermaid flowchart of a definition (forward steps solid, compensations dotted).
    Graph {
        /// Definition file.
        file: PathBuf,
    },
    /// The definition versions registered in the cluster (KV saga_definitions): digest,
    /// label, which is latest, when registered, and how many open sagas run on each.
    Ls(DefLsArgs),
    /// Register definition files as versions in the cluster; each becomes the latest of
    /// its type (what new sagas start on) unless --not-latest.
    Push {
        /// Definition files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Register only: new sagas keep starting on the current latest version.
        #[arg(long)]
        not_latest: bool,
        /// NATS server URL.
        #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
    },
}

#[derive(Debug, Args)]
pub struct DefLsArgs {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Open sagas whose last journal record is read to tell their version; past it the
    /// rest are counted as `?`.
    #[arg(long, default_value_t = 10_000)]
    pub max_open: usize,
}

#[derive(Debug, Subcommand)]
pub enum OrderCommand {
    /// Place an order: starts an OrderCheckout saga.
    Place(PlaceArgs),
}

#[derive(Debug, Args)]
pub struct PlaceArgs {
    /// Customer id (ids starting with `decline-` are declined by the example payment service).
    #[arg(long, value_parser = non_empty)]
    pub customer: String,
    /// An order line, SKU:QTY:PRICE_CENTS (e.g. sku-1:2:1500); repeat for more lines.
    #[arg(long = "item", value_name = "SKU:QTY:PRICE_CENTS", required = true, value_parser = parse_item)]
    pub items: Vec<OrderItem>,
    /// Same key and same order: the same saga (safe to retry). Default: the gateway makes one.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Watch the saga until it ends; exit status 3 when it ends other than COMPLETED.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 120, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// The stack's NATS server: count the durable (fsynced) writes per saga from every
    /// stream's sequence before and after the run.
    #[arg(long, value_name = "URL")]
    pub nats_url: Option<String>,
    /// Also measure the server's raw fsynced append rate in the same run (needs
    /// --nats-url) and report the broker's bound: that rate / writes per saga.
    #[arg(long, requires = "nats_url")]
    pub raw: bool,
    /// Messages of the --raw measure, and how many await their ack at once.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub raw_messages: u64,
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub raw_window: u64,
    /// The data directory of a running `sagactl dev` stack: report CPU seconds per saga
    /// and resident memory of each of its processes.
    #[arg(long, value_name = "DIR")]
    pub dev_data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum SagaCommand {
    /// Show a saga: state, current step, reasons and its steps.
    Get {
        /// Saga id.
        id: String,
    },
    /// List sagas, newest first.
    List(ListArgs),
    /// Print the saga's changes until it reaches a terminal state.
    Watch {
        /// Saga id.
        id: String,
        /// Give up after this many seconds (default: wait as long as it takes).
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
        timeout: Option<u64>,
    },
    /// Print the saga's journal: every transition, its input and what happened.
    History {
        /// Saga id.
        id: String,
    },
    /// Print the saga's timeline with the trace and span id of every transition (from
    /// its journal), to look the saga up in a tracing backend.
    Trace {
        /// Saga id.
        id: String,
    },
    /// Cancel a saga: compensates what ran; a no-op on a terminal saga.
    Cancel {
        /// Saga id.
        id: String,
        /// Why (recorded as the compensation reason).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Start a saga of any loaded definition (e.g. TravelBookingSaga) with a JSON payload.
    Start(StartArgs),
    /// Move the open sagas of one definition version to another (see docs/definitions.md):
    /// each saga is checked where it stands; those that cannot move are listed with
    /// every reason and finish on their version.
    Migrate(MigrateArgs),
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The version the sagas run on: a digest, a unique digest prefix or a label.
    #[arg(long, value_parser = non_empty)]
    pub from: String,
    /// The version to move them to (digest, unique prefix or label).
    #[arg(long, value_parser = non_empty)]
    pub to: String,
    /// A step renamed between the versions, OLD=NEW; repeat for more.
    #[arg(long = "step-map", value_name = "OLD=NEW")]
    pub step_map: Vec<String>,
    /// Saga type, when a digest prefix or label is shared by several types.
    #[arg(long = "type")]
    pub saga_type: Option<String>,
    /// Only this saga (repeat for more); default: every open saga on --from.
    #[arg(long = "saga", value_name = "ID")]
    pub saga: Vec<String>,
    /// Check and report, send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds to wait for the workers' verdicts.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub wait: u64,
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Saga type (the definition's name).
    #[arg(long = "type", value_name = "TYPE", value_parser = non_empty)]
    pub saga_type: String,
    /// The saga's input, a JSON object (e.g. '{"destination":"Lisbon"}').
    #[arg(long, default_value = "{}", value_parser = parse_payload)]
    pub payload: serde_json::Map<String, serde_json::Value>,
    /// Same key and same request: the same saga.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only sagas in this state.
    #[arg(long, value_enum)]
    pub state: Option<StateFilter>,
    /// Only sagas of this type (e.g. OrderCheckout).
    #[arg(long = "type", value_name = "TYPE")]
    pub saga_type: Option<String>,
    /// Sagas per page (the gateway's default is 50).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub page_size: Option<i32>,
    /// Continue from the token a previous page printed.
    #[arg(long, conflicts_with = "all")]
    pub page_token: Option<String>,
    /// Follow the pages to the end.
    #[arg(long)]
    pub all: bool,
}

/// Saga states as users type them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateFilter {
    Pending,
    Running,
    Compensating,
    Completed,
    Compensated,
    Failed,
}

impl From<StateFilter> for SagaState {
    fn from(s: StateFilter) -> Self {
        match s {
            StateFilter::Pending => SagaState::Pending,
            StateFilter::Running => SagaState::Running,
            StateFilter::Compensating => SagaState::Compensating,
            StateFilter::Completed => SagaState::Completed,
            StateFilter::Compensated => SagaState::Compensated,
            StateFilter::Failed => SagaState::Failed,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ProjectionCommand {
    /// Rebuild the gateway's read model by replaying SAGA_JOURNAL (stop the gateway first:
    /// it holds its data directory); with NAME, rebuild that event-sourced projection
    /// blue/green in the service that runs it (the live view keeps serving).
    Rebuild(RebuildArgs),
    /// The event-sourced projections of the aggregate definitions, with checkpoint and lag.
    Ls(crate::es::ProjectionLsArgs),
    /// Generation, checkpoint and lag of one event-sourced projection.
    Status(crate::es::ProjectionStatusArgs),
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// An event-sourced projection (e.g. AccountBalanceView); without it, the gateway's.
    pub name: Option<String>,
    /// The gateway's data directory (default: the gateway's own default / DATA_DIR).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// NATS server URL (default: the gateway's own default / NATS_URL).
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Saga definitions directory (default: the gateway's own default / SAGAS_DIR).
    #[arg(long)]
    pub sagas: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Orders to place.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub sagas: u64,
    /// Sagas in flight at once (closed loop); with --rate, the cap on sagas in flight.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub concurrency: u64,
    /// Open loop: start this many sagas per second whatever the latency; latency then
    /// counts from each saga's scheduled start (no coordinated omission).
    #[arg(long, value_name = "PER_SEC", value_parser = positive_f64)]
    pub rate: Option<f64>,
    /// Customer ids are PREFIX<n>; `decline-` makes every payment fail (compensation load).
    #[arg(long, default_value = "bench-")]
    pub customer_prefix: String,
    /// Order lines of every order (default: one unit of a SKU of its own, so stock never
    /// runs out).
    #[arg(long = "item", value_name = "SKU:QTY:PRICE_CENTS", value_parser = parse_item)]
    pub items: Vec<OrderItem>,
    /// A saga not terminal after this many seconds counts as timed out.
    #[arg(long, default_value_t = 120, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// The stack's NATS server: count the durable (fsynced) writes per saga from every
    /// stream's sequence before and after the run.
    #[arg(long, value_name = "URL")]
    pub nats_url: Option<String>,
    /// Also measure the server's raw fsynced append rate in the same run (needs
    /// --nats-url) and report the broker's bound: that rate / writes per saga.
    #[arg(long, requires = "nats_url")]
    pub raw: bool,
    /// Messages of the --raw measure, and how many await their ack at once.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub raw_messages: u64,
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub raw_window: u64,
    /// The data directory of a running `sagactl dev` stack: report CPU seconds per saga
    /// and resident memory of each of its processes.
    #[arg(long, value_name = "DIR")]
    pub dev_data_dir: Option<PathBuf>,
}

/// What a local stack is made of, for `dev` and `chaos`.
#[derive(Debug, Args)]
pub struct StackArgs {
    /// Saga partitions (every process gets the same count).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub partitions: u32,
    /// Directory of saga definitions.
    #[arg(long, default_value = "sagas")]
    pub sagas: PathBuf,
    /// nats-server configuration file.
    #[arg(long, default_value = "nats.conf")]
    pub nats_conf: PathBuf,
    /// Seconds to wait for the stack to come up.
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub ready_timeout: u64,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the gateway listens for gRPC.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// Data of every process (nats store, sled stores) and their logs (DATA/logs).
    #[arg(long, default_value = ".sagas-dev")]
    pub data_dir: PathBuf,
    /// Port of the nats-server started for the stack (must be free).
    #[arg(long, default_value_t = 4222, value_parser = clap::value_parser!(u16).range(1..))]
    pub nats_port: u16,
    /// Number of saga-worker processes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub workers: u32,
    #[command(flatten)]
    pub stack: StackArgs,
    /// Where the event-sourced `bank` service listens for gRPC (saga.es.v1.Bank).
    #[arg(long, default_value = "127.0.0.1:50061")]
    pub bank_addr: SocketAddr,
    /// Where the event-sourced `orders` participant serves its gRPC API
    /// (saga.es.v1.Orders: ShipOrder, CancelOrder, GetOrder, ListOrders).
    #[arg(long, default_value = "127.0.0.1:50062")]
    pub orders_addr: SocketAddr,
    /// The event catalog the consumers (notification, rewards, shipping) follow.
    #[arg(long, default_value = "events/order-events.yaml")]
    pub catalog: PathBuf,
    /// Directory of aggregate definitions (the bank's banking-account.yaml).
    #[arg(long, default_value = "aggregates")]
    pub aggregates: PathBuf,
    /// The saga runtime only: no event consumers, no bank (for benchmarks of the saga
    /// path).
    #[arg(long, conflicts_with = "demo")]
    pub sagas_only: bool,
    /// Place demo orders (one completes, two are compensated) and print how they ended;
    /// then the consumers' reactions, a poisoned event redriven, and a bank account.
    #[arg(long)]
    pub demo: bool,
    /// With --demo: stop the stack once the demo is done (exit status 1 if a demo saga
    /// did not end as expected).
    #[arg(long, requires = "demo")]
    pub exit: bool,
    /// Stop the whole stack, with an error naming it, when a child exits unexpectedly
    /// (instead of restarting it): for scripts and CI.
    #[arg(long)]
    pub exit_on_child_failure: bool,
    /// A child that exits unexpectedly more than this many times within a minute is
    /// reported and left down (the rest keeps serving).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub max_restarts: u32,
    /// One NATS user per role (nkeys with the permissions of docs/security.md) and TLS
    /// on the NATS connections, written into DATA/auth. Without it the stack runs in
    /// the plaintext dev mode: no users, anyone who reaches the port can do anything.
    #[arg(long)]
    pub secure: bool,
    /// Export every process's traces over OTLP/gRPC to this collector (default
    /// http://127.0.0.1:4317): start one there first, e.g. Jaeger all-in-one (see
    /// docs/observability.md). Without it no trace is exported.
    #[arg(long, value_name = "ENDPOINT", num_args = 0..=1, default_missing_value = "http://127.0.0.1:4317")]
    pub otel: Option<String>,
    /// Every process serves Prometheus `/metrics` on 127.0.0.1 from this port on (the
    /// gateway on it, worker i on +i, participants from +40, the other services from +60).
    #[arg(long, value_name = "PORT")]
    pub metrics_port: Option<u16>,
    /// Lease TTL of the workers (LEASE_TTL_MS), in milliseconds: how soon the others
    /// take over the partitions of a worker that died or froze.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(300..))]
    pub lease_ttl_ms: u64,
    #[command(subcommand)]
    pub control: Option<DevControl>,
}

/// Control of a running `sagactl dev` from another terminal (through DATA/control.sock).
#[derive(Debug, Subcommand)]
pub enum DevControl {
    /// The children of the running stack: state, pid, restarts, uptime, address.
    Ps(DevDir),
    /// Send a signal to a child (KILL and TERM end it, and it is restarted; STOP
    /// pauses it, CONT resumes it).
    Kill {
        /// Child name, as `sagactl dev ps` shows it (e.g. saga-worker-1).
        name: String,
        #[arg(long, short, value_enum, ignore_case = true, default_value_t = DevSignal::Kill)]
        signal: DevSignal,
        #[command(flatten)]
        dir: DevDir,
    },
    /// Stop a child (SIGTERM, then SIGKILL after a grace period) and keep it down
    /// until `start` or `restart`.
    Stop {
        name: String,
        #[command(flatten)]
        dir: DevDir,
    },
    /// Start a child that is down (stopped, or left down after crashing too often).
    Start {
        name: String,
        #[command(flatten)]
        dir: DevDir,
    },
    /// Stop a child cleanly and start it again (with the same data).
    Restart {
        name: String,
        #[command(flatten)]
        dir: DevDir,
    },
    /// Print a child's log (DATA/logs/NAME.log); -f follows it.
    Logs {
        name: String,
        /// Keep printing what is appended (across restarts of the child).
        #[arg(long, short)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long, short = 'n', value_name = "N")]
        tail: Option<usize>,
        #[command(flatten)]
        dir: DevDir,
    },
}

/// Which running stack: the data directory it was started with.
#[derive(Debug, Clone, Args)]
pub struct DevDir {
    /// The data directory of the running `sagactl dev`.
    #[arg(long, default_value = ".sagas-dev")]
    pub data_dir: PathBuf,
}

/// Signals `sagactl dev kill` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[value(rename_all = "UPPER")]
pub enum DevSignal {
    Kill,
    Term,
    Stop,
    Cont,
}

#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// Orders to place.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    pub orders: u64,
    /// Orders placed per second (open loop: retries do not slow the schedule down).
    #[arg(long, default_value_t = 25.0, value_name = "PER_SEC", value_parser = positive_f64)]
    pub rate: f64,
    /// Number of saga-worker processes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub workers: u32,
    /// Faults to inject, spread over the load; the kinds take turns (every kind at
    /// least once from 5 faults on), the targets and timings come from the seed.
    #[arg(long, default_value_t = 10)]
    pub faults: u32,
    /// Seed of every random choice: orders, fault kinds, targets, timings.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share of orders cancelled (CancelSaga) right after PlaceOrder answered.
    #[arg(long, default_value_t = 0.05, value_parser = share)]
    pub cancel_share: f64,
    /// Share of orders whose customer (`decline-...`) the payment service declines.
    #[arg(long, default_value_t = 0.2, value_parser = share)]
    pub decline_share: f64,
    /// Lease TTL of the workers (LEASE_TTL_MS): the takeover time after a kill, and
    /// what a pause must outlast.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(300..))]
    pub lease_ttl_ms: u64,
    /// Only these fault kinds (default: all of them).
    #[arg(long = "fault-kind", value_enum, value_name = "KIND")]
    pub fault_kinds: Vec<FaultKind>,
    /// Data, logs and report of the run; must be new or empty (default:
    /// target/chaos/seed-<SEED>-<UNIX_SECS>).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// How long, after the load and the last fault, every saga gets to end.
    #[arg(long, default_value_t = 300, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub quiesce_timeout_secs: u64,
    /// How long the client retries one PlaceOrder (same idempotency key) before it
    /// counts the order as never acknowledged.
    #[arg(long, default_value_t = 120, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub ack_deadline_secs: u64,
    /// Distinct SKUs the orders draw from (every SKU starts with ample stock).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub skus: u32,
    /// Extra environment of every worker, KEY=VALUE (e.g. INPUT_ACK_WAIT_SECS=5).
    #[arg(long = "worker-env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub worker_env: Vec<(String, String)>,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// What `sagactl chaos` does to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum FaultKind {
    /// SIGKILL a saga-worker, restart it 1-3 s later.
    KillWorker,
    /// SIGKILL a participant (inventory, payment, orders), restart it 1-3 s later.
    KillParticipant,
    /// SIGKILL the gateway, restart it 1-3 s later.
    KillGateway,
    /// SIGKILL nats-server, restart it on the same store 1-3 s later.
    KillNats,
    /// SIGSTOP a saga-worker for 1-3 s longer than the lease TTL, then SIGCONT.
    PauseWorker,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        FaultKind::KillWorker,
        FaultKind::KillParticipant,
        FaultKind::KillGateway,
        FaultKind::KillNats,
        FaultKind::PauseWorker,
    ];

    /// The name users type (`kill-worker`).
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillWorker => "kill-worker",
            FaultKind::KillParticipant => "kill-participant",
            FaultKind::KillGateway => "kill-gateway",
            FaultKind::KillNats => "kill-nats",
            FaultKind::PauseWorker => "pause-worker",
        }
    }
}

fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a share between 0 and 1")),
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_string())
    }
}

fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a positive number")),
    }
}

/// Parses `SKU:QTY:PRICE_CENTS`. The SKU may itself contain `:` (the last two fields
/// are the numbers).
pub fn parse_item(s: &str) -> Result<OrderItem, String> {
    const FORMAT: &str = "expected SKU:QTY:PRICE_CENTS, e.g. sku-1:2:1500";
    let mut parts = s.rsplitn(3, ':');
    let (Some(price), Some(qty), Some(sku)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(FORMAT.to_string());
    };
    let sku = sku.trim();
    if sku.is_empty() {
        return Err(format!("the SKU is empty ({FORMAT})"));
    }
    let quantity = match qty.trim().parse::<i64>() {
        Ok(q) if q > 0 => q,
        _ => {
            return Err(format!(
                "the quantity `{qty}` is not a positive integer ({FORMAT})"
            ))
        }
    };
    let unit_price_cents = match price.trim().parse::<i64>() {
        Ok(p) if p >= 0 => p,
        _ => {
            return Err(format!(
                "the price `{price}` is not a whole number of cents >= 0 ({FORMAT})"
            ))
        }
    };
    Ok(OrderItem {
        sku: sku.to_string(),
        quantity,
        unit_price_cents,
    })
}

fn parse_payload(s: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err("the payload must be a JSON object".into()),
        Err(e) => Err(format!("not valid JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_parse_and_name_the_problem() {
        let i = parse_item("sku:with:colons:3:1500").unwrap();
        assert_eq!(
            (i.sku.as_str(), i.quantity, i.unit_price_cents),
            ("sku:with:colons", 3, 1500)
        );
        assert!(parse_item("sku-1:2")
            .unwrap_err()
            .contains("expected SKU:QTY"));
        assert!(parse_item(":2:100").unwrap_err().contains("SKU is empty"));
        assert!(parse_item("a:0:100").unwrap_err().contains("quantity `0`"));
        assert!(parse_item("a:x:100").unwrap_err().contains("quantity `x`"));
        assert!(parse_item("a:1:-5").unwrap_err().contains("price `-5`"));
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
