//! `sagactl def validate|graph` (offline), `sagactl def ls|push` (the versions registered
//! in the cluster, KV `saga_definitions`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use saga_core::definition::{load_file, mermaid, Compensation, FailureKind, Loaded, StepKind};
use saga_core::duration::format_duration;

pub use registry::{ls, push};

pub fn validate(files: &[PathBuf], explain: bool) -> ExitCode {
    let mut failed = 0;
    for file in files {
        match load_file(file) {
            Ok(loaded) => {
                let def = &loaded.definition;
                println!(
                    "ok   {}: {} ({} steps, deadline {}, version {})",
                    file.display(),
                    def.name,
                    def.steps.len(),
                    format_duration(def.deadline()),
                    def.version()
                );
                if explain {
                    print!("{}", explain_text(&loaded));
                }
            }
            Err(errors) => {
                failed += 1;
                eprintln!(
                    "FAIL {}: {} problem(s)",
                    file.display(),
                    errors.errors.len()
                );
                eprintln!("{errors}");
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} definition(s) invalid", files.len());
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

pub fn graph(file: &Path) -> ExitCode {
    match load_file(file) {
        Ok(loaded) => {
            print!("{}", mermaid(&loaded.definition));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

fn explain_text(loaded: &Loaded) -> String {
    let def = &loaded.definition;
    let mut out = String::new();
    out.push_str("\n  steps:\n");
    for (i, s) in def.steps.iter().enumerate() {
        let comp = match &s.compensation {
            Compensation::Action(c) => format!(
                "undo {} (timeout {}, up to {} attempts)",
                c.action,
                format_duration(c.timeout),
                c.retry.max_attempts
            ),
            Compensation::NotNeeded => "no undo needed (declared)".to_string(),
            Compensation::Missing => match s.kind {
                StepKind::Pivot => "never undone: the point of no return".to_string(),
                StepKind::Retriable => "never undone: retried until it succeeds".to_string(),
                StepKind::Compensatable => "no compensation (last step)".to_string(),
            },
        };
        let attempts = if s.retry.is_unbounded() {
            "unbounded attempts".to_string()
        } else {
            format!("up to {} attempts", s.retry.max_attempts)
        };
        out.push_str(&format!(
            "    {}. {} [{}] -> {}.{}  timeout {}, {}; {}\n",
            i + 1,
            s.name,
            s.kind,
            s.service,
            s.action,
            format_duration(s.timeout),
            attempts,
            comp
        ));
    }
    out.push_str(&format!(
        "\n  deadline: {} = worst case of the steps up to the pivot {} + buffer {}{}\n",
        format_duration(def.deadline()),
        format_duration(def.steps_worst_case()),
        format_duration(def.deadline_buffer),
        if def.timeout.is_some() {
            " (explicit `timeout` wins)"
        } else {
            ""
        }
    ));
    if let Some(p) = def.pivot() {
        out.push_str(&format!(
            "  pivot: {} (cancels and the deadline undo the saga only before it is sent)\n",
            def.steps[p].name
        ));
    }
    out.push_str("\n  derived failure scenarios (compensations run in this order):\n");
    let rows: Vec<[String; 4]> = def
        .derived_scenarios()
        .into_iter()
        .map(|p| {
            let kind = match p.kind {
                FailureKind::Business => "business failure",
                FailureKind::InDoubt => "in doubt (timeout/retries exhausted)",
            };
            let mut comps = if p.compensations.is_empty() {
                "(none)".to_string()
            } else {
                p.compensations.join(" -> ")
            };
            if !p.unresolved.is_empty() {
                comps.push_str(&format!("; unresolved: {}", p.unresolved.join(", ")));
            }
            [
                p.step.clone(),
                kind.to_string(),
                comps,
                p.outcome().to_string(),
            ]
        })
        .collect();
    let header = [
        "failing step".to_string(),
        "how".to_string(),
        "compensations".to_string(),
        "ends".to_string(),
    ];
    let widths: Vec<usize> = (0..4)
        .map(|c| {
            rows.iter()
                .chain(std::iter::once(&header))
                .map(|r| r[c].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(rows.iter()) {
        out.push_str("    ");
        for (c, cell) in row.iter().enumerate() {
            out.push_str(&format!("{cell:<w$}  ", w = widths[c]));
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    }
    if !def.failure_scenarios.is_empty() {
        out.push_str("\n  failureScenarios as written (all match the plan):\n");
        for s in &def.failure_scenarios {
            out.push_str(&format!(
                "    {} (step {}): {}\n",
                s.name,
                s.step,
                if s.compensations.is_empty() {
                    "(none)".to_string()
                } else {
                    s.compensations.join(" -> ")
                }
            ));
        }
    }
    if !loaded.notes.is_empty() {
        out.push_str("\n  notes:\n");
        for n in &loaded.notes {
            out.push_str(&format!("    {}: {}\n", n.location, n.message));
        }
    }
    out.push('\n');
    out
}

mod registry {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::process::ExitCode;
    use std::sync::Arc;

    use anyhow::{Context as _, Result};
    use futures::StreamExt;
    use saga_core::definition::load_file;
    use saga_nats::leases::PARTITIONS_KEY;
    use saga_nats::names::{DEFINITIONS_BUCKET, OWNERS_BUCKET};
    use saga_nats::{NatsDefinitionRegistry, NatsJournal, NatsOpenSagas, ProvisionConfig};
    use saga_ports::{DefinitionRegistry, Journal, OpenSagas};
    use saga_proto::Message;
    use serde_json::json;

    use crate::args::DefLsArgs;
    use crate::output::{out, outln};
    use crate::render::{ts, Table};
    use crate::Output;

    /// A row of `def ls`: type, digest, label, latest, registered at, open sagas.
    type Row = (String, String, Option<String>, bool, Option<u64>, String);

    async fn jetstream(nats_url: &str) -> Result<async_nats::jetstream::Context> {
        let client = saga_nats::connect_as(nats_url, "sagactl")
            .await
            .with_context(|| format!("connecting to NATS at {nats_url}"))?;
        Ok(async_nats::jetstream::new(client))
    }

    /// `sagactl def push`: registers each file as a version (create-only), and makes it
    /// the latest of its type when `latest` (or when its type has none yet).
    pub async fn push(
        out: Output,
        nats_url: &str,
        files: &[PathBuf],
        latest: bool,
    ) -> Result<ExitCode> {
        let mut loaded = Vec::new();
        for f in files {
            let def = load_file(f).map_err(|e| anyhow::anyhow!("{e}"))?.definition;
            let source =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            loaded.push((f, def, source));
        }
        let js = jetstream(nats_url).await?;
        let bucket = ProvisionConfig::default()
            .bucket_configs()
            .into_iter()
            .find(|b| b.bucket == DEFINITIONS_BUCKET)
            .context("no configuration of the definitions bucket")?;
        saga_nats::ensure_bucket(&js, bucket).await?;
        let registry = NatsDefinitionRegistry::new(js);
        let mut results = Vec::new();
        for (f, def, source) in loaded {
            let v = def.version();
            let new = registry.register(&def.name, &v.digest, &source).await?;
            let current = registry.latest(&def.name).await?;
            let make_latest = latest || current.is_none();
            if make_latest {
                registry.set_latest(&def.name, &v.digest).await?;
            }
            let is_latest = make_latest || current.as_deref() == Some(v.digest.as_str());
            if out.json {
                results.push(json!({
                    "file": f.display().to_string(),
                    "sagaType": def.name,
                    "digest": v.digest,
                    "label": v.label,
                    "new": new,
                    "latest": is_latest,
                }));
            } else {
                outln!(
                    "{} {} {v}: {}{}",
                    f.display(),
                    def.name,
                    if new {
                        "registered"
                    } else {
                        "already registered"
                    },
                    if is_latest { ", latest" } else { "" }
                );
            }
        }
        if out.json {
            outln!("{}", serde_json::Value::Array(results));
        }
        Ok(ExitCode::SUCCESS)
    }

    /// `sagactl def ls`: every registered version, with the open sagas pinned to it
    /// (from the open-saga index, each saga's version read from its last journal
    /// record, at most `max_open` of them).
    pub async fn ls(out: Output, a: DefLsArgs) -> Result<ExitCode> {
        let js = jetstream(&a.nats_url).await?;
        let registry = NatsDefinitionRegistry::new(js.clone());
        let versions = registry.list().await.with_context(|| {
            format!("KV {DEFINITIONS_BUCKET} (has a worker ever started here?)")
        })?;
        let mut latest = BTreeMap::new();
        for v in &versions {
            if !latest.contains_key(&v.saga_type) {
                latest.insert(v.saga_type.clone(), registry.latest(&v.saga_type).await?);
            }
        }
        let open = open_by_version(&js, a.max_open).await?;
        let mut rows: Vec<Row> = Vec::new();
        for v in &versions {
            let label = saga_core::definition::parse_definition("registry", &v.source)
                .ok()
                .and_then(|l| l.definition.version_label);
            let count = open
                .get(&(v.saga_type.clone(), v.digest.clone()))
                .copied()
                .unwrap_or(0);
            let is_latest =
                latest.get(&v.saga_type).cloned().flatten().as_deref() == Some(v.digest.as_str());
            rows.push((
                v.saga_type.clone(),
                v.digest.clone(),
                label,
                is_latest,
                Some(v.registered_at),
                count.to_string(),
            ));
        }
        // Open sagas on no registered version: started before versions (`-`), on a
        // version missing from the registry, or not readable (`?`).
        for ((t, digest), count) in &open {
            if !versions
                .iter()
                .any(|v| &v.saga_type == t && &v.digest == digest)
            {
                let shown = if digest.is_empty() {
                    "-".to_string()
                } else {
                    digest.clone()
                };
                rows.push((t.clone(), shown, None, false, None, count.to_string()));
            }
        }
        rows.sort_by(|a, b| (&a.0, a.4.unwrap_or(u64::MAX)).cmp(&(&b.0, b.4.unwrap_or(u64::MAX))));
        if out.json {
            let value: Vec<_> = rows
                .iter()
                .map(|(t, d, l, latest, at, open)| {
                    json!({
                        "sagaType": t,
                        "digest": d,
                        "label": l,
                        "latest": latest,
                        "registeredAt": at.map(|ms| ts(Some(&saga_proto::timestamp(ms)))),
                        "registered": at.is_some(),
                        "openSagas": open,
                    })
                })
                .collect();
            outln!("{}", serde_json::Value::Array(value));
            return Ok(ExitCode::SUCCESS);
        }
        let mut table = Table::new(&["TYPE", "VERSION", "LABEL", "LATEST", "REGISTERED", "OPEN"]);
        for (t, d, l, latest, at, open) in rows {
            table.row(vec![
                t,
                d,
                l.unwrap_or_else(|| "-".into()),
                if latest { "*".into() } else { String::new() },
                match at {
                    Some(ms) => ts(Some(&saga_proto::timestamp(ms))),
                    None => "not registered".into(),
                },
                open,
            ]);
        }
        out!("{}", table.render());
        Ok(ExitCode::SUCCESS)
    }

    /// Open sagas by (type, version digest); `?` counts those past `max` or unreadable.
    async fn open_by_version(
        js: &async_nats::jetstream::Context,
        max: usize,
    ) -> Result<BTreeMap<(String, String), usize>> {
        let mut counts = BTreeMap::new();
        let partitions: u32 = match js.get_key_value(OWNERS_BUCKET).await {
            Ok(owners) => owners
                .get(PARTITIONS_KEY)
                .await
                .ok()
                .flatten()
                .and_then(|v| String::from_utf8_lossy(&v).parse().ok())
                .unwrap_or(0),
            Err(_) => 0,
        };
        let index = NatsOpenSagas::new(js.clone());
        let mut open = Vec::new();
        for p in 0..partitions {
            open.extend(index.list(p).await?);
        }
        let journal = Arc::new(NatsJournal::new(js.clone()));
        let (read, rest) = open.split_at(open.len().min(max));
        for (t, _) in rest {
            *counts.entry((t.clone(), "?".to_string())).or_default() += 1;
        }
        let mut versions = futures::stream::iter(read.iter().cloned())
            .map(|(t, id)| {
                let journal = journal.clone();
                async move {
                    let version = match journal.last(&t, &id).await {
                        Ok(Some(r)) => saga_proto::JournalEvent::decode(r.payload.as_slice())
                            .map(|ev| ev.definition_version)
                            .unwrap_or_else(|_| "?".into()),
                        // Entered in the index, first record not written yet.
                        Ok(None) | Err(_) => "?".into(),
                    };
                    (t, version)
                }
            })
            .buffer_unordered(32);
        while let Some(key) = versions.next().await {
            *counts.entry(key).or_default() += 1;
        }
        Ok(counts)
    }
}
