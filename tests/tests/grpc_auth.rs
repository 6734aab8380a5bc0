//! The secured gateway from the outside: bearer tokens and roles, TLS and mTLS, checked
//! with a real grpcurl; per-client rate and WatchSaga limits with the Rust client.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use saga_e2e::grpcurl::{binary as grpcurl_binary, run as grpcurl, text};
use saga_e2e::*;
use saga_proto as pb;
use tonic::Code;

const CLIENT_TOKEN: &str = "sgt_client-token-of-the-web-shop";
const OPERATOR_TOKEN: &str = "sgt_operator-token-of-the-on-call";

fn bearer(token: &str) -> String {
    format!("authorization: Bearer {token}")
}

fn sha256(token: &str) -> String {
    let out = Command::new(binary("sagactl"))
        .args(["token", "hash", token])
        .output()
        .expect("sagactl token hash");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A tokens file with a `web` client and an `ops` operator.
fn tokens_file(dir: &Path) -> PathBuf {
    let path = dir.join("tokens.yaml");
    std::fs::write(
        &path,
        format!(
            "clients:\n  - name: web\n    sha256: {}\n    roles: [client]\n  - name: ops\n    \
             sha256: {}\n    roles: [operator]\n",
            sha256(CLIENT_TOKEN),
            sha256(OPERATOR_TOKEN)
        ),
    )
    .unwrap();
    path
}

/// Waits until health answers SERVING for `args` (health needs no token; grpcurl's
/// reflection does, hence `-reflect-header`).
async fn wait_serving(bin: &Path, addr: &str, args: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let reflect = bearer(OPERATOR_TOKEN);
    loop {
        let mut all: Vec<&str> = args.to_vec();
        all.extend([
            "-reflect-header",
            &reflect,
            addr,
            "grpc.health.v1.Health/Check",
        ]);
        let out = grpcurl(bin, &all);
        if out.status.success() && text(&out).contains("SERVING") {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gateway on {addr} not serving: {}",
            text(&out)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// PEM files: a CA, the gateway's certificate for 127.0.0.1, a client certificate.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "grpc_auth test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_pem, server_key_pem) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        "saga-gateway",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_pem, client_key_pem) = leaf(
        vec!["checkout-web".into()],
        "checkout-web",
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server_pem),
        server_key: write("server-key.pem", &server_key_pem),
        client_cert: write("client.pem", &client_pem),
        client_key: write("client-key.pem", &client_key_pem),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_refuse_the_unknown_and_the_underprivileged_and_health_stays_open() {
    let bin = grpcurl_binary();
    let stack = Stack::new();
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path());
    let tokens_arg = tokens.to_str().unwrap();

    // A tokens file with a mistake: the gateway refuses to start and says where.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "clients:\n  - name: web\n    sha256: not-a-hash\n    roles: [client]\n",
    )
    .unwrap();
    let refused = gateway_command(&stack, &stack.data_dir("bad"))
        .env("GRPC_ADDR", format!("127.0.0.1:{}", free_port()))
        .args(["--tokens-file", bad.to_str().unwrap()])
        .output()
        .expect("run saga-gateway");
    assert!(!refused.status.success());
    let said = text(&refused);
    assert!(
        said.contains(&format!("tokens file {}: clients[0].sha256", bad.display())),
        "{said}"
    );

    let mut gateway =
        Gateway::start_with_args(&stack, "gateway", &["--tokens-file", tokens_arg]).await;
    let addr = gateway.addr.clone();
    let p = ["-plaintext"];
    // Health answers without a token (the reflection header only serves grpcurl).
    wait_serving(&bin, &addr, &p).await;

    // No token at all: reflection itself is refused.
    let list = grpcurl(&bin, &["-plaintext", &addr, "list"]);
    assert!(!list.status.success());
    assert!(
        text(&list).contains("Unauthenticated")
            && text(&list).contains("missing bearer token: set the authorization header"),
        "{}",
        text(&list)
    );

    let call = |rpc_header: Option<String>, method: &str| {
        let reflect = bearer(OPERATOR_TOKEN);
        let mut args = vec!["-plaintext", "-reflect-header", &reflect];
        let header;
        if let Some(h) = rpc_header {
            header = h;
            args.extend(["-rpc-header", &header]);
        }
        let method = format!("saga.v1.SagaGateway/{method}");
        args.extend(["-d", "{}", &addr, &method]);
        grpcurl(&bin, &args)
    };

    let missing = call(None, "ListSagas");
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("Code: Unauthenticated")
            && text(&missing).contains("missing bearer token"),
        "{}",
        text(&missing)
    );
    let wrong = call(Some(bearer("sgt_guessed")), "ListSagas");
    assert!(
        text(&wrong).contains("Code: Unauthenticated")
            && text(&wrong).contains("unknown bearer token"),
        "{}",
        text(&wrong)
    );
    let malformed = call(
        Some(format!("authorization: Basic {CLIENT_TOKEN}")),
        "ListSagas",
    );
    assert!(
        text(&malformed).contains("Code: Unauthenticated")
            && text(&malformed).contains("expected `Bearer <token>`"),
        "{}",
        text(&malformed)
    );

    let listed = call(Some(bearer(CLIENT_TOKEN)), "ListSagas");
    assert!(listed.status.success(), "{}", text(&listed));

    let denied = call(Some(bearer(CLIENT_TOKEN)), "ListDeadLetters");
    assert!(!denied.status.success());
    assert!(
        text(&denied).contains("Code: PermissionDenied")
            && text(&denied)
                .contains("saga.v1.SagaGateway/ListDeadLetters needs the `operator` role")
            && text(&denied).contains("client `web` has client"),
        "{}",
        text(&denied)
    );
    let operator = call(Some(bearer(OPERATOR_TOKEN)), "ListDeadLetters");
    assert!(operator.status.success(), "{}", text(&operator));

    gateway.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_an_order_completes_and_mtls_wants_a_client_certificate() {
    let bin = grpcurl_binary();
    let stack = Stack::new();
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path());
    let pki = pki(dir.path());
    let s = |p: &PathBuf| p.to_str().unwrap().to_string();
    let mut worker = stack.worker("worker", &[]);
    let mut ps = checkout_participants(&stack, &[]);
    stack.wait_live_workers(1).await;

    let (cert, key, ca, tokens) = (
        s(&pki.server_cert),
        s(&pki.server_key),
        s(&pki.ca),
        s(&tokens),
    );
    let mut tls = Gateway::start_with_args(
        &stack,
        "tls",
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tokens-file",
            &tokens,
        ],
    )
    .await;
    let addr = tls.addr.clone();
    wait_serving(&bin, &addr, &["-cacert", &ca]).await;

    // Plaintext to a TLS port gets nowhere.
    let plain = grpcurl(&bin, &["-plaintext", &addr, "list"]);
    assert!(!plain.status.success(), "{}", text(&plain));

    let auth = bearer(CLIENT_TOKEN);
    let placed = grpcurl(
        &bin,
        &[
            "-cacert",
            &ca,
            "-H",
            &auth,
            "-d",
            r#"{"customer_id":"alice","items":[{"sku":"sku-1","quantity":1,"unit_price_cents":900}]}"#,
            &addr,
            "saga.v1.SagaGateway/PlaceOrder",
        ],
    );
    assert!(placed.status.success(), "{}", text(&placed));
    let body: serde_json::Value = serde_json::from_slice(&placed.stdout).expect("JSON reply");
    let saga_id = body["sagaId"].as_str().expect("sagaId").to_string();
    let request = format!(r#"{{"saga_id":"{saga_id}"}}"#);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let got = grpcurl(
            &bin,
            &[
                "-cacert",
                &ca,
                "-H",
                &auth,
                "-d",
                &request,
                &addr,
                "saga.v1.SagaGateway/GetSaga",
            ],
        );
        assert!(got.status.success(), "{}", text(&got));
        let saga: serde_json::Value = serde_json::from_slice(&got.stdout).expect("JSON saga");
        if saga["state"] == "SAGA_STATE_COMPLETED" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not completed: {saga}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // sagactl speaks https:// with --ca-cert and SAGA_TOKEN.
    let sagactl = |gateway: &str, token: Option<&str>, extra: &[&str]| {
        let mut cmd = Command::new(binary("sagactl"));
        cmd.args(["--gateway", gateway, "--ca-cert", &ca])
            .args(extra)
            .args(["saga", "list"])
            .env_remove("SAGA_TOKEN");
        if let Some(t) = token {
            cmd.env("SAGA_TOKEN", t);
        }
        cmd.output().expect("run sagactl")
    };
    let https = format!("https://{addr}");
    let listed = sagactl(&https, Some(CLIENT_TOKEN), &[]);
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(text(&listed).contains(&saga_id), "{}", text(&listed));
    let anonymous = sagactl(&https, None, &[]);
    assert!(!anonymous.status.success());
    assert!(
        text(&anonymous).contains("UNAUTHENTICATED: missing bearer token"),
        "{}",
        text(&anonymous)
    );

    // mTLS: the same tokens, and a client certificate signed by the CA.
    let mut mtls = Gateway::start_with_args(
        &stack,
        "mtls",
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
            "--tokens-file",
            &tokens,
        ],
    )
    .await;
    let maddr = mtls.addr.clone();
    let (ccert, ckey) = (s(&pki.client_cert), s(&pki.client_key));
    wait_serving(
        &bin,
        &maddr,
        &["-cacert", &ca, "-cert", &ccert, "-key", &ckey],
    )
    .await;
    let without = grpcurl(
        &bin,
        &[
            "-cacert",
            &ca,
            "-H",
            &auth,
            "-d",
            "{}",
            &maddr,
            "saga.v1.SagaGateway/ListSagas",
        ],
    );
    assert!(!without.status.success(), "{}", text(&without));
    // The handshake is refused: grpcurl never gets to send the call.
    let said = text(&without).to_lowercase();
    assert!(
        said.contains("failed to dial") || said.contains("certificate required"),
        "{said}"
    );
    let with = grpcurl(
        &bin,
        &[
            "-cacert",
            &ca,
            "-cert",
            &ccert,
            "-key",
            &ckey,
            "-H",
            &auth,
            "-d",
            "{}",
            &maddr,
            "saga.v1.SagaGateway/ListSagas",
        ],
    );
    assert!(with.status.success(), "{}", text(&with));
    let mhttps = format!("https://{maddr}");
    let listed = sagactl(
        &mhttps,
        Some(CLIENT_TOKEN),
        &["--client-cert", &ccert, "--client-key", &ckey],
    );
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(!sagactl(&mhttps, Some(CLIENT_TOKEN), &[]).status.success());

    mtls.stop();
    tls.stop();
    stop_all(&mut worker, &mut ps);
}

