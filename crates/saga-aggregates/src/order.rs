//! The Order aggregate of `aggregates/order.yaml`.

use prost::Message as _;
use saga_eventstore::{Aggregate, DecodeError, DomainError, DomainEvent};
use saga_proto::es as pb;
use serde::{Deserialize, Serialize};

/// The aggregate type (`aggregateRoot`).
pub const ORDER: &str = "Order";
/// Invariant: an order is confirmed only after it was created.
pub const CREATED_BEFORE_CONFIRMED: &str = "OrderCreated must precede OrderConfirmed";
/// Invariant: a shipped order cannot be cancelled.
pub const NO_CANCEL_AFTER_SHIPPED: &str = "OrderCancelled cannot follow OrderShipped";

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// Product.
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// Price of one, minor units.
    pub unit_price: i64,
}

/// What an order is asked to do. Times are milliseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    /// Creates the order.
    Create {
        /// Order id.
        order_id: String,
        /// Customer.
        user_id: String,
        /// Lines.
        items: Vec<OrderLine>,
        /// When.
        at: u64,
    },
    /// Creates the order when it does not exist yet, then confirms it: `OrderCreated`
    /// (if needed) and `OrderConfirmed`, appended together. What a checkout saga's
    /// `ConfirmOrder` step asks.
    CreateAndConfirm {
        /// Order id.
        order_id: String,
        /// Customer.
        user_id: String,
        /// Lines.
        items: Vec<OrderLine>,
        /// When.
        at: u64,
    },
    /// Confirms a created order.
    Confirm {
        /// When.
        at: u64,
    },
    /// Ships a confirmed order.
    Ship {
        /// Carrier's tracking number.
        tracking_number: String,
        /// When.
        at: u64,
    },
    /// Cancels an order that has not shipped.
    Cancel {
        /// Why.
        reason: String,
        /// When.
        at: u64,
    },
}

/// What happened to an order.
#[derive(Debug, Clone, PartialEq)]
pub enum OrderEvent {
    /// `OrderCreated`.
    Created(pb::OrderCreated),
    /// `OrderConfirmed`.
    Confirmed(pb::OrderConfirmed),
    /// `OrderShipped`.
    Shipped(pb::OrderShipped),
    /// `OrderCancelled`.
    Cancelled(pb::OrderCancelled),
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> &'static str {
        match self {
            OrderEvent::Created(_) => "OrderCreated",
            OrderEvent::Confirmed(_) => "OrderConfirmed",
            OrderEvent::Shipped(_) => "OrderShipped",
            OrderEvent::Cancelled(_) => "OrderCancelled",
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            OrderEvent::Created(e) => e.encode_to_vec(),
            OrderEvent::Confirmed(e) => e.encode_to_vec(),
            OrderEvent::Shipped(e) => e.encode_to_vec(),
            OrderEvent::Cancelled(e) => e.encode_to_vec(),
        }
    }

    fn decode(event_type: &str, payload: &[u8]) -> Result<Self, DecodeError> {
        let err = |e: prost::DecodeError| DecodeError {
            event_type: event_type.to_string(),
            message: e.to_string(),
        };
        Ok(match event_type {
            "OrderCreated" => OrderEvent::Created(pb::OrderCreated::decode(payload).map_err(err)?),
            "OrderConfirmed" => {
                OrderEvent::Confirmed(pb::OrderConfirmed::decode(payload).map_err(err)?)
            }
            "OrderShipped" => OrderEvent::Shipped(pb::OrderShipped::decode(payload).map_err(err)?),
            "OrderCancelled" => {
                OrderEvent::Cancelled(pb::OrderCancelled::decode(payload).map_err(err)?)
            }
            other => {
                return Err(DecodeError {
                    event_type: other.to_string(),
                    message: "not an event of Order".into(),
                })
            }
        })
    }
}

/// Where an order is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    /// No event yet.
    #[default]
    New,
    /// `OrderCreated`.
    Created,
    /// `OrderConfirmed`.
    Confirmed,
    /// `OrderShipped`.
    Shipped,
    /// `OrderCancelled`.
    Cancelled,
}

