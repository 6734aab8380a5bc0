//! Example choreography consumers of the order events (`events/order-events.yaml`),
//! each a binary with its own sled ledger, built on `saga-choreography`:
//!
//! - `notification` records one message per order per event it hears of;
//! - `rewards` awards points on `OrderConfirmed` and takes them back on a later
//!   `OrderCancelled`;
//! - `shipping` creates a shipment on `OrderConfirmed` and publishes `OrderShipped`
//!   (create-only on `events.orders.OrderShipped.<order id>`).
//!
//! The handlers are here (with the readers of their ledgers, for reports and tests);
//! [`serve`] is what every binary runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use saga_choreography::saga_proto::{self, Message};
use saga_choreography::{
    ConsumerStore, Event, EventConsumer, EventHandler, EventTx, HandleError, RetryLadder, Settings,
};
use saga_ports::{header, Headers, OutgoingMessage};
use serde::{Deserialize, Serialize};

/// Tree of the notification ledger: `<order id> 0x1f <event>` -> JSON [`Notification`].
pub const NOTIFICATIONS_TREE: &str = "notifications";
/// Tree of the rewards ledger: id (u64 BE) -> JSON [`RewardEntry`].
pub const REWARDS_TREE: &str = "rewards_ledger";
/// `<order id>` -> points currently awarded for it (i64 BE).
pub const POINTS_TREE: &str = "rewards_points";
/// Tree of the shipments: `<order id>` -> JSON [`Shipment`].
pub const SHIPMENTS_TREE: &str = "shipments";
/// Points awarded per confirmed order.
pub const POINTS_PER_ORDER: i64 = 100;

/// A message to a customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// The order.
    pub order_id: String,
    /// The event it tells of.
    pub event: String,
    /// The saga behind it.
    pub correlation_id: Option<String>,
    /// The text.
    pub text: String,
    /// When (ms since the epoch).
    pub at: u64,
}

/// A line of the rewards ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewardEntry {
    /// The order.
    pub order_id: String,
    /// Points (negative: taken back).
    pub points: i64,
    /// The event that caused it.
    pub event: String,
    /// The saga behind it.
    pub correlation_id: Option<String>,
}

/// A shipment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipment {
    /// The order.
    pub order_id: String,
    /// Its id.
    pub shipment_id: String,
    /// Carrier tracking number.
    pub tracking_number: String,
    /// The saga behind it.
    pub correlation_id: Option<String>,
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, HandleError> {
    serde_json::to_vec(v).map_err(|e| HandleError::Reject(format!("encoding: {e}")))
}

/// Fault knob shared by the handlers: a technical failure on every event of this name
/// (or, with [`FailOn::while_file`], only while that file exists: a demo "fixes" the
/// consumer by removing it, without a restart).
#[derive(Debug, Clone, Default)]
pub struct FailOn(pub Option<String>, pub Option<PathBuf>);

impl FailOn {
    /// Fails on `event` (if any).
    pub fn on(event: Option<String>) -> Self {
        Self(event, None)
    }

    /// Fails only while `path` exists.
    pub fn while_file(mut self, path: Option<PathBuf>) -> Self {
        self.1 = path;
        self
    }

