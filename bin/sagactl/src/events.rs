//! `sagactl events validate|ls|show|graph`: the event catalog (offline).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use saga_choreography::catalog::{load_catalog, mermaid, EventCatalog, Ordering};
use saga_choreography::check_catalog;

use crate::output::{out, outln};

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Check the catalog (its YAML, and every schema against proto/saga/v1); prints
    /// every problem, and the invariants kept as documentation.
    Validate {
        /// Catalog file.
        #[arg(long, default_value = DEFAULT_CATALOG)]
        catalog: PathBuf,
        /// Saga definitions to check the catalog against (the events they announce
        /// must be catalogued with them as producers); skipped when the directory is
        /// missing.
        #[arg(long, default_value = "sagas")]
        sagas: PathBuf,
    },
    /// The events: message, subject, key, consumers.
    Ls {
        /// Catalog file.
        #[arg(long, default_value = DEFAULT_CATALOG)]
        catalog: PathBuf,
    },
    /// One event: schema, producers, consumers, ordering and the rules about it.
    Show {
        /// Event name, e.g. OrderConfirmed.
        event: String,
        /// Catalog file.
        #[arg(long, default_value = DEFAULT_CATALOG)]
        catalog: PathBuf,
    },
    /// Mermaid flowchart: producers -> event -> consumers.
    Graph {
        /// Catalog file.
        #[arg(long, default_value = DEFAULT_CATALOG)]
        catalog: PathBuf,
    },
}

/// The order domain's catalog, relative to the repository.
pub const DEFAULT_CATALOG: &str = "events/order-events.yaml";

pub fn run(command: EventsCommand, json: bool) -> ExitCode {
    let file = match &command {
        EventsCommand::Validate { catalog, .. }
        | EventsCommand::Ls { catalog }
        | EventsCommand::Show { catalog, .. }
        | EventsCommand::Graph { catalog } => catalog.clone(),
    };
    let Some(catalog) = load(&file, matches!(command, EventsCommand::Validate { .. })) else {
        return ExitCode::FAILURE;
    };
    match command {
        EventsCommand::Validate { sagas, .. } if sagas.is_dir() => {
            let defs = match saga_core::definition::load_dir(&sagas) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let errors = saga_choreography::catalog::check_against_sagas(&catalog, defs.values());
            if !errors.is_empty() {
                eprintln!(
                    "FAIL {}: {} problem(s) against the sagas in {}",
                    file.display(),
                    errors.len(),
                    sagas.display()
                );
                for e in errors {
                    eprintln!("{}: {}: {}", file.display(), e.location, e.message);
                }
                return ExitCode::FAILURE;
            }
            outln!(
                "ok   {}: agrees with the {} saga(s) in {}",
                file.display(),
                defs.len(),
                sagas.display()
            );
        }
        EventsCommand::Validate { .. } => {}
        EventsCommand::Ls { .. } => ls(&catalog, json),
        EventsCommand::Show { event, .. } => return show(&catalog, &event, json),
        EventsCommand::Graph { .. } => out!("{}", mermaid(&catalog)),
    }
    ExitCode::SUCCESS
}

/// Loads and checks the catalog (YAML, then against the Protobuf messages); prints
/// every problem on stderr.
fn load(file: &Path, verbose: bool) -> Option<EventCatalog> {
    let loaded = match load_catalog(file) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!(
                "FAIL {}: {} problem(s)",
                file.display(),
                errors.errors.len()
            );
            eprintln!("{errors}");
            return None;
        }
    };
    if let Err(errors) = check_catalog(&file.display().to_string(), &loaded.catalog) {
        eprintln!(
            "FAIL {}: {} schema problem(s) against proto/saga/v1",
            file.display(),
            errors.errors.len()
        );
        eprintln!("{errors}");
        return None;
    }
    if verbose {
        let c = &loaded.catalog;
        outln!(
            "ok   {}: {} events, {} services, {} ordering rules enforced",
            file.display(),
            c.events.len(),
            c.services.len(),
            c.rules().count()
        );
        for note in &loaded.notes {
            outln!(
                "note {}: {}: {}",
                file.display(),
                note.location,
                note.message
            );
        }
    }
    Some(loaded.catalog)
}

