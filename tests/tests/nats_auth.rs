//! NATS users per role, with TLS: the users and certificates that `sagactl nats-auth`
//! writes run a real checkout end to end (worker, participants and gateway each with
//! its own nkey), and a participant's credentials cannot do more than its job: no
//! starting sagas (`saga.in.>`), no replying in another service's name, no reading
//! another service's commands. Anonymous connections are refused.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use async_nats::{ConnectOptions, Event};
use saga_e2e::{binary, order, repo, start_saga, wait_terminal, PARTITIONS};
use saga_nats::Security;
use saga_testkit::{NatsServer, ProcessGuard};
use tokio::sync::mpsc;

const SAGA: &str = "OrderCheckout";

/// The auth directory, written by the real `sagactl nats-auth --tls`.
fn nats_auth(dir: &Path) -> PathBuf {
    let out = dir.join("auth");
    let status = Command::new(binary("sagactl"))
        .args(["nats-auth", "--tls", "--out"])
        .arg(&out)
        .arg("--nats-conf")
        .arg(repo().join("nats.conf"))
        .current_dir(repo())
        .status()
        .expect("run sagactl nats-auth");
    assert!(status.success(), "sagactl nats-auth failed");
    out
}

/// A server with the generated users and TLS.
fn secure_server(auth: &Path) -> NatsServer {
    let users = std::fs::read_to_string(auth.join("auth.conf")).expect("auth.conf");
    let tls = auth.join("tls");
    NatsServer::builder()
        .extra_config(users)
        .extra_config(format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}",
            tls.join("server.pem").display(),
            tls.join("server-key.pem").display()
        ))
        .start()
        .expect("nats-server with users and TLS (run `make setup`)")
}

