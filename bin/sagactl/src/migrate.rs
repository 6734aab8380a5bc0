//! `sagactl saga migrate`: moves the open sagas of one definition version to another.
//!
//! Each open saga on `--from` is checked against the new version where it stands (its
//! last journal record); those that can move are sent a `MigrateSaga` input, and the
//! worker that owns the saga checks again when it applies it (the saga may have moved
//! on since) and journals the migration, or its refusal with every reason, as a
//! transition of its own. The command then waits for each verdict.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use futures::StreamExt;
use saga_core::definition::{parse_definition, SagaDefinition};
use saga_core::machine::{migration_problems, parse_step_map, Input, SagaState};
use saga_core::SagaId;
use saga_nats::leases::PARTITIONS_KEY;
use saga_nats::names::OWNERS_BUCKET;
use saga_nats::{NatsDefinitionRegistry, NatsJournal, NatsOpenSagas, NatsPublisher};
use saga_ports::{DefinitionRegistry, Journal, OpenSagas, Publisher, RegisteredVersion};
use saga_runtime::envelope::{decode_record, migrate_message};
use serde_json::json;

use crate::args::MigrateArgs;
use crate::output::{out, outln};
use crate::render::Table;
use crate::Output;

/// What became of one saga.
#[derive(Debug, Clone)]
struct Verdict {
    saga_id: String,
    at_step: String,
    outcome: Outcome,
}

#[derive(Debug, Clone)]
enum Outcome {
    /// Can move (dry run), or sent and not answered within the wait.
    Movable,
    Sent,
    Migrated,
    Refused(String),
}

impl Outcome {
    fn word(&self) -> &'static str {
        match self {
            Outcome::Movable => "can migrate",
            Outcome::Sent => "sent, no verdict yet",
            Outcome::Migrated => "migrated",
            Outcome::Refused(_) => "refused",
        }
    }
}