fn ordering(o: &Ordering) -> String {
    match o {
        Ordering::Strict { by } => format!("strict (by {by})"),
        Ordering::Unordered => "none".into(),
    }
}

fn ls(c: &EventCatalog, json: bool) {
    if json {
        let rows: Vec<_> = c
            .events
            .iter()
            .map(|e| {
                serde_json::json!({
                    "name": e.name,
                    "version": e.version,
                    "message": e.message,
                    "subject": format!("events.{}.{}.*", c.domain, e.name),
                    "producers": e.producers.iter().map(|p| &p.service).collect::<Vec<_>>(),
                    "consumers": e.consumers.iter().map(|p| &p.service).collect::<Vec<_>>(),
                    "idempotencyKey": e.idempotency_key,
                    "ordering": ordering(&e.ordering),
                })
            })
            .collect();
        outln!("{}", serde_json::Value::Array(rows));
        return;
    }
    outln!(
        "{:<16} {:<3} {:<22} {:<30} {:<10} CONSUMERS",
        "EVENT",
        "V",
        "MESSAGE",
        "SUBJECT",
        "KEY"
    );
    for e in &c.events {
        let consumers: Vec<_> = e.consumers.iter().map(|p| p.service.as_str()).collect();
        outln!(
            "{:<16} {:<3} {:<22} {:<30} {:<10} {}",
            e.name,
            e.version,
            e.message,
            format!("events.{}.{}.*", c.domain, e.name),
            e.idempotency_key,
            consumers.join(", ")
        );
    }
}

fn show(c: &EventCatalog, name: &str, json: bool) -> ExitCode {
    let Some(e) = c.event(name) else {
        let names: Vec<_> = c.events.iter().map(|e| e.name.as_str()).collect();
        eprintln!(
            "sagactl: error: no event `{name}` in the catalog (it has: {})",
            names.join(", ")
        );
        return ExitCode::FAILURE;
    };
    let rules: Vec<&str> = c
        .rules()
        .filter(|(_, r)| format!("{r:?}").contains(&format!("\"{name}\"")))
        .map(|(i, _)| i.text.as_str())
        .collect();
    let party = |p: &saga_choreography::catalog::Party| match &p.purpose {
        Some(t) => format!("{} ({t})", p.service),
        None => p.service.clone(),
    };
    if json {
        let v = serde_json::json!({
            "name": e.name,
            "version": e.version,
            "message": e.message,
            "subject": format!("events.{}.{}.*", c.domain, e.name),
            "schema": e.schema.iter().map(|f| (f.name.clone(), serde_json::Value::from(f.ty.to_string()))).collect::<serde_json::Map<_, _>>(),
            "producers": e.producers.iter().map(party).collect::<Vec<_>>(),
            "consumers": e.consumers.iter().map(party).collect::<Vec<_>>(),
            "idempotencyKey": e.idempotency_key,
            "ordering": ordering(&e.ordering),
            "invariants": rules,
        });
        outln!("{v}");
        return ExitCode::SUCCESS;
    }
    outln!("event:          {} (version {})", e.name, e.version);
    outln!("message:        {}", e.message);
    outln!("subject:        events.{}.{}.*", c.domain, e.name);
    outln!("idempotencyKey: {}", e.idempotency_key);
    outln!("ordering:       {}", ordering(&e.ordering));
    outln!("schema:");
    for f in &e.schema {
        outln!("  {}: {}", f.name, f.ty);
    }
    outln!("producers:");
    for p in &e.producers {
        outln!("  {}", party(p));
    }
    outln!("consumers:");
    for p in &e.consumers {
        outln!("  {}", party(p));
    }
    if !rules.is_empty() {
        outln!("invariants (enforced per key by its consumers):");
        for r in rules {
            outln!("  {r}");
        }
    }
    ExitCode::SUCCESS
}