/// The environment of role `name`, as `sagactl nats-auth` wrote it.
fn role_env(auth: &Path, name: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(auth.join("env").join(format!("{name}.env")))
        .unwrap_or_else(|e| panic!("env file of {name}: {e}"));
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn security(auth: &Path, name: &str) -> Security {
    let env = role_env(auth, name);
    Security::from_lookup(|k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
        .expect("valid role environment")
}

/// A client of role `name` whose server errors (permission violations) arrive on the
/// returned channel.
async fn client_as(
    url: &str,
    auth: &Path,
    name: &str,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let options = ConnectOptions::new().event_callback(move |event| {
        let tx = tx.clone();
        async move {
            if let Event::ServerError(e) = event {
                let _ = tx.send(e.to_string());
            }
        }
    });
    let options = security(auth, name)
        .apply(options, url, name)
        .await
        .expect("apply role settings");
    let client = options.connect(url).await.expect("connect as role");
    (client, rx)
}

fn spawn(bin: &str, auth: &Path, role: &str, env: &[(&str, String)]) -> ProcessGuard {
    let mut cmd = Command::new(binary(bin));
    cmd.env("RUST_LOG", "warn").envs(role_env(auth, role));
    for (k, v) in env {
        cmd.env(k, v);
    }
    ProcessGuard::spawn(&mut cmd).unwrap_or_else(|e| panic!("spawn {bin}: {e}"))
}

/// Waits for a server error that mentions `needle`.
async fn violation(errors: &mut mpsc::UnboundedReceiver<String>, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, errors.recv()).await {
            Ok(Some(e)) if e.contains(needle) => return e,
            Ok(Some(_)) => continue,
            _ => panic!("no permissions violation mentioning {needle:?} within 10 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_does_its_job_and_a_participant_nothing_more() {
    let _turn = saga_e2e::one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let auth = nats_auth(dir.path());
    let nats = secure_server(&auth);
    let url = nats.url();
    let data = |name: &str| dir.path().join(name).display().to_string();
    let sagas = repo().join("sagas").display().to_string();
    let partitions = PARTITIONS.to_string();

    // Anonymous connections are refused.
    let anonymous = ConnectOptions::new()
        .add_root_certificates(auth.join("tls").join("ca.pem"))
        .require_tls(true)
        .connect(&url)
        .await;
    assert!(anonymous.is_err(), "an anonymous client was let in");

    // The whole checkout, every process with its own user, over TLS.
    let common = |name: &str| {
        vec![
            ("NATS_URL", url.clone()),
            ("DATA_DIR", data(name)),
            ("SAGAS_DIR", sagas.clone()),
            ("PARTITIONS", partitions.clone()),
            ("SAGA_PARTITIONS", partitions.clone()),
            // The orders participant's gRPC API on a port of its own.
            ("ORDERS_GRPC_ADDR", "127.0.0.1:0".to_string()),
        ]
    };
    let _worker = spawn("saga-worker", &auth, "saga-worker", &common("worker"));
    let _participants: Vec<ProcessGuard> = ["inventory", "payment", "orders"]
        .iter()
        .map(|p| spawn(p, &auth, p, &common(p)))
        .collect();
    let (operator, _) = client_as(&url, &auth, "sagactl").await;
    let operator = async_nats::jetstream::new(operator);
    saga_e2e::wait_provisioned(&operator).await;

    let (gateway_client, _) = client_as(&url, &auth, "saga-gateway").await;
    let gateway_js = async_nats::jetstream::new(gateway_client);
    let ids: Vec<String> = (1..=3).map(|i| format!("nats-auth-{i}")).collect();
    for id in &ids {
        start_saga(
            &gateway_js,
            SAGA,
            id,
            order(id, "alice", &[("sku-1", 1, 1_000)]),
        )
        .await;
    }
    let states = wait_terminal(&operator, SAGA, &ids, Duration::from_secs(90)).await;
    assert!(
        states
            .iter()
            .all(|s| *s == saga_proto::SagaState::Completed),
        "{states:?}"
    );

    // The gateway, under its own user, provisions, follows the journal and answers.
    let grpc = format!("127.0.0.1:{}", saga_e2e::free_port());
    let mut gateway_env = common("gateway");
    gateway_env.push(("GRPC_ADDR", grpc.clone()));
    let mut gateway = spawn("saga-gateway", &auth, "saga-gateway", &gateway_env);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            gateway.is_running(),
            "saga-gateway exited under its NATS user"
        );
        let state = match saga_proto::saga_gateway_client::SagaGatewayClient::connect(format!(
            "http://{grpc}"
        ))
        .await
        {
            Ok(mut c) => c
                .get_saga(saga_proto::GetSagaRequest {
                    saga_id: ids[0].clone(),
                })
                .await
                .ok()
                .map(|r| r.into_inner().state()),
            Err(_) => None,
        };
        if state == Some(saga_proto::SagaState::Completed) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway did not show {} COMPLETED within 60 s (last: {state:?})",
            ids[0]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A participant's credentials: its own consumer is readable (the control)...
    let (payment, mut errors) = client_as(&url, &auth, "payment").await;
    let payment_js = async_nats::jetstream::new(payment.clone());
    let commands = payment_js
        .get_stream("SAGA_COMMANDS")
        .await
        .expect("a participant reads the commands stream's info");
    commands
        .consumer_info("svc-payment")
        .await
        .expect("a participant reads its own consumer");

    // ...another service's is not,
    assert!(
        commands.consumer_info("svc-inventory").await.is_err(),
        "payment read the consumer of inventory"
    );
    violation(&mut errors, "CONSUMER.INFO.SAGA_COMMANDS.svc-inventory").await;
    let sneaky = commands
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: "saga.cmd.inventory.>".into(),
            ..Default::default()
        })
        .await;
    assert!(
        sneaky.is_err(),
        "payment made itself a consumer of inventory's commands"
    );
    violation(
        &mut errors,
        "Permissions Violation for Publish to \"$JS.API.CONSUMER.CREATE",
    )
    .await;
    // ...nor can it listen to commands on the wire,
    let _sub = payment.subscribe("saga.cmd.>").await.unwrap();
    violation(
        &mut errors,
        "Permissions Violation for Subscription to \"saga.cmd.>\"",
    )
    .await;

    // ...start or cancel sagas,
    let before = inbox_messages(&operator).await;
    let forged = payment_js
        .publish("saga.in.0.forged-start", "garbage".into())
        .await;
    if let Ok(ack) = forged {
        assert!(ack.await.is_err(), "payment's start reached SAGA_INBOX");
    }
    violation(
        &mut errors,
        "Permissions Violation for Publish to \"saga.in.0.forged-start\"",
    )
    .await;
    // ...or reply in another service's name.
    payment
        .publish("saga.reply.0.forged.inventory", "garbage".into())
        .await
        .unwrap();
    violation(
        &mut errors,
        "Permissions Violation for Publish to \"saga.reply.0.forged.inventory\"",
    )
    .await;
    payment.flush().await.unwrap();
    assert_eq!(
        inbox_messages(&operator).await,
        before,
        "a forged input was stored"
    );
}

/// Messages ever stored in `SAGA_INBOX` (its last sequence).
async fn inbox_messages(js: &async_nats::jetstream::Context) -> u64 {
    let mut stream = js.get_stream("SAGA_INBOX").await.unwrap();
    stream.info().await.unwrap().state.last_sequence
}
