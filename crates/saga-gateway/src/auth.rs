//! Who may call what: bearer tokens, roles, and the tower layer ([`GuardLayer`]) that
//! checks them, names the client and applies its [limits](crate::limits) before any
//! RPC runs.
//!
//! Tokens are read from a YAML file that holds, for each client, a name, the SHA-256 of
//! its token (hex; never the token) and its roles:
//!
//! ```yaml
//! clients:
//!   - name: checkout-web
//!     sha256: 5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
//!     roles: [client]
//!   - name: ops
//!     sha256: 6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b
//!     roles: [operator]
//! ```
//!
//! `sagactl token new` prints a fresh token and its line. What each role may call is the
//! table [`SAGA_GATEWAY_RPCS`]; gRPC health stays open (load balancers probe it), server
//! reflection needs a valid token of any role.

use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

use crate::limits::{Limiter, WatchSlot};

/// A role of a client, as written in the tokens file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Places orders, starts sagas and reads them (get, list, watch, history).
    Client,
    /// Everything: also cancels sagas and handles the dead-letter queue.
    Operator,
}

impl Role {
    /// Whether a holder of this role may call what `needed` guards.
    pub fn grants(self, needed: Role) -> bool {
        self == Role::Operator || self == needed
    }

    /// The name in the tokens file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The gRPC service whose RPCs [`SAGA_GATEWAY_RPCS`] classifies.
pub const SAGA_GATEWAY_SERVICE: &str = "saga.v1.SagaGateway";

/// The role each `saga.v1.SagaGateway` RPC needs: the one table of it. An RPC missing
/// here (a newer proto than this table) needs `operator`, so nothing opens by accident.
pub const SAGA_GATEWAY_RPCS: &[(&str, Role)] = &[
    ("PlaceOrder", Role::Client),
    ("StartSaga", Role::Client),
    ("GetSaga", Role::Client),
    ("ListSagas", Role::Client),
    ("WatchSaga", Role::Client),
    ("GetSagaHistory", Role::Client),
    ("CancelSaga", Role::Operator),
    ("ListDeadLetters", Role::Operator),
    ("GetDeadLetter", Role::Operator),
    ("RedriveDeadLetter", Role::Operator),
    ("PurgeDeadLetters", Role::Operator),
];

/// What a request needs before it runs, by its gRPC path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Nothing: `grpc.health.v1.Health`.
    Open,
    /// A valid token of any role: server reflection.
    AnyRole,
    /// A token with this role (`rpc` is `Service/Method`).
    Role {
        /// The role needed.
        role: Role,
    },
}

/// The access `path` (`/package.Service/Method`) needs.
pub fn access(path: &str) -> Access {
    let trimmed = path.trim_start_matches('/');
    let (service, method) = trimmed.split_once('/').unwrap_or((trimmed, ""));
    match service {
        "grpc.health.v1.Health" => Access::Open,
        "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection" => {
            Access::AnyRole
        }
        SAGA_GATEWAY_SERVICE => Access::Role {
            role: SAGA_GATEWAY_RPCS
                .iter()
                .find(|(name, _)| *name == method)
                .map_or(Role::Operator, |(_, role)| *role),
        },
        _ => Access::Role {
            role: Role::Operator,
        },
    }
}

/// A tokens file that cannot be used. Handling: not retryable; the gateway refuses to
/// start and names the file and the place.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file cannot be read.
    #[error("cannot read the tokens file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not the expected YAML (the message has the line and column).
    #[error("tokens file {path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// What and where.
        message: String,
    },
    /// An entry is wrong: `place` is e.g. `clients[1].sha256`.
    #[error("tokens file {path}: {place}: {reason}")]
    Entry {
        /// The file.
        path: PathBuf,
        /// The field.
        place: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    clients: Vec<ClientEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    name: String,
    sha256: String,
    roles: Vec<Role>,
}

/// A client known by its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClient {
    /// Its name in the tokens file (the key of its limits, and what logs show).
    pub name: String,
    /// Its roles.
    pub roles: Vec<Role>,
    hash: [u8; 32],
}

impl TokenClient {
    /// Whether one of its roles grants `needed`.
    pub fn may(&self, needed: Role) -> bool {
        self.roles.iter().any(|r| r.grants(needed))
    }
}

/// The clients of a tokens file.
#[derive(Debug, Clone)]
pub struct Tokens {
    clients: Vec<TokenClient>,
}

