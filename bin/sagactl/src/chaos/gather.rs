//! What the invariants are judged on, read after the load: every key sent again, the
//! sagas followed until they end (or a deadline), SAGA_EVENTS and SAGA_DLQ, the
//! journals of cancelled sagas, and the participants' ledgers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::HeaderMap;
use futures::{StreamExt as _, TryStreamExt as _};
use participants::LedgerEntry;
use saga_proto::{GetSagaHistoryRequest, GetSagaRequest, ListSagasRequest, SagaState};
use tokio::time::Instant;
use tonic::Code;

use super::check::{cancel_journal, CancelJournal, EventSeen};
use super::load::{retryable, OrderRecord, ATTEMPT_TIMEOUT};
use super::Voice;
use crate::client::{code_name, Client};
use crate::render::is_terminal;

/// Calls at once while gathering.
const CONCURRENCY: usize = 32;
/// The saga PlaceOrder starts.
const ORDER_SAGA: &str = "OrderCheckout";
/// The domain event stream (docs/runtime.md) and the header naming the saga.
const EVENTS_STREAM: &str = "SAGA_EVENTS";
const SAGA_ID_HEADER: &str = "Saga-Id";
/// The dead-letter stream and the header saying why.
const DLQ_STREAM: &str = "SAGA_DLQ";
const DLQ_REASON_HEADER: &str = "Saga-Dlq-Reason";

