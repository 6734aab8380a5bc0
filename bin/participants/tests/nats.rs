//! The `inventory` binary against a real nats-server: commands published on
//! `saga.cmd.inventory.ReserveStock` are answered on their `reply_to` subject, and
//! neither a duplicate nor a crash between effect and reply makes a second effect.

use std::fs::File;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, Context};
use participants::ledger;
use saga_nats::{connect, provision, NatsConsumer, NatsPublisher, ProvisionConfig};
use saga_participant::saga_proto::{
    payload, saga_input, step_reply, Message, Order, OrderItem, Payload, SagaInput, StepCommand,
    StepReply,
};
use saga_ports::{header, Consumer, Headers, OutgoingMessage, Publisher};
use saga_testkit::{NatsServer, ProcessGuard};

const PARTITIONS: u32 = 2;

async fn setup() -> (NatsServer, Context) {
    let nats = NatsServer::start().expect("nats-server");
    let js = jetstream::new(connect(&nats.url()).await.expect("connect"));
    let config = ProvisionConfig {
        partitions: PARTITIONS,
        ..ProvisionConfig::default()
    };
    provision(&js, &config).await.expect("provision");
    (nats, js)
}

fn spawn_inventory(nats: &NatsServer, data_dir: &Path, log: &Path, extra: &[&str]) -> ProcessGuard {
    let out = File::options().create(true).append(true).open(log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_inventory"));
    cmd.arg("--nats-url")
        .arg(nats.url())
        .arg("--data-dir")
        .arg(data_dir)
        .args([
            "--partitions",
            &PARTITIONS.to_string(),
            "--ack-wait-ms",
            "1000",
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out));
    ProcessGuard::spawn(&mut cmd).expect("spawn inventory")
}

fn reserve(saga: &str, attempt: u32) -> StepCommand {
    StepCommand {
        saga_id: saga.into(),
        saga_type: "OrderCheckout".into(),
        step: "ReserveStock".into(),
        action: "ReserveStock".into(),
        attempt,
        idempotency_key: format!("{saga}/ReserveStock/ReserveStock"),
        payload: Some(Payload {
            kind: Some(payload::Kind::Order(Order {
                order_id: format!("order-{saga}"),
                customer_id: "alice".into(),
                items: vec![OrderItem {
                    sku: "SKU-1".into(),
                    quantity: 2,
                    unit_price_cents: 500,
                }],
                total_cents: 1000,
            })),
        }),
        reply_to: format!("saga.in.0.{saga}"),
        ..Default::default()
    }
}

/// Publishes `cmd`; `copy` makes a distinct `Nats-Msg-Id`, so the stream stores it again
/// (a second delivery of the same command).
async fn publish(js: &Context, cmd: &StepCommand, copy: u32) {
    let mut headers = Headers::new();
    headers.insert(header::SAGA_ID.into(), cmd.saga_id.clone());
    headers.insert(header::IDEMPOTENCY_KEY.into(), cmd.idempotency_key.clone());
    let msg = OutgoingMessage {
        subject: format!("saga.cmd.inventory.{}", cmd.action),
        msg_id: format!("cmd:{}:{}:{copy}", cmd.idempotency_key, cmd.attempt),
        headers,
        payload: cmd.encode_to_vec(),
    };
    NatsPublisher::new(js.clone())
        .publish(&msg)
        .await
        .expect("publish command");
}

/// Replies on partition 0, until `n` arrived.
async fn replies(js: &Context, n: usize, timeout: Duration) -> Vec<(Headers, StepReply)> {
    let mut consumer = NatsConsumer::partition(js, 0).await.unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} replies",
            out.len()
        );
        for d in consumer
            .fetch(10, Duration::from_millis(500))
            .await
            .unwrap_or_default()
        {
            let input = SagaInput::decode(d.payload.as_slice()).unwrap();
            let Some(saga_input::Kind::Reply(reply)) = input.kind else {
                panic!("not a reply: {input:?}");
            };
            d.acker.ack().await.unwrap();
            out.push((d.headers, reply));
        }
    }
    out
}

async fn messages_in(js: &Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .state
        .messages
}

/// Messages stored in `stream` once what its consumers settled is trimmed (as the
/// worker holding partition 0 does every second).
async fn unsettled_in(js: &Context, stream: &str) -> u64 {
    saga_nats::trim::Trimmer::new(js.clone())
        .trim()
        .await
        .unwrap();
    messages_in(js, stream).await
}

