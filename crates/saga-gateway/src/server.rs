//! [`serve`]: the gRPC server (gateway, health, reflection) and the projection follower.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream;
use saga_core::SagaDefinition;
use saga_proto::saga_gateway_server::SagaGatewayServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::server::HealthReporter;

use crate::auth::{Guard, GuardLayer, Tokens};
use crate::limits::{ClientLimits, Limiter};
use crate::requests::{ensure_requests_bucket, DEFAULT_REQUEST_WINDOW};
use crate::{GatewayError, GatewayService, Projection};

/// How often the health service looks at the NATS connection and the follower.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// A follower whose checkpoint stays behind the journal this long is stuck.
pub const FOLLOWER_STUCK_AFTER: Duration = Duration::from_secs(30);

/// Tells a follower that is behind and not moving from one that is catching up.
#[derive(Debug, Default)]
pub struct FollowerWatch {
    /// The checkpoint last seen behind the journal, and since when it has not moved.
    behind: Option<(u64, tokio::time::Instant)>,
}

impl FollowerWatch {
    /// Observes the projection's checkpoint and the journal's last sequence at `now`;
    /// true when the follower is stuck: behind the journal, at the same checkpoint for
    /// [`FOLLOWER_STUCK_AFTER`].
    pub fn stuck(&mut self, checkpoint: u64, journal_last: u64, now: tokio::time::Instant) -> bool {
        if checkpoint >= journal_last {
            self.behind = None;
            return false;
        }
        match self.behind {
            Some((at, since)) if at == checkpoint => {
                now.duration_since(since) >= FOLLOWER_STUCK_AFTER
            }
            _ => {
                self.behind = Some((checkpoint, now));
                false
            }
        }
    }
}

/// What [`serve`] needs.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Address of the gRPC server (default `127.0.0.1:50051`).
    pub grpc_addr: SocketAddr,
    /// Directory of the projection (sled), the gateway's own.
    pub data_dir: PathBuf,
    /// The workers' partition count (`saga.in.<partition>.<saga_id>`).
    pub partitions: u32,
    /// Loaded saga definitions by name: what StartSaga accepts, and the steps of a view.
    pub definitions: BTreeMap<String, Arc<SagaDefinition>>,
    /// How long idempotency keys are remembered (the `saga_requests` bucket's max age).
    pub request_window: Duration,
    /// Replicas of the `saga_requests` bucket (1 on a single server).
    pub replicas: usize,
    /// TLS, tokens and per-client limits; the default is the plaintext dev mode.
    pub security: Security,
}

/// How the gRPC server is secured. The default (no TLS, no tokens, no limits) is the
/// dev mode, announced by a WARN line at start.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Serve TLS with this certificate (and verify client certificates when it has a
    /// client CA).
    pub tls: Option<TlsPem>,
    /// Ask every `saga.v1` call and reflection for a bearer token of these clients.
    pub tokens: Option<Arc<Tokens>>,
    /// Per-client request rate and WatchSaga streams.
    pub limits: ClientLimits,
}

