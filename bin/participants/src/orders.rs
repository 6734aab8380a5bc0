//! `orders`: the event-sourced Order aggregate (`aggregates/order.yaml`) behind the
//! saga commands `ConfirmOrder`, `ShipOrder` and `CancelOrder`.
//!
//! The effect is an append to the order's event stream (`es.Order.<order id>`), done in
//! [`Handler::prepare`] before the SDK's transaction records the reply. A crash between
//! the append and the reply runs the command again on its redelivery: the aggregate
//! then answers from its state (an order already confirmed appends nothing), and the
//! events' ids (one per kind and order) make a retried append a duplicate. Business
//! refusals (an invariant of the definition) are business failures naming the
//! invariant, never retried.

use std::sync::Arc;

use async_trait::async_trait;
use saga_aggregates::order::{Order, OrderCommand, OrderLine};
use saga_core::{Clock, SystemClock, Timestamp};
use saga_eventstore::{
    AggregateDefinition, CommandMeta, ErrorKind, EventStore, ExecuteError, MemoryEventStore,
    MemorySnapshotStore, Repository, SnapshotStore, Upcasters,
};
use saga_participant::saga_proto::{payload as pb_payload, Payload, StepCommand};
use saga_participant::{Abort, Handler, Reply, Tx};
use serde_json::json;

use crate::ledger::{self, LEDGER_TREE};
use crate::payload::{self, result};

/// Service name.
pub const SERVICE: &str = "orders";
/// Confirm the order (creating it from the saga's order when needed).
pub const CONFIRM: &str = "ConfirmOrder";
/// Ship a confirmed order.
pub const SHIP: &str = "ShipOrder";
/// Cancel an order that has not shipped.
pub const CANCEL: &str = "CancelOrder";
/// Orders whose id starts with this are rejected (the "ConfirmationRejected" scenario).
pub const REJECTED_PREFIX: &str = "reject-";

/// The orders handler.
#[derive(Clone)]
pub struct Orders {
    repo: Repository<Order>,
}

impl std::fmt::Debug for Orders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orders").field("repo", &self.repo).finish()
    }
}

impl Orders {
    /// Orders kept in `events` (snapshots in `snapshots`), per `definition`.
    pub fn new(
        definition: &AggregateDefinition,
        events: Arc<dyn EventStore>,
        snapshots: Arc<dyn SnapshotStore>,
    ) -> Result<Self, saga_eventstore::EsError> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        Ok(Self {
            repo: Repository::new(definition, events, snapshots, Upcasters::new(), clock)?,
        })
    }

    /// Orders in the in-memory twin of the event store: for unit tests of the handler.
    pub fn in_memory() -> Self {
        let definition = saga_aggregates::load_definition("order.yaml")
            .unwrap_or_else(|e| panic!("the shipped aggregates/order.yaml is invalid: {e}"));
        Self::new(
            &definition,
            Arc::new(MemoryEventStore::new()),
            Arc::new(MemorySnapshotStore::new()),
        )
        .unwrap_or_else(|e| panic!("an Order repository on the in-memory store: {e}"))
    }

    /// The repository (reads of the aggregate, time travel).
    pub fn repository(&self) -> &Repository<Order> {
        &self.repo
    }

    /// Runs `command` on order `id`; the reply the saga gets.
    pub async fn execute(
        &self,
        id: &str,
        command: OrderCommand,
        cmd: &StepCommand,
    ) -> Result<Reply, Abort> {
        let meta = CommandMeta {
            command_id: cmd.idempotency_key.clone(),
            correlation_id: cmd.saga_id.clone(),
        };
        match self.repo.execute(id, command, &meta).await {
            Ok(done) => Ok(Reply::Ok(order_result(id, &done.state, done.version))),
            Err(ExecuteError::Domain(e)) => Ok(Reply::BusinessFailure(e.to_string())),
            Err(ExecuteError::Store(e)) if e.kind() == ErrorKind::Invalid => {
                Err(Abort::Reject(e.to_string()))
            }
            Err(ExecuteError::Store(e)) => Err(Abort::Retry(e.to_string())),
        }
    }
}

