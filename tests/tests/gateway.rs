//! The gRPC gateway end to end: the real `saga-gateway` binary in front of a real
//! nats-server, worker and participants, driven with the generated tonic client the way
//! a user would drive it with grpcurl.

use std::time::Duration;

use saga_e2e::*;
use saga_proto::{self as pb, Message};
use tonic::{Code, Request, Status};

/// Per-call deadline: longer than the gateway's own NATS timeouts.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn req<T>(message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.set_timeout(CALL_TIMEOUT);
    r
}

fn item(sku: &str, quantity: i64, unit_price_cents: i64) -> pb::OrderItem {
    pb::OrderItem {
        sku: sku.into(),
        quantity,
        unit_price_cents,
    }
}

fn place(customer: &str, items: Vec<pb::OrderItem>, key: &str) -> pb::PlaceOrderRequest {
    pb::PlaceOrderRequest {
        customer_id: customer.into(),
        items,
        idempotency_key: key.into(),
    }
}

fn get(id: &str) -> pb::GetSagaRequest {
    pb::GetSagaRequest { saga_id: id.into() }
}

fn terminal(state: pb::SagaState) -> bool {
    matches!(
        state,
        pb::SagaState::Completed | pb::SagaState::Compensated | pb::SagaState::Failed
    )
}

