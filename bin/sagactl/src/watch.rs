//! Following a saga to its terminal state.

use std::time::Duration;

use anyhow::{anyhow, Result};
use saga_proto::{GetSagaRequest, Saga, WatchSagaRequest};
use tokio::time::Instant;
use tonic::Code;

use crate::client::{rpc_error, Client};
use crate::render::{is_terminal, state_name};

/// How to follow a saga.
#[derive(Debug, Clone, Copy)]
pub struct Follow {
    /// Give up at this instant.
    pub deadline: Option<Instant>,
    /// How long NOT_FOUND means "the read model has not seen it yet" (a saga just
    /// placed); past it, NOT_FOUND is an error.
    pub not_found_grace: Duration,
}

/// Calls `on_update` with every distinct state of saga `id` (WatchSaga; GetSaga polling
/// when the gateway does not implement it) and returns the terminal one. A stream that
/// ends early or breaks with UNAVAILABLE is opened again.
pub async fn until_terminal(
    client: &mut Client,
    id: &str,
    follow: Follow,
    mut on_update: impl FnMut(&Saga),
) -> Result<Saga> {
    let started = Instant::now();
    let mut last: Option<Saga> = None;
    let work = async {
        let mut poll = false;
        let mut backoff = Duration::from_millis(20);
        loop {
            let mut seen = |s: Saga, last: &mut Option<Saga>| -> Option<Saga> {
                if last.as_ref() != Some(&s) {
                    on_update(&s);
                }
                let done = is_terminal(s.state).then(|| s.clone());
                *last = Some(s);
                done
            };
            // NOT_FOUND is "not projected yet" only before the saga was ever seen.
            let not_found = |status: &tonic::Status, method: &str, seen_once: bool| {
                if !seen_once && started.elapsed() < follow.not_found_grace {
                    Ok(())
                } else {
                    Err(rpc_error(method, status))
                }
            };
            if poll {
                match client
                    .get_saga(GetSagaRequest {
                        saga_id: id.to_string(),
                    })
                    .await
                {
                    Ok(r) => {
                        if let Some(done) = seen(r.into_inner(), &mut last) {
                            return Ok(done);
                        }
                    }
                    Err(st) if st.code() == Code::NotFound => {
                        not_found(&st, "GetSaga", last.is_some())?
                    }
                    Err(st) if st.code() == Code::Unavailable => {}
                    Err(st) => return Err(rpc_error("GetSaga", &st)),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            match client
                .watch_saga(WatchSagaRequest {
                    saga_id: id.to_string(),
                })
                .await
            {
                Ok(resp) => {
                    let mut stream = resp.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(s)) => {
                                backoff = Duration::from_millis(20);
                                if let Some(done) = seen(s, &mut last) {
                                    return Ok(done);
                                }
                            }
                            Ok(None) => break,
                            Err(st) if st.code() == Code::Unavailable => break,
                            Err(st) if st.code() == Code::NotFound => {
                                not_found(&st, "WatchSaga", last.is_some())?;
                                break;
                            }
                            Err(st) => return Err(rpc_error("WatchSaga", &st)),
                        }
                    }
                }
                Err(st) if st.code() == Code::NotFound => {
                    not_found(&st, "WatchSaga", last.is_some())?
                }
                Err(st) if st.code() == Code::Unimplemented => {
                    poll = true;
                    continue;
                }
                Err(st) if st.code() == Code::Unavailable => {}
                Err(st) => return Err(rpc_error("WatchSaga", &st)),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    };
    match follow.deadline {
        None => work.await,
        Some(deadline) => match tokio::time::timeout_at(deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(anyhow!(
                "saga {id} is not terminal after {:.0?}{}",
                started.elapsed(),
                last.as_ref()
                    .map(|s| format!(" (last seen {})", state_name(s.state)))
                    .unwrap_or_default()
            )),
        },
    }
}
