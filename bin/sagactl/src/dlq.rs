//! `sagactl dlq ls|show|redrive|purge`: the dead-letter queue (`SAGA_DLQ`).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use saga_nats::dead_letters::{
    get_dead_letter, list_dead_letters, purge_dead_letters, redrive_dead_letter, DeadLetter,
};

use crate::output::outln;
use crate::Output;

#[derive(Debug, Args)]
pub struct DlqArgs {
    /// NATS server URL.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub nats_url: String,
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// The dead letters, oldest first: id, original subject, consumer, deliveries, reason.
    Ls {
        /// Only those from this source: an original subject prefix
        /// (events.orders.OrderConfirmed), a consumer (evt-rewards) or a stream.
        #[arg(long)]
        source: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// One dead letter with its story: every header, every recorded error, its redrives.
    Show {
        /// Its id (the SAGA_DLQ sequence, as `dlq ls` shows it).
        id: u64,
    },
    /// Publish dead letters again, with their headers, to their original subject (or
    /// --to); the redrive is recorded in SAGA_DLQ.
    Redrive {
        /// The dead letter's id.
        #[arg(required_unless_present = "all_from", conflicts_with = "all_from")]
        id: Option<u64>,
        /// Every dead letter from this source (as `ls --source`).
        #[arg(long, value_name = "SOURCE")]
        all_from: Option<String>,
        /// Publish to this subject instead of the original one.
        #[arg(long, value_name = "SUBJECT")]
        to: Option<String>,
    },
    /// Delete dead letters (all, or those from --source) and their redrive records.
    Purge {
        /// Only those from this source (an original subject prefix).
        #[arg(long)]
        source: Option<String>,
        /// Confirm: without it nothing is deleted.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn run(out: Output, args: DlqArgs) -> anyhow::Result<ExitCode> {
    let client = saga_nats::connect_as(&args.nats_url, "sagactl-dlq").await?;
    let js = async_nats::jetstream::new(client.clone());
    let code = match args.command {
        DlqCommand::Ls { source, limit } => {
            let letters = list_dead_letters(&js, source.as_deref(), limit).await?;
            ls(out, &letters);
            ExitCode::SUCCESS
        }
        DlqCommand::Show { id } => {
            show(out, &get_dead_letter(&js, id).await?);
            ExitCode::SUCCESS
        }
        DlqCommand::Redrive { id, all_from, to } => {
            let ids: Vec<u64> = match (id, all_from) {
                (Some(id), _) => vec![id],
                (None, Some(source)) => list_dead_letters(&js, Some(&source), usize::MAX)
                    .await?
                    .iter()
                    .map(|l| l.id)
                    .collect(),
                (None, None) => unreachable!("clap requires one"),
            };
            if ids.is_empty() {
                outln!("no dead letter to redrive");
            }
            for id in ids {
                let r = redrive_dead_letter(&js, id, to.as_deref())
                    .await
                    .with_context(|| format!("redriving dead letter {id}"))?;
                if out.json {
                    outln!(
                        "{}",
                        serde_json::json!({"id": r.id, "subject": r.subject, "sequence": r.sequence, "duplicate": r.duplicate})
                    );
                } else if r.duplicate {
                    outln!(
                        "dead letter {id}: already redriven to {} (sequence {})",
                        r.subject,
                        r.sequence
                    );
                } else {
                    outln!(
                        "dead letter {id}: redriven to {} (sequence {})",
                        r.subject,
                        r.sequence
                    );
                }
            }
            ExitCode::SUCCESS
        }
        DlqCommand::Purge { source, yes } => {
            let letters = list_dead_letters(&js, source.as_deref(), usize::MAX).await?;
            if !yes {
                eprintln!(
                    "sagactl: {} dead letter(s) would be deleted{}; run again with --yes to delete them",
                    letters.len(),
                    source.map(|s| format!(" (from {s})")).unwrap_or_default()
                );
                return Ok(ExitCode::from(2));
            }
            let n = purge_dead_letters(&js, source.as_deref()).await?;
            outln!("purged {n} message(s) from SAGA_DLQ");
            ExitCode::SUCCESS
        }
    };
    let _ = client.flush().await;
    Ok(code)
}

fn to_json(l: &DeadLetter) -> serde_json::Value {
    let errors = l
        .errors()
        .and_then(|e| serde_json::from_str::<serde_json::Value>(e).ok());
    serde_json::json!({
        "id": l.id,
        "time": l.time,
        "subject": l.original_subject(),
        "position": l.original_position(),
        "consumer": l.consumer(),
        "deliveries": l.deliveries(),
        "reason": l.reason(),
        "errors": errors,
        "headers": l.headers,
        "payloadBytes": l.payload.len(),
        "redrives": l.redrives.iter().map(|(s, q)| serde_json::json!({"subject": s, "sequence": q})).collect::<Vec<_>>(),
    })
}

fn ls(out: Output, letters: &[DeadLetter]) {
    if out.json {
        outln!(
            "{}",
            serde_json::Value::Array(letters.iter().map(to_json).collect())
        );
        return;
    }
    outln!(
        "{:<6} {:<44} {:<18} {:<5} {:<9} REASON",
        "ID",
        "SUBJECT",
        "CONSUMER",
        "DELIV",
        "REDRIVEN"
    );
    for l in letters {
        let mut reason = l.reason().to_string();
        if reason.chars().count() > 70 {
            reason = reason.chars().take(69).collect::<String>() + "…";
        }
        outln!(
            "{:<6} {:<44} {:<18} {:<5} {:<9} {}",
            l.id,
            l.original_subject(),
            l.consumer(),
            l.deliveries(),
            l.redrives.len(),
            reason
        );
    }
}

fn show(out: Output, l: &DeadLetter) {
    if out.json {
        outln!("{}", to_json(l));
        return;
    }
    outln!("id:          {}", l.id);
    outln!("dead since:  {}", l.time);
    outln!("subject:     {}", l.original_subject());
    outln!("from:        {}", l.original_position());
    outln!("consumer:    {}", l.consumer());
    outln!("deliveries:  {}", l.deliveries());
    outln!("reason:      {}", l.reason());
    if let Some(errors) = l
        .errors()
        .and_then(|e| serde_json::from_str::<Vec<serde_json::Value>>(e).ok())
    {
        outln!("attempts:");
        for e in errors {
            outln!(
                "  #{} at {} ms: {}",
                e["attempt"],
                e["at"],
                e["error"].as_str().unwrap_or_default()
            );
        }
    }
    outln!("headers:");
    for (k, v) in &l.headers {
        outln!("  {k}: {v}");
    }
    outln!("payload:     {} bytes", l.payload.len());
    for (s, q) in &l.redrives {
        outln!("redriven to: {s} (sequence {q})");
    }
}
