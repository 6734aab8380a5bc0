//! `sagactl dev`: the whole stack on this machine, as child processes of sagactl.
//!
//! Start order: nats-server (never one already running: its port must be free), the
//! workers, the participants, the gateway; then wait until the gateway answers gRPC.
//! Every child runs in a process group of its own, so a Ctrl-C in the terminal reaches
//! sagactl only, which then stops the children in reverse order (SIGTERM, a grace
//! period, SIGKILL): the gateway first, nats-server last, so nobody loses its broker
//! while draining.
//!
//! A child that dies on its own is started again after a backoff, with its data kept
//! (see [`crate::supervise`]); with `--exit-on-child-failure` it stops the stack with
//! an error naming it instead. `sagactl dev ps|kill|stop|start|restart` reach the
//! running stack through its control socket (see [`crate::devctl`]).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use saga_proto::{OrderItem, PlaceOrderRequest, Saga, SagaState};
use tokio::time::Instant;

use crate::args::DevArgs;
use crate::client::{rpc_error, Client};
use crate::devctl;
use crate::output::{esayln, sayln};
use crate::render;
use crate::stack::{port_in_use, Layout, Signals, Stack};
use crate::supervise::Supervisor;
use crate::watch::{until_terminal, Follow};

/// The example participants, one process each.
const PARTICIPANTS: [&str; 5] = ["inventory", "payment", "orders", "flight", "hotel"];
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
    let mut layout = Layout::new(
        &a.stack,
        &PARTICIPANTS,
        &a.data_dir,
        a.nats_port,
        a.grpc_addr,
        a.workers,
    )?;
    layout
        .worker_env
        .push(("LEASE_TTL_MS".into(), a.lease_ttl_ms.to_string()));
    let logs = layout.logs();
    let control = devctl::bind(&layout.data)?;

    let mut signals = Signals::new()?;
    let (mut stack, mut exits) = Stack::new(&logs);
    sayln!(
        "sagactl dev: data in {}, logs in {}",
        layout.data.display(),
        logs.display()
    );

    let nats_url = layout.nats_url();
    let grpc = a.grpc_addr.to_string();
    let started = tokio::select! {
        r = layout.start(&mut stack, &mut exits) => r,
        name = signals.recv() => Err(anyhow!("{name}: stopping before the stack was up")),
    };
    let client = match started {
        Ok((c, _)) => c,
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
    sayln!(
        "  sagactl cluster --nats-url {nats_url} --lease-ttl-ms {}",
        a.lease_ttl_ms
    );
    let dir = a.data_dir.display();
    sayln!("  sagactl dev ps --data-dir {dir}    (and kill|stop|start|restart|logs NAME)");
    if !a.exit {
        sayln!("Ctrl-C stops the stack.");
    }

    let (calls_tx, mut calls) = tokio::sync::mpsc::channel(16);
    let server = tokio::spawn(devctl::serve(control, calls_tx));
    let (mut supervisor, mut gone) = Supervisor::new(&stack, a.max_restarts);

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
        let next_restart = supervisor.next_restart();
        tokio::select! {
            name = signals.recv() => {
                sayln!("{name}: stopping the stack");
                break Ok(ExitCode::SUCCESS);
            }
            Some(exit) = exits.recv() => {
                if a.exit_on_child_failure {
                    break Err(exit.error());
                }
                supervisor.exited(exit, Instant::now());
            }
            _ = sleep_until(next_restart), if next_restart.is_some() => {
                supervisor.restart_due(&mut stack, Instant::now()).await;
            }
            Some(call) = calls.recv() => {
                let answer = supervisor.handle(&mut stack, call.request).await;
                let _ = call.answer.send(answer);
            }
            Some(g) = gone.recv() => supervisor.gone(&mut stack, g).await,
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
    server.abort();
    let _ = std::fs::remove_file(devctl::socket_path(&layout.data));
    supervisor.finish().await;
    while let Ok(g) = gone.try_recv() {
        sayln!("{}", g.line());
    }
    stack.stop().await;
    outcome
}

/// Sleeps until `t` (forever without one).
async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
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
