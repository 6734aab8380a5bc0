//! Connecting to the gateway and reporting its errors.

use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use saga_proto::saga_gateway_client::SagaGatewayClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// A gateway client over one HTTP/2 connection (cheap to clone; calls multiplex).
pub type Client = SagaGatewayClient<Channel>;

/// `host:port` or a URL; a bare address gets `http://`.
pub fn normalize(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

fn endpoint(addr: &str) -> Result<Endpoint> {
    let url = normalize(addr);
    Ok(Endpoint::from_shared(url.clone())
        .with_context(|| {
            format!("invalid gateway address `{addr}` (expected e.g. http://127.0.0.1:50051)")
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true))
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
    Ok(SagaGatewayClient::new(channel))
}

/// One attempt to connect, for readiness probes.
pub async fn try_connect(addr: &str) -> Result<Client> {
    let channel = endpoint(addr)?.connect().await?;
    Ok(SagaGatewayClient::new(channel))
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
