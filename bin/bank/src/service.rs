//! `saga.es.v1.Bank`: commands through the repository, reads from the projections.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use saga_aggregates::bank::{self, BankAccount, BankCommand, TransactionKind};
use saga_aggregates::views::{
    account_balance, transaction_history, AccountBalanceView, TransactionHistoryView,
    ACCOUNT_BALANCE_VIEW,
};
use saga_aggregates::Money;
use saga_core::{Clock, SystemClock};
use saga_eventstore::definition::AggregateDefinition;
use saga_eventstore::jetstream::{JetStreamEventStore, JetStreamSnapshotStore, Provisioning};
use saga_eventstore::postgres::PgViews;
use saga_eventstore::{
    CommandMeta, ErrorKind, EsError, ExecuteError, Projection, ProjectionHandle, ProjectionRunner,
    Repository, SledViews, Until, ViewStore,
};
use saga_proto::es as pb;
use saga_proto::es::bank_server::{Bank, BankServer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// Where the projections are written.
#[derive(Debug, Clone)]
pub enum ViewTarget {
    /// An embedded sled database in this directory.
    Sled(PathBuf),
    /// A PostgreSQL database (`host=... user=... dbname=...`).
    Postgres(String),
}

/// What the service needs.
#[derive(Debug, Clone)]
pub struct BankConfig {
    /// The BankAccount definition (checked against the Protobuf messages).
    pub definition: AggregateDefinition,
    /// Where the views are kept.
    pub views: ViewTarget,
}

fn status_of(e: EsError) -> Status {
    match e.kind() {
        ErrorKind::Conflict => Status::aborted(e.to_string()),
        ErrorKind::Unavailable => Status::unavailable(e.to_string()),
        ErrorKind::Corrupt => Status::data_loss(e.to_string()),
        ErrorKind::Invalid => Status::invalid_argument(e.to_string()),
    }
}

fn execute_status(e: ExecuteError) -> Status {
    match e {
        ExecuteError::Domain(d) => Status::failed_precondition(d.to_string()),
        ExecuteError::Store(e) => status_of(e),
    }
}

fn amount(text: &str, field: &str) -> Result<Money, Status> {
    text.parse()
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

fn required<'a>(text: &'a str, field: &str) -> Result<&'a str, Status> {
    if text.trim().is_empty() {
        return Err(Status::invalid_argument(format!("`{field}` is required")));
    }
    Ok(text)
}

/// The gRPC service.
#[derive(Clone)]
pub struct BankService {
    repo: Repository<BankAccount>,
    views: Arc<dyn ViewStore>,
    balance: ProjectionHandle,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for BankService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BankService")
            .field("repo", &self.repo)
            .finish_non_exhaustive()
    }
}

impl BankService {
    async fn transaction(
        &self,
        account_id: &str,
        transaction_id: &str,
        command: BankCommand,
        kind: TransactionKind,
    ) -> Result<pb::TransactionReply, Status> {
        let meta = CommandMeta {
            command_id: transaction_id.to_string(),
            correlation_id: transaction_id.to_string(),
        };
        let done = self
            .repo
            .execute(account_id, command, &meta)
            .await
            .map_err(execute_status)?;
        let t = done
            .state
            .transactions
            .get(transaction_id)
            .filter(|t| t.kind == kind)
            .ok_or_else(|| Status::internal("the transaction is missing from the state"))?;
        Ok(pb::TransactionReply {
            account_id: account_id.to_string(),
            transaction_id: transaction_id.to_string(),
            balance_after: t.balance_after.to_string(),
            version: done.version,
            repeated: done.events.is_empty(),
        })
    }

    fn now(&self) -> u64 {
        self.clock.now()
    }
}

fn transaction_of(id: &str, t: &bank::Transaction, version: u64, at: u64) -> pb::Transaction {
    pb::Transaction {
        transaction_id: id.to_string(),
        kind: match t.kind {
            TransactionKind::Deposit => "deposit".into(),
            TransactionKind::Withdrawal => "withdrawal".into(),
        },
        amount: t.amount.to_string(),
        currency: t.currency.clone(),
        version,
        timestamp_ms: at,
    }
}

