//! [`GatewayService`]: the `saga.v1.SagaGateway` gRPC service.

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_nats::connection::State;
use async_nats::jetstream::{self, kv};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use saga_core::{Clock, SagaDefinition, SagaId, SystemClock, Timestamp};
use saga_nats::NatsPublisher;
use saga_ports::Publisher;
use saga_proto::saga_gateway_server::SagaGateway;
use saga_proto::{self as pb, Message};
use saga_runtime::envelope::{cancel_message, order_placed_message, start_message};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::projection::{ListFilter, Subscription};
use crate::requests::{self, Claim, RequestRecord};
use crate::view::is_terminal;
use crate::workers::LiveWorkers;
use crate::{validate, GatewayError, Projection};

/// The saga type PlaceOrder starts.
pub const ORDER_SAGA: &str = "OrderCheckout";
/// The reason recorded when CancelSaga gives none.
pub const DEFAULT_CANCEL_REASON: &str = "requested by a client";
/// Buffered messages of one WatchSaga stream before the watcher waits for the client.
const WATCH_BUFFER: usize = 16;

/// The `saga.v1.SagaGateway` service.
///
/// Writes go to NATS (start and cancel inputs on `SAGA_INBOX`, idempotency keys in the
/// `saga_requests` bucket); reads come from the [`Projection`] only, so they keep working
/// while NATS or the workers are down.
pub struct GatewayService {
    projection: Arc<Projection>,
    js: jetstream::Context,
    publisher: NatsPublisher,
    requests: kv::Store,
    definitions: Arc<BTreeMap<String, Arc<SagaDefinition>>>,
    partitions: u32,
    clock: Arc<dyn Clock>,
    ids: Mutex<IdGenerator>,
    stop: watch::Receiver<bool>,
    /// None: starts are accepted without asking which types the workers run.
    live: Option<LiveWorkers>,
}

/// Saga ids that increase strictly within this process (monotonic ULIDs): in one
/// millisecond the random part is incremented, so "newest first" holds for sagas
/// accepted in the same millisecond too.
#[derive(Debug)]
struct IdGenerator {
    rng: StdRng,
    last: Option<(Timestamp, u128)>,
}

impl IdGenerator {
    fn new(rng: StdRng) -> Self {
        Self { rng, last: None }
    }

    fn next(&mut self, now: Timestamp) -> SagaId {
        const RANDOM_BITS: u128 = (1 << 80) - 1;
        let (at, random) = match self.last {
            Some((at, random)) if now <= at && random < RANDOM_BITS => (at, random + 1),
            _ => (now, self.rng.gen::<u128>() & (RANDOM_BITS >> 1)),
        };
        self.last = Some((at, random));
        SagaId::generate(at, random)
    }
}