async fn until_commands_done(js: &Context) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while unsettled_in(js, "SAGA_COMMANDS").await > 0 {
        assert!(Instant::now() < deadline, "commands not acked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stop(p: &mut ProcessGuard) -> ExitStatus {
    p.sigterm().unwrap();
    p.wait_timeout(Duration::from_secs(15))
        .unwrap()
        .expect("participant stops on SIGTERM")
}

fn reservation_id(r: &StepReply) -> String {
    match &r.outcome {
        Some(step_reply::Outcome::Ok(ok)) => match ok.result.as_ref().and_then(|p| p.kind.as_ref())
        {
            Some(payload::Kind::Fields(f)) => format!("{:?}", f.fields["reservation_id"]),
            other => panic!("no fields: {other:?}"),
        },
        other => panic!("not ok: {other:?}"),
    }
}

#[tokio::test]
async fn commands_are_answered_on_reply_to_and_a_duplicate_makes_one_effect() {
    let (nats, js) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("inventory");
    let log = dir.path().join("inventory.log");
    let mut inventory = spawn_inventory(&nats, &data, &log, &[]);

    // Delivered twice (two stream copies), then the saga's retry as attempt 2.
    publish(&js, &reserve("s1", 1), 0).await;
    publish(&js, &reserve("s1", 1), 1).await;
    publish(&js, &reserve("s1", 2), 0).await;
    until_commands_done(&js).await;

    let got = replies(&js, 2, Duration::from_secs(20)).await;
    // The two answers to attempt 1 share `reply:<key>:1`: JetStream stored one.
    assert_eq!(
        unsettled_in(&js, "SAGA_INBOX").await,
        0,
        "all replies consumed"
    );
    // Commands are handled concurrently: the replies may arrive in either order.
    let mut attempts: Vec<u32> = got.iter().map(|(_, r)| r.attempt).collect();
    attempts.sort_unstable();
    assert_eq!(attempts, [1, 2]);
    assert_eq!(reservation_id(&got[0].1), reservation_id(&got[1].1));
    let (headers, first) = got.iter().find(|(_, r)| r.attempt == 1).expect("attempt 1");
    assert_eq!(
        headers[header::MSG_ID],
        "reply:s1/ReserveStock/ReserveStock:1"
    );
    assert_eq!(headers[header::SAGA_ID], "s1");
    assert_eq!(headers[header::SAGA_STEP], "ReserveStock");
    assert_eq!(headers[header::SAGA_ATTEMPT], "1");
    assert_eq!(first.service, "inventory");

    assert!(stop(&mut inventory).success());
    let output = std::fs::read_to_string(&log).unwrap();
    assert!(output.contains("ledger: 1 effects (reserve=1)"), "{output}");
    let entries = ledger::read_ledger(&data).unwrap();
    assert_eq!(
        entries.len(),
        1,
        "one effect for three deliveries: {entries:?}"
    );
    assert_eq!(entries[0].key, "s1/ReserveStock");
}

#[tokio::test]
async fn a_crash_between_effect_and_reply_does_not_repeat_the_effect() {
    let (nats, js) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("inventory");
    let log = dir.path().join("inventory.log");
    let crash = ["--crash-after-effect", "ReserveStock:1"];
    let mut inventory = spawn_inventory(&nats, &data, &log, &crash);

    publish(&js, &reserve("s1", 1), 0).await;
    let status = inventory
        .wait_timeout(Duration::from_secs(20))
        .unwrap()
        .expect("the crash knob exits the process");
    assert_eq!(status.code(), Some(137));
    assert_eq!(
        messages_in(&js, "SAGA_INBOX").await,
        0,
        "no reply before the crash"
    );
    assert_eq!(
        ledger::read_ledger(&data).unwrap().len(),
        1,
        "the effect is durable"
    );

    // Restarted with the same flags: the redelivered command gets the recorded reply.
    let mut inventory = spawn_inventory(&nats, &data, &log, &crash);
    let got = replies(&js, 1, Duration::from_secs(20)).await;
    assert!(matches!(got[0].1.outcome, Some(step_reply::Outcome::Ok(_))));
    until_commands_done(&js).await;
    assert!(stop(&mut inventory).success());

    let entries = ledger::read_ledger(&data).unwrap();
    assert_eq!(
        entries.len(),
        1,
        "one effect despite the crash: {entries:?}"
    );
}
