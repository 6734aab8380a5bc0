//! Connecting to the gateway (plaintext, TLS or mTLS, with a bearer token) and
//! reporting its errors.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use saga_proto::saga_gateway_client::SagaGatewayClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

/// A gateway client over one HTTP/2 connection (cheap to clone; calls multiplex); every
/// call carries the bearer token given with `--token`, if any.
pub type Client = SagaGatewayClient<InterceptedService<Channel, Bearer>>;

/// How sagactl authenticates to a secured gateway (global flags of every command).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientSecurity {
    /// Bearer token sent with every gateway call (`authorization: Bearer <token>`).
    #[arg(
        long,
        global = true,
        env = "SAGA_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// CA certificate (PEM) that signed the gateway's TLS certificate; implies TLS.
    /// Without it an https:// gateway is checked against the system's roots.
    #[arg(long, global = true, env = "SAGA_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for a gateway that asks for one (mTLS); needs
    /// --client-key.
    #[arg(
        long,
        global = true,
        env = "SAGA_CLIENT_CERT",
        value_name = "PEM",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(
        long,
        global = true,
        env = "SAGA_CLIENT_KEY",
        value_name = "PEM",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
}

static SECURITY: OnceLock<ClientSecurity> = OnceLock::new();

/// Sets how every later connection authenticates (once, from the command line).
pub fn configure(security: ClientSecurity) {
    let _ = SECURITY.set(security);
}

fn security() -> &'static ClientSecurity {
    SECURITY.get_or_init(ClientSecurity::default)
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Debug, Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    fn from_flags() -> Result<Self> {
        match &security().token {
            None => Ok(Self(None)),
            Some(token) => {
                let value = format!("Bearer {}", token.trim())
                    .parse()
                    .map_err(|_| anyhow!("--token / SAGA_TOKEN: not a valid header value"))?;
                Ok(Self(Some(value)))
            }
        }
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A client on `channel` with the token of the command line.
pub fn with_channel(channel: Channel) -> Result<Client> {
    Ok(SagaGatewayClient::with_interceptor(
        channel,
        Bearer::from_flags()?,
    ))
}

/// `host:port` or a URL; a bare address gets `http://`.
pub fn normalize(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// The endpoint of `addr`, with TLS when the URL is https:// or a CA or client
/// certificate is given.
pub fn endpoint(addr: &str) -> Result<Endpoint> {
    let url = normalize(addr);
    let endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| {
            format!("invalid gateway address `{addr}` (expected e.g. http://127.0.0.1:50051)")
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let sec = security();
    let https = url.starts_with("https://");
    if !https {
        if sec.ca_cert.is_some() || sec.client_cert.is_some() {
            bail!(
                "--ca-cert and --client-cert need an https:// gateway URL (got {url}); \
                 e.g. --gateway https://127.0.0.1:50051"
            );
        }
        return Ok(endpoint);
    }
    let read = |path: &PathBuf, what: &str| {
        std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
    };
    let mut tls = ClientTlsConfig::new();
    tls = match &sec.ca_cert {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca, "--ca-cert")?)),
        None => tls.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&sec.client_cert, &sec.client_key) {
        tls = tls.identity(Identity::from_pem(
            read(cert, "--client-cert")?,
            read(key, "--client-key")?,
        ));
    }
    endpoint
        .tls_config(tls)
        .with_context(|| format!("TLS settings for {url}"))
}

/// Connects now, so an unreachable gateway is reported before any request.
pub async fn connect(addr: &str) -> Result<Client> {
    let channel = endpoint(addr)?.connect().await.map_err(|e| {
        anyhow!(
            "cannot reach the gateway at {}: {}; is it running? (`sagactl dev` starts a local \
             stack; --gateway or SAGA_GATEWAY points elsewhere)",
            normalize(addr),
            error_chain(&e)
        )
    })?;
    with_channel(channel)
}

/// One attempt to connect, for readiness probes.
pub async fn try_connect(addr: &str) -> Result<Client> {
    let channel = endpoint(addr)?.connect().await?;
    with_channel(channel)
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    let mut last = e.to_string();
    while let Some(s) = source {
        let text = s.to_string();
        // hyper and tonic repeat a message at several levels; say it once.
        if text != last {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        source = s.source();
    }
    out
}

/// The canonical name of a gRPC status code (as grpcurl prints it).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `PlaceOrder: INVALID_ARGUMENT: items[0].quantity must be > 0`.
pub fn rpc_error(method: &str, status: &Status) -> anyhow::Error {
    let msg = status.message();
    if msg.is_empty() {
        anyhow!("{method}: {}", code_name(status.code()))
    } else {
        anyhow!("{method}: {}: {msg}", code_name(status.code()))
    }
}