    fn check(&self, event: &Event) -> Result<(), HandleError> {
        match (&self.0, &self.1) {
            (Some(name), file)
                if *name == event.name && file.as_ref().is_none_or(|f| f.exists()) =>
            {
                Err(HandleError::Technical(format!(
                    "injected technical failure on {name}"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// `notification`: one message per order per event.
#[derive(Debug, Default)]
pub struct Notifier {
    /// Fault knob.
    pub fail_on: FailOn,
}

impl EventHandler for Notifier {
    fn trees(&self) -> &[&str] {
        &[NOTIFICATIONS_TREE]
    }

    fn handle(&self, tx: &EventTx<'_>, event: &Event) -> Result<Vec<OutgoingMessage>, HandleError> {
        self.fail_on.check(event)?;
        let text = match event.name.as_str() {
            "OrderPlaced" => format!("We received your order {}.", event.key),
            "OrderConfirmed" => format!("Your order {} is confirmed.", event.key),
            "OrderCancelled" => {
                let reason = saga_proto::OrderCancelled::decode(event.payload.as_slice())
                    .map(|c| c.reason)
                    .unwrap_or_default();
                format!("Your order {} was cancelled: {reason}", event.key)
            }
            "OrderShipped" => format!("Your order {} is on its way.", event.key),
            other => format!("Order {}: {other}.", event.key),
        };
        let n = Notification {
            order_id: event.key.clone(),
            event: event.name.clone(),
            correlation_id: event.correlation_id.clone(),
            text,
            at: tx.now(),
        };
        tx.insert(
            NOTIFICATIONS_TREE,
            format!("{}\u{1f}{}", event.key, event.name),
            json(&n)?,
        )?;
        Ok(Vec::new())
    }
}

/// `rewards`: points on OrderConfirmed, taken back on a later OrderCancelled.
#[derive(Debug, Default)]
pub struct Rewards {
    /// Fault knob.
    pub fail_on: FailOn,
}

impl EventHandler for Rewards {
    fn trees(&self) -> &[&str] {
        &[REWARDS_TREE, POINTS_TREE]
    }

    fn handle(&self, tx: &EventTx<'_>, event: &Event) -> Result<Vec<OutgoingMessage>, HandleError> {
        self.fail_on.check(event)?;
        let held = tx
            .get(POINTS_TREE, &event.key)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(i64::from_be_bytes);
        let points = match (event.name.as_str(), held) {
            ("OrderConfirmed", None) => POINTS_PER_ORDER,
            ("OrderCancelled", Some(p)) if p > 0 => -p,
            // Nothing awarded (or already taken back): nothing to undo.
            _ => return Ok(Vec::new()),
        };
        let entry = RewardEntry {
            order_id: event.key.clone(),
            points,
            event: event.name.clone(),
            correlation_id: event.correlation_id.clone(),
        };
        let id = tx.generate_id()?;
        tx.insert(REWARDS_TREE, id.to_be_bytes(), json(&entry)?)?;
        let now_held = held.unwrap_or(0) + points;
        tx.insert(
            POINTS_TREE,
            event.key.as_bytes(),
            now_held.to_be_bytes().to_vec(),
        )?;
        Ok(Vec::new())
    }
}

/// `shipping`: a shipment per confirmed order, announced as OrderShipped.
#[derive(Debug, Default)]
pub struct Shipping {
    /// Fault knob.
    pub fail_on: FailOn,
}

impl EventHandler for Shipping {
    fn trees(&self) -> &[&str] {
        &[SHIPMENTS_TREE]
    }

    fn handle(&self, tx: &EventTx<'_>, event: &Event) -> Result<Vec<OutgoingMessage>, HandleError> {
        self.fail_on.check(event)?;
        if event.name != "OrderConfirmed" {
            return Ok(Vec::new());
        }
        let order = &event.key;
        let tracking = format!(
            "TRK-{:012X}",
            saga_core::ids::stable_hash(order.as_bytes()) & 0xFFFF_FFFF_FFFF
        );
        let shipment = Shipment {
            order_id: order.clone(),
            shipment_id: format!("shp-{order}"),
            tracking_number: tracking.clone(),
            correlation_id: event.correlation_id.clone(),
        };
        tx.insert(SHIPMENTS_TREE, order.as_bytes(), json(&shipment)?)?;
        let correlation_id = event.correlation_id.clone().unwrap_or_default();
        let payload = saga_proto::OrderShipped {
            order_id: order.clone(),
            shipment_id: shipment.shipment_id.clone(),
            tracking_number: tracking,
            shipped_at: Some(saga_proto::timestamp(tx.now())),
            correlation_id: correlation_id.clone(),
        }
        .encode_to_vec();
        let mut headers = Headers::new();
        if !correlation_id.is_empty() {
            headers.insert(header::SAGA_ID.into(), correlation_id);
        }
        Ok(vec![OutgoingMessage {
            subject: format!("events.orders.OrderShipped.{order}"),
            msg_id: format!("event:{order}:OrderShipped"),
            headers,
            payload,
        }])
    }
}

fn read_tree<T: for<'de> Deserialize<'de>>(db: &sled::Db, tree: &str) -> anyhow::Result<Vec<T>> {
    let t = db.open_tree(tree)?;
    t.iter()
        .map(|r| {
            let (_, v) = r?;
            Ok(serde_json::from_slice(&v)?)
        })
        .collect()
}

/// The notifications recorded (by order, then event).
pub fn notifications(db: &sled::Db) -> anyhow::Result<Vec<Notification>> {
    read_tree(db, NOTIFICATIONS_TREE)
}

/// The rewards ledger, oldest first.
pub fn reward_entries(db: &sled::Db) -> anyhow::Result<Vec<RewardEntry>> {
    read_tree(db, REWARDS_TREE)
}

/// The shipments (by order).
pub fn shipments(db: &sled::Db) -> anyhow::Result<Vec<Shipment>> {
    read_tree(db, SHIPMENTS_TREE)
}

/// Flags of every consumer binary.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsumerArgs {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Ledger directory (default data/<service>).
    #[arg(long, env = "DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The event catalog.
    #[arg(
        long,
        env = "EVENT_CATALOG",
        default_value = "events/order-events.yaml"
    )]
    pub catalog: PathBuf,
    /// Waits between attempts of a failing event, then the DLQ (`none`: at once).
    #[arg(long, env = "RETRY_LADDER", default_value = "1m, 5m, 30m")]
    pub retry_ladder: String,
    /// How long a handled event is recognised as a duplicate, in seconds.
    #[arg(long, env = "DEDUPE_WINDOW_SECS", default_value_t = 24 * 3600)]
    pub dedupe_window_secs: u64,
    /// How long an event whose predecessor (a "must precede" rule) has not come yet is
    /// tried again before it is parked, in seconds.
    #[arg(long, env = "REORDER_GRACE_SECS", default_value_t = 120)]
    pub reorder_grace_secs: u64,
    /// Ack wait of the `evt-<service>` consumer, in milliseconds.
    #[arg(long, env = "ACK_WAIT_MS", default_value_t = 30_000)]
    pub ack_wait_ms: u64,
    /// Fault knob: exit (137) right after this many effects, before their ack.
    #[arg(long, env = "CRASH_AFTER_EFFECT", value_name = "N")]
    pub crash_after_effect: Option<u64>,
    /// Fault knob: a technical failure on every event of this name.
    #[arg(long, env = "FAIL_ON_EVENT", value_name = "EVENT")]
    pub fail_on_event: Option<String>,
    /// With --fail-on-event: fail only while this file exists.
    #[arg(
        long,
        env = "FAIL_WHILE_FILE",
        value_name = "PATH",
        requires = "fail_on_event"
    )]
    pub fail_while_file: Option<PathBuf>,
    #[command(flatten)]
    pub metrics: saga_telemetry::metrics::MetricsArgs,
}

impl ConsumerArgs {
    /// The fault knob these flags ask for.
    pub fn fail_on(&self) -> FailOn {
        FailOn::on(self.fail_on_event.clone()).while_file(self.fail_while_file.clone())
    }
}

/// Connects, provisions `evt-<service>`, consumes until SIGTERM/Ctrl-C, then prints a
/// one-line summary of the ledger.
pub async fn serve(
    service: &str,
    args: ConsumerArgs,
    handler: Arc<dyn EventHandler>,
    summary: fn(&sled::Db) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    args.metrics.install(service)?;
    let (catalog, codec) = saga_choreography::load(&args.catalog)?;
    let ladder = RetryLadder::parse(&args.retry_ladder).map_err(anyhow::Error::msg)?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("data").join(service));
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let store = ConsumerStore::open(&data_dir)
        .with_context(|| format!("opening the ledger in {}", data_dir.display()))?;
    let client = saga_nats::connect_as(&args.nats_url, service).await?;
    let js = async_nats::jetstream::new(client.clone());
    saga_nats::provision_streams(&js, &saga_nats::ProvisionConfig::default())
        .await
        .context("provisioning streams")?;
    let publisher = Arc::new(saga_nats::NatsPublisher::new(js.clone()));
    let consumer = EventConsumer::new(
        service,
        Arc::new(catalog),
        codec,
        store.clone(),
        handler,
        publisher,
    )?
    .with_settings(Settings {
        ladder,
        dedupe_window: Duration::from_secs(args.dedupe_window_secs),
        heartbeat: Duration::from_millis(args.ack_wait_ms / 3).max(Duration::from_millis(100)),
        crash_after_effect: args.crash_after_effect,
        reorder_grace: Duration::from_secs(args.reorder_grace_secs),
        ..Settings::default()
    });
    saga_nats::ensure_event_consumer(
        &js,
        service,
        consumer.filter_subjects(),
        Duration::from_millis(args.ack_wait_ms),
    )
    .await
    .with_context(|| format!("creating consumer evt-{service}"))?;
    let pull = saga_nats::NatsConsumer::events(&js, service)
        .await
        .with_context(|| format!("binding consumer evt-{service}"))?;
    tracing::info!(service, data_dir = %data_dir.display(), "consumer started");
    consumer.run(pull, shutdown_signal()).await?;
    let _ = client.flush().await;
    let line = format!(
        "{} (violations parked: {})",
        summary(store.db())?,
        store.violations()?
    );
    tracing::info!("{line}");
    println!("{line}");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failure_knob_fails_its_event_only_while_its_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("broken");
        let ev = |name: &str| Event {
            name: name.into(),
            key: "o-1".into(),
            correlation_id: None,
            subject: String::new(),
            stream_sequence: 1,
            headers: Headers::new(),
            payload: Vec::new(),
        };
        let always = FailOn::on(Some("OrderConfirmed".into()));
        assert!(always.check(&ev("OrderConfirmed")).is_err());
        assert!(always.check(&ev("OrderPlaced")).is_ok());
        let while_file = always.clone().while_file(Some(marker.clone()));
        assert!(while_file.check(&ev("OrderConfirmed")).is_ok());
        std::fs::write(&marker, b"").unwrap();
        assert!(while_file.check(&ev("OrderConfirmed")).is_err());
    }
}
