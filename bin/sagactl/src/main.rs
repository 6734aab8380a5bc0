//! `sagactl`: the command-line face of the saga runtime.
//!
//! Definitions (`def validate|graph`) are checked offline (`def ls|push` use the cluster's
//! registry of versions); orders, sagas and the benchmark talk to the
//! gateway over gRPC (`saga.v1.SagaGateway`, address from `--gateway` / `SAGA_GATEWAY`);
//! `dev` runs the whole stack as child processes; `chaos` does too, loads it while it
//! kills and pauses its processes, and checks the invariants; `projection rebuild` runs
//! the gateway's offline rebuild.
//!
//! Exit status: 0 success, 1 error, 2 bad usage, 3 `order place --wait` / `saga start
//! --wait` saw the saga end other than COMPLETED, 4 `chaos` found an invariant broken.

use std::process::ExitCode;

use clap::Parser;

mod args;
mod bench;
mod bench_probe;
mod chaos;
mod client;
mod cluster;
mod def;
mod dev;
mod devctl;
mod dlq;
mod es;
mod events;
mod json;
mod migrate;
mod natsauth;
mod output;
mod projection;
mod render;
mod sagas;
mod stack;
mod supervise;
mod token;
mod watch;

use args::{Cli, Command, DefCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Cli {
        gateway,
        json,
        security,
        command,
    } = cli;
    client::configure(security);
    let command = match command {
        Command::Def(DefCommand::Validate { files, explain }) => {
            return def::validate(&files, explain)
        }
        Command::Def(DefCommand::Graph { file }) => return def::graph(&file),
        Command::Events(c) => return events::run(c, json),
        Command::Token(c) => return token::run(c),
        Command::NatsAuth(a) => {
            return match natsauth::run(a) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sagactl: error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        other => other,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sagactl: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = Output { json };
    let result = runtime.block_on(async move {
        match command {
            Command::Def(DefCommand::Ls(a)) => def::ls(out, a).await,
            Command::Def(DefCommand::Push {
                files,
                not_latest,
                nats_url,
            }) => def::push(out, &nats_url, &files, !not_latest).await,
            Command::Def(_) | Command::Events(_) | Command::NatsAuth(_) | Command::Token(_) => {
                unreachable!("handled above")
            }
            Command::Order(args::OrderCommand::Place(a)) => sagas::place(&gateway, out, a).await,
            Command::Saga(args::SagaCommand::Migrate(a)) => migrate::run(out, a).await,
            Command::Saga(c) => sagas::run(&gateway, out, c).await,
            Command::Projection(args::ProjectionCommand::Rebuild(a)) if a.name.is_some() => {
                es::rebuild(out, a.name.as_deref().unwrap_or_default(), a.nats_url).await
            }
            Command::Projection(args::ProjectionCommand::Rebuild(a)) => {
                projection::rebuild(a).await
            }
            Command::Projection(args::ProjectionCommand::Ls(a)) => es::ls(out, a).await,
            Command::Projection(args::ProjectionCommand::Status(a)) => es::status(out, a).await,
            Command::Es(c) => es::run(out, c).await,
            Command::Bench(a) => bench::run(&gateway, out, a).await,
            Command::Dev(args::DevArgs {
                control: Some(c), ..
            }) => devctl::run(out, c).await,
            Command::Dev(a) => dev::run(a).await,
            Command::Cluster(a) => cluster::run(out, a).await,
            Command::Chaos(a) => chaos::run(out, a).await,
            Command::Dlq(a) => dlq::run(out, a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sagactl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How results are printed.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// Machine-readable JSON instead of tables.
    pub json: bool,
}