/// Runs `call` until it answers, a refusal comes, or `within` passes.
async fn retrying<T, F, Fut>(within: Duration, mut call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(100);
    loop {
        let error = match tokio::time::timeout(ATTEMPT_TIMEOUT, call()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(st)) if !retryable(st.code()) || st.code() == Code::NotFound => {
                return Err(format!("{}: {}", code_name(st.code()), st.message()))
            }
            Ok(Err(st)) => format!("{}: {}", code_name(st.code()), st.message()),
            Err(_) => format!("no answer within {ATTEMPT_TIMEOUT:?}"),
        };
        if Instant::now() + pause >= deadline {
            return Err(error);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// PlaceOrder again, same key and request, for every acknowledged order: the saga id
/// each answers (it must be the one answered before).
pub async fn replays(
    client: &Client,
    orders: &[OrderRecord],
) -> BTreeMap<String, Result<String, String>> {
    futures::stream::iter(orders.iter().filter(|r| r.saga_id().is_some()))
        .map(|r| {
            let request = r.plan.request();
            async move {
                let got = retrying(Duration::from_secs(60), || {
                    let (mut c, request) = (client.clone(), request.clone());
                    async move { c.place_order(request).await }
                })
                .await
                .map(|r| r.into_inner().saga_id);
                (request.idempotency_key, got)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

/// Every OrderCheckout saga the gateway lists, by id: its state.
async fn list_all(client: &Client) -> Result<BTreeMap<String, i32>, String> {
    let mut out = BTreeMap::new();
    let mut token = String::new();
    loop {
        let page = retrying(Duration::from_secs(30), || {
            let mut c = client.clone();
            let request = ListSagasRequest {
                state: SagaState::Unspecified as i32,
                saga_type: ORDER_SAGA.into(),
                page_size: 1000,
                page_token: token.clone(),
            };
            async move { c.list_sagas(request).await }
        })
        .await?
        .into_inner();
        out.extend(page.sagas.into_iter().map(|s| (s.saga_id, s.state)));
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

/// How the wait for every saga to end went.
#[derive(Debug)]
pub struct Quiescence {
    /// Every acknowledged saga and every saga the gateway lists is terminal.
    pub reached: bool,
    /// How long it took (or until the deadline).
    pub took: Duration,
    /// Every saga known, by id: its last state.
    pub sagas: BTreeMap<String, i32>,
    /// Why the last look failed, if it did.
    pub last_error: Option<String>,
}

/// Waits until every acknowledged saga (GetSaga) and every listed saga (ListSagas) is
/// terminal, or `within` passes.
pub async fn quiesce(
    client: &Client,
    acked: &[String],
    within: Duration,
    voice: Voice,
) -> Quiescence {
    let started = Instant::now();
    let deadline = started + within;
    let mut sagas: BTreeMap<String, i32> = BTreeMap::new();
    let mut open: BTreeSet<String> = acked.iter().cloned().collect();
    let mut last_error = None;
    let mut last_said = Instant::now();
    loop {
        // Terminal states absorb every later input: only open sagas are asked again.
        let answers: Vec<(String, Result<i32, tonic::Status>)> =
            futures::stream::iter(open.iter().cloned())
                .map(|id| {
                    let mut c = client.clone();
                    async move {
                        let r = tokio::time::timeout(
                            ATTEMPT_TIMEOUT,
                            c.get_saga(GetSagaRequest {
                                saga_id: id.clone(),
                            }),
                        )
                        .await
                        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer")));
                        (id, r.map(|r| r.into_inner().state))
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
        for (id, r) in answers {
            match r {
                Ok(state) => {
                    sagas.insert(id.clone(), state);
                    if is_terminal(state) {
                        open.remove(&id);
                    }
                }
                Err(st) if st.code() == Code::NotFound => {}
                Err(st) => last_error = Some(format!("GetSaga: {}", st.message())),
            }
        }
        let mut listed_open = 0;
        if open.is_empty() {
            match list_all(client).await {
                Ok(all) => {
                    for (id, state) in all {
                        if !is_terminal(state) {
                            listed_open += 1;
                        }
                        sagas.entry(id).or_insert(state);
                    }
                    // A listed saga still open is asked again next round (its entry
                    // holds the listed state until then).
                    for (id, state) in &sagas {
                        if !is_terminal(*state) {
                            open.insert(id.clone());
                        }
                    }
                    if listed_open == 0 && open.is_empty() {
                        return Quiescence {
                            reached: true,
                            took: started.elapsed(),
                            sagas,
                            last_error: None,
                        };
                    }
                }
                Err(e) => last_error = Some(format!("ListSagas: {e}")),
            }
        }
        if Instant::now() >= deadline {
            if let Ok(all) = list_all(client).await {
                for (id, state) in all {
                    sagas.entry(id).or_insert(state);
                }
            }
            return Quiescence {
                reached: false,
                took: started.elapsed(),
                sagas,
                last_error,
            };
        }
        if last_said.elapsed() >= Duration::from_secs(10) {
            last_said = Instant::now();
            voice.line(format_args!(
                "quiescence: {} sagas not terminal yet after {:.0} s",
                open.len().max(listed_open),
                started.elapsed().as_secs_f64()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Where the journal of every saga whose cancel was taken while it ran has the cancel.
pub async fn cancel_journals(
    client: &Client,
    orders: &[OrderRecord],
) -> BTreeMap<String, Result<CancelJournal, String>> {
    let ids: Vec<String> = orders
        .iter()
        .filter(|r| r.cancel.as_ref().is_some_and(|c| c.on_running_saga()))
        .filter_map(|r| r.saga_id())
        .map(str::to_string)
        .collect();
    futures::stream::iter(ids)
        .map(|id| async move {
            let got = retrying(Duration::from_secs(30), || {
                let mut c = client.clone();
                let request = GetSagaHistoryRequest {
                    saga_id: id.clone(),
                };
                async move { c.get_saga_history(request).await }
            })
            .await
            .map(|r| cancel_journal(&r.into_inner().events));
            (id, got)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

/// Subject and headers of every message of `stream` from sequence `from` up to its last
/// message now, and the sequence to read from next time.
/// Subject, headers and payload of a message read.
type Read = (String, Option<HeaderMap>, bytes::Bytes);

async fn read_stream(
    js: &async_nats::jetstream::Context,
    name: &str,
    from: u64,
) -> Result<(Vec<Read>, u64)> {
    let mut stream = js
        .get_stream(name)
        .await
        .with_context(|| format!("stream {name}"))?;
    let last = stream
        .info()
        .await
        .with_context(|| format!("info of {name}"))?
        .state
        .last_sequence;
    if last < from {
        return Ok((Vec::new(), from));
    }
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ..Default::default()
        })
        .await
        .with_context(|| format!("an ordered consumer of {name}"))?;
    let mut messages = consumer
        .messages()
        .await
        .with_context(|| format!("reading {name}"))?;
    let mut out = Vec::new();
    loop {
        let m = match tokio::time::timeout(Duration::from_secs(10), messages.try_next()).await {
            Err(_) => bail!("reading {name}: no message within 10 s (the last is {last})"),
            Ok(Err(e)) => bail!("reading {name}: {e}"),
            Ok(Ok(None)) => bail!("reading {name}: the consumer ended"),
            Ok(Ok(Some(m))) => m,
        };
        let seq = m
            .info()
            .map_err(|e| anyhow::anyhow!("metadata of a message of {name}: {e}"))?
            .stream_sequence;
        out.push((m.subject.to_string(), m.headers.clone(), m.payload.clone()));
        if seq >= last {
            return Ok((out, last + 1));
        }
    }
}

fn header(h: &Option<HeaderMap>, name: &str) -> Option<String> {
    h.as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_string())
}

/// The events of the Order aggregates (`ES_EVENTS`, `es.Order.*`): (event type,
/// correlation id = the saga that caused it). No stream yet: none.
pub async fn order_events(js: &async_nats::jetstream::Context) -> Result<Vec<(String, String)>> {
    use saga_proto::Message as _;
    if js.get_stream("ES_EVENTS").await.is_err() {
        return Ok(Vec::new());
    }
    let (all, _) = read_stream(js, "ES_EVENTS", 1).await?;
    let mut out = Vec::new();
    for (subject, _, payload) in all {
        if !subject.starts_with("es.Order.") {
            continue;
        }
        let e = saga_proto::es::EventEnvelope::decode(payload.as_ref())
            .with_context(|| format!("an event on {subject}"))?;
        out.push((e.event_type, e.correlation_id));
    }
    Ok(out)
}

/// Reads SAGA_EVENTS until every COMPLETED and COMPENSATED saga has an event (their
/// relay may trail the journal by a moment), or `within` passes; then every event.
pub async fn events(
    js: &async_nats::jetstream::Context,
    sagas: &BTreeMap<String, i32>,
    within: Duration,
) -> Result<Vec<EventSeen>> {
    let deadline = Instant::now() + within;
    let mut all = Vec::new();
    let mut next = 1;
    let mut waiting: BTreeSet<&str> = sagas
        .iter()
        .filter(|(_, s)| **s == SagaState::Completed as i32 || **s == SagaState::Compensated as i32)
        .map(|(id, _)| id.as_str())
        .collect();
    loop {
        let (new, from) = read_stream(js, EVENTS_STREAM, next).await?;
        next = from;
        for (subject, headers, _) in new {
            let saga_id = header(&headers, SAGA_ID_HEADER);
            if let Some(id) = &saga_id {
                waiting.remove(id.as_str());
            }
            all.push(EventSeen { subject, saga_id });
        }
        if waiting.is_empty() || Instant::now() >= deadline {
            return Ok(all);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The dead letters of the run, by reason (`Saga-Dlq-Reason`, saga ids made `<id>`),
/// with the saga of the first of each.
pub async fn dead_letters(
    js: &async_nats::jetstream::Context,
) -> Result<BTreeMap<String, (u64, String)>> {
    let (all, _) = read_stream(js, DLQ_STREAM, 1).await?;
    let mut out: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for (subject, headers, _) in all {
        let saga = header(&headers, SAGA_ID_HEADER).unwrap_or_default();
        let mut reason = header(&headers, DLQ_REASON_HEADER)
            .unwrap_or_else(|| format!("(no reason; {subject})"));
        if !saga.is_empty() {
            reason = reason.replace(&saga, "<id>");
        }
        let e = out.entry(reason).or_insert((0, saga));
        e.0 += 1;
    }
    Ok(out)
}

/// The ledger of a stopped participant.
pub async fn ledger(dir: &Path) -> Result<Vec<LedgerEntry>, String> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        participants::read_ledger(&dir).map_err(|e| format!("{}: {e}", dir.display()))
    })
    .await
    .unwrap_or_else(|e| Err(format!("reading the ledger: {e}")))
}