/// Polls GetSaga until `done` holds (deadline `within`).
async fn wait_saga(
    client: &mut Client,
    id: &str,
    within: Duration,
    done: impl Fn(&pb::Saga) -> bool,
) -> pb::Saga {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = client.get_saga(req(get(id))).await;
        if let Ok(saga) = &last {
            if done(saga.get_ref()) {
                return saga.get_ref().clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "saga {id} not as expected within {within:?}; last answer: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every view WatchSaga sends until the stream ends (deadline `within`).
async fn watch_to_end(client: &mut Client, id: &str, within: Duration) -> Vec<pb::Saga> {
    let mut stream = client
        .watch_saga(req(pb::WatchSagaRequest { saga_id: id.into() }))
        .await
        .expect("WatchSaga")
        .into_inner();
    let mut seen = Vec::new();
    let all = async {
        while let Some(saga) = stream.message().await.expect("watch stream") {
            seen.push(saga);
        }
    };
    tokio::time::timeout(within, all)
        .await
        .unwrap_or_else(|_| panic!("WatchSaga of {id} did not end within {within:?}"));
    seen
}

/// Asserts an INVALID_ARGUMENT whose message starts with `prefix` (the field).
#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Status>, prefix: &str) {
    let status = result.expect_err(prefix);
    assert_eq!(status.code(), Code::InvalidArgument, "{prefix}: {status:?}");
    assert!(
        status.message().starts_with(prefix),
        "expected a message starting with {prefix:?}, got {:?}",
        status.message()
    );
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    let status = result.expect_err("an error status");
    assert_eq!(status.code(), code, "{status:?}");
    status
}

fn step_statuses(saga: &pb::Saga) -> Vec<(String, String)> {
    saga.steps
        .iter()
        .map(|s| (s.name.clone(), s.status.clone()))
        .collect()
}

fn statuses(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placed_order_reads_pending_at_once_watches_to_completed_and_replays_idempotently() {
    let stack = Stack::new();
    let mut worker = stack.worker("worker", &[]);
    let mut ps = checkout_participants(&stack, &[]);
    let js = stack.js().await;
    let (mut gateway, mut client) = Gateway::start(&stack, "gateway").await;
    wait_provisioned(&js).await;

    let request = place(
        "alice",
        vec![item("sku-1", 2, 1_000), item("sku-2", 1, 500)],
        "order-key-1",
    );
    let placed = client
        .place_order(req(request.clone()))
        .await
        .expect("PlaceOrder")
        .into_inner();
    let id = placed.saga_id.clone();
    assert_eq!(placed.order_id, format!("order-{id}"));
    // Right after the answer: known (PENDING, or already further), never NOT_FOUND.
    let first = client
        .get_saga(req(get(&id)))
        .await
        .expect("GetSaga right after PlaceOrder")
        .into_inner();
    assert!(
        matches!(
            first.state(),
            pb::SagaState::Pending | pb::SagaState::Running | pb::SagaState::Completed
        ),
        "{first:?}"
    );
    assert_eq!(first.saga_type, "OrderCheckout");
    let names: Vec<&str> = first.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["ReserveStock", "ChargePayment", "ConfirmOrder"]);

    // The watch ends by itself at COMPLETED, every view newer than the one before.
    let views = watch_to_end(&mut client, &id, Duration::from_secs(60)).await;
    let versions: Vec<u64> = views.iter().map(|s| s.version).collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "versions not increasing: {versions:?}"
    );
    let last = views.last().expect("at least the current view");
    assert_eq!(last.state(), pb::SagaState::Completed, "{views:#?}");

    let done = client.get_saga(req(get(&id))).await.unwrap().into_inner();
    assert_eq!(done.state(), pb::SagaState::Completed);
    assert_eq!(done.current_step, "");
    assert_eq!(
        step_statuses(&done),
        statuses(&[
            ("ReserveStock", "COMPLETED"),
            ("ChargePayment", "COMPLETED"),
            ("ConfirmOrder", "COMPLETED"),
        ])
    );
    for s in &done.steps {
        assert_eq!(s.attempts, 1, "{s:?}");
        assert!(s.started_at.is_some() && s.finished_at.is_some(), "{s:?}");
        assert!(s.error.is_empty(), "{s:?}");
    }
    assert!(done.created_at.is_some() && done.updated_at.is_some());

    // History: the journal as NATS has it, versions 1..n, without the snapshots (the
    // runtime's restore points stay in the journal).
    let history = client
        .get_saga_history(req(pb::GetSagaHistoryRequest {
            saga_id: id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .events;
    let versions: Vec<u64> = history.iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=history.len() as u64).collect::<Vec<_>>());
    assert_eq!(history.last().map(|e| e.version), Some(done.version));
    assert!(history.iter().all(|e| e.recorded_at.is_some()));
    let journalled = journal(&js, "OrderCheckout", &id).await;
    assert!(journalled.iter().all(|e| !e.snapshot.is_empty()));
    let without_snapshots: Vec<pb::JournalEvent> = journalled
        .into_iter()
        .map(|e| pb::JournalEvent {
            snapshot: Vec::new(),
            ..e
        })
        .collect();
    assert_eq!(history, without_snapshots);

    // Same key, same request: the same saga, and no second start.
    let again = client
        .place_order(req(request.clone()))
        .await
        .expect("replay")
        .into_inner();
    assert_eq!(
        (again.saga_id.as_str(), again.state()),
        (id.as_str(), pb::SagaState::Completed)
    );
    // Same key, another request: refused, naming the key and the saga.
    let mut other = request.clone();
    other.items[0].quantity = 3;
    let status = assert_code(client.place_order(req(other)).await, Code::AlreadyExists);
    assert_eq!(
        status.message(),
        format!(
            "idempotency key `order-key-1` was already used for a different request (saga {id})"
        )
    );
    // Two concurrent requests with one new key start one saga.
    let concurrent = place("carol", vec![item("sku-3", 1, 100)], "order-key-2");
    let (mut c1, mut c2) = (client.clone(), client.clone());
    let (a, b) = tokio::join!(
        c1.place_order(req(concurrent.clone())),
        c2.place_order(req(concurrent.clone()))
    );
    let (a, b) = (a.unwrap().into_inner(), b.unwrap().into_inner());
    assert_eq!(a.saga_id, b.saga_id);
    // Without a key every request is a new saga.
    let unkeyed = place("dave", vec![item("sku-4", 1, 100)], "");
    let x = client.place_order(req(unkeyed.clone())).await.unwrap();
    let y = client.place_order(req(unkeyed)).await.unwrap();
    assert_ne!(x.get_ref().saga_id, y.get_ref().saga_id);

    for other in [&a.saga_id, &x.get_ref().saga_id, &y.get_ref().saga_id] {
        wait_saga(&mut client, other, Duration::from_secs(60), |s| {
            terminal(s.state())
        })
        .await;
    }

    // Cancelling a finished saga changes nothing and sends nothing (every saga is
    // finished: nothing else writes to SAGA_INBOX now).
    let inbox_last = || async {
        js.get_stream("SAGA_INBOX")
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap()
            .state
            .last_sequence
    };
    let inbox_before = inbox_last().await;
    let cancelled = client
        .cancel_saga(req(pb::CancelSagaRequest {
            saga_id: id.clone(),
            reason: "too late".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state(), pb::SagaState::Completed);
    assert_eq!(inbox_last().await, inbox_before, "a cancel was published");
    assert_eq!(
        journal(&js, "OrderCheckout", &id).await.len(),
        history.len()
    );

    // The projection is rebuilt from the journal alone, offline, to the same views.
    let before = client
        .list_sagas(req(pb::ListSagasRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .sagas;
    assert_eq!(before.len(), 4);
    drop(client);
    gateway.stop();
    let rebuild = tokio::process::Command::from({
        let mut cmd = gateway_command(&stack, &gateway.data_dir);
        cmd.arg("--rebuild-projection");
        cmd
    })
    .output()
    .await
    .expect("run saga-gateway --rebuild-projection");
    assert!(
        rebuild.status.success(),
        "rebuild failed: {}",
        String::from_utf8_lossy(&rebuild.stderr)
    );
    assert!(
        String::from_utf8_lossy(&rebuild.stdout).contains("4 sagas"),
        "{}",
        String::from_utf8_lossy(&rebuild.stdout)
    );
    let (_gateway, mut client) = Gateway::start(&stack, "gateway").await;
    let after = client
        .list_sagas(req(pb::ListSagasRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .sagas;
    let key = |s: &pb::Saga| (s.saga_id.clone(), s.state, s.version, step_statuses(s));
    let mut want: Vec<_> = before.iter().map(key).collect();
    let mut got: Vec<_> = after.iter().map(key).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    stop_all(&mut worker, &mut ps);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_stock_compensates_and_sagas_list_filtered_and_paged() {
    let stack = Stack::new();
    let mut worker = stack.worker("worker", &[]);
    let mut ps = checkout_participants(&stack, &[]);
    let js = stack.js().await;
    let (_gateway, mut client) = Gateway::start(&stack, "gateway").await;
    wait_provisioned(&js).await;

    let big = client
        .place_order(req(place("bob", vec![item("sku-1", 5_000, 100)], "")))
        .await
        .unwrap()
        .into_inner()
        .saga_id;
    let views = watch_to_end(&mut client, &big, Duration::from_secs(60)).await;
    let end = views.last().unwrap();
    assert_eq!(end.state(), pb::SagaState::Compensated, "{end:#?}");
    assert!(
        end.compensation_reason.contains("Insufficient stock"),
        "{:?}",
        end.compensation_reason
    );
    assert_eq!(
        step_statuses(end),
        statuses(&[
            ("ReserveStock", "FAILED"),
            ("ChargePayment", "NOT_STARTED"),
            ("ConfirmOrder", "NOT_STARTED"),
        ])
    );
    assert!(end.steps[0].error.contains("Insufficient stock"));
    assert!(end.failure_reason.is_empty());

    let mut ok = Vec::new();
    for i in 0..4 {
        let placed = client
            .place_order(req(place(&format!("c{i}"), vec![item("sku-9", 1, 10)], "")))
            .await
            .unwrap()
            .into_inner();
        ok.push(placed.saga_id);
    }
    for id in &ok {
        let s = wait_saga(&mut client, id, Duration::from_secs(60), |s| {
            terminal(s.state())
        })
        .await;
        assert_eq!(s.state(), pb::SagaState::Completed);
    }

    let list =
        |state: pb::SagaState, saga_type: &str, page_size: i32, token: &str| pb::ListSagasRequest {
            state: state as i32,
            saga_type: saga_type.into(),
            page_size,
            page_token: token.into(),
        };
    let ids = |r: &pb::ListSagasResponse| -> Vec<String> {
        r.sagas.iter().map(|s| s.saga_id.clone()).collect()
    };
    // Everything, newest first.
    let all = client
        .list_sagas(req(list(pb::SagaState::Unspecified, "", 0, "")))
        .await
        .unwrap()
        .into_inner();
    let mut newest_first: Vec<String> = ok.iter().rev().cloned().collect();
    newest_first.push(big.clone());
    assert_eq!(ids(&all), newest_first);
    assert_eq!(all.next_page_token, "");
    // Filters.
    let completed = client
        .list_sagas(req(list(pb::SagaState::Completed, "OrderCheckout", 0, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&completed), newest_first[..4]);
    let compensated = client
        .list_sagas(req(list(pb::SagaState::Compensated, "", 0, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&compensated), std::slice::from_ref(&big));
    let travel = client
        .list_sagas(req(list(
            pb::SagaState::Unspecified,
            "TravelBookingSaga",
            0,
            "",
        )))
        .await
        .unwrap()
        .into_inner();
    assert!(travel.sagas.is_empty());
    // Pages of 2: 2 + 2 + 1, the last without a token.
    let mut paged = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_sagas(req(list(pb::SagaState::Unspecified, "", 2, &token)))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        paged.extend(ids(&page));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(paged, newest_first);
    // Tokens are opaque and bound to their filters.
    let first = client
        .list_sagas(req(list(pb::SagaState::Unspecified, "", 2, "")))
        .await
        .unwrap()
        .into_inner();
    assert_invalid(
        client
            .list_sagas(req(list(
                pb::SagaState::Completed,
                "",
                2,
                &first.next_page_token,
            )))
            .await,
        "page_token: ",
    );
    assert_invalid(
        client
            .list_sagas(req(list(pb::SagaState::Unspecified, "", 2, "not-a-token")))
            .await,
        "page_token: ",
    );
    stop_all(&mut worker, &mut ps);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_their_field_and_unknown_sagas_are_not_found() {
    // No worker at first: starts are refused; then a frozen one: an accepted saga stays
    // PENDING, which must still read as PENDING.
    let stack = Stack::new();
    let (_gateway, mut client) = Gateway::start(&stack, "gateway").await;

    let ok_items = || vec![item("sku-1", 1, 100)];
    assert_invalid(
        client.place_order(req(place("", ok_items(), ""))).await,
        "customer_id: ",
    );
    assert_invalid(
        client.place_order(req(place("alice", vec![], ""))).await,
        "items: at least one item is required",
    );
    assert_invalid(
        client
            .place_order(req(place(
                "alice",
                vec![item("sku-1", 1, 1), item("", 1, 1)],
                "",
            )))
            .await,
        "items[1].sku: ",
    );
    assert_invalid(
        client
            .place_order(req(place("alice", vec![item("sku-1", 0, 1)], "")))
            .await,
        "items[0].quantity: ",
    );
    assert_invalid(
        client
            .place_order(req(place("alice", vec![item("sku-1", -3, 1)], "")))
            .await,
        "items[0].quantity: ",
    );
    assert_invalid(
        client
            .place_order(req(place("alice", vec![item("sku-1", 1, -1)], "")))
            .await,
        "items[0].unit_price_cents: ",
    );
    let many: Vec<pb::OrderItem> = (0..257).map(|i| item(&format!("sku-{i}"), 1, 1)).collect();
    assert_invalid(
        client.place_order(req(place("alice", many, ""))).await,
        "items: at most 256 lines (got 257)",
    );
    let huge: Vec<pb::OrderItem> = (0..256)
        .map(|i| item(&format!("sku-{i:0250}"), 1, 1))
        .collect();
    assert_invalid(
        client.place_order(req(place("alice", huge, ""))).await,
        "items: the order encodes to",
    );
    assert_invalid(
        client
            .place_order(req(place("alice", ok_items(), &"k".repeat(300))))
            .await,
        "idempotency_key: ",
    );

    let start = |saga_type: &str, payload: Option<prost_types::Struct>| pb::StartSagaRequest {
        saga_type: saga_type.into(),
        payload,
        idempotency_key: String::new(),
    };
    assert_invalid(
        client.start_saga(req(start("Nope", None))).await,
        "saga_type: unknown `Nope` (loaded: OrderCheckout, TravelBookingSaga)",
    );
    assert_invalid(client.start_saga(req(start("", None))).await, "saga_type: ");
    let blob = prost_types::Struct {
        fields: [(
            "blob".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("x".repeat(70 * 1024))),
            },
        )]
        .into(),
    };
    assert_invalid(
        client
            .start_saga(req(start("TravelBookingSaga", Some(blob))))
            .await,
        "payload: ",
    );

    assert_invalid(
        client.get_saga(req(get("not a saga id!"))).await,
        "saga_id: ",
    );
    assert_invalid(client.get_saga(req(get(""))).await, "saga_id: ");
    assert_invalid(
        client
            .watch_saga(req(pb::WatchSagaRequest {
                saga_id: "a.b".into(),
            }))
            .await,
        "saga_id: ",
    );
    assert_invalid(
        client
            .get_saga_history(req(pb::GetSagaHistoryRequest {
                saga_id: "a*".into(),
            }))
            .await,
        "saga_id: ",
    );
    assert_invalid(
        client
            .cancel_saga(req(pb::CancelSagaRequest {
                saga_id: "a b".into(),
                reason: String::new(),
            }))
            .await,
        "saga_id: ",
    );
    let list = |state: i32, page_size: i32, token: &str| pb::ListSagasRequest {
        state,
        saga_type: String::new(),
        page_size,
        page_token: token.into(),
    };
    assert_invalid(
        client.list_sagas(req(list(0, 1001, ""))).await,
        "page_size: ",
    );
    assert_invalid(client.list_sagas(req(list(0, -1, ""))).await, "page_size: ");
    assert_invalid(client.list_sagas(req(list(42, 0, ""))).await, "state: ");
    assert_invalid(
        client.list_sagas(req(list(0, 0, "zz"))).await,
        "page_token: ",
    );
    let none = client.list_sagas(req(list(0, 1000, ""))).await.unwrap();
    assert!(none.get_ref().sagas.is_empty());

    let unknown = "no-such-saga";
    assert_code(client.get_saga(req(get(unknown))).await, Code::NotFound);
    assert_code(
        client
            .watch_saga(req(pb::WatchSagaRequest {
                saga_id: unknown.into(),
            }))
            .await,
        Code::NotFound,
    );
    assert_code(
        client
            .get_saga_history(req(pb::GetSagaHistoryRequest {
                saga_id: unknown.into(),
            }))
            .await,
        Code::NotFound,
    );
    assert_code(
        client
            .cancel_saga(req(pb::CancelSagaRequest {
                saga_id: unknown.into(),
                reason: String::new(),
            }))
            .await,
        Code::NotFound,
    );

    // No live worker: the start would wait forever in a partition nobody consumes, so it
    // is refused, saying why.
    let refused = assert_code(
        client
            .place_order(req(place("alice", ok_items(), "no-worker")))
            .await,
        Code::FailedPrecondition,
    );
    assert!(
        refused.message().contains("no saga-worker is running"),
        "{refused:?}"
    );

    // A worker that froze (SIGSTOP) still counts as live until its heartbeat expires:
    // what is accepted meanwhile is PENDING, with its steps, and watchable.
    let js = stack.js().await;
    let mut worker = stack.worker("worker", &[]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let live = match js.get_key_value("saga_workers").await {
            Ok(kv) => {
                use futures::TryStreamExt as _;
                let keys: Vec<String> = kv.keys().await.unwrap().try_collect().await.unwrap();
                !keys.is_empty()
            }
            Err(_) => false,
        };
        if live {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never announced itself"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.sigstop().unwrap();
    let placed = loop {
        match client
            .place_order(req(place("alice", ok_items(), "frozen-worker")))
            .await
        {
            Ok(r) => break r.into_inner(),
            // The gateway reads the live workers every second.
            Err(st) if st.code() == Code::FailedPrecondition => {
                assert!(tokio::time::Instant::now() < deadline, "{st:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(st) => panic!("{st:?}"),
        }
    };
    assert_eq!(placed.state(), pb::SagaState::Pending);
    let pending = client
        .get_saga(req(get(&placed.saga_id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pending.state(), pb::SagaState::Pending);
    assert_eq!(pending.version, 0);
    assert!(pending.steps.iter().all(|s| s.status == "NOT_STARTED"));
    let mut watch = client
        .watch_saga(req(pb::WatchSagaRequest {
            saga_id: placed.saga_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    let now = watch.message().await.unwrap().unwrap();
    assert_eq!(now.state(), pb::SagaState::Pending);
    let history = client
        .get_saga_history(req(pb::GetSagaHistoryRequest {
            saga_id: placed.saga_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(history.events.is_empty());
    // Another gateway never saw this saga: it says the saga exists and its read model is
    // behind (UNAVAILABLE, retryable), never NOT_FOUND, so no client places it again.
    let (_other, mut other_client) = Gateway::start(&stack, "gateway-2").await;
    for st in [
        other_client
            .get_saga(req(get(&placed.saga_id)))
            .await
            .map(drop),
        other_client
            .cancel_saga(req(pb::CancelSagaRequest {
                saga_id: placed.saga_id.clone(),
                reason: String::new(),
            }))
            .await
            .map(drop),
    ] {
        let st = assert_code(st, Code::Unavailable);
        assert!(
            st.message()
                .contains("exists (its start is accepted and waits for a worker)"),
            "{st:?}"
        );
    }
    assert_code(
        other_client.get_saga(req(get(unknown))).await,
        Code::NotFound,
    );

    // The start is in SAGA_INBOX, acknowledged, for a worker to pick up.
    let inputs = messages(&js, "SAGA_INBOX", &format!("saga.in.*.{}", placed.saga_id)).await;
    assert_eq!(inputs.len(), 1);
    let input = pb::SagaInput::decode(inputs[0].payload.as_ref()).unwrap();
    let Some(pb::saga_input::Kind::Start(start)) = input.kind else {
        panic!("not a start: {input:?}")
    };
    let Some(pb::payload::Kind::Order(order)) = start.payload.and_then(|p| p.kind) else {
        panic!("no order payload")
    };
    assert_eq!(order.order_id, placed.order_id);
    assert_eq!(order.total_cents, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_saga_compensates_it() {
    let stack = Stack::new();
    let mut worker = stack.worker("worker", &[]);
    let mut ps = vec![
        stack.participant("inventory", "inventory", &["--latency-ms", "3000"]),
        stack.participant("payment", "payment", &[]),
        stack.participant("orders", "orders", &[]),
    ];
    let js = stack.js().await;
    let (_gateway, mut client) = Gateway::start(&stack, "gateway").await;
    wait_provisioned(&js).await;

    let id = client
        .place_order(req(place("erin", vec![item("sku-1", 1, 100)], "")))
        .await
        .unwrap()
        .into_inner()
        .saga_id;
    let running = wait_saga(&mut client, &id, Duration::from_secs(30), |s| {
        s.state() == pb::SagaState::Running
    })
    .await;
    assert_eq!(running.current_step, "ReserveStock");
    let answer = client
        .cancel_saga(req(pb::CancelSagaRequest {
            saga_id: id.clone(),
            reason: "customer changed their mind".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!terminal(answer.state()), "{answer:?}");

    let views = watch_to_end(&mut client, &id, Duration::from_secs(60)).await;
    let end = views.last().unwrap();
    assert_eq!(end.state(), pb::SagaState::Compensated, "{end:#?}");
    assert!(
        end.compensation_reason
            .contains("cancelled: customer changed their mind"),
        "{:?}",
        end.compensation_reason
    );
    // The step in flight was in doubt, so it was undone.
    assert_eq!(end.steps[0].status, "COMPENSATED");
    assert_eq!(end.steps[0].compensation_attempts, 1);
    assert_eq!(end.steps[1].status, "NOT_STARTED");

    // A second cancel is a no-op on the terminal saga.
    let again = client
        .cancel_saga(req(pb::CancelSagaRequest {
            saga_id: id.clone(),
            reason: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.state(), pb::SagaState::Compensated);
    stop_all(&mut worker, &mut ps);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_unavailable_while_nats_is_down_and_recover_by_themselves() {
    let mut stack = Stack::new();
    let mut worker = stack.worker("worker", &[]);
    let mut ps = checkout_participants(&stack, &[]);
    let js = stack.js().await;
    let (_gateway, mut client) = Gateway::start(&stack, "gateway").await;
    wait_provisioned(&js).await;
    let first = client
        .place_order(req(place("frank", vec![item("sku-1", 1, 100)], "")))
        .await
        .unwrap()
        .into_inner()
        .saga_id;
    wait_saga(&mut client, &first, Duration::from_secs(60), |s| {
        s.state() == pb::SagaState::Completed
    })
    .await;

    stack.nats.stop().expect("stop nats");
    let request = place("grace", vec![item("sku-2", 1, 100)], "outage-key");
    let status = assert_code(
        client.place_order(req(request.clone())).await,
        Code::Unavailable,
    );
    assert!(
        status.message().contains("NATS is unreachable"),
        "{status:?}"
    );
    // Reads come from the projection: they still work.
    let read = client
        .get_saga(req(get(&first)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.state(), pb::SagaState::Completed);
    let travel = pb::StartSagaRequest {
        saga_type: "TravelBookingSaga".into(),
        payload: None,
        idempotency_key: String::new(),
    };
    assert_code(client.start_saga(req(travel)).await, Code::Unavailable);

    stack.nats.start_again().expect("restart nats");
    // The same request, retried with its key, goes through once NATS is back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let placed = loop {
        match client.place_order(req(request.clone())).await {
            Ok(r) => break r.into_inner(),
            Err(s) if s.code() == Code::Unavailable => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still unavailable 60s after NATS came back: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("unexpected {s:?}"),
        }
    };
    let done = wait_saga(&mut client, &placed.saga_id, Duration::from_secs(60), |s| {
        terminal(s.state())
    })
    .await;
    assert_eq!(done.state(), pb::SagaState::Completed);
    // Retrying the key once more gives the same saga.
    let again = client.place_order(req(request)).await.unwrap().into_inner();
    assert_eq!(again.saga_id, placed.saga_id);
    stop_all(&mut worker, &mut ps);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_saga_runs_a_travel_booking_from_a_struct_payload() {
    let stack = Stack::new();
    let mut worker = stack.worker("worker", &[]);
    let mut ps = vec![
        stack.participant("flight", "flight", &[]),
        stack.participant("hotel", "hotel", &[]),
        stack.participant("payment", "payment", &[]),
    ];
    let js = stack.js().await;
    let (_gateway, mut client) = Gateway::start(&stack, "gateway").await;
    wait_provisioned(&js).await;

    let s = |v: &str| prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(v.into())),
    };
    let payload = prost_types::Struct {
        fields: [
            ("flight".to_string(), s("LH123")),
            ("hotel".to_string(), s("Ritz")),
            ("customer_id".to_string(), s("heidi")),
            (
                "amount_cents".to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::NumberValue(120_000.0)),
                },
            ),
        ]
        .into(),
    };
    let started = client
        .start_saga(req(pb::StartSagaRequest {
            saga_type: "TravelBookingSaga".into(),
            payload: Some(payload),
            idempotency_key: "trip-1".into(),
        }))
        .await
        .expect("StartSaga")
        .into_inner();
    let views = watch_to_end(&mut client, &started.saga_id, Duration::from_secs(60)).await;
    let end = views.last().unwrap();
    assert_eq!(end.state(), pb::SagaState::Completed, "{end:#?}");
    assert_eq!(end.saga_type, "TravelBookingSaga");
    let def = saga_core::definition::load_file(&repo().join("sagas/travel-booking.yaml"))
        .unwrap()
        .definition;
    let want: Vec<(String, String)> = def
        .steps
        .iter()
        .map(|s| (s.name.clone(), "COMPLETED".to_string()))
        .collect();
    assert_eq!(step_statuses(end), want);
    let listed = client
        .list_sagas(req(pb::ListSagasRequest {
            saga_type: "TravelBookingSaga".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.sagas.len(), 1);
    stop_all(&mut worker, &mut ps);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_refuses_another_partition_count_and_types_no_live_worker_runs() {
    let stack = Stack::new();
    // This worker runs the checkout only.
    let only_checkout = stack.data_dir("only-checkout");
    std::fs::create_dir_all(&only_checkout).unwrap();
    std::fs::copy(
        repo().join("sagas/order-checkout.yaml"),
        only_checkout.join("order-checkout.yaml"),
    )
    .unwrap();
    let mut worker = stack.worker("worker", &[("SAGAS_DIR", only_checkout.to_str().unwrap())]);
    let mut ps = checkout_participants(&stack, &[]);
    let (_gateway, mut client) = Gateway::start(&stack, "gateway").await;

    // A type no live worker runs is refused, not parked in a partition forever.
    let travel = pb::StartSagaRequest {
        saga_type: "TravelBookingSaga".into(),
        payload: None,
        idempotency_key: "travel-1".into(),
    };
    let refused = assert_code(
        client.start_saga(req(travel)).await,
        Code::FailedPrecondition,
    );
    assert!(
        refused
            .message()
            .contains("none of the 1 live saga-worker(s) runs saga type TravelBookingSaga"),
        "{refused:?}"
    );
    // The checkout runs.
    let placed = client
        .place_order(req(place("alice", vec![item("sku-1", 1, 100)], "")))
        .await
        .unwrap()
        .into_inner();
    let done = wait_saga(&mut client, &placed.saga_id, Duration::from_secs(60), |s| {
        terminal(s.state())
    })
    .await;
    assert_eq!(done.state(), pb::SagaState::Completed);

    // A second gateway configured with another partition count does not start.
    let other = PARTITIONS * 2;
    let out = gateway_command(&stack, &stack.data_dir("gateway-2"))
        .env("PARTITIONS", other.to_string())
        .env("GRPC_ADDR", format!("127.0.0.1:{}", free_port()))
        .output()
        .expect("run saga-gateway");
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "this gateway is configured with {other} partitions but the cluster uses {PARTITIONS}"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("--partitions {PARTITIONS}")), "{err}");
    stop_all(&mut worker, &mut ps);
}