/// The hex SHA-256 of `token`, as written in a tokens file.
pub fn token_sha256(token: &str) -> String {
    format!("{:x}", Sha256::digest(token.as_bytes()))
}

impl Tokens {
    /// Reads and checks the tokens file at `path`.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Checks the text of a tokens file; `path` is for the messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, TokensError> {
        let file: TokensFile = serde_norway::from_str(text).map_err(|e| TokensError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let entry_error = |place: String, reason: String| TokensError::Entry {
            path: path.to_path_buf(),
            place,
            reason,
        };
        if file.clients.is_empty() {
            return Err(entry_error(
                "clients".into(),
                "no client listed: every call would be refused".into(),
            ));
        }
        let mut clients: Vec<TokenClient> = Vec::with_capacity(file.clients.len());
        for (i, entry) in file.clients.into_iter().enumerate() {
            let name = entry.name.trim();
            if name.is_empty() {
                return Err(entry_error(format!("clients[{i}].name"), "empty".into()));
            }
            if let Some(j) = clients.iter().position(|c| c.name == name) {
                return Err(entry_error(
                    format!("clients[{i}].name"),
                    format!("`{name}` is already the name of clients[{j}]"),
                ));
            }
            let hash = parse_sha256(&entry.sha256).ok_or_else(|| {
                entry_error(
                    format!("clients[{i}].sha256"),
                    format!(
                        "expected the 64 hex digits of the token's SHA-256 (`sagactl token hash`), \
                         got {} characters",
                        entry.sha256.trim().len()
                    ),
                )
            })?;
            if let Some(j) = clients.iter().position(|c| c.hash == hash) {
                return Err(entry_error(
                    format!("clients[{i}].sha256"),
                    format!("the same token as clients[{j}] (`{}`)", clients[j].name),
                ));
            }
            if entry.roles.is_empty() {
                return Err(entry_error(
                    format!("clients[{i}].roles"),
                    "empty: give `client` or `operator`".into(),
                ));
            }
            clients.push(TokenClient {
                name: name.to_string(),
                roles: entry.roles,
                hash,
            });
        }
        Ok(Self { clients })
    }

    /// The clients, in file order.
    pub fn clients(&self) -> &[TokenClient] {
        &self.clients
    }

    /// The client whose token this is. Every entry is compared in constant time, so the
    /// time taken says nothing about how close a guess was, nor which entry matched.
    pub fn identify(&self, token: &str) -> Option<&TokenClient> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for client in &self.clients {
            if bool::from(client.hash.ct_eq(&presented)) {
                found = Some(client);
            }
        }
        found
    }
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// What the [`GuardLayer`] checks.
#[derive(Debug, Clone)]
pub struct Guard {
    /// `None`: no token is asked (dev mode, or TLS with client certificates alone).
    pub tokens: Option<Arc<Tokens>>,
    /// The per-client limits.
    pub limiter: Arc<Limiter>,
}

/// Why a request was refused, or who made it.
#[allow(clippy::result_large_err)]
fn authorize(guard: &Guard, req: &http::Request<Body>) -> Result<String, Status> {
    let path = req.uri().path();
    let needed = match access(path) {
        Access::Open => return Ok(String::new()),
        Access::AnyRole => None,
        Access::Role { role } => Some(role),
    };
    let Some(tokens) = &guard.tokens else {
        return Ok(peer_name(req));
    };
    let header = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .ok_or_else(|| {
            Status::unauthenticated(
                "missing bearer token: set the authorization header (`authorization: Bearer \
                 <token>`)",
            )
        })?;
    let token = header
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Status::unauthenticated("malformed authorization header: expected `Bearer <token>`")
        })?;
    let client = tokens
        .identify(token)
        .ok_or_else(|| Status::unauthenticated("unknown bearer token"))?;
    if let Some(needed) = needed {
        if !client.may(needed) {
            let roles: Vec<&str> = client.roles.iter().map(|r| r.as_str()).collect();
            return Err(Status::permission_denied(format!(
                "{} needs the `{needed}` role; client `{}` has {}",
                path.trim_start_matches('/'),
                client.name,
                roles.join(", ")
            )));
        }
    }
    Ok(client.name.clone())
}

