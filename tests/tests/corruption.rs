//! Corrupt local copies of the journal: the gateway's projection and the worker's store
//! are moved aside (or their bad record skipped) and rebuilt from `SAGA_JOURNAL`, never
//! served and never a crash loop.

use std::path::Path;
use std::time::Duration;

use saga_e2e::*;
use saga_proto as pb;
use tonic::Request;

const SAGA: &str = "OrderCheckout";
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn req<T>(message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.set_timeout(CALL_TIMEOUT);
    r
}

/// Names in `dir` that start with `prefix`.
fn entries(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Overwrites sled's `conf` file of the store in `dir` with bytes it cannot read.
fn corrupt_sled_conf(dir: &Path) {
    let conf = dir.join("conf");
    assert!(conf.exists(), "{} has no sled conf", dir.display());
    std::fs::write(
        &conf,
        b"\xff\xfe\x00garbage where sled keeps its settings\x01\x02\x03",
    )
    .expect("overwrite conf");
}

/// Waits until the gateway answers every saga in `ids` as the journal has it.
async fn wait_gateway_matches_journal(
    client: &mut Client,
    js: &async_nats::jetstream::Context,
    ids: &[String],
) -> Vec<(String, pb::SagaState, u64)> {
    let want: Vec<(String, pb::SagaState, u64)> = last_records(js, SAGA, ids)
        .await
        .into_iter()
        .zip(ids)
        .map(|((version, state), id)| (id.clone(), state, version))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut got = Vec::new();
        for id in ids {
            match client
                .get_saga(req(pb::GetSagaRequest {
                    saga_id: id.clone(),
                }))
                .await
            {
                Ok(s) => {
                    let s = s.into_inner();
                    got.push((s.saga_id.clone(), s.state(), s.version));
                }
                Err(status) => {
                    // While the projection is rebuilt, a saga it lacks is UNAVAILABLE
                    // (it exists on the broker), never NOT_FOUND or a wrong view.
                    assert_eq!(
                        status.code(),
                        tonic::Code::Unavailable,
                        "GetSaga {id}: {status}"
                    );
                    break;
                }
            }
        }
        if got == want {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway does not answer as the journal after 60 s: {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn listed(client: &mut Client) -> Vec<String> {
    let mut ids: Vec<String> = client
        .list_sagas(req(pb::ListSagasRequest::default()))
        .await
        .expect("ListSagas")
        .into_inner()
        .sagas
        .into_iter()
        .map(|s| s.saga_id)
        .collect();
    ids.sort();
    ids
}

async fn run_orders(js: &async_nats::jetstream::Context, prefix: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    for id in &ids {
        start_saga(js, SAGA, id, order(id, "carol", &[("sku-1", 1, 250)])).await;
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_projection_sled_cannot_open_is_moved_aside_and_rebuilt_from_the_journal() {
    let stack = Stack::new();
    let _worker = stack.worker("worker", &[]);
    let _ps = checkout_participants(&stack, &[]);
    let js = stack.js().await;
    wait_provisioned(&js).await;
    let (mut gateway, mut client) = Gateway::start(&stack, "gateway").await;
    let ids = run_orders(&js, "proj", 5).await;
    assert_checkouts_completed_once(&js, &ids).await;
    let before = wait_gateway_matches_journal(&mut client, &js, &ids).await;
    drop(client);
    gateway.stop();

    corrupt_sled_conf(&gateway.data_dir);
    let (mut gateway, mut client) = Gateway::start(&stack, "gateway").await;
    let parent = gateway.data_dir.parent().expect("parent").to_path_buf();
    let aside = entries(&parent, "gateway.corrupt-");
    assert_eq!(
        aside.len(),
        1,
        "the corrupt projection is moved aside: {aside:?}"
    );
    assert_eq!(
        wait_gateway_matches_journal(&mut client, &js, &ids).await,
        before
    );
    assert_eq!(listed(&mut client).await, ids);

    // It follows on: a saga started after the rebuild is served too.
    let more = run_orders(&js, "after", 1).await;
    assert_checkouts_completed_once(&js, &more).await;
    wait_gateway_matches_journal(&mut client, &js, &more).await;
    assert!(gateway.process.is_running(), "the gateway exited");
    drop(client);
    gateway.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_projection_record_is_never_served_and_the_projection_rebuilt() {
    let stack = Stack::new();
    let _worker = stack.worker("worker", &[]);
    let _ps = checkout_participants(&stack, &[]);
    let js = stack.js().await;
    wait_provisioned(&js).await;
    let (mut gateway, mut client) = Gateway::start(&stack, "gateway").await;
    let ids = run_orders(&js, "rec", 4).await;
    assert_checkouts_completed_once(&js, &ids).await;
    let before = wait_gateway_matches_journal(&mut client, &js, &ids).await;
    drop(client);
    gateway.stop();

    // One view overwritten with bytes that are no saga.v1.Saga.
    {
        let db = sled::open(&gateway.data_dir).expect("open the stopped gateway's projection");
        let sagas = db.open_tree("sagas").expect("sagas tree");
        assert!(sagas.get(&ids[1]).expect("read").is_some());
        sagas
            .insert(ids[1].as_bytes(), &b"\x0a\xff\xff\x01"[..])
            .expect("overwrite");
        db.flush().expect("flush");
    }
    let (mut gateway, mut client) = Gateway::start(&stack, "gateway").await;
    assert_eq!(
        wait_gateway_matches_journal(&mut client, &js, &ids).await,
        before
    );
    assert_eq!(listed(&mut client).await, ids);
    assert!(gateway.process.is_running(), "the gateway exited");
    drop(client);
    gateway.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_store_sled_cannot_open_is_moved_aside_and_its_open_sagas_restored_from_the_journal(
) {
    let stack = Stack::new();
    // ConfirmOrder waits ten minutes for its participant: the sagas stay open at it while
    // the orders participant is down.
    let yaml = std::fs::read_to_string(repo().join("sagas/order-checkout.yaml"))
        .expect("order-checkout.yaml");
    let confirm = "      action: ConfirmOrder\n      timeout: 5s\n";
    assert!(
        yaml.contains(confirm),
        "order-checkout.yaml changed: {confirm}"
    );
    let yaml = yaml.replace(confirm, "      action: ConfirmOrder\n      timeout: 600s\n");
    let sagas = sagas_dir_with(&stack, &[("order-checkout.yaml", &yaml)]);
    let sagas = sagas.to_str().expect("utf-8 path");
    let mut worker = stack.worker("worker", &[("SAGAS_DIR", sagas)]);
    let _ps = [
        stack.participant("inventory", "inventory", &[]),
        stack.participant("payment", "payment", &[]),
    ];
    let js = stack.js().await;
    wait_provisioned(&js).await;
    let ids = run_orders(&js, "open", 5).await;
    eventually(
        Duration::from_secs(60),
        "every saga waits at ConfirmOrder",
        || {
            let js = js.clone();
            let ids = ids.clone();
            async move {
                for id in &ids {
                    let j = journal(&js, SAGA, id).await;
                    if !j.last().is_some_and(|e| {
                        e.state() == pb::SagaState::Running && e.current_step == "ConfirmOrder"
                    }) {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    stop(&mut worker);

    let data = stack.data_dir("worker");
    corrupt_sled_conf(&data.join("store"));
    let mut worker = stack.worker("worker", &[("SAGAS_DIR", sagas)]);
    eventually(
        Duration::from_secs(30),
        "the corrupt store moved aside",
        || {
            let data = data.clone();
            async move { !entries(&data, "store.corrupt-").is_empty() }
        },
    )
    .await;
    assert!(worker.is_running(), "the worker exited on a corrupt store");

    // The replies reach a worker with no local copy: it restores each saga from its
    // journal and completes it once.
    let mut orders = stack.participant("orders", "orders", &[]);
    assert_checkouts_completed_once(&js, &ids).await;
    assert!(worker.is_running(), "the worker exited");
    stop(&mut worker);
    stop(&mut orders);
    let confirmed = assert_no_double_effect(&stack, "orders");
    assert_eq!(confirmed["ConfirmOrder"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_whose_store_is_corrupt_fails_closed_and_says_to_restore_a_backup() {
    let stack = Stack::new();
    // A store with business data, then corrupted while the participant is stopped.
    let mut inventory = stack.participant("inventory", "inventory", &[]);
    let js = stack.js().await;
    eventually(
        Duration::from_secs(30),
        "the inventory participant is up",
        || {
            let js = js.clone();
            async move {
                match js.get_stream("SAGA_COMMANDS").await {
                    Ok(s) => s.consumer_info("svc-inventory").await.is_ok(),
                    Err(_) => false,
                }
            }
        },
    )
    .await;
    stop(&mut inventory);
    let dir = stack.data_dir("inventory");
    corrupt_sled_conf(&dir);

    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(binary("inventory"))
            .env("NATS_URL", stack.nats.url())
            .env("DATA_DIR", &dir)
            .env("RUST_LOG", "warn")
            .output(),
    )
    .await
    .expect("the participant exits at once")
    .expect("run inventory");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started on a corrupt store: {stderr}"
    );
    assert!(
        stderr.contains("cannot be rebuilt") && stderr.contains("from a backup"),
        "{stderr}"
    );
    assert!(stderr.contains(&dir.display().to_string()), "{stderr}");
    // Failing closed: nothing moved, nothing started empty.
    assert!(entries(stack.dir.path(), "inventory.corrupt").is_empty());
}
