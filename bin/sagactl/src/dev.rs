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

use anyhow::{anyhow, bail, Context as _, Result};
use saga_proto::{OrderItem, PlaceOrderRequest, Saga, SagaState};
use tokio::time::Instant;

use crate::args::DevArgs;
use crate::client::{rpc_error, Client};
use crate::devctl;
use crate::output::{esayln, sayln};
use crate::projection::sibling_binary;
use crate::render;
use crate::stack::{
    nats_accepts, port_in_use, wait_ready, Layout, Signals, Spec, Stack, NATS_READY,
};
use crate::supervise::Supervisor;
use crate::watch::{until_terminal, Follow};

/// The example participants, one process each.
const PARTICIPANTS: [&str; 5] = ["inventory", "payment", "orders", "flight", "hotel"];
/// The example event consumers (choreography downstream of the checkout).
const CONSUMERS: [&str; 3] = ["notification", "rewards", "shipping"];
/// While this file exists in the data directory, the demo's rewards consumer fails on
/// OrderConfirmed (a poisoned event for the DLQ part of the demo).
const REWARDS_BROKEN: &str = "rewards.broken";
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
    if a.bank_addr.port() == 0 || a.bank_addr == a.grpc_addr {
        bail!("--bank-addr needs a port of its own (e.g. 127.0.0.1:50061)");
    }
    if port_in_use(a.bank_addr) {
        bail!(
            "bank address {} is in use (another bank?); pass --bank-addr",
            a.bank_addr
        );
    }
    if a.orders_addr.port() == 0 || [a.grpc_addr, a.bank_addr].contains(&a.orders_addr) {
        bail!("--orders-addr needs a port of its own (e.g. 127.0.0.1:50062)");
    }
    if port_in_use(a.orders_addr) {
        bail!(
            "orders address {} is in use (another orders participant?); pass --orders-addr",
            a.orders_addr
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
    if let Some(endpoint) = &a.otel {
        layout
            .child_env
            .push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()));
    }
    layout.metrics_base = a.metrics_port;
    layout.orders_addr = Some(a.orders_addr);
    if a.secure {
        let roles = crate::natsauth::roles(&[], &[])?;
        let hosts = ["localhost".to_string(), "127.0.0.1".to_string()];
        let auth = crate::natsauth::generate(
            &layout.data.join("auth"),
            &roles,
            &hosts,
            &a.stack.nats_conf,
            false,
        )?;
        layout.auth = Some(auth);
    }
    let logs = layout.logs();
    let control = devctl::bind(&layout.data)?;
    let broken = layout.data.join(REWARDS_BROKEN);
    if !a.sagas_only {
        layout.extras = extras(&a, &layout.data, &broken)?;
    }
    if a.demo {
        std::fs::write(
            &broken,
            b"the demo's rewards consumer fails while this file exists\n",
        )
        .with_context(|| format!("creating {}", broken.display()))?;
    } else {
        let _ = std::fs::remove_file(&broken);
    }

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
    let started = match started {
        Ok((c, _)) if a.sagas_only => Ok(c),
        Ok((c, _)) => {
            let bank = a.bank_addr;
            wait_ready(&mut exits, NATS_READY, "the bank to listen", || {
                nats_accepts(bank)
            })
            .await
            .map(|()| c)
        }
        Err(e) => Err(e),
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
    match &layout.auth {
        Some(auth) => {
            sayln!(
                "NATS: one user per role, TLS (CA {}); as the operator:",
                auth.ca
                    .as_ref()
                    .map_or("-".into(), |c| c.display().to_string())
            );
            sayln!(
                "  export $(cat {})",
                auth.dir.join("env").join("sagactl.env").display()
            );
        }
        None => sayln!(
            "NATS: PLAINTEXT DEV MODE, no users and no TLS: anyone who reaches port {} can \
             start, read and cancel every saga (`sagactl dev --secure` for users and TLS)",
            a.nats_port
        ),
    }
    match &a.otel {
        Some(endpoint) => sayln!(
            "traces: every process exports OTLP/gRPC to {endpoint} (a collector or Jaeger \
             all-in-one must listen there: docker run -p 4317:4317 -p 16686:16686 \
             jaegertracing/all-in-one, UI on http://127.0.0.1:16686)"
        ),
        None => sayln!(
            "traces: not exported (`--otel [ENDPOINT]` sends them to an OTLP collector, \
             http://127.0.0.1:4317 by default)"
        ),
    }
    if let Some(base) = a.metrics_port {
        sayln!(
            "metrics: gateway http://127.0.0.1:{base}/metrics, worker i on port {base}+i, \
             participants from {}, the other services from {}",
            base.saturating_add(40),
            base.saturating_add(60)
        );
    }
    sayln!("logs: {}/<name>.log", logs.display());
    sayln!("try:");
    sayln!(
        "  grpcurl -plaintext -d '{{\"customer_id\":\"alice\",\"items\":[{{\"sku\":\"sku-1\",\"quantity\":1,\"unit_price_cents\":1500}}]}}' {grpc} saga.v1.SagaGateway/PlaceOrder"
    );
    sayln!("  SAGA_GATEWAY=http://{grpc} sagactl saga list");
    if !a.sagas_only {
        sayln!(
            "  grpcurl -plaintext -d '{{\"account_id\":\"A1\",\"customer_id\":\"C1\",\"initial_balance\":\"1000\"}}' {} saga.es.v1.Bank/OpenAccount",
            a.bank_addr
        );
        sayln!("  NATS_URL={nats_url} sagactl es show BankAccount A1");
        sayln!(
            "  grpcurl -plaintext -d '{{\"status\":\"CONFIRMED\"}}' {} saga.es.v1.Orders/ListOrders",
            a.orders_addr
        );
        sayln!("  SAGA_GATEWAY=http://{grpc} sagactl dlq ls");
    }
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

    let demo_env = DemoEnv {
        logs: logs.clone(),
        broken: broken.clone(),
        bank: a.bank_addr,
        orders: a.orders_addr,
        nats_url: nats_url.clone(),
        grpc: grpc.clone(),
    };
    let demo = async {
        if a.demo {
            Some(demo(client, &demo_env).await)
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

/// What the demo needs to know of the stack beyond the gateway.
#[derive(Debug)]
struct DemoEnv {
    logs: std::path::PathBuf,
    broken: std::path::PathBuf,
    bank: SocketAddr,
    orders: SocketAddr,
    nats_url: String,
    grpc: String,
}

/// The consumers and the bank, started once the gateway answers.
fn extras(a: &DevArgs, data: &std::path::Path, broken: &std::path::Path) -> Result<Vec<Spec>> {
    let found = |p: &std::path::Path, what: &str| {
        p.canonicalize().map_err(|e| {
            anyhow!(
                "{what} {} not found ({e}); run from the repository root or pass the path",
                p.display()
            )
        })
    };
    let catalog = found(&a.catalog, "the event catalog (--catalog)")?;
    let aggregates = found(&a.aggregates, "the aggregate definitions (--aggregates)")?;
    let mut specs = Vec::new();
    let mut missing = Vec::new();
    for name in CONSUMERS.iter().copied().chain(["bank"]) {
        let bin = sibling_binary(name)?;
        if !bin.is_file() {
            missing.push(bin.display().to_string());
        }
        let dir = data.join(name).display().to_string();
        let mut spec = if name == "bank" {
            Spec::new(
                name,
                &bin,
                vec![
                    "--grpc-addr".into(),
                    a.bank_addr.to_string(),
                    "--data-dir".into(),
                    dir,
                    "--aggregates".into(),
                    aggregates.display().to_string(),
                ],
            )
            .listening_on(a.bank_addr.to_string())
        } else {
            let mut spec = Spec::new(name, &bin, vec!["--data-dir".into(), dir]);
            spec.env
                .push(("EVENT_CATALOG".into(), catalog.display().to_string()));
            spec
        };
        spec.env.push(("RUST_LOG".into(), "info".into()));
        if a.demo && name == "rewards" {
            // A short ladder, and a failure on OrderConfirmed while the file exists: the
            // demo's poisoned event, redriven once the file is gone.
            spec.env.extend([
                ("RETRY_LADDER".to_string(), "1s, 2s, 3s".to_string()),
                ("FAIL_ON_EVENT".to_string(), "OrderConfirmed".to_string()),
                ("FAIL_WHILE_FILE".to_string(), broken.display().to_string()),
            ]);
        }
        specs.push(spec);
    }
    if !missing.is_empty() {
        bail!(
            "missing binaries beside sagactl: {}; build them with `cargo build --workspace --bins`",
            missing.join(", ")
        );
    }
    Ok(specs)
}

/// Places the demo orders, follows them to the end and prints how they ended; then
/// shows the consumers reacting, a poisoned event redriven and a bank account. True
/// when each part ended as expected.
async fn demo(client: Client, env: &DemoEnv) -> Result<bool> {
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
        placed.push((case, r.saga_id, r.order_id));
    }
    let deadline = Instant::now() + DEMO_DEADLINE;
    let ends = futures::future::join_all(placed.iter().map(|(_, id, _)| {
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
    for ((case, _, _), end) in placed.iter().zip(ends) {
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
    let (alice, alice_order) = placed
        .first()
        .map(|(_, id, order)| (id.clone(), order.clone()))
        .ok_or_else(|| anyhow!("no demo order"))?;
    all_ok &= choreography(client.clone(), env, &alice).await?;
    all_ok &= bank(env).await?;
    all_ok &= orders(env, &alice_order).await?;
    Ok(all_ok)
}

/// Waits until `log` has a line with every one of `want`.
async fn logged(log: &std::path::Path, want: &[&str], until: Instant) -> bool {
    loop {
        if let Ok(text) = std::fs::read_to_string(log) {
            if text.lines().any(|l| want.iter().all(|w| l.contains(w))) {
                return true;
            }
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The consumers after alice's order: notification and shipping handle OrderConfirmed;
/// rewards fails on it (the demo's poison), climbs its ladder into SAGA_DLQ, and handles
/// it once fixed and redriven.
async fn choreography(mut client: Client, env: &DemoEnv, saga_id: &str) -> Result<bool> {
    let order = format!("order-{saga_id}");
    let until = Instant::now() + DEMO_DEADLINE;
    let handled = |event: &str| {
        vec![
            format!("event={event}"),
            format!("key={order}"),
            "event handled".to_string(),
        ]
    };
    sayln!("demo: choreography: the consumers react to {order}");
    let mut ok = true;
    for (name, event) in [
        ("notification", "OrderConfirmed"),
        ("shipping", "OrderConfirmed"),
    ] {
        let want = handled(event);
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        let seen = logged(&env.logs.join(format!("{name}.log")), &want, until).await;
        ok &= seen;
        sayln!(
            "demo:   {name}: {}",
            if seen {
                format!("handled {event} (see {}/{name}.log)", env.logs.display())
            } else {
                format!("did not handle {event} in time")
            }
        );
    }
    // The poisoned event: 1 s, 2 s, 3 s, then the DLQ.
    let subject = format!("events.orders.OrderConfirmed.{saga_id}");
    let letter = loop {
        let found = client
            .list_dead_letters(saga_proto::ListDeadLettersRequest {
                source: "evt-rewards".into(),
                limit: 0,
            })
            .await
            .map_err(|st| rpc_error("ListDeadLetters", &st))?
            .into_inner()
            .dead_letters
            .into_iter()
            .find(|d| d.subject == subject);
        if let Some(d) = found {
            break d;
        }
        if Instant::now() >= until {
            sayln!("demo:   rewards: no dead letter for {subject} in time");
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    sayln!(
        "demo:   rewards: failed on OrderConfirmed {} times (ladder 1s, 2s, 3s), now dead letter {} in SAGA_DLQ: {}",
        letter.deliveries,
        letter.id,
        letter.reason
    );
    sayln!(
        "demo:   (SAGA_GATEWAY=http://{} sagactl dlq ls --source evt-rewards; sagactl dlq show {})",
        env.grpc,
        letter.id
    );
    std::fs::remove_file(&env.broken)
        .with_context(|| format!("removing {}", env.broken.display()))?;
    let redriven = client
        .redrive_dead_letter(saga_proto::RedriveDeadLetterRequest {
            id: letter.id,
            to: String::new(),
        })
        .await
        .map_err(|st| rpc_error("RedriveDeadLetter", &st))?
        .into_inner();
    sayln!(
        "demo:   rewards fixed; dead letter {} redriven to {} (sagactl dlq redrive {})",
        letter.id,
        redriven.subject,
        letter.id
    );
    let want = handled("OrderConfirmed");
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    let seen = logged(&env.logs.join("rewards.log"), &want, until).await;
    sayln!(
        "demo:   rewards: {}",
        if seen {
            "handled the redriven OrderConfirmed: points awarded"
        } else {
            "did not handle the redriven event in time"
        }
    );
    sayln!();
    Ok(ok && seen)
}

/// The Order aggregate behind the completed demo saga: read from OrderSummaryView,
/// shipped, then a cancel refused by the invariant "OrderCancelled cannot follow
/// OrderShipped".
async fn orders(env: &DemoEnv, order_id: &str) -> Result<bool> {
    use saga_proto::es::orders_client::OrdersClient;
    use saga_proto::es::{CancelOrderRequest, GetOrderRequest, ShipOrderRequest};
    let addr = format!("http://{}", env.orders);
    let mut orders = OrdersClient::connect(addr.clone())
        .await
        .with_context(|| format!("connecting to the orders API at {addr}"))?;
    sayln!(
        "demo: event sourcing: order {order_id} (saga.es.v1.Orders on {})",
        env.orders
    );
    let until = Instant::now() + Duration::from_secs(30);
    let summary = loop {
        let got = orders
            .get_order(GetOrderRequest {
                order_id: order_id.into(),
            })
            .await;
        match got {
            Ok(r) if r.get_ref().status != "CREATED" => break r.into_inner(),
            Err(st) if st.code() != tonic::Code::NotFound => {
                return Err(rpc_error("GetOrder", &st))
            }
            _ if Instant::now() > until => {
                esayln!("demo:   order {order_id} never showed as confirmed in OrderSummaryView");
                return Ok(false);
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    sayln!(
        "demo:   OrderSummaryView: {} for {}, {} cents, version {} (view lag {})",
        summary.status,
        summary.customer_id,
        summary.total_cents,
        summary.version,
        summary.lag
    );
    let shipped = orders
        .ship_order(ShipOrderRequest {
            order_id: order_id.into(),
            tracking_number: format!("TRK-{order_id}"),
        })
        .await
        .map_err(|st| rpc_error("ShipOrder", &st))?
        .into_inner();
    sayln!(
        "demo:   ShipOrder -> {} (version {}{})",
        shipped.status,
        shipped.version,
        if shipped.repeated {
            ", already shipped"
        } else {
            ""
        }
    );
    let refused = orders
        .cancel_order(CancelOrderRequest {
            order_id: order_id.into(),
            reason: "changed my mind".into(),
        })
        .await;
    let ok = match refused {
        Err(st) if st.code() == tonic::Code::FailedPrecondition => {
            sayln!("demo:   CancelOrder refused: {}", st.message());
            true
        }
        other => {
            esayln!("demo:   CancelOrder after shipping was not refused: {other:?}");
            false
        }
    };
    sayln!(
        "demo:   (NATS_URL={} sagactl es show Order {order_id})",
        env.nats_url
    );
    sayln!();
    Ok(ok)
}

/// The BankAccount of the design documents: open with 1000, deposit 500, withdraw 200,
/// read 1300 at version 3 from AccountBalanceView.
async fn bank(env: &DemoEnv) -> Result<bool> {
    use saga_proto::es::bank_client::BankClient;
    use saga_proto::es::{
        DepositRequest, ListTransactionsRequest, OpenAccountRequest, WithdrawRequest,
    };
    let addr = format!("http://{}", env.bank);
    let mut bank = BankClient::connect(addr.clone())
        .await
        .with_context(|| format!("connecting to the bank at {addr}"))?;
    let account = "demo-A1";
    let rpc = |what: &'static str| move |st: tonic::Status| rpc_error(what, &st);
    sayln!(
        "demo: event sourcing: bank account {account} (saga.es.v1.Bank on {})",
        env.bank
    );
    let opened = bank
        .open_account(OpenAccountRequest {
            account_id: account.into(),
            customer_id: "C1".into(),
            initial_balance: "1000".into(),
        })
        .await;
    match opened {
        Ok(r) => sayln!(
            "demo:   opened with 1000 -> balance {}",
            r.into_inner().balance
        ),
        // A demo run again on the same data: the account exists.
        Err(st) if st.code() == tonic::Code::AlreadyExists => {
            sayln!("demo:   {account} exists already (data from an earlier run); showing it");
            return show_balance(&mut bank, account, None).await;
        }
        Err(st) => return Err(rpc("OpenAccount")(st)),
    }
    let d = bank
        .deposit(DepositRequest {
            account_id: account.into(),
            transaction_id: "t1".into(),
            amount: "500".into(),
            currency: String::new(),
        })
        .await
        .map_err(rpc("Deposit"))?
        .into_inner();
    sayln!(
        "demo:   deposited 500 -> balance {} (version {})",
        d.balance_after,
        d.version
    );
    let w = bank
        .withdraw(WithdrawRequest {
            account_id: account.into(),
            transaction_id: "t2".into(),
            amount: "200".into(),
        })
        .await
        .map_err(rpc("Withdraw"))?
        .into_inner();
    sayln!(
        "demo:   withdrew 200 -> balance {} (version {})",
        w.balance_after,
        w.version
    );
    let ok = show_balance(&mut bank, account, Some(3)).await?;
    let history = bank
        .list_transactions(ListTransactionsRequest {
            account_id: account.into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .map_err(rpc("ListTransactions"))?
        .into_inner();
    for t in &history.transactions {
        sayln!(
            "demo:   history: v{} {} {} {}",
            t.version,
            t.kind,
            t.amount,
            t.transaction_id
        );
    }
    sayln!(
        "demo:   (NATS_URL={} sagactl es show BankAccount {account})",
        env.nats_url
    );
    sayln!();
    Ok(ok)
}

/// Reads the balance from AccountBalanceView until it reaches `version` (the view is
/// eventually consistent); true when it did.
async fn show_balance(
    bank: &mut saga_proto::es::bank_client::BankClient<tonic::transport::Channel>,
    account: &str,
    version: Option<u64>,
) -> Result<bool> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let b = bank
            .get_balance(saga_proto::es::GetBalanceRequest {
                account_id: account.into(),
            })
            .await;
        match b {
            Ok(b) => {
                let b = b.into_inner();
                if version.is_none_or(|v| b.version >= v) {
                    sayln!(
                        "demo:   AccountBalanceView: balance {} at version {} (lag {})",
                        b.balance,
                        b.version,
                        b.lag
                    );
                    return Ok(true);
                }
            }
            Err(st) if st.code() != tonic::Code::NotFound => {
                return Err(rpc_error("GetBalance", &st))
            }
            Err(_) => {}
        }
        if Instant::now() >= until {
            sayln!("demo:   AccountBalanceView did not catch up in time");
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