#[tonic::async_trait]
impl Bank for BankService {
    async fn open_account(
        &self,
        request: Request<pb::OpenAccountRequest>,
    ) -> Result<Response<pb::AccountReply>, Status> {
        let r = request.into_inner();
        required(&r.account_id, "account_id")?;
        required(&r.customer_id, "customer_id")?;
        let initial = if r.initial_balance.is_empty() {
            Money(0)
        } else {
            amount(&r.initial_balance, "initial_balance")?
        };
        let command = BankCommand::Open {
            account_id: r.account_id.clone(),
            customer_id: r.customer_id,
            initial_balance: initial,
            at: self.now(),
        };
        let meta = CommandMeta {
            command_id: format!("open-{}", r.account_id),
            correlation_id: format!("open-{}", r.account_id),
        };
        let done = self
            .repo
            .execute(&r.account_id, command, &meta)
            .await
            .map_err(execute_status)?;
        Ok(Response::new(pb::AccountReply {
            account_id: r.account_id,
            balance: done.state.balance.to_string(),
            version: done.version,
        }))
    }

    async fn deposit(
        &self,
        request: Request<pb::DepositRequest>,
    ) -> Result<Response<pb::TransactionReply>, Status> {
        let r = request.into_inner();
        required(&r.account_id, "account_id")?;
        required(&r.transaction_id, "transaction_id")?;
        let command = BankCommand::Deposit {
            transaction_id: r.transaction_id.clone(),
            amount: amount(&r.amount, "amount")?,
            currency: r.currency,
            at: self.now(),
        };
        self.transaction(
            &r.account_id,
            &r.transaction_id,
            command,
            TransactionKind::Deposit,
        )
        .await
        .map(Response::new)
    }

    async fn withdraw(
        &self,
        request: Request<pb::WithdrawRequest>,
    ) -> Result<Response<pb::TransactionReply>, Status> {
        let r = request.into_inner();
        required(&r.account_id, "account_id")?;
        required(&r.transaction_id, "transaction_id")?;
        let command = BankCommand::Withdraw {
            transaction_id: r.transaction_id.clone(),
            amount: amount(&r.amount, "amount")?,
            at: self.now(),
        };
        self.transaction(
            &r.account_id,
            &r.transaction_id,
            command,
            TransactionKind::Withdrawal,
        )
        .await
        .map(Response::new)
    }

    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::Balance>, Status> {
        let r = request.into_inner();
        required(&r.account_id, "account_id")?;
        let row = account_balance(self.views.as_ref(), &r.account_id)
            .await
            .map_err(status_of)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no account `{}` in {ACCOUNT_BALANCE_VIEW} (yet)",
                    r.account_id
                ))
            })?;
        let lag = self.balance.status().await.map_err(status_of)?.lag;
        Ok(Response::new(pb::Balance {
            account_id: row.account_id,
            customer_id: row.customer_id,
            balance: row.balance.to_string(),
            version: row.version,
            lag,
        }))
    }

    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        let r = request.into_inner();
        required(&r.account_id, "account_id")?;
        let size = match r.page_size {
            0 => 50,
            n => n.min(500) as usize,
        };
        let after = if r.page_token.is_empty() {
            0
        } else {
            r.page_token
                .parse()
                .map_err(|_| Status::invalid_argument("page_token: not a token of this service"))?
        };
        let page = transaction_history(self.views.as_ref(), &r.account_id, after, size + 1)
            .await
            .map_err(status_of)?;
        let more = page.len() > size;
        let transactions: Vec<pb::Transaction> = page
            .into_iter()
            .take(size)
            .map(|e| pb::Transaction {
                transaction_id: e.transaction_id,
                kind: e.kind,
                amount: e.amount.to_string(),
                currency: e.currency,
                version: e.version,
                timestamp_ms: e.at,
            })
            .collect();
        let next_page_token = match (more, transactions.last()) {
            (true, Some(last)) => last.version.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListTransactionsResponse {
            transactions,
            next_page_token,
        }))
    }

    async fn get_account_at(
        &self,
        request: Request<pb::GetAccountAtRequest>,
    ) -> Result<Response<pb::AccountState>, Status> {
        let r = request.into_inner();
        required(&r.account_id, "account_id")?;
        let until = match r.at {
            Some(pb::get_account_at_request::At::Version(v)) => Until::Version(v),
            Some(pb::get_account_at_request::At::TimestampMs(t)) => Until::Time(t),
            None => Until::End,
        };
        let history = self
            .repo
            .history(&r.account_id, until)
            .await
            .map_err(status_of)?;
        let mut state = BankAccount::default();
        let mut transactions = Vec::new();
        let (mut version, mut at) = (0, 0);
        for (recorded, event) in &history {
            saga_eventstore::Aggregate::apply(&mut state, event);
            version = recorded.version;
            at = recorded.timestamp;
            let id = match event {
                saga_aggregates::BankEvent::Deposited(d) => Some(&d.transaction_id),
                saga_aggregates::BankEvent::Withdrawn(w) => Some(&w.transaction_id),
                saga_aggregates::BankEvent::Opened(_) => None,
            };
            if let Some(t) = id.and_then(|id| state.transactions.get(id).map(|t| (id, t))) {
                transactions.push(transaction_of(
                    t.0,
                    t.1,
                    recorded.version,
                    recorded.timestamp,
                ));
            }
        }
        if version == 0 {
            return Err(Status::not_found(format!(
                "account `{}` had no event by then",
                r.account_id
            )));
        }
        Ok(Response::new(pb::AccountState {
            account_id: state.account_id,
            customer_id: state.customer_id,
            balance: state.balance.to_string(),
            version,
            timestamp_ms: at,
            transactions,
        }))
    }
}

