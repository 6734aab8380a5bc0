//! `saga.es.v1.Orders`: the orders service's gRPC API beside its saga commands.
//! Commands go to the Order aggregate; reads come from `OrderSummaryView`, which this
//! process keeps (checkpointed, rebuilt blue/green on `sagactl projection rebuild`).

use std::collections::BTreeMap;
use std::sync::Arc;

use saga_aggregates::order::{Order, OrderCommand, OrderStatus};
use saga_aggregates::order_views::{
    order_summary, orders_in_status, orders_of_customer, OrderSummary, OrderSummaryView,
    ORDER_SUMMARY_VIEW,
};
use saga_core::{Clock, SystemClock};
use saga_eventstore::definition::AggregateDefinition;
use saga_eventstore::{
    CommandMeta, ErrorKind, EsError, EventStore, ExecuteError, Executed, ProjectionHandle,
    ProjectionRunner, Upcasters, ViewStore,
};
use saga_proto::es as pb;
use saga_proto::es::orders_server::{Orders as OrdersApi, OrdersServer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::orders::Orders;

fn status_of(e: EsError) -> Status {
    match e.kind() {
        ErrorKind::Conflict => Status::aborted(e.to_string()),
        ErrorKind::Unavailable => Status::unavailable(e.to_string()),
        ErrorKind::Corrupt => Status::data_loss(e.to_string()),
        ErrorKind::Invalid => Status::invalid_argument(e.to_string()),
    }
}

fn required<'a>(text: &'a str, field: &str) -> Result<&'a str, Status> {
    if text.trim().is_empty() {
        return Err(Status::invalid_argument(format!("`{field}` is required")));
    }
    Ok(text)
}

/// The status as the API spells it (`CONFIRMED`).
pub fn status_name(status: OrderStatus) -> String {
    format!("{status:?}").to_uppercase()
}

fn parse_status(text: &str) -> Result<OrderStatus, Status> {
    Ok(match text.to_uppercase().as_str() {
        "CREATED" => OrderStatus::Created,
        "CONFIRMED" => OrderStatus::Confirmed,
        "SHIPPED" => OrderStatus::Shipped,
        "CANCELLED" => OrderStatus::Cancelled,
        other => {
            return Err(Status::invalid_argument(format!(
                "status: `{other}` is not one of CREATED, CONFIRMED, SHIPPED, CANCELLED"
            )))
        }
    })
}

fn summary_of(row: OrderSummary, lag: u64) -> pb::OrderSummary {
    pb::OrderSummary {
        order_id: row.order_id,
        customer_id: row.user_id,
        status: status_name(row.status),
        total_cents: row.total,
        lines: u32::try_from(row.lines).unwrap_or(u32::MAX),
        tracking_number: row.tracking_number.unwrap_or_default(),
        version: row.version,
        lag,
    }
}

/// The gRPC service.
#[derive(Clone)]
pub struct OrderApi {
    orders: Orders,
    views: Arc<dyn ViewStore>,
    summary: ProjectionHandle,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for OrderApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderApi")
            .field("orders", &self.orders)
            .finish_non_exhaustive()
    }
}

impl OrderApi {
    async fn command(
        &self,
        order_id: &str,
        what: &str,
        command: OrderCommand,
    ) -> Result<pb::OrderReply, Status> {
        let meta = CommandMeta {
            command_id: format!("api.{what}.{order_id}"),
            correlation_id: order_id.to_string(),
        };
        let done: Executed<Order> = self
            .orders
            .repository()
            .execute(order_id, command, &meta)
            .await
            .map_err(|e| match e {
                ExecuteError::Domain(d) => Status::failed_precondition(d.to_string()),
                ExecuteError::Store(e) => status_of(e),
            })?;
        Ok(pb::OrderReply {
            order_id: order_id.to_string(),
            status: status_name(done.state.status),
            version: done.version,
            repeated: done.events.is_empty(),
        })
    }