/// An order's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Order id.
    pub order_id: String,
    /// Customer.
    pub user_id: String,
    /// Lines.
    pub items: Vec<OrderLine>,
    /// Status.
    pub status: OrderStatus,
    /// When it was confirmed (ms since the epoch), once confirmed.
    #[serde(default)]
    pub confirmed_at: Option<u64>,
    /// Set once shipped.
    pub tracking_number: Option<String>,
    /// Set once cancelled.
    pub cancel_reason: Option<String>,
}

impl Aggregate for Order {
    const TYPE: &'static str = ORDER;
    type Command = OrderCommand;
    type Event = OrderEvent;

    fn handle(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, DomainError> {
        use OrderStatus::*;
        match command {
            OrderCommand::Create {
                order_id,
                user_id,
                items,
                at,
            } => match self.status {
                New => Ok(vec![OrderEvent::Created(pb::OrderCreated {
                    order_id,
                    user_id,
                    items: items
                        .into_iter()
                        .map(|l| pb::OrderItem {
                            sku: l.sku,
                            quantity: l.quantity,
                            unit_price: l.unit_price,
                        })
                        .collect(),
                    created_at: at,
                })]),
                _ if self.user_id == user_id => Ok(Vec::new()),
                _ => Err(DomainError::rejected(format!(
                    "order `{order_id}` already exists for user `{}`",
                    self.user_id
                ))),
            },
            OrderCommand::CreateAndConfirm {
                order_id,
                user_id,
                items,
                at,
            } => {
                let mut events = self.handle(OrderCommand::Create {
                    order_id,
                    user_id,
                    items,
                    at,
                })?;
                let mut created = self.clone();
                for e in &events {
                    created.apply(e);
                }
                events.extend(created.handle(OrderCommand::Confirm { at })?);
                Ok(events)
            }
            OrderCommand::Confirm { at } => match self.status {
                New => Err(DomainError::invariant(
                    CREATED_BEFORE_CONFIRMED,
                    "the order was never created",
                )),
                Created => Ok(vec![OrderEvent::Confirmed(pb::OrderConfirmed {
                    order_id: self.order_id.clone(),
                    confirmed_at: at,
                })]),
                Confirmed | Shipped => Ok(Vec::new()),
                Cancelled => Err(DomainError::rejected("the order was cancelled")),
            },
            OrderCommand::Ship {
                tracking_number,
                at,
            } => match self.status {
                Confirmed => Ok(vec![OrderEvent::Shipped(pb::OrderShipped {
                    order_id: self.order_id.clone(),
                    tracking_number,
                    shipped_at: at,
                })]),
                Shipped if self.tracking_number.as_deref() == Some(&tracking_number) => {
                    Ok(Vec::new())
                }
                status => Err(DomainError::rejected(format!(
                    "only a confirmed order ships; this one is {status:?}"
                ))),
            },
            OrderCommand::Cancel { reason, at } => match self.status {
                Shipped => Err(DomainError::invariant(
                    NO_CANCEL_AFTER_SHIPPED,
                    format!(
                        "the order shipped with tracking number {}",
                        self.tracking_number.as_deref().unwrap_or("?")
                    ),
                )),
                Cancelled => Ok(Vec::new()),
                New => Err(DomainError::rejected("the order was never created")),
                Created | Confirmed => Ok(vec![OrderEvent::Cancelled(pb::OrderCancelled {
                    order_id: self.order_id.clone(),
                    reason,
                    cancelled_at: at,
                })]),
            },
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Created(e) => {
                self.order_id = e.order_id.clone();
                self.user_id = e.user_id.clone();
                self.items = e
                    .items
                    .iter()
                    .map(|l| OrderLine {
                        sku: l.sku.clone(),
                        quantity: l.quantity,
                        unit_price: l.unit_price,
                    })
                    .collect();
                self.status = OrderStatus::Created;
            }
            OrderEvent::Confirmed(e) => {
                self.status = OrderStatus::Confirmed;
                self.confirmed_at = Some(e.confirmed_at);
            }
            OrderEvent::Shipped(e) => {
                self.status = OrderStatus::Shipped;
                self.tracking_number = Some(e.tracking_number.clone());
            }
            OrderEvent::Cancelled(e) => {
                self.status = OrderStatus::Cancelled;
                self.cancel_reason = Some(e.reason.clone());
            }
        }
    }

    fn event_id(&self, event: &OrderEvent) -> Option<String> {
        // One event of each kind per order: the kind is a stable id.
        Some(event.event_type().to_string())
    }
}
