//! `bpci` subcommands.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod chain;
mod consensus;
mod deploy;
mod keys;
pub mod node;
mod sim;
mod testnet;

/// bpci: a BFT validator engine (pipelined 2-chain HotStuff over QUIC).
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
    /// A local QUIC testnet under load: starts validators, offers load, prints a summary.
    Testnet(testnet::TestnetArgs),
    /// Benchmarks against running validators.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// A stopped validator's committed chain: height, block id and transactions, per line.
    Chain(chain::ChainArgs),
    /// Ask a running validator over its HTTP API: rounds, IBFT and HotStuff views, metrics.
    Consensus(consensus::ConsensusArgs),
    /// Deployment manifests.
    #[command(subcommand)]
    Deploy(deploy::DeployCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Open-loop load against validators that are already running.
    Load(testnet::LoadArgs),
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
    // rayon's workers (hashing long transaction lists, large signature batches) get their own
    // name: unnamed, they would carry the name of whichever stage thread first used rayon, and
    // per-thread profiles would charge that stage for them. Fails only if already built (a
    // second call in one process, as in tests), which leaves the first pool as it is.
    let _ = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("rayon-{i}"))
        .build_global();
    let result = match cli.command {
        Command::Sim(args) => sim::run(args),
        Command::Keys(cmd) => keys::run(cmd),
        Command::Node(args) => node::run(args),
        Command::Testnet(args) => testnet::run(args),
        Command::Bench(BenchCommand::Load(args)) => testnet::run_load(args),
        Command::Chain(args) => chain::run(args),
        Command::Consensus(args) => consensus::run(args),
        Command::Deploy(cmd) => deploy::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