/// The subject of the peer's TLS client certificate, else its IP, else `unknown`.
fn peer_name(req: &http::Request<Body>) -> String {
    let ext = req.extensions();
    if let Some(tls) = ext.get::<TlsConnectInfo<TcpConnectInfo>>() {
        if let Some(subject) = tls
            .peer_certs()
            .and_then(|certs| certs.first().and_then(|c| cert_subject(c.as_ref())))
        {
            return subject;
        }
        if let Some(addr) = tls.get_ref().remote_addr() {
            return addr.ip().to_string();
        }
    }
    ext.get::<TcpConnectInfo>()
        .and_then(|c| c.remote_addr())
        .map_or_else(|| "unknown".to_string(), |a| a.ip().to_string())
}

fn cert_subject(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject().to_string();
    (!subject.is_empty()).then_some(subject)
}

fn is_watch(path: &str) -> bool {
    path.trim_start_matches('/')
        .strip_prefix(SAGA_GATEWAY_SERVICE)
        .is_some_and(|m| m == "/WatchSaga")
}

/// The tower layer of the server: authentication, roles, then per-client limits, for
/// every request but health.
#[derive(Debug, Clone)]
pub struct GuardLayer {
    guard: Arc<Guard>,
}

impl GuardLayer {
    /// A layer checking `guard`.
    pub fn new(guard: Guard) -> Self {
        Self {
            guard: Arc::new(guard),
        }
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = GuardService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GuardService {
            inner,
            guard: self.guard.clone(),
        }
    }
}

/// The service of [`GuardLayer`].
#[derive(Debug, Clone)]
pub struct GuardService<S> {
    inner: S,
    guard: Arc<Guard>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl<S> tower::Service<http::Request<Body>> for GuardService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let checked = admit(&self.guard, &req);
        match checked {
            Err(status) => {
                tracing::debug!(path = req.uri().path(), code = ?status.code(), "refused");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
            Ok(slot) => {
                let fut = self.inner.call(req);
                Box::pin(async move {
                    let response = fut.await?;
                    Ok(match slot {
                        Some(slot) => response.map(|body| Body::new(SlotBody { body, slot })),
                        None => response,
                    })
                })
            }
        }
    }
}

#[allow(clippy::result_large_err)]
fn admit(guard: &Guard, req: &http::Request<Body>) -> Result<Option<WatchSlot>, Status> {
    if access(req.uri().path()) == Access::Open {
        return Ok(None);
    }
    let client = match authorize(guard, req) {
        Ok(client) => client,
        // Failed attempts count against the peer (its IP or certificate), so guessing
        // tokens is held to the same rate as calling.
        Err(refused) if refused.code() == tonic::Code::Unauthenticated => {
            guard.limiter.check_rate(&peer_name(req))?;
            return Err(refused);
        }
        Err(refused) => return Err(refused),
    };
    guard.limiter.check_rate(&client)?;
    if is_watch(req.uri().path()) {
        return guard.limiter.open_watch(&client).map(Some);
    }
    Ok(None)
}

/// A response body that holds a WatchSaga slot until it ends or is dropped (hyper drops
/// it when the client goes away).
struct SlotBody {
    body: Body,
    #[allow(dead_code)] // held for its Drop
    slot: WatchSlot,
}

