//! The load: orders placed through the gateway on a fixed schedule by a client that
//! does what a careful user would under faults — retry every error or timeout with the
//! same idempotency key until an answer comes, or a long deadline passes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use saga_proto::{CancelSagaRequest, GetSagaRequest, SagaState};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Endpoint;
use tonic::{Code, Status};

use super::plan::OrderPlan;
use crate::client::{code_name, Client};

/// One call's answer is awaited this long before it counts as a timeout (and is retried).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a CancelSaga is retried.
const CANCEL_DEADLINE: Duration = Duration::from_secs(30);
/// Orders in flight at once at most (retrying ones included).
const MAX_IN_FLIGHT: usize = 2_000;

/// A client whose connection comes and goes with the gateway: it connects on first use
/// and again after the gateway was restarted.
pub fn lazy_client(addr: &str) -> Result<Client> {
    let channel = Endpoint::from_shared(addr.to_string())
        .with_context(|| format!("invalid gateway address `{addr}`"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(ATTEMPT_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy();
    crate::client::with_channel(channel)
}

/// Whether an error may go away by itself (the same request is then sent again). A
/// refusal of the request itself will not.
pub fn retryable(code: Code) -> bool {
    !matches!(
        code,
        Code::InvalidArgument
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented
            | Code::OutOfRange
            | Code::DataLoss
    )
}

fn describe(st: &Status) -> String {
    format!("{}: {}", code_name(st.code()), st.message())
}

/// Backoff between retries: 100 ms doubling to 2 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64 << attempt.min(5)).min(Duration::from_secs(2))
}

/// How PlaceOrder ended for one order.
#[derive(Debug, Clone, PartialEq)]
pub enum Ack {
    /// Answered: the saga and when (from the start of the load).
    Acked {
        saga_id: String,
        order_id: String,
        at: Duration,
    },
    /// No answer before the deadline (allowed while faults run).
    NeverAcked { last_error: String },
    /// Refused for good (a refusal code).
    Refused { code: Code, message: String },
}

/// What CancelSaga did for an order that asked for it.
#[derive(Debug, Clone, PartialEq)]
pub struct CancelOutcome {
    /// The state GetSaga gave just before the cancel (None: no answer).
    pub state_before: Option<i32>,
    /// The answer of CancelSaga: the state the gateway saw when it took the cancel.
    pub answered: Result<i32, String>,
}

impl CancelOutcome {
    /// The cancel answered OK while the gateway saw the saga not yet terminal nor
    /// compensating (PENDING or RUNNING): it must be honoured.
    pub fn on_running_saga(&self) -> bool {
        matches!(
            self.answered.as_ref().ok().map(|s| SagaState::try_from(*s)),
            Some(Ok(SagaState::Pending | SagaState::Running))
        )
    }
}

/// One order of the run and what became of it.
#[derive(Debug, Clone)]
pub struct OrderRecord {
    pub plan: OrderPlan,
    /// PlaceOrder calls sent.
    pub attempts: u32,
    pub ack: Ack,
    pub cancel: Option<CancelOutcome>,
}

impl OrderRecord {
    pub fn saga_id(&self) -> Option<&str> {
        match &self.ack {
            Ack::Acked { saga_id, .. } => Some(saga_id),
            _ => None,
        }
    }
}

/// Counters the progress line reads while the load runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub started: AtomicU64,
    pub answered: AtomicU64,
    pub retries: AtomicU64,
}

/// Places `orders` at `rate` per second from `t0`; every record comes back, in order.
pub async fn drive(
    client: Client,
    orders: Vec<OrderPlan>,
    rate: f64,
    ack_deadline: Duration,
    t0: Instant,
    progress: Arc<Progress>,
) -> Result<Vec<OrderRecord>> {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut tasks = JoinSet::new();
    let n = orders.len();
    for (i, plan) in orders.into_iter().enumerate() {
        tokio::time::sleep_until(t0 + period.mul_f64(i as f64)).await;
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .context("load semaphore")?;
        let (client, progress) = (client.clone(), progress.clone());
        progress.started.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(async move {
            let r = one(client, plan, ack_deadline, t0, &progress).await;
            progress.answered.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            (i, r)
        });
    }
    let mut out: Vec<Option<OrderRecord>> = vec![None; n];
    while let Some(joined) = tasks.join_next().await {
        let (i, r) = joined.context("an order's task")?;
        out[i] = Some(r);
    }
    Ok(out.into_iter().flatten().collect())
}

async fn one(
    mut client: Client,
    plan: OrderPlan,
    ack_deadline: Duration,
    t0: Instant,
    progress: &Progress,
) -> OrderRecord {
    let deadline = Instant::now() + ack_deadline;
    let request = plan.request();
    let mut attempts = 0u32;
    let ack =
        loop {
            attempts += 1;
            let last_error =
                match tokio::time::timeout(ATTEMPT_TIMEOUT, client.place_order(request.clone()))
                    .await
                {
                    Ok(Ok(r)) => {
                        let r = r.into_inner();
                        break Ack::Acked {
                            saga_id: r.saga_id,
                            order_id: r.order_id,
                            at: t0.elapsed(),
                        };
                    }
                    Ok(Err(st)) if !retryable(st.code()) => {
                        break Ack::Refused {
                            code: st.code(),
                            message: st.message().to_string(),
                        }
                    }
                    Ok(Err(st)) => describe(&st),
                    Err(_) => format!("no answer within {ATTEMPT_TIMEOUT:?}"),
                };
            let pause = backoff(attempts);
            if Instant::now() + pause >= deadline {
                break Ack::NeverAcked { last_error };
            }
            progress.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(pause).await;
        };
    let cancel = match (&ack, plan.cancel) {
        (Ack::Acked { saga_id, .. }, true) => Some(cancel(&mut client, saga_id).await),
        _ => None,
    };
    OrderRecord {
        plan,
        attempts,
        ack,
        cancel,
    }
}

/// GetSaga (its state is recorded), then CancelSaga, retried while the error may pass
/// (NOT_FOUND included: a restarted gateway may not have projected the saga yet).
async fn cancel(client: &mut Client, saga_id: &str) -> CancelOutcome {
    let state_before = tokio::time::timeout(
        ATTEMPT_TIMEOUT,
        client.get_saga(GetSagaRequest {
            saga_id: saga_id.to_string(),
        }),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .map(|r| r.into_inner().state);
    let deadline = Instant::now() + CANCEL_DEADLINE;
    let mut attempt = 0u32;
    let answered = loop {
        attempt += 1;
        let request = CancelSagaRequest {
            saga_id: saga_id.to_string(),
            reason: "chaos: cancelled right after PlaceOrder".into(),
        };
        let error = match tokio::time::timeout(ATTEMPT_TIMEOUT, client.cancel_saga(request)).await {
            Ok(Ok(r)) => break Ok(r.into_inner().state),
            Ok(Err(st)) if st.code() != Code::NotFound && !retryable(st.code()) => {
                break Err(describe(&st))
            }
            Ok(Err(st)) => describe(&st),
            Err(_) => format!("no answer within {ATTEMPT_TIMEOUT:?}"),
        };
        let pause = backoff(attempt);
        if Instant::now() + pause >= deadline {
            break Err(error);
        }
        tokio::time::sleep(pause).await;
    };
    CancelOutcome {
        state_before,
        answered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_are_retried_refusals_are_not() {
        for c in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Unknown,
            Code::Internal,
            Code::Cancelled,
            Code::Aborted,
            Code::FailedPrecondition,
            Code::ResourceExhausted,
        ] {
            assert!(retryable(c), "{c:?}");
        }
        for c in [
            Code::InvalidArgument,
            Code::AlreadyExists,
            Code::Unimplemented,
            Code::DataLoss,
        ] {
            assert!(!retryable(c), "{c:?}");
        }
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(30), Duration::from_secs(2));
    }

    #[test]
    fn a_cancel_counts_as_on_a_running_saga_only_when_it_answered_so() {
        let c = |answered| CancelOutcome {
            state_before: None,
            answered,
        };
        assert!(c(Ok(SagaState::Pending as i32)).on_running_saga());
        assert!(c(Ok(SagaState::Running as i32)).on_running_saga());
        assert!(!c(Ok(SagaState::Completed as i32)).on_running_saga());
        assert!(!c(Ok(SagaState::Compensating as i32)).on_running_saga());
        assert!(!c(Err("UNAVAILABLE".into())).on_running_saga());
    }
}