/// `sagactl saga migrate`.
pub async fn run(out: Output, a: MigrateArgs) -> Result<ExitCode> {
    let map = parse_step_map(&a.step_map).map_err(anyhow::Error::msg)?;
    let client = saga_nats::connect_as(&a.nats_url, "sagactl")
        .await
        .with_context(|| format!("connecting to NATS at {}", a.nats_url))?;
    let js = async_nats::jetstream::new(client);
    let registry = NatsDefinitionRegistry::new(js.clone());
    let versions = registry
        .list()
        .await
        .context("reading the definition registry (has a worker ever started here?)")?;
    let from = find(&versions, a.saga_type.as_deref(), &a.from, "--from")?;
    let to = find(&versions, Some(&from.saga_type), &a.to, "--to")?;
    if from.digest == to.digest {
        bail!("--from and --to name the same version {}", from.digest);
    }
    let parse = |v: &RegisteredVersion| -> Result<SagaDefinition> {
        Ok(
            parse_definition(&format!("registry {}", v.digest), &v.source)
                .map_err(|e| anyhow::anyhow!("version {} does not load: {e}", v.digest))?
                .definition,
        )
    };
    let (from_def, to_def) = (parse(from)?, parse(to)?);
    let partitions = partitions(&js).await?;
    let open = open_on(&js, &from.saga_type, &from.digest, partitions, &a.saga).await?;

    let mut verdicts = Vec::new();
    let publisher = NatsPublisher::new(js.clone());
    for (id, state) in &open {
        let problems = migration_problems(&from_def, &to_def, state, &map);
        let at_step = state.current_step_name().unwrap_or("-").to_string();
        let outcome = if !problems.is_empty() {
            Outcome::Refused(problems.join("; "))
        } else if a.dry_run {
            Outcome::Movable
        } else {
            let saga_id = SagaId::parse(id).map_err(|e| anyhow::anyhow!("{e}"))?;
            let msg = migrate_message(&from.saga_type, &saga_id, &to.digest, &map, partitions);
            publisher
                .publish(&msg)
                .await
                .with_context(|| format!("sending the migration of saga {id}"))?;
            Outcome::Sent
        };
        verdicts.push(Verdict {
            saga_id: id.clone(),
            at_step,
            outcome,
        });
    }
    if !a.dry_run {
        let input_id = Input::Migrate {
            to: to.digest.clone(),
            step_map: map.clone(),
        }
        .id();
        wait_verdicts(&js, &from.saga_type, &input_id, &mut verdicts, a.wait).await?;
    }
    report(out, from, to, &verdicts, a.dry_run);
    let refused = verdicts
        .iter()
        .any(|v| matches!(v.outcome, Outcome::Refused(_) | Outcome::Sent));
    Ok(if refused {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The registered version `wanted` names: a digest, a unique digest prefix or a label.
fn find<'a>(
    versions: &'a [RegisteredVersion],
    saga_type: Option<&str>,
    wanted: &str,
    flag: &str,
) -> Result<&'a RegisteredVersion> {
    let of_type = |v: &&RegisteredVersion| saga_type.is_none_or(|t| v.saga_type == t);
    let label = |v: &RegisteredVersion| {
        parse_definition("registry", &v.source)
            .ok()
            .and_then(|l| l.definition.version_label)
    };
    let exact: Vec<_> = versions
        .iter()
        .filter(of_type)
        .filter(|v| v.digest == wanted)
        .collect();
    let found: Vec<_> = if exact.is_empty() {
        versions
            .iter()
            .filter(of_type)
            .filter(|v| v.digest.starts_with(wanted) || label(v).as_deref() == Some(wanted))
            .collect()
    } else {
        exact
    };
    match found.as_slice() {
        [one] => Ok(one),
        [] => bail!(
            "{flag} {wanted}: no registered version{} has that digest, digest prefix or label \
             (see `sagactl def ls`)",
            saga_type.map(|t| format!(" of {t}")).unwrap_or_default()
        ),
        many => bail!(
            "{flag} {wanted} names {} versions ({}): give more of the digest{}",
            many.len(),
            many.iter()
                .map(|v| format!("{} {}", v.saga_type, v.digest))
                .collect::<Vec<_>>()
                .join(", "),
            if saga_type.is_none() {
                " or --type"
            } else {
                ""
            }
        ),
    }
}

async fn partitions(js: &async_nats::jetstream::Context) -> Result<u32> {
    let owners = js
        .get_key_value(OWNERS_BUCKET)
        .await
        .with_context(|| format!("KV {OWNERS_BUCKET} (has a worker ever started here?)"))?;
    owners
        .get(PARTITIONS_KEY)
        .await
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8_lossy(&v).parse().ok())
        .filter(|p: &u32| *p > 0)
        .with_context(|| format!("no partition count in KV {OWNERS_BUCKET}"))
}

/// The open sagas of `saga_type` whose last journal record is on version `digest`
/// (only `only`, when given), with their state.
async fn open_on(
    js: &async_nats::jetstream::Context,
    saga_type: &str,
    digest: &str,
    partitions: u32,
    only: &[String],
) -> Result<BTreeMap<String, SagaState>> {
    let index = NatsOpenSagas::new(js.clone());
    let mut ids = Vec::new();
    for p in 0..partitions {
        for (t, id) in index.list(p).await? {
            if t == saga_type && (only.is_empty() || only.contains(&id)) {
                ids.push(id);
            }
        }
    }
    let journal = Arc::new(NatsJournal::new(js.clone()));
    let mut states = futures::stream::iter(ids)
        .map(|id| {
            let journal = journal.clone();
            let saga_type = saga_type.to_string();
            async move {
                let last = journal.last(&saga_type, &id).await;
                (id, last)
            }
        })
        .buffer_unordered(32);
    let mut open = BTreeMap::new();
    while let Some((id, last)) = states.next().await {
        let Some(last) = last.with_context(|| format!("reading the journal of saga {id}"))? else {
            continue; // entered in the index, first record not written yet
        };
        let record = decode_record(last.sequence, &last.payload)
            .map_err(|e| anyhow::anyhow!("the journal of saga {id}: {e}"))?;
        let Some(snapshot) = record.snapshot else {
            continue;
        };
        if snapshot.state.definition_version == digest && !snapshot.state.status.is_terminal() {
            open.insert(id, snapshot.state);
        }
    }
    Ok(open)
}