impl fmt::Debug for GatewayService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayService")
            .field("projection", &self.projection.dir())
            .field("definitions", &self.definitions.keys().collect::<Vec<_>>())
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl GatewayService {
    /// A service over `projection`, publishing on `js`, remembering idempotency keys in
    /// `requests` (see [`requests::ensure_requests_bucket`]). `partitions` must be the
    /// workers' partition count. Watch streams end when `stop` turns true.
    pub fn new(
        projection: Arc<Projection>,
        js: jetstream::Context,
        requests: kv::Store,
        definitions: Arc<BTreeMap<String, Arc<SagaDefinition>>>,
        partitions: u32,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            projection,
            publisher: NatsPublisher::new(js.clone()),
            js,
            requests,
            definitions,
            partitions: partitions.max(1),
            clock: Arc::new(SystemClock),
            ids: Mutex::new(IdGenerator::new(StdRng::from_entropy())),
            stop,
            live: None,
        }
    }

    /// Refuses starts of a saga type that no live worker runs (`FAILED_PRECONDITION`).
    pub fn with_live_workers(mut self, live: LiveWorkers) -> Self {
        self.live = Some(live);
        self
    }

    /// Uses `clock` for timestamps and saga ids.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Draws the random part of saga ids from a generator seeded with `seed`.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.ids = Mutex::new(IdGenerator::new(StdRng::seed_from_u64(seed)));
        self
    }

    fn new_saga_id(&self, now: Timestamp) -> SagaId {
        self.ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .next(now)
    }

    /// Fails fast while the client is not connected, instead of waiting for a timeout.
    fn ensure_connected(&self) -> Result<(), GatewayError> {
        match self.js.client().connection_state() {
            State::Connected => Ok(()),
            state => Err(GatewayError::Unavailable(format!(
                "the connection is {state:?}; retry with the same idempotency_key"
            ))),
        }
    }

    /// Claims the idempotency key of `request` (whose `saga_id` is a fresh id), publishes
    /// the start (awaiting the stream's ack) and records the saga as PENDING.
    /// `payload_for` builds the payload of a saga id.
    async fn start(
        &self,
        request: RequestRecord,
        now: Timestamp,
        payload_for: impl Fn(&SagaId) -> Result<Option<pb::Payload>, GatewayError>,
    ) -> Result<(SagaId, pb::Saga), Status> {
        self.ensure_connected()?;
        let (key, saga_type) = (request.idempotency_key.as_str(), request.saga_type.as_str());
        if let Some(live) = &self.live {
            live.ensure(&self.js, saga_type).await?;
        }
        let stored_id = match requests::claim(&self.requests, &request).await? {
            Claim::New => request.saga_id.clone(),
            Claim::Replay(stored) => stored.saga_id,
            Claim::Conflict(stored) => {
                return Err(Status::already_exists(format!(
                    "idempotency key `{key}` was already used for a different request (saga {})",
                    stored.saga_id
                )))
            }
        };
        let id = SagaId::parse(&stored_id).map_err(|e| GatewayError::Corrupt {
            what: format!("{} record of key `{key}`", requests::REQUESTS_BUCKET),
            detail: e.to_string(),
        })?;
        if stored_id != request.saga_id {
            // A replay whose saga is journalled already: the start was accepted, do not
            // send it again (past the stream's duplicate window it would be journalled
            // as an ignored input).
            if let Some(saga) = self.projection.get(&id)?.filter(|s| s.version > 0) {
                tracing::debug!(saga_id = %id, "idempotent replay of a started saga");
                return Ok((id, saga));
            }
        }
        let payload = payload_for(&id)?;
        if let Some(pb::Payload {
            kind: Some(pb::payload::Kind::Order(order)),
        }) = &payload
        {
            // Announced before the start, so it precedes the saga's own events (the
            // event catalog's "OrderPlaced must precede OrderConfirmed"); create-only, so
            // a replayed request announces nothing new.
            let placed = order_placed_message(&id, order, now);
            self.publisher
                .publish_new(&placed)
                .await
                .map_err(GatewayError::from)?;
        }
        tracing::Span::current().record("saga.id", id.as_str());
        let mut msg = start_message(saga_type, &id, payload, key, self.partitions, now);
        // The start carries the RPC's trace: the saga's transitions continue it.
        let publish = tracing::info_span!(
            "saga.publish",
            otel.name = "publish saga.in",
            otel.kind = "producer",
            messaging.system = "nats",
            "messaging.operation.type" = "publish",
            messaging.destination.name = msg.subject.as_str(),
            messaging.message.id = msg.msg_id.as_str(),
            messaging.message.conversation_id = id.as_str(),
            saga.id = id.as_str(),
            "saga.type" = saga_type,
        );
        saga_telemetry::propagation::inject(&publish, &mut msg.headers);
        let ack = self
            .publisher
            .publish(&msg)
            .instrument(publish)
            .await
            .map_err(GatewayError::from)?;
        tracing::info!(saga_id = %id, saga_type, seq = ack.sequence, duplicate = ack.duplicate, "saga start accepted");
        let saga = match self.projection.record_pending(&id, saga_type, now) {
            Ok(saga) => saga,
            Err(e) => {
                // The start is accepted (acked by SAGA_INBOX): answer OK, the journal
                // will fill the projection in.
                tracing::warn!(saga_id = %id, error = %e, "recording the pending saga failed");
                crate::view::pending(&id, saga_type, &[], now)
            }
        };
        Ok((id, saga))
    }

    /// The saga as the projection has it. One the projection lacks is looked for on the
    /// broker (its journal, or its start waiting in `SAGA_INBOX`): a saga that exists
    /// there (another gateway accepted it, or this one's follower is behind) answers
    /// `UNAVAILABLE`, never `NOT_FOUND`, so that no client places it again.
    async fn known(&self, id: &SagaId) -> Result<pb::Saga, Status> {
        if let Some(saga) = self.projection.get(id)? {
            return Ok(saga);
        }
        match self.on_the_broker(id).await {
            Ok(None) => Err(Status::not_found(format!("saga `{id}` not found"))),
            Ok(Some(where_)) => Err(Status::unavailable(format!(
                "saga `{id}` exists ({where_}) but this gateway's read model has not caught up \
                 with it yet; retry shortly"
            ))),
            Err(e) => Err(Status::unavailable(format!(
                "saga `{id}` is not in this gateway's read model and NATS cannot be asked \
                 whether it exists ({e}); retry shortly"
            ))),
        }
    }

    /// Where the broker has saga `id`, if anywhere: the last record of its journal (for
    /// each type this gateway knows), else its start in `SAGA_INBOX`.
    async fn on_the_broker(&self, id: &SagaId) -> Result<Option<String>, String> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind as Kind;
        let id_text = id.to_string();
        let journal = self
            .js
            .get_stream(saga_nats::names::JOURNAL_STREAM)
            .await
            .map_err(|e| e.to_string())?;
        for saga_type in self.definitions.keys() {
            let subject = saga_nats::names::journal_subject(saga_type, &id_text);
            match journal.get_last_raw_message_by_subject(&subject).await {
                Ok(m) => {
                    let version = pb::JournalEvent::decode(m.payload.as_ref())
                        .map(|e| e.version)
                        .unwrap_or_default();
                    return Ok(Some(format!("its journal is at version {version}")));
                }
                Err(e) if e.kind() == Kind::NoMessageFound => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        let inbox = self
            .js
            .get_stream(saga_nats::names::INBOX_STREAM)
            .await
            .map_err(|e| e.to_string())?;
        let partition = saga_core::ids::partition_of(id, self.partitions);
        let subject = saga_nats::names::inbox_subject(partition, &id_text);
        match inbox.get_last_raw_message_by_subject(&subject).await {
            Ok(_) => Ok(Some("its start is accepted and waits for a worker".into())),
            Err(e) if e.kind() == Kind::NoMessageFound => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// What the `saga_requests` bucket keeps of a request that would start saga `fresh`.
/// Without a key of the client's, the saga id makes one (nobody can replay it).
fn request_record(
    rpc: &str,
    saga_type: &str,
    key: Option<String>,
    canonical: &[u8],
    fresh: &SagaId,
) -> RequestRecord {
    RequestRecord {
        saga_id: fresh.to_string(),
        saga_type: saga_type.to_string(),
        fingerprint: requests::fingerprint(rpc, canonical),
        idempotency_key: key.unwrap_or_else(|| format!("generated:{fresh}")),
    }
}

fn order_id(id: &SagaId) -> String {
    format!("order-{id}")
}

/// The server span of a gateway RPC that starts a saga: the root of the saga's trace.
fn rpc_span(method: &str, saga_type: &str) -> tracing::Span {
    tracing::info_span!(
        "rpc",
        otel.name = %format!("saga.v1.SagaGateway/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = "saga.v1.SagaGateway",
        rpc.method = method,
        saga.id = tracing::field::Empty,
        "saga.type" = saga_type,
    )
}

/// Resolves when `stop` turns true; never if its sender is gone without saying so.
async fn stopped(mut stop: watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[tonic::async_trait]
impl SagaGateway for GatewayService {
    async fn place_order(
        &self,
        request: Request<pb::PlaceOrderRequest>,
    ) -> Result<Response<pb::PlaceOrderResponse>, Status> {
        let req = request.into_inner();
        let key = validate::idempotency_key(&req.idempotency_key)?;
        let now = self.clock.now();
        let fresh = self.new_saga_id(now);
        validate::order(&req, &order_id(&fresh))?;
        if !self.definitions.contains_key(ORDER_SAGA) {
            return Err(Status::failed_precondition(format!(
                "PlaceOrder starts the {ORDER_SAGA} saga, whose definition is not loaded"
            )));
        }
        let canonical = pb::PlaceOrderRequest {
            idempotency_key: String::new(),
            ..req.clone()
        }
        .encode_to_vec();
        let request = request_record("PlaceOrder", ORDER_SAGA, key, &canonical, &fresh);
        let (id, saga) = self
            .start(request, now, |id| {
                validate::order(&req, &order_id(id)).map(Some)
            })
            .instrument(rpc_span("PlaceOrder", ORDER_SAGA))
            .await?;
        Ok(Response::new(pb::PlaceOrderResponse {
            order_id: order_id(&id),
            saga_id: id.to_string(),
            state: saga.state,
        }))
    }

    async fn start_saga(
        &self,
        request: Request<pb::StartSagaRequest>,
    ) -> Result<Response<pb::StartSagaResponse>, Status> {
        let req = request.into_inner();
        validate::saga_type(&req.saga_type, self.definitions.keys())?;
        let payload = validate::struct_payload(req.payload.as_ref())?;
        let key = validate::idempotency_key(&req.idempotency_key)?;
        let now = self.clock.now();
        let fresh = self.new_saga_id(now);
        let canonical = pb::StartSagaRequest {
            idempotency_key: String::new(),
            ..req.clone()
        }
        .encode_to_vec();
        let request = request_record("StartSaga", &req.saga_type, key, &canonical, &fresh);
        let (id, saga) = self
            .start(request, now, |_| Ok(payload.clone()))
            .instrument(rpc_span("StartSaga", &req.saga_type))
            .await?;
        Ok(Response::new(pb::StartSagaResponse {
            saga_id: id.to_string(),
            state: saga.state,
        }))
    }

    async fn get_saga(
        &self,
        request: Request<pb::GetSagaRequest>,
    ) -> Result<Response<pb::Saga>, Status> {
        let id = validate::saga_id(&request.get_ref().saga_id)?;
        Ok(Response::new(self.known(&id).await?))
    }

    async fn list_sagas(
        &self,
        request: Request<pb::ListSagasRequest>,
    ) -> Result<Response<pb::ListSagasResponse>, Status> {
        let req = request.into_inner();
        let filter = ListFilter {
            state: validate::state_filter(req.state)?,
            saga_type: (!req.saga_type.is_empty()).then_some(req.saga_type),
        };
        let page_size = validate::page_size(req.page_size)?;
        let page = self.projection.list(&filter, page_size, &req.page_token)?;
        Ok(Response::new(pb::ListSagasResponse {
            sagas: page.sagas,
            next_page_token: page.next_page_token,
        }))
    }

    type WatchSagaStream = Pin<Box<dyn Stream<Item = Result<pb::Saga, Status>> + Send + 'static>>;

    async fn watch_saga(
        &self,
        request: Request<pb::WatchSagaRequest>,
    ) -> Result<Response<Self::WatchSagaStream>, Status> {
        let id = validate::saga_id(&request.get_ref().saga_id)?;
        // Subscribe before reading the snapshot: a change committed in between is then
        // in the channel (and skipped if the snapshot already has it).
        let changes = self.projection.subscribe(&id);
        let current = self.known(&id).await?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(watch_one(
            id,
            current,
            changes,
            self.projection.clone(),
            self.stop.clone(),
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_saga_history(
        &self,
        request: Request<pb::GetSagaHistoryRequest>,
    ) -> Result<Response<pb::GetSagaHistoryResponse>, Status> {
        let id = validate::saga_id(&request.get_ref().saga_id)?;
        self.known(&id).await?;
        Ok(Response::new(pb::GetSagaHistoryResponse {
            events: self.projection.history(&id)?,
        }))
    }

    async fn cancel_saga(
        &self,
        request: Request<pb::CancelSagaRequest>,
    ) -> Result<Response<pb::CancelSagaResponse>, Status> {
        let req = request.into_inner();
        let id = validate::saga_id(&req.saga_id)?;
        validate::reason(&req.reason)?;
        let saga = self.known(&id).await?;
        if !is_terminal(saga.state) {
            self.ensure_connected()?;
            let reason = if req.reason.trim().is_empty() {
                DEFAULT_CANCEL_REASON
            } else {
                req.reason.as_str()
            };
            let msg = cancel_message(&saga.saga_type, &id, reason, self.partitions);
            self.publisher
                .publish(&msg)
                .await
                .map_err(GatewayError::from)?;
            tracing::info!(saga_id = %id, reason, "saga cancellation requested");
        }
        Ok(Response::new(pb::CancelSagaResponse {
            saga_id: id.to_string(),
            state: saga.state,
        }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        self.ensure_connected()?;
        crate::dead_letters::list(&self.js, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_dead_letter(
        &self,
        request: Request<pb::GetDeadLetterRequest>,
    ) -> Result<Response<pb::DeadLetter>, Status> {
        self.ensure_connected()?;
        crate::dead_letters::get(&self.js, request.into_inner().id)
            .await
            .map(Response::new)
    }

    async fn redrive_dead_letter(
        &self,
        request: Request<pb::RedriveDeadLetterRequest>,
    ) -> Result<Response<pb::RedriveDeadLetterResponse>, Status> {
        self.ensure_connected()?;
        crate::dead_letters::redrive(&self.js, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn purge_dead_letters(
        &self,
        request: Request<pb::PurgeDeadLettersRequest>,
    ) -> Result<Response<pb::PurgeDeadLettersResponse>, Status> {
        self.ensure_connected()?;
        crate::dead_letters::purge(&self.js, request.into_inner())
            .await
            .map(Response::new)
    }
}

/// Sends `current`, then every newer view of saga `id`, and ends after a terminal one
/// (or when the client leaves, or the gateway stops).
async fn watch_one(
    id: SagaId,
    current: pb::Saga,
    mut changes: Subscription,
    projection: Arc<Projection>,
    stop: watch::Receiver<bool>,
    tx: mpsc::Sender<Result<pb::Saga, Status>>,
) {
    let mut last = current.version;
    let done = is_terminal(current.state);
    if tx.send(Ok(current)).await.is_err() || done {
        return;
    }
    let stop = stopped(stop);
    tokio::pin!(stop);
    loop {
        let change = tokio::select! {
            change = changes.recv() => change,
            () = &mut stop => {
                let _ = tx
                    .send(Err(Status::unavailable("the gateway is shutting down; watch again")))
                    .await;
                return;
            }
            () = tx.closed() => return,
        };
        let saga = match change {
            Ok(saga) => Arc::unwrap_or_clone(saga),
            // Fell behind: the projection has the latest view.
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::debug!(saga_id = %id, missed, "watcher lagged; re-reading");
                match projection.get(&id) {
                    Ok(Some(saga)) => saga,
                    Ok(None) => continue,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if saga.version <= last {
            continue;
        }
        last = saga.version;
        let done = is_terminal(saga.state);
        if tx.send(Ok(saga)).await.is_err() || done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saga_ids_increase_within_a_millisecond_and_across_a_clock_step_back() {
        let mut ids = IdGenerator::new(StdRng::seed_from_u64(7));
        let a = ids.next(1_000);
        let b = ids.next(1_000);
        let c = ids.next(999);
        let d = ids.next(1_001);
        assert!(a < b && b < c && c < d, "{a} {b} {c} {d}");
        assert_eq!(a.as_str().len(), 26);
    }
}