    async fn lag(&self) -> Result<u64, Status> {
        Ok(self.summary.status().await.map_err(status_of)?.lag)
    }
}

#[tonic::async_trait]
impl OrdersApi for OrderApi {
    async fn ship_order(
        &self,
        request: Request<pb::ShipOrderRequest>,
    ) -> Result<Response<pb::OrderReply>, Status> {
        let r = request.into_inner();
        let id = required(&r.order_id, "order_id")?;
        let tracking_number = required(&r.tracking_number, "tracking_number")?;
        let command = OrderCommand::Ship {
            tracking_number: tracking_number.to_string(),
            at: self.clock.now(),
        };
        self.command(id, "ship", command).await.map(Response::new)
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::OrderReply>, Status> {
        let r = request.into_inner();
        let id = required(&r.order_id, "order_id")?;
        let reason = required(&r.reason, "reason")?;
        let command = OrderCommand::Cancel {
            reason: reason.to_string(),
            at: self.clock.now(),
        };
        self.command(id, "cancel", command).await.map(Response::new)
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::OrderSummary>, Status> {
        let r = request.into_inner();
        let id = required(&r.order_id, "order_id")?;
        let row = order_summary(self.views.as_ref(), id)
            .await
            .map_err(status_of)?
            .ok_or_else(|| {
                Status::not_found(format!("no order `{id}` in {ORDER_SUMMARY_VIEW} (yet)"))
            })?;
        Ok(Response::new(summary_of(row, self.lag().await?)))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let r = request.into_inner();
        let size = match r.page_size {
            0 => 50,
            n => n.min(500) as usize,
        };
        let views = self.views.as_ref();
        let (customer, status) = (r.customer_id.trim(), r.status.trim());
        let ids = match (customer.is_empty(), status.is_empty()) {
            (true, true) => {
                return Err(Status::invalid_argument(
                    "one of `customer_id` and `status` is required",
                ))
            }
            (false, false) => {
                return Err(Status::invalid_argument(
                    "give one of `customer_id` and `status`, not both",
                ))
            }
            (false, true) => orders_of_customer(views, customer, size).await,
            (true, false) => orders_in_status(views, parse_status(status)?, size).await,
        }
        .map_err(status_of)?;
        let lag = self.lag().await?;
        let mut orders = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(row) = order_summary(views, &id).await.map_err(status_of)? {
                orders.push(summary_of(row, lag));
            }
        }
        Ok(Response::new(pb::ListOrdersResponse { orders, lag }))
    }
}

/// Runs `OrderSummaryView` (from `events` into `views`), the projection control
/// endpoint, and `saga.es.v1.Orders` with health and reflection on `listener`, until
/// `stop` turns true.
pub async fn serve_on(
    listener: TcpListener,
    definition: AggregateDefinition,
    orders: Orders,
    events: Arc<dyn EventStore>,
    views: Arc<dyn ViewStore>,
    client: async_nats::Client,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let runner = ProjectionRunner::new(
        &definition,
        events,
        views.clone(),
        Arc::new(OrderSummaryView::default()),
        Upcasters::new(),
    )?;
    let (summary, projection) = runner.spawn(stop.clone());
    let control = tokio::spawn(saga_eventstore::control::serve_control(
        client,
        BTreeMap::from([(ORDER_SUMMARY_VIEW.to_string(), summary.clone())]),
        stop.clone(),
    ));
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<OrdersServer<OrderApi>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(saga_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(saga_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let api = OrderApi {
        orders,
        views,
        summary,
        clock: Arc::new(SystemClock),
    };
    let signal = stopped(stop);
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let served = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(OrdersServer::new(api))
        .serve_with_incoming_shutdown(incoming, signal)
        .await;
    match projection.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "OrderSummaryView stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "the OrderSummaryView task failed"),
        Ok(Ok(())) => {}
    }
    control.abort();
    served?;
    Ok(())
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}