impl http_body::Body for SlotBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> &'static Path {
        Path::new("/etc/saga/tokens.yaml")
    }

    fn file(entries: &[(&str, &str, &str)]) -> String {
        let mut out = String::from("clients:\n");
        for (name, token, roles) in entries {
            out.push_str(&format!(
                "  - name: {name}\n    sha256: {}\n    roles: {roles}\n",
                token_sha256(token)
            ));
        }
        out
    }

    #[test]
    fn every_gateway_rpc_of_the_proto_has_its_role_in_the_table() {
        let proto = include_str!("../../../proto/saga/v1/gateway.proto");
        let rpcs: Vec<&str> = proto
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .filter_map(|l| l.split('(').next())
            .map(str::trim)
            .collect();
        assert!(rpcs.len() >= 11, "{rpcs:?}");
        for rpc in &rpcs {
            assert!(
                SAGA_GATEWAY_RPCS.iter().any(|(name, _)| name == rpc),
                "{rpc} is not in SAGA_GATEWAY_RPCS"
            );
        }
        assert_eq!(rpcs.len(), SAGA_GATEWAY_RPCS.len(), "{rpcs:?}");
    }

    #[test]
    fn clients_read_and_write_sagas_operators_also_cancel_and_handle_dead_letters() {
        let role = |m: &str| match access(&format!("/saga.v1.SagaGateway/{m}")) {
            Access::Role { role } => role,
            other => panic!("{m}: {other:?}"),
        };
        for m in [
            "PlaceOrder",
            "StartSaga",
            "GetSaga",
            "ListSagas",
            "WatchSaga",
            "GetSagaHistory",
        ] {
            assert_eq!(role(m), Role::Client, "{m}");
        }
        for m in [
            "CancelSaga",
            "ListDeadLetters",
            "GetDeadLetter",
            "RedriveDeadLetter",
            "PurgeDeadLetters",
            "SomethingNew",
        ] {
            assert_eq!(role(m), Role::Operator, "{m}");
        }
        assert!(Role::Operator.grants(Role::Client));
        assert!(!Role::Client.grants(Role::Operator));
        assert_eq!(access("/grpc.health.v1.Health/Check"), Access::Open);
        assert_eq!(access("/grpc.health.v1.Health/Watch"), Access::Open);
        assert_eq!(
            access("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Access::AnyRole
        );
        assert_eq!(
            access("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Access::AnyRole
        );
        assert_eq!(
            access("/other.Service/Call"),
            Access::Role {
                role: Role::Operator
            }
        );
    }

    #[test]
    fn without_tokens_an_mtls_client_is_named_by_its_certificate_subject() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["checkout-web".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "checkout-web");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(cert_subject(cert.der()).as_deref(), Some("CN=checkout-web"));
        assert_eq!(cert_subject(b"not a certificate"), None);
    }

    #[test]
    fn a_tokens_file_names_its_clients_by_the_hash_of_their_token() {
        let text = file(&[
            ("web", "s3cret-web", "[client]"),
            ("ops", "s3cret-ops", "[operator, client]"),
        ]);
        let tokens = Tokens::parse(&text, path()).unwrap();
        assert_eq!(tokens.clients().len(), 2);
        let web = tokens.identify("s3cret-web").unwrap();
        assert_eq!(web.name, "web");
        assert!(web.may(Role::Client) && !web.may(Role::Operator));
        let ops = tokens.identify("s3cret-ops").unwrap();
        assert!(ops.may(Role::Operator) && ops.may(Role::Client));
        assert!(tokens.identify("s3cret").is_none());
        assert!(tokens.identify("").is_none());
        assert!(!text.contains("s3cret"), "the file holds hashes only");
    }

    #[test]
    fn a_bad_tokens_file_is_refused_naming_the_file_and_the_place() {
        let err = |text: &str| Tokens::parse(text, path()).unwrap_err().to_string();

        let e = err("clients:\n  - name: web\n    sha256: abc\n    roles: [client]\n");
        assert!(
            e.starts_with(
                "tokens file /etc/saga/tokens.yaml: clients[0].sha256: expected the 64 hex"
            ),
            "{e}"
        );

        let e = err("clients:\n  - name: web\n    sha256: 00\n    roles: [admin]\n");
        assert!(e.contains("/etc/saga/tokens.yaml"), "{e}");
        assert!(e.contains("admin") && e.contains("line 4"), "{e}");

        let e = err("clients:\n  - name: web\n    roles: [client]\n");
        assert!(e.contains("sha256") && e.contains("line 2"), "{e}");

        let e = err("clients:\n  - name: web\n    token: hunter2\n");
        assert!(e.contains("unknown field `token`"), "{e}");

        let twice = file(&[("web", "a", "[client]"), ("web", "b", "[client]")]);
        assert!(
            err(&twice).contains("clients[1].name: `web` is already the name of clients[0]"),
            "{}",
            err(&twice)
        );
        let same = file(&[("web", "a", "[client]"), ("ops", "a", "[operator]")]);
        assert!(err(&same).contains("clients[1].sha256: the same token as clients[0]"));
        let no_role = file(&[("web", "a", "[]")]);
        assert!(err(&no_role).contains("clients[0].roles: empty"));
        assert!(err("clients: []\n").contains("clients: no client listed"));

        let missing = Tokens::load(Path::new("/nonexistent/tokens.yaml")).unwrap_err();
        assert!(missing
            .to_string()
            .starts_with("cannot read the tokens file /nonexistent/tokens.yaml"));
    }
}
