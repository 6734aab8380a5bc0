//! `sagactl token`: bearer tokens of the gateway. `new` makes a random token and prints
//! the entry of the gateway's tokens file (which holds the SHA-256, never the token);
//! `hash` prints the SHA-256 of a token given on the command line or on stdin.

use std::io::{BufRead as _, IsTerminal as _};
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use rand::RngCore as _;
use sha2::{Digest, Sha256};

/// Bearer tokens for the gateway's --tokens-file.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a random token; print it and the entry of the tokens file.
    New {
        /// The client's name (its per-client limits and the logs use it).
        #[arg(long)]
        name: String,
        /// Its roles: `client` (orders, sagas: start, read, watch) or `operator`
        /// (everything: cancel, dead letters too).
        #[arg(long = "role", value_enum, default_value = "client", num_args = 1..)]
        roles: Vec<TokenRole>,
    },
    /// Print the SHA-256 (hex) of a token, as the tokens file holds it.
    Hash {
        /// The token; read from stdin when absent (keeps it out of the shell history).
        token: Option<String>,
    },
}

/// A role of the gateway's tokens file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TokenRole {
    /// Place orders, start sagas, read, list, watch them.
    Client,
    /// Everything.
    Operator,
}

impl TokenRole {
    fn as_str(self) -> &'static str {
        match self {
            TokenRole::Client => "client",
            TokenRole::Operator => "operator",
        }
    }
}

/// The hex SHA-256 of `token`.
pub fn sha256_hex(token: &str) -> String {
    format!("{:x}", Sha256::digest(token.trim().as_bytes()))
}

/// 32 random bytes from the OS, hex: 256 bits a guess cannot reach.
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sgt_{hex}")
}

/// Runs a token command.
pub fn run(command: TokenCommand) -> ExitCode {
    match command {
        TokenCommand::New { name, mut roles } => {
            roles.dedup();
            let token = new_token();
            let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            println!("token (give it to `{name}`; it is not stored anywhere):");
            println!("  {token}");
            println!();
            println!("entry of the gateway's --tokens-file:");
            println!("  - name: {name}");
            println!("    sha256: {}", sha256_hex(&token));
            println!("    roles: [{}]", roles.join(", "));
            ExitCode::SUCCESS
        }
        TokenCommand::Hash { token } => {
            let token = match token {
                Some(t) => t,
                None => {
                    if std::io::stdin().is_terminal() {
                        eprintln!("token (then Enter):");
                    }
                    let mut line = String::new();
                    if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
                        eprintln!("sagactl: error: reading the token from stdin: {e}");
                        return ExitCode::FAILURE;
                    }
                    line
                }
            };
            if token.trim().is_empty() {
                eprintln!("sagactl: error: empty token");
                return ExitCode::from(2);
            }
            println!("{}", sha256_hex(&token));
            ExitCode::SUCCESS
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_tokens_are_random_and_hashed_like_the_gateway_reads_them() {
        let a = new_token();
        assert_ne!(a, new_token());
        assert!(a.starts_with("sgt_") && a.len() == 4 + 64, "{a}");
        assert_eq!(
            sha256_hex("password"),
            "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
        );
        assert_eq!(sha256_hex("password\n"), sha256_hex("password"));
    }
}
