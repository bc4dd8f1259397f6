//! `bpci` subcommands.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod keys;
pub mod node;
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
    /// Run a validator.
    Node(node::NodeArgs),
}

/// Parses arguments and runs the command; errors print with their cause and exit non-zero.
#[allow(dead_code)] // the bpci-consensus-server binary enters through main_from
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Like [`main`] with explicit arguments.
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Command::Sim(args) => sim::run(args),
        Command::Keys(cmd) => keys::run(cmd),
        Command::Node(args) => node::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
