//! `sagactl es show` (an aggregate's state and events, now or as of a version or a
//! time) and `sagactl projection ls|status|rebuild NAME` (the event-sourced read models,
//! through the control subjects of the service that runs them).

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use saga_aggregates::{BankAccount, Order};
use saga_core::SystemClock;
use saga_eventstore::definition::{self, AggregateDefinition};
use saga_eventstore::jetstream::{JetStreamEventStore, JetStreamSnapshotStore, Provisioning};
use saga_eventstore::{Aggregate, Repository, Until, Upcasters};

use crate::render::Table;
use crate::Output;

/// Subject prefix the services answer projection control requests on.
const CONTROL_PREFIX: &str = "es-ctl.projection";

#[derive(Debug, Subcommand)]
pub enum EsCommand {
    /// An aggregate's state and its events (`--at-version N` or `--at TIME` for the
    /// state back then).
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Aggregate type (`aggregateRoot`), e.g. BankAccount or Order.
    pub aggregate: String,
    /// Aggregate id, e.g. A1.
    pub id: String,
    /// The state after this version.
    #[arg(long, conflicts_with = "at")]
    pub at_version: Option<u64>,
    /// The state at this time: RFC 3339 (2026-12-02T05:00:00Z) or milliseconds since the
    /// epoch.
    #[arg(long)]
    pub at: Option<String>,
    #[command(flatten)]
    pub common: EsCommon,
}

#[derive(Debug, Args)]
pub struct EsCommon {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Directory of aggregate definitions (*.yaml).
    #[arg(long, env = "AGGREGATES_DIR", default_value = "aggregates")]
    pub aggregates: PathBuf,
}

#[derive(Debug, Args)]
pub struct ProjectionLsArgs {
    #[command(flatten)]
    pub common: EsCommon,
}

#[derive(Debug, Args)]
pub struct ProjectionStatusArgs {
    /// Projection name, e.g. AccountBalanceView.
    pub name: String,
    #[command(flatten)]
    pub common: EsCommon,
}

fn parse_time(text: &str) -> Result<u64> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let t = prost_types::Timestamp::from_str(text)
        .map_err(|e| anyhow::anyhow!("`{text}` is not RFC 3339 nor milliseconds: {e}"))?;
    Ok((t.seconds.max(0) as u64) * 1000 + (t.nanos.max(0) as u64) / 1_000_000)
}

fn show_time(ms: u64) -> String {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
    .to_string()
}

fn definitions(
    dir: &std::path::Path,
) -> Result<std::collections::BTreeMap<String, AggregateDefinition>> {
    definition::load_dir(dir).map_err(anyhow::Error::msg)
}

