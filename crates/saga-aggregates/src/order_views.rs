//! `OrderSummaryView` (`read_db.order_summary`): one row per order, readable by id, by
//! customer and by status (index rows move when the status changes).

use prost::Message as _;
use saga_eventstore::{ErrorKind, EsError, Projection, RecordedEvent, ViewStore, ViewTx};
use saga_proto::es as pb;
use serde::{Deserialize, Serialize};

use crate::order::OrderStatus;

/// Name of the view.
pub const ORDER_SUMMARY_VIEW: &str = "OrderSummaryView";

/// A row of `OrderSummaryView`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSummary {
    /// Order id.
    pub order_id: String,
    /// Customer.
    pub user_id: String,
    /// Status after the last event applied.
    pub status: OrderStatus,
    /// Sum of the lines, minor units.
    pub total: i64,
    /// Number of lines.
    pub lines: usize,
    /// Tracking number once shipped.
    pub tracking_number: Option<String>,
    /// Version of the last event applied.
    pub version: u64,
}

/// The summary of every order.
#[derive(Debug)]
pub struct OrderSummaryView {
    sources: Vec<String>,
}

impl Default for OrderSummaryView {
    fn default() -> Self {
        Self {
            sources: [
                "OrderCreated",
                "OrderConfirmed",
                "OrderShipped",
                "OrderCancelled",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

fn order_key(id: &str) -> Vec<u8> {
    format!("order/{id}").into_bytes()
}

fn customer_key(user: &str, id: &str) -> Vec<u8> {
    format!("by-customer/{user}/{id}").into_bytes()
}

fn status_key(status: OrderStatus, id: &str) -> Vec<u8> {
    format!("by-status/{status:?}/{id}").into_bytes()
}

fn corrupt(e: impl std::fmt::Display, event: &RecordedEvent) -> EsError {
    EsError::new(
        ErrorKind::Corrupt,
        format!("event {} of {}: {e}", event.version, event.stream),
    )
}

#[async_trait::async_trait]
impl Projection for OrderSummaryView {
    fn name(&self) -> &str {
        ORDER_SUMMARY_VIEW
    }

    fn sources(&self) -> &[String] {
        &self.sources
    }

    async fn apply(&self, view: &mut dyn ViewTx, event: &RecordedEvent) -> Result<(), EsError> {
        let id = event.stream.id();
        let p = event.payload.as_slice();
        let current: Option<OrderSummary> = match view.get(&order_key(id)).await? {
            Some(v) => Some(serde_json::from_slice(&v).map_err(|e| corrupt(e, event))?),
            None => None,
        };
        let mut row = match (event.event_type.as_str(), current) {
            ("OrderCreated", _) => {
                let e = pb::OrderCreated::decode(p).map_err(|e| corrupt(e, event))?;
                let row = OrderSummary {
                    order_id: id.to_string(),
                    user_id: e.user_id,
                    status: OrderStatus::Created,
                    total: e
                        .items
                        .iter()
                        .map(|l| l.unit_price * i64::from(l.quantity))
                        .sum(),
                    lines: e.items.len(),
                    tracking_number: None,
                    version: event.version,
                };
                view.put(&customer_key(&row.user_id, id), Vec::new());
                row
            }
            // An event of an order whose creation this view never saw: nothing to
            // summarise.
            (_, None) => return Ok(()),
            (kind, Some(mut row)) => {
                view.delete(&status_key(row.status, id));
                match kind {
                    "OrderConfirmed" => row.status = OrderStatus::Confirmed,
                    "OrderShipped" => {
                        let e = pb::OrderShipped::decode(p).map_err(|e| corrupt(e, event))?;
                        row.status = OrderStatus::Shipped;
                        row.tracking_number = Some(e.tracking_number);
                    }
                    "OrderCancelled" => row.status = OrderStatus::Cancelled,
                    _ => {}
                }
                row
            }
        };
        row.version = event.version;
        view.put(&status_key(row.status, id), Vec::new());
        view.put(
            &order_key(id),
            serde_json::to_vec(&row).map_err(|e| corrupt(e, event))?,
        );
        Ok(())
    }
}

/// The summary of one order.
pub async fn order_summary(
    views: &dyn ViewStore,
    order_id: &str,
) -> Result<Option<OrderSummary>, EsError> {
    views
        .get(ORDER_SUMMARY_VIEW, &order_key(order_id))
        .await?
        .map(|v| {
            serde_json::from_slice(&v).map_err(|e| {
                EsError::new(ErrorKind::Corrupt, format!("summary of {order_id}: {e}"))
            })
        })
        .transpose()
}

async fn ids_under(
    views: &dyn ViewStore,
    prefix: String,
    limit: usize,
) -> Result<Vec<String>, EsError> {
    Ok(views
        .scan(ORDER_SUMMARY_VIEW, prefix.as_bytes(), None, limit)
        .await?
        .into_iter()
        .map(|(k, _)| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
        .collect())
}

/// Ids of a customer's orders, in id order, at most `limit`.
pub async fn orders_of_customer(
    views: &dyn ViewStore,
    user_id: &str,
    limit: usize,
) -> Result<Vec<String>, EsError> {
    ids_under(views, format!("by-customer/{user_id}/"), limit).await
}

/// Ids of the orders in `status`, in id order, at most `limit`.
pub async fn orders_in_status(
    views: &dyn ViewStore,
    status: OrderStatus,
    limit: usize,
) -> Result<Vec<String>, EsError> {
    ids_under(views, format!("by-status/{status:?}/"), limit).await
}
