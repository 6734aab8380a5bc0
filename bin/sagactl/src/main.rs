//! `sagactl`: the command-line face of the saga runtime.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod def;

/// Saga runtime control tool.
#[derive(Debug, Parser)]
#[command(name = "sagactl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with saga definitions (YAML).
    #[command(subcommand)]
    Def(DefCommand),
}

#[derive(Debug, Subcommand)]
enum DefCommand {
    /// Validate definition files; exits non-zero and prints every problem when one is broken.
    Validate {
        /// Definition files (e.g. sagas/*.yaml).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also print the derived failure-scenario table and the validator's notes.
        #[arg(long)]
        explain: bool,
    },
    /// Print a Mermaid flowchart of a definition (forward steps solid, compensations dotted).
    Graph {
        /// Definition file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Def(DefCommand::Validate { files, explain }) => def::validate(&files, explain),
        Command::Def(DefCommand::Graph { file }) => def::graph(&file),
    }
}
