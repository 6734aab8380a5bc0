//! `sagactl order place` and `sagactl saga get|list|watch|history|cancel|start`.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use saga_proto::{
    CancelSagaRequest, GetSagaHistoryRequest, GetSagaRequest, ListSagasRequest, PlaceOrderRequest,
    Saga, SagaState, StartSagaRequest,
};
use serde_json::json;
use tokio::time::Instant;

use crate::args::{ListArgs, PlaceArgs, SagaCommand, StartArgs, WaitArgs};
use crate::client::{connect, rpc_error, Client};
use crate::output::{out, outln};
use crate::watch::{until_terminal, Follow};
use crate::{json, render, Output};

/// Exit status of `--wait` when the saga ended other than COMPLETED.
const NOT_COMPLETED: u8 = 3;

pub async fn place(gateway: &str, out: Output, a: PlaceArgs) -> Result<ExitCode> {
    let mut client = connect(gateway).await?;
    let placed = client
        .place_order(PlaceOrderRequest {
            customer_id: a.customer.clone(),
            items: a.items,
            idempotency_key: a.idempotency_key.unwrap_or_default(),
        })
        .await
        .map_err(|st| rpc_error("PlaceOrder", &st))?
        .into_inner();
    let placed_json = json::place_order_response(&placed);
    if !out.json {
        outln!(
            "order {} placed: saga {} ({})",
            placed.order_id,
            placed.saga_id,
            render::state_name(placed.state)
        );
    }
    if !a.wait.wait {
        if out.json {
            print_pretty(&placed_json);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let saga = wait_for(&mut client, &placed.saga_id, out, &a.wait).await?;
    if out.json {
        print_pretty(&json!({ "placed": placed_json, "saga": json::saga(&saga) }));
    }
    Ok(completed_or_3(&saga))
}

pub async fn run(gateway: &str, out: Output, cmd: SagaCommand) -> Result<ExitCode> {
    let mut client = connect(gateway).await?;
    match cmd {
        SagaCommand::Get { id } => {
            let s = get(&mut client, &id).await?;
            if out.json {
                print_pretty(&json::saga(&s));
            } else {
                out!("{}", render::saga(&s));
            }
        }
        SagaCommand::List(a) => list(&mut client, out, a).await?,
        SagaCommand::Watch { id, timeout } => {
            let follow = Follow {
                deadline: timeout.map(|t| Instant::now() + Duration::from_secs(t)),
                not_found_grace: Duration::ZERO,
            };
            let mut prev: Option<Saga> = None;
            until_terminal(&mut client, &id, follow, |s| {
                print_update(out, prev.as_ref(), s);
                prev = Some(s.clone());
            })
            .await?;
        }
        SagaCommand::History { id } => {
            let events = client
                .get_saga_history(GetSagaHistoryRequest { saga_id: id })
                .await
                .map_err(|st| rpc_error("GetSagaHistory", &st))?
                .into_inner()
                .events;
            if out.json {
                print_pretty(&json::history(&events));
            } else if events.is_empty() {
                outln!("(no journal events)");
            } else {
                out!("{}", render::history(&events));
            }
        }
        SagaCommand::Trace { id } => {
            let events = client
                .get_saga_history(GetSagaHistoryRequest { saga_id: id })
                .await
                .map_err(|st| rpc_error("GetSagaHistory", &st))?
                .into_inner()
                .events;
            if out.json {
                let rows: Vec<serde_json::Value> = events
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "version": e.version.to_string(),
                            "traceId": e.trace_id,
                            "spanId": e.span_id,
                            "sagaTraceparent": e.saga_traceparent,
                        })
                    })
                    .collect();
                print_pretty(&serde_json::json!({ "transitions": rows }));
            } else if events.is_empty() {
                outln!("(no journal events)");
            } else {
                out!("{}", render::trace(&events));
            }
        }
        SagaCommand::Cancel { id, reason } => {
            let r = client
                .cancel_saga(CancelSagaRequest {
                    saga_id: id,
                    reason,
                })
                .await
                .map_err(|st| rpc_error("CancelSaga", &st))?
                .into_inner();
            if out.json {
                print_pretty(&json::cancel_response(&r));
            } else {
                outln!("saga {}: {}", r.saga_id, render::state_name(r.state));
            }
        }
        SagaCommand::Start(a) => return start(&mut client, out, a).await,
        SagaCommand::Migrate(_) => unreachable!("sent over NATS, not the gateway"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn start(client: &mut Client, out: Output, a: StartArgs) -> Result<ExitCode> {
    let started = client
        .start_saga(StartSagaRequest {
            saga_type: a.saga_type,
            payload: Some(json::to_proto_struct(&a.payload)),
            idempotency_key: a.idempotency_key.unwrap_or_default(),
        })
        .await
        .map_err(|st| rpc_error("StartSaga", &st))?
        .into_inner();
    let started_json = json::start_saga_response(&started);
    if !out.json {
        outln!(
            "saga {} started ({})",
            started.saga_id,
            render::state_name(started.state)
        );
    }
    if !a.wait.wait {
        if out.json {
            print_pretty(&started_json);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let saga = wait_for(client, &started.saga_id, out, &a.wait).await?;
    if out.json {
        print_pretty(&json!({ "started": started_json, "saga": json::saga(&saga) }));
    }
    Ok(completed_or_3(&saga))
}

async fn get(client: &mut Client, id: &str) -> Result<Saga> {
    Ok(client
        .get_saga(GetSagaRequest {
            saga_id: id.to_string(),
        })
        .await
        .map_err(|st| rpc_error("GetSaga", &st))?
        .into_inner())
}

async fn list(client: &mut Client, out: Output, a: ListArgs) -> Result<()> {
    let mut req = ListSagasRequest {
        state: a.state.map_or(SagaState::Unspecified, SagaState::from) as i32,
        saga_type: a.saga_type.unwrap_or_default(),
        page_size: a.page_size.unwrap_or(0),
        page_token: a.page_token.unwrap_or_default(),
    };
    let mut sagas = Vec::new();
    let mut tokens = HashSet::new();
    let next = loop {
        let page = client
            .list_sagas(req.clone())
            .await
            .map_err(|st| rpc_error("ListSagas", &st))?
            .into_inner();
        sagas.extend(page.sagas);
        if !a.all || page.next_page_token.is_empty() {
            break page.next_page_token;
        }
        if !tokens.insert(page.next_page_token.clone()) {
            bail!(
                "ListSagas returned the page token `{}` twice; stopping",
                page.next_page_token
            );
        }
        req.page_token = page.next_page_token;
    };
    if out.json {
        print_pretty(&json::sagas_page(&sagas, &next));
        return Ok(());
    }
    if sagas.is_empty() {
        outln!("(no sagas)");
    } else {
        out!("{}", render::saga_list(&sagas));
    }
    if !next.is_empty() {
        eprintln!("more: --page-token {next} (or --all)");
    }
    Ok(())
}

/// Follows a saga just started, printing its changes (not in JSON mode), and returns
/// it terminal.
async fn wait_for(client: &mut Client, id: &str, out: Output, w: &WaitArgs) -> Result<Saga> {
    let follow = Follow {
        deadline: Some(Instant::now() + Duration::from_secs(w.timeout)),
        not_found_grace: Duration::from_secs(w.timeout),
    };
    let mut prev: Option<Saga> = None;
    let saga = until_terminal(client, id, follow, |s| {
        if !out.json {
            print_update(out, prev.as_ref(), s);
        }
        prev = Some(s.clone());
    })
    .await?;
    if !out.json {
        outln!();
        out!("{}", render::saga(&saga));
    }
    Ok(saga)
}

fn completed_or_3(s: &Saga) -> ExitCode {
    if s.state == SagaState::Completed as i32 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(NOT_COMPLETED)
    }
}

/// One line per saga change and one per step change (JSON: one saga per line).
fn print_update(out: Output, prev: Option<&Saga>, s: &Saga) {
    if out.json {
        outln!("{}", json::saga(s));
        return;
    }
    let state_changed = prev.is_none_or(|p| p.state != s.state || p.current_step != s.current_step);
    if state_changed {
        let step = if s.current_step.is_empty() {
            String::new()
        } else {
            format!(" at {}", s.current_step)
        };
        outln!(
            "{}  v{} {}{}",
            render::ts(s.updated_at.as_ref()),
            s.version,
            render::state_name(s.state),
            step
        );
    }
    for st in &s.steps {
        let before = prev.and_then(|p| p.steps.iter().find(|x| x.name == st.name));
        let changed = before.is_none_or(|b| {
            b.status != st.status
                || b.attempts != st.attempts
                || b.compensation_attempts != st.compensation_attempts
        });
        if changed && !(before.is_none() && st.status == "NOT_STARTED") {
            let error = if st.error.is_empty() {
                String::new()
            } else {
                format!(": {}", st.error)
            };
            let attempts = if st.status.contains("COMPENSAT") && st.compensation_attempts > 0 {
                format!("compensation attempt {}", st.compensation_attempts)
            } else {
                format!("attempt {}", st.attempts)
            };
            outln!("    {} {} ({attempts}){error}", st.name, st.status);
        }
    }
    if render::is_terminal(s.state) {
        let reason = if s.failure_reason.is_empty() {
            &s.compensation_reason
        } else {
            &s.failure_reason
        };
        if !reason.is_empty() {
            outln!("    reason: {reason}");
        }
    }
}

pub fn print_pretty(v: &serde_json::Value) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => outln!("{s}"),
        Err(_) => outln!("{v}"),
    }
}