async fn client(addr: &str) -> Client {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut c) = Client::connect(format!("http://{addr}")).await {
            if c.list_sagas(pb::ListSagasRequest::default()).await.is_ok() {
                return c;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gateway on {addr} not answering"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_its_rate_or_watch_limit_is_refused_and_a_closed_watch_frees_its_slot() {
    let stack = Stack::new();
    let mut worker = stack.worker("worker", &[]);
    stack.wait_live_workers(1).await;

    // The rate: a burst of 5, then 1 a second; 30 calls at once outrun it.
    let mut rated = Gateway::start_with_args(
        &stack,
        "rated",
        &["--rate-per-client", "1", "--rate-burst", "5"],
    )
    .await;
    let c = client(&rated.addr).await;
    let calls = (0..30).map(|_| {
        let mut c = c.clone();
        async move { c.list_sagas(pb::ListSagasRequest::default()).await }
    });
    let results = futures::future::join_all(calls).await;
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(!refused.is_empty(), "30 calls at once all passed");
    for status in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status
                .message()
                .contains("rate limit: client `127.0.0.1` exceeded 1 requests/s")
                && status.message().contains("retry after"),
            "{}",
            status.message()
        );
    }
    rated.stop();

    // The watch cap: 2 streams; the third is refused until one of them goes away.
    let mut watched =
        Gateway::start_with_args(&stack, "watched", &["--max-watch-per-client", "2"]).await;
    let mut c = client(&watched.addr).await;
    let placed = c
        .place_order(pb::PlaceOrderRequest {
            customer_id: "bob".into(),
            items: vec![pb::OrderItem {
                sku: "sku-1".into(),
                quantity: 1,
                unit_price_cents: 100,
            }],
            ..Default::default()
        })
        .await
        .expect("PlaceOrder")
        .into_inner();
    let id = placed.saga_id;
    // Known to the projection, then frozen (its worker stopped): its watch streams stay
    // open.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while c
        .get_saga(pb::GetSagaRequest {
            saga_id: id.clone(),
        })
        .await
        .is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "saga {id} unknown");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(&mut worker);
    let watch = |mut c: Client| {
        let id = id.clone();
        async move { c.watch_saga(pb::WatchSagaRequest { saga_id: id }).await }
    };
    let first_client = client(&watched.addr).await;
    let first = watch(first_client.clone()).await.expect("first watch");
    let _second = watch(c.clone()).await.expect("second watch");
    let third = watch(c.clone()).await.expect_err("a third watch");
    assert_eq!(third.code(), Code::ResourceExhausted, "{third:?}");
    assert!(
        third.message().contains("watch limit: client `127.0.0.1`")
            && third.message().contains("--max-watch-per-client 2"),
        "{}",
        third.message()
    );

    // The first watcher goes away: its slot comes back.
    drop(first);
    drop(first_client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let _again = loop {
        match watch(c.clone()).await {
            Ok(stream) => break stream,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the closed watch's slot never came back"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    watched.stop();
}
