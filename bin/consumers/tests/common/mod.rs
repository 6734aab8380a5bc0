//! Shared machinery of the consumer tests: a real nats-server, events published as the
//! producers do, consumers in this process or as processes, waits with deadlines.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use saga_choreography::saga_proto::{self, Message};
use saga_choreography::{ConsumerStore, EventConsumer, EventHandler, Settings};
use saga_nats::{NatsConsumer, NatsPublisher, ProvisionConfig};
use saga_ports::{header, Headers, OutgoingMessage, Publisher};
use saga_testkit::{NatsServer, ProcessGuard};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub fn catalog_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events/order-events.yaml")
}

pub struct Broker {
    pub server: NatsServer,
    pub js: jetstream::Context,
    pub publisher: NatsPublisher,
}

pub async fn broker() -> Broker {
    let server = NatsServer::start().expect("nats-server");
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client);
    saga_nats::provision_streams(&js, &ProvisionConfig::default())
        .await
        .unwrap();
    Broker {
        publisher: NatsPublisher::new(js.clone()),
        server,
        js,
    }
}

/// Publishes an order event as its producer does: create-only on
/// `events.orders.<Name>.<subject_id>`, the saga id in `Saga-Id`.
pub async fn publish(b: &Broker, name: &str, subject_id: &str, payload: Vec<u8>) -> u64 {
    let msg = OutgoingMessage {
        subject: format!("events.orders.{name}.{subject_id}"),
        msg_id: format!("event:{subject_id}:{name}"),
        headers: Headers::from([(header::SAGA_ID.to_string(), format!("saga-{subject_id}"))]),
        payload,
    };
    let ack = b.publisher.publish_new(&msg).await.unwrap();
    assert!(!ack.duplicate, "{} already held a message", msg.subject);
    ack.sequence
}

pub fn placed(order: &str) -> Vec<u8> {
    saga_proto::OrderPlaced {
        order_id: order.into(),
        customer_id: "c-1".into(),
        total_cents: 1500,
        correlation_id: format!("saga-{order}"),
        ..Default::default()
    }
    .encode_to_vec()
}

pub fn confirmed(order: &str) -> Vec<u8> {
    saga_proto::OrderConfirmed {
        order_id: order.into(),
        confirmed_at: None,
        correlation_id: format!("saga-{order}"),
    }
    .encode_to_vec()
}

pub fn cancelled(order: &str) -> Vec<u8> {
    saga_proto::OrderCancelled {
        order_id: order.into(),
        reason: "step ChargePayment failed: declined".into(),
        cancelled_at: None,
        correlation_id: format!("saga-{order}"),
    }
    .encode_to_vec()
}

pub fn shipped(order: &str) -> Vec<u8> {
    saga_proto::OrderShipped {
        order_id: order.into(),
        shipment_id: format!("shp-{order}"),
        tracking_number: "TRK-1".into(),
        shipped_at: None,
        correlation_id: format!("saga-{order}"),
    }
    .encode_to_vec()
}

/// A consumer running in this process; `stop` ends it gracefully.
pub struct Running {
    pub store: ConsumerStore,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task).await.unwrap();
    }
}

pub async fn start_in_process(
    b: &Broker,
    service: &str,
    dir: &Path,
    handler: Arc<dyn EventHandler>,
    settings: Settings,
) -> Running {
    let (catalog, codec) = saga_choreography::load(&catalog_path()).unwrap();
    let store = ConsumerStore::open(dir).unwrap();
    let consumer = EventConsumer::new(
        service,
        Arc::new(catalog),
        codec,
        store.clone(),
        handler,
        Arc::new(b.publisher.clone()),
    )
    .unwrap()
    .with_settings(settings);
    saga_nats::ensure_event_consumer(
        &b.js,
        service,
        consumer.filter_subjects(),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    let pull = NatsConsumer::events(&b.js, service).await.unwrap();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        consumer
            .run(pull, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Running {
        store,
        stop: Some(tx),
        task,
    }
}

/// Starts a consumer binary against `b`, its ledger in `dir`.
pub fn spawn_binary(b: &Broker, service: &str, dir: &Path, extra: &[&str]) -> ProcessGuard {
    let exe = match service {
        "notification" => env!("CARGO_BIN_EXE_notification"),
        "rewards" => env!("CARGO_BIN_EXE_rewards"),
        "shipping" => env!("CARGO_BIN_EXE_shipping"),
        other => panic!("no consumer {other}"),
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--nats-url")
        .arg(b.server.url())
        .arg("--data-dir")
        .arg(dir)
        .arg("--catalog")
        .arg(catalog_path())
        .arg("--ack-wait-ms")
        .arg("1000")
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null());
    ProcessGuard::spawn(&mut cmd).unwrap()
}

/// Polls `condition` until it holds, failing the test at `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The consumer `evt-<service>` has nothing pending and nothing unacked.
pub async fn drained(b: &Broker, service: &str) -> bool {
    let Ok(mut c) =
        b.js.get_consumer_from_stream::<pull::Config, _, _>(
            saga_nats::names::event_consumer(service),
            saga_nats::names::EVENTS_STREAM,
        )
        .await
    else {
        return false;
    };
    match c.info().await {
        Ok(i) => i.num_pending == 0 && i.num_ack_pending == 0,
        Err(_) => false,
    }
}

/// Messages stored in SAGA_DLQ (dead letters and redrive records).
pub async fn dlq_len(b: &Broker) -> u64 {
    let mut s = b.js.get_stream(saga_nats::names::DLQ_STREAM).await.unwrap();
    s.info().await.unwrap().state.messages
}

/// Messages stored on `subject` in SAGA_EVENTS.
pub async fn on_subject(b: &Broker, subject: &str) -> u64 {
    let s =
        b.js.get_stream(saga_nats::names::EVENTS_STREAM)
            .await
            .unwrap();
    let info = s.info_with_subjects(subject).await.unwrap();
    let mut n = 0;
    let mut subjects = info;
    use futures::TryStreamExt;
    while let Some((_, count)) = subjects.try_next().await.unwrap() {
        n += count as u64;
    }
    n
}
