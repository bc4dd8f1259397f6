//! `bpci` subcommands.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod keys;
mod sim;

/// bpci: a BFT validator engine (pipelined 2-chain HotStuff, sealed-bid bundle auction, QUIC).
#[derive(Parser)]
#[command(name = "bpci", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the deterministic simulator: seeded clusters under faults, invariants checked.
    Sim(sim::SimArgs),
    /// Validator keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
}

/// Parses arguments and runs the command; errors print with their cause and exit non-zero.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sim(args) => sim::run(args),
        Command::Keys(cmd) => keys::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