/// Why the service could not run.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    /// The event store or the views.
    #[error(transparent)]
    Store(#[from] EsError),
    /// The reflection service could not be built (a build problem).
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The control subscription failed.
    #[error("NATS: {0}")]
    Nats(#[from] async_nats::SubscribeError),
}

/// Provisions the event stream and the snapshot bucket, starts the two projections and
/// the control endpoint, and serves `saga.es.v1.Bank`, health and reflection on
/// `listener` until `shutdown` resolves.
pub async fn serve_on(
    listener: TcpListener,
    config: BankConfig,
    client: async_nats::Client,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BankError> {
    let js = async_nats::jetstream::new(client.clone());
    let provisioning = Provisioning {
        max_age: config.definition.event_store.retention,
        ..Provisioning::default()
    };
    let store = Arc::new(JetStreamEventStore::provision(js.clone(), &provisioning).await?);
    let snapshots = Arc::new(JetStreamSnapshotStore::provision(&js, &provisioning).await?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let repo = Repository::new(
        &config.definition,
        store.clone(),
        snapshots,
        bank::upcasters(),
        clock.clone(),
    )?;
    let (views, sled): (Arc<dyn ViewStore>, Option<SledViews>) = match &config.views {
        ViewTarget::Sled(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                EsError::with_source(
                    ErrorKind::Unavailable,
                    format!("creating {}", dir.display()),
                    e,
                )
            })?;
            let sled = SledViews::open(dir)?;
            (Arc::new(sled.clone()), Some(sled))
        }
        ViewTarget::Postgres(url) => (Arc::new(PgViews::connect(url).await?), None),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut handles = BTreeMap::new();
    let mut tasks = Vec::new();
    let projections: [Arc<dyn Projection>; 2] = [
        Arc::new(AccountBalanceView::default()),
        Arc::new(TransactionHistoryView::default()),
    ];
    for p in projections {
        let name = p.name().to_string();
        let runner = ProjectionRunner::new(
            &config.definition,
            store.clone(),
            views.clone(),
            p,
            bank::upcasters(),
        )?;
        let (handle, task) = runner.spawn(stop_rx.clone());
        handles.insert(name, handle);
        tasks.push(task);
    }
    let balance = handles[ACCOUNT_BALANCE_VIEW].clone();
    let control = tokio::spawn(saga_eventstore::control::serve_control(
        client,
        handles,
        stop_rx.clone(),
    ));

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<BankServer<BankService>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(saga_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(saga_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let service = BankService {
        repo,
        views: views.clone(),
        balance,
        clock,
    };
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: draining requests");
        let _ = stop_tx.send(true);
    };
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let served = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(BankServer::new(service))
        .serve_with_incoming_shutdown(incoming, signal)
        .await;
    for t in tasks {
        match t.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "a projection stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "a projection task failed"),
            Ok(Ok(())) => {}
        }
    }
    control.abort();
    if let Some(Err(e)) = sled.map(|s| s.flush()) {
        tracing::warn!(error = %e, "could not flush the views");
    }
    served?;
    Ok(())
}