pub async fn run(out: Output, c: EsCommand) -> Result<ExitCode> {
    let EsCommand::Show(a) = c;
    let defs = definitions(&a.common.aggregates)?;
    let Some(def) = defs.get(&a.aggregate) else {
        bail!(
            "no aggregate `{}` in {} (there are: {})",
            a.aggregate,
            a.common.aggregates.display(),
            defs.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    };
    let until = match (a.at_version, &a.at) {
        (Some(v), _) => Until::Version(v),
        (None, Some(t)) => Until::Time(parse_time(t)?),
        (None, None) => Until::End,
    };
    let client = saga_nats::connect_as(&a.common.nats_url, "sagactl")
        .await
        .with_context(|| format!("connecting to NATS at {}", a.common.nats_url))?;
    let js = async_nats::jetstream::new(client);
    let p = Provisioning::default();
    let store = Arc::new(JetStreamEventStore::provision(js.clone(), &p).await?);
    let snapshots = Arc::new(JetStreamSnapshotStore::provision(&js, &p).await?);
    match a.aggregate.as_str() {
        "BankAccount" => {
            let repo = Repository::<BankAccount>::new(
                def,
                store,
                snapshots,
                saga_aggregates::bank::upcasters(),
                Arc::new(SystemClock),
            )?;
            show(out, &repo, &a.id, until).await
        }
        "Order" => {
            let repo = Repository::<Order>::new(
                def,
                store,
                snapshots,
                Upcasters::new(),
                Arc::new(SystemClock),
            )?;
            show(out, &repo, &a.id, until).await
        }
        other => bail!("sagactl knows no code for aggregate `{other}` (BankAccount, Order)"),
    }
}

async fn show<A: Aggregate>(
    out: Output,
    repo: &Repository<A>,
    id: &str,
    until: Until,
) -> Result<ExitCode> {
    let history = repo.history(id, until).await?;
    let mut state = A::default();
    for (_, e) in &history {
        state.apply(e);
    }
    let version = history.last().map_or(0, |(r, _)| r.version);
    if out.json {
        let events: Vec<serde_json::Value> = history
            .iter()
            .map(|(r, e)| {
                serde_json::json!({
                    "version": r.version,
                    "position": r.position,
                    "type": r.event_type,
                    "schemaVersion": r.schema_version,
                    "eventId": r.event_id,
                    "timestamp": show_time(r.timestamp),
                    "data": format!("{e:?}"),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "aggregate": A::TYPE, "id": id, "version": version,
            "state": serde_json::to_value(&state)?, "events": events,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    if history.is_empty() {
        println!(
            "{} {id}: no events{}",
            A::TYPE,
            if until == Until::End { "" } else { " by then" }
        );
        return Ok(ExitCode::FAILURE);
    }
    println!("{} {id} at version {version}", A::TYPE);
    println!("{}", serde_json::to_string_pretty(&state)?);
    println!();
    let mut t = Table::new(&["VERSION", "TIME", "TYPE", "SCHEMA", "EVENT"]);
    for (r, e) in &history {
        t.row(vec![
            r.version.to_string(),
            show_time(r.timestamp),
            r.event_type.clone(),
            format!("v{}", r.schema_version),
            format!("{e:?}"),
        ]);
    }
    print!("{}", t.render());
    Ok(ExitCode::SUCCESS)
}

async fn request(
    client: &async_nats::Client,
    name: &str,
    op: &str,
    timeout: Duration,
) -> Result<serde_json::Value> {
    let subject = format!("{CONTROL_PREFIX}.{name}.{op}");
    let reply = client
        .send_request(
            subject.clone(),
            async_nats::Request::new()
                .payload("".into())
                .timeout(Some(timeout)),
        )
        .await
        .with_context(|| {
            format!("no service answered on {subject} (is the service running this projection up?)")
        })?;
    let v: serde_json::Value = serde_json::from_slice(&reply.payload)
        .with_context(|| format!("the answer on {subject} is not JSON"))?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("{name}: {e}");
    }
    Ok(v)
}

/// `projection ls`: every projection of the definitions, with the status of its runner.
pub async fn ls(out: Output, a: ProjectionLsArgs) -> Result<ExitCode> {
    let defs = definitions(&a.common.aggregates)?;
    let client = saga_nats::connect_as(&a.common.nats_url, "sagactl")
        .await
        .with_context(|| format!("connecting to NATS at {}", a.common.nats_url))?;
    let mut rows = Vec::new();
    for def in defs.values() {
        for p in &def.projections {
            let status = request(&client, &p.name, "status", Duration::from_secs(2))
                .await
                .ok();
            rows.push((def.name.clone(), p.clone(), status));
        }
    }
    if out.json {
        let docs: Vec<_> = rows
            .iter()
            .map(|(agg, p, s)| {
                serde_json::json!({
                    "name": p.name, "aggregate": agg, "sources": p.sources, "target": p.target,
                    "status": s,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&docs)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(&[
        "NAME",
        "AGGREGATE",
        "TARGET",
        "GENERATION",
        "CHECKPOINT",
        "LAG",
        "SOURCES",
    ]);
    for (agg, p, s) in rows {
        let field = |k: &str| {
            s.as_ref()
                .and_then(|s| s.get(k))
                .map_or_else(|| "-".to_string(), |v| v.to_string())
        };
        t.row(vec![
            p.name.clone(),
            agg,
            p.target.clone(),
            field("generation"),
            field("checkpoint"),
            if s.is_some() {
                field("lag")
            } else {
                "not running".into()
            },
            p.sources.join(","),
        ]);
    }
    print!("{}", t.render());
    Ok(ExitCode::SUCCESS)
}

fn print_status(out: Output, v: &serde_json::Value) -> Result<()> {
    if out.json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        let mut t = Table::new(&["FIELD", "VALUE"]);
        if let Some(m) = v.as_object() {
            for (k, v) in m {
                t.row(vec![k.clone(), v.to_string()]);
            }
        }
        print!("{}", t.render());
    }
    Ok(())
}

/// `projection status NAME`.
pub async fn status(out: Output, a: ProjectionStatusArgs) -> Result<ExitCode> {
    let client = saga_nats::connect_as(&a.common.nats_url, "sagactl")
        .await
        .with_context(|| format!("connecting to NATS at {}", a.common.nats_url))?;
    let v = request(&client, &a.name, "status", Duration::from_secs(5)).await?;
    print_status(out, &v)?;
    Ok(ExitCode::SUCCESS)
}

/// `projection rebuild NAME`: blue/green, while the live view keeps serving.
pub async fn rebuild(out: Output, name: &str, nats_url: Option<String>) -> Result<ExitCode> {
    let url = nats_url
        .or_else(|| std::env::var("NATS_URL").ok())
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let client = saga_nats::connect_as(&url, "sagactl")
        .await
        .with_context(|| format!("connecting to NATS at {url}"))?;
    let v = request(&client, name, "rebuild", Duration::from_secs(3600)).await?;
    if !out.json {
        println!("{name} rebuilt beside the live view and switched:");
    }
    print_status(out, &v)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_milliseconds() {
        assert_eq!(parse_time("1700000000123").unwrap(), 1_700_000_000_123);
        assert_eq!(
            parse_time("2023-11-14T22:13:20.123Z").unwrap(),
            1_700_000_000_123
        );
        assert_eq!(show_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert!(parse_time("yesterday").is_err());
    }
}