fn order_result(id: &str, order: &Order, version: u64) -> Payload {
    let mut fields = vec![
        ("order_id", id.to_string().into()),
        ("status", format!("{:?}", order.status).into()),
        ("version", (version as i64).into()),
    ];
    if let Some(at) = order.confirmed_at {
        fields.push(("confirmed_at", (at as i64).into()));
    }
    if let Some(t) = &order.tracking_number {
        fields.push(("tracking_number", t.clone().into()));
    }
    result(fields)
}

fn order_id(cmd: &StepCommand) -> String {
    let id = match cmd.payload.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(pb_payload::Kind::Order(o)) => o.order_id.clone(),
        Some(pb_payload::Kind::Fields(f)) => {
            payload::string_field(f, "order_id").unwrap_or_default()
        }
        _ => String::new(),
    };
    if id.is_empty() {
        cmd.saga_id.clone()
    } else {
        id
    }
}

fn text_field(cmd: &StepCommand, name: &str) -> Option<String> {
    match cmd.payload.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(pb_payload::Kind::Fields(f)) => payload::string_field(f, name),
        _ => None,
    }
}

/// The aggregate command a saga command asks for.
fn command_of(cmd: &StepCommand, id: &str, now: Timestamp) -> Result<OrderCommand, Abort> {
    match cmd.action.as_str() {
        CONFIRM => {
            let (user_id, items) = match cmd.payload.as_ref().and_then(|p| p.kind.as_ref()) {
                Some(pb_payload::Kind::Order(o)) => (
                    o.customer_id.clone(),
                    o.items
                        .iter()
                        .map(|i| OrderLine {
                            sku: i.sku.clone(),
                            quantity: u32::try_from(i.quantity).unwrap_or(0),
                            unit_price: i.unit_price_cents,
                        })
                        .collect(),
                ),
                _ => (
                    text_field(cmd, "customer_id").unwrap_or_default(),
                    Vec::new(),
                ),
            };
            Ok(OrderCommand::CreateAndConfirm {
                order_id: id.to_string(),
                user_id,
                items,
                at: now,
            })
        }
        SHIP => Ok(OrderCommand::Ship {
            tracking_number: text_field(cmd, "tracking_number")
                .unwrap_or_else(|| format!("TRK-{id}")),
            at: now,
        }),
        CANCEL => Ok(OrderCommand::Cancel {
            reason: text_field(cmd, "reason")
                .unwrap_or_else(|| format!("cancelled by saga {}", cmd.saga_id)),
            at: now,
        }),
        other => Err(Abort::Reject(format!("{SERVICE} has no action `{other}`"))),
    }
}

#[async_trait]
impl Handler for Orders {
    fn trees(&self) -> &[&str] {
        &[LEDGER_TREE]
    }

    async fn prepare(&self, cmd: &StepCommand, now: Timestamp) -> Result<Option<Reply>, Abort> {
        let id = order_id(cmd);
        let command = command_of(cmd, &id, now)?;
        if cmd.action == CONFIRM && id.starts_with(REJECTED_PREFIX) {
            return Ok(Some(Reply::BusinessFailure(format!(
                "Order confirmation rejected: order {id}"
            ))));
        }
        self.execute(&id, command, cmd).await.map(Some)
    }

    fn handle(&self, tx: &Tx<'_>, cmd: &StepCommand) -> Result<Reply, Abort> {
        let reply = tx
            .prepared()
            .cloned()
            .ok_or_else(|| Abort::Retry("the order's events were not appended".into()))?;
        if let Reply::Ok(_) = &reply {
            let id = order_id(cmd);
            let kind = match cmd.action.as_str() {
                CONFIRM => "confirm",
                SHIP => "ship",
                _ => "cancel",
            };
            ledger::record(tx, cmd, kind, &id, json!({ "order_id": id }))?;
        }
        Ok(reply)
    }
}