/// Waits up to `wait` seconds for the worker's verdict on every migration sent: the
/// journal record of the migration input says migrated or refused (and why).
async fn wait_verdicts(
    js: &async_nats::jetstream::Context,
    saga_type: &str,
    input_id: &str,
    verdicts: &mut [Verdict],
    wait: u64,
) -> Result<()> {
    let journal = NatsJournal::new(js.clone());
    let deadline = Instant::now() + Duration::from_secs(wait);
    loop {
        let mut pending = 0;
        for v in verdicts.iter_mut() {
            if !matches!(v.outcome, Outcome::Sent) {
                continue;
            }
            let records = journal
                .read(saga_type, &v.saga_id)
                .await
                .with_context(|| format!("reading the journal of saga {}", v.saga_id))?;
            let applied = records.iter().find_map(|r| {
                let ev =
                    <saga_proto::JournalEvent as saga_proto::Message>::decode(r.payload.as_slice())
                        .ok()?;
                (ev.input_id == input_id).then_some(ev)
            });
            match applied {
                Some(ev) => {
                    let migrated = ev
                        .events
                        .iter()
                        .any(|e| e.kind == saga_proto::TransitionEventKind::Migrated as i32);
                    v.outcome = if migrated {
                        Outcome::Migrated
                    } else {
                        Outcome::Refused(
                            ev.events
                                .first()
                                .map(|e| e.reason.clone())
                                .unwrap_or_default(),
                        )
                    };
                }
                None => pending += 1,
            }
        }
        if pending == 0 || Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn report(
    out: Output,
    from: &RegisteredVersion,
    to: &RegisteredVersion,
    verdicts: &[Verdict],
    dry_run: bool,
) {
    if out.json {
        let rows: Vec<_> = verdicts
            .iter()
            .map(|v| {
                json!({
                    "sagaId": v.saga_id,
                    "atStep": v.at_step,
                    "outcome": v.outcome.word(),
                    "reason": match &v.outcome { Outcome::Refused(r) => r.as_str(), _ => "" },
                })
            })
            .collect();
        outln!(
            "{}",
            json!({
                "sagaType": from.saga_type,
                "from": from.digest,
                "to": to.digest,
                "dryRun": dry_run,
                "sagas": rows,
            })
        );
        return;
    }
    outln!(
        "{} {} -> {}{}: {} open saga(s) on {}",
        from.saga_type,
        from.digest,
        to.digest,
        if dry_run { " (dry run)" } else { "" },
        verdicts.len(),
        from.digest
    );
    let mut table = Table::new(&["SAGA", "AT STEP", "OUTCOME", "REASON"]);
    for v in verdicts {
        table.row(vec![
            v.saga_id.clone(),
            v.at_step.clone(),
            v.outcome.word().to_string(),
            match &v.outcome {
                Outcome::Refused(r) => r.clone(),
                _ => String::new(),
            },
        ]);
    }
    out!("{}", table.render());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(t: &str, digest: &str) -> RegisteredVersion {
        RegisteredVersion {
            saga_type: t.into(),
            digest: digest.into(),
            source: String::new(),
            registered_at: 0,
        }
    }

    #[test]
    fn versions_are_named_by_digest_or_a_unique_prefix() {
        let vs = [
            version("A", "aaaa1111"),
            version("A", "aaaa2222"),
            version("B", "bbbb1111"),
        ];
        assert_eq!(
            find(&vs, None, "aaaa1111", "--from").unwrap().digest,
            "aaaa1111"
        );
        assert_eq!(find(&vs, None, "bb", "--from").unwrap().saga_type, "B");
        let e = find(&vs, None, "aaaa", "--from").unwrap_err().to_string();
        assert!(e.contains("names 2 versions"), "{e}");
        let e = find(&vs, Some("B"), "aaaa1111", "--to")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no registered version of B"), "{e}");
    }
}