/// PEM contents of the server's TLS files.
#[derive(Clone)]
pub struct TlsPem {
    /// The certificate chain, leaf first.
    pub cert: Vec<u8>,
    /// Its private key.
    pub key: Vec<u8>,
    /// When set, clients must present a certificate signed by one of these CAs (mTLS).
    pub client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("TlsPem")
            .field("cert_bytes", &self.cert.len())
            .field("mtls", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsPem {
    fn server_config(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new().identity(Identity::from_pem(&self.cert, &self.key));
        match &self.client_ca {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }
}

impl GatewayConfig {
    /// A configuration with the defaults: `127.0.0.1:50051`, `data/gateway`, 16
    /// partitions, a 24 h request window, one replica.
    pub fn new(definitions: BTreeMap<String, Arc<SagaDefinition>>) -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from("data/gateway"),
            partitions: 16,
            definitions,
            request_window: DEFAULT_REQUEST_WINDOW,
            replicas: 1,
            security: Security::default(),
        }
    }
}

/// Binds `config.grpc_addr` and serves until `shutdown` resolves. See [`serve_on`].
pub async fn serve(
    config: GatewayConfig,
    js: jetstream::Context,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let listener = TcpListener::bind(config.grpc_addr)
        .await
        .map_err(|source| GatewayError::Bind {
            addr: config.grpc_addr,
            source,
        })?;
    serve_on(listener, config, js, shutdown).await
}

/// Serves `saga.v1.SagaGateway`, `grpc.health.v1.Health` and server reflection (v1 and
/// v1alpha, for grpcurl before 1.9) on `listener` until `shutdown` resolves, while a
/// task keeps the projection in `config.data_dir` up to date from `SAGA_JOURNAL`.
///
/// The streams must exist (`saga_nats::provision_streams`); the `saga_requests` bucket is
/// created here. On shutdown the server stops accepting, open watch streams end with
/// `UNAVAILABLE`, in-flight requests finish, then the follower stops and the projection
/// is flushed.
pub async fn serve_on(
    listener: TcpListener,
    config: GatewayConfig,
    js: jetstream::Context,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let projection = Arc::new(Projection::open(
        &config.data_dir,
        config.definitions.values().map(|d| d.as_ref()),
    )?);
    let requests = ensure_requests_bucket(&js, config.request_window, config.replicas).await?;
    crate::workers::check_partitions(&js, config.partitions).await?;
    let live = crate::workers::LiveWorkers::default();
    if let Err(e) = live.refresh(&js).await {
        tracing::warn!(error = %e, "could not read the live workers yet");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let live_task = tokio::spawn(live.clone().follow(js.clone(), stop_rx.clone()));

    let follower = tokio::spawn(projection.clone().follow(js.clone(), stop_rx.clone()));
    let service = GatewayService::new(
        projection.clone(),
        js.clone(),
        requests,
        Arc::new(config.definitions),
        config.partitions,
        stop_rx.clone(),
    )
    .with_live_workers(live);

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<SagaGatewayServer<GatewayService>>()
        .await;
    let health_task = tokio::spawn(report_health(
        reporter,
        js.clone(),
        projection.clone(),
        stop_rx.clone(),
    ));

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(saga_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(saga_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let addr = listener.local_addr().ok();
    let security = &config.security;
    let mut builder = Server::builder();
    if let Some(tls) = &security.tls {
        builder = builder.tls_config(tls.server_config())?;
    }
    announce_security(security);
    let guard = GuardLayer::new(Guard {
        tokens: security.tokens.clone(),
        limiter: Limiter::new(security.limits),
    });
    tracing::info!(addr = ?addr, partitions = config.partitions, "saga-gateway serving");
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: draining requests");
        let _ = stop_tx.send(true);
    };
    let served = builder
        .layer(guard)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(SagaGatewayServer::new(service))
        .serve_with_incoming_shutdown(incoming, signal)
        .await;

    // The signal has fired (or the server failed): stop the tasks either way.
    health_task.abort();
    live_task.abort();
    follower.abort();
    let _ = follower.await;
    projection.flush().await?;
    served?;
    Ok(())
}

/// One line saying how the server is secured; a WARN in the plaintext dev mode.
fn announce_security(security: &Security) {
    let limits = security.limits;
    let rate = limits.rate_per_sec.map(|r| r.get());
    match (&security.tls, &security.tokens) {
        (None, None) => tracing::warn!(
            "PLAINTEXT and UNAUTHENTICATED gRPC: anyone who reaches this port may place \
             orders, cancel sagas and redrive dead letters; dev only (give --tls-cert/--tls-key \
             and --tokens-file in production)"
        ),
        (tls, tokens) => {
            if tls.is_none() {
                tracing::warn!(
                    "bearer tokens over PLAINTEXT gRPC: tokens travel in clear; give \
                     --tls-cert/--tls-key outside a trusted network"
                );
            }
            tracing::info!(
                tls = tls.is_some(),
                mtls = tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
                token_clients = tokens.as_ref().map_or(0, |t| t.clients().len()),
                rate_per_client = ?rate,
                rate_burst = limits.burst.get(),
                max_watch_per_client = ?limits.max_watch,
                "gRPC secured"
            );
        }
    }
}

/// Reports `saga.v1.SagaGateway` NOT_SERVING while NATS is disconnected (reads still
/// work, writes answer UNAVAILABLE) or while the projection follower is stuck behind the
/// journal (reads would be stale), SERVING otherwise.
async fn report_health(
    reporter: HealthReporter,
    js: jetstream::Context,
    projection: Arc<Projection>,
    mut stop: watch::Receiver<bool>,
) {
    let mut serving = true;
    let mut watch = FollowerWatch::default();
    let mut stuck = false;
    loop {
        let connected = js.client().connection_state() == State::Connected;
        if connected {
            let last = match js.get_stream(saga_nats::names::JOURNAL_STREAM).await {
                Ok(mut journal) => journal.info().await.ok().map(|i| i.state.last_sequence),
                Err(_) => None,
            };
            if let (Some(last), Ok(checkpoint)) = (last, projection.checkpoint()) {
                let now_stuck = watch.stuck(checkpoint, last, tokio::time::Instant::now());
                if now_stuck && !stuck {
                    tracing::error!(
                        checkpoint,
                        journal_last = last,
                        "the projection follower has not moved for {FOLLOWER_STUCK_AFTER:?} \
                         while behind the journal: reads are stale, health is NOT_SERVING"
                    );
                }
                stuck = now_stuck;
            }
        }
        let healthy = connected && !stuck;
        if healthy != serving {
            serving = healthy;
            if serving {
                tracing::info!("NATS reachable and the projection following: serving");
                reporter
                    .set_serving::<SagaGatewayServer<GatewayService>>()
                    .await;
            } else {
                if !connected {
                    tracing::warn!("NATS unreachable: writes answer UNAVAILABLE until it returns");
                }
                reporter
                    .set_not_serving::<SagaGatewayServer<GatewayService>>()
                    .await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_is_stuck_only_when_behind_and_not_moving_for_the_whole_window() {
        let t0 = tokio::time::Instant::now();
        let mut w = FollowerWatch::default();
        assert!(!w.stuck(10, 10, t0), "caught up");
        assert!(!w.stuck(10, 20, t0), "behind, just seen");
        assert!(!w.stuck(10, 20, t0 + FOLLOWER_STUCK_AFTER / 2));
        assert!(
            w.stuck(10, 25, t0 + FOLLOWER_STUCK_AFTER),
            "not moving for the window"
        );
        assert!(
            !w.stuck(11, 25, t0 + FOLLOWER_STUCK_AFTER * 2),
            "moving again"
        );
        assert!(!w.stuck(
            11,
            25,
            t0 + FOLLOWER_STUCK_AFTER * 2 + FOLLOWER_STUCK_AFTER / 2
        ));
        assert!(
            !w.stuck(25, 25, t0 + FOLLOWER_STUCK_AFTER * 4),
            "caught up again"
        );
    }
}
